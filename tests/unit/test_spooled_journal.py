"""The journal's durable copy in the local spool (store/spooled_journal.py), with a real spool file: what is added is
read back in order, a thinned journal is rewritten as thinned (bounded like the one in memory), and it is cleared."""

from __future__ import annotations

from pathlib import Path

import pytest

from tradeguard_server import persistence
from tradeguard_server.engine.types import ClosedTrade, Side, TradingState
from tradeguard_server.persistence import Journal
from tradeguard_server.store.spool import Spool
from tradeguard_server.store.spooled_journal import SpooledJournal


async def open_spool(tmp_path: Path) -> Spool:
    spool = Spool(str(tmp_path / "spool.db"), database="test")
    await spool.open()
    return spool


async def test_journaled_calls_are_read_back_in_order_after_a_reopen(tmp_path: Path) -> None:
    spool = await open_spool(tmp_path)
    spooled = SpooledJournal(spool)
    trade = ClosedTrade(trade_id="tr-1", symbol="BTCUSDT", exchange="", side=Side.SELL, realized_pnl=-5.0,
                        closed_at=1.5)
    calls = [(1.0, "report_equity", ("t", "a", 100.0, None)), (1.5, "report_trade", ("t", "a", trade)),
             (2.0, "pause", ("t", "a", TradingState.HALTED, None, "halt"))]
    for call in calls:
        spooled.add(call)
    await spooled.close(1.0)
    await spool.close()

    again = await open_spool(tmp_path)
    try:
        assert again.stats.journal == 3
        assert await SpooledJournal(again).previous() == calls
        await again.clear_journal()
        assert again.stats.journal == 0 and await again.read_journal() == []
    finally:
        await again.close()


async def test_a_thinned_journal_is_rewritten_thinned_in_the_spool(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(persistence, "JOURNAL_MAX", 100)
    spool = await open_spool(tmp_path)
    try:
        spooled = SpooledJournal(spool)
        journal = Journal()
        journal.sink, journal.thinned = spooled.add, spooled.replace
        for i in range(1_000):
            journal.append((float(i), "report_equity", (f"t{i % 3}", "a", 100.0 + i % 7, None)))
        await spooled.drain()
        assert journal.dropped > 0 and len(journal) < 1_000
        assert spool.stats.journal == len(journal)
        assert await spool.read_journal() == list(journal)
    finally:
        await spool.close()
