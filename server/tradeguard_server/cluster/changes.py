"""The control-state log: one `control_changes` row per committed change people make to the control state.

kinds (what the row is about):
- "config"  (account_id; payload {"config_id", "op": "saved" | "deleted"}): an account's configurations changed;
- "breaker" (account_id; payload {"breaker_id", "op"}): an account's breakers changed;
- "flags"   (payload the flags): the feature flags changed;
- "pause" / "resume" (account_id + trader_id): a trader's kill switch; an account's has trader_id "", the
  every-account one account_id "*" (ALL_ACCOUNTS) and trader_id "". payload of a pause:
  {"state": "HALTED" | "REDUCING", "until": epoch seconds | null, "reason": str}.
- "restore" (account_id + trader_id; payload {"at", "recorded_at", "reason"}): a point-in-time restore of a trader
  (AdminService.RestoreRiskState), applied by its owner; a takeover replays only the trader's changes after it.

A row is appended in the SAME transaction as the change it records (`append_change`, called by the store's
write-through calls), so the log and the tables never disagree. PostgreSQL: the transaction also sends
`pg_notify('tradeguard_control', <version>)` (delivered at commit: the wake-up of the other sidecars), and
first takes a transaction-scoped advisory lock, so versions commit in the order they are numbered: a reader that
has seen version v has seen every committed version below it (changes_since never skips one that commits late).
Changes are rare (people make them), so serializing them costs nothing that matters.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, and_, func, select

from ..store.models import ControlChange as ControlChangeRow

CHANGES: Table = ControlChangeRow.__table__  # type: ignore[assignment]
CHANNEL = "tradeguard_control"
ALL_ACCOUNTS = "*"  # the account_id of the every-account scope
KINDS = ("config", "breaker", "flags", "pause", "resume", "restore")
APPEND_LOCK = 0x7467_6374  # pg_advisory_xact_lock key: "tgct"
ACTOR_MAX = 256
REASON_MAX = 1024


@dataclass(slots=True)
class ControlChange:
    """One change to the control state. `version` is 0 until the row is stored (append_change sets it)."""

    kind: str
    account_id: str = ""
    trader_id: str = ""
    payload: dict[str, Any] | None = None
    origin: str = ""  # the sidecar the change was made through (Settings.sidecar_name)
    actor: str = "operator"  # the caller
    trace_id: str | None = None
    created_at: float = 0.0
    version: int = 0

    @property
    def scope(self) -> bool:
        """A pause / resume of an account or of every account (not of one trader)."""
        return self.kind in ("pause", "resume") and not self.trader_id

    def values(self) -> dict[str, Any]:
        return {"kind": self.kind, "account_id": self.account_id, "trader_id": self.trader_id,
                "payload": self.payload, "origin": self.origin, "actor": self.actor[:ACTOR_MAX],
                "trace_id": self.trace_id, "created_at": self.created_at}


def _epoch(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value or 0.0)


def from_row(row: Any) -> ControlChange:
    """A change from a row mapping (SQLAlchemy mappings, or a psycopg dict row)."""
    return ControlChange(kind=row["kind"], account_id=row["account_id"], trader_id=row["trader_id"],
                         payload=row["payload"], origin=row["origin"], actor=row["actor"], trace_id=row["trace_id"],
                         created_at=_epoch(row["created_at"]), version=int(row["version"]))


# ---- SQLAlchemy (the store's database thread, in the caller's transaction) -------------------------

def append_change(conn: Connection, change: ControlChange) -> int:
    """Insert the row (last in the caller's transaction: the advisory lock is held until its commit), NOTIFY the
    other sidecars (PostgreSQL); returns the version and sets `change.version`."""
    postgres = conn.dialect.name == "postgresql"
    if postgres:
        conn.execute(select(func.pg_advisory_xact_lock(APPEND_LOCK)))
    version = int(conn.execute(CHANGES.insert().values(**change.values()).returning(CHANGES.c.version)).scalar_one())
    if postgres:
        conn.execute(select(func.pg_notify(CHANNEL, str(version))))
    change.version = version
    return version


def changes_since(conn: Connection, version: int, limit: int = 1000) -> list[ControlChange]:
    """Changes above `version`, oldest first, at most `limit`."""
    query = select(CHANGES).where(CHANGES.c.version > version).order_by(CHANGES.c.version).limit(limit)
    return [from_row(r) for r in conn.execute(query).mappings()]


def trader_changes(conn: Connection, trader_id: str) -> list[ControlChange]:
    """The pause / resume (and restore) changes of one trader, by version (a takeover replays them:
    ControlPlane.replay_trader)."""
    query = (select(CHANGES).where(CHANGES.c.trader_id == trader_id,
                                   CHANGES.c.kind.in_(("pause", "resume", "restore")))
             .order_by(CHANGES.c.version))
    return [from_row(r) for r in conn.execute(query).mappings()]


def scope_changes(conn: Connection) -> list[ControlChange]:
    """The latest pause or resume of each scope (every account with one, and the every-account scope)."""
    latest = (select(CHANGES.c.account_id, func.max(CHANGES.c.version).label("version"))
              .where(CHANGES.c.trader_id == "", CHANGES.c.kind.in_(("pause", "resume")))
              .group_by(CHANGES.c.account_id).subquery())
    query = (select(CHANGES).join(latest, and_(CHANGES.c.version == latest.c.version))
             .order_by(CHANGES.c.version))
    return [from_row(r) for r in conn.execute(query).mappings()]


def max_version(conn: Connection) -> int:
    return int(conn.execute(select(func.coalesce(func.max(CHANGES.c.version), 0))).scalar_one())


# ---- psycopg (the listener's own connection) -------------------------------------------------------

SINCE_SQL = ("SELECT version, kind, account_id, trader_id, payload, origin, actor, trace_id, created_at "
             "FROM control_changes WHERE version > %s ORDER BY version LIMIT %s")
