"""Attacks on the order and fill windows stored with every state row (ca8d3aa: engine.snapshot.to_record / _tail,
store.codec.windows_json / windows_from, engine.orders.rebuild_windows(stored=...), StateRecord.__setstate__, the
merge of memory's order times after a load from the spool), through the public API, as a careless bot, a hostile
bot and an operator in an incident would combine them with outages, restarts, takeovers and old rows.

The yardstick of each test is the same sequence of calls without the restart / takeover: a wrong allow, a halt or
deny that outlasts its window, an order or fill counted twice, a crash or a row that no longer loads is a finding
(`xfail(strict=True)` with its severity); a plain test pins what held.
"""

from __future__ import annotations

import contextlib
import copyreg
import dataclasses
import io
import json
import pickle
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from tests.attack.test_order_lifecycle_attacks import Bot
from tests.attack.test_order_lifecycle_restarts import bot_on, state_loaded
from tests.attack.test_order_windows_restart_attacks import WINDOW_S, ask_until_owned, sqlite_bot, throttle
from tests.support.proxy import FaultProxy
from tests.support.sidecar import running_sidecar
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.engine.snapshot import StateRecord
from tradeguard_server.store import spool

pytestmark = pytest.mark.integration

HALTED, ACTIVE = t.TRADING_STATE_HALTED, t.TRADING_STATE_ACTIVE


async def fills_throttle(b: Bot, cap: int, window_s: int = 60) -> None:
    await b.configure(max_fills_per_window=cap, fill_window_seconds=window_s, max_position_size_percentage=100.0,
                      max_orders_per_window=1_000_000, order_rate_window_seconds=WINDOW_S)
    await b.equity(1e12)


async def fill(b: Bot, coid: str, price: float) -> None:
    assert (await b.ask(coid, price=price)).allowed, coid
    await b.report(coid, t.ORDER_STATUS_FILLED)


@contextlib.asynccontextmanager
async def outage_settings(pg_url: str, clock: ManualClock, tmp_path: Path,
                          **more: Any) -> AsyncIterator[tuple[FaultProxy, dict[str, Any]]]:
    """A proxy in front of PostgreSQL and the settings of a sidecar behind it with its own spool, answering from
    memory while the stored state is not loaded."""
    proxy = await FaultProxy().start()
    try:
        yield proxy, {"clock": clock, "database_url": proxy.url_for(pg_url), "enable_persistence": True,
                      "sidecar_id": "sc-w", "spool_path": str(tmp_path / "spool.db"),
                      "unloaded_state_policy": "memory", "drain_timeout_s": 1.0, **more}
    finally:
        await proxy.close()


# ---- the database down at start: orders and fills while unloaded, then a stop before the database returns ---------


@pytest.mark.parametrize("down", [False, True], ids=["database-up", "database-down-then-up"])
@pytest.mark.parametrize("step", [0.0, 1.0, -3600.0], ids=["same-instant", "one-second-apart", "clock-back-an-hour"])
async def test_orders_journaled_while_unloaded_by_a_run_that_stopped_count_after_the_next_runs_load(
    pg_url: str, tmp_path: Path, clock: ManualClock, step: float, down: bool,
) -> None:
    """max 5 per hour. o-0 and o-1 are stored. The next run starts with the database down and allows o-2 from memory
    (journaled to the spool), then stops before the database returns (a SIGKILL keeps the same: the journal is in
    the spool). The run after that starts with the database up (`down`: still down, it allows o-3 from memory and
    the database then returns) and replays the journal: o-2 is pending again. Each order counts once: the fifth
    in the hour is allowed, the sixth denied (without the restarts the same). `step`: the clock between the orders
    and (-3600: stepped back an hour) across the restarts.
    Fixed (was medium, a wrong allow per such order): the replayed reserve_order put the order back among the
    pending ones but not in order_times (CanTrade adds it there, and CanTrade is not journaled)."""
    async with outage_settings(pg_url, clock, tmp_path) as (proxy, settings):
        async with running_sidecar(**settings) as first, bot_on(first) as b:
            await throttle(b, 5)
            for i in range(2):
                assert (await b.ask(f"o-{i}", price=50_000.0 + i)).allowed
                clock.advance(max(step, 0.0))
            assert await first.store.flush(10.0)
        proxy.cut()
        clock.advance(step)
        async with running_sidecar(**settings) as second, grpc.aio.insecure_channel(second.address) as ch:
            b = Bot(ch)
            await b.equity(1e12)
            meanwhile = [await b.ask("o-2", price=50_002.0)]
            clock.advance(max(step, 0.0))
        if not down:
            proxy.restore()
        async with running_sidecar(**settings) as third, grpc.aio.insecure_channel(third.address) as ch:
            b = Bot(ch)
            if down:
                meanwhile.append(await b.ask("o-3", price=50_003.0))
                clock.advance(max(step, 0.0))
                proxy.restore()
            await state_loaded(ch)
            pending = sorted(o.client_order_id for o in (await b.state()).pending_orders)
            more = [await b.ask(f"p-{i}", price=50_010.0 + i) for i in range(4 - len(meanwhile))]
            clock.advance(WINDOW_S + 10)
            later = await b.ask("o-9", price=50_009.0)

    assert all(a.allowed for a in meanwhile), [a.reason for a in meanwhile]
    assert pending == ["o-0", "o-1", "o-2", "o-3"][:2 + len(meanwhile)]
    assert all(a.allowed for a in more[:-1]), f"counted twice: {[a.reason for a in more]}"
    assert not more[-1].allowed and more[-1].code == t.DECISION_CODE_ORDER_RATE_LIMIT, (
        f"counted zero times: {more[-1].reason}")
    assert later.allowed, f"a deny that outlasts the window: {later.reason}"


@pytest.mark.parametrize("step", [0.0, 1.0], ids=["same-instant", "one-second-apart"])
async def test_fills_stored_spooled_and_reported_while_unloaded_each_count_once_after_the_load(
    pg_url: str, tmp_path: Path, clock: ManualClock, step: float,
) -> None:
    """max 4 fills a minute. f-0 is stored; the database is cut and f-1 goes to the spool; the sidecar stops. The
    next one starts with the database down (the trader restored from the spool) and o-2 fills while unloaded. After
    the load three fills are in the window: the trader is active (a double count halts it), and the next fill is the
    fourth: it halts (a fill counted zero times does not)."""
    async with outage_settings(pg_url, clock, tmp_path) as (proxy, settings):
        async with running_sidecar(**settings) as first, bot_on(first) as b:
            await fills_throttle(b, 4)
            await fill(b, "o-0", 50_000.0)
            clock.advance(step)
            assert await first.store.flush(10.0)
            proxy.cut()
            await fill(b, "o-1", 50_001.0)
            clock.advance(step)
        async with running_sidecar(**settings) as second, grpc.aio.insecure_channel(second.address) as ch:
            b = Bot(ch)
            await fill(b, "o-2", 50_002.0)
            unloaded = (await b.state()).trading_state
            clock.advance(step)
            proxy.restore()
            await state_loaded(ch)
            loaded = (await b.state()).trading_state
            await fill(b, "o-3", 50_003.0)
            fourth = (await b.state()).trading_state

    assert unloaded == ACTIVE
    assert loaded == ACTIVE, "a fill counted twice after the load halted the trader"
    assert fourth == HALTED, "a fill counted zero times after the load"


@pytest.mark.parametrize("step", [0.0, 1.0], ids=["same-instant", "one-second-apart"])
async def test_fills_journaled_while_unloaded_by_a_run_that_stopped_count_once_after_the_next_runs_load(
    pg_url: str, tmp_path: Path, clock: ManualClock, step: float,
) -> None:
    """max 4 fills a minute. o-0 fills (stored). The next run starts with the database down: o-1 is allowed and
    fills in two partial reports (journaled), the run stops before the load. The run after loads and replays
    them: three fills in the minute (active: a double count halts), and o-2's fill is the fourth (HALTED: a fill
    counted zero times does not)."""
    async with outage_settings(pg_url, clock, tmp_path) as (proxy, settings):
        async with running_sidecar(**settings) as first, bot_on(first) as b:
            await fills_throttle(b, 4)
            await fill(b, "o-0", 50_000.0)
            clock.advance(step)
            assert await first.store.flush(10.0)
        proxy.cut()
        async with running_sidecar(**settings) as second, bot_on(second) as b:
            await b.equity(1e12)
            assert (await b.ask("o-1", price=50_001.0)).allowed
            await b.report("o-1", t.ORDER_STATUS_PARTIALLY_FILLED, filled=0.004, price=50_001.0)
            clock.advance(step)
            await b.report("o-1", t.ORDER_STATUS_FILLED, filled=0.008, price=50_001.0)
        proxy.restore()
        async with running_sidecar(**settings) as third, grpc.aio.insecure_channel(third.address) as ch:
            b = Bot(ch)
            await state_loaded(ch)
            loaded = (await b.state()).trading_state
            clock.advance(step)
            await fill(b, "o-2", 50_002.0)
            after = (await b.state()).trading_state

    assert loaded == ACTIVE, "a journaled fill was counted twice"
    assert after == HALTED, "a journaled fill was counted zero times"


# ---- ResumeTrading while unloaded / during an outage, then a restart -------------------------------------------


@pytest.mark.parametrize("where", ["outage", "unloaded", "unloaded-no-spool"])
async def test_a_resume_of_a_fill_halt_made_during_an_outage_survives_a_restart_and_the_load(
    pg_url: str, tmp_path: Path, clock: ManualClock, where: str,
) -> None:
    """max 2 fills a minute: o-0 and o-1 fill, the trader halts (stored). `outage`: the database is cut, the
    operator resumes (spooled), the sidecar stops; `unloaded`: the sidecar restarts with the database down (the
    trader restored from the spool, halted) and the operator resumes it there (journaled), then it stops;
    `unloaded-no-spool`: the same, the halt stored with the database up (the spool holds no state of the trader).
    The next run starts with the database up. One more fill is the first since the resume: the trader stays active."""
    async with outage_settings(pg_url, clock, tmp_path) as (proxy, settings):
        async with running_sidecar(**settings) as first, bot_on(first) as b:
            await fills_throttle(b, 2)
            await fill(b, "o-0", 50_000.0)
            await fill(b, "o-1", 50_001.0)
            assert (await b.state()).trading_state == HALTED
            assert await first.store.flush(10.0)
            if where != "unloaded-no-spool":
                proxy.cut()
            if where == "outage":
                await b.admin.ResumeTrading(ad.ResumeTradingRequest(**b.ids))
        if where.startswith("unloaded"):
            proxy.cut()
            async with running_sidecar(**settings) as second, bot_on(second) as b:
                await b.admin.ResumeTrading(ad.ResumeTradingRequest(**b.ids))
        clock.advance(5)
        proxy.restore()
        async with running_sidecar(**settings) as third, grpc.aio.insecure_channel(third.address) as ch:
            b = Bot(ch)
            await state_loaded(ch)
            resumed = (await b.state()).trading_state
            await fill(b, "o-2", 50_002.0)
            after_one = (await b.state()).trading_state

    assert resumed == ACTIVE, "the resume was lost"
    assert after_one == ACTIVE, "one fill since the resume halted the trader again"


# ---- an old row: a JSON list in order_times ---------------------------------------------------------------------


def _rewrite_row_as_old_version(url: str, times: list[float]) -> None:
    """The trader's risk_state row as a version before ca8d3aa wrote it: order_times a plain JSON list."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            raw = conn.execute(sa.text("SELECT order_times FROM risk_state WHERE trader_id = 'bot-1'")).scalar_one()
            stored = json.loads(raw) if isinstance(raw, str) else raw
            assert isinstance(stored, dict) and set(stored) == {"orders", "fills"}, raw
            update = ("UPDATE risk_state SET order_times = CAST(:v AS JSONB) WHERE trader_id = 'bot-1'"
                      if url.startswith("postgresql") else
                      "UPDATE risk_state SET order_times = :v WHERE trader_id = 'bot-1'")
            conn.execute(sa.text(update), {"v": json.dumps(times)})
    finally:
        engine.dispose()


@pytest.mark.parametrize("step", [0.0, 1.0], ids=["same-instant", "one-second-apart"])
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_row_of_the_old_format_loads_and_counts_its_orders_and_fills(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock, backend: str, step: float,
) -> None:
    """The risk_state row is rewritten as an older version wrote it: order_times a plain JSON list (here holding
    the two orders' times), no fill window. It loads, the throttle counts o-0 and o-1 once each (max 3: one more
    allowed, the next denied) and the fill throttle counts the filled order (max 2 fills: one more fill halts)."""
    url = f"sqlite:///{tmp_path / 'old.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    settings = {"clock": clock, "database_url": url, "enable_persistence": True}
    async with running_sidecar(**settings) as sc, bot_on(sc) as b:
        await b.configure(max_orders_per_window=3, order_rate_window_seconds=WINDOW_S, max_fills_per_window=2,
                          fill_window_seconds=60, max_position_size_percentage=100.0)
        await b.equity(1e12)
        first = clock.now()
        await fill(b, "o-0", 50_000.0)
        clock.advance(step)
        assert (await b.ask("o-1", price=50_001.0)).allowed
    _rewrite_row_as_old_version(url, [first, clock.now()])
    clock.advance(1)
    async with running_sidecar(**settings) as sc, bot_on(sc) as b:
        third = await b.ask("o-2", price=50_002.0)
        fourth = await b.ask("o-3", price=50_003.0)
        await b.report("o-2", t.ORDER_STATUS_FILLED)
        state = (await b.state()).trading_state

    assert third.allowed, f"counted twice: {third.reason}"
    assert not fourth.allowed and fourth.code == t.DECISION_CODE_ORDER_RATE_LIMIT, fourth.reason
    assert state == HALTED, "the old row's fill was not counted"


# ---- a spool written by an older version: records pickled without the new fields -----------------------------------


class _OldPickler(pickle.Pickler):
    """Pickles a StateRecord as a version before ca8d3aa did: without fill_times and windows_stored (the fields
    appended last), and with no order times (that version wrote none)."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is StateRecord:
            names = [f.name for f in dataclasses.fields(obj)]
            state = [() if name == "order_times" else getattr(obj, name) for name in names]
            assert names[-2:] == ["fill_times", "windows_stored"], names
            return copyreg.__newobj__, (StateRecord,), state[:-2]
        return NotImplemented


def _rewrite_spool_as_old_version(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT seq, kind, data FROM spool WHERE kind IN ('state', 'history')").fetchall()
        for seq, kind, data in rows:
            rec = spool.loads(data)
            buf = io.BytesIO()
            _OldPickler(buf, protocol=5).dump(rec)
            old = spool.loads(buf.getvalue())
            state = old if kind == "state" else old.state
            assert not state.windows_stored and state.fill_times == () and state.trader_id == rec.trader_id
            conn.execute("UPDATE spool SET data = ? WHERE seq = ?", (buf.getvalue(), seq))
        conn.commit()
    return sum(1 for row in rows if row[1] == "state")


@pytest.mark.parametrize("old", [False, True], ids=["this-version", "older-version"])
async def test_a_spool_of_an_older_version_starts_loads_and_counts_the_pending_orders(
    pg_url: str, tmp_path: Path, clock: ManualClock, old: bool,
) -> None:
    """max 5 orders an hour. o-0 is stored, the database is cut, o-1 goes to the spool; the sidecar stops. Its
    spooled states and history rows are rewritten as an older version pickled them (`old`). The next run starts
    with the database down (the trader from the spool: with an old record its windows are rebuilt from its orders)
    and allows o-2 and o-3 (no configuration before the load); after the load (the spooled record replayed into
    the database) o-0 to o-3 count once each: o-4 is the fifth (allowed), o-5 the sixth (denied)."""
    async with outage_settings(pg_url, clock, tmp_path) as (proxy, settings):
        async with running_sidecar(**settings) as first, bot_on(first) as b:
            await throttle(b, 5)
            assert (await b.ask("o-0", price=50_000.0)).allowed
            assert await first.store.flush(10.0)
            proxy.cut()
            assert (await b.ask("o-1", price=50_001.0)).allowed
        if old:
            assert _rewrite_spool_as_old_version(tmp_path / "spool.db") >= 1
        clock.advance(1)
        async with running_sidecar(**settings) as second, grpc.aio.insecure_channel(second.address) as ch:
            b = Bot(ch)
            meanwhile = [await b.ask(f"o-{i}", price=50_000.0 + i) for i in (2, 3)]
            proxy.restore()
            await state_loaded(ch)
            pending = sorted(o.client_order_id for o in (await b.state()).pending_orders)
            fifth = await b.ask("o-4", price=50_004.0)
            sixth = await b.ask("o-5", price=50_005.0)

    assert all(a.allowed for a in meanwhile), [a.reason for a in meanwhile]
    assert pending == ["o-0", "o-1", "o-2", "o-3"]
    assert fifth.allowed, f"counted twice: {fifth.reason}"
    assert not sixth.allowed and sixth.code == t.DECISION_CODE_ORDER_RATE_LIMIT, f"counted zero times: {sixth.reason}"


# ---- the clock stepped across a restart --------------------------------------------------------------------------


@pytest.mark.xfail(strict=True, reason=(
    "severity: low (wrong allow / a fill halt missed; needs the host clock stepped forward more than a day and "
    "corrected back across a restart): _tail keeps only the times within WINDOW_STORED_S of the row's updated_at, so "
    "a row written while the clock was a day ahead stores an empty fill window (and no order times); the restart "
    "with the corrected clock has lost the fills memory still counts (order times come back only from the orders)"))
async def test_a_clock_a_day_ahead_for_one_write_does_not_empty_the_stored_fill_window(
    tmp_path: Path, clock: ManualClock,
) -> None:
    """max 3 fills a minute: o-0 and o-1 fill at T. The host clock jumps two days ahead, an equity report is
    written, NTP steps it back to T + 5 s and the sidecar restarts. Without the restart o-2's fill is the third in
    the minute: HALTED."""
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        await fills_throttle(b, 3)
        await fill(b, "o-0", 50_000.0)
        await fill(b, "o-1", 50_001.0)
        clock.advance(2 * 86_400)
        await b.equity(1e12)
        clock.advance(-2 * 86_400 + 5)
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        await fill(b, "o-2", 50_002.0)
        state = (await b.state()).trading_state

    assert state == HALTED, "the fills before the clock step were forgotten by the restart"


# ---- more than the stored bound in one window ----------------------------------------------------------------------


@pytest.mark.xfail(strict=True, reason=(
    "severity: low (wrong allow, documented bound of ca8d3aa but not of the API: max_orders_per_window accepts up to "
    "1,000,000 and memory keeps 10,001): a restart keeps the newest 1,000 order times plus the last 64 finished "
    "orders, so a bot allowed 1,500 an hour that placed and cancelled 1,200 gets 500 more instead of 300"))
async def test_more_orders_than_the_stored_bound_at_one_instant_still_count_after_a_restart(
    tmp_path: Path, clock: ManualClock,
) -> None:
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        await throttle(b, 1_500)
        for i in range(1_200):
            assert (await b.ask(f"q-{i}", price=50_000.0 + i)).allowed
            await b.report(f"q-{i}", t.ORDER_STATUS_CANCELLED)
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        answers = [await b.ask(f"r-{i}", price=60_000.0 + i) for i in range(301)]

    assert all(a.allowed for a in answers[:300])
    assert not answers[300].allowed, "order 1,501 in the hour allowed after a restart"


@pytest.mark.xfail(strict=True, reason=(
    "severity: low (a fill-throttle halt missed, documented bound of ca8d3aa but not of the API: max_fills_per_window "
    "accepts up to 1,000,000 and memory keeps 10,001): a restart keeps the newest 1,000 fill times, so 1,200 partial "
    "fills in the window count as 1,000 and the halt comes 200 fills late"))
async def test_more_partial_fills_than_the_stored_bound_at_one_instant_still_count_after_a_restart(
    tmp_path: Path, clock: ManualClock,
) -> None:
    """max 1,500 fills a minute; one order fills in 1,200 partial reports at one instant, a restart, then 300
    more partial fills: the 1,500th halts as without the restart."""
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        await fills_throttle(b, 1_500)
        assert (await b.ask("big", quantity=10.0)).allowed
        for i in range(1_200):
            await b.report("big", t.ORDER_STATUS_PARTIALLY_FILLED, filled=(i + 1) * 0.001, price=50_000.0)
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        for i in range(1_200, 1_500):
            await b.report("big", t.ORDER_STATUS_PARTIALLY_FILLED, filled=(i + 1) * 0.001, price=50_000.0)
        state = (await b.state()).trading_state

    assert state == HALTED, "the 1,500th fill in the minute did not halt after a restart"


async def test_partial_fills_at_one_instant_each_count_after_a_restart(tmp_path: Path, clock: ManualClock) -> None:
    """max 5 fills a minute; 4 partial fills of one order at one instant; a restart at the same instant: the trader
    is active (no fill counted twice) and the fifth partial fill halts it (none counted zero times)."""
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        await fills_throttle(b, 5)
        assert (await b.ask("big", quantity=1.0)).allowed
        for i in range(4):
            await b.report("big", t.ORDER_STATUS_PARTIALLY_FILLED, filled=(i + 1) * 0.1, price=50_000.0)
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        before = (await b.state()).trading_state
        await b.report("big", t.ORDER_STATUS_PARTIALLY_FILLED, filled=0.5, price=50_000.0)
        after = (await b.state()).trading_state

    assert (before, after) == (ACTIVE, HALTED)


# ---- a cluster takeover (two sidecars, one PostgreSQL) -------------------------------------------------------------


def cluster(pg_url: str, sidecar_id: str, **more: Any) -> dict[str, Any]:
    return {"database_url": pg_url, "enable_persistence": True, "sidecar_id": sidecar_id, "trader_lease_seconds": 1,
            **more}


async def fill_owned(b: Bot, coid: str, price: float) -> None:
    assert (await ask_until_owned(b, coid, price)).allowed, coid
    await b.report(coid, t.ORDER_STATUS_FILLED)


@pytest.mark.parametrize("resumed", [False, True], ids=["fills", "fills-then-resume"])
async def test_the_fill_window_and_its_resume_follow_the_trader_to_the_next_owner(
    pg_url: str, clock: ManualClock, resumed: bool,
) -> None:
    """max 3 fills a minute (`fills`): two fill on A, which stops; B takes the trader over and fills one more: the
    third in the minute halts it. `fills-then-resume`: max 2, both fill on A (HALTED), the operator resumes there;
    on B the trader is active and its next fill is the first since the resume (still active)."""
    async with running_sidecar(clock=clock, **cluster(pg_url, "A")) as a, bot_on(a) as b:
        await fills_throttle(b, 2 if resumed else 3)
        await fill(b, "o-0", 50_000.0)
        await fill(b, "o-1", 50_001.0)
        if resumed:
            assert (await b.state()).trading_state == HALTED
            await b.admin.ResumeTrading(ad.ResumeTradingRequest(**b.ids))
    clock.advance(5)
    async with running_sidecar(clock=clock, **cluster(pg_url, "B")) as sc_b, bot_on(sc_b) as b:
        await fill_owned(b, "o-2", 50_002.0)
        state = (await b.state()).trading_state

    assert state == (ACTIVE if resumed else HALTED), state


async def test_a_fenced_late_spool_of_the_cut_off_owner_does_not_overwrite_the_windows_of_the_next_owner(
    pg_url: str,
) -> None:
    """max 3 fills a minute. A fills o-0 (stored), loses the database and, within its lease, takes an equity report
    (spooled). B takes the trader over and fills o-1. A's database comes back: its spool replays late (fenced by
    epoch). B stops; C takes the trader over: two fills are in the minute (active), a third halts."""
    proxy = await FaultProxy().start()
    try:
        async with running_sidecar(**cluster(proxy.url_for(pg_url), "A", drain_timeout_s=1.0)) as a, \
                bot_on(a) as on_a:
            await fills_throttle(on_a, 3)
            await fill(on_a, "o-0", 50_000.0)
            assert await a.store.flush(10.0)
            proxy.cut()
            await on_a.equity(2e12)
            async with running_sidecar(**cluster(pg_url, "B")) as sc_b, bot_on(sc_b) as on_b:
                await fill_owned(on_b, "o-1", 50_001.0)
                proxy.restore()
                await a.store.flush(10.0)
        async with running_sidecar(**cluster(pg_url, "C")) as sc_c, bot_on(sc_c) as on_c:
            answer = await ask_until_owned(on_c, "o-2", 50_002.0)
            before = (await on_c.state()).trading_state
            await on_c.report("o-2", t.ORDER_STATUS_FILLED)
            after = (await on_c.state()).trading_state
    finally:
        await proxy.close()

    assert answer.allowed, answer.reason
    assert (before, after) == (ACTIVE, HALTED)


# ---- RebindTrader and the operator's point-in-time restore with windows present ------------------------------------


async def test_fills_before_a_rebind_and_a_restart_still_count(tmp_path: Path, clock: ManualClock) -> None:
    """max 3 fills a minute: two fill, the operator rebinds the trader (same account), the sidecar restarts: the
    next fill is the third (HALTED), as without the restart."""
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        await fills_throttle(b, 3)
        await fill(b, "o-0", 50_000.0)
        await fill(b, "o-1", 50_001.0)
        await b.admin.RebindTrader(ad.RebindTraderRequest(**b.ids, reason="operator reset"))
    clock.advance(1)
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        await b.equity(1e12)
        await fill(b, "o-2", 50_002.0)
        state = (await b.state()).trading_state

    assert state == HALTED


@pytest.mark.parametrize("restart", [False, True], ids=["live", "restarted"])
async def test_a_point_in_time_restore_keeps_the_order_and_fill_windows_live_and_across_a_restart(
    tmp_path: Path, clock: ManualClock, restart: bool,
) -> None:
    """max 3 orders an hour and 3 fills a minute. An equity report at T (the point restored to), then o-0 and o-1
    fill. The operator restores the state of T (the windows stay live, by design), optionally the sidecar
    restarts: o-2 is the third order (allowed) and its fill the third (HALTED); o-3 would be the fourth order."""
    async with sqlite_bot(tmp_path, clock) as (_sc, b):
        await fills_throttle(b, 3)
        await b.configure(max_fills_per_window=3, fill_window_seconds=60, max_position_size_percentage=100.0,
                          max_orders_per_window=3, order_rate_window_seconds=WINDOW_S)
        await b.equity(1e12)
        point = clock.now()
        clock.advance(1)
        await fill(b, "o-0", 50_000.0)
        await fill(b, "o-1", 50_001.0)
        clock.advance(1)
        request = ad.RestoreRiskStateRequest(**b.ids, reason="incident", dry_run=False)
        request.at.FromNanoseconds(int(point * 1e9))
        await b.admin.RestoreRiskState(request)
        if not restart:
            third = await b.ask("o-2", price=50_002.0)
            await b.report("o-2", t.ORDER_STATUS_FILLED)
            state = (await b.state()).trading_state
    if restart:
        async with sqlite_bot(tmp_path, clock) as (_sc, b):
            third = await b.ask("o-2", price=50_002.0)
            await b.report("o-2", t.ORDER_STATUS_FILLED)
            state = (await b.state()).trading_state

    assert third.allowed, third.reason
    assert state == HALTED


@pytest.mark.parametrize("next_id", ["B", "A"], ids=["takeover", "same-sidecar-restarted"])
async def test_a_resume_replayed_by_a_takeover_does_not_forget_the_fills_made_after_it(
    pg_url: str, clock: ManualClock, next_id: str,
) -> None:
    """max 2 fills a minute. On A: o-0 and o-1 fill (HALTED), the operator resumes, o-2 fills (one since the resume:
    active). A stops; B takes the trader over (and replays the trader's pause / resume changes on the stored state,
    said to be idempotent). o-3 fills on B: the second since the resume, so HALTED, as on A without the takeover.
    `same-sidecar-restarted`: A itself restarts (cluster mode replays the changes at its load too).
    Fixed (was medium: a fill-throttle halt missed after a takeover or a restart in cluster mode of a trader resumed
    before): the replayed resume emptied the whole stored fill window; a resume made at `since` now drops only the
    fills up to it."""
    async with running_sidecar(clock=clock, **cluster(pg_url, "A")) as a, bot_on(a) as b:
        await fills_throttle(b, 2)
        await fill(b, "o-0", 50_000.0)
        await fill(b, "o-1", 50_001.0)
        assert (await b.state()).trading_state == HALTED
        await b.admin.ResumeTrading(ad.ResumeTradingRequest(**b.ids))
        clock.advance(1)
        await fill(b, "o-2", 50_002.0)
        on_a = (await b.state()).trading_state
    clock.advance(5)
    async with running_sidecar(clock=clock, **cluster(pg_url, next_id)) as sc_b, bot_on(sc_b) as b:
        await fill_owned(b, "o-3", 50_003.0)
        state = (await b.state()).trading_state

    assert on_a == ACTIVE
    assert state == HALTED, "the takeover's replay of the resume emptied the fill window"


@pytest.mark.xfail(strict=True, reason=(
    "severity: low (a fill-throttle halt missed; only when a fill is reported at the very clock instant of the "
    "resume, after it): a takeover replays the resume with since=its time and drops every fill up to and including "
    "that instant (the fills that caused the halt must go), the fill made after the resume at the same instant too"))
async def test_a_fill_at_the_instant_of_a_resume_still_counts_after_a_takeover(pg_url: str, clock: ManualClock) -> None:
    """As test_a_resume_replayed_by_a_takeover_does_not_forget_the_fills_made_after_it, every call at one instant."""
    async with running_sidecar(clock=clock, **cluster(pg_url, "A")) as a, bot_on(a) as b:
        await fills_throttle(b, 2)
        await fill(b, "o-0", 50_000.0)
        await fill(b, "o-1", 50_001.0)
        await b.admin.ResumeTrading(ad.ResumeTradingRequest(**b.ids))
        await fill(b, "o-2", 50_002.0)
        on_a = (await b.state()).trading_state
    async with running_sidecar(clock=clock, **cluster(pg_url, "B")) as sc_b, bot_on(sc_b) as b:
        await fill_owned(b, "o-3", 50_003.0)
        state = (await b.state()).trading_state

    assert on_a == ACTIVE
    assert state == HALTED
