"""No test may read or write the user's working-directory database (README command 1 leaves `./tradeguard.db`).

The guards live in tests/conftest.py; these tests check that they are in force and that the helpers every test
uses to build sidecars give each one its own database (memory, or a file under the test's tmp_path).
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from tests import conftest
from tests.attack.support import LoopThread, ThreadedSidecar
from tests.support.sidecar import running_sidecar, spawn_sidecar
from tradeguard_server.settings import load_settings
from tradeguard_server.sidecar import Sidecar

TESTS = Path(__file__).resolve().parent


def test_the_default_database_is_in_the_working_directory_and_the_guard_knows_it() -> None:
    default = load_settings({}, {}).database_url

    assert default == "sqlite:///tradeguard.db"
    assert conftest.working_directory_database(default) == Path.cwd().resolve() / "tradeguard.db"
    assert conftest.working_directory_database(f"sqlite:///{conftest.ROOT / 'tradeguard.db'}") is not None


def test_the_guard_lets_test_databases_through(tmp_path: Path) -> None:
    for url in ("memory", f"sqlite:///{tmp_path / 'x.db'}", "sqlite:///:memory:",
                "postgresql+psycopg://postgres@127.0.0.1:5432/tg_test_x"):
        assert conftest.working_directory_database(url) is None, url


def test_every_sidecar_built_in_this_process_is_checked() -> None:
    assert getattr(Sidecar.__init__, "isolation_guard", False), "tests/conftest.py no longer wraps Sidecar.__init__"


def test_opening_the_working_directory_database_is_refused() -> None:
    with pytest.raises(PermissionError, match="tests use their own temporary databases"):
        sqlite3.connect("tradeguard.db")
    conftest._refused.clear()  # the refusal above was this test's own doing


async def test_the_in_process_helper_gives_each_sidecar_its_own_database() -> None:
    async with running_sidecar() as sc:
        assert conftest.working_directory_database(sc.settings.database_url) is None
        assert sc.settings.database_url == "memory"


def test_the_threaded_helper_gives_each_sidecar_its_own_database() -> None:
    loop = LoopThread()
    try:
        sidecar = ThreadedSidecar(loop)
        sidecar.start()
        try:
            assert sidecar.sidecar is not None
            assert conftest.working_directory_database(sidecar.sidecar.settings.database_url) is None
        finally:
            sidecar.stop()
    finally:
        loop.close()


def test_the_process_helper_gives_each_sidecar_a_database_under_tmp_path(tmp_path: Path) -> None:
    sp = spawn_sidecar(tmp_path)
    try:
        url = sp.args[sp.args.index("--database-url") + 1]
    finally:
        sp.terminate()
    assert url == f"sqlite:///{tmp_path / 'sidecar.db'}"
    assert (tmp_path / "sidecar.db").exists()


def test_no_test_source_builds_settings_on_the_default_database() -> None:
    """A test building Settings for a sidecar that starts names its database: `load_settings({}, {...})`
    overrides given inline must hold a database_url (or turn persistence off and say where state goes).
    Tests about the settings themselves (errors before a sidecar exists) are exempt: their Sidecar(...) raises."""
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        text = path.read_text()
        for match in re.finditer(r"running_sidecar\(|ThreadedSidecar\(", text):
            call = text[match.start():text.find(")", match.start()) + 1]
            if re.search(r"database_url\s*=\s*['\"]sqlite:///tradeguard\.db", call):
                offenders.append(f"{path.relative_to(TESTS)}: {call}")
        for match in re.finditer(r"['\"]database_url['\"]\s*:\s*['\"]sqlite:///(?!\{)([^'\"]*)['\"]", text):
            if "/" not in match.group(1):
                offenders.append(f"{path.relative_to(TESTS)}: {match.group(0)}")
    assert offenders == []


def test_the_guard_knows_the_generated_admin_token_of_the_working_directory(tmp_path: Path) -> None:
    base = {"database_url": "memory", "enable_persistence": False}

    assert conftest.working_directory_admin_token(load_settings({}, base)) is not None  # ./admin.token
    assert conftest.working_directory_admin_token(load_settings({}, {**base, "state_dir": str(tmp_path)})) is None
    assert conftest.working_directory_admin_token(load_settings({}, {**base, "dev_open_admin": True})) is None
