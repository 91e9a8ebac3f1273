"""Database URLs: normalise what users write, build one from the seed's DB_* parts, hide the password.

Accepted: `postgresql://`, `postgres://` (rewritten to SQLAlchemy's `postgresql+psycopg://`, psycopg 3),
`postgresql+psycopg://`, and `sqlite:///relative.db`, `sqlite:////absolute.db`, `sqlite://` (memory).
Query parameters such as `sslmode=require` pass through to the driver.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import unquote

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

POSTGRES_DRIVER = "postgresql+psycopg"
REDACTED = "***"
# `password=` / `sslpassword=` as a query parameter (`?password=x&...`) or a libpq keyword (`password='x y'`)
_KEYWORD_SECRET = re.compile(r"((?:^|[?&;\s])(?:password|sslpassword)\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&;]*)",
                             re.IGNORECASE)


def normalize_url(url: str) -> str:
    """The SQLAlchemy URL for `url`. Raises ValueError for a URL this store cannot use."""
    parsed = _parse(url)
    backend = parsed.get_backend_name()
    driver = parsed.get_driver_name() if "+" in parsed.drivername else ""
    if backend in ("postgres", "postgresql"):
        if driver not in ("", "psycopg"):
            raise ValueError(f"unsupported PostgreSQL driver {driver!r}: use postgresql:// (psycopg 3)")
        parsed = parsed.set(drivername=POSTGRES_DRIVER)
    elif backend == "sqlite":
        if driver not in ("", "pysqlite"):
            raise ValueError(f"unsupported SQLite driver {driver!r}: use sqlite:///path.db")
    else:
        raise ValueError(f"unsupported database {backend!r}: use postgresql://... or sqlite:///path.db")
    return parsed.render_as_string(hide_password=False)


def is_postgres(url: str) -> bool:
    return _parse(url).get_backend_name() in ("postgres", "postgresql")


def is_sqlite(url: str) -> bool:
    return _parse(url).get_backend_name() == "sqlite"


def url_from_parts(env: Mapping[str, str]) -> str:
    """A PostgreSQL URL from the seed's DB_HOST, DB_PORT, DB_USER, DB_PASSWORD, DB_NAME, DB_SSLMODE.

    DB_HOST is required; the port defaults to 5432, the user to "postgres", the database to "tradeguard".
    DB_HOST may carry the port (`db:5433`, `[::1]:5433`; an IPv6 address with or without brackets, `::1`, is a host
    alone): then DB_PORT may be unset or the same port, and a different DB_PORT is an error naming both (which of
    the two was meant cannot be told). User and password are escaped, so any character may appear in them.
    """
    host, host_port = split_host_port(env.get("DB_HOST", "").strip())
    if not host:
        raise ValueError("DB_HOST is required to build a database URL from parts")
    port_text = env.get("DB_PORT", "").strip()
    if port_text and (not port_text.isdigit() or not 0 < int(port_text) < 65536):
        raise ValueError(f"DB_PORT: expected a port number, got {port_text!r}")
    if host_port and port_text and int(port_text) != int(host_port):
        raise ValueError(f"DB_HOST names port {host_port} and DB_PORT port {port_text}: give the port in one of them")
    port_text = host_port or port_text or "5432"
    query: dict[str, str] = {}
    sslmode = env.get("DB_SSLMODE", "").strip()
    if sslmode:
        query["sslmode"] = sslmode
    url = URL.create(
        POSTGRES_DRIVER,
        username=env.get("DB_USER", "").strip() or "postgres",
        password=env.get("DB_PASSWORD") or None,
        host=host,
        port=int(port_text),
        database=env.get("DB_NAME", "").strip() or "tradeguard",
        query=query,
    )
    return url.render_as_string(hide_password=False)


def split_host_port(text: str) -> tuple[str, str]:
    """DB_HOST as (host, port): `db` -> (db, ""), `db:5433` -> (db, 5433), `[::1]` -> (::1, ""), `[::1]:5433` ->
    (::1, 5433), `::1` (more than one colon, no brackets: an IPv6 address) -> (::1, ""). ValueError for a port that
    is not one."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"DB_HOST: expected host, host:port, [IPv6] or [IPv6]:port, got {text!r}")
        port = rest[1:]
        if rest and not port:
            raise ValueError(f"DB_HOST: no port after the colon in {text!r}")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
        if not port:
            raise ValueError(f"DB_HOST: no port after the colon in {text!r}")
    else:
        host, port = text, ""
    if port and (not port.isdigit() or not 0 < int(port) < 65536):
        raise ValueError(f"DB_HOST: expected a port number after the colon, got {port!r} in {text!r}")
    return host, port


def _userinfo(url: str) -> tuple[int, int] | None:
    """Where the password of `scheme://user:password@host...` starts and ends, or None.

    Up to the LAST `@`: a password with an unencoded `@` is hidden whole (the rest of it is not taken for the
    host). This may hide more than the password of an odd URL, never less.
    """
    start = url.find("://")
    if start < 0:
        return None
    start += 3
    at = url.rfind("@", start)
    if at < 0:
        return None
    colon = url.find(":", start, at)
    return None if colon < 0 else (colon + 1, at)


def redact(url: str) -> str:
    """`url` with every password it carries replaced by ***, for logs and error texts.

    Covers each form libpq accepts: `user:password@` (also with unencoded `@`, `/`, `?` or `:` in it),
    `?password=` / `&sslpassword=` query parameters, and `password=...` keyword/value strings.
    """
    span = _userinfo(url)
    if span is not None:
        url = url[: span[0]] + REDACTED + url[span[1]:]
    return _KEYWORD_SECRET.sub(lambda m: m.group(1) + REDACTED, url)


def url_secrets(url: str) -> list[str]:
    """The secret values written in `url` (as written and percent-decoded), for the log scrubber."""
    found: list[str] = []
    span = _userinfo(url)
    if span is not None:
        found.append(url[span[0]:span[1]])
    for m in _KEYWORD_SECRET.finditer(url):
        found.append(m.group(2).strip("'"))
    return sorted({v for s in found for v in (s, unquote(s)) if v}, key=len, reverse=True)


def ambiguous_password(url: str) -> bool:
    """True when the user-info part holds an unencoded `@`: the driver would take part of the password for
    the host name (and print it in every connection error)."""
    span = _userinfo(url)
    return span is not None and "@" in url[span[0]:span[1]]


def _parse(url: str) -> URL:
    try:
        return make_url(url)
    except ArgumentError:
        raise ValueError(f"not a database URL: {redact(url)!r}") from None

