"""The journal of a sidecar whose stored state is not loaded, kept in the local spool too (spool.py, table journal).

While the stored state is not loaded (the database unreachable at start, or slow), every state-changing call is
journaled in memory (persistence.py) and nothing of the run is written: the journal is replayed on the stored state
when the load succeeds. Kept in memory only, a SIGKILL or a SIGTERM before the database returned lost it all: an
operator's HALT made on that sidecar, its trades and its breaches; the next start answered from the older spooled
state. So each journaled call is also committed to the spool (batched: one fsynced transaction for whatever arrived
while the previous one was written, off the event loop), and:

- at the next start the calls are read back (`previous`): replayed on the stored state when it loads, and, while
  the database is still unreachable, on the spooled states the sidecar answers from, so that HALT is in force;
- once the load has replayed them and what they changed is written to the database (store.flush), they are
  forgotten (`settle`). A stop before that keeps them: the next start replays them again, which the engine's calls
  tolerate (equity and positions are levels, trades are keyed by id, pauses and resumes are replayed at the times
  they were made, an allowed order by its client order id).

What is not committed when the process dies is the last write window (a few milliseconds of calls), as for the
rest of the spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .spool import Spool, SpoolError

log = logging.getLogger("tradeguard.store")

Entry = tuple[float, str, tuple[object, ...]]
# A marker row (op REPLAYED, args ({trader_id: (version, until)},)): the calls of each trader journaled up to `until`
# were replayed on a state that reached `version` with them; a state at that version or newer holds them.
REPLAYED = "replayed"


class SpooledJournal:
    """The durable copy of the unloaded-mode journal (see the module docstring)."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.written = 0  # calls committed to the spool by this run
        self.failed = 0  # calls that could not be (they are still replayed from memory if this run loads)
        self._buffer: list[Entry] = []
        self._replace: list[Entry] | None = None  # the whole journal, thinned in memory: rewritten in the spool
        self.markers: list[Entry] = []  # REPLAYED rows read back or written (kept by a rewrite)
        self._task: asyncio.Task[None] | None = None
        self._settler: asyncio.Task[None] | None = None

    async def previous(self) -> list[Entry]:
        """The calls journaled by earlier runs that stopped before their stored state was loaded."""
        try:
            return await self.spool.read_journal()
        except Exception:
            log.exception("spool %s: the journaled calls of an earlier run cannot be read", self.spool.path)
            return []

    def add(self, entry: Entry) -> None:
        """The hot path (a journaled call): never awaits, never raises."""
        self._buffer.append(entry)
        if self._task is None or self._task.done():
            with contextlib.suppress(RuntimeError):  # no running loop (an engine driven directly): the next drain
                self._task = asyncio.get_running_loop().create_task(self._write())

    def replace(self, entries: list[Entry]) -> None:
        """The journal was thinned in memory (persistence.Journal: past JOURNAL_MAX the older equity and position
        reports go): the spool's copy is rewritten the same, so it stays as bounded as the journal (never called
        for more than what the journal holds; the calls buffered so far are in `entries`)."""
        self._buffer = []
        self._replace = entries + self.markers
        if self._task is None or self._task.done():
            with contextlib.suppress(RuntimeError):
                self._task = asyncio.get_running_loop().create_task(self._write())

    def mark_replayed(self, versions: dict[str, tuple[int, float]], at: float) -> None:
        """The journal was replayed on the stored state (see REPLAYED): should the spool not forget it (a stop before
        what it changed is written), the next start skips those calls for a trader whose state holds them."""
        marker: Entry = (at, REPLAYED, (versions,))
        self.markers.append(marker)
        self.add(marker)

    async def _write(self) -> None:
        while self._buffer or self._replace is not None:
            replace, self._replace = self._replace, None
            batch, self._buffer = (replace, self._buffer) if replace is not None else (self._buffer, [])
            try:
                if replace is not None:
                    await self.spool.replace_journal(batch)
                else:
                    await self.spool.append_journal(batch)
            except SpoolError as exc:
                if not self.failed:
                    log.error("%s: the calls received before the stored state is loaded are in memory only (lost "
                              "if the sidecar stops before the database answers)", exc)
                self.failed += len(batch)
                continue
            self.written += len(batch)

    async def drain(self) -> None:
        """Until every call added so far is committed (or failed)."""
        while self._buffer or self._replace is not None or (self._task is not None and not self._task.done()):
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._write())
            await asyncio.shield(self._task)

    def settle(self, flushed: asyncio.Future[bool] | asyncio.Task[bool]) -> None:
        """The journal was replayed on the stored state; forget it once `flushed` (the store's flush of what the
        replay changed) says it is written."""
        self._settler = asyncio.get_running_loop().create_task(self._settle(flushed))

    async def _settle(self, flushed: asyncio.Future[bool] | asyncio.Task[bool]) -> None:
        await self.drain()
        if not await flushed:
            log.warning("spool %s: the replayed calls are kept (not written yet): replayed again at the next start",
                        self.spool.path)
            return
        try:
            await self.spool.clear_journal()
        except Exception:
            log.exception("spool %s: the replayed calls cannot be forgotten: replayed again at the next start "
                          "(harmless: levels, trade ids and timed pauses)", self.spool.path)

    async def close(self, timeout: float) -> None:  # noqa: ASYNC109 - bounded like the store's drain
        """At shutdown, before the spool closes: commit what is buffered; give a settle in progress `timeout`
        seconds to finish (its flush), then cancel it (the calls stay: replayed again at the next start)."""
        await self.drain()
        settler = self._settler
        if settler is not None and not settler.done():
            await asyncio.wait({settler}, timeout=timeout)
        if settler is not None and not settler.done():
            settler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await settler
