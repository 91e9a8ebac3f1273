"""Fairness under a flood (issue 21, must-show 3): a well-behaved bot's CanTrade p99 without and during the attack
suite's flood, measured in the same run, and their ratio.

    .venv/bin/python bench/fairness.py [--seconds 8] [--rate 50] [--connections 100] [--streams 1000]
                                       [--rounds 1] [--sidecar-arg=--max-calls-per-connection=0 ...]

One `tradeguard serve` subprocess (memory store). The bot is a thread here with its own channel (its own TCP
connection) calling CanTrade at `--rate` per second on a fixed schedule (open loop: a late call does not push the
next ones back, so a stall shows in the latencies of every call it delays). Phase 1: `--seconds` with no flood.
Phase 2: h2load, `--connections` x `--streams` in flight of CanTrade for `--seconds` on one trader ("flood-<round>",
a new one each round), the bot still calling. Printed: the bot's answered / failed calls and p50 / p99 / max per
phase, the p99 ratio flood / no flood, what h2load got through, and the sidecar's shed counter
(tradeguard_shed_total) when /metrics is on. `--sidecar-arg` passes a flag to the sidecar (e.g.
`--sidecar-arg=--max-calls-per-connection=0` for per-connection admission off); `--rounds` repeats both phases
and prints the median ratio.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen as lg  # noqa: E402

from tradeguard.v1 import risk_service_pb2 as rs  # noqa: E402
from tradeguard.v1 import risk_service_pb2_grpc as rsg  # noqa: E402

CAN_TRADE = "/tradeguard.v1.RiskService/CanTrade"


@dataclass
class Bot:
    """CanTrade at `rate` per second on a fixed schedule, on its own channel; latencies per phase."""

    address: str
    rate: float
    phase: str = "idle"
    latencies: dict[str, list[float]] = field(default_factory=dict)
    slow: list[tuple[str, float, float, str]] = field(default_factory=list)  # (phase, started, seconds, outcome)
    failures: dict[str, list[str]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bot", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        with grpc.insecure_channel(self.address) as ch:
            stub = rsg.RiskServiceStub(ch)
            stub.ReportEquity(rs.ReportEquityRequest(trader_id="good", account_id="acct-1", equity=10_000), timeout=5)
            req = rs.CanTradeRequest(trader_id="good", account_id="acct-1")
            period = 1.0 / self.rate
            due = time.perf_counter()
            while not self._stop.is_set():
                due += period
                phase = self.phase
                started = time.perf_counter()
                try:
                    stub.CanTrade(req, timeout=5)
                    took = time.perf_counter() - started
                    self.latencies.setdefault(phase, []).append(took)
                    if took > 0.1:
                        self.slow.append((phase, started, took, "ok"))
                except grpc.RpcError as exc:
                    self.slow.append((phase, started, time.perf_counter() - started, exc.code().name))
                    self.failures.setdefault(phase, []).append(
                        f"{exc.code().name}: {exc.details()} {exc.debug_error_string()[:200]}")  # type: ignore[attr-defined]
                wait = due - time.perf_counter()
                if wait > 0:
                    self._stop.wait(wait)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


def flood(address: str, seconds: float, connections: int, streams: int, body: Path) -> str:
    out = subprocess.run(
        ["h2load", "-c", str(connections), "-m", str(streams), "-t", "1", "-D", f"{seconds:g}", "-d", str(body),
         "-H", "content-type: application/grpc", "-H", "te: trailers", f"http://{address}{CAN_TRADE}"],
        capture_output=True, text=True, timeout=seconds + 120, check=False)
    return next((line for line in out.stdout.splitlines() if line.startswith("requests:")),
                (out.stdout + out.stderr)[-300:])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def shed_total(metrics: str) -> dict[str, float]:
    """tradeguard_shed_total by reason (summed over methods), read from /metrics."""
    if not metrics:
        return {}
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    out: dict[str, float] = {}
    for m in re.finditer(r'^tradeguard_shed_total\{([^}]*)\} ([\d.e+]+)$', text, re.M):
        reason = re.search(r'reason="([^"]*)"', m.group(1))
        key = reason.group(1) if reason else "?"
        out[key] = out.get(key, 0.0) + float(m.group(2))
    return out


def check_cost(calls: int) -> int:
    """ns per call that admission adds in front of a handler (must-show: the hot path's cost), measured in process:
    a trivial handler driven without an event loop, bare and wrapped, alternated over 5 rounds (median); and the
    decision alone while overloaded (the count per connection and per trader, a CanTrade body parsed)."""
    from tradeguard_server.api.admission import HOT, admission_from_settings
    from tradeguard_server.settings import load_settings

    class Ctx:
        def peer(self) -> str:
            return "ipv4:127.0.0.1:50000"

    async def inner(raw: bytes, _ctx: object) -> bytes:
        return raw

    admission = admission_from_settings(load_settings({}, {}))
    handler = grpc.unary_unary_rpc_method_handler(inner)
    wrapped = admission.wrap({"CanTrade": handler}, HOT, {"CanTrade": rs.CanTradeRequest.FromString})
    admitted = wrapped["CanTrade"].unary_unary
    assert admitted is not None
    ctx, raw = Ctx(), rs.CanTradeRequest(trader_id="good", account_id="acct-1").SerializeToString()

    def run(fn: object) -> float:
        started = time.perf_counter_ns()
        for _ in range(calls):
            coro = fn(raw, ctx)  # type: ignore[operator]
            try:  # noqa: SIM105  (in a timed loop: contextlib.suppress would cost more than what is measured)
                coro.send(None)
            except StopIteration:
                pass
        return (time.perf_counter_ns() - started) / calls

    bare, wrap = [], []
    for _ in range(5):
        bare.append(run(inner))
        wrap.append(run(admitted))
    b, w = statistics.median(bare), statistics.median(wrap)
    print(f"handler call, bare {b:.0f} ns, with admission {w:.0f} ns: +{w - b:.0f} ns per call (not overloaded)")
    admission.overloaded = admission.watching = True
    admission.window_ticks = 1 << 30
    started = time.perf_counter_ns()
    for i in range(calls):
        admission.flooding(f"ipv4:127.0.0.1:{i % 100}", raw, rs.CanTradeRequest.FromString)
    print(f"the decision while overloaded (count per connection and trader, body parsed): "
          f"{(time.perf_counter_ns() - started) / calls:.0f} ns per call")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="a well-behaved bot's CanTrade p99 without / during a flood")
    p.add_argument("--check-cost", action="store_true", help="only measure what admission adds per call, in process")
    p.add_argument("--seconds", type=float, default=8.0, help="length of each phase")
    p.add_argument("--rate", type=float, default=50.0, help="the bot's CanTrade calls per second")
    p.add_argument("--connections", type=int, default=100, help="flood connections (h2load -c)")
    p.add_argument("--streams", type=int, default=1000, help="flood streams in flight per connection (h2load -m)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--sidecar-arg", action="append", default=[], help="a flag for `tradeguard serve` (repeatable)")
    p.add_argument("--json", default="", help="also write the results to this file")
    args = p.parse_args(argv)
    if args.check_cost:
        return check_cost(200_000)
    if shutil.which("h2load") is None:
        raise SystemExit("h2load not found (Debian: apt-get install nghttp2-client)")
    results = []
    with tempfile.TemporaryDirectory(prefix="tg-fairness-") as tmp:
        work = Path(tmp)
        metrics = f"127.0.0.1:{free_port()}"
        extra = ["--database-url", "memory", "--metrics-listen", metrics, *args.sidecar_arg]
        server = lg.start_sidecar(work, "sidecar", "127.0.0.1:0", extra)
        print(f"sidecar pid {server.pid} on {server.address}; args {' '.join(extra)}", flush=True)
        bot = Bot(server.address, args.rate)
        try:
            bot.start()
            for n in range(args.rounds):
                calm, flooded = f"calm{n}", f"flood{n}"
                bot.phase = calm
                time.sleep(args.seconds)  # a span of real time: the phase is a duration, not an event
                before = shed_total(metrics)
                bot.phase = flooded
                flood_t0 = time.perf_counter()
                # a trader id of its own per round: a repeat offender's penalty grows (api/admission.py), so the
                # same id in the next round would start out shed, and the rounds would not be alike
                body = work / f"can_trade{n}.bin"
                body.write_bytes(lg.grpc_frame(rs.CanTradeRequest(trader_id=f"flood-{n}", account_id="acct")
                                               .SerializeToString()))
                summary = flood(server.address, args.seconds, args.connections, args.streams, body)
                flood_t1 = time.perf_counter()
                bot.phase = f"after{n}"
                for phase, started, took, outcome in bot.slow:
                    if phase == flooded:
                        print(f"  slow call at flood+{started - flood_t0:6.2f} s (flood lasted "
                              f"{flood_t1 - flood_t0:.2f} s): {took * 1e3:7.1f} ms {outcome}")
                shed = {k: v - before.get(k, 0.0) for k, v in shed_total(metrics).items()}
                row = {}
                for name, phase in (("no flood", calm), ("flood", flooded)):
                    lat = bot.latencies.get(phase, [])
                    row[name] = {"answered": len(lat), "failed": len(bot.failures.get(phase, [])),
                                 "p50_ms": pct(lat, 0.5) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3,
                                 "max_ms": max(lat, default=float("nan")) * 1e3,
                                 "failures": sorted(set(bot.failures.get(phase, [])))[:3]}
                    r = row[name]
                    print(f"round {n + 1} {name:<9} bot answered {r['answered']:4d} failed {r['failed']:3d}  "
                          f"p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:8.2f} ms  max {r['max_ms']:8.2f} ms"
                          + (f"  {r['failures']}" if r["failures"] else ""), flush=True)
                ratio = row["flood"]["p99_ms"] / row["no flood"]["p99_ms"]
                print(f"round {n + 1} flood h2load: {summary}", flush=True)
                if shed:
                    print(f"round {n + 1} shed during the flood: {json.dumps(shed)}", flush=True)
                print(f"round {n + 1} p99 ratio flood / no flood: {ratio:.2f}", flush=True)
                results.append({**row, "ratio": ratio, "h2load": summary, "shed": shed})
                time.sleep(1.0)  # let the flood's last streams end before the next calm phase
        finally:
            bot.stop()
            server.stop()
    ratios = [r["ratio"] for r in results]
    print(f"median p99 ratio over {len(ratios)} round(s): {statistics.median(ratios):.2f}; bot failures during "
          f"floods: {sum(r['flood']['failed'] for r in results)}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
