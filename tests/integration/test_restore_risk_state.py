"""AdminService.RestoreRiskState against a real gRPC server on port 0, on PostgreSQL and on SQLite: a trader put
back to a point in time is exactly the state its history recorded then; a dry run changes nothing; the admin token
is required; bad input names the field; in cluster mode a trader another sidecar owns is refused.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from tests.support.pg import fresh_database, plain_dsn
from tests.support.sidecar import running_sidecar
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.sidecar import Sidecar

pytestmark = pytest.mark.integration

TOKEN = "restore-test-admin-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
ACCOUNT = "acct-r"
TRADER = "bot-r"
# Every field a history row records (RiskState as ListRiskStateHistory shows it), compared one by one.
RECORDED = ("trader_id", "account_id", "current_equity", "peak_equity", "drawdown_pct", "daily_pnl", "daily_pnl_pct",
            "weekly_pnl", "weekly_pnl_pct", "monthly_pnl", "monthly_pnl_pct", "day_start_equity", "week_start_equity",
            "month_start_equity", "trading_state", "paused_until", "pause_reason", "pause_code", "consecutive_losses",
            "last_equity_at", "equity_reported", "positions", "pending_orders", "daily_order_notional", "daily_orders")


@pytest.fixture(params=["postgresql", "sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'restore.db'}"
        return
    with fresh_database("tradeguard_restore") as url:
        yield url


@pytest.fixture
async def sidecar(database_url: str) -> AsyncIterator[Sidecar]:
    async with running_sidecar(database_url=database_url, enable_persistence=True, admin_token=TOKEN,
                               sidecar_id="sc-a") as sc:
        yield sc


@pytest.fixture
async def stubs(sidecar: Sidecar) -> AsyncIterator[tuple[rsg.RiskServiceStub, adg.AdminServiceStub]]:
    async with grpc.aio.insecure_channel(sidecar.address) as ch:
        yield rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)


def position(symbol: str, qty: float, mark: float) -> t.Position:
    return t.Position(symbol=symbol, exchange="binance", side=t.SIDE_BUY, quantity=qty, entry_price=mark,
                      mark_price=mark, leverage=2.0)


async def history(admin: adg.AdminServiceStub) -> list[t.RiskStateHistoryEntry]:
    reply = await admin.ListRiskStateHistory(ad.ListRiskStateHistoryRequest(
        trader_id=TRADER, account_id=ACCOUNT, page_size=1000), metadata=AUTH, timeout=10)
    return list(reply.entries)


def recorded_fields(state: t.RiskState) -> dict[str, object]:
    return {name: getattr(state, name) for name in RECORDED}


def assert_same_as_stored(state: t.RiskState, recorded: t.RiskState) -> None:
    """recorded_fields equal as a stored risk_state row reads back: its timestamp columns keep whole microseconds
    (rounded by the database), the history row's JSON the exact float."""
    times = ("last_equity_at", "paused_until")
    got, want = recorded_fields(state), recorded_fields(recorded)
    for name in times:
        assert abs(got.pop(name).ToNanoseconds() - want.pop(name).ToNanoseconds()) <= 1000, name  # type: ignore[attr-defined]
    assert got == want


def request(at: Timestamp, reason: str = "", dry_run: bool | None = None) -> ad.RestoreRiskStateRequest:
    req = ad.RestoreRiskStateRequest(trader_id=TRADER, account_id=ACCOUNT, at=at, reason=reason)
    if dry_run is not None:
        req.dry_run = dry_run
    return req


async def live_history(stubs: tuple[rsg.RiskServiceStub, adg.AdminServiceStub]) -> t.RiskStateHistoryEntry:
    """Equity reports, positions, a kill switch (the restore point), then a resume, a breach and new positions.
    Returns the history entry of the restore point."""
    risk, admin = stubs
    ids = {"trader_id": TRADER, "account_id": ACCOUNT}
    await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=10_000.0), timeout=10)
    await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=10_400.0), timeout=10)
    await risk.ReportPositions(rs.ReportPositionsRequest(**ids, positions=[
        position("BTCUSDT", 0.05, 60_000.0), position("ETHUSDT", 1.5, 3_000.0)]), timeout=10)
    await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=10_250.0), timeout=10)
    await admin.PauseTrading(ad.PauseTradingRequest(**ids, trading_state=t.TRADING_STATE_REDUCING, reason="maintenance",
                                                    duration={"seconds": 7200}), metadata=AUTH, timeout=10)
    point = (await history(admin))[-1]
    assert point.state.trading_state == t.TRADING_STATE_REDUCING
    await admin.ResumeTrading(ad.ResumeTradingRequest(**ids), metadata=AUTH, timeout=10)
    await risk.ReportPositions(rs.ReportPositionsRequest(**ids, positions=[position("SOLUSDT", 10.0, 150.0)]),
                               timeout=10)
    bad = await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=8_000.0), timeout=10)  # a bad report: breach
    assert bad.state.trading_state != t.TRADING_STATE_ACTIVE
    return point


async def test_restore_puts_back_exactly_the_state_recorded_then_and_a_dry_run_changes_nothing(
        stubs: tuple[rsg.RiskServiceStub, adg.AdminServiceStub], sidecar: Sidecar) -> None:
    risk, admin = stubs
    point = await live_history(stubs)
    before = (await risk.GetRiskState(rs.GetRiskStateRequest(trader_id=TRADER, account_id=ACCOUNT), timeout=10)).state
    rows_before = len(await history(admin))

    dry = await admin.RestoreRiskState(request(point.recorded_at), metadata=AUTH, timeout=10)  # dry_run unset

    assert dry.dry_run
    assert recorded_fields(dry.state) == recorded_fields(point.state)
    assert dry.recorded_at == point.recorded_at and dry.recorded_reason == point.reason
    assert recorded_fields(dry.previous_state) == recorded_fields(before)
    after_dry = (await risk.GetRiskState(rs.GetRiskStateRequest(trader_id=TRADER, account_id=ACCOUNT),
                                         timeout=10)).state
    assert recorded_fields(after_dry) == recorded_fields(before)
    assert len(await history(admin)) == rows_before

    done = await admin.RestoreRiskState(request(point.recorded_at, "bad equity report from the exchange", False),
                                        metadata=AUTH, timeout=10)

    assert not done.dry_run
    assert recorded_fields(done.state) == recorded_fields(point.state)
    live = (await risk.GetRiskState(rs.GetRiskStateRequest(trader_id=TRADER, account_id=ACCOUNT), timeout=10)).state
    assert recorded_fields(live) == recorded_fields(point.state)
    assert live.trading_state == t.TRADING_STATE_REDUCING and "maintenance" in live.pause_reason
    assert [p.symbol for p in live.positions] == ["BTCUSDT", "ETHUSDT"]
    audit = (await history(admin))[-1]
    assert audit.reason.startswith("restore: bad equity report from the exchange (to ")
    assert " by operator" in audit.reason
    assert recorded_fields(audit.state) == recorded_fields(point.state)
    assert await sidecar.store.flush(timeout=10)


async def test_restore_survives_a_restart(database_url: str) -> None:
    async with running_sidecar(database_url=database_url, enable_persistence=True, admin_token=TOKEN,
                               sidecar_id="sc-a") as sc, grpc.aio.insecure_channel(sc.address) as ch:
        stubs = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        point = await live_history(stubs)
        await stubs[1].RestoreRiskState(request(point.recorded_at, "restart check", False), metadata=AUTH, timeout=10)
    async with running_sidecar(database_url=database_url, enable_persistence=True, admin_token=TOKEN,
                               sidecar_id="sc-a") as sc, grpc.aio.insecure_channel(sc.address) as ch:
        state = (await rsg.RiskServiceStub(ch).GetRiskState(
            rs.GetRiskStateRequest(trader_id=TRADER, account_id=ACCOUNT), timeout=10)).state
    assert_same_as_stored(state, point.state)


async def test_restore_needs_the_admin_token(stubs: tuple[rsg.RiskServiceStub, adg.AdminServiceStub]) -> None:
    _risk, admin = stubs
    at = Timestamp(seconds=2_000_000_000)
    for metadata in ((), (("authorization", "Bearer wrong"),)):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await admin.RestoreRiskState(request(at, "x", False), metadata=metadata, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_bad_requests_name_the_field_and_a_time_before_any_row_is_not_found(
        stubs: tuple[rsg.RiskServiceStub, adg.AdminServiceStub]) -> None:
    risk, admin = stubs
    await risk.ReportEquity(rs.ReportEquityRequest(trader_id=TRADER, account_id=ACCOUNT, equity=1_000.0), timeout=10)
    now = Timestamp()
    now.GetCurrentTime()
    cases = [
        (ad.RestoreRiskStateRequest(account_id=ACCOUNT, at=now), "trader_id"),
        (ad.RestoreRiskStateRequest(trader_id=TRADER, at=now), "account_id"),
        (ad.RestoreRiskStateRequest(trader_id=TRADER, account_id=ACCOUNT), "at"),
        (ad.RestoreRiskStateRequest(trader_id=TRADER, account_id=ACCOUNT, at=now, dry_run=False), "reason"),
        (ad.RestoreRiskStateRequest(trader_id=TRADER, account_id="other-acct", at=now), "account_id"),
    ]
    for req, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await admin.RestoreRiskState(req, metadata=AUTH, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, req
        assert field in (err.value.details() or ""), (field, err.value.details())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.RestoreRiskState(request(Timestamp(seconds=1_000_000_000)), metadata=AUTH, timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_memory_only_sidecar_has_no_history_to_restore_from() -> None:
    async with running_sidecar(admin_token=TOKEN) as sc, grpc.aio.insecure_channel(sc.address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await adg.AdminServiceStub(ch).RestoreRiskState(request(Timestamp(seconds=2_000_000_000)),
                                                            metadata=AUTH, timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_restore_of_a_trader_another_sidecar_owns_is_refused_and_its_dry_run_changes_nothing() -> None:
    with fresh_database("tradeguard_restore_owner") as url:
        async with running_sidecar(database_url=url, enable_persistence=True, admin_token=TOKEN,
                                   sidecar_id="sc-owner", trader_lease_seconds=30) as owner, \
                running_sidecar(database_url=url, enable_persistence=True, admin_token=TOKEN,
                                sidecar_id="sc-other", trader_lease_seconds=30) as other, \
                grpc.aio.insecure_channel(owner.address) as och, grpc.aio.insecure_channel(other.address) as xch:
            point = await live_history((rsg.RiskServiceStub(och), adg.AdminServiceStub(och)))
            assert await owner.store.flush(timeout=10)
            xadmin = adg.AdminServiceStub(xch)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await xadmin.RestoreRiskState(request(point.recorded_at, "wrong sidecar", False), metadata=AUTH,
                                              timeout=10)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "sc-owner" in (err.value.details() or "")
            dry = await xadmin.RestoreRiskState(request(point.recorded_at), metadata=AUTH, timeout=10)
            assert dry.dry_run and recorded_fields(dry.state) == recorded_fields(point.state)
            assert TRADER not in other.engine.traders
            with psycopg.connect(plain_dsn(url)) as conn:
                owner_row = conn.execute("SELECT owner FROM trader_leases WHERE trader_id = %s", (TRADER,)).fetchone()
            assert owner_row == ("sc-owner",)
            live = (await rsg.RiskServiceStub(och).GetRiskState(
                rs.GetRiskStateRequest(trader_id=TRADER, account_id=ACCOUNT), timeout=10)).state
            assert live.current_equity == 8_000.0  # unchanged: the refused restore did nothing
            done = await adg.AdminServiceStub(och).RestoreRiskState(
                request(point.recorded_at, "through the owner", False), metadata=AUTH, timeout=10)
            assert recorded_fields(done.state) == recorded_fields(point.state)
            with psycopg.connect(plain_dsn(url)) as conn:
                kinds = [r[0] for r in conn.execute(
                    "SELECT kind FROM control_changes WHERE trader_id = %s ORDER BY version", (TRADER,))]
            assert kinds[-1] == "restore"


async def test_a_takeover_after_a_restore_keeps_the_restored_pauses_and_replays_only_later_kill_switches() -> None:
    with fresh_database("tradeguard_restore_takeover") as url:
        async with running_sidecar(database_url=url, enable_persistence=True, admin_token=TOKEN,
                                   sidecar_id="sc-next", trader_lease_seconds=30) as nxt:
            async with running_sidecar(database_url=url, enable_persistence=True, admin_token=TOKEN,
                                       sidecar_id="sc-first", trader_lease_seconds=30) as first, \
                    grpc.aio.insecure_channel(first.address) as ch:
                point = await live_history((rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)))
                done = await adg.AdminServiceStub(ch).RestoreRiskState(
                    request(point.recorded_at, "before a takeover", False), metadata=AUTH, timeout=10)
                assert done.state.trading_state == t.TRADING_STATE_REDUCING
            # sc-first stopped cleanly (leases released): sc-next claims the trader on its first call and replays
            # the trader's kill switches recorded after the restore only (none): the restored pause stays, though
            # a resume (recorded before the restore) would otherwise lift it.
            async with grpc.aio.insecure_channel(nxt.address) as ch:
                state = (await rsg.RiskServiceStub(ch).GetRiskState(
                    rs.GetRiskStateRequest(trader_id=TRADER, account_id=ACCOUNT), timeout=10)).state
                assert TRADER in nxt.engine.traders
                assert_same_as_stored(state, point.state)
                await adg.AdminServiceStub(ch).ResumeTrading(ad.ResumeTradingRequest(
                    trader_id=TRADER, account_id=ACCOUNT), metadata=AUTH, timeout=10)
                after = (await rsg.RiskServiceStub(ch).GetRiskState(
                    rs.GetRiskStateRequest(trader_id=TRADER, account_id=ACCOUNT), timeout=10)).state
                assert after.trading_state == t.TRADING_STATE_ACTIVE
