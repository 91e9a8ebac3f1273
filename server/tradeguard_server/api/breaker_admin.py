"""AdminService CreateBreaker / GetBreaker / ListBreakers / UpdateBreaker / DeleteBreaker / EnableBreaker /
DisableBreaker / ListBreakerEvents.

Write-through: every change is awaited in the store first; only when it committed do the in-memory copy
and the evaluator change, so a failed write never leaves the sidecar enforcing what the store does not hold.
Reads of definitions answer from the in-memory copy (what is being enforced); events come from the store.
Writes are serialized by a lock, so the store and memory see them in the same order.

`enabled` in CreateBreaker: proto3 cannot tell an omitted bool from false, so a new breaker always starts
enabled (stage one with action "alert", or create then DisableBreaker). UpdateBreaker keeps the current
enabled state; Enable/DisableBreaker change it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar, cast

import grpc
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import Struct, Value

from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import types_pb2 as t

from ..engine.breakers import DEFAULT, BreakerFiring, Evaluator, Registry
from ..engine.clock import Clock, SystemClock
from ..store.errors import BadCursor, Conflict, StoreUnavailable, unsaved
from ..store.errors import NotFound as StoreNotFound
from ..store.records import BreakerEventRecord, BreakerRecord
from . import convert
from .errors import AlreadyExists, NotFound, Unavailable
from .validation import Violations

log = logging.getLogger("tradeguard.admin")

T = TypeVar("T")
Ctx = grpc.aio.ServicerContext[Any, Any]
Handlers = dict[str, tuple[type[Message], Callable[[Any, Ctx], Awaitable[Message]]]]

NAME_MAX = 64
DESCRIPTION_MAX = 1024
SCOPE_MAX = 100
PAGE_DEFAULT = 100
PAGE_MAX = 1000
RECENT_EVENTS_KEPT = 1000  # listed from memory while persistence is off (memory only)
MEMORY_CURSOR = "mem:"
ENABLED_HAS_PRESENCE = t.CircuitBreaker.DESCRIPTOR.fields_by_name["enabled"].has_presence


# ---- the store interface this module uses ----------------------------------------------------------


class BreakerStore(Protocol):
    """What breaker admin needs of store.protocol.Store (RiskStore and MemoryStore implement it)."""

    async def save_breaker(self, breaker: BreakerRecord) -> BreakerRecord: ...

    async def update_breaker(self, breaker: BreakerRecord) -> BreakerRecord: ...

    async def set_breaker_enabled(self, breaker_id: str, enabled: bool) -> BreakerRecord: ...

    async def delete_breaker(self, breaker_id: str) -> None: ...

    async def list_events(
        self, account_id: str | None, breaker_id: str | None, limit: int, before_cursor: str | None = None
    ) -> tuple[list[BreakerEventRecord], str | None]: ...

    def enqueue_event(self, rec: BreakerEventRecord) -> None: ...


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
        timestamp=convert.ts(r.timestamp), triggered_values=struct(r.triggered_values), action_taken=r.action_taken,
        action_result=struct(r.action_result),
        positions_affected=[t.PositionRef(symbol=p.get("symbol", ""), exchange=p.get("exchange", ""))
                            for p in r.positions_affected],
        shadow=r.shadow,
    )


def event_record(f: BreakerFiring) -> BreakerEventRecord:
    return BreakerEventRecord(
        id=f.event_id, breaker_id=f.breaker_id, trader_id=f.trader_id, account_id=f.account_id, timestamp=f.at,
        triggered_values=dict(f.triggered_values), action_taken=f.action, action_result=dict(f.action_result),
        positions_affected=[{"symbol": s, "exchange": e} for s, e in f.positions_affected], shadow=f.shadow,
    )


def caller(ctx: Ctx | None) -> str:
    """Who made an admin call, for the log (the peer; never the token)."""
    return (ctx.peer() if ctx is not None else "") or "unknown"


# ---- validation -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Definition:
    """A validated CircuitBreaker message."""

    name: str
    description: str
    account_id: str
    condition: str
    action: str
    parameters: dict[str, Any]
    symbols: list[str] | None
    exchanges: list[str] | None


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
    """`enabled` when the client set it (only knowable once the field has presence), else None."""
    if ENABLED_HAS_PRESENCE and cast(Any, b).HasField("enabled"):
        return bool(b.enabled)
    return None


# ---- the service ------------------------------------------------------------------------------------


class BreakerAdmin:
    """Circuit breaker definitions: validated, written through the store, installed in the evaluator."""

    def __init__(
        self,
        evaluator: Evaluator,
        store: BreakerStore,
        *,
        clock: Clock | None = None,
        registry: Registry = DEFAULT,
    ) -> None:
        self.evaluator = evaluator
        self.store = store
        self.clock = clock or SystemClock()
        self.registry = registry
        self.records: dict[str, BreakerRecord] = {}
        self._lock = asyncio.Lock()
        self._recent: deque[tuple[int, BreakerEventRecord]] = deque(maxlen=RECENT_EVENTS_KEPT)
        self._seq = 0

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
        }

    def load(self, records: Iterable[BreakerRecord]) -> None:
        """Install the breakers loaded from the store at start (invalid ones are logged and not enforced)."""
        records = [replace(r, symbols=r.symbols and [s.upper() for s in r.symbols],  # stored before names
                           exchanges=r.exchanges and [e.lower() for e in r.exchanges])  # were normalized
                   for r in records]
        for r in records:
            self.records[r.id] = r
        self.evaluator.load(records)

    def record_event(self, firing: BreakerFiring) -> None:
        """The evaluator's on_fire listener: queue the circuit_breaker_events row (never dropped), and keep
        the latest events in memory for ListBreakerEvents while persistence is off."""
        record = event_record(firing)
        self._seq += 1
        self._recent.append((self._seq, record))
        self.store.enqueue_event(record)

    # ---- helpers --------------------------------------------------------------------------------

    async def _write(self, op: Awaitable[T], what: str) -> T:
        try:
            return await op
        except StoreUnavailable as exc:
            raise Unavailable(f"{unsaved(what, exc)}; retry later") from None
        except Conflict as exc:
            raise AlreadyExists(str(exc)) from None
        except StoreNotFound as exc:
            raise NotFound(str(exc)) from None

    def _find(self, breaker_id: str, field_name: str = "breaker_id") -> BreakerRecord:
        v = Violations()
        v.identifier(field_name, breaker_id)
        v.raise_if_any()
        record = self.records.get(breaker_id)
        if record is None:
            raise NotFound(f"no circuit breaker {breaker_id!r}")
        return record

    def _check_name(self, account_id: str, name: str, breaker_id: str = "") -> None:
        for other in self.records.values():
            if other.account_id == account_id and other.name == name and other.id != breaker_id:
                raise AlreadyExists(f"account {account_id!r} already has a circuit breaker named {name!r} "
                                    f"(id {other.id})")

    def _install(self, record: BreakerRecord) -> None:
        self.records[record.id] = record
        self.evaluator.install(record)

    # ---- RPCs -----------------------------------------------------------------------------------

    async def create_breaker(self, req: ad.CreateBreakerRequest, ctx: Ctx) -> ad.CreateBreakerResponse:
        v = Violations()
        if not req.HasField("breaker"):
            v.add("breaker", "required")
            v.raise_if_any()
        d = validate_breaker(v, req.breaker, self.registry)
        v.raise_if_any()
        enabled = _enabled_given(req.breaker)
        async with self._lock:
            self._check_name(d.account_id, d.name)
            now = self.clock.now()
            record = BreakerRecord(
                id="", name=d.name, description=d.description, account_id=d.account_id,  # the store assigns the id
                condition=d.condition, action=d.action, parameters=d.parameters, symbols=d.symbols,
                exchanges=d.exchanges, enabled=True if enabled is None else enabled, created_at=now, updated_at=now,
            )
            record = await self._write(self.store.save_breaker(record), "breaker")
            self._install(record)
        log.warning("circuit breaker %s %r created for account %s by %s: %s %s -> %s", record.id, record.name,
                    record.account_id, caller(ctx), record.condition, record.parameters, record.action)
        return ad.CreateBreakerResponse(breaker=breaker_msg(record))

    async def get_breaker(self, req: ad.GetBreakerRequest, _ctx: Ctx) -> ad.GetBreakerResponse:
        return ad.GetBreakerResponse(breaker=breaker_msg(self._find(req.breaker_id)))

    async def list_breakers(self, req: ad.ListBreakersRequest, _ctx: Ctx) -> ad.ListBreakersResponse:
        v = Violations()
        v.identifier("account_id", req.account_id)
        v.raise_if_any()
        rows = sorted((r for r in self.records.values() if r.account_id == req.account_id),
                      key=lambda r: (r.name, r.id))
        return ad.ListBreakersResponse(breakers=[breaker_msg(r) for r in rows])

    async def update_breaker(self, req: ad.UpdateBreakerRequest, ctx: Ctx) -> ad.UpdateBreakerResponse:
        v = Violations()
        v.identifier("breaker_id", req.breaker_id)
        if not req.HasField("breaker"):
            v.add("breaker", "required")
        v.raise_if_any()
        b = req.breaker
        async with self._lock:
            existing = self._find(req.breaker_id)
            if b.id and b.id != existing.id:
                v.add("breaker.id", f"cannot change (is {existing.id!r}); leave it empty or equal to breaker_id")
            if not b.account_id:
                b.account_id = existing.account_id
            elif b.account_id != existing.account_id:
                v.add("breaker.account_id", f"cannot change (is {existing.account_id!r})")
            d = validate_breaker(v, b, self.registry)
            v.raise_if_any()
            self._check_name(d.account_id, d.name, existing.id)
            enabled = _enabled_given(b)
            record = replace(
                existing, name=d.name, description=d.description, condition=d.condition, action=d.action,
                parameters=d.parameters, symbols=d.symbols, exchanges=d.exchanges,
                enabled=existing.enabled if enabled is None else enabled, updated_at=self.clock.now(),
            )
            record = await self._write(self.store.update_breaker(record), "breaker update")
            self._install(record)
        log.warning("circuit breaker %s %r updated by %s: %s %s -> %s", record.id, record.name, caller(ctx),
                    record.condition, record.parameters, record.action)
        return ad.UpdateBreakerResponse(breaker=breaker_msg(record))

    async def delete_breaker(self, req: ad.DeleteBreakerRequest, ctx: Ctx) -> ad.DeleteBreakerResponse:
        async with self._lock:
            existing = self._find(req.breaker_id)
            await self._write(self.store.delete_breaker(existing.id), "breaker deletion")
            self.records.pop(existing.id, None)
            self.evaluator.remove(existing.id)
        log.warning("circuit breaker %s %r deleted by %s", existing.id, existing.name, caller(ctx))
        return ad.DeleteBreakerResponse()

    async def _set_enabled(self, breaker_id: str, enabled: bool, ctx: Ctx) -> BreakerRecord:
        async with self._lock:
            existing = self._find(breaker_id)
            if existing.enabled == enabled:
                if enabled:
                    self.evaluator.rearm(existing.id)
                return existing
            record = await self._write(self.store.set_breaker_enabled(existing.id, enabled), "breaker state")
            self._install(record)
        log.warning("circuit breaker %s %r %s by %s", record.id, record.name, "enabled" if enabled else "disabled",
                    caller(ctx))
        return record

    async def enable_breaker(self, req: ad.EnableBreakerRequest, ctx: Ctx) -> ad.EnableBreakerResponse:
        return ad.EnableBreakerResponse(breaker=breaker_msg(await self._set_enabled(req.breaker_id, True, ctx)))

    async def disable_breaker(self, req: ad.DisableBreakerRequest, ctx: Ctx) -> ad.DisableBreakerResponse:
        return ad.DisableBreakerResponse(breaker=breaker_msg(await self._set_enabled(req.breaker_id, False, ctx)))

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
        account_id, breaker_id, limit = req.account_id or None, req.breaker_id or None, req.page_size or PAGE_DEFAULT
        if not getattr(self.store, "persistence_enabled", True) or req.page_token.startswith(MEMORY_CURSOR):
            rows, cursor = self._recent_events(v, account_id, breaker_id, limit, req.page_token)
            return ad.ListBreakerEventsResponse(events=[event_msg(r) for r in rows], next_page_token=cursor or "")
        try:
            rows, cursor = await self.store.list_events(account_id, breaker_id, limit, req.page_token or None)
        except StoreUnavailable as exc:
            raise Unavailable(f"store unavailable; retry: {exc}") from None
        except BadCursor:
            v.add("page_token", "not a page token from a previous ListBreakerEvents response")
            v.raise_if_any()
            raise
        return ad.ListBreakerEventsResponse(events=[event_msg(r) for r in rows], next_page_token=cursor or "")

    def _recent_events(
        self, v: Violations, account_id: str | None, breaker_id: str | None, limit: int, token: str
    ) -> tuple[list[BreakerEventRecord], str | None]:
        """Memory only: page over the latest RECENT_EVENTS_KEPT events, newest first."""
        before: int | None = None
        if token:
            seq = token.removeprefix(MEMORY_CURSOR)
            if not token.startswith(MEMORY_CURSOR) or not (seq.isascii() and seq.isdigit() and len(seq) <= 18):
                v.add("page_token", "not a page token from a previous ListBreakerEvents response")
                v.raise_if_any()
            before = int(seq)
        page: list[tuple[int, BreakerEventRecord]] = []
        for seq_no, r in reversed(self._recent):
            if before is not None and seq_no >= before:
                continue
            if account_id is not None and r.account_id != account_id:
                continue
            if breaker_id is not None and r.breaker_id != breaker_id:
                continue
            if len(page) == limit:
                return [r for _, r in page], f"{MEMORY_CURSOR}{page[-1][0]}"
            page.append((seq_no, r))
        return [r for _, r in page], None
