"""The `Alert` value: one thing people must hear about, and the event kinds.

`key` names the episode the alert belongs to (see episodes.py): the outbox keeps one delivery per (key,
notifier), so an alert derived twice for the same episode - after a restart, by the new owner of a trader taken
over, by a second sidecar - collapses into the first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

LOSS_LIMIT_BREACH = "loss_limit_breach"  # a loss limit breached: the trader paused by the limit
TRADER_PAUSED = "trader_paused"  # a trader's own pause began (operator, limit, breaker, dead-man's switch, ...)
TRADER_RESUMED = "trader_resumed"  # ...and ended (resumed, or its pauses expired)
BREAKER_FIRED = "breaker_fired"  # a circuit breaker fired (any action: alert, reduce, halt, close, ...)
KILL_SWITCH = "kill_switch"  # an account or every account paused (PauseTrading with an empty trader_id)
KILL_SWITCH_LIFTED = "kill_switch_lifted"  # ...and resumed
STORE_UNAVAILABLE = "store_unavailable"  # the database stopped answering this sidecar
STORE_RECOVERED = "store_recovered"
CONTROL_STATE_STALE = "control_state_stale"  # cluster mode: the shared control state is no longer heard
CONTROL_STATE_RECOVERED = "control_state_recovered"
TEST = "test"  # `tradeguard alert-test`

EVENTS = (LOSS_LIMIT_BREACH, TRADER_PAUSED, TRADER_RESUMED, BREAKER_FIRED, KILL_SWITCH, KILL_SWITCH_LIFTED,
          STORE_UNAVAILABLE, STORE_RECOVERED, CONTROL_STATE_STALE, CONTROL_STATE_RECOVERED, TEST)
CRITICAL = frozenset({LOSS_LIMIT_BREACH, TRADER_PAUSED, KILL_SWITCH, STORE_UNAVAILABLE, CONTROL_STATE_STALE})


def finite(value: Any) -> Any:
    """JSON that every receiver and PostgreSQL accept: an infinite or NaN number becomes its text ("inf")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert. `key` identifies its episode (unique per event kind); `only_if_new`: deliver only once the
    outbox has confirmed no delivery of this key exists yet (an alert re-derived after a restart or a takeover,
    which may have been sent already); it waits for the database rather than risk a duplicate."""

    event: str
    key: str
    reason: str
    at: float
    sidecar: str
    trader_id: str = ""
    account_id: str = ""
    severity: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    only_if_new: bool = False

    def payload(self) -> dict[str, Any]:
        """The generic webhook's JSON body (and what the outbox stores)."""
        return {
            "event": self.event,
            "severity": self.severity or ("critical" if self.event in CRITICAL else "info"),
            "trader_id": self.trader_id,
            "account_id": self.account_id,
            "reason": self.reason,
            "at": iso(self.at),
            "sidecar": self.sidecar,
            "key": self.key,
            "details": finite(self.details),
        }


def summary(payload: dict[str, Any]) -> str:
    """One human line (Slack, Discord, Telegram) from a stored payload."""
    who = " ".join(part for part in (
        f"trader {payload['trader_id']}" if payload.get("trader_id") else "",
        f"account {payload['account_id']}" if payload.get("account_id") else "") if part)
    head = f"[TradeGuard {str(payload.get('severity', 'info')).upper()}] {payload.get('event', '?')}"
    if who:
        head += f" {who}"
    return f"{head}: {payload.get('reason', '')} (sidecar {payload.get('sidecar', '?')}, {payload.get('at', '')})"
