"""Can this database configuration ever work? One connection at start (`tradeguard serve`, `tradeguard migrate`).

An outage heals by itself (the server is down or restarting, the host does not answer, DNS has no record yet):
the sidecar serves and the store keeps retrying. A misconfiguration does not: a wrong password or an unknown
role, a host that pg_hba.conf refuses, a database that does not exist, an option the driver refuses. `classify`
tells them apart from the driver's error; `probe` connects once and classifies what went wrong.

libpq reports no SQLSTATE for a failed connection, so the classification reads its messages (English: a server
with another `lc_messages` sends its own words, and then every failure counts as an outage, as before).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import create_engine, pool, text
from sqlalchemy.engine import make_url

from .dbthread import describe
from .url import is_postgres, normalize_url, redact

MISCONFIGURED = "misconfigured"
UNREACHABLE = "unreachable"
FAILED = "failed"  # connected, then something else went wrong (a migration's statement, say)

# (pattern in the driver's message, what to do about it)
_MISCONFIGURED = (
    (re.compile(r"password authentication failed|authentication failed|fe_sendauth: no password supplied",
                re.IGNORECASE), "check the user and password (DB_USER / DB_PASSWORD, or the URL's user:password@)"),
    (re.compile(r'role "[^"]*" does not exist', re.IGNORECASE),
     "check the user name (DB_USER, or the URL's user@), or create the role"),
    (re.compile(r"no pg_hba\.conf entry", re.IGNORECASE),
     "the server refuses this host/user/database: add a line to its pg_hba.conf, or check sslmode"),
    (re.compile(r'database "[^"]*" does not exist', re.IGNORECASE),
     "create the database (createdb -h HOST -U USER NAME) or fix its name (DB_NAME, or the URL's /name)"),
    (re.compile(r"invalid connection option|invalid \w+ value|invalid integer value|invalid port number|"
                r"missing \"=\" after", re.IGNORECASE), "fix the URL's query parameters"),
    (re.compile(r"unable to open database file", re.IGNORECASE),
     "the SQLite file's directory must exist and be writable by this user"),
)


@dataclass(frozen=True, slots=True)
class Problem:
    """What is wrong with the database at start: `kind` is MISCONFIGURED (cannot heal), UNREACHABLE (an outage) or
    FAILED (connected; a statement failed);
    `message` is one line naming the database (password hidden), the driver's words and what to do."""

    kind: str
    message: str


def classify(url: str, exc: BaseException) -> Problem:
    """The problem `exc` (raised connecting to `url`) shows."""
    cause = describe(exc)
    where = redact(url)
    for pattern, fix in _MISCONFIGURED:
        if pattern.search(cause):
            return Problem(MISCONFIGURED, f"database {where} cannot be used as configured ({cause}): {fix}")
    if not _connection_error(exc):
        return Problem(FAILED, f"database {where}: {cause}")
    target = _host_port(url)
    return Problem(UNREACHABLE, f"database {where} not reachable ({cause}): is PostgreSQL running and reachable"
                                f"{' at ' + target if target else ''}? Check DB_HOST / DB_PORT or the URL's host")


def probe(url: str, timeout_s: float = 5.0) -> Problem | None:
    """Connect once to the PostgreSQL database at `url` (within about `timeout_s`) and run `SELECT 1`. None when
    it works, or for a URL that is not PostgreSQL (SQLite is opened by the store itself)."""
    if not is_postgres(url):
        return None
    connect_args = {} if "connect_timeout" in make_url(url).query else {"connect_timeout": max(1, round(timeout_s))}
    engine = create_engine(normalize_url(url), poolclass=pool.NullPool, connect_args=connect_args)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        return classify(url, exc)
    finally:
        engine.dispose()
    return None


def _connection_error(exc: BaseException) -> bool:
    names = {cls.__name__ for cls in type(getattr(exc, "orig", None) or exc).__mro__}
    return bool(names & {"OperationalError", "InterfaceError"})


def _host_port(url: str) -> str:
    try:
        parsed = make_url(url)
    except Exception:
        return ""
    if not parsed.host:
        return ""
    return f"{parsed.host}:{parsed.port or 5432}"
