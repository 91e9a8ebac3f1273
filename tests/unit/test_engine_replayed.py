"""RiskEngine.replayed: changes that may already be reflected in a restored state (a takeover replaying the trader's
pause and resume rows) are one change, their net one, or none."""

from __future__ import annotations

import pytest

from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.engine.engine import RiskEngine
from tradeguard_server.engine.events import StateChanged
from tradeguard_server.engine.limits import Limits
from tradeguard_server.engine.snapshot import from_record, to_record
from tradeguard_server.engine.state import TraderState
from tradeguard_server.engine.types import TradingState

T0 = 1_767_268_800.0


def engine_heard(clock: ManualClock) -> tuple[RiskEngine, list[StateChanged]]:
    heard: list[StateChanged] = []
    engine = RiskEngine(clock, defaults=Limits(), listeners=[heard.append])
    return engine, heard


def reported(clock: ManualClock) -> tuple[RiskEngine, TraderState, list[StateChanged]]:
    """An engine with trader t's equity reported, and its listener's record emptied."""
    engine, heard = engine_heard(clock)
    engine.report_equity("t", "a", 10_000.0, None)
    heard.clear()
    return engine, engine.traders["t"], heard


def test_rows_the_state_already_reflects_change_nothing_and_announce_nothing() -> None:
    clock = ManualClock(T0)
    first, _ = engine_heard(clock)
    first.report_equity("t", "a", 10_000.0, None)
    first.pause("t", "a", TradingState.HALTED, None, "earlier", since=T0 - 60)
    first.resume("t", "a", since=T0 - 30)
    clock.advance(600)
    engine, heard = engine_heard(clock)
    st = from_record(to_record(first.traders["t"]))
    engine.restore(st)
    version, updated_at = st.version, st.updated_at

    def replay() -> None:
        engine.pause("t", "a", TradingState.HALTED, None, "earlier", since=T0 - 60)
        engine.resume("t", "a", since=T0 - 30)

    assert engine.replayed(st, replay, "taken over") is False
    assert (st.version, st.updated_at, heard) == (version, updated_at, [])
    assert st.effective_pause(clock.now()) is None


def test_a_pause_the_state_does_not_reflect_is_one_change() -> None:
    clock = ManualClock(T0)
    engine, st, heard = reported(clock)

    def replay() -> None:
        engine.pause("t", "a", TradingState.HALTED, None, "pressed elsewhere", since=T0 - 5)
        engine.pause("t", "a", TradingState.REDUCING, None, "and again", since=T0 - 4)

    assert engine.replayed(st, replay, "taken over: 2 changes replayed") is True
    assert [e.reason for e in heard] == ["taken over: 2 changes replayed"]
    assert st.trading_state(clock.now()) is TradingState.HALTED


def test_a_replay_that_fails_half_way_still_announces_what_it_applied() -> None:
    clock = ManualClock(T0)
    engine, st, heard = reported(clock)

    def replay() -> None:
        engine.pause("t", "a", TradingState.HALTED, None, "pressed elsewhere", since=T0 - 5)
        raise RuntimeError("the next row cannot be applied")

    with pytest.raises(RuntimeError):
        engine.replayed(st, replay, "taken over")
    assert [e.reason for e in heard] == ["taken over"]
    engine.report_equity("t", "a", 10_000.0, None)  # changes after it are announced again
    assert len(heard) == 2
