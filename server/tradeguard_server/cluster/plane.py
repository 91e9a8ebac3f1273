"""ControlPlane: this sidecar's view of the shared control state, and how changes made elsewhere are applied.

What it holds: the control-state `version` seen (every CanTrade answer carries it), and the scope pauses (the
account and every-account kill switches: the latest pause or resume of each scope, from control_changes).

Scope pauses live in every local trader of the scope as `Pause(source="account")` / `Pause(source="all")`
(code KILL_SWITCH), so every existing path (checks, cancel_all_orders when HALTED, WatchRiskState, metrics,
history) sees them; a trader created later gets them from the engine's creation hook (`engine.on_new_trader`),
a trader restored or taken over too. A re-sync replaces exactly those two sources; a trader's own resume lifts
neither (engine.resume); the resume of a scope lifts only that scope. The trader's own pauses and the scopes'
combine: the most severe wins (TraderState.effective_pause).

Changes made through other sidecars (`apply`, fed by cluster.listener in version order; the ones this process
recorded itself are skipped: they are in force here already. Skipped by the change objects this process made, not
by origin: another live process given the same sidecar_id (two pods from one manifest) writes changes of the same
origin, and an operator's pause pressed on it must still reach the trader here):
- config  -> the account's configurations re-read from the store and installed (re-checks its traders at once,
  with a history reason naming the caller and the sidecar);
- breaker -> the account's breakers re-read and installed;
- flags   -> the flags re-read and installed;
- pause / resume of a trader -> applied when the trader is in this engine (this sidecar owns it), since-aware;
- pause / resume of a scope -> the scope pause replaced (a newer version only) and synced into its traders.
A change whose re-read fails (store unavailable) stops the batch there: `version` stays below it and the
listener retries.

Public API (other parts of issue 17 call these):
- `await plane.pause_account(account_id, state, until, reason, actor)` -> ScopePause: pause every trader of the
  account ("*" = every account) on every sidecar; the row commits first (StoreUnavailable otherwise, nothing
  applied), then it is applied here at once. `until` epoch seconds or None (until resumed).
- `await plane.resume_account(account_id, actor)` -> ScopePause (state None): lift that scope.
- `plane.replay_trader(st, changes)`: after `engine.restore(st)` of a trader taken over, apply its pause /
  resume changes (store.trader_changes(trader_id), version order) and the scope pauses. Idempotent.
- `plane.record(kind, account_id, payload, trader_id="")` -> ControlChange: a change made here, with origin,
  actor (the current caller) and trace id, to append in the changing transaction.
- `plane.version`, `plane.scope(account_id)`, `plane.pauses_for(account_id)`.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..engine.engine import RiskEngine, iso_utc
from ..engine.state import Pause, TraderState
from ..engine.types import DecisionCode, TradingState
from ..observability.tracing import current_call, history_trace_id
from ..store.errors import StoreError
from ..store.records import BreakerRecord, ConfigRecord, FlagsRecord
from .changes import ALL_ACCOUNTS, ControlChange

# changes recorded here that `apply` may still meet (a change is met once, shortly after its commit)
MINE_KEPT = 10_000
log = logging.getLogger("tradeguard.control")


class ControlStore(Protocol):
    """What the plane reads and writes (RiskStore and MemoryStore)."""

    async def append_change(self, change: ControlChange) -> int: ...

    async def scope_changes(self) -> list[ControlChange]: ...

    async def changes_since(self, version: int, limit: int = 1000) -> list[ControlChange]: ...

    async def get_configs(self, account_id: str) -> list[ConfigRecord]: ...

    async def list_breakers(self, account_id: str) -> list[BreakerRecord]: ...

    async def get_flags(self) -> FlagsRecord | None: ...


class Configs(Protocol):
    def replace_account(self, account_id: str, records: Iterable[ConfigRecord], reason: str) -> bool: ...


class Breakers(Protocol):
    async def replace_account(self, account_id: str, records: Iterable[BreakerRecord], by: str) -> int: ...


class FlagsInstaller(Protocol):
    def install_flags(self, stored: FlagsRecord | None, by: str) -> bool: ...


def current_actor() -> str:
    """Who makes the current call: the mTLS client certificate's name, else "operator@<peer>", else "operator"."""
    call = current_call()
    if call is None:
        return "operator"
    try:
        names = call.auth_context().get("x509_common_name", ()) if hasattr(call, "auth_context") else ()
        for name in names:
            return name.decode(errors="replace") if isinstance(name, bytes) else str(name)
        peer = call.peer() if hasattr(call, "peer") else ""
    except Exception:  # a context without these (an HTTP request's headers)
        return "operator"
    return f"operator@{peer}" if peer else "operator"


@dataclass(frozen=True, slots=True)
class ScopePause:
    """An account's (account_id) or every account's (account_id "*") kill switch; `state` None = lifted."""

    account_id: str
    state: TradingState | None
    until: float | None
    reason: str
    actor: str
    origin: str
    since: float
    version: int

    @property
    def all_accounts(self) -> bool:
        return self.account_id == ALL_ACCOUNTS

    def active(self, now: float) -> bool:
        return self.state is not None and (self.until is None or now < self.until)

    def describe(self) -> str:
        where = "every account" if self.all_accounts else f"account {self.account_id}"
        state = "lifted" if self.state is None else self.state.name
        return f"{state} for {where} by {self.actor} via sidecar {self.origin}"

    def pause(self) -> Pause:
        assert self.state is not None
        text = f"KILL_SWITCH: {self.describe()}" + (f": {self.reason}" if self.reason else "")
        return Pause(self.state, self.until, DecisionCode.KILL_SWITCH, text,
                     "all" if self.all_accounts else "account", since=self.since)

    @classmethod
    def of(cls, c: ControlChange) -> ScopePause:
        payload = c.payload or {}
        state = TradingState[payload.get("state", "HALTED")] if c.kind == "pause" else None
        until = payload.get("until")
        return cls(c.account_id, state, None if until is None else float(until), str(payload.get("reason", "")),
                   c.actor, c.origin, c.created_at, c.version)


def by_text(c: ControlChange) -> str:
    return f"{c.actor} via sidecar {c.origin}"


class ControlPlane:
    """See the module docstring."""

    def __init__(self, engine: RiskEngine, store: ControlStore, configs: Configs, breakers: Breakers,
                 flags: FlagsInstaller, *, origin: str, cluster: bool) -> None:
        self.engine = engine
        self.store = store
        self.configs = configs
        self.breakers = breakers
        self.flags = flags
        self.origin = origin  # Settings.sidecar_name
        self.cluster = cluster  # PostgreSQL: other sidecars share the control state
        self.version = 0  # the control-state version seen (every change up to it is applied here)
        self.scopes: dict[str, ScopePause] = {}  # account_id ("*" = every account) -> its latest pause or resume
        self.primed = False  # the scope pauses are read (until then, traders keep the stored ones)
        self.applied: Counter[str] = Counter()  # changes from other sidecars applied here, by kind
        # the changes this process recorded and `apply` has not passed yet (their version is set when stored): the
        # ones `apply` skips; the oldest forgotten past MINE_KEPT (never stored: a failed transaction)
        self._mine: deque[ControlChange] = deque(maxlen=MINE_KEPT)
        # Seconds since the control state was last heard (the listener sets it; single-sidecar modes: always 0).
        self.age: Callable[[], float] = lambda: 0.0
        engine.on_new_trader = self.sync_trader
        # Alerts (alerts/episodes.py): told of each scope pause / resume made through this sidecar, after it is in
        # force here (never of the changes other sidecars made: each kill switch is alerted by one sidecar), with
        # whether the scope was paused before it as the shared control state says (pressed on another sidecar,
        # restored at start, or a timed pause that ran out: this sidecar's own memory of its presses cannot know).
        self.on_scope: Callable[[ScopePause, bool], None] | None = None

    # ---- changes made here ----------------------------------------------------------------------

    def record(self, kind: str, account_id: str, payload: dict[str, Any] | None = None,
               trader_id: str = "", actor: str | None = None) -> ControlChange:
        """A change made through this sidecar, by the current caller (unless `actor`), to append in the changing
        transaction."""
        change = ControlChange(kind, account_id, trader_id, payload, self.origin, actor or current_actor(),
                               history_trace_id(), self.engine.clock.now())
        self._mine.append(change)
        return change

    def pause_change(self, account_id: str, trader_id: str, state: TradingState, until: float | None, reason: str,
                     actor: str | None = None) -> ControlChange:
        return self.record("pause", account_id, {"state": state.name, "until": until, "reason": reason}, trader_id,
                           actor)

    def noted(self, version: int) -> None:
        """A change appended here in single-sidecar mode (no listener reads it back): the version moves on."""
        if not self.cluster and version > self.version:
            self.version = version

    async def pause_account(self, account_id: str, state: TradingState, until: float | None, reason: str,
                            actor: str | None = None) -> ScopePause:
        """Pause every trader of `account_id` ("*": of every account), those that appear later too, on every
        sidecar. The row commits first (StoreError, e.g. StoreUnavailable, otherwise: nothing applied), then the
        pause is in force here at once (other sidecars: on NOTIFY). `actor` None = the current caller."""
        change = self.pause_change(account_id, "", state, until, reason, actor)
        await self.store.append_change(change)
        self.noted(change.version)
        scope = ScopePause.of(change)
        log.warning("KILL SWITCH %s until=%s reason=%s (version %d)", scope.describe(),
                    "resume" if until is None else iso_utc(until), reason, change.version)
        was = self._scope_active(account_id)
        self._set_scope(scope)
        if self.on_scope is not None:
            self.on_scope(scope, was)
        return scope

    async def resume_account(self, account_id: str, actor: str | None = None) -> ScopePause:
        """Lift the pause of `account_id` ("*": the every-account pause); not the traders' own pauses."""
        change = self.record("resume", account_id, None, "", actor)
        await self.store.append_change(change)
        self.noted(change.version)
        scope = ScopePause.of(change)
        log.warning("RESUME %s (version %d)", scope.describe(), change.version)
        was = self._scope_active(account_id)
        self._set_scope(scope)
        if self.on_scope is not None:
            self.on_scope(scope, was)
        return scope

    pause_scope = pause_account
    resume_scope = resume_account

    # ---- scope pauses ---------------------------------------------------------------------------

    def scope(self, account_id: str) -> ScopePause | None:
        """The latest pause or resume of the scope ("*": every account), None when it never had one."""
        return self.scopes.get(account_id)

    def pauses_for(self, account_id: str) -> list[Pause]:
        """The scope pauses in force for a trader of `account_id` (its account's and the every-account one)."""
        now = self.engine.clock.now()
        out = []
        for key in (account_id, ALL_ACCOUNTS):
            scope = self.scopes.get(key)
            if scope is not None and scope.active(now):
                out.append(scope.pause())
        return out

    def sync_trader(self, st: TraderState) -> None:
        """The engine's creation hook: put the scope pauses into a trader just made or restored (not announced:
        the change that made it is). Before the scope pauses are read, a restored trader keeps its stored ones."""
        if not self.primed:
            return
        st.pauses = [p for p in st.pauses if p.source not in ("account", "all")] + self.pauses_for(st.account_id)

    def _scope_active(self, account_id: str) -> bool:
        """The scope is paused now, as this sidecar knows the shared control state."""
        known = self.scopes.get(account_id)
        return known is not None and known.active(self.engine.clock.now())

    def _set_scope(self, scope: ScopePause) -> None:
        known = self.scopes.get(scope.account_id)
        if known is not None and known.version > scope.version:
            return  # an older change read late
        self.scopes[scope.account_id] = scope
        self._sync(scope.account_id, scope.describe() + (f": {scope.reason}" if scope.reason else ""))

    def _sync(self, account_id: str, reason: str) -> int:
        """Re-sync the scope pauses of every local trader of the scope; returns how many changed."""
        changed = 0
        for st in list(self.engine.traders.values()):
            if account_id == ALL_ACCOUNTS or st.account_id == account_id:
                try:
                    changed += self.engine.set_scope_pauses(st, self.pauses_for(st.account_id), reason)
                except Exception:  # a listener failed (logged by the engine): the pause is in force all the same
                    changed += 1
        return changed

    async def prime(self, version: int) -> None:
        """Read the scope pauses (the latest pause or resume of each scope; one whose `until` passed is gone) and
        sync every local trader; `version` is the control-state version the stored state was read at. Raises
        StoreError when the store cannot be read (call again)."""
        latest = await self.store.scope_changes()
        self.version = max(self.version, version)
        self.primed = True
        for c in latest:
            self.scopes[c.account_id] = ScopePause.of(c)
        synced = self._sync(ALL_ACCOUNTS, "account and every-account pauses restored")
        now = self.engine.clock.now()
        active = [s.describe() for s in self.scopes.values() if s.active(now)]
        log.info("control state at version %d; scope pauses in force: %s (%d traders synced)", self.version,
                 ", ".join(active) or "none", synced)

    # ---- changes made elsewhere -----------------------------------------------------------------

    async def apply(self, changes: Sequence[ControlChange]) -> int:
        """Apply changes read from control_changes (version order); this sidecar's own are only counted as seen.
        Returns how many were applied. Stops at a change whose re-read fails (store unavailable): `version`
        stays below it, the caller reads it again later."""
        done = 0
        mine = {m.version for m in self._mine if m.version}
        for c in changes:
            if c.version <= self.version:
                continue
            if c.version not in mine:  # (a change this process recorded: in force here already)
                try:
                    await self._apply_one(c)
                except StoreError as exc:
                    log.warning("control change %d (%s of %s) not applied yet: %s; retried", c.version, c.kind,
                                c.account_id or "-", exc)
                    return done
                except Exception:  # one change that cannot be applied must not stop the others
                    log.exception("control change %d (%s) could not be applied; skipped", c.version, c.kind)
                self.applied[c.kind] += 1
                done += 1
            self.version = c.version
        if mine:  # what apply passed is never looked up again
            version = self.version
            self._mine = deque((m for m in self._mine if not m.version or m.version > version), maxlen=MINE_KEPT)
        return done

    async def _apply_one(self, c: ControlChange) -> None:
        by = by_text(c)
        payload = c.payload or {}
        if c.kind == "config":
            what = f"config {payload.get('config_id', '?')} {payload.get('op', 'changed')}"
            self.configs.replace_account(c.account_id, await self.store.get_configs(c.account_id), f"{what} by {by}")
        elif c.kind == "breaker":
            await self.breakers.replace_account(c.account_id, await self.store.list_breakers(c.account_id), by)
        elif c.kind == "flags":
            self.flags.install_flags(await self.store.get_flags(), by)
        elif c.kind in ("pause", "resume") and not c.trader_id:
            self._set_scope(ScopePause.of(c))
        elif c.kind in ("pause", "resume"):
            st = self.engine.traders.get(c.trader_id)
            if st is None:
                return  # not this sidecar's trader: its owner applies it (or replays it when taking it over)
            if st.account_id != c.account_id:
                log.error("control change %d: trader %s is bound to account %s here, not %s; not applied",
                          c.version, c.trader_id, st.account_id, c.account_id)
                return
            self._trader_change(st, c)
        elif c.kind == "restore":
            return  # a point-in-time restore, applied by the trader's owner (the audit row; see replay_trader)
        else:
            log.warning("control change %d of unknown kind %r ignored", c.version, c.kind)

    def _trader_change(self, st: TraderState, c: ControlChange) -> None:
        payload = c.payload or {}
        if c.kind == "pause":
            until = payload.get("until")
            self.engine.pause(st.trader_id, st.account_id, TradingState[payload.get("state", "HALTED")], None,
                              str(payload.get("reason", "")), until=None if until is None else float(until),
                              since=c.created_at, by=by_text(c))
        else:
            self.engine.resume(st.trader_id, st.account_id, since=c.created_at, by=by_text(c))

    def replay_trader(self, st: TraderState, changes: Iterable[ControlChange]) -> None:
        """For a trader taken over (B's takeover), after `engine.restore(st)`: apply its pause / resume changes
        (store.trader_changes(trader_id); any origin, version order) and the scope pauses. A resume lifts only
        the pauses that began at or before it and a pause whose `until` passed adds nothing, so replaying rows
        already reflected in the stored state changes nothing: idempotent. Only the net change is announced
        (RiskEngine.replayed): one state change, or none."""
        if self.engine.traders.get(st.trader_id) is not st:
            self.engine.restore(st)
        ordered = sorted(changes, key=lambda c: c.version)
        # A point-in-time restore (kind "restore", AdminService.RestoreRiskState) replaced the whole state: the
        # kill switches before it are what it restored (or lifted), only those after it are replayed.
        restores = [i for i, c in enumerate(ordered) if c.kind == "restore" and c.trader_id == st.trader_id]
        if restores:
            ordered = ordered[restores[-1] + 1:]
        mine = [c for c in ordered
                if c.trader_id == st.trader_id and c.kind in ("pause", "resume") and c.account_id == st.account_id]
        if mine:

            def apply() -> None:
                for c in mine:
                    self._trader_change(st, c)

            # (rows the stored state reflects change nothing: no history rows again, updated_at left as stored)
            self.engine.replayed(st, apply, f"taken over: {len(mine)} pause/resume changes replayed")
        if self.primed:
            self.engine.set_scope_pauses(st, self.pauses_for(st.account_id), "account and every-account pauses")

    # ---- what metrics read (observability.metrics.ControlCounters) -------------------------------

    def control_state_age_seconds(self) -> float:
        return self.age()

    def control_state_version(self) -> int:
        return self.version

    def control_changes_applied(self) -> dict[str, int]:
        return dict(self.applied)
