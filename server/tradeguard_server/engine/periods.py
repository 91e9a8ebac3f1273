"""Period boundaries for daily / weekly / monthly PnL: UTC day, ISO week (Monday), calendar month.

The reset time of day is configurable (seconds after midnight UTC, default 0).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

DAY = 86_400.0


def day_start(ts: float, reset_offset_s: float = 0.0) -> float:
    shifted = ts - reset_offset_s
    return shifted - (shifted % DAY) + reset_offset_s


def week_start(ts: float, reset_offset_s: float = 0.0) -> float:
    start = day_start(ts, reset_offset_s)
    weekday = datetime.fromtimestamp(start - reset_offset_s, UTC).weekday()  # Monday = 0
    return start - weekday * DAY


def month_start(ts: float, reset_offset_s: float = 0.0) -> float:
    shifted = datetime.fromtimestamp(ts - reset_offset_s, UTC)
    first = shifted.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return first.timestamp() + reset_offset_s


def next_month_start(ts: float, reset_offset_s: float = 0.0) -> float:
    start = datetime.fromtimestamp(month_start(ts, reset_offset_s) - reset_offset_s, UTC)
    following = (start + timedelta(days=32)).replace(day=1)
    return following.timestamp() + reset_offset_s
