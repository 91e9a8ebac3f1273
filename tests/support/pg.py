"""The real PostgreSQL on this machine: a fresh database per use, dropped after; and a cuttable TCP proxy.

PostgreSQL is expected on 127.0.0.1:5432 with trust auth for user `postgres` (override with
TRADEGUARD_TEST_PG, e.g. postgresql://postgres@127.0.0.1:5432). Where it is not reachable the tests that
need it are skipped, except under CI=true, where they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest

BASE = os.environ.get("TRADEGUARD_TEST_PG", "postgresql://postgres@127.0.0.1:5432")


def admin_dsn() -> str:
    return f"{BASE}/postgres"


def require_postgres() -> None:
    try:
        with psycopg.connect(admin_dsn(), connect_timeout=3):
            return
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL not reachable at {BASE}: {exc}")


@contextlib.contextmanager
def fresh_database(prefix: str = "tradeguard_test") -> Iterator[str]:
    """CREATE a uniquely named database, yield its SQLAlchemy URL, DROP it (WITH (FORCE)) after."""
    require_postgres()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{BASE.replace('postgresql://', 'postgresql+psycopg://')}/{name}"
    finally:
        with psycopg.connect(admin_dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def plain_dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


class TcpProxy:
    """A TCP proxy in front of PostgreSQL that a test can cut (refuse + reset) and restore."""

    def __init__(self, target_host: str = "127.0.0.1", target_port: int = 5432) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self.up = True

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._conns.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except asyncio.CancelledError:  # the test's loop is closing: the connection just ends
            writer.transport.abort()
            up_writer.transport.abort()
        self._conns.discard(writer)
        self._conns.discard(up_writer)

    def cut(self) -> None:
        """Refuse new connections and reset the open ones: the database is gone."""
        self.up = False
        for w in list(self._conns):
            transport = w.transport
            if transport is not None:
                transport.abort()
        self._conns.clear()

    def restore(self) -> None:
        self.up = True

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
