"""The example bot's command in docker-compose.yml and deploy/kubernetes/pod.yaml, run as written (paths mapped to
this checkout) against a live sidecar: it must parse with trader.py's flags and reach the sidecar through the
address variable the deploy files set, the one the example bots read (TRADEGUARD_ADDR). No Docker or cluster needed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.sidecar import start_sidecar

REPO = Path(__file__).resolve().parents[2]
TRADER = REPO / "client" / "python" / "examples" / "trader.py"
TOKEN = "deploy-bot-token-0123456789abcdef"

yaml = pytest.importorskip("yaml")


def compose_bot() -> tuple[str, dict[str, str]]:
    bot = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["bot"]
    shell, flag, script = bot["entrypoint"]
    assert (shell, flag) == ("sh", "-c")
    script = script.replace("$$", "$")  # compose's escape of a literal $
    script = script.replace("client/python/examples/trader.py", str(TRADER))
    return script.replace("/run/secrets/tradeguard_bot_token", "{token_file}"), dict(bot["environment"])


def pod_bot() -> tuple[str, dict[str, str]]:
    pod = yaml.safe_load((REPO / "deploy" / "kubernetes" / "pod.yaml").read_text())
    bot = next(c for c in pod["spec"]["containers"] if c["name"] == "bot")
    shell, flag, script = bot["command"]
    assert (shell, flag) == ("sh", "-c")
    script = script.replace("/app/trader.py", str(TRADER))
    env = {e["name"]: e["value"] for e in bot["env"]}
    return script.replace("/run/secrets/tradeguard-bot/token", "{token_file}"), env


def example_bot_address_variables() -> set[str]:
    """The variables the Go and TypeScript example bots read for the sidecar's address."""
    go = (REPO / "client" / "go" / "examples" / "trader" / "main.go").read_text()
    ts = (REPO / "client" / "ts" / "examples" / "trader" / "main.ts").read_text()
    return {name for name in ("TRADEGUARD_ADDR", "TRADEGUARD_ADDRESS") if name in go and name in ts}


@pytest.mark.parametrize("deploy", [compose_bot, pod_bot], ids=["compose", "pod"])
def test_the_deployed_bot_command_runs_against_a_sidecar(deploy: Any, tmp_path: Path) -> None:
    script, env = deploy()
    token_file = tmp_path / "bot_token"
    token_file.write_text(TOKEN)
    (tmp_path / "trader_token").write_text(TOKEN)
    address_vars = set(env) & example_bot_address_variables()
    assert address_vars == {"TRADEGUARD_ADDR"}, env  # what the example bots read, nothing that nobody reads
    assert set(env) == address_vars

    with start_sidecar(tmp_path, "--trader-token-file", str(tmp_path / "trader_token"), "--database-url", "memory",
                       "--no-uvloop") as sp:
        command = script.replace("{token_file}", str(token_file)).replace("exec python ", f"exec {sys.executable} ")
        out = subprocess.run(["sh", "-c", command + " --cycles 1"], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "TRADEGUARD_ADDR": sp.address}, cwd=tmp_path, check=False)

    assert out.returncode == 0, out.stdout + out.stderr
    assert "cycle=1 trader_id=example-bot" in out.stdout and "allowed=true" in out.stdout


def test_the_repository_paths_the_deploy_files_name_exist() -> None:
    import re

    files = ["Dockerfile", "docker-compose.yml", ".ci/run", "deploy/kubernetes/pod.yaml"]
    named = {m for f in files for m in re.findall(r"(?<![\w/.])((?:deploy|client|docs)/[\w./-]*\w)",
                                                  (REPO / f).read_text())}

    missing = sorted(p for p in named if not (REPO / p).exists() and not p.startswith("deploy/secrets"))
    assert named and missing == []


def test_the_readme_sections_ci_names_exist() -> None:
    import re

    headings = {line.lstrip("#").strip() for line in (REPO / "README.md").read_text().splitlines()
                if line.startswith("#")}
    named = re.findall(r"README: ([^,)\"]+)", (REPO / ".ci" / "run").read_text())

    assert named and [n for n in named if n.strip() not in headings] == []
