"""History is whole while the database keeps up; drops happen only when it cannot, and are counted.

Real PostgreSQL and SQLite. A bot fleet's burst (2,400 state changes per second, the rate at which rows used to be
dropped with the old 64-row queue: 0.7-11 % on PostgreSQL, 20-33 % on SQLite through the sidecar) goes through
the store with its default settings: every history row is written. During an outage (PostgreSQL behind a proxy
that refuses connections), rows beyond `queue_size` are dropped oldest first, logged and counted, and
`tradeguard_history_rows_*` reconcile: enqueued == written + dropped (+ rejected + pending, both 0 here).
Figures (changes/s, rows written/s) are printed.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from sqlalchemy import create_engine, pool, text

from tests.support.databases import make_state, postgres_database_fixture, store_url_fixture
from tests.support.proxy import FaultProxy
from tradeguard_server.observability.metrics import PrometheusMetrics
from tradeguard_server.store.records import HistoryRecord
from tradeguard_server.store.store import HISTORY_BACKLOG_ROWS, RiskStore, history_cost

pytestmark = pytest.mark.integration

pg_url = postgres_database_fixture()
db_url = store_url_fixture()

RATE = 2400.0  # state changes per second
SECONDS = 3.0
TRADERS = 50


def history_rows(url: str) -> int:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM risk_state_history")).scalar_one())
    finally:
        engine.dispose()


def exported(metrics: PrometheusMetrics) -> dict[str, float]:
    names = ("enqueued_total", "written_total", "dropped_total", "rejected_total", "pending")
    return {name: metrics.registry.get_sample_value(f"tradeguard_history_rows_{name}") or 0.0 for name in names}


async def burst(store: RiskStore, rate: float, seconds: float, first: int = 0) -> int:
    """Enqueue state changes of TRADERS traders at `rate` per second for `seconds`; returns how many."""
    loop = asyncio.get_running_loop()
    started, n = loop.time(), 0
    while (elapsed := loop.time() - started) < seconds:
        while n < int(elapsed * rate):
            version = first + n // TRADERS + 1
            store.enqueue_state(make_state(f"t-{n % TRADERS}", version), f"equity report {first + n}", None)
            n += 1
        await asyncio.sleep(0.005)  # pacing the producer, not waiting for the store
    return n


async def test_a_burst_of_2400_changes_per_second_writes_every_history_row(db_url: str) -> None:
    store = RiskStore(db_url, retry_max_s=0.2)  # default queue_size and batch_max
    metrics = PrometheusMetrics()
    metrics.observe_store(store)
    assert store.queue_size == HISTORY_BACKLOG_ROWS
    await store.start()
    try:
        await store.load()
        started = time.perf_counter()
        changes = await burst(store, RATE, SECONDS)
        assert await store.flush(timeout=60)
        elapsed = time.perf_counter() - started
    finally:
        assert await store.close(drain_timeout=10) == 0

    print(f"\n{db_url.split(':')[0]}: {changes / SECONDS:.0f} changes/s for {SECONDS:g} s, "
          f"{store.rows_written['history'] / elapsed:.0f} history rows written/s, {store.dropped_history} dropped, "
          f"{store.attempts} batches")
    assert store.dropped_history == 0
    assert store.enqueued["history"] == store.rows_written["history"] == changes
    assert history_rows(db_url) == changes
    assert exported(metrics) == {"enqueued_total": changes, "written_total": changes, "dropped_total": 0,
                                 "rejected_total": 0, "pending": 0}


async def test_an_outage_longer_than_the_backlog_drops_the_oldest_rows_counted_and_reconciled(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "tradeguard.store")
    proxy = await FaultProxy().start()
    store = RiskStore(proxy.url_for(pg_url), queue_size=100, retry_max_s=0.1)
    metrics = PrometheusMetrics()
    metrics.observe_store(store)
    before = history_rows(pg_url)
    await store.start()
    try:
        await store.load()
        store.enqueue_state(make_state("t-0", 1), "before the outage", None)
        assert await store.flush(timeout=10)
        proxy.cut()
        changes = 1 + await burst(store, 1000.0, 0.5, first=1)
        during = exported(metrics)
        assert during["dropped_total"] == store.dropped_history > 0
        assert during["dropped_total"] + during["pending"] == changes - 1  # the first change was written
        assert during["pending"] >= 100  # the full backlog, and a batch the writer may be retrying
        proxy.restore()
        assert await store.flush(timeout=30)
    finally:
        await store.close(drain_timeout=10)
        await proxy.close()

    dropped = store.dropped_history
    assert dropped > 0
    assert store.enqueued["history"] == store.rows_written["history"] + dropped == changes
    assert history_rows(pg_url) - before == store.rows_written["history"] == changes - dropped
    assert exported(metrics) == {"enqueued_total": changes, "written_total": changes - dropped,
                                 "dropped_total": dropped, "rejected_total": 0, "pending": 0}
    warnings = [r.getMessage() for r in caplog.records if "history backlog" in r.getMessage()]
    assert any("backlog full (queue_size=100 rows" in w for w in warnings)
    assert any(f"{dropped} history rows were dropped" in w for w in warnings)


async def test_the_backlog_is_also_capped_in_estimated_bytes_dropping_the_oldest_rows(db_url: str) -> None:
    state = make_state("t-0", 1)
    cost = history_cost(HistoryRecord("t-0", "a-1", state, "change 01", None, state.updated_at))
    store = RiskStore(db_url, queue_size=1000, history_backlog_bytes=10 * cost, retry_max_s=0.2)
    for version in range(1, 31):  # the writer is not running yet: everything queues
        store.enqueue_state(make_state("t-0", version), f"change {version:02d}", None)

    assert store.dropped_history == 20
    await store.start()
    try:
        assert await store.flush(timeout=10)
        kept, _cursor = await store.list_history("t-0", None, None, 100)
    finally:
        await store.close(drain_timeout=5)
    assert [h.reason for h in kept] == [f"change {v:02d}" for v in range(21, 31)]
    assert store.enqueued["history"] == store.rows_written["history"] + store.dropped_history == 30
