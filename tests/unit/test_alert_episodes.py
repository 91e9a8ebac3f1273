"""AlertWatcher on a real engine (ManualClock): at most one alert per episode per event kind (alerts/episodes.py)."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest

from tradeguard_server.alerts.alert import Alert
from tradeguard_server.alerts.episodes import AlertWatcher
from tradeguard_server.cluster.listener import ControlListener
from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.engine.engine import RiskEngine
from tradeguard_server.engine.limits import Limits
from tradeguard_server.engine.state import Pause
from tradeguard_server.engine.types import DecisionCode, TradingState


def watched(clock: ManualClock) -> tuple[RiskEngine, AlertWatcher, list[Alert]]:
    got: list[Alert] = []
    watcher = AlertWatcher(got.append, "sc-1")
    engine = RiskEngine(clock, defaults=Limits(stop_trading_minutes=30), listeners=[watcher])
    return engine, watcher, got


def events(got: list[Alert]) -> Counter[str]:
    return Counter(a.event for a in got)


def test_a_trader_that_stays_paused_and_keeps_being_denied_gets_one_pause_alert(clock: ManualClock) -> None:
    engine, _watcher, got = watched(clock)
    engine.report_equity("bot-1", "acct-1", 10_000, None)
    engine.report_equity("bot-1", "acct-1", 9_000, None)  # 10% daily loss: breach, paused by the limit
    for _ in range(5):
        decision, _st = engine.can_trade("bot-1", "acct-1", None)
        assert decision.trading_state is TradingState.REDUCING
    engine.report_equity("bot-1", "acct-1", 8_800, None)
    engine.pause("bot-1", "acct-1", TradingState.HALTED, None, "on top")  # a second pause: the same episode

    assert events(got) == {"loss_limit_breach": 1, "trader_paused": 1}
    breach = next(a for a in got if a.event == "loss_limit_breach")
    assert (breach.trader_id, breach.account_id, breach.details["code"]) == ("bot-1", "acct-1", "DAILY_LOSS_LIMIT")


def test_a_new_pause_after_a_resume_is_a_new_episode_and_each_ends_with_one_resume_alert(clock: ManualClock) -> None:
    engine, _watcher, got = watched(clock)
    engine.report_equity("bot-1", "acct-1", 10_000, None)
    engine.pause("bot-1", "acct-1", TradingState.HALTED, None, "first")
    engine.resume("bot-1", "acct-1")
    engine.resume("bot-1", "acct-1")  # nothing paused: no episode ends
    clock.advance(1)
    engine.pause("bot-1", "acct-1", TradingState.HALTED, 60, "second")
    clock.advance(61)
    engine.can_trade("bot-1", "acct-1", None)  # the sidecar notices the pause ended at the trader's next call

    assert [a.event for a in got] == ["trader_paused", "trader_resumed", "trader_paused", "trader_resumed"]
    assert got[0].key != got[2].key and got[0].key.split(":")[-1] == got[1].key.split(":")[-1]
    assert "first" in got[0].reason and "by operator" in got[0].reason
    assert got[3].reason == "pause_expired"


def test_account_kill_switch_pauses_are_one_scope_alert_not_one_per_trader(clock: ManualClock) -> None:
    engine, watcher, got = watched(clock)
    for bot in ("bot-1", "bot-2"):
        engine.report_equity(bot, "acct-1", 10_000, None)
    scope = Pause(TradingState.HALTED, None, DecisionCode.KILL_SWITCH, "KILL_SWITCH: account", "account",
                  since=clock.now())
    for bot in ("bot-1", "bot-2"):
        engine.set_scope_pauses(engine.traders[bot], [scope], "scope pause")
    watcher.scope_changed("acct-1", True, "incident", "ops", 7, clock.now(), {"state": "HALTED"})
    watcher.scope_changed("acct-1", True, "again", "ops", 8, clock.now(), {"state": "HALTED"})  # same episode
    watcher.scope_changed("acct-1", False, "", "ops", 9, clock.now(), {})

    assert [(a.event, a.account_id, a.trader_id) for a in got] == [("kill_switch", "acct-1", ""),
                                                                   ("kill_switch_lifted", "acct-1", "")]
    assert "incident" in got[0].reason and got[0].key == "kill_switch:acct-1:7"


def test_health_episodes_alert_once_down_and_once_recovered(clock: ManualClock) -> None:
    _engine, watcher, got = watched(clock)
    watcher.store_health(True, 1.0)  # healthy while healthy: nothing
    watcher.store_health(False, 2.0)
    watcher.store_health(False, 3.0)
    watcher.control_health(False, 3.5)
    watcher.store_health(True, 4.0)
    watcher.control_health(True, 5.0)

    assert [a.event for a in got] == ["store_unavailable", "control_state_stale", "store_recovered",
                                      "control_state_recovered"]
    assert got[2].details["down_seconds"] == 2.0


def test_a_restored_paused_trader_is_derived_again_only_if_new(clock: ManualClock) -> None:
    engine, _watcher, _got = watched(clock)
    engine.report_equity("bot-1", "acct-1", 10_000, None)
    engine.pause("bot-1", "acct-1", TradingState.HALTED, None, "before the restart")
    got: list[Alert] = []
    fresh = AlertWatcher(got.append, "sc-1")  # a restarted sidecar's watcher, over the restored state

    fresh.restored(engine.traders.values(), clock.now())

    assert [(a.event, a.only_if_new) for a in got] == [("trader_paused", True)]


def test_a_control_state_relapse_before_it_stayed_fresh_is_the_same_stale_episode() -> None:
    """ControlListener.on_overdue (the stale episode, cluster/listener.py): from the first overdue until fresh for
    recover_s without a break; a relapse meanwhile (not heard again, or the leases lapsed) is the same episode."""
    now = [100.0]
    lapsed = [False]
    listener = ControlListener("postgresql://tg@127.0.0.1/tg", SimpleNamespace(engine=None, version=0), max_age_s=1.0,
                               stale_action="serve", poll_s=0.2, lease_lapsed=lambda: lapsed[0], clock=lambda: now[0])
    listener.recover_s = 11.0
    calls: list[bool] = []
    listener.on_overdue = calls.append

    def at(t: float, heard: bool = False) -> None:
        now[0] = t
        if heard:
            listener._heard()
        else:
            listener._judge()

    at(100.9)
    assert calls == [] and not listener.overdue
    at(101.2)  # not heard for 1.2 s: the episode begins
    assert calls == [True] and listener.overdue
    at(102.0, heard=True)  # heard again: not over yet
    assert calls == [True] and not listener.overdue and listener.fresh_seconds() == 0.0
    at(103.1)  # not heard for 1.1 s again, right after: the same episode
    assert calls == [True] and listener.overdue
    at(103.5, heard=True)
    lapsed[0] = True
    at(104.0)  # the leases lapsed (their renewal had not come round yet): the same episode
    assert calls == [True] and listener.overdue
    lapsed[0] = False
    for t in (106.0, 107.0, 108.0, 109.0, 110.0, 111.0, 112.0, 113.0, 114.0, 115.0, 116.0, 116.5):
        at(t, heard=True)  # fresh from 106.0 on
    at(116.9)
    assert calls == [True] and listener.fresh_seconds() == pytest.approx(10.9)
    at(117.0)  # fresh for recover_s without a break: over
    assert calls == [True, False] and not listener.episode
    at(117.7)  # not heard for 1.2 s after the episode ended: a new one
    assert calls == [True, False, True]




@pytest.mark.parametrize(("heard_again", "expected"), [(True, [True, False]), (False, [True])])
async def test_a_stale_episode_heard_again_but_not_yet_for_long_ends_at_the_stop_and_an_overdue_one_does_not(
        heard_again: bool, expected: list[bool]) -> None:
    now = [100.0]
    plane = SimpleNamespace(engine=SimpleNamespace(control_gate=None), version=0)
    listener = ControlListener("postgresql://tg@127.0.0.1/tg", plane, max_age_s=1.0, stale_action="serve",
                               poll_s=0.2, clock=lambda: now[0])
    calls: list[bool] = []
    listener.on_overdue = calls.append
    now[0] = 101.5
    listener._judge()  # not heard for 1.5 s: the episode begins
    if heard_again:
        now[0] = 102.0
        listener._heard()
    await listener.stop()
    assert calls == expected
