"""Database faults against the real PostgreSQL (a fresh database per test, reached through a FaultProxy):
the connection cut mid-run, the store's backends terminated mid-batch, a stalled database, a batch that
breaks a table constraint, and a COMMIT whose answer is lost.

For each: no call fails, the hot path never waits on the database (ReportEquity + CanTrade latency measured
during the fault, against a memory-only sidecar driven at the same moments in the same process), the writer
recovers and logs the outage once, and nothing is lost: every trader's latest state and every circuit breaker
event returned to a client is in the database afterwards.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import psycopg
import pytest

from tests.attack.support import figure, log_records, percentile, server_errors
from tests.support.pg import plain_dsn
from tests.support.proxy import FaultProxy
from tests.support.sidecar import running_sidecar
from tests.support.wait import eventually
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.sidecar import Sidecar
from tradeguard_server.store import retention

pytestmark = pytest.mark.integration

BOTS = 8
FLOOR = 9_990.0  # an alert breaker fires whenever a bot dips below this (every other report): many events


def sql(url: str, query: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(plain_dsn(url), autocommit=True) as conn:
        cur = conn.execute(query, params)  # type: ignore[arg-type]
        return list(cur.fetchall()) if cur.description else []


@dataclass
class Load:
    """What the bots sent and what they were told."""

    equities: dict[str, float] = field(default_factory=dict)  # last acknowledged level per trader
    event_ids: set[str] = field(default_factory=set)  # breaker events returned to the bots
    latencies: list[float] = field(default_factory=list)  # ReportEquity + CanTrade, seconds
    failures: list[str] = field(default_factory=list)
    reports: int = 0

    def mark(self) -> int:
        return len(self.latencies)

    def p99_ms(self, since: int = 0) -> float:
        return p99_ms(self.latencies[since:])

    def max_ms(self, since: int = 0) -> float:
        return max(self.latencies[since:], default=0.0) * 1e3


async def drive(risk: rsg.RiskServiceStub, load: Load, seconds: float, offset: int = 0) -> None:
    deadline = time.monotonic() + seconds

    async def bot(i: int) -> None:
        trader, step = f"bot-{i}", offset
        while time.monotonic() < deadline:
            step += 1
            equity = 10_000.0 + step if step % 2 else FLOOR - 10.0
            try:
                started = time.perf_counter()
                reply = await risk.ReportEquity(rs.ReportEquityRequest(trader_id=trader, account_id="acct",
                                                                       equity=equity), timeout=5)
                load.latencies.append(time.perf_counter() - started)
                load.equities[trader] = equity
                load.event_ids.update(e.id for e in reply.breaker_events)
                load.reports += 1
                started = time.perf_counter()
                await risk.CanTrade(rs.CanTradeRequest(trader_id=trader, account_id="acct"), timeout=5)
                load.latencies.append(time.perf_counter() - started)
            except grpc.aio.AioRpcError as exc:
                load.failures.append(f"{exc.code().name}: {exc.details()}")
            await asyncio.sleep(0.002)  # pacing: a bot, not a flood

    await asyncio.gather(*(bot(i) for i in range(BOTS)))


def p99_ms(latencies: list[float]) -> float:
    return percentile(latencies, 0.99) * 1e3


def no_wait(control: list[float], fault: list[float], longest_s: float) -> bool:
    """The hot path did not wait on the database: under the fault it answered like a memory-only sidecar driven
    at the same moments in the same process (a load spike or a GC pause hits both; client, server and proxy
    share one process and two cores here), and no call lasted anywhere near the fault's length.

    Ratios only, no absolute margin: the typical call within 3x the control's, the tail (a handful of samples,
    noisy on a busy 2-core machine) within 5x. The slowest call under `longest_s`, a third of the fault's length
    where the fault has one: a call that waited on the database waits out the fault (the first one after it
    begins: its whole length), so it fails by 3x, while a stall of the whole process (CI measured 1.03 s once,
    late in the suite) needs the fault to be long enough for a third of it to stand above such stalls. Not relaxed
    by the control's slowest call: a database call blocking the shared event loop would stall both alike."""
    return (percentile(fault, 0.5) < 3 * percentile(control, 0.5) and p99_ms(fault) < 5 * p99_ms(control)
            and max(fault, default=0.0) < longest_s)


@dataclass
class Rig:
    sidecar: Sidecar
    proxy: FaultProxy
    url: str
    risk: rsg.RiskServiceStub
    admin: adg.AdminServiceStub
    control: rsg.RiskServiceStub  # a memory-only sidecar in the same process: the latency baseline
    gc_pauses: list[float]  # the collector's pauses during the test (seconds)


@pytest.fixture
async def rig(pg_url: str, gc_pauses: list[float], monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Rig]:
    """The earlier tests' objects are frozen out of the collector (tests/support/gc_pauses.py) for the test: a
    full collection over them stalled the whole process for about a second late in the CI suite.

    The history retention's first run is over before the test begins (at once instead of FIRST_RUN_DELAY_S = 5 s
    after the start): otherwise it runs at a moment set by how fast the sidecar started, inside the fault on a slow
    machine or with a longer fault. These tests are about the hot path and the writer; a retention run that meets
    a cut database logs an ERROR with a traceback today (an OperationalError that is not a StoreError), which
    errors.lines() then reports here by chance of timing instead of in a test of its own."""
    monkeypatch.setattr(retention, "FIRST_RUN_DELAY_S", 0.0)
    proxy = await FaultProxy().start()
    async with running_sidecar(database_url=proxy.url_for(pg_url), enable_persistence=True) as sidecar:
        assert await sidecar.store.flush(timeout=10)
        pruner = sidecar.pruner
        assert pruner is not None and await eventually(lambda: pruner.last_run_at > 0, timeout=30)
        async with grpc.aio.insecure_channel(sidecar.address) as ch:
            admin = adg.AdminServiceStub(ch)
            breaker = t.CircuitBreaker(name="floor", account_id="acct", condition="equity_floor", action="alert")
            breaker.parameters.update({"value": FLOOR})
            await admin.CreateBreaker(ad.CreateBreakerRequest(breaker=breaker))
            async with running_sidecar() as memory_only, grpc.aio.insecure_channel(memory_only.address) as control:
                yield Rig(sidecar, proxy, pg_url, rsg.RiskServiceStub(ch), admin, rsg.RiskServiceStub(control),
                          gc_pauses)
    await proxy.close()


@dataclass
class Check:
    lost_states: int
    lost_events: int
    history_duplicates: int
    history_written: int
    history_expected: int


async def settle(rig: Rig, load: Load) -> Check:
    """Flush, then compare the database with what the bots were told."""
    assert await rig.sidecar.store.flush(timeout=60)
    stored = dict(sql(rig.url, "SELECT trader_id, current_equity FROM risk_state"))
    events = {row[0] for row in sql(rig.url, "SELECT id FROM circuit_breaker_events")}
    written = sql(rig.url, "SELECT count(*) FROM risk_state_history")[0][0]
    duplicates = sql(rig.url, "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM risk_state_history "
                              "GROUP BY trader_id, state->>'version', reason HAVING count(*) > 1) d")[0][0]
    store = rig.sidecar.store
    return Check(
        lost_states=sum(stored.get(k) != v for k, v in load.equities.items()),
        lost_events=len(load.event_ids - events),
        history_duplicates=int(duplicates),  # type: ignore[call-overload]
        history_written=int(written),  # type: ignore[call-overload]
        history_expected=store.enqueued["history"] - store.dropped_history,  # type: ignore[attr-defined]
    )


def report(area: str, load: Load, check: Check, extra: dict[str, object], pauses: list[float] | None = None) -> None:
    figure(area, "reports / failed calls", f"{load.reports} / {len(load.failures)}")
    if pauses is not None:
        figure(area, "GC pauses during the test / longest ms", f"{len(pauses)} / {max(pauses, default=0.0) * 1e3:.0f}")
    for name, value in extra.items():
        figure(area, name, value)
    figure(area, "latest states lost / breaker events lost", f"{check.lost_states} / {check.lost_events}")
    figure(area, "history rows written / expected / duplicated",
           f"{check.history_written} / {check.history_expected} / {check.history_duplicates}")


CUT_S = 4.5  # the outage: long enough for a third of it (the bound on the slowest call) to stand above a stall
STALL_S = 3.0
LOCK_S = 4.0


async def test_connection_cut_mid_run(rig: Rig) -> None:
    load, control = Load(), Load()
    with log_records("tradeguard.store") as logs, server_errors() as errors:
        await drive(rig.risk, load, 1.0)
        before = load.mark()
        rig.proxy.cut()
        await asyncio.gather(drive(rig.risk, load, CUT_S, offset=10_000), drive(rig.control, control, CUT_S))
        during = load.mark()
        unhealthy = not rig.sidecar.store.healthy
        rig.proxy.restore()
        restored_at = time.monotonic()
        await drive(rig.risk, load, 1.0, offset=20_000)
        check = await settle(rig, load)
        recovery = time.monotonic() - restored_at
    report("db: connection cut", load, check, {
        "hot path p99 ms before / during outage (memory-only alongside)":
            f"{p99_ms(load.latencies[:before]):.2f} / {p99_ms(load.latencies[before:during]):.2f} "
            f"({control.p99_ms():.2f})",
        "hot path max ms during outage": f"{max(load.latencies[before:during]) * 1e3:.1f}",
        "outage logged (unavailable / available again)":
            f"{logs.count('store unavailable')} / {logs.count('available again')}",
        "backlog written within s of the restore": f"{recovery:.2f}",
    }, rig.gc_pauses)
    assert unhealthy
    assert load.failures == []
    assert check.lost_states == check.lost_events == 0
    assert logs.count("store unavailable") == 1 and logs.count("available again") == 1
    assert no_wait(control.latencies, load.latencies[before:during], CUT_S / 3)
    assert errors.lines() == []


async def test_store_backends_terminated_mid_batch(rig: Rig) -> None:
    load, control = Load(), Load()
    database = rig.url.rsplit("/", 1)[1]
    killed = rounds = 0
    with log_records("tradeguard.store") as logs, server_errors() as errors:

        terminated = asyncio.Event()

        async def terminator() -> None:
            nonlocal killed, rounds
            rows: list[tuple[object, ...]] = []

            async def terminate_backends() -> bool:
                nonlocal rows
                rows = await asyncio.to_thread(
                    sql, rig.url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE datname = %s AND pid <> pg_backend_pid()", database)
                return bool(rows)

            for _ in range(6):
                await asyncio.sleep(0.35)  # the rounds are spread over the load on purpose: real time is the fault
                # the store may not have reconnected yet since the last round: then try again
                await eventually(terminate_backends, timeout=5.0, interval=0.02)
                killed += len(rows)
                rounds += bool(rows)
            terminated.set()

        async def drive_until_terminated(risk: rsg.RiskServiceStub, target: Load) -> None:
            """The bots keep writing (so the store keeps reconnecting) for as long as the terminator runs."""
            chunk = 0
            while not terminated.is_set():
                chunk += 1
                await drive(risk, target, 0.25, offset=10_000 * chunk)

        await drive(rig.risk, load, 1.0)
        before = load.mark()
        await asyncio.gather(drive_until_terminated(rig.risk, load), terminator(),
                             drive_until_terminated(rig.control, control))
        check = await settle(rig, load)
    outages = logs.count("store unavailable")
    report("db: backends terminated", load, check, {
        "backends terminated / outages logged / recoveries logged":
            f"{killed} / {outages} / {logs.count('available again')}",
        "hot path p99 ms before / during (memory-only alongside); max ms during":
            f"{p99_ms(load.latencies[:before]):.2f} / {load.p99_ms(before):.2f} "
            f"({control.p99_ms():.2f}); {load.max_ms(before):.1f}",
    }, rig.gc_pauses)
    assert rounds == 6 and killed >= 6  # every round terminated at least one of the store's backends
    assert load.failures == control.failures == []
    assert check.lost_states == check.lost_events == 0
    assert outages == logs.count("available again") and outages <= killed
    # No fault length to take a third of (each termination costs the writer a reconnect and a retry with backoff):
    # the bound on the slowest call stays 1 s, the process stall from the collector is taken out (the rig).
    assert no_wait(control.latencies, load.latencies[before:], 1.0)
    assert errors.lines() == []


async def test_stalled_database_never_stalls_the_hot_path(rig: Rig) -> None:
    load, control = Load(), Load()
    with log_records("tradeguard.store") as logs, server_errors() as errors:
        await drive(rig.risk, load, 0.5)
        before = load.mark()
        rig.proxy.stall(STALL_S)
        await asyncio.gather(drive(rig.risk, load, STALL_S, offset=10_000), drive(rig.control, control, STALL_S))
        during = load.mark()
        await drive(rig.risk, load, 0.5, offset=20_000)
        check = await settle(rig, load)
    stall = load.latencies[before:during]
    base = p99_ms(load.latencies[:before])
    report("db: 3 s stall", load, check, {
        "hot path p99 ms before / during the stall (memory-only alongside); max ms during":
            f"{base:.2f} / {p99_ms(stall):.2f} ({control.p99_ms():.2f}); {max(stall) * 1e3:.1f}",
        "warnings logged": len(logs.records),
    }, rig.gc_pauses)
    assert load.failures == []
    assert check.lost_states == check.lost_events == 0
    assert no_wait(control.latencies, stall, STALL_S / 3)  # nothing waited for the stalled database
    assert errors.lines() == []


def hold_lock(url: str, seconds: float, locked: asyncio.Event, loop: asyncio.AbstractEventLoop) -> None:
    with psycopg.connect(plain_dsn(url)) as conn:
        conn.execute("LOCK TABLE risk_state IN ACCESS EXCLUSIVE MODE")
        loop.call_soon_threadsafe(locked.set)
        time.sleep(seconds)  # the fault: the lock is held this long
        conn.rollback()


async def test_table_locked_by_someone_else(rig: Rig) -> None:
    """An operator's `LOCK TABLE risk_state` (a migration, a VACUUM FULL...) for 4 s: the writer's batch waits
    on the lock. The hot path must not; admin writes queue behind the writer (one store thread) and the kill
    switch answers after its bounded wait (kill_switch_store_timeout_s), in force in memory either way."""
    load, control = Load(), Load()
    locked = asyncio.Event()
    health: list[bool] = []
    with log_records("tradeguard") as logs, server_errors() as errors:
        await drive(rig.risk, load, 0.5)
        before = load.mark()
        holder = asyncio.create_task(asyncio.to_thread(hold_lock, rig.url, LOCK_S, locked, asyncio.get_running_loop()))
        await locked.wait()

        async def admin_calls() -> tuple[float, float, bool]:
            await asyncio.sleep(1.0)  # the subject: admin writes and health 1 s into the lock (real time)
            health.append(rig.sidecar.store.healthy)
            started = time.perf_counter()
            await rig.admin.SaveConfig(ad.SaveConfigRequest(config=t.RiskConfiguration(
                account_id="acct", config_id="during-lock", daily_max_drawdown_percentage=50.0)), timeout=30)
            save = time.perf_counter() - started
            started = time.perf_counter()
            paused = await rig.admin.PauseTrading(ad.PauseTradingRequest(
                trader_id="ops", account_id="acct", trading_state=t.TRADING_STATE_HALTED), timeout=30)
            return save, time.perf_counter() - started, paused.state.trading_state == t.TRADING_STATE_HALTED

        (save_s, pause_s, halted), _, _ = await asyncio.gather(
            admin_calls(), drive(rig.risk, load, LOCK_S, offset=10_000), drive(rig.control, control, LOCK_S))
        during = load.mark()
        await holder
        check = await settle(rig, load)
        # 'ops' is a trader no sidecar owns yet (PostgreSQL = cluster mode): its kill switch is stored as a control
        # change, applied by whichever sidecar claims the trader (README "Running many sidecars").
        stored_pause = sql(rig.url, "SELECT payload->>'state' FROM control_changes WHERE trader_id = 'ops' "
                                    "AND kind = 'pause'")
    base = p99_ms(load.latencies[:before])
    report("db: table locked 4 s", load, check, {
        "hot path p99 ms before / during the lock (memory-only alongside); max ms during":
            f"{base:.2f} / {p99_ms(load.latencies[before:during]):.2f} ({control.p99_ms():.2f}); "
            f"{load.max_ms(before):.1f}",
        "SaveConfig / PauseTrading answered after s (during the lock)": f"{save_s:.2f} / {pause_s:.2f}",
        "kill switch in force at once / stored after the lock": f"{halted} / {stored_pause}",
        "'not stored yet' warnings": logs.count("not stored yet"),
        "store health reported 1 s into the lock": "SERVING" if health == [True] else "NOT_SERVING",
    }, rig.gc_pauses)
    assert load.failures == []
    assert check.lost_states == check.lost_events == 0
    assert no_wait(control.latencies, load.latencies[before:during], LOCK_S / 3)
    assert halted and stored_pause == [("HALTED",)]
    assert errors.lines() == []


async def test_rows_breaking_a_constraint_are_isolated_and_the_rest_lands(rig: Rig) -> None:
    """A CHECK constraint that one trader's rows violate: its rows are rejected (logged, counted), every other
    row of the same batches is written, and once the constraint is gone its next state lands."""
    sql(rig.url, "ALTER TABLE risk_state ADD CONSTRAINT attack_poison CHECK (trader_id <> 'poison' "
                 "OR current_equity < 1000)")
    sql(rig.url, "ALTER TABLE risk_state_history ADD CONSTRAINT attack_poison_h CHECK (trader_id <> 'poison' "
                 "OR current_equity < 1000)")
    load = Load()
    poison_reports = 0

    async def poison(seconds: float) -> None:
        nonlocal poison_reports
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            poison_reports += 1
            await rig.risk.ReportEquity(rs.ReportEquityRequest(trader_id="poison", account_id="acct",
                                                               equity=5_000.0 + poison_reports))
            await asyncio.sleep(0.01)  # pacing the poison writer

    with server_errors() as errors:
        await asyncio.gather(drive(rig.risk, load, 2.0), poison(2.0))
        check = await settle(rig, load)
        rejected = dict(rig.sidecar.store.rejected)  # type: ignore[attr-defined]
        poison_rows = sql(rig.url, "SELECT count(*) FROM risk_state WHERE trader_id = 'poison'")[0][0]
        sql(rig.url, "ALTER TABLE risk_state DROP CONSTRAINT attack_poison")
        sql(rig.url, "ALTER TABLE risk_state_history DROP CONSTRAINT attack_poison_h")
        await rig.risk.ReportEquity(rs.ReportEquityRequest(trader_id="poison", account_id="acct", equity=7_777.0))
        assert await rig.sidecar.store.flush(timeout=30)
        healed = sql(rig.url, "SELECT current_equity FROM risk_state WHERE trader_id = 'poison'")
    report("db: constraint", load, check, {
        "poison reports / state rows rejected / history rows rejected":
            f"{poison_reports} / {rejected.get('state', 0)} / {rejected.get('history', 0)}",
        "ERROR lines logged for the rejected rows": len(errors.records),
        "poison state after the constraint is dropped": healed[0][0] if healed else "missing",
    })
    assert load.failures == []
    assert check.lost_states == check.lost_events == 0  # the other traders' rows of the same batches landed
    assert poison_rows == 0 and rejected.get("state", 0) >= 1
    assert healed == [(7_777.0,)]
    assert all("rejected" in line for line in errors.lines())


async def test_commit_whose_answer_is_lost_writes_no_history_row_twice(rig: Rig) -> None:
    load = Load()

    async def lose_acks() -> None:
        for _ in range(3):
            await asyncio.sleep(0.4)  # the three losses are spread over the 2 s of load on purpose
            rig.proxy.lose_commit_acks(1)

    with server_errors() as errors:
        await asyncio.gather(drive(rig.risk, load, 2.0), lose_acks())
        check = await settle(rig, load)
    report("db: lost COMMIT answer", load, check, {"COMMIT answers lost": rig.proxy.commit_acks_lost})
    assert rig.proxy.commit_acks_lost >= 1
    assert load.failures == []
    assert check.lost_states == check.lost_events == 0
    assert errors.lines() == []
    assert check.history_duplicates == 0
    assert check.history_written == check.history_expected
