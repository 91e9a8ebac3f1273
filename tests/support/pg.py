"""PostgreSQL for tests of the whole sidecar: a fresh database per use (see tests/support/databases.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import psycopg

from tests.support.databases import require_postgres, temporary_postgres_database

__all__ = ["fresh_database", "plain_dsn", "query"]


@contextlib.contextmanager
def fresh_database(prefix: str = "tradeguard_test") -> Iterator[str]:
    """CREATE a uniquely named database, yield its SQLAlchemy URL, DROP it (WITH (FORCE)) after."""
    require_postgres()
    with temporary_postgres_database(prefix) as url:
        yield url


def plain_dsn(url: str) -> str:
    """The libpq form of a SQLAlchemy URL (for psycopg.connect)."""
    return url.replace("postgresql+psycopg://", "postgresql://")


def query(url: str, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
    """The rows of one statement on its own connection, closed after (psycopg `%(name)s` parameters): a pooled
    connection left to the collector warns in whichever later test collects it."""
    with psycopg.connect(plain_dsn(url)) as conn:
        return list(conn.execute(sql, params).fetchall())
