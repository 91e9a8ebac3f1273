"""Issue 21: alerts raised during a PostgreSQL outage survive the process (SIGKILL, SIGTERM) and are never dropped.

Real PostgreSQL behind the suite's TCP proxy (the test cuts the proxy, never the server), real `tradeguard serve`
processes (or an in-process sidecar where memory is looked at), a real local webhook receiver. The alert deliveries
wait in the local spool (table `alerts`) while the outbox (alert_outbox) cannot take them.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg
import pytest
from prometheus_client import generate_latest

from tests.support.alert_receiver import AlertReceiver
from tests.support.cluster import sample
from tests.support.pg import fresh_database, plain_dsn
from tests.support.proxy import FaultProxy
from tests.support.sidecar import SidecarProcess, running_sidecar, spawn_sidecar
from tests.support.wait import eventually
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t

pytestmark = pytest.mark.integration

ACCT = "acct"
FLOOR = 9_990.0  # the alert breaker fires on a report below this
CAUSED = {"trader_paused", "loss_limit_breach", "breaker_fired"}


def outbox(url: str) -> list[tuple[str, str, bool]]:
    """(key, event, delivered) of every alert_outbox row."""
    with psycopg.connect(plain_dsn(url), autocommit=True) as conn:
        rows = conn.execute("SELECT key, event, delivered_at IS NOT NULL FROM alert_outbox ORDER BY id").fetchall()
    return [(str(k), str(e), bool(d)) for k, e, d in rows]


def spooled_alerts(path: Path) -> list[tuple[str, str]]:
    """(key, notifier) of the deliveries in a spool file (read-only; [] before the file or table exists)."""
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return [(str(k), str(n)) for k, n in conn.execute("SELECT key, notifier FROM alerts ORDER BY seq")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


@dataclass
class Rig:
    proxy: FaultProxy
    url: str
    tmp: Path
    spool: Path
    receiver: AlertReceiver

    async def spawn(self, name: str) -> SidecarProcess:
        args = ["--database-url", self.proxy.url_for(self.url), "--sidecar-id", "alert-spool", "--spool-path",
                str(self.spool), "--drain-timeout-s", "2", "--stop-trading-minutes", "600",
                "--control-state-stale-action", "serve", "--kill-switch-store-timeout-s", "0.3",
                "--alert-webhook-url", self.receiver.url(), "--alert-retry-initial-s", "0.2",
                "--alert-retry-max-s", "0.5"]
        # in a thread: the proxy and the receiver run on this event loop and must keep answering meanwhile
        return await asyncio.to_thread(spawn_sidecar, self.tmp, *args, name=name, timeout=60)


@pytest.fixture
async def rig(tmp_path: Path, receiver: AlertReceiver) -> AsyncIterator[Rig]:
    with fresh_database("tg_alertspool") as url:
        proxy = await FaultProxy().start()
        try:
            yield Rig(proxy, url, tmp_path, tmp_path / "spool.db", receiver)
        finally:
            await proxy.close()


async def configure(risk: rsg.RiskServiceStub, admin: adg.AdminServiceStub, traders: list[str]) -> None:
    await admin.SaveConfig(ad.SaveConfigRequest(config=t.RiskConfiguration(
        account_id=ACCT, config_id="c1", is_active=True, max_position_size_percentage=100.0,
        daily_max_drawdown_percentage=5.0)), timeout=10)
    breaker = t.CircuitBreaker(name="floor", account_id=ACCT, condition="equity_floor", action="alert")
    breaker.parameters.update({"value": FLOOR})
    await admin.CreateBreaker(ad.CreateBreakerRequest(breaker=breaker), timeout=10)
    for trader in traders:  # claimed (cluster mode) before the cut
        await risk.ReportEquity(rs.ReportEquityRequest(trader_id=trader, account_id=ACCT, equity=10_000.0),
                                timeout=10)


async def stop(sp: SidecarProcess, sig: signal.Signals) -> None:
    """SIGKILL, or SIGTERM and a clean exit (waited in a thread: the proxy runs on this event loop)."""
    code = await asyncio.to_thread(sp.terminate, sig, 30)
    if sig is signal.SIGTERM:
        assert code == 0, sp.log()[-3000:]


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
async def test_alerts_raised_in_an_outage_survive_the_process_and_are_stored_once_delivered(
        rig: Rig, how: signal.Signals) -> None:
    """Database cut, receiver down: a trader paused by the operator, a loss-limit breach and a breaker firing (an
    account kill switch is refused while the database is away: no alert). The process dies (SIGKILL / SIGTERM)
    with none delivered; started again with the database still cut and the receiver up, it delivers each; the
    database back, alert_outbox holds each once, delivered."""
    await rig.receiver.down()
    first = await rig.spawn("first")
    try:
        async with grpc.aio.insecure_channel(first.address) as ch:
            risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
            await configure(risk, admin, ["paused-bot", "breach-bot", "floor-bot"])
            rig.proxy.cut()
            await admin.PauseTrading(ad.PauseTradingRequest(trader_id="paused-bot", account_id=ACCT,
                                                            trading_state=t.TRADING_STATE_HALTED, reason="outage"),
                                     timeout=10)
            breach = await risk.ReportEquity(rs.ReportEquityRequest(trader_id="breach-bot", account_id=ACCT,
                                                                    equity=9_000.0), timeout=10)
            assert breach.state.trading_state == t.TRADING_STATE_REDUCING, breach
            await risk.ReportEquity(rs.ReportEquityRequest(trader_id="floor-bot", account_id=ACCT,
                                                           equity=FLOOR - 10.0), timeout=10)

        def caused_are_spooled() -> bool:
            keys = {key for key, _n in spooled_alerts(rig.spool)}
            return {key.split(":", 1)[0] for key in keys} >= CAUSED

        assert await eventually(caused_are_spooled, timeout=20), (spooled_alerts(rig.spool), first.log()[-3000:])
        # attempted (refused: the receiver is down) before the stop
        assert await eventually(lambda: "delivery of" in first.log(), timeout=20), first.log()[-3000:]
        spooled = set(spooled_alerts(rig.spool))
    finally:
        await stop(first, how)
    if how is signal.SIGTERM:
        assert "deliveries kept in the local spool" in first.log(), first.log()[-3000:]
    assert rig.receiver.received == []
    spooled |= set(spooled_alerts(rig.spool))  # (SIGTERM: what the stop spooled too)
    keys = {key for key, _n in spooled}

    await rig.receiver.up()
    second = await rig.spawn("second")  # the database still cut
    try:
        assert "alert deliveries not yet in the alert_outbox table" in second.log()
        assert await rig.receiver.wait_for(lambda got: {r.body["key"] for r in got} >= keys, timeout=30), \
            (keys, [r.body["key"] for r in rig.receiver.received], second.log()[-3000:])
        rig.proxy.restore()

        def stored() -> bool:
            rows = outbox(rig.url)
            return {k for k, _e, _d in rows} >= keys and all(d for _k, _e, d in rows)

        assert await eventually(stored, timeout=30), (outbox(rig.url), second.log()[-3000:])
        assert await eventually(lambda: spooled_alerts(rig.spool) == [], timeout=30), spooled_alerts(rig.spool)
    finally:
        await stop(second, signal.SIGTERM)
    rows = outbox(rig.url)
    assert len(rows) == len({k for k, _e, _d in rows})  # each once
    sent = Counter(r.body["key"] for r in rig.receiver.received)
    assert all(sent[k] == 1 for k in keys), sent  # each spooled alert delivered once (none lost, none twice)
    events = Counter(e for _k, e, _d in rows)
    assert events["trader_paused"] == 2, rows  # paused-bot's and breach-bot's; derived again: collapsed
    paused = Counter(b["trader_id"] for b in rig.receiver.bodies(event="trader_paused"))
    assert paused == {"paused-bot": 1, "breach-bot": 1}, paused  # the one derived again at the start: not sent
    assert {"loss_limit_breach", "breaker_fired"} <= set(events), rows


async def test_more_alerts_than_alert_max_pending_in_an_outage_none_dropped_memory_bounded(
        receiver: AlertReceiver) -> None:
    """alert_max_pending=3, the database cut, the receiver down: 12 breaker alerts are all spooled (memory holds at
    most 3); the receiver up (database still cut): all delivered, memory still at most 3; the database back: all
    in alert_outbox once, delivered, and the spool empty (tradeguard_spool_alerts 0)."""
    await receiver.down()
    bound, firings = 3, 12
    with fresh_database("tg_alertbound") as url:
        proxy = await FaultProxy().start()
        held: list[int] = []
        try:
            async with running_sidecar(database_url=proxy.url_for(url), enable_persistence=True,
                                       alert_webhook_url=receiver.url(), alert_retry_initial_s=0.2,
                                       alert_retry_max_s=0.5, alert_max_pending=bound, alert_poll_s=0.5,
                                       metrics_listen="127.0.0.1:0", sidecar_id="sc-bound",
                                       control_state_stale_action="serve") as sc, \
                    grpc.aio.insecure_channel(sc.address) as ch:
                risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
                await configure(risk, admin, ["floor-bot"])
                spool = sc.store.spool  # type: ignore[attr-defined]
                assert spool is not None and sc.alerts.spool is spool
                proxy.cut()

                def memory() -> int:
                    held.append(len(sc.alerts.deliveries))
                    return held[-1]

                for i in range(firings):  # every other report is below the floor: the breaker fires on each
                    await risk.ReportEquity(rs.ReportEquityRequest(trader_id="floor-bot", account_id=ACCT,
                                                                   equity=FLOOR - 10.0 - i), timeout=10)
                    await risk.ReportEquity(rs.ReportEquityRequest(trader_id="floor-bot", account_id=ACCT,
                                                                   equity=10_000.0 + i), timeout=10)
                    memory()
                assert await eventually(lambda: memory() >= 0 and sum(
                    1 for k, _n in spooled_alerts(Path(spool.path)) if k.startswith("breaker_fired")) >= firings,
                    timeout=20), spooled_alerts(Path(spool.path))
                total = spool.alerts_depth
                assert total >= firings
                text = generate_latest(sc.metrics.registry).decode()  # type: ignore[attr-defined]
                assert sample(text, "tradeguard_spool_alerts") == total
                assert sample(text, "tradeguard_spool_journal") == 0
                assert sample(text, "tradeguard_alerts_pending") >= total  # the spool's only ones included

                await receiver.up()
                assert await receiver.wait_for(lambda got: memory() >= 0 and len(
                    {r.body["key"] for r in got}) >= total, timeout=60), (len(receiver.received), total)
                proxy.restore()

                def stored() -> bool:
                    rows = outbox(url)
                    return memory() >= 0 and spool.alerts_depth == 0 and all(d for _k, _e, d in rows) and len(
                        [e for _k, e, _d in rows if e == "breaker_fired"]) == firings

                assert await eventually(stored, timeout=30), (outbox(url), spool.alerts_depth)
                rows = outbox(url)
                text = generate_latest(sc.metrics.registry).decode()  # type: ignore[attr-defined]
                assert sample(text, "tradeguard_spool_alerts") == 0
        finally:
            await proxy.close()
    assert max(held) <= bound, held
    assert len([e for _k, e, _d in rows if e == "breaker_fired"]) == firings, rows
    assert len(rows) == len({k for k, _e, _d in rows}) and all(d for _k, _e, d in rows), rows
    sent = Counter(r.body["key"] for r in receiver.received)
    assert {k for k, _e, _d in rows} <= set(sent) and set(sent.values()) == {1}, sent


# ---- attacks on the change (found while writing it; the fixes are in alerts/delivery.py) ---------------------------

# A delivery the outbox took just before a SIGKILL that came before the spool forgot it is in both at the next
# start. The outbox holds it once (the spooled copy collapses into the stored row), and it is sent once. When a run
# with the database away had delivered it (its outcome in the spool only), the stored row takes that outcome and is
# not sent again: it was, before, because the row taken up from the outbox was attempted as undelivered.

@pytest.mark.parametrize("delivered", [False, True], ids=["undelivered", "delivered-by-a-run-in-the-outage"])
async def test_a_delivery_in_both_the_spool_and_the_outbox_after_a_crash_is_stored_once_and_sent_at_most_once(
        rig: Rig, delivered: bool) -> None:
    from tradeguard_server.alerts.outbox import Delivery
    from tradeguard_server.store.spool import Spool
    from tradeguard_server.store.store import database_name

    first = await rig.spawn("first")  # the schema
    await stop(first, signal.SIGTERM)
    key, now = "breaker_fired:crash-twin", time.time()
    payload = {"event": "breaker_fired", "key": key, "trader_id": "bot-1", "account_id": ACCT}
    with psycopg.connect(plain_dsn(rig.url), autocommit=True) as conn:
        conn.execute("INSERT INTO alert_outbox (key, notifier, event, sidecar, trader_id, account_id, payload, "
                     "created_at, attempts, next_attempt_at) VALUES (%s, 'webhook', 'breaker_fired', 'alert-spool', "
                     "'bot-1', %s, %s::jsonb, to_timestamp(%s), 0, to_timestamp(%s))",
                     (key, ACCT, json.dumps(payload), now, now))
    spool = Spool(str(rig.spool), database=database_name(rig.url))
    await spool.open()
    await spool.upsert_alerts([Delivery(key, "webhook", "breaker_fired", "alert-spool", payload, now, now,
                                        attempts=2 if delivered else 0, delivered_at=now + 1 if delivered else None,
                                        trader_id="bot-1", account_id=ACCT)])
    await spool.close()

    second = await rig.spawn("second")  # the database up, the receiver up
    try:
        assert await eventually(lambda: outbox(rig.url) == [(key, "breaker_fired", True)], timeout=30), \
            (outbox(rig.url), second.log()[-3000:])
        assert await eventually(lambda: spooled_alerts(rig.spool) == [], timeout=30)
    finally:
        await stop(second, signal.SIGTERM)
    assert len(rig.receiver.bodies(event="breaker_fired")) == (0 if delivered else 1), rig.receiver.received


# A stop while new alerts were on their way into the spool (the intake's write queued on the spool thread) lost
# them: taken out of the inbox, the write cancelled with the task before it ran. They now leave the inbox only once
# the spool has them, and the stop spools them.

async def test_a_stop_while_new_alerts_are_being_spooled_keeps_them_in_the_spool(receiver: AlertReceiver) -> None:
    from tradeguard_server.alerts.alert import Alert

    await receiver.down()
    with fresh_database("tg_alertstop") as url:
        proxy = await FaultProxy().start()
        try:
            async with running_sidecar(database_url=proxy.url_for(url), enable_persistence=True,
                                       alert_webhook_url=receiver.url(), sidecar_id="sc-stop",
                                       control_state_stale_action="serve") as sc:
                spool = sc.store.spool  # type: ignore[attr-defined]
                assert spool is not None and spool.is_open
                proxy.cut()
                before = spool.alerts_depth
                gate = threading.Event()
                spool._worker.submit(gate.wait)  # the spool thread busy: the intake's write waits behind it
                try:
                    for i in range(5):
                        sc.alerts.submit(Alert("breaker_fired", f"breaker_fired:stop-{i}", "floor", time.time(),
                                               "sc-stop", "bot-1", ACCT))
                    assert await eventually(lambda: sc.alerts._spool_lock.locked(), timeout=10)  # write queued
                    stopping = asyncio.get_running_loop().create_task(sc.alerts.stop(store_timeout_s=10))
                    assert await eventually(lambda: sc.alerts._task is not None and sc.alerts._task.done(),
                                            timeout=10)  # the tasks are cancelled, their write with them
                finally:
                    gate.set()
                await stopping
                keys = {k for k, _n in spooled_alerts(Path(spool.path))}
                assert {f"breaker_fired:stop-{i}" for i in range(5)} <= keys, keys
                assert spool.alerts_depth >= before + 5
        finally:
            await proxy.close()


# The database returning, going again and returning while the spooled deliveries move to the outbox (more than one
# batch of them, delivered while it was away and waiting in the spool only): each ends up in alert_outbox once,
# delivered, and is sent once.

async def test_the_database_lost_again_while_spooled_deliveries_move_to_the_outbox_loses_and_doubles_none(
        receiver: AlertReceiver) -> None:
    from tradeguard_server.alerts.alert import Alert
    from tradeguard_server.alerts.delivery import SPOOL_BATCH

    n = SPOOL_BATCH * 2 + 50
    with fresh_database("tg_alertflap") as url:
        proxy = await FaultProxy().start()
        try:
            async with running_sidecar(database_url=proxy.url_for(url), enable_persistence=True,
                                       alert_webhook_url=receiver.url(), alert_max_pending=50, alert_poll_s=0.5,
                                       sidecar_id="sc-flap", control_state_stale_action="serve") as sc:
                spool = sc.store.spool  # type: ignore[attr-defined]
                assert spool is not None and spool.is_open
                async with grpc.aio.insecure_channel(sc.address) as ch:
                    risk = rsg.RiskServiceStub(ch)
                    report = rs.ReportEquityRequest(trader_id="bot-1", account_id=ACCT, equity=10_000.0)
                    await risk.ReportEquity(report, timeout=10)  # claimed before the cut
                    proxy.cut()
                    await risk.ReportEquity(report, timeout=10)  # a write: the store finds the outage
                assert await eventually(lambda: not sc.store.healthy, timeout=20)
                for i in range(n):
                    sc.alerts.submit(Alert("breaker_fired", f"breaker_fired:flap-{i}", "floor", time.time(),
                                           "sc-flap", "bot-1", ACCT))

                def state() -> str:
                    a = sc.alerts
                    return (f"received {len(receiver.received)} of {n}; memory {len(a.deliveries)} (undelivered "
                            f"{sum(1 for d in a.deliveries if d.delivered_at is None)}), inbox {len(a.inbox)}, "
                            f"backlog {a._backlog}, cursor {a._cursor}, spooled in memory {len(a._spooled)}, spool "
                            f"{spool.alerts_depth} ({spool.alerts_undelivered} undelivered), healthy "
                            f"{sc.store.healthy}, loaded {a.loaded}, task {a._task}")

                assert await receiver.wait_for(lambda got: len(got) >= n, timeout=60), state()
                assert await eventually(lambda: spool.alerts_undelivered == 0 and spool.alerts_depth >= n,
                                        timeout=30), (spool.alerts_depth, spool.alerts_undelivered)
                proxy.restore()

                def moved() -> int:
                    with psycopg.connect(plain_dsn(url), autocommit=True) as conn:
                        row = conn.execute("SELECT count(*) FROM alert_outbox WHERE key LIKE 'breaker_fired:flap-%'"
                                           ).fetchone()
                    return int(row[0]) if row else 0

                assert await eventually(lambda: moved() > 0, timeout=60), state()
                proxy.cut()  # mid-way (or just after: the assertions hold either way)
                proxy.restore()
                assert await eventually(lambda: spool.alerts_depth == 0, timeout=90), state()
                rows = [r for r in outbox(url) if r[0].startswith("breaker_fired:flap-")]
        finally:
            await proxy.close()
    assert len(rows) == n and len({k for k, _e, _d in rows}) == n and all(d for _k, _e, d in rows)
    sent = Counter(b["key"] for b in receiver.bodies(event="breaker_fired"))
    assert len(sent) == n and set(sent.values()) == {1}
