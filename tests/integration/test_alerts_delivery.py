"""Alert delivery survives what receivers and sidecars do: a receiver down for 30 s, a sidecar SIGKILLed between
the event and its delivery. Real PostgreSQL, real gRPC on port 0, a real local HTTP receiver."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2
from prometheus_client import generate_latest

from tests.support.alert_receiver import AlertReceiver
from tests.support.cluster import sample
from tests.support.pg import fresh_database, plain_dsn
from tests.support.sidecar import running_sidecar, spawn_sidecar
from tests.support.wait import eventually
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.sidecar import ALERTS_HEALTH

pytestmark = pytest.mark.integration

OUTAGE_S = 30.0


def outbox_rows(url: str) -> list[tuple[str, str, int, bool]]:
    with psycopg.connect(plain_dsn(url)) as conn:
        rows = conn.execute("SELECT key, event, attempts, delivered_at IS NOT NULL FROM alert_outbox "
                            "ORDER BY id").fetchall()
    return [(k, e, a, d) for k, e, a, d in rows]


async def test_receiver_down_30s_then_up_every_alert_is_delivered_exactly_once_and_the_notifier_shows_down(
        receiver: AlertReceiver) -> None:
    """A real 30 s outage (connections refused), backoff capped at 2 s so the test does not wait for a 5-minute
    retry after it. While it lasts: the notifier is down in health (tradeguard.alerts NOT_SERVING, the overall
    status still SERVING: trading goes on) and in metrics; CanTrade answers as before."""
    await receiver.down()
    with fresh_database() as url:
        async with running_sidecar(database_url=url, enable_persistence=True, alert_webhook_url=receiver.url(),
                                   alert_retry_initial_s=0.2, alert_retry_max_s=2.0, alert_dead_after_failures=3,
                                   alert_poll_s=1.0, metrics_listen="127.0.0.1:0", sidecar_id="sc-1") as sc, \
                grpc.aio.insecure_channel(sc.address) as ch:
            risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
            down_at = time.monotonic()
            for bot in ("bot-1", "bot-2", "bot-3"):
                await risk.ReportEquity(rs.ReportEquityRequest(trader_id=bot, account_id="acct-1", equity=10_000))
                await admin.PauseTrading(ad.PauseTradingRequest(trader_id=bot, account_id="acct-1",
                                                                trading_state=t.TRADING_STATE_HALTED, reason="outage"))
            await admin.ResumeTrading(ad.ResumeTradingRequest(trader_id="bot-1", account_id="acct-1"))
            await admin.PauseTrading(ad.PauseTradingRequest(account_id="acct-2", trading_state=t.TRADING_STATE_HALTED,
                                                            reason="outage"))
            expected = 5  # three trader_paused, one trader_resumed, one kill_switch

            async def alerts_health_is(want: int) -> bool:
                reply = await sc.health.Check(health_pb2.HealthCheckRequest(service=ALERTS_HEALTH), None)
                return bool(reply.status == want)

            assert await eventually(lambda: len(outbox_rows(url)) == expected, timeout=20)  # stored before sent
            assert await eventually(lambda: sc.alerts.alerts_failed()["webhook"] >= 3, timeout=20)
            assert await eventually(lambda: alerts_health_is(health_pb2.HealthCheckResponse.NOT_SERVING), timeout=20)
            overall = await sc.health.Check(health_pb2.HealthCheckRequest(service=""), None)
            assert overall.status == health_pb2.HealthCheckResponse.SERVING
            assert (await risk.CanTrade(rs.CanTradeRequest(trader_id="bot-1", account_id="acct-1"))).allowed
            text = generate_latest(sc.metrics.registry).decode()  # type: ignore[attr-defined]
            assert sample(text, "tradeguard_alert_notifier_up", {"notifier": "webhook"}) == 0.0
            assert sample(text, "tradeguard_alerts_pending") == expected
            assert (sample(text, "tradeguard_alerts_failed_total", {"notifier": "webhook"}) or 0) >= 3
            assert not any(delivered for *_r, delivered in outbox_rows(url))

            await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))  # the outage itself
            refused = receiver.received == []
            await receiver.up()
            assert await receiver.wait_for(lambda got: len(got) >= expected, timeout=30)
            assert await eventually(lambda: all(d for *_r, d in outbox_rows(url)), timeout=30)
            assert await eventually(lambda: alerts_health_is(health_pb2.HealthCheckResponse.SERVING), timeout=20)
            text = generate_latest(sc.metrics.registry).decode()  # type: ignore[attr-defined]
            rows = outbox_rows(url)
    assert refused
    keys = Counter(b["key"] for b in receiver.bodies())
    assert len(keys) == expected and set(keys.values()) == {1}, keys  # every alert, each once
    assert {key for key, *_rest in rows} == set(keys)
    assert Counter(b["event"] for b in receiver.bodies()) == {"trader_paused": 3, "trader_resumed": 1,
                                                               "kill_switch": 1}
    assert all(attempts > 3 for _k, _e, attempts, _d in rows)  # retried through the outage
    assert sample(text, "tradeguard_alert_notifier_up", {"notifier": "webhook"}) == 1.0
    assert sample(text, "tradeguard_alerts_pending") == 0
    assert sample(text, "tradeguard_alerts_sent_total", {"notifier": "webhook", "event": "trader_paused"}) == 3


async def test_sidecar_sigkilled_between_event_and_delivery_delivers_after_restart_once(
        receiver: AlertReceiver, tmp_path: Path) -> None:
    """The receiver is down when the trader is paused: the alert is in the outbox (attempted, undelivered) when
    the sidecar is SIGKILLed. Restarted (same sidecar_id, receiver up), it delivers it once; the paused trader's
    alert derived again from the stored state collapses into the stored one."""
    await receiver.down()
    with fresh_database() as url:
        args = ("--database-url", url, "--sidecar-id", "sc-k", "--alert-webhook-url", receiver.url(),
                "--alert-retry-initial-s", "0.2", "--alert-retry-max-s", "0.5")
        first = await asyncio.to_thread(spawn_sidecar, tmp_path, *args, name="first")
        try:
            async with grpc.aio.insecure_channel(first.address) as ch:
                await rsg.RiskServiceStub(ch).ReportEquity(rs.ReportEquityRequest(trader_id="bot-1",
                                                                                  account_id="acct-1", equity=10_000))
                await adg.AdminServiceStub(ch).PauseTrading(ad.PauseTradingRequest(
                    trader_id="bot-1", account_id="acct-1", trading_state=t.TRADING_STATE_HALTED, reason="night"))
            assert await eventually(lambda: [(e, a > 0, d) for _k, e, a, d in outbox_rows(url)] == [
                ("trader_paused", True, False)], timeout=30), outbox_rows(url)
        finally:
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait()
        assert receiver.received == []
        await receiver.up()
        second = await asyncio.to_thread(spawn_sidecar, tmp_path, *args, name="second")
        try:
            assert await receiver.wait_for(lambda got: len(got) >= 1, timeout=30)
            assert await eventually(lambda: all(d for *_r, d in outbox_rows(url)), timeout=30)
            async with grpc.aio.insecure_channel(second.address) as ch:  # the restarted sidecar keeps the pause
                state = await rsg.RiskServiceStub(ch).CanTrade(rs.CanTradeRequest(trader_id="bot-1",
                                                                                  account_id="acct-1"))
            rows = outbox_rows(url)
        finally:
            assert second.terminate() == 0
    assert not state.allowed
    bodies = receiver.bodies()
    assert len(bodies) == 1, [(b["key"], b["details"]) for b in bodies]
    assert bodies[0]["event"] == "trader_paused" and bodies[0]["trader_id"] == "bot-1"
    assert bodies[0]["sidecar"] == "sc-k" and "night" in bodies[0]["reason"]
    assert len(rows) == 1 and rows[0][3]  # one row, delivered: the re-derived alert collapsed into it
    assert "1 undelivered deliveries taken up from the outbox" in second.log()


async def test_sqlite_outbox_marks_the_delivery_and_a_restart_does_not_send_it_again(
        receiver: AlertReceiver, tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "alerts.db"
    settings = {"database_url": f"sqlite:///{db}", "enable_persistence": True, "alert_webhook_url": receiver.url(),
                "sidecar_id": "sc-s", "alert_retry_initial_s": 0.1, "alert_retry_max_s": 0.5}

    def rows() -> list[tuple[str, str, bool]]:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            return [(e, trader, d is not None) for e, trader, d in conn.execute(
                "SELECT event, trader_id, delivered_at FROM alert_outbox ORDER BY id")]

    async with running_sidecar(**settings) as sc, grpc.aio.insecure_channel(sc.address) as ch:
        await rsg.RiskServiceStub(ch).ReportEquity(rs.ReportEquityRequest(trader_id="bot-1", account_id="acct-1",
                                                                          equity=10_000))
        await adg.AdminServiceStub(ch).PauseTrading(ad.PauseTradingRequest(
            trader_id="bot-1", account_id="acct-1", trading_state=t.TRADING_STATE_HALTED, reason="sqlite"))
        assert await receiver.wait_for(lambda got: len(got) == 1)
        assert await eventually(lambda: rows() == [("trader_paused", "bot-1", True)])
    async with running_sidecar(**settings) as sc:  # restarted: the paused trader's alert is derived again...
        assert await eventually(lambda: sc.alerts.duplicates == 1)  # ...and collapses into the stored one
        assert sc.alerts.alerts_pending() == 0
    assert rows() == [("trader_paused", "bot-1", True)] and len(receiver.received) == 1
