"""The write queue: coalescing, overflow, never-dropped trades and events, flush/close, bad rows."""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import replace
from itertools import count

import pytest
from sqlalchemy import create_engine, pool, text

from tests.support.databases import (
    closed_port,
    make_event,
    make_state,
    make_trade,
    open_store,
    postgres_database_fixture,
    store_url_fixture,
)
from tradeguard_server.store.store import RiskStore

pytestmark = pytest.mark.integration

pg_url = postgres_database_fixture()
db_url = store_url_fixture()


def rows(url: str, table: str, where: str = "") -> int:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM {table} {where}")).scalar_one())  # noqa: S608
    finally:
        engine.dispose()


def versions(url: str) -> dict[str, int]:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return {t: v for t, v in conn.execute(text("SELECT trader_id, version FROM risk_state"))}
    finally:
        engine.dispose()


# ---- coalescing ----------------------------------------------------------------------------------------------

async def test_newest_version_of_each_trader_wins_whatever_the_enqueue_order(db_url: str) -> None:
    traders = [f"t-{i}" for i in range(5)]
    enqueued = [(t, v) for t in traders for v in range(1, 21)]
    random.Random(7).shuffle(enqueued)
    async with open_store(db_url, queue_size=1000) as store:
        for trader_id, version in enqueued:
            store.enqueue_state(make_state(trader_id, version), "equity_report", None)

        assert await store.flush(timeout=10)

        assert store.coalesced == len(enqueued) - len(traders)
    assert versions(db_url) == dict.fromkeys(traders, 20)


async def test_an_older_snapshot_never_overwrites_a_newer_one_in_the_database(db_url: str) -> None:
    async with open_store(db_url) as store:
        store.enqueue_state(make_state("t-1", 5), "equity_report", None)
        assert await store.flush(timeout=10)

        store.enqueue_state(make_state("t-1", 3), "late retry", None)
        assert await store.flush(timeout=10)

    assert versions(db_url) == {"t-1": 5}


async def test_many_concurrent_enqueuers_newest_version_wins_and_history_counts_are_exact(db_url: str) -> None:
    versions_of = count(1)
    newest: dict[str, int] = {}

    async def trader_bot(store: RiskStore, n: int) -> None:
        for _ in range(40):
            trader_id = f"t-{n % 8}"
            version = next(versions_of)
            newest[trader_id] = max(newest.get(trader_id, 0), version)
            store.enqueue_state(make_state(trader_id, version), "equity_report", f"{version:032x}")
            await asyncio.sleep(0)

    async with open_store(db_url) as store:  # default queue: 64 history rows
        await asyncio.gather(*(trader_bot(store, n) for n in range(100)))
        assert await store.flush(timeout=30)

        enqueued, dropped = store.enqueued["history"], store.dropped_history
        assert enqueued == 4000
        assert store.rows_written["history"] == enqueued - dropped
    assert rows(db_url, "risk_state_history") == enqueued - dropped
    assert versions(db_url) == newest


# ---- overflow --------------------------------------------------------------------------------------------------

async def test_history_overflow_drops_exactly_the_oldest_rows_with_one_warning(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "tradeguard.store")
    store = RiskStore(db_url, queue_size=64)
    for version in range(1, 101):  # the writer is not running yet: everything queues
        store.enqueue_state(make_state("t-1", version), f"change {version}", None)

    assert store.dropped_history == 36
    assert store.queue_depth == 1 + 64
    await store.start()
    try:
        assert await store.flush(timeout=10)
    finally:
        assert await store.close(drain_timeout=5) == 0

    assert rows(db_url, "risk_state_history") == 64
    assert rows(db_url, "risk_state_history", "WHERE reason = 'change 37'") == 1  # the oldest one kept
    assert rows(db_url, "risk_state_history", "WHERE reason = 'change 36'") == 0
    assert versions(db_url) == {"t-1": 100}  # the snapshot survives any overflow
    assert sum("history backlog full" in r.message for r in caplog.records) == 1


async def test_trades_and_events_are_never_dropped(db_url: str) -> None:
    store = RiskStore(db_url, queue_size=4, batch_max=100)
    for i in range(1000):
        store.enqueue_trade(make_trade(f"x-{i}"))
        store.enqueue_event(make_event(f"e-{i}"))
        store.enqueue_state(make_state("t-1", i + 1), "trade_report", None)
    await store.start()
    try:
        assert await store.flush(timeout=30)
    finally:
        await store.close(drain_timeout=5)

    assert (rows(db_url, "trade_reports"), rows(db_url, "circuit_breaker_events")) == (1000, 1000)
    assert store.rows_written["trade"] == store.rows_written["event"] == 1000
    assert store.dropped_history == 1000 - 4


async def test_a_retried_trade_report_is_stored_once(db_url: str) -> None:
    async with open_store(db_url) as store:
        store.enqueue_trade(make_trade("x-1"))
        assert await store.flush(timeout=10)
        store.enqueue_trade(make_trade("x-1"))
        store.enqueue_trade(make_trade("x-1", pnl=99.0))
        assert await store.flush(timeout=10)

        loaded = await store.load()

    assert rows(db_url, "trade_reports") == 1
    assert loaded.trade_ids == {"t-1": ["x-1"]}


async def test_events_without_an_id_get_one(db_url: str) -> None:
    async with open_store(db_url) as store:
        store.enqueue_event(make_event(""))
        store.enqueue_event(make_event(""))
        assert await store.flush(timeout=10)

        events, _cursor = await store.list_events("a-1", None, 10)

    assert len({e.id for e in events}) == 2
    assert all(len(e.id) == 36 for e in events)


# ---- flush and close ---------------------------------------------------------------------------------------------

async def test_flush_returns_once_everything_enqueued_before_it_is_written(db_url: str) -> None:
    async with open_store(db_url, queue_size=500) as store:
        for version in range(1, 201):
            store.enqueue_state(make_state(f"t-{version % 3}", version), "equity_report", None)
            store.enqueue_trade(make_trade(f"x-{version}"))

        assert await store.flush(timeout=10)

        assert rows(db_url, "risk_state_history") == 200
        assert rows(db_url, "trade_reports") == 200
        assert store.queue_depth == 0


async def test_flush_times_out_while_the_database_is_unreachable() -> None:
    url = f"postgresql://postgres@127.0.0.1:{closed_port()}/nowhere"
    async with open_store(url, drain_timeout=0.1) as store:
        store.enqueue_state(make_state(), "equity_report", None)

        assert await store.flush(timeout=0.2) is False
        assert store.queue_depth == 2


async def test_close_drains_and_everything_enqueued_minus_dropped_is_written(db_url: str) -> None:
    store = RiskStore(db_url, queue_size=64)
    await store.start()
    for i in range(300):
        store.enqueue_state(make_state(f"t-{i % 4}", i + 1), "equity_report", None)
        if i % 3 == 0:
            store.enqueue_trade(make_trade(f"x-{i}"))
            store.enqueue_event(make_event(f"e-{i}"))

    left = await store.close(drain_timeout=10)

    assert left == 0
    assert rows(db_url, "risk_state_history") == store.enqueued["history"] - store.dropped_history
    assert rows(db_url, "trade_reports") == rows(db_url, "circuit_breaker_events") == 100
    assert rows(db_url, "risk_state") == 4


async def test_close_with_the_database_down_returns_the_rows_left_unwritten() -> None:
    store = RiskStore(f"postgresql://postgres@127.0.0.1:{closed_port()}/nowhere", retry_max_s=0.05)
    await store.start()
    for version in range(1, 11):
        store.enqueue_state(make_state(f"t-{version % 2}", version), "equity_report", None)
    for i in range(3):
        store.enqueue_trade(make_trade(f"x-{i}"))

    left = await store.close(drain_timeout=0.2)

    assert left == 2 + 10 + 3  # two coalesced snapshots, ten history rows, three trades
    store.enqueue_state(make_state("t-1", 99), "after close", None)  # ignored, never raises
    assert store.queue_depth == left


async def test_with_persistence_disabled_nothing_is_queued(db_url: str) -> None:
    async with open_store(db_url) as store:
        store.persistence_enabled = False
        store.enqueue_state(make_state("t-1", 1), "equity_report", None)
        store.enqueue_trade(make_trade("x-1"))
        store.enqueue_event(make_event("e-1"))
        assert store.queue_depth == 0

        store.persistence_enabled = True
        store.enqueue_state(make_state("t-1", 2), "persistence re-enabled", None)
        assert await store.flush(timeout=10)

    assert versions(db_url) == {"t-1": 2}
    assert (rows(db_url, "trade_reports"), rows(db_url, "circuit_breaker_events")) == (0, 0)


# ---- bad rows ------------------------------------------------------------------------------------------------------

async def test_a_row_violating_a_constraint_is_isolated_and_the_rest_of_the_batch_lands(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "tradeguard.store")
    store = RiskStore(db_url, queue_size=100)
    for i in range(50):
        store.enqueue_trade(make_trade(f"x-{i}", side="HOLD" if i == 25 else "BUY"))  # CHECK side IN (BUY, SELL)
        store.enqueue_event(make_event(f"e-{i}"))
        store.enqueue_state(make_state(f"t-{i % 5}", i + 1), "trade_report", None)
    await store.start()
    try:
        assert await store.flush(timeout=30)
    finally:
        await store.close(drain_timeout=5)

    assert rows(db_url, "trade_reports") == 49
    assert store.rejected == {"state": 0, "history": 0, "trade": 1, "event": 0}
    assert (rows(db_url, "circuit_breaker_events"), rows(db_url, "risk_state_history"), rows(db_url, "risk_state")) == (
        50, 50, 5)
    assert "x-25" in caplog.text
    assert store.failures >= 1


async def test_a_value_that_cannot_be_encoded_is_rejected_alone(db_url: str) -> None:
    async with open_store(db_url) as store:
        store.enqueue_state(make_state("t-bad", 1, current_equity=float("nan")), "equity_report", None)
        store.enqueue_state(make_state("t-good", 1), "equity_report", None)

        assert await store.flush(timeout=10)

        assert store.rejected["state"] == 1
        assert store.rejected["history"] == 1
    assert versions(db_url) == {"t-good": 1}


async def test_a_value_postgres_refuses_is_rejected_alone(pg_url: str) -> None:
    from tests.support.databases import empty_tables

    empty_tables(pg_url)
    async with open_store(pg_url) as store:
        long_id = "t" * 200  # risk_state.trader_id is VARCHAR(128)
        store.enqueue_state(make_state(long_id, 1), "equity_report", None)
        for i in range(20):
            store.enqueue_state(make_state(f"t-{i}", 1), "equity_report", None)

        assert await store.flush(timeout=10)

        assert store.rejected["state"] == 1
        assert store.rejected["history"] == 1
    assert len(versions(pg_url)) == 20


async def test_free_text_with_a_nul_character_is_stored(db_url: str) -> None:
    async with open_store(db_url) as store:
        rec = make_state("t-1", 1)
        store.enqueue_state(rec, "operator said: stop\x00now", None)
        store.enqueue_state(replace(rec, version=2), "fine", None)

        assert await store.flush(timeout=10)
        history, _cursor = await store.list_history("t-1", None, None, 10)

    assert store.rejected["history"] == 0
    assert [h.reason for h in history] == ["operator said: stop\ufffdnow", "fine"]
