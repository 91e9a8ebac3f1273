"""TradeGuard vs the bare grpc.aio framework, measured in the same run.

    .venv/bin/python bench/run.py --quick                 # a subset: ~4 minutes
    .venv/bin/python bench/run.py                         # the full matrix
    .venv/bin/python bench/run.py --scenarios full,uds --concurrency 1,64 --rounds 3 --seconds 5
    .venv/bin/python bench/run.py --outage                # 60 s PostgreSQL outage through a TCP proxy

Every scenario starts the real sidecar (`tradeguard serve` subprocess) and the baseline
(bench/baseline_server.py: tradeguard.v1.RiskService registered with the generated stubs, answering a
constant CanTradeResponse: the sidecar's own answer to the same request, so both put the same bytes on the
wire). Both are driven by the same load generator (bench/loadgen.py: closed loop, N in flight, grpc.aio
client in up to 2 processes; optionally h2load). Rounds alternate sidecar / baseline (and swap which goes
first), each ratio is sidecar / baseline within one round, and the tables print the median over rounds.

On a shared 2-core machine the client competes with the server for CPU; both servers face the same client,
so ratios stay comparable, and the server's CPU time per call (from /proc) is printed as a load-independent
cost measure. Only loopback and unix: addresses are used. Every loop is bounded by time and call count.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import select
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen as lg

SHEDDING = [False]  # --shedding: the sidecar's overload shedding on (its defaults) in every scenario
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    order: bool = True
    config: bool = True
    breakers: int = 100
    equity_mix: bool = False  # CanTrade and ReportEquity interleaved 1:1
    postgres: bool = False
    metrics: bool = False
    tracing: bool = False
    uds: bool = False
    uvloop: bool = True
    spool_reference: bool = False  # also measure the same sidecar with --spool-path off (rows <name>/ref)


SCENARIOS = {s.name: s for s in [
    Scenario("no_order", "CanTrade without order, default limits, memory only", order=False, config=False,
             breakers=0),
    Scenario("full", "CanTrade + full order, 20 symbol configs, 100 breakers, memory only"),
    Scenario("equity_mix", "full + ReportEquity interleaved 1:1", equity_mix=True),
    Scenario("postgres", "full, store on PostgreSQL", postgres=True),
    Scenario("metrics", "full + metrics (/metrics on 127.0.0.1:0)", metrics=True),
    Scenario("observability", "full + metrics + tracing", metrics=True, tracing=True),
    Scenario("full_path", "TARGET: full + PostgreSQL + metrics", postgres=True, metrics=True),
    Scenario("uds", "full over --listen unix:/path (baseline on unix: too)", uds=True),
    Scenario("spool_cost", "full_path with its local spool (ref: the same, --spool-path off, own database)",
             postgres=True, metrics=True, spool_reference=True),
    Scenario("no_uvloop", "full with --no-uvloop (baseline on asyncio too)", uvloop=False),
]}
QUICK = ["no_order", "full", "full_path", "uds", "spool_cost"]


# ---- PostgreSQL: a fresh database per run --------------------------------------------------------


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """CREATE a uniquely named database, yield its name, DROP it (WITH FORCE) at the end."""
    import psycopg

    name = f"tg_bench_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_url(db: str, port: int = 5432) -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:{port}/{db}"


def store_facts(db: str) -> dict[str, Any]:
    """Tables in the database and rows in risk_state / risk_state_history (is the store wired?)."""
    import psycopg

    out: dict[str, Any] = {}
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{db}", autocommit=True) as conn:
        row = conn.execute("select count(*) from information_schema.tables where table_schema='public'").fetchone()
        out["tables"] = row[0] if row else 0
        for table in ("risk_state", "risk_state_history", "circuit_breakers", "risk_configurations"):
            try:
                row = conn.execute(f"select count(*) from {table}").fetchone()  # noqa: S608 - fixed names
                out[table] = row[0] if row else 0
            except psycopg.Error:
                out[table] = None
    return out


# ---- one scenario ---------------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    concurrency: int
    tool: str
    sidecar: dict[str, float]
    baseline: dict[str, float]
    ratio: dict[str, float]
    rounds: int


@dataclass
class ScenarioReport:
    scenario: str
    description: str
    prepared: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    sidecar_rss_mb: float = 0.0


SHEDDING_OFF = ["--max-calls-per-connection", "0", "--max-calls-per-trader", "0"]


def _sidecar_args(sc: Scenario, db: str | None) -> list[str]:
    args = ["--metrics-listen", "127.0.0.1:0" if sc.metrics else "", "--http-listen", ""]
    if not SHEDDING[0]:  # see --shedding
        args += SHEDDING_OFF
    args += ["--uvloop" if sc.uvloop else "--no-uvloop"]
    if sc.tracing:
        args.append("--tracing")
    if db is not None:
        args += ["--database-url", pg_url(db)]
    else:  # memory only: no database at all (configs and breakers too)
        args += ["--database-url", "memory", "--no-enable-persistence"]
    return args


def _listen(workdir: Path, name: str, uds: bool) -> str:
    return f"unix:{workdir / (name + '.sock')}" if uds else "127.0.0.1:0"


def _measure(
    servers: Sequence[lg.Server], calls: list[tuple[str, bytes]], concurrency: int, args: argparse.Namespace,
    uvloop: bool, tool: str,
) -> dict[str, list[lg.Result]]:
    """`args.rounds` rounds; each measures every server once, the order rotated by one per round."""
    out: dict[str, list[lg.Result]] = {srv.name: [] for srv in servers}
    for k in range(args.rounds):
        for server in [*servers[k % len(servers):], *servers[:k % len(servers)]]:
            if tool == "h2load":
                method, body = calls[0]
                r = lg.h2load(server, server.address, method, body, streams=concurrency, duration=args.seconds,
                              warmup=args.warmup)
            else:
                r = lg.closed_loop(server, server.address, calls, concurrency, args.procs, args.seconds, args.warmup,
                                   use_uvloop=uvloop)
            out[server.name].append(r)
    return out


def _row(scenario: str, concurrency: int, tool: str, s_res: list[lg.Result], b_res: list[lg.Result]) -> Row:
    s, b = lg.summarize(s_res), lg.summarize(b_res)
    ratio: dict[str, float] = {}
    for key in ("rps", "p50", "p99", "p999", "cpu_us"):
        per_round = [getattr_metric(x, key) / getattr_metric(y, key) for x, y in zip(s_res, b_res, strict=True)
                     if getattr_metric(y, key) > 0]
        ratio[key] = statistics.median(per_round) if per_round else float("nan")
    return Row(scenario, concurrency, tool, s, b, ratio, len(s_res))


def getattr_metric(r: lg.Result, key: str) -> float:
    return {"rps": r.rps, "p50": r.p50, "p99": r.p99, "p999": r.p999, "cpu_us": r.server_cpu_us_per_call}[key]


def run_scenario(sc: Scenario, args: argparse.Namespace, workdir: Path) -> ScenarioReport:
    report = ScenarioReport(sc.name, sc.description)
    with contextlib.ExitStack() as stack:
        db = stack.enter_context(fresh_database()) if sc.postgres else None
        sidecar = lg.start_sidecar(workdir, f"{sc.name}-sidecar", _listen(workdir, f"{sc.name}-s", sc.uds),
                                   _sidecar_args(sc, db))
        stack.callback(sidecar.stop)
        prepared = lg.prepare(sidecar.address, config=sc.config, breaker_count=sc.breakers, with_order=sc.order)
        report.notes.extend(prepared.notes)
        report.prepared = {"configs": prepared.configs, "symbol_configs": prepared.symbol_configs,
                           "breakers": prepared.breakers}
        ct, eq = workdir / f"{sc.name}.ct", workdir / f"{sc.name}.eq"
        ct.write_bytes(prepared.can_trade_response)
        eq.write_bytes(prepared.report_equity_response)
        baseline = lg.start_baseline(workdir, f"{sc.name}-baseline", _listen(workdir, f"{sc.name}-b", sc.uds), [
            "--can-trade-response", str(ct), "--report-equity-response", str(eq),
            "--uvloop" if sc.uvloop else "--no-uvloop"])
        stack.callback(baseline.stop)
        calls = [(lg.CAN_TRADE, lg.can_trade_request(sc.order).SerializeToString())]
        if sc.equity_mix:
            calls.append((lg.REPORT_EQUITY, lg.report_equity_request().SerializeToString()))
        lg.verify(sidecar.address, calls)
        lg.verify(baseline.address, calls)
        servers = [sidecar, baseline]
        reference = None
        if sc.uds or not sc.uvloop or sc.spool_reference:  # a reference measured in the same rounds
            if sc.spool_reference:  # the spool's cost with the database up: the same sidecar without one
                ref_args = [*_sidecar_args(sc, stack.enter_context(fresh_database())), "--spool-path", "off"]
            else:  # the same workload on TCP + uvloop
                ref_args = _sidecar_args(Scenario("reference", ""), None)
            reference = lg.start_sidecar(workdir, f"{sc.name}-reference", "127.0.0.1:0", ref_args)
            stack.callback(reference.stop)
            lg.prepare(reference.address, config=sc.config, breaker_count=sc.breakers, with_order=sc.order)
            lg.verify(reference.address, calls)
            servers.append(reference)
        versus = f"{sc.name}/ref"
        tools = ["py"] + (["h2load"] if args.h2load and lg.h2load_available() and not sc.equity_mix else [])
        for tool in tools:
            for c in args.concurrency if tool == "py" else args.h2load_concurrency:
                res = _measure(servers, calls, c, args, sc.uvloop, tool)
                report.rows.append(_row(sc.name, c, tool, res[sidecar.name], res[baseline.name]))
                print_row(report.rows[-1], flush=True)
                if reference is not None:
                    report.rows.append(_row(versus, c, tool, res[sidecar.name], res[reference.name]))
                    print_row(report.rows[-1], flush=True)
        report.sidecar_rss_mb = sidecar.rss_bytes() / 2**20
        if db is not None:
            time.sleep(1.0)
            facts = store_facts(db)
            report.prepared["postgres"] = facts
            if not facts.get("tables"):
                report.notes.append("store not wired: --database-url accepted but PostgreSQL got no tables; "
                                    "this scenario ran memory-only")
        if sidecar.proc.poll() is not None:
            report.notes.append(f"sidecar exited with {sidecar.proc.returncode}")
    return report


# ---- output ---------------------------------------------------------------------------------------

HEADER = (f"{'scenario':<14}{'c':>4} {'tool':<7}| {'RPS side':>9} {'base':>7} {'ratio':>6} | {'p50 µs':>7} "
          f"{'base':>6} {'ratio':>5} | {'p99 µs':>7} {'base':>6} {'ratio':>5} | {'p99.9':>7} {'base':>6} "
          f"{'ratio':>5} | {'cpu µs/call':>11} {'base':>5} {'ratio':>5} | fail")


def print_row(r: Row, flush: bool = False) -> None:
    s, b, q = r.sidecar, r.baseline, r.ratio
    f = lg.fmt_us
    print(f"{r.scenario:<14}{r.concurrency:>4} {r.tool:<7}| {s['rps']:>9.0f} {b['rps']:>7.0f} {q['rps']:>6.2f} | "
          f"{f(s['p50']):>7} {f(b['p50']):>6} {q['p50']:>5.2f} | {f(s['p99']):>7} {f(b['p99']):>6} {q['p99']:>5.2f} | "
          f"{f(s['p999']):>7} {f(b['p999']):>6} {q['p999']:>5.2f} | {f(s['cpu_us']):>11} {f(b['cpu_us']):>5} "
          f"{q['cpu_us']:>5.2f} | {int(s['failed'] + b['failed'])}", flush=flush)


def machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    return {"nproc": str(os.cpu_count()), "cpu": model, "python": platform.python_version(), "loadavg": load}


def find(reports: Sequence[ScenarioReport], scenario: str, c: int, tool: str = "py") -> Row | None:
    for rep in reports:
        for row in rep.rows:
            if row.scenario == scenario and row.concurrency == c and row.tool == tool:
                return row
    return None


def targets(reports: Sequence[ScenarioReport]) -> list[str]:
    out = []

    def verdict(ok: bool) -> str:
        return "MET" if ok else "MISSED"

    for tool in ("py", "h2load"):
        r64 = find(reports, "full_path", 64, tool)
        if r64:
            out.append(f"full_path RPS at 64 in flight ({tool}) >= 0.90 x baseline: {r64.ratio['rps']:.2f} "
                       f"-> {verdict(r64.ratio['rps'] >= 0.90)}")
    r1 = find(reports, "full_path", 1)
    if r1:
        out.append(f"full_path p50 at 1 in flight <= 1.1 x baseline: {r1.ratio['p50']:.2f} "
                   f"-> {verdict(r1.ratio['p50'] <= 1.1)}")
        out.append(f"full_path p99 at 1 in flight <= 1.2 x baseline: {r1.ratio['p99']:.2f} "
                   f"-> {verdict(r1.ratio['p99'] <= 1.2)}")
    for tool in ("py", "h2load"):
        for c in (1, 8, 64):
            r = find(reports, "uds/ref", c, tool)  # sidecar on unix: vs the same sidecar on TCP, same rounds
            if r:
                out.append(f"UDS vs TCP ({tool}, {c} in flight): p50 {r.sidecar['p50']:.0f} vs {r.baseline['p50']:.0f} "
                           f"µs ({(1 - r.ratio['p50']) * 100:+.0f}% latency gain), p99 x{r.ratio['p99']:.2f}, "
                           f"RPS x{r.ratio['rps']:.2f}, cpu/call x{r.ratio['cpu_us']:.2f}")
    for tool in ("py", "h2load"):
        for c in (1, 8, 64):
            r = find(reports, "no_uvloop/ref", c, tool)  # asyncio vs uvloop sidecar, same rounds
            if r:
                out.append(f"uvloop off vs on ({tool}, {c} in flight): p50 {r.sidecar['p50']:.0f} vs "
                           f"{r.baseline['p50']:.0f} µs (x{r.ratio['p50']:.2f}), RPS x{r.ratio['rps']:.2f}, "
                           f"cpu/call x{r.ratio['cpu_us']:.2f}")
    return out


# ---- the PostgreSQL outage ------------------------------------------------------------------------


class TcpProxy:
    """A loopback TCP forwarder (threads) that can be cut: `refuse` closes everything and stops listening,
    `blackhole` keeps connections open but forwards nothing (and connects nothing) until restored."""

    def __init__(self, upstream: tuple[str, int], mode: str = "refuse") -> None:
        self.upstream = upstream
        self.mode = mode
        self.port = 0
        self._cut = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        self._listen()
        return self.port

    def _listen(self) -> None:
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self.port = ls.getsockname()[1]
        self._listener = ls
        self._thread = threading.Thread(target=self._accept, args=(ls,), daemon=True)
        self._thread.start()

    def _accept(self, ls: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([ls], [], [], 0.2)
            except (OSError, ValueError):
                return
            if not r:
                continue
            try:
                client, _ = ls.accept()
            except OSError:
                return
            if self._cut.is_set():  # blackhole: accept and hold, never answer
                self._track(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            self._track(client)
            self._track(server)
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _track(self, s: socket.socket) -> None:
        with self._lock:
            self._socks.add(s)

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while not self._stop.is_set():
                r, _, _ = select.select([a, b], [], [], 0.2)
                for s in r:
                    data = s.recv(65536)
                    if not data:
                        return
                    if not self._cut.is_set():
                        peers[s].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()

    def cut(self) -> None:
        self._cut.set()
        if self.mode == "refuse":
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            with self._lock:
                socks, self._socks = self._socks, set()
            for s in socks:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()

    def restore(self) -> None:
        with self._lock:
            socks, self._socks = self._socks, set()
        if self.mode == "blackhole":  # the stalled connections die now, as after a partition heals
            for s in socks:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
        self._cut.clear()
        if self._listener is None:
            self._listen()

    def close(self) -> None:
        self._stop.set()
        self.cut()


def run_outage(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Load (CanTrade + ReportEquity 1:1) with PostgreSQL up, then through a 60 s outage, then after."""
    out: dict[str, Any] = {"mode": args.outage_mode, "outage_s": args.outage_seconds, "concurrency": 8}
    with contextlib.ExitStack() as stack:
        db = stack.enter_context(fresh_database())
        proxy = TcpProxy(("127.0.0.1", 5432), args.outage_mode)
        port = proxy.start()
        stack.callback(proxy.close)
        sidecar = lg.start_sidecar(workdir, "outage-sidecar", "127.0.0.1:0",
                                   ["--database-url", pg_url(db, port), "--metrics-listen", "127.0.0.1:0",
                                    "--http-listen", ""])
        stack.callback(sidecar.stop)
        prepared = lg.prepare(sidecar.address, config=True, breaker_count=100, with_order=True)
        out["notes"] = list(prepared.notes)
        calls = [(lg.CAN_TRADE, lg.can_trade_request(True).SerializeToString()),
                 (lg.REPORT_EQUITY, lg.report_equity_request().SerializeToString())]
        phases: list[tuple[str, float]] = [("db_up", args.outage_seconds), ("outage", args.outage_seconds),
                                           ("recovered", min(30.0, args.outage_seconds))]
        for name, seconds in phases:
            if name == "outage":
                out["store_before_outage"] = store_facts(db)
                proxy.cut()
            elif name == "recovered":
                proxy.restore()
            r = lg.closed_loop(sidecar, sidecar.address, calls, 8, args.procs, seconds, 1.0)
            out[name] = {"rps": r.rps, "p50": r.p50, "p99": r.p99, "p999": r.p999, "calls": r.calls,
                         "failed": r.failed, "errors": r.errors}
            print(f"outage phase {name:<10} {seconds:>4.0f}s: rps={r.rps:.0f} p50={r.p50:.0f}µs p99={r.p99:.0f}µs "
                  f"p99.9={r.p999:.0f}µs calls={r.calls} failed={r.failed}", flush=True)
        time.sleep(3.0)
        out["store"] = store_facts(db)
        out["alive"] = sidecar.proc.poll() is None
        log = sidecar.log()
        out["log_lines_mentioning_database"] = sum(1 for line in log.splitlines() if "store" in line.lower())
        if not out["store"].get("tables"):
            out["notes"].append("store not wired: PostgreSQL got no tables, so the outage had nothing to cut")
    up, down = out["db_up"], out["outage"]
    out["p99_ratio"] = down["p99"] / up["p99"] if up["p99"] else float("nan")
    print(f"p99 during outage / p99 DB up = {out['p99_ratio']:.2f} (target <= 1.2: "
          f"{'MET' if out['p99_ratio'] <= 1.2 else 'MISSED'}); failed calls during outage: {down['failed']} "
          f"(target 0: {'MET' if down['failed'] == 0 else 'MISSED'})")
    print(f"store before the outage: {out.get('store_before_outage')}")
    print(f"store after recovery: {out['store']}; sidecar alive: {out['alive']}; notes: {out['notes']}")
    return out


# ---- main -----------------------------------------------------------------------------------------


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="TradeGuard sidecar vs bare grpc.aio baseline")
    p.add_argument("--quick", action="store_true", help=f"scenarios {','.join(QUICK)}; c=1,64; 1 round; 3 s")
    p.add_argument("--scenarios", default="", help=f"comma list of {','.join(SCENARIOS)}")
    p.add_argument("--concurrency", type=ints, default=None, help="in-flight calls (default 1,8,64)")
    p.add_argument("--rounds", type=int, default=None, help="alternating sidecar/baseline rounds (default 3)")
    p.add_argument("--seconds", type=float, default=None, help="measured seconds per point (default 5)")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--procs", type=int, default=2, help="client processes (at most 2 on 2 cores)")
    p.add_argument("--h2load", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure with h2load (closed loop, one connection)")
    p.add_argument("--h2load-concurrency", type=ints, default=[1, 64])
    p.add_argument("--outage", action="store_true", help="run the PostgreSQL outage scenario instead")
    p.add_argument("--outage-seconds", type=float, default=60.0)
    p.add_argument("--outage-mode", choices=["refuse", "blackhole"], default="refuse")
    p.add_argument("--json", default="", help="write all results here")
    p.add_argument("--shedding", action=argparse.BooleanOptionalAction, default=False,
                   help="keep the sidecar's overload shedding on (max_calls_per_connection / _per_trader defaults). "
                        "Off by default here: the closed loop's 64 calls in flight on 2 connections start more than "
                        "200 calls per 100 ms on a connection in bursts, a flood by that setting's definition, and "
                        "its shed calls (RESOURCE_EXHAUSTED) would be counted as failures; bench/fairness.py "
                        "measures shedding")
    args = p.parse_args(argv)
    SHEDDING[0] = args.shedding
    if args.quick:
        names = args.scenarios.split(",") if args.scenarios else QUICK
        args.concurrency = args.concurrency or [1, 64]
        args.rounds = args.rounds or 1
        args.seconds = args.seconds or 3.0
        args.h2load_concurrency = [64]
    else:
        names = args.scenarios.split(",") if args.scenarios else list(SCENARIOS)
        args.concurrency = args.concurrency or [1, 8, 64]
        args.rounds = args.rounds or 3
        args.seconds = args.seconds or 5.0
    args.procs = max(1, min(args.procs, 2))
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenarios {unknown}")
    info = machine()
    print(f"machine: nproc={info['nproc']} cpu={info['cpu']} python={info['python']} loadavg={info['loadavg']}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    workdir = Path(tempfile.mkdtemp(prefix="tg-bench-"))
    try:
        if args.outage:
            result: dict[str, Any] = {"machine": info, "outage": run_outage(args, workdir)}
        else:
            print(f"client: closed loop, grpc.aio, {args.procs} process(es) max, one channel each; "
                  f"{args.rounds} round(s) x {args.seconds:g} s (+{args.warmup:g} s warm-up) per point")
            print("sidecar: overload shedding " + ("on (defaults)\n" if args.shedding else
                                                  "off (--max-calls-per-connection 0 --max-calls-per-trader 0; "
                                                  "--shedding keeps it on)\n"))
            print(HEADER)
            reports = []
            for name in names:
                rep = run_scenario(SCENARIOS[name], args, workdir)
                reports.append(rep)
                for note in rep.notes:
                    print(f"  note ({name}): {note}")
            print("\nsetup:", {r.scenario: r.prepared for r in reports})
            print("sidecar RSS after each scenario (MB):", {r.scenario: round(r.sidecar_rss_mb, 1) for r in reports})
            print("\ntargets:")
            verdicts = targets(reports)
            for line in verdicts:
                print("  " + line)
            result = {"machine": info, "args": {k: v for k, v in vars(args).items()},
                      "reports": [asdict(r) for r in reports], "targets": verdicts}
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
