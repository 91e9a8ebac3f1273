"""engine.snapshot: to_record / from_record are exact, independent copies of a TraderState."""

from __future__ import annotations

import dataclasses
import math
import pickle
from collections import deque
from dataclasses import FrozenInstanceError, fields
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tradeguard_server.engine.snapshot import StateRecord, from_record, to_record
from tradeguard_server.engine.state import (
    RECENT_TRADES_KEPT,
    SEEN_TRADE_IDS_KEPT,
    WINDOW_STORED_S,
    WINDOW_TIMES_STORED,
    Pause,
    TraderState,
    remember_trade_id,
    roll_periods,
)
from tradeguard_server.engine.types import ClosedTrade, DecisionCode, Position, Side, SymbolStats, TradingState

# ---- strategies (also used by the store's round-trip tests) ----------------------------------------------

ids = st.from_regex(r"[A-Za-z0-9._:@/\-]{1,24}", fullmatch=True)
amounts = st.floats(min_value=-1e15, max_value=1e15, allow_nan=False, allow_infinity=False)
positive = st.floats(min_value=0.0, max_value=1e15, allow_nan=False, allow_infinity=False)
any_time = st.floats(min_value=0.0, max_value=4.1e9, allow_nan=False, allow_infinity=False)
# Times stored in timestamp columns keep microseconds (PostgreSQL's resolution): draw them on that grid.
micro_time = st.integers(min_value=0, max_value=4_102_444_800_000_000).map(lambda us: us / 1_000_000)
free_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)  # what protobuf carries


@st.composite
def trader_states(draw: st.DrawFn, column_times: st.SearchStrategy[float] = any_time) -> TraderState:
    """Any TraderState the engine can hold. `column_times` draws the times the store keeps in timestamp
    columns (period starts, last_equity_at, updated_at); times inside JSON parts are any float."""
    positions = draw(st.lists(
        st.builds(Position, symbol=ids, side=st.sampled_from(Side), quantity=positive, entry_price=positive,
                  mark_price=positive, exchange=st.one_of(st.just(""), ids), leverage=positive, volatility=positive),
        max_size=4, unique_by=lambda p: (p.symbol, p.exchange),
    ))
    trades = draw(st.lists(
        st.builds(ClosedTrade, trade_id=ids, symbol=ids, exchange=st.one_of(st.just(""), ids),
                  side=st.sampled_from(Side), realized_pnl=amounts, closed_at=any_time),
        max_size=8,
    ))
    pauses = draw(st.lists(
        st.builds(Pause, state=st.sampled_from(TradingState), until=st.one_of(st.none(), any_time),
                  code=st.sampled_from(DecisionCode), reason=free_text,
                  source=st.sampled_from(["limit", "manual", "breaker:b-1"]), since=any_time),
        max_size=3,
    ))
    stats = draw(st.dictionaries(ids, st.builds(SymbolStats, trades=st.integers(0, 2**40), wins=st.integers(0, 2**40),
                                                losses=st.integers(0, 2**40), realized_pnl=amounts), max_size=3))
    return TraderState(
        trader_id=draw(ids),
        account_id=draw(ids),
        equity_reported=draw(st.booleans()),
        current_equity=draw(amounts),
        peak_equity=draw(amounts),
        day_start_equity=draw(amounts),
        week_start_equity=draw(amounts),
        month_start_equity=draw(amounts),
        day_start=draw(column_times),
        week_start=draw(column_times),
        month_start=draw(column_times),
        next_boundary=draw(any_time),
        last_equity_at=draw(st.one_of(st.none(), column_times)),
        pauses=pauses,
        consecutive_losses=draw(st.integers(0, 2**31 - 1)),
        positions={(p.symbol, p.exchange): p for p in positions},
        volatility=draw(st.dictionaries(ids, positive, max_size=3)),
        order_times=deque(draw(st.lists(any_time, max_size=5))),
        recent_trades=sorted(trades, key=lambda t: (t.closed_at, t.trade_id)),
        symbol_stats=stats,
        breaker_episodes=draw(st.dictionaries(ids, free_text, max_size=3)),
        updated_at=draw(column_times),
        version=draw(st.integers(0, 2**62)),
    )


# (recent_orders, the duplicate window, is rebuilt from the orders by from_record; order_times and fill_times are
# stored bounded, tested on their own below and in tests/unit/test_order_windows_restored.py)
NOT_SNAPSHOTTED = ("next_boundary", "seen_trade_ids", "order_times", "recent_orders", "fill_times", "checks_cache",
                   "order_answers", "episodes_changed", "episodes_adopted")


def persisted(state: TraderState) -> dict[str, Any]:
    """The fields a snapshot keeps, comparable with ==."""
    out = {f.name: getattr(state, f.name) for f in fields(TraderState) if f.name not in NOT_SNAPSHOTTED}
    out["recent_trades"] = list(state.recent_trades)
    return out


def test_a_record_holds_the_order_and_fill_times_of_the_last_day_as_they_were() -> None:
    state = busy_trader()
    state.fill_times.extend([1_767_225_591.0, 1_767_225_591.0, 1_767_225_595.0])  # two partial fills at one instant
    rec = to_record(state)
    assert rec.order_times == (1_767_225_590.0,) and rec.windows_stored
    assert rec.fill_times == (1_767_225_591.0, 1_767_225_591.0, 1_767_225_595.0)
    restored = from_record(rec)
    assert list(restored.fill_times) == list(rec.fill_times)
    assert list(restored.order_times) == [1_767_225_590.0]


def test_a_busy_bots_record_holds_only_its_newest_1000_times_within_a_day() -> None:
    """A bot with 10,001 order times: the record copies the newest WINDOW_TIMES_STORED (the hot path copies no
    more), and none older than WINDOW_STORED_S before the change."""
    state = busy_trader()
    now = state.updated_at
    state.order_times.clear()
    state.order_times.extend(now - 10_000 + i for i in range(10_001))
    state.fill_times.extend([now - WINDOW_STORED_S - 1.0, now - WINDOW_STORED_S, now - 5.0])
    rec = to_record(state)
    assert len(rec.order_times) == WINDOW_TIMES_STORED
    assert rec.order_times == tuple(now - WINDOW_TIMES_STORED + 1 + i for i in range(WINDOW_TIMES_STORED))
    assert rec.fill_times == (now - WINDOW_STORED_S, now - 5.0)


def test_a_record_pickled_by_an_older_version_unpickles_with_the_new_fields_defaulted() -> None:
    """The spool holds pickled records; one written before `fill_times` and `windows_stored` existed has fewer
    fields and must not leave them unset."""
    rec = to_record(busy_trader())
    state = rec.__getstate__()  # type: ignore[attr-defined]
    old = StateRecord.__new__(StateRecord)
    old.__setstate__(state[:-2])
    assert old.fill_times == () and old.windows_stored is False and old.version == rec.version
    assert pickle.loads(pickle.dumps(rec)) == rec  # noqa: S301 (our own record)


# ---- properties --------------------------------------------------------------------------------------------

@given(trader_states())
def test_any_trader_state_survives_to_record_and_back_unchanged(state: TraderState) -> None:
    restored = from_record(to_record(state))

    assert persisted(restored) == persisted(state)
    assert restored.next_boundary == -math.inf
    assert len(restored.recent_trades) <= RECENT_TRADES_KEPT


def test_restored_recent_trades_are_in_closed_at_order_whatever_the_stored_order() -> None:
    """Rows written before trades were kept in closed_at order hold them in report order."""
    late = ClosedTrade("x-2", "BTCUSDT", "", Side.SELL, -1.0, 100.0)
    early = ClosedTrade("x-1", "BTCUSDT", "", Side.SELL, -1.0, 50.0)
    rec = dataclasses.replace(to_record(TraderState("t-1", "a-1")), recent_trades=(late, early))

    assert from_record(rec).recent_trades == [early, late]


@given(trader_states(), any_time)
def test_record_derived_values_equal_the_trader_state_ones(state: TraderState, now: float) -> None:
    rec = to_record(state)

    assert rec.drawdown_pct == state.drawdown_pct
    assert (rec.daily_pnl, rec.weekly_pnl, rec.monthly_pnl) == (state.daily_pnl, state.weekly_pnl, state.monthly_pnl)
    assert rec.trading_state(now) is state.trading_state(now)
    pause, expected = rec.effective_pause(now), state.effective_pause(now)
    assert (pause is None) == (expected is None)
    if pause is not None and expected is not None:
        assert (pause.state, pause.until, pause.code, pause.reason) == (expected.state, expected.until, expected.code,
                                                                         expected.reason)


@given(trader_states())
def test_record_loss_and_pnl_percents_equal_the_trader_state_ones(state: TraderState) -> None:
    rec = to_record(state)

    names = ("daily_loss_pct", "weekly_loss_pct", "monthly_loss_pct", "daily_pnl_pct", "weekly_pnl_pct",
             "monthly_pnl_pct")
    assert [getattr(rec, n) for n in names] == [getattr(state, n) for n in names]


# ---- independence ------------------------------------------------------------------------------------------

def busy_trader() -> TraderState:
    state = TraderState("t-1", "a-1", equity_reported=True, current_equity=9_500.0, peak_equity=10_000.0,
                        updated_at=1_767_225_600.0, version=7)
    state.pauses.append(Pause(TradingState.REDUCING, 1_767_227_400.0, DecisionCode.DAILY_LOSS_LIMIT, "loss", "limit",
                              1_767_225_600.0))
    state.positions[("BTCUSDT", "binance")] = Position("BTCUSDT", Side.BUY, 1.0, 60_000.0, 59_000.0, "binance")
    state.volatility["BTCUSDT"] = 1.5
    state.symbol_stats["BTCUSDT"] = SymbolStats(3, 1, 2, -40.0)
    state.recent_trades.append(ClosedTrade("x-1", "BTCUSDT", "binance", Side.SELL, -20.0, 1_767_225_000.0))
    state.order_times.append(1_767_225_590.0)
    return state


def test_record_does_not_change_when_the_engine_mutates_the_state_afterwards() -> None:
    state = busy_trader()
    rec = to_record(state)
    before = persisted(from_record(rec))

    state.pauses[0].until = None
    state.pauses.append(Pause(TradingState.HALTED, None, DecisionCode.KILL_SWITCH, "stop", "manual"))
    state.symbol_stats["BTCUSDT"].trades += 1
    state.positions.clear()
    state.volatility["ETHUSDT"] = 2.0
    state.recent_trades.append(ClosedTrade("x-2", "ETHUSDT", "", Side.BUY, 5.0, 1_767_225_100.0))
    state.order_times.append(1_767_225_599.0)
    state.current_equity = 1.0

    assert persisted(from_record(rec)) == before


def test_states_restored_from_one_record_are_independent() -> None:
    rec = to_record(busy_trader())
    first, second = from_record(rec), from_record(rec)

    first.pauses[0].until = None
    first.symbol_stats["BTCUSDT"].wins += 10
    first.volatility.clear()
    first.recent_trades.clear()

    assert second.pauses[0].until == 1_767_227_400.0
    assert second.symbol_stats["BTCUSDT"].wins == 1
    assert second.volatility == {"BTCUSDT": 1.5}
    assert len(second.recent_trades) == 1


def test_record_is_frozen() -> None:
    rec = to_record(busy_trader())

    with pytest.raises(FrozenInstanceError):
        rec.version = 8  # type: ignore[misc]
    assert isinstance(rec.pauses, tuple)
    assert isinstance(rec.positions, tuple)


# ---- what is restored beside the record --------------------------------------------------------------------

def test_seen_trade_ids_given_to_from_record_detect_a_retried_report() -> None:
    restored = from_record(to_record(busy_trader()), seen_trade_ids=["x-1", "x-2"])

    assert remember_trade_id(restored, "x-2") is False
    assert remember_trade_id(restored, "x-3") is True


def test_from_record_keeps_the_newest_seen_trade_ids_only() -> None:
    ids_oldest_first = [f"id-{i}" for i in range(SEEN_TRADE_IDS_KEPT + 5)]

    restored = from_record(StateRecord("t-1", "a-1"), seen_trade_ids=ids_oldest_first)

    assert len(restored.seen_trade_ids) == SEEN_TRADE_IDS_KEPT
    assert next(iter(restored.seen_trade_ids)) == "id-5"
    assert "id-4" not in restored.seen_trade_ids


def test_periods_roll_on_first_use_after_a_restore() -> None:
    yesterday = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    state = TraderState("t-1", "a-1", equity_reported=True, current_equity=900.0, day_start_equity=1_000.0,
                        day_start=yesterday, week_start=yesterday - 3 * 86_400, month_start=yesterday,
                        next_boundary=yesterday + 86_400)
    restored = from_record(to_record(state))

    rolled = roll_periods(restored, yesterday + 86_400 + 60, 0.0)

    assert rolled is True
    assert restored.day_start == yesterday + 86_400
    assert restored.day_start_equity == 900.0
    assert restored.next_boundary > yesterday + 86_400
