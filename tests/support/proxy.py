"""The one TCP fault proxy of the test suite: 127.0.0.1:<port> -> a target (PostgreSQL by default), run on the
test's event loop, with the faults the tests inject.

- `cut()` / `restore()`: reset every open connection and refuse new ones (the database is gone), then accept
  again. `stall(seconds)`: hold every byte in both directions for a while (a slow or hung database).
- `trap_commit(deliver)`: break the connection at the next COMMIT, after the server got it (deliver=True: it
  commits, the client never hears so) or before it (deliver=False). With `refuse_after_trap`, every new
  connection is refused once a COMMIT was trapped (the client cannot ask what became of it).
- `lose_commit_acks(n)`: let the next n COMMITs reach the server, then reset the connection instead of
  delivering the server's answer (committed, and the client cannot know it).
- `hold_commit(after)` / `release_commit()`: hold the next COMMIT (the client waits, the server has not got it)
  until released; `commit_held` is set while one is held.
- `accept_delay`: hold each new connection that many seconds before connecting it (a slow network).
- `hold_commit_answers()`: let the next COMMIT reach the server (it commits) and never deliver the server's
  answer; the connection stays open (a frozen path back: the client waits until something interrupts it).

Counters: `connections` (accepted and forwarded), `refused`, `commits_trapped`, `commit_acks_lost`,
`commit_answers_held`.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from sqlalchemy.engine import make_url

COMMIT_MARK = b"COMMIT\x00"  # in the client's Query message, and in the server's CommandComplete
COMMIT_QUERY = b"Q\x00\x00\x00\x0bCOMMIT\x00"  # the simple-protocol Query message psycopg sends to commit


@dataclass(eq=False)
class _Connection:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    losing_commit_ack: bool = False  # the COMMIT went to the server; its answer is not delivered
    holding_commit_answer: bool = False  # the COMMIT went to the server; its answer (and all after) is held

    def abort(self) -> None:
        self.client.transport.abort()
        self.server.transport.abort()


class FaultProxy:
    """A TCP proxy a test can cut, restore, stall, and make lose or hold a COMMIT (see the module doc)."""

    def __init__(self, target_host: str | None = None, target_port: int | None = None, *,
                 refuse_after_trap: bool = False, accept_delay: float = 0.0) -> None:
        if target_host is None or target_port is None:  # the suite's PostgreSQL (configured, or the embedded one)
            from tests.support.databases import admin_url

            server = make_url(admin_url())
            target_host, target_port = target_host or server.host or "127.0.0.1", target_port or server.port or 5432
        self.target = (target_host, target_port)
        self.port = 0
        self.refuse_after_trap = refuse_after_trap
        self.accept_delay = accept_delay
        self.connections = 0
        self.refused = 0
        self.commits_trapped = 0
        self.commit_acks_lost = 0
        self.commit_answers_held = 0
        self._commit_answers_to_hold = 0
        self.commit_held = asyncio.Event()
        self.flowing = asyncio.Event()
        self.flowing.set()
        self._up = True
        self._commit_trap: bool | None = None
        self._commit_acks_to_lose = 0
        self._hold_commit = False
        self._commits_to_pass = 0
        self._commit_released = asyncio.Event()
        self._commit_answered = asyncio.Event()
        self._awaiting_answer = False
        self._server: asyncio.Server | None = None
        self._open: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stall_timer: asyncio.TimerHandle | None = None

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url_for(self, url: str) -> str:
        """`url` with host and port replaced by the proxy's."""
        return make_url(url).set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    # ---- faults --------------------------------------------------------------------------------------------

    def cut(self) -> None:
        """Reset every open connection; refuse new ones until `restore()`."""
        self._up = False
        for conn in list(self._open):
            conn.abort()
        self._open.clear()

    def restore(self) -> None:
        self._up = True

    def stall(self, seconds: float) -> None:
        """Hold every byte, both ways, for `seconds` (connections stay open)."""
        self.flowing.clear()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
        self._stall_timer = asyncio.get_running_loop().call_later(seconds, self.flowing.set)

    def trap_commit(self, deliver: bool) -> None:
        self._commit_trap = deliver

    def lose_commit_acks(self, n: int = 1) -> None:
        self._commit_acks_to_lose += n

    def hold_commit_answers(self, n: int = 1) -> None:
        """The next n COMMITs reach the server; their answers never reach the client (the connection stays open)."""
        self._commit_answers_to_hold += n

    def hold_commit(self, after: int = 0) -> None:
        """Hold the COMMIT that comes after `after` others (forwarded)."""
        self._hold_commit = True
        self._commits_to_pass = after
        self._commit_released.clear()
        self.commit_held.clear()

    def release_commit(self) -> None:
        self._commit_released.set()

    # ---- plumbing ------------------------------------------------------------------------------------------

    def _refusing(self) -> bool:
        return not self._up or bool(self.refuse_after_trap and self.commits_trapped)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.accept_delay:
            await asyncio.sleep(self.accept_delay)  # the fault itself: a slow connection set-up
        if self._refusing():
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        conn = _Connection(writer, up_writer)
        self._open.add(conn)
        for task in (asyncio.create_task(self._client_to_server(reader, conn)),
                     asyncio.create_task(self._server_to_client(up_reader, conn))):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _client_to_server(self, src: asyncio.StreamReader, conn: _Connection) -> None:
        dst = conn.server
        try:
            while data := await src.read(65536):
                await self.flowing.wait()
                is_commit = COMMIT_MARK in data
                if is_commit and self._hold_commit:
                    if self._commits_to_pass > 0:
                        self._commits_to_pass -= 1
                    else:
                        self._hold_commit = False
                        self.commit_held.set()
                        await self._commit_released.wait()
                if self._commit_answers_to_hold and COMMIT_QUERY in data:
                    self._commit_answers_to_hold -= 1
                    conn.holding_commit_answer = True
                if self._commit_acks_to_lose and COMMIT_QUERY in data:
                    self._commit_acks_to_lose -= 1
                    conn.losing_commit_ack = True
                trap = self._commit_trap
                if is_commit and trap is not None:
                    self._commit_trap = None
                    self.commits_trapped += 1
                    conn.client.transport.abort()  # the client never hears back
                    if trap:  # the server gets the COMMIT and commits: wait for its answer, then break
                        self._commit_answered.clear()
                        self._awaiting_answer = True
                        dst.write(data)
                        await dst.drain()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._commit_answered.wait(), 10.0)
                        self._awaiting_answer = False
                    break
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            conn.abort()  # one side hung up: so does the other (a proxy that kept it open would black-hole it)
            self._open.discard(conn)

    async def _server_to_client(self, src: asyncio.StreamReader, conn: _Connection) -> None:
        dst = conn.client
        try:
            while data := await src.read(65536):
                await self.flowing.wait()
                if self._awaiting_answer and (COMMIT_MARK in data or b"ROLLBACK\x00" in data):
                    self._commit_answered.set()  # the server's CommandComplete for the trapped COMMIT
                if conn.holding_commit_answer:  # committed; the client never hears, nor is told the line is gone
                    self.commit_answers_held += 1
                    continue
                if conn.losing_commit_ack:  # the server's answer to COMMIT: committed, and never delivered
                    self.commit_acks_lost += 1
                    break
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            conn.abort()
            self._open.discard(conn)

    async def close(self) -> None:
        self.flowing.set()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
