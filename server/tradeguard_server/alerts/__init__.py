"""Alerts that reach people (issue 20): what happened, told once per episode, delivered off the hot path.

- `alert.py`: the `Alert` value and the event kinds.
- `episodes.py`: `AlertWatcher`, an engine listener (and the hooks for kill switches, store and control-state
  health) that turns changes into alerts, at most one per episode per event kind. It only enqueues.
- `notifiers.py`: the generic JSON webhook, Slack, Discord and Telegram: one HTTP POST each.
- `outbox.py`: where deliveries wait: the `alert_outbox` table (PostgreSQL, SQLite) or memory.
- `delivery.py`: `AlertDispatcher`, the asyncio task that persists, delivers, retries with backoff, and keeps
  each notifier's health and counters (health component `tradeguard.alerts`, `tradeguard_alert*` metrics).
- `sendtest.py`: `tradeguard alert-test` (one test alert through every notifier).

README, "Alerts", says what users rely on.
"""

from .alert import EVENTS, Alert
from .delivery import AlertDispatcher
from .episodes import AlertWatcher
from .notifiers import Notifier, configured_notifiers

__all__ = ["EVENTS", "Alert", "AlertDispatcher", "AlertWatcher", "Notifier", "configured_notifiers"]
