"""Variants of the sidecar for bench/attribution.py, switched on by TG_BENCH_VARIANT (never in production).

Put on PYTHONPATH by attribution.py only; Python imports `sitecustomize` at start-up, so the patches are in
place before `tradeguard serve` builds its services.

- double:     the CanTrade service runs twice per request (its second run is its own, warm, cost)
- dblengine:  RiskEngine.can_trade runs twice per request
- const:      CanTrade answers a cached response object (the service's work removed)
- constcopy:  CanTrade answers a fresh copy of that cached response (work removed, allocation kept)
"""

from __future__ import annotations

import os
from typing import Any

_variant = os.environ.get("TG_BENCH_VARIANT", "")

if _variant in ("double", "const", "constcopy"):
    from tradeguard.v1 import risk_service_pb2 as _rs_pb
    from tradeguard_server.api import risk_service as _rs

    _original = _rs.RiskService.can_trade
    _cached: dict[str, Any] = {}

    async def _patched(self: Any, req: Any, ctx: Any) -> Any:
        if _variant == "double":
            await _original(self, req, ctx)
            return await _original(self, req, ctx)
        answer = _cached.get("answer")
        if answer is None:
            answer = await _original(self, req, ctx)
            if answer.allowed and not answer.actions:
                _cached["answer"] = answer
            return answer
        if _variant == "const":
            return answer
        copy = _rs_pb.CanTradeResponse()
        copy.CopyFrom(answer)
        return copy

    _rs.RiskService.can_trade = _patched  # type: ignore[method-assign,assignment]

if _variant == "dblengine":
    from tradeguard_server.engine import engine as _engine

    _original_engine = _engine.RiskEngine.can_trade

    def _twice(self: Any, trader_id: str, account_id: str, order: Any, client_order_id: str = "") -> Any:
        _original_engine(self, trader_id, account_id, order)  # no id: judged in full, not answered from memory
        return _original_engine(self, trader_id, account_id, order, client_order_id)

    _engine.RiskEngine.can_trade = _twice  # type: ignore[method-assign]
