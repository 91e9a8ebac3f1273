"""History rows carry what changed (README "Persistence"): the scalars always, each of pauses, positions,
volatility, symbol_stats and pending_orders only when it changed since the trader's previous row (else a
reference to the row that holds it); ListRiskStateHistory still shows each row whole, also after dropped rows
and failed batches."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest
from sqlalchemy import create_engine, pool, text

from tests.support.databases import (
    database_proxy_fixture,
    empty_tables,
    make_state,
    open_store,
    postgres_database_fixture,
    store_url_fixture,
)
from tests.support.proxy import FaultProxy
from tests.support.sidecar import running_sidecar
from tests.support.wait import eventually
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.engine.types import Position, Side
from tradeguard_server.store.bulk import FULL_HISTORY_EVERY
from tradeguard_server.store.store import RiskStore

pytestmark = pytest.mark.integration

pg_url = postgres_database_fixture()
db_url = store_url_fixture()
IDS = {"trader_id": "bot-1", "account_id": "acct-1"}


proxy = database_proxy_fixture()


def stored_rows(url: str, trader_id: str) -> list[tuple[int, dict[str, Any]]]:
    """(size in bytes, state JSON) of each of the trader's history rows, in the order written."""
    engine = create_engine(url, poolclass=pool.NullPool)
    size = "octet_length(state::text)" if engine.dialect.name == "postgresql" else "length(CAST(state AS BLOB))"
    try:
        with engine.connect() as conn:
            found = conn.execute(text(f"SELECT {size}, CAST(state AS TEXT) FROM risk_state_history "  # noqa: S608
                                      "WHERE trader_id = :t ORDER BY id"), {"t": trader_id}).all()
    finally:
        engine.dispose()
    return [(int(n), json.loads(s)) for n, s in found]


def positions_msg(n: int, first_mark: float = 1.0) -> list[t.Position]:
    return [t.Position(symbol=f"POS{i:04d}", side=t.SIDE_BUY, quantity=1 + i, entry_price=1,
                       mark_price=first_mark if i == 0 else 1.0, volatility=0.5) for i in range(n)]


async def all_history(admin: adg.AdminServiceStub, trader_id: str, page_size: int) -> list[t.RiskStateHistoryEntry]:
    entries: list[t.RiskStateHistoryEntry] = []
    token = ""
    while True:
        page = await admin.ListRiskStateHistory(ad.ListRiskStateHistoryRequest(
            trader_id=trader_id, account_id="acct-1", page_size=page_size, page_token=token))
        entries.extend(page.entries)
        token = page.next_page_token
        if not token:
            return entries


def shown_positions(entry: t.RiskStateHistoryEntry) -> list[tuple[str, float, float]]:
    return [(p.symbol, p.quantity, p.mark_price) for p in entry.state.positions]


def expected_positions(n: int, first_mark: float = 1.0) -> list[tuple[str, float, float]]:
    return [(p.symbol, p.quantity, p.mark_price) for p in positions_msg(n, first_mark)]


async def test_a_bot_with_1000_positions_reporting_equity_writes_small_rows_that_read_whole(db_url: str) -> None:
    """1,000 positions, then 100 equity reports: the 100 rows carry the scalars and a reference, not the
    positions (before: ~160 KB each). Each row still lists with the positions it had; a positions change is in
    the very next row. Paged 7 at a time, so most pages start after the row that holds their positions."""
    async with running_sidecar(database_url=db_url, enable_persistence=True) as sc, \
            grpc.aio.insecure_channel(sc.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await risk.ReportEquity(rs.ReportEquityRequest(trader_id="small", account_id="acct-1", equity=100_000))
        await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=100_000))
        await risk.ReportPositions(rs.ReportPositionsRequest(**IDS, positions=positions_msg(1000)))
        for i in range(100):
            await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=100_000 + i + 1))
        await risk.ReportPositions(rs.ReportPositionsRequest(**IDS, positions=positions_msg(1000, first_mark=2.0)))
        await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=99_000))
        assert await sc.store.flush(timeout=60)
        entries = await all_history(admin, "bot-1", page_size=7)
        latest = (await risk.GetRiskState(rs.GetRiskStateRequest(**IDS))).state
    rows = stored_rows(db_url, "bot-1")
    (small_row, _), = stored_rows(db_url, "small")

    assert len(entries) == len(rows) == 1 + 1 + 100 + 1 + 1
    assert shown_positions(entries[0]) == []
    assert [shown_positions(e) == expected_positions(1000) for e in entries[1:102]] == [True] * 101
    assert [e.state.current_equity for e in entries[2:102]] == [100_000 + i + 1 for i in range(100)]
    assert shown_positions(entries[102]) == expected_positions(1000, first_mark=2.0)  # the change, at once
    assert shown_positions(entries[103]) == expected_positions(1000, first_mark=2.0)
    assert entries[103].state.current_equity == 99_000
    assert shown_positions(entries[103]) == [(p.symbol, p.quantity, p.mark_price) for p in latest.positions]
    assert all("no longer stored" not in e.reason for e in entries)

    # What is stored: the positions in the row of each change only; the other rows refer to it.
    has_positions = ["positions" in state for _size, state in rows]
    assert has_positions == [True, True] + [False] * 100 + [True, False]
    full_row = rows[1][0]
    equity_rows = [size for size, _state in rows[2:102]]
    total = sum(size for size, _state in rows[1:102])  # the positions report and the 100 equity reports
    print(f"\nhistory bytes: full row {full_row}, scalar row {small_row} (a trader without positions), "
          f"equity rows {min(equity_rows)}..{max(equity_rows)}, positions + 100 equity rows {total} "
          f"(every row whole: {101 * full_row})")
    assert full_row > 100_000  # 1,000 positions in JSON (the row that carries them)
    assert max(equity_rows) < small_row + 100  # scalars, a tag and four references: about a trader's empty row
    assert total < full_row + 100 * (small_row + 100)  # measured: 200 KB, where whole rows made 14.8 MB


async def test_a_row_that_changes_one_map_carries_that_map_only(db_url: str) -> None:
    positions = (Position("BTCUSDT", Side.BUY, 1.0, 100.0, 101.0),)
    states = [
        make_state("t-1", 1, positions=positions, volatility=(("BTCUSDT", 0.4),)),
        make_state("t-1", 2, positions=positions, volatility=(("BTCUSDT", 0.4),)),  # equal, not identical
        make_state("t-1", 3, positions=positions, volatility=(("BTCUSDT", 0.9),)),
        make_state("t-1", 4, positions=(), volatility=(("BTCUSDT", 0.9),)),
    ]
    async with open_store(db_url) as store:
        for rec in states:
            store.enqueue_state(rec, f"v{rec.version}", None)
        assert await store.flush(timeout=10)
        listed, _ = await store.list_history("t-1", None, None, 10)
    rows = stored_rows(db_url, "t-1")

    maps = ("pauses", "positions", "volatility", "symbol_stats")
    assert [[name for name in maps if name in state] for _size, state in rows] == [
        list(maps), [], ["volatility"], ["positions"]]
    assert [h.state for h in listed] == states  # each read back whole, as written


async def test_every_map_is_written_again_every_full_history_every_rows(db_url: str) -> None:
    positions = (Position("BTCUSDT", Side.BUY, 1.0, 100.0, 101.0),)
    async with open_store(db_url, queue_size=10_000) as store:
        for version in range(1, FULL_HISTORY_EVERY * 2 + 2):
            store.enqueue_state(make_state("t-1", version, positions=positions), "equity_report", None)
        assert await store.flush(timeout=30)
    rows = stored_rows(db_url, "t-1")

    carrying = [i for i, (_size, state) in enumerate(rows) if "positions" in state]
    assert carrying == [0, FULL_HISTORY_EVERY, 2 * FULL_HISTORY_EVERY]


async def test_rows_kept_after_an_overflow_read_whole(db_url: str) -> None:
    """The writer starts late: the 36 oldest rows are dropped before they are written; the first row written
    carries every map and the rest read right, positions changing along the way."""
    p1 = (Position("BTCUSDT", Side.BUY, 1.0, 100.0, 101.0),)
    p2 = (*p1, Position("ETHUSDT", Side.SELL, 2.0, 10.0, 9.0))
    store = RiskStore(db_url, queue_size=64)
    expected = {}
    for version in range(1, 101):
        positions = p1 if version < 60 else p2
        store.enqueue_state(make_state("t-1", version, positions=positions), f"change {version}", None)
        expected[f"change {version}"] = positions
    await store.start()
    try:
        assert await store.flush(timeout=10)
        listed, _ = await store.list_history("t-1", None, None, 1000)
    finally:
        await store.close(drain_timeout=5)

    assert store.dropped_history == 36
    assert [(h.reason, h.state.positions) for h in listed] == [
        (f"change {v}", expected[f"change {v}"]) for v in range(37, 101)]


async def test_rows_after_a_failed_batch_and_dropped_rows_do_not_refer_to_a_row_never_stored(
    pg_url: str, proxy: FaultProxy
) -> None:
    """The database goes away while a batch is written: that batch (whose first row carried the new positions)
    goes back to the queue, the queue overflows and drops it. The rows written afterwards carry their maps
    again instead of referring to the row that was never stored."""
    empty_tables(pg_url)
    p1 = (Position("BTCUSDT", Side.BUY, 1.0, 100.0, 101.0),)
    p2 = (Position("ETHUSDT", Side.SELL, 2.0, 10.0, 9.0),)
    store = RiskStore(proxy.url_for(pg_url), queue_size=4, retry_max_s=0.1)
    await store.start()
    try:
        store.enqueue_state(make_state("t-1", 1, positions=p1), "v1", None)
        assert await store.flush(timeout=10)

        proxy.cut()
        store.enqueue_state(make_state("t-1", 2, positions=p2), "v2", None)
        assert await eventually(lambda: store.failures > 0, timeout=10)  # the writer encoded v2, failed to write it
        for version in range(3, 11):
            store.enqueue_state(make_state("t-1", version, positions=p2), f"v{version}", None)
        assert store.dropped_history >= 2  # v2 among them
        proxy.restore()
        assert await store.flush(timeout=20)
        listed, _ = await store.list_history("t-1", None, None, 100)
    finally:
        await store.close(drain_timeout=5)

    assert [h.reason for h in listed] == ["v1", *(f"v{v}" for v in range(11 - len(listed) + 1, 11))]
    assert "v2" not in [h.reason for h in listed]
    assert [h.state.positions for h in listed] == [p1] + [p2] * (len(listed) - 1)


async def test_a_row_whose_maps_row_was_deleted_says_so_instead_of_showing_wrong_positions(db_url: str) -> None:
    positions = (Position("BTCUSDT", Side.BUY, 1.0, 100.0, 101.0),)
    async with open_store(db_url) as store:
        for version in (1, 2):
            store.enqueue_state(make_state("t-1", version, positions=positions), f"v{version}", None)
        assert await store.flush(timeout=10)
        engine = create_engine(db_url, poolclass=pool.NullPool)
        try:
            with engine.begin() as conn:  # an operator deletes the oldest row by hand
                conn.execute(text("DELETE FROM risk_state_history WHERE reason = 'v1'"))
        finally:
            engine.dispose()
        (row,), _ = await store.list_history("t-1", None, None, 10)

    assert row.state.positions == ()
    assert row.reason.startswith("v2 [pauses, positions, volatility, symbol_stats, pending_orders: unchanged since "
                                 "a row that is no longer stored; shown empty, not as recorded]")


@pytest.mark.parametrize("committed", [True, False], ids=["commit-reached-the-server", "commit-lost"])
async def test_rows_after_a_commit_cut_short_read_whole(pg_url: str, proxy: FaultProxy, committed: bool) -> None:
    """The connection breaks at the COMMIT of the batch that carries new positions: whether it committed
    (counted, not written again) or not (written again), every row lists with the positions it had."""
    empty_tables(pg_url)
    p1 = (Position("BTCUSDT", Side.BUY, 1.0, 100.0, 101.0),)
    p2 = (Position("ETHUSDT", Side.SELL, 2.0, 10.0, 9.0),)
    store = RiskStore(proxy.url_for(pg_url), queue_size=1000, retry_max_s=0.1)
    await store.start()
    try:
        store.enqueue_state(make_state("t-1", 1, positions=p1), "v1", None)
        assert await store.flush(timeout=10)
        proxy.trap_commit(deliver=committed)
        expected = {"v1": p1}
        for version in range(2, 41):
            positions = p1 if version < 5 else p2
            store.enqueue_state(make_state("t-1", version, positions=positions), f"v{version}", None)
            expected[f"v{version}"] = positions
            await asyncio.sleep(0)  # let the writer take them in several batches
        assert await store.flush(timeout=20)
        listed, _ = await store.list_history("t-1", None, None, 100)
    finally:
        await store.close(drain_timeout=5)

    assert proxy.commits_trapped == 1
    assert [(h.reason, h.state.positions) for h in listed] == list(expected.items())
