"""The order lifecycle in the store (issue 16): a trader's pending and finished orders and daily order sums survive a
restart exactly on PostgreSQL and SQLite (and the in-memory twin); history rows carry the pending orders; revision
0004 upgrades a database written at 0003 (its rows read with no orders and zero sums)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import MetaData, Table, create_engine, inspect, pool, text

from tests.support.databases import (
    T0,
    make_state,
    open_store,
    postgres_database_fixture,
    postgres_unavailable,
    store_url_fixture,
    temporary_postgres_database,
)
from tests.unit.test_snapshot import any_time, ids, micro_time, persisted, positive, trader_states
from tradeguard_server.engine.orders import rebuild_pending
from tradeguard_server.engine.snapshot import StateRecord, from_record, to_record
from tradeguard_server.engine.state import TraderState
from tradeguard_server.engine.types import OrderStatus, PendingOrder, Side
from tradeguard_server.store import bulk as bulk_module
from tradeguard_server.store import codec
from tradeguard_server.store.bulk import STATE_COLUMNS, BulkWriter
from tradeguard_server.store.memory import MemoryStore
from tradeguard_server.store.migrate import alembic_config, current_revision, head_revision, migrate
from tradeguard_server.store.records import ConfigRecord, HistoryRecord, SymbolConfigRecord, TradingWindowRecord
from tradeguard_server.store.store import RiskStore

pytestmark = pytest.mark.integration

pg_url = postgres_database_fixture()
db_url = store_url_fixture()

NEW_STATE_COLUMNS = ("pending_orders", "finished_orders", "daily_order_notional", "daily_orders")
# Written since revision 0005 (later than the rows these tests write "as 0003").
COLUMNS_OF_0005 = ("trading_paused", "last_reset_time")
HISTORY_COLUMNS_OF_0005 = bulk_module.HISTORY_COLUMNS[bulk_module.HISTORY_COLUMNS.index("trace_id") + 1:-1]


def order(coid: str, status: OrderStatus = OrderStatus.ALLOWED, **changes: Any) -> PendingOrder:
    values: dict[str, Any] = {"client_order_id": coid, "symbol": "BTCUSDT", "exchange": "binance", "side": Side.BUY,
                              "quantity": 0.008, "price": 50_000.0, "allowed_at": T0 + 1.25, "expires_at": T0 + 61.25}
    values.update(changes)
    return PendingOrder(status=status, **values)


def with_orders(version: int = 1, trader_id: str = "t-1") -> StateRecord:
    """A state with two live orders (one partly filled, one reducing) and two finished ones."""
    return make_state(
        trader_id, version,
        pending_orders=(
            order("o-3"),
            order("o-4", OrderStatus.PARTIALLY_FILLED, side=Side.SELL, symbol="ETHUSDT", exchange="", quantity=1.5,
                  price=3_000.1, filled=0.5, avg_price=2_999.95, reducing=True),
        ),
        finished_orders=(
            order("o-1", OrderStatus.FILLED, filled=0.008, avg_price=49_990.5),
            order("o-2", OrderStatus.CANCELLED),
        ),
        daily_order_notional=1_200.123456789,
        daily_orders=4,
    )


def in_history(rec: StateRecord) -> StateRecord:
    """What a history row keeps of a state: the pending orders, not the finished ones (nor recent trades...)."""
    return replace(rec, recent_trades=(), order_times=(), fill_times=(), windows_stored=False,
                       breaker_episodes=(), finished_orders=())


# ---- round trips ------------------------------------------------------------------------------------------------

async def test_pending_and_finished_orders_and_daily_sums_are_the_same_after_a_restart(db_url: str) -> None:
    rec = with_orders()
    async with open_store(db_url) as store:
        store.enqueue_state(rec, "can_trade allowed o-3", None)
        assert await store.flush(timeout=10)

    async with open_store(db_url) as restarted:
        (back,) = (await restarted.load()).traders

    assert back == rec
    restored = from_record(back)
    assert list(restored.orders) == ["o-3", "o-4"]
    assert list(restored.finished_orders) == ["o-1", "o-2"]
    assert restored.pending[("BTCUSDT", "binance")].buy == 0.008  # the per-venue sums are rebuilt
    assert restored.pending[("ETHUSDT", "")].sell == 1.0


async def test_an_order_report_that_empties_the_pending_orders_is_stored_as_none(db_url: str) -> None:
    first = with_orders(1)
    second = replace(with_orders(2), pending_orders=(), daily_orders=5)
    async with open_store(db_url) as store:
        store.enqueue_state(first, "can_trade", None)
        assert await store.flush(timeout=10)
        store.enqueue_state(second, "report_order", None)
        assert await store.flush(timeout=10)

        (back,) = (await store.load()).traders
        history, _ = await store.list_history("t-1", None, None, 10)

    assert back == second
    assert [h.state for h in history] == [in_history(first), in_history(second)]


async def test_history_rows_hold_the_pending_orders_and_refer_back_while_they_are_unchanged(db_url: str) -> None:
    """The pending orders are one of the maps a history row carries only when changed (store.bulk.history_row)."""
    one = with_orders(1)
    same = replace(with_orders(2), current_equity=123.0)  # equal orders, other objects
    changed = replace(with_orders(3), pending_orders=one.pending_orders[:1])
    async with open_store(db_url) as store:
        for rec in (one, same, changed):
            store.enqueue_state(rec, f"v{rec.version}", None)
        assert await store.flush(timeout=10)
        listed, _ = await store.list_history("t-1", None, None, 10)

    engine = create_engine(db_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            stored = [json.loads(s) for (s,) in conn.execute(
                text("SELECT CAST(state AS TEXT) FROM risk_state_history ORDER BY id"))]
    finally:
        engine.dispose()
    assert ["pending_orders" in s for s in stored] == [True, False, True]
    assert stored[0]["pending_orders"][1] == {
        "client_order_id": "o-4", "symbol": "ETHUSDT", "exchange": "", "side": "SELL", "quantity": 1.5,
        "price": 3_000.1, "allowed_at": T0 + 1.25, "expires_at": T0 + 61.25, "filled": 0.5, "avg_price": 2_999.95,
        "status": "PARTIALLY_FILLED", "reducing": True, "reported": False, "unreconciled": 0.0,
        "last_fill_at": 0.0, "released": False}
    assert (stored[1]["daily_order_notional"], stored[1]["daily_orders"]) == (1_200.123456789, 4)
    assert [h.state for h in listed] == [in_history(r) for r in (one, same, changed)]


async def test_risk_state_columns_hold_orders_by_name_for_sql_users(db_url: str) -> None:
    async with open_store(db_url) as store:
        store.enqueue_state(with_orders(), "can_trade", None)
        assert await store.flush(timeout=10)

    engine = create_engine(db_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            pending, finished, notional, count = conn.execute(text(
                "SELECT CAST(pending_orders AS TEXT), CAST(finished_orders AS TEXT), daily_order_notional, "
                "daily_orders FROM risk_state")).one()
    finally:
        engine.dispose()
    assert [(o["client_order_id"], o["side"], o["status"]) for o in json.loads(pending)] == [
        ("o-3", "BUY", "ALLOWED"), ("o-4", "SELL", "PARTIALLY_FILLED")]
    assert [(o["client_order_id"], o["status"]) for o in json.loads(finished)] == [("o-1", "FILLED"),
                                                                                  ("o-2", "CANCELLED")]
    assert (notional, count) == (1_200.123456789, 4)


def test_a_non_finite_daily_notional_is_rejected_not_stored() -> None:
    """PostgreSQL would keep a NaN and SQLite turn it into NULL: the writer refuses the row (as for equity)."""
    writer = BulkWriter(create_engine("sqlite://").dialect)

    with pytest.raises(ValueError, match="finite"):
        writer.state_row(replace(with_orders(), daily_order_notional=float("nan")), epoch=1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 7), max_size=6), min_size=1, max_size=8))
def test_the_writers_cached_order_texts_always_equal_the_orders_as_json(steps: list[list[int]]) -> None:
    """Each order's JSON is cached by the order object: whichever orders come, stay, go or come back (the same
    objects, or equal copies), a row's orders read back as the orders of its state."""
    pool_ = [order(f"o-{i}", filled=i / 10) for i in range(8)]
    writer = BulkWriter(create_engine("sqlite://").dialect)
    state_index = STATE_COLUMNS.index("pending_orders")
    for version, picks in enumerate(steps, start=1):
        orders = tuple(pool_[i] if i % 2 else replace(pool_[i]) for i in picks)
        rec = replace(make_state("t-1", version), pending_orders=orders, finished_orders=orders[::-1])
        row = writer.state_row(rec, epoch=1)
        history = json.loads(writer.history_row(HistoryRecord("t-1", "a-1", rec, "x", None, rec.updated_at))[-1])

        expected = [codec.order_json(o) for o in orders]
        assert json.loads(row[state_index]) == expected
        assert json.loads(row[state_index + 1]) == expected[::-1]
        assert history.get("pending_orders", expected) == expected


async def test_the_memory_twin_keeps_orders_like_the_real_store() -> None:
    rec = with_orders()
    store = MemoryStore()
    await store.start()
    store.enqueue_state(rec, "can_trade", None)

    (back,) = (await store.load()).traders
    history, _ = await store.list_history("t-1", None, None, 10)

    assert back == rec
    assert [h.state for h in history] == [in_history(rec)]


def orders_of(draw: st.DrawFn, coids: list[str]) -> list[PendingOrder]:
    return [draw(st.builds(
        PendingOrder, client_order_id=st.just(coid), symbol=ids, exchange=st.one_of(st.just(""), ids),
        side=st.sampled_from(Side), quantity=positive, price=positive, allowed_at=any_time, expires_at=any_time,
        filled=positive, avg_price=positive, status=st.sampled_from(OrderStatus), reducing=st.booleans(),
    )) for coid in coids]


@st.composite
def states_with_orders(draw: st.DrawFn) -> TraderState:
    """Any TraderState (tests/unit/test_snapshot.py) with any pending and finished orders and daily sums."""
    state = draw(trader_states(column_times=micro_time))
    coids = draw(st.lists(ids, max_size=10, unique=True))
    live = draw(st.integers(0, len(coids)))
    state.orders = {o.client_order_id: o for o in orders_of(draw, coids[:live])}
    state.finished_orders = OrderedDict((o.client_order_id, o) for o in orders_of(draw, coids[live:]))
    state.daily_order_notional = draw(positive)
    state.daily_orders = draw(st.integers(0, 2**62))
    rebuild_pending(state)
    return state


def test_any_trader_state_with_orders_survives_a_store_round_trip_unchanged(db_url: str) -> None:
    with asyncio.Runner() as runner:
        store = RiskStore(db_url, queue_size=1000)
        runner.run(store.start())
        try:

            @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
            @given(states_with_orders())
            def round_trip(state: TraderState) -> None:
                state.trader_id = f"p-{uuid.uuid4().hex}"  # one row per example
                rec = to_record(state)
                store.enqueue_state(rec, "property", None)
                assert runner.run(store.flush(timeout=10))

                (back,) = [t for t in runner.run(store.load()).traders if t.trader_id == state.trader_id]
                history, _ = runner.run(store.list_history(state.trader_id, None, None, 10))

                assert back == rec
                assert persisted(from_record(back)) == persisted(state)
                assert [h.state for h in history] == [in_history(rec)]

            round_trip()
            assert store.rejected == dict.fromkeys(store.rejected, 0)
        finally:
            runner.run(store.close(drain_timeout=5))


# ---- configurations -----------------------------------------------------------------------------------------------

def controls_config(account_id: str = "a-1") -> ConfigRecord:
    """Every issue-16 field set, on the configuration and on a symbol."""
    return ConfigRecord(
        account_id=account_id, config_id="c-1", is_active=True,
        max_order_quantity=2.5, max_position_quantity=10.125, max_open_orders=7, price_collar_percentage=2.75,
        reference_price_max_age_seconds=30, duplicate_order_window_ms=1500, allowed_symbols=["BTCUSDT", "ETHUSDT"],
        blocked_symbols=["LUNAUSDT"],
        trading_windows=[TradingWindowRecord((1, 2, 3, 4, 5), "08:30", "17:00"), TradingWindowRecord((), "22:00",
                                                                                                    "02:00")],
        max_daily_notional=1e6, max_daily_orders=5000, max_fills_per_window=20, fill_window_seconds=10,
        pending_order_ttl_seconds=120,
        symbol_configs=[SymbolConfigRecord("BTCUSDT", max_order_quantity=0.5, max_position_quantity=1.0,
                                           max_open_orders=3, price_collar_percentage=1.5),
                        SymbolConfigRecord("ETHUSDT", max_leverage=3.0)],
    )


def without_times(cfg: ConfigRecord) -> ConfigRecord:
    return replace(cfg, created_at=None, updated_at=None,
                   symbol_configs=[replace(s, created_at=None, updated_at=None) for s in cfg.symbol_configs])


async def test_every_pre_trade_control_of_a_configuration_is_the_same_after_a_restart(db_url: str) -> None:
    cfg = controls_config()
    async with open_store(db_url) as store:
        saved, _ = await store.save_config(cfg)

    async with open_store(db_url) as restarted:
        (loaded,) = (await restarted.load()).configs

    assert without_times(saved) == cfg
    assert loaded == saved


# ---- migration 0004 -----------------------------------------------------------------------------------------------

@pytest.fixture(params=["postgresql", "sqlite"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'at_0003.db'}"
        return
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    with temporary_postgres_database("tg_0004") as url:
        yield url


def write_as_0003(url: str, rec: StateRecord, cfg: ConfigRecord) -> None:
    """Rows as the sidecar of revision 0003 wrote them: a state (with its history row) and a configuration."""
    engine = create_engine(url, poolclass=pool.NullPool)
    writer = BulkWriter(engine.dialect)
    ph = "%s" if engine.dialect.name == "postgresql" else "?"
    old = [i for i, c in enumerate(STATE_COLUMNS) if c not in NEW_STATE_COLUMNS and c not in COLUMNS_OF_0005]
    row = writer.state_row(rec, epoch=1)
    history_columns = [c for c in bulk_module.HISTORY_COLUMNS if c not in HISTORY_COLUMNS_OF_0005]
    by_name = dict(zip(bulk_module.HISTORY_COLUMNS, writer.history_row(HistoryRecord(
        rec.trader_id, rec.account_id, rec, "equity_report", None, rec.updated_at)), strict=True))
    history = [by_name[c] for c in history_columns]
    state = json.loads(history[-1])
    for key in ("pending_orders", "daily_order_notional", "daily_orders"):
        del state[key]
    history[-1] = json.dumps(state)
    now = datetime.fromtimestamp(T0, UTC)
    try:
        with engine.begin() as conn:
            columns = [STATE_COLUMNS[i] for i in old]
            conn.exec_driver_sql(
                f"INSERT INTO risk_state ({','.join(columns)}) VALUES ({','.join([ph] * len(columns))})",  # noqa: S608
                tuple(row[i] for i in old))
            conn.exec_driver_sql(
                f"INSERT INTO risk_state_history ({','.join(history_columns)}) "  # noqa: S608
                f"VALUES ({','.join([ph] * len(history_columns))})", tuple(history))
            meta = MetaData()
            accounts, configs, symbols = (Table(name, meta, autoload_with=conn) for name in (
                "accounts", "risk_configurations", "symbol_risk_configurations"))
            conn.execute(accounts.insert().values(account_id=cfg.account_id, created_at=now))
            config_pk = conn.execute(configs.insert().values(
                account_id=cfg.account_id, config_id=cfg.config_id, is_active=True,
                daily_max_drawdown_percentage=cfg.daily_max_drawdown_percentage, market_regime_thresholds={},
                correlation_groups=[], created_at=now, updated_at=now).returning(configs.c.id)).scalar_one()
            conn.execute(symbols.insert().values(risk_config_id=config_pk, symbol="BTCUSDT", max_leverage=5.0,
                                                 created_at=now, updated_at=now))
    finally:
        engine.dispose()


async def test_revision_0004_upgrades_a_database_written_at_0003_and_its_rows_read_with_defaults(
    fresh_url: str,
) -> None:
    migrate(fresh_url, "0003_breaker_episodes")
    rec = make_state("t-1", 3)
    old_config = ConfigRecord("a-1", "c-old", is_active=True, daily_max_drawdown_percentage=4.0,
                              symbol_configs=[SymbolConfigRecord("BTCUSDT", max_leverage=5.0)])
    write_as_0003(fresh_url, rec, old_config)

    assert migrate(fresh_url) == head_revision()  # through 0004 (and any later revision)
    async with open_store(fresh_url) as store:
        loaded = await store.load()
        history, _ = await store.list_history("t-1", None, None, 10)
        # and the upgraded database takes the new fields
        store.enqueue_state(with_orders(4), "can_trade", None)
        assert await store.flush(timeout=10)
        saved, _ = await store.save_config(controls_config())
        after = await store.load()

    assert loaded.traders == [rec]  # no orders, zero daily sums
    assert [without_times(c) for c in loaded.configs] == [old_config]  # every new control unset
    assert [h.state for h in history] == [in_history(rec)]
    assert after.traders == [with_orders(4)]
    assert [c for c in after.configs if c.config_id == "c-1"] == [saved]
    assert current_revision(fresh_url) == head_revision()


async def test_rows_upgraded_from_0003_have_zero_daily_sums_and_no_orders_in_sql(fresh_url: str) -> None:
    migrate(fresh_url, "0003_breaker_episodes")
    write_as_0003(fresh_url, make_state("t-1", 3), ConfigRecord("a-1", "c-old"))

    migrate(fresh_url)

    engine = create_engine(fresh_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            state = conn.execute(text("SELECT pending_orders, finished_orders, daily_order_notional, daily_orders "
                                      "FROM risk_state")).one()
            config = conn.execute(text("SELECT max_order_quantity, allowed_symbols, trading_windows, "
                                       "pending_order_ttl_seconds FROM risk_configurations")).one()
            symbol = conn.execute(text("SELECT max_open_orders, price_collar_percentage "
                                       "FROM symbol_risk_configurations")).one()
    finally:
        engine.dispose()
    assert tuple(state) == (None, None, 0.0, 0)
    assert tuple(config) == (None, None, None, None)
    assert tuple(symbol) == (None, None)


async def test_revision_0004_downgrades_to_0003_and_upgrades_again(fresh_url: str) -> None:
    """Downgrading drops the new columns (their values with them); the old revision's rows stay readable."""
    async with open_store(fresh_url) as store:
        store.enqueue_state(with_orders(1), "can_trade", None)
        assert await store.flush(timeout=10)
        await store.save_config(controls_config())

    engine = create_engine(fresh_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            command.downgrade(alembic_config(connection=conn), "0003_breaker_episodes")
            conn.commit()
            dropped = {c["name"] for c in inspect(conn).get_columns("risk_state")} & set(NEW_STATE_COLUMNS)
    finally:
        engine.dispose()
    assert current_revision(fresh_url) == "0003_breaker_episodes"
    assert dropped == set()

    async with open_store(fresh_url) as store:  # migrates to head again
        loaded = await store.load()

    assert loaded.traders == [replace(with_orders(1), pending_orders=(), finished_orders=(), daily_order_notional=0.0,
                                      daily_orders=0)]
    assert [c.max_open_orders for c in loaded.configs] == [None]
