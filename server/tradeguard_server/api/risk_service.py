"""tradeguard.v1.RiskService: the bot's hot path. Validates, asks the engine, answers from memory."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import types_pb2 as t

from ..engine import orders
from ..engine.engine import OrderIdReusedError, Outcome, RiskEngine, StateNotLoadedError
from ..engine.state import SEEN_TRADE_IDS_KEPT, TraderState
from ..engine.types import ClosedTrade, PriceMark, Side
from . import convert
from .admission import connection_key
from .dispatch import Guard, server_stream, service, unary
from .errors import InvalidArgument, NotFound, Unavailable
from .risk_state import show_unloaded, state_msg
from .validation import AMOUNT_MAX, ID_MAX, ID_PATTERN, Violations
from .watch import WatchHub

if TYPE_CHECKING:
    from ..cluster.takeover import Foreign, Takeover
    from ..residency import Residency

SERVICE = "tradeguard.v1.RiskService"
SIDES = frozenset({t.SIDE_BUY, t.SIDE_SELL})
MAX_POSITIONS = 1000
# What a bot reports with ReportOrder (ALLOWED is the server's own status).
REPORTED_STATUSES = frozenset({t.ORDER_STATUS_ACCEPTED, t.ORDER_STATUS_PARTIALLY_FILLED, t.ORDER_STATUS_FILLED,
                               t.ORDER_STATUS_CANCELLED, t.ORDER_STATUS_REJECTED, t.ORDER_STATUS_EXPIRED})
MAX_CLOCK_SKEW_S = 5.0  # default: how far ahead of the sidecar's clock a report's time may be
_id_match = ID_PATTERN.fullmatch
Ctx = grpc.aio.ServicerContext[Any, Any]


def check_ids(v: Violations, trader_id: str, account_id: str) -> None:
    v.identifier("trader_id", trader_id)
    v.identifier("account_id", account_id)


def check_order(v: Violations, o: t.OrderIntent, prefix: str = "order") -> None:
    v.identifier(f"{prefix}.symbol", o.symbol)
    v.identifier(f"{prefix}.exchange", o.exchange, required=False)
    v.enum(f"{prefix}.side", o.side, SIDES, "SIDE")
    v.number(f"{prefix}.quantity", o.quantity, min_value=0.0, min_exclusive=True)
    v.number(f"{prefix}.price", o.price, min_value=0.0, min_exclusive=True)
    v.number(f"{prefix}.leverage", o.leverage, min_value=0.0, max_value=1000.0)
    v.number(f"{prefix}.stop_price", o.stop_price, min_value=0.0)
    v.number(f"{prefix}.volatility", o.volatility, min_value=0.0)
    v.identifier(f"{prefix}.client_order_id", o.client_order_id, required=False)


def _valid_id(value: str) -> bool:
    return 0 < len(value) <= ID_MAX and _id_match(value) is not None


def order_is_valid(o: t.OrderIntent) -> bool:
    """True when `check_order` would find nothing: the common case, checked without building field paths.

    NaN and infinities fail every comparison here, so they take the slow path, which names the field.
    """
    return (
        0.0 < o.quantity <= AMOUNT_MAX and 0.0 < o.price <= AMOUNT_MAX and 0.0 <= o.leverage <= 1000.0
        and 0.0 <= o.stop_price <= AMOUNT_MAX and 0.0 <= o.volatility <= AMOUNT_MAX and o.side in SIDES
        and _valid_id(o.symbol) and (not o.exchange or _valid_id(o.exchange))
        and (not o.client_order_id or _valid_id(o.client_order_id))
    )


_ORDER_ID_PREFIX = os.urandom(4).hex()  # random per process: ids of two runs do not collide
_order_ids = itertools.count(1)


def new_client_order_id() -> str:
    """An id for an order sent without one: 24 hex digits, a random prefix per process and a counter (cheaper
    than 12 random bytes per call: no system call on the hot path)."""
    return f"{_ORDER_ID_PREFIX}{next(_order_ids):016x}"


def check_position(v: Violations, p: t.Position, prefix: str) -> None:
    v.identifier(f"{prefix}.symbol", p.symbol)
    v.identifier(f"{prefix}.exchange", p.exchange, required=False)
    v.enum(f"{prefix}.side", p.side, SIDES, "SIDE")
    v.number(f"{prefix}.quantity", p.quantity, min_value=0.0)
    v.number(f"{prefix}.entry_price", p.entry_price, min_value=0.0, min_exclusive=True)
    v.number(f"{prefix}.mark_price", p.mark_price, min_value=0.0, min_exclusive=True)
    v.number(f"{prefix}.leverage", p.leverage, min_value=0.0, max_value=1000.0)
    v.number(f"{prefix}.volatility", p.volatility, min_value=0.0)


class Versioned(Protocol):
    version: int  # the control-state version seen


def _no_trade_listener(_trader_id: str, _account_id: str, _trade: ClosedTrade) -> None:
    return None


class RiskService:
    """Handlers of tradeguard.v1.RiskService. Watchers hear of every change from the engine's events
    (api/watch.WatchUpdates), not from these handlers."""

    def __init__(
        self,
        engine: RiskEngine,
        hub: WatchHub,
        max_clock_skew_s: float = MAX_CLOCK_SKEW_S,
        *,
        on_trade: Callable[[str, str, ClosedTrade], None] = _no_trade_listener,
        trade_known: Callable[[str, str], Awaitable[bool]] | None = None,
        control: Versioned | None = None,
        owners: Takeover | None = None,
    ) -> None:
        self.engine = engine
        # The shared control state (cluster.plane): every CanTrade answer carries its version (one int read).
        self.control = control
        self.hub = hub
        self.max_clock_skew_s = max(0.0, max_clock_skew_s)  # report times further ahead are rejected (INVALID_ARGUMENT)
        self.on_trade = on_trade  # a new trade report, to the store queue
        # (trader_id, trade_id) -> stored before? Asked only for an id not in memory once the trader's kept ids
        # overflowed (an older id may be a retry); never on CanTrade. None = memory only.
        self.trade_known = trade_known
        self.answers = convert.DecisionMessages()
        # Cluster mode (cluster.takeover): the traders this sidecar owns. A trader not owned yet is claimed on its
        # first call (the only await it adds); an owned one costs a dict lookup. None: single mode.
        self.owners = owners
        # Bounded traders (issue 21, residency.py): a trader not in memory is loaded again (evicted) or refused
        # (memory full) before its call; a trader in memory costs a dict lookup. None: unbounded.
        self.residency: Residency | None = None

    async def _local(self, trader_id: str, account_id: str) -> None:
        """Cluster mode, a state-changing call: the trader must be this sidecar's (claimed now if free);
        FAILED_PRECONDITION naming its owner otherwise, UNAVAILABLE when the database cannot say."""
        owners = self.owners
        if owners is not None and trader_id not in owners.owned:
            await owners.acquire(trader_id, account_id, write=True)

    def _read_only_can_trade(self, foreign: Foreign, trader_id: str, account_id: str,
                             msg: t.OrderIntent | None) -> rs.CanTradeResponse:
        """CanTrade for a trader another sidecar owns (foreign_trader_policy=read_only): decided on its stored
        state, nothing reserved or written (cluster.takeover, "Read-only")."""
        from ..cluster.takeover import read_only_engine

        shadow, st = read_only_engine(self.engine, foreign, account_id)
        order_id = "" if msg is None else (msg.client_order_id or new_client_order_id())
        try:
            decision, st = shadow.can_trade(trader_id, account_id, None if msg is None else convert.order_from_msg(msg),
                                            order_id)
        except OrderIdReusedError as exc:
            raise InvalidArgument([("order.client_order_id", str(exc))]) from None
        answer = convert.decision_msg(decision, st, shadow.clock.now(), shadow.limits_for(account_id).config_id)
        answer.client_order_id = order_id
        return answer
        # Told the trader id of every bot call (CanTrade and the reports): the dead-man's switch (engine.heartbeat).
        self.heard: Callable[[str], None] | None = None

    def methods(self, guard: Guard | None = None) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        """The method handlers by method name (for `add_registered_method_handlers`)."""
        bot = self._hearing
        return {
            "CanTrade": unary(rs.CanTradeRequest, bot(self.can_trade), guard),
            "ReportEquity": unary(rs.ReportEquityRequest, bot(self.report_equity), guard),
            "ReportTrade": unary(rs.ReportTradeRequest, bot(self.report_trade), guard),
            "ReportPositions": unary(rs.ReportPositionsRequest, bot(self.report_positions), guard),
            "ReportOrder": unary(rs.ReportOrderRequest, bot(self.report_order), guard),
            "ReportPrices": unary(rs.ReportPricesRequest, bot(self.report_prices), guard),
            "GetRiskState": unary(rs.GetRiskStateRequest, self.get_risk_state, guard),
            "WatchRiskState": server_stream(rs.WatchRiskStateRequest, self.watch_risk_state, guard),
        }

    def handler(self, guard: Guard | None = None) -> grpc.GenericRpcHandler[Any, Any]:
        return service(SERVICE, self.methods(guard))

    def _hearing(self, fn: Callable[[Any, Ctx], Awaitable[Any]]) -> Callable[[Any, Ctx], Awaitable[Any]]:
        """`fn`, telling `heard` the trader id of each call first (`fn` itself when nobody listens)."""
        heard = self.heard
        if heard is None:
            return fn

        async def hearing(req: Any, ctx: Ctx) -> Any:
            heard(req.trader_id)
            return await fn(req, ctx)

        return hearing

    # ---- helpers --------------------------------------------------------------------------------

    def state_msg(self, st: TraderState, orders: bool = False) -> t.RiskState:
        """The state in an answer: the reports leave the list of pending orders out (GetRiskState and the watch
        updates list them)."""
        return state_msg(self.engine, st, orders)

    def _until_pause_ends(self, trader_id: str) -> float | None:
        """Seconds until the trader's current pause ends (None: not paused, or until resumed)."""
        st = self.engine.traders.get(trader_id)
        if st is None:
            return None
        now = self.engine.clock.now()
        pause = st.effective_pause(now)
        if pause is None or pause.until is None:
            return None
        return max(0.0, pause.until - now) + 0.001

    def _answer(self, outcome: Outcome) -> tuple[t.RiskState, list[t.CircuitBreakerEvent], list[t.RequiredAction]]:
        """A report's answer: the state, the breaker events and the actions."""
        st = outcome.state
        events = [convert.firing_msg(f, st) for f in outcome.firings]
        return self.state_msg(st), events, [convert.action_msg(a) for a in outcome.actions]

    def _report_time(self, v: Violations, field: str, ts: Any) -> float | None:
        """A report's time, or None when unset. More than max_clock_skew_s ahead of the sidecar's clock is
        refused: one skewed clock would otherwise make every later report look stale. (Within the tolerance
        the engine counts it as now.)"""
        now = self.engine.clock.now()
        value = v.timestamp(field, ts, now, allow_future=True)
        if value is not None and value > now + self.max_clock_skew_s:
            v.add(field, f"is {value - now:.3f}s ahead of the sidecar's clock; at most {self.max_clock_skew_s:g}s "
                         "(max_clock_skew_s) is accepted: check the bot's clock")
            return None
        return value

    # ---- RPCs -----------------------------------------------------------------------------------

    async def can_trade(self, req: rs.CanTradeRequest, _ctx: Ctx) -> rs.CanTradeResponse:
        trader_id, account_id = req.trader_id, req.account_id
        msg = req.order if req.HasField("order") else None
        if not (_valid_id(trader_id) and _valid_id(account_id) and (msg is None or order_is_valid(msg))):
            v = Violations()  # something is wrong: collect every violation, with field paths
            check_ids(v, trader_id, account_id)
            if msg is not None:
                check_order(v, msg)
            v.raise_if_any()
        engine = self.engine
        if self.residency is not None and trader_id not in engine.traders:
            await self.residency.ensure(trader_id, account_id)
        owners = self.owners
        if owners is not None and trader_id not in owners.owned:  # cluster mode, not owned (yet)
            foreign = await owners.acquire(trader_id, account_id, write=False)
            if foreign is not None:
                return self._read_only_can_trade(foreign, trader_id, account_id, msg)
        if msg is None:
            decision, st = engine.can_trade(trader_id, account_id, None)
            answer = self.answers.build(decision, st, engine.clock.now(), engine.limits_for(account_id).config_id)
            if engine.gate is not None:
                show_unloaded(answer.state, engine.gate)
            if self.control is not None:
                answer.control_state_version = self.control.version
            return answer
        order_id = msg.client_order_id or new_client_order_id()
        try:
            decision, st = engine.can_trade(trader_id, account_id, convert.order_from_msg(msg), order_id)
        except OrderIdReusedError as exc:
            raise InvalidArgument([("order.client_order_id", str(exc))]) from None
        answer = self.answers.build(decision, st, engine.clock.now(), engine.limits_for(account_id).config_id)
        answer.client_order_id = order_id
        if engine.gate is not None:
            show_unloaded(answer.state, engine.gate)
        if self.control is not None:
            answer.control_state_version = self.control.version
        return answer

    async def report_equity(self, req: rs.ReportEquityRequest, _ctx: Ctx) -> rs.ReportEquityResponse:
        v = Violations()
        check_ids(v, req.trader_id, req.account_id)
        v.number("equity", req.equity, min_value=0.0)
        observed = self._report_time(v, "observed_at", req.observed_at)
        v.raise_if_any()
        if self.residency is not None and req.trader_id not in self.engine.traders:
            await self.residency.ensure(req.trader_id, req.account_id)
        if self.owners is not None and req.trader_id not in self.owners.owned:  # cluster mode: claim it first
            await self._local(req.trader_id, req.account_id)
        outcome = self.engine.report_equity(req.trader_id, req.account_id, req.equity, observed)
        if not outcome.changed:
            return rs.ReportEquityResponse(state=self.state_msg(outcome.state), stale=True)
        state, events, actions = self._answer(outcome)
        return rs.ReportEquityResponse(state=state, breaker_events=events, actions=actions, stale=outcome.stale)

    async def report_trade(self, req: rs.ReportTradeRequest, _ctx: Ctx) -> rs.ReportTradeResponse:
        engine = self.engine
        v = Violations()
        check_ids(v, req.trader_id, req.account_id)
        v.identifier("trade_id", req.trade_id)
        v.identifier("symbol", req.symbol)
        v.identifier("exchange", req.exchange, required=False)
        v.enum("side", req.side, SIDES, "SIDE")
        v.number("realized_pnl", req.realized_pnl, min_value=-1e15)
        closed = self._report_time(v, "closed_at", req.closed_at)
        v.raise_if_any()
        trade = ClosedTrade(req.trade_id, req.symbol.upper(), req.exchange.lower(), Side(req.side), req.realized_pnl,
                            engine.clock.now() if closed is None else closed)
        if self.residency is not None and req.trader_id not in self.engine.traders:
            await self.residency.ensure(req.trader_id, req.account_id)
        if self.owners is not None and req.trader_id not in self.owners.owned:  # cluster mode: claim it first
            await self._local(req.trader_id, req.account_id)
        st = engine.traders.get(req.trader_id)
        if (self.trade_known is not None and st is not None and st.account_id == req.account_id
                and len(st.seen_trade_ids) >= SEEN_TRADE_IDS_KEPT and req.trade_id not in st.seen_trade_ids
                and await self.trade_known(req.trader_id, req.trade_id)):
            return rs.ReportTradeResponse(state=self.state_msg(st), duplicate=True)
        outcome = engine.report_trade(req.trader_id, req.account_id, trade)
        if outcome.duplicate:
            return rs.ReportTradeResponse(state=self.state_msg(outcome.state), duplicate=True)
        self.on_trade(req.trader_id, req.account_id, trade)
        state, events, actions = self._answer(outcome)
        return rs.ReportTradeResponse(state=state, breaker_events=events, actions=actions)

    async def report_positions(self, req: rs.ReportPositionsRequest, _ctx: Ctx) -> rs.ReportPositionsResponse:
        v = Violations()
        check_ids(v, req.trader_id, req.account_id)
        if len(req.positions) > MAX_POSITIONS:
            v.add("positions", f"too many: {len(req.positions)}, at most {MAX_POSITIONS}")
        else:
            seen: set[tuple[str, str]] = set()
            for i, p in enumerate(req.positions):
                check_position(v, p, f"positions[{i}]")
                key = (p.symbol.upper(), p.exchange.lower())  # as convert.position_from_msg normalizes
                if key in seen:
                    v.add(f"positions[{i}]", f"duplicate position for {p.symbol}/{p.exchange or '-'}")
                seen.add(key)
        observed = self._report_time(v, "observed_at", req.observed_at)
        v.raise_if_any()
        if self.residency is not None and req.trader_id not in self.engine.traders:
            await self.residency.ensure(req.trader_id, req.account_id)
        if self.owners is not None and req.trader_id not in self.owners.owned:  # cluster mode: claim it first
            await self._local(req.trader_id, req.account_id)
        positions = [convert.position_from_msg(p) for p in req.positions]
        outcome = self.engine.report_positions(req.trader_id, req.account_id, positions, observed)
        state, events, actions = self._answer(outcome)
        return rs.ReportPositionsResponse(state=state, breaker_events=events, actions=actions)

    async def report_order(self, req: rs.ReportOrderRequest, _ctx: Ctx) -> rs.ReportOrderResponse:
        v = Violations()
        check_ids(v, req.trader_id, req.account_id)
        v.identifier("client_order_id", req.client_order_id)
        v.enum("status", req.status, REPORTED_STATUSES, "ORDER_STATUS")
        v.number("filled_quantity", req.filled_quantity, min_value=0.0)
        v.number("average_price", req.average_price, min_value=0.0)
        v.raise_if_any()
        if self.residency is not None and req.trader_id not in self.engine.traders:
            await self.residency.ensure(req.trader_id, req.account_id)
        if self.owners is not None and req.trader_id not in self.owners.owned:  # cluster mode: claim it first
            await self._local(req.trader_id, req.account_id)
        engine = self.engine
        st = engine.traders.get(req.trader_id)
        known = None if st is None or st.account_id != req.account_id else orders.find(st, req.client_order_id)
        if known is not None and req.filled_quantity > known.quantity * (1.0 + 1e-9):
            raise InvalidArgument([("filled_quantity", f"{req.filled_quantity:g} is more than the order's quantity "
                                                       f"{known.quantity:g}")])
        try:
            outcome = engine.report_order(req.trader_id, req.account_id, req.client_order_id,
                                          convert.ORDER_STATUS_OF[req.status], req.filled_quantity, req.average_price)
        except orders.UnknownOrderError as exc:
            raise NotFound(str(exc)) from None
        except StateNotLoadedError as exc:
            raise Unavailable(str(exc)) from None
        assert outcome.order is not None
        order = convert.pending_order_msg(outcome.order)
        if not outcome.changed:
            return rs.ReportOrderResponse(state=self.state_msg(outcome.state), order=order, duplicate=True)
        state, events, actions = self._answer(outcome)
        return rs.ReportOrderResponse(state=state, order=order, breaker_events=events, actions=actions)

    async def report_prices(self, req: rs.ReportPricesRequest, _ctx: Ctx) -> rs.ReportPricesResponse:
        v = Violations()
        check_ids(v, req.trader_id, req.account_id)
        if not req.prices:
            v.add("prices", "is empty: send at least one price")
        elif len(req.prices) > MAX_POSITIONS:
            v.add("prices", f"too many: {len(req.prices)}, at most {MAX_POSITIONS}")
        marks: list[PriceMark] = []
        now = self.engine.clock.now()
        for i, p in enumerate(req.prices):
            v.identifier(f"prices[{i}].symbol", p.symbol)
            v.identifier(f"prices[{i}].exchange", p.exchange, required=False)
            v.number(f"prices[{i}].price", p.price, min_value=0.0, min_exclusive=True)
            at = self._report_time(v, f"prices[{i}].observed_at", p.observed_at)
            marks.append(PriceMark(p.symbol.upper(), p.price, now if at is None else at, p.exchange.lower()))
        v.raise_if_any()
        if self.residency is not None and req.trader_id not in self.engine.traders:
            await self.residency.ensure(req.trader_id, req.account_id, creates=False)
        self.engine.peek(req.trader_id, req.account_id)  # the trader's binding to its account holds here too
        return rs.ReportPricesResponse(accepted=self.engine.report_prices(req.account_id, marks))

    async def get_risk_state(self, req: rs.GetRiskStateRequest, _ctx: Ctx) -> rs.GetRiskStateResponse:
        v = Violations()
        check_ids(v, req.trader_id, req.account_id)
        v.raise_if_any()
        if self.residency is not None and req.trader_id not in self.engine.traders:
            await self.residency.ensure(req.trader_id, req.account_id, creates=False)
        owners = self.owners
        if owners is not None and req.trader_id not in owners.owned:
            foreign = await owners.acquire(req.trader_id, req.account_id, write=False)
            if foreign is not None:  # read_only: the stored state, as its owner last wrote it
                from ..cluster.takeover import read_only_engine

                shadow, st = read_only_engine(self.engine, foreign, req.account_id)
                return rs.GetRiskStateResponse(state=state_msg(shadow, shadow.peek(req.trader_id, req.account_id)))
        st = self.engine.peek(req.trader_id, req.account_id)
        return rs.GetRiskStateResponse(state=self.state_msg(st, orders=True))

    async def watch_risk_state(
        self, req: rs.WatchRiskStateRequest, _ctx: Ctx
    ) -> AsyncIterator[rs.WatchRiskStateResponse]:
        v = Violations()
        check_ids(v, req.trader_id, req.account_id)
        v.raise_if_any()
        if self.residency is not None and req.trader_id not in self.engine.traders:
            await self.residency.ensure(req.trader_id, req.account_id, creates=False)
        if self.owners is not None and req.trader_id not in self.owners.owned:  # cluster mode: watch it at its owner
            await self._local(req.trader_id, req.account_id)
        st = self.engine.peek(req.trader_id, req.account_id)
        # Until the stored state is loaded memory cannot tell a stored trader from a new id: every watch then counts
        # as known (still bounded per trader, per connection and in all), not against the small unknown budget.
        known = req.trader_id in self.engine.traders or self.engine.journal is not None
        watcher = self.hub.subscribe(req.trader_id, connection_key(_ctx), known)  # per HTTP connection too
        if watcher is None:
            raise Unavailable("too many WatchRiskState streams (all, per trader, per connection or on unknown "
                              "traders) or shutting down; retry later")
        try:
            limits = self.engine.limits_for(st.account_id)
            from ..engine import checks

            actions = checks.position_actions(st, limits) + self.engine.cancel_actions(st, self.engine.clock.now())
            initial = rs.WatchRiskStateResponse(state=self.state_msg(st, orders=True), reason="initial")
            initial.actions.extend(convert.action_msg(a) for a in actions)
            yield initial
            while True:
                timeout = self._until_pause_ends(req.trader_id)
                try:
                    update = await asyncio.wait_for(watcher.next(), timeout)
                except TimeoutError:
                    # The pause ended by itself, and no call has looked since: this look ends it in the engine,
                    # whose event reaches every watcher of the trader (this one too, next round).
                    st = self.engine.peek(req.trader_id, req.account_id)
                    if not watcher.pending:  # nothing changed (the engine's clock is not there yet): say so anyway
                        yield rs.WatchRiskStateResponse(state=self.state_msg(st, orders=True), reason="pause_expired")
                    continue
                if update is None:
                    return
                yield update
        finally:
            self.hub.unsubscribe(req.trader_id, watcher)

