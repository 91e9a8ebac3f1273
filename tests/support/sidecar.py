"""Start real sidecars for tests: in process (port 0) or as a `tradeguard serve` subprocess."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.wait import eventually_sync
from tradeguard_server.engine.clock import Clock
from tradeguard_server.settings import load_settings
from tradeguard_server.sidecar import Sidecar

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@contextlib.asynccontextmanager
async def running_sidecar(clock: Clock | None = None, **overrides: Any) -> AsyncIterator[Sidecar]:
    """An in-process sidecar on 127.0.0.1:0, memory only unless a database_url is given.

    Tests of other behaviour call AdminService without a token: unless the test gives admin credentials (or a
    state_dir for the generated token), the sidecar runs with dev_open_admin. tests/integration/test_security.py
    checks the defaults.
    """
    if not {"admin_token", "admin_token_file", "state_dir", "dev_open_admin"} & overrides.keys():
        overrides["dev_open_admin"] = True
    overrides.setdefault("listen", "127.0.0.1:0")
    overrides.setdefault("enable_persistence", False)
    overrides.setdefault("uvloop", False)
    overrides.setdefault("metrics_listen", "")
    overrides.setdefault("http_listen", "")  # tests of the HTTP API ask for 127.0.0.1:0
    overrides.setdefault("database_url", "memory")
    # PostgreSQL: a spool of its own per sidecar (not ./tradeguard-spool-<host>.db shared by every test), removed
    # after it
    spool_dir = None
    if "spool_path" not in overrides:
        spool_dir = tempfile.mkdtemp(prefix="tg-test-spool-")
        overrides["spool_path"] = os.path.join(spool_dir, "spool.db")
    sidecar = Sidecar(load_settings({}, overrides), clock=clock)
    try:
        await sidecar.start()
        try:
            yield sidecar
        finally:
            await sidecar.stop()
    finally:
        if spool_dir is not None:
            shutil.rmtree(spool_dir, ignore_errors=True)


@dataclass
class SidecarProcess:
    """A `tradeguard serve` subprocess."""

    proc: subprocess.Popen[bytes]
    address: str
    log_path: Path
    args: list[str] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


def spawn_sidecar(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
                  timeout: float = 30.0, name: str = "sidecar", open_admin: bool = True) -> SidecarProcess:
    """Run `tradeguard serve --listen 127.0.0.1:0 ...` and wait until its ready file names the address.

    With open_admin (and no admin token in args or env) the process runs with --dev-open-admin, so tests of
    other behaviour call AdminService without a token; pass open_admin=False for the default (generated token
    in tmp_path/admin.token, see `admin_token`).
    """
    ready = tmp_path / f"{name}.ready"
    with contextlib.suppress(FileNotFoundError):
        ready.unlink()
    log_path = tmp_path / f"{name}.log"
    seeds = ("ENABLE_PERSISTENCE", "ENABLE_RISK_ENFORCEMENT", "LOG_LEVEL", "DATABASE_URL")  # read by settings too
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("TRADEGUARD_", "DB_")) and k not in seeds}
    full_env.update(env or {})
    cmd = [str(BIN / "tradeguard"), "serve", "--ready-file", str(ready), *args]
    if not any(a == "--listen" or a.startswith("--listen=") for a in args):
        cmd += ["--listen", "127.0.0.1:0"]
    admin_given = any(a.startswith(("--admin-token", "--dev-open-admin", "--no-dev-open-admin")) for a in args) or \
        any(k in full_env for k in ("TRADEGUARD_ADMIN_TOKEN", "TRADEGUARD_ADMIN_TOKEN_FILE",
                                    "TRADEGUARD_DEV_OPEN_ADMIN"))
    if open_admin and not admin_given:
        cmd += ["--dev-open-admin"]
    if not any(a.startswith("--metrics-listen") for a in args):
        cmd += ["--metrics-listen", ""]
    if not any(a.startswith("--http-listen") for a in args) and "TRADEGUARD_HTTP_LISTEN" not in full_env:
        cmd += ["--http-listen", ""]
    if not any(a.startswith("--database-url") or a.startswith("--enable-persistence") or
               a.startswith("--no-enable-persistence") for a in args) and "TRADEGUARD_DATABASE_URL" not in full_env:
        cmd += ["--database-url", f"sqlite:///{tmp_path / (name + '.db')}"]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=full_env, cwd=tmp_path)

    def ready_or_exited() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"sidecar exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}")
        return ready.exists()

    if not eventually_sync(ready_or_exited, timeout=timeout, interval=0.02):
        proc.kill()
        raise TimeoutError(f"sidecar not ready in {timeout}s:\n{log_path.read_text(errors='replace')}")
    return SidecarProcess(proc, ready.read_text().strip(), log_path, cmd)


@contextlib.contextmanager
def start_sidecar(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
                  name: str = "sidecar", open_admin: bool = True) -> Iterator[SidecarProcess]:
    """Context manager around spawn_sidecar that stops the process (SIGTERM, then SIGKILL) at exit."""
    sp = spawn_sidecar(tmp_path, *args, env=env, name=name, open_admin=open_admin)
    try:
        yield sp
    finally:
        if sp.proc.poll() is None:
            sp.proc.send_signal(signal.SIGTERM)
            try:
                sp.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                sp.proc.kill()
                sp.proc.wait()
