"""AdminService.RestoreRiskState: put a trader back to the state its history recorded at a point in time.

The newest risk_state_history row at or before `at` is the restore point (its maps filled from the rows that hold
them, as ListRiskStateHistory shows it). Dry run unless `dry_run` is false: the answer shows the state that would be
restored and nothing changes. A real restore goes through the engine (RiskEngine.restore_to), so every listener
hears it like any change: the store queue (risk_state and a history row whose reason is
`restore: <reason> (to <recorded_at>) by <caller>`), WatchRiskState, metrics. Audited like PauseTrading: a WARNING
log line naming the caller, the history row, and in cluster mode a control_changes row (kind "restore", committed
before the state changes: a later takeover replays only the trader's kill switches made after it). What is restored
and what stays as it is (the pending orders among others): engine.restore.

Refused:
- INVALID_ARGUMENT naming the field: trader_id, account_id or at missing or malformed; reason missing on a real
  restore; account_id not the trader's (its live binding, or the account the history row was recorded under);
- NOT_FOUND: no history row of the trader at or before `at` (none kept that old: see retention);
- FAILED_PRECONDITION: no database (database_url=memory keeps no history); the row's maps are gone (pruned); in
  cluster mode another live sidecar owns the trader (TRADER_OWNED_ELSEWHERE: restore through that sidecar);
- UNAVAILABLE: the database cannot be read, or the stored state is not loaded yet.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import Message

from tradeguard.v1 import admin_service_pb2 as ad

from ..engine.engine import AccountMismatchError, RiskEngine
from ..engine.restore import restore_point
from ..engine.snapshot import from_record, to_record
from ..engine.state import TraderState, expire_pauses, roll_periods
from ..store.records import HistoryRecord
from . import convert
from .errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable, store_errors
from .risk_state import state_msg
from .validation import Violations

if TYPE_CHECKING:
    from ..cluster.plane import ControlPlane
    from ..cluster.takeover import Takeover

log = logging.getLogger("tradeguard.admin")

Ctx = grpc.aio.ServicerContext[Any, Any]
Handlers = dict[str, tuple[type[Message], Callable[[Any, Ctx], Awaitable[Message]]]]
HistoryAt = Callable[[str, float], Awaitable[tuple[HistoryRecord, list[str]] | None]]


def iso(t: float) -> str:
    """An epoch time as the audit trail names restore points: ISO-8601 UTC, microseconds when there are any."""
    text = datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return text.replace(".000000Z", "Z")


class RestoreAdmin:
    """`history_at` None: no database (nothing to restore from). `owners` and `control`: cluster mode."""

    # Bounded traders (residency.py): (trader_id, account_id) -> an evicted trader loaded back before it is shown or
    # restored (without it, a restore of an evicted trader answered UNAVAILABLE "loaded again on its next call" and
    # a dry run showed a fresh trader as the previous state). None: nothing is evicted.
    ensure: Callable[[str, str], Awaitable[None]] | None = None

    def __init__(self, engine: RiskEngine, history_at: HistoryAt | None,
                 store_now: Callable[[], Awaitable[bool]], owners: Takeover | None = None,
                 control: ControlPlane | None = None) -> None:
        self.engine = engine
        self.history_at = history_at
        self.store_now = store_now
        self.owners = owners
        self.control = control

    def handlers(self) -> Handlers:
        return {"RestoreRiskState": (ad.RestoreRiskStateRequest, self.restore_risk_state)}

    async def restore_risk_state(self, req: ad.RestoreRiskStateRequest, _ctx: Ctx) -> ad.RestoreRiskStateResponse:
        dry_run = req.dry_run if req.HasField("dry_run") else True
        v = Violations()
        v.identifier("trader_id", req.trader_id)
        v.identifier("account_id", req.account_id)
        at = v.timestamp("at", req.at, 0.0, allow_future=True) if req.HasField("at") else None
        if at is None and not any(f == "at" for f, _ in v.items):
            v.add("at", "required: the point in time to restore (the newest history row at or before it is used)")
        if not dry_run and not req.reason.strip():
            v.add("reason", "required for a restore (dry_run false): why, for the audit trail")
        v.text("reason", req.reason)
        v.raise_if_any()
        assert at is not None
        if self.history_at is None:
            raise FailedPrecondition("no history is kept: no database is configured (database_url=memory)")
        engine = self.engine
        if not dry_run and engine.journal is not None:
            raise Unavailable("the stored state is not loaded yet (database unavailable or slow at start): try again")
        trader_id, account_id = req.trader_id, req.account_id
        if self.ensure is not None and trader_id not in engine.traders:
            await self.ensure(trader_id, account_id)
        live = engine.traders.get(trader_id)
        if live is not None and live.account_id != account_id:
            raise AccountMismatchError(f"trader_id {trader_id!r} is bound to account_id {live.account_id!r}")
        owners = self.owners
        if not dry_run and owners is not None and trader_id not in owners.owned:
            # Cluster mode: only the owner may replace the trader's state. Claims a trader nobody holds; another
            # live owner: FAILED_PRECONDITION naming it (TRADER_OWNED_ELSEWHERE).
            await owners.acquire(trader_id, account_id, write=True)
        with store_errors("restore"):
            found = await self.history_at(trader_id, at)
        if found is None:
            raise NotFound(f"trader {trader_id!r} has no history row at or before {iso(at)} (none recorded, or "
                           "pruned by history_retention_days)")
        row, missing = found
        if row.account_id != account_id:
            raise InvalidArgument([("account_id", f"the history row at {iso(row.recorded_at)} was recorded under "
                                                  f"account_id {row.account_id!r}")])
        if missing:
            raise FailedPrecondition(
                f"the history row at {iso(row.recorded_at)} leaves {', '.join(missing)} unchanged since a row that is "
                "no longer stored (pruned): its state cannot be restored whole; choose a later time")
        previous = await self._previous(trader_id, account_id)
        reply = ad.RestoreRiskStateResponse(recorded_at=convert.ts(row.recorded_at),
                                            recorded_reason=row.reason, dry_run=dry_run,
                                            previous_state=state_msg(engine, previous))
        if dry_run:
            reply.state.CopyFrom(state_msg(engine, self._would_be(previous, row)))
            return reply
        from ..cluster.plane import current_actor

        actor = current_actor()
        if self.control is not None and self.control.cluster:
            # The audit row, committed first (UNAVAILABLE otherwise: nothing restored): a later takeover replays
            # only the kill switches made after it (cluster.plane.replay_trader).
            change = self.control.record("restore", account_id, {"at": at, "recorded_at": row.recorded_at,
                                                                 "reason": req.reason}, trader_id)
            with store_errors("restore"):
                await self.control.store.append_change(change)
        reason = f"restore: {req.reason} (to {iso(row.recorded_at)}) by {actor}"
        st = engine.restore_to(row.state, reason)
        log.warning("RESTORE trader=%s account=%s to=%s (history row %s: %s) by=%s reason=%s", trader_id, account_id,
                    iso(row.recorded_at), row.id, row.reason, actor, req.reason)
        if not await self.store_now():
            log.warning("restore of trader %s is in force but not stored yet (store unavailable or slow)", trader_id)
        reply.state.CopyFrom(state_msg(engine, st))
        return reply

    async def _previous(self, trader_id: str, account_id: str) -> TraderState:
        """The trader's state before the restore: live here, else (cluster mode, another sidecar holds it: a dry
        run) its stored row, else a trader with nothing reported."""
        live = self.engine.traders.get(trader_id)
        if live is not None:
            return live
        if self.owners is not None:
            from ..cluster import leases

            with store_errors("restore"):
                stored = await self.owners.run(lambda conn: leases.stored_state(conn, trader_id))
            if stored is not None:
                if stored.account_id != account_id:
                    raise AccountMismatchError(f"trader_id {trader_id!r} is bound to account_id "
                                               f"{stored.account_id!r}")
                return from_record(stored)
        return TraderState(trader_id, account_id)

    def _would_be(self, previous: TraderState, row: HistoryRecord) -> TraderState:
        """What a restore would make of `previous` (a copy; nothing changes), as RiskEngine.restore_to does."""
        copy = from_record(to_record(previous))
        restore_point(copy, row.state)
        now = self.engine.clock.now()
        expire_pauses(copy, now)
        if copy.equity_reported:
            roll_periods(copy, now, self.engine.reset_offset_s)
        return copy
