"""Shared machinery of the attack suite: figures, error-log capture, a sidecar on its own loop thread,
percentiles, RSS of a process, and a raw HTTP/2 writer for malformed frames.

Every test prints its figures with `figure(...)` (they are also listed at the end of the pytest run) and
asserts on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tradeguard_server.engine.clock import Clock
from tradeguard_server.settings import load_settings
from tradeguard_server.sidecar import Sidecar

T = TypeVar("T")

FIGURES: list[tuple[str, str, str]] = []  # (test area, figure, value)


def figure(area: str, name: str, value: object) -> None:
    """Print a measured figure (and keep it for the end-of-run summary)."""
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    FIGURES.append((area, name, text))
    print(f"FIGURE [{area}] {name} = {text}")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


# ---- server-side errors ------------------------------------------------------------------------------


class ErrorRecords(logging.Handler):
    """Collects ERROR (and worse) records of the sidecar's and grpc's loggers."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self) -> list[str]:
        out = []
        for r in self.records:
            text = f"{r.name} {r.levelname}: {r.getMessage()}"
            if r.exc_info and r.exc_info[1] is not None:
                text += f" [{type(r.exc_info[1]).__name__}: {r.exc_info[1]}]"
            out.append(text)
        return out


@contextlib.contextmanager
def server_errors(names: tuple[str, ...] = ("tradeguard", "grpc")) -> Iterator[ErrorRecords]:
    handler = ErrorRecords()
    loggers = [logging.getLogger(n) for n in names]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield handler
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


class CountingHandler(logging.Handler):
    """Collects every record (WARNING and up by default) of one logger, for 'logged once per outage'."""

    def __init__(self, level: int = logging.WARNING) -> None:
        super().__init__(level=level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def count(self, text: str) -> int:
        return sum(1 for r in self.records if text in r.getMessage())


@contextlib.contextmanager
def log_records(name: str, level: int = logging.WARNING) -> Iterator[CountingHandler]:
    handler = CountingHandler(level)
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


# ---- a sidecar on its own event loop thread (for hypothesis, whose tests are synchronous) ---------------


class LoopThread:
    """An asyncio loop running in a daemon thread; `run` executes a coroutine there and waits for it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="attack-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_asyncgens()

        with contextlib.suppress(Exception):
            self.run(drain(), timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


class ThreadedSidecar:
    """An in-process Sidecar (port 0) served from a LoopThread, so synchronous code can drive it."""

    def __init__(self, loop: LoopThread, clock: Clock | None = None, **overrides: Any) -> None:
        overrides.setdefault("listen", "127.0.0.1:0")
        overrides.setdefault("uvloop", False)
        overrides.setdefault("metrics_listen", "")
        overrides.setdefault("http_listen", "")
        overrides.setdefault("database_url", "memory")
        overrides.setdefault("dev_open_admin", True)  # admin calls without a token (test_access.py: the default)
        overrides.setdefault("enable_persistence", overrides["database_url"] != "memory")
        self.loop = loop
        self.clock = clock
        self.overrides = overrides
        self.sidecar: Sidecar | None = None
        self.address = ""

    def start(self) -> str:
        async def start() -> tuple[Sidecar, str]:
            sidecar = Sidecar(load_settings({}, self.overrides), clock=self.clock)
            return sidecar, await sidecar.start()

        self.sidecar, self.address = self.loop.run(start())
        return self.address

    def stop(self) -> None:
        if self.sidecar is not None:
            self.loop.run(self.sidecar.stop())
            self.sidecar = None

    def restart(self) -> str:
        self.stop()
        return self.start()


# ---- processes -------------------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """Resident set size of a process, KiB (VmRSS of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


@dataclass
class RssSampler:
    """Samples a process's RSS every `interval` seconds in a thread; `peak` is the highest seen."""

    pid: int
    interval: float = 0.05
    samples: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, RuntimeError):
                self.samples.append(rss_kib(self.pid))
            self._stop.wait(self.interval)

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def peak(self) -> int:
        return max(self.samples, default=0)


# ---- raw HTTP/2 (hand-made frames: malformed on purpose where the test wants it) ----------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4


def frame(kind: int, flags: int, stream: int, payload: bytes, length: int | None = None) -> bytes:
    """One HTTP/2 frame; `length` lies about the payload length when given."""
    n = len(payload) if length is None else length
    return struct.pack(">I", n)[1:] + bytes([kind, flags]) + struct.pack(">I", stream & 0x7FFFFFFF) + payload


def hpack_int(value: int, prefix_bits: int, flags: int = 0) -> bytes:
    top = (1 << prefix_bits) - 1
    if value < top:
        return bytes([flags | value])
    out = [flags | top]
    value -= top
    while value >= 128:
        out.append((value % 128) + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def hpack_str(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return hpack_int(len(raw), 7) + raw


def header_block(headers: list[tuple[str, str | bytes]]) -> bytes:
    """HPACK: every header as 'literal without indexing, new name', no Huffman (valid and simple)."""
    return b"".join(b"\x00" + hpack_str(name) + hpack_str(value) for name, value in headers)


def grpc_headers(path: str, authority: str = "127.0.0.1") -> list[tuple[str, str | bytes]]:
    return [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", authority),
            ("content-type", "application/grpc"), ("te", "trailers")]


def grpc_message(body: bytes, compressed: bool = False, length: int | None = None) -> bytes:
    """A gRPC length-prefixed message; `length` lies about the body length when given."""
    n = len(body) if length is None else length
    return bytes([1 if compressed else 0]) + struct.pack(">I", n) + body


def settings_frame(pairs: tuple[tuple[int, int], ...] = ()) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def read_frames(sock: socket.socket, seconds: float) -> tuple[list[tuple[int, int, int, bytes]], bool]:
    """Read frames for up to `seconds` (or until the peer closes). Returns (frames, closed_by_peer)."""
    sock.settimeout(0.2)
    buf = b""
    frames: list[tuple[int, int, int, bytes]] = []
    deadline = time.monotonic() + seconds
    closed = False
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            closed = True
            break
        if not chunk:
            closed = True
            break
        buf += chunk
        while len(buf) >= 9:
            n = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + n:
                break
            kind, flags = buf[3], buf[4]
            stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
            frames.append((kind, flags, stream, buf[9:9 + n]))
            buf = buf[9 + n:]
    return frames, closed


def goaway_code(frames: list[tuple[int, int, int, bytes]]) -> int | None:
    for kind, _flags, _stream, payload in frames:
        if kind == GOAWAY and len(payload) >= 8:
            return int.from_bytes(payload[4:8], "big")
    return None


def raw_connection(address: str, timeout: float = 5.0) -> socket.socket:
    host, port = address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=timeout)
