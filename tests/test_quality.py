"""Static checks that run with the suite: buf lint of the API, ruff and mypy (strict) of the code, and two layout
rules: settings.py is the server's only reader of the environment, and the generated Python stubs live next to
the API (proto/python/), not under client/."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(*cmd: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)


def test_proto_passes_buf_lint_standard_and_comments() -> None:
    out = run(str(BIN / "buf"), "lint", cwd=ROOT / "proto")

    assert out.returncode == 0, out.stdout + out.stderr


def test_code_passes_ruff() -> None:
    out = run(str(BIN / "ruff"), "check", ".")

    assert out.returncode == 0, out.stdout + out.stderr


def test_code_passes_mypy_strict() -> None:
    out = run(str(BIN / "mypy"))

    assert out.returncode == 0, out.stdout + out.stderr


ENVIRONMENT_READS = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}


def touches_environment(node: ast.AST) -> bool:
    if isinstance(node, ast.Attribute):
        return isinstance(node.value, ast.Name) and node.value.id == "os" and node.attr in ENVIRONMENT_READS
    if isinstance(node, ast.ImportFrom):
        return node.module == "os" and any(alias.name in ENVIRONMENT_READS for alias in node.names)
    return False


def reads_environment(tree: ast.AST) -> list[int]:
    """Lines that touch os.environ / os.getenv (or import them from os)."""
    return [node.lineno for node in ast.walk(tree) if touches_environment(node)]


def test_settings_is_the_servers_only_reader_of_the_environment() -> None:
    server = ROOT / "server" / "tradeguard_server"
    readers = {
        str(path.relative_to(ROOT)): lines
        for path in sorted(server.rglob("*.py"))
        if (lines := reads_environment(ast.parse(path.read_text(encoding="utf-8"))))
    }

    assert set(readers) == {"server/tradeguard_server/settings.py"}, readers


def test_generated_python_stubs_live_next_to_the_api_not_under_client() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")

    assert (ROOT / "proto" / "python" / "tradeguard" / "v1" / "risk_service_pb2.py").is_file()
    assert not (ROOT / "client" / "python" / "tradeguard").exists()
    assert '"proto/python"' in pyproject
