"""A real local HTTP receiver for alert tests: aiohttp on 127.0.0.1:0 that records every POST (path and JSON
body), can go down (the port refuses connections) and come back up on the same port."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web


@dataclass(frozen=True)
class Received:
    path: str
    body: Any


class AlertReceiver:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.port = 0
        self.status = 200  # what it answers (a test may make it answer 500)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._changed = asyncio.Condition()

    async def start(self) -> AlertReceiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        await self.up()
        return self

    async def up(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()
        if not self.port:
            server = self._site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def down(self) -> None:
        """Stop listening: connections to the port are refused until `up`."""
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        async with self._changed:
            self.received.append(Received(request.path, body))
            self._changed.notify_all()
        return web.json_response({"ok": self.status == 200}, status=self.status)

    def bodies(self, path: str = "/hook", event: str | None = None) -> list[Any]:
        return [r.body for r in self.received if r.path == path and (event is None or r.body.get("event") == event)]

    async def wait_for(self, predicate: Any, timeout: float = 30.0) -> bool:
        """Await (no polling) until predicate(received) holds after a POST arrives; False at the timeout."""
        async def waiting() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self.received))

        try:
            await asyncio.wait_for(waiting(), timeout)
        except TimeoutError:
            return False
        return True


@pytest.fixture
async def receiver() -> AsyncIterator[AlertReceiver]:
    """A started AlertReceiver, closed after the test (import it into a test module to use it)."""
    r = await AlertReceiver().start()
    try:
        yield r
    finally:
        await r.close()
