"""Frozen result and input types, and their conversion to and from the protobuf messages.

Enums are plain upper-case strings without their proto prefix: `DecisionCode.DECISION_CODE_DAILY_LOSS_LIMIT`
reads `"DAILY_LOSS_LIMIT"`, `TradingState.TRADING_STATE_REDUCING` reads `"REDUCING"`, `Side.SIDE_BUY` reads
`"BUY"`. A value this client does not know (from a newer server) reads as `"UNKNOWN_<number>"` rather than
failing. Timestamps are timezone-aware UTC `datetime`s; unset ones are `None`.
Every type built from a response keeps the message in `.raw` (not part of equality or repr).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar, cast

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2
from google.protobuf.message import DecodeError, Message

from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import types_pb2 as t

from ._errors import InvalidResponseError

__all__ = [
    "INVALID_RESPONSE",
    "SIDECAR_UNAVAILABLE",
    "Action",
    "Binding",
    "BreakerEvent",
    "Check",
    "CircuitBreaker",
    "CorrelationGroup",
    "Decision",
    "FeatureFlags",
    "HistoryEntry",
    "Order",
    "Page",
    "PendingOrder",
    "Position",
    "PriceMark",
    "ReportResult",
    "RiskConfig",
    "RiskState",
    "RiskStateEntry",
    "SavedConfig",
    "ScopePause",
    "StateUpdate",
    "SymbolConfig",
    "TradingWindow",
]

SIDECAR_UNAVAILABLE = "SIDECAR_UNAVAILABLE"
"""Decision code set by this client (never by the server) when the sidecar could not be reached."""
INVALID_RESPONSE = "INVALID_RESPONSE"
"""Decision code set by this client (never by the server) when the answer broke the protocol: always denied."""

CLIENT_ONLY_CODES = frozenset({t.DECISION_CODE_SIDECAR_UNAVAILABLE, t.DECISION_CODE_INVALID_RESPONSE})
RULE_CODES = frozenset(
    v.number for v in t.DecisionCode.DESCRIPTOR.values
    if v.number not in (t.DECISION_CODE_UNSPECIFIED, t.DECISION_CODE_ALLOWED) and v.number not in CLIENT_ONLY_CODES
)
"""The codes a server denies with (and allows with in shadow mode, with would_deny): every rule's code."""

T = TypeVar("T")


# ---- enums and well-known types -----------------------------------------------------------------


def has(msg: Message, name: str) -> bool:
    """`msg.HasField(name)` for a field name known only at run time."""
    return msg.HasField(name)


# `wrapper` is a generated enum (t.Side, t.DecisionCode, ...); its Name / Value / keys come from the
# EnumTypeWrapper metaclass, typed per enum with a NewType, hence Any here.
def enum_name(wrapper: Any, prefix: str, value: int) -> str:
    """`DECISION_CODE_DAILY_LOSS_LIMIT` -> `DAILY_LOSS_LIMIT`; an unknown number -> `UNKNOWN_<n>`."""
    try:
        name: str = wrapper.Name(value)
    except ValueError:
        return f"UNKNOWN_{value}"
    return name.removeprefix(prefix)


def enum_value(wrapper: Any, prefix: str, name: str, what: str) -> int:
    """`"buy"` / `"BUY"` / `"SIDE_BUY"` -> 1. Unknown or UNSPECIFIED names raise ValueError."""
    key = name.strip().upper()
    if not key.startswith(prefix):
        key = prefix + key
    try:
        value: int = wrapper.Value(key)
    except ValueError:
        names = wrapper.DESCRIPTOR.values_by_name
        allowed = ", ".join(n.removeprefix(prefix) for n in names if not n.endswith("_UNSPECIFIED"))
        raise ValueError(f"{what}: unknown value {name!r}; expected one of {allowed}") from None
    if value == 0:
        raise ValueError(f"{what}: {name!r} is not a valid input")
    return value


def side_value(side: str) -> t.Side.ValueType:
    return cast("t.Side.ValueType", enum_value(t.Side, "SIDE_", side, "side"))


def trading_state_value(state: str) -> t.TradingState.ValueType:
    return cast("t.TradingState.ValueType", enum_value(t.TradingState, "TRADING_STATE_", state, "trading_state"))


REPORTABLE_ORDER_STATUSES = ("ACCEPTED", "PARTIALLY_FILLED", "FILLED", "CANCELLED", "REJECTED", "EXPIRED")
"""What a bot reports with ReportOrder (ALLOWED is the server's own status: it is not taken as input)."""


def order_status_value(status: str) -> t.OrderStatus.ValueType:
    """`"filled"` / `"FILLED"` / `"ORDER_STATUS_FILLED"` -> ORDER_STATUS_FILLED; any other name raises."""
    name = status.strip().upper().removeprefix("ORDER_STATUS_") if isinstance(status, str) else status
    if name not in REPORTABLE_ORDER_STATUSES:
        why = "is set by the server only" if name == "ALLOWED" else "is not a status a bot reports"
        raise ValueError(f"status: {status!r} {why}; expected one of {', '.join(REPORTABLE_ORDER_STATUSES)}")
    return t.OrderStatus.Value(f"ORDER_STATUS_{name}")


def ts_to_datetime(msg: Message, name: str) -> datetime | None:
    """The timestamp field `name` of `msg` as an aware UTC datetime, or None when unset."""
    if not msg.HasField(name):
        return None
    ts: timestamp_pb2.Timestamp = getattr(msg, name)
    try:
        return ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:  # outside 0001..9999: no server sends that
        raise InvalidResponseError(f"{name}: {exc}") from None


def datetime_to_ts(value: datetime, what: str) -> timestamp_pb2.Timestamp:
    """An aware datetime as a Timestamp. Naive datetimes are refused: their zone is a guess."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what}: give a timezone-aware datetime (e.g. datetime.now(UTC)), not a naive one")
    ts = timestamp_pb2.Timestamp()
    try:
        ts.FromDatetime(value.astimezone(UTC))
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"{what}: {value.isoformat()} cannot be sent as a UTC timestamp ({exc})") from None
    return ts


def seconds_to_duration(value: timedelta | float, what: str) -> duration_pb2.Duration:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{what}: must be a finite, non-negative duration, got {value!r}")
    d = duration_pb2.Duration()
    d.FromTimedelta(timedelta(seconds=seconds))
    return d


def struct_to_dict(msg: Message, name: str) -> dict[str, Any] | None:
    if not msg.HasField(name):
        return None
    struct: struct_pb2.Struct = getattr(msg, name)
    try:
        out: dict[str, Any] = json_format.MessageToDict(struct)
    except (ValueError, json_format.Error) as exc:  # e.g. a NaN number: no server sends that
        raise InvalidResponseError(f"{name}: {exc}") from None
    return out


def dict_to_struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(dict(value))
    return s


# ---- inputs -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Order:
    """An order the bot is about to place (OrderIntent). `side` is "BUY" or "SELL".

    `leverage` 0 means 1x; `stop_price` 0 means no stop; `volatility` 0 means not reported.
    `client_order_id` is the bot's id of the order; when empty, `can_trade` makes one before its first
    attempt (so its own retries repeat it) and returns it in `Decision.client_order_id`.
    """

    symbol: str
    side: str
    quantity: float
    price: float
    exchange: str = ""
    leverage: float = 0.0
    reduce_only: bool = False
    stop_price: float = 0.0
    volatility: float = 0.0
    client_order_id: str = ""

    def to_proto(self) -> t.OrderIntent:
        return t.OrderIntent(
            symbol=self.symbol, exchange=self.exchange, side=side_value(self.side),
            quantity=self.quantity, price=self.price, leverage=self.leverage, reduce_only=self.reduce_only,
            stop_price=self.stop_price, volatility=self.volatility, client_order_id=self.client_order_id,
        )


@dataclass(frozen=True, slots=True)
class Position:
    """One open position snapshot. `side` "BUY" is long, "SELL" is short."""

    symbol: str
    side: str
    quantity: float
    entry_price: float
    mark_price: float
    exchange: str = ""
    leverage: float = 0.0
    volatility: float = 0.0
    raw: t.Position | None = field(default=None, repr=False, compare=False)

    def to_proto(self) -> t.Position:
        return t.Position(
            symbol=self.symbol, exchange=self.exchange, side=side_value(self.side),
            quantity=self.quantity, entry_price=self.entry_price, mark_price=self.mark_price,
            leverage=self.leverage, volatility=self.volatility,
        )

    @classmethod
    def from_proto(cls, m: t.Position) -> Position:
        return cls(
            symbol=m.symbol, side=enum_name(t.Side, "SIDE_", m.side), quantity=m.quantity,
            entry_price=m.entry_price, mark_price=m.mark_price, exchange=m.exchange, leverage=m.leverage,
            volatility=m.volatility, raw=m,
        )


@dataclass(frozen=True, slots=True)
class PriceMark:
    """A reference price for a symbol (for price collars), for `report_prices`. `observed_at` None means now."""

    symbol: str
    price: float
    exchange: str = ""
    observed_at: datetime | None = None

    def to_proto(self) -> t.PriceMark:
        m = t.PriceMark(symbol=self.symbol, exchange=self.exchange, price=self.price)
        if self.observed_at is not None:
            m.observed_at.CopyFrom(datetime_to_ts(self.observed_at, "observed_at"))
        return m


# ---- results ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    """One rule evaluated for a decision. `status` is "PASS", "FAIL" or "SKIPPED"."""

    name: str
    status: str
    code: str
    detail: str
    value: float
    limit: float
    raw: t.CheckResult | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_proto(cls, m: t.CheckResult) -> Check:
        return cls(
            name=m.name, status=enum_name(t.CheckStatus, "CHECK_STATUS_", m.status),
            code=enum_name(t.DecisionCode, "DECISION_CODE_", m.code), detail=m.detail, value=m.value,
            limit=m.limit, raw=m,
        )


CANCEL_ALL_ORDERS = "CANCEL_ALL_ORDERS"


@dataclass(frozen=True, slots=True)
class Action:
    """Something the bot must do now. `type` is "CLOSE_POSITION", "PAUSE_TRADING", "REDUCE_ONLY", "ALERT" or
    "CANCEL_ALL_ORDERS" (the trader was HALTED: cancel every working order at the venue now, then report each
    with `report_order(..., "CANCELLED")`; `client_order_ids` lists the pending orders the sidecar knows of)."""

    type: str
    symbol: str
    exchange: str
    reason: str
    breaker_id: str
    client_order_ids: tuple[str, ...] = ()
    raw: t.RequiredAction | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_proto(cls, m: t.RequiredAction) -> Action:
        return cls(
            type=enum_name(t.ActionType, "ACTION_TYPE_", m.type), symbol=m.symbol, exchange=m.exchange,
            reason=m.reason, breaker_id=m.breaker_id, client_order_ids=tuple(m.client_order_ids), raw=m,
        )


def cancel_all_in(actions: Iterable[Action]) -> bool:
    return any(a.type == CANCEL_ALL_ORDERS for a in actions)


def cancel_ids_in(actions: Iterable[Action]) -> tuple[str, ...]:
    """The client_order_ids of every CANCEL_ALL_ORDERS action, each once, in the order given."""
    ids = (i for a in actions if a.type == CANCEL_ALL_ORDERS for i in a.client_order_ids)
    return tuple(dict.fromkeys(ids))


@dataclass(frozen=True, slots=True)
class PendingOrder:
    """An order CanTrade allowed that may still fill; until reported finished (or released after the
    configuration's pending_order_ttl_seconds) its unfilled quantity counts in every exposure check as if filled.

    `status`: "ALLOWED" (nothing reported yet), "ACCEPTED", "PARTIALLY_FILLED", "FILLED", "CANCELLED",
    "REJECTED" or "EXPIRED". `reducing`: it only reduced a known position when it was allowed.
    """

    client_order_id: str
    symbol: str
    exchange: str
    side: str
    quantity: float
    price: float
    filled_quantity: float
    average_price: float
    status: str
    reducing: bool
    allowed_at: datetime | None
    expires_at: datetime | None
    raw: t.PendingOrder | None = field(default=None, repr=False, compare=False)

    @property
    def finished(self) -> bool:
        """True for a final status (FILLED, CANCELLED, REJECTED, EXPIRED): nothing more counts for it."""
        return self.status in ("FILLED", "CANCELLED", "REJECTED", "EXPIRED")

    @classmethod
    def from_proto(cls, m: t.PendingOrder) -> PendingOrder:
        return cls(
            client_order_id=m.client_order_id, symbol=m.symbol, exchange=m.exchange,
            side=enum_name(t.Side, "SIDE_", m.side), quantity=m.quantity, price=m.price,
            filled_quantity=m.filled_quantity, average_price=m.average_price,
            status=enum_name(t.OrderStatus, "ORDER_STATUS_", m.status), reducing=m.reducing,
            allowed_at=ts_to_datetime(m, "allowed_at"), expires_at=ts_to_datetime(m, "expires_at"), raw=m,
        )


@dataclass(frozen=True, slots=True)
class RiskState:
    """The risk state of one trader. Percentages are percent (6.0 = 6%); money is quote currency.

    `pending_orders`: orders allowed and not yet finished (they count in the exposure checks as if filled); listed
    by get_risk_state and watch updates, left out of the answers of can_trade and the reports, which give
    `pending_order_count`;
    `daily_order_notional` / `daily_orders`: what was allowed since the day started.
    """

    trader_id: str
    account_id: str
    current_equity: float
    peak_equity: float
    drawdown_pct: float
    daily_pnl: float
    daily_pnl_pct: float
    weekly_pnl: float
    weekly_pnl_pct: float
    monthly_pnl: float
    monthly_pnl_pct: float
    day_start_equity: float
    week_start_equity: float
    month_start_equity: float
    trading_state: str
    paused_until: datetime | None
    pause_reason: str
    pause_code: str
    consecutive_losses: int
    last_equity_at: datetime | None
    updated_at: datetime | None
    equity_reported: bool
    config_id: str
    positions: tuple[Position, ...]
    pending_orders: tuple[PendingOrder, ...] = ()
    daily_order_notional: float = 0.0
    daily_orders: int = 0
    pending_order_count: int = 0
    raw: t.RiskState | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_proto(cls, m: t.RiskState) -> RiskState:
        return cls(
            trader_id=m.trader_id, account_id=m.account_id, current_equity=m.current_equity,
            peak_equity=m.peak_equity, drawdown_pct=m.drawdown_pct, daily_pnl=m.daily_pnl,
            daily_pnl_pct=m.daily_pnl_pct, weekly_pnl=m.weekly_pnl, weekly_pnl_pct=m.weekly_pnl_pct,
            monthly_pnl=m.monthly_pnl, monthly_pnl_pct=m.monthly_pnl_pct, day_start_equity=m.day_start_equity,
            week_start_equity=m.week_start_equity, month_start_equity=m.month_start_equity,
            trading_state=enum_name(t.TradingState, "TRADING_STATE_", m.trading_state),
            paused_until=ts_to_datetime(m, "paused_until"), pause_reason=m.pause_reason,
            pause_code=enum_name(t.DecisionCode, "DECISION_CODE_", m.pause_code),
            consecutive_losses=m.consecutive_losses, last_equity_at=ts_to_datetime(m, "last_equity_at"),
            updated_at=ts_to_datetime(m, "updated_at"), equity_reported=m.equity_reported, config_id=m.config_id,
            positions=tuple(Position.from_proto(p) for p in m.positions),
            pending_orders=tuple(PendingOrder.from_proto(o) for o in m.pending_orders),
            daily_order_notional=m.daily_order_notional, daily_orders=m.daily_orders,
            pending_order_count=m.pending_order_count, raw=m,
        )


def _state_or_none(msg: Message, name: str = "state") -> RiskState | None:
    return RiskState.from_proto(getattr(msg, name)) if msg.HasField(name) else None


def _code_text(code: int) -> str:
    try:
        name = t.DecisionCode.Name(code)  # type: ignore[arg-type]
    except ValueError:
        return f"unknown code {code}"
    if code == t.DECISION_CODE_UNSPECIFIED:
        return f"{name} ({code}, never sent by a server)"
    if code in CLIENT_ONLY_CODES:
        return f"{name} ({code}, set by clients only)"
    return f"{name} ({code})"


def protocol_violation(m: rs.CanTradeResponse) -> str | None:
    """Why `m` is an answer no TradeGuard server sends, or None when it is a valid one.

    Valid: allowed=true with DECISION_CODE_ALLOWED; allowed=true with a rule's code and would_deny=true
    (shadow mode); allowed=false with a rule's code. Anything else (an "allowed" with UNSPECIFIED, a
    client-only or unknown code, or a rule's code without would_deny; a denial with no rule's code) is not.
    """
    code = m.code
    if m.allowed:
        if code == t.DECISION_CODE_ALLOWED:
            return None
        if code in RULE_CODES:
            if m.would_deny:
                return None
            return (f"allowed=true with the rule code {_code_text(code)} but would_deny=false (only shadow mode "
                    "allows with a rule's code, and it sets would_deny)")
        return f"allowed=true with {_code_text(code)}"
    if code in RULE_CODES:
        return None
    return f"allowed=false with {_code_text(code)}"


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to `can_trade`.

    `bool(decision)` is `decision.allowed`, so `if client.can_trade(...):` is safe. `code` names the rule
    that decided ("ALLOWED", "NO_EQUITY_REPORTED", "DAILY_LOSS_LIMIT", ...), "SIDECAR_UNAVAILABLE" when this
    client could not reach the sidecar, or "INVALID_RESPONSE" when the answer broke the protocol (an allowed
    answer with a code no server sends, or one that cannot be read): always denied, whatever `fail_open`
    says. For both client-made codes `state` is None and `checks` / `actions` are empty (`raw` keeps an
    invalid answer's message, when there was one).
    `would_deny` is true when the decision allows only because enforcement is off (shadow mode) or because
    the client fails open. `client_order_id` is the order's id (the caller's, or the one the client made),
    empty when no order was given: report what happens to an allowed order under it with `report_order`.
    `cancel_all_orders` / `cancel_order_ids`: see the CANCEL_ALL_ORDERS action (Action).
    `control_state_version`: the sidecar's control-state version (pauses, configurations, breakers, flags) when
    it decided; 0 for a decision this client made, or from a server that does not send it.
    """

    allowed: bool
    code: str
    reason: str
    trading_state: str
    paused_until: datetime | None
    checks: tuple[Check, ...]
    actions: tuple[Action, ...]
    would_deny: bool
    state: RiskState | None
    client_order_id: str = ""
    control_state_version: int = 0
    raw: rs.CanTradeResponse | None = field(default=None, repr=False, compare=False)

    def __bool__(self) -> bool:
        return self.allowed

    @property
    def cancel_all_orders(self) -> bool:
        """True when an action asks the bot to cancel every working order at the venue now (HALTED)."""
        return cancel_all_in(self.actions)

    @property
    def cancel_order_ids(self) -> tuple[str, ...]:
        """The client_order_ids the CANCEL_ALL_ORDERS actions list (empty when there is none)."""
        return cancel_ids_in(self.actions)

    @property
    def sidecar_unavailable(self) -> bool:
        """True when this decision was made by the client because the sidecar could not be reached."""
        return self.code == SIDECAR_UNAVAILABLE

    @property
    def invalid_response(self) -> bool:
        """True when this client denied because the answer broke the protocol."""
        return self.code == INVALID_RESPONSE

    @classmethod
    def from_proto(cls, m: rs.CanTradeResponse, client_order_id: str = "") -> Decision:
        """The decision a CanTradeResponse carries, or an INVALID_RESPONSE denial when it breaks the protocol.

        `client_order_id` is the id the request carried (used when the answer does not echo one).
        """
        why = protocol_violation(m)
        if why is None:
            try:
                return cls(
                    allowed=m.allowed, code=enum_name(t.DecisionCode, "DECISION_CODE_", m.code), reason=m.reason,
                    trading_state=enum_name(t.TradingState, "TRADING_STATE_", m.trading_state),
                    paused_until=ts_to_datetime(m, "paused_until"),
                    checks=tuple(Check.from_proto(c) for c in m.checks),
                    actions=tuple(Action.from_proto(a) for a in m.actions), would_deny=m.would_deny,
                    state=_state_or_none(m), client_order_id=m.client_order_id or client_order_id,
                    control_state_version=m.control_state_version, raw=m,
                )
            except (InvalidResponseError, ValueError, OverflowError) as exc:  # e.g. a timestamp past 9999
                why = f"a field cannot be read ({exc.why if isinstance(exc, InvalidResponseError) else exc})"
        return cls.invalid(why, raw=m, client_order_id=client_order_id)

    @classmethod
    def from_bytes(cls, body: object, client_order_id: str = "") -> Decision:
        """The decision in a CanTrade answer's body, or an INVALID_RESPONSE denial when there is none to read."""
        if not isinstance(body, bytes):
            return cls.invalid("the call ended OK without a message", client_order_id=client_order_id)
        try:
            msg = rs.CanTradeResponse.FromString(body)
        except DecodeError as exc:
            return cls.invalid(f"the body ({len(body)} bytes) is not a CanTradeResponse ({exc})",
                               client_order_id=client_order_id)
        return cls.from_proto(msg, client_order_id)

    @classmethod
    def invalid(cls, why: str, *, raw: rs.CanTradeResponse | None = None, client_order_id: str = "") -> Decision:
        """The denial this client makes when the answer broke the protocol (never allowed, even failing open)."""
        reason = f"{INVALID_RESPONSE}: the answer broke the protocol: {why}; denied (whatever answered cannot allow)"
        if raw is not None and raw.reason:
            reason += f"; its reason was {raw.reason[:200]!r}"
        return cls(
            allowed=False, code=INVALID_RESPONSE, reason=reason, trading_state="UNSPECIFIED", paused_until=None,
            checks=(), actions=(), would_deny=False, state=None, client_order_id=client_order_id, raw=raw,
        )

    @classmethod
    def unavailable(cls, error: str, *, fail_open: bool, client_order_id: str = "") -> Decision:
        """The decision when the sidecar cannot be reached: denied, or allowed with would_deny when failing open."""
        if fail_open:
            reason = f"{SIDECAR_UNAVAILABLE}: {error}; allowed because the client fails open (fail_open=True)"
        else:
            reason = f"{SIDECAR_UNAVAILABLE}: {error}; denied because the client fails closed"
        return cls(
            allowed=fail_open, code=SIDECAR_UNAVAILABLE, reason=reason, trading_state="UNSPECIFIED",
            paused_until=None, checks=(), actions=(), would_deny=fail_open, state=None,
            client_order_id=client_order_id, raw=None,
        )


@dataclass(frozen=True, slots=True)
class BreakerEvent:
    """One firing of a circuit breaker. `triggered_values` / `action_result` are the JSON objects it recorded."""

    id: str
    breaker_id: str
    trader_id: str
    account_id: str
    timestamp: datetime | None
    triggered_values: dict[str, Any]
    action_taken: str
    action_result: dict[str, Any]
    positions_affected: tuple[tuple[str, str], ...]
    shadow: bool
    raw: t.CircuitBreakerEvent | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_proto(cls, m: t.CircuitBreakerEvent) -> BreakerEvent:
        return cls(
            id=m.id, breaker_id=m.breaker_id, trader_id=m.trader_id, account_id=m.account_id,
            timestamp=ts_to_datetime(m, "timestamp"), triggered_values=struct_to_dict(m, "triggered_values") or {},
            action_taken=m.action_taken, action_result=struct_to_dict(m, "action_result") or {},
            positions_affected=tuple((p.symbol, p.exchange) for p in m.positions_affected), shadow=m.shadow, raw=m,
        )


ReportMsg = rs.ReportEquityResponse | rs.ReportTradeResponse | rs.ReportPositionsResponse | rs.ReportOrderResponse


@dataclass(frozen=True, slots=True)
class ReportResult:
    """The answer to a report: the updated state, breakers fired, actions to take.

    `stale` (equity reports only): the report was older than the last one and was ignored.
    `duplicate` (trade and order reports): the trade_id had already been reported, or the order report was a
    repeat or older than what the sidecar knows; nothing changed.
    `order` (order reports only): the order after the report.
    """

    state: RiskState | None
    actions: tuple[Action, ...]
    breaker_events: tuple[BreakerEvent, ...]
    stale: bool = False
    duplicate: bool = False
    order: PendingOrder | None = None
    raw: ReportMsg | None = field(default=None, repr=False, compare=False)

    @property
    def cancel_all_orders(self) -> bool:
        """True when an action asks the bot to cancel every working order at the venue now (HALTED)."""
        return cancel_all_in(self.actions)

    @property
    def cancel_order_ids(self) -> tuple[str, ...]:
        """The client_order_ids the CANCEL_ALL_ORDERS actions list (empty when there is none)."""
        return cancel_ids_in(self.actions)

    @classmethod
    def from_proto(cls, m: ReportMsg) -> ReportResult:
        order = None
        if isinstance(m, rs.ReportOrderResponse) and m.HasField("order"):
            order = PendingOrder.from_proto(m.order)
        return cls(
            state=_state_or_none(m), actions=tuple(Action.from_proto(a) for a in m.actions),
            breaker_events=tuple(BreakerEvent.from_proto(e) for e in m.breaker_events),
            stale=isinstance(m, rs.ReportEquityResponse) and m.stale,
            duplicate=isinstance(m, rs.ReportTradeResponse | rs.ReportOrderResponse) and m.duplicate,
            order=order, raw=m,
        )


@dataclass(frozen=True, slots=True)
class StateUpdate:
    """One update on a watch stream. `reason` is e.g. "initial", "equity_report", "paused by operator"."""

    state: RiskState | None
    reason: str
    actions: tuple[Action, ...]
    breaker_events: tuple[BreakerEvent, ...]
    skipped_updates: int
    raw: rs.WatchRiskStateResponse | None = field(default=None, repr=False, compare=False)

    @property
    def cancel_all_orders(self) -> bool:
        """True when an action asks the bot to cancel every working order at the venue now (HALTED)."""
        return cancel_all_in(self.actions)

    @property
    def cancel_order_ids(self) -> tuple[str, ...]:
        """The client_order_ids the CANCEL_ALL_ORDERS actions list (empty when there is none)."""
        return cancel_ids_in(self.actions)

    @classmethod
    def from_proto(cls, m: rs.WatchRiskStateResponse) -> StateUpdate:
        return cls(
            state=_state_or_none(m), reason=m.reason, actions=tuple(Action.from_proto(a) for a in m.actions),
            breaker_events=tuple(BreakerEvent.from_proto(e) for e in m.breaker_events),
            skipped_updates=m.skipped_updates, raw=m,
        )


# ---- admin --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeatureFlags:
    """Run-time switches. Enforcement off = shadow mode; persistence off = memory only."""

    enable_risk_enforcement: bool
    enable_persistence: bool
    raw: t.FeatureFlags | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_proto(cls, m: t.FeatureFlags) -> FeatureFlags:
        return cls(enable_risk_enforcement=m.enable_risk_enforcement, enable_persistence=m.enable_persistence, raw=m)


def _optional_fields(cls: type[Any], skip: Iterable[str]) -> tuple[str, ...]:
    skipped = set(skip)
    return tuple(f.name for f in fields(cls) if f.name not in skipped)


@dataclass(frozen=True, slots=True, kw_only=True)
class SymbolConfig:
    """Per-symbol overrides of the account limits; None falls back to the account configuration."""

    symbol: str
    max_position_size_percentage: float | None = None
    max_leverage: float | None = None
    position_max_drawdown_percentage: float | None = None
    risk_per_trade_percentage: float | None = None
    max_order_quantity: float | None = None
    max_position_quantity: float | None = None
    max_open_orders: int | None = None
    price_collar_percentage: float | None = None
    raw: t.SymbolRiskConfiguration | None = field(default=None, repr=False, compare=False)

    def to_proto(self) -> t.SymbolRiskConfiguration:
        m = t.SymbolRiskConfiguration(symbol=self.symbol)
        for name in _optional_fields(SymbolConfig, ("symbol", "raw")):
            value = getattr(self, name)
            if value is not None:
                setattr(m, name, value)
        return m

    @classmethod
    def from_proto(cls, m: t.SymbolRiskConfiguration) -> SymbolConfig:
        optional = {n: getattr(m, n) if has(m, n) else None for n in _optional_fields(cls, ("symbol", "raw"))}
        return cls(symbol=m.symbol, raw=m, **optional)


@dataclass(frozen=True, slots=True)
class CorrelationGroup:
    """Symbols whose same-direction exposure is summed for max_correlated_exposure_percentage."""

    name: str
    symbols: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TradingWindow:
    """A UTC window in which new exposure is allowed: `start` (inclusive) to `end` (exclusive), "HH:MM";
    "24:00" is the end of the day and an end before the start crosses midnight. `weekdays`: ISO, 1 = Monday
    ... 7 = Sunday; empty means every day."""

    start: str
    end: str
    weekdays: tuple[int, ...] = ()

    def to_proto(self) -> t.TradingWindow:
        return t.TradingWindow(weekdays=list(self.weekdays), start=self.start, end=self.end)

    @classmethod
    def from_proto(cls, m: t.TradingWindow) -> TradingWindow:
        return cls(start=m.start, end=m.end, weekdays=tuple(m.weekdays))


_CONFIG_PLAIN = ("account_id", "config_id", "is_active", "market_regime_thresholds", "correlation_groups",
                 "symbol_configs", "allowed_symbols", "blocked_symbols", "trading_windows", "created_at",
                 "updated_at", "heartbeat_pause_state", "raw")


@dataclass(frozen=True, slots=True, kw_only=True)
class RiskConfig:
    """One named set of limits for an account (RiskConfiguration). None = the server's default.

    Percentages are percent (5.0 = 5%). `market_regime_thresholds` is e.g. {"high": 3.0, "extreme": 6.0}.
    Empty `allowed_symbols` means every symbol; empty `trading_windows` means always.
    `account_*`: limits on the sum over every trader of the account. `heartbeat_pause_state`: "HALTED" or
    "REDUCING", the pause a missed heartbeat (`heartbeat_timeout_seconds`) causes.
    `is_active`: None (the default) is not sent, and the server saves the configuration active (its default);
    False saves it inactive. A configuration read from a server always has True or False.
    """

    account_id: str
    config_id: str
    is_active: bool | None = None
    daily_max_drawdown_percentage: float | None = None
    weekly_max_drawdown_percentage: float | None = None
    monthly_max_drawdown_percentage: float | None = None
    max_drawdown_percentage: float | None = None
    stop_trading_minutes: int | None = None
    consecutive_loss_threshold: int | None = None
    cooling_off_period_minutes: int | None = None
    max_position_size_percentage: float | None = None
    risk_per_trade_percentage: float | None = None
    max_correlated_exposure_percentage: float | None = None
    volatility_adjustment_factor: float | None = None
    market_regime_thresholds: Mapping[str, float] | None = None
    position_max_drawdown_percentage: float | None = None
    position_trailing_stop_multiplier: float | None = None
    max_order_notional: float | None = None
    max_orders_per_window: int | None = None
    order_rate_window_seconds: int | None = None
    max_order_quantity: float | None = None
    max_position_quantity: float | None = None
    max_open_orders: int | None = None
    price_collar_percentage: float | None = None
    reference_price_max_age_seconds: int | None = None
    duplicate_order_window_ms: int | None = None
    max_daily_notional: float | None = None
    max_daily_orders: int | None = None
    max_fills_per_window: int | None = None
    fill_window_seconds: int | None = None
    pending_order_ttl_seconds: int | None = None
    account_daily_loss_percentage: float | None = None
    account_max_drawdown_percentage: float | None = None
    account_max_gross_exposure: float | None = None
    account_max_net_exposure: float | None = None
    heartbeat_timeout_seconds: int | None = None
    heartbeat_pause_state: str | None = None
    allowed_symbols: tuple[str, ...] = ()
    blocked_symbols: tuple[str, ...] = ()
    trading_windows: tuple[TradingWindow, ...] = ()
    correlation_groups: tuple[CorrelationGroup, ...] = ()
    symbol_configs: tuple[SymbolConfig, ...] = ()
    created_at: datetime | None = None
    updated_at: datetime | None = None
    raw: t.RiskConfiguration | None = field(default=None, repr=False, compare=False)

    def to_proto(self) -> t.RiskConfiguration:
        m = t.RiskConfiguration(account_id=self.account_id, config_id=self.config_id)
        if self.is_active is not None:
            m.is_active = self.is_active
        for name in _optional_fields(RiskConfig, _CONFIG_PLAIN):
            value = getattr(self, name)
            if value is not None:
                setattr(m, name, value)
        if self.heartbeat_pause_state is not None:
            m.heartbeat_pause_state = trading_state_value(self.heartbeat_pause_state)
        if self.market_regime_thresholds is not None:
            m.market_regime_thresholds.CopyFrom(dict_to_struct(self.market_regime_thresholds))
        m.correlation_groups.extend(t.CorrelationGroup(name=g.name, symbols=list(g.symbols))
                                    for g in self.correlation_groups)
        m.symbol_configs.extend(s.to_proto() for s in self.symbol_configs)
        m.allowed_symbols.extend(self.allowed_symbols)
        m.blocked_symbols.extend(self.blocked_symbols)
        m.trading_windows.extend(w.to_proto() for w in self.trading_windows)
        return m

    @classmethod
    def from_proto(cls, m: t.RiskConfiguration) -> RiskConfig:
        optional = {n: getattr(m, n) if has(m, n) else None for n in _optional_fields(cls, _CONFIG_PLAIN)}
        return cls(
            account_id=m.account_id, config_id=m.config_id,
            is_active=m.is_active if m.HasField("is_active") else True,  # absent: the server's default
            market_regime_thresholds=struct_to_dict(m, "market_regime_thresholds"),
            heartbeat_pause_state=(enum_name(t.TradingState, "TRADING_STATE_", m.heartbeat_pause_state)
                                   if m.HasField("heartbeat_pause_state") else None),
            correlation_groups=tuple(CorrelationGroup(g.name, tuple(g.symbols)) for g in m.correlation_groups),
            symbol_configs=tuple(SymbolConfig.from_proto(s) for s in m.symbol_configs),
            allowed_symbols=tuple(m.allowed_symbols), blocked_symbols=tuple(m.blocked_symbols),
            trading_windows=tuple(TradingWindow.from_proto(w) for w in m.trading_windows),
            created_at=ts_to_datetime(m, "created_at"), updated_at=ts_to_datetime(m, "updated_at"), raw=m,
            **optional,
        )


@dataclass(frozen=True, slots=True)
class SavedConfig:
    """The answer to `save_config`: the stored configuration, and whether it was new."""

    config: RiskConfig
    created: bool
    raw: ad.SaveConfigResponse | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBreaker:
    """A circuit breaker: a registered `condition` with its `parameters`, an `action` and a scope.

    `condition`: max_drawdown, daily_loss, consecutive_losses, loss_streak_in_window, equity_floor,
    order_rate, position_drawdown. `action`: pause_trading, reduce_only, close_position, alert.
    Thresholds in `parameters` are fractions as in the seed: {"threshold": 0.1} = 10%. Empty `symbols` /
    `exchanges` mean all. `id`, `created_at`, `updated_at` are set by the server.
    """

    name: str
    account_id: str
    condition: str
    action: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    symbols: tuple[str, ...] = ()
    exchanges: tuple[str, ...] = ()
    enabled: bool = True
    id: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    raw: t.CircuitBreaker | None = field(default=None, repr=False, compare=False)

    def to_proto(self) -> t.CircuitBreaker:
        return t.CircuitBreaker(
            id=self.id, name=self.name, description=self.description, account_id=self.account_id,
            condition=self.condition, action=self.action, parameters=dict_to_struct(self.parameters),
            symbols=list(self.symbols), exchanges=list(self.exchanges), enabled=self.enabled,
        )

    @classmethod
    def from_proto(cls, m: t.CircuitBreaker) -> CircuitBreaker:
        return cls(
            id=m.id, name=m.name, description=m.description, account_id=m.account_id, condition=m.condition,
            action=m.action, parameters=struct_to_dict(m, "parameters") or {}, symbols=tuple(m.symbols),
            exchanges=tuple(m.exchanges), enabled=m.enabled, created_at=ts_to_datetime(m, "created_at"),
            updated_at=ts_to_datetime(m, "updated_at"), raw=m,
        )


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One row of a trader's audit trail."""

    state: RiskState | None
    reason: str
    trace_id: str
    recorded_at: datetime | None
    raw: t.RiskStateHistoryEntry | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_proto(cls, m: t.RiskStateHistoryEntry) -> HistoryEntry:
        return cls(state=_state_or_none(m), reason=m.reason, trace_id=m.trace_id,
                   recorded_at=ts_to_datetime(m, "recorded_at"), raw=m)


@dataclass(frozen=True, slots=True)
class Binding:
    """A trader id and the account it is bound to (AdminService.ListBindings)."""

    trader_id: str
    account_id: str
    trading_state: str
    raw: ad.Binding | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_proto(cls, m: ad.Binding) -> Binding:
        return cls(trader_id=m.trader_id, account_id=m.account_id,
                   trading_state=enum_name(t.TradingState, "TRADING_STATE_", m.trading_state), raw=m)


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing; pass `next_page_token` back to get the next one (empty on the last page)."""

    items: tuple[T, ...]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class ScopePause:
    """A kill switch on a whole account (`account_id`), or on every account (`all_accounts`), as stored: the
    answer of `pause_trading` for those scopes. `trading_state` is "HALTED" or "REDUCING" ("ACTIVE" once lifted);
    `paused_until` None means until resumed; `actor` is who set it and `origin_sidecar` the sidecar it was made
    through. `control_state_version` is the version of the change (from the PauseTradingResponse)."""

    account_id: str
    all_accounts: bool
    trading_state: str
    paused_until: datetime | None
    reason: str
    actor: str
    origin_sidecar: str
    since: datetime | None
    control_state_version: int = 0
    raw: ad.ScopePause | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_proto(cls, m: ad.ScopePause, control_state_version: int = 0) -> ScopePause:
        return cls(
            account_id=m.account_id, all_accounts=m.all_accounts,
            trading_state=enum_name(t.TradingState, "TRADING_STATE_", m.trading_state),
            paused_until=ts_to_datetime(m, "paused_until"), reason=m.reason, actor=m.actor,
            origin_sidecar=m.origin_sidecar, since=ts_to_datetime(m, "since"),
            control_state_version=control_state_version, raw=m,
        )

    @classmethod
    def from_response(cls, m: ad.PauseTradingResponse) -> ScopePause:
        """The scope pause an account / every-account PauseTrading answered (an answer without one is invalid)."""
        if not m.HasField("scope_pause"):
            raise InvalidResponseError("an account or every-account pause answered without scope_pause",
                                       method="PauseTrading")
        return cls.from_proto(m.scope_pause, m.control_state_version)


@dataclass(frozen=True, slots=True)
class RiskStateEntry:
    """One trader of an account as ListRiskStates shows it: its `state` (pending orders left out; see
    `state.pending_order_count`), the sidecar owning its live state (`owner_sidecar`, empty when none holds it or
    with a single sidecar), whether the answering sidecar owns it (`local`: live state; otherwise the stored one)
    and how old the state shown is (`age_seconds`)."""

    state: RiskState | None
    owner_sidecar: str
    local: bool
    age_seconds: float
    raw: ad.RiskStateEntry | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_proto(cls, m: ad.RiskStateEntry) -> RiskStateEntry:
        return cls(state=_state_or_none(m), owner_sidecar=m.owner_sidecar, local=m.local,
                   age_seconds=m.age_seconds, raw=m)


@dataclass(frozen=True, slots=True)
class RestoreResult:
    """AdminService.RestoreRiskState's answer: the state restored (a dry run: the state it would restore, nothing
    changed), the history row it came from (`recorded_at`, `recorded_reason`) and the state before."""

    state: RiskState | None
    recorded_at: datetime | None
    recorded_reason: str
    dry_run: bool
    previous_state: RiskState | None
    raw: ad.RestoreRiskStateResponse | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_proto(cls, m: ad.RestoreRiskStateResponse) -> RestoreResult:
        return cls(state=_state_or_none(m), recorded_at=ts_to_datetime(m, "recorded_at"),
                   recorded_reason=m.recorded_reason, dry_run=m.dry_run,
                   previous_state=_state_or_none(m, "previous_state"), raw=m)
