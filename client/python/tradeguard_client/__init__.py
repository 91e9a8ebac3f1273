"""tradeguard_client: the Python client of the TradeGuard risk-check sidecar.

    from tradeguard_client import RiskClient, Order

    with RiskClient("127.0.0.1:50051") as guard:
        guard.report_equity("bot-1", "acct-1", 10_000)
        decision = guard.can_trade("bot-1", "acct-1", Order("BTCUSDT", "BUY", 0.01, 50_000))
        if decision:            # bool(decision) is decision.allowed
            ...                 # place the order under decision.client_order_id, then report what happened:
            guard.report_order("bot-1", "acct-1", decision.client_order_id, "FILLED", filled_quantity=0.01)
        else:
            print(decision.code, decision.reason)

`AsyncRiskClient` is the asyncio twin (same methods, awaited); `AdminClient` / `AsyncAdminClient` cover
AdminService. Fail-closed by default: when the sidecar cannot be reached, `can_trade` returns
`allowed=False, code="SIDECAR_UNAVAILABLE"` instead of raising; an answer that breaks the protocol is
denied with `code="INVALID_RESPONSE"`; anything else raises a `TradeGuardError` (see RiskClient).
"""

from ._aio import AsyncAdminClient, AsyncRiskClient, AsyncWatchStream
from ._channel import TLS
from ._errors import (
    ClientClosedError,
    FieldViolation,
    InvalidArgumentError,
    InvalidResponseError,
    SidecarUnavailableError,
    TradeGuardError,
)
from ._retry import IDEMPOTENT_METHODS, RetryPolicy
from ._session import OnDisconnect
from ._sync import AdminClient, RiskClient, WatchStream
from ._types import (
    INVALID_RESPONSE,
    SIDECAR_UNAVAILABLE,
    Action,
    Binding,
    BreakerEvent,
    Check,
    CircuitBreaker,
    CorrelationGroup,
    Decision,
    FeatureFlags,
    HistoryEntry,
    Order,
    Page,
    PendingOrder,
    Position,
    PriceMark,
    ReportResult,
    RestoreResult,
    RiskConfig,
    RiskState,
    RiskStateEntry,
    SavedConfig,
    ScopePause,
    StateUpdate,
    SymbolConfig,
    TradingWindow,
)

__all__ = [
    "IDEMPOTENT_METHODS",
    "INVALID_RESPONSE",
    "SIDECAR_UNAVAILABLE",
    "TLS",
    "Action",
    "AdminClient",
    "AsyncAdminClient",
    "AsyncRiskClient",
    "AsyncWatchStream",
    "Binding",
    "BreakerEvent",
    "Check",
    "CircuitBreaker",
    "ClientClosedError",
    "CorrelationGroup",
    "Decision",
    "FeatureFlags",
    "FieldViolation",
    "HistoryEntry",
    "InvalidArgumentError",
    "InvalidResponseError",
    "OnDisconnect",
    "Order",
    "Page",
    "PendingOrder",
    "Position",
    "PriceMark",
    "ReportResult",
    "RestoreResult",
    "RetryPolicy",
    "RiskClient",
    "RiskConfig",
    "RiskState",
    "RiskStateEntry",
    "SavedConfig",
    "ScopePause",
    "SidecarUnavailableError",
    "StateUpdate",
    "SymbolConfig",
    "TradeGuardError",
    "TradingWindow",
    "WatchStream",
]

__version__ = "0.1.0"
