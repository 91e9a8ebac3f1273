"""tradeguard.v1.AdminService: operator RPCs (kill switch, flags, configurations, breakers, history).

Kill switch scopes (PauseTrading / ResumeTrading):
- a trader (trader_id + account_id): when this sidecar holds the trader (it is in this engine: it owns it), takes
  it (`owns`: until leases, a trader no sidecar has stored yet), or in a single-sidecar mode: applied in memory at
  once (during a database outage too), and in cluster mode its control_changes row appended, best effort (the
  other sidecars and a later takeover replay it; a warning when the database is down). When another sidecar holds
  the trader (cluster mode), the row must commit (UNAVAILABLE otherwise): the sidecar that owns it applies it on
  NOTIFY, a sidecar taking it over replays it. The answer then shows the pause on a state made here (the live
  state is the owner's: equity and the rest are not known here).
- an account (account_id, trader_id empty): every trader of the account, those that appear later too, on every
  sidecar (cluster.plane); `all_accounts` (both ids empty): every account. The row commits first (UNAVAILABLE
  otherwise: nothing applied), then in force here at once. Answered with `scope_pause`.
Every answer carries `control_state_version`: the version of the change's row (0 when none was stored: a trader's
pause in a single-sidecar mode answers the version seen).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import types_pb2 as t

from ..cluster.changes import ALL_ACCOUNTS, ControlChange
from ..cluster.plane import ControlPlane, ScopePause
from ..engine.engine import RiskEngine
from ..engine.state import Pause, TraderState
from ..engine.types import DecisionCode, Flags, TradingState
from ..store.errors import StoreError
from . import convert
from .dispatch import Guard, service, unary
from .errors import Unavailable, Unimplemented, store_errors
from .risk_state import state_msg
from .validation import Violations

log = logging.getLogger("tradeguard.admin")

SERVICE = "tradeguard.v1.AdminService"
PAUSE_STATES = frozenset({t.TRADING_STATE_HALTED, t.TRADING_STATE_REDUCING})
MAX_PAUSE_S = 366 * 86_400.0
FLAGS_STORED_KEY = "tradeguard-flags-stored"  # trailing metadata of SetFeatureFlags: "true" or "false"
Ctx = grpc.aio.ServicerContext[Any, Any]
# RPCs that read or change stored configurations and breakers: until the stored state is loaded (database down or
# slow at start) memory does not hold them, and NOT_FOUND or an empty list would be untrue.
NEEDS_STORED_STATE = frozenset({
    "SaveConfig", "GetConfig", "ListConfigs", "DeleteConfig", "CreateBreaker", "GetBreaker", "ListBreakers",
    "UpdateBreaker", "DeleteBreaker", "EnableBreaker", "DisableBreaker", "LogBreakerEvent",
})
NOT_LOADED = ("the stored configurations and breakers are not loaded yet (database unavailable or slow at start; "
              "health service tradeguard.state says when they are): try again")
FlagsListener = Callable[[Flags, Flags], Awaitable[bool]]  # True when the new flags are stored
StoreNow = Callable[[], Awaitable[bool]]


async def _no_flags_listener(_old: Flags, _new: Flags) -> bool:
    return True


async def _nothing_to_store() -> bool:
    return True


class AdminService:
    """Handlers of tradeguard.v1.AdminService. Extra RPC groups are mounted by `extend`."""

    # Bounded traders (residency.py): (trader_id, account_id) -> an evicted trader loaded back before a kill switch
    # changes it (an operator's pause of a new trader is never refused). None: nothing is evicted.
    ensure: Callable[[str, str], Awaitable[None]] | None = None

    def __init__(
        self,
        engine: RiskEngine,
        on_flags: FlagsListener = _no_flags_listener,
        *,
        store_now: StoreNow = _nothing_to_store,
        loaded: Callable[[], bool] = lambda: True,
        control: ControlPlane | None = None,
        append_timeout_s: float = 2.0,
        owns: Callable[[str, str], Awaitable[bool]] | None = None,
    ) -> None:
        self.engine = engine
        # The shared control state (cluster.plane): account and every-account pauses, the change rows of a
        # trader's. None: a trader's pause only (tests of this service alone).
        self.control = control
        self.append_timeout_s = append_timeout_s  # a best-effort row waits at most this long (then in background)
        self._appends: set[asyncio.Task[int]] = set()
        # Cluster mode, a trader not in this engine: whether this sidecar takes it (applies its kill switch here,
        # making it). None: never (another sidecar holds it). See the sidecar's wiring (leases: cluster/).
        self.owns = owns
        self.on_flags = on_flags
        # Kill-switch changes are in force at once, in memory; the RPC answers once this says they are committed
        # (the sidecar flushes the store: a SIGKILL right after PauseTrading must not bring the trader back
        # unpaused). False = not stored yet (database unavailable): answered anyway, with a warning logged.
        self.store_now = store_now
        self.extra: dict[str, tuple[type[Message], Callable[[Any, Ctx], Awaitable[Message]]]] = {}
        # True once the stored state is installed (Persistence.loaded); see NEEDS_STORED_STATE.
        self.loaded = loaded

    def extend(self, handlers: dict[str, tuple[type[Message], Callable[[Any, Ctx], Awaitable[Message]]]]) -> None:
        self.extra.update(handlers)

    def handler(self, guard: Guard | None = None) -> grpc.GenericRpcHandler[Any, Any]:
        return service(SERVICE, self.methods(guard))

    def methods(self, guard: Guard | None = None) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        """The method handlers by method name (for `add_registered_method_handlers`)."""
        methods: dict[str, tuple[type[Message], Callable[[Any, Ctx], Awaitable[Message]]]] = {
            "GetFeatureFlags": (ad.GetFeatureFlagsRequest, self.get_feature_flags),
            "SetFeatureFlags": (ad.SetFeatureFlagsRequest, self.set_feature_flags),
            "PauseTrading": (ad.PauseTradingRequest, self.pause_trading),
            "ResumeTrading": (ad.ResumeTradingRequest, self.resume_trading),
        }
        methods.update(self.extra)
        for method in ad.DESCRIPTOR.services_by_name["AdminService"].methods:
            if method.name not in methods:
                request_cls: type[Message] = getattr(ad, method.input_type.name)
                methods[method.name] = (request_cls, self._unimplemented(method.name))
        for name in NEEDS_STORED_STATE & methods.keys():
            request_cls, fn = methods[name]
            methods[name] = (request_cls, self._after_load(fn))
        return {name: unary(cls, fn, guard) for name, (cls, fn) in methods.items()}

    def _after_load(self, fn: Callable[[Any, Ctx], Awaitable[Message]]) -> Callable[[Any, Ctx], Awaitable[Message]]:
        async def gated(req: Any, ctx: Ctx) -> Message:
            if not self.loaded():
                raise Unavailable(NOT_LOADED)
            return await fn(req, ctx)

        return gated

    @staticmethod
    def _unimplemented(name: str) -> Callable[[Any, Ctx], Awaitable[Message]]:
        async def fn(_req: Any, _ctx: Ctx) -> Message:
            raise Unimplemented(f"AdminService.{name} is not implemented in this version")

        return fn

    # ---- flags ----------------------------------------------------------------------------------

    def flags_msg(self) -> t.FeatureFlags:
        f = self.engine.flags
        return t.FeatureFlags(
            enable_risk_enforcement=f.enable_risk_enforcement, enable_persistence=f.enable_persistence
        )

    async def get_feature_flags(self, _req: ad.GetFeatureFlagsRequest, _ctx: Ctx) -> ad.GetFeatureFlagsResponse:
        return ad.GetFeatureFlagsResponse(flags=self.flags_msg())

    async def set_feature_flags(self, req: ad.SetFeatureFlagsRequest, ctx: Ctx) -> ad.SetFeatureFlagsResponse:
        """Applied at once. When they cannot be stored now (database unavailable), the answer's trailing
        metadata says `tradeguard-flags-stored: false` and they are written when the database returns."""
        old = self.engine.flags
        new = Flags(
            enable_risk_enforcement=req.flags.enable_risk_enforcement
            if req.flags.HasField("enable_risk_enforcement") else old.enable_risk_enforcement,
            enable_persistence=req.flags.enable_persistence
            if req.flags.HasField("enable_persistence") else old.enable_persistence,
        )
        stored = await self.on_flags(old, new)
        self.engine.flags = new
        if new != old:
            log.warning("feature flags changed: %s -> %s%s", old, new, "" if stored else " (not stored yet)")
        ctx.set_trailing_metadata(((FLAGS_STORED_KEY, "true" if stored else "false"),))
        return ad.SetFeatureFlagsResponse(flags=self.flags_msg())

    # ---- kill switch ----------------------------------------------------------------------------

    def _scope(self, v: Violations, trader_id: str, account_id: str, all_accounts: bool) -> str:
        """ "trader", "account" or "all", checking the ids the scope needs (errors name the field)."""
        if all_accounts:
            if trader_id:
                v.add("trader_id", "must be empty with all_accounts (the every-account scope)")
            if account_id:
                v.add("account_id", "must be empty with all_accounts (the every-account scope)")
            return "all"
        v.identifier("account_id", account_id)
        v.identifier("trader_id", trader_id, required=False)
        if trader_id:
            return "trader"
        if self.control is None:
            v.add("trader_id", "required (this server has no account scope)")
        return "account"

    def _cluster(self) -> bool:
        return self.control is not None and self.control.cluster

    async def _local(self, trader_id: str, account_id: str) -> bool:
        """Whether a trader's kill switch is applied here at once: single-sidecar modes, this sidecar holds it, or
        `owns` says this sidecar takes it."""
        if not self._cluster() or trader_id in self.engine.traders:
            return True
        return self.owns is not None and await self.owns(trader_id, account_id)

    async def pause_trading(self, req: ad.PauseTradingRequest, _ctx: Ctx) -> ad.PauseTradingResponse:
        v = Violations()
        scope = self._scope(v, req.trader_id, req.account_id, req.all_accounts)
        v.enum("trading_state", req.trading_state, PAUSE_STATES, "TRADING_STATE")
        if req.trading_state == t.TRADING_STATE_ACTIVE:
            v.items[-1] = ("trading_state", "must be TRADING_STATE_HALTED or TRADING_STATE_REDUCING")
        duration: float | None = None
        if req.HasField("duration"):
            d = req.duration
            seconds = d.seconds + d.nanos / 1e9
            if seconds < 0 or d.nanos < -999_999_999 or d.nanos > 999_999_999:
                v.add("duration", "must not be negative")
            elif seconds > MAX_PAUSE_S:
                v.add("duration", f"at most {MAX_PAUSE_S:.0f}s; omit it to pause until resumed")
            elif seconds > 0:
                duration = seconds
        v.text("reason", req.reason)
        v.raise_if_any()
        state = TradingState(req.trading_state)
        if scope != "trader":
            assert self.control is not None
            until = None if duration is None else self.engine.clock.now() + duration
            with store_errors("kill switch"):
                sp = await self.control.pause_account(req.account_id or ALL_ACCOUNTS, state, until, req.reason)
            return ad.PauseTradingResponse(scope_pause=scope_msg(sp), control_state_version=sp.version)
        if not await self._local(req.trader_id, req.account_id):
            assert self.control is not None
            now = self.engine.clock.now()
            until = None if duration is None else now + duration
            change = self.control.pause_change(req.account_id, req.trader_id, state, until, req.reason)
            version = await self._commit(change)
            st = self._elsewhere(req.trader_id, req.account_id)
            text = f"KILL_SWITCH: {state.name} by {change.actor}" + (f": {req.reason}" if req.reason else "")
            st.pauses.append(Pause(state, until, DecisionCode.KILL_SWITCH, text, "manual", since=now))
            return ad.PauseTradingResponse(state=state_msg(self.engine, st), control_state_version=version)
        if self.ensure is not None and req.trader_id not in self.engine.traders:
            await self.ensure(req.trader_id, req.account_id)
        st = self.engine.pause(req.trader_id, req.account_id, state, duration, req.reason)
        reply = ad.PauseTradingResponse(state=state_msg(self.engine, st))
        if self._cluster():
            assert self.control is not None
            pause = st.pauses[-1] if st.pauses else None
            until = None if pause is None else pause.until
            reply.control_state_version = await self._best_effort(
                self.control.pause_change(req.account_id, req.trader_id, state, until, req.reason))
        elif self.control is not None:
            reply.control_state_version = self.control.version
        await self._store_now(req.trader_id, "pause")
        return reply

    async def resume_trading(self, req: ad.ResumeTradingRequest, _ctx: Ctx) -> ad.ResumeTradingResponse:
        v = Violations()
        scope = self._scope(v, req.trader_id, req.account_id, req.all_accounts)
        v.raise_if_any()
        if scope != "trader":
            assert self.control is not None
            with store_errors("kill switch"):
                sp = await self.control.resume_account(req.account_id or ALL_ACCOUNTS)
            return ad.ResumeTradingResponse(control_state_version=sp.version)
        if not await self._local(req.trader_id, req.account_id):
            assert self.control is not None
            version = await self._commit(self.control.record("resume", req.account_id, None, req.trader_id))
            st = self._elsewhere(req.trader_id, req.account_id)
            return ad.ResumeTradingResponse(state=state_msg(self.engine, st), control_state_version=version)
        if self.ensure is not None and req.trader_id not in self.engine.traders:
            await self.ensure(req.trader_id, req.account_id)
        st = self.engine.resume(req.trader_id, req.account_id)
        reply = ad.ResumeTradingResponse(state=state_msg(self.engine, st))
        if self._cluster():
            assert self.control is not None
            reply.control_state_version = await self._best_effort(
                self.control.record("resume", req.account_id, None, req.trader_id))
        elif self.control is not None:
            reply.control_state_version = self.control.version
        await self._store_now(req.trader_id, "resume")
        return reply

    def _elsewhere(self, trader_id: str, account_id: str) -> TraderState:
        """A state made here for a trader another sidecar holds: its scope pauses only (the live state is there)."""
        st = TraderState(trader_id, account_id)
        if self.control is not None:
            st.pauses = self.control.pauses_for(account_id)
        return st

    async def _commit(self, change: ControlChange) -> int:
        """The row of a kill switch another sidecar applies: it must commit (UNAVAILABLE otherwise)."""
        assert self.control is not None
        with store_errors("kill switch"):
            version = await self.control.store.append_change(change)
        log.warning("kill switch %s of trader %s (account %s) stored as control change %d by %s: the sidecar that "
                    "holds the trader applies it", change.kind, change.trader_id, change.account_id, version,
                    change.actor)
        return version

    async def _best_effort(self, change: ControlChange) -> int:
        """The row of a kill switch in force here already: its version, or 0 when it is not stored within
        append_timeout_s (it keeps trying in the background, bounded by the store's call timeout)."""
        assert self.control is not None
        task = asyncio.get_running_loop().create_task(self.control.store.append_change(change))
        self._appends.add(task)
        task.add_done_callback(self._appended)
        with contextlib.suppress(TimeoutError, StoreError):
            return await asyncio.wait_for(asyncio.shield(task), self.append_timeout_s)
        log.warning("kill switch %s of trader %s is in force here but its control change is not stored yet "
                    "(database unavailable or slow): other sidecars learn of it once it is", change.kind,
                    change.trader_id)
        return 0

    def _appended(self, task: asyncio.Task[int]) -> None:
        self._appends.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("a kill switch's control change could not be stored: %s", task.exception())

    async def _store_now(self, trader_id: str, what: str) -> None:
        if not await self.store_now():
            log.warning("kill switch %s of trader %s is in force but not stored yet (store unavailable or slow); "
                        "it is written when the database returns", what, trader_id)


def scope_msg(sp: ScopePause) -> ad.ScopePause:
    msg = ad.ScopePause(account_id="" if sp.all_accounts else sp.account_id, all_accounts=sp.all_accounts,
                        trading_state=t.TRADING_STATE_ACTIVE if sp.state is None else convert.STATE[sp.state],
                        reason=sp.reason, actor=sp.actor, origin_sidecar=sp.origin)
    if sp.until is not None:
        msg.paused_until.CopyFrom(convert.ts(sp.until))
    if sp.since:
        msg.since.CopyFrom(convert.ts(sp.since))
    return msg
