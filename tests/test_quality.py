"""Static checks that run with the suite: buf lint of the API, ruff and mypy (strict) of the code."""

from __future__ import annotations

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
