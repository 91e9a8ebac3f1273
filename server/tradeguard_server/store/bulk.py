"""The writer's fast path: queue records -> row tuples -> one statement per kind and batch.

SQLAlchemy Core's executemany costs ~70 us per row here; this module gets a state change (snapshot +
history row) to ~20 us of Python, which is what lets one writer thread keep up with tens of thousands
of changes per second:
- rows are tuples in a fixed column order, encoded once;
- JSON parts that rarely change (pauses, positions, volatility, symbol stats, pending orders, the recent
  trades and finished orders) are encoded once per trader and reused while they are unchanged: between two
  equity reports only a few numbers move;
- history rows carry what changed (see history_row): the scalars always, each map only when it changed
  since this writer's previous history row of the trader (else a reference to the row that holds it), and
  every map again in a trader's first row, after `restart_history()` (the store calls it when rows were
  dropped or a batch failed) and every FULL_HISTORY_EVERY rows;
- PostgreSQL: history rows go in with a binary COPY; snapshots, trades and events with one multi-row
  `INSERT ... ON CONFLICT` per batch. SQLite: the same statements through sqlite3's executemany.

Used on the store thread only (the caches are not locked). The JSON shapes are those codec reads back.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as _str  # C-accelerated
from math import isfinite
from typing import Any

from sqlalchemy import Connection, Dialect

from ..engine.snapshot import StateRecord
from ..engine.types import ClosedTrade, PendingOrder, TradingState
from . import codec
from .models import UtcTimestamp
from .records import BreakerEventRecord, HistoryRecord, TradeRecord

Row = tuple[Any, ...]

STATE_COLUMNS = (
    "trader_id", "account_id", "current_equity", "peak_equity", "drawdown_pct", "daily_pnl", "trading_state",
    "paused_until", "pause_code", "pause_reason", "weekly_pnl", "monthly_pnl", "equity_reported", "day_start_equity",
    "week_start_equity", "month_start_equity", "day_start", "week_start", "month_start", "last_equity_at",
    "consecutive_losses", "pauses", "positions", "volatility", "symbol_stats", "recent_trades", "order_times",
    "updated_at", "version", "epoch", "breaker_episodes", "pending_orders", "finished_orders", "daily_order_notional",
    "daily_orders", "trading_paused", "last_reset_time",
)
# Every scalar of risk_state is a column of its own (those after trace_id: 0005), then `state` (the JSON codec
# reads back), last.
HISTORY_COLUMNS = (
    "recorded_at", "trader_id", "account_id", "trading_state", "current_equity", "drawdown_pct", "daily_pnl",
    "paused_until", "reason", "trace_id",
    "peak_equity", "weekly_pnl", "monthly_pnl", "pause_code", "pause_reason", "trading_paused", "equity_reported",
    "day_start_equity", "week_start_equity", "month_start_equity", "day_start", "week_start", "month_start",
    "last_reset_time", "last_equity_at", "consecutive_losses", "daily_order_notional", "daily_orders", "updated_at",
    "version", "state",
)
# Binary COPY types. `state` is sent as "text": json's binary format is its text, and we have that already.
HISTORY_COPY_TYPES = (
    "timestamptz", "varchar", "varchar", "varchar", "float8", "float8", "float8", "timestamptz", "text", "varchar",
    "float8", "float8", "float8", "varchar", "text", "bool", "bool",
    "float8", "float8", "float8", "timestamptz", "timestamptz", "timestamptz",
    "timestamptz", "timestamptz", "int4", "float8", "int8", "timestamptz",
    "int8", "text",
)
TRADE_COLUMNS = (
    "trader_id", "trade_id", "account_id", "symbol", "exchange", "side", "realized_pnl", "closed_at", "recorded_at",
)
EVENT_COLUMNS = (
    "id", "circuit_breaker_id", "trader_id", "account_id", "timestamp", "triggered_values", "action_taken",
    "action_result", "positions_affected", "shadow",
)
ACCOUNT_COLUMNS = ("account_id", "created_at")
PG_MAX_PARAMS = 60_000  # PostgreSQL allows 65535 parameters per statement

# A trader's history rows carry every map again at least this often (bounds how far a reader looks back).
FULL_HISTORY_EVERY = 500
HISTORY_MAPS = codec.HISTORY_MAPS  # pauses, positions, volatility, symbol_stats, pending_orders
_NO_MAPS: tuple[Any, ...] = (None,) * len(HISTORY_MAPS)

encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
ACTIVE = TradingState.ACTIVE.name


OrderTexts = dict[int, tuple[PendingOrder, str]]


def _orders_text(orders: tuple[PendingOrder, ...], cache: OrderTexts) -> tuple[str, OrderTexts]:
    """The JSON list of `orders` (the text `encode` writes for the list) and the cache of its orders' texts."""
    texts: OrderTexts = {}
    for o in orders:
        hit = cache.get(id(o))
        if hit is None or hit[0] is not o:
            hit = (o, encode(codec.order_json(o)))
        texts[id(o)] = hit
    return "[" + ",".join([texts[id(o)][1] for o in orders]) + "]", texts


class _Parts:
    """One trader's encoded JSON parts, valid while the values they were made from are unchanged, and what its
    last history row held (`hist_maps`: the maps, the same objects or equal ones while unchanged; `hist_tags`:
    the tag of the row that carries each)."""

    __slots__ = ("finished_key", "finished_orders", "finished_texts", "hist_count", "hist_maps", "hist_restart",
                 "hist_same", "hist_tags", "keys", "pauses", "pending_orders", "pending_texts", "positions",
                 "recent_trades", "symbol_stats", "trades_key", "volatility")

    def __init__(self) -> None:
        self.keys: list[Any] = list(_NO_MAPS)  # the maps the texts below were made from (HISTORY_MAPS order)
        self.pauses = self.positions = self.volatility = self.symbol_stats = self.pending_orders = ""
        self.trades_key: tuple[int, ClosedTrade | None, ClosedTrade | None] | None = None
        self.recent_trades = "[]"
        self.finished_key: tuple[PendingOrder, ...] | None = None
        self.finished_orders = "[]"
        # Each order's JSON by id(order) (with the order, so a reused id is not mistaken): an order is never
        # changed once built, and a change to one order re-encodes that order only.
        self.pending_texts: OrderTexts = {}
        self.finished_texts: OrderTexts = {}
        self.hist_maps: tuple[Any, ...] = _NO_MAPS
        self.hist_tags: list[str] = [""] * len(HISTORY_MAPS)
        self.hist_count = 0  # history rows since the last one with every map
        self.hist_restart = -1  # BulkWriter.history_restarts when hist_* were set
        self.hist_same = ""  # the row's end when every map is unchanged (while hist_tags stay), once made


# The SQL below is built from the constants above only; every value is a bound parameter.

def _upsert_sql(placeholder: str, rows: int) -> str:
    one = "(" + ",".join([placeholder] * len(STATE_COLUMNS)) + ")"
    return (
        f"INSERT INTO risk_state ({','.join(STATE_COLUMNS)}) VALUES {','.join([one] * rows)} "  # noqa: S608
        "ON CONFLICT (trader_id) DO UPDATE SET "
        + ",".join(f"{c}=excluded.{c}" for c in STATE_COLUMNS if c != "trader_id")
        + " WHERE risk_state.epoch < excluded.epoch"
        " OR (risk_state.epoch = excluded.epoch AND risk_state.version < excluded.version)"
    )


def _insert_sql(table: str, columns: Sequence[str], placeholder: str, rows: int, conflict: str = "") -> str:
    one = "(" + ",".join([placeholder] * len(columns)) + ")"
    sql = f"INSERT INTO {table} ({','.join(columns)}) VALUES {','.join([one] * rows)}"  # noqa: S608
    return f"{sql} ON CONFLICT {conflict}" if conflict else sql


class BulkWriter:
    """Encodes queue records for one dialect and writes them in as few statements as it can."""

    def __init__(self, dialect: Dialect) -> None:
        self.postgres = dialect.name == "postgresql"
        self.ts: Callable[[float | None], Any]
        if self.postgres:
            self.ts = _pg_timestamp
        else:  # exactly the text SQLAlchemy stores and binds, so reads and comparisons match our writes
            process = UtcTimestamp().dialect_impl(dialect).bind_processor(dialect)
            assert process is not None
            self.ts = process
        self._parts: dict[str, _Parts] = {}
        # History row tags "<writer>.<n>": unique per writer (random) and increasing in writing order.
        self._writer = secrets.token_hex(6)
        self._history_n = 0
        self.history_restarts = 0  # bumped (from any thread) by restart_history(); read by the encoder

    def forget(self, trader_id: str) -> None:
        """A trader left memory (residency.py): its cached encodings go; its next rows are encoded in full, as
        after a restart. (Without this the cache keeps one entry per trader ever written.) Called on the event loop:
        the trader has nothing queued nor in flight (its latest version is written), so the encoder is not using
        its entry; a pop is atomic."""
        self._parts.pop(trader_id, None)

    def restart_history(self) -> None:
        """The next history row of every trader carries every map again (rows may have been lost)."""
        self.history_restarts += 1

    # ---- encoding (may raise for a bad value: that row alone is rejected) ---------------------------

    def _parts_of(self, rec: StateRecord) -> _Parts:
        parts = self._parts.get(rec.trader_id)
        if parts is None:
            parts = self._parts[rec.trader_id] = _Parts()
        keys = parts.keys
        # Tuples compare element by element with an identity shortcut: unchanged positions are the same objects.
        if keys[0] != rec.pauses:
            parts.pauses = encode([codec.pause_json(p) for p in rec.pauses])
            keys[0] = rec.pauses
        if keys[1] != rec.positions:
            parts.positions = encode([codec.position_json(p) for p in rec.positions])
            keys[1] = rec.positions
        if keys[2] != rec.volatility:
            parts.volatility = encode(dict(rec.volatility))
            keys[2] = rec.volatility
        if keys[3] != rec.symbol_stats:
            parts.symbol_stats = encode([codec.stats_json(s) for s in rec.symbol_stats])
            keys[3] = rec.symbol_stats
        if keys[4] != rec.pending_orders:  # a PendingOrder never changes once built: unchanged is the same object
            parts.pending_orders, parts.pending_texts = _orders_text(rec.pending_orders, parts.pending_texts)
            keys[4] = rec.pending_orders
        return parts

    def _finished_orders(self, rec: StateRecord, parts: _Parts) -> str:
        if parts.finished_key != rec.finished_orders:
            parts.finished_orders, parts.finished_texts = _orders_text(rec.finished_orders, parts.finished_texts)
            parts.finished_key = rec.finished_orders
        return parts.finished_orders

    def _recent_trades(self, rec: StateRecord, parts: _Parts) -> str:
        trades = rec.recent_trades
        # The engine only appends trades (the oldest fall off): same length, same first and last object
        # means the same trades.
        key = (len(trades), trades[0] if trades else None, trades[-1] if trades else None)
        cached = parts.trades_key
        if cached is None or cached[0] != key[0] or cached[1] is not key[1] or cached[2] is not key[2]:
            parts.recent_trades = encode([codec.trade_json(t) for t in trades])
            parts.trades_key = key
        return parts.recent_trades

    def state_row(self, rec: StateRecord, epoch: int) -> Row:
        parts = self._parts_of(rec)
        pause = rec.effective_pause(rec.updated_at)
        ts = self.ts
        for amount in (rec.current_equity, rec.peak_equity, rec.day_start_equity, rec.week_start_equity,
                       rec.month_start_equity, rec.daily_order_notional):
            if not isfinite(amount):  # PostgreSQL would keep a NaN, SQLite would turn it into NULL: refuse both
                raise ValueError(f"not a finite number: {amount!r}")
        day_start = ts(rec.day_start)
        return (
            rec.trader_id, rec.account_id, rec.current_equity, rec.peak_equity, rec.drawdown_pct, rec.daily_pnl,
            ACTIVE if pause is None else pause.state.name,
            None if pause is None else ts(pause.until),
            None if pause is None else pause.code.name,
            None if pause is None else _text(pause.reason),
            rec.weekly_pnl, rec.monthly_pnl, rec.equity_reported, rec.day_start_equity, rec.week_start_equity,
            rec.month_start_equity, day_start, ts(rec.week_start), ts(rec.month_start),
            ts(rec.last_equity_at), rec.consecutive_losses, parts.pauses, parts.positions, parts.volatility,
            parts.symbol_stats, self._recent_trades(rec, parts), encode(codec.windows_json(rec)), ts(rec.updated_at),
            rec.version, epoch, encode(dict(rec.breaker_episodes)) if rec.breaker_episodes else "{}",
            parts.pending_orders, self._finished_orders(rec, parts), rec.daily_order_notional, rec.daily_orders,
            pause is not None, day_start,
        )

    def history_row(self, h: HistoryRecord) -> Row:
        """The history row. Its `state` JSON has every scalar field of the state (not recent_trades,
        order_times, breaker_episodes, finished_orders), `"tag"`: this row's id "<writer>.<n>", and each of
        pauses, positions, volatility, symbol_stats and pending_orders either itself or, when unchanged since the
        trader's previous history row by this writer, under `"unchanged": {map: tag of the row that holds it}`
        (codec.fill_history reads it)."""
        rec = h.state
        parts = self._parts.get(rec.trader_id)
        if parts is None:
            parts = self._parts[rec.trader_id] = _Parts()
        # Formatted by hand: 3x faster than json for these scalars (the same text json would write).
        head = (
            f'{{"trader_id":{_str(rec.trader_id)},"account_id":{_str(rec.account_id)},'
            f'"equity_reported":{"true" if rec.equity_reported else "false"},'
            f'"current_equity":{_num(rec.current_equity)},"peak_equity":{_num(rec.peak_equity)},'
            f'"day_start_equity":{_num(rec.day_start_equity)},"week_start_equity":{_num(rec.week_start_equity)},'
            f'"month_start_equity":{_num(rec.month_start_equity)},"day_start":{_num(rec.day_start)},'
            f'"week_start":{_num(rec.week_start)},"month_start":{_num(rec.month_start)},'
            f'"last_equity_at":{"null" if rec.last_equity_at is None else _num(rec.last_equity_at)},'
            f'"consecutive_losses":{int(rec.consecutive_losses)},"updated_at":{_num(rec.updated_at)},'
            f'"version":{int(rec.version)},"daily_order_notional":{_num(rec.daily_order_notional)},'
            f'"daily_orders":{int(rec.daily_orders)}'
        )
        pause = rec.effective_pause(rec.updated_at)
        ts = self.ts
        day_start = ts(rec.day_start)
        row = (
            ts(h.recorded_at), rec.trader_id, rec.account_id, ACTIVE if pause is None else pause.state.name,
            rec.current_equity, rec.drawdown_pct, rec.daily_pnl, None if pause is None else ts(pause.until),
            _text(h.reason), _text(h.trace_id) if h.trace_id else None,
            # 0005: the values risk_state has, for SQL on the audit trail
            rec.peak_equity, rec.weekly_pnl, rec.monthly_pnl, None if pause is None else pause.code.name,
            None if pause is None else _text(pause.reason), pause is not None, rec.equity_reported,
            rec.day_start_equity, rec.week_start_equity, rec.month_start_equity, day_start, ts(rec.week_start),
            ts(rec.month_start), day_start, ts(rec.last_equity_at), int(rec.consecutive_losses),
            rec.daily_order_notional, int(rec.daily_orders), ts(rec.updated_at), int(rec.version),
        )
        restarts = self.history_restarts
        maps = (rec.pauses, rec.positions, rec.volatility, rec.symbol_stats, rec.pending_orders)
        held = parts.hist_maps  # a tuple: compared with `maps` map by map, identical maps at once
        full = parts.hist_restart != restarts or parts.hist_count >= FULL_HISTORY_EVERY
        # Tuples compare element by element with an identity shortcut: unchanged positions are the same objects.
        # (The state rows' cache, parts.keys, may hold a newer snapshot's maps: hence a key of our own.)
        if not full and parts.hist_same and held == maps:  # the usual row: nothing but scalars changed
            self._history_n += 1
            parts.hist_count += 1
            return (*row, f'{head},"tag":"{self._writer}.{self._history_n}"{parts.hist_same}')
        changed = [True] * len(maps) if full else [held[i] != maps[i] for i in range(len(maps))]
        if any(changed):
            self._parts_of(rec)  # encodes what its cache lacks; may raise (then nothing below changed)
        texts = (parts.pauses, parts.positions, parts.volatility, parts.symbol_stats, parts.pending_orders)
        self._history_n += 1
        tag = f"{self._writer}.{self._history_n}"
        parts.hist_restart = restarts
        parts.hist_count = 1 if full else parts.hist_count + 1
        out = [head, f',"tag":"{tag}"']
        same = []
        tags = parts.hist_tags
        for i, name in enumerate(HISTORY_MAPS):
            if changed[i]:
                out.append(f',"{name}":{texts[i]}')
                tags[i] = tag
            else:
                same.append(f'"{name}":"{tags[i]}"')
        end = ',"unchanged":{' + ",".join(same) + "}}" if same else "}"
        parts.hist_same = end if len(same) == len(HISTORY_MAPS) else ""
        parts.hist_maps = maps
        out.append(end)
        return (*row, "".join(out))

    def trade_row(self, t: TradeRecord, recorded_at: float) -> Row:
        return (t.trader_id, t.trade_id, t.account_id, t.symbol, t.exchange, t.side, t.realized_pnl,
                self.ts(t.closed_at), self.ts(recorded_at))

    def event_row(self, e: BreakerEventRecord) -> Row:
        return (e.id, e.breaker_id, e.trader_id, e.account_id, self.ts(e.timestamp),
                encode(codec.finite_json(e.triggered_values)), e.action_taken,
                encode(codec.finite_json(e.action_result)), encode(codec.finite_json(e.positions_affected)), e.shadow)

    # ---- writing (in the caller's transaction) ------------------------------------------------------

    def _many(self, conn: Connection, sql_for: Callable[[int], str], rows: Sequence[Row], width: int) -> None:
        if not rows:
            return
        if not self.postgres:
            conn.exec_driver_sql(sql_for(1), list(rows))  # sqlite3 executemany: a C loop, one statement
            return
        chunk = max(1, PG_MAX_PARAMS // width)
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            conn.exec_driver_sql(sql_for(len(part)), tuple(v for row in part for v in row))

    @property
    def _ph(self) -> str:
        return "%s" if self.postgres else "?"

    def write_accounts(self, conn: Connection, account_ids: Sequence[str], now: float) -> None:
        rows = [(a, self.ts(now)) for a in sorted(set(account_ids))]
        ph = self._ph
        self._many(conn, lambda n: _insert_sql("accounts", ACCOUNT_COLUMNS, ph, n, "(account_id) DO NOTHING"),
                   rows, len(ACCOUNT_COLUMNS))

    def write_states(self, conn: Connection, rows: Sequence[Row]) -> None:
        """Upsert snapshots; a row is replaced only by a newer (epoch, version). `version` orders one
        process's snapshots; `epoch` (chosen at connect: above any stored) lets a restarted sidecar replace
        what an earlier process wrote even though its versions may restart lower (load failed at start), and
        keeps a still-running older process (rolling restart) from overwriting the newer one."""
        ph = self._ph
        self._many(conn, lambda n: _upsert_sql(ph, n), rows, len(STATE_COLUMNS))

    def write_history(self, conn: Connection, rows: Sequence[Row]) -> None:
        if not rows:
            return
        if not self.postgres:
            self._many(conn, lambda n: _insert_sql("risk_state_history", HISTORY_COLUMNS, "?", n),
                       rows, len(HISTORY_COLUMNS))
            return
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            columns = ",".join(HISTORY_COLUMNS)
            with cursor.copy(f"COPY risk_state_history ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(HISTORY_COPY_TYPES)
                for row in rows:
                    copy.write_row(row)
        finally:
            cursor.close()

    def write_trades(self, conn: Connection, rows: Sequence[Row]) -> None:
        ph = self._ph  # a retried report (same trader_id, trade_id) is already there: nothing to do
        self._many(conn, lambda n: _insert_sql("trade_reports", TRADE_COLUMNS, ph, n,
                                               "(trader_id, trade_id) DO NOTHING"), rows, len(TRADE_COLUMNS))

    def write_events(self, conn: Connection, rows: Sequence[Row]) -> None:
        ph = self._ph  # ids are unique per firing: a conflict is this event, written by an earlier attempt
        self._many(conn, lambda n: _insert_sql("circuit_breaker_events", EVENT_COLUMNS, ph, n, "(id) DO NOTHING"),
                   rows, len(EVENT_COLUMNS))


def _text(value: str) -> str:
    """Free text for a TEXT column: PostgreSQL refuses NUL characters, so they become U+FFFD."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _num(value: float) -> str:
    """A JSON number; repr is the shortest text that reads back as the same double."""
    if not isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    return repr(float(value))


def _pg_timestamp(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)
