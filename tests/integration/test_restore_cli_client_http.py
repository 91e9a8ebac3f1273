"""RestoreRiskState from the outside: `tradeguard restore` as a subprocess (dry run, then --apply), the Python client
(sync and async), and the HTTP route from the proto annotation (listed in /openapi.json, POST works)."""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from tests.support.sidecar import running_sidecar
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard_client import AdminClient, AsyncAdminClient
from tradeguard_server.sidecar import Sidecar

pytestmark = pytest.mark.integration

TOKEN = "restore-cli-admin-token"
ACCOUNT = "acct-cli"
TRADER = "bot-cli"
BIN = Path(sys.executable).parent


@pytest.fixture
async def sidecar(tmp_path: Path) -> AsyncIterator[Sidecar]:
    token_file = tmp_path / "admin.token"
    token_file.write_text(TOKEN)
    async with running_sidecar(database_url=f"sqlite:///{tmp_path / 'cli.db'}", enable_persistence=True,
                               admin_token_file=str(token_file), http_listen="127.0.0.1:0") as sc:
        yield sc


async def equity_then_bad_report(sc: Sidecar) -> datetime:
    """Two good equity reports, then a bad one; returns the time between them (the restore point)."""
    async with grpc.aio.insecure_channel(sc.address) as ch:
        risk = rsg.RiskServiceStub(ch)
        for equity in (10_000.0, 10_300.0):
            await risk.ReportEquity(rs.ReportEquityRequest(trader_id=TRADER, account_id=ACCOUNT, equity=equity),
                                    timeout=10)
        assert await sc.store.flush(timeout=10)
        history = await adg.AdminServiceStub(ch).ListRiskStateHistory(ad.ListRiskStateHistoryRequest(
            trader_id=TRADER, account_id=ACCOUNT), metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=10)
        # (1 ms after the row: a datetime keeps microseconds, the row's time may have a fraction more)
        point = history.entries[-1].recorded_at.ToDatetime(tzinfo=UTC) + timedelta(milliseconds=1)
        await risk.ReportEquity(rs.ReportEquityRequest(trader_id=TRADER, account_id=ACCOUNT, equity=1.0), timeout=10)
    return point


async def live_equity(sc: Sidecar) -> float:
    async with grpc.aio.insecure_channel(sc.address) as ch:
        reply = await rsg.RiskServiceStub(ch).GetRiskState(
            rs.GetRiskStateRequest(trader_id=TRADER, account_id=ACCOUNT), timeout=10)
    return reply.state.current_equity


async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(str(BIN / "tradeguard"), "restore", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_tradeguard_restore_prints_the_would_be_state_then_applies_it_with_apply(
        sidecar: Sidecar, tmp_path: Path) -> None:
    point = await equity_then_bad_report(sidecar)
    common = ["--address", sidecar.address, "--token-file", str(tmp_path / "admin.token"), "--trader-id", TRADER,
              "--account-id", ACCOUNT, "--at", point.isoformat().replace("+00:00", "Z")]

    code, out, err = await cli(*common)

    assert code == 0, err
    dry = json.loads(out)
    assert dry["dry_run"] is True and dry["state"]["current_equity"] == 10_300.0
    assert dry["previous_state"]["current_equity"] == 1.0
    assert await live_equity(sidecar) == 1.0

    code, _out, err = await cli(*common, "--apply")
    assert code == 2 and "--reason" in err

    code, out, err = await cli(*common, "--apply", "--reason", "bad equity report")

    assert code == 0, err
    applied = json.loads(out)
    assert applied["dry_run"] is False and applied["state"]["current_equity"] == 10_300.0
    assert await live_equity(sidecar) == 10_300.0

    code, _out, err = await cli(*common[:-2], "--at", "yesterday")
    assert code == 2 and "--at" in err
    code, _out, err = await cli(*[a if a != str(tmp_path / "admin.token") else str(tmp_path / "wrong")
                                  for a in common])
    assert code == 2, err  # no such token file: says so, calls nothing


async def test_the_python_clients_restore_and_dry_run(sidecar: Sidecar) -> None:
    point = await equity_then_bad_report(sidecar)
    with AdminClient(sidecar.address, token=TOKEN) as admin:
        dry = await asyncio.to_thread(admin.restore_risk_state, TRADER, ACCOUNT, point)
    assert dry.dry_run and dry.state is not None and dry.state.current_equity == 10_300.0
    assert await live_equity(sidecar) == 1.0
    async with AsyncAdminClient(sidecar.address, token=TOKEN) as aadmin:
        done = await aadmin.restore_risk_state(TRADER, ACCOUNT, point, reason="from the async client", dry_run=False)
    assert not done.dry_run and done.previous_state is not None and done.previous_state.current_equity == 1.0
    assert await live_equity(sidecar) == 10_300.0


def http(method: str, url: str, body: dict[str, object] | None = None, token: str = TOKEN) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={  # noqa: S310 - a local test server
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310 - a local test server
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


async def test_the_http_route_is_listed_in_openapi_and_a_post_restores(sidecar: Sidecar) -> None:
    point = await equity_then_bad_report(sidecar)
    base = f"http://{sidecar.http_address}"
    status, spec = await asyncio.to_thread(http, "GET", f"{base}/openapi.json")
    assert status == 200 and isinstance(spec, dict)
    assert "post" in spec["paths"]["/v1/admin/restore-risk-state"]
    body = {"trader_id": TRADER, "account_id": ACCOUNT, "at": point.isoformat().replace("+00:00", "Z")}

    status, dry = await asyncio.to_thread(http, "POST", f"{base}/v1/admin/restore-risk-state", body)

    assert status == 200 and isinstance(dry, dict) and dry["dry_run"] is True
    status, _denied = await asyncio.to_thread(http, "POST", f"{base}/v1/admin/restore-risk-state",
                                              {**body, "dry_run": False, "reason": "x"}, "wrong-token")
    assert status == 401
    status, done = await asyncio.to_thread(http, "POST", f"{base}/v1/admin/restore-risk-state",
                                           {**body, "dry_run": False, "reason": "over http"})
    assert status == 200 and isinstance(done, dict) and done["state"]["current_equity"] == 10_300.0
    assert await live_equity(sidecar) == 10_300.0
