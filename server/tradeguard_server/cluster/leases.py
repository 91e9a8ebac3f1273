"""The trader_leases table: which sidecar owns a trader's live state (cluster mode: PostgreSQL only).

One row per trader (migration 0006): `owner` (a sidecar_name), `epoch` (the fence), `expires_at`. Every time is
the database's (`now()`), so the sidecars' clocks never have to agree. The statements, each run in a transaction
the caller owns (on the store's database thread):

- `claim`: take a trader when nobody holds it, when its lease lapsed, or when it names this sidecar at an epoch
  this process held (a lease whose release failed); it tells when the lease it replaced ended. A live lease naming
  this sidecar_id at another epoch is another live process's with the same sidecar_id (a restart takes its leases
  back with `reclaim_mine` before any claim): it is not taken, so one trader never has two live owners (two pods
  started from one manifest).
  The new epoch is GREATEST(lease epoch, stored risk_state epoch) + 1: the new
  owner's writes replace every row an earlier owner wrote, and an earlier owner's late write (lower epoch) never
  replaces the new owner's (store.bulk's upsert keeps the row with the greater (epoch, version)). The same
  transaction stamps the stored row with the new epoch, so such a late write is refused from the claim on.
- `reclaim_mine`: at start, every lease naming this sidecar, taken back at once (epoch + 1).
- `renew`: ONE statement for every local trader (matched by trader and epoch): the traders it does not return
  are no longer this sidecar's (taken over, or claimed back by a newer process of the same sidecar_id).
- `release`: at a clean shutdown, after the final flush: expires_at = now(), so another sidecar takes over at once.
- `owners_of`: who holds some traders now; `account_rows`: an account's risk_state rows with their leases.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from ..engine.state import SEEN_TRADE_IDS_KEPT
from ..store import codec
from ..store.records import StateRecord


@dataclass(frozen=True, slots=True)
class Lease:
    """A trader's lease as the database holds it. Times are epoch seconds of the database's clock; `now` is the
    database's time when it was read (expires_at - now: how long it still holds)."""

    trader_id: str
    account_id: str
    owner: str
    epoch: int
    expires_at: float
    now: float
    # a claim's: when the lease it replaced ended (database clock; None: the trader had no lease). No sidecar owned
    # the trader from then to `now`, so no call of its bot was answered meanwhile (the dead-man's switch counts it).
    previous_expires_at: float | None = None

    @property
    def live(self) -> bool:
        return self.expires_at > self.now


_LEASE_COLUMNS = ("l.trader_id, l.account_id, l.owner, l.epoch, extract(epoch from l.expires_at), "
                  "extract(epoch from now())")

CLAIM_SQL = f"""
WITH s AS (SELECT account_id, epoch FROM risk_state WHERE trader_id = CAST(:trader_id AS varchar)),
     p AS (SELECT expires_at FROM trader_leases WHERE trader_id = CAST(:trader_id AS varchar))
INSERT INTO trader_leases AS l (trader_id, account_id, owner, epoch, acquired_at, expires_at)
SELECT CAST(:trader_id AS varchar),
       COALESCE((SELECT s.account_id FROM s), CAST(:account_id AS varchar)),
       CAST(:owner AS varchar),
       COALESCE((SELECT s.epoch FROM s), 0) + 1,
       now(), now() + CAST(:seconds AS float8) * interval '1 second'
ON CONFLICT (trader_id) DO UPDATE SET
    account_id = EXCLUDED.account_id,
    owner = EXCLUDED.owner,
    epoch = GREATEST(l.epoch + 1, EXCLUDED.epoch),
    acquired_at = EXCLUDED.acquired_at,
    expires_at = EXCLUDED.expires_at
WHERE l.expires_at < now() OR (l.owner = EXCLUDED.owner AND l.epoch = CAST(:known_epoch AS bigint))
RETURNING {_LEASE_COLUMNS}, (SELECT extract(epoch from p.expires_at) FROM p)
"""  # noqa: S608 - constants only; every value is a bound parameter

RECLAIM_SQL = f"""
UPDATE trader_leases AS l SET
    epoch = GREATEST(l.epoch, COALESCE((SELECT s.epoch FROM risk_state s WHERE s.trader_id = l.trader_id), 0)) + 1,
    acquired_at = now(),
    expires_at = now() + CAST(:seconds AS float8) * interval '1 second'
WHERE l.owner = CAST(:owner AS varchar)
RETURNING {_LEASE_COLUMNS}
"""  # noqa: S608

RENEW_SQL = """
UPDATE trader_leases AS l SET expires_at = now() + CAST(:seconds AS float8) * interval '1 second'
FROM unnest(CAST(:trader_ids AS text[]), CAST(:epochs AS bigint[])) AS o(trader_id, epoch)
WHERE l.trader_id = o.trader_id AND l.epoch = o.epoch AND l.owner = CAST(:owner AS varchar)
RETURNING l.trader_id
"""

RELEASE_SQL = """
UPDATE trader_leases AS l SET expires_at = now()
FROM unnest(CAST(:trader_ids AS text[]), CAST(:epochs AS bigint[])) AS o(trader_id, epoch)
WHERE l.trader_id = o.trader_id AND l.epoch = o.epoch AND l.owner = CAST(:owner AS varchar)
"""

# The stored row carries the new owner's epoch from the claim on: an earlier owner's late write is refused at once,
# not only once the new owner has written.
FENCE_SQL = """
UPDATE risk_state SET epoch = CAST(:epoch AS bigint)
WHERE trader_id = CAST(:trader_id AS varchar) AND epoch < CAST(:epoch AS bigint)
"""
FENCE_MINE_SQL = """
UPDATE risk_state AS s SET epoch = l.epoch FROM trader_leases l
WHERE l.owner = CAST(:owner AS varchar) AND s.trader_id = l.trader_id AND s.epoch < l.epoch
"""

OWNERS_SQL = f"SELECT {_LEASE_COLUMNS} FROM trader_leases l WHERE l.trader_id = ANY(CAST(:trader_ids AS text[]))"  # noqa: S608


def _lease(row: Any) -> Lease:
    return Lease(str(row[0]), str(row[1]), str(row[2]), int(row[3]), float(row[4]), float(row[5]))


def claim(conn: Connection, trader_id: str, account_id: str, owner: str, seconds: float,
          known_epoch: int = -1) -> tuple[Lease, bool]:
    """(the new lease, True) when `owner` got the trader; (the lease that holds it, False) when another live
    sidecar does, or another live process with the same sidecar_id (a live lease naming `owner` at an epoch other
    than `known_epoch`, the one this process last held, -1 for none)."""
    params = {"trader_id": trader_id, "account_id": account_id, "owner": owner, "seconds": seconds,
              "known_epoch": known_epoch}
    for _attempt in range(3):
        row = conn.execute(text(CLAIM_SQL), params).first()
        if row is not None:
            lease = _lease(row)
            if row[6] is not None:
                lease = dataclasses.replace(lease, previous_expires_at=float(row[6]))
            conn.execute(text(FENCE_SQL), {"epoch": lease.epoch, "trader_id": trader_id})
            return lease, True
        held = owners_of(conn, [trader_id]).get(trader_id)
        if held is not None and held.live:
            return held, False
        # It lapsed (or was released) between the two statements: claim again.
    raise RuntimeError(f"trader {trader_id}: the lease changed hands three times during one claim")


def txid(conn: Connection) -> int:
    """The current transaction's id as a row's `xmin` shows it (32 bits)."""
    return int(conn.execute(text("SELECT txid_current() % 4294967296")).scalar_one())


def written_by(conn: Connection, trader_id: str, owner: str, epoch: int, xid: int) -> bool:
    """The trader's lease names `owner` at `epoch` as written by transaction `xid` (a claim whose COMMIT answer was
    lost: it went through exactly when so; no other process's claim wrote that row version)."""
    return conn.execute(text("SELECT 1 FROM trader_leases WHERE trader_id = :t AND owner = :o AND epoch = :e "
                             "AND xmin::text::bigint = :x"),
                        {"t": trader_id, "o": owner, "e": epoch, "x": xid}).first() is not None


def reclaim_mine(conn: Connection, owner: str, seconds: float) -> list[Lease]:
    """Every lease naming `owner`, taken back with epoch + 1 (a restart of the same sidecar_id)."""
    mine = [_lease(row) for row in conn.execute(text(RECLAIM_SQL), {"owner": owner, "seconds": seconds})]
    if mine:
        conn.execute(text(FENCE_MINE_SQL), {"owner": owner})
    return mine


def renew(conn: Connection, owned: dict[str, int], owner: str, seconds: float) -> set[str]:
    """Extend every lease of `owned` ({trader_id: epoch}) still held by `owner` at that epoch; the ids renewed."""
    if not owned:
        return set()
    ids = list(owned)
    params = {"trader_ids": ids, "epochs": [owned[i] for i in ids], "owner": owner, "seconds": seconds}
    return {str(row[0]) for row in conn.execute(text(RENEW_SQL), params)}


def release(conn: Connection, owned: dict[str, int], owner: str) -> None:
    """End the leases of `owned` ({trader_id: epoch}) now (clean shutdown, after the final flush)."""
    if owned:
        ids = list(owned)
        conn.execute(text(RELEASE_SQL), {"trader_ids": ids, "epochs": [owned[i] for i in ids], "owner": owner})


def owners_of(conn: Connection, trader_ids: Sequence[str]) -> dict[str, Lease]:
    """The leases of `trader_ids` that exist (live or lapsed)."""
    if not trader_ids:
        return {}
    return {lease.trader_id: lease for lease in
            map(_lease, conn.execute(text(OWNERS_SQL), {"trader_ids": list(trader_ids)}))}


def stored_state(conn: Connection, trader_id: str) -> StateRecord | None:
    """The trader's risk_state row, decoded (None: no row)."""
    row = conn.execute(text("SELECT * FROM risk_state WHERE trader_id = :t"), {"t": trader_id}).mappings().first()
    return None if row is None else _decoded(row)


def trade_ids(conn: Connection, trader_id: str, keep: int = SEEN_TRADE_IDS_KEPT) -> list[str]:
    """The trader's `keep` most recent trade ids, oldest first (duplicate detection of trade reports)."""
    rows = conn.execute(text("SELECT trade_id FROM trade_reports WHERE trader_id = :t "
                             "ORDER BY recorded_at DESC, trade_id DESC LIMIT :n"), {"t": trader_id, "n": keep})
    return [str(r[0]) for r in rows][::-1]


@dataclass(frozen=True, slots=True)
class StoredTrader:
    """An account's trader as the database holds it: its last stored state and its lease (None: never claimed)."""

    state: StateRecord
    lease: Lease | None


def account_rows(conn: Connection, account_id: str, after: str, limit: int) -> list[StoredTrader]:
    """The account's risk_state rows with trader_id > `after`, by trader_id, at most `limit`, each with its lease."""
    rows = conn.execute(text(
        "SELECT s.*, l.account_id AS lease_account_id, l.owner AS lease_owner, l.epoch AS lease_epoch, "
        "extract(epoch from l.expires_at) AS lease_expires_at, extract(epoch from now()) AS db_now "
        "FROM risk_state s LEFT JOIN trader_leases l ON l.trader_id = s.trader_id "
        "WHERE s.account_id = :a AND s.trader_id > :after ORDER BY s.trader_id LIMIT :n"),
        {"a": account_id, "after": after, "n": limit}).mappings().all()
    out = []
    for row in rows:
        lease = None if row["lease_owner"] is None else Lease(
            row["trader_id"], row["lease_account_id"], row["lease_owner"], int(row["lease_epoch"]),
            float(row["lease_expires_at"]), float(row["db_now"]))
        out.append(StoredTrader(_decoded(row), lease))
    return out


def _decoded(row: Any) -> StateRecord:
    """A risk_state row read with text() (timestamps as datetimes) as a record."""
    values = {k: (v.timestamp() if hasattr(v, "timestamp") else v) for k, v in dict(row).items()}
    return codec.state_from_row(values)
