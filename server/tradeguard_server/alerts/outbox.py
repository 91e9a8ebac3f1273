"""Where deliveries wait: the `alert_outbox` table (PostgreSQL, SQLite) or memory.

One row per (alert, notifier), not one per alert with a column per notifier: each notifier is attempted, retried
and marked delivered on its own (Slack down must not hold the webhook back, nor make it send twice), and a
notifier added to the settings later needs no schema change. Unique (key, notifier): an alert derived twice for the
same episode (a restart, a trader taken over, another sidecar) is stored once; `add` says which rows are new.
A trader's pause episode is checked by what it is, not by its key: a `trader_paused` is a duplicate when the
trader's last stored pause-episode alert (for that notifier, from any sidecar) is a `trader_paused` too, and a
`trader_resumed` when it is a `trader_resumed` (an episode's start time can move by a millisecond when a restart
or a takeover replays the pause from the control-state log, so its key alone would not collapse them).

`SqlOutbox` runs its statements on the store's database thread (`Database.call`, as admin writes do: bounded,
never on the event loop); the dispatcher calls it only from its own task, and only while the store says it is
healthy (during an outage deliveries wait in the local spool, or in memory without one, and are written when the
database is back: delivery.py).
`MemoryOutbox` (database_url=memory) keeps them in this process only: lost on restart, as everything else is.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Connection, Table, and_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from ..store.models import AlertOutbox
from .alert import TRADER_PAUSED, TRADER_RESUMED

OUTBOX: Table = AlertOutbox.__table__  # type: ignore[assignment]
KEYS_KEPT = 100_000  # MemoryOutbox: the episode keys remembered to collapse duplicates
EPISODE_EVENTS = (TRADER_PAUSED, TRADER_RESUMED)


@dataclass(slots=True)
class Delivery:
    """One alert to one notifier. `id` None: not stored yet; 0: the outbox refused it (delivered from memory)."""

    key: str
    notifier: str
    event: str
    sidecar: str
    payload: dict[str, Any]
    created_at: float
    next_attempt_at: float
    attempts: int = 0
    delivered_at: float | None = None
    last_error: str | None = None
    id: int | None = None
    only_if_new: bool = False  # deliver only once stored (see alert.Alert)
    trader_id: str = ""
    account_id: str = ""
    dirty: bool = False  # an attempt's outcome not stored yet


class Outbox(Protocol):
    durable: bool

    def available(self) -> bool:
        """Worth calling now (the store is healthy)."""

    async def pending(self, sidecar: str) -> list[Delivery]:
        """The stored deliveries of `sidecar` not delivered yet (after a restart)."""

    async def add(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Store each (its id set); False for one whose (key, notifier) was stored already: a duplicate."""

    async def save(self, d: Delivery) -> None:
        """Store the outcome of an attempt: attempts, next_attempt_at, delivered_at, last_error."""


class SqlOutbox:
    """The alert_outbox table, through the store's database thread (`call`: Database.call)."""

    durable = True

    def __init__(self, call: Any, healthy: Any) -> None:
        self._call = call  # Database.call
        self._healthy = healthy  # () -> bool: the store's health

    def available(self) -> bool:
        return bool(self._healthy())

    async def pending(self, sidecar: str) -> list[Delivery]:
        t = OUTBOX

        def read(conn: Connection) -> list[Delivery]:
            rows = conn.execute(select(t).where(and_(t.c.sidecar == sidecar, t.c.delivered_at.is_(None)))
                                .order_by(t.c.id)).mappings().all()
            return [Delivery(r["key"], r["notifier"], r["event"], r["sidecar"], dict(r["payload"]), r["created_at"],
                             r["next_attempt_at"], r["attempts"], None, r["last_error"], r["id"],
                             trader_id=r["trader_id"], account_id=r["account_id"]) for r in rows]

        result: list[Delivery] = await self._call(read, write=False)
        return result

    async def add(self, deliveries: Sequence[Delivery]) -> list[bool]:
        t = OUTBOX

        def write(conn: Connection) -> list[int | None]:
            insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
            ids: list[int | None] = []
            for d in deliveries:
                if d.event in EPISODE_EVENTS and d.trader_id:
                    last = conn.execute(select(t.c.event).where(and_(
                        t.c.trader_id == d.trader_id, t.c.notifier == d.notifier, t.c.event.in_(EPISODE_EVENTS)))
                        .order_by(t.c.id.desc()).limit(1)).scalar_one_or_none()
                    if last == d.event:
                        ids.append(None)
                        continue
                stmt = insert(t).values(
                    key=d.key, notifier=d.notifier, event=d.event, sidecar=d.sidecar, payload=d.payload,
                    trader_id=d.trader_id, account_id=d.account_id,
                    created_at=d.created_at, attempts=d.attempts, next_attempt_at=d.next_attempt_at,
                    delivered_at=d.delivered_at, last_error=d.last_error,
                ).on_conflict_do_nothing(index_elements=["key", "notifier"]).returning(t.c.id)
                ids.append(conn.execute(stmt).scalar_one_or_none())
            return ids

        ids: list[int | None] = await self._call(write, write=True)
        for d, new_id in zip(deliveries, ids, strict=True):
            d.id = new_id
        return [i is not None for i in ids]

    async def save(self, d: Delivery) -> None:
        t = OUTBOX

        def write(conn: Connection) -> None:
            conn.execute(update(t).where(t.c.id == d.id).values(
                attempts=d.attempts, next_attempt_at=d.next_attempt_at, delivered_at=d.delivered_at,
                last_error=d.last_error))

        await self._call(write, write=True)


class MemoryOutbox:
    """database_url=memory: deliveries kept in this process (lost on restart); duplicates collapse on the last
    KEYS_KEPT keys."""

    durable = False

    def __init__(self) -> None:
        self._keys: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._episodes: dict[tuple[str, str], str] = {}  # (trader, notifier) -> its last pause-episode event
        self._next_id = 1

    def available(self) -> bool:
        return True

    async def pending(self, sidecar: str) -> list[Delivery]:
        return []  # nothing survives a restart

    async def add(self, deliveries: Sequence[Delivery]) -> list[bool]:
        out = []
        for d in deliveries:
            k = (d.key, d.notifier)
            if k in self._keys or (d.event in EPISODE_EVENTS and self._episodes.get((d.trader_id, d.notifier))
                                   == d.event):
                out.append(False)
                continue
            if d.event in EPISODE_EVENTS:
                self._episodes[(d.trader_id, d.notifier)] = d.event
            self._keys[k] = None
            if len(self._keys) > KEYS_KEPT:
                self._keys.popitem(last=False)
            d.id = self._next_id
            self._next_id += 1
            out.append(True)
        return out

    async def save(self, d: Delivery) -> None:
        return None
