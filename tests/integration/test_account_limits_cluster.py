"""Account-wide limits across sidecars (issue 17, must-show 5): three in-process sidecars on one PostgreSQL database,
each owning one trader of the account. Losses spread over the three traders, none past its own daily limit, sum past
the account's: every sidecar finds the breach from its view of the others and pauses its trader within 1 s (the
control plane's pause_account is stood in for by cluster.account_view.LocalAccountPauser, which the sidecar wires
until the lead wires the plane). An order that would take the account's gross exposure beyond its limit is denied on
any sidecar. And a sidecar's trader reaches the risk_state table (what the others read) well within
account_view_seconds."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from sqlalchemy import create_engine, text

from tests.support.sidecar import running_sidecar
from tests.support.wait import eventually
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.sidecar import Sidecar

pytestmark = pytest.mark.integration

ACCOUNT = "acct-wide"


class Node:
    def __init__(self, sidecar: Sidecar, channel: grpc.aio.Channel, trader: str) -> None:
        self.sidecar = sidecar
        self.risk = rsg.RiskServiceStub(channel)
        self.admin = adg.AdminServiceStub(channel)
        self.trader = trader

    async def equity(self, value: float) -> None:
        await self.risk.ReportEquity(rs.ReportEquityRequest(trader_id=self.trader, account_id=ACCOUNT, equity=value))

    async def can_trade(self, order: t.OrderIntent | None = None) -> rs.CanTradeResponse:
        return await self.risk.CanTrade(rs.CanTradeRequest(trader_id=self.trader, account_id=ACCOUNT, order=order))


@contextlib.asynccontextmanager
async def three_sidecars(pg_url: str, **config: float) -> AsyncIterator[list[Node]]:
    """Sidecars s1..s3 on one database (started one after the other: the first migrates), trader bot-i on si, the
    account's configuration saved through each (until the control plane shares configurations)."""
    async with contextlib.AsyncExitStack() as stack:
        nodes = []
        for i in (1, 2, 3):
            sc = await stack.enter_async_context(running_sidecar(database_url=pg_url, enable_persistence=True,
                                                                 sidecar_id=f"s{i}"))
            ch = await stack.enter_async_context(grpc.aio.insecure_channel(sc.address))
            nodes.append(Node(sc, ch, f"bot-{i}"))
        cfg = t.RiskConfiguration(account_id=ACCOUNT, config_id="wide", is_active=True, **config)
        for node in nodes:
            await node.admin.SaveConfig(ad.SaveConfigRequest(config=cfg))
        yield nodes


def check(resp: rs.CanTradeResponse, name: str) -> t.CheckResult:
    (found,) = [c for c in resp.checks if c.name == name]
    return found


async def sees(node: Node, name: str, predicate: str) -> bool:
    """The node's CanTrade (no order) shows check `name` with `predicate` in its detail."""
    return predicate in check(await node.can_trade(), name).detail


async def test_losses_spread_over_three_sidecars_pause_every_trader_within_a_second(pg_url: str) -> None:
    async with three_sidecars(pg_url, daily_max_drawdown_percentage=5.0, account_daily_loss_percentage=3.0) as nodes:
        for node in nodes:
            await node.equity(10_000.0)
        for node in nodes:  # each view holds the three traders (the others' from the database)
            assert await eventually(lambda n=node: sees(n, "account_daily_loss", "3 traders"), timeout=10)
        await nodes[0].equity(9_600.0)  # -4%   (each under its own 5% daily limit)
        await nodes[1].equity(9_650.0)  # -3.5%: the account -2.5%, under its 3%
        assert await eventually(lambda: sees(nodes[2], "account_daily_loss", "2.50%"), timeout=10)
        assert all([(await n.can_trade()).allowed for n in nodes])

        started = time.monotonic()
        await nodes[2].equity(9_800.0)  # -2%: the account -3.17%
        paused_after: dict[str, float] = {}

        async def watch(node: Node) -> None:
            while True:
                resp = await node.can_trade()
                if resp.trading_state == t.TRADING_STATE_HALTED:
                    paused_after[node.trader] = time.monotonic() - started
                    return
                await asyncio.sleep(0.01)

        await asyncio.wait_for(asyncio.gather(*(watch(n) for n in nodes)), timeout=5)
        print(f"\naccount daily-loss breach -> trader paused, per sidecar (s): "
              f"{ {k: round(v, 3) for k, v in sorted(paused_after.items())} }")
        assert max(paused_after.values()) < 1.0, paused_after
        for node in nodes:
            # The account pause (the control plane) can reach a sidecar before its view's next round: the numbers
            # follow within account_view_seconds.
            assert await eventually(lambda n=node: sees(n, "account_daily_loss", "3.17%"), timeout=10)
            resp = await node.can_trade()
            loss = check(resp, "account_daily_loss")
            assert not resp.allowed and resp.code in (t.DECISION_CODE_ACCOUNT_LIMIT, t.DECISION_CODE_KILL_SWITCH)
            assert (round(loss.value, 2), loss.limit, loss.code) == (3.17, 3.0, t.DECISION_CODE_ACCOUNT_LIMIT)
            daily = check(resp, "daily_loss")
            assert daily.status == t.CHECK_STATUS_PASS  # no trader breached its own limit
            assert node.sidecar.account_view.pauses == 1  # once per episode


async def test_an_order_beyond_the_accounts_gross_exposure_across_sidecars_is_denied(pg_url: str) -> None:
    async with three_sidecars(pg_url, account_max_gross_exposure=100_000.0, account_max_net_exposure=80_000.0) as nodes:
        for node in nodes:
            await node.equity(50_000.0)
        await nodes[0].risk.ReportPositions(rs.ReportPositionsRequest(trader_id="bot-1", account_id=ACCOUNT, positions=[
            t.Position(symbol="BTCUSDT", side=t.SIDE_BUY, quantity=1.0, entry_price=60_000.0, mark_price=60_000.0)]))
        await nodes[1].risk.ReportPositions(rs.ReportPositionsRequest(trader_id="bot-2", account_id=ACCOUNT, positions=[
            t.Position(symbol="ETHUSDT", side=t.SIDE_SELL, quantity=10.0, entry_price=3_000.0, mark_price=3_000.0)]))
        assert await eventually(lambda: sees(nodes[2], "account_gross_exposure", "exposure 90000.00"), timeout=10)

        too_big = await nodes[2].can_trade(t.OrderIntent(symbol="SOLUSDT", side=t.SIDE_BUY, quantity=100.0,
                                                         price=150.0))  # +15,000 -> 105,000
        fits = await nodes[2].can_trade(t.OrderIntent(symbol="SOLUSDT", side=t.SIDE_BUY, quantity=50.0,
                                                      price=100.0))  # +5,000 -> 95,000 (pending from now on)

        assert not too_big.allowed and too_big.code == t.DECISION_CODE_ACCOUNT_LIMIT, too_big.reason
        gross = check(too_big, "account_gross_exposure")
        assert (gross.value, gross.limit) == (105_000.0, 100_000.0) and "view" in gross.detail
        assert fits.allowed, fits.reason
        # bot-3's pending order reaches sidecar s1's view: 95,000 there, and 6,000 more is beyond the limit
        assert await eventually(lambda: sees(nodes[0], "account_gross_exposure", "exposure 95000.00"), timeout=10)
        denied = await nodes[0].can_trade(t.OrderIntent(symbol="BTCUSDT", side=t.SIDE_BUY, quantity=0.1,
                                                        price=60_000.0))
        assert not denied.allowed and denied.code == t.DECISION_CODE_ACCOUNT_LIMIT
        closing = await nodes[0].can_trade(t.OrderIntent(symbol="BTCUSDT", side=t.SIDE_SELL, quantity=0.5,
                                                         price=60_000.0, reduce_only=True))
        assert closing.allowed, closing.reason  # reducing its own position: never denied by an account limit


async def test_a_sidecars_trader_reaches_risk_state_well_within_account_view_seconds(pg_url: str) -> None:
    """The publishing delay (store writer queue -> risk_state) under a steady background load of reports."""
    async with running_sidecar(database_url=pg_url, enable_persistence=True, sidecar_id="s1") as sc, \
            grpc.aio.insecure_channel(sc.address) as ch:
        risk = rsg.RiskServiceStub(ch)
        db = create_engine(pg_url)
        stop = asyncio.Event()

        async def load() -> None:  # ~200 reports a second of 20 other traders
            i = 0
            while not stop.is_set():
                i += 1
                await risk.ReportEquity(rs.ReportEquityRequest(trader_id=f"load-{i % 20}", account_id="other",
                                                               equity=10_000.0 + i % 97))
                await asyncio.sleep(0.005)

        def stored() -> float | None:
            with db.connect() as conn:
                return conn.execute(text("SELECT current_equity FROM risk_state WHERE trader_id = 'probe'")).scalar()

        background = asyncio.create_task(load())
        delays = []
        try:
            for n in range(30):
                value = 20_000.0 + n
                started = time.monotonic()
                await risk.ReportEquity(rs.ReportEquityRequest(trader_id="probe", account_id=ACCOUNT, equity=value))
                while await asyncio.to_thread(stored) != value:
                    await asyncio.sleep(0.002)
                delays.append(time.monotonic() - started)
        finally:
            stop.set()
            await background
            db.dispose()
        delays.sort()
        p50, p99 = statistics.median(delays), delays[int(len(delays) * 0.99) - 1]
        print(f"\nreport -> risk_state row visible (s): p50 {p50:.4f} p99 {p99:.4f} max {delays[-1]:.4f} "
              f"(account_view_seconds {sc.settings.account_view_seconds})")
        # The median is the claim; the tail on a shared 2-core machine is printed, not asserted (one run measured a
        # 1.3 s maximum while other test suites ran alongside).
        assert p50 < sc.settings.account_view_seconds


async def test_the_account_peak_is_shared_through_account_marks_and_drawdown_seen_everywhere(pg_url: str) -> None:
    async with three_sidecars(pg_url, account_max_drawdown_percentage=10.0, max_drawdown_percentage=50.0) as nodes:
        for node in nodes:
            await node.equity(10_000.0)
        await nodes[0].equity(13_000.0)  # the account: 33,000, its peak

        db = create_engine(pg_url)
        try:
            def peak() -> float | None:
                with db.connect() as conn:
                    return conn.execute(text("SELECT peak_equity FROM account_marks WHERE account_id = :a"),
                                        {"a": ACCOUNT}).scalar()

            assert await eventually(lambda: peak() == 33_000.0, timeout=10)
            await nodes[0].equity(10_000.0)  # 30,000: 9.09% below the peak
            await nodes[1].equity(9_600.0)  # 29,600: 10.3%
            assert await eventually(lambda: sees(nodes[2], "account_drawdown", "peak 33000.00"), timeout=10)
            assert await eventually(
                lambda: all_halted(nodes), timeout=5), [n.sidecar.account_view.pauses for n in nodes]
            # The account pause can reach nodes[2] before its view's next round: the numbers follow.
            assert await eventually(lambda: sees(nodes[2], "account_drawdown", "equity 29600.00"), timeout=10)
            resp = await nodes[2].can_trade()
            dd = check(resp, "account_drawdown")
            assert (round(dd.value, 2), dd.limit) == (10.30, 10.0) and "equity 29600.00" in dd.detail
            assert peak() == 33_000.0  # a lower sum never lowers it
        finally:
            db.dispose()


async def all_halted(nodes: list[Node]) -> bool:
    return all([(await n.can_trade()).trading_state == t.TRADING_STATE_HALTED for n in nodes])
