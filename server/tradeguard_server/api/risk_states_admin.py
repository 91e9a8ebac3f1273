"""AdminService.ListRiskStates: every trader of an account with its state, owner sidecar and freshness.

- Cluster mode (PostgreSQL): the account's risk_state rows, each with its lease (owner_sidecar: the sidecar whose
  lease is live; empty when none holds it now), with the states this sidecar owns overlaid from memory
  (local=true, live). A trader another sidecar owns shows the state its owner last wrote (age_seconds says how
  old: now - its updated_at).
- Single mode (SQLite, memory): the engine's memory; owner_sidecar is empty, local is true.

Ordered by trader_id; page_size 0 = 100, at most 1000; page_token = the last trader_id of the previous page; the
trading_state filter (UNSPECIFIED = every state) applies to the state now (a pause that ended is ACTIVE).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import Message
from sqlalchemy import Connection

from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import types_pb2 as t

from ..engine.engine import RiskEngine
from ..engine.snapshot import from_record
from ..engine.state import TraderState
from . import convert
from .errors import store_errors
from .validation import Violations

if TYPE_CHECKING:
    from ..cluster.takeover import Takeover

PAGE_DEFAULT = 100
PAGE_MAX = 1000
DB_CHUNK = 500  # risk_state rows read per round while a page fills (a filter may skip many)
STATES = frozenset(v for v in t.TradingState.values() if v)
Ctx = grpc.aio.ServicerContext[Any, Any]
Handlers = dict[str, tuple[type[Message], Callable[[Any, Ctx], Awaitable[Message]]]]


def _reader(account_id: str, after: str) -> Callable[[Connection], list[Any]]:
    from ..cluster import leases

    return lambda conn: leases.account_rows(conn, account_id, after, DB_CHUNK)


class RiskStatesAdmin:
    """`owners` None: single mode (memory only)."""

    def __init__(self, engine: RiskEngine, owners: Takeover | None = None, sidecar_name: str = "") -> None:
        self.engine = engine
        self.owners = owners
        self.sidecar_name = sidecar_name

    def handlers(self) -> Handlers:
        return {"ListRiskStates": (ad.ListRiskStatesRequest, self.list_risk_states)}

    def _entry(self, st: TraderState, now: float, owner: str, local: bool) -> ad.RiskStateEntry:
        config_id = self.engine.limits_for(st.account_id).config_id
        return ad.RiskStateEntry(state=convert.state_msg(st, now, config_id, orders=False), owner_sidecar=owner,
                                 local=local, age_seconds=max(0.0, now - st.updated_at) if st.updated_at else 0.0)

    async def list_risk_states(self, req: ad.ListRiskStatesRequest, _ctx: Ctx) -> ad.ListRiskStatesResponse:
        v = Violations()
        v.identifier("account_id", req.account_id)
        if req.trading_state and req.trading_state not in STATES:
            v.add("trading_state", f"unknown TradingState value {req.trading_state}")
        if not 0 <= req.page_size <= PAGE_MAX:
            v.add("page_size", f"must be in [0, {PAGE_MAX}] (0 means {PAGE_DEFAULT}), got {req.page_size}")
        token = Violations()
        token.identifier("page_token", req.page_token, required=False)
        if token.items:
            v.add("page_token", "not a page token from a previous ListRiskStates response (it is the last trader_id "
                                "of a page)")
        v.raise_if_any()
        size = req.page_size or PAGE_DEFAULT
        account, after, wanted = req.account_id, req.page_token, req.trading_state
        engine, owners = self.engine, self.owners
        now = engine.clock.now()
        local = {tid: st for tid, st in engine.traders.items()
                 if st.account_id == account and tid > after and (owners is None or tid in owners.owned)}
        entries: list[ad.RiskStateEntry] = []

        def take(st: TraderState, owner: str, is_local: bool) -> None:
            if not wanted or convert.STATE[st.trading_state(now)] == wanted:
                entries.append(self._entry(st, now, owner, is_local))

        if owners is None:
            for tid in sorted(local):
                take(local[tid], "", True)
                if len(entries) > size:
                    break
        else:
            cursor, done = after, False
            while len(entries) <= size and not done:
                with store_errors():
                    rows = await owners.run(_reader(account, cursor))
                done = len(rows) < DB_CHUNK
                upper = None if done else rows[-1].state.trader_id
                merged: dict[str, tuple[TraderState, str, bool]] = {}
                for row in rows:
                    lease = row.lease
                    owner = lease.owner if lease is not None and lease.live else ""
                    merged[row.state.trader_id] = (from_record(row.state), owner, False)
                for tid, st in local.items():
                    if tid > cursor and (upper is None or tid <= upper):
                        merged[tid] = (st, self.sidecar_name, True)  # live here: memory beats the stored row
                for tid in sorted(merged):
                    take(*merged[tid])
                    if len(entries) > size:
                        break
                if upper is not None:
                    cursor = upper
        reply = ad.ListRiskStatesResponse(entries=entries[:size])
        if len(entries) > size:
            reply.next_page_token = entries[size - 1].state.trader_id
        return reply
