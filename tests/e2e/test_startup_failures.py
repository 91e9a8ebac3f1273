"""Start-up failures as a newcomer meets them (README "Settings"): `tradeguard serve` / `migrate` as subprocesses.
Each failure prints one error line with the fix, no traceback, and exits non-zero; an unreachable database is an
outage the sidecar serves through, a database misconfiguration that cannot heal is not (unless
--allow-degraded-start)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.databases import closed_port, database_url, require_postgres
from tests.support.sidecar import start_sidecar

BIN = Path(sys.executable).parent
TRADEGUARD = str(BIN / "tradeguard")


def run(tmp_path: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60.0,
        ) -> subprocess.CompletedProcess[str]:
    """`tradeguard ARGS` in tmp_path, with none of the caller's TRADEGUARD_* / DB_* / seed variables."""
    seeds = ("ENABLE_PERSISTENCE", "ENABLE_RISK_ENFORCEMENT", "LOG_LEVEL", "DATABASE_URL")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TRADEGUARD_", "DB_")) and k not in seeds}
    return subprocess.run([TRADEGUARD, *args], cwd=tmp_path, env={**clean, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout, check=False)


def serve_args(tmp_path: Path, *args: str) -> list[str]:
    return ["serve", "--state-dir", str(tmp_path), "--metrics-listen", "", "--no-uvloop", *args]


def error_lines(out: subprocess.CompletedProcess[str]) -> list[str]:
    text = out.stdout + out.stderr
    assert "Traceback" not in text, text
    return [line for line in text.splitlines() if " ERROR " in line or line.startswith("tradeguard ")]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_port_in_use_is_one_line_with_the_fix(tmp_path: Path, busy_port: int) -> None:
    out = run(tmp_path, *serve_args(tmp_path, "--listen", f"127.0.0.1:{busy_port}", "--database-url", "memory"))

    assert out.returncode == 1
    [line] = error_lines(out)
    assert f"cannot listen on 127.0.0.1:{busy_port}: the port is already in use" in line
    assert "--listen" in line


def test_an_unparseable_database_url_is_one_line_and_exit_2(tmp_path: Path) -> None:
    out = run(tmp_path, *serve_args(tmp_path), env={"DB_URL": "postgres//nohost"})

    assert out.returncode == 2
    assert error_lines(out) == [out.stderr.strip()]
    assert "database_url: not a database URL" in out.stderr and "expected postgresql://" in out.stderr


def test_migrate_against_an_unreachable_database_is_one_line_with_the_fix(tmp_path: Path) -> None:
    port = closed_port()

    out = run(tmp_path, "migrate", "--database-url", f"postgresql://postgres@127.0.0.1:{port}/tradeguard")

    assert out.returncode == 1
    [line] = error_lines(out)
    assert "not reachable" in line and f"is PostgreSQL running and reachable at 127.0.0.1:{port}?" in line


def test_an_unknown_database_stops_the_start_with_the_fix(tmp_path: Path) -> None:
    require_postgres()
    url = database_url(f"tg_missing_{uuid.uuid4().hex[:8]}")

    out = run(tmp_path, *serve_args(tmp_path, "--database-url", url))

    assert out.returncode == 1
    [line] = error_lines(out)
    assert "does not exist" in line and "create the database" in line and "--allow-degraded-start" in line


def test_an_unknown_role_stops_the_start(tmp_path: Path) -> None:
    require_postgres()
    url = database_url("postgres").replace("://postgres@", f"://tg_nobody_{uuid.uuid4().hex[:6]}@")
    if "://tg_nobody_" not in url:
        pytest.skip("the test server URL names no user to replace")

    out = run(tmp_path, *serve_args(tmp_path, "--database-url", url))

    assert out.returncode == 1
    [line] = error_lines(out)
    assert "check the user name" in line


def test_allow_degraded_start_serves_through_a_misconfiguration_with_the_state_not_loaded(tmp_path: Path) -> None:
    require_postgres()
    url = database_url(f"tg_missing_{uuid.uuid4().hex[:8]}")

    with start_sidecar(tmp_path, "--database-url", url, "--allow-degraded-start", "--no-uvloop") as sp:
        health = run(tmp_path, "health", "--address", sp.address, "--service", "tradeguard.state")
        overall = run(tmp_path, "health", "--address", sp.address)

    assert health.returncode == 1 and overall.returncode == 0
    assert "serving anyway (--allow-degraded-start)" in sp.log()


def test_an_unreachable_database_is_an_outage_the_sidecar_serves_through(tmp_path: Path) -> None:
    url = f"postgresql://postgres@127.0.0.1:{closed_port()}/tradeguard"

    with start_sidecar(tmp_path, "--database-url", url, "--no-uvloop") as sp:
        overall = run(tmp_path, "health", "--address", sp.address)

    assert overall.returncode == 0
    assert "stored state NOT LOADED at start" in sp.log()


def test_strict_stops_on_a_misspelled_variable_naming_the_right_one(tmp_path: Path) -> None:
    out = run(tmp_path, *serve_args(tmp_path, "--strict", "--database-url", "memory"),
              env={"TRADEGUARD_DAILY_MAX_DRAWDOWN_PERCENT": "3"})

    assert out.returncode == 2
    assert error_lines(out) == [out.stderr.strip()]
    assert "did you mean TRADEGUARD_DAILY_MAX_DRAWDOWN_PERCENTAGE?" in out.stderr


def test_seed_variables_and_a_config_file_reach_the_running_sidecar(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text('{"max_daily_loss": 3, "feature_flags": {"enable_risk_enforcement": false}}')
    env = {"LOG_LEVEL": "debug", "ENABLE_PERSISTENCE": "false", "TRADEGUARD_DAILY_MAX_DRAWDOWN_PERCENT": "4"}

    with start_sidecar(tmp_path, "--config", str(config), "--no-uvloop", env=env) as sp:
        log = sp.log()

    assert " DEBUG " in log  # LOG_LEVEL=debug
    assert "unknown environment variable TRADEGUARD_DAILY_MAX_DRAWDOWN_PERCENT (did you mean" in log
    assert f"daily_max_drawdown_percentage=3.0 (file {config}: max_daily_loss)" in log
    assert "enable_persistence=False (env ENABLE_PERSISTENCE)" in log
    assert "enforcement=False" in log  # the file's feature_flags, in the listening line
    [first] = [line for line in log.splitlines() if "settings given" in line][:1]
    assert first[:10].count("-") == 2 and first[10] == "T" and first.split()[0].endswith("Z")  # ISO-8601 UTC
