"""No breaking change to the API: `buf breaking` of proto/ against its previous committed version.

The baseline is HEAD when the working tree's proto/ differs from HEAD (a change being made), else
HEAD~1 (the change the last commit made). It is exported with `git archive`, so the work tree and the
index are never touched. Skips only when there is no previous commit containing proto/.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BUF = Path(sys.executable).parent / "buf"
API_PATHS = ["proto/*.proto", "proto/buf.yaml", "proto/buf.lock"]
# Changes buf's FILE rules report that were made on purpose, each exactly as buf words it. Issue 19: `is_active` and
# `enabled` became `optional bool` so that an omitted value can default to true: the same on the wire and in JSON,
# but generated Go code changes from `bool` to `*bool` (a source change for Go callers that set the field).
ACCEPTED = (
    'Field "3" with name "is_active" on message "RiskConfiguration" changed cardinality from '
    '"optional with implicit presence" to "optional with explicit presence".',
    'Field "10" with name "enabled" on message "CircuitBreaker" changed cardinality from '
    '"optional with implicit presence" to "optional with explicit presence".',
)


def unaccepted(output: str) -> list[str]:
    """buf's findings, less the ACCEPTED ones."""
    return [line for line in output.splitlines() if line.strip() and not line.endswith(ACCEPTED)]


def git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, timeout=60, check=False)


def baseline_revision() -> str:
    """The commit to compare against, or a skip when there is none."""
    if shutil.which("git") is None or git("rev-parse", "--is-inside-work-tree").returncode != 0:
        pytest.skip("not a git work tree: no previous commit containing proto/")
    if git("rev-parse", "--verify", "-q", "HEAD^{commit}").returncode != 0:
        pytest.skip("no commit yet: no previous commit containing proto/")
    changed = git("status", "--porcelain", "--", *API_PATHS)
    assert changed.returncode == 0, changed.stderr.decode()
    revision = "HEAD" if changed.stdout.strip() else "HEAD~1"
    if git("rev-parse", "--verify", "-q", f"{revision}^{{commit}}").returncode != 0:
        pytest.skip(f"{revision} does not exist (first commit or shallow clone): no previous commit containing proto/")
    if not git("ls-tree", "-d", revision, "proto").stdout.strip():
        pytest.skip(f"{revision} has no proto/: no previous commit containing proto/")
    return revision


def export_proto(revision: str, dest: Path) -> Path:
    archive = git("archive", "--format=tar", revision, "proto")
    assert archive.returncode == 0, archive.stderr.decode()
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest / "proto"


def test_proto_has_no_breaking_change_against_previous_commit(tmp_path: Path) -> None:
    revision = baseline_revision()
    against = export_proto(revision, tmp_path)

    out = subprocess.run(
        [str(BUF), "breaking", "proto", "--against", str(against)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    findings = unaccepted(out.stdout + out.stderr)
    assert out.returncode == 0 or not findings, f"breaking change against {revision}:proto\n" + "\n".join(findings)


def test_buf_breaking_detects_a_breaking_change(tmp_path: Path) -> None:
    """The check itself works: a field whose type changed is reported."""
    base = tmp_path / "base"
    shutil.copytree(ROOT / "proto", base, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    changed = base / "tradeguard" / "v1" / "risk_service.proto"
    changed.write_text(changed.read_text().replace("double equity = 3;", "float equity = 3;"))

    out = subprocess.run(
        [str(BUF), "breaking", "proto", "--against", str(base)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert out.returncode != 0
    assert "equity" in out.stdout + out.stderr
