"""The view of an account's traders for the account-wide limits (issue 17; the math: engine.account_limits).

What the view holds, for every account whose active configuration sets an account-wide limit:
- the traders this sidecar owns: read live from the engine's memory at every CanTrade (figures cached per trader
  state version, so a call costs a few dictionary reads per trader of the account on this sidecar); which they are
  is indexed per limited account (at each round, and kept current by `on_state_changed`, an engine listener);
- the traders other sidecars own (cluster mode = PostgreSQL): their risk_state rows, read every
  `account_view_seconds` by ONE SELECT for all such accounts (only the columns the sums need), on a connection and a
  thread of the view's own (never the event loop, never the store's database thread: a writer batch stuck on the
  database cannot hold the view, nor the view the writer). A trader this sidecar holds in memory is never taken
  from its row (the live state is newer). Each row's updated_at is kept (TraderFigures.at);
- the account's peak summed equity: account_marks, shared by every sidecar: raised with a GREATEST upsert when this
  sidecar has seen a higher sum, and read back, in the same transaction and cadence as the rows.

The view's age, shown in every account check ("view 0.3s old"), is the time since the last successful read of
the other sidecars' rows (0 in single-sidecar modes, where every trader is local). A remote trader's numbers are
behind by that age plus its owner's publishing delay (the owner's store writer queue: milliseconds under normal
load, see the report in tests/integration/test_account_limits_cluster.py).

Single-sidecar modes (SQLite, memory): no reads; the view is the engine's memory, the peak kept in memory (it
starts again from the summed equity after a restart).

Breaches: a daily-loss or drawdown breach found at a CanTrade or at a periodic round (every account_view_seconds,
so a breach caused by the other sidecars' traders is found within about one round without any call here) pauses
the account through `AccountPauser.pause_account` (HALTED until resumed, the reason with the numbers), once per
episode: the episode of a rule ends when its value is back below the limit. Until then CanTrade denies new exposure
with ACCOUNT_LIMIT (reducing orders pass), also after an operator resumed the account.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, Table, func, select

from ..engine import periods
from ..engine.account_limits import (
    AccountFigures,
    AccountVerdict,
    Breach,
    OrderEffect,
    TraderFigures,
    aggregate,
    exposure_checks,
    figures_of_row,
    figures_of_state,
    for_order,
    loss_checks,
    view_text,
)
from ..engine.engine import RiskEngine
from ..engine.events import StateChanged
from ..engine.limits import Limits
from ..engine.state import SEVERITY, TraderState
from ..engine.types import CheckResult, OrderIntent, OrderSplit, Side, TradingState
from ..store.dbthread import Worker, create_store_engine
from ..store.models import AccountMark, RiskState
from .tasks import cancel_all

log = logging.getLogger("tradeguard.account")

STATE: Table = RiskState.__table__  # type: ignore[assignment]
MARKS: Table = AccountMark.__table__  # type: ignore[assignment]
ROW_COLUMNS = ("trader_id", "account_id", "current_equity", "day_start_equity", "day_start", "equity_reported",
               "positions", "pending_orders", "updated_at", "version")
READ_TIMEOUT_S = 5.0  # a round whose read takes longer is given up (the view ages; the next round tries again)


class AccountPauser(Protocol):
    """Pauses every trader of an account (the control plane's account scope: every sidecar, later traders too)."""

    async def pause_account(
        self, account_id: str, state: TradingState, until: float | None, reason: str, actor: str
    ) -> object: ...


class LocalAccountPauser:
    """A stand-in for the control plane: pauses this engine's traders of the account (kill switch)."""

    def __init__(self, engine: RiskEngine) -> None:
        self.engine = engine
        self.calls: list[tuple[str, TradingState, float | None, str, str]] = []

    async def pause_account(
        self, account_id: str, state: TradingState, until: float | None, reason: str, actor: str
    ) -> object:
        self.calls.append((account_id, state, until, reason, actor))
        now = self.engine.clock.now()
        for st in list(self.engine.traders.values()):
            if st.account_id == account_id:
                self.engine.pause(st.trader_id, account_id, state, None if until is None else max(until - now, 0.0),
                                  f"{reason} (by {actor})")
        return None


class PlaneAccountPauser:
    """The control plane's account kill switch (every sidecar, traders that appear later too), called once per
    breach episode by each sidecar that sees it: skipped while the account already has a pause in force at least as
    severe (so one breach seen by N sidecars writes one pause, not N, when they see it one after another)."""

    def __init__(self, plane: Any) -> None:
        self.plane = plane  # cluster.plane.ControlPlane (not imported: the plane imports the store and services)

    async def pause_account(
        self, account_id: str, state: TradingState, until: float | None, reason: str, actor: str
    ) -> object:
        current = self.plane.scope(account_id)
        now = self.plane.engine.clock.now()
        if current is not None and current.active(now) and SEVERITY[current.state] >= SEVERITY[state] and (
                current.until is None or (until is not None and current.until >= until)):
            return current
        return await self.plane.pause_account(account_id, state, until, reason, actor)


# ---- the other sidecars' traders (cluster mode) ------------------------------------------------------

Rows = list[dict[str, Any]]


def read_accounts(conn: Connection, accounts: list[str], raise_peaks: dict[str, float], now: float
                  ) -> tuple[Rows, dict[str, float]]:
    """In one transaction: raise the peaks in `raise_peaks` (GREATEST, PostgreSQL), then the risk_state rows of
    `accounts` (one SELECT, the columns in ROW_COLUMNS) and their account_marks peaks."""
    if raise_peaks:
        from sqlalchemy.dialects import postgresql

        stmt = postgresql.insert(MARKS)
        stmt = stmt.on_conflict_do_update(
            index_elements=["account_id"],
            set_={"peak_equity": func.greatest(MARKS.c.peak_equity, stmt.excluded.peak_equity),
                  "updated_at": stmt.excluded.updated_at},
            where=stmt.excluded.peak_equity > MARKS.c.peak_equity,
        )
        conn.execute(stmt, [{"account_id": a, "peak_equity": p, "updated_at": now} for a, p in raise_peaks.items()])
    rows = [dict(r) for r in conn.execute(
        select(*(STATE.c[name] for name in ROW_COLUMNS)).where(STATE.c.account_id.in_(accounts))).mappings()]
    peaks = {a: float(p) for a, p in conn.execute(
        select(MARKS.c.account_id, MARKS.c.peak_equity).where(MARKS.c.account_id.in_(accounts)))}
    return rows, peaks


class RemoteSource:
    """The view's own connection (a small engine) and thread to the shared PostgreSQL database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: Engine | None = None
        self._worker: Worker | None = None

    def _read(self, accounts: list[str], raise_peaks: dict[str, float], now: float) -> tuple[Rows, dict[str, float]]:
        if self._engine is None:
            self._engine = create_store_engine(self.url)
        with self._engine.begin() as conn:
            return read_accounts(conn, accounts, raise_peaks, now)

    async def read(self, accounts: list[str], raise_peaks: dict[str, float], now: float
                   ) -> tuple[Rows, dict[str, float]]:
        if self._worker is None:
            self._worker = Worker("tradeguard-account-view")
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(
            asyncio.wrap_future(self._worker.submit(self._read, accounts, raise_peaks, now), loop=loop),
            READ_TIMEOUT_S)

    def close(self) -> None:
        if self._worker is not None:
            engine = self._engine
            self._worker.submit(lambda: engine.dispose() if engine is not None else None)
            self._worker.shutdown(wait=False)
            self._worker = None


# ---- the view ----------------------------------------------------------------------------------------

class AccountView:
    """See the module docstring. `checks` is the engine's account_checks hook; `run` the periodic rounds."""

    def __init__(
        self,
        engine: RiskEngine,
        pauser: AccountPauser,
        interval_s: float = 0.5,
        source: RemoteSource | None = None,
        actor: str = "account_limits",
    ) -> None:
        self.engine = engine
        self.pauser = pauser
        self.interval_s = interval_s
        self.source = source
        self.actor = actor
        self.remote: dict[str, dict[str, TraderFigures]] = {}  # account -> trader -> figures (other sidecars')
        self._row_cache: dict[str, tuple[int, float, TraderFigures | None]] = {}  # trader -> (version, day, figures)
        self.peaks: dict[str, float] = {}  # account -> the peak summed equity known
        self._written_peaks: dict[str, float] = {}  # what account_marks is known to hold
        self.read_at: float | None = None  # the last successful read (cluster mode)
        self.read_seconds = 0.0  # how long that read took
        self.read_failures = 0
        self._local: dict[str, set[str]] = {}  # account -> ids of this engine's traders of it
        # trader -> (state version, day, figures) of the local traders
        self._figures: dict[str, tuple[int, float, TraderFigures | None]] = {}
        self._today = self._tomorrow = 0.0
        self.episodes: dict[str, set[str]] = {}  # account -> the breach rules in progress (paused once)
        # account -> (sums key, limits, view text, loss checks, the no-order verdict): see _verdict
        self._verdicts: dict[str, tuple[tuple[float, ...], Limits, str, tuple[CheckResult, ...], AccountVerdict]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self.pauses = 0  # pause_account calls made

    # ---- the hook (CanTrade, on the event loop) ----------------------------------------------------

    def checks(
        self, st: TraderState, order: OrderIntent | None, split: OrderSplit | None, limits: Limits, now: float
    ) -> tuple[CheckResult, ...]:
        """The account-wide checks of a CanTrade (engine.RiskEngine.account_checks)."""
        account = st.account_id
        local = self._local.get(account)
        if local is None:  # an account limited since the last round: indexed once, then kept by on_state_changed
            local = self._local[account] = {t for t, s in self.engine.traders.items() if s.account_id == account}
        local.add(st.trader_id)
        effect = None
        if order is not None:
            adding = order.quantity if split is None else split.adding
            notional = order.quantity * order.price
            effect = OrderEffect(adding * order.price, notional if order.side is Side.BUY else -notional)
        verdict = self._verdict(account, limits, now, effect)
        if verdict.breaches or account in self.episodes:
            self._breached(account, verdict.breaches)
        return verdict.checks

    def on_state_changed(self, event: StateChanged) -> None:
        """An engine listener: a trader of an indexed account that changed is one of its local traders (a trader
        that reported equity counts before its first CanTrade)."""
        ids = self._local.get(event.state.account_id)
        if ids is not None:
            ids.add(event.state.trader_id)

    def figures(self, account: str) -> AccountFigures:
        """The account's sums now: local traders live, the others as last read."""
        return aggregate(self._all_figures(account))

    def age(self, now: float) -> float:
        """Seconds since the last read of the other sidecars' traders (0 in single-sidecar modes)."""
        if self.source is None:
            return 0.0
        return float("inf") if self.read_at is None else max(0.0, now - self.read_at)

    def today(self, now: float) -> float:
        """The start of the current day (engine.periods; recomputed once a day)."""
        if now >= self._tomorrow or now < self._today:
            self._today = periods.day_start(now, self.engine.reset_offset_s)
            self._tomorrow = self._today + periods.DAY
        return self._today

    def _all_figures(self, account: str) -> Iterable[TraderFigures]:
        today = self.today(self.engine.clock.now())
        traders = self.engine.traders
        cache = self._figures
        local = self._local.get(account) or set()
        gone = []
        for trader_id in local:
            st = traders.get(trader_id)
            if st is None or st.account_id != account:
                gone.append(trader_id)
                continue
            seen = cache.get(trader_id)
            if seen is None or seen[0] != st.version or seen[1] != today:
                seen = cache[trader_id] = (st.version, today, figures_of_state(st, today))
            if seen[2] is not None:
                yield seen[2]
        for trader_id in gone:
            local.discard(trader_id)
            cache.pop(trader_id, None)
        for trader_id, f in self.remote.get(account, {}).items():
            if trader_id not in traders:
                yield f

    def _verdict(self, account: str, limits: Limits, now: float, effect: OrderEffect | None) -> AccountVerdict:
        """The verdict; the loss checks and the no-order exposure checks are reused while the sums, the peak, the
        limits and the view's age (to 0.1 s) stay the same (formatting them is most of the cost)."""
        sums = aggregate(self._all_figures(account))
        peak = self.peaks.get(account, 0.0)
        if sums.traders and sums.equity > peak:
            peak = self.peaks[account] = sums.equity
        age = round(self.age(now), 1)
        key = (sums.equity, sums.day_start_equity, sums.daily_pnl, sums.gross_notional, sums.net_notional,
               sums.traders, peak, age)
        cached = self._verdicts.get(account)
        if cached is None or cached[0] != key or cached[1] is not limits:
            view = view_text(sums.traders, age)
            losses, breaches = loss_checks(sums, peak, limits, view)
            idle = AccountVerdict((*losses, *exposure_checks(sums, limits, view, None)), breaches)
            cached = self._verdicts[account] = (key, limits, view, losses, idle)
        _key, _limits, view, losses, idle = cached
        if effect is None:
            return idle
        return AccountVerdict((*for_order(losses, effect), *exposure_checks(sums, limits, view, effect)),
                              idle.breaches)

    # ---- breaches ----------------------------------------------------------------------------------

    def _breached(self, account: str, breaches: Iterable[Breach]) -> None:
        """Pause the account for each breach not already in an episode; end the episodes of rules no longer
        breached."""
        now_rules = {b.rule for b in breaches}
        episodes = self.episodes.get(account, set())
        for rule in list(episodes):
            if rule not in now_rules:
                episodes.discard(rule)
                log.warning("account %s: %s back below its limit: the episode ended", account, rule)
        for breach in breaches:
            if breach.rule in episodes:
                continue
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # (no event loop: a synchronous caller, tests) the next round pauses
                log.warning("account %s: %s breached, no event loop to pause on", account, breach.rule)
                continue
            episodes.add(breach.rule)
            log.warning("RISK LIMIT BREACHED account=%s rule=%s value=%.4f limit=%.4f: pausing every trader of the "
                        "account: %s", account, breach.rule, breach.value, breach.limit, breach.text,
                        extra={"account_id": account, "rule": breach.rule, "value": breach.value,
                               "limit": breach.limit})
            task = loop.create_task(self._pause(account, breach))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if episodes:
            self.episodes[account] = episodes
        else:
            self.episodes.pop(account, None)

    async def _pause(self, account: str, breach: Breach) -> None:
        self.pauses += 1
        reason = f"ACCOUNT_LIMIT {breach.rule}: {breach.text}"
        try:
            await self.pauser.pause_account(account, TradingState.HALTED, None, reason, self.actor)
        except Exception:
            log.exception("account %s: pausing on %s failed; the next round tries again", account, breach.rule)
            self.episodes.get(account, set()).discard(breach.rule)

    # ---- rounds ------------------------------------------------------------------------------------

    def limited_accounts(self) -> dict[str, Limits]:
        return {a: lim for a, lim in self.engine.account_limits.items() if lim.account_limited}

    async def refresh(self) -> None:
        """One round: re-index the local traders, read the other sidecars' (cluster mode), judge every limited
        account (a breach pauses it)."""
        limited = self.limited_accounts()
        local: dict[str, set[str]] = {a: set() for a in limited}
        for st in list(self.engine.traders.values()):
            ids = local.get(st.account_id)
            if ids is not None:
                ids.add(st.trader_id)
        self._local = local
        for trader_id in [t for t in self._figures if t not in self.engine.traders]:
            del self._figures[trader_id]
        if not limited:
            self.remote.clear()
            self.episodes.clear()
            return
        if self.source is not None:
            await self._read(sorted(limited))
        now = self.engine.clock.now()
        for account, limits in limited.items():
            verdict = self._verdict(account, limits, now, None)
            self._breached(account, verdict.breaches)
        for account in [a for a in self.episodes if a not in limited]:
            del self.episodes[account]

    async def _read(self, accounts: list[str]) -> None:
        assert self.source is not None
        loop = asyncio.get_running_loop()
        raise_peaks = {a: p for a in accounts if (p := self.peaks.get(a, 0.0)) > self._written_peaks.get(a, 0.0)}
        started = loop.time()
        now = self.engine.clock.now()
        try:
            rows, peaks = await self.source.read(accounts, raise_peaks, now)
        except Exception as exc:
            self.read_failures += 1
            if self.read_failures == 1 or self.read_failures % 100 == 0:
                log.warning("account view: reading the other sidecars' traders failed (%s: %s); the view ages "
                            "(failures: %d)", type(exc).__name__, exc, self.read_failures)
            return
        if self.read_failures:
            log.info("account view: reading again after %d failed rounds", self.read_failures)
            self.read_failures = 0
        self.read_seconds = loop.time() - started
        self.read_at = now
        today = self.today(now)
        remote: dict[str, dict[str, TraderFigures]] = {a: {} for a in accounts}
        cache = self._row_cache
        seen: set[str] = set()
        for row in rows:
            trader_id = row["trader_id"]
            seen.add(trader_id)
            known = cache.get(trader_id)
            if known is None or known[0] != row["version"] or known[1] != today:
                known = cache[trader_id] = (row["version"], today, figures_of_row(row, today))
            if known[2] is not None and row["account_id"] in remote:
                remote[row["account_id"]][trader_id] = known[2]
        for trader_id in [t for t in cache if t not in seen]:
            del cache[trader_id]
        self.remote = remote
        for account in accounts:
            stored = peaks.get(account)
            if stored is not None:
                self._written_peaks[account] = stored
                if stored > self.peaks.get(account, 0.0):
                    self.peaks[account] = stored

    async def run(self) -> None:
        """Rounds every interval_s until cancelled."""
        while True:
            try:
                await self.refresh()
            except Exception:
                log.exception("account view round failed; the next one tries again")
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self._runner is not None:
            await cancel_all([self._runner], "account view")
            self._runner = None
        for task in list(self._tasks):
            task.cancel()
        if self.source is not None:
            self.source.close()
