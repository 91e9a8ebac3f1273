"""The reference model of the stateful attack (tests/attack/test_stateful_model.py), written from the README
and issue 13 alone (not from the server code).

It answers one question per CanTrade: must this request be denied? It never demands an allow. Where the README
leaves a reading open, the model keeps what every reading agrees on:

- a pause is *certain* when every reading starts it at the same time and ends it at the same time; *soft*
  when only some readings have it (a soft pause never demands a denial, except at the very instant it starts
  when every reading denies then: `instant`). A new pause of a rule is certain only when no pause of that rule,
  certain or soft, is in force (README: "a report during the pause does not extend it"), so two readings
  never drift apart silently;
- shadow mode (README "Shadow mode", issue 4): `allowed` is true and `would_deny` must say whether it would
  have been a denial; pauses born in shadow are virtual (soft once enforcement returns: "enforce nothing"), but
  a breaker episode that began in shadow does not use the breaker up: back in enforcement, a breaker whose
  condition holds must deny (issue 4);
- overlapping kill switches each end at their own time; ResumeTrading lifts every pause (README "Kill switch",
  issue 6); a zero duration / zero stop minutes / zero cooling-off means "until resumed" or is rejected
  (issue 5); a breaker without duration_minutes uses the configuration's stop time, 0 = until resumed;
- a loss limit is checked on every equity report and at a configuration save (README); a value equal to its
  limit passes; percentages within 1e-6 of the limit are a reading left open (soft);
- a day whose start equity is 0 takes the first positive equity of the day as its start (issue 8);
- reports older than the last one are ignored (stale); observed_at / closed_at more than ~5 s ahead are
  rejected or taken as "now", never kept in the future (issue 7);
- consecutive losses: the streak both in report order and in closed_at order must reach the threshold for a
  denial to be demanded; windowed conditions judge by closed_at in any report order (issue 9);
- orders: the part of an order that does not reduce a known position (quantities compared, issue 2 and 22)
  must pass max_order_notional, the symbol's max_leverage and max_position_size_percentage (valued at the
  lower of mark and order price), in any state; REDUCING lets through reduce_only orders and opposite orders
  no larger than the position (netting across venues is left open: the model nets, the lenient reading);
  HALTED nothing. Symbols and exchanges are compared case-insensitively (issue 10);
- a restart keeps everything the store had (states, pauses, trade ids, configurations, breakers and their
  episodes, flags set by a call); breaker episodes survive a restart (issue 12). While the stored state is not
  loaded (database down at start), only reduce-only / reducing orders may be allowed (issue 13 "What it must
  show" 2, default policy reduce-only); reports made meanwhile are replayed on top of the stored state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tradeguard.v1 import types_pb2 as t

DAY = 86_400.0
INF = float("inf")
SKEW_S = 5.0  # "~5 s": a timestamp further ahead is rejected or taken as now
PCT_TOL = 1e-6
ACTIVE, REDUCING, HALTED = t.TRADING_STATE_ACTIVE, t.TRADING_STATE_REDUCING, t.TRADING_STATE_HALTED
SEVERITY: dict[int, int] = {ACTIVE: 0, REDUCING: 1, HALTED: 2}
DAILY, MAX_DD = t.DECISION_CODE_DAILY_LOSS_LIMIT, t.DECISION_CODE_MAX_DRAWDOWN
STREAK = t.DECISION_CODE_CONSECUTIVE_LOSSES
KILL, BREAKER = t.DECISION_CODE_KILL_SWITCH, t.DECISION_CODE_CIRCUIT_BREAKER
NO_EQUITY, NOT_LOADED = t.DECISION_CODE_NO_EQUITY_REPORTED, t.DECISION_CODE_STATE_NOT_LOADED
ORDER_CHECK = t.DECISION_CODE_ORDER_NOTIONAL_LIMIT  # the model names order checks by this one code


def day_of(ts: float) -> float:
    return ts - (ts % DAY)


def pct_loss(reference: float, equity: float) -> float:
    return 0.0 if reference <= 0.0 else max(0.0, (reference - equity) / reference * 100.0)


def above(value: float, limit: float) -> bool:
    """Clearly above the limit (a value equal to its limit passes, in decimals or with a tolerance)."""
    return value > limit * (1 + 1e-9) + 1e-9


@dataclass
class Pause:
    state: int
    until: float | None
    code: int
    source: str
    since: float
    certain: bool = True
    instant: bool = False  # soft, but every reading denies at `since`
    epoch: int | None = None  # born in shadow period `epoch`: would_deny while that period lasts

    def active(self, now: float) -> bool:
        return self.until is None or now < self.until

    def required(self, now: float, shadow_epoch: int | None) -> bool:
        if not self.active(now):
            return False
        if self.certain or (self.instant and now == self.since):
            return True
        return shadow_epoch is not None and self.epoch == shadow_epoch


@dataclass
class Limits:
    daily: float | None = 5.0
    max_dd: float | None = 20.0
    stop_minutes: int = 30
    streak: int = 0
    cooling_minutes: int = 0
    max_order_notional: float | None = None
    max_position_pct: float | None = None
    max_leverage: float | None = None  # symbol BTCUSDT override


@dataclass
class Breaker:
    id: str
    name: str
    kind: str  # "equity_floor" or "loss_streak_in_window"
    floor: float = 0.0
    trade_limit: int = 0
    lookback_s: float = 0.0
    minutes: float | None = None
    state: int = HALTED
    enabled: bool = True
    episode: dict[str, str] = field(default_factory=dict)  # trader -> "enforced" | "shadow" | "maybe"


@dataclass
class Trade:
    closed_at: float
    pnl: float
    order: int


@dataclass
class Trader:
    account: str
    reported: bool = False
    current: float = 0.0
    peak: float = 0.0
    day_start: float = 0.0
    day_equity: float = 0.0
    day_low: float | None = None  # a back-dated report from before the day: another reading of its start
    boundary: float = INF
    last_at: float | None = None
    losses: int = 0  # report order
    trades: list[Trade] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    pauses: list[Pause] = field(default_factory=list)
    position: float = 0.0  # signed BTCUSDT quantity (long > 0), one venue at a time
    mark: float = 0.0

    def closed_order_losses(self) -> int:
        n = 0
        for tr in sorted(self.trades, key=lambda x: (x.closed_at, x.order), reverse=True):
            if tr.pnl < 0:
                n += 1
            elif tr.pnl > 0:
                break
        return n


@dataclass
class Order:
    buy: bool
    quantity: float
    price: float
    reduce_only: bool
    leverage: float


@dataclass
class Verdict:
    deny: bool  # a denial is demanded
    code: int  # the rule that demands it (ALLOWED when none)
    why: str


class Model:
    def __init__(self, accounts: dict[str, str]) -> None:
        self.accounts = accounts
        self.traders: dict[str, Trader] = {}
        self.limits: dict[str, Limits] = {}
        self.breakers: dict[str, list[Breaker]] = {a: [] for a in sorted(set(accounts.values()))}
        self.enforced = True
        self.epoch = 0  # shadow periods so far
        self.unloaded = False  # the stored state is not merged yet (database down at start)
        self.unloaded_since = 0.0

    @property
    def shadow_epoch(self) -> int | None:
        return None if self.enforced else self.epoch

    def get(self, trader: str) -> Trader:
        return self.traders.setdefault(trader, Trader(self.accounts[trader]))

    def limits_of(self, account: str) -> Limits:
        return self.limits.get(account, Limits())

    # -- pauses --

    def start_pause(self, tr: Trader, now: float, state: int, until: float | None, code: int, source: str,
                    agreed: bool = True) -> None:
        """A rule starts a pause now. `agreed`: every reading starts it here."""
        same = [p for p in tr.pauses if p.code == code and p.source == source and p.active(now)]
        if any(p.certain for p in same):
            return  # not extended
        if not self.enforced:
            tr.pauses.append(Pause(state, until, code, source, now, certain=False,
                                   epoch=self.epoch if agreed and not same else None))
            return
        if same or not agreed:
            tr.pauses.append(Pause(state, until, code, source, now, certain=False, instant=agreed))
            return
        tr.pauses.append(Pause(state, until, code, source, now))

    def soften(self, tr: Trader) -> None:
        for p in tr.pauses:
            p.certain, p.instant = False, False

    def roll(self, tr: Trader, when: float) -> None:
        if when < tr.boundary:
            return
        day = day_of(when)
        if day != tr.day_start:
            tr.day_start, tr.day_equity, tr.day_low = day, tr.current, None
        tr.boundary = day + DAY

    def tick(self, tr: Trader, now: float) -> None:
        tr.pauses = [p for p in tr.pauses if p.active(now)]
        if tr.reported:
            self.roll(tr, now)

    def loss_breaches(self, tr: Trader, now: float, limits: Limits, soft: bool = False) -> None:
        if not tr.reported:
            return
        until = None if limits.stop_minutes == 0 else now + limits.stop_minutes * 60.0
        starts = (tr.day_equity,) if tr.day_low is None else (tr.day_equity, tr.day_low)
        daily = [pct_loss(s, tr.current) for s in starts]
        drawdown = pct_loss(tr.peak, tr.current)
        for code, limit, low, high in ((DAILY, limits.daily, min(daily), max(daily)),
                                       (MAX_DD, limits.max_dd, drawdown, drawdown)):
            if limit is None or high <= limit - PCT_TOL:
                continue
            sure = low > limit + PCT_TOL and not soft
            self.start_pause(tr, now, REDUCING, until, code, "limit", agreed=sure)

    def streak_breach(self, tr: Trader, now: float, limits: Limits, losing: bool, soft: bool = False) -> None:
        if limits.streak <= 0:
            return
        by_report, by_close = tr.losses, tr.closed_order_losses()
        if max(by_report, by_close) < limits.streak:
            return
        sure = losing and min(by_report, by_close) >= limits.streak and not soft
        until = None if limits.cooling_minutes == 0 else now + limits.cooling_minutes * 60.0
        self.start_pause(tr, now, REDUCING, until, STREAK, "limit", agreed=sure)

    def condition(self, b: Breaker, tr: Trader, now: float) -> tuple[bool, bool]:
        """(surely holds, may hold) for breaker b and trader tr now."""
        if b.kind == "equity_floor":
            holds = tr.reported and tr.current < b.floor
            return holds, holds
        inside = [x for x in tr.trades if now - b.lookback_s + 1.0 < x.closed_at <= now]
        n = 0
        for x in sorted(inside, key=lambda x: (x.closed_at, x.order), reverse=True):
            if x.pnl < 0:
                n += 1
            elif x.pnl > 0:
                break
        maybe = sum(1 for x in tr.trades if x.pnl < 0 and now - b.lookback_s - 1.0 <= x.closed_at <= now + SKEW_S)
        return n >= b.trade_limit, maybe >= b.trade_limit

    def run_breakers(self, trader: str, tr: Trader, now: float) -> None:
        limits = self.limits_of(tr.account)
        for b in self.breakers[tr.account]:
            if not b.enabled:
                continue
            sure, maybe = self.condition(b, tr, now)
            episode = b.episode.get(trader)
            if not maybe:
                b.episode.pop(trader, None)  # cleared: re-armed
                continue
            minutes = b.minutes if b.minutes is not None else limits.stop_minutes
            until = None if minutes == 0 else now + minutes * 60.0
            source = f"breaker:{b.id}"
            if not sure:
                if episode is None:
                    self.start_pause(tr, now, b.state, until, BREAKER, source, agreed=False)
                b.episode[trader] = "maybe"
                continue
            if episode == "enforced" or (episode is not None and not self.enforced):
                continue
            if episode == "maybe":
                continue  # some readings are inside an episode already
            # None, or an episode that began in shadow (it does not use the breaker up, issue 4)
            self.start_pause(tr, now, b.state, until, BREAKER, source, agreed=True)
            b.episode[trader] = "enforced" if self.enforced else "shadow"

    # -- operations --

    def report_equity(self, trader: str, equity: float, at: float, now: float) -> None:
        tr = self.get(trader)
        self.tick(tr, now)
        if tr.last_at is not None and at < tr.last_at:
            self.run_breakers(trader, tr, now)
            return  # stale
        if not tr.reported:
            tr.current = tr.peak = tr.day_equity = equity
            tr.reported, tr.boundary, tr.day_start = True, -INF, 0.0
            self.roll(tr, at)
        else:
            self.roll(tr, at)
            tr.current, tr.peak = equity, max(tr.peak, equity)
            if at < tr.day_start:  # from before the day started: its start may be read as this equity
                tr.day_low = equity if tr.day_low is None else min(tr.day_low, equity)
        if tr.day_equity <= 0 < equity:
            tr.day_equity = equity  # a day that starts at 0 starts at its first positive equity
        tr.last_at = at
        self.roll(tr, now)
        self.loss_breaches(tr, now, self.limits_of(tr.account))
        self.run_breakers(trader, tr, now)

    def report_trade(self, trader: str, trade_id: str, pnl: float, closed_at: float, now: float) -> bool:
        tr = self.get(trader)
        self.tick(tr, now)
        if trade_id in tr.seen:
            self.run_breakers(trader, tr, now)
            return True
        tr.seen.add(trade_id)
        tr.trades.append(Trade(min(closed_at, now), pnl, len(tr.trades)))
        if pnl < 0:
            tr.losses += 1
        elif pnl > 0:
            tr.losses = 0
        self.streak_breach(tr, now, self.limits_of(tr.account), losing=pnl < 0)
        self.run_breakers(trader, tr, now)
        return False

    def report_positions(self, trader: str, quantity: float, mark: float, now: float) -> None:
        tr = self.get(trader)
        self.tick(tr, now)
        tr.position, tr.mark = quantity, mark
        self.run_breakers(trader, tr, now)

    def order_checks(self, tr: Trader, order: Order | None, limits: Limits) -> str | None:
        """Why the non-reducing part of the order must be denied, or None."""
        if order is None:
            return None
        sign = 1.0 if order.buy else -1.0
        opposite = tr.position * sign < 0
        excess = max(0.0, order.quantity - abs(tr.position)) if opposite else order.quantity
        if excess <= 1e-12:
            return None
        if limits.max_order_notional is not None and above(excess * order.price, limits.max_order_notional):
            return f"notional of the non-reducing part {excess * order.price} > {limits.max_order_notional}"
        if limits.max_leverage is not None and above(max(order.leverage, 1.0), limits.max_leverage):
            return f"leverage {order.leverage} > {limits.max_leverage} on a non-reducing part {excess}"
        if limits.max_position_pct is not None:
            after = abs(tr.position + sign * order.quantity)
            value = after * min(order.price, tr.mark or order.price)
            if above(value, limits.max_position_pct / 100.0 * max(tr.current, 0.0)):
                return f"position after {after} ({value}) > {limits.max_position_pct}% of {tr.current}"
        return None

    def reduces(self, tr: Trader, order: Order | None) -> bool:
        if order is None:
            return False
        if order.reduce_only:
            return True
        sign = 1.0 if order.buy else -1.0
        return tr.position * sign < 0 and order.quantity <= abs(tr.position) * (1 + 1e-9)

    def can_trade(self, trader: str, order: Order | None, now: float) -> Verdict:
        tr = self.get(trader)
        self.tick(tr, now)
        self.run_breakers(trader, tr, now)
        if not tr.reported:
            return Verdict(True, NO_EQUITY, "no equity reported")
        if self.unloaded and not self.reduces(tr, order):
            return Verdict(True, NOT_LOADED, "stored state not loaded: new exposure denied (reduce-only default)")
        # not loaded yet: the reduce-only policy may let a reducing order past a stored pause it cannot know
        required = [p for p in tr.pauses if p.required(now, self.shadow_epoch)
                    and not (self.unloaded and p.since < self.unloaded_since)]
        if required:
            worst = max(required, key=lambda p: SEVERITY[p.state])
            if worst.state == HALTED or not self.reduces(tr, order):
                return Verdict(True, worst.code, f"{worst.source} pause {worst.state} since {worst.since} "
                                                 f"until {worst.until} certain={worst.certain}")
        why = self.order_checks(tr, order, self.limits_of(tr.account))
        if why is not None:
            return Verdict(True, ORDER_CHECK, why)
        return Verdict(False, t.DECISION_CODE_ALLOWED, "")

    def pause(self, trader: str, state: int, seconds: float | None, now: float, certain: bool = True) -> None:
        tr = self.get(trader)
        self.tick(tr, now)
        tr.pauses.append(Pause(state, None if not seconds else now + seconds, KILL, "manual", now, certain=certain))

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
                self.streak_breach(tr, now, limits, losing=False, soft=True)

    def set_enforcement(self, on: bool, now: float) -> None:
        if on == self.enforced:
            return
        self.enforced = on
        if not on:
            self.epoch += 1
            return
        for tr in self.traders.values():  # a reading that re-checks at the switch: soft pauses
            self.tick(tr, now)
            self.loss_breaches(tr, now, self.limits_of(tr.account), soft=True)

    def recheck_soft(self, now: float) -> None:
        """A reading re-checks every trader here (a restart, a merge): soft pauses."""
        for tr in self.traders.values():
            self.tick(tr, now)
            self.loss_breaches(tr, now, self.limits_of(tr.account), soft=True)
            self.streak_breach(tr, now, self.limits_of(tr.account), losing=False, soft=True)

    def restart(self, now: float, unloaded: bool = False) -> None:
        for tr in self.traders.values():
            tr.boundary = -INF  # periods roll on first use after a restore
        self.recheck_soft(now)
        if unloaded:
            self.unloaded, self.unloaded_since = True, now

    def merged(self, now: float) -> None:
        self.unloaded = False
        self.recheck_soft(now)
