"""The "Running many sidecars" section and its Kubernetes example (issue 17), checked as a newcomer would use them.

- The section's ```sh block is pasted, in order, into one bash in a fresh directory: two `tradeguard serve`
  processes on one PostgreSQL database, grpcurl calls and the account kill switch. Only the ports and the database
  (name, and the server's address when the suite runs on another one) are changed. Each command must exit 0, except
  the one the section presents as an error; the answers its comments state are checked.
- deploy/kubernetes/many-bots.yaml parses; every variable it gives the sidecar is a setting, read as intended; the
  bot's command, run as written against a sidecar with many-bots-credentials.toml, completes a trading cycle.

The section is README.md's "## Running many sidecars".
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import uuid
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.e2e.test_readme_examples import Command, Result, clean_env, nth, tools_or_skip
from tests.support.databases import admin_url, closed_port, require_postgres
from tests.support.sidecar import start_sidecar
from tradeguard_server.settings import DB_PART_ENV, Settings, load_settings

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
TITLE = "Running many sidecars"
MANIFEST = ROOT / "deploy" / "kubernetes" / "many-bots.yaml"
CREDENTIALS = ROOT / "deploy" / "kubernetes" / "many-bots-credentials.toml"
TRADER = ROOT / "client" / "python" / "examples" / "trader.py"
GRPCURL_FAILED_PRECONDITION = 64 + 9  # grpcurl exits 64 + the gRPC status code
POD = "trading-bots-0"


def section_text() -> str:
    """The section, from README.md."""
    parts = re.split(r"^## (.+)$", (ROOT / "README.md").read_text(), flags=re.M)
    for title, body in zip(parts[1::2], parts[2::2], strict=True):
        if title.strip() == TITLE:
            return body
    raise AssertionError(f"no section {TITLE!r} in README.md")


def section_commands() -> list[Command]:
    """The commands of the section's ```sh blocks (cut as tests/e2e/test_readme_examples.py cuts them)."""
    commands: list[Command] = []
    for n, block in enumerate(re.findall(r"```sh\n(.*?)```", section_text(), re.S), start=1):
        current = ""
        for line in block.splitlines():
            if not current and (not line.strip() or line.lstrip().startswith("#")):
                continue
            current = f"{current}\n{line}" if current else line
            try:
                shlex.split(current, comments=True)
            except ValueError:
                continue
            if current.endswith("\\"):
                continue
            commands.append(Command(TITLE, current, n))
            current = ""
    return commands


def run_pasted(cwd: Path, commands: list[Command], replace: dict[str, str], timeout: float = 120) -> list[Result]:
    """The commands pasted in order into one bash in `cwd` (its own process group: whatever it leaves running is
    killed at the end), each text rewritten by `replace`."""
    script = ["set +e"]
    for i, c in enumerate(commands):
        text = c.text
        for old, new in replace.items():
            text = text.replace(old, new)
        script.append(f"{{ {text}\n}} > out.{i} 2> err.{i}; echo $? > rc.{i}")
    (cwd / "pasted.sh").write_text("\n".join(script) + "\n")
    shell = subprocess.Popen(["bash", "pasted.sh"], cwd=cwd, env=clean_env(), start_new_session=True)
    try:
        assert shell.wait(timeout=timeout) == 0
    finally:
        with contextlib.suppress(OSError):  # nothing left to kill
            os.killpg(shell.pid, signal.SIGKILL)  # the sidecars, had a command failed before `kill $A $B`
        shell.wait()
    return [Result(c, int((cwd / f"rc.{i}").read_text()) if (cwd / f"rc.{i}").exists() else -1,
                   (cwd / f"out.{i}").read_text() if (cwd / f"out.{i}").exists() else "",
                   (cwd / f"err.{i}").read_text() if (cwd / f"err.{i}").exists() else "")
            for i, c in enumerate(commands)]


def test_many_sidecars_section_commands_pasted_in_order_work(tmp_path: Path) -> None:
    tools_or_skip()
    require_postgres()
    if shutil.which("psql") is None:
        pytest.skip("psql is not installed (the section creates its database with it)")
    commands = section_commands()
    assert sum("tradeguard serve" in c.text for c in commands) == 2
    admin = make_url(admin_url()).set(drivername="postgresql").render_as_string(hide_password=False)
    server = admin.rsplit("/", 1)[0]  # scheme, user, host and port of the suite's server
    database = f"tg_doc_many_{uuid.uuid4().hex[:10]}"
    ports = {p: str(closed_port()) for p in ("50051", "50052", "9464", "9465")}
    replace = {"postgresql://postgres@127.0.0.1:5432": server, "tradeguard_many": database}
    for old, new in ports.items():
        replace[f"127.0.0.1:{old}"] = f"127.0.0.1:{new}"
        replace[f"localhost:{old}"] = f"127.0.0.1:{new}"
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))

    try:
        results = run_pasted(tmp_path, commands, replace)
    finally:
        import psycopg

        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    logs = "".join(p.read_text() for p in sorted(tmp_path.glob("sidecar-*.log")))

    wrong = nth(results, "CanTrade", n=0)
    failed = [f"exit {r.code}: {r.command.text}\n{r.output}" for r in results
              if r.code != (GRPCURL_FAILED_PRECONDITION if r is wrong else 0)]
    assert not failed, "\n\n".join(failed) + "\n\n" + logs
    assert "FailedPrecondition" in wrong.output and "sidecar-b" in wrong.output, wrong.output
    assert "Traceback" not in logs

    assert nth(results, '"bot-2"', "ReportEquity").json()["state"]["trading_state"] == "TRADING_STATE_ACTIVE"
    paused = nth(results, "PauseTrading", '"account_id": "acct-1"').json()
    assert paused["scope_pause"]["trading_state"] == "TRADING_STATE_HALTED" and paused["control_state_version"]
    stopped = nth(results, "CanTrade", n=1).json()  # on B, pressed on A
    assert stopped["allowed"] is False and stopped["code"] == "DECISION_CODE_KILL_SWITCH", stopped
    assert stopped["trading_state"] == "TRADING_STATE_HALTED"
    listed = nth(results, "ListRiskStates").json()["entries"]
    owners = {e["state"]["trader_id"]: e.get("owner_sidecar") for e in listed}
    assert owners == {"bot-1": "sidecar-a", "bot-2": "sidecar-b"}, listed
    assert nth(results, "CanTrade", n=2).json()["allowed"] is True  # resumed on B
    assert nth(results, "PauseTrading", "all_accounts").json()["scope_pause"]["all_accounts"] is True
    assert nth(results, "tradeguard.control").json() == {"status": "SERVING"}
    assert "tradeguard_control_state_age_seconds" in nth(results, "/metrics").output


# ---- deploy/kubernetes/many-bots.yaml -------------------------------------------------------------------------


def manifest() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    docs = {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text()) if d is not None}
    assert set(docs) == {"Service", "StatefulSet"}, set(docs)
    return docs


def containers() -> tuple[dict[str, Any], dict[str, Any]]:
    pod = manifest()["StatefulSet"]["spec"]["template"]["spec"]
    sidecar = next(c for c in pod["initContainers"] if c["name"] == "tradeguard")
    bot = next(c for c in pod["containers"] if c["name"] == "bot")
    return sidecar, bot


def env_of(container: dict[str, Any]) -> dict[str, str]:
    """The container's variables, a downward-API metadata.name read as the first pod's name."""
    out = {}
    for e in container["env"]:
        if "value" in e:
            out[e["name"]] = str(e["value"])
        else:
            assert e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", e
            out[e["name"]] = POD
    return out


def test_many_bots_manifest_sets_only_real_settings_and_names_each_sidecar_after_its_pod() -> None:
    docs = manifest()
    sts = docs["StatefulSet"]
    sidecar, bot = containers()
    env = env_of(sidecar)
    setting_names = {f.name for f in fields(Settings) if not f.metadata.get("internal")}
    header = MANIFEST.read_text().split("apiVersion")[0]
    db_secret = next(line for line in header.split("#   kubectl") if "secret generic tradeguard-db " in line)
    secret_keys = set(re.findall(r"--from-literal=(\w+)=", db_secret))
    db = {"DB_HOST": "postgres.example", "DB_PORT": "5432", "DB_USER": "tradeguard", "DB_PASSWORD": "pw",
          "DB_NAME": "tradeguard", "DB_SSLMODE": "require"}

    unknown = [k for k in env if not (k.startswith("TRADEGUARD_") and k[len("TRADEGUARD_"):].lower() in setting_names)]
    settings = load_settings({**env, **db}, {"strict": True})

    assert not unknown, unknown
    assert settings.warnings == (), settings.warnings
    assert secret_keys == set(DB_PART_ENV)  # the database secret holds what settings read (README "Settings")
    assert [s["secretRef"]["name"] for s in sidecar["envFrom"]] == ["tradeguard-db"]
    assert "optional" not in sidecar["envFrom"][0]["secretRef"]  # required: SQLite would split the risk system
    assert settings.database_url.startswith("postgresql") and settings.sidecar_name == POD
    assert (settings.trader_lease_seconds, settings.foreign_trader_policy) == (10.0, "reject")
    assert (settings.control_state_max_age_seconds, settings.control_state_stale_action) == (60.0, "reduce_only")
    assert settings.credentials_file and settings.admin_token_file
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar, as pod.yaml
    assert sidecar["readinessProbe"]["grpc"] == {"port": 50051, "service": "tradeguard.state"}
    assert sts["spec"]["replicas"] >= 2 and sts["spec"]["serviceName"] == docs["Service"]["metadata"]["name"]
    assert set(env_of(bot)) == {"TRADEGUARD_ADDR", "BOT_ID"} and "$BOT_ID" in bot["command"][2]
    assert sts["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "trading-bot"  # the policy's
    named = set(re.findall(r"(?<![\w/.])((?:deploy|client|docs)/[\w./-]*\w)", MANIFEST.read_text()))
    assert named and all((ROOT / p).exists() for p in named), named


def test_many_bots_bot_command_runs_against_a_sidecar_with_the_accounts_credentials(tmp_path: Path) -> None:
    _, bot = containers()
    shell, flag, script = bot["command"]
    assert (shell, flag) == ("sh", "-c")
    creds = tmp_path / "creds"
    creds.mkdir()
    shutil.copy(CREDENTIALS, creds / "credentials.toml")
    token = "many-bots-token-0123456789abcdef"
    (creds / "bots.token").write_text(token)
    for path in (creds / "credentials.toml", creds / "bots.token"):
        path.chmod(0o600)
    (tmp_path / "bot.token").write_text(token)
    script = (script.replace("/app/trader.py", str(TRADER))
              .replace("/run/secrets/tradeguard-bot/token", str(tmp_path / "bot.token"))
              .replace("exec python ", f"exec {sys.executable} "))

    with start_sidecar(tmp_path, "--credentials-file", str(creds / "credentials.toml"), "--database-url", "memory",
                       "--no-uvloop") as sp:
        out = subprocess.run(["sh", "-c", script + " --cycles 1"], capture_output=True, text=True, timeout=60,
                             env={**os.environ, **env_of(bot), "TRADEGUARD_ADDR": sp.address}, cwd=tmp_path,
                             check=False)
        elsewhere = subprocess.run(["sh", "-c", script.replace('"$BOT_ID"', "other-bot").replace(
            "example-account", "another-account") + " --cycles 1"], capture_output=True, text=True, timeout=60,
            env={**os.environ, **env_of(bot), "TRADEGUARD_ADDR": sp.address}, cwd=tmp_path, check=False)

    assert out.returncode == 0, out.stdout + out.stderr
    assert f"cycle=1 trader_id={POD}" in out.stdout and "allowed=true" in out.stdout
    assert elsewhere.returncode != 0 or "allowed=true" not in elsewhere.stdout  # the token is the account's only
