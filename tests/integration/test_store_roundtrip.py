"""Save / load round trips of trader state through the real store, and what a restart restores."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, pool, text

from tests.support.databases import (
    T0,
    make_state,
    make_trade,
    open_store,
    paused,
    postgres_database_fixture,
    store_url_fixture,
)
from tests.unit.test_snapshot import free_text, ids, micro_time, persisted, trader_states
from tradeguard_server.engine.snapshot import from_record, to_record
from tradeguard_server.engine.state import TraderState
from tradeguard_server.engine.types import TradingState
from tradeguard_server.store.records import BreakerRecord, ConfigRecord, SymbolConfigRecord
from tradeguard_server.store.store import RiskStore

pytestmark = pytest.mark.integration

pg_url = postgres_database_fixture()
db_url = store_url_fixture()


def test_any_trader_state_survives_a_store_round_trip_unchanged(db_url: str) -> None:
    with asyncio.Runner() as runner:
        store = RiskStore(db_url, queue_size=1000)
        runner.run(store.start())
        try:

            @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
            @given(trader_states(column_times=micro_time))
            def round_trip(state: TraderState) -> None:
                state.trader_id = f"p-{uuid.uuid4().hex}"  # one row per example
                rec = to_record(state)
                store.enqueue_state(rec, "property", "0af7651916cd43dd8448eb211c80319c")
                assert runner.run(store.flush(timeout=10))

                loaded = runner.run(store.load())
                (back,) = [t for t in loaded.traders if t.trader_id == state.trader_id]
                history, _ = runner.run(store.list_history(state.trader_id, None, None, 10))

                assert back == rec
                assert persisted(from_record(back)) == persisted(state)
                kept = replace(rec, recent_trades=(), order_times=(), fill_times=(), windows_stored=False,
                       breaker_episodes=())
                assert [h.state for h in history] == [kept]
                assert [(h.reason, h.trace_id, h.recorded_at) for h in history] == [
                    ("property", "0af7651916cd43dd8448eb211c80319c", rec.updated_at)]

            round_trip()
            assert store.rejected == dict.fromkeys(store.rejected, 0)
        finally:
            runner.run(store.close(drain_timeout=5))


def test_any_sequence_of_states_reads_back_whole_from_history_rows_that_carry_what_changed(db_url: str) -> None:
    """History rows leave out the maps that did not change (store.bulk.history_row): whichever maps change from
    one state to the next (or come back as equal copies), every listed row is the state as it was, also when a
    page starts after the row that holds its maps."""
    with asyncio.Runner() as runner:
        store = RiskStore(db_url, queue_size=1000)
        runner.run(store.start())
        try:
            maps = ("pauses", "positions", "volatility", "symbol_stats")

            @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
            @given(st.lists(st.tuples(trader_states(column_times=micro_time), st.sets(st.sampled_from(maps)),
                                      st.booleans()), min_size=1, max_size=8),
                   st.integers(min_value=1, max_value=4))
            def round_trip(steps: list[tuple[TraderState, set[str], bool]], page: int) -> None:
                trader_id = f"h-{uuid.uuid4().hex}"
                written = []
                for version, (state, keep, copy) in enumerate(steps, start=1):
                    rec = replace(to_record(state), trader_id=trader_id, version=version)
                    if written:  # the maps in `keep` stay as they were: the same objects, or equal copies
                        rec = replace(rec, **{m: tuple(list(getattr(written[-1], m))) if copy
                                              else getattr(written[-1], m) for m in keep})
                    written.append(rec)
                    store.enqueue_state(rec, f"step {version}", None)
                assert runner.run(store.flush(timeout=10))

                listed, cursor = [], None
                while True:
                    rows, cursor = runner.run(store.list_history(trader_id, None, None, page, cursor))
                    listed.extend(rows)
                    if cursor is None:
                        break

                assert [h.state for h in listed] == [
                    replace(rec, recent_trades=(), order_times=(), fill_times=(), windows_stored=False,
                       breaker_episodes=()) for rec in written]
                assert [h.reason for h in listed] == [f"step {v}" for v in range(1, len(written) + 1)]

            round_trip()
            assert store.rejected == dict.fromkeys(store.rejected, 0)
        finally:
            runner.run(store.close(drain_timeout=5))


async def test_times_in_timestamp_columns_keep_microseconds(db_url: str) -> None:
    async with open_store(db_url) as store:
        store.enqueue_state(make_state("t-1", 1, updated_at=T0 + 0.123456789), "equity_report", None)
        assert await store.flush(timeout=10)

        (back,) = (await store.load()).traders

    assert back.updated_at == T0 + 0.123457  # rounded to the nearest microsecond


async def test_a_paused_trader_is_still_paused_after_a_restart(db_url: str) -> None:
    until = T0 + 1800
    async with open_store(db_url) as store:
        store.enqueue_state(paused(make_state("t-1", 3), until), "breach DAILY_LOSS_LIMIT", None)
        store.enqueue_trade(make_trade("x-1"))

    async with open_store(db_url) as restarted:
        loaded = await restarted.load()

    state = from_record(loaded.traders[0], loaded.trade_ids.get("t-1", ()))
    pause = state.effective_pause(T0 + 60)
    assert state.trading_state(T0 + 60) is TradingState.REDUCING
    assert pause is not None
    assert pause.until == until
    assert state.trading_state(until + 1) is TradingState.ACTIVE
    assert "x-1" in state.seen_trade_ids


async def test_risk_state_columns_show_the_effective_state_for_sql_users(db_url: str) -> None:
    rec = paused(make_state("t-1", 5, current_equity=9_000.0, peak_equity=10_000.0), T0 + 1800, "loss 10%")
    async with open_store(db_url) as store:
        store.enqueue_state(rec, "breach", None)
        assert await store.flush(timeout=10)

    engine = create_engine(db_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            row = conn.execute(text(
                "SELECT trading_state, pause_code, pause_reason, drawdown_pct, daily_pnl, current_equity, "
                "paused_until IS NOT NULL FROM risk_state")).one()
    finally:
        engine.dispose()
    assert tuple(row) == ("REDUCING", "DAILY_LOSS_LIMIT", "loss 10%", 10.0, -1_000.0, 9_000.0, True)


async def test_a_new_process_replaces_the_rows_of_the_previous_one_whatever_their_versions(db_url: str) -> None:
    """The version guard orders one process's snapshots; across processes the newest process wins, so a
    sidecar that could not load at start (its versions restart at 1) still mirrors what it enforces."""
    async with open_store(db_url) as old:
        old.enqueue_state(make_state("t-1", 50), "old process", None)
        assert await old.flush(timeout=10)

        async with open_store(db_url) as new:
            await new.load()
            new.enqueue_state(make_state("t-1", 1, current_equity=1.0), "new process, fresh state", None)
            assert await new.flush(timeout=10)

            old.enqueue_state(make_state("t-1", 60), "old process, late", None)  # e.g. a rolling restart
            assert await old.flush(timeout=10)

            (back,) = (await new.load()).traders

    assert (back.version, back.current_equity) == (1, 1.0)


async def test_recent_trade_ids_per_trader_load_oldest_first(db_url: str) -> None:
    async with open_store(db_url) as store:
        for i in range(5):
            store.enqueue_trade(make_trade(f"x-{i}", trader_id="t-1"))
            store.enqueue_trade(make_trade(f"y-{i}", trader_id="t-2"))
        assert await store.flush(timeout=10)

        loaded = await store.load()

    assert loaded.trade_ids == {"t-1": [f"x-{i}" for i in range(5)], "t-2": [f"y-{i}" for i in range(5)]}


# ---- configurations and breakers: every field, any value ------------------------------------------------------

optional_pct = st.one_of(st.none(), st.floats(min_value=0.001, max_value=100.0))
optional_count = st.one_of(st.none(), st.integers(min_value=0, max_value=2**31 - 1))
optional_amount = st.one_of(st.none(), st.floats(min_value=0.0, max_value=1e15))

symbol_configs = st.lists(
    st.builds(SymbolConfigRecord, symbol=ids, max_position_size_percentage=optional_pct, max_leverage=optional_amount,
              position_max_drawdown_percentage=optional_pct, risk_per_trade_percentage=optional_pct),
    max_size=4, unique_by=lambda s: s.symbol,
)
configs = st.builds(
    ConfigRecord, account_id=ids, config_id=ids, is_active=st.booleans(),
    daily_max_drawdown_percentage=optional_pct, weekly_max_drawdown_percentage=optional_pct,
    monthly_max_drawdown_percentage=optional_pct, max_drawdown_percentage=optional_pct,
    stop_trading_minutes=optional_count, consecutive_loss_threshold=optional_count,
    cooling_off_period_minutes=optional_count, max_position_size_percentage=optional_pct,
    risk_per_trade_percentage=optional_pct, max_correlated_exposure_percentage=optional_pct,
    volatility_adjustment_factor=optional_pct,
    market_regime_thresholds=st.dictionaries(st.sampled_from(["high", "extreme"]), st.floats(0.001, 1e6)),
    position_max_drawdown_percentage=optional_pct, position_trailing_stop_multiplier=optional_amount,
    max_order_notional=optional_amount, max_orders_per_window=optional_count, order_rate_window_seconds=optional_count,
    correlation_groups=st.dictionaries(ids, st.lists(ids, min_size=1, max_size=3, unique=True), max_size=3),
    symbol_configs=symbol_configs,
)
json_values = st.one_of(st.booleans(), st.floats(allow_nan=False, allow_infinity=False), st.integers(-2**53, 2**53),
                        free_text)
breakers = st.builds(
    BreakerRecord, id=st.just(""), name=ids, description=free_text, account_id=ids,
    condition=st.sampled_from(["max_drawdown", "daily_loss", "loss_streak_in_window"]),
    action=st.sampled_from(["pause_trading", "reduce_only", "close_position", "alert"]),
    parameters=st.dictionaries(ids, json_values, max_size=4),
    symbols=st.one_of(st.none(), st.lists(ids, max_size=3)), exchanges=st.one_of(st.none(), st.lists(ids, max_size=3)),
    enabled=st.booleans(),
)


def test_any_configuration_and_breaker_survive_a_store_round_trip(db_url: str) -> None:
    with asyncio.Runner() as runner:
        store = RiskStore(db_url)
        runner.run(store.start())
        try:

            @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
            @given(configs, breakers)
            def round_trip(cfg: ConfigRecord, breaker: BreakerRecord) -> None:
                account = f"acct-{uuid.uuid4().hex}"  # fresh account: no other config to deactivate
                cfg = replace(cfg, account_id=account)
                breaker = replace(breaker, account_id=account)

                saved, created = runner.run(store.save_config(cfg))
                stored = runner.run(store.save_breaker(breaker))
                (listed,) = runner.run(store.get_configs(account))

                assert created is True
                assert listed == saved
                assert replace(saved, created_at=None, updated_at=None, symbol_configs=[
                    replace(s, created_at=None, updated_at=None) for s in saved.symbol_configs]) == cfg
                assert runner.run(store.get_breaker(stored.id)) == stored
                assert replace(stored, id="", created_at=None, updated_at=None) == breaker

            round_trip()
        finally:
            runner.run(store.close(drain_timeout=5))
