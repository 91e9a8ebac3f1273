"""Where the sidecar's extra server CPU per call goes: the sidecar, variants of it and the bare baseline, in
the same run (h2load, CanTrade with the full workload, memory store, rounds alternating).

    .venv/bin/python bench/attribution.py [--rounds 5] [--seconds 4] [--streams 64]

Variants (bench/attribution_hooks/sitecustomize.py, loaded through PYTHONPATH by this script only):
`double` runs the CanTrade service twice per request, `dblengine` the engine twice, `const` answers a cached
response (the service's work removed), `constcopy` a fresh copy of it. Prints the median server CPU µs per
call (utime + stime from /proc over the measured window) and RPS of each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen as lg

HOOKS = Path(__file__).resolve().parent / "attribution_hooks"
ROOT = Path(__file__).resolve().parent.parent
# The sidecars run this tree's code (not whatever the venv's editable install points at), with the hooks first.
SIDECAR_PATH = ":".join(str(p) for p in (HOOKS, ROOT / "server", ROOT / "proto" / "python", ROOT / "client" / "python"))
VARIANTS = ("", "double", "dblengine", "const", "constcopy")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--streams", type=int, default=64)
    args = p.parse_args(argv)
    if not lg.h2load_available():
        raise SystemExit("h2load is needed: apt-get install nghttp2-client")
    work = Path(tempfile.mkdtemp(prefix="tg-attribution-"))
    body = lg.can_trade_request(True).SerializeToString()
    servers: dict[str, lg.Server] = {"baseline": lg.start_baseline(work, "baseline", "127.0.0.1:0")}
    try:
        for variant in VARIANTS:
            name = f"sidecar:{variant}" if variant else "sidecar"
            env = {"PYTHONPATH": SIDECAR_PATH, "TG_BENCH_VARIANT": variant}
            srv = lg.start_sidecar(work, name.replace(":", "_"), "127.0.0.1:0",
                                   ["--database-url", "memory", "--no-enable-persistence"], env=env)
            lg.prepare(srv.address, config=True, breaker_count=100, with_order=True)
            servers[name] = srv
        names = list(servers)
        cpu: dict[str, list[float]] = {n: [] for n in names}
        rps: dict[str, list[float]] = {n: [] for n in names}
        for k in range(args.rounds):
            for name in names[k % len(names):] + names[:k % len(names)]:
                srv = servers[name]
                r = lg.h2load(srv, srv.address, lg.CAN_TRADE, body, streams=args.streams, duration=args.seconds)
                cpu[name].append(r.server_cpu_s / max(r.calls, 1) * 1e6)
                rps[name].append(r.calls / r.seconds)
        base = statistics.median(cpu["baseline"])
        print(f"h2load, {args.streams} in flight, {args.rounds} rounds x {args.seconds:g} s; medians")
        for name in names:
            c = statistics.median(cpu[name])
            print(f"{name:20s} server CPU {c:6.0f} µs/call ({c - base:+5.0f} vs baseline)   "
                  f"RPS {statistics.median(rps[name]):6.0f}   rounds: {[round(x) for x in cpu[name]]}")
    finally:
        for srv in servers.values():
            srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
