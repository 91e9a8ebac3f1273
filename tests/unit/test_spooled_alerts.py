"""Alert deliveries in the local spool (table `alerts`, store/spool.py), with a real spool file: read back after a
reopen, the newest outcome kept, deleted, counted; a spool file from before the table gets it at open."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tradeguard_server.alerts.outbox import Delivery
from tradeguard_server.store.spool import Spool


async def open_spool(path: Path) -> Spool:
    spool = Spool(str(path), database="test")
    await spool.open()
    return spool


def delivery(key: str, notifier: str = "webhook", attempts: int = 0, delivered_at: float | None = None,
             last_error: str | None = None) -> Delivery:
    return Delivery(key, notifier, "breaker_fired", "sc-1", {"key": key, "details": {"x": [1.5, None, "y"]}},
                    10.0, 11.0, attempts=attempts, delivered_at=delivered_at, last_error=last_error,
                    trader_id="bot-1", account_id="acct-1")


async def test_spooled_deliveries_are_read_back_oldest_first_after_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = await open_spool(path)
    placed = await spool.upsert_alerts([delivery("k1"), delivery("k1", "slack"), delivery("k2")])
    assert [inserted for _seq, inserted in placed] == [True, True, True]
    assert [seq for seq, _ in placed] == sorted(seq for seq, _ in placed)
    await spool.close()

    again = await open_spool(path)
    try:
        assert again.alerts_depth == 3
        rows = await again.read_alerts(0, 10, delivered=False)
        assert [d for _seq, d in rows] == [delivery("k1"), delivery("k1", "slack"), delivery("k2")]
        assert [d for _seq, d in await again.read_alerts(rows[0][0], 1, delivered=False)] == [delivery("k1", "slack")]
        assert await again.read_alerts(0, 10, delivered=True) == []
    finally:
        await again.close()


async def test_upsert_keeps_the_newest_outcome_and_a_duplicate_changes_nothing(tmp_path: Path) -> None:
    spool = await open_spool(tmp_path / "spool.db")
    try:
        [(seq, _)] = await spool.upsert_alerts([delivery("k1")])
        failed = delivery("k1", attempts=2, last_error="HTTP 500")
        assert await spool.upsert_alerts([failed]) == [(seq, False)]
        assert await spool.upsert_alerts([delivery("k1")]) == [(seq, False)]  # a duplicate: attempts 0 < 2
        assert [d for _s, d in await spool.read_alerts(0, 10, delivered=False)] == [failed]
        assert (spool.alerts_depth, spool.alerts_undelivered) == (1, 1)
        done = delivery("k1", attempts=3, delivered_at=20.0)
        await spool.upsert_alerts([done])
        await spool.upsert_alerts([delivery("k1", attempts=2, last_error="late")])  # older: ignored
        assert await spool.read_alerts(0, 10, delivered=False) == []
        assert await spool.read_alerts(0, 10, delivered=True) == [(seq, done)]
        assert (spool.alerts_depth, spool.alerts_undelivered) == (1, 0)
        await spool.upsert_alerts([delivery("k2", attempts=1, delivered_at=5.0)])  # delivered when first spooled
        assert (spool.alerts_depth, spool.alerts_undelivered) == (2, 0)
    finally:
        await spool.close()


async def test_delete_forgets_the_given_deliveries_and_the_counts_follow(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = await open_spool(path)
    await spool.upsert_alerts([delivery(f"k{i}") for i in range(5)])
    await spool.upsert_alerts([delivery("k4", attempts=1, delivered_at=5.0)])
    await spool.delete_alerts([("k1", "webhook"), ("k3", "webhook"), ("absent", "webhook")])
    assert (spool.alerts_depth, spool.alerts_undelivered) == (3, 2)
    await spool.delete_alerts([])
    await spool.close()
    again = await open_spool(path)
    try:
        assert (again.alerts_depth, again.alerts_undelivered) == (3, 2)  # counted once at open, then kept
        assert [d.key for _s, d in await again.read_alerts(0, 10, delivered=False)] == ["k0", "k2"]
        assert [d.key for _s, d in await again.read_alerts(0, 10, delivered=True)] == ["k4"]
    finally:
        await again.close()


async def test_a_spool_file_from_before_the_alerts_table_opens_and_gets_the_table(tmp_path: Path) -> None:
    """A spool written by the version before this change: tables spool, spool_meta and journal only, a journaled
    call in it. It opens (the journal kept), and alerts can be spooled in it."""
    path = tmp_path / "spool.db"
    spool = await open_spool(path)
    await spool.append_journal([(1.0, "report_equity", ("t", "a", 100.0, None))])
    await spool.close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE alerts")
    conn.commit()
    conn.close()

    again = await open_spool(path)
    try:
        assert again.journal_depth == 1 and again.alerts_depth == 0
        await again.upsert_alerts([delivery("k1")])
        assert again.alerts_depth == 1
    finally:
        await again.close()


async def test_an_unreadable_spooled_delivery_is_moved_aside_not_returned(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = await open_spool(path)
    await spool.upsert_alerts([delivery("k1"), delivery("k2")])
    await spool.close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE alerts SET data = ? WHERE key = 'k1'", (b"not a pickle",))
    conn.commit()
    conn.close()
    again = await open_spool(path)
    try:
        assert [d.key for _s, d in await again.read_alerts(0, 10, delivered=False)] == ["k2"]
        assert again.alerts_depth == 1
        assert (tmp_path / "spool.db.unreadable").stat().st_size > 0
    finally:
        await again.close()
