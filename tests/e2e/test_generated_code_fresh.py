"""The committed generated code (Python, Go, TypeScript) matches what proto/ generates now.

Runs `python proto/generate.py --check --lang LANG` for each language. When it fails, run
`python proto/generate.py` and commit the result. The Go and TypeScript generators come from
.ci/install-clients.sh; without them the Go/TS cases skip on a developer machine and fail under CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
GENERATE = ROOT / "proto" / "generate.py"

TOOLS = {
    "python": [],
    "go": ["protoc-gen-go", "protoc-gen-go-grpc"],
    "ts": [],
}
TS_PLUGIN = ROOT / "client" / "ts" / "node_modules" / ".bin" / "protoc-gen-ts_proto"


def require_generators(lang: str) -> None:
    absent = [tool for tool in TOOLS[lang] if shutil.which(tool) is None]
    if lang == "ts" and not TS_PLUGIN.exists():
        absent.append(str(TS_PLUGIN.relative_to(ROOT)))
    if absent:
        reason = f"{', '.join(absent)} not installed"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (run .ci/install-clients.sh before the tests)")
        pytest.skip(f"{reason}; install with .ci/install-clients.sh")


@pytest.mark.parametrize("lang", sorted(TOOLS))
def test_committed_generated_code_is_fresh(lang: str) -> None:
    require_generators(lang)

    out = subprocess.run(
        [sys.executable, str(GENERATE), "--check", "--lang", lang],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert out.returncode == 0, f"{out.stdout}{out.stderr}\nregenerate with: python proto/generate.py"
    assert "up to date" in out.stdout
