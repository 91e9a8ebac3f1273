"""AdminService.ListRiskStateHistory: a trader's audit trail from risk_state_history, oldest first.

Each entry is the whole state as recorded: rows store a map (pauses, positions, volatility, symbol_stats) only
when it changed, and the store fills the others in from the row that holds them (store.sql.list_history); when
that row is gone the entry's reason says so and the map is shown empty.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import types_pb2 as t

from ..engine.snapshot import from_record
from ..store.protocol import HistoryReader
from ..store.records import HistoryRecord
from . import convert
from .errors import FailedPrecondition, store_errors
from .validation import Violations

PAGE_DEFAULT = 100
PAGE_MAX = 1000
# A row id as next_page_token writes it: ASCII digits only (str.isdigit takes "²" and "٣", which int() then
# refuses or reads as 3), at most 18 of them (a BIGINT; a bigger number is the database's error, not the client's).
PAGE_TOKEN = re.compile(r"[0-9]{1,18}")
Ctx = grpc.aio.ServicerContext[Any, Any]
Handlers = dict[str, tuple[type[Message], Callable[[Any, Ctx], Awaitable[Message]]]]


def entry_msg(rec: HistoryRecord) -> t.RiskStateHistoryEntry:
    """The state as it was when recorded (its pauses evaluated at that time)."""
    state = convert.state_msg(from_record(rec.state), rec.recorded_at)
    return t.RiskStateHistoryEntry(
        state=state, reason=rec.reason, trace_id=rec.trace_id or "", recorded_at=convert.ts(rec.recorded_at)
    )


class HistoryAdmin:
    """Reads the audit trail from the store (queued rows are flushed first)."""

    def __init__(self, store: HistoryReader, durable: bool) -> None:
        self.store = store
        self.durable = durable

    def handlers(self) -> Handlers:
        return {"ListRiskStateHistory": (ad.ListRiskStateHistoryRequest, self.list_risk_state_history)}

    async def list_risk_state_history(
        self, req: ad.ListRiskStateHistoryRequest, ctx: Ctx
    ) -> ad.ListRiskStateHistoryResponse:
        v = Violations()
        v.identifier("trader_id", req.trader_id)
        v.identifier("account_id", req.account_id)
        start = v.timestamp("start_time", req.start_time, 0.0, allow_future=True)
        end = v.timestamp("end_time", req.end_time, 0.0, allow_future=True)
        if start is not None and end is not None and end <= start:
            v.add("end_time", "must be after start_time")
        if not 0 <= req.page_size <= PAGE_MAX:
            v.add("page_size", f"must be in [0, {PAGE_MAX}] (0 means {PAGE_DEFAULT}), got {req.page_size}")
        after: int | None = None
        if req.page_token:
            if PAGE_TOKEN.fullmatch(req.page_token) is None:
                v.add("page_token", "not a page token from a previous ListRiskStateHistory response")
            else:
                after = int(req.page_token)
        v.raise_if_any()
        if not self.durable:
            raise FailedPrecondition("no history is kept: no database is configured (database_url=memory)")
        with store_errors():
            rows, cursor = await self.store.list_history(
                req.trader_id, start, end, req.page_size or PAGE_DEFAULT, after
            )
        entries = [entry_msg(r) for r in rows if r.account_id == req.account_id]
        return ad.ListRiskStateHistoryResponse(entries=entries, next_page_token="" if cursor is None else str(cursor))
