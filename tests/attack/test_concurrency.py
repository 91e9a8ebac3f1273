"""Concurrency: many traders, many concurrent calls per trader, over several connections, through a real
server (in process, SQLite store on). Per-trader updates must be linearizable:

- the same trade_id sent 50 times at once counts once (exactly one answer is not `duplicate`);
- distinct losing trades, each also retried 3 times at once: consecutive_losses == the number of distinct
  losing trades, and the non-duplicate answers saw every count from 1 to N exactly once (each update saw the
  one before it: none lost, none applied twice);
- concurrent equity reports with shuffled observed_at: the final level is the newest report's, the peak is
  the highest report (a stale one too: the equity was there), and every applied report answered with its own level;
- the store ends up with exactly the memory state.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import create_engine, text

from tests.attack.support import figure
from tests.support.sidecar import running_sidecar
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard_server.engine.clock import ManualClock

pytestmark = pytest.mark.integration

TRADERS = 40
SAME_TRADE_COPIES = 50
DISTINCT_LOSSES = 30
RETRIES = 3
EQUITY_REPORTS = 50
WAVE = 4
NOW = 1_767_225_600


@dataclass
class Result:
    """One trader's calls and answers (an answer is None when its call failed)."""

    trades: list[rs.ReportTradeRequest]
    trade_answers: list[Any]
    reports: list[rs.ReportEquityRequest]
    equity_answers: list[Any]
    equities: list[tuple[int, float]]  # (observed_at, equity)
    state: Any  # the final RiskState


async def test_concurrent_calls_per_trader_are_linearizable(tmp_path: Path) -> None:
    rng = random.Random(9)
    db = tmp_path / "concurrency.db"
    clock = ManualClock(NOW + 60.0)
    errors: list[str] = []
    # Overload shedding off: this burst (8,400 calls at once on 16 connections) is a flood by max_calls_per_trader's
    # definition, and on a loaded machine some calls were shed RESOURCE_EXHAUSTED (CI, 2026-12-01). Every call must
    # be processed here: what is under test is their order; shedding is test_fairness's.
    async with running_sidecar(clock=clock, database_url=f"sqlite:///{db}", enable_persistence=True,
                               max_calls_per_connection=0, max_calls_per_trader=0) as sidecar:
        channels = [grpc.aio.insecure_channel(sidecar.address) for _ in range(16)]
        stubs = [rsg.RiskServiceStub(ch) for ch in channels]
        for s in stubs:  # connect first, so that every connection knows the server's SETTINGS before the burst
            await s.GetRiskState(rs.GetRiskStateRequest(trader_id="warm-up", account_id="acct-0"))

        def stub() -> rsg.RiskServiceStub:
            return rng.choice(stubs)

        async def call(coro: Any) -> Any:
            try:
                return await coro
            except grpc.aio.AioRpcError as exc:
                errors.append(f"{exc.code().name}: {exc.details()}")
                return None

        async def trader(i: int) -> Result:
            tid, acct = f"c-{i}", f"acct-{i % 4}"
            await stub().ReportEquity(rs.ReportEquityRequest(trader_id=tid, account_id=acct, equity=10_000.0,
                                                             observed_at={"seconds": NOW}))
            same = rs.ReportTradeRequest(trader_id=tid, account_id=acct, trade_id="same", symbol="BTCUSDT",
                                         side=1, realized_pnl=-1.0)
            trades = [same] * SAME_TRADE_COPIES
            for k in range(DISTINCT_LOSSES):
                one = rs.ReportTradeRequest(trader_id=tid, account_id=acct, trade_id=f"loss-{k}", symbol="BTCUSDT",
                                            side=2, realized_pnl=-float(k + 1))
                trades += [one] * RETRIES
            rng.shuffle(trades)
            seconds = list(range(1, EQUITY_REPORTS + 1))
            rng.shuffle(seconds)
            equities = [(NOW + s, 9_000.0 + rng.random() * 2_000.0) for s in seconds]
            reports = [rs.ReportEquityRequest(trader_id=tid, account_id=acct, equity=e, observed_at={"seconds": at})
                       for at, e in equities]
            calls = [call(stub().ReportTrade(t)) for t in trades] + [call(stub().ReportEquity(r)) for r in reports]
            calls += [call(stub().CanTrade(rs.CanTradeRequest(trader_id=tid, account_id=acct))) for _ in range(20)]
            answers = await asyncio.gather(*calls)
            state = (await stub().GetRiskState(rs.GetRiskStateRequest(trader_id=tid, account_id=acct))).state
            return Result(trades, answers[:len(trades)], reports, answers[len(trades):len(trades) + len(reports)],
                          equities, state)

        # Waves of 4 traders: ~850 calls in flight at once. (Past ~1,000 calls in flight in one process, grpc
        # starts refusing streams - RST_STREAM REFUSED_STREAM, seen as UNAVAILABLE - whatever the server.)
        results: list[Result] = []
        for wave in range(0, TRADERS, WAVE):
            results += await asyncio.gather(*(trader(i) for i in range(wave, min(wave + WAVE, TRADERS))))
        assert await sidecar.store.flush(timeout=30)
        for ch in channels:
            await ch.close()

    assert errors == []
    problems: list[str] = []
    lost = double = wrong_level = 0
    calls = 0
    for i, r in enumerate(results):
        tid, state = f"c-{i}", r.state
        calls += len(r.trades) + len(r.reports) + 20
        fresh_same = [a for t, a in zip(r.trades, r.trade_answers, strict=True)
                      if t.trade_id == "same" and not a.duplicate]
        fresh = sorted(a.state.consecutive_losses for a in r.trade_answers if not a.duplicate)
        if len(fresh_same) != 1:
            double += len(fresh_same) - 1
            problems.append(f"{tid}: trade 'same' counted {len(fresh_same)} times")
        if fresh != list(range(1, DISTINCT_LOSSES + 2)):
            lost += 1
            problems.append(f"{tid}: non-duplicate answers saw {fresh}")
        if state.consecutive_losses != DISTINCT_LOSSES + 1:
            problems.append(f"{tid}: consecutive_losses {state.consecutive_losses}")
        wrong_level += sum(1 for rep, a in zip(r.reports, r.equity_answers, strict=True)
                           if not a.stale and a.state.current_equity != rep.equity)
        newest, peak = max(r.equities)[1], max([10_000.0, *(rep.equity for rep in r.reports)])  # stale ones too
        if (state.current_equity, state.peak_equity) != (newest, peak):
            problems.append(f"{tid}: level / peak {state.current_equity} / {state.peak_equity}, want {newest} / {peak}")

    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        stored = {row.trader_id: (row.current_equity, row.peak_equity, row.consecutive_losses)
                  for row in conn.execute(text("SELECT trader_id, current_equity, peak_equity, consecutive_losses "
                                               "FROM risk_state"))}
        trade_rows = conn.execute(text("SELECT count(*) FROM trade_reports")).scalar_one()
    engine.dispose()
    in_memory = {f"c-{i}": (r.state.current_equity, r.state.peak_equity, r.state.consecutive_losses)
                 for i, r in enumerate(results)}

    figure("concurrency", "traders / concurrent calls", f"{TRADERS} / {calls}")
    figure("concurrency", "failed calls", len(errors))
    figure("concurrency", "trades double-counted (same trade_id x50)", double)
    figure("concurrency", "traders with a lost or doubled loss update", lost)
    figure("concurrency", "applied equity reports answering another level", wrong_level)
    figure("concurrency", "stored states differing from memory", sum(stored.get(k) != v for k, v in in_memory.items()))
    figure("concurrency", "trade rows stored / distinct trades", f"{trade_rows} / {TRADERS * (DISTINCT_LOSSES + 1)}")
    assert problems == []
    assert double == lost == wrong_level == 0
    assert stored == in_memory
    assert trade_rows == TRADERS * (DISTINCT_LOSSES + 1)
