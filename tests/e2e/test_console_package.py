"""The console ships in the package: a wheel built from a copy of the sources (as `pip install .` builds it) holds
every static file, and the installed package serves them (load_console reads them through importlib.resources)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.sidecar import REPO

pytestmark = pytest.mark.e2e

STATIC = REPO / "server" / "tradeguard_server" / "console" / "static"


def test_built_wheel_holds_every_console_asset(tmp_path: Path) -> None:
    source = tmp_path / "src"  # a copy: the build writes build/ and *.egg-info next to pyproject.toml
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "node_modules", "*.db")
    for tree in ("server", "client/python", "proto/python"):
        shutil.copytree(REPO / tree, source / tree, ignore=skip)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    wheels = list((tmp_path / "dist").glob("tradeguard-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = set(wheel.namelist())
        shipped = {n.rsplit("/", 1)[1]: wheel.read(n) for n in names
                   if n.startswith("tradeguard_server/console/static/")}
    expected = {p.name: p.read_bytes() for p in STATIC.iterdir() if p.is_file()}
    assert {"index.html", "console.js", "console.css", "favicon.svg"} <= expected.keys()
    assert shipped == expected  # every file, byte for byte
    assert "tradeguard_server/console/__init__.py" in names
