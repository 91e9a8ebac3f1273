"""Database outages: down at start, cut mid-run (a TCP proxy between the store and PostgreSQL), back again."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, pool, text

from tests.support.databases import (
    T0,
    closed_port,
    database_proxy_fixture,
    empty_tables,
    make_event,
    make_state,
    make_trade,
    open_store,
    paused,
    postgres_database_fixture,
    temporary_postgres_database,
)
from tests.support.proxy import FaultProxy
from tests.support.wait import eventually
from tradeguard_server.store.errors import StoreUnavailable
from tradeguard_server.store.migrate import current_revision, head_revision
from tradeguard_server.store.records import BreakerRecord, ConfigRecord
from tradeguard_server.store.store import RiskStore

pytestmark = pytest.mark.integration

pg_url = postgres_database_fixture()


proxy = database_proxy_fixture()


class Health:
    """Collects on_health_change calls; `wait(value)` returns when the store reports it."""

    def __init__(self, store: RiskStore) -> None:
        self.changes: list[bool] = []
        self._event = asyncio.Event()
        store.on_health_change = self._record

    def _record(self, healthy: bool) -> None:
        self.changes.append(healthy)
        self._event.set()

    async def wait(self, value: bool, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not (self.changes and self.changes[-1] is value):
                self._event.clear()
                await self._event.wait()


def count(url: str, table: str) -> int:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())  # noqa: S608
    finally:
        engine.dispose()


def enqueue_timed(store: RiskStore, fn_args: list[tuple[str, object]]) -> list[float]:
    """Enqueue every item; return the duration of each call in seconds."""
    durations = []
    for kind, item in fn_args:
        started = time.perf_counter()
        if kind == "state":
            store.enqueue_state(item, "equity_report", None)  # type: ignore[arg-type]
        elif kind == "trade":
            store.enqueue_trade(item)  # type: ignore[arg-type]
        else:
            store.enqueue_event(item)  # type: ignore[arg-type]
        durations.append(time.perf_counter() - started)
    return durations


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def test_enqueue_is_synchronous_so_it_can_never_wait_for_the_database() -> None:
    for name in ("enqueue_state", "enqueue_trade", "enqueue_event"):
        assert not inspect.iscoroutinefunction(getattr(RiskStore, name))


async def test_with_no_database_at_start_the_store_starts_and_reports_unavailable() -> None:
    url = f"postgresql://postgres@127.0.0.1:{closed_port()}/nowhere"
    async with open_store(url, drain_timeout=0.1) as store:
        store.enqueue_state(make_state(), "equity_report", None)
        store.enqueue_trade(make_trade("x-1"))

        with pytest.raises(StoreUnavailable):
            await store.load()
        with pytest.raises(StoreUnavailable):
            await store.save_config(ConfigRecord("a-1", "c-1"))
        with pytest.raises(StoreUnavailable):
            await store.list_breakers("a-1")
        assert store.healthy is False
        assert store.queue_depth == 3


async def test_database_down_at_start_then_up_migrates_and_writes_the_backlog(proxy: FaultProxy) -> None:
    with temporary_postgres_database("tg_outage") as url:
        proxy.cut()
        store = RiskStore(proxy.url_for(url), retry_max_s=0.1)
        health = Health(store)
        await store.start()
        try:
            with pytest.raises(StoreUnavailable):
                await store.load()
            for version in range(1, 6):
                store.enqueue_state(make_state("t-1", version), "equity_report", None)
            store.enqueue_event(make_event("e-1"))

            proxy.restore()
            await health.wait(True)
            stored_before = await store.load()  # the sidecar's late load; it releases the held snapshots
            assert await store.flush(timeout=10)

            loaded = await store.load()
        finally:
            assert await store.close(drain_timeout=5) == 0

        assert current_revision(url) == head_revision()
        assert stored_before.traders == []
        assert [t.version for t in loaded.traders] == [5]
        assert count(url, "risk_state_history") == 5
        assert count(url, "circuit_breaker_events") == 1


async def test_a_cut_mid_run_keeps_the_backlog_and_writes_it_when_the_database_returns(
    pg_url: str, proxy: FaultProxy, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    empty_tables(pg_url)
    caplog.set_level(logging.INFO, "tradeguard.store")
    store = RiskStore(proxy.url_for(pg_url), queue_size=64, retry_max_s=0.1)
    health = Health(store)
    await store.start()
    try:
        await health.wait(True)
        store.enqueue_state(make_state("t-0", 1), "before the cut", None)
        assert await store.flush(timeout=10)
        written_before = dict(store.rows_written)
        connections_before = proxy.connections

        proxy.cut()
        items: list[tuple[str, object]] = []
        for version in range(2, 302):  # 300 changes over 3 traders, 40 trades, 40 events
            items.append(("state", make_state(f"t-{version % 3}", version)))
            if version % 15 == 0:
                items.append(("trade", make_trade(f"x-{version}")))
                items.append(("event", make_event(f"e-{version}")))
        during_outage = enqueue_timed(store, items)
        await health.wait(False)

        assert store.rows_written == written_before  # nothing lands while it is down
        assert store.failures >= 1
        assert store.healthy is False

        proxy.restore()
        await health.wait(True)
        assert await store.flush(timeout=10)
    finally:
        assert await store.close(drain_timeout=5) == 0
    async with open_store(f"sqlite:///{tmp_path / 'baseline.db'}", queue_size=64) as healthy:
        baseline = enqueue_timed(healthy, items)  # the same calls on a store whose database is up

    # Enqueueing never waits for the database: as fast during the outage as on a healthy store (ratios of the
    # typical and the slow calls; a single call can always meet a GC pause or a GIL handoff on a busy machine).
    assert percentile(during_outage, 0.5) < 3 * percentile(baseline, 0.5)
    assert percentile(during_outage, 0.9) < 5 * percentile(baseline, 0.9)
    dropped = store.dropped_history
    assert dropped == 300 - 64  # during the outage only the newest 64 history rows are kept
    assert store.rows_written["history"] - written_before["history"] == 300 - dropped
    assert store.rows_written["trade"] == store.rows_written["event"] == 20
    assert count(pg_url, "risk_state_history") == 1 + 64
    assert (count(pg_url, "trade_reports"), count(pg_url, "circuit_breaker_events")) == (20, 20)
    loaded_versions = dict(_versions(pg_url))
    assert loaded_versions == {"t-0": 300, "t-1": 301, "t-2": 299}
    assert proxy.connections > connections_before  # it reconnected
    messages = [r.getMessage() for r in caplog.records]
    assert sum("store unavailable" in m for m in messages) == 1  # once per outage, not per retry
    assert sum("available again" in m for m in messages) == 1
    assert health.changes == [True, False, True]


def _versions(url: str) -> list[tuple[str, int]]:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return [(t, v) for t, v in conn.execute(text("SELECT trader_id, version FROM risk_state"))]
    finally:
        engine.dispose()


async def test_write_through_raises_unavailable_during_a_cut_and_works_after(pg_url: str, proxy: FaultProxy) -> None:
    empty_tables(pg_url)
    async with open_store(proxy.url_for(pg_url)) as store:
        await store.load()
        breaker = BreakerRecord("", "dd", "", "a-1", "max_drawdown", "alert", {"threshold": 0.1})

        proxy.cut()
        with pytest.raises(StoreUnavailable):
            await store.save_breaker(breaker)
        proxy.restore()
        saved = await store.save_breaker(breaker)

        assert await store.get_breaker(saved.id) == saved


async def test_no_database_call_runs_on_the_event_loop_thread_through_a_cut(pg_url: str, proxy: FaultProxy) -> None:
    """The event loop only moves records and awaits the threads: every connection attempt (those refused during
    the cut too) and every statement (writer batches, write-through, load) runs on the database thread."""
    empty_tables(pg_url)
    threads: list[str] = []

    def record(*_args: object) -> None:
        threads.append(threading.current_thread().name)

    async with open_store(proxy.url_for(pg_url)) as store:
        health = Health(store)
        event.listen(store.db.engine, "do_connect", record)
        event.listen(store.db.engine, "before_cursor_execute", record)
        await store.load()
        for version in range(1, 50):
            store.enqueue_state(make_state("t-1", version), "equity_report", None)
        assert await store.flush(timeout=10)

        proxy.cut()
        connects_before = proxy.refused
        for version in range(50, 100):
            store.enqueue_state(make_state("t-1", version), "equity_report", None)
        await health.wait(False)
        with pytest.raises(StoreUnavailable):
            await store.list_breakers("a-1")
        assert proxy.refused > connects_before  # connection attempts were made during the cut
        proxy.restore()
        assert await store.flush(timeout=10)
        await store.save_breaker(BreakerRecord("", "dd", "", "a-1", "max_drawdown", "alert", {"threshold": 0.1}))
        await store.load()

    assert threads and set(threads) == {"tradeguard-store-db"}


async def test_after_a_failed_load_snapshots_wait_for_a_successful_load_before_replacing_stored_ones(
    pg_url: str, proxy: FaultProxy
) -> None:
    """So a late load (the database returned after start) still reads what the previous run stored."""
    empty_tables(pg_url)
    async with open_store(pg_url) as previous_run:
        previous_run.enqueue_state(paused(make_state("t-1", 50), T0 + 1800), "breach", None)

    proxy.cut()
    store = RiskStore(proxy.url_for(pg_url), retry_max_s=0.1)
    health = Health(store)
    await store.start()
    try:
        with pytest.raises(StoreUnavailable):
            await store.load()
        store.enqueue_state(make_state("t-1", 3), "fresh state in memory", None)
        store.enqueue_trade(make_trade("x-1"))

        proxy.restore()
        await health.wait(True)
        # the trade and the history row are written (no event to await: the snapshot stays queued)
        assert await eventually(lambda: store.queue_depth <= 1, timeout=10)
        assert await store.flush(timeout=0.3) is False  # the snapshot is held...
        assert count(pg_url, "trade_reports") == 1  # ...the rest is written
        assert count(pg_url, "risk_state_history") == 2

        loaded = await store.load()  # what the lead's late load does, then it merges
        assert [(t.version, bool(t.pauses)) for t in loaded.traders] == [(50, True)]

        assert await store.flush(timeout=10)  # released by the successful load
    finally:
        assert await store.close(drain_timeout=5) == 0
    assert _versions(pg_url) == [("t-1", 3)]


async def test_a_stored_row_that_cannot_be_read_is_skipped_at_load(pg_url: str) -> None:
    empty_tables(pg_url)
    async with open_store(pg_url) as store:
        store.enqueue_state(make_state("t-good", 1), "equity_report", None)
        store.enqueue_state(make_state("t-edited", 1), "equity_report", None)
        assert await store.flush(timeout=10)
        engine = create_engine(pg_url, poolclass=pool.NullPool)
        try:
            with engine.begin() as conn:
                conn.execute(text("UPDATE risk_state SET pauses = '[{\"state\": \"BOGUS\"}]' "
                                  "WHERE trader_id = 't-edited'"))
        finally:
            engine.dispose()

        loaded = await store.load()

    assert [t.trader_id for t in loaded.traders] == ["t-good"]


@pytest.mark.parametrize("committed", [True, False], ids=["commit-reached-the-server", "commit-lost"])
async def test_a_connection_lost_during_commit_neither_duplicates_nor_loses_the_batch(
    pg_url: str, proxy: FaultProxy, committed: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """History rows have no natural key: rewriting a batch that did commit would duplicate them. The store
    asks PostgreSQL (txid_status) what became of a commit cut short before it writes the batch again."""
    empty_tables(pg_url)
    caplog.set_level(logging.INFO, "tradeguard.store")
    store = RiskStore(proxy.url_for(pg_url), queue_size=1000, retry_max_s=0.1)
    health = Health(store)
    await store.start()
    try:
        await store.load()
        proxy.trap_commit(deliver=committed)
        for version in range(1, 51):
            store.enqueue_state(make_state(f"t-{version % 5}", version), "equity_report", None)
            store.enqueue_event(make_event(f"e-{version}"))
        await health.wait(False)
        assert await store.flush(timeout=10)
    finally:
        assert await store.close(drain_timeout=5) == 0

    assert proxy.commits_trapped == 1
    assert count(pg_url, "risk_state_history") == store.rows_written["history"] == 50
    assert count(pg_url, "circuit_breaker_events") == store.rows_written["event"] == 50
    assert ("did commit" in caplog.text) is committed
