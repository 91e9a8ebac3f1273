"""Attacks on what was built for issues 20/21 (console, alerts, fairness, Prometheus rules), through the public
interfaces: gRPC, the HTTP listener, real PostgreSQL. Each test names the behaviour that must hold; the ones that
showed a defect were written first (failing), then the defect fixed."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest

from tests.support.sidecar import running_sidecar
from tests.support.wait import eventually
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2

pytestmark = pytest.mark.integration

ADMIN = "attack20-admin-token-0123456789abcdef"
TRADER = "attack20-trader-token-0123456789abcdef"


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@contextlib.asynccontextmanager
async def _locked(pg_url: str, table: str) -> AsyncIterator[None]:
    """`table` locked ACCESS EXCLUSIVE by another session: every statement on it waits (a stalled database)."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(pg_url.replace("+psycopg", "")) as conn:
        await conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")  # in the connection's open transaction
        yield
        await conn.rollback()


# ---- the kill switch must get through the admin and HTTP budgets ----------------------------------------------


async def test_the_kill_switch_gets_through_while_admin_max_concurrent_reads_wait_on_a_stalled_database(
        pg_url: str) -> None:
    """An incident: the database stalls, the operator's script (or three console tabs polling every 5 s) has
    admin_max_concurrent reads waiting on it (each up to store_call_timeout_s). PauseTrading must still pause."""
    async with running_sidecar(database_url=pg_url, enable_persistence=True, admin_token=ADMIN,
                               trader_token=TRADER, admin_max_concurrent=4, store_call_timeout_s=20.0) as sc, \
            grpc.aio.insecure_channel(sc.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await risk.ReportEquity(rs.ReportEquityRequest(trader_id="bot-1", account_id="acct-1", equity=10_000),
                                metadata=_bearer(TRADER))
        async with _locked(pg_url, "risk_state_history"):
            history = ad.ListRiskStateHistoryRequest(trader_id="bot-1", account_id="acct-1")
            reads = [asyncio.ensure_future(admin.ListRiskStateHistory(history, metadata=_bearer(ADMIN), timeout=30))
                     for _ in range(4)]
            assert await eventually(lambda: sc.admission.in_progress["admin"] == 4)
            try:
                reply = await admin.PauseTrading(ad.PauseTradingRequest(
                    trader_id="bot-1", account_id="acct-1", trading_state=types_pb2.TRADING_STATE_HALTED,
                    reason="incident: stop it"), metadata=_bearer(ADMIN), timeout=10)
            except grpc.aio.AioRpcError as exc:
                pytest.fail(f"the kill switch was refused: {exc.code().name}: {exc.details()}")
            finally:
                for read in reads:
                    read.cancel()
                await asyncio.gather(*reads, return_exceptions=True)
        assert reply.state.trader_id == "bot-1"
        answer = await risk.CanTrade(rs.CanTradeRequest(trader_id="bot-1", account_id="acct-1"),
                                     metadata=_bearer(TRADER))
        assert not answer.allowed


async def test_the_kill_switch_over_http_gets_through_while_a_bot_holds_http_max_streams_watch_streams() -> None:
    """A bot (trader token only) opens http_max_streams WatchRiskState streams (server-sent events): the
    operator's console must still pause it (and resume it), and the bot's CanTrade is answered (streams have a
    budget of their own, apart from http_max_concurrent: tests/attack/test_fairness.py)."""
    async with running_sidecar(http_listen="127.0.0.1:0", admin_token=ADMIN, trader_token=TRADER,
                               http_max_concurrent=4, http_max_streams=4, max_watchers_per_trader=0) as sc, \
            aiohttp.ClientSession() as http:
        base = f"http://{sc.http_address}"
        bot = {"Authorization": f"Bearer {TRADER}"}
        async with http.post(f"{base}/v1/risk/report-equity", headers=bot,
                             json={"trader_id": "bot-1", "account_id": "acct-1", "equity": 10_000}) as ok:
            assert ok.status == 200
        async with contextlib.AsyncExitStack() as streams:
            for _ in range(4):
                watch = await streams.enter_async_context(http.get(
                    f"{base}/v1/risk/watch", headers=bot, params={"trader_id": "bot-1", "account_id": "acct-1"}))
                assert watch.status == 200
            assert await eventually(lambda: sc.admission.in_progress["http_stream"] == 4)
            operator = {"Authorization": f"Bearer {ADMIN}"}
            async with http.post(f"{base}/v1/admin/pause-trading", headers=operator,
                                 json={"trader_id": "bot-1", "account_id": "acct-1",
                                       "trading_state": "TRADING_STATE_HALTED", "reason": "incident"}) as paused:
                assert paused.status == 200, await paused.text()
            async with http.post(f"{base}/v1/admin/resume-trading", headers=operator,
                                 json={"trader_id": "bot-1", "account_id": "acct-1"}) as resumed:
                assert resumed.status == 200, await resumed.text()
            async with http.post(f"{base}/v1/risk/can-trade", headers=bot,
                                 json={"trader_id": "bot-1", "account_id": "acct-1"}) as answered:
                assert answered.status == 200, await answered.text()
            # the streams' budget still holds
            async with http.get(f"{base}/v1/risk/watch", headers=bot,
                                params={"trader_id": "bot-1", "account_id": "acct-1"}) as busy:
                assert busy.status == 429


async def test_clients_that_send_headers_and_never_the_body_do_not_take_the_http_budget() -> None:
    """Slowloris, with no token at all: http_max_concurrent connections each send a POST's headers and one byte of
    its body, then nothing. A bot's CanTrade over HTTP must still be answered (they hold connections, not the
    budget every client shares)."""
    async with running_sidecar(http_listen="127.0.0.1:0", admin_token=ADMIN, trader_token=TRADER,
                               http_max_concurrent=4) as sc, aiohttp.ClientSession() as http:
        host, port = sc.http_address.rsplit(":", 1)
        socks = []
        try:
            for _ in range(8):
                sock = socket.create_connection((host, int(port)))
                sock.sendall(b"POST /v1/risk/can-trade HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                             b"\r\nContent-Length: 100\r\n\r\n{")
                socks.append(sock)
            async with http.post(f"http://{sc.http_address}/v1/risk/can-trade",
                                 headers={"Authorization": f"Bearer {TRADER}"},
                                 json={"trader_id": "bot-1", "account_id": "acct-1"}) as reply:
                assert reply.status == 200, await reply.text()
            assert sc.admission.in_progress["http"] == 0
        finally:
            for sock in socks:
                sock.close()


# ---- alerts: a receiver that misbehaves ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _receiver() -> AsyncIterator[tuple[str, list[tuple[str, str]]]]:
    """An HTTP receiver on 127.0.0.1:0: (base URL, the (method, path) it got). Paths: /redirect/... answers 302 to
    another host name whose /landing answers 200 to anything; /hang/... answers after 60 s; /echo404/... answers
    404 naming the path (as many servers and proxies do); /big500/... answers 500 with a body of 256 MiB."""
    from aiohttp import web

    hits: list[tuple[str, str]] = []

    async def hook(request: web.Request) -> web.StreamResponse:
        hits.append((request.method, request.path))
        mode = request.path.split("/")[1]
        if mode == "redirect":
            raise web.HTTPFound(f"http://localhost:{request.url.port}/landing")
        if mode == "hang":
            await asyncio.sleep(60)
        if mode == "echo404":
            return web.Response(status=404, text=f"Cannot {request.method} {request.path}")
        if mode == "big500":
            response = web.StreamResponse(status=500)
            await response.prepare(request)
            chunk = b"x" * (1 << 20)
            with contextlib.suppress(ConnectionError):
                for _ in range(256):
                    await response.write(chunk)
            return response
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hook)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", hits
    finally:
        await runner.cleanup()


async def _alert_test(url: str) -> tuple[int, str, int]:
    """`tradeguard alert-test --alert-webhook-url url` as a subprocess: (exit code, output, its peak RSS in KiB)."""
    import sys

    from tests.support.sidecar import BIN

    probe = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "sys.stdout.write(p.stdout + p.stderr); "
             "print(f'@rc={p.returncode} maxrss={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}')")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", probe, str(BIN / "tradeguard"), "alert-test", "--alert-webhook-url", url,
        "--alert-timeout-s", "20", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out = (await asyncio.wait_for(proc.communicate(), 120))[0].decode()
    text, _, tail = out.rpartition("@rc=")
    rc, maxrss = tail.split()
    return int(rc), text, int(maxrss.removeprefix("maxrss="))


async def test_a_webhook_that_redirects_is_a_failed_delivery_never_a_get_marked_delivered() -> None:
    async with _receiver() as (base, hits):
        rc, out, _rss = await _alert_test(f"{base}/redirect/T000/B000/secret")
    assert rc == 1 and "FAILED: HTTP 302" in out, out
    assert hits == [("POST", "/redirect/T000/B000/secret")]  # nothing followed to the other host


async def test_a_webhook_urls_credentials_and_secret_path_never_appear_in_an_error() -> None:
    async with _receiver() as (base, _hits):
        url = base.replace("http://", "http://bot:hunter2pass@") + "/echo404/services/T000/B000/XXXXsecretXXXX"
        rc, out, _rss = await _alert_test(url)
    assert rc == 1 and "FAILED: HTTP 404" in out, out
    for secret in ("hunter2pass", "XXXXsecretXXXX", "/services/T000"):
        assert secret not in out, out


async def test_a_webhook_answering_500_with_a_huge_body_does_not_fill_the_memory() -> None:
    async with _receiver() as (base, hits):
        rc, out, rss_kib = await _alert_test(f"{base}/big500/hook")
    assert rc == 1 and "FAILED: HTTP 500" in out, out
    assert hits == [("POST", "/big500/hook")]
    assert rss_kib < 150 * 1024, f"alert-test peaked at {rss_kib // 1024} MiB reading a 256 MiB error body"


async def test_a_webhook_url_that_cannot_be_parsed_is_refused_naming_the_setting() -> None:
    for url in ("http://[::1:8099/hook", "http://127.0.0.1:99999/hook", "http:///hook"):
        rc, out, _rss = await _alert_test(url)
        assert rc != 0 and "alert_webhook_url: expected an http:// or https:// URL" in out, out
        assert "Traceback" not in out, out


# ---- Prometheus rules against the real metrics ---------------------------------------------------------------------


async def test_the_label_overflow_counters_are_exported_at_zero_so_that_increase_sees_the_first_overflow() -> None:
    """TradeGuardMetricLabelOverflow is `increase(tradeguard_metric_label_overflow_total[10m]) > 0`. increase()
    cannot see a series' first sample: a counter created at its first increment (1,500 bots starting at once: it
    appears at 500 between two scrapes and stays there) never fires. Its promtool case feeds '0x10 1 5', a series
    that exists at 0 before the overflow: the sidecar must export it so, for each label the cap folds."""
    async with running_sidecar(metrics_listen="127.0.0.1:0") as sc, aiohttp.ClientSession() as http, \
            http.get(f"http://{sc.metrics_address}/metrics") as reply:
        text = await reply.text()
    for label in ("trader_id", "code", "breaker_id"):
        assert f'tradeguard_metric_label_overflow_total{{label="{label}"}} 0.0' in text, label


# ---- alerts: one per episode, whatever the order of events ----------------------------------------------------------


async def _marker(ch: grpc.aio.Channel, receiver: Any) -> list[Any]:
    """Pause a trader used for nothing else and wait for its alert: deliveries go out in order, so every alert
    of the changes before it has arrived by then. The bodies received before the marker."""
    await rsg.RiskServiceStub(ch).ReportEquity(rs.ReportEquityRequest(trader_id="marker", account_id="acct-m",
                                                                      equity=1_000))  # known here (cluster mode)
    await adg.AdminServiceStub(ch).PauseTrading(ad.PauseTradingRequest(trader_id="marker", account_id="acct-m",
                                                    trading_state=types_pb2.TRADING_STATE_HALTED, reason="marker"))
    assert await receiver.wait_for(lambda got: any(r.body.get("trader_id") == "marker" for r in got))
    return [b for b in receiver.bodies() if b.get("trader_id") != "marker" and b.get("account_id") != "acct-m"]


def _count(bodies: list[Any], trader: str = "bot-1") -> dict[str, int]:
    out: dict[str, int] = {}
    for b in bodies:
        if b.get("trader_id") in (trader, ""):
            out[b["event"]] = out.get(b["event"], 0) + 1
    return out


async def test_a_pause_that_expired_then_a_new_pause_are_two_episodes_even_with_no_trader_call_between() -> None:
    from google.protobuf import duration_pb2

    from tests.support.alert_receiver import AlertReceiver
    from tests.support.clock import T0
    from tradeguard_server.engine.clock import ManualClock

    clock = ManualClock(T0)
    receiver = await AlertReceiver().start()
    try:
        async with running_sidecar(clock=clock, alert_webhook_url=receiver.url(), alert_poll_s=0.2,
                                   alert_retry_initial_s=0.1) as sc, grpc.aio.insecure_channel(sc.address) as ch:
            risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
            b1 = {"trader_id": "bot-1", "account_id": "acct-1"}
            await risk.ReportEquity(rs.ReportEquityRequest(**b1, equity=10_000))
            await admin.PauseTrading(ad.PauseTradingRequest(**b1, trading_state=types_pb2.TRADING_STATE_HALTED,
                                                            duration=duration_pb2.Duration(seconds=60),
                                                            reason="one minute"))
            clock.advance(120)  # the pause is over; the bot has not called since
            await admin.PauseTrading(ad.PauseTradingRequest(**b1, trading_state=types_pb2.TRADING_STATE_HALTED,
                                                            reason="again, until resumed"))
            await admin.ResumeTrading(ad.ResumeTradingRequest(**b1))
            bodies = await _marker(ch, receiver)
    finally:
        await receiver.close()
    assert _count(bodies) == {"trader_paused": 2, "trader_resumed": 2}, [(b["event"], b["reason"]) for b in bodies]


async def test_an_account_kill_switch_over_a_paused_trader_is_one_alert_each() -> None:
    from tests.support.alert_receiver import AlertReceiver

    receiver = await AlertReceiver().start()
    try:
        async with running_sidecar(alert_webhook_url=receiver.url(), alert_poll_s=0.2,
                                   alert_retry_initial_s=0.1) as sc, grpc.aio.insecure_channel(sc.address) as ch:
            risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
            b1 = {"trader_id": "bot-1", "account_id": "acct-1"}
            halted = types_pb2.TRADING_STATE_HALTED
            await risk.ReportEquity(rs.ReportEquityRequest(**b1, equity=10_000))
            await admin.PauseTrading(ad.PauseTradingRequest(**b1, trading_state=halted, reason="desk"))
            await admin.PauseTrading(ad.PauseTradingRequest(account_id="acct-1", trading_state=halted, reason="acct"))
            await admin.PauseTrading(ad.PauseTradingRequest(account_id="acct-1", trading_state=halted, reason="2x"))
            for _ in range(3):
                await risk.CanTrade(rs.CanTradeRequest(**b1))
            await admin.ResumeTrading(ad.ResumeTradingRequest(**b1))  # still paused by the account
            await risk.CanTrade(rs.CanTradeRequest(**b1))
            await admin.ResumeTrading(ad.ResumeTradingRequest(account_id="acct-1"))
            await admin.PauseTrading(ad.PauseTradingRequest(**b1, trading_state=halted, reason="desk again"))
            bodies = await _marker(ch, receiver)
    finally:
        await receiver.close()
    assert _count(bodies) == {"trader_paused": 2, "trader_resumed": 1, "kill_switch": 1, "kill_switch_lifted": 1}, \
        [(b["event"], b["reason"]) for b in bodies]


async def test_in_shadow_mode_a_breach_is_alerted_as_not_enforced_not_as_a_critical_pause() -> None:
    """enable_risk_enforcement off: CanTrade allows after a 10 % daily loss. The on-call must not be paged
    "critical: trader paused" for a bot that keeps trading: the alerts say shadow mode, as breaker_fired's do."""
    from tests.support.alert_receiver import AlertReceiver

    receiver = await AlertReceiver().start()
    try:
        async with running_sidecar(alert_webhook_url=receiver.url(), alert_poll_s=0.2, alert_retry_initial_s=0.1,
                                   enable_risk_enforcement=False) as sc, \
                grpc.aio.insecure_channel(sc.address) as ch:
            risk = rsg.RiskServiceStub(ch)
            b1 = {"trader_id": "bot-1", "account_id": "acct-1"}
            await risk.ReportEquity(rs.ReportEquityRequest(**b1, equity=10_000))
            await risk.ReportEquity(rs.ReportEquityRequest(**b1, equity=9_000))
            assert (await risk.CanTrade(rs.CanTradeRequest(**b1))).allowed  # shadow mode: not enforced
            bodies = await _marker(ch, receiver)
    finally:
        await receiver.close()
    assert _count(bodies) == {"loss_limit_breach": 1, "trader_paused": 1}
    for body in bodies:
        assert body["severity"] == "warning" and body["details"]["shadow"] is True, body
        assert "shadow mode: not enforced" in body["reason"], body


async def test_a_hanging_notifier_does_not_hold_back_the_alerts_of_a_healthy_one() -> None:
    """Slack hangs (answers after 60 s), the generic webhook is fine. Six traders paused, then a seventh: the
    webhook must get the seventh within about one alert_timeout_s, not after Slack's six timeouts in a row."""
    import time

    from tests.support.alert_receiver import AlertReceiver

    receiver = await AlertReceiver().start()
    try:
        async with _receiver() as (base, _hits), running_sidecar(
                alert_webhook_url=receiver.url(), alert_slack_webhook_url=f"{base}/hang/T000/B000/x",
                alert_timeout_s=1.5, alert_poll_s=0.2, alert_retry_initial_s=0.1, alert_retry_max_s=0.5) as sc, \
                grpc.aio.insecure_channel(sc.address) as ch:
            admin = adg.AdminServiceStub(ch)
            halted = types_pb2.TRADING_STATE_HALTED
            for i in range(6):
                await admin.PauseTrading(ad.PauseTradingRequest(trader_id=f"bot-{i}", account_id="acct-1",
                                                                trading_state=halted, reason="one of six"))
            assert await receiver.wait_for(lambda got: len(got) >= 6)
            started = time.monotonic()
            await admin.PauseTrading(ad.PauseTradingRequest(trader_id="bot-7", account_id="acct-1",
                                                            trading_state=halted, reason="the seventh"))
            assert await receiver.wait_for(lambda got: any(r.body.get("trader_id") == "bot-7" for r in got))
            waited = time.monotonic() - started
    finally:
        await receiver.close()
    assert waited < 4.0, f"the healthy webhook got the seventh alert after {waited:.1f} s"


# ---- fairness: a well-behaved burst on one connection ---------------------------------------------------------------


def test_a_bot_with_150_calls_in_flight_on_one_channel_gets_every_answer_with_the_default_settings(
        tmp_path: Any) -> None:
    """An attack finding: max_streams_per_connection defaulted to 100, and grpc core answered the streams over it
    REFUSED_STREAM, which the Python client fails UNAVAILABLE (150 in flight -> 6-25 failed). It is off by default
    now (max_concurrent_streams, 1,000, applies)."""
    from tests.support.sidecar import spawn_sidecar

    sc = spawn_sidecar(tmp_path, "--database-url", "memory")
    try:
        async def burst() -> list[str]:
            async with grpc.aio.insecure_channel(sc.address) as ch:
                stub = rsg.RiskServiceStub(ch)
                await stub.CanTrade(rs.CanTradeRequest(trader_id="warm", account_id="a"))  # connected, SETTINGS seen
                out = await asyncio.gather(*(stub.CanTrade(rs.CanTradeRequest(trader_id=f"t{i}", account_id="a"))
                                             for i in range(150)), return_exceptions=True)
            return [f"{o.code().name}: {o.details()}" for o in out if isinstance(o, grpc.aio.AioRpcError)]

        failed = asyncio.run(burst())
    finally:
        sc.terminate()
    assert failed == [], f"{len(failed)} of 150 failed, e.g. {failed[0]}"


async def test_pause_restart_at_once_resume_pause_again_alerts_two_pauses_and_one_resume(pg_url: str) -> None:
    """PostgreSQL, one sidecar_id: an operator's pause, the sidecar stopped the moment PauseTrading answered and
    started again, then a resume and a new pause. The re-derived trader_paused of the stored pause collapses into
    the first: two trader_paused (two episodes), one trader_resumed."""
    from tests.support.alert_receiver import AlertReceiver

    receiver = await AlertReceiver().start()
    settings = {"database_url": pg_url, "enable_persistence": True, "sidecar_id": "sc-r",
                "alert_webhook_url": receiver.url(), "alert_poll_s": 0.2, "alert_retry_initial_s": 0.1}
    b1 = {"trader_id": "bot-1", "account_id": "acct-1"}
    halted = types_pb2.TRADING_STATE_HALTED
    try:
        async with running_sidecar(**settings) as sc, grpc.aio.insecure_channel(sc.address) as ch:
            await rsg.RiskServiceStub(ch).ReportEquity(rs.ReportEquityRequest(**b1, equity=10_000))
            await adg.AdminServiceStub(ch).PauseTrading(ad.PauseTradingRequest(**b1, trading_state=halted,
                                                                                reason="before the restart"))
        async with running_sidecar(**settings) as sc, grpc.aio.insecure_channel(sc.address) as ch:
            admin = adg.AdminServiceStub(ch)
            await admin.ResumeTrading(ad.ResumeTradingRequest(**b1))
            await admin.PauseTrading(ad.PauseTradingRequest(**b1, trading_state=halted, reason="after"))
            bodies = await _marker(ch, receiver)
    finally:
        await receiver.close()
    assert _count(bodies) == {"trader_paused": 2, "trader_resumed": 1}, [(b["event"], b["reason"]) for b in bodies]
    assert len({b["key"] for b in bodies}) == len(bodies)


async def test_an_account_kill_switch_pressed_on_one_sidecar_and_lifted_on_another_is_one_episode_each_time(
        pg_url: str) -> None:
    """Two sidecars behind one Service (the console or a script reaches either): the account's kill switch pressed
    on sc-a, lifted on sc-b, pressed on sc-a again, lifted on sc-b again. Two episodes: two kill_switch and two
    kill_switch_lifted, whichever sidecar each press reached."""
    from tests.support.alert_receiver import AlertReceiver

    receiver = await AlertReceiver().start()
    common = {"database_url": pg_url, "enable_persistence": True, "alert_webhook_url": receiver.url(),
              "alert_poll_s": 0.2, "alert_retry_initial_s": 0.1, "control_poll_seconds": 0.2}
    halted = types_pb2.TRADING_STATE_HALTED
    try:
        async with running_sidecar(sidecar_id="sc-a", **common) as a, \
                running_sidecar(sidecar_id="sc-b", **common) as b, \
                grpc.aio.insecure_channel(a.address) as ch_a, grpc.aio.insecure_channel(b.address) as ch_b:
            admin_a, admin_b = adg.AdminServiceStub(ch_a), adg.AdminServiceStub(ch_b)
            risk_a, risk_b = rsg.RiskServiceStub(ch_a), rsg.RiskServiceStub(ch_b)
            await risk_a.ReportEquity(rs.ReportEquityRequest(trader_id="bot-a", account_id="acct-1", equity=10_000))
            await risk_b.ReportEquity(rs.ReportEquityRequest(trader_id="bot-b", account_id="acct-1", equity=10_000))
            for round_ in (1, 2):
                await admin_a.PauseTrading(ad.PauseTradingRequest(account_id="acct-1", trading_state=halted,
                                                                  reason=f"venue down {round_}"))
                assert await eventually(lambda: _is_denied(risk_b, "bot-b", True), timeout=10)  # heard on sc-b
                await admin_b.ResumeTrading(ad.ResumeTradingRequest(account_id="acct-1"))
                assert await eventually(lambda: _is_denied(risk_a, "bot-a", False), timeout=10)  # heard on sc-a
            bodies = await _marker(ch_a, receiver)
            assert await eventually(lambda: a.alerts.alerts_pending() == 0 and b.alerts.alerts_pending() == 0)
            bodies = [x for x in receiver.bodies() if x.get("account_id") == "acct-1"]
    finally:
        await receiver.close()
    events = [(x["event"], x["sidecar"]) for x in bodies]
    assert sorted(e for e, _s in events) == ["kill_switch", "kill_switch", "kill_switch_lifted",
                                             "kill_switch_lifted"], events


async def _is_denied(risk: rsg.RiskServiceStub, trader: str, denied: bool) -> bool:
    reply = await risk.CanTrade(rs.CanTradeRequest(trader_id=trader, account_id="acct-1"))
    return (not reply.allowed) == denied


async def test_an_account_kill_switch_that_ran_out_then_pressed_again_is_a_new_episode() -> None:
    from google.protobuf import duration_pb2

    from tests.support.alert_receiver import AlertReceiver
    from tests.support.clock import T0
    from tradeguard_server.engine.clock import ManualClock

    clock = ManualClock(T0)
    receiver = await AlertReceiver().start()
    try:
        async with running_sidecar(clock=clock, alert_webhook_url=receiver.url(), alert_poll_s=0.2,
                                   alert_retry_initial_s=0.1) as sc, grpc.aio.insecure_channel(sc.address) as ch:
            admin = adg.AdminServiceStub(ch)
            for reason in ("ten minutes", "again"):
                await admin.PauseTrading(ad.PauseTradingRequest(
                    account_id="acct-1", trading_state=types_pb2.TRADING_STATE_HALTED, reason=reason,
                    duration=duration_pb2.Duration(seconds=600)))
                clock.advance(1200)  # ran out
            bodies = await _marker(ch, receiver)
    finally:
        await receiver.close()
    assert [b["event"] for b in bodies if b.get("account_id") == "acct-1"] == ["kill_switch", "kill_switch"]


async def test_while_overloaded_a_client_without_the_bots_credential_cannot_get_the_bot_shed() -> None:
    """Per-bot credentials: the bot `victim` holds its token. While the sidecar is overloaded, a client with no
    token sends 40 CanTrade naming trader_id `victim` (each refused UNAUTHENTICATED). The count per trader must not
    take them: else `victim` is a flooding trader and the real bot's own connection is shed for retry_after_s."""
    import tempfile
    from pathlib import Path

    token = "victim-token-0123456789abcdef0123456789"
    with tempfile.TemporaryDirectory() as tmp:
        creds = Path(tmp) / "credentials.toml"
        creds.write_text(f'[[credential]]\nname = "victim-bot"\ntoken = "{token}"\ntraders = ["victim"]\n'
                         'accounts = ["a"]\n')
        creds.chmod(0o600)
        async with running_sidecar(credentials_file=str(creds), max_calls_per_trader=5, max_calls_per_connection=0,
                                   shed_hold_s=0.0, retry_after_s=30.0) as sc:
            sc.admission.window_ticks = 1 << 30  # one counting window for the whole test (not 100 ms)
            sc.admission.observe_lag(1.0)  # overloaded (what the attacker's own flood would do)
            async with _own_connection(sc.address) as bot_ch, _own_connection(sc.address) as evil_ch:
                bot, evil = rsg.RiskServiceStub(bot_ch), rsg.RiskServiceStub(evil_ch)
                mine = _bearer(token)
                await bot.CanTrade(rs.CanTradeRequest(trader_id="victim", account_id="a"), metadata=mine)
                forged = [evil.CanTrade(rs.CanTradeRequest(trader_id="victim", account_id="a")) for _ in range(40)]
                forged.append(evil.CanTrade(rs.CanTradeRequest(trader_id="someone", account_id="a")))
                await asyncio.gather(*forged, return_exceptions=True)
                try:
                    answer = await bot.CanTrade(rs.CanTradeRequest(trader_id="victim", account_id="a"),
                                                metadata=mine)
                except grpc.aio.AioRpcError as exc:
                    pytest.fail(f"the bot was shed by calls it did not make: {exc.code().name}: {exc.details()}")
                assert answer.state.trader_id == "victim"


def _own_connection(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


async def test_a_breaker_whose_condition_holds_over_many_reports_fires_one_alert_per_episode() -> None:
    from google.protobuf import json_format

    from tests.support.alert_receiver import AlertReceiver

    receiver = await AlertReceiver().start()
    try:
        async with running_sidecar(alert_webhook_url=receiver.url(), alert_poll_s=0.2,
                                   alert_retry_initial_s=0.1) as sc, grpc.aio.insecure_channel(sc.address) as ch:
            risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
            await admin.CreateBreaker(ad.CreateBreakerRequest(breaker=json_format.ParseDict(
                {"name": "dd10", "account_id": "acct-1", "condition": "max_drawdown", "action": "alert",
                 "parameters": {"threshold": 0.1}, "enabled": True}, types_pb2.CircuitBreaker())))
            b1 = {"trader_id": "bot-1", "account_id": "acct-1"}
            for equity in (10_000, 8_900, 8_800, 8_700, 8_900, 8_600,  # one drawdown episode (11-14 %)
                           10_100, 10_200,  # recovered: a new peak, the condition false
                           9_000, 8_950, 8_900):  # a second episode (over 10 % from 10,200)
                await risk.ReportEquity(rs.ReportEquityRequest(**b1, equity=equity))
                await risk.CanTrade(rs.CanTradeRequest(**b1))
            bodies = await _marker(ch, receiver)
    finally:
        await receiver.close()
    fired = [b for b in bodies if b["event"] == "breaker_fired"]
    assert len(fired) == 2, [(b["event"], b["reason"]) for b in bodies]
    assert {b["severity"] for b in fired} == {"warning"}  # an `alert` action


async def test_a_bots_watch_streams_over_http_do_not_starve_another_bots_can_trade_over_http() -> None:
    """One bot with the shared trader token holds 8 WatchRiskState streams (max_watchers_per_trader) on each of 8
    trader ids, as many as the default http_max_concurrent (64), for as long as it likes: another bot's CanTrade
    over HTTP must still be answered (streams count against http_max_streams, a budget of their own; they once
    filled http_max_concurrent and every other bot got 429)."""
    async with running_sidecar(http_listen="127.0.0.1:0", admin_token=ADMIN, trader_token=TRADER) as sc, \
            aiohttp.ClientSession() as http:
        base, bot = f"http://{sc.http_address}", {"Authorization": f"Bearer {TRADER}"}
        for trader in range(8):  # known traders (watchers of unknown ones have a smaller limit of their own)
            async with http.post(f"{base}/v1/risk/report-equity", headers=bot,
                                 json={"trader_id": f"w{trader}", "account_id": "a", "equity": 1_000}) as ok:
                assert ok.status == 200
        async with contextlib.AsyncExitStack() as streams:
            for trader in range(8):
                for _ in range(8):
                    watch = await streams.enter_async_context(http.get(
                        f"{base}/v1/risk/watch", headers=bot, params={"trader_id": f"w{trader}", "account_id": "a"}))
                    assert watch.status == 200, await watch.text()
            async with http.post(f"{base}/v1/risk/can-trade", headers=bot,
                                 json={"trader_id": "other-bot", "account_id": "b"}) as reply:
                assert reply.status == 200, await reply.text()
