"""TradeGuard: a gRPC risk-check sidecar for trading bots."""

__version__ = "0.1.0"
