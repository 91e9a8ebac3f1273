"""Write-through and reads of a RiskStore: configurations, breakers, breaker events, history, trades, flags, and
the start-up load. Each method is one transaction on the database thread (`Database.call`: bounded by
`call_timeout_s`, database errors mapped to store errors); the SQL is in store.sql."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from sqlalchemy import Connection

from ..cluster import changes
from ..cluster.changes import ControlChange
from . import sql
from .dbthread import LOAD_TIMEOUT_S, Database, lift_statement_timeout
from .records import BreakerEventRecord, BreakerRecord, ConfigRecord, FlagsRecord, HistoryRecord, LoadedState

Flush = Callable[[float | None], Awaitable[bool]]
T = TypeVar("T")


def _with(fn: Callable[[Connection], T], change: ControlChange | None) -> Callable[[Connection], T]:
    """`fn`, then (in the same transaction, last) the control_changes row that records it."""
    if change is None:
        return fn

    def both(conn: Connection) -> T:
        result = fn(conn)
        changes.append_change(conn, change)
        return result

    return both


class Repository:
    """The store's tables as calls. `flush` writes what is queued first, where a read must see it."""

    def __init__(self, db: Database, clock: Callable[[], float], flush: Flush) -> None:
        self.db = db
        self.clock = clock  # timestamps of admin writes (created_at, updated_at)
        self.flush = flush

    async def load(self) -> LoadedState:
        """Everything the sidecar restores at start (no caller-side bound: start-up and recovery, not a request;
        on the database thread, the deadline LOAD_TIMEOUT_S: a load interrupted by it is retried by the caller)."""

        def load(conn: Connection) -> LoadedState:
            lift_statement_timeout(conn)  # a big database may take longer; lock_timeout still applies
            return LoadedState(
                traders=sql.load_states(conn),
                configs=sql.get_configs(conn),
                breakers=sql.list_breakers(conn),
                flags=sql.load_flags(conn),
                trade_ids=sql.load_trade_ids(conn),
                control_version=changes.max_version(conn),
            )

        return await self.db.call(load, write=False, bounded=False, deadline_s=LOAD_TIMEOUT_S)

    # ---- trades --------------------------------------------------------------------------------------

    async def known_trade_ids(self, trader_id: str, trade_ids: Sequence[str]) -> set[str]:
        """Which of `trade_ids` are in trade_reports for the trader (ids older than those kept in memory)."""
        return await self.db.call(lambda conn: sql.known_trade_ids(conn, trader_id, trade_ids), write=False)

    # ---- configurations ------------------------------------------------------------------------------

    async def save_config(self, cfg: ConfigRecord, change: ControlChange | None = None) -> tuple[ConfigRecord, bool]:
        """Insert or replace a configuration and its symbol configs (created_at is kept). Saving an active
        one deactivates the account's others in the same transaction. Returns (stored, created)."""
        now = self.clock()
        return await self.db.call(_with(lambda conn: sql.save_config(conn, cfg, now), change), write=True)

    async def delete_config(self, account_id: str, config_id: str, change: ControlChange | None = None) -> None:
        """Raises NotFound when there is no such configuration."""
        await self.db.call(_with(lambda conn: sql.delete_config(conn, account_id, config_id), change), write=True)

    async def get_configs(self, account_id: str) -> list[ConfigRecord]:
        """The account's configurations, by config_id."""
        return await self.db.call(lambda conn: sql.get_configs(conn, account_id), write=False)

    # ---- breakers ------------------------------------------------------------------------------------

    async def save_breaker(self, breaker: BreakerRecord, change: ControlChange | None = None) -> BreakerRecord:
        """Create a breaker; an empty id gets a uuid. Conflict when the name is taken in the account."""
        now = self.clock()
        return await self.db.call(_with(lambda conn: sql.create_breaker(conn, breaker, now), change), write=True)

    async def update_breaker(self, breaker: BreakerRecord, change: ControlChange | None = None) -> BreakerRecord:
        """Replace the definition of breaker `breaker.id` (account and created_at stay). NotFound, Conflict."""
        now = self.clock()
        return await self.db.call(_with(lambda conn: sql.update_breaker(conn, breaker, now), change), write=True)

    async def set_breaker_enabled(self, breaker_id: str, enabled: bool,
                                  change: ControlChange | None = None) -> BreakerRecord:
        """Enable or disable a breaker. NotFound."""
        now = self.clock()
        return await self.db.call(_with(lambda conn: sql.set_breaker_enabled(conn, breaker_id, enabled, now), change),
                                  write=True)

    async def delete_breaker(self, breaker_id: str, change: ControlChange | None = None) -> None:
        """Delete a breaker (its events stay). NotFound."""
        await self.db.call(_with(lambda conn: sql.delete_breaker(conn, breaker_id), change), write=True)

    async def get_breaker(self, breaker_id: str) -> BreakerRecord:
        """NotFound when there is no such breaker."""
        return await self.db.call(lambda conn: sql.get_breaker(conn, breaker_id), write=False)

    async def list_breakers(self, account_id: str) -> list[BreakerRecord]:
        """The account's breakers, by name."""
        return await self.db.call(lambda conn: sql.list_breakers(conn, account_id), write=False)

    # ---- flags ---------------------------------------------------------------------------------------

    async def save_flags(self, flags: FlagsRecord, change: ControlChange | None = None) -> FlagsRecord:
        """Store both flags; returns them with updated_at."""
        now = self.clock()
        return await self.db.call(_with(lambda conn: sql.save_flags(conn, flags, now), change), write=True)

    async def get_flags(self) -> FlagsRecord | None:
        """The stored flags (None: never saved)."""
        return await self.db.call(sql.load_flags, write=False)

    # ---- the control-state log (cluster.changes) -------------------------------------------------------

    async def append_change(self, change: ControlChange) -> int:
        """A change that is nothing but its row (a pause, a resume): committed on its own; returns its version."""
        return await self.db.call(lambda conn: changes.append_change(conn, change), write=True)

    async def changes_since(self, version: int, limit: int = 1000) -> list[ControlChange]:
        return await self.db.call(lambda conn: changes.changes_since(conn, version, limit), write=False)

    async def trader_changes(self, trader_id: str) -> list[ControlChange]:
        return await self.db.call(lambda conn: changes.trader_changes(conn, trader_id), write=False)

    async def scope_changes(self) -> list[ControlChange]:
        return await self.db.call(changes.scope_changes, write=False)

    async def trader_stored(self, trader_id: str) -> bool:
        """Whether a risk_state row exists for the trader (some sidecar has held it)."""
        return await self.db.call(lambda conn: sql.trader_stored(conn, trader_id), write=False)

    # ---- paged reads of what the writer wrote --------------------------------------------------------

    async def list_history(
        self, trader_id: str, start: float | None, end: float | None, limit: int, after_id: int | None = None
    ) -> tuple[list[HistoryRecord], int | None]:
        """A trader's history in the order recorded, start <= recorded_at < end; next_cursor is None on the
        last page. Queued rows are flushed first (for up to a second), so a change just made is listed."""
        await self.flush(1.0)
        return await self.db.call(lambda conn: sql.list_history(conn, trader_id, start, end, limit, after_id),
                                  write=False)

    async def list_events(
        self, account_id: str | None, breaker_id: str | None, limit: int, before_cursor: str | None = None
    ) -> tuple[list[BreakerEventRecord], str | None]:
        """Breaker events, newest first; next_cursor is None on the last page. Raises BadCursor for a cursor
        it did not hand out. Queued events are flushed first (for up to a second)."""
        await self.flush(1.0)
        return await self.db.call(lambda conn: sql.list_events(conn, account_id, breaker_id, limit, before_cursor),
                                  write=False)
