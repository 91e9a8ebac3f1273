"""Input validation: every field checked, every problem named, nothing half-applied.

A `Violations` collects (field path, description) pairs; `raise_if_any()` turns them into one
INVALID_ARGUMENT with google.rpc.BadRequest details.
"""

from __future__ import annotations

import math
import re

from google.protobuf.timestamp_pb2 import Timestamp

from .errors import InvalidArgument

ID_MAX = 128
ID_PATTERN = re.compile(r"[A-Za-z0-9._:@/\-]+")
TEXT_MAX = 1024
AMOUNT_MAX = 1e15
FUTURE_SKEW_S = 300.0
CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # C0 but tab, LF, CR; DEL; C1


def symbol_key(symbol: str) -> str:
    """A symbol as the engine compares it: upper-case (`btcusdt` is `BTCUSDT`). Whitespace is not stripped:
    `identifier` rejects it."""
    return symbol.upper()


def exchange_key(exchange: str) -> str:
    """An exchange as the engine compares it: lower-case (`Binance` is `binance`)."""
    return exchange.lower()


class Violations:
    """Collects field violations for one request."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, field: str, description: str) -> None:
        self.items.append((field, description))

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)

    # ---- field rules ----------------------------------------------------------------------------

    def identifier(self, field: str, value: str, required: bool = True) -> None:
        if not value:
            if required:
                self.add(field, "required")
            return
        if len(value) > ID_MAX:
            self.add(field, f"too long: {len(value)} characters, at most {ID_MAX}")
        elif ID_PATTERN.fullmatch(value) is None:
            self.add(field, "only letters, digits and . _ : @ / - are allowed")

    def text(self, field: str, value: str, max_len: int = TEXT_MAX) -> None:
        """Free text: at most `max_len` characters; tab and line breaks allowed, no other control character
        (NUL, which PostgreSQL cannot store and SQLite would, escape sequences, ...), the same on every database."""
        if len(value) > max_len:
            self.add(field, f"too long: {len(value)} characters, at most {max_len}")
        elif (bad := CONTROL.search(value)) is not None:
            self.add(field, f"control character U+{ord(bad[0]):04X} at position {bad.start()} is not allowed")

    def number(
        self,
        field: str,
        value: float,
        *,
        min_value: float | None = None,
        min_exclusive: bool = False,
        max_value: float | None = AMOUNT_MAX,
    ) -> None:
        if not math.isfinite(value):
            self.add(field, f"must be a finite number, got {value}")
            return
        if min_value is not None:
            if min_exclusive and value <= min_value:
                self.add(field, f"must be > {min_value:g}, got {value:g}")
                return
            if not min_exclusive and value < min_value:
                self.add(field, f"must be >= {min_value:g}, got {value:g}")
                return
        if max_value is not None and value > max_value:
            self.add(field, f"must be <= {max_value:g}, got {value:g}")

    def enum(self, field: str, value: int, allowed: set[int] | frozenset[int], name: str) -> None:
        if value == 0:
            self.add(field, f"required: {name}_UNSPECIFIED is not allowed")
        elif value not in allowed:
            self.add(field, f"unknown {name} value {value}")

    def timestamp(self, field: str, ts: Timestamp, now: float, allow_future: bool = False) -> float | None:
        """Validate an optional timestamp; returns epoch seconds or None when unset."""
        seconds, nanos = ts.seconds, ts.nanos
        if seconds == 0 and nanos == 0:
            return None
        if not 0 <= nanos < 1_000_000_000:
            self.add(field, "nanos out of range")
            return None
        if not 0 < seconds < 253_402_300_800:  # year 1970 .. 9999
            self.add(field, "out of range")
            return None
        value = seconds + nanos / 1e9
        if value >= 253_402_300_800:  # 9999-12-31T23:59:59.999999999 rounds to year 10000 as a float
            self.add(field, "out of range")
            return None
        if not allow_future and value > now + FUTURE_SKEW_S:
            self.add(field, f"is {value - now:.0f}s in the future")
            return None
        return value
