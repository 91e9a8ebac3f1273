"""Attacks on commit 70b07fe (api/admission.py, httpapi/server.py, httpapi/context.py): HTTP requests counted and
penalized per TCP connection (`http <peer> #<n>`), not per source address and port; the overload state lasting
OVERLOAD_TAIL_S (1 s) after the last late tick (retry_after_s when shorter), not retry_after_s. As a hostile
client, a careless client and an operator would, through the public API of a real sidecar on port 0.

Admission's clock is driven by hand (`driven`: the ticker stopped; `now`, `busy`, the windows and the overload
move only when the test says so); the calls are real HTTP / gRPC calls. A defect found and not fixed is marked
xfail(strict) with its severity; a property that holds is a plain test.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import json
import socket
from typing import Any

import aiohttp
import grpc
import pytest

from tests.attack.test_issue21_admission_attacks import advance, can_trade, connection, driven, outcome, raw_http_post
from tests.support.wait import eventually
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard_server.api.admission import OVERLOAD_TAIL_S
from tradeguard_server.sidecar import Sidecar

pytestmark = pytest.mark.integration

CAN_TRADE = "/v1/risk/can-trade"


# ---- machinery -------------------------------------------------------------------------------------------------


async def raw_connection(sc: Sidecar, port: int = 0) -> socket.socket:
    """A TCP connection to the HTTP listener from 127.0.0.1:`port` (0: any)."""
    host, http_port = sc.http_address.rsplit(":", 1)
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, int(http_port))), 5)
    except BaseException:
        sock.close()
        raise
    return sock


async def post(sock: socket.socket, sc: Sidecar, trader: str, close: bool = False) -> int:
    return (await raw_http_post(sock, sc.http_address, CAN_TRADE, {"trader_id": trader, "account_id": "a"},
                                close=close))[0]


async def drain(sock: socket.socket) -> None:
    """Read until the server closes the connection."""
    loop = asyncio.get_running_loop()
    while await loop.sock_recv(sock, 65536):
        pass


async def read_responses(sock: socket.socket, n: int) -> list[tuple[int, dict[str, str]]]:
    """`n` HTTP/1.1 responses from one connection, in order: (status, headers)."""
    loop = asyncio.get_running_loop()
    buf, out = b"", []
    while len(out) < n:
        while b"\r\n\r\n" not in buf:
            chunk = await loop.sock_recv(sock, 65536)
            assert chunk, f"closed after {len(out)} responses"
            buf += chunk
        head, _, buf = buf.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v for k, _, v in (x.partition(": ") for x in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(buf) < length:
            buf += await loop.sock_recv(sock, 65536)
        buf = buf[length:]
        out.append((int(lines[0].split()[1]), headers))
    return out


def http_keys(keys: Any) -> list[str]:
    return [k for k in keys if k.startswith("http ")]


async def bot_call(bot: aiohttp.ClientSession, sc: Sidecar, trader: str = "good") -> int:
    async with bot.post(f"http://{sc.http_address}{CAN_TRADE}", json={"trader_id": trader, "account_id": "a"}) as r:
        await r.read()
        return r.status


# ---- a penalized connection: kept open, pipelined, closed ------------------------------------------------------


async def test_a_penalized_http_connection_kept_open_stays_shed_after_the_overload_ends_and_a_new_one_is_not() -> None:
    async with driven(http_listen="127.0.0.1:0", max_calls_per_connection=2, max_calls_per_trader=0,
                      shed_hold_s=1.0, retry_after_s=30.0) as sc, aiohttp.ClientSession() as bot:
        a = sc.admission
        a.observe_lag(1.0)
        assert await bot_call(bot, sc) == 200  # a second connection in the window: the flood is above the average
        flooder = await raw_connection(sc)
        try:
            assert [await post(flooder, sc, f"f{i}") for i in range(3)] == [200, 200, 429]
            advance(a, OVERLOAD_TAIL_S + 0.5, busy=0.05)  # the overload is over, the penalty (30 s) is not
            assert not a.overloaded and a.watching
            status, text = await raw_http_post(flooder, sc.http_address, CAN_TRADE,
                                               {"trader_id": "f9", "account_id": "a"})
            assert status == 429 and "max_calls_per_connection=2" in text  # the same (kept-alive) connection
            assert a.held == 0  # HTTP: not held, whatever shed_hold_s
            fresh = await raw_connection(sc)
            with fresh:
                assert [await post(fresh, sc, f"g{i}") for i in range(3)] == [200, 200, 200]  # starts clean
        finally:
            flooder.close()
        assert await bot_call(bot, sc) == 200


async def test_pipelined_http_requests_are_counted_as_their_one_connection() -> None:
    """A flooder that pipelines its requests on one connection (sent before any answer) is one connection to
    admission: the requests over the limit are shed, and the answers come back in order on the connection."""
    async with driven(http_listen="127.0.0.1:0", max_calls_per_connection=2, max_calls_per_trader=0,
                      shed_hold_s=0.0, retry_after_s=5.0) as sc, aiohttp.ClientSession() as bot:
        a = sc.admission
        a.observe_lag(1.0)
        assert await bot_call(bot, sc) == 200
        flooder = await raw_connection(sc)
        with flooder:
            requests = b""
            for i in range(6):
                data = json.dumps({"trader_id": f"p{i}", "account_id": "a"}).encode()
                requests += (f"POST {CAN_TRADE} HTTP/1.1\r\nHost: {sc.http_address}\r\nContent-Type: application/json"
                             f"\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data
            await asyncio.get_running_loop().sock_sendall(flooder, requests)
            answers = await read_responses(flooder, 6)
        assert [s for s, _ in answers] == [200, 200, 429, 429, 429, 429]
        assert answers[-1][1]["retry-after"] == "5"
        assert len(http_keys(a.penalized_peers)) == 1  # one connection penalized, not one key per request


# ---- connection churn: a new connection per request ------------------------------------------------------------


async def test_a_flooder_opening_a_new_http_connection_per_request_is_still_shed_by_its_trader_limit() -> None:
    """Each request on a connection of its own is never over max_calls_per_connection (as before 70b07fe: each
    new connection had a new source port too); the trader's limit sheds the flood, on every new connection, and a
    well-behaved bot over HTTP and over gRPC is served meanwhile."""
    # (the connection limit is above the trader's: first requests from one address are counted together too)
    async with driven(http_listen="127.0.0.1:0", max_calls_per_connection=20, max_calls_per_trader=3,
                      shed_hold_s=1.0, retry_after_s=30.0) as sc, aiohttp.ClientSession() as bot, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as churn, \
            connection(sc.address) as grpc_ch:
        a = sc.admission
        a.observe_lag(1.0)
        assert await bot_call(bot, sc) == 200
        statuses = []
        for _ in range(12):
            async with churn.post(f"http://{sc.http_address}{CAN_TRADE}",
                                  json={"trader_id": "churn", "account_id": "a"}) as r:
                statuses.append(r.status)
        assert statuses[:3] == [200] * 3 and statuses[3:] == [429] * 9
        assert "churn\0" in a.penalized_traders
        a.new_window()
        assert await bot_call(bot, sc) == 200
        answer = await outcome(rsg.RiskServiceStub(grpc_ch).CanTrade(can_trade("good")))
        assert answer is None, answer
        assert not [k for k in a.penalized_peers if not k.startswith("http ")]  # no gRPC connection penalized
        advance(a, OVERLOAD_TAIL_S + 0.5, busy=0.05)  # after the overload, the trader's penalty still holds
        async with churn.post(f"http://{sc.http_address}{CAN_TRADE}",
                              json={"trader_id": "churn", "account_id": "a"}) as r:
            assert r.status == 429 and r.headers["Retry-After"] == "30"  # at least retry_after_s


async def test_many_http_connections_each_just_under_the_connection_limit_for_one_trader_are_shed_per_trader() -> None:
    async with driven(http_listen="127.0.0.1:0", max_calls_per_connection=3, max_calls_per_trader=10,
                      shed_hold_s=0.0, retry_after_s=5.0) as sc, aiohttp.ClientSession() as bot:
        a = sc.admission
        assert await bot_call(bot, sc) == 200
        socks = [await raw_connection(sc) for _ in range(6)]
        try:
            # each connection's first request before the overload (first requests are also counted per address)
            assert [await post(s, sc, "warm") for s in socks] == [200] * 6
            a.observe_lag(1.0)
            assert await bot_call(bot, sc) == 200
            statuses = [await post(s, sc, "spread") for _ in range(3) for s in socks]  # 3 per connection: at its limit
        finally:
            for s in socks:
                s.close()
        assert statuses.count(200) == 10 and statuses[10:] == [429] * 8
        assert await bot_call(bot, sc) == 200


async def test_a_flood_of_one_request_per_new_http_connection_under_new_trader_ids_is_shed() -> None:
    """Fixed (was medium): each request on a new connection under a new trader id was over no connection's and no
    trader's limit, so it was never shed however overloaded the loop. A connection's first request is now counted
    with the other first requests from its address (HttpApi._keys); the bot's keep-alive connection is not."""
    async with driven(http_listen="127.0.0.1:0", max_calls_per_connection=2, max_calls_per_trader=2,
                      shed_hold_s=0.0, retry_after_s=5.0) as sc, aiohttp.ClientSession() as bot, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as churn:
        a = sc.admission
        a.observe_lag(1.0)
        assert await bot_call(bot, sc) == 200
        statuses = []
        for i in range(40):  # 40 calls in one 100 ms window from one address: 20 times the connection limit
            async with churn.post(f"http://{sc.http_address}{CAN_TRADE}",
                                  json={"trader_id": f"r{i}", "account_id": "a"}) as r:
                statuses.append(r.status)
        assert 429 in statuses


async def test_penalties_and_probations_of_closed_http_connections_do_not_pile_up() -> None:
    """Fixed (was medium): a connection's key is never used again once it is closed (its serial is not reused),
    yet its penalty stayed in penalized_peers for retry_after_s (up to an hour) and its probation for twice that
    plus 5 s; a flooder opening a new connection every few requests grew both without bound (before 70b07fe the
    keys were address:port, bounded by the ports), every 100 ms window scanned them all, and `watching` stayed
    on. They are now dropped when the connection closes; the transport map holds open connections only."""
    async with driven(http_listen="127.0.0.1:0", max_calls_per_connection=2, max_calls_per_trader=0,
                      shed_hold_s=1.0, retry_after_s=3600.0) as sc, aiohttp.ClientSession() as bot:
        a = sc.admission
        a.observe_lag(1.0)
        for _ in range(30):
            a.new_window()
            assert await bot_call(bot, sc) == 200
            sock = await raw_connection(sc)
            with sock:
                assert [await post(sock, sc, "x", close=i == 2) for i in range(3)] == [200, 200, 429]
                await drain(sock)
        assert await eventually(lambda: not http_keys(a.penalized_peers) and not http_keys(a.probation_peers)), (
            len(a.penalized_peers), len(a.probation_peers))
        advance(a, OVERLOAD_TAIL_S + 0.5, busy=0.05)
        assert not a.watching  # nothing left to watch: every call pays one attribute test again
        gc.collect()
        assert len(sc.http._connections) <= 1  # the bot's keep-alive connection at most
        assert await bot_call(bot, sc) == 200


async def test_an_open_penalized_connection_keeps_its_penalty_while_others_close() -> None:
    async with driven(http_listen="127.0.0.1:0", max_calls_per_connection=2, max_calls_per_trader=0,
                      shed_hold_s=0.0, retry_after_s=60.0) as sc, aiohttp.ClientSession() as bot:
        a = sc.admission
        assert await bot_call(bot, sc) == 200
        kept, gone = await raw_connection(sc), await raw_connection(sc)
        # each connection's first request before the overload (first requests are also counted per address)
        assert [await post(kept, sc, "k"), await post(gone, sc, "g")] == [200, 200]
        a.observe_lag(1.0)
        assert await bot_call(bot, sc) == 200
        with kept:
            with gone:
                assert [await post(kept, sc, "k") for _ in range(3)] == [200, 200, 429]
                assert [await post(gone, sc, "g", close=i == 2) for i in range(3)] == [200, 200, 429]
                await drain(gone)
            assert await eventually(lambda: len(http_keys(a.penalized_peers)) == 1)
            advance(a, 5.0, busy=0.05)
            assert await post(kept, sc, "k") == 429


# ---- the overload tail -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("retry_after_s", "tail_s"), [(0.2, 0.2), (1.0, 1.0), (3600.0, OVERLOAD_TAIL_S)])
async def test_the_overload_lasts_the_tail_after_the_last_late_tick_and_a_penalty_its_own_length(
        retry_after_s: float, tail_s: float) -> None:
    """The overload ends OVERLOAD_TAIL_S after the last late tick (retry_after_s when shorter); a connection's
    penalty lasts retry_after_s whatever the tail, and a well-behaved bot at its limit after the tail is not
    counted as a flood (nor held: HTTP is never held)."""
    async with driven(http_listen="127.0.0.1:0", max_calls_per_connection=2, max_calls_per_trader=0,
                      shed_hold_s=1.0, retry_after_s=retry_after_s) as sc, aiohttp.ClientSession() as bot:
        a = sc.admission
        a.observe_lag(1.0)
        assert await bot_call(bot, sc) == 200
        flooder = await raw_connection(sc)
        with flooder:
            assert [await post(flooder, sc, "f") for _ in range(3)] == [200, 200, 429]
            advance(a, tail_s - 0.05, busy=0.05)
            assert a.overloaded
            advance(a, 0.1, busy=0.05)
            assert not a.overloaded
            for _ in range(5):  # the bot over the connection limit, the loop keeping up: not a flood
                assert await bot_call(bot, sc) == 200
            status, text = await raw_http_post(flooder, sc.http_address, CAN_TRADE,
                                               {"trader_id": "f", "account_id": "a"})
            if retry_after_s > tail_s:
                assert status == 429, text  # still serving its penalty
            assert a.held == 0


async def test_a_paced_flood_penalized_once_is_shed_on_its_next_burst_after_the_tail_by_probation() -> None:
    """A flood that waits 1.1 s between its bursts finds the loop no longer overloaded (OVERLOAD_TAIL_S), but its
    connection is on probation after its first penalty: its next burst, most of what the loop takes while busy, is
    shed at a quarter of the limit, and each penalty grows 4x."""
    async with driven(http_listen="127.0.0.1:0", max_calls_per_connection=8, max_calls_per_trader=0,
                      shed_hold_s=1.0, retry_after_s=0.2) as sc, aiohttp.ClientSession() as bot:
        a = sc.admission
        a.observe_lag(1.0)
        assert await bot_call(bot, sc) == 200
        flooder = await raw_connection(sc)
        penalties = []
        with flooder:
            statuses = [await post(flooder, sc, "f") for _ in range(12)]
            assert statuses[:8] == [200] * 8 and statuses[8:] == [429] * 4
            for _ in range(3):
                key = http_keys(a.penalized_peers)[0]
                penalties.append(round(a.penalized_peers[key][0] - a.now, 3))
                advance(a, a.penalized_peers[key][0] - a.now + 1.1, busy=0.4)  # past the penalty, paused 1.1 s
                assert not a.overloaded and key in a.probation_peers
                statuses = [await post(flooder, sc, "f") for _ in range(6)]
                assert statuses[:2] == [200, 200] and 429 in statuses, statuses  # limit 8 // 4 = 2
        assert penalties == [0.2, 0.8, 3.2]


@pytest.mark.xfail(strict=True, reason=(
    "severity: low (a trade-off of 70b07fe, only where retry_after_s > 1 s): a flood that was never penalized and "
    "whose bursts come more than OVERLOAD_TAIL_S apart meets a loop that is not overloaded each time, so whatever "
    "of a burst runs before the ticker sees the lag it causes is served uncounted, burst after burst; with "
    "retry_after_s = 30 the overload used to last 30 s and the second burst was counted and shed. Probation does "
    "not help: only a connection or trader penalized once is on probation"))
async def test_a_fresh_flood_in_bursts_1_1_s_apart_is_counted_from_its_second_burst_with_a_long_retry_after() -> None:
    async with driven(http_listen="127.0.0.1:0", max_calls_per_connection=4, max_calls_per_trader=0,
                      shed_hold_s=0.0, retry_after_s=30.0) as sc, aiohttp.ClientSession() as bot:
        a = sc.admission
        flooder = await raw_connection(sc)
        shed = 0
        with flooder:
            for _ in range(3):
                assert await bot_call(bot, sc) == 200
                statuses = [await post(flooder, sc, "f") for _ in range(8)]  # served before the ticker sees the lag
                shed += statuses.count(429)
                a.observe_lag(0.2)  # the burst made the loop 200 ms late
                advance(a, 1.1, busy=0.3)
        assert shed


# ---- streams: an HTTP event stream from a bot's gRPC source port -----------------------------------------------


async def raw_watch(sock: socket.socket, sc: Sidecar, trader: str) -> int:
    """GET /v1/risk/watch on a raw connection: the status of its answer (the stream stays open)."""
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, (f"GET /v1/risk/watch?trader_id={trader}&account_id=a HTTP/1.1\r\n"
                                   f"Host: {sc.http_address}\r\n\r\n").encode())
    buf = b""
    while b"\r\n" not in buf:
        chunk = await loop.sock_recv(sock, 65536)
        assert chunk
        buf += chunk
    return int(buf.split(b" ", 2)[1])


async def _bots_second_stream_after_an_http_watch_from_its_port(**limits: Any) -> None:
    """The bot holds one WatchRiskState; a local client binds the bot's gRPC source port towards the HTTP listener
    and opens an event stream; the bot's second stream must still be served under `limits` (a budget of 2). The
    kernel now and then refuses the bind (EADDRINUSE: the port is shared with a socket that does not allow reuse,
    about 1 run in 12 here): then again with a new bot connection, up to 5 times."""
    for attempt in range(5):
        try:
            return await _bots_second_stream_once(**limits)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or attempt == 4:
                raise


async def _bots_second_stream_once(**limits: Any) -> None:
    async with driven(http_listen="127.0.0.1:0", max_calls_per_connection=0, max_calls_per_trader=0,
                      shed_hold_s=0.0, retry_after_s=1.0, **limits) as sc, connection(sc.address) as bot_ch:
        a = sc.admission
        bot = rsg.RiskServiceStub(bot_ch)
        await bot.CanTrade(can_trade("good"))
        first = bot.WatchRiskState(rs.WatchRiskStateRequest(trader_id="good", account_id="a"))
        try:
            await first.read()
            assert await eventually(lambda: len(a._streams) == 1)
            port = int(next(iter(a._streams)).rsplit(":", 1)[1])
            hostile = await raw_connection(sc, port)  # the bot's source port, towards the HTTP listener
            with hostile:
                assert await raw_watch(hostile, sc, "good") == 200
                assert await eventually(lambda: a.in_progress["stream"] == 2)
                second = bot.WatchRiskState(rs.WatchRiskStateRequest(trader_id="good", account_id="a"))
                try:
                    reply = await asyncio.wait_for(second.read(), 5)
                    assert reply is not grpc.aio.EOF and reply.state.trader_id == "good"
                except grpc.aio.AioRpcError as exc:
                    pytest.fail(f"the bot's second stream: {exc.code().name}: {exc.details()}")
                finally:
                    second.cancel()
        finally:
            first.cancel()


async def test_an_http_event_stream_from_a_bots_grpc_source_port_does_not_take_the_bots_stream_budget() -> None:
    """Fixed (was medium): Session / WatchRiskState streams were counted per context.peer() for HTTP too, the same
    text as the gRPC peer of that source port, so a local client binding a bot's gRPC source port towards the HTTP
    listener took a share of the bot's max_streams_per_connection and got its next stream refused; HTTP streams
    are now counted per HTTP connection, as its unary calls are."""
    await _bots_second_stream_after_an_http_watch_from_its_port(max_streams_per_connection=2)


async def test_an_http_event_stream_from_a_bots_grpc_source_port_does_not_take_the_bots_watcher_slots() -> None:
    """Fixed (was low): max_watchers_per_connection was keyed by context.peer(), the same text for an HTTP
    connection as for the gRPC connection of that source port; it now counts per connection (admission's
    connection_key)."""
    await _bots_second_stream_after_an_http_watch_from_its_port(max_watchers_per_connection=2)

