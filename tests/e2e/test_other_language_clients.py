"""Bots in any language: the generated Go and TypeScript clients against a live `tradeguard serve`.

Each example trader (client/go/examples/trader, client/ts/examples/trader) walks the bot loop of
issue 7 with the order lifecycle of issue 16 (ask, place at a simulated venue, report the order, obey
the kill switch's cancel_all_orders) and fails closed when the sidecar is gone; the shared vectors
(tests/e2e/vectors.json) go through Python (raw generated stubs), Go and TypeScript and must decode to
the same answers.

Needs the toolchains of .ci/install-clients.sh (Debian Go packages, `npm ci` in client/ts). Without
them these tests skip on a developer machine and fail under CI (CI=true), where a skip would hide a
missing install step.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from tests.support.sidecar import SidecarProcess, start_sidecar
from tradeguard.v1 import admin_service_pb2, admin_service_pb2_grpc, risk_service_pb2, risk_service_pb2_grpc, types_pb2

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
GO_DIR = ROOT / "client" / "go"
TS_DIR = ROOT / "client" / "ts"
VECTORS = Path(__file__).with_name("vectors.json")
BUILD_TIMEOUT = 600
RUN_TIMEOUT = 60
EXIT_UNAVAILABLE = 3

LINE_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)")


def missing(reason: str) -> None:
    """Skip on a developer machine; fail under CI, where the toolchain must have been installed."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (run .ci/install-clients.sh before the tests)")
    pytest.skip(f"{reason}; install with .ci/install-clients.sh")


def run(
    cmd: list[str], cwd: Path = ROOT, timeout: float = RUN_TIMEOUT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False, env={**os.environ, **(env or {})}
    )


# ---- building the example traders -------------------------------------------------------------


@dataclass(frozen=True)
class Trader:
    """An example trader, built: `cmd` runs it."""

    lang: str
    cmd: tuple[str, ...]

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items() if k != "TRADEGUARD_ADDR"}
        return subprocess.run(
            [*self.cmd, *args],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
            env={**clean, **(env or {})},
        )


def build_go(out_dir: Path) -> Trader:
    go = shutil.which("go")
    if go is None:
        missing("go not installed (Debian package golang-go)")
    assert go is not None
    if not (GO_DIR / "vendor" / "modules.txt").exists():
        # Offline build against Debian's Go packages: see client/go/debian-vendor.sh.
        if not Path("/usr/share/gocode/src/google.golang.org/grpc/go.mod").exists():
            missing("Debian's golang-google-grpc-dev is not installed")
        prep = run([str(GO_DIR / "debian-vendor.sh")], cwd=GO_DIR)
        assert prep.returncode == 0, prep.stdout + prep.stderr
    env = {"GOFLAGS": "", "GOPROXY": "off"}
    vet = run([go, "vet", "./..."], cwd=GO_DIR, timeout=BUILD_TIMEOUT, env=env)
    assert vet.returncode == 0, f"go vet failed:\n{vet.stdout}{vet.stderr}"
    exe = out_dir / "go-trader"
    build = run([go, "build", "-o", str(exe), "./examples/trader"], cwd=GO_DIR, timeout=BUILD_TIMEOUT, env=env)
    assert build.returncode == 0, f"go build failed:\n{build.stdout}{build.stderr}"
    return Trader("go", (str(exe),))


def build_ts() -> Trader:
    node = shutil.which("node")
    tsc = TS_DIR / "node_modules" / ".bin" / "tsc"
    if node is None:
        missing("node not installed")
    if not tsc.exists():
        missing("client/ts/node_modules missing (npm ci in client/ts)")
    assert node is not None
    build = run([str(tsc), "-p", str(TS_DIR / "tsconfig.json")], cwd=TS_DIR, timeout=BUILD_TIMEOUT)
    assert build.returncode == 0, f"tsc failed:\n{build.stdout}{build.stderr}"
    return Trader("ts", (node, str(TS_DIR / "dist" / "examples" / "trader" / "main.js")))


@pytest.fixture(scope="module")
def go_trader(tmp_path_factory: pytest.TempPathFactory) -> Trader:
    return build_go(tmp_path_factory.mktemp("go"))


@pytest.fixture(scope="module")
def ts_trader() -> Trader:
    return build_ts()


@pytest.fixture(params=["go", "ts"])
def trader(request: pytest.FixtureRequest) -> Trader:
    built: Trader = request.getfixturevalue(f"{request.param}_trader")
    return built


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    with start_sidecar(
        tmp_path_factory.mktemp("sidecar"), "--no-enable-persistence", "--metrics-listen", "127.0.0.1:0"
    ) as sp:
        yield sp


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def parse_lines(stdout: str) -> list[dict[str, str]]:
    """The traders' `key=value key="quoted value"` lines, one dict per line."""
    lines = []
    for line in stdout.splitlines():
        fields = {}
        for key, raw in LINE_FIELD.findall(line):
            fields[key] = json.loads(raw) if raw.startswith('"') else raw
        if fields:
            lines.append(fields)
    return lines


def closed_port_address() -> str:
    """An address where nothing listens (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


# ---- the example bot loop ---------------------------------------------------------------------


BOT_LOOP_STEPS = [
    "report_equity",
    "can_trade",  # 50000: the venue fills it
    "report_order",
    "can_trade",  # 40000: the venue refuses it
    "report_order",
    "can_trade",  # 49000: it rests on the venue's book
    "report_order",
    "report_trade",
    "report_positions",
    "report_equity",
    "can_trade",
    "watch",
]


def test_example_trader_runs_the_bot_loop(trader: Trader, sidecar: SidecarProcess) -> None:
    ids = ["--trader", unique(f"{trader.lang}-bot"), "--account", unique(f"{trader.lang}-acct")]

    out = trader.run("--timeout-ms", "5000", *ids, env={"TRADEGUARD_ADDR": sidecar.address})

    assert out.returncode == 0, out.stdout + out.stderr
    lines = parse_lines(out.stdout)
    assert [line["step"] for line in lines] == [*BOT_LOOP_STEPS, "done"], out.stdout
    first_equity, *orders, trade, positions, breach, denied, watch, _ = lines
    assert first_equity["equity"] == "10000" and first_equity["trading_state"] == "TRADING_STATE_ACTIVE"
    decisions, reports = orders[0::2], orders[1::2]
    for allowed in decisions:
        assert allowed["allowed"] == "true" and allowed["code"] == "DECISION_CODE_ALLOWED", allowed
        assert allowed["client_order_id"].startswith("tg-"), allowed  # made by the client library
    assert [r["client_order_id"] for r in reports] == [d["client_order_id"] for d in decisions]
    assert [(r["status"], r["filled_quantity"], r["pending_orders"]) for r in reports] == [
        ("ORDER_STATUS_FILLED", "0.01", "0"),
        ("ORDER_STATUS_REJECTED", "0", "0"),
        ("ORDER_STATUS_ACCEPTED", "0", "1"),
    ], out.stdout
    assert all(r["duplicate"] == "false" for r in reports)
    assert trade["duplicate"] == "false" and trade["consecutive_losses"] == "1"
    assert positions["positions"] == "0" and positions["pending_orders"] == "1"
    assert breach["equity"] == "9400" and float(breach["daily_pnl_pct"]) == pytest.approx(-6.0)
    assert breach["trading_state"] == "TRADING_STATE_REDUCING"
    assert denied["allowed"] == "false" and denied["code"] == "DECISION_CODE_DAILY_LOSS_LIMIT"
    assert "daily_loss" in denied["failed_checks"].split(",")
    assert "6.00%" in denied["reason"] and "5.00%" in denied["reason"]
    assert watch["trading_state"] == "TRADING_STATE_REDUCING"
    assert watch["pause_code"] == "DECISION_CODE_DAILY_LOSS_LIMIT"
    assert watch["pending_orders"] == "1"
    assert TIMESTAMP.fullmatch(watch["paused_until"]), watch


def read_lines_until(proc: subprocess.Popen[str], lines: queue.Queue[str | None], step: str) -> list[str]:
    """The trader's output lines up to the first one of `step` (fails after RUN_TIMEOUT or at its exit)."""
    seen: list[str] = []
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=deadline - time.monotonic())
        except queue.Empty:
            break
        if line is None:
            pytest.fail(f"the trader exited ({proc.wait()}) before step={step}:\n{''.join(seen)}")
        seen.append(line)
        if line.startswith(f"step={step} "):
            return seen
    proc.kill()
    pytest.fail(f"no step={step} within {RUN_TIMEOUT}s:\n{''.join(seen)}")


def test_example_trader_cancels_its_working_order_when_the_kill_switch_halts_it(
    trader: Trader, sidecar: SidecarProcess
) -> None:
    trader_id, account_id = unique(f"{trader.lang}-bot"), unique(f"{trader.lang}-acct")
    args = ["--addr", sidecar.address, "--trader", trader_id, "--account", account_id, "--timeout-ms", "20000"]
    env = {k: v for k, v in os.environ.items() if k != "TRADEGUARD_ADDR"}
    lines: queue.Queue[str | None] = queue.Queue()
    with subprocess.Popen([*trader.cmd, *args, "--watch-updates", "2"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env) as proc:

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            before = read_lines_until(proc, lines, "watch")  # the first update: the current state
            with grpc.insecure_channel(sidecar.address) as channel:
                admin_service_pb2_grpc.AdminServiceStub(channel).PauseTrading(admin_service_pb2.PauseTradingRequest(
                    trader_id=trader_id, account_id=account_id, trading_state=types_pb2.TRADING_STATE_HALTED,
                    reason="operator kill switch"), timeout=10)
            code = proc.wait(timeout=RUN_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
            reader.join(timeout=10)
    rest = []
    while (line := lines.get_nowait()) is not None:
        rest.append(line)
    output = "".join(before + rest)

    assert code == 0, output
    resting = [line for line in parse_lines("".join(before)) if line["step"] == "report_order"][-1]
    assert resting["status"] == "ORDER_STATUS_ACCEPTED", output  # the third order rests on the venue's book
    steps = parse_lines("".join(rest))
    assert [s["step"] for s in steps] == ["watch", "cancel_all_orders", "report_order", "done"], output
    halted, cancel, cancelled, _ = steps
    assert halted["trading_state"] == "TRADING_STATE_HALTED" and halted["pending_orders"] == "1"
    assert cancel["client_order_ids"] == resting["client_order_id"]
    assert cancelled["client_order_id"] == resting["client_order_id"]
    assert cancelled["status"] == "ORDER_STATUS_CANCELLED" and cancelled["pending_orders"] == "0"


def test_example_trader_is_isolated_by_trader_id(trader: Trader, sidecar: SidecarProcess) -> None:
    account = unique(f"{trader.lang}-acct")
    first = trader.run("--addr", sidecar.address, "--trader", unique("a"), "--account", account)
    second = trader.run("--addr", sidecar.address, "--trader", unique("b"), "--account", account)

    assert first.returncode == 0, first.stdout + first.stderr
    assert second.returncode == 0, second.stdout + second.stderr


def test_example_trader_fails_closed_when_sidecar_is_unreachable(trader: Trader) -> None:
    out = trader.run("--timeout-ms", "3000", env={"TRADEGUARD_ADDR": closed_port_address()})

    assert out.returncode == EXIT_UNAVAILABLE, out.stdout + out.stderr
    decisions = [line for line in parse_lines(out.stdout) if line["step"] == "can_trade"]
    assert decisions, out.stdout
    assert decisions[-1]["allowed"] == "false"
    assert decisions[-1]["code"] == "DECISION_CODE_SIDECAR_UNAVAILABLE"
    assert "UNAVAILABLE" in decisions[-1]["reason"]
    assert not any(line.get("allowed") == "true" for line in parse_lines(out.stdout))


def test_go_guard_package_tests_pass(go_trader: Trader) -> None:
    out = run(["go", "test", "./guard"], cwd=GO_DIR, timeout=BUILD_TIMEOUT, env={"GOFLAGS": "", "GOPROXY": "off"})

    assert out.returncode == 0, out.stdout + out.stderr


def test_example_trader_rejects_bad_usage(trader: Trader) -> None:
    out = trader.run("--no-such-flag")

    assert out.returncode == 2, out.stdout + out.stderr


# ---- wire compatibility: the same vectors through Python, Go and TypeScript --------------------


def load_vectors(trader_id: str, account_id: str) -> dict[str, Any]:
    text = VECTORS.read_text()
    data: dict[str, Any] = json.loads(text)

    def substitute(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("{trader}", trader_id).replace("{account}", account_id)
        if isinstance(value, list):
            return [substitute(v) for v in value]
        if isinstance(value, dict):
            return {k: substitute(v) for k, v in value.items()}
        return value

    substituted: dict[str, Any] = substitute(data)
    return substituted


def run_python_vectors(address: str, vectors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The reference: the raw generated Python stubs, proto-JSON in and out."""
    results: list[dict[str, Any]] = []
    with grpc.insecure_channel(address) as channel:
        stub = risk_service_pb2_grpc.RiskServiceStub(channel)
        for v in vectors:
            request = json_format.Parse(json.dumps(v["request"]), getattr(risk_service_pb2, f"{v['method']}Request")())
            result: dict[str, Any] = {"name": v["name"], "method": v["method"]}
            try:
                response = getattr(stub, v["method"])(request, timeout=10)
                result["response"] = json_format.MessageToDict(response)
            except grpc.RpcError as exc:
                result["error"] = {"code": exc.code().name, "message": exc.details()}
            results.append(result)
    return results


def run_client_vectors(trader: Trader, address: str, vectors_file: Path) -> list[dict[str, Any]]:
    out = trader.run("--addr", address, "--timeout-ms", "10000", "--vectors", str(vectors_file))
    assert out.returncode == 0, out.stdout + out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def lookup(obj: Any, path: str, expected: Any) -> Any:
    """Value at a dotted path of a proto-JSON object; an absent field reads as the expected type's default."""
    for part in path.split("."):
        if isinstance(obj, list):
            obj = obj[int(part)] if int(part) < len(obj) else None
        elif isinstance(obj, dict):
            obj = obj.get(part)
        else:
            obj = None
        if obj is None:
            return type(expected)()
    return obj


INT64_FIELDS = frozenset({"dailyOrders"})
"""64-bit integers in the unary responses: proto-JSON writes them as strings (Python, Go), ts-proto as numbers."""


def normalize(value: Any, ids: dict[str, str]) -> Any:
    """Comparable across languages: numbers as floats, timestamps, run-specific ids and order ids masked."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        for real, mask in ids.items():
            value = value.replace(real, mask)
        return TIMESTAMP.sub("<timestamp>", value)
    if isinstance(value, list):
        return [normalize(v, ids) for v in value]
    if isinstance(value, dict):  # an order id the vector did not set is made per run (by a client or the sidecar)
        return {k: "<client_order_id>" if k in ("clientOrderId", "client_order_id")
                else float(v) if k in INT64_FIELDS else normalize(v, ids) for k, v in value.items()}
    return value


def check_against_vectors(lang: str, vectors: list[dict[str, Any]], results: list[dict[str, Any]]) -> None:
    assert [r["name"] for r in results] == [v["name"] for v in vectors], f"{lang}: vectors answered out of order"
    for v, r in zip(vectors, results, strict=True):
        where = f"{lang} {v['name']}"
        if "expect_error" in v:
            assert "error" in r, f"{where}: expected {v['expect_error']}, got {r.get('response')}"
            assert r["error"]["code"] == v["expect_error"], f"{where}: {r['error']}"
            continue
        assert "error" not in r, f"{where}: {r['error']}"
        for path, expected in v.get("expect", {}).items():
            got = lookup(r["response"], path, expected)
            if isinstance(expected, float | int) and not isinstance(expected, bool):
                assert float(got) == pytest.approx(expected), f"{where}: {path}={got!r}, expected {expected!r}"
            else:
                assert got == expected, f"{where}: {path}={got!r}, expected {expected!r}"


def test_wire_compatibility_vectors_python_go_typescript(
    go_trader: Trader, ts_trader: Trader, sidecar: SidecarProcess, tmp_path: Path
) -> None:
    runs: dict[str, list[dict[str, Any]]] = {}
    masks: dict[str, dict[str, str]] = {}
    vectors: list[dict[str, Any]] = []
    for lang in ("python", "go", "ts"):
        trader_id, account_id = unique(f"vec-{lang}"), unique(f"vec-{lang}-acct")
        data = load_vectors(trader_id, account_id)
        vectors = data["vectors"]
        masks[lang] = {trader_id: "<trader>", account_id: "<account>"}
        if lang == "python":
            results = run_python_vectors(sidecar.address, vectors)
        else:
            vectors_file = tmp_path / f"vectors-{lang}.json"
            vectors_file.write_text(json.dumps(data))
            results = run_client_vectors(go_trader if lang == "go" else ts_trader, sidecar.address, vectors_file)
        check_against_vectors(lang, vectors, results)
        runs[lang] = results

    reference = [normalize(r, masks["python"]) for r in runs["python"]]
    for lang in ("go", "ts"):
        answers = [normalize(r, masks[lang]) for r in runs[lang]]
        for ref, got, v in zip(reference, answers, vectors, strict=True):
            assert got == ref, f"{lang} decoded {v['name']} differently from Python:\n{got}\n!=\n{ref}"


def test_vector_file_is_well_formed() -> None:
    data = load_vectors("t", "a")
    methods = set(risk_service_pb2.DESCRIPTOR.services_by_name["RiskService"].methods_by_name)

    names = [v["name"] for v in data["vectors"]]
    assert len(names) == len(set(names))
    for v in data["vectors"]:
        assert v["method"] in methods, v
        assert ("expect" in v) != ("expect_error" in v), v
        json_format.Parse(json.dumps(v["request"]), getattr(risk_service_pb2, f"{v['method']}Request")())


# ---- the README fragment's snippets compile ---------------------------------------------------

README = ROOT / "README.md"


def readme_block(lang: str, containing: str = "") -> str:
    blocks: list[str] = [b for b in re.findall(rf"```{lang}\n(.*?)```", README.read_text(), re.S) if containing in b]
    assert blocks, f"no ```{lang} block containing {containing!r} in {README.relative_to(ROOT)}"
    return blocks[0]


def test_readme_go_snippet_compiles(go_trader: Trader, tmp_path: Path) -> None:
    module = tmp_path / "go"
    shutil.copytree(GO_DIR, module, symlinks=True)  # vendor/ stays a set of links to Debian's sources
    (module / "readme").mkdir()
    (module / "readme" / "main.go").write_text(readme_block("go"))
    env = {"GOFLAGS": "", "GOPROXY": "off"}

    vet = run(["go", "vet", "./readme"], cwd=module, timeout=BUILD_TIMEOUT, env=env)
    fmt = run(["gofmt", "-l", "readme"], cwd=module)

    assert vet.returncode == 0, vet.stdout + vet.stderr
    assert fmt.stdout.strip() == "", f"README Go snippet is not gofmt-formatted: {fmt.stdout}"


def test_readme_typescript_snippet_compiles(ts_trader: Trader, tmp_path: Path) -> None:
    (tmp_path / "node_modules").symlink_to(TS_DIR / "node_modules")
    (tmp_path / "src").symlink_to(TS_DIR / "src")
    (tmp_path / "examples").mkdir()  # the README puts it in client/ts/examples/, which `npm run build` compiles
    (tmp_path / "examples" / "bot.ts").write_text(readme_block("ts"))
    (tmp_path / "tsconfig.json").write_text(
        json.dumps(
            {
                "extends": str(TS_DIR / "tsconfig.json"),
                "compilerOptions": {"noEmit": True, "rootDir": "/"},
                "include": ["examples/bot.ts"],
            }
        )
    )

    out = run(
        [str(TS_DIR / "node_modules" / ".bin" / "tsc"), "-p", str(tmp_path / "tsconfig.json")],
        cwd=tmp_path,
        timeout=BUILD_TIMEOUT,
    )

    assert out.returncode == 0, out.stdout + out.stderr


def test_readme_other_language_protoc_command_runs(tmp_path: Path) -> None:
    if shutil.which("protoc") is None or not Path("/usr/include/google/protobuf/timestamp.proto").exists():
        missing("Debian's protoc (protobuf-compiler, libprotobuf-dev) is not installed")
    script = "\n".join(
        line for line in readme_block("sh", "--java_out").splitlines() if not line.startswith(("sudo ", "mkdir "))
    ).replace("gen/", f"{tmp_path}/gen/")
    (tmp_path / "gen" / "java").mkdir(parents=True)

    out = run(["bash", "-euc", script])

    assert out.returncode == 0, out.stdout + out.stderr
    assert list((tmp_path / "gen" / "java").rglob("*.java"))
    assert (tmp_path / "gen" / "tradeguard.binpb").stat().st_size > 0
