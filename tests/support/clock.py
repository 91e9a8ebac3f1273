"""The tests' reference time: the `clock` fixture (tests/conftest.py) starts here."""

from __future__ import annotations

T0 = 1_767_268_800.0  # 2026-01-01T12:00:00Z, a Thursday
