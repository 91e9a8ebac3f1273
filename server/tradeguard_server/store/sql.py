"""The store's SQL, synchronous, on a Connection in a transaction the caller owns.

Only the store's own thread calls these (see store.store). PostgreSQL and SQLite share every statement:
both speak `INSERT ... ON CONFLICT`, partial indexes and window functions.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from sqlalchemy import Connection, Table, and_, delete, func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from ..engine.state import SEEN_TRADE_IDS_KEPT
from . import codec
from .errors import BadCursor, NotFound
from .models import (
    Account,
    CircuitBreaker,
    CircuitBreakerEvent,
    FeatureFlag,
    RiskConfiguration,
    RiskState,
    RiskStateHistory,
    SymbolRiskConfiguration,
    TradeReport,
)
from .records import BreakerEventRecord, BreakerRecord, ConfigRecord, FlagsRecord, HistoryRecord, StateRecord

ACCOUNTS: Table = Account.__table__  # type: ignore[assignment]
CONFIGS: Table = RiskConfiguration.__table__  # type: ignore[assignment]
SYMBOLS: Table = SymbolRiskConfiguration.__table__  # type: ignore[assignment]
BREAKERS: Table = CircuitBreaker.__table__  # type: ignore[assignment]
EVENTS: Table = CircuitBreakerEvent.__table__  # type: ignore[assignment]
STATE: Table = RiskState.__table__  # type: ignore[assignment]
HISTORY: Table = RiskStateHistory.__table__  # type: ignore[assignment]
TRADES: Table = TradeReport.__table__  # type: ignore[assignment]
FLAGS: Table = FeatureFlag.__table__  # type: ignore[assignment]

Rows = Sequence[dict[str, Any]]
T = TypeVar("T")
log = logging.getLogger("tradeguard.store")


def _insert(conn: Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


# ---- the writer's batches -------------------------------------------------------------------------

def register_accounts(conn: Connection, account_ids: Iterable[str], now: float) -> None:
    rows = [{"account_id": a, "created_at": now} for a in sorted(set(account_ids))]
    if rows:
        conn.execute(_insert(conn, ACCOUNTS).on_conflict_do_nothing(index_elements=["account_id"]), rows)


def max_epoch(conn: Connection) -> int:
    return int(conn.execute(select(func.coalesce(func.max(STATE.c.epoch), 0))).scalar_one())


# ---- load at start --------------------------------------------------------------------------------

def _decoded(rows: Iterable[Any], decode: Callable[[Any], T], what: str) -> list[T]:
    """Decode rows; one that cannot be decoded (edited by hand, say) is logged and skipped, not fatal."""
    out: list[T] = []
    for row in rows:
        try:
            out.append(decode(row))
        except Exception as exc:
            key = {k: row[k] for k in ("trader_id", "account_id", "config_id", "id", "name") if k in row}
            log.error("store: skipping a %s row that cannot be read (%s: %s): %s", what, type(exc).__name__, exc, key)
    return out


def load_states(conn: Connection) -> list[StateRecord]:
    result = conn.execute(select(STATE).order_by(STATE.c.trader_id))
    return _decoded(result.mappings(), codec.state_from_row, "risk_state")


def trader_stored(conn: Connection, trader_id: str) -> bool:
    return conn.execute(select(STATE.c.trader_id).where(STATE.c.trader_id == trader_id)).first() is not None


def load_trade_ids(conn: Connection, keep: int = SEEN_TRADE_IDS_KEPT) -> dict[str, list[str]]:
    """Each trader's `keep` most recent trade ids, oldest first."""
    rn = func.row_number().over(
        partition_by=TRADES.c.trader_id, order_by=(TRADES.c.recorded_at.desc(), TRADES.c.trade_id.desc())
    ).label("rn")
    ranked = select(TRADES.c.trader_id, TRADES.c.trade_id, TRADES.c.recorded_at, rn).subquery()
    query = (
        select(ranked.c.trader_id, ranked.c.trade_id)
        .where(ranked.c.rn <= keep)
        .order_by(ranked.c.trader_id, ranked.c.recorded_at, ranked.c.trade_id)
    )
    out: dict[str, list[str]] = {}
    for trader_id, trade_id in conn.execute(query):
        out.setdefault(trader_id, []).append(trade_id)
    return out


def known_trade_ids(conn: Connection, trader_id: str, trade_ids: Iterable[str]) -> set[str]:
    """Which of `trade_ids` the trader has reported before."""
    query = select(TRADES.c.trade_id).where(TRADES.c.trader_id == trader_id, TRADES.c.trade_id.in_(list(trade_ids)))
    return {row[0] for row in conn.execute(query)}


# ---- configurations -------------------------------------------------------------------------------

def ensure_account(conn: Connection, account_id: str, now: float) -> None:
    register_accounts(conn, [account_id], now)


def get_configs(conn: Connection, account_id: str | None = None, config_id: str | None = None) -> list[ConfigRecord]:
    query = select(CONFIGS).order_by(CONFIGS.c.account_id, CONFIGS.c.config_id)
    if account_id is not None:
        query = query.where(CONFIGS.c.account_id == account_id)
    if config_id is not None:
        query = query.where(CONFIGS.c.config_id == config_id)
    configs = list(conn.execute(query).mappings())
    if not configs:
        return []
    ids = [c["id"] for c in configs]
    symbols: dict[int, list[Any]] = {}
    sym_query = select(SYMBOLS).order_by(SYMBOLS.c.risk_config_id, SYMBOLS.c.id)  # as saved
    if account_id is not None or config_id is not None:
        sym_query = sym_query.where(SYMBOLS.c.risk_config_id.in_(ids))
    for row in conn.execute(sym_query).mappings():
        symbols.setdefault(row["risk_config_id"], []).append(codec.symbol_from_row(row))
    return _decoded(configs, lambda c: codec.config_from_row(c, symbols.get(c["id"], [])), "risk_configurations")


def save_config(conn: Connection, cfg: ConfigRecord, now: float) -> tuple[ConfigRecord, bool]:
    """Insert or replace (account_id, config_id) with its symbol configs; an active one deactivates the
    account's others. Returns the stored record and whether it was created."""
    ensure_account(conn, cfg.account_id, now)
    key = and_(CONFIGS.c.account_id == cfg.account_id, CONFIGS.c.config_id == cfg.config_id)
    existing = conn.execute(select(CONFIGS.c.id).where(key)).scalar_one_or_none()
    if cfg.is_active:  # first, so the one-active-per-account index never sees two
        conn.execute(
            update(CONFIGS)
            .where(CONFIGS.c.account_id == cfg.account_id, CONFIGS.c.config_id != cfg.config_id, CONFIGS.c.is_active)
            .values(is_active=False, updated_at=now)
        )
    values = codec.config_values(cfg)
    symbol_created: dict[str, float] = {}
    if existing is None:
        config_pk = conn.execute(
            CONFIGS.insert()
            .values(account_id=cfg.account_id, config_id=cfg.config_id, created_at=now, updated_at=now, **values)
            .returning(CONFIGS.c.id)
        ).scalar_one()
    else:
        config_pk = existing
        conn.execute(update(CONFIGS).where(CONFIGS.c.id == config_pk).values(updated_at=now, **values))
        symbol_created = {
            symbol: created
            for symbol, created in conn.execute(
                select(SYMBOLS.c.symbol, SYMBOLS.c.created_at).where(SYMBOLS.c.risk_config_id == config_pk)
            )
        }
        conn.execute(delete(SYMBOLS).where(SYMBOLS.c.risk_config_id == config_pk))
    symbol_rows = [
        {**codec.symbol_values(s), "risk_config_id": config_pk, "created_at": symbol_created.get(s.symbol, now),
         "updated_at": now}
        for s in cfg.symbol_configs
    ]
    if symbol_rows:
        conn.execute(SYMBOLS.insert(), symbol_rows)
    (saved,) = get_configs(conn, cfg.account_id, cfg.config_id)
    return saved, existing is None


def delete_config(conn: Connection, account_id: str, config_id: str) -> None:
    key = and_(CONFIGS.c.account_id == account_id, CONFIGS.c.config_id == config_id)
    config_pk = conn.execute(select(CONFIGS.c.id).where(key)).scalar_one_or_none()
    if config_pk is None:
        raise NotFound(f"configuration {config_id!r} of account {account_id!r} not found")
    conn.execute(delete(SYMBOLS).where(SYMBOLS.c.risk_config_id == config_pk))  # also without SQLite FK pragma
    conn.execute(delete(CONFIGS).where(CONFIGS.c.id == config_pk))


# ---- breakers -------------------------------------------------------------------------------------

def get_breaker(conn: Connection, breaker_id: str) -> BreakerRecord:
    row = conn.execute(select(BREAKERS).where(BREAKERS.c.id == breaker_id)).mappings().first()
    if row is None:
        raise NotFound(f"breaker {breaker_id!r} not found")
    return codec.breaker_from_row(row)


def list_breakers(conn: Connection, account_id: str | None = None) -> list[BreakerRecord]:
    query = select(BREAKERS).order_by(BREAKERS.c.account_id, BREAKERS.c.name)
    if account_id is not None:
        query = query.where(BREAKERS.c.account_id == account_id)
    return _decoded(conn.execute(query).mappings(), codec.breaker_from_row, "circuit_breakers")


def create_breaker(conn: Connection, b: BreakerRecord, now: float) -> BreakerRecord:
    """Insert a breaker (a uuid id when `b.id` is empty). A taken name or id raises IntegrityError."""
    ensure_account(conn, b.account_id, now)
    breaker_id = b.id or str(uuid.uuid4())
    conn.execute(BREAKERS.insert().values(id=breaker_id, account_id=b.account_id, created_at=now, updated_at=now,
                                          **codec.breaker_values(b)))
    return get_breaker(conn, breaker_id)


def update_breaker(conn: Connection, b: BreakerRecord, now: float) -> BreakerRecord:
    """Replace a breaker's definition; its id, account and created_at stay."""
    result = conn.execute(update(BREAKERS).where(BREAKERS.c.id == b.id).values(updated_at=now,
                                                                               **codec.breaker_values(b)))
    if result.rowcount == 0:
        raise NotFound(f"breaker {b.id!r} not found")
    return get_breaker(conn, b.id)


def set_breaker_enabled(conn: Connection, breaker_id: str, enabled: bool, now: float) -> BreakerRecord:
    result = conn.execute(update(BREAKERS).where(BREAKERS.c.id == breaker_id).values(enabled=enabled, updated_at=now))
    if result.rowcount == 0:
        raise NotFound(f"breaker {breaker_id!r} not found")
    return get_breaker(conn, breaker_id)


def delete_breaker(conn: Connection, breaker_id: str) -> None:
    if conn.execute(delete(BREAKERS).where(BREAKERS.c.id == breaker_id)).rowcount == 0:
        raise NotFound(f"breaker {breaker_id!r} not found")


# ---- flags ----------------------------------------------------------------------------------------

def load_flags(conn: Connection) -> FlagsRecord | None:
    rows = conn.execute(select(FLAGS.c.name, FLAGS.c.value, FLAGS.c.updated_at)).all()
    return codec.flags_from_rows({name: (bool(value), at) for name, value, at in rows})


def save_flags(conn: Connection, flags: FlagsRecord, now: float) -> FlagsRecord:
    stmt = _insert(conn, FLAGS)
    stmt = stmt.on_conflict_do_update(index_elements=["name"], set_={"value": stmt.excluded.value,
                                                                      "updated_at": stmt.excluded.updated_at})
    conn.execute(stmt, [{"name": name, "value": getattr(flags, name), "updated_at": now}
                        for name in codec.FLAG_NAMES])
    saved = load_flags(conn)
    assert saved is not None
    return saved


# ---- paging ---------------------------------------------------------------------------------------

def list_history(
    conn: Connection, trader_id: str, start: float | None, end: float | None, limit: int, after_id: int | None
) -> tuple[list[HistoryRecord], int | None]:
    """A trader's history in the order it was recorded (id), `start` <= recorded_at < `end`. Each row's state
    is whole: maps a row left out as unchanged are filled from the earlier row that holds them (see
    store.bulk.history_row)."""
    query = select(HISTORY).where(HISTORY.c.trader_id == trader_id).order_by(HISTORY.c.id).limit(limit + 1)
    if start is not None:
        query = query.where(HISTORY.c.recorded_at >= start)
    if end is not None:
        query = query.where(HISTORY.c.recorded_at < end)
    if after_id is not None:
        query = query.where(HISTORY.c.id > after_id)
    found = [dict(row) for row in conn.execute(query).mappings()]
    cursor = None
    if len(found) > limit:
        found = found[:limit]
        cursor = found[-1]["id"]
    for row in found:
        row["state"] = dict(row["state"])
    held = _history_bases(conn, trader_id, found)
    rows = []
    for row in found:  # oldest first: a row's maps are filled before a later row copies them
        state = row["state"]
        missing = codec.fill_history(state, held)
        if isinstance(state.get("tag"), str):
            held[state["tag"]] = state
        rows.append(codec.history_from_row(row, missing))
    return rows, cursor


HISTORY_LOOKBACK_CHUNK = 200
HISTORY_LOOKBACK_MAX = 5000  # rows; the writer repeats every map at least every FULL_HISTORY_EVERY (500) rows


def _history_bases(conn: Connection, trader_id: str, page: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{tag: state JSON} of the rows before the page that the page's first rows refer to for unchanged maps."""
    tags_in_page = {r["state"].get("tag") for r in page}
    wanted = {tag for r in page for tag in codec.history_refs(r["state"]).values()} - tags_in_page
    held: dict[str, dict[str, Any]] = {}
    if not wanted:
        return held
    before = page[0]["id"]
    scanned = 0
    while wanted and scanned < HISTORY_LOOKBACK_MAX:
        chunk = conn.execute(
            select(HISTORY.c.id, HISTORY.c.state).where(HISTORY.c.trader_id == trader_id, HISTORY.c.id < before)
            .order_by(HISTORY.c.id.desc()).limit(HISTORY_LOOKBACK_CHUNK)
        ).all()
        if not chunk:
            break
        for row_id, state in chunk:
            tag = state.get("tag") if isinstance(state, dict) else None
            if tag in wanted:
                held[tag] = state
                wanted.discard(tag)
            before = row_id
        scanned += len(chunk)
    return held


def event_cursor(e: BreakerEventRecord) -> str:
    return f"{round(e.timestamp * 1_000_000)}:{e.id}"


# "<microseconds>:<event id>" as event_cursor writes it: ASCII digits only (str.isdigit would take "²" or "٣"), at
# most 17 of them (exact as a float), and an id of the characters ids are made of.
EVENT_CURSOR = re.compile(r"([0-9]{1,17}):([A-Za-z0-9._:@/\-]{1,128})")


def parse_event_cursor(cursor: str) -> tuple[float, str]:
    """(timestamp, event id) of a cursor from event_cursor; BadCursor for anything else."""
    match = EVENT_CURSOR.fullmatch(cursor)
    if match is None:
        raise BadCursor("page token is not one this server returned")
    return int(match[1]) / 1_000_000, match[2]


def list_events(
    conn: Connection, account_id: str | None, breaker_id: str | None, limit: int, before: str | None
) -> tuple[list[BreakerEventRecord], str | None]:
    """Events newest first (timestamp, then id, descending)."""
    query = select(EVENTS).order_by(EVENTS.c.timestamp.desc(), EVENTS.c.id.desc()).limit(limit + 1)
    if account_id is not None:
        query = query.where(EVENTS.c.account_id == account_id)
    if breaker_id is not None:
        query = query.where(EVENTS.c.circuit_breaker_id == breaker_id)
    if before is not None:
        at, event_id = parse_event_cursor(before)
        query = query.where(or_(EVENTS.c.timestamp < at, and_(EVENTS.c.timestamp == at, EVENTS.c.id < event_id)))
    rows = [codec.event_from_row(row) for row in conn.execute(query).mappings()]
    if len(rows) > limit:
        rows = rows[:limit]
        return rows, event_cursor(rows[-1])
    return rows, None


def truncate_all(conn: Connection) -> None:
    """Empty every table (tests)."""
    tables = [FLAGS, TRADES, HISTORY, STATE, EVENTS, BREAKERS, SYMBOLS, CONFIGS, ACCOUNTS]
    if conn.dialect.name == "postgresql":
        conn.execute(text("TRUNCATE " + ", ".join(t.name for t in tables) + " RESTART IDENTITY CASCADE"))
    else:
        for table in tables:
            conn.execute(delete(table))



# ---- point-in-time restore (AdminService.RestoreRiskState) ------------------------------------------

def history_at(conn: Connection, trader_id: str, at: float) -> tuple[HistoryRecord, list[str]] | None:
    """The trader's newest history row recorded at or before `at`, its state whole (maps left out as unchanged
    filled from the row that holds them), and the names of the maps that could not be filled (that row is gone);
    None when the trader has no row that old."""
    query = (select(HISTORY).where(HISTORY.c.trader_id == trader_id, HISTORY.c.recorded_at <= at)
             .order_by(HISTORY.c.recorded_at.desc(), HISTORY.c.id.desc()).limit(1))
    found = conn.execute(query).mappings().first()
    if found is None:
        return None
    row = dict(found)
    row["state"] = dict(row["state"])
    held = _history_bases(conn, trader_id, [row])
    missing = codec.fill_history(row["state"], held)
    return codec.history_from_row(row, missing), missing
