"""ControlListener: hears the shared control state (PostgreSQL only) and tells when it cannot.

Its own psycopg AsyncConnection (autocommit; not the store's database thread, which a slow writer batch may
hold): `LISTEN tradeguard_control`, then in a loop wait for a NOTIFY (`conn.notifies(timeout=interval,
stop_after=1)`) and read the changes above the version seen (`SELECT ... WHERE version > seen`), which the plane
applies. That read runs on every wake-up and at least every `interval` = min(1 s, control_poll_seconds) even
without a NOTIFY: it is the liveness read and the slow periodic catch-up at once (NOTIFY is not durable: one sent
while this connection was down is never delivered; the read finds its row). On every (re)connect the same read
catches up. Every read is bounded (READ_TIMEOUT_S): a connection that holds the bytes is dropped and made again,
with backoff (up to RECONNECT_MAX_S).

`last_heard` is the time of the last successful read. Health component `tradeguard.control` is NOT_SERVING
while the connection is down or nothing was heard for HEARING_S; the metric tradeguard_control_state_age_seconds
is the time since `last_heard`. Past control_state_max_age_seconds, control_state_stale_action applies to new
exposure through the engine's `control_gate` (StaleGate): serve (nothing), reduce_only (only orders that reduce a
position pass) or halt (nothing passes); code CONTROL_STATE_STALE. It is lifted at the first successful read.

The alerts (`on_overdue`) follow the stale *episode*, which has hysteresis: it begins the first time the control
state is overdue (not heard for max_age_s, or the trader leases lapsed) and ends only once it has stayed fresh
for `recover_s` without a break (default max_age_s + HEARING_S; the sidecar sets control_state_max_age_seconds
+ trader_lease_seconds). A relapse before then - a read held up for max_age_s right after the database came
back on a loaded machine, or leases that lapse because their renewal had not come round yet - is the same
episode: one control_state_stale, one control_state_recovered. Why a window longer than max_age_s: a read that
stalls just after the recovery is seen overdue only max_age_s later; a lease renewal is due every lease/3 s. The
stale gate itself has no hysteresis: it applies whenever the state is overdue and is lifted at the next read.
A stop during that window ends the episode (the state was heard again): its recovered alert is queued then.

Changes are applied only once the plane is primed (the stored state loaded and the scope pauses read): the
stored state is read at a version (LoadedState.control_version) and everything after it is applied from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import make_url

from ..engine.state import SEVERITY, TraderState
from ..engine.types import CheckResult, CheckStatus, Decision, DecisionCode, OrderIntent, TradingState
from ..store.dbthread import PG_CONNECT_DEFAULTS
from ..store.url import redact
from .changes import CHANNEL, SINCE_SQL, from_row
from .plane import ControlPlane
from .tasks import cancel_all

log = logging.getLogger("tradeguard.control")

STALE_ACTIONS = ("serve", "reduce_only", "halt")
READ_TIMEOUT_S = 3.0  # a read (or LISTEN) that takes longer: the connection is dropped and made again
CONNECT_TIMEOUT_S = 5.0
RECONNECT_MAX_S = 5.0
HEARING_S = 3.0  # nothing heard for this long: health NOT_SERVING
WATCH_S = 0.25  # how often health and the stale gate are re-judged
BATCH = 500
_CODE = DecisionCode.CONTROL_STATE_STALE


def conninfo(url: str) -> tuple[str, dict[str, Any]]:
    """A libpq connection string for psycopg from the store's SQLAlchemy URL, and the connection defaults it does
    not set.

    The parts are passed as libpq keywords, decoded: a URL rendered back as a string would keep the form encoding
    of its query (`options=-c+lock_timeout%3D1000`), and libpq reads a `+` as itself, so a database_url with
    server options would never connect here (while the store, which SQLAlchemy connects, would)."""
    parsed = make_url(url)
    params: dict[str, Any] = {}
    if parsed.host:
        params["host"] = parsed.host
    if parsed.port:
        params["port"] = parsed.port
    if parsed.username:
        params["user"] = parsed.username
    if parsed.password is not None:
        params["password"] = parsed.password
    if parsed.database:
        params["dbname"] = parsed.database
    for key, value in parsed.query.items():
        params[key] = value[-1] if isinstance(value, tuple) else value
    present = {k.lower() for k in parsed.query}
    kwargs = {k: v for k, v in PG_CONNECT_DEFAULTS.items() if k not in present}
    kwargs["application_name"] = "tradeguard-control"
    return make_conninfo("", **params), kwargs


class StaleGate:
    """The engine's `control_gate` while the control state is stale (see the module docstring). Like the
    unloaded gate (engine/unloaded.py) it only ever makes a verdict stricter; in shadow mode a denial is
    `allowed` with `would_deny`."""

    __slots__ = ("action", "age", "enforcing", "max_age_s", "state")

    def __init__(self, action: str, max_age_s: float, age: Callable[[], float], enforcing: Callable[[], bool]) -> None:
        if action not in STALE_ACTIONS:
            raise ValueError(f"control_state_stale_action: one of {', '.join(STALE_ACTIONS)}, got {action!r}")
        self.action = action
        self.max_age_s = max_age_s
        self.age = age
        self.enforcing = enforcing
        self.state = TradingState.HALTED if action == "halt" else TradingState.REDUCING

    def note(self) -> str:
        what = "only exposure-reducing orders" if self.action == "reduce_only" else "no orders"
        return (f"CONTROL_STATE_STALE: the shared control state was last heard {self.age():.1f}s ago (database "
                f"unreachable; control_state_max_age_seconds={self.max_age_s:g}); control_state_stale_action="
                f"{self.action}: {what}")

    def __call__(self, d: Decision, st: TraderState, order: OrderIntent | None, reducing: bool) -> Decision:
        denied = not d.allowed or d.would_deny
        passes = denied or self.action == "serve" or (self.action == "reduce_only" and reducing)
        note = self.note()
        check = CheckResult("control_state_fresh", CheckStatus.PASS if passes else CheckStatus.FAIL, _CODE, note,
                            self.age(), self.max_age_s)
        checks = (*d.checks, check)
        if passes:
            return Decision(d.allowed, d.code, d.reason, d.trading_state, d.paused_until, checks, d.actions,
                            d.would_deny)
        state = self.state if SEVERITY[self.state] > SEVERITY[d.trading_state] else d.trading_state
        if self.enforcing():
            return Decision(False, _CODE, note, state, d.paused_until, checks, d.actions)
        return Decision(True, _CODE, f"SHADOW (not enforced), would deny: {note}", state, d.paused_until, checks,
                        d.actions, would_deny=True)


class ControlListener:
    """See the module docstring. `start()`, `stop()`; `url` may be replaced before `start()` (tests: a proxy)."""

    def __init__(self, url: str, plane: ControlPlane, *, max_age_s: float, stale_action: str, poll_s: float,
                 on_hearing: Callable[[bool], None] = lambda _h: None,
                 lease_lapsed: Callable[[], bool] = lambda: False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.clock = clock
        self.plane = plane
        self.max_age_s = max_age_s
        self.interval = max(0.05, min(1.0, poll_s))
        self.on_hearing = on_hearing  # health: called on every change of `hearing`
        # True while this sidecar's trader leases have not been renewed for longer than trader_lease_seconds:
        # another sidecar may own its traders by now, so the stale action applies at once.
        self.lease_lapsed = lease_lapsed
        self.gate = StaleGate(stale_action, max_age_s, self.age_seconds,
                              lambda: plane.engine.flags.enable_risk_enforcement)
        self.last_heard = clock()  # nothing heard yet: the age counts from the start
        self.connected = False
        self.hearing = False
        self.stale = False
        self.reconnects = 0
        self.wake = asyncio.Event()  # set when the plane is primed: catch up at once
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        plane.age = self.age_seconds
        # Alerts (alerts/episodes.py): called with True when a stale episode begins (the first time "overdue": not
        # heard for max_age_s, or the leases lapsed) and with False when it ends (fresh for recover_s without a
        # break; see the module docstring), whatever the stale action (serve included: people still want to know).
        self.on_overdue: Callable[[bool], None] = lambda _o: None
        self.overdue = False
        self.recover_s = max_age_s + HEARING_S
        self.episode = False  # a stale episode in progress (alerted; not over yet)
        self.fresh_since = self.last_heard  # when "overdue" last turned false

    def age_seconds(self) -> float:
        """Seconds since the control state was last heard (0.0 when heard just now)."""
        return max(0.0, self.clock() - self.last_heard)

    def fresh_seconds(self) -> float:
        """Seconds the control state has been fresh (not overdue) without a break; 0.0 while overdue."""
        return 0.0 if self.overdue else max(0.0, self.clock() - self.fresh_since)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run(), name="tradeguard-control-listen"),
                       loop.create_task(self._watch(), name="tradeguard-control-watch")]

    async def stop(self) -> None:
        if self.episode and not self.overdue:  # heard again, not yet for recover_s: it did recover (alerts)
            self.episode = False
            self.on_overdue(False)
        self._stopping = True
        await cancel_all(self._tasks, "control state listener")
        self._tasks = []
        if self.plane.engine.control_gate is self.gate:
            self.plane.engine.control_gate = None

    def _heard(self) -> None:
        self.last_heard = self.clock()
        self._judge()

    def _judge(self) -> None:
        if self._stopping:
            return
        age = self.age_seconds()
        hearing = self.connected and age < HEARING_S
        if hearing != self.hearing:
            self.hearing = hearing
            if hearing:
                log.info("control state: hearing the database again (version %d)", self.plane.version)
            else:
                log.warning("control state: NOT hearing the database (last heard %.1fs ago): health "
                            "tradeguard.control NOT_SERVING", age)
            self.on_hearing(hearing)
        overdue = age >= self.max_age_s or self.lease_lapsed()
        if overdue != self.overdue:
            self.overdue = overdue
            if not overdue:
                self.fresh_since = self.clock()
        if overdue and not self.episode:
            self.episode = True
            self.on_overdue(True)
        elif self.episode and not overdue and self.fresh_seconds() >= self.recover_s:
            self.episode = False
            self.on_overdue(False)
        stale = overdue and self.gate.action != "serve"
        if stale != self.stale:
            self.stale = stale
            engine = self.plane.engine
            if stale:
                log.error("control state STALE: not heard for %.1fs (control_state_max_age_seconds=%g): "
                          "control_state_stale_action=%s applies to new exposure", age, self.max_age_s,
                          self.gate.action)
                engine.control_gate = self.gate
            else:
                log.warning("control state fresh again: control_state_stale_action lifted")
                if engine.control_gate is self.gate:
                    engine.control_gate = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_S)
            self._judge()

    async def _run(self) -> None:
        import psycopg
        from psycopg.rows import dict_row

        url, kwargs = conninfo(self.url)
        delay = 0.1
        while not self._stopping:
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = await asyncio.wait_for(
                    psycopg.AsyncConnection.connect(url, autocommit=True, row_factory=dict_row, **kwargs),
                    CONNECT_TIMEOUT_S)
                await asyncio.wait_for(conn.execute(f"LISTEN {CHANNEL}"), READ_TIMEOUT_S)
                self.connected = True
                self._heard()
                delay = 0.1
                while True:
                    await self._catch_up(conn)
                    if not self.plane.primed:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self.wake.wait(), self.interval)
                        continue
                    async for _notify in conn.notifies(timeout=self.interval, stop_after=1):
                        pass  # woken: read at once (several in one packet are read together)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.connected:
                    log.warning("control state: connection to %s lost (%s: %s); reconnecting", redact(self.url),
                                type(exc).__name__, exc)
                else:
                    log.info("control state: cannot reach %s (%s: %s); retrying in %.1fs", redact(self.url),
                             type(exc).__name__, exc, delay)
            finally:
                self.connected = False
                self._judge()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 1.0)
            self.reconnects += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    async def _catch_up(self, conn: Any) -> None:
        """Read (and once primed, apply) every change above the version seen; the read is the liveness check."""
        while True:
            if not self.plane.primed:
                await asyncio.wait_for(conn.execute("SELECT 1"), READ_TIMEOUT_S)
                self._heard()
                return
            seen = self.plane.version
            cur = await asyncio.wait_for(conn.execute(SINCE_SQL, (seen, BATCH)), READ_TIMEOUT_S)
            rows = await cur.fetchall()
            self._heard()
            if not rows:
                return
            await self.plane.apply([from_row(r) for r in rows])
            if len(rows) < BATCH or self.plane.version == seen:
                return
