"""The store as the layers above see it. RiskStore (SQLAlchemy) and MemoryStore (tests) both implement it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

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


class Store(Protocol):
    """Durable risk state: a never-blocking queue for the hot path, write-through for admin changes."""

    persistence_enabled: bool
    on_health_change: Callable[[bool], None] | None
    dropped_history: int
    attempts: int
    failures: int
    last_persist_latency_ms: float
    rows_written: dict[str, int]
    enqueued: dict[str, int]
    rejected: dict[str, int]

    @property
    def healthy(self) -> bool: ...

    @property
    def queue_depth(self) -> int: ...

    async def start(self) -> None: ...

    async def load(self) -> LoadedState: ...

    def enqueue_state(self, rec: StateRecord, reason: str, trace_id: str | None) -> None: ...

    def enqueue_trade(self, rec: TradeRecord) -> None: ...

    def enqueue_event(self, rec: BreakerEventRecord) -> None: ...

    async def flush(self, timeout: float | None = None) -> bool: ...  # noqa: ASYNC109 - the store's interface

    async def close(self, drain_timeout: float) -> int: ...

    async def known_trade_ids(self, trader_id: str, trade_ids: Sequence[str]) -> set[str]: ...

    async def save_config(self, cfg: ConfigRecord) -> tuple[ConfigRecord, bool]: ...

    async def delete_config(self, account_id: str, config_id: str) -> None: ...

    async def get_configs(self, account_id: str) -> list[ConfigRecord]: ...

    async def save_breaker(self, breaker: BreakerRecord) -> BreakerRecord: ...

    async def update_breaker(self, breaker: BreakerRecord) -> BreakerRecord: ...

    async def set_breaker_enabled(self, breaker_id: str, enabled: bool) -> BreakerRecord: ...

    async def delete_breaker(self, breaker_id: str) -> None: ...

    async def get_breaker(self, breaker_id: str) -> BreakerRecord: ...

    async def list_breakers(self, account_id: str) -> list[BreakerRecord]: ...

    async def save_flags(self, flags: FlagsRecord) -> FlagsRecord: ...

    async def list_history(
        self, trader_id: str, start: float | None, end: float | None, limit: int, after_id: int | None = None
    ) -> tuple[list[HistoryRecord], int | None]: ...

    async def list_events(
        self, account_id: str | None, breaker_id: str | None, limit: int, before_cursor: str | None = None
    ) -> tuple[list[BreakerEventRecord], str | None]: ...
