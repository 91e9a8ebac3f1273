"""Alembic, driven from code: the migrations ship inside the package, no alembic.ini is needed.

`tradeguard migrate` and the store's start-up call `migrate(url)`; `current_revision(url)` tells where a
database is. Both are synchronous.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, pool, text

from .url import normalize_url

SCRIPT_LOCATION = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK_KEY = 0x7472_6164_6567_7561  # "tradegua": any constant shared by every sidecar


def alembic_config(url: str | None = None, connection: Connection | None = None) -> Config:
    """An Alembic Config for the packaged migrations, on a URL or on an open connection."""
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    if url is not None:
        cfg.attributes["url"] = normalize_url(url)  # in attributes: no ConfigParser %-interpolation of the URL
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships migrations
        raise RuntimeError("no migrations found")
    return head


def migrate_connection(connection: Connection, revision: str = "head") -> None:
    """Upgrade the database behind `connection` (committed when this returns). On PostgreSQL a transaction
    advisory lock serialises sidecars migrating the same database at the same time."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    command.upgrade(alembic_config(connection=connection), revision)
    if connection.in_transaction():
        connection.commit()


def migrate(url: str, revision: str = "head") -> str:
    """Upgrade the database at `url` to `revision` (default: the newest). Returns the revision it is at."""
    engine = create_engine(normalize_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            migrate_connection(conn, revision)
            return revision_of(conn) or ""
    finally:
        engine.dispose()


def revision_of(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def current_revision(url: str) -> str | None:
    """The revision the database at `url` is at; None when it was never migrated."""
    engine = create_engine(normalize_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return revision_of(conn)
    finally:
        engine.dispose()
