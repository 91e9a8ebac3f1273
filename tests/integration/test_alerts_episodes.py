"""Alerts, one per episode per event kind, with the right content: a real sidecar (gRPC on port 0) on a fresh
PostgreSQL database, a real local HTTP receiver (tests/support/alert_receiver.py) as the generic webhook."""

from __future__ import annotations

from collections import Counter
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2

from tests.support.alert_receiver import AlertReceiver
from tests.support.pg import fresh_database, plain_dsn
from tests.support.proxy import FaultProxy
from tests.support.sidecar import running_sidecar
from tests.support.wait import eventually
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.sidecar import ALERTS_HEALTH

pytestmark = pytest.mark.integration

FAST = {"alert_retry_initial_s": 0.1, "alert_retry_max_s": 0.5, "alert_poll_s": 0.5, "enable_persistence": True}
BTC = t.Position(symbol="BTCUSDT", exchange="binance", side=t.SIDE_BUY, quantity=0.1, entry_price=50_000,
                 mark_price=50_000)
BREAKER = {"name": "dd10", "account_id": "acct-2", "condition": "max_drawdown", "action": "close_position",
           "parameters": {"threshold": 0.1}, "symbols": ["BTCUSDT"], "exchanges": ["binance"], "enabled": True}


def by_event(bodies: list[Any]) -> Counter[str]:
    return Counter(b["event"] for b in bodies)


def one(bodies: list[Any], event: str, **match: str) -> dict[str, Any]:
    found = [b for b in bodies if b["event"] == event and all(b.get(k) == v for k, v in match.items())]
    assert len(found) == 1, f"{event} {match}: {len(found)} alerts in {bodies}"
    return found[0]


async def test_each_event_kind_is_alerted_once_per_episode_with_trader_account_and_reason(
        receiver: AlertReceiver) -> None:
    with fresh_database() as url:
        async with running_sidecar(database_url=url, alert_webhook_url=receiver.url(), sidecar_id="sc-1",
                                   **FAST) as sc, grpc.aio.insecure_channel(sc.address) as ch:
            risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
            b1 = {"trader_id": "bot-1", "account_id": "acct-1"}
            # A loss-limit breach (10% daily loss, limit 5%): paused by the limit. Denied calls and a deeper loss
            # while paused are the same episode.
            await risk.ReportEquity(rs.ReportEquityRequest(**b1, equity=10_000))
            await risk.ReportEquity(rs.ReportEquityRequest(**b1, equity=9_000))
            for _ in range(3):
                await risk.CanTrade(rs.CanTradeRequest(**b1))
            await risk.ReportEquity(rs.ReportEquityRequest(**b1, equity=8_900))
            await admin.ResumeTrading(ad.ResumeTradingRequest(**b1))
            # A new episode: an operator's pause; a second pause on top is the same episode.
            await admin.PauseTrading(ad.PauseTradingRequest(**b1, trading_state=t.TRADING_STATE_HALTED,
                                                            reason="desk check"))
            await admin.PauseTrading(ad.PauseTradingRequest(**b1, trading_state=t.TRADING_STATE_REDUCING,
                                                            reason="still checking"))
            await admin.ResumeTrading(ad.ResumeTradingRequest(**b1))
            # A breaker firing (close_position), once per breaker episode.
            b2 = {"trader_id": "bot-2", "account_id": "acct-2"}
            await admin.CreateBreaker(ad.CreateBreakerRequest(breaker=json_format.ParseDict(BREAKER,
                                                                                            t.CircuitBreaker())))
            await risk.ReportEquity(rs.ReportEquityRequest(**b2, equity=10_000))
            await risk.ReportPositions(rs.ReportPositionsRequest(**b2, positions=[BTC]))
            await risk.ReportEquity(rs.ReportEquityRequest(**b2, equity=8_800))
            await risk.ReportEquity(rs.ReportEquityRequest(**b2, equity=8_700))
            # A breaker whose action is `alert` (event only, no pause): its firing finally reaches someone.
            b4 = {"trader_id": "bot-4", "account_id": "acct-4"}
            watch_only = {**BREAKER, "name": "dd3-alert", "account_id": "acct-4", "action": "alert",
                          "parameters": {"threshold": 0.03}}
            await admin.CreateBreaker(ad.CreateBreakerRequest(breaker=json_format.ParseDict(watch_only,
                                                                                            t.CircuitBreaker())))
            await risk.ReportEquity(rs.ReportEquityRequest(**b4, equity=10_000))
            await risk.ReportPositions(rs.ReportPositionsRequest(**b4, positions=[BTC]))
            await risk.ReportEquity(rs.ReportEquityRequest(**b4, equity=9_600))  # 4% drawdown: fires, no limit hit
            await risk.ReportEquity(rs.ReportEquityRequest(**b4, equity=9_650))
            # The account kill switch: one alert for the account, none per trader; pressed twice = one episode.
            b3 = {"trader_id": "bot-3", "account_id": "acct-3"}
            await risk.ReportEquity(rs.ReportEquityRequest(**b3, equity=10_000))
            await admin.PauseTrading(ad.PauseTradingRequest(account_id="acct-3", trading_state=t.TRADING_STATE_HALTED,
                                                            reason="exchange incident"))
            assert not (await risk.CanTrade(rs.CanTradeRequest(**b3))).allowed
            await admin.PauseTrading(ad.PauseTradingRequest(account_id="acct-3", trading_state=t.TRADING_STATE_HALTED,
                                                            reason="exchange incident, again"))
            await admin.ResumeTrading(ad.ResumeTradingRequest(account_id="acct-3"))
            # The last alert: the webhook gets a notifier's deliveries in order, so all the above came before it.
            await admin.PauseTrading(ad.PauseTradingRequest(all_accounts=True, trading_state=t.TRADING_STATE_HALTED,
                                                            reason="marker"))
            assert await receiver.wait_for(lambda got: any(r.body.get("account_id") == "*" for r in got))
            bodies = receiver.bodies()

    assert by_event(bodies) == {"loss_limit_breach": 2, "trader_paused": 3, "trader_resumed": 2,
                                "breaker_fired": 2, "kill_switch": 2, "kill_switch_lifted": 1}, bodies
    breach = one(bodies, "loss_limit_breach", trader_id="bot-1")
    assert breach["account_id"] == "acct-1" and "DAILY_LOSS" in breach["reason"]
    assert breach["details"]["code"] == "DAILY_LOSS_LIMIT" and breach["sidecar"] == "sc-1"
    assert breach["severity"] == "critical" and breach["at"].endswith("Z")
    paused = [b for b in bodies if b["event"] == "trader_paused" and b["trader_id"] == "bot-1"]
    assert [p["details"]["source"] for p in paused] == ["limit", "manual"]
    assert "desk check" in paused[1]["reason"] and "operator" in paused[1]["reason"]
    assert len([b for b in bodies if b["event"] == "trader_resumed" and b["trader_id"] == "bot-1"]) == 2
    fired = one(bodies, "breaker_fired", trader_id="bot-2")
    assert fired["account_id"] == "acct-2" and fired["details"]["action"] == "close_position"
    assert "dd10" in fired["reason"] and fired["details"]["event_id"] and fired["severity"] == "critical"
    alerted = one(bodies, "breaker_fired", trader_id="bot-4")
    assert alerted["details"]["action"] == "alert" and alerted["severity"] == "warning"
    assert alerted["account_id"] == "acct-4" and "dd3-alert" in alerted["reason"]
    assert not [b for b in bodies if b["trader_id"] == "bot-4" and b["event"] != "breaker_fired"]
    kill = one(bodies, "kill_switch", account_id="acct-3")
    assert kill["trader_id"] == "" and "exchange incident" in kill["reason"] and kill["details"]["scope"] == "account"
    assert one(bodies, "kill_switch_lifted", account_id="acct-3")["details"]["scope"] == "account"
    assert not [b for b in bodies if b["trader_id"] == "bot-3"]  # the account's alert, not one per trader


async def test_store_outage_and_stale_control_state_are_alerted_during_the_outage_and_stored_after(
        receiver: AlertReceiver) -> None:
    """The store_unavailable alert cannot wait for the database: it arrives while the database is still cut, and
    its outbox row is written once the database is back."""
    with fresh_database() as url:
        proxy = await FaultProxy().start()
        try:
            async with running_sidecar(database_url=proxy.url_for(url), alert_webhook_url=receiver.url(),
                                       sidecar_id="sc-1", control_state_max_age_seconds=1.0,
                                       control_poll_seconds=0.2, **FAST) as sc, \
                    grpc.aio.insecure_channel(sc.address) as ch:
                risk = rsg.RiskServiceStub(ch)
                ids = {"trader_id": "bot-1", "account_id": "acct-1"}
                await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=10_000))
                assert await sc.store.flush(timeout=10)
                assert await eventually(lambda: sc.persistence.loaded and sc.control_listener is not None
                                        and sc.control_listener.hearing and not sc.control_listener.overdue, 30)
                proxy.cut()
                await risk.ReportEquity(rs.ReportEquityRequest(**ids, equity=10_001))  # the writer meets the outage
                assert await receiver.wait_for(lambda got: {"store_unavailable", "control_state_stale"} <= {
                    r.body["event"] for r in got}, timeout=60)
                during = by_event(receiver.bodies())
                proxy.restore()
                assert await receiver.wait_for(lambda got: {"store_recovered", "control_state_recovered"} <= {
                    r.body["event"] for r in got}, timeout=60)
                status = await sc.health.Check(health_pb2.HealthCheckRequest(service=ALERTS_HEALTH), None)
                assert status.status == health_pb2.HealthCheckResponse.SERVING
                assert await sc.store.flush(timeout=30)

                def stored() -> dict[str, int]:
                    with psycopg.connect(plain_dsn(url)) as conn:
                        rows = conn.execute("SELECT event, count(*) FROM alert_outbox WHERE delivered_at IS NOT NULL"
                                            " GROUP BY event").fetchall()
                    return {event: n for event, n in rows}

                assert await eventually(lambda: len(stored()) == 4, timeout=30), stored()
                final = stored()
        finally:
            await proxy.close()
    assert during == {"store_unavailable": 1, "control_state_stale": 1}
    bodies = receiver.bodies()
    assert by_event(bodies) == {"store_unavailable": 1, "control_state_stale": 1, "store_recovered": 1,
                                "control_state_recovered": 1}, bodies
    assert final == {"store_unavailable": 1, "control_state_stale": 1, "store_recovered": 1,
                        "control_state_recovered": 1}
    recovered = one(bodies, "store_recovered")
    assert recovered["sidecar"] == "sc-1" and recovered["details"]["down_seconds"] > 0


async def test_a_relapse_of_the_control_state_soon_after_it_is_heard_again_is_the_same_stale_episode(
        receiver: AlertReceiver) -> None:
    """After an outage the control state is heard again, then not heard for control_state_max_age_seconds once
    more (a slow read on a loaded machine: the connection stays up, its bytes are held): that relapse is the same
    stale episode - one control_state_stale, one control_state_recovered once it has stayed fresh."""
    with fresh_database() as url:
        proxy = await FaultProxy().start()
        try:
            async with running_sidecar(database_url=proxy.url_for(url), alert_webhook_url=receiver.url(),
                                       sidecar_id="sc-1", control_state_max_age_seconds=1.0,
                                       control_poll_seconds=0.2, **FAST) as sc:
                listener = sc.control_listener
                assert listener is not None
                assert await eventually(lambda: sc.persistence.loaded and listener.hearing and not listener.overdue,
                                        30)
                proxy.cut()
                assert await receiver.wait_for(lambda got: any(r.body["event"] == "control_state_stale" for r in got),
                                               timeout=60)
                proxy.restore()
                assert await eventually(lambda: not listener.overdue, 60)  # heard again ...
                proxy.stall(120)  # ... and at once not heard any more: the listener's connection holds its bytes
                assert await eventually(lambda: listener.overdue, 60)
                proxy.stall(0)
                assert await eventually(lambda: not listener.overdue, 60)
                assert await receiver.wait_for(lambda got: any(r.body["event"] == "control_state_recovered"
                                                               for r in got), timeout=60)
                assert await eventually(lambda: sc.alerts.alerts_pending() == 0, 30)
        finally:
            await proxy.close()
    bodies = receiver.bodies()
    control = Counter(b["event"] for b in bodies if b["event"].startswith("control_state_"))
    assert control == {"control_state_stale": 1, "control_state_recovered": 1}, bodies
    stale, recovered = one(bodies, "control_state_stale"), one(bodies, "control_state_recovered")
    assert recovered["details"]["down_since"] == stale["at"] and recovered["details"]["down_seconds"] > 0


async def test_two_sidecars_on_one_database_alert_an_account_kill_switch_once(receiver: AlertReceiver) -> None:
    """Cluster mode: both sidecars apply the account's pause to their traders; only the one it was pressed on
    alerts it, and neither alerts its traders one by one. The trader paused on its owner is alerted by the owner."""
    with fresh_database() as url:
        async with running_sidecar(database_url=url, alert_webhook_url=receiver.url(), sidecar_id="sc-a",
                                   control_poll_seconds=0.2, **FAST) as a, \
                running_sidecar(database_url=url, alert_webhook_url=receiver.url(), sidecar_id="sc-b",
                                control_poll_seconds=0.2, **FAST) as b, \
                grpc.aio.insecure_channel(a.address) as ch_a, grpc.aio.insecure_channel(b.address) as ch_b:
            await rsg.RiskServiceStub(ch_a).ReportEquity(rs.ReportEquityRequest(trader_id="bot-a", account_id="acct-1",
                                                                                equity=10_000))
            risk_b = rsg.RiskServiceStub(ch_b)
            await risk_b.ReportEquity(rs.ReportEquityRequest(trader_id="bot-b", account_id="acct-1", equity=10_000))
            await adg.AdminServiceStub(ch_a).PauseTrading(ad.PauseTradingRequest(
                account_id="acct-1", trading_state=t.TRADING_STATE_HALTED, reason="venue down"))
            assert await eventually(
                lambda: _denied(risk_b, "bot-b"), timeout=10)  # in force on sc-b too (applied from the log)
            # A trader's own pause pressed on sc-a for sc-b's trader: applied (and alerted) by its owner, sc-b.
            await adg.AdminServiceStub(ch_a).PauseTrading(ad.PauseTradingRequest(
                trader_id="bot-b", account_id="acct-1", trading_state=t.TRADING_STATE_HALTED, reason="own pause"))
            assert await receiver.wait_for(lambda got: any(r.body["event"] == "trader_paused" for r in got))
            await adg.AdminServiceStub(ch_b).PauseTrading(ad.PauseTradingRequest(  # the marker, from sc-b
                all_accounts=True, trading_state=t.TRADING_STATE_HALTED, reason="marker"))
            assert await receiver.wait_for(lambda got: any(r.body["account_id"] == "*" for r in got))
            assert await eventually(lambda: a.alerts.alerts_pending() == 0 and b.alerts.alerts_pending() == 0)
    bodies = receiver.bodies()
    kills = [b for b in bodies if b["event"] == "kill_switch" and b["account_id"] == "acct-1"]
    assert len(kills) == 1 and kills[0]["sidecar"] == "sc-a" and "venue down" in kills[0]["reason"]
    paused = [b for b in bodies if b["event"] == "trader_paused"]
    assert len(paused) == 1 and paused[0]["trader_id"] == "bot-b" and paused[0]["sidecar"] == "sc-b"
    assert "own pause" in paused[0]["reason"]
    assert by_event(bodies) == {"kill_switch": 2, "trader_paused": 1}


async def _denied(risk: rsg.RiskServiceStub, trader: str) -> bool:
    reply = await risk.CanTrade(rs.CanTradeRequest(trader_id=trader, account_id="acct-1"))
    return not reply.allowed
