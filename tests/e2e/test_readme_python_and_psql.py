"""The README's ```python blocks and its psql commands, run as a newcomer would (issue 19, must-show 3).

tests/e2e/test_readme_examples.py pastes the README's grpcurl and curl commands; this file runs the rest:

- **Python.** Every ```python block of README.md (whatever its section) is written to its own file in a fresh
  working directory and run there, top to bottom in README order, with `.venv/bin/python` against one fresh
  `.venv/bin/tradeguard serve` started there as README command 1 does (same command line, SQLite in that
  directory, admin.token written there, which the AdminClient block reads as it is). The one substitution: the
  sidecar listens on a free port (TRADEGUARD_LISTEN), so `127.0.0.1:50051` / `localhost:50051` in a block are
  rewritten to it. A block that is not runnable on its own must be marked in README.md with
  `<!-- fragment: why -->` on the line right above its ```python fence; such blocks are skipped, and the test
  asserts they are exactly the ones named in FRAGMENTS (none today). Where a block's comments or prints say what
  it shows, the output is checked. Before them, the section's sh block's example bot runs as written
  (`python client/python/examples/trader.py --target 127.0.0.1:50051`: `python` is `.venv/bin/python`, the
  script path is the checkout's, the port as above). The same run is repeated on a sidecar where the README's
  grpcurl/curl commands of the sections above "Use from Python" were pasted first (as test_readme_examples.py
  pastes them, `localhost:8088` rewritten to the HTTP listener's free port): a reader going top to bottom.
- **psql.** Every SQL statement the README shows (`psql -c "..."` or a bare inline `SELECT ...;`) is run with
  `psql -X -c` against a sidecar on a fresh PostgreSQL database (the `pg_url` fixture) started as the
  "Persistence" block says (`export TRADEGUARD_DATABASE_URL=...`, `tradeguard migrate`, `tradeguard serve`;
  `createdb` is the fixture's job, the URL is the fixture's), after the walk-through's grpcurl commands (the
  README's preceding steps) made the rows it reads. psql finds the database through libpq's PG* variables
  (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, set from the fixture's URL), so the seed's command runs
  letter for letter. The output must show what the README says the columns hold: the seed's
  `SELECT trading_paused, paused_until FROM risk_state` once after the breach (true, a pause end) and once after
  the walk-through's ResumeTrading (false, none). The section's other sh block (store / state health,
  `tradeguard health --service tradeguard.state`, ListRiskStateHistory) runs there too; `tradeguard health` gets
  `--address` with the sidecar's port, since it has no host:port in its text to rewrite.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.test_readme_examples import (
    README,
    ROOT,
    Command,
    clean_env,
    is_stream,
    readme_commands,
    run_in_one_shell,
    runnable,
    serving,
    tools_or_skip,
)
from tests.support.databases import closed_port
from tests.support.wait import eventually_sync

pytestmark = pytest.mark.e2e

FRAGMENTS: tuple[str, ...] = ()  # the `<!-- fragment: ... -->` blocks skipped on purpose, by their comment
MAX_FRAGMENTS = 2
PYTHON_TIMEOUT_S = 20
README_ORDER = [m.strip() for m in re.findall(r"^## ([^:\n]+)", README.read_text(), re.M)]


@dataclass(frozen=True)
class PythonBlock:
    section: str
    line: int  # of the ```python fence, 1-based
    code: str
    fragment: str | None  # the text of its `<!-- fragment: ... -->` marker, None when runnable


def readme_python_blocks(text: str | None = None) -> list[PythonBlock]:
    """The ```python blocks of `text` (README.md by default), in order."""
    lines = (README.read_text() if text is None else text).splitlines()
    blocks: list[PythonBlock] = []
    section = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        if line.strip() == "```python":
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            above = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            marker = re.fullmatch(r"<!--\s*fragment\b:?\s*(.*?)\s*-->", above)
            blocks.append(PythonBlock(section, i + 1, "\n".join(lines[i + 1:end]) + "\n",
                                      marker.group(1) or "fragment" if marker else None))
            i = end
        i += 1
    return blocks


def trader_example_command() -> str:
    body = re.split(r"^## Use from Python$", README.read_text(), flags=re.M)[1]
    block = re.search(r"```sh\n(.*?)```", body, re.S)
    assert block is not None
    lines = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]
    assert lines[:2] == ["pip install -e .", "tradeguard serve &"], lines
    assert lines[2].startswith("python client/python/examples/trader.py "), lines
    return lines[2]


def readme_sql() -> list[str]:
    """The SQL statements the README shows: `psql -c "..."` and inline `SELECT ...;` code spans, in order."""
    statements: list[str] = []
    for span in re.findall(r"`([^`\n]+)`", README.read_text()):
        psql = re.fullmatch(r'psql\s+-c\s+"([^"]+)"', span)
        if psql:
            statements.append(psql.group(1))
        elif re.match(r"SELECT\b", span):
            statements.append(span)
    return statements


def test_readme_python_blocks_are_found_and_fragments_are_few_and_named() -> None:
    blocks = readme_python_blocks()
    assert len(blocks) >= 4, [b.section for b in blocks]
    assert {b.section for b in blocks} >= {"Use from Python"}
    fragments = tuple(b.fragment for b in blocks if b.fragment is not None)
    assert len(fragments) <= MAX_FRAGMENTS, fragments
    assert fragments == FRAGMENTS, f"fragments skipped: {fragments}; FRAGMENTS names {FRAGMENTS}"


def test_a_block_marked_as_fragment_is_recognised_and_named() -> None:
    text = "## A\n\n```python\nprint(1)\n```\n\n<!-- fragment: needs a bot loop -->\n```python\nguard.x()\n```\n"
    blocks = readme_python_blocks(text)
    assert [(b.section, b.line, b.fragment) for b in blocks] == [("A", 3, None), ("A", 8, "needs a bot loop")]
    assert blocks[1].code == "guard.x()\n"


@pytest.mark.parametrize("before", ["nothing", "the shell sections above"])
def test_readme_python_blocks_run_top_to_bottom_against_a_fresh_sidecar(tmp_path: Path, before: str) -> None:
    """On a fresh sidecar; and on one where the README's grpcurl sections above "Use from Python" (walk-through,
    orders, configurations, breakers) were pasted first, as a newcomer reading top to bottom does."""
    tools_or_skip()
    blocks = [b for b in readme_python_blocks() if b.fragment is None]
    port, http_port = closed_port(), closed_port()
    outputs: list[str] = []
    with serving(tmp_path, [".venv/bin/tradeguard", "serve"], listen=f"127.0.0.1:{port}",
                 http_listen=f"127.0.0.1:{http_port}", metrics_listen=""):
        if before != "nothing":
            everything = readme_commands()
            above = [c for c in everything if runnable(c, everything) and README_ORDER.index(c.section.split(":")[0])
                     < README_ORDER.index("Use from Python")]
            assert len(above) >= 30
            results = run_in_one_shell(tmp_path, above, {"localhost:50051": port, "localhost:8088": http_port})
            expected = [124 if is_stream(c) else 67 if '"equity": "NaN"' in c.text else 0 for c in above]
            wrong = [(r.code, r.command.text, r.output) for r, e in zip(results, expected, strict=True) if r.code != e]
            assert not wrong, wrong
        # the section's own sh block first: `python client/python/examples/trader.py --target 127.0.0.1:50051`
        # (the example bot, from the checkout; `tradeguard serve &` is the sidecar already running)
        example = trader_example_command().replace("127.0.0.1:50051", f"127.0.0.1:{port}")
        example = example.replace("python client/", f".venv/bin/python {ROOT}/client/", 1)
        done = subprocess.run(shlex.split(example), cwd=tmp_path, env=clean_env(), capture_output=True, text=True,
                              timeout=PYTHON_TIMEOUT_S, check=False)
        assert done.returncode == 0, f"{example}: exit {done.returncode}\n{done.stdout}{done.stderr}"
        for n, block in enumerate(blocks, 1):
            code = block.code.replace("127.0.0.1:50051", f"127.0.0.1:{port}")
            code = code.replace("localhost:50051", f"127.0.0.1:{port}")
            script = tmp_path / f"readme_{n}.py"
            script.write_text(code)
            done = subprocess.run([".venv/bin/python", script.name], cwd=tmp_path, env=clean_env(),
                                  capture_output=True, text=True, timeout=PYTHON_TIMEOUT_S, check=False)
            assert done.returncode == 0, \
                f"README line {block.line} ({block.section}) exited {done.returncode}:\n{code}\n{done.stderr}"
            assert "Traceback" not in done.stderr, done.stderr
            outputs.append(done.stdout)

    by_start = {b.code.splitlines()[0]: out for b, out in zip(blocks, outputs, strict=True)}
    blocking = by_start["from tradeguard_client import Order, Position, RiskClient"].splitlines()
    assert blocking[0] == "reported: FILLED duplicate: False", blocking  # the order allowed, then filled
    assert float(blocking[-1]) == 0.0, blocking  # daily PnL follows the equity reports: still 10000
    asyncio_run = by_start["import asyncio"].splitlines()
    assert asyncio_run[0].startswith("True ALLOWED"), asyncio_run
    assert asyncio_run[1] == "initial ACTIVE", asyncio_run
    invalid = by_start["from tradeguard_client import RiskClient, TradeGuardError"]
    assert re.fullmatch(r"INVALID_ARGUMENT \{'equity': '.+'\}\n", invalid), invalid
    admin = by_start["from tradeguard_client import AdminClient"]
    assert "enable_risk_enforcement" in admin and "enable_persistence" in admin, admin


def libpq_env(url: str) -> dict[str, str]:
    """PG* variables naming the database of `url`, for a `psql` typed without connection arguments."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    env = {"PGHOST": u.host or (str(u.query.get("host", "")) or "127.0.0.1"), "PGPORT": str(u.port or 5432),
           "PGUSER": u.username or "postgres", "PGDATABASE": u.database or ""}
    if u.password:
        env["PGPASSWORD"] = str(u.password)
    return env


def psql(sql: str, env: dict[str, str]) -> list[list[str]]:
    """`psql -X -c SQL` (unaligned, tuples only, `|` between columns): the rows as lists of strings."""
    done = subprocess.run(["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
                          env={**clean_env(), **env}, capture_output=True, text=True, timeout=20, check=False)
    assert done.returncode == 0, f"psql -c {sql!r}: {done.stderr}"
    return [line.split("|") for line in done.stdout.splitlines() if line]


def persistence_blocks() -> list[list[str]]:
    """The ```sh blocks of the Persistence section, one command a line, comments dropped."""
    body = re.split(r"^## ", re.split(r"^## Persistence$", README.read_text(), flags=re.M)[1], flags=re.M)[0]
    return [[line.split("#")[0].strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]
            for block in re.findall(r"```sh\n(.*?)```", body, re.S)]


def test_readme_psql_commands_show_what_it_says_after_the_walk_through(pg_url: str, tmp_path: Path) -> None:
    tools_or_skip()
    if shutil.which("psql") is None:
        if os.environ.get("CI"):
            pytest.fail("psql is not installed")
        pytest.skip("psql is not installed")
    steps, checks = persistence_blocks()  # the README's way to a PostgreSQL store; then what to look at
    assert len(checks) == 4 and ".venv/bin/tradeguard health --service tradeguard.state" in checks, checks
    # `tradeguard health` asks 127.0.0.1:50051 unless told: the one place where a flag is added for the port
    grpc_port, http_port = closed_port(), closed_port()
    looks = [Command("Persistence", c.replace(".venv/bin/tradeguard health", ".venv/bin/tradeguard health "
                                              f"--address 127.0.0.1:{grpc_port}"), -1) for c in checks]
    assert steps[0].startswith("createdb ") and steps[1].startswith("export TRADEGUARD_DATABASE_URL=postgresql://")
    assert steps[2:] == [".venv/bin/tradeguard migrate", ".venv/bin/tradeguard serve"], steps
    statements = readme_sql()
    assert len(statements) == 3, statements  # a new one: give it its expected output below

    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    migrated = subprocess.run([".venv/bin/tradeguard", "migrate"], cwd=tmp_path, capture_output=True, text=True,
                              env={**clean_env(), "TRADEGUARD_DATABASE_URL": pg_url}, timeout=60, check=False)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    (tmp_path / ".venv").unlink()  # serving() links it again

    tags_sql, seed_sql, columns_sql = statements
    walk = [c for c in readme_commands() if c.section.startswith("A walk-through with grpcurl")]
    kill = next(i for i, c in enumerate(walk) if "AdminService/PauseTrading" in c.text)
    exports = [c for c in walk[:kill] if c.text.startswith("export ")]
    env = libpq_env(pg_url)
    with serving(tmp_path, [".venv/bin/tradeguard", "serve"], database_url=pg_url,
                 listen=f"127.0.0.1:{grpc_port}", http_listen=f"127.0.0.1:{http_port}", metrics_listen=""):
        # steps 1-5 (up to the loss-limit breach and the reduce-only orders): the seed's command shows the pause
        results = run_in_one_shell(tmp_path, walk[:kill], {"localhost:50051": grpc_port})
        assert [r.code for r in results] == [0] * kill, [(r.command.text, r.output) for r in results if r.code]
        assert eventually_sync(lambda: [r[0] for r in psql(seed_sql, env)] == ["t"], timeout=20), \
            psql(seed_sql, env)
        [[_, until]] = psql(seed_sql, env)
        assert until, "REDUCING after the breach: paused_until ~30 minutes ahead"

        # steps 7-9 in a new shell (its exports again): kill switch, resume, flags, bad input
        # then the Persistence section's checks: store and state health, bot-1's history
        rest = exports + walk[kill:] + looks
        results = run_in_one_shell(tmp_path, rest, {"localhost:50051": grpc_port})
        wrong = [(r.code, r.command.text, r.output) for r in results
                 if r.code != (67 if r.command is walk[-1] else 0)]
        assert not wrong, wrong
        looked = results[-len(looks):]
        assert [json.loads(r.stdout) for r in looked[:2]] == [{"status": "SERVING"}] * 2, looked[:2]
        history = json.loads(looked[3].stdout)
        assert len(history["entries"]) >= 5 and all(e["state"]["trader_id"] == "bot-1" for e in history["entries"])

        def written() -> bool:  # every history row queued so far is in the database, the resume included
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5).read().decode()
            pending = re.search(r"^tradeguard_history_rows_pending (\S+)$", metrics, re.M)
            return pending is not None and float(pending.group(1)) == 0 and bool(
                psql("SELECT 1 FROM risk_state WHERE trader_id = 'bot-1' AND NOT trading_paused", env))

        assert eventually_sync(written, timeout=20), "the walk-through's rows never reached the database"
        outputs = {sql: psql(sql, env) for sql in statements}

    # the seed's troubleshooting command: after the walk-through's ResumeTrading bot-1 trades, no pause left
    assert outputs[seed_sql] == [["f", ""]], outputs[seed_sql]

    # history: one row per state change of bot-1, each with its tag; maps by reference once written
    rows = outputs[tags_sql]
    assert len(rows) >= 5, rows
    assert all(re.fullmatch(r".+\.\d+", tag) for _, tag, _ in rows), rows
    assert len({tag for _, tag, _ in rows}) == len(rows), rows
    assert any('"positions"' in unchanged for _, _, unchanged in rows[1:]), rows

    # the seed's columns in history: paused after the 9400 report (the pause's reason), peak 10000 throughout,
    # HALTED by the kill switch ("exchange incident"), resumed at the end; last_reset_time set on every row
    hist = outputs[columns_sql]
    paused = [r[1] for r in hist]
    assert paused[0] == "f" and paused[-1] == "f" and "t" in paused, hist
    assert all(float(r[3]) == 10000 for r in hist), hist
    assert all(r[4] for r in hist), hist
    assert any("loss" in r[2].lower() for r in hist if r[1] == "t"), hist
    assert any("exchange incident" in r[2] for r in hist), hist

