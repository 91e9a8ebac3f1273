"""The local spool (store/spool.py, issue 21): what the store cannot write during a PostgreSQL outage goes to a
local SQLite file, survives the process, and is replayed into PostgreSQL exactly once.

Real PostgreSQL, cut with the suite's TCP proxy (never by stopping the server)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import create_engine, pool, text
from sqlalchemy.engine import make_url

from tests.integration.test_metrics_restart_and_outage import scrape, value
from tests.support.databases import (
    T0,
    database_proxy_fixture,
    empty_tables,
    make_event,
    make_state,
    make_trade,
    open_store,
    paused,
    postgres_database_fixture,
)
from tests.support.proxy import FaultProxy
from tests.support.sidecar import running_sidecar
from tests.support.wait import eventually
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as types
from tradeguard_server.store.queue import Batch
from tradeguard_server.store.records import HistoryRecord, LoadedState
from tradeguard_server.store.spool import Spool
from tradeguard_server.store.store import RiskStore

pytestmark = pytest.mark.integration

pg_url = postgres_database_fixture()


proxy = database_proxy_fixture()


@pytest.fixture
def db(pg_url: str) -> str:
    empty_tables(pg_url)
    return pg_url


def query(url: str, sql: str) -> list[tuple[object, ...]]:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql)).all()]
    finally:
        engine.dispose()


def counts(url: str) -> dict[str, int]:
    return {t: int(query(url, f"SELECT count(*) FROM {t}")[0][0])  # noqa: S608
            for t in ("risk_state", "risk_state_history", "trade_reports", "circuit_breaker_events")}


TRADERS = 5
CHANGES = 40  # per trader


def load_during_outage(store: object) -> None:
    """40 state changes (with history) per trader, 3 trades and 2 breaker events per trader; trader t-0 ends
    paused (a loss-limit breach)."""
    for i in range(TRADERS):
        for v in range(1, CHANGES + 1):
            rec = make_state(f"t-{i}", v)
            if i == 0 and v == CHANGES:
                rec = paused(rec, T0 + 3600)
            store.enqueue_state(rec, f"change {v}", None)  # type: ignore[attr-defined]
        for k in range(3):
            store.enqueue_trade(make_trade(f"tr-{i}-{k}", f"t-{i}"))  # type: ignore[attr-defined]
        for k in range(2):
            store.enqueue_event(make_event(f"00000000-0000-4000-8000-0000000{i:02d}{k:03d}",  # type: ignore[attr-defined]
                                           trader_id=f"t-{i}"))


def expect_written_once(url: str) -> None:
    assert counts(url) == {"risk_state": TRADERS, "risk_state_history": TRADERS * CHANGES,
                           "trade_reports": TRADERS * 3, "circuit_breaker_events": TRADERS * 2}
    versions = dict(query(url, "SELECT trader_id, version FROM risk_state"))
    assert versions == {f"t-{i}": CHANGES for i in range(TRADERS)}
    dup = query(url, "SELECT count(*) FROM (SELECT trader_id, version FROM risk_state_history "
                     "GROUP BY trader_id, version HAVING count(*) > 1) d")
    assert dup[0][0] == 0



async def load_once_reachable(store: RiskStore) -> LoadedState:
    """store.load() once the writer has reconnected: before that it raises StoreUnavailable (the sidecar retries
    it), and a load right after proxy.restore() may come before the reconnect."""
    assert await eventually(lambda: store.healthy), "the store did not reconnect after the proxy was restored"
    return await store.load()


async def test_an_outage_backlog_goes_to_the_spool_not_memory_and_is_replayed_once(
        db: str, proxy: FaultProxy, tmp_path: Path) -> None:
    spool_path = str(tmp_path / "spool.db")
    async with open_store(proxy.url_for(db), spool_path=spool_path) as store:
        await eventually(lambda: store.healthy)
        proxy.cut()
        load_during_outage(store)
        spool = store.spool
        assert spool is not None
        # states coalesce per trader in the spool: one row each, plus every history row, trade and event
        await eventually(lambda: store.queue_depth == 0 and spool.depth == TRADERS * (1 + CHANGES + 3 + 2),
                         timeout=15)
        assert counts(db)["risk_state_history"] == 0
        proxy.restore()
        assert await store.flush(timeout=20)
        assert spool.depth == 0
        assert spool.stats.replayed["trade"] == TRADERS * 3
        assert spool.stats.replayed["event"] == TRADERS * 2
    expect_written_once(db)


async def test_a_shutdown_during_an_outage_spools_the_backlog_and_the_next_start_answers_from_it_then_replays(
        db: str, proxy: FaultProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool_path = str(tmp_path / "spool.db")
    caplog.set_level(logging.INFO, "tradeguard.store")
    async with open_store(proxy.url_for(db), drain_timeout=0.5, spool_path=spool_path) as store:
        await eventually(lambda: store.healthy)
        proxy.cut()
        load_during_outage(store)
    assert "items spooled to " + spool_path in caplog.text
    assert counts(db)["trade_reports"] == 0
    # a new process, the database still unreachable: the latest states come from the spool
    async with open_store(proxy.url_for(db), spool_path=spool_path) as store:
        states, trade_ids = await store.spooled_states()
        by_trader = {s.trader_id: s for s in states}
        assert {t: s.version for t, s in by_trader.items()} == {f"t-{i}": CHANGES for i in range(TRADERS)}
        assert by_trader["t-0"].pauses, "the breach's pause is in the spooled state"
        assert trade_ids["t-1"] == ["tr-1-0", "tr-1-1", "tr-1-2"]
        proxy.restore()
        loaded = await load_once_reachable(store)  # replays the spool first, then reads
        assert {s.trader_id: s.version for s in loaded.traders} == {f"t-{i}": CHANGES for i in range(TRADERS)}
        assert store.spool is not None and store.spool.depth == 0
    expect_written_once(db)


async def test_a_replay_whose_commit_answer_is_lost_is_settled_by_txid_status_not_written_twice(
        db: str, proxy: FaultProxy, tmp_path: Path) -> None:
    spool_path = str(tmp_path / "spool.db")
    async with open_store(proxy.url_for(db), drain_timeout=0.5, spool_path=spool_path) as store:
        await eventually(lambda: store.healthy)
        proxy.cut()
        load_during_outage(store)
    async with open_store(proxy.url_for(db), spool_path=spool_path, batch_max=10_000) as store:
        proxy.lose_commit_acks(1)  # the replay's COMMIT reaches the server; its answer never comes back
        proxy.restore()
        await load_once_reachable(store)
        assert proxy.commit_acks_lost == 1
    expect_written_once(db)


async def test_a_spooled_state_loses_against_a_newer_lease_epoch_written_meanwhile(
        db: str, proxy: FaultProxy, tmp_path: Path) -> None:
    spool_path = str(tmp_path / "spool.db")
    async with open_store(proxy.url_for(db), drain_timeout=0.5, spool_path=spool_path) as store:
        store.writer.epoch_of = lambda trader_id: 100  # cluster mode: this sidecar's lease epoch
        await eventually(lambda: store.healthy)
        proxy.cut()
        store.enqueue_state(make_state("t-0", 7), "before the takeover", None)
    # during the outage another sidecar took t-0 over (epoch 200) and wrote version 3
    async with open_store(db) as other:
        other.writer.epoch_of = lambda trader_id: 200
        other.enqueue_state(make_state("t-0", 3), "the new owner", None)
        assert await other.flush(timeout=10)
    async with open_store(proxy.url_for(db), spool_path=spool_path) as store:
        proxy.restore()
        await load_once_reachable(store)
        assert store.spool is not None and store.spool.stats.replayed["state"] == 1
    assert query(db, "SELECT version, epoch FROM risk_state WHERE trader_id = 't-0'") == [(3, 200)]


async def test_a_full_spool_drops_the_oldest_history_only_and_keeps_states_trades_and_events(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "spool.db"), max_bytes=1 << 20)
    await spool.open()
    try:
        big = "x" * 2_000  # ~2 KB reasons: 1,000 history rows are ~2 MB, twice the limit
        for round_ in range(10):
            batch = Batch()
            for v in range(100):
                rec = make_state(f"t-{v % 3}", round_ * 100 + v + 1)
                batch.states.append((v, rec))
                batch.history.append((v, HistoryRecord(rec.trader_id, rec.account_id, rec, big, None, T0)))
            batch.trades.append((0, make_trade(f"tr-{round_}"), T0))
            batch.events.append((0, make_event(f"ev-{round_}")))
            await spool.append_batch(batch, {f"t-{i}": 1 for i in range(3)})
        stats = spool.stats
        assert stats.bytes <= 1 << 20
        assert stats.dropped["history"] > 0
        assert stats.dropped["state"] == stats.dropped["trade"] == stats.dropped["event"] == 0
        rows = await spool.read(100_000)
        kinds = [r.kind for r in rows]
        assert kinds.count("state") == 3 and kinds.count("trade") == 10 and kinds.count("event") == 10
        assert kinds.count("history") == 1_000 - stats.dropped["history"]
        history = [r.item.state.version for r in rows if r.kind == "history"]
        assert history == sorted(history) and history[-1] == 1_000, "the newest history rows are kept"
        versions = {r.item.trader_id: r.item.version for r in rows if r.kind == "state"}
        assert versions == {"t-0": 1000, "t-1": 998, "t-2": 999}, "each trader's newest state"
        assert not stats.over_limit
    finally:
        await spool.close()


async def test_the_spool_reads_back_only_record_types(tmp_path: Path) -> None:
    import pickle
    import sqlite3

    spool = Spool(str(tmp_path / "spool.db"))
    await spool.open()
    await spool.close()
    conn = sqlite3.connect(tmp_path / "spool.db")
    evil = pickle.dumps(dataclasses.replace)  # a callable, not a record: never built
    conn.execute("INSERT INTO spool (kind, at, size, data) VALUES ('event', 0, ?, ?)", (len(evil), evil))
    conn.commit()
    conn.close()
    spool = Spool(str(tmp_path / "spool.db"))
    await spool.open()
    try:
        assert await spool.read(10) == []
        assert spool.depth == 0
        assert (tmp_path / "spool.db.unreadable").stat().st_size > len(evil)
    finally:
        await spool.close()


async def test_a_spool_of_another_database_is_moved_aside_and_never_replayed_into_this_one(
        db: str, proxy: FaultProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool_path = tmp_path / "spool.db"
    async with open_store(proxy.url_for(db), drain_timeout=0.5, spool_path=str(spool_path)) as store:
        await eventually(lambda: store.healthy)
        proxy.cut()
        load_during_outage(store)
    proxy.restore()
    other = make_url(db).set(database="postgres").render_as_string(hide_password=False)
    spool = Spool(str(spool_path), database=make_url(other).database or "")
    await spool.open()
    try:
        assert spool.depth == 0
    finally:
        await spool.close()
    moved = [p for p in tmp_path.iterdir() if p.name.startswith(f"spool.db.{make_url(db).database}-")]
    assert moved, list(tmp_path.iterdir())
    assert "moved to" in caplog.text and "not replayed" in caplog.text
    assert counts(db)["trade_reports"] == 0  # and nothing of it reached the first database either


async def test_the_spool_shows_in_metrics_and_health_during_an_outage_and_empties_after(
        db: str, proxy: FaultProxy, tmp_path: Path) -> None:
    async with running_sidecar(database_url=proxy.url_for(db), enable_persistence=True,
                               metrics_listen="127.0.0.1:0", spool_path=str(tmp_path / "spool.db")) as sc, \
            grpc.aio.insecure_channel(sc.address) as ch:
        risk = rsg.RiskServiceStub(ch)
        await risk.ReportEquity(rs.ReportEquityRequest(trader_id="bot-1", account_id="acct", equity=10_000))
        assert await sc.store.flush(timeout=10)
        proxy.cut()
        for k in range(20):
            await risk.ReportTrade(rs.ReportTradeRequest(trader_id="bot-1", account_id="acct", trade_id=f"t-{k}",
                                                         side=types.SIDE_BUY,
                                                         symbol="BTCUSDT", exchange="binance", realized_pnl=-1.0))
        assert await eventually(lambda: (value(scrape(sc.metrics_address), "tradeguard_spool_depth") or 0) >= 20)
        samples = scrape(sc.metrics_address)
        assert (value(samples, "tradeguard_spool_bytes") or 0) > 0
        assert value(samples, "tradeguard_spool_oldest_age_seconds") is not None
        assert value(samples, "tradeguard_spool_dropped_total", kind="history") == 0
        health = health_pb2_grpc.HealthStub(ch)
        assert await eventually(lambda: _serving(health, "tradeguard.spool"))
        proxy.restore()
        assert await sc.store.flush(timeout=20)
        samples = scrape(sc.metrics_address)
        assert value(samples, "tradeguard_spool_depth") == 0
        assert value(samples, "tradeguard_spool_replayed_total", kind="trade") == 20
    assert counts(db)["trade_reports"] == 20


async def _serving(health: health_pb2_grpc.HealthStub, service: str) -> bool:
    reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
