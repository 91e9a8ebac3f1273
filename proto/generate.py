"""Regenerate every client from proto/ — the single generation entry point.

Usage: python proto/generate.py [--check] [--lang python|go|ts ...]

Python stubs (+ mypy stubs) go to proto/python/tradeguard/v1/: the `tradeguard.v1` package that the sidecar
(server/) and the Python client (client/python/) both import, installed by the one `tradeguard` distribution.
Go (protoc-gen-go + protoc-gen-go-grpc, from Debian's packages) goes to client/go/tradeguard/v1/.
TypeScript (ts-proto with grpc-js services, from client/ts/node_modules) goes to
client/ts/src/{tradeguard,google}/.
Every language is compiled by the protoc that grpcio-tools ships, so all agree on one protoc.
With --check, nothing is written: the command fails when the committed code is stale.
Install the Go and TypeScript generators with .ci/install-clients.sh.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc_tools  # type: ignore[import-untyped]
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PY_OUT = PROTO_DIR / "python"
GO_OUT = ROOT / "client" / "go"
TS_OUT = ROOT / "client" / "ts" / "src"
WELL_KNOWN = Path(grpc_tools.__file__).resolve().parent / "_proto"

GO_MODULE = "github.com/tradeguard/tradeguard/client/go"
TS_PLUGIN = ROOT / "client" / "ts" / "node_modules" / ".bin" / "protoc-gen-ts_proto"
TS_OPTIONS = ",".join(
    [
        "outputServices=grpc-js",
        "esModuleInterop=true",
        "env=node",
        "useOptionals=messages",
        "useDate=true",
    ]
)
INSTALL_HINT = "install the client toolchains with: sudo .ci/install-clients.sh"


def proto_files() -> list[str]:
    return sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / "tradeguard").rglob("*.proto"))


def run_protoc(lang: str, *args: str) -> None:
    argv = ["grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{WELL_KNOWN}", *args, *proto_files()]
    if protoc.main(argv) != 0:
        raise SystemExit(f"protoc failed for {lang}")


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


def which_plugin(name: str) -> Path:
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found on PATH; {INSTALL_HINT}")
    return Path(found)


def generate_go(out: Path) -> None:
    go = which_plugin("protoc-gen-go")
    go_grpc = which_plugin("protoc-gen-go-grpc")
    run_protoc(
        "Go",
        f"--plugin=protoc-gen-go={go}",
        f"--plugin=protoc-gen-go-grpc={go_grpc}",
        f"--go_out={out}",
        f"--go_opt=module={GO_MODULE}",
        f"--go-grpc_out={out}",
        f"--go-grpc_opt=module={GO_MODULE}",
    )


def generate_ts(out: Path) -> None:
    if not TS_PLUGIN.exists():
        raise SystemExit(f"{TS_PLUGIN.relative_to(ROOT)} not found (run `npm ci` in client/ts); {INSTALL_HINT}")
    run_protoc(
        "TypeScript",
        f"--plugin=protoc-gen-ts_proto={TS_PLUGIN}",
        f"--ts_proto_out={out}",
        f"--ts_proto_opt={TS_OPTIONS}",
    )


@dataclass(frozen=True)
class Target:
    """One language: how to generate it and which top-level directories of its output it owns."""

    lang: str
    title: str
    out: Path
    generate: Callable[[Path], None]
    roots: tuple[str, ...]


TARGETS = {
    "python": Target("python", "Python", PY_OUT, generate_python, ("tradeguard",)),
    "go": Target("go", "Go", GO_OUT, generate_go, ("tradeguard",)),
    "ts": Target("ts", "TypeScript", TS_OUT, generate_ts, ("tradeguard", "google")),
}


def generated_tree(out: Path, roots: tuple[str, ...] = ("tradeguard",)) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for root in roots:
        base = out / root
        files.update(
            {str(p.relative_to(out)): p for p in base.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
        )
    return files


def stale_files(fresh: dict[str, Path], current: dict[str, Path]) -> list[str]:
    return sorted(
        name
        for name in set(fresh) | set(current)
        if name not in fresh or name not in current or not filecmp.cmp(fresh[name], current[name], shallow=False)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail when committed code is stale")
    parser.add_argument(
        "--lang",
        action="append",
        choices=sorted(TARGETS),
        help="only this language (repeatable); default: all",
    )
    opts = parser.parse_args()
    targets = [TARGETS[name] for name in (opts.lang or TARGETS)]
    stale: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        fresh_by_lang: dict[str, dict[str, Path]] = {}
        for target in targets:
            tmp_out = Path(tmp) / target.lang
            tmp_out.mkdir()
            target.generate(tmp_out)
            fresh = generated_tree(tmp_out, target.roots)
            fresh_by_lang[target.lang] = fresh
            current = generated_tree(target.out, target.roots)
            stale += [str((target.out / name).relative_to(ROOT)) for name in stale_files(fresh, current)]
        if opts.check:
            if stale:
                print("stale generated code (run: python proto/generate.py):", *stale, sep="\n  ")
                return 1
            print("generated code is up to date:", ", ".join(t.title for t in targets))
            return 0
        for target in targets:
            for root in target.roots:
                shutil.rmtree(target.out / root, ignore_errors=True)
                shutil.copytree(Path(tmp) / target.lang / root, target.out / root)
            count = len(fresh_by_lang[target.lang])
            print(f"generated {count} {target.title} files under {target.out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
