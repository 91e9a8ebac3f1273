"""Malformed transport: raw HTTP/2 frames that break the protocol, bodies that are not gRPC, plain-socket
garbage, a truncated preface, an h2load flood of non-protobuf bodies, and messages over the size limit.

The server (in process, port 0, on its own loop thread) must survive every one of them: no ERROR record from
the sidecar's or grpc's loggers, health SERVING, and a well-behaved client's CanTrade answered throughout.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.attack.support import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PING,
    PREFACE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    LoopThread,
    ThreadedSidecar,
    figure,
    frame,
    grpc_headers,
    grpc_message,
    header_block,
    hpack_int,
    percentile,
    raw_connection,
    read_frames,
    server_errors,
    settings_frame,
)
from tests.support.wait import eventually_sync
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg

pytestmark = pytest.mark.integration

CAN_TRADE = "/tradeguard.v1.RiskService/CanTrade"
VALID = rs.CanTradeRequest(trader_id="bot-1", account_id="acct-1").SerializeToString()


def _hello() -> bytes:
    return PREFACE + settings_frame()


def _request(body: bytes, path: str = CAN_TRADE, stream: int = 1, end: bool = True) -> bytes:
    return (frame(HEADERS, END_HEADERS, stream, header_block(grpc_headers(path)))
            + frame(DATA, END_STREAM if end else 0, stream, body))


def _rapid_reset(n: int) -> bytes:
    out = [_hello()]
    for i in range(n):
        sid = 1 + 2 * i
        out.append(frame(HEADERS, END_HEADERS, sid, header_block(grpc_headers(CAN_TRADE))))
        out.append(frame(RST_STREAM, 0, sid, (8).to_bytes(4, "big")))  # CANCEL
    return b"".join(out)


def _continuation_flood(n: int) -> bytes:
    out = [_hello(), frame(HEADERS, 0, 1, header_block(grpc_headers(CAN_TRADE)))]
    block = header_block([(f"x-flood-{i}", "v" * 100) for i in range(40)])
    out.extend(frame(CONTINUATION, 0, 1, block) for _ in range(n))
    return b"".join(out)


# (name, bytes, what the server must do: "answer" = a response (HEADERS or RST_STREAM) on the stream,
#  "close" = GOAWAY or close, "survive" = anything (grpc core may ignore it), as long as it stays healthy).
# Seen with grpcio 1.85: a DATA frame whose gRPC prefix promises more than the stream carries gets no answer
# (the stream is held until the connection ends); frames on stream 0 / even / unopened streams are ignored;
# 5,000 PINGs get GOAWAY ENHANCE_YOUR_CALM; streams past max_concurrent_streams get RST_STREAM.
ATTACKS: list[tuple[str, bytes, str]] = [
    ("plain garbage instead of the preface", os.urandom(4096), "close"),
    ("HTTP/1.1 request", b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "close"),
    ("TLS ClientHello to the plaintext port", bytes.fromhex("160301020001") + os.urandom(512), "close"),
    ("truncated preface, then close", PREFACE[:11], "survive"),
    ("preface, then garbage frames", PREFACE + os.urandom(2048), "close"),
    ("body not protobuf", _hello() + _request(grpc_message(b"\xff\xfe\xfd not protobuf")), "answer"),
    ("gRPC prefix longer than the body", _hello() + _request(grpc_message(VALID, length=len(VALID) + 50)),
     "survive"),
    ("gRPC prefix claiming 4 GiB", _hello() + _request(grpc_message(b"x", length=2**32 - 1)), "answer"),
    ("compressed flag without grpc-encoding", _hello() + _request(grpc_message(VALID, compressed=True)), "answer"),
    ("two messages on a unary call", _hello() + _request(grpc_message(VALID) + grpc_message(VALID)), "answer"),
    ("truncated gRPC prefix", _hello() + _request(b"\x00\x00\x00"), "survive"),
    ("unknown method", _hello() + _request(grpc_message(VALID), path="/tradeguard.v1.RiskService/Nope"), "answer"),
    ("path without a service", _hello() + _request(grpc_message(VALID), path="x"), "survive"),
    ("no :path header", _hello() + frame(HEADERS, END_HEADERS | END_STREAM, 1, header_block(
        [(":method", "POST"), (":scheme", "http"), ("content-type", "application/grpc")])), "answer"),
    ("32 KiB header value", _hello() + frame(HEADERS, END_HEADERS | END_STREAM, 1, header_block(
        [*grpc_headers(CAN_TRADE), ("x-big", "v" * 32_768)])), "survive"),
    ("HPACK string length of 2^31", _hello() + frame(HEADERS, END_HEADERS, 1, b"\x00" + hpack_int(2**31, 7)),
     "survive"),
    ("HEADERS on stream 0", _hello() + frame(HEADERS, END_HEADERS, 0, header_block(grpc_headers(CAN_TRADE))),
     "survive"),
    ("even (server) stream id", _hello() + _request(grpc_message(VALID), stream=2), "survive"),
    ("DATA on a stream never opened", _hello() + frame(DATA, END_STREAM, 7, grpc_message(VALID)), "survive"),
    ("frame longer than SETTINGS_MAX_FRAME_SIZE", _hello() + frame(DATA, 0, 1, b"\x00" * 20_000), "close"),
    ("frame header lying about its length", _hello() + frame(PING, 0, 0, b"\x00" * 8, length=9_000_000), "close"),
    ("SETTINGS with ENABLE_PUSH=2", PREFACE + settings_frame(((2, 2),)), "close"),
    ("SETTINGS with INITIAL_WINDOW_SIZE=2^31", PREFACE + settings_frame(((4, 2**31),)), "close"),
    ("SETTINGS of odd length", PREFACE + frame(SETTINGS, 0, 0, b"\x00\x01\x00"), "close"),
    ("WINDOW_UPDATE of 0", _hello() + frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x00"), "close"),
    ("unknown frame type (must be ignored)", _hello() + frame(0xFA, 0, 0, b"junk") + _request(grpc_message(VALID)),
     "answer"),
    ("5,000 PINGs", _hello() + frame(PING, 0, 0, b"\x00" * 8) * 5_000, "survive"),
    ("rapid reset: 5,000 streams opened and cancelled", _rapid_reset(5_000), "survive"),
    ("CONTINUATION flood (4 MiB of headers)", _continuation_flood(1_000), "survive"),
    ("stream ids going backwards", _hello() + _request(grpc_message(VALID), stream=9)
     + _request(grpc_message(VALID), stream=3), "survive"),
]


@dataclass
class Prober:
    """A well-behaved bot asking CanTrade in a loop on its own channel while the attacks run."""

    address: str
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Prober:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        with grpc.insecure_channel(self.address) as ch:
            stub = rsg.RiskServiceStub(ch)
            stub.ReportEquity(rs.ReportEquityRequest(trader_id="good", account_id="acct-1", equity=10_000))
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    stub.CanTrade(rs.CanTradeRequest(trader_id="good", account_id="acct-1"), timeout=5)
                    self.latencies.append(time.perf_counter() - started)
                except grpc.RpcError as exc:
                    self.failures.append(f"{exc.code().name}: {exc.details()}")  # type: ignore[attr-defined]
                time.sleep(0.002)  # pacing: a well-behaved client, not a flood of its own

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedSidecar]:
    loop = LoopThread()
    sidecar = ThreadedSidecar(loop)
    sidecar.start()
    try:
        yield sidecar
    finally:
        sidecar.stop()
        loop.close()


def _healthy(address: str) -> bool:
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        return stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING


def _attack(address: str, payload: bytes) -> tuple[list[tuple[int, int, int, bytes]], bool]:
    sock = raw_connection(address)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        try:
            sock.sendall(payload)
        except OSError:  # the server hung up while we were still writing: it refused the rest
            return [], True
        return read_frames(sock, 1.5)
    finally:
        sock.close()


def test_malformed_http2_frames_and_garbage_never_hurt_the_server(server: ThreadedSidecar) -> None:
    outcomes: dict[str, str] = {}
    wrong: list[str] = []
    with server_errors() as errors, Prober(server.address) as prober:
        for name, payload, must in ATTACKS:
            frames, closed = _attack(server.address, payload)
            answered = any(kind in (HEADERS, RST_STREAM) and stream % 2 == 1 for kind, _f, stream, _p in frames)
            refused = closed or any(kind == GOAWAY for kind, *_ in frames)
            outcome = "answered" if answered else "refused" if refused else "ignored"
            outcomes[name] = outcome
            if (must == "answer" and not answered) or (must == "close" and not refused):
                wrong.append(f"{name}: {outcome}, expected {must}")
            if not _healthy(server.address):
                wrong.append(f"{name}: server not healthy after it")
        after_attacks = len(prober.latencies)
        eventually_sync(lambda: len(prober.latencies) >= after_attacks + 20, timeout=10)  # answers after them
    for name, outcome in outcomes.items():
        print(f"  {outcome:8} {name}")
    p99 = percentile(prober.latencies, 0.99) * 1e3
    figure("transport", "malformed connections sent", len(ATTACKS))
    figure("transport", "refused (GOAWAY / closed)", sum(o == "refused" for o in outcomes.values()))
    figure("transport", "crashes / server errors logged", len(errors.records))
    figure("transport", "well-behaved CanTrade calls / failures / p99 ms",
           f"{len(prober.latencies)} / {len(prober.failures)} / {p99:.2f}")
    assert wrong == []
    assert errors.lines() == []
    assert prober.failures == [] and len(prober.latencies) > 50
    assert _healthy(server.address)


def can_trade_latencies(address: str, calls: int) -> list[float]:
    """Seconds per CanTrade of a well-behaved client on its own connection, `calls` in a row."""
    with grpc.insecure_channel(address) as ch:
        stub = rsg.RiskServiceStub(ch)
        stub.CanTrade(rs.CanTradeRequest(trader_id="other", account_id="acct-1"), timeout=5)  # connected
        latencies = []
        for _ in range(calls):
            started = time.perf_counter()
            stub.CanTrade(rs.CanTradeRequest(trader_id="other", account_id="acct-1"), timeout=5)
            latencies.append(time.perf_counter() - started)
    return latencies


def test_silent_and_truncated_connections_do_not_block_others(server: ThreadedSidecar) -> None:
    """Sockets that connect and never send, or stop in the middle of the preface, held while others work.

    The p99 of 200 calls is their second slowest: two stalls of a loaded CI machine decide it. So the calls next
    to the held sockets are measured in up to 3 runs of 200, stopping at the first within the bound: a stall lands
    on one run, while sockets that block the hot path block it in every run (each call would wait for its 5 s
    deadline)."""
    socks = []
    with server_errors() as errors:
        baseline = can_trade_latencies(server.address, 200)  # the same calls, before the sockets are held
        bound_ms = max(50.0, 5 * percentile(baseline, 0.99) * 1e3)
        for i in range(200):
            s = raw_connection(server.address)
            if i % 2:
                s.sendall(PREFACE[: 1 + i % len(PREFACE)])
            socks.append(s)
        runs: list[float] = []
        for _attempt in range(3):
            runs.append(percentile(can_trade_latencies(server.address, 200), 0.99) * 1e3)
            if runs[-1] < bound_ms:
                break
        for s in socks:
            s.close()
    p99, baseline_p99 = min(runs), percentile(baseline, 0.99) * 1e3
    figure("transport", "silent / half-preface sockets held", len(socks))
    figure("transport", "CanTrade p99 ms before / next to them (each run)",
           f"{baseline_p99:.2f} / {', '.join(f'{r:.2f}' for r in runs)}")
    assert errors.lines() == []
    # Held sockets cost the other client nothing: 50 ms, or 5x the p99 measured just before on this machine
    # when that is slower (a blocked hot path would wait for the 5 s deadline).
    assert p99 < bound_ms
    assert _healthy(server.address)


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load (Debian nghttp2-client) not installed")
def test_h2load_flood_of_bodies_that_are_not_protobuf(server: ThreadedSidecar, tmp_path: Path) -> None:
    bodies = {
        "not protobuf": grpc_message(b"\xff" * 64),
        "valid": grpc_message(VALID),
        "64 KiB of garbage": grpc_message(os.urandom(65_536)),
    }  # (a prefix promising more than the body gets no answer at all: see ATTACKS; h2load would wait for it)
    total = done = 0
    with server_errors() as errors, Prober(server.address) as prober:
        for name, body in bodies.items():
            path = tmp_path / "body.bin"
            path.write_bytes(body)
            out = subprocess.run(
                ["h2load", "-n", "3000", "-c", "10", "-m", "10", "-N", "10", "-d", str(path),
                 "-H", "content-type: application/grpc", "-H", "te: trailers", f"http://{server.address}{CAN_TRADE}"],
                capture_output=True, text=True, timeout=120, check=False)
            match = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", out.stdout)
            assert match is not None, out.stdout + out.stderr
            total += int(match.group(1))
            done += int(match.group(2))
            print(f"  h2load {name}: {match.group(0)}")
    p99 = percentile(prober.latencies, 0.99) * 1e3
    figure("transport", "h2load requests sent / answered", f"{total} / {done}")
    figure("transport", "h2load: server errors logged", len(errors.records))
    figure("transport", "well-behaved CanTrade p99 ms during h2load", p99)
    assert done == total
    assert errors.lines() == []
    assert prober.failures == []
    assert _healthy(server.address)


def _positions(n: int) -> rs.ReportPositionsRequest:
    req = rs.ReportPositionsRequest(trader_id="big", account_id="acct-1")
    for i in range(n):
        req.positions.add(symbol=f"SYM{i:05d}", side=1, quantity=1.0, entry_price=10.0, mark_price=10.0)
    return req


def test_messages_over_the_size_limit_are_resource_exhausted_clearly() -> None:
    loop = LoopThread()
    small = ThreadedSidecar(loop, max_message_bytes=4096)
    default = ThreadedSidecar(loop)
    small.start()
    default.start()
    results: dict[str, str] = {}
    try:
        with server_errors() as errors:
            with grpc.insecure_channel(small.address) as ch:
                stub = rsg.RiskServiceStub(ch)
                n = 1
                while _positions(n + 1).ByteSize() < 4096:
                    n += 1
                under = _positions(n)  # just under the 4096-byte limit; its answer (the state) is over it
                reply = stub.ReportPositions(under, timeout=5)
                results["4 KiB limit, request just under"] = (f"OK (request {under.ByteSize()} bytes, "
                                                              f"answer {reply.ByteSize()} bytes)")
                state = stub.GetRiskState(rs.GetRiskStateRequest(trader_id="big", account_id="acct-1"), timeout=5)
                assert len(state.state.positions) == n and reply.ByteSize() > 4096
                with pytest.raises(grpc.RpcError) as over:
                    stub.ReportPositions(_positions(200), timeout=5)
                results["4 KiB limit, 8 KiB request"] = f"{over.value.code().name}: {over.value.details()}"  # type: ignore[attr-defined]
                assert over.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
                assert "larger than max" in over.value.details()  # type: ignore[attr-defined]
            with grpc.insecure_channel(default.address, options=[("grpc.max_send_message_length", -1)]) as ch:
                stub = rsg.RiskServiceStub(ch)
                huge = rs.ReportEquityRequest(trader_id="x" * (2 << 20), account_id="acct-1", equity=1.0)
                with pytest.raises(grpc.RpcError) as too_big:
                    stub.ReportEquity(huge, timeout=10)
                results["1 MiB default, 2 MiB request"] = f"{too_big.value.code().name}: {too_big.value.details()}"  # type: ignore[attr-defined]
                assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
                assert stub.CanTrade(rs.CanTradeRequest(trader_id="y", account_id="acct-1"), timeout=5).code
    finally:
        small.stop()
        default.stop()
        loop.close()
    for name, result in results.items():
        print(f"  {name}: {result}")
    figure("transport", "over-limit requests answered RESOURCE_EXHAUSTED", "2 / 2")
    figure("transport", "size-limit server errors logged", len(errors.records))
    assert errors.lines() == []
