"""A deadline on every store operation (issue 19): a database that takes the connection and then answers nothing
(a FaultProxy holding the bytes: a hung pooler, a frozen server) cannot hold the writer or the database thread.

Real PostgreSQL behind tests/support/proxy.py, the server-side timeouts off (they cannot fire when the server
never gets the statement), `op_timeout_s` lowered so the tests take seconds. What must hold:
- a writer batch that gets no answer ends at the deadline (its connection is interrupted), the store reports
  itself unavailable, and the batch is written once the database answers again, exactly once;
- a batch whose COMMIT reached the server but whose answer never came is not written again: the commit-uncertainty
  check (txid_status) finds it committed; one whose COMMIT never reached the server is written again, once;
- an admin call stuck the same way frees the database thread at the deadline;
- SQLite: the busy timeout ends a batch waiting on another process's lock, and the batch is written after.
Bounds are counted in the deadline under test, never as fixed seconds: a lower bound proves the deadline was
waited for, an upper bound that nothing waited longer.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.support.databases import make_state, open_store
from tests.support.pg import fresh_database, plain_dsn
from tests.support.proxy import FaultProxy
from tradeguard_server.store.errors import StoreUnavailable
from tradeguard_server.store.records import ConfigRecord
from tradeguard_server.store.store import OP_TIMEOUT_S, RiskStore

pytestmark = pytest.mark.integration

DEADLINE_S = 1.0  # op_timeout_s in these tests (the default is OP_TIMEOUT_S)
NO_SERVER_TIMEOUTS = "-c lock_timeout=0 -c statement_timeout=0"


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_database("tradeguard_deadline") as url:
        yield url


def through(proxy: FaultProxy, url: str) -> str:
    """`url` via the proxy, without server-side timeouts, connecting within a second."""
    return make_url(proxy.url_for(url)).update_query_dict(
        {"options": NO_SERVER_TIMEOUTS, "connect_timeout": "1"}).render_as_string(hide_password=False)


def rows(url: str, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(plain_dsn(url)) as conn:
        return list(conn.execute(query).fetchall())


async def eventually(check: object, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # type: ignore[operator]
            await asyncio.sleep(0.02)


def test_every_store_operation_has_a_deadline_by_default() -> None:
    store = RiskStore("sqlite:///:memory:")
    assert store.op_timeout_s == OP_TIMEOUT_S > store.call_timeout_s > 0


async def test_a_batch_on_a_database_that_never_answers_ends_at_the_deadline_and_is_written_once_later(
        pg_url: str) -> None:
    proxy = await FaultProxy().start()
    try:
        async with open_store(through(proxy, pg_url), op_timeout_s=DEADLINE_S, call_timeout_s=0,
                              retry_max_s=0.2) as store:
            store.enqueue_state(make_state("t-0", 1), "before", None)
            assert await store.flush(timeout=10)
            proxy.stall(3600)  # every byte held, both ways, connections open: the database answers nothing
            started = time.monotonic()
            for i in range(10):
                store.enqueue_state(make_state(f"t-{i}", 2), "during the stall", None)
            await eventually(lambda: store.failures >= 1, timeout=DEADLINE_S * 5)
            ended_s = time.monotonic() - started
            assert not store.healthy
            assert store.db.watchdog.interrupts >= 1
            proxy.flowing.set()  # the database answers again
            assert await store.flush(timeout=30)
            assert store.healthy
            enqueued, written = store.enqueued["history"], store.rows_written["history"]
    finally:
        await proxy.close()
    print(f"FIGURE [op_timeout_s={DEADLINE_S:g}] a batch with no answer ended after {ended_s:.2f} s")
    assert DEADLINE_S <= ended_s < 3 * DEADLINE_S
    assert written == enqueued == 11
    assert rows(pg_url, "SELECT count(*) FROM risk_state_history") == [(11,)]  # exactly once
    assert rows(pg_url, "SELECT count(*), min(version) FROM risk_state") == [(10, 2)]


async def test_a_batch_whose_commit_answer_never_comes_is_found_committed_and_not_written_again(
        pg_url: str) -> None:
    proxy = await FaultProxy().start()
    try:
        async with open_store(through(proxy, pg_url), op_timeout_s=DEADLINE_S, call_timeout_s=0,
                              retry_max_s=0.2) as store:
            await store.load()  # start-up commits are over: the next COMMIT is a batch's
            store.enqueue_state(make_state("t-0", 1), "before", None)
            assert await store.flush(timeout=10)
            proxy.hold_commit_answers(1)  # the server commits; the answer never comes back
            for i in range(5):
                store.enqueue_state(make_state(f"t-{i}", 2), "answer held", None)
            assert await store.flush(timeout=DEADLINE_S * 10)
            assert proxy.commit_answers_held >= 1
            assert store.failures >= 1 and store.db.watchdog.interrupts >= 1
            assert store.rows_written["history"] == store.enqueued["history"] == 6
    finally:
        await proxy.close()
    assert rows(pg_url, "SELECT count(*) FROM risk_state_history") == [(6,)]  # committed once, never again


async def test_a_batch_whose_commit_never_reaches_the_server_is_written_again_once(pg_url: str) -> None:
    proxy = await FaultProxy().start()
    try:
        async with open_store(through(proxy, pg_url), op_timeout_s=DEADLINE_S, call_timeout_s=0,
                              retry_max_s=0.2) as store:
            await store.load()
            store.enqueue_state(make_state("t-0", 1), "before", None)
            assert await store.flush(timeout=10)
            proxy.hold_commit()  # the COMMIT is held on its way: the server keeps the transaction open
            for i in range(5):
                store.enqueue_state(make_state(f"t-{i}", 2), "commit held", None)
            # The deadline interrupts the batch in its COMMIT; txid_status says "in progress" until the writer
            # ends that session; then "aborted", and the batch is written again.
            assert await store.flush(timeout=DEADLINE_S * 10)
            assert proxy.commit_held.is_set()
            assert store.rows_written["history"] == store.enqueued["history"] == 6
            proxy.release_commit()  # too late: its session is gone
            await asyncio.sleep(0.2)
    finally:
        await proxy.close()
    assert rows(pg_url, "SELECT count(*) FROM risk_state_history") == [(6,)]


async def test_an_admin_call_with_no_answer_frees_the_database_thread_at_the_deadline(pg_url: str) -> None:
    """The caller gives up at call_timeout_s; the database thread, which cannot be interrupted from outside,
    ends the call at op_timeout_s (its connection interrupted), so the next call and the writer go on."""
    proxy = await FaultProxy().start()
    try:
        async with open_store(through(proxy, pg_url), op_timeout_s=DEADLINE_S * 2, call_timeout_s=DEADLINE_S,
                              retry_max_s=0.2) as store:
            await store.load()
            proxy.stall(3600)
            with pytest.raises(StoreUnavailable, match="did not answer within"):
                await store.save_config(ConfigRecord("a-1", "stalled", daily_max_drawdown_percentage=5.0))
            started = time.monotonic()
            await eventually(lambda: store.db.watchdog.interrupts >= 1, timeout=DEADLINE_S * 5)
            freed_s = time.monotonic() - started
            proxy.flowing.set()
            saved, created = await store.save_config(ConfigRecord("a-1", "after", daily_max_drawdown_percentage=5.0))
            assert created and saved.config_id == "after"
    finally:
        await proxy.close()
    assert freed_s < DEADLINE_S * 2
    # The stalled call never committed (its connection was cut before its COMMIT could be sent).
    assert rows(pg_url, "SELECT config_id FROM risk_configurations") == [("after",)]


async def test_sqlite_a_batch_waiting_on_another_process_lock_ends_at_the_busy_timeout_and_is_written_later(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tradeguard_server.store import dbthread

    monkeypatch.setattr(dbthread, "SQLITE_BUSY_S", 0.5)
    path = tmp_path / "busy.db"
    async with open_store(f"sqlite:///{path}", op_timeout_s=DEADLINE_S * 10, retry_max_s=0.2) as store:
        store.enqueue_state(make_state("t-0", 1), "before", None)
        assert await store.flush(timeout=10)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")  # another process's write lock
        try:
            started = time.monotonic()
            store.enqueue_state(make_state("t-0", 2), "while locked", None)
            await eventually(lambda: store.failures >= 1, timeout=10)
            ended_s = time.monotonic() - started
            assert store.db.watchdog.interrupts == 0  # the busy timeout ended it, well before the deadline
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert await store.flush(timeout=10)
        assert store.rows_written["history"] == store.enqueued["history"] == 2
    print(f"FIGURE [sqlite busy timeout 0.5 s] a batch on a locked database ended after {ended_s:.2f} s")
    assert 0.5 <= ended_s < DEADLINE_S * 10
