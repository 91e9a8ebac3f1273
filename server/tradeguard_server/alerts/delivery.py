"""Delivery: an asyncio task stores each alert in the outbox, POSTs it to every notifier, retries what failed.

The hot path only calls `submit` (append to a bounded in-memory queue, set an event). The task, each round:
1. takes up the outbox's undelivered rows of this sidecar once (after a restart; retried until the store answers);
2. turns the queued alerts into one `Delivery` per notifier and stores them (`Outbox.add`) before their first
   attempt, so a crash from then on loses none; a (key, notifier) already stored is a duplicate and dropped. While
   the store is unavailable they are attempted all the same (the `store_unavailable` alert itself must get out),
   except those derived again after a restart (`only_if_new`), which wait for the outbox to say they are new; each
   is stored, with its outcome, when the database is back. Where they wait meanwhile:
   - with a local spool (PostgreSQL; `AlertSpool`, store/spool.py's table `alerts`): each new delivery is
     committed to the spool as it comes (an intake task, not only between rounds), before its first attempt,
     and the outcomes of its attempts too; once the outbox takes it, it leaves the spool. A SIGKILL or a SIGTERM
     during an outage loses none: the next start takes the spooled ones up (they are this sidecar's: one spool
     per sidecar) and attempts them. Memory holds at most `alert_max_pending` deliveries: the others wait in the
     spool only, taken up oldest first (in batches) when memory has room; a delivered one whose outcome is
     spooled leaves memory and goes from the spool to the outbox when the database answers. (Alerts raised at
     start before the store has opened the spool wait in memory until it has: milliseconds.) The inbox `submit`
     fills holds up to max(alert_max_pending, SPOOLED_INBOX_MAX) alerts: the intake empties it every commit;
   - without one (SQLite, memory, spool_path off, or while the spool cannot be written): in memory only, at most
     `alert_max_pending`, the oldest dropped and counted as failed;
3. attempts every due delivery, the notifiers in parallel, each notifier's in order; stores the outcome. A failure
   is retried after `alert_retry_initial_s` doubled per attempt, capped at `alert_retry_max_s`, times a random
   factor in [0.5, 1] (jitter: many sidecars do not retry in step); there is no last attempt: an alert is
   retried until delivered;
4. sleeps until the next retry is due, a new alert arrives, or `alert_poll_s`.

Guarantee: at least once per (alert, notifier). A delivery is marked done only after a 2xx answer: a crash between
the answer and the mark (milliseconds) sends it again after the restart; nothing else does.

A notifier is **down** after `alert_dead_after_failures` consecutive failures, or when one of its deliveries has
waited longer than `alert_dead_after_s`; up again after a success with nothing that old waiting. Down shows in the
health component `tradeguard.alerts` (NOT_SERVING while any notifier is down; the overall status is untouched:
trading does not stop because Slack is down) and in `tradeguard_alert_notifier_up{notifier}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from ..store.errors import StoreError, StoreUnavailable
from .alert import Alert
from .notifiers import DeliveryError, Notifier
from .outbox import Delivery, Outbox

log = logging.getLogger("tradeguard.alerts")

SPOOL_BATCH = 500  # spooled deliveries read (taken up, or moved to the outbox) at a time
SPOOLED_INBOX_MAX = 10_000  # with a spool: alerts queued by `submit` before the intake spools them (milliseconds)


class AlertSpool(Protocol):
    """Where deliveries not yet in the outbox are kept durably (store.spool.Spool, PostgreSQL stores only)."""

    @property
    def is_open(self) -> bool: ...

    @property
    def path(self) -> str: ...

    @property
    def alerts_depth(self) -> int: ...

    @property
    def alerts_undelivered(self) -> int: ...

    async def upsert_alerts(self, deliveries: Sequence[Delivery]) -> list[tuple[int, bool]]: ...

    async def read_alerts(self, after_seq: int, n: int, delivered: bool) -> list[tuple[int, Delivery]]: ...

    async def delete_alerts(self, keys: Sequence[tuple[str, str]]) -> None: ...


@dataclass(frozen=True, slots=True)
class Retry:
    """Delivery timing (the alert_* settings)."""

    timeout_s: float = 5.0
    initial_s: float = 1.0
    max_s: float = 300.0
    dead_after_failures: int = 5
    dead_after_s: float = 300.0
    max_pending: int = 10_000
    poll_s: float = 5.0

    def delay(self, attempts: int) -> float:
        """Seconds before the next attempt after `attempts` failed ones: exponential, capped, jittered."""
        base = min(self.max_s, self.initial_s * 2.0 ** min(attempts - 1, 60))
        return base * random.uniform(0.5, 1.0)


@dataclass(slots=True)
class NotifierStatus:
    consecutive_failures: int = 0
    last_error: str = ""
    oldest_waiting: float | None = None  # created_at of its oldest undelivered delivery
    up: bool = True


class AlertDispatcher:
    """See the module docstring. `submit` from any code on the event loop (or any thread); `start` / `stop`."""

    def __init__(self, notifiers: Sequence[Notifier], outbox: Outbox, sidecar: str, retry: Retry | None = None,
                 on_health: Callable[[bool], None] = lambda _up: None,
                 clock: Callable[[], float] = time.time, spool: AlertSpool | None = None) -> None:
        self.notifiers = list(notifiers)
        self.outbox = outbox
        self.sidecar = sidecar
        self.retry = retry or Retry()
        self.on_health = on_health  # called with False when a notifier goes down, True when all are up again
        self.clock = clock
        self.inbox: deque[Alert] = deque()
        self.deliveries: list[Delivery] = []  # in memory: not delivered yet, or outcome not stored yet
        self.status = {n.name: NotifierStatus() for n in self.notifiers}
        self.sent: Counter[tuple[str, str]] = Counter()  # (notifier, event) -> delivered
        self.failed: Counter[str] = Counter()  # notifier -> failed attempts (and deliveries dropped)
        self.duplicates = 0  # alerts the outbox already held (the same episode derived again)
        self.loaded = not outbox.durable
        self.all_up = True
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        # The local spool (see the module docstring): the in-memory deliveries that have a row there, by
        # (key, notifier) -> seq; `_cursor`: the highest seq taken into memory (the undelivered rows after it are
        # in the spool only); `_backlog`: there may be such rows.
        self.spool = spool
        self._spooled: dict[tuple[str, str], int] = {}
        self._cursor = 0
        self._backlog = spool is not None
        self._spool_failing = False
        self._spool_lock = asyncio.Lock()
        self._intake_wake: asyncio.Event | None = None
        self._intake_task: asyncio.Task[None] | None = None

    # ---- the hot path's side: enqueue only ------------------------------------------------------

    def submit(self, alert: Alert) -> None:
        """Queue an alert (no I/O, never blocks). Without notifiers there is nobody to tell: dropped."""
        if not self.notifiers:
            return
        if self._loop is not None and threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(self.submit, alert)
            return
        self.inbox.append(alert)
        limit = self.retry.max_pending if self.spool is None else max(self.retry.max_pending, SPOOLED_INBOX_MAX)
        if len(self.inbox) > limit:
            lost = self.inbox.popleft()
            log.error("alert queue full (%d alerts not taken up yet): alert %s dropped", limit, lost.key)
            for n in self.notifiers:
                self.failed[n.name] += 1
        if self._wake is not None:
            self._wake.set()
        if self._intake_wake is not None:
            self._intake_wake.set()

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        if not self.notifiers:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._wake = asyncio.Event()
        self._session = aiohttp.ClientSession()
        self._task = self._loop.create_task(self._run(), name="tradeguard-alerts")
        if self.spool is not None:
            self._intake_wake = asyncio.Event()
            self._intake_task = self._loop.create_task(self._intake_loop(), name="tradeguard-alerts-intake")
        log.info("alerts: delivering to %s", ", ".join(f"{n.name} ({n.where})" for n in self.notifiers))

    async def stop(self, store_timeout_s: float = 5.0) -> None:
        """Stop delivering; what is undelivered stays in the outbox (durable) for the next start: the alerts still
        queued are stored first (at most `store_timeout_s`; not attempted: the next start sends them). With a
        spool, what the outbox cannot take now (the database is unreachable) is committed to the spool instead."""
        for task in (self._intake_task, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._task is not None:
            if self._usable_spool() is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._intake(), store_timeout_s)  # the inbox, into the spool
            else:
                self._take_inbox()
            if self.outbox.durable and any(d.id is None or d.dirty for d in self.deliveries):
                try:
                    await asyncio.wait_for(self._store(), store_timeout_s)
                except TimeoutError:
                    log.warning("alerts: %d deliveries could not be stored before the stop",
                                sum(1 for d in self.deliveries if d.id is None and self._key(d) not in self._spooled))
            spool = self._usable_spool()
            if spool is not None and spool.alerts_depth:
                log.warning("alerts: %d deliveries kept in the local spool %s (the outbox could not take them): "
                            "attempted and stored by the next start", spool.alerts_depth, spool.path)
        if self._session is not None:
            await self._session.close()

    # ---- the task ---------------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            self._wake.clear()
            failed = False
            try:
                await self.round()
            except Exception:  # never let the task die: the next round tries again
                log.exception("alerts: delivery round failed")
                failed = True
            now = self.clock()
            due = [d.next_attempt_at for d in self.deliveries if d.delivered_at is None and self._may_send(d)]
            wait = self.retry.poll_s if not due else min(self.retry.poll_s, max(min(due) - now, 0.0))
            if (self._backlog and len(self.deliveries) < self.retry.max_pending and not self._spool_failing
                    and not failed and self._usable_spool() is not None):
                wait = 0.0  # deliveries wait in the spool only and memory has room: take them up now
            elif self.inbox or any(d.id is None or d.dirty for d in self.deliveries):
                wait = min(wait, 1.0)  # waiting for the store: look again soon
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _intake_loop(self) -> None:
        """With a spool: new alerts are committed to it as they come, not only between two rounds (a round can
        spend seconds on a notifier that hangs)."""
        assert self._intake_wake is not None
        while True:
            await self._intake_wake.wait()
            self._intake_wake.clear()
            try:
                if self.inbox and self._usable_spool() is not None:
                    await self._intake()
                    if self._wake is not None:
                        self._wake.set()
            except Exception:
                log.exception("alerts: spooling new alerts failed")

    async def round(self) -> None:
        """One pass: take up stored rows, store new deliveries, attempt the due ones, store outcomes."""
        outbox = self.outbox
        if not self.loaded and outbox.available():
            try:
                known = {d.id for d in self.deliveries}
                stored = [d for d in await outbox.pending(self.sidecar) if d.id not in known]
                self.deliveries[:0] = stored
                self.loaded = True
                if stored:
                    log.info("alerts: %d undelivered deliveries taken up from the outbox", len(stored))
            except StoreError as exc:
                log.debug("alerts: outbox not readable yet: %s", exc)
        await self._take_up_spooled()
        await self._intake()
        await self._store()
        await self._attempt_due()
        await self._store()
        self._forget_done()
        self._update_health()

    @staticmethod
    def _key(d: Delivery) -> tuple[str, str]:
        return (d.key, d.notifier)

    def _usable_spool(self) -> AlertSpool | None:
        spool = self.spool
        return spool if spool is not None and spool.is_open else None

    def _spool_error(self, what: str, exc: Exception) -> None:
        if not self._spool_failing:
            log.error("alerts: the local spool cannot be used (%s): %s; new deliveries wait in memory (at most "
                      "alert_max_pending) until it can", what, exc)
        self._spool_failing = True

    def _new_deliveries(self, alerts: list[Alert] | None = None) -> list[Delivery]:
        """Deliveries of `alerts`, else of the whole inbox (taken out of it)."""
        now = self.clock()
        new: list[Delivery] = []
        if alerts is None:
            alerts = list(self.inbox)
            self.inbox.clear()
        for alert in alerts:
            payload = alert.payload()
            for n in self.notifiers:
                new.append(Delivery(alert.key, n.name, alert.event, self.sidecar, payload, alert.at, now,
                                    only_if_new=alert.only_if_new, trader_id=alert.trader_id,
                                    account_id=alert.account_id))
        return new

    def _take_inbox(self, new: list[Delivery] | None = None) -> None:
        """Without a spool (or while it fails): new deliveries wait in memory, the oldest dropped past the bound."""
        self.deliveries.extend(self._new_deliveries() if new is None else new)
        overflow = len(self.deliveries) - self.retry.max_pending
        if overflow > 0:
            unspooled = [i for i, d in enumerate(self.deliveries) if self._key(d) not in self._spooled]
            drop = set(unspooled[:overflow])  # (one in the spool is not lost: it stays there)
            for i in drop:
                if self.deliveries[i].delivered_at is None:
                    self.failed[self.deliveries[i].notifier] += 1
            self.deliveries = [d for i, d in enumerate(self.deliveries) if i not in drop]
            if drop:
                log.error("alerts: %d deliveries dropped (alert_max_pending=%d reached)", len(drop),
                          self.retry.max_pending)

    async def _intake(self) -> None:
        """The queued alerts become deliveries. With a spool, each is committed to it before anything else (so
        before its first attempt); a (key, notifier) the spool holds already is a duplicate; it is held in memory
        while there is room and no older delivery waits in the spool only, otherwise it waits there."""
        spool = self._usable_spool()
        if spool is None:
            self._take_inbox()
            return
        async with self._spool_lock:
            # Left in the inbox until the spool has them: cancelled meanwhile (a stop), they are not lost.
            alerts = list(self.inbox)
            new = self._new_deliveries(alerts)
            if not new:
                return
            try:
                placed = await spool.upsert_alerts(new)
            except Exception as exc:
                self._spool_error("new alerts", exc)
                self._take_alerts(alerts)
                self._take_inbox(new)
                return
            self._take_alerts(alerts)
            self._spool_failing = False
            for d, (seq, inserted) in zip(new, placed, strict=True):
                if not inserted:
                    self.duplicates += 1
                elif self._backlog or len(self.deliveries) >= self.retry.max_pending:
                    self._backlog = True  # in the spool only: taken up when memory has room
                else:
                    self.deliveries.append(d)
                    self._spooled[self._key(d)] = seq
                    self._cursor = max(self._cursor, seq)

    def _take_alerts(self, alerts: list[Alert]) -> None:
        """`alerts` (the oldest in the inbox, unless dropped from it meanwhile) leave the inbox."""
        taken = {id(a) for a in alerts}
        while self.inbox and id(self.inbox[0]) in taken:
            self.inbox.popleft()

    def _merge_outcomes(self, dupes: list[Delivery]) -> None:
        """Deliveries the outbox found stored already: one delivered meanwhile (from the spool, by a run that could
        not store it) gives its outcome to the stored row, when this sidecar holds it (taken up from the outbox),
        so that it is not sent again."""
        delivered = {self._key(d): d for d in dupes if d.delivered_at is not None}
        if not delivered:
            return
        for d in self.deliveries:
            done = delivered.get(self._key(d))
            if done is not None and d.id and d.delivered_at is None:
                d.delivered_at, d.last_error = done.delivered_at, None
                d.attempts = max(d.attempts, done.attempts)
                d.dirty = True

    async def _take_up_spooled(self) -> None:
        """Undelivered deliveries in the spool only (a previous run's, or past alert_max_pending) into memory,
        oldest first, as far as there is room."""
        spool = self._usable_spool()
        if spool is None or not self._backlog:
            return
        async with self._spool_lock:
            while self._backlog and (room := self.retry.max_pending - len(self.deliveries)) > 0:
                n = min(room, SPOOL_BATCH)
                try:
                    rows = await spool.read_alerts(self._cursor, n, delivered=False)
                except Exception as exc:  # (SpoolError) the next round tries again
                    self._spool_error("taking up spooled deliveries", exc)
                    return
                for seq, d in rows:
                    self._cursor = max(self._cursor, seq)
                    if self._key(d) not in self._spooled:
                        d.id = None  # (in the outbox only if a previous run stored it: then it collapses there)
                        d.dirty = False
                        self.deliveries.append(d)
                        self._spooled[self._key(d)] = seq
                if len(rows) < n:
                    self._backlog = False

    async def _store(self) -> None:
        """New deliveries into the outbox, then the outcomes of attempts not stored yet. With a spool: what the
        outbox took leaves the spool; what it cannot take now is committed to the spool (new deliveries, and the
        outcomes of spooled ones)."""
        outbox = self.outbox
        if self.loaded and outbox.available():
            if self._usable_spool() is not None:  # first: older than anything in memory not stored yet
                try:
                    await self._spooled_to_outbox()
                except Exception as exc:  # (store.spool.SpoolError: the spool file)
                    log.error("alerts: the local spool cannot be read (%s): its deliveries wait there", exc)
            await self._store_outbox()
        await self._store_spool()

    async def _store_outbox(self) -> None:
        outbox = self.outbox
        # Those derived again after a restart (only_if_new) last: a delivery of the same episode that a previous
        # run spooled (taken up from the spool) is the one stored, the one derived again collapses into it.
        new = sorted((d for d in self.deliveries if d.id is None), key=lambda d: d.only_if_new)
        try:
            if new:
                fresh = await outbox.add(new)
                dupes = {id(d) for d, ok in zip(new, fresh, strict=True) if not ok}
                if dupes:
                    self.duplicates += len(dupes)
                    self.deliveries = [d for d in self.deliveries if id(d) not in dupes]
                    self._merge_outcomes([d for d in new if id(d) in dupes])
                await self._unspool([d for d in new if self._key(d) in self._spooled])
            for d in self.deliveries:
                if d.id is not None and d.dirty:
                    if d.id:
                        await outbox.save(d)
                    d.dirty = False
        except StoreUnavailable as exc:
            log.debug("alerts: outbox not writable now (%s); kept in memory", exc)
        except StoreError as exc:  # refused, not unavailable: retrying would refuse it forever
            unstored = [d for d in new if d.id is None]
            log.error("alerts: the outbox refused %d deliveries (%s): delivered from memory only", len(unstored), exc)
            for d in unstored:
                d.id = 0  # (0: not stored, never will be)
            await self._unspool(unstored)

    async def _unspool(self, stored: list[Delivery]) -> None:
        """Deliveries the outbox took (or refused for good, or found duplicates) leave the spool."""
        spool = self._usable_spool()
        if spool is None or not stored:
            return
        keys = [self._key(d) for d in stored]
        async with self._spool_lock:
            try:
                await spool.delete_alerts(keys)
            except Exception as exc:  # (SpoolError) they stay there: the next take-up finds them stored (duplicates)
                log.warning("alerts: %d deliveries stored in the outbox not removed from the local spool: %s",
                            len(keys), exc)
            for k in keys:
                self._spooled.pop(k, None)

    async def _spooled_to_outbox(self) -> None:
        """Delivered deliveries in the spool only (their outcome was spooled during an outage, or by a previous
        run): into the outbox with their outcome, in batches, then out of the spool."""
        spool = self._usable_spool()
        assert spool is not None
        after = 0
        while spool.alerts_depth > spool.alerts_undelivered:  # (counts kept by the spool: no read when none)
            rows = await spool.read_alerts(after, SPOOL_BATCH, delivered=True)
            batch = [d for _seq, d in rows if self._key(d) not in self._spooled]
            if batch:
                for d in batch:
                    d.id = None
                try:
                    fresh = await self.outbox.add(batch)
                    self.duplicates += sum(1 for ok in fresh if not ok)
                    self._merge_outcomes([d for d, ok in zip(batch, fresh, strict=True) if not ok])
                except StoreUnavailable as exc:
                    log.debug("alerts: outbox not writable now (%s); kept in the spool", exc)
                    return
                except StoreError as exc:  # refused: delivered already, the outbox will never take them
                    log.error("alerts: the outbox refused %d delivered deliveries from the spool (%s): not stored",
                              len(batch), exc)
                async with self._spool_lock:
                    await spool.delete_alerts([self._key(d) for d in batch])
            if len(rows) < SPOOL_BATCH:
                return
            after = rows[-1][0]

    async def _store_spool(self) -> None:
        spool = self._usable_spool()
        if spool is None:
            return
        async with self._spool_lock:
            unspooled = [d for d in self.deliveries if d.id is None and self._key(d) not in self._spooled]
            outcomes = [d for d in self.deliveries if d.id is None and d.dirty and self._key(d) in self._spooled]
            if not unspooled and not outcomes:
                return
            try:
                placed = await spool.upsert_alerts(unspooled + outcomes)
            except Exception as exc:
                self._spool_error("deliveries the outbox cannot take now", exc)
                return
            self._spool_failing = False
            for d, (seq, _inserted) in zip(unspooled, placed, strict=False):
                self._spooled[self._key(d)] = seq  # (already there: the same delivery, spooled before a cancel)
            for d in outcomes:
                d.dirty = False  # (its outcome goes to the outbox with it: Outbox.add stores the outcome)

    def _may_send(self, d: Delivery) -> bool:
        return d.id is not None or not d.only_if_new

    async def _attempt_due(self) -> None:
        now = self.clock()
        due: dict[str, list[Delivery]] = {}
        for d in self.deliveries:
            if d.delivered_at is None and d.next_attempt_at <= now and self._may_send(d):
                due.setdefault(d.notifier, []).append(d)
        if not due:
            return
        by_name = {n.name: n for n in self.notifiers}
        await asyncio.gather(*(self._send_all(by_name[name], ds) for name, ds in due.items() if name in by_name))

    async def _send_all(self, notifier: Notifier, deliveries: list[Delivery]) -> None:
        assert self._session is not None
        status = self.status[notifier.name]
        failing_s = 0.0  # time this round spent on failed attempts
        for index, d in enumerate(deliveries):
            d.attempts += 1
            began = time.monotonic()
            try:
                await notifier.send(self._session, d.payload, self.retry.timeout_s)
            except DeliveryError as exc:
                failing_s += time.monotonic() - began
                d.last_error = str(exc)
                d.next_attempt_at = self.clock() + self.retry.delay(d.attempts)
                self.failed[notifier.name] += 1
                status.consecutive_failures += 1
                status.last_error = d.last_error
                if status.consecutive_failures in (1, self.retry.dead_after_failures) or d.attempts == 1:
                    log.warning("alerts: %s delivery of %s failed (attempt %d): %s; retried", notifier.name, d.key,
                                d.attempts, d.last_error)
                if failing_s >= self.retry.timeout_s:
                    # A receiver that hangs: its other deliveries wait for the same retry instead of each spending
                    # alert_timeout_s on it in a row (1,000 alerts: 5,000 s), while this round - and with it every
                    # other notifier's next alerts and the outbox writes - waited. (Quick failures, a refused
                    # connection or a 500, go on: they cost nothing.)
                    for later in deliveries[index + 1:]:
                        later.next_attempt_at = max(later.next_attempt_at, d.next_attempt_at)
                    d.dirty = True
                    return
            else:
                d.delivered_at = self.clock()
                d.last_error = None
                self.sent[(notifier.name, d.event)] += 1
                status.consecutive_failures = 0
                if d.attempts > 1:
                    log.info("alerts: %s delivered %s after %d attempts", notifier.name, d.key, d.attempts)
            d.dirty = True

    def _forget_done(self) -> None:
        """Deliveries whose outcome is delivered and stored (or the outbox is memory) leave memory. Stored: in the
        outbox, or in the spool (moved to the outbox from there when the database answers)."""
        durable = self.outbox.durable
        keep: list[Delivery] = []
        for d in self.deliveries:
            spooled = self._key(d) in self._spooled and d.id is None
            if d.delivered_at is not None and (not durable or (not d.dirty and (d.id is not None or spooled))):
                if spooled:
                    del self._spooled[self._key(d)]
                continue
            keep.append(d)
        self.deliveries = keep

    def _update_health(self) -> None:
        now = self.clock()
        oldest: dict[str, float] = {}
        for d in self.deliveries:
            if d.delivered_at is None and (d.notifier not in oldest or d.created_at < oldest[d.notifier]):
                oldest[d.notifier] = d.created_at
        for name, status in self.status.items():
            status.oldest_waiting = oldest.get(name)
            was = status.up
            status.up = status.consecutive_failures < self.retry.dead_after_failures and (
                status.oldest_waiting is None or now - status.oldest_waiting <= self.retry.dead_after_s)
            if was != status.up:
                if status.up:
                    log.info("alerts: notifier %s is up again", name)
                else:
                    log.error("alerts: notifier %s is DOWN (%d consecutive failures; oldest undelivered alert "
                              "%.0f s old): %s", name, status.consecutive_failures,
                              0.0 if status.oldest_waiting is None else now - status.oldest_waiting,
                              status.last_error)
        all_up = all(s.up for s in self.status.values())
        if all_up != self.all_up:
            self.all_up = all_up
            self.on_health(all_up)

    # ---- what metrics read (observability.metrics.AlertCounters) ----------------------------------

    def alerts_sent(self) -> dict[tuple[str, str], int]:
        return dict(self.sent)

    def alerts_failed(self) -> dict[str, int]:
        return {n.name: self.failed[n.name] for n in self.notifiers}

    def alerts_pending(self) -> int:
        """Undelivered: in memory, queued, and in the spool only (beyond alert_max_pending, or a previous run's not
        taken up yet)."""
        spool = self._usable_spool()
        spooled_only = 0 if spool is None else max(0, spool.alerts_undelivered - len(self._spooled))
        return (sum(1 for d in self.deliveries if d.delivered_at is None) + len(self.inbox) * len(self.notifiers)
                + spooled_only)

    def notifiers_up(self) -> dict[str, bool]:
        return {name: s.up for name, s in self.status.items()}
