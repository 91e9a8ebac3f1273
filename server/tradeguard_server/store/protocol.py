"""The store as the layers above see it: narrow protocols, one per job, and `Store`, their union.

Each consumer depends on the protocols it uses; only the composition root (sidecar.py) needs the whole
`Store`. RiskStore (SQLAlchemy) and MemoryStore (tests) implement every one of them.

| protocol            | what                                                   | used by                          |
|---------------------|--------------------------------------------------------|----------------------------------|
| StateQueue          | the hot path: queue a state (+ history row), a trade   | persistence (on_change/on_trade) |
| EventLog            | queue a breaker event; page through stored events      | breaker admin                    |
| BreakerRepository   | breaker definitions, write-through                     | breaker admin                    |
| ConfigRepository    | configurations, write-through                          | config records                   |
| FlagRepository      | the stored feature flags                               | persistence                      |
| TradeLedger         | which trade ids are stored                             | persistence (trade_known)        |
| HistoryReader       | a trader's state history, paged                        | history admin                    |
| StoreLifecycle      | start, load what was stored, close (drain)             | persistence                      |
| HistoryCounters     | history rows enqueued / written / rejected / dropped   | metrics                          |
| StoreHealth         | healthy, its callback, queue depth, writer counters,   | sidecar (health, metrics sampler,|
|                     | flush                                                  | kill-switch answers)             |
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from .records import (
    BreakerEventRecord,
    BreakerRecord,
    ConfigRecord,
    FlagsRecord,
    HistoryRecord,
    LoadedState,
    StateRecord,
    TradeRecord,
)

if TYPE_CHECKING:
    from ..cluster.changes import ControlChange


class StateQueue(Protocol):
    """Never-blocking intake of the hot path: never awaits, never raises; call on the event loop thread."""

    persistence_enabled: bool  # False: nothing is queued (memory only)

    def enqueue_state(self, rec: StateRecord, reason: str, trace_id: str | None, history: bool = True) -> None: ...

    def enqueue_trade(self, rec: TradeRecord) -> None: ...


class EventLog(Protocol):
    """Breaker events: queued like states (never dropped), listed newest first."""

    def enqueue_event(self, rec: BreakerEventRecord) -> None: ...

    async def list_events(
        self, account_id: str | None, breaker_id: str | None, limit: int, before_cursor: str | None = None
    ) -> tuple[list[BreakerEventRecord], str | None]: ...


class BreakerRepository(Protocol):
    """`change`: the control_changes row recording the write, appended in its transaction (cluster.changes)."""

    async def save_breaker(self, breaker: BreakerRecord, change: ControlChange | None = None) -> BreakerRecord: ...

    async def update_breaker(self, breaker: BreakerRecord, change: ControlChange | None = None) -> BreakerRecord: ...

    async def set_breaker_enabled(self, breaker_id: str, enabled: bool,
                                  change: ControlChange | None = None) -> BreakerRecord: ...

    async def delete_breaker(self, breaker_id: str, change: ControlChange | None = None) -> None: ...

    async def get_breaker(self, breaker_id: str) -> BreakerRecord: ...

    async def list_breakers(self, account_id: str) -> list[BreakerRecord]: ...


class BreakerStore(BreakerRepository, EventLog, Protocol):
    """What breaker admin needs: definitions and events."""


class ConfigRepository(Protocol):
    async def save_config(self, cfg: ConfigRecord, change: ControlChange | None = None
                          ) -> tuple[ConfigRecord, bool]: ...

    async def delete_config(self, account_id: str, config_id: str, change: ControlChange | None = None) -> None: ...

    async def get_configs(self, account_id: str) -> list[ConfigRecord]: ...


class FlagRepository(Protocol):
    async def save_flags(self, flags: FlagsRecord, change: ControlChange | None = None) -> FlagsRecord: ...

    async def get_flags(self) -> FlagsRecord | None: ...


class ControlLog(Protocol):
    """The control-state log (cluster.changes): rows appended on their own, and read back."""

    async def append_change(self, change: ControlChange) -> int: ...

    async def changes_since(self, version: int, limit: int = 1000) -> list[ControlChange]: ...

    async def trader_changes(self, trader_id: str) -> list[ControlChange]: ...

    async def scope_changes(self) -> list[ControlChange]: ...

    async def trader_stored(self, trader_id: str) -> bool: ...


class TradeLedger(Protocol):
    async def known_trade_ids(self, trader_id: str, trade_ids: Sequence[str]) -> set[str]: ...


class HistoryReader(Protocol):
    async def list_history(
        self, trader_id: str, start: float | None, end: float | None, limit: int, after_id: int | None = None
    ) -> tuple[list[HistoryRecord], int | None]: ...


class StoreLifecycle(Protocol):
    async def start(self) -> None: ...

    async def load(self) -> LoadedState: ...

    async def close(self, drain_timeout: float) -> int: ...


class PersistenceStore(StateQueue, FlagRepository, TradeLedger, StoreLifecycle, Protocol):
    """What the persistence glue needs: it owns the store's lifecycle and feeds its queue."""


class HistoryCounters(Protocol):
    """History rows, read together at scrape time (by kind: state, history, trade, event)."""

    enqueued: dict[str, int]
    rows_written: dict[str, int]
    rejected: dict[str, int]
    dropped_history: int


class StoreHealth(Protocol):
    """Health and the writer's counters, for health checks and the metrics sampler; `flush` for answers that
    wait until every change so far is committed."""

    on_health_change: Callable[[bool], None] | None  # called on the event loop thread
    attempts: int
    failures: int
    last_persist_latency_ms: float

    @property
    def healthy(self) -> bool: ...

    @property
    def queue_depth(self) -> int: ...

    async def flush(self, timeout: float | None = None) -> bool: ...  # noqa: ASYNC109 - the store's interface


class Store(
    PersistenceStore, BreakerStore, ConfigRepository, HistoryReader, HistoryCounters, StoreHealth, ControlLog,
    Protocol,
):
    """Durable risk state, whole: for the composition root. Everything else takes a narrow protocol above."""
