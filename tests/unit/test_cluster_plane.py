"""cluster.plane.ControlPlane without a network: scope pauses synced into the traders of their scope (and into
traders made later), re-sync replacing exactly those sources, since-aware trader resume, replay of a trader's
changes idempotent, changes of this sidecar skipped, an older scope change read late ignored, and the stale gate."""

from __future__ import annotations

from collections.abc import Iterable

from tradeguard_server.cluster.changes import ControlChange
from tradeguard_server.cluster.listener import StaleGate
from tradeguard_server.cluster.plane import ControlPlane
from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.engine.engine import RiskEngine
from tradeguard_server.engine.snapshot import from_record, to_record
from tradeguard_server.engine.state import Pause, TraderState
from tradeguard_server.engine.types import Decision, DecisionCode, OrderIntent, Side, TradingState
from tradeguard_server.store.memory import MemoryStore
from tradeguard_server.store.records import BreakerRecord, ConfigRecord, FlagsRecord

BUY = OrderIntent("BTCUSDT", Side.BUY, 0.01, 100.0)


class Nothing:
    def replace_account(self, account_id: str, records: Iterable[ConfigRecord], reason: str) -> bool:
        return False

    def install_flags(self, stored: FlagsRecord | None, by: str) -> bool:
        return False


class NoBreakers:
    async def replace_account(self, account_id: str, records: Iterable[BreakerRecord], by: str) -> int:
        return 0


def make(clock: ManualClock, origin: str = "A") -> tuple[RiskEngine, MemoryStore, ControlPlane]:
    engine = RiskEngine(clock)
    store = MemoryStore(clock=clock.now)
    plane = ControlPlane(engine, store, Nothing(), NoBreakers(), Nothing(), origin=origin, cluster=False)
    return engine, store, plane


def sources(st: TraderState) -> list[str]:
    return sorted(p.source for p in st.pauses)


def shape(st: TraderState) -> list[tuple[str, float | None, str, float]]:
    return sorted((p.state.name, p.until, p.source, p.since) for p in st.pauses)


def remote(kind: str, account_id: str, trader_id: str, at: float, version: int, state: str = "HALTED",
           until: float | None = None, origin: str = "B") -> ControlChange:
    payload = {"state": state, "until": until, "reason": "r"} if kind == "pause" else None
    return ControlChange(kind, account_id, trader_id, payload, origin, "alice", None, at, version)


async def test_account_pause_reaches_every_trader_of_the_account_and_traders_made_later(clock: ManualClock) -> None:
    engine, _store, plane = make(clock)
    engine.report_equity("t1", "acct", 1000.0, None)
    engine.report_equity("t2", "other", 1000.0, None)
    await plane.prime(0)
    scope = await plane.pause_account("acct", TradingState.HALTED, None, "desk", actor="alice")
    assert scope.version == 1 and plane.version == 1
    assert sources(engine.traders["t1"]) == ["account"] and sources(engine.traders["t2"]) == []
    engine.report_equity("t3", "acct", 1000.0, None)  # first seen after the pause
    decision, _ = engine.can_trade("t3", "acct", BUY)
    assert not decision.allowed and decision.code is DecisionCode.KILL_SWITCH
    assert "by alice via sidecar A" in decision.reason

    await plane.pause_account("*", TradingState.REDUCING, clock.now() + 60, "firm", actor="bob")
    assert sources(engine.traders["t1"]) == ["account", "all"] and sources(engine.traders["t2"]) == ["all"]
    assert engine.traders["t1"].trading_state(clock.now()) is TradingState.HALTED  # the most severe wins

    engine.resume("t1", "acct")  # a trader's own resume lifts neither scope
    assert sources(engine.traders["t1"]) == ["account", "all"]
    await plane.resume_account("acct", actor="alice")
    assert sources(engine.traders["t1"]) == ["all"] and sources(engine.traders["t3"]) == ["all"]
    version = engine.traders["t1"].version
    assert not engine.set_scope_pauses(engine.traders["t1"], plane.pauses_for("acct"), "again")  # nothing new
    assert engine.traders["t1"].version == version
    clock.advance(61)  # the every-account pause ends by itself
    assert engine.can_trade("t2", "other", BUY)[0].allowed


async def test_resync_replaces_exactly_the_scope_sources(clock: ManualClock) -> None:
    engine, _store, plane = make(clock)
    engine.report_equity("t1", "acct", 1000.0, None)
    engine.pause("t1", "acct", TradingState.REDUCING, None, "mine")
    st = engine.traders["t1"]
    st.pauses.append(Pause(TradingState.HALTED, None, DecisionCode.KILL_SWITCH, "stale", "account", since=1.0))
    await plane.prime(0)  # no scope pause stored: the stale one goes, the trader's own stays
    assert sources(st) == ["manual"]


async def test_restored_trader_keeps_its_stored_scope_pauses_until_the_plane_has_read_them(
        clock: ManualClock) -> None:
    engine, store, plane = make(clock)
    st = TraderState("t1", "acct")
    st.pauses.append(Pause(TradingState.HALTED, None, DecisionCode.KILL_SWITCH, "stored", "account", since=1.0))
    engine.restore(from_record(to_record(st)))
    assert sources(engine.traders["t1"]) == ["account"]  # not primed: kept
    await store.append_change(remote("pause", "acct", "", clock.now(), 0, origin="A"))
    await plane.prime(1)
    (pause,) = engine.traders["t1"].pauses  # the stored one replaced by the one read
    assert pause.source == "account" and "HALTED for account acct by alice" in pause.reason


async def test_since_aware_resume_lifts_only_pauses_that_began_before_it(clock: ManualClock) -> None:
    engine, _store, _plane = make(clock)
    engine.report_equity("t1", "acct", 1000.0, None)
    t_resume = clock.now()
    clock.advance(5)
    engine.pause("t1", "acct", TradingState.HALTED, None, "newer")
    st = engine.resume("t1", "acct", since=t_resume, by="alice via sidecar B")
    assert [p.reason for p in st.pauses] == ["KILL_SWITCH: HALTED by operator: newer"]
    st = engine.resume("t1", "acct")
    assert st.pauses == []


async def test_replaying_a_traders_changes_is_idempotent(clock: ManualClock) -> None:
    engine, _store, plane = make(clock)
    await plane.prime(0)
    t0 = clock.now()
    changes = [
        remote("pause", "acct", "t1", t0 - 30, 3, until=None),
        remote("resume", "acct", "t1", t0 - 20, 4),
        remote("pause", "acct", "t1", t0 - 10, 5, state="REDUCING", until=t0 + 600),
        remote("pause", "acct", "t1", t0 - 9, 6, until=t0 - 1),  # ended already
    ]
    st = TraderState("t1", "acct")
    st.pauses.append(Pause(TradingState.HALTED, t0 + 300, DecisionCode.DAILY_LOSS_LIMIT, "loss", "limit",
                           since=t0 - 25))  # lifted by the resume at t0 - 20
    st.pauses.append(Pause(TradingState.HALTED, t0 + 300, DecisionCode.MAX_DRAWDOWN, "dd", "limit",
                           since=t0 - 5))  # after it: stays
    plane.replay_trader(st, changes)
    once = shape(engine.traders["t1"])
    assert once == sorted([("HALTED", t0 + 300, "limit", t0 - 5), ("REDUCING", t0 + 600, "manual", t0 - 10)])
    plane.replay_trader(engine.traders["t1"], changes)
    plane.replay_trader(engine.traders["t1"], list(reversed(changes)))  # taken in version order whatever given
    assert shape(engine.traders["t1"]) == once


async def test_apply_skips_this_sidecars_own_changes_and_scope_changes_read_late(clock: ManualClock) -> None:
    engine, _store, plane = make(clock, origin="A")
    engine.report_equity("t1", "acct", 1000.0, None)
    await plane.prime(0)
    own = plane.record("pause", "acct", {"state": "HALTED", "until": None, "reason": "r"}, "t1", "alice")
    own.version = 1  # as the store sets it when the change is appended (this process made it: in force here)
    newer = remote("resume", "acct", "", clock.now(), 3)
    older = remote("pause", "acct", "", clock.now() - 1, 2)
    assert await plane.apply([own]) == 0 and plane.version == 1 and engine.traders["t1"].pauses == []
    assert await plane.apply([newer]) == 1
    plane.version = 1  # the older one is read after the newer (a catch-up from an earlier version)
    assert await plane.apply([older]) == 1  # applied as seen; the newer resume stays in force
    assert engine.traders["t1"].pauses == [] and plane.version == 2
    assert plane.control_changes_applied() == {"pause": 1, "resume": 1}
    assert await plane.apply([remote("pause", "acct", "t1", clock.now(), 4)]) == 1
    assert sources(engine.traders["t1"]) == ["manual"]
    assert "alice via sidecar B" in engine.traders["t1"].pauses[0].reason


def test_stale_gate_denies_new_exposure_only_for_reduce_only(clock: ManualClock) -> None:
    allowed = Decision(True, DecisionCode.ALLOWED, "all checks passed", TradingState.ACTIVE, None)
    st = TraderState("t1", "acct")
    gate = StaleGate("reduce_only", 60.0, lambda: 75.0, lambda: True)
    adding = gate(allowed, st, BUY, False)
    assert not adding.allowed and adding.code is DecisionCode.CONTROL_STATE_STALE
    assert adding.trading_state is TradingState.REDUCING and "75.0s" in adding.reason
    assert gate(allowed, st, BUY, True).allowed  # reducing passes
    halt = StaleGate("halt", 60.0, lambda: 75.0, lambda: True)
    assert not halt(allowed, st, BUY, True).allowed
    shadow = StaleGate("reduce_only", 60.0, lambda: 75.0, lambda: False)(allowed, st, BUY, False)
    assert shadow.allowed and shadow.would_deny


async def test_apply_applies_a_change_of_this_sidecars_id_that_another_process_made(clock: ManualClock) -> None:
    """Two live processes given one sidecar_id: a pause pressed on the other is a change of origin A that this
    process did not make; the trader it owns is paused (it used to be skipped by origin)."""
    engine, _store, plane = make(clock, origin="A")
    engine.report_equity("t1", "acct", 1000.0, None)
    await plane.prime(0)
    assert await plane.apply([remote("pause", "acct", "t1", clock.now(), 1, origin="A")]) == 1
    assert sources(engine.traders["t1"]) == ["manual"]
