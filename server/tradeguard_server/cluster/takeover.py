"""One owner per trader (cluster mode: the database is PostgreSQL): claims, renewal, eviction, release.

A trader's live state (equity, PnL, positions, pending orders, pauses, streaks) is held and written by exactly one
sidecar at a time, the one its lease (cluster.leases) names. `Takeover` is that ownership inside one sidecar:

- `owned` ({trader_id: lease epoch}) is what this sidecar owns. The hot path asks `trader_id in owned`: a dict
  lookup, no await, no database. Only a trader that is not there goes through `acquire`.
- `acquire` (the first call for a trader not in memory): ONE claim transaction that takes the lease, reads the
  trader's risk_state row, its recent trade ids and its pause/resume changes (control_changes), then installs the
  state into the engine and replays those changes on it (`replay`, ControlPlane.replay_trader). Concurrent first
  calls for the same trader share one claim. A claim refused (another live sidecar holds the lease) answers
  FAILED_PRECONDITION "trader_id X is owned by sidecar Y until T: send its calls there" (google.rpc.ErrorInfo
  reason TRADER_OWNED_ELSEWHERE), or under foreign_trader_policy=read_only a read-only view (`Foreign`): see
  `read_only_decision`. A database that cannot be reached answers UNAVAILABLE. A refusal is remembered until the
  lease it saw would lapse (a bot at the wrong sidecar does not cost a query per call).
- Fencing: the store's writer writes each trader's risk_state row with its lease epoch (`epoch_of`), so a late
  write of an earlier owner (lower epoch) never replaces the new owner's row; a snapshot of a trader this sidecar
  no longer owns is not written at all.
- `renew` (every trader_lease_seconds / 3): one statement for every local trader. A trader it does not renew was
  taken over (its lease lapsed while this sidecar could not reach the database, and another claimed it): it is
  evicted from the engine (an ERROR log names the new owner; its watchers here simply hear nothing more).
  A database outage does not stop the hot path: the owned traders are served from memory as before, and if
  another sidecar takes one over meanwhile, its writes win by epoch and this sidecar evicts it when it hears.
- At start (`start_claims`, before every load attempt): every lease naming this sidecar is taken back at once
  (epoch + 1), and so is every trader that called while the stored state was not loaded (the journal), when free;
  the load then installs only the owned traders (the others stay in the store), and the journal is replayed for
  those only.
- `release` (clean shutdown, after the final flush): the leases end now, so another sidecar takes over at once.

Read-only (foreign_trader_policy=read_only): the sidecar answers from the trader's last stored row (what its owner
wrote, at most a writer batch old): CanTrade runs every check on it but reserves nothing, counts nothing and
writes nothing, so only an order that adds no exposure (or the question without an order) can be allowed; one that
adds exposure is denied with TRADER_OWNED_ELSEWHERE (the owner must see it). GetRiskState shows the stored state.
Reports (ReportEquity, ReportTrade, ReportPositions, ReportOrder), RebindTrader and WatchRiskState (a live
stream only the owner can feed) are refused with FAILED_PRECONDITION under both policies.

Wiring (sidecar.py): `Takeover(engine, run, sidecar_name, trader_lease_seconds, policy=..., forget=...)`; the store's
writer fences with `epoch_of`; Persistence takes it as `owners`; RiskService, BindingAdmin and RiskStatesAdmin
as `owners`. `read_changes` / `replay` default to a plain reader and a no-op: set them to
cluster.changes.trader_changes and ControlPlane.replay_trader. Admin trader-scope writes elsewhere ask
`await acquire(trader_id, account_id, write=True)` first: it claims a free trader, and raises TraderOwnedElsewhere
(its `.lease.owner`, `.lease.expires_at`) when another live sidecar owns it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from sqlalchemy import Connection, text

from ..api.errors import FailedPrecondition, Unavailable
from ..engine.engine import RiskEngine
from ..engine.snapshot import from_record
from ..engine.state import SEVERITY, TraderState
from ..engine.types import CheckResult, CheckStatus, Decision, DecisionCode, OrderIntent, TradingState
from ..store.errors import StoreError, StoreUnavailable
from ..store.records import StateRecord
from . import leases
from .leases import Lease
from .tasks import cancel_all

log = logging.getLogger("tradeguard.cluster")

T = TypeVar("T")
# epochs of traders this process let go (idle eviction) kept to recognise its own lease when a release failed
RELEASED_KEPT = 100_000
Run = Callable[[Callable[[Connection], T]], Awaitable[T]]  # runs a function in a transaction (store's db thread)
ChangesReader = Callable[[Connection, str], Sequence[Any]]  # (conn, trader_id) -> its pause/resume changes


class Replay(Protocol):
    """Applies a trader's pause/resume changes (control_changes rows, in version order; possibly none) to its state
    just installed by a claim (ControlPlane.replay_trader; also where the account and every-account pauses are
    synced into it: a claimed trader is installed with engine.restore, not created by the engine). Idempotent."""

    def __call__(self, st: TraderState, changes: Sequence[Any]) -> None: ...


def no_replay(_st: TraderState, _changes: Sequence[Any]) -> None:
    return None


def read_trader_changes(conn: Connection, trader_id: str) -> list[dict[str, Any]]:
    """The trader's pause/resume rows of control_changes, by version (the default reader: plain dicts; the lead
    wires cluster.changes.trader_changes, whose records ControlPlane.replay_trader takes)."""
    rows = conn.execute(text("SELECT * FROM control_changes WHERE trader_id = :t AND kind IN ('pause', 'resume') "
                             "ORDER BY version"), {"t": trader_id}).mappings()
    return [dict(r) for r in rows]


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class TraderOwnedElsewhere(FailedPrecondition):
    """FAILED_PRECONDITION naming the owner, with google.rpc.ErrorInfo reason TRADER_OWNED_ELSEWHERE."""

    def __init__(self, lease: Lease, trader_id: str, twin: bool = False) -> None:
        self.lease = lease
        where = (f"another live process running with this sidecar's id ({lease.owner}): two processes share one "
                 f"--sidecar-id, give each its own" if twin else f"sidecar {lease.owner}")
        super().__init__(f"trader_id {trader_id} is owned by {where} until {iso(lease.expires_at)} "
                         f"(TRADER_OWNED_ELSEWHERE): send its calls there")

    def to_status(self) -> status_pb2.Status:
        info = error_details_pb2.ErrorInfo(
            reason=DecisionCode.TRADER_OWNED_ELSEWHERE.name, domain="tradeguard",
            metadata={"trader_id": self.lease.trader_id, "owner_sidecar": self.lease.owner,
                      "lease_expires_at": iso(self.lease.expires_at), "epoch": str(self.lease.epoch)})
        detail = any_pb2.Any()
        detail.Pack(info)
        return status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, message=self.message, details=[detail])


@dataclass(frozen=True, slots=True)
class Foreign:
    """A trader another live sidecar owns, as stored (read-only view)."""

    lease: Lease
    state: StateRecord | None
    seen_at: float  # monotonic time of the claim that saw it
    valid_s: float  # how long the refusal holds (until the lease it saw would lapse)
    twin: bool = False  # the lease names this sidecar_id: another live process runs with it


@dataclass(frozen=True, slots=True)
class _Claimed:
    lease: Lease
    state: StateRecord | None
    trade_ids: list[str]
    changes: Sequence[Any]


class Takeover:
    """A sidecar's ownership of its traders (see the module docstring). `start()` the renewal, `close()` it."""

    def __init__(
        self,
        engine: RiskEngine,
        run: Run[Any],
        owner: str,
        lease_s: float,
        *,
        policy: str = "reject",
        read_changes: ChangesReader = read_trader_changes,
        replay: Replay | Callable[[TraderState, Sequence[Any]], None] = no_replay,
        forget: Callable[[str], None] = lambda _trader_id: None,
    ) -> None:
        self.engine = engine
        self.run = run
        self.owner = owner
        self.lease_s = lease_s
        self.policy = policy
        self.read_changes = read_changes
        self.replay = replay
        self.forget = forget  # drops a trader's queued snapshot (store queue) when it is evicted
        # told of each trader a claim installed, with the lease epoch and, when it replaced an ended lease, the
        # seconds since that lease ended (database clock: no sidecar owned the trader meanwhile; residency.claimed)
        self.installed: Callable[[TraderState, int, float | None], None] = lambda _st, _epoch, _unowned: None
        # told of each bot call (`write`) that made a trader local here: the dead-man's switch hears it (a read that
        # claims a trader, an operator's or a dashboard's, is no heartbeat of its bot)
        self.called: Callable[[str], None] = lambda _trader_id: None
        self.owned: dict[str, int] = {}  # trader_id -> lease epoch: what this sidecar owns (and writes with)
        self.epoch_of = self.owned.get  # the writer's fence (store.writer)
        self.evicted = 0
        self.claims = 0
        self._claims: dict[str, asyncio.Future[Foreign | None]] = {}
        # trader_id -> the lease epoch this process held when it let the trader go (idle eviction, release_some):
        # a lease whose release failed still names this sidecar at that epoch, and only then may a claim take a live
        # lease naming this sidecar_id (any other is a twin process's); the oldest forgotten past RELEASED_KEPT
        self._released: OrderedDict[str, int] = OrderedDict()
        # trader_id -> (epoch, txid) of a claim whose COMMIT may have gone through unheard (in doubt): its lease
        # names this sidecar at that epoch, written by that transaction (leases.written_by), or the claim did not commit
        self._in_doubt: dict[str, tuple[int, int]] = {}
        self._foreign: dict[str, Foreign] = {}
        # trader_id -> monotonic time of the latest call for it this sidecar could not serve (refused as owned
        # elsewhere, or no database to claim it): its bot was alive then, so a claim after it does not count the
        # time before it as the bot's silence (`_install`'s `unowned`); the oldest forgotten past RELEASED_KEPT
        self._asked: OrderedDict[str, float] = OrderedDict()
        self._start_changes: dict[str, Sequence[Any]] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._renew_failing = False
        self.last_renewed = time.monotonic()  # the start of the last successful renewal (start: none due yet)

    # ---- the hot path ---------------------------------------------------------------------------

    def owns(self, trader_id: str) -> bool:
        return trader_id in self.owned

    async def acquire(self, trader_id: str, account_id: str, *, write: bool) -> Foreign | None:
        """Make `trader_id` local (claim it) or say why not: None once it is local (or while the stored state is
        not loaded: the start claims decide then); a Foreign view for a read-only answer (`write` False, policy
        read_only); raises TraderOwnedElsewhere or Unavailable."""
        if trader_id in self.owned or self.engine.journal is not None:
            return None
        try:
            foreign = await self._acquire(trader_id, account_id, write=write)
        except (TraderOwnedElsewhere, Unavailable):
            self._note_asked(trader_id)
            raise
        if foreign is not None:
            self._note_asked(trader_id)
        elif write:  # a bot's call that claimed the trader (or waited on its claim): heard once it is local
            self.called(trader_id)
        return foreign

    def _note_asked(self, trader_id: str) -> None:
        self._asked[trader_id] = time.monotonic()
        self._asked.move_to_end(trader_id)
        while len(self._asked) > RELEASED_KEPT:
            self._asked.popitem(last=False)

    async def _acquire(self, trader_id: str, account_id: str, *, write: bool) -> Foreign | None:
        foreign = self._foreign.get(trader_id)
        if foreign is not None and time.monotonic() - foreign.seen_at >= foreign.valid_s:
            del self._foreign[trader_id]
            foreign = None
        if foreign is None:
            fut = self._claims.get(trader_id)
            if fut is None:
                fut = asyncio.ensure_future(self._claim(trader_id, account_id))
                self._claims[trader_id] = fut
                fut.add_done_callback(lambda f: self._claims.pop(trader_id, None) if self._claims.get(
                    trader_id) is f else None)
            foreign = await asyncio.shield(fut)
            if foreign is None:
                return None
        if write or self.policy != "read_only":
            raise TraderOwnedElsewhere(foreign.lease, trader_id, twin=foreign.lease.owner == self.owner)
        return foreign

    async def _claim(self, trader_id: str, account_id: str) -> Foreign | None:
        known = self._released.get(trader_id, -1)
        doubt = self._in_doubt.pop(trader_id, None)
        attempt: list[tuple[int, int]] = []

        def claim(conn: Connection) -> Foreign | _Claimed:
            k = known
            if doubt is not None and leases.written_by(conn, trader_id, self.owner, *doubt):
                k = doubt[0]  # this process's own claim committed after all (its answer was lost)
            lease, mine = leases.claim(conn, trader_id, account_id, self.owner, self.lease_s, k)
            state = leases.stored_state(conn, trader_id)
            if not mine:
                return Foreign(lease, state, time.monotonic(), max(0.0, min(lease.expires_at - lease.now,
                                                                            self.lease_s)),
                               twin=lease.owner == self.owner)
            attempt.append((lease.epoch, leases.txid(conn)))  # before the COMMIT: known if its answer is lost
            ids = leases.trade_ids(conn, trader_id) if state is not None else []
            return _Claimed(lease, state, ids, self.read_changes(conn, trader_id))

        try:
            try:
                got = await self.run(claim)
            except BaseException:
                if attempt:
                    self._in_doubt[trader_id] = attempt[-1]
                elif doubt is not None:
                    self._in_doubt[trader_id] = doubt
                raise
        except StoreUnavailable as exc:
            raise Unavailable(f"cannot claim trader_id {trader_id} (the database decides which sidecar owns it): "
                              f"{exc}; retry") from None
        except StoreError as exc:
            raise Unavailable(f"cannot claim trader_id {trader_id}: {exc}; retry") from None
        if isinstance(got, Foreign):
            self._foreign[trader_id] = got
            if got.lease.owner == self.owner:
                log.critical("trader %s is held by ANOTHER LIVE PROCESS with this sidecar's id %s (epoch %d, "
                             "until %s): two processes run with one --sidecar-id; this one does not serve the "
                             "trader (give each process its own sidecar_id)", trader_id, self.owner, got.lease.epoch,
                             iso(got.lease.expires_at))
                return got
            log.info("trader %s is owned by sidecar %s until %s: not served here (foreign_trader_policy=%s)",
                     trader_id, got.lease.owner, iso(got.lease.expires_at), self.policy)
            return got
        self._install(trader_id, account_id, got)
        return None

    def _install(self, trader_id: str, account_id: str, got: _Claimed) -> None:
        """The claimed trader into the engine (no await: nothing interleaves). A claim that lost its lease to a
        renewal's eviction meanwhile cannot happen: the claim's epoch is the newest."""
        self.claims += 1
        self.owned[trader_id] = got.lease.epoch
        self._released.pop(trader_id, None)
        self._in_doubt.pop(trader_id, None)
        self._foreign.pop(trader_id, None)
        engine = self.engine
        if got.state is not None:
            st = from_record(got.state, got.trade_ids)
            engine.restore(st)
        elif got.changes:  # a pause set for a trader never stored: it holds from its first call
            st = TraderState(trader_id, account_id)
            engine.restore(st)
        else:
            engine.traders.pop(trader_id, None)
            st = None
        if st is not None:  # (called with no changes too: the plane also syncs the scope pauses into it)
            try:
                self.replay(st, got.changes)
            except Exception:
                log.exception("trader %s: replaying its %d pause/resume changes failed", trader_id, len(got.changes))
            lease = got.lease
            unowned = None if lease.previous_expires_at is None else max(0.0, lease.now - lease.previous_expires_at)
            asked = self._asked.pop(trader_id, None)
            if unowned is not None and asked is not None:  # refused here meanwhile: the bot was not silent
                unowned = min(unowned, max(0.0, time.monotonic() - asked))
            try:
                self.installed(st, lease.epoch, unowned)
            except Exception:
                log.exception("trader %s: a listener of its claim failed", trader_id)
        log.info("trader %s claimed by sidecar %s (epoch %d, until %s)%s", trader_id, self.owner, got.lease.epoch,
                 iso(got.lease.expires_at), "" if got.state is None else
                 f": stored state installed (version {got.state.version})")

    # ---- start ----------------------------------------------------------------------------------

    async def start_claims(self, journaled: Collection[str]) -> None:
        """Before each load attempt: take back every lease naming this sidecar (epoch + 1), and claim the traders
        that called while the stored state was not loaded (`journaled`) when free. Raises StoreUnavailable."""

        def claim_all(conn: Connection) -> tuple[list[Lease], list[Lease], dict[str, Sequence[Any]]]:
            mine = leases.reclaim_mine(conn, self.owner, self.lease_s)
            taken = {lease.trader_id for lease in mine}
            others: list[Lease] = []
            for trader_id in sorted(set(journaled) - taken):
                lease, got = leases.claim(conn, trader_id, "", self.owner, self.lease_s)
                if got:
                    mine.append(lease)
                else:
                    others.append(lease)
            changes = {lease.trader_id: self.read_changes(conn, lease.trader_id) for lease in mine}
            return mine, others, {k: v for k, v in changes.items() if v}

        mine, others, changes = await self.run(claim_all)
        self.owned.clear()
        self.owned.update({lease.trader_id: lease.epoch for lease in mine})
        self._start_changes = changes
        for lease in others:
            log.warning("trader %s called while the stored state was not loaded, but sidecar %s owns it (until %s): "
                        "those calls are not replayed here", lease.trader_id, lease.owner, iso(lease.expires_at))
        log.info("sidecar %s owns %d traders at start (leases taken back, epoch + 1)", self.owner, len(mine))

    def after_install(self) -> None:
        """After the load installed the owned traders (and before the journal replays on them): their pause/resume
        changes made while this sidecar was away, replayed."""
        changes, self._start_changes = self._start_changes, {}
        for trader_id in list(self.owned):
            st = self.engine.traders.get(trader_id)
            if st is None:
                continue
            rows = changes.get(trader_id, ())
            try:
                self.replay(st, rows)
            except Exception:
                log.exception("trader %s: replaying its %d pause/resume changes failed", trader_id, len(rows))

    # ---- renewal, eviction, release ---------------------------------------------------------------

    def start(self) -> None:
        if self._renewer is None:
            self._renewer = asyncio.get_running_loop().create_task(self._renew_loop(), name="tradeguard-leases")

    async def _renew_loop(self) -> None:
        period = self.lease_s / 3.0
        while True:
            await asyncio.sleep(period)
            with contextlib.suppress(Exception):
                await self.renew()

    async def renew(self) -> None:
        """Renew every local trader's lease in one statement; evict those no longer ours.

        `last_renewed` is the time the renewal *started*, not the time its answer came: the database sets
        expires_at from its transaction's start (now() + trader_lease_seconds), which is after this start, and
        another sidecar sees the previous expiry until the commit lands. So this sidecar's own judgement of a
        lapse (the stale action for new exposure) never comes later than any other sidecar's, however long the
        answer took (a renewal answered 3 s late used to leave 3 s in which both served the trader)."""
        started = time.monotonic()
        owned = dict(self.owned)
        if not owned:
            self.last_renewed = started
            return

        def renew(conn: Connection) -> tuple[set[str], dict[str, Lease]]:
            kept = leases.renew(conn, owned, self.owner, self.lease_s)
            lost = [t for t in owned if t not in kept]
            return kept, leases.owners_of(conn, lost) if lost else {}

        try:
            kept, holders = await self.run(renew)
        except Exception as exc:
            if not self._renew_failing:
                log.warning("cannot renew the leases of %d traders (%s): serving them from memory; another sidecar "
                            "may take one over once its lease lapses (trader_lease_seconds=%g)", len(owned), exc,
                            self.lease_s)
            self._renew_failing = True
            raise
        if self._renew_failing:
            log.info("leases of %d traders renewed again", len(kept))
        self._renew_failing = False
        self.last_renewed = started
        for trader_id, epoch in owned.items():
            if trader_id not in kept and self.owned.get(trader_id) == epoch:
                self.evict(trader_id, holders.get(trader_id))

    def evict(self, trader_id: str, holder: Lease | None) -> None:
        """Forget a trader this sidecar no longer owns (its new owner's state is the truth)."""
        self.owned.pop(trader_id, None)
        self.engine.traders.pop(trader_id, None)
        self.forget(trader_id)
        self.evicted += 1
        if holder is not None and holder.owner == self.owner:
            log.critical("trader %s was taken by ANOTHER LIVE PROCESS with this sidecar's id %s (epoch %d): two "
                         "processes run with one --sidecar-id (the other started after this one and took back its "
                         "leases, or claimed it after its lease lapsed here); evicted from memory here", trader_id,
                         self.owner, holder.epoch)
        elif holder is None:
            log.error("trader %s is no longer owned by sidecar %s (its lease is gone): evicted from memory; its next "
                      "call claims it again", trader_id, self.owner)
        else:
            log.error("trader %s was taken over by sidecar %s (epoch %d, until %s): evicted from memory here; "
                      "its calls belong there now", trader_id, holder.owner, holder.epoch, iso(holder.expires_at))

    async def release(self) -> None:
        """End every lease of this sidecar now (clean shutdown, after the final flush)."""
        owned = dict(self.owned)
        if not owned:
            return
        try:
            await self.run(lambda conn: leases.release(conn, owned, self.owner))
        except Exception as exc:
            log.warning("shutdown: leases of %d traders not released (%s): they lapse within %g s", len(owned), exc,
                        self.lease_s)
            return
        for trader_id, epoch in owned.items():  # nothing this process still holds is written any more
            if self.owned.get(trader_id) == epoch:
                del self.owned[trader_id]
        log.info("shutdown: leases of %d traders released", len(owned))

    async def release_some(self, owned: dict[str, int]) -> None:
        """End the leases of `owned` ({trader_id: epoch}) now: traders evicted from memory while idle (residency.py;
        already dropped from `owned`, their state written). A claim since then has a newer epoch: untouched."""
        if owned:
            for trader_id, epoch in owned.items():  # a release that fails leaves the lease naming this epoch
                self._released[trader_id] = epoch
                self._released.move_to_end(trader_id)
            while len(self._released) > RELEASED_KEPT:
                self._released.popitem(last=False)
            await self.run(lambda conn: leases.release(conn, owned, self.owner))

    async def close(self) -> None:
        if self._renewer is not None:
            await cancel_all([self._renewer], "lease renewal")
            self._renewer = None


# ---- read-only answers ------------------------------------------------------------------------------

class ReadOnlyGate:
    """The decision gate of a read-only answer: nothing is reserved, so only what adds no exposure may pass."""

    def __init__(self, lease: Lease, enforcing: Callable[[], bool], twin: bool = False) -> None:
        self.enforcing = enforcing
        owner = (f"another live process running with this sidecar's id ({lease.owner}): two processes share one "
                 f"--sidecar-id" if twin else f"sidecar {lease.owner}")
        self.note = (f"TRADER_OWNED_ELSEWHERE: read-only answer from the state stored by {owner} "
                     f"(owner until {iso(lease.expires_at)}); nothing is reserved here, so an order that adds "
                     f"exposure must go to " + ("that process" if twin else lease.owner))

    def __call__(self, d: Decision, st: TraderState, order: OrderIntent | None, reducing: bool) -> Decision:
        code = DecisionCode.TRADER_OWNED_ELSEWHERE
        passes = not d.allowed or d.would_deny or order is None or reducing
        check = CheckResult("owner", CheckStatus.PASS if passes else CheckStatus.FAIL, code, self.note)
        if passes:
            return Decision(d.allowed, d.code, f"{d.reason}; {self.note}", d.trading_state, d.paused_until,
                            (*d.checks, check), d.actions, d.would_deny)
        state = d.trading_state if SEVERITY[d.trading_state] >= SEVERITY[TradingState.REDUCING] else \
            TradingState.REDUCING
        if self.enforcing():
            return Decision(False, code, self.note, state, d.paused_until, (*d.checks, check), d.actions)
        return Decision(True, code, f"SHADOW (not enforced), would deny: {self.note}", state, d.paused_until,
                        (*d.checks, check), d.actions, would_deny=True)


def read_only_engine(engine: RiskEngine, foreign: Foreign, account_id: str) -> tuple[RiskEngine, TraderState]:
    """A throwaway engine holding only the stored state of `foreign` (no listeners, no breakers: nothing it does
    is written, reserved or announced), sharing the live engine's configurations and prices."""
    shadow = RiskEngine(engine.clock, defaults=engine.defaults, flags=engine.flags,
                        reset_offset_s=engine.reset_offset_s)
    shadow.account_limits = engine.account_limits
    shadow.prices = engine.prices
    st = TraderState(foreign.lease.trader_id, account_id) if foreign.state is None else from_record(foreign.state)
    shadow.traders[st.trader_id] = st
    shadow.gate = ReadOnlyGate(foreign.lease, lambda: engine.flags.enable_risk_enforcement, foreign.twin)
    return shadow, st


Handler = Callable[[Any, Any], Awaitable[Any]]
