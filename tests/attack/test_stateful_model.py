"""Stateful model test: a hypothesis RuleBasedStateMachine drives a real server (in process, a ManualClock
injected, SQLite store) with interleaved equity / trade / position reports, CanTrade (with and without a
reduce-only order), configuration saves, circuit breaker creates / disables / enables, kill-switch pauses and
resumes, clock advances and restarts (the Sidecar is stopped and a new one starts on the same SQLite file;
the clock continues). After every step every trader's state is compared with a small reference model of
the rules:

- equity levels: current, peak, the day-start equity (UTC day, rolled on first use; a day that starts at 0
  takes its first positive equity), stale reports ignored except that they raise the peak; a time more than
  5 s ahead is refused, within 5 s it counts as now;
- loss limits (daily, max drawdown from peak): a breach pauses REDUCING until paused_until (0 minutes: until
  resumed), once per episode;
- consecutive losses (a configuration's threshold + cooling-off), trade ids counted once (across restarts);
- equity_floor circuit breakers (pause_trading = HALTED, reduce_only = REDUCING, once per episode, re-armed
  when the condition clears and on enable; the episode survives a restart);
- the kill switch (overlapping pauses each end at their own time; one covered by a newer one is dropped) and
  ResumeTrading (lifts every pause);
- CanTrade: no equity -> NO_EQUITY_REPORTED; the most severe pause in force decides; REDUCING lets a
  reduce-only order through, HALTED nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from tests.attack.support import LoopThread, ThreadedSidecar, figure, server_errors
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.engine.clock import ManualClock

pytestmark = pytest.mark.integration

DAY = 86_400.0
INF = float("inf")
ACTIVE, REDUCING, HALTED = t.TRADING_STATE_ACTIVE, t.TRADING_STATE_REDUCING, t.TRADING_STATE_HALTED
SEVERITY = {ACTIVE: 0, REDUCING: 1, HALTED: 2}
DAILY, MAX_DD = t.DECISION_CODE_DAILY_LOSS_LIMIT, t.DECISION_CODE_MAX_DRAWDOWN
STREAK = t.DECISION_CODE_CONSECUTIVE_LOSSES
KILL, BREAKER = t.DECISION_CODE_KILL_SWITCH, t.DECISION_CODE_CIRCUIT_BREAKER
TRADER_ACCOUNT = {"t0": "A", "t1": "A", "t2": "B", "t3": "B"}


# ---- the reference model ---------------------------------------------------------------------------------


def day_of(ts: float) -> float:
    return ts - (ts % DAY)


def pct_loss(reference: float, equity: float) -> float:
    return 0.0 if reference <= 0.0 else max(0.0, (reference - equity) / reference * 100.0)


@dataclass
class Pause:
    state: int
    until: float | None
    code: int
    source: str
    since: float

    def active(self, now: float) -> bool:
        return self.until is None or now < self.until

    def rank(self) -> tuple[int, float]:
        return SEVERITY[self.state], INF if self.until is None else self.until


@dataclass
class Limits:
    daily: float | None = 5.0
    max_dd: float | None = 20.0
    stop_minutes: int = 30
    streak: int = 0
    cooling_minutes: int = 0


@dataclass
class Breaker:
    id: str
    name: str
    floor: float
    minutes: float | None
    state: int  # HALTED (pause_trading) or REDUCING (reduce_only)
    enabled: bool = True
    tripped: set[str] = field(default_factory=set)


@dataclass
class Trader:
    account: str
    reported: bool = False
    current: float = 0.0
    peak: float = 0.0
    day_start: float = 0.0
    day_equity: float = 0.0
    boundary: float = INF
    last_at: float | None = None
    losses: int = 0
    seen: set[str] = field(default_factory=set)
    pauses: list[Pause] = field(default_factory=list)

    def effective(self, now: float) -> Pause | None:
        best = None
        for p in self.pauses:
            if p.active(now) and (best is None or p.rank() > best.rank()):
                best = p
        return best


def add_pause(tr: Trader, pause: Pause) -> None:
    for existing in tr.pauses:
        if existing.code == pause.code and existing.source == pause.source and existing.active(pause.since):
            if existing.rank() >= pause.rank():
                return
            tr.pauses.remove(existing)
            break
    tr.pauses.append(pause)


class Model:
    def __init__(self) -> None:
        self.traders: dict[str, Trader] = {}
        self.limits: dict[str, Limits] = {}
        self.breakers: dict[str, list[Breaker]] = {"A": [], "B": []}

    def get(self, trader: str) -> Trader:
        return self.traders.setdefault(trader, Trader(TRADER_ACCOUNT[trader]))

    def limits_of(self, account: str) -> Limits:
        return self.limits.get(account, Limits())

    def roll(self, tr: Trader, when: float) -> None:
        if when < tr.boundary:
            return
        day = day_of(when)
        if day != tr.day_start:
            tr.day_start, tr.day_equity = day, tr.current
        tr.boundary = day + DAY

    def tick(self, tr: Trader, now: float) -> None:
        tr.pauses = [p for p in tr.pauses if p.active(now)]
        if tr.reported:
            self.roll(tr, now)

    def loss_breaches(self, tr: Trader, now: float, limits: Limits) -> None:
        for code, limit, value in ((DAILY, limits.daily, pct_loss(tr.day_equity, tr.current)),
                                   (MAX_DD, limits.max_dd, pct_loss(tr.peak, tr.current))):
            if limit is not None and value > limit and not any(p.code == code and p.active(now) for p in tr.pauses):
                until = now + limits.stop_minutes * 60.0 if limits.stop_minutes else None
                add_pause(tr, Pause(REDUCING, until, code, "limit", now))

    def run_breakers(self, trader: str, tr: Trader, now: float) -> None:
        limits = self.limits_of(tr.account)
        for b in sorted(self.breakers[tr.account], key=lambda b: (b.name, b.id)):
            if not b.enabled:
                continue
            if not (tr.reported and tr.current < b.floor):
                b.tripped.discard(trader)
                continue
            if trader in b.tripped:
                continue
            b.tripped.add(trader)
            minutes = b.minutes if b.minutes is not None else limits.stop_minutes or None
            until = None if minutes is None else now + minutes * 60.0
            add_pause(tr, Pause(b.state, until, BREAKER, f"breaker:{b.id}", now))

    # -- operations, as the engine applies them --

    def report_equity(self, trader: str, equity: float, at: float, now: float) -> bool:
        tr = self.get(trader)
        self.tick(tr, now)
        if tr.last_at is not None and at < tr.last_at:
            if equity <= tr.peak:
                return True  # stale
            tr.peak = equity  # stale, but the equity was there: it raises the peak
            self.loss_breaches(tr, now, self.limits_of(tr.account))
            self.run_breakers(trader, tr, now)
            return True
        if not tr.reported:
            tr.current = tr.peak = tr.day_equity = equity
            tr.reported, tr.boundary, tr.day_start = True, -INF, 0.0
            self.roll(tr, at)
        else:
            self.roll(tr, at)
            tr.current, tr.peak = equity, max(tr.peak, equity)
            if tr.day_equity <= 0.0 < equity:
                tr.day_equity = equity
        tr.last_at = at
        self.loss_breaches(tr, now, self.limits_of(tr.account))
        self.run_breakers(trader, tr, now)
        return False

    def report_trade(self, trader: str, trade_id: str, pnl: float, now: float) -> bool:
        tr = self.get(trader)
        self.tick(tr, now)
        if trade_id in tr.seen:
            return True  # duplicate
        tr.seen.add(trade_id)
        if pnl < 0:
            tr.losses += 1
        elif pnl > 0:
            tr.losses = 0
        limits = self.limits_of(tr.account)
        if (limits.streak > 0 and tr.losses >= limits.streak
                and not any(p.code == STREAK and p.active(now) for p in tr.pauses)):
            until = now + limits.cooling_minutes * 60.0 if limits.cooling_minutes else None
            add_pause(tr, Pause(REDUCING, until, STREAK, "limit", now))
        self.run_breakers(trader, tr, now)
        return False

    def report_positions(self, trader: str, now: float) -> None:
        tr = self.get(trader)
        self.tick(tr, now)
        self.run_breakers(trader, tr, now)

    def can_trade(self, trader: str, reduce_only: bool, now: float) -> tuple[bool, int, int]:
        tr = self.traders.get(trader)
        if tr is None or not tr.reported:  # no tick, no breakers; the state still says what is in force
            pause = None if tr is None else tr.effective(now)
            return False, t.DECISION_CODE_NO_EQUITY_REPORTED, ACTIVE if pause is None else pause.state
        self.tick(tr, now)
        self.run_breakers(trader, tr, now)
        pause = tr.effective(now)
        if pause is None:
            return True, t.DECISION_CODE_ALLOWED, ACTIVE
        allowed = False  # the machine holds no position: a reduce_only SELL adds exposure (README "Order checks")
        return allowed, t.DECISION_CODE_ALLOWED if allowed else pause.code, pause.state

    def pause(self, trader: str, state: int, seconds: int | None, now: float) -> None:
        tr = self.get(trader)
        self.tick(tr, now)
        new = Pause(state, None if seconds is None else now + seconds, KILL, "manual", now)
        tr.pauses = [p for p in tr.pauses if not (p.source == "manual" and p.rank()[0] <= new.rank()[0]
                                                   and p.rank()[1] <= new.rank()[1])]
        tr.pauses.append(new)

    def resume(self, trader: str, now: float) -> None:
        tr = self.get(trader)
        self.tick(tr, now)
        tr.pauses = []

    def save_config(self, account: str, limits: Limits, now: float) -> None:
        self.limits[account] = limits
        for tr in self.traders.values():
            if tr.account == account:
                self.tick(tr, now)
                self.loss_breaches(tr, now, limits)

    def restart(self) -> None:
        for trader in self.traders.values():
            trader.boundary = -INF  # periods roll on first use after a restore (episodes are stored)


# ---- the machine -------------------------------------------------------------------------------------------


@dataclass
class Server:
    loop: LoopThread
    sidecar: ThreadedSidecar
    clock: ManualClock
    channel: grpc.Channel | None = None
    steps: int = 0
    restarts: int = 0
    machines: int = 0
    mismatches: int = 0

    def connect(self) -> None:
        if self.channel is not None:
            self.channel.close()
        self.channel = grpc.insecure_channel(self.sidecar.address)
        self.risk = rsg.RiskServiceStub(self.channel)
        self.admin = adg.AdminServiceStub(self.channel)


SERVER: Server | None = None
RUN = itertools.count()
traders = st.sampled_from(sorted(TRADER_ACCOUNT))
equities = st.one_of(st.sampled_from([10_000.0, 9_500.0, 9_499.0, 9_400.0, 8_000.0, 7_999.0, 12_000.0, 0.0]),
                     st.floats(5_000, 15_000).map(lambda x: round(x, 2)))


class RiskMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        assert SERVER is not None
        self.server = SERVER
        self.server.machines += 1
        self.prefix = f"m{next(RUN)}-"  # fresh trader, account and breaker names for every run
        self.model = Model()
        self.breaker_names = itertools.count()
        self.restarts = 0

    def tid(self, trader: str) -> str:
        return self.prefix + trader

    def acct(self, account: str) -> str:
        return self.prefix + account

    @property
    def now(self) -> float:
        return self.server.clock.now()

    def step(self) -> None:
        self.server.steps += 1

    # -- reports and checks --

    @rule(trader=traders, equity=equities,
          shift=st.one_of(st.none(), st.sampled_from([-7_200, -60, -1, 3, 100, 299])))
    def report_equity(self, trader: str, equity: float, shift: int | None) -> None:
        self.step()
        at = self.now if shift is None else self.now + shift
        req = rs.ReportEquityRequest(trader_id=self.tid(trader), account_id=self.acct(TRADER_ACCOUNT[trader]),
                                     equity=equity)
        if shift is not None:
            req.observed_at.seconds, req.observed_at.nanos = int(at // 1), round((at % 1) * 1e9)
            at = req.observed_at.seconds + req.observed_at.nanos / 1e9
        if at > self.now + 5.0:  # beyond max_clock_skew_s: refused, nothing changes
            with pytest.raises(grpc.RpcError) as refused:
                self.server.risk.ReportEquity(req, timeout=10)
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            return
        stale = self.model.report_equity(trader, equity, min(at, self.now), self.now)
        reply = self.server.risk.ReportEquity(req, timeout=10)
        assert reply.stale == stale

    @rule(trader=traders, trade=st.integers(0, 6), pnl=st.sampled_from([-50.0, -1.0, 0.0, 25.0]))
    def report_trade(self, trader: str, trade: int, pnl: float) -> None:
        self.step()
        duplicate = self.model.report_trade(trader, f"tr-{trade}", pnl, self.now)
        reply = self.server.risk.ReportTrade(rs.ReportTradeRequest(
            trader_id=self.tid(trader), account_id=self.acct(TRADER_ACCOUNT[trader]), trade_id=f"tr-{trade}",
            symbol="BTCUSDT", side=t.SIDE_BUY, realized_pnl=pnl), timeout=10)
        assert reply.duplicate == duplicate

    @rule(trader=traders)
    def report_positions(self, trader: str) -> None:
        self.step()
        self.model.report_positions(trader, self.now)
        self.server.risk.ReportPositions(rs.ReportPositionsRequest(
            trader_id=self.tid(trader), account_id=self.acct(TRADER_ACCOUNT[trader])), timeout=10)

    @rule(trader=traders, reduce_only=st.booleans())
    def can_trade(self, trader: str, reduce_only: bool) -> None:
        self.step()
        want = self.model.can_trade(trader, reduce_only, self.now)
        req = rs.CanTradeRequest(trader_id=self.tid(trader), account_id=self.acct(TRADER_ACCOUNT[trader]))
        if reduce_only:
            req.order.CopyFrom(t.OrderIntent(symbol="BTCUSDT", side=t.SIDE_SELL, quantity=0.01, price=50_000,
                                             reduce_only=True))
        reply = self.server.risk.CanTrade(req, timeout=10)
        assert (reply.allowed, reply.code, reply.trading_state) == want, (reply.reason, want)

    # -- operator actions --

    @rule(trader=traders, state=st.sampled_from([REDUCING, HALTED]),
          seconds=st.one_of(st.none(), st.sampled_from([60, 1_800, 7_200])))
    def pause(self, trader: str, state: int, seconds: int | None) -> None:
        self.step()
        self.model.pause(trader, state, seconds, self.now)
        req = ad.PauseTradingRequest(trader_id=self.tid(trader), account_id=self.acct(TRADER_ACCOUNT[trader]),
                                     trading_state=state, reason="model")
        if seconds is not None:
            req.duration.seconds = seconds
        self.server.admin.PauseTrading(req, timeout=10)

    @rule(trader=traders)
    def resume(self, trader: str) -> None:
        self.step()
        self.model.resume(trader, self.now)
        self.server.admin.ResumeTrading(ad.ResumeTradingRequest(
            trader_id=self.tid(trader), account_id=self.acct(TRADER_ACCOUNT[trader])), timeout=10)

    @rule(account=st.sampled_from(["A", "B"]), daily=st.sampled_from([1.0, 2.0, 5.0, 10.0]),
          stop=st.sampled_from([0, 1, 10, 30, 120]), streak=st.sampled_from([0, 2, 3]),
          cooling=st.sampled_from([0, 5, 60]))
    def save_config(self, account: str, daily: float, stop: int, streak: int, cooling: int) -> None:
        self.step()
        self.model.save_config(account, Limits(daily, 20.0, stop, streak, cooling), self.now)
        self.server.admin.SaveConfig(ad.SaveConfigRequest(config=t.RiskConfiguration(
            account_id=self.acct(account), config_id="main", is_active=True, daily_max_drawdown_percentage=daily,
            stop_trading_minutes=stop, consecutive_loss_threshold=streak, cooling_off_period_minutes=cooling)),
            timeout=10)

    @precondition(lambda self: sum(len(b) for b in self.model.breakers.values()) < 4)
    @rule(account=st.sampled_from(["A", "B"]), floor=st.sampled_from([8_000.0, 9_450.0, 11_000.0]),
          minutes=st.one_of(st.none(), st.sampled_from([5, 90])), halted=st.booleans())
    def create_breaker(self, account: str, floor: float, minutes: int | None, halted: bool) -> None:
        self.step()
        name = f"floor-{next(self.breaker_names)}"
        b = t.CircuitBreaker(name=name, account_id=self.acct(account), condition="equity_floor",
                             action="pause_trading" if halted else "reduce_only", enabled=True)
        b.parameters.update({"value": floor} if minutes is None else {"value": floor, "duration_minutes": minutes})
        reply = self.server.admin.CreateBreaker(ad.CreateBreakerRequest(breaker=b), timeout=10)
        self.model.breakers[account].append(
            Breaker(reply.breaker.id, name, floor, None if minutes is None else float(minutes),
                    HALTED if halted else REDUCING))

    @precondition(lambda self: any(self.model.breakers.values()))
    @rule(data=st.data(), enable=st.booleans())
    def toggle_breaker(self, data: st.DataObject, enable: bool) -> None:
        self.step()
        b = data.draw(st.sampled_from([b for bs in self.model.breakers.values() for b in bs]))
        if enable:
            self.server.admin.EnableBreaker(ad.EnableBreakerRequest(breaker_id=b.id), timeout=10)
            b.enabled = True
            b.tripped.clear()  # enabling (or re-enabling) re-arms
        else:
            self.server.admin.DisableBreaker(ad.DisableBreakerRequest(breaker_id=b.id), timeout=10)
            if b.enabled:
                b.tripped.clear()
            b.enabled = False

    # -- time and restarts --

    @rule(seconds=st.sampled_from([1, 59, 600, 1_799, 1_800, 1_801, 3_600, 6 * 3_600, 20 * 3_600]))
    def advance(self, seconds: int) -> None:
        self.step()
        self.server.clock.advance(seconds)

    @precondition(lambda self: self.restarts < 2)
    @rule()
    def restart(self) -> None:
        self.step()
        self.restarts += 1
        self.server.restarts += 1
        self.server.sidecar.restart()
        self.server.connect()
        self.model.restart()

    # -- the check --

    @invariant()
    def states_match_the_model(self) -> None:
        now = self.now
        for trader, tr in self.model.traders.items():
            self.model.tick(tr, now)  # GetRiskState ticks the trader on the server too
            state = self.server.risk.GetRiskState(rs.GetRiskStateRequest(
                trader_id=self.tid(trader), account_id=self.acct(tr.account)), timeout=10).state
            pause = tr.effective(now)
            until = 0.0 if pause is None or pause.until is None else pause.until
            got_until = state.paused_until.seconds + state.paused_until.nanos / 1e9
            got = (state.equity_reported, state.current_equity, state.peak_equity, state.daily_pnl,
                   state.trading_state, state.pause_code if pause else 0, state.consecutive_losses)
            want = (tr.reported, tr.current, tr.peak, tr.current - tr.day_equity,
                    ACTIVE if pause is None else pause.state, pause.code if pause else 0, tr.losses)
            if got != want or abs(got_until - until) > 1e-6:
                self.server.mismatches += 1
            assert got == want, f"{trader}: server {got} != model {want}"
            assert abs(got_until - until) <= 1e-6, f"{trader}: paused_until {got_until} != {until}"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    loop = LoopThread()
    clock = ManualClock(1_767_225_600.0 + 20 * 3_600)  # 2026-01-01 20:00 UTC: midnight is near
    sidecar = ThreadedSidecar(loop, clock, database_url=f"sqlite:///{tmp_path / 'model.db'}")
    sidecar.start()
    srv = Server(loop, sidecar, clock)
    srv.connect()
    try:
        yield srv
    finally:
        if srv.channel is not None:
            srv.channel.close()
        sidecar.stop()
        loop.close()


def test_server_follows_the_reference_model_through_reports_pauses_configs_breakers_time_and_restarts(
        server: Server) -> None:
    global SERVER
    SERVER = server
    try:
        with server_errors() as errors:
            run_state_machine_as_test(RiskMachine, settings=settings(
                max_examples=30, stateful_step_count=30, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
    finally:
        SERVER = None
    figure("model", "machine runs / steps / restarts", f"{server.machines} / {server.steps} / {server.restarts}")
    figure("model", "state mismatches with the model", server.mismatches)
    figure("model", "server errors logged", len(errors.records))
    assert server.mismatches == 0
    assert errors.lines() == []
