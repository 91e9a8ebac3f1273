"""Breaker conditions (pure functions over a TraderState) and the registry's parameter validation."""

from __future__ import annotations

import pytest

from tradeguard_server.engine.breakers import DEFAULT, Scope, Triggered
from tradeguard_server.engine.breakers.base import ALL
from tradeguard_server.engine.state import TraderState
from tradeguard_server.engine.types import ClosedTrade, Position, Side

T0 = 1_767_268_800.0
ETH = Scope(frozenset({"ETHUSDT"}), None)
BINANCE = Scope(None, frozenset({"binance"}))


def evaluate(
    condition: str, st: TraderState, params: dict[str, float], scope: Scope = ALL, now: float = T0
) -> Triggered | None:
    spec = DEFAULT.get(condition)
    assert spec is not None
    return spec.evaluate(st, params, now, scope)


def equity_state(peak: float = 10_000.0, equity: float = 10_000.0, day_start: float | None = None) -> TraderState:
    st = TraderState("t1", "a1", equity_reported=True, current_equity=equity, peak_equity=peak)
    st.day_start_equity = peak if day_start is None else day_start
    return st


def with_trades(pnls: list[tuple[str, float]], start: float = T0 - 600.0, step: float = 10.0) -> TraderState:
    st = equity_state()
    for i, (symbol, pnl) in enumerate(pnls):
        st.recent_trades.append(ClosedTrade(f"x{i}", symbol, "binance", Side.SELL, pnl, start + i * step))
    return st


# ---- max_drawdown -------------------------------------------------------------------------------


def test_max_drawdown_over_threshold_fires_with_drawdown_and_threshold() -> None:
    trig = evaluate("max_drawdown", equity_state(equity=8_800.0), {"threshold": 0.1})

    assert trig is not None
    assert trig.values["drawdown"] == pytest.approx(0.12)
    assert trig.values["threshold"] == 0.1
    assert trig.positions is None


@pytest.mark.parametrize("equity", [10_000.0, 9_500.0, 9_000.0])
def test_max_drawdown_at_or_under_threshold_does_not_fire(equity: float) -> None:
    assert evaluate("max_drawdown", equity_state(equity=equity), {"threshold": 0.1}) is None


def test_max_drawdown_without_equity_reported_does_not_fire() -> None:
    assert evaluate("max_drawdown", TraderState("t1", "a1"), {"threshold": 0.1}) is None


# ---- daily_loss ---------------------------------------------------------------------------------


def test_daily_loss_is_measured_against_day_start_equity_not_peak() -> None:
    st = equity_state(peak=20_000.0, equity=9_400.0, day_start=10_000.0)

    trig = evaluate("daily_loss", st, {"threshold": 0.05})

    assert trig is not None and trig.values["daily_loss"] == pytest.approx(0.06)
    assert evaluate("daily_loss", st, {"threshold": 0.07}) is None


def test_daily_loss_with_a_gain_does_not_fire() -> None:
    assert evaluate("daily_loss", equity_state(equity=11_000.0, peak=11_000.0, day_start=10_000.0),
                    {"threshold": 0.01}) is None


# ---- equity_floor -------------------------------------------------------------------------------


def test_equity_floor_fires_only_below_the_value() -> None:
    assert evaluate("equity_floor", equity_state(equity=4_999.0), {"value": 5_000.0}) is not None
    assert evaluate("equity_floor", equity_state(equity=5_000.0), {"value": 5_000.0}) is None
    assert evaluate("equity_floor", TraderState("t1", "a1"), {"value": 5_000.0}) is None


# ---- consecutive_losses -------------------------------------------------------------------------


def test_consecutive_losses_unscoped_uses_the_trader_streak() -> None:
    st = equity_state()
    st.consecutive_losses = 3

    trig = evaluate("consecutive_losses", st, {"count": 3})

    assert trig is not None and trig.values == {"consecutive_losses": 3.0, "count": 3}
    assert evaluate("consecutive_losses", st, {"count": 4}) is None


def test_consecutive_losses_scoped_counts_only_in_scope_trades_since_the_last_in_scope_win() -> None:
    st = with_trades([("ETHUSDT", -1.0), ("ETHUSDT", 5.0), ("ETHUSDT", -1.0), ("BTCUSDT", 9.0),
                      ("ETHUSDT", 0.0), ("ETHUSDT", -2.0)])

    trig = evaluate("consecutive_losses", st, {"count": 2}, ETH)

    assert trig is not None and trig.values["consecutive_losses"] == 2.0
    assert evaluate("consecutive_losses", st, {"count": 3}, ETH) is None


def test_consecutive_losses_scoped_ignores_out_of_scope_losses() -> None:
    st = with_trades([("BTCUSDT", -1.0)] * 5)

    assert evaluate("consecutive_losses", st, {"count": 1}, ETH) is None


# ---- loss_streak_in_window ----------------------------------------------------------------------


def test_loss_streak_in_window_counts_losing_trades_inside_the_lookback() -> None:
    st = with_trades([("BTCUSDT", -1.0)] * 4, start=T0 - 40 * 60.0, step=10 * 60.0)  # -40, -30, -20, -10 min

    inside = evaluate("loss_streak_in_window", st, {"trade_limit": 3, "lookback_minutes": 35})
    outside = evaluate("loss_streak_in_window", st, {"trade_limit": 3, "lookback_minutes": 25})

    assert inside is not None and inside.values["losing_trades"] == 3.0
    assert outside is None


def test_loss_streak_in_window_ignores_wins_and_out_of_scope_trades() -> None:
    st = with_trades([("ETHUSDT", -1.0), ("BTCUSDT", -1.0), ("ETHUSDT", 3.0), ("ETHUSDT", -1.0)])
    params = {"trade_limit": 2, "lookback_minutes": 60}

    assert evaluate("loss_streak_in_window", st, params, ETH) is not None
    assert evaluate("loss_streak_in_window", st, {"trade_limit": 3, "lookback_minutes": 60}, ETH) is None


# ---- order_rate ---------------------------------------------------------------------------------


def test_order_rate_fires_when_more_than_max_orders_in_the_window() -> None:
    st = equity_state()
    st.order_times.extend([T0 - 120.0, T0 - 50.0, T0 - 40.0, T0 - 30.0, T0 - 1.0])

    fired = evaluate("order_rate", st, {"max_orders": 3, "window_seconds": 60})
    quiet = evaluate("order_rate", st, {"max_orders": 4, "window_seconds": 60})

    assert fired is not None and fired.values["orders"] == 4.0
    assert quiet is None


# ---- position_drawdown --------------------------------------------------------------------------


def positions_state() -> TraderState:
    st = equity_state()
    for p in (
        Position("BTCUSDT", Side.BUY, 0.1, 50_000.0, 44_000.0, exchange="binance"),  # long -12%
        Position("ETHUSDT", Side.SELL, 1.0, 3_000.0, 3_150.0, exchange="binance"),  # short -5%
        Position("SOLUSDT", Side.BUY, 10.0, 100.0, 130.0, exchange="okx"),  # +30%
    ):
        st.positions[(p.symbol, p.exchange)] = p
    return st


def test_position_drawdown_names_every_position_over_the_threshold() -> None:
    trig = evaluate("position_drawdown", positions_state(), {"threshold": 0.04})

    assert trig is not None
    assert trig.positions == (("BTCUSDT", "binance"), ("ETHUSDT", "binance"))
    assert trig.values["position_loss"] == pytest.approx(0.12)


def test_position_drawdown_respects_scope_and_threshold() -> None:
    st = positions_state()

    scoped = evaluate("position_drawdown", st, {"threshold": 0.04}, ETH)

    assert scoped is not None and scoped.positions == (("ETHUSDT", "binance"),)
    assert evaluate("position_drawdown", st, {"threshold": 0.2}) is None
    assert evaluate("position_drawdown", st, {"threshold": 0.01}, Scope(None, frozenset({"okx"}))) is None


# ---- scope --------------------------------------------------------------------------------------


def test_scope_empty_activity_exchange_matches_any_exchange_scope() -> None:
    assert BINANCE.matches("BTCUSDT", "")
    assert BINANCE.matches("BTCUSDT", "binance")
    assert not BINANCE.matches("BTCUSDT", "okx")
    assert not ETH.matches("BTCUSDT", "binance")
    assert ALL.everything and not ETH.everything


# ---- registry validation ------------------------------------------------------------------------


def test_registry_knows_the_builtin_conditions() -> None:
    assert DEFAULT.names() == sorted([
        "max_drawdown", "daily_loss", "consecutive_losses", "loss_streak_in_window", "equity_floor",
        "order_rate", "position_drawdown",
    ])


def test_validate_unknown_condition_names_the_field_and_the_known_ones() -> None:
    _, violations = DEFAULT.validate("foo", "alert", {})

    assert violations == [("breaker.condition", "unknown condition 'foo'; known: " + ", ".join(DEFAULT.names()))]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "breaker.parameters.threshold"),
        ({"threshold": 0.0}, "breaker.parameters.threshold"),
        ({"threshold": 1.5}, "breaker.parameters.threshold"),
        ({"threshold": "0.1"}, "breaker.parameters.threshold"),
        ({"threshold": True}, "breaker.parameters.threshold"),
        ({"threshold": float("nan")}, "breaker.parameters.threshold"),
        ({"threshold": 0.1, "thresold": 0.2}, "breaker.parameters.thresold"),
    ],
)
def test_validate_bad_threshold_names_the_parameter(params: dict[str, object], field: str) -> None:
    _, violations = DEFAULT.validate("max_drawdown", "pause_trading", params)

    assert [f for f, _ in violations] == [field]


def test_validate_missing_threshold_says_required_number_in_range() -> None:
    _, violations = DEFAULT.validate("max_drawdown", "alert", {})

    assert violations == [("breaker.parameters.threshold", "required number in (0, 1]")]


def test_validate_integer_parameters_reject_fractions_and_accept_integral_floats() -> None:
    params, ok = DEFAULT.validate("consecutive_losses", "alert", {"count": 3.0})
    _, bad = DEFAULT.validate("consecutive_losses", "alert", {"count": 2.5})

    assert ok == [] and params == {"count": 3} and isinstance(params["count"], int)
    assert bad[0][0] == "breaker.parameters.count" and "integer" in bad[0][1]


def test_validate_duration_minutes_only_for_pausing_actions() -> None:
    params, ok = DEFAULT.validate("max_drawdown", "reduce_only", {"threshold": 0.1, "duration_minutes": 15})
    _, bad = DEFAULT.validate("max_drawdown", "alert", {"threshold": 0.1, "duration_minutes": 15})
    _, negative = DEFAULT.validate("max_drawdown", "pause_trading", {"threshold": 0.1, "duration_minutes": -1})

    assert ok == [] and params == {"threshold": 0.1, "duration_minutes": 15.0}
    assert [f for f, _ in bad] == ["breaker.parameters.duration_minutes"]
    assert [f for f, _ in negative] == ["breaker.parameters.duration_minutes"]


def test_validate_unknown_action_lists_the_actions() -> None:
    _, violations = DEFAULT.validate("max_drawdown", "explode", {"threshold": 0.1})

    assert violations == [("breaker.action",
                           "unknown action 'explode'; one of: pause_trading, reduce_only, close_position, alert")]


@pytest.mark.parametrize(
    ("condition", "params"),
    [
        ("loss_streak_in_window", {"trade_limit": 3}),
        ("order_rate", {"window_seconds": 60}),
        ("equity_floor", {"value": 0}),
    ],
)
def test_validate_each_condition_requires_its_parameters(condition: str, params: dict[str, object]) -> None:
    _, violations = DEFAULT.validate(condition, "alert", params)

    assert len(violations) == 1 and violations[0][0].startswith("breaker.parameters.")


# ---- one measure, two units -----------------------------------------------------------------------------

def test_breaker_losses_are_the_limits_measures_as_fractions() -> None:
    st = positions_state()
    st.peak_equity, st.day_start_equity, st.current_equity = 12_000.0, 10_000.0, 9_137.0

    drawdown = evaluate("max_drawdown", st, {"threshold": 0.01})
    daily = evaluate("daily_loss", st, {"threshold": 0.01})
    position = evaluate("position_drawdown", st, {"threshold": 0.01})

    assert drawdown is not None and drawdown.values["drawdown"] * 100.0 == st.drawdown_pct
    assert daily is not None and daily.values["daily_loss"] * 100.0 == st.daily_loss_pct
    worst = max(p.loss_pct for p in st.positions.values())
    assert position is not None and position.values["position_loss"] * 100.0 == worst


def test_without_a_reference_equity_nothing_is_lost() -> None:
    st = equity_state(peak=0.0, equity=-50.0, day_start=0.0)

    assert evaluate("max_drawdown", st, {"threshold": 0.01}) is None
    assert evaluate("daily_loss", st, {"threshold": 0.01}) is None
    assert st.drawdown_pct == 0.0 and st.daily_loss_pct == 0.0
