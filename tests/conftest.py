"""Shared fixtures, and a guard: no test reads or writes the database in the directory the tests run from.

A user who ran the README's first command has a `./tradeguard.db` there (the default `database_url`). A test
that opened it would see that user's traders and run migrations on their file. Every SQLite connection a test
makes in this process is checked (an audit hook on `sqlite3.connect`): one to a file directly in the working
directory or the repository root is refused and fails the test. Files the tests leave there are caught too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PROTECTED_DIRS = {Path.cwd().resolve(), ROOT}
DEFAULT_DB_FILES = ("tradeguard.db", "tradeguard.db-wal", "tradeguard.db-shm", "tradeguard.db-journal")
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
    yield
    refused, changed = list(_refused), [str(p) for p, v in _default_db_files().items() if before.get(p) != v]
    del _refused[:]
    assert not refused, f"the test opened the working-directory database: {refused}"
    assert not changed, f"the test created or changed: {changed}"
