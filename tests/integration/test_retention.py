"""History retention (store/retention.py) on PostgreSQL and SQLite, in a running sidecar: rows older than the
retention are gone, newer ones kept, each trader keeps its newest row and every row a kept row refers to, deletes
go in batches, the metrics count them; in cluster mode one sidecar prunes at a time; TimescaleDB is detected (not
installed here: the batched deletes are used).
"""

from __future__ import annotations

import copy
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import Engine, create_engine, func, insert, select

from tests.support.pg import fresh_database
from tests.support.sidecar import running_sidecar
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.observability.metrics import PrometheusMetrics
from tradeguard_server.sidecar import Sidecar
from tradeguard_server.store.codec import HISTORY_MAPS
from tradeguard_server.store.retention import EVENTS, HISTORY, OUTBOX, TRADES, OwnConnection, history_is_hypertable

pytestmark = pytest.mark.integration

ACCOUNT = "acct-ret"
DAY = 86_400.0
OLD_ROWS = 450  # per trader, 30 days old (retention: 1 day)
BATCH = 100
SETTINGS: dict[str, Any] = {
    "enable_persistence": True, "history_retention_days": 1, "trade_retention_days": 7,
    "breaker_event_retention_days": 1, "retention_batch_size": BATCH, "retention_interval_seconds": 3600,
    "metrics_listen": "127.0.0.1:0",
}


@pytest.fixture(params=["postgresql", "sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'retention.db'}"
        return
    with fresh_database("tradeguard_retention") as url:
        yield url


@pytest.fixture
def db(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
async def sidecar(database_url: str) -> AsyncIterator[Sidecar]:
    async with running_sidecar(database_url=database_url, sidecar_id="sc-1", **SETTINGS) as sc:
        yield sc


async def report(sc: Sidecar, trader_id: str, *equities: float) -> None:
    async with grpc.aio.insecure_channel(sc.address) as ch:
        risk = rsg.RiskServiceStub(ch)
        for equity in equities:
            await risk.ReportEquity(rs.ReportEquityRequest(trader_id=trader_id, account_id=ACCOUNT, equity=equity),
                                    timeout=10)
    assert await sc.store.flush(timeout=10)


def first_state(db: Engine, trader_id: str) -> dict[str, Any]:
    """The state JSON of the trader's first history row (a full row: it holds every map)."""
    with db.connect() as conn:
        state = conn.execute(select(HISTORY.c.state).where(HISTORY.c.trader_id == trader_id)
                             .order_by(HISTORY.c.id).limit(1)).scalar_one()
    assert "unchanged" not in state
    return dict(state)


def history_rows(state: dict[str, Any], trader_id: str, start: float, n: int, tag: str, full_every: int
                 ) -> list[dict[str, Any]]:
    """`n` history rows one second apart from `start`: every `full_every`-th a full row (its maps its own, tag
    "<tag>.<i>"), the others referring to the last full one for every map (as the writer makes them)."""
    out, base = [], ""
    for i in range(n):
        s = copy.deepcopy(state)
        s["tag"] = f"{tag}.{i}"
        if i % full_every == 0:
            base = s["tag"]
        else:
            for name in HISTORY_MAPS:
                s.pop(name, None)
            s["unchanged"] = dict.fromkeys(HISTORY_MAPS, base)
        out.append({"recorded_at": start + i, "trader_id": trader_id, "account_id": ACCOUNT,
                    "trading_state": "ACTIVE", "current_equity": 1.0, "drawdown_pct": 0.0, "daily_pnl": 0.0,
                    "paused_until": None, "reason": "old", "trace_id": None, "state": s})
    return out


def count(db: Engine, table: Any, *where: Any) -> int:
    with db.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def fill_old_rows(db: Engine, state: dict[str, Any], now: float) -> None:
    old = now - 30 * DAY
    with db.begin() as conn:
        # bot-1: old rows, every 50th full; its recent rows come from the sidecar. bot-old: only old rows.
        conn.execute(insert(HISTORY), history_rows(state, "bot-1", old, OLD_ROWS, "old1", 50))
        conn.execute(insert(HISTORY), history_rows(state, "bot-old", old, OLD_ROWS, "old2", 50))
        conn.execute(insert(TRADES), [
            {"trader_id": "bot-1", "trade_id": f"t-old-{i}", "account_id": ACCOUNT, "symbol": "BTCUSDT",
             "exchange": "binance", "side": "BUY", "realized_pnl": 1.0, "closed_at": old, "recorded_at": old + i}
            for i in range(250)])
        conn.execute(insert(EVENTS), [
            {"id": f"ev-old-{i}", "circuit_breaker_id": "b-1", "trader_id": "bot-1", "account_id": ACCOUNT,
             "timestamp": old + i, "triggered_values": {}, "action_taken": "alert", "action_result": {},
             "positions_affected": [], "shadow": False} for i in range(150)])
        conn.execute(insert(OUTBOX), [
            {"key": f"alert-{i}", "notifier": "webhook", "event": "trader_paused", "sidecar": "sc-1",
             "trader_id": "bot-1", "account_id": ACCOUNT, "payload": {}, "created_at": at, "attempts": 1,
             "next_attempt_at": at, "delivered_at": at + 1 if i % 2 else None, "last_error": None}
            for i, at in enumerate([old + i for i in range(120)] + [now])])
        conn.execute(insert(EVENTS), [
            {"id": "ev-new", "circuit_breaker_id": "b-1", "trader_id": "bot-1", "account_id": ACCOUNT,
             "timestamp": now, "triggered_values": {}, "action_taken": "alert", "action_result": {},
             "positions_affected": [], "shadow": False}])


async def test_rows_older_than_the_retention_are_pruned_in_batches_and_the_rest_kept(
        sidecar: Sidecar, db: Engine) -> None:
    await report(sidecar, "bot-1", 10_000.0, 10_100.0, 10_200.0)
    async with grpc.aio.insecure_channel(sidecar.address) as ch:
        await rsg.RiskServiceStub(ch).ReportTrade(rs.ReportTradeRequest(
            trader_id="bot-1", account_id=ACCOUNT, trade_id="t-new", symbol="BTCUSDT", side=t.SIDE_SELL,
            realized_pnl=5.0), timeout=10)
    assert await sidecar.store.flush(timeout=10)
    now = time.time()
    recent = count(db, HISTORY, HISTORY.c.trader_id == "bot-1")
    fill_old_rows(db, first_state(db, "bot-1"), now)
    cutoff = now - DAY
    assert sidecar.pruner is not None

    done = await sidecar.pruner.run_once()

    assert done is not None
    # bot-1: old rows up to its newest old full row (row 400) pruned; that row and the 49 after it kept.
    kept_old = OLD_ROWS - (OLD_ROWS - 1) // 50 * 50
    assert count(db, HISTORY, HISTORY.c.trader_id == "bot-1", HISTORY.c.recorded_at < cutoff) == kept_old
    assert count(db, HISTORY, HISTORY.c.trader_id == "bot-1", HISTORY.c.recorded_at >= cutoff) == recent
    assert count(db, HISTORY, HISTORY.c.trader_id == "bot-old") == kept_old  # its newest rows: a restore target
    assert done["risk_state_history"] == 2 * (OLD_ROWS - kept_old)
    assert count(db, TRADES) == 1 and done["trade_reports"] == 250
    assert count(db, EVENTS) == 1 and done["circuit_breaker_events"] == 150
    assert count(db, OUTBOX) == 1 and done["alert_outbox"] == 120  # (delivered or not: a year-old alert is moot)
    assert sidecar.pruner.batches["risk_state_history"] >= 2 * ((OLD_ROWS - kept_old) // BATCH)
    assert sidecar.pruner.batches["trade_reports"] == 3  # 100 + 100 + 50
    metrics = sidecar.metrics
    assert isinstance(metrics, PrometheusMetrics)
    for table, n in done.items():
        assert metrics.registry.get_sample_value("tradeguard_retention_rows_pruned_total", {"table": table}) == n
    last = metrics.registry.get_sample_value("tradeguard_retention_last_run_timestamp_seconds")
    assert last is not None and last >= now
    # Every kept row reads whole (the rows a kept row refers to are kept), and the newest is a restore point.
    async with grpc.aio.insecure_channel(sidecar.address) as ch:
        admin = adg.AdminServiceStub(ch)
        listed = await admin.ListRiskStateHistory(ad.ListRiskStateHistoryRequest(
            trader_id="bot-old", account_id=ACCOUNT, page_size=1000), timeout=10)
        assert len(listed.entries) == kept_old
        assert not [e.reason for e in listed.entries if "no longer stored" in e.reason]
        dry = await admin.RestoreRiskState(ad.RestoreRiskStateRequest(
            trader_id="bot-old", account_id=ACCOUNT, at=listed.entries[-1].recorded_at), timeout=10)
        assert dry.dry_run and dry.recorded_reason == "old"

    again = await sidecar.pruner.run_once()

    assert again == {"risk_state_history": 0, "trade_reports": 0, "circuit_breaker_events": 0, "alert_outbox": 0}


async def test_timescaledb_is_not_installed_here_so_the_history_is_pruned_by_batched_deletes(
        sidecar: Sidecar) -> None:
    assert sidecar.pruner is not None
    runner = sidecar.pruner.runner
    assert await runner.run(history_is_hypertable) is False
    assert not sidecar.pruner.timescale


async def test_one_sidecar_prunes_at_a_time_on_one_postgresql_database() -> None:
    with fresh_database("tradeguard_retention_lock") as url:
        async with running_sidecar(database_url=url, sidecar_id="sc-a", **SETTINGS) as a, \
                running_sidecar(database_url=url, sidecar_id="sc-b", **SETTINGS) as b:
            await report(a, "bot-1", 10_000.0, 10_100.0)
            engine = create_engine(url)
            try:
                fill_old_rows(engine, first_state(engine, "bot-1"), time.time())
                assert a.pruner is not None and b.pruner is not None
                holder = b.pruner.runner
                assert isinstance(holder, OwnConnection)
                assert await holder.lock()  # sidecar b is pruning

                skipped = await a.pruner.run_once()

                assert skipped is None and a.pruner.skipped == 1
                assert count(engine, TRADES) == 250  # nothing deleted while b holds the lock
                await holder.unlock()
                done = await a.pruner.run_once()
                assert done is not None and done["trade_reports"] == 250
            finally:
                engine.dispose()


async def test_a_run_that_meets_a_cut_database_warns_and_is_tried_again_within_a_minute(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """Found by the timing audit: the pruner's own connection raised sqlalchemy's OperationalError, which is not a
    StoreError: an ERROR with a traceback, and the next run an interval (an hour) later. Now: the "database
    unavailable" warning, the next try within RETRY_UNAVAILABLE_S, and a run once the database is back."""
    from tests.support.proxy import FaultProxy
    from tests.support.wait import eventually
    from tradeguard_server.store import retention

    monkeypatch.setattr(retention, "FIRST_RUN_DELAY_S", 0.5)
    monkeypatch.setattr(retention, "RETRY_UNAVAILABLE_S", 0.5)
    caplog.set_level("INFO", logger="tradeguard.retention")
    proxy = await FaultProxy().start()
    try:
        with fresh_database("tradeguard_retention") as pg_url:
            async with running_sidecar(database_url=proxy.url_for(pg_url), sidecar_id="sc-1", **SETTINGS) as sc:
                pruner = sc.pruner
                assert pruner is not None
                proxy.cut()

                def warned() -> bool:
                    return any("database unavailable" in r.getMessage() for r in caplog.records)

                assert await eventually(warned, timeout=30)
                proxy.restore()
                assert await eventually(lambda: pruner.last_run_at > 0, timeout=30)
    finally:
        await proxy.close()
    retention_records = [r for r in caplog.records if r.name == "tradeguard.retention"]
    assert not [r for r in retention_records if r.levelname == "ERROR"], [r.getMessage() for r in retention_records]
    assert any("next try in 0.5s" in r.getMessage() for r in retention_records)
