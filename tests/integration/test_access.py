"""Who may do what (README "Security"): the bot cannot switch off its own guard, one bot cannot act as another,
one client cannot take the watch slots other bots need, and no secret leaks.

Every test goes through the public API: a real gRPC server (TCP or unix socket), `tradeguard serve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.attack.support import log_records
from tests.support.auth import Metadata, bearer
from tests.support.certs import have_openssl, make_certs
from tests.support.sidecar import running_sidecar, spawn_sidecar
from tests.support.wait import eventually
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.settings import SettingsError, load_settings
from tradeguard_server.sidecar import Sidecar

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
ADMIN = "admin-token-0123456789abcdef"
BOT1 = "bot-1-token-0123456789abcdef"
BOT2 = "bot-2-token-0123456789abcdef"
def write_credentials(tmp_path: Path) -> Path:
    """bot-1 may act for trader bot-1 on acct-1; bot-2 for bot-2 on acct-2. Tokens in their own files."""
    (tmp_path / "bot-1.token").write_text(BOT1 + "\n")
    (tmp_path / "bot-2.token").write_text(BOT2 + "\n")
    for name in ("bot-1.token", "bot-2.token"):
        (tmp_path / name).chmod(0o600)
    path = tmp_path / "credentials.toml"
    path.write_text(
        '[[credential]]\nname = "bot-1"\ntoken_file = "bot-1.token"\ntraders = ["bot-1"]\naccounts = ["acct-1"]\n\n'
        '[[credential]]\nname = "bot-2"\ntoken_file = "bot-2.token"\ntraders = ["bot-2"]\naccounts = ["acct-2"]\n'
    )
    path.chmod(0o600)
    return path


async def code_of(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


# ---- 1. the admin credential is never the bot's ---------------------------------------------------------


def admin_changes(admin: adg.AdminServiceStub, metadata: Metadata) -> dict[str, Awaitable[Any]]:
    ids = {"trader_id": "bot-1", "account_id": "acct-1"}
    return {
        "SetFeatureFlags": admin.SetFeatureFlags(
            ad.SetFeatureFlagsRequest(flags=t.FeatureFlags(enable_risk_enforcement=False)), metadata=metadata),
        "ResumeTrading": admin.ResumeTrading(ad.ResumeTradingRequest(**ids), metadata=metadata),
        "SaveConfig": admin.SaveConfig(ad.SaveConfigRequest(config=t.RiskConfiguration(
            account_id="acct-1", config_id="loose", daily_max_drawdown_percentage=100)), metadata=metadata),
        "PauseTrading": admin.PauseTrading(ad.PauseTradingRequest(
            **ids, trading_state=t.TRADING_STATE_REDUCING), metadata=metadata),
        "RebindTrader": admin.RebindTrader(ad.RebindTraderRequest(**ids), metadata=metadata),
    }


@pytest.mark.parametrize("listener", ["tcp", "unix"])
async def test_default_settings_refuse_admin_changes_without_the_admin_token_on_every_listener(
    tmp_path: Path, listener: str
) -> None:
    listen = "127.0.0.1:0" if listener == "tcp" else f"unix:{tmp_path}/tg.sock"
    async with running_sidecar(state_dir=str(tmp_path), listen=listen) as sc, \
            grpc.aio.insecure_channel(sc.address) as ch:
        admin = adg.AdminServiceStub(ch)
        refused = {name: await code_of(call) for name, call in admin_changes(admin, ()).items()}
        wrong = {name: await code_of(call) for name, call in admin_changes(admin, bearer("x" * 40)).items()}
        enforcing = sc.engine.flags.enable_risk_enforcement
        token = (tmp_path / "admin.token").read_text().strip()
        granted = await code_of(admin.PauseTrading(ad.PauseTradingRequest(
            trader_id="bot-1", account_id="acct-1", trading_state=t.TRADING_STATE_HALTED), metadata=bearer(token)))

    assert {code for code, _ in refused.values()} == {grpc.StatusCode.UNAUTHENTICATED}
    assert {code for code, _ in wrong.values()} == {grpc.StatusCode.UNAUTHENTICATED}
    assert enforcing
    assert granted == (grpc.StatusCode.OK, "")
    assert stat.S_IMODE((tmp_path / "admin.token").stat().st_mode) == 0o600
    assert len(token) >= 32


async def test_a_trader_token_alone_does_not_open_admin_service(tmp_path: Path) -> None:
    async with running_sidecar(state_dir=str(tmp_path), trader_token=BOT1) as sc, \
            grpc.aio.insecure_channel(sc.address) as ch:
        admin = adg.AdminServiceStub(ch)
        anonymous = {name: await code_of(call) for name, call in admin_changes(admin, ()).items()}
        as_trader = {name: await code_of(call) for name, call in admin_changes(admin, bearer(BOT1)).items()}
        enforcing = sc.engine.flags.enable_risk_enforcement

    assert {code for code, _ in anonymous.values()} == {grpc.StatusCode.UNAUTHENTICATED}
    assert {code for code, _ in as_trader.values()} == {grpc.StatusCode.PERMISSION_DENIED}
    assert enforcing


def test_start_up_log_names_the_generated_token_file_and_grpcurl_uses_it(tmp_path: Path) -> None:
    sp = spawn_sidecar(tmp_path, "--no-enable-persistence", open_admin=False)
    try:
        log = sp.log()
        token = (tmp_path / "admin.token").read_text().strip()
    finally:
        assert sp.terminate() == 0

    assert f"{tmp_path / 'admin.token'}" in log and "authorization: Bearer $(cat" in log
    assert "RiskService open" in log  # no trader credentials: said at start
    assert token not in sp.log()


def test_dev_open_admin_is_refused_beyond_loopback_and_logged_loudly(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(SettingsError, match="dev_open_admin"):
        Sidecar(load_settings({}, {"listen": "0.0.0.0:0", "dev_open_admin": True, "trader_token": BOT1,
                                   "database_url": "memory", "enable_persistence": False}))

    async def start() -> None:
        async with running_sidecar(dev_open_admin=True):
            pass

    with caplog.at_level(logging.WARNING):
        asyncio.run(start())
    assert any("OPEN TO ANY CALLER" in r.getMessage() for r in caplog.records)


# ---- 2. tokens: validated, stripped alike, re-read on change, never equal ----------------------------


@pytest.mark.parametrize("content", ["", "   \n", "x", " ", "with space-0123456789abcdef"],
                         ids=["empty", "whitespace", "one-char", "one-space", "inner-space"])
def test_an_unusable_admin_token_file_refuses_to_start(tmp_path: Path, content: str) -> None:
    token_file = tmp_path / "admin"
    token_file.write_text(content)
    token_file.chmod(0o600)

    with pytest.raises(SettingsError, match="admin token"):
        Sidecar(load_settings({}, {"admin_token_file": str(token_file), "database_url": "memory",
                                   "enable_persistence": False}))


@pytest.mark.parametrize("field", ["admin_token", "trader_token"])
def test_a_one_character_token_does_not_count_as_set(field: str) -> None:
    with pytest.raises(SettingsError, match="too short"):
        Sidecar(load_settings({}, {field: "x", "admin_token": ADMIN, "database_url": "memory",
                                   "enable_persistence": False} | {field: "x"}))


async def test_env_token_is_stripped_like_the_file_token() -> None:
    settings = load_settings({"TRADEGUARD_ADMIN_TOKEN": ADMIN + "\n", "TRADEGUARD_DATABASE_URL": "memory"},
                             {"listen": "127.0.0.1:0", "enable_persistence": False, "metrics_listen": "",
                              "http_listen": "",
                              "uvloop": False})
    sc = Sidecar(settings)
    await sc.start()
    try:
        async with grpc.aio.insecure_channel(sc.address) as ch:
            reply = await adg.AdminServiceStub(ch).GetFeatureFlags(ad.GetFeatureFlagsRequest(), metadata=bearer(ADMIN))
    finally:
        await sc.stop()

    assert reply.flags.enable_risk_enforcement


def test_admin_token_equal_to_a_trader_token_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="admin token equals a trader token"):
        Sidecar(load_settings({}, {"admin_token": BOT1, "trader_token": BOT1, "database_url": "memory"}))
    with pytest.raises(SettingsError, match="admin token equals a trader token"):
        Sidecar(load_settings({}, {"admin_token": BOT1, "credentials_file": str(write_credentials(tmp_path)),
                                   "database_url": "memory"}))


def test_a_missing_token_file_exits_2_naming_it_without_a_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "admin.token"
    out = subprocess.run([str(BIN / "tradeguard"), "serve", "--admin-token-file", str(missing),
                          "--no-enable-persistence", "--metrics-listen", "", "--http-listen", ""],
                         capture_output=True, text=True, timeout=30, check=False, cwd=tmp_path, env={"PATH": str(BIN)})

    assert out.returncode == 2
    assert str(missing) in out.stderr and "does not exist" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_token_file_readable_by_others_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    token_file = tmp_path / "admin"
    token_file.write_text(ADMIN)
    token_file.chmod(0o644)

    with caplog.at_level(logging.WARNING):
        Sidecar(load_settings({}, {"admin_token_file": str(token_file), "database_url": "memory"}))

    assert any("readable by others" in r.getMessage() and "chmod 600" in r.getMessage()
               for r in caplog.records)


async def test_a_rotated_admin_token_is_in_force_without_a_restart(tmp_path: Path) -> None:
    token_file = tmp_path / "admin"
    token_file.write_text(ADMIN)
    token_file.chmod(0o600)
    new = "rotated-admin-token-0123456789"
    async with running_sidecar(admin_token_file=str(token_file), credentials_reload_s=0.02) as sc, \
            grpc.aio.insecure_channel(sc.address) as ch:
        admin = adg.AdminServiceStub(ch)
        before = await code_of(admin.GetFeatureFlags(ad.GetFeatureFlagsRequest(), metadata=bearer(ADMIN)))
        staged = tmp_path / "admin.new"
        staged.write_text(new + "\n")
        staged.chmod(0o600)
        staged.replace(token_file)  # as a Kubernetes secret update does: a new file in place

        async def new_works() -> bool:
            reply = await code_of(admin.GetFeatureFlags(ad.GetFeatureFlagsRequest(), metadata=bearer(new)))
            return reply[0] == grpc.StatusCode.OK

        rotated = await eventually(new_works)
        old = await code_of(admin.GetFeatureFlags(ad.GetFeatureFlagsRequest(), metadata=bearer(ADMIN)))
        with log_records("tradeguard.auth", logging.ERROR) as auth_log:
            token_file.write_text("")  # a broken rotation keeps the token in force
            refused = await eventually(lambda: auth_log.count("changed but not loaded") > 0)
        kept = await code_of(admin.GetFeatureFlags(ad.GetFeatureFlagsRequest(), metadata=bearer(new)))

    assert before[0] == grpc.StatusCode.OK
    assert rotated and refused
    assert old[0] == grpc.StatusCode.UNAUTHENTICATED
    assert kept[0] == grpc.StatusCode.OK


async def test_a_rotated_bot_token_file_is_in_force_without_a_restart(tmp_path: Path) -> None:
    credentials = write_credentials(tmp_path)
    new = "bot-1-rotated-0123456789abcdef"
    ids = {"trader_id": "bot-1", "account_id": "acct-1"}
    async with running_sidecar(admin_token=ADMIN, credentials_file=str(credentials), credentials_reload_s=0.02) as sc, \
            grpc.aio.insecure_channel(sc.address) as ch:
        risk = rsg.RiskServiceStub(ch)
        staged = tmp_path / "bot-1.new"
        staged.write_text(new)
        staged.chmod(0o600)
        staged.replace(tmp_path / "bot-1.token")  # only the token file changes, not credentials.toml

        async def rotated() -> bool:
            reply = await code_of(risk.CanTrade(rs.CanTradeRequest(**ids), metadata=bearer(new)))
            return reply[0] == grpc.StatusCode.OK

        in_force = await eventually(rotated)
        old = await code_of(risk.CanTrade(rs.CanTradeRequest(**ids), metadata=bearer(BOT1)))

    assert in_force
    assert old[0] == grpc.StatusCode.UNAUTHENTICATED


async def test_trader_token_file_guards_risk_service_and_a_new_bot_is_admitted_without_a_restart(
    tmp_path: Path
) -> None:
    shared = tmp_path / "trader.token"
    shared.write_text(BOT2 + "\n")
    credentials = tmp_path / "credentials.toml"
    credentials.write_text('[[credential]]\nname = "bot-1"\ntoken = "' + BOT1 + '"\ntraders = ["bot-1"]\n'
                           'accounts = ["acct-1"]\n')
    newcomer = "bot-3-token-0123456789abcdef"
    ids = {"trader_id": "bot-3", "account_id": "acct-3"}
    async with running_sidecar(admin_token=ADMIN, trader_token_file=str(shared), credentials_file=str(credentials),
                               credentials_reload_s=0.02) as sc, grpc.aio.insecure_channel(sc.address) as ch:
        risk = rsg.RiskServiceStub(ch)
        anonymous = await code_of(risk.CanTrade(rs.CanTradeRequest(**ids)))
        with_shared = await code_of(risk.CanTrade(rs.CanTradeRequest(**ids), metadata=bearer(BOT2)))
        before = await code_of(risk.CanTrade(rs.CanTradeRequest(**ids), metadata=bearer(newcomer)))
        staged = tmp_path / "credentials.new"
        staged.write_text(credentials.read_text() + '\n[[credential]]\nname = "bot-3"\ntoken = "' + newcomer
                          + '"\ntraders = ["bot-3"]\naccounts = ["acct-3"]\n')
        staged.replace(credentials)

        async def admitted() -> bool:
            reply = await code_of(risk.CanTrade(rs.CanTradeRequest(**ids), metadata=bearer(newcomer)))
            return reply[0] == grpc.StatusCode.OK

        after = await eventually(admitted)

    assert anonymous[0] == grpc.StatusCode.UNAUTHENTICATED
    assert with_shared[0] == grpc.StatusCode.OK  # the shared token acts for any trader
    assert before[0] == grpc.StatusCode.UNAUTHENTICATED
    assert after


# ---- 3. secrets ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "postgresql://tg@127.0.0.1:1/tg?password=QUERY-SECRET-4471&connect_timeout=1",
    "postgresql://127.0.0.1:1/tg?user=tg&sslpassword=QUERY-SECRET-4471",
    "postgresql://tg:QUERY-SECRET-4471@127.0.0.1:1/tg",
], ids=["password-param", "sslpassword-param", "userinfo"])
def test_start_up_settings_line_hides_the_password_in_every_url_form(url: str) -> None:
    settings = load_settings({"TRADEGUARD_DATABASE_URL": url})

    shown = str(settings.redacted())

    assert "QUERY-SECRET-4471" not in shown and "***" in shown


def test_served_process_never_logs_a_query_parameter_password(tmp_path: Path) -> None:
    url = "postgresql://tg@127.0.0.1:1/tg?password=QUERY-SECRET-4471&connect_timeout=1"
    sp = spawn_sidecar(tmp_path, "--database-url", url, "--no-migrate-on-start", "--log-level", "DEBUG")
    try:
        started = sp.log()
    finally:
        sp.terminate()

    assert "starting with settings" in started
    assert "QUERY-SECRET-4471" not in sp.log()


def test_an_unencoded_at_sign_in_the_password_is_refused_without_showing_it(tmp_path: Path) -> None:
    url = "postgresql://tg:pa@ss-TAIL-SECRET@127.0.0.1:1/tg"
    out = subprocess.run([str(BIN / "tradeguard"), "serve", "--database-url", url, "--metrics-listen", "",
                          "--http-listen", ""],
                         capture_output=True, text=True, timeout=30, check=False, cwd=tmp_path, env={"PATH": str(BIN)})

    assert out.returncode == 2
    assert "%40" in out.stderr
    assert "TAIL-SECRET" not in out.stderr + out.stdout and "pa@ss" not in out.stderr + out.stdout


# ---- 4. exposure ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


async def test_unix_socket_and_sqlite_file_are_owner_only_even_under_umask_000(tmp_path: Path) -> None:
    socket_path, db = tmp_path / "tg.sock", tmp_path / "tg.db"
    with umask(0):
        async with running_sidecar(listen=f"unix:{socket_path}", database_url=f"sqlite:///{db}",
                                   enable_persistence=True):
            socket_mode = stat.S_IMODE(socket_path.stat().st_mode)
            db_mode = stat.S_IMODE(db.stat().st_mode)

    assert socket_mode == 0o600
    assert db_mode == 0o600


async def test_insecure_and_metrics_beyond_loopback_are_warned_loudly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        async with running_sidecar(listen="0.0.0.0:0", insecure=True, metrics_listen="0.0.0.0:0"):
            pass

    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("INSECURE" in m for m in messages)
    assert any("WITHOUT AUTH" in m and "/metrics" in m for m in messages)


def test_beyond_loopback_an_open_risk_service_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="RiskService open to any caller"):
        Sidecar(load_settings({}, {"listen": "0.0.0.0:0", "admin_token": ADMIN, "database_url": "memory"}))


# ---- 5. per-trader authority ---------------------------------------------------------------------------


@pytest.fixture
async def per_bot(tmp_path: Path) -> AsyncIterator[tuple[Sidecar, grpc.aio.Channel]]:
    async with running_sidecar(admin_token=ADMIN, credentials_file=str(write_credentials(tmp_path))) as sc, \
            grpc.aio.insecure_channel(sc.address) as ch:
        risk = rsg.RiskServiceStub(ch)
        await risk.ReportEquity(rs.ReportEquityRequest(trader_id="bot-1", account_id="acct-1", equity=10_000),
                                metadata=bearer(BOT1))
        yield sc, ch


def risk_calls(risk: rsg.RiskServiceStub, trader_id: str, account_id: str,
               metadata: Metadata) -> dict[str, Callable[[], Awaitable[Any]]]:
    ids = {"trader_id": trader_id, "account_id": account_id}

    async def watch() -> None:
        async for _ in risk.WatchRiskState(rs.WatchRiskStateRequest(**ids), metadata=metadata):
            return

    return {
        "CanTrade": lambda: risk.CanTrade(rs.CanTradeRequest(**ids), metadata=metadata),
        "ReportEquity": lambda: risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=1), metadata=metadata),
        "ReportTrade": lambda: risk.ReportTrade(rs.ReportTradeRequest(
            **ids, trade_id="next-trade", symbol="BTCUSDT", side=t.SIDE_BUY, realized_pnl=-50), metadata=metadata),
        "ReportPositions": lambda: risk.ReportPositions(rs.ReportPositionsRequest(**ids), metadata=metadata),
        "GetRiskState": lambda: risk.GetRiskState(rs.GetRiskStateRequest(**ids), metadata=metadata),
        "WatchRiskState": watch,
    }


@pytest.mark.parametrize("account_id", ["acct-1", "acct-2"], ids=["victims-account", "squat-with-own-account"])
async def test_every_risk_rpc_for_another_trader_is_permission_denied_naming_nothing_of_it(
    per_bot: tuple[Sidecar, grpc.aio.Channel], account_id: str
) -> None:
    sc, ch = per_bot
    risk = rsg.RiskServiceStub(ch)

    answers = {name: await code_of(call()) for name, call in
               risk_calls(risk, "bot-1", account_id, bearer(BOT2)).items()}
    victim = await risk.GetRiskState(rs.GetRiskStateRequest(trader_id="bot-1", account_id="acct-1"),
                                     metadata=bearer(BOT1))
    own = await code_of(risk.CanTrade(rs.CanTradeRequest(trader_id="bot-1", account_id="acct-1"),
                                      metadata=bearer(BOT1)))

    assert {name: code for name, (code, _) in answers.items()} == dict.fromkeys(answers,
                                                                                grpc.StatusCode.PERMISSION_DENIED)
    for _, details in answers.values():
        assert "bot-2" not in details  # nothing of the credential
        if account_id != "acct-1":
            assert "acct-1" not in details  # nothing of the victim's binding
    assert victim.state.current_equity == 10_000 and victim.state.trading_state == t.TRADING_STATE_ACTIVE
    assert sc.engine.traders["bot-1"].account_id == "acct-1"
    assert own[0] == grpc.StatusCode.OK


async def test_a_bot_may_not_bind_its_trader_to_a_foreign_account_nor_carry_on_under_a_new_trader_id(
    per_bot: tuple[Sidecar, grpc.aio.Channel]
) -> None:
    sc, ch = per_bot
    risk = rsg.RiskServiceStub(ch)

    foreign_account = await code_of(risk.ReportEquity(
        rs.ReportEquityRequest(trader_id="bot-1", account_id="acct-2", equity=5), metadata=bearer(BOT1)))
    new_trader_id = await code_of(risk.ReportEquity(
        rs.ReportEquityRequest(trader_id="bot-1b", account_id="acct-1", equity=5), metadata=bearer(BOT1)))
    anonymous = await code_of(risk.CanTrade(rs.CanTradeRequest(trader_id="bot-1", account_id="acct-1")))
    operator = await code_of(risk.GetRiskState(rs.GetRiskStateRequest(trader_id="bot-1", account_id="acct-1"),
                                               metadata=bearer(ADMIN)))

    assert foreign_account[0] == grpc.StatusCode.PERMISSION_DENIED
    assert new_trader_id[0] == grpc.StatusCode.PERMISSION_DENIED
    assert anonymous[0] == grpc.StatusCode.UNAUTHENTICATED
    assert operator[0] == grpc.StatusCode.OK
    assert set(sc.engine.traders) == {"bot-1"}


async def test_without_trader_credentials_a_squatted_trader_id_is_seen_and_moved_back_by_the_operator(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = f"sqlite:///{tmp_path / 'tg.db'}"
    real = {"trader_id": "bot-1", "account_id": "acct-1"}
    async with running_sidecar(admin_token=ADMIN, database_url=db, enable_persistence=True) as sc, \
            grpc.aio.insecure_channel(sc.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await risk.ReportEquity(rs.ReportEquityRequest(trader_id="bot-1", account_id="acct-evil", equity=1))
        locked_out = await code_of(risk.CanTrade(rs.CanTradeRequest(**real)))
        listed = await admin.ListBindings(ad.ListBindingsRequest(), metadata=bearer(ADMIN))
        with caplog.at_level(logging.WARNING):
            moved = await admin.RebindTrader(ad.RebindTraderRequest(**real, reason="squatted"),
                                             metadata=bearer(ADMIN))
        resumed = await code_of(admin.ResumeTrading(ad.ResumeTradingRequest(**real), metadata=bearer(ADMIN)))
        await risk.ReportEquity(rs.ReportEquityRequest(**real, equity=10_000))
        allowed = await risk.CanTrade(rs.CanTradeRequest(**real))
    async with running_sidecar(admin_token=ADMIN, database_url=db, enable_persistence=True) as again, \
            grpc.aio.insecure_channel(again.address) as ch:
        after_restart = await adg.AdminServiceStub(ch).ListBindings(
            ad.ListBindingsRequest(account_id="acct-1"), metadata=bearer(ADMIN))

    assert locked_out[0] == grpc.StatusCode.INVALID_ARGUMENT and "acct-evil" not in locked_out[1]
    assert [(b.trader_id, b.account_id) for b in listed.bindings] == [("bot-1", "acct-evil")]
    assert moved.previous_account_id == "acct-evil" and moved.state.account_id == "acct-1"
    assert any("REBIND trader=bot-1 account=acct-evil -> acct-1" in r.getMessage() for r in caplog.records)
    assert resumed[0] == grpc.StatusCode.OK
    assert allowed.allowed
    assert [(b.trader_id, b.account_id) for b in after_restart.bindings] == [("bot-1", "acct-1")]
    assert sc.engine.traders["bot-1"].current_equity == 10_000


@pytest.mark.skipif(not have_openssl(), reason="openssl CLI not installed")
async def test_an_mtls_client_certificate_maps_to_the_traders_it_may_act_for(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")  # the client certificate's CN is "trader-bot"
    credentials = tmp_path / "credentials.toml"
    credentials.write_text('[[credential]]\nname = "bot-1"\ntls_identity = "trader-bot"\ntraders = ["bot-1"]\n'
                           'accounts = ["acct-1"]\n')
    creds = grpc.ssl_channel_credentials(certs.read("ca"), certs.read("client_key"), certs.read("client_cert"))
    async with running_sidecar(admin_token=ADMIN, credentials_file=str(credentials), tls_cert=str(certs.server_cert),
                               tls_key=str(certs.server_key), tls_client_ca=str(certs.ca)) as sc, \
            grpc.aio.secure_channel(sc.address, creds) as ch:
        risk = rsg.RiskServiceStub(ch)
        own = await code_of(risk.ReportEquity(rs.ReportEquityRequest(trader_id="bot-1", account_id="acct-1",
                                                                     equity=10_000)))
        other = await code_of(risk.ReportEquity(rs.ReportEquityRequest(trader_id="bot-2", account_id="acct-1",
                                                                       equity=1)))
        admin = await code_of(adg.AdminServiceStub(ch).GetFeatureFlags(ad.GetFeatureFlagsRequest()))

    assert own[0] == grpc.StatusCode.OK
    assert other[0] == grpc.StatusCode.PERMISSION_DENIED
    assert admin[0] == grpc.StatusCode.UNAUTHENTICATED  # a bot's certificate is not the admin credential


def test_tls_identity_without_mtls_is_refused(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials.toml"
    credentials.write_text('[[credential]]\nname = "bot-1"\ntls_identity = "trader-bot"\ntraders = ["bot-1"]\n'
                           'accounts = ["acct-1"]\n')

    with pytest.raises(SettingsError, match="needs mTLS"):
        Sidecar(load_settings({}, {"admin_token": ADMIN, "credentials_file": str(credentials),
                                   "database_url": "memory"}))


# ---- 6. watch slots ------------------------------------------------------------------------------------


async def open_watch(risk: rsg.RiskServiceStub, trader_id: str) -> tuple[grpc.StatusCode, Any]:
    """Start a WatchRiskState stream; OK and the call (held open) once its first update arrived."""
    call = risk.WatchRiskState(rs.WatchRiskStateRequest(trader_id=trader_id, account_id="acct"))
    try:
        await call.read()
    except grpc.aio.AioRpcError as err:
        return err.code(), None
    return grpc.StatusCode.OK, call


async def test_one_client_cannot_take_the_watch_slots_other_bots_need() -> None:
    async with running_sidecar(max_watchers_per_connection=6, max_watchers_unknown_traders=4,
                               max_watchers_per_trader=8) as sc:
        held = []
        own = [("grpc.use_local_subchannel_pool", 1)]  # one TCP connection per channel (not shared in-process)
        async with grpc.aio.insecure_channel(sc.address, options=own) as hog, \
                grpc.aio.insecure_channel(sc.address, options=own) as other, \
                grpc.aio.insecure_channel(sc.address, options=own) as bot:
            await rsg.RiskServiceStub(bot).ReportEquity(
                rs.ReportEquityRequest(trader_id="real-bot", account_id="acct", equity=10_000))
            hog_risk = rsg.RiskServiceStub(hog)
            invented = [await open_watch(hog_risk, f"nobody-{i}") for i in range(10)]
            other_invented = await open_watch(rsg.RiskServiceStub(other), "nobody-else")
            known = [await open_watch(hog_risk, "real-bot") for _ in range(4)]
            real_bot = await open_watch(rsg.RiskServiceStub(bot), "real-bot")
            held = [call for _, call in [*invented, *known, real_bot] if call is not None]
            for call in held:
                call.cancel()

    assert [code for code, _ in invented].count(grpc.StatusCode.OK) == 4  # the unknown-trader budget
    assert other_invented[0] == grpc.StatusCode.UNAVAILABLE  # ...is shared, so it stays small
    assert [code for code, _ in known].count(grpc.StatusCode.OK) == 2  # 6 per connection
    assert real_bot[0] == grpc.StatusCode.OK  # the bot's own watch still gets a slot


# ---- 7. per-trader maps are bounded --------------------------------------------------------------------


async def test_a_bot_inventing_symbols_cannot_grow_its_state_or_history_rows_without_end(tmp_path: Path) -> None:
    """The issue's 26 GB file: every trade on a new symbol added to symbol_stats, and every history row copied
    it. Now a trader keeps at most SYMBOLS_KEPT (256) entries per map beyond its live symbols (open positions,
    the last 64 trades): here 3,000 new-symbol trades and 2,000 new-symbol positions leave at most 320."""
    import sqlite3

    db = tmp_path / "tg.db"
    ids = {"trader_id": "bot-1", "account_id": "acct-1"}
    async with running_sidecar(database_url=f"sqlite:///{db}", enable_persistence=True) as sc, \
            grpc.aio.insecure_channel(sc.address) as ch:
        risk = rsg.RiskServiceStub(ch)
        await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=1_000_000))
        for i in range(3_000):
            await risk.ReportTrade(rs.ReportTradeRequest(**ids, trade_id=f"t{i}", symbol=f"NEW{i}", side=t.SIDE_BUY,
                                                         realized_pnl=1.0))
        for batch in range(2):
            await risk.ReportPositions(rs.ReportPositionsRequest(**ids, positions=[
                t.Position(symbol=f"POS{batch}-{i}", side=t.SIDE_BUY, quantity=1, entry_price=1, mark_price=1,
                           volatility=0.5) for i in range(1_000)]))
        await risk.ReportPositions(rs.ReportPositionsRequest(**ids))  # all closed
        st = sc.engine.traders["bot-1"]
        in_memory = (len(st.symbol_stats), len(st.volatility))
        pruned = sc.engine.symbols_pruned
        assert await sc.store.flush(timeout=30)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        row_bytes = conn.execute("SELECT max(length(state)) FROM risk_state_history WHERE trader_id = 'bot-1'"
                                 ).fetchone()[0]
        last_row = conn.execute("SELECT length(state) FROM risk_state_history WHERE trader_id = 'bot-1' "
                                "ORDER BY id DESC LIMIT 1").fetchone()[0]

    assert max(in_memory) <= 256 + 64, in_memory
    assert pruned >= 3_000 - 320
    assert last_row < 64 * 1024, last_row  # the history row copies the bounded maps (measured: 18 KB)
    assert row_bytes < 256 * 1024, row_bytes  # the largest holds 1,000 open positions (measured: 161 KB)
