"""AdminService.ListBindings and RebindTrader: which account each trader id is bound to, and moving it.

A trader id is bound to the account it first reported with. A caller that reached a trader id first (a squat,
or a bot misconfigured with another's id) would otherwise lock the real bot out for good: every call of it
answers INVALID_ARGUMENT on account_id, across restarts. The operator sees the binding here and moves it; the
move is audited (a WARNING log line and a history entry whose reason names the operator's reason).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import Message

from tradeguard.v1 import admin_service_pb2 as ad

from ..engine.engine import RiskEngine
from . import convert
from .risk_state import state_msg
from .validation import Violations

if TYPE_CHECKING:
    from ..cluster.takeover import Takeover

log = logging.getLogger("tradeguard.admin")

Ctx = grpc.aio.ServicerContext[Any, Any]
Handlers = dict[str, tuple[type[Message], Callable[[Any, Ctx], Awaitable[Message]]]]


class BindingAdmin:
    # Bounded traders (residency.py): an evicted trader loaded back before it is rebound (its stored version goes
    # on). None: nothing is evicted.
    ensure: Callable[[str, str], Awaitable[None]] | None = None

    def __init__(self, engine: RiskEngine, store_now: Callable[[], Awaitable[bool]],
                 owners: Takeover | None = None) -> None:
        self.engine = engine
        self.store_now = store_now
        self.owners = owners  # cluster mode: the bindings listed are this sidecar's traders; a rebind claims first

    def handlers(self) -> Handlers:
        return {
            "ListBindings": (ad.ListBindingsRequest, self.list_bindings),
            "RebindTrader": (ad.RebindTraderRequest, self.rebind_trader),
        }

    async def list_bindings(self, req: ad.ListBindingsRequest, _ctx: Ctx) -> ad.ListBindingsResponse:
        v = Violations()
        v.identifier("account_id", req.account_id, required=False)
        v.raise_if_any()
        now = self.engine.clock.now()
        reply = ad.ListBindingsResponse()
        for trader_id in sorted(self.engine.traders):
            st = self.engine.traders[trader_id]
            if req.account_id and st.account_id != req.account_id:
                continue
            reply.bindings.add(trader_id=trader_id, account_id=st.account_id,
                               trading_state=convert.STATE[st.trading_state(now)])
        return reply

    async def rebind_trader(self, req: ad.RebindTraderRequest, _ctx: Ctx) -> ad.RebindTraderResponse:
        v = Violations()
        v.identifier("trader_id", req.trader_id)
        v.identifier("account_id", req.account_id)
        v.text("reason", req.reason)
        v.raise_if_any()
        if self.owners is not None and req.trader_id not in self.owners.owned:
            # Cluster mode: only the owner may replace the trader's state (FAILED_PRECONDITION naming it otherwise).
            await self.owners.acquire(req.trader_id, req.account_id, write=True)
        if self.ensure is not None and req.trader_id not in self.engine.traders:
            await self.ensure(req.trader_id, req.account_id)
        reason = f"rebound by operator: {req.reason}" if req.reason else "rebound by operator"
        previous, st = self.engine.rebind(req.trader_id, req.account_id, reason)
        log.warning("REBIND trader=%s account=%s -> %s (state reset): %s", req.trader_id, previous or "-",
                    req.account_id, req.reason or "no reason given")
        if not await self.store_now():
            log.warning("rebinding of trader %s is in force but not stored yet (store unavailable or slow)",
                        req.trader_id)
        return ad.RebindTraderResponse(previous_account_id=previous, state=state_msg(self.engine, st))
