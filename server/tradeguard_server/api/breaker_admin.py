"""AdminService CreateBreaker / GetBreaker / ListBreakers / UpdateBreaker / DeleteBreaker / EnableBreaker /
DisableBreaker / ListBreakerEvents / LogBreakerEvent: requests validated and converted for the breaker service
(services/breakers.py), its records answered as CircuitBreaker / CircuitBreakerEvent messages.

`enabled` (optional, so an omitted value is told from false): CreateBreaker without it creates an enabled
breaker (the seed's default), with `enabled: false` a disabled one. UpdateBreaker without it keeps the current
state; Enable/DisableBreaker change it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import Struct, Value

from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import types_pb2 as t

from ..engine.breakers import DEFAULT, Registry
from ..services.breakers import BreakerService, Definition
from ..store.errors import BadCursor
from ..store.records import BreakerEventRecord, BreakerRecord
from . import convert
from .errors import store_errors
from .masks import apply_mask, check_mask, partial
from .validation import Violations

Ctx = grpc.aio.ServicerContext[Any, Any]
Handlers = dict[str, tuple[type[Message], Callable[[Any, Ctx], Awaitable[Message]]]]

NAME_MAX = 64
DESCRIPTION_MAX = 1024
SCOPE_MAX = 100
PAGE_DEFAULT = 100
PAGE_MAX = 1000
ACTION_TAKEN_MAX = 32  # circuit_breaker_events.action_taken
EVENT_JSON_MAX = 16 * 1024  # triggered_values, action_result: bytes of JSON each
# UpdateBreaker's update_mask: the definition's fields; identity and timestamps change nothing.
BREAKER_MASK_PATHS = frozenset({"name", "description", "condition", "action", "parameters", "symbols", "exchanges",
                                "enabled"})
BREAKER_MASK_IGNORED = frozenset({"id", "account_id", "created_at", "updated_at"})
FUTURE_SKEW_SECONDS = 60.0  # a logged event's timestamp may be this far ahead of the sidecar's clock


# ---- conversions ----------------------------------------------------------------------------------


def struct(values: dict[str, Any]) -> Struct:
    msg = Struct()
    msg.update(values)
    return msg


def struct_values(msg: Struct) -> dict[str, Any]:
    """A Struct as plain Python values. Unlike json_format.MessageToDict it never raises: NaN and infinities
    stay floats, so validation names the parameter instead of the handler failing (INTERNAL)."""
    return {key: _plain(value) for key, value in msg.fields.items()}


def _plain(value: Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return struct_values(value.struct_value)
    if kind == "list_value":
        return [_plain(item) for item in value.list_value.values]
    if kind is None or kind == "null_value":
        return None
    return getattr(value, kind)


def breaker_msg(r: BreakerRecord) -> t.CircuitBreaker:
    msg = t.CircuitBreaker(
        id=r.id, name=r.name, description=r.description, account_id=r.account_id, condition=r.condition,
        action=r.action, parameters=struct(r.parameters), symbols=r.symbols or [], exchanges=r.exchanges or [],
        enabled=r.enabled,
    )
    if r.created_at is not None:
        msg.created_at.CopyFrom(convert.ts(r.created_at))
    if r.updated_at is not None:
        msg.updated_at.CopyFrom(convert.ts(r.updated_at))
    return msg


def event_msg(r: BreakerEventRecord) -> t.CircuitBreakerEvent:
    return t.CircuitBreakerEvent(
        id=r.id, breaker_id=r.breaker_id, trader_id=r.trader_id, account_id=r.account_id,
        timestamp=convert.ts_micros(r.timestamp),  # the row's precision: LogBreakerEvent answers what is listed
        triggered_values=struct(r.triggered_values), action_taken=r.action_taken,
        action_result=struct(r.action_result),
        positions_affected=[t.PositionRef(symbol=p.get("symbol", ""), exchange=p.get("exchange", ""))
                            for p in r.positions_affected],
        shadow=r.shadow,
    )


# ---- validation -----------------------------------------------------------------------------------


def _scope_list(v: Violations, field_name: str, values: Iterable[str]) -> list[str] | None:
    items = list(values)
    if len(items) > SCOPE_MAX:
        v.add(field_name, f"too many: {len(items)}, at most {SCOPE_MAX}")
        return None
    seen: set[str] = set()
    for i, item in enumerate(items):
        v.identifier(f"{field_name}[{i}]", item)
        if item in seen:
            v.add(f"{field_name}[{i}]", f"duplicate {item!r}")
        seen.add(item)
    return items or None


def validate_breaker(v: Violations, b: t.CircuitBreaker, registry: Registry, prefix: str = "breaker") -> Definition:
    """Every field of a CircuitBreaker definition (not id, enabled or timestamps). Adds to `v`."""
    if not b.name:
        v.add(f"{prefix}.name", f"required, 1-{NAME_MAX} characters")
    elif len(b.name) > NAME_MAX:
        v.add(f"{prefix}.name", f"too long: {len(b.name)} characters, at most {NAME_MAX}")
    elif not b.name.isprintable() or b.name.strip() != b.name:
        v.add(f"{prefix}.name", "only printable characters, no leading or trailing spaces")
    v.text(f"{prefix}.description", b.description, DESCRIPTION_MAX)
    v.identifier(f"{prefix}.account_id", b.account_id)
    raw: dict[str, Any] = struct_values(b.parameters) if b.HasField("parameters") else {}
    params, problems = registry.validate(b.condition, b.action, raw, prefix)
    for problem in problems:
        v.add(*problem)
    symbols = _scope_list(v, f"{prefix}.symbols", [s.upper() for s in b.symbols])  # README "Names"
    exchanges = _scope_list(v, f"{prefix}.exchanges", [e.lower() for e in b.exchanges])
    return Definition(b.name, b.description, b.account_id, b.condition, b.action, dict(params), symbols, exchanges)


def _enabled_given(b: t.CircuitBreaker) -> bool | None:
    """`enabled` when the client set it, else None."""
    if b.HasField("enabled"):
        return bool(b.enabled)
    return None


def _json_values(v: Violations, field_name: str, msg: Struct) -> dict[str, Any]:
    """A Struct of a logged event as plain values: finite numbers only (the row is JSON), at most EVENT_JSON_MAX."""
    values = struct_values(msg)
    try:
        size = len(json.dumps(values, allow_nan=False))
    except ValueError:
        v.add(field_name, "numbers must be finite (no NaN or infinity)")
        return values
    if size > EVENT_JSON_MAX:
        v.add(field_name, f"too large: {size} bytes of JSON, at most {EVENT_JSON_MAX}")
    return values


def _check_id(breaker_id: str) -> None:
    v = Violations()
    v.identifier("breaker_id", breaker_id)
    v.raise_if_any()


# ---- the servicer ---------------------------------------------------------------------------------


class BreakerAdmin:
    """Handlers of the circuit breaker RPCs."""

    def __init__(self, service: BreakerService, *, registry: Registry = DEFAULT,
                 bound_account: Callable[[str], str | None] | None = None) -> None:
        self.service = service
        self.registry = registry
        # The account a trader id is bound to (None: a trader not known here): LogBreakerEvent refuses an event
        # naming a trader of another account than the breaker's.
        self.bound_account = bound_account

    def handlers(self) -> Handlers:
        return {
            "CreateBreaker": (ad.CreateBreakerRequest, self.create_breaker),
            "GetBreaker": (ad.GetBreakerRequest, self.get_breaker),
            "ListBreakers": (ad.ListBreakersRequest, self.list_breakers),
            "UpdateBreaker": (ad.UpdateBreakerRequest, self.update_breaker),
            "DeleteBreaker": (ad.DeleteBreakerRequest, self.delete_breaker),
            "EnableBreaker": (ad.EnableBreakerRequest, self.enable_breaker),
            "DisableBreaker": (ad.DisableBreakerRequest, self.disable_breaker),
            "ListBreakerEvents": (ad.ListBreakerEventsRequest, self.list_breaker_events),
            "LogBreakerEvent": (ad.LogBreakerEventRequest, self.log_breaker_event),
        }

    # ---- RPCs -----------------------------------------------------------------------------------

    async def create_breaker(self, req: ad.CreateBreakerRequest, ctx: Ctx) -> ad.CreateBreakerResponse:
        v = Violations()
        if not req.HasField("breaker"):
            v.add("breaker", "required")
            v.raise_if_any()
        d = validate_breaker(v, req.breaker, self.registry)
        v.raise_if_any()
        with store_errors("breaker"):
            record = await self.service.create(d, _enabled_given(req.breaker), convert.caller(ctx))
        return ad.CreateBreakerResponse(breaker=breaker_msg(record))

    async def get_breaker(self, req: ad.GetBreakerRequest, _ctx: Ctx) -> ad.GetBreakerResponse:
        """By breaker_id, or by account_id + name (ETRMS get_by_name): exactly one of the two ways."""
        v = Violations()
        by_name = bool(req.account_id or req.name)
        if req.breaker_id and by_name:
            v.add("breaker_id", "give either breaker_id or account_id and name, not both")
        elif by_name:
            v.identifier("account_id", req.account_id)
            if not req.name:
                v.add("name", "required with account_id (or give breaker_id instead)")
            elif len(req.name) > NAME_MAX:
                v.add("name", f"too long: {len(req.name)} characters, at most {NAME_MAX}")
        elif not req.breaker_id:
            v.add("breaker_id", "required: give breaker_id, or account_id and name")
        else:
            v.identifier("breaker_id", req.breaker_id)
        v.raise_if_any()
        with store_errors():
            record = self.service.by_name(req.account_id, req.name) if by_name else self.service.get(req.breaker_id)
        return ad.GetBreakerResponse(breaker=breaker_msg(record))

    async def list_breakers(self, req: ad.ListBreakersRequest, _ctx: Ctx) -> ad.ListBreakersResponse:
        v = Violations()
        v.identifier("account_id", req.account_id)
        v.raise_if_any()
        return ad.ListBreakersResponse(breakers=[breaker_msg(r) for r in self.service.in_account(req.account_id)])

    async def update_breaker(self, req: ad.UpdateBreakerRequest, ctx: Ctx) -> ad.UpdateBreakerResponse:
        v = Violations()
        v.identifier("breaker_id", req.breaker_id)
        if not req.HasField("breaker"):
            v.add("breaker", "required")
        v.raise_if_any()
        b = req.breaker
        check_mask(v, req.update_mask, BREAKER_MASK_PATHS, BREAKER_MASK_IGNORED)
        v.raise_if_any()
        with store_errors("breaker update"):
            existing = self.service.get(req.breaker_id)
            if partial(req.update_mask):  # AIP-134: the stored definition with the named fields from the request
                b = apply_mask(breaker_msg(existing), b, req.update_mask, BREAKER_MASK_IGNORED)
                b.ClearField("enabled")  # kept unless named (then as given: see below)
                if "enabled" in req.update_mask.paths and req.breaker.HasField("enabled"):
                    b.enabled = req.breaker.enabled
                for name in ("id", "account_id"):  # still checked as given
                    setattr(b, name, getattr(req.breaker, name))
            if b.id and b.id != existing.id:
                v.add("breaker.id", f"cannot change (is {existing.id!r}); leave it empty or equal to breaker_id")
            if not b.account_id:
                b.account_id = existing.account_id
            elif b.account_id != existing.account_id:
                v.add("breaker.account_id", f"cannot change (is {existing.account_id!r})")
            d = validate_breaker(v, b, self.registry)
            v.raise_if_any()
            record = await self.service.update(existing.id, d, _enabled_given(b), convert.caller(ctx))
        return ad.UpdateBreakerResponse(breaker=breaker_msg(record))

    async def delete_breaker(self, req: ad.DeleteBreakerRequest, ctx: Ctx) -> ad.DeleteBreakerResponse:
        _check_id(req.breaker_id)
        with store_errors("breaker deletion"):
            await self.service.delete(req.breaker_id, convert.caller(ctx))
        return ad.DeleteBreakerResponse()

    async def _set_enabled(self, breaker_id: str, enabled: bool, ctx: Ctx) -> t.CircuitBreaker:
        _check_id(breaker_id)
        with store_errors("breaker state"):
            return breaker_msg(await self.service.set_enabled(breaker_id, enabled, convert.caller(ctx)))

    async def enable_breaker(self, req: ad.EnableBreakerRequest, ctx: Ctx) -> ad.EnableBreakerResponse:
        return ad.EnableBreakerResponse(breaker=await self._set_enabled(req.breaker_id, True, ctx))

    async def disable_breaker(self, req: ad.DisableBreakerRequest, ctx: Ctx) -> ad.DisableBreakerResponse:
        return ad.DisableBreakerResponse(breaker=await self._set_enabled(req.breaker_id, False, ctx))

    async def list_breaker_events(
        self, req: ad.ListBreakerEventsRequest, _ctx: Ctx
    ) -> ad.ListBreakerEventsResponse:
        v = Violations()
        v.identifier("breaker_id", req.breaker_id, required=False)
        if not req.breaker_id and not req.account_id:
            v.add("account_id", "required when breaker_id is empty")
        else:
            v.identifier("account_id", req.account_id, required=False)
        if req.page_size < 0 or req.page_size > PAGE_MAX:
            v.add("page_size", f"must be in [0, {PAGE_MAX}] (0 means {PAGE_DEFAULT}), got {req.page_size}")
        v.text("page_token", req.page_token, 256)
        v.raise_if_any()
        with store_errors():
            try:
                rows, cursor = await self.service.list_events(
                    req.account_id or None, req.breaker_id or None, req.page_size or PAGE_DEFAULT,
                    req.page_token or None)
            except BadCursor:
                v.add("page_token", "not a page token from a previous ListBreakerEvents response")
                v.raise_if_any()
                raise
        return ad.ListBreakerEventsResponse(events=[event_msg(r) for r in rows], next_page_token=cursor or "")

    async def log_breaker_event(self, req: ad.LogBreakerEventRequest, ctx: Ctx) -> ad.LogBreakerEventResponse:
        v = Violations()
        v.identifier("breaker_id", req.breaker_id)
        v.identifier("trader_id", req.trader_id, required=False)
        if not req.action_taken:
            v.add("action_taken", f"required, 1-{ACTION_TAKEN_MAX} characters")
        elif len(req.action_taken) > ACTION_TAKEN_MAX:
            v.add("action_taken", f"too long: {len(req.action_taken)} characters, at most {ACTION_TAKEN_MAX}")
        else:
            v.text("action_taken", req.action_taken, ACTION_TAKEN_MAX)
        triggered = _json_values(v, "triggered_values", req.triggered_values)
        result = _json_values(v, "action_result", req.action_result)
        if len(req.positions_affected) > SCOPE_MAX:
            v.add("positions_affected", f"too many: {len(req.positions_affected)}, at most {SCOPE_MAX}")
        positions = []
        for i, p in enumerate(req.positions_affected[:SCOPE_MAX]):
            v.identifier(f"positions_affected[{i}].symbol", p.symbol)
            v.identifier(f"positions_affected[{i}].exchange", p.exchange, required=False)
            positions.append({"symbol": p.symbol.upper(), "exchange": p.exchange.lower()})
        at: float | None = None
        if req.HasField("timestamp"):
            at = convert.to_seconds(req.timestamp)
            if not math.isfinite(at) or at <= 0:
                v.add("timestamp", "must be after 1970-01-01")
            elif at > self.service.clock.now() + FUTURE_SKEW_SECONDS:
                v.add("timestamp", "must not be in the future")
        v.raise_if_any()
        with store_errors("breaker event"):
            if req.trader_id and self.bound_account is not None:
                account = self.service.get(req.breaker_id).account_id
                bound = self.bound_account(req.trader_id)
                if bound is not None and bound != account:  # as ACCOUNT_MISMATCH: the other account is not named
                    v.add("trader_id", f"this trader_id is bound to another account than the breaker's "
                                       f"({account!r}); an operator can list and move bindings "
                                       "(AdminService.ListBindings, RebindTrader)")
                    v.raise_if_any()
            record = await self.service.log_event(req.breaker_id, req.trader_id, at, triggered, req.action_taken,
                                                  result, positions, convert.caller(ctx))
        return ad.LogBreakerEventResponse(event=event_msg(record))
