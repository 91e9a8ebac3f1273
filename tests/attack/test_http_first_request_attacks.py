"""Attacks on 12d1431 (HttpApi._keys, admission `first_key`, `flooding(..., counted=True)`): an HTTP connection's
first request is also counted with every other first request from its address while the loop is overloaded. As a
hostile client (getting round it), a careless client (no keep-alive, HTTP/1.0) and a well-behaved bot sharing the
address, through the HTTP API of a real sidecar on port 0; admission's clock driven by hand (`driven`)."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest

from tests.attack.support import FIGURES
from tests.attack.test_admission_http_keying_attacks import CAN_TRADE, bot_call, post, raw_connection
from tests.attack.test_issue21_admission_attacks import driven
from tradeguard_server.sidecar import Sidecar

pytestmark = pytest.mark.integration


async def bad_then_good(sc: Sidecar, trader: str) -> tuple[int, int]:
    """One new connection: a CanTrade whose body is not JSON (answered 400 before admission), then a real CanTrade
    under `trader` on the same connection; (the two statuses)."""
    sock = await raw_connection(sc)
    with sock:
        loop = asyncio.get_running_loop()
        bad = b"{"
        await loop.sock_sendall(sock, (f"POST {CAN_TRADE} HTTP/1.1\r\nHost: {sc.http_address}\r\nContent-Type: "
                                       f"application/json\r\nContent-Length: {len(bad)}\r\n\r\n").encode() + bad)
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += await loop.sock_recv(sock, 65536)
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        length = next(int(v) for k, _, v in (x.partition(": ") for x in lines[1:]) if k.lower() == "content-length")
        while len(rest) < length:
            rest += await loop.sock_recv(sock, 65536)
        return int(lines[0].split()[1]), await post(sock, sc, trader)


async def http10(sc: Sidecar, trader: str) -> int:
    """One HTTP/1.0 CanTrade (its own connection, closed by the server after the answer)."""
    host, port = sc.http_address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        data = ('{"trader_id": "%s", "account_id": "a"}' % trader).encode()  # noqa: UP031
        writer.write((f"POST {CAN_TRADE} HTTP/1.0\r\nHost: {sc.http_address}\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {len(data)}\r\n\r\n").encode() + data)
        await writer.drain()
        answer = await reader.read()  # until the server closes
        return int(answer.split(b" ", 2)[1])
    finally:
        writer.close()


async def test_a_flood_that_spends_each_connections_first_request_on_a_bad_body_is_still_shed() -> None:
    """Fixed (was medium, the fix of 12d1431 bypassed): a connection's first key went to its first request that
    reached HttpApi._call, and one answered before admission (a body that is not JSON: 400) used it up uncounted;
    a flooder sending one bad request then one CanTrade under a new trader id per new connection was over no
    connection's, trader's or address's limit: 40 of 40 served. A request is first until one reaches admission."""
    async with driven(http_listen="127.0.0.1:0", max_calls_per_connection=2, max_calls_per_trader=2,
                      shed_hold_s=0.0, retry_after_s=5.0) as sc, aiohttp.ClientSession() as bot:
        a = sc.admission
        a.observe_lag(1.0)
        assert await bot_call(bot, sc) == 200
        answers = [await bad_then_good(sc, f"r{i}") for i in range(40)]  # 40 in one window: 20x the limit
    assert {bad for bad, _ in answers} == {400}
    good = [s for _, s in answers]
    assert 429 in good, f"{good.count(200)} of 40 flooding CanTrades served"


async def test_a_well_behaved_keep_alive_bot_is_served_while_a_connection_churning_flood_from_its_address_is_shed(
        ) -> None:
    """The bot's keep-alive connection made its one first request before the flood: it is served throughout. A
    careless client without keep-alive (HTTP/1.0) on the same address shares the flooder's address key and loses
    every call while that key is penalized (README: they share one connection's limit): its loss is recorded."""
    async with driven(http_listen="127.0.0.1:0", max_calls_per_connection=4, max_calls_per_trader=0,
                      shed_hold_s=0.0, retry_after_s=5.0) as sc, aiohttp.ClientSession() as bot:
        a = sc.admission
        assert await bot_call(bot, sc) == 200
        a.observe_lag(1.0)
        flood = []
        for i in range(12):
            sock = await raw_connection(sc)
            with sock:
                flood.append(await post(sock, sc, f"f{i}"))
        assert flood.count(429) >= 8, flood
        a.new_window()
        careless = [await http10(sc, "careless") for _ in range(3)]
        kept = [await bot_call(bot, sc) for _ in range(3)]
    assert kept == [200] * 3
    FIGURES.append(("http first requests", "HTTP/1.0 client's calls shed during a flood's 5 s address penalty",
                    f"{careless.count(429)} of {len(careless)}"))
    assert careless.count(429) == 3  # documented: one address key while the sidecar is overloaded


@pytest.mark.xfail(strict=True, reason=(
    "low: 'a lone client is not shed for its own load' holds for a keep-alive client, not for one without "
    "keep-alive: each of its requests is a connection of its own with one call, so its address key is always "
    "above the average connection; under someone else's overload it is shed past max_calls_per_connection a window "
    "(default 200 per 100 ms: rare in practice)"))
async def test_a_lone_client_without_keep_alive_is_not_shed_for_its_own_rate_any_more_than_a_keep_alive_one() -> None:
    async with driven(http_listen="127.0.0.1:0", max_calls_per_connection=3, max_calls_per_trader=0,
                      shed_hold_s=0.0, retry_after_s=5.0) as sc, aiohttp.ClientSession() as bot:
        a = sc.admission
        a.observe_lag(1.0)  # overloaded by someone else's load
        kept = [await bot_call(bot, sc, "k") for _ in range(6)]  # a lone keep-alive client: above the limit, alone
        assert kept == [200] * 6
        a.new_window()
        careless = [await http10(sc, "c") for _ in range(6)]  # the same rate, one connection per request
    assert careless == [200] * 6, careless


async def test_ipv6_first_requests_from_one_address_are_counted_together() -> None:
    """The address key of an IPv6 peer (ipv6:[::1]:port) drops the port, as IPv4's does: a connection-churning flood
    over ::1 is shed."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no ::1")
    async with driven(http_listen="[::1]:0", max_calls_per_connection=2, max_calls_per_trader=2,
                      shed_hold_s=0.0, retry_after_s=5.0) as sc, aiohttp.ClientSession() as bot, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as churn:
        a = sc.admission
        a.observe_lag(1.0)
        assert await bot_call(bot, sc) == 200
        statuses = []
        for i in range(20):
            async with churn.post(f"http://{sc.http_address}{CAN_TRADE}",
                                  json={"trader_id": f"r{i}", "account_id": "a"}) as r:
                statuses.append(r.status)
        keys = [k for k in a.penalized_peers if "first requests" in k]
    assert 429 in statuses, statuses
    assert keys == ["http ipv6:[::1] (first requests)"], keys
