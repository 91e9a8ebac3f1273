#!/usr/bin/env python3
"""How soon after a sidecar restart does each client get its first answer? (issue 13, item 21)

Starts `tradeguard serve` on a fixed port, runs three pollers that ask CanTrade every 20 ms (the Python
AsyncRiskClient, the Go and the TypeScript example traders with --poll-ms), restarts the sidecar with
SIGTERM `--restarts` times, and prints, per client, the time from the restarted sidecar's ready file to
the client's first answer (median and max over the restarts). `--compare` also runs the Go and TS
traders with their gRPC library's default backoff (--grpc-default-backoff), as before the fix.

    .venv/bin/python client/reconnect_time.py --restarts 5 --compare

Needs the Go and TS toolchains (.ci/install-clients.sh); builds the Go trader into a temp directory
and the TS one with `tsc`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

PY_POLLER = """
import asyncio, sys, time
from tradeguard_client import AsyncRiskClient
async def main(addr, ms):
    async with AsyncRiskClient(addr, timeout=0.5) as guard:
        end = time.time() + ms / 1000
        while time.time() < end:
            d = await guard.can_trade("poll-bot", "poll-acct")
            print(f"step=poll unix_ms={int(time.time() * 1000)} reached={str(not d.sidecar_unavailable).lower()} "
                  f"code={d.code}", flush=True)
            await asyncio.sleep(0.02)
asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sidecar(port: int, tmp: Path) -> tuple[subprocess.Popen[bytes], float]:
    """Start the sidecar; return it and the wall-clock time (s) its ready file appeared."""
    ready = tmp / "ready"
    with contextlib.suppress(FileNotFoundError):
        ready.unlink()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADEGUARD_")}
    proc = subprocess.Popen([str(BIN / "tradeguard"), "serve", "--listen", f"127.0.0.1:{port}",
                             "--no-enable-persistence", "--metrics-listen", "", "--ready-file", str(ready)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp)
    while not ready.exists():
        if proc.poll() is not None:
            raise SystemExit(f"sidecar exited with {proc.returncode}")
        time.sleep(0.005)
    return proc, time.time()


def build(tmp: Path) -> dict[str, list[str]]:
    env = {**os.environ, "GOFLAGS": "", "GOPROXY": "off"}
    subprocess.run(["go", "build", "-o", str(tmp / "go-trader"), "./examples/trader"], cwd=ROOT / "client" / "go",
                   check=True, env=env)
    subprocess.run([str(ROOT / "client" / "ts" / "node_modules" / ".bin" / "tsc"), "-p", "tsconfig.json"],
                   cwd=ROOT / "client" / "ts", check=True)
    return {"go": [str(tmp / "go-trader")], "ts": ["node", str(ROOT / "client/ts/dist/examples/trader/main.js")]}


def first_answers(out: str, ready_times: list[float]) -> list[float]:
    """Per restart: seconds from ready to the first answered poll at or after it."""
    answered = []
    for line in out.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if fields.get("step") == "poll" and fields.get("reached") == "true":
            answered.append(int(fields["unix_ms"]) / 1000)
    delays = []
    for ready in ready_times:
        later = [t for t in answered if t >= ready]
        delays.append(later[0] - ready if later else float("nan"))
    return delays


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--down", type=float, default=1.0, help="seconds the sidecar stays down per restart")
    parser.add_argument("--compare", action="store_true", help="also the Go/TS traders with default backoff")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cmds = build(tmp)
        port = free_port()
        addr = f"127.0.0.1:{port}"
        sidecar, _ = start_sidecar(port, tmp)
        total_ms = int((args.restarts * (args.down + 8) + 5) * 1000)
        clients = {
            "python-async": [sys.executable, "-c", PY_POLLER, addr, str(total_ms)],
            "go": [*cmds["go"], "--addr", addr, "--poll-ms", str(total_ms), "--timeout-ms", "500"],
            "ts": [*cmds["ts"], "--addr", addr, "--poll-ms", str(total_ms), "--timeout-ms", "500"],
        }
        if args.compare:
            clients["go (grpc default backoff)"] = [*clients["go"], "--grpc-default-backoff"]
            clients["ts (grpc default backoff)"] = [*clients["ts"], "--grpc-default-backoff"]
        outs = {name: tmp / f"{i}.out" for i, name in enumerate(clients)}
        procs = {name: subprocess.Popen(cmd, stdout=outs[name].open("w"), stderr=subprocess.DEVNULL, cwd=ROOT)
                 for name, cmd in clients.items()}
        time.sleep(3)  # every poller connected and answering
        ready_times = []
        for _ in range(args.restarts):
            sidecar.send_signal(signal.SIGTERM)
            sidecar.wait()
            time.sleep(args.down)
            sidecar, ready = start_sidecar(port, tmp)
            ready_times.append(ready)
            time.sleep(3.5)
        for proc in procs.values():  # enough answers after the last restart: stop polling
            proc.terminate()
            proc.wait()
        sidecar.send_signal(signal.SIGTERM)
        sidecar.wait()
        print(f"time from the restarted sidecar's ready file to each client's first answer "
              f"({args.restarts} SIGTERM restarts, {args.down:.1f} s down each, polling every 20 ms):")
        for name in clients:
            delays = first_answers(outs[name].read_text(), ready_times)
            print(f"  {name:28s} median {statistics.median(delays):.2f} s   max {max(delays):.2f} s   "
                  f"all {' '.join(f'{d:.2f}' for d in delays)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
