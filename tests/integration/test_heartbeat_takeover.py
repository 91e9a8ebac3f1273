"""The dead-man's switch across a takeover (cluster mode): a trader whose sidecar died or stopped is owned by nobody
until a call claims it, so no sidecar counts its silence. The claim judges it (heartbeat.DeadMansSwitch.taken_over):
the silence since the previous lease ended is at least that long (a call of the bot would have claimed it), and past
heartbeat_timeout_seconds the trader is paused before the claiming call is answered, with cancel_all_orders for its
pending orders. A handover faster than the timeout pauses nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.support.cluster import Member, running_cluster
from tests.support.pg import query
from tests.support.wait import eventually
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import types_pb2 as t

ACCOUNT = "acct-hb"


async def with_heartbeat(a: Member, b: Member, trader_id: str, timeout_s: int) -> None:
    """The account's heartbeat (saved on a, heard by b), and the trader's equity reported to a."""
    await a.admin.SaveConfig(ad.SaveConfigRequest(config=t.RiskConfiguration(
        account_id=ACCOUNT, config_id="hb", is_active=True, heartbeat_timeout_seconds=timeout_s)))
    await b.admin.ListConfigs(ad.ListConfigsRequest(account_id=ACCOUNT))
    await a.risk.ReportEquity(rs.ReportEquityRequest(trader_id=trader_id, account_id=ACCOUNT, equity=10_000.0))


def order(client_order_id: str) -> t.OrderIntent:
    return t.OrderIntent(symbol="BTCUSDT", side=t.SIDE_BUY, quantity=0.001, price=100.0,
                         client_order_id=client_order_id)


async def test_a_trader_silent_since_its_sidecar_died_is_halted_when_taken_over_with_its_orders_cancelled(
        tmp_path: Path, pg_url: str) -> None:
    async with running_cluster(tmp_path, pg_url, 2, settings={"trader_lease_seconds": 1}) as cluster:
        a, b = cluster[0], cluster[1]
        await with_heartbeat(a, b, "t1", 2)
        allowed = await a.risk.CanTrade(rs.CanTradeRequest(trader_id="t1", account_id=ACCOUNT, order=order("o-1")))
        assert allowed.allowed, allowed.reason

        def stored() -> bool:  # the pending order is in the row the next owner loads
            rows = query(pg_url, "SELECT pending_orders FROM risk_state WHERE trader_id = 't1'")
            return bool(rows) and [o["client_order_id"] for o in rows[0][0]] == ["o-1"]

        assert await eventually(stored, timeout=10)
        a.kill()  # SIGKILL: bot and sidecar die together
        await asyncio.sleep(3.5)  # the silence: > 2 s after the 1 s lease ended
        reply = await b.risk.CanTrade(rs.CanTradeRequest(trader_id="t1", account_id=ACCOUNT, order=order("o-2")))

    assert not reply.allowed and reply.trading_state == t.TRADING_STATE_HALTED, reply.reason
    assert "dead-man's switch" in reply.reason
    cancels = [list(x.client_order_ids) for x in reply.actions if x.type == t.ACTION_TYPE_CANCEL_ALL_ORDERS]
    assert cancels == [["o-1"]], reply.actions


async def test_a_trader_handed_over_faster_than_its_heartbeat_timeout_is_not_paused(
        tmp_path: Path, pg_url: str) -> None:
    async with running_cluster(tmp_path, pg_url, 2, settings={"trader_lease_seconds": 1}) as cluster:
        a, b = cluster[0], cluster[1]
        await with_heartbeat(a, b, "t2", 3)
        for _ in range(8):  # 4 s of heartbeats on A: the timeout has been in effect on B for longer than 3 s
            assert (await a.risk.CanTrade(rs.CanTradeRequest(trader_id="t2", account_id=ACCOUNT))).allowed
            await asyncio.sleep(0.5)
        assert await a.stop() == 0  # a clean stop releases the lease at once
        reply = await b.risk.CanTrade(rs.CanTradeRequest(trader_id="t2", account_id=ACCOUNT, order=order("o-1")))

    assert reply.allowed, reply.reason
