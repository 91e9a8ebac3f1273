"""Regenerate every client from proto/ — the single generation entry point.

Usage: python proto/generate.py [--check]

Python stubs (+ mypy stubs) go to client/python/tradeguard/v1/.
With --check, nothing is written: the command fails when the committed code is stale.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PY_OUT = ROOT / "client" / "python"
WELL_KNOWN = Path(grpc_tools.__file__).resolve().parent / "_proto"


def proto_files() -> list[str]:
    return sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / "tradeguard").rglob("*.proto"))


def generate_python(out: Path) -> None:
    bin_dir = Path(sys.executable).parent
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{WELL_KNOWN}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *proto_files(),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed for Python")
    for pkg in (out / "tradeguard", out / "tradeguard" / "v1"):
        init = pkg / "__init__.py"
        init.write_text('"""Generated from proto/ by proto/generate.py. Do not edit."""\n')


def generated_tree(out: Path) -> dict[str, Path]:
    base = out / "tradeguard"
    return {str(p.relative_to(out)): p for p in base.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail when committed code is stale")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_out = Path(tmp)
        generate_python(tmp_out)
        fresh = generated_tree(tmp_out)
        current = generated_tree(PY_OUT)
        stale = sorted(
            name
            for name in set(fresh) | set(current)
            if name not in fresh or name not in current or not filecmp.cmp(fresh[name], current[name], shallow=False)
        )
        if opts.check:
            if stale:
                print("stale generated code (run: python proto/generate.py):", *stale, sep="\n  ")
                return 1
            print("generated code is up to date")
            return 0
        shutil.rmtree(PY_OUT / "tradeguard", ignore_errors=True)
        shutil.copytree(tmp_out / "tradeguard", PY_OUT / "tradeguard")
        print(f"generated {len(fresh)} Python files under {PY_OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
