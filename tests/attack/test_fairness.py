"""Fairness and overload (issue 21; README "Fairness and overload"): a flood of 100 connections x 1,000 streams
does not fail a well-behaved bot on its own connection; while the sidecar is overloaded the flooding peer's calls
are shed with RESOURCE_EXHAUSTED, `retry-after` metadata and a google.rpc.RetryInfo detail, the bot's are not; the
HTTP listener answers 429 with Retry-After beyond its own budgets (requests in progress; server-sent event streams
apart from them), and AdminService beyond its own.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from tests.attack.support import figure, grpc_message, percentile
from tests.support.sidecar import SidecarProcess, running_sidecar, spawn_sidecar
from tests.support.wait import eventually, eventually_sync
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard_server.api.admission import ADMIN, HOT, Admission, metric_families

pytestmark = pytest.mark.integration

CAN_TRADE = "/tradeguard.v1.RiskService/CanTrade"
PHASE_S = 6.0  # each phase of the flood test: a span of real time, not a wait for an event
RATE = 50.0  # the bot's CanTrade calls per second


class Bot:
    """CanTrade at RATE per second on a fixed schedule, on its own channel (its own connection), in a thread."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.phase = "calm"
        self.latencies: dict[str, list[float]] = {}
        self.failures: dict[str, list[str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bot", daemon=True)

    def __enter__(self) -> Bot:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with grpc.insecure_channel(self.address) as ch:
            stub = rsg.RiskServiceStub(ch)
            stub.ReportEquity(rs.ReportEquityRequest(trader_id="good", account_id="acct-1", equity=10_000), timeout=5)
            req = rs.CanTradeRequest(trader_id="good", account_id="acct-1")
            due = time.perf_counter()
            while not self._stop.is_set():
                due += 1.0 / RATE
                phase, started = self.phase, time.perf_counter()
                try:
                    stub.CanTrade(req, timeout=5)
                    self.latencies.setdefault(phase, []).append(time.perf_counter() - started)
                except grpc.RpcError as exc:
                    self.failures.setdefault(phase, []).append(f"{exc.code().name}: {exc.details()}")  # type: ignore[attr-defined]
                self._stop.wait(max(0.0, due - time.perf_counter()))


def _shed(metrics: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    out: dict[str, float] = {}
    for m in re.finditer(r'^tradeguard_shed_total\{method="([^"]*)",reason="([^"]*)"\} ([\d.e+]+)$', text, re.M):
        out[f"{m.group(2)}/{m.group(1)}"] = out.get(f"{m.group(2)}/{m.group(1)}", 0.0) + float(m.group(3))
    return out


@pytest.fixture
def flood_sidecar(tmp_path: Path) -> Iterator[tuple[SidecarProcess, str]]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        metrics = f"127.0.0.1:{sock.getsockname()[1]}"
    # 10 streams per connection: the flood's 100 connections then hold at most 1,000 calls in grpc core's queue,
    # ahead of the bot's (README "Fairness and overload": what the default of 100 buys, measured)
    sp = spawn_sidecar(tmp_path, "--database-url", "memory", "--metrics-listen", metrics,
                       "--max-streams-per-connection", "10")
    try:
        yield sp, metrics
    finally:
        sp.terminate()


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load (Debian nghttp2-client) not installed")
def test_a_flood_of_100_connections_by_1000_streams_fails_no_call_of_a_well_behaved_bot(
        flood_sidecar: tuple[SidecarProcess, str], tmp_path: Path) -> None:
    sidecar, metrics = flood_sidecar
    body = tmp_path / "can_trade.bin"
    body.write_bytes(grpc_message(rs.CanTradeRequest(trader_id="flood", account_id="acct").SerializeToString()))
    with Bot(sidecar.address) as bot:
        assert eventually_sync(lambda: len(bot.latencies.get("calm", [])) >= 10)  # answered before the flood
        time.sleep(PHASE_S)  # the calm phase: a span of real time
        bot.phase = "flood"
        out = subprocess.run(
            ["h2load", "-c", "100", "-m", "1000", "-t", "1", "-D", f"{PHASE_S:g}", "-d", str(body),
             "-H", "content-type: application/grpc", "-H", "te: trailers", f"http://{sidecar.address}{CAN_TRADE}"],
            capture_output=True, text=True, timeout=180, check=False)
        bot.phase = "after"
    summary = next((line for line in out.stdout.splitlines() if line.startswith("requests:")), out.stdout[-300:])
    done = re.search(r"(\d+) done", summary)
    shed = _shed(metrics)
    calm, flood = bot.latencies.get("calm", []), bot.latencies.get("flood", [])
    calm_p99, flood_p99 = percentile(calm, 0.99), percentile(flood, 0.99)
    figure("fairness", "flood: h2load", summary)
    figure("fairness", "flood: shed by reason/method", shed)
    figure("fairness", "bot CanTrade answered / failed / p99 ms, no flood",
           f"{len(calm)} / {len(bot.failures.get('calm', []))} / {calm_p99 * 1e3:.1f}")
    figure("fairness", "bot CanTrade answered / failed / p99 ms, flood",
           f"{len(flood)} / {len(bot.failures.get('flood', []))} / {flood_p99 * 1e3:.1f}")
    figure("fairness", "bot CanTrade p99 ratio flood / no flood", flood_p99 / calm_p99)
    assert done is not None and int(done.group(1)) > 1000, summary  # the flood did run
    assert sum(v for k, v in shed.items() if k.startswith(("trader_flood", "connection_flood"))) > 0, shed
    assert bot.failures.get("flood", []) == [] and bot.failures.get("calm", []) == []
    # the bot kept a quarter of its pace at least (a stalled bot makes few calls, all fast ones; measured: 70-100 %
    # alone on the machine, 30 % with other test runs loading it to a load average of 16) ...
    assert len(flood) >= 0.25 * RATE * PHASE_S, len(flood)
    # ... and its p99 stayed within the looser bound a shared 2-core machine holds: well under the 5 s deadline at
    # which its calls failed before (the ratio itself is printed here and measured by bench/fairness.py)
    assert flood_p99 < max(2.0, 5 * calm_p99), (calm_p99, flood_p99)
    assert sidecar.proc.poll() is None


# ---- what a shed call gets, and who is shed --------------------------------------------------------------------


def _retry_info(trailing: Any) -> tuple[str, float]:
    """(retry-after metadata, RetryInfo delay in s) of a call's trailing metadata."""
    meta = dict(trailing or ())
    status = status_pb2.Status.FromString(meta["grpc-status-details-bin"])
    info = error_details_pb2.RetryInfo()
    assert status.details and status.details[0].Unpack(info)
    return str(meta["retry-after"]), info.retry_delay.seconds + info.retry_delay.nanos / 1e9


async def test_while_overloaded_the_flooding_trader_is_shed_with_retry_after_and_the_bot_is_not() -> None:
    async with running_sidecar(max_calls_per_trader=5, max_calls_per_connection=0, shed_hold_s=0.0,
                               retry_after_s=30.0) as sc:
        sc.admission.window_ticks = 1 << 30  # one counting window for the whole test (not 100 ms)
        sc.admission.observe_lag(1.0)  # a tick that ran 1 s late: overloaded for retry_after_s from now
        assert sc.admission.overloaded
        async with _connection(sc.address) as flood_ch, _connection(sc.address) as bot_ch:
            flood, bot = rsg.RiskServiceStub(flood_ch), rsg.RiskServiceStub(bot_ch)
            # the bot's call first in the window, so that the flooding trader is above the average one
            assert (await bot.CanTrade(rs.CanTradeRequest(trader_id="good", account_id="a"))).state.trader_id == "good"
            calls = [flood.CanTrade(rs.CanTradeRequest(trader_id="flood", account_id="a")) for _ in range(40)]
            outcomes = await asyncio.gather(*(_outcome(c) for c in calls))
            shed = [o for o in outcomes if o is not None]
            assert shed, "40 calls of one trader in one burst: over max_calls_per_trader=5"
            assert {o.code() for o in shed} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            assert "max_calls_per_trader=5" in (shed[0].details() or "")
            header, delay = _retry_info(shed[0].trailing_metadata())
            assert (header, delay) == ("30", 30.0)
            # the flooding connection stays shed for the penalty (retry_after_s), whatever it asks
            with pytest.raises(grpc.aio.AioRpcError) as later:
                await flood.CanTrade(rs.CanTradeRequest(trader_id="other", account_id="a"))
            assert later.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # the well-behaved bot on its own connection is answered throughout
            for _ in range(5):
                answer = await bot.CanTrade(rs.CanTradeRequest(trader_id="good", account_id="a"))
                assert answer.state.trader_id == "good"  # answered (no equity reported: denied, not shed)
        assert sc.admission.shed.get(("trader_flood", "CanTrade"), 0) >= 1


async def test_while_overloaded_a_connection_over_its_share_is_shed_and_a_lone_client_is_not() -> None:
    async with running_sidecar(max_calls_per_trader=0, max_calls_per_connection=5, shed_hold_s=0.0,
                               retry_after_s=30.0) as sc:
        sc.admission.window_ticks = 1 << 30  # one counting window for the whole test (not 100 ms)
        sc.admission.observe_lag(1.0)
        async with _connection(sc.address) as alone:
            stub = rsg.RiskServiceStub(alone)
            # alone, a client is the average connection: its own load is not a reason to shed it
            outcomes = await asyncio.gather(*(_outcome(stub.CanTrade(rs.CanTradeRequest(trader_id=f"t{i}",
                                                                                         account_id="a")))
                                              for i in range(40)))
            assert outcomes == [None] * 40
        async with _connection(sc.address) as flood_ch, _connection(sc.address) as bot_ch:
            flood, bot = rsg.RiskServiceStub(flood_ch), rsg.RiskServiceStub(bot_ch)
            sc.admission.new_window()
            await bot.CanTrade(rs.CanTradeRequest(trader_id="good", account_id="a"))  # two connections this window
            outcomes = await asyncio.gather(*(_outcome(flood.CanTrade(rs.CanTradeRequest(trader_id=f"f{i}",
                                                                                         account_id="a")))
                                              for i in range(40)))
            shed = [o for o in outcomes if o is not None]
            assert shed and {o.code() for o in shed} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            assert "max_calls_per_connection=5" in (shed[0].details() or "")
            assert _retry_info(shed[0].trailing_metadata())[0] == "30"
            assert (await bot.CanTrade(rs.CanTradeRequest(trader_id="good", account_id="a"))).state.trader_id == "good"


async def test_without_overload_nothing_is_shed() -> None:
    async with running_sidecar(max_calls_per_trader=1, max_calls_per_connection=1) as sc:
        async with grpc.aio.insecure_channel(sc.address) as ch:
            stub = rsg.RiskServiceStub(ch)
            outcomes = await asyncio.gather(*(_outcome(stub.CanTrade(rs.CanTradeRequest(trader_id="one",
                                                                                        account_id="a")))
                                              for _ in range(50)))
        assert outcomes == [None] * 50 and sc.admission.shed == {}


def _connection(address: str) -> grpc.aio.Channel:
    """A channel on its own TCP connection (channels with equal arguments share one by default)."""
    return grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


async def _outcome(call: Any) -> grpc.aio.AioRpcError | None:
    try:
        await call
        return None
    except grpc.aio.AioRpcError as exc:
        return exc


async def test_http_watch_streams_beyond_http_max_streams_get_429_with_retry_after_and_never_take_can_trade() -> None:
    """Server-sent event streams (WatchRiskState) have a budget of their own: the second stream gets 429 at
    http_max_streams=1, and a CanTrade is answered meanwhile though http_max_concurrent is 1 too."""
    async with running_sidecar(http_listen="127.0.0.1:0", http_max_concurrent=1, http_max_streams=1,
                               retry_after_s=2.5) as sc, aiohttp.ClientSession() as http:
        base = f"http://{sc.http_address}"
        watch_params = {"trader_id": "w", "account_id": "a"}
        async with http.get(f"{base}/v1/risk/watch", params=watch_params) as watch:
            assert watch.status == 200  # a stream in progress as long as it is open
            assert await eventually(lambda: sc.admission.in_progress["http_stream"] == 1)
            assert sc.admission.in_progress["http"] == 0
            async with http.get(f"{base}/v1/risk/watch", params=watch_params) as busy:
                assert busy.status == 429
                assert busy.headers["Retry-After"] == "3"  # whole seconds, rounded up
                payload = await busy.json()
                assert "http_max_streams=1" in payload["message"]
                assert payload["details"][0]["@type"] == "type.googleapis.com/google.rpc.RetryInfo"
            async with http.post(f"{base}/v1/risk/can-trade", json={"trader_id": "t", "account_id": "a"}) as ok:
                assert ok.status == 200, await ok.text()
        assert await eventually(lambda: sc.admission.in_progress["http_stream"] == 0)
        async with http.get(f"{base}/v1/risk/watch", params=watch_params) as again:
            assert again.status == 200
        assert sc.admission.shed == {("http_max_streams", "WatchRiskState"): 1}
        async with http.get(f"{base}/metrics") as metrics:
            text = await metrics.text()
        assert re.search(r'^tradeguard_shed_total\{method="WatchRiskState",reason="http_max_streams"\} 1\.0$', text,
                         re.M), text


async def test_http_requests_beyond_http_max_concurrent_get_429_with_retry_after_and_the_kill_switch_does_not() -> None:
    """A real HTTP listener whose CanTrade stays in progress until released (the sidecar's never waits, so a slow
    handler stands in for it): the second CanTrade gets 429 at http_max_concurrent=1; the kill switch gets
    through; a watch stream is not refused by the requests' budget, only by its own (http_max_streams=1)."""
    from tradeguard.v1 import admin_service_pb2 as ad
    from tradeguard_server.httpapi import HttpApi, served_routes

    admission = Admission(max_calls_per_connection=50, max_calls_per_trader=50, max_streams_per_connection=100,
                          admin_max_concurrent=1, overload_lag_ms=20.0, shed_hold_s=1.0, retry_after_s=2.5)
    release = asyncio.Event()

    async def slow_can_trade(_raw: bytes, _context: Any) -> rs.CanTradeResponse:
        await release.wait()
        return rs.CanTradeResponse(allowed=True)

    async def pause(_raw: bytes, _context: Any) -> ad.PauseTradingResponse:
        return ad.PauseTradingResponse()

    async def watch(_raw: bytes, _context: Any) -> AsyncIterator[rs.WatchRiskStateResponse]:
        yield rs.WatchRiskStateResponse()
        await release.wait()

    handlers = {"/tradeguard.v1.RiskService/CanTrade": grpc.unary_unary_rpc_method_handler(slow_can_trade),
                "/tradeguard.v1.AdminService/PauseTrading": grpc.unary_unary_rpc_method_handler(pause),
                "/tradeguard.v1.RiskService/WatchRiskState": grpc.unary_stream_rpc_method_handler(watch)}
    api = HttpApi([r for r in served_routes() if r.grpc_path in handlers], handlers, ready=_ready, max_streams=1)
    api.admit(admission, 1)
    address = await api.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http:
            base = f"http://{address}"

            async def can_trade() -> tuple[int, bool]:
                async with http.post(f"{base}/v1/risk/can-trade", json={"trader_id": "t", "account_id": "a"}) as r:
                    return r.status, (await r.json())["allowed"]

            first = asyncio.ensure_future(can_trade())
            assert await eventually(lambda: admission.in_progress["http"] == 1)
            async with http.post(f"{base}/v1/risk/can-trade", json={"trader_id": "t", "account_id": "a"}) as busy:
                assert busy.status == 429
                assert busy.headers["Retry-After"] == "3"
                payload = await busy.json()
                assert "http_max_concurrent=1" in payload["message"]
                assert payload["details"][0]["@type"] == "type.googleapis.com/google.rpc.RetryInfo"
            async with http.post(f"{base}/v1/admin/pause-trading", json={"trader_id": "t", "account_id": "a"}) as ok:
                assert ok.status == 200, await ok.text()
            params = {"trader_id": "t", "account_id": "a"}
            async with http.get(f"{base}/v1/risk/watch", params=params) as stream:
                assert stream.status == 200, await stream.text()
                assert admission.in_progress["http_stream"] == 1
                async with http.get(f"{base}/v1/risk/watch", params=params) as full:
                    assert full.status == 429
                    assert "http_max_streams=1" in (await full.json())["message"]
                release.set()
                assert await first == (200, True)  # the held call is answered
        assert await eventually(lambda: admission.in_progress["http"] == admission.in_progress["http_stream"] == 0)
        assert admission.shed == {("http_max_concurrent", "CanTrade"): 1, ("http_max_streams", "WatchRiskState"): 1}
        shed = next(f for f in metric_families(admission) if f.name == "tradeguard_shed")
        assert {(s.labels["reason"], s.labels["method"]): s.value for s in shed.samples} == {
            ("http_max_concurrent", "CanTrade"): 1, ("http_max_streams", "WatchRiskState"): 1}
    finally:
        await api.stop()


async def _ready() -> bool:
    return True


async def test_http_calls_of_a_flooding_trader_get_429_with_retry_after_while_overloaded() -> None:
    async with running_sidecar(http_listen="127.0.0.1:0", max_calls_per_trader=2, max_calls_per_connection=0,
                               shed_hold_s=0.0, retry_after_s=1.0) as sc, aiohttp.ClientSession() as http:
        sc.admission.window_ticks = 1 << 30  # one counting window for the whole test (not 100 ms)
        sc.admission.observe_lag(1.0)
        url = f"http://{sc.http_address}/v1/risk/can-trade"
        # a second trader this window, so that the flooding one is above the average trader
        async with http.post(url, json={"trader_id": "good", "account_id": "a"}) as ok:
            assert ok.status == 200
        statuses = []
        for _ in range(6):
            async with http.post(url, json={"trader_id": "flood", "account_id": "a"}) as reply:
                statuses.append(reply.status)
                if reply.status == 429:
                    assert reply.headers["Retry-After"] == "1"
        assert 429 in statuses and statuses[:2] == [200, 200]


async def test_admin_calls_beyond_admin_max_concurrent_are_shed_and_never_the_hot_path() -> None:
    """A real grpc server with an AdminService-class method that stays in progress until released (as a slow store
    call does), next to a hot-path method: the second admin call is shed, the hot path is answered."""
    admission = Admission(max_calls_per_connection=50, max_calls_per_trader=50, max_streams_per_connection=100,
                          admin_max_concurrent=1, overload_lag_ms=20.0, shed_hold_s=1.0, retry_after_s=1.0)
    release = asyncio.Event()

    async def slow(raw: bytes, _context: Any) -> bytes:
        await release.wait()
        return raw

    async def fast(raw: bytes, _context: Any) -> bytes:
        return raw

    def handler(fn: Any) -> grpc.RpcMethodHandler[Any, Any]:
        return grpc.unary_unary_rpc_method_handler(fn)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler("t.Admin", admission.wrap({"Slow": handler(slow)}, ADMIN)),
        grpc.method_handlers_generic_handler("t.Risk", admission.wrap({"Fast": handler(fast)}, HOT)),
    ))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            first = asyncio.ensure_future(ch.unary_unary("/t.Admin/Slow")(b"one"))
            assert await eventually(lambda: admission.in_progress["admin"] == 1)
            with pytest.raises(grpc.aio.AioRpcError) as busy:
                await ch.unary_unary("/t.Admin/Slow")(b"two")
            assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "admin_max_concurrent=1" in (busy.value.details() or "")
            assert _retry_info(busy.value.trailing_metadata())[0] == "1"
            assert await ch.unary_unary("/t.Risk/Fast")(b"hot") == b"hot"  # the hot path has its own capacity
            release.set()
            assert await first == b"one"
        assert admission.in_progress["admin"] == 0 and admission.shed == {("admin_max_concurrent", "Slow"): 1}
    finally:
        await server.stop(None)
