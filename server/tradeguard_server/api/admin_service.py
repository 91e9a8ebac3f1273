"""tradeguard.v1.AdminService: operator RPCs (kill switch, flags, configurations, breakers, history)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import types_pb2 as t

from ..engine.engine import RiskEngine
from ..engine.types import Flags, TradingState
from .dispatch import Guard, service, unary
from .errors import Unavailable, Unimplemented
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

    def __init__(
        self,
        engine: RiskEngine,
        on_flags: FlagsListener = _no_flags_listener,
        *,
        store_now: StoreNow = _nothing_to_store,
        loaded: Callable[[], bool] = lambda: True,
    ) -> None:
        self.engine = engine
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

    async def pause_trading(self, req: ad.PauseTradingRequest, _ctx: Ctx) -> ad.PauseTradingResponse:
        v = Violations()
        v.identifier("trader_id", req.trader_id)
        v.identifier("account_id", req.account_id)
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
        st = self.engine.pause(req.trader_id, req.account_id, TradingState(req.trading_state), duration,
                               req.reason)
        reply = ad.PauseTradingResponse(state=state_msg(self.engine, st))
        await self._store_now(req.trader_id, "pause")
        return reply

    async def resume_trading(self, req: ad.ResumeTradingRequest, _ctx: Ctx) -> ad.ResumeTradingResponse:
        v = Violations()
        v.identifier("trader_id", req.trader_id)
        v.identifier("account_id", req.account_id)
        v.raise_if_any()
        st = self.engine.resume(req.trader_id, req.account_id)
        reply = ad.ResumeTradingResponse(state=state_msg(self.engine, st))
        await self._store_now(req.trader_id, "resume")
        return reply

    async def _store_now(self, trader_id: str, what: str) -> None:
        if not await self.store_now():
            log.warning("kill switch %s of trader %s is in force but not stored yet (store unavailable or slow); "
                        "it is written when the database returns", what, trader_id)
