"""Durable risk state: records, the SQLAlchemy RiskStore, its in-memory twin, migrations and URLs.

Importing this package does not import SQLAlchemy; `RiskStore` and `MemoryStore` load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import BadCursor, Conflict, InvalidData, NotFound, StoreError, StoreUnavailable
from .records import (
    BreakerEventRecord,
    BreakerRecord,
    ConfigRecord,
    FlagsRecord,
    HistoryRecord,
    LoadedState,
    StateRecord,
    SymbolConfigRecord,
    TradeRecord,
)

if TYPE_CHECKING:
    from .memory import MemoryStore
    from .protocol import Store
    from .store import RiskStore

__all__ = [
    "BadCursor",
    "BreakerEventRecord",
    "BreakerRecord",
    "ConfigRecord",
    "Conflict",
    "FlagsRecord",
    "HistoryRecord",
    "InvalidData",
    "LoadedState",
    "MemoryStore",
    "NotFound",
    "RiskStore",
    "StateRecord",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "SymbolConfigRecord",
    "TradeRecord",
]

_LAZY = {"RiskStore": ".store", "MemoryStore": ".memory", "Store": ".protocol"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
