"""The attack suite's figures, listed once more at the end of the run (they are printed where measured)."""

from __future__ import annotations

from typing import Any

from tests.attack.support import FIGURES


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("TradeGuard attack figures")
    for area, name, value in FIGURES:
        terminalreporter.write_line(f"[{area}] {name} = {value}")
