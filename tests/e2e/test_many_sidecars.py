"""Many sidecars, one account (issue 17, "What it must show" 1, 2 and 4): real `tradeguard serve` processes on one
fresh PostgreSQL database (tests/support/cluster.py), each trader first reported to the sidecar that then owns it.

Propagation is measured per sidecar from the moment the caller has the change's answer to the moment the effect is
visible on the other sidecar: the arrival of the WatchRiskState update (streams opened beforehand) where the effect is
a trader's state, else the first answer of GetFeatureFlags / ListConfigs polled every 5 ms that shows it. The tables
are printed (p50 / p99 / max per kind); the issue's bound, max <= 1 s, is asserted; its target (p99 <= 250 ms with 10
sidecars) is printed next to the measured p99, not asserted (a shared 2-core machine).

Select with `-k many_sidecars`.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from tests.support.cluster import (
    CONTROL_HEALTH,
    Member,
    Propagation,
    Watch,
    changes_in_a_round,
    control_changes_round,
    new_exposure,
    open_watches,
    own_traders,
    running_cluster,
    state_is,
    summary,
)
from tests.support.wait import eventually
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import types_pb2 as t

pytestmark = pytest.mark.e2e

ACCOUNT = "acct-many"
BOUND_S = 1.0  # the bound: in force on every sidecar within 1 s
TARGET_P99_S = 0.25  # the target with 10 sidecars on this machine (printed, not asserted)
ROUNDS = 3
HALTED, REDUCING, ACTIVE = t.TRADING_STATE_HALTED, t.TRADING_STATE_REDUCING, t.TRADING_STATE_ACTIVE
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def report(capsys: pytest.CaptureFixture[str], title: str, text: str) -> None:
    with capsys.disabled():
        print(f"\n{title}\n{text}")


async def can_trade(member: Member, trader: str, account: str = ACCOUNT,
                    order: t.OrderIntent | None = None) -> rs.CanTradeResponse:
    answer: rs.CanTradeResponse = await member.risk.CanTrade(
        rs.CanTradeRequest(trader_id=trader, account_id=account, order=order or new_exposure()), timeout=5)
    return answer


async def test_many_sidecars_changes_through_one_are_in_force_on_all_ten_within_a_second(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running_cluster(tmp_path, pg_url, 10) as cluster:
        traders = await own_traders(cluster, ACCOUNT)
        watches = await open_watches(cluster, traders, ACCOUNT)
        prop = Propagation()
        try:
            for r in range(ROUNDS):
                await control_changes_round(cluster, traders, watches, ACCOUNT, prop, r)
        finally:
            await asyncio.gather(*(w.close() for w in watches.values()))

    p50, p99, top = summary(prop.all())
    report(capsys, f"propagation to the 9 other sidecars of 10 ({len(prop.all())} samples, {ROUNDS} rounds): "
                   f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms (target <= {TARGET_P99_S * 1000:.0f} ms), "
                   f"max {top * 1000:.1f} ms (bound <= {BOUND_S * 1000:.0f} ms)", prop.table())
    assert len(prop.all()) == ROUNDS * changes_in_a_round(10)[1]
    assert top <= BOUND_S, prop.table()


async def test_many_sidecars_account_pause_stops_every_trader_on_every_sidecar_within_a_second_new_ones_too(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running_cluster(tmp_path, pg_url, 5, metrics=True) as cluster:
        # Traders of the account on sidecars 0-3; sidecar 4 serves none of them yet. Another account on sidecar 1.
        traders = await own_traders(cluster, ACCOUNT, members=range(4))
        other = "other-1"
        await cluster[1].risk.ReportEquity(rs.ReportEquityRequest(trader_id=other, account_id="acct-other",
                                                                   equity=10_000), timeout=10)
        watches = await open_watches(cluster, traders, ACCOUNT)
        other_watch = await Watch(cluster[1], other, "acct-other").open()
        # bot-1's own pause (REDUCING): it combines with the account's (the most severe wins) and outlives it.
        await cluster[1].admin.PauseTrading(ad.PauseTradingRequest(
            trader_id=traders[1], account_id=ACCOUNT, trading_state=REDUCING, reason="its own"), timeout=5)
        prop = Propagation()
        try:
            marks = {i: w.mark for i, w in watches.items()}
            paused = await cluster[0].admin.PauseTrading(ad.PauseTradingRequest(
                account_id=ACCOUNT, trading_state=HALTED, reason="incident: stop the account"), timeout=5)
            answered = time.monotonic()
            assert paused.scope_pause.account_id == ACCOUNT and paused.scope_pause.trading_state == HALTED
            assert paused.control_state_version > 0
            arrivals = await asyncio.gather(*(w.wait_for(state_is(HALTED), after=marks[i], timeout=5.0)
                                              for i, w in watches.items()))
            assert None not in arrivals, arrivals
            delays = [prop.add("account pause", answered, a) for a in arrivals if a is not None]
            assert max(delays) <= BOUND_S, delays

            # Stopped: no new exposure on any of the sidecars; the other account trades on.
            for i, trader in traders.items():
                answer = await can_trade(cluster[i], trader)
                assert not answer.allowed and answer.trading_state == HALTED, answer
                assert answer.code == t.DECISION_CODE_KILL_SWITCH and answer.control_state_version > 0, answer

                # The version an answer carries is the prefix of control_changes applied there: it reaches the
                # pause's once the sidecar has read the row back (the origin too: its listener reads its own row).
                async def decided_on_the_pause(i: int = i, trader: str = trader) -> bool:
                    answer = await cluster[i].risk.CanTrade(rs.CanTradeRequest(trader_id=trader, account_id=ACCOUNT))
                    return answer.control_state_version >= paused.control_state_version

                assert await eventually(decided_on_the_pause, timeout=BOUND_S), i
            assert (await can_trade(cluster[1], other, "acct-other")).allowed

            # A trader first seen after the pause, on a sidecar that serves traders of the account (2) and on one
            # that served none (4): HALTED from its first call. Sidecar 4 is asked once it has the pause's version.
            assert await eventually(lambda: _version_at_least(cluster[4], paused.control_state_version),
                                    timeout=BOUND_S + 0.5)
            prop.add("account pause", answered, time.monotonic())  # sidecar 4: when its version said so (upper bound)
            for m, late in ((cluster[2], "late-2"), (cluster[4], "late-4")):
                first = await m.risk.ReportEquity(rs.ReportEquityRequest(trader_id=late, account_id=ACCOUNT,
                                                                         equity=5_000), timeout=10)
                assert first.state.trading_state == HALTED, first
                answer = await can_trade(m, late)
                assert not answer.allowed and answer.code == t.DECISION_CODE_KILL_SWITCH, answer

            # The every-account pause (pressed on sidecar 3) stops the other account too.
            mark = other_watch.mark
            everything = await cluster[3].admin.PauseTrading(ad.PauseTradingRequest(
                all_accounts=True, trading_state=HALTED, reason="firm-wide stop"), timeout=5)
            answered = time.monotonic()
            assert everything.scope_pause.all_accounts
            arrival = await other_watch.wait_for(state_is(HALTED), after=mark, timeout=5.0)
            assert arrival is not None
            assert prop.add("every-account pause", answered, arrival) <= BOUND_S

            # Lifting the account's pause leaves the every-account pause in force...
            await cluster[2].admin.ResumeTrading(ad.ResumeTradingRequest(account_id=ACCOUNT), timeout=5)
            still = await asyncio.gather(*(can_trade(cluster[i], tr) for i, tr in traders.items()))
            assert all(not a.allowed and a.trading_state == HALTED for a in still), still
            # ...and lifting that leaves each trader's own pause: bot-1 reduces only, the others trade.
            marks = {i: w.mark for i, w in watches.items()}
            await cluster[4].admin.ResumeTrading(ad.ResumeTradingRequest(all_accounts=True), timeout=5)
            answered = time.monotonic()
            for i, w in watches.items():
                arrival = await w.wait_for(state_is(REDUCING if i == 1 else ACTIVE), after=marks[i], timeout=5.0)
                assert arrival is not None, (i, w.updates[-1][1])
                assert prop.add("every-account resume", answered, arrival) <= BOUND_S
            assert (await can_trade(cluster[0], traders[0])).allowed
            assert (await can_trade(cluster[1], other, "acct-other")).allowed
            reducing = await can_trade(cluster[1], traders[1])
            assert not reducing.allowed and reducing.trading_state == REDUCING
        finally:
            await asyncio.gather(other_watch.close(), *(w.close() for w in watches.values()))
    report(capsys, "account / every-account kill switch across 5 sidecars", prop.table())


async def _version_at_least(member: Member, version: int) -> bool:
    seen = await member.metric("tradeguard_control_state_version")
    return seen is not None and seen >= version


async def test_many_sidecars_cut_database_link_reports_stale_control_state_and_misses_nothing_once_back(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    max_age = 2.0
    async with running_cluster(tmp_path, pg_url, 2, proxied=[1], metrics=True, member_settings={1: {
            "control_state_max_age_seconds": max_age, "control_state_stale_action": "reduce_only"}}) as cluster:
        origin, cut = cluster[0], cluster[1]
        assert cut.proxy is not None
        await origin.risk.ReportEquity(rs.ReportEquityRequest(trader_id="bot-0", account_id=ACCOUNT, equity=10_000))
        for trader, account in (("bot-1", ACCOUNT), ("bot-1b", ACCOUNT), ("other-1", "acct-other")):
            await cut.risk.ReportEquity(rs.ReportEquityRequest(trader_id=trader, account_id=account, equity=10_000),
                                        timeout=10)
        held = t.Position(symbol="BTCUSDT", side=t.SIDE_BUY, quantity=0.02, entry_price=50_000, mark_price=50_000)
        await cut.risk.ReportPositions(rs.ReportPositionsRequest(trader_id="bot-1", account_id=ACCOUNT,
                                                                 positions=[held]), timeout=10)
        assert await cut.health_status(CONTROL_HEALTH) == SERVING
        assert (await can_trade(cut, "bot-1")).allowed

        cut.proxy.cut()  # every connection of sidecar 1 to the database, its LISTEN connection included
        cut_at = time.monotonic()
        assert await eventually(lambda: _health_is(cut, NOT_SERVING), timeout=10), "control health still SERVING"
        noticed = time.monotonic() - cut_at
        first_age = await cut.metric("tradeguard_control_state_age_seconds")
        assert first_age is not None
        assert await eventually(lambda: _age_above(cut, first_age + 1.0), timeout=10), "the age does not grow"

        # Changes made through sidecar 0 meanwhile: sidecar 1 cannot hear them.
        await origin.admin.SaveConfig(ad.SaveConfigRequest(config=t.RiskConfiguration(
            account_id=ACCOUNT, config_id="during-cut", is_active=True, max_order_notional=12_345.0)), timeout=5)
        await origin.admin.PauseTrading(ad.PauseTradingRequest(account_id="acct-other", trading_state=HALTED,
                                                               reason="during the cut"), timeout=5)

        # Past control_state_max_age_seconds: reduce_only. New exposure is denied, a reducing order still passes.
        answers: list[rs.CanTradeResponse] = []

        async def denied_as_stale() -> bool:
            answers.append(await can_trade(cut, "bot-1"))
            return answers[-1].code == t.DECISION_CODE_CONTROL_STATE_STALE

        assert await eventually(denied_as_stale, timeout=max_age + 10, interval=0.05), answers[-1]
        stale_after = time.monotonic() - cut_at
        stale = answers[-1]
        assert not stale.allowed and stale.trading_state == REDUCING, stale
        assert stale_after >= max_age - 1.0  # not before the max age (last heard <= 1 s before the cut)
        reduce = await can_trade(cut, "bot-1", order=t.OrderIntent(symbol="BTCUSDT", side=t.SIDE_SELL,
                                                                   quantity=0.01, price=50_000.0))
        assert reduce.allowed, reduce
        assert (await origin.risk.CanTrade(rs.CanTradeRequest(trader_id="bot-0", account_id=ACCOUNT,
                                                              order=new_exposure()))).allowed  # sidecar 0 hears

        await origin.admin.SetFeatureFlags(ad.SetFeatureFlagsRequest(
            flags=t.FeatureFlags(enable_risk_enforcement=False)), timeout=5)
        last = await origin.admin.PauseTrading(ad.PauseTradingRequest(
            trader_id="bot-1b", account_id=ACCOUNT, trading_state=REDUCING, reason="during the cut"), timeout=5)
        assert (await cut.admin.GetFeatureFlags(ad.GetFeatureFlagsRequest())).flags.enable_risk_enforcement

        cut.proxy.restore()
        restored_at = time.monotonic()
        assert await eventually(lambda: _health_is(cut, SERVING), timeout=15), "control health never SERVING again"

        async def caught_up() -> bool:
            configs = (await cut.admin.ListConfigs(ad.ListConfigsRequest(account_id=ACCOUNT))).configs
            flags = (await cut.admin.GetFeatureFlags(ad.GetFeatureFlagsRequest())).flags
            b = (await cut.risk.GetRiskState(rs.GetRiskStateRequest(trader_id="bot-1b", account_id=ACCOUNT))).state
            o = (await cut.risk.GetRiskState(rs.GetRiskStateRequest(trader_id="other-1", account_id="acct-other")))
            return (any(c.config_id == "during-cut" for c in configs) and not flags.enable_risk_enforcement
                    and b.trading_state == REDUCING and o.state.trading_state == HALTED)

        assert await eventually(caught_up, timeout=15), "a change made during the cut was missed"
        caught = time.monotonic() - restored_at
        fresh = await can_trade(cut, "bot-1")
        assert fresh.code != t.DECISION_CODE_CONTROL_STATE_STALE and fresh.allowed, fresh
        assert fresh.control_state_version >= last.control_state_version
        age = await cut.metric("tradeguard_control_state_age_seconds")
        assert age is not None and age < max_age
    report(capsys, "control state over a cut database link (sidecar 1 of 2)",
           f"NOT_SERVING {noticed:.2f} s after the cut; new exposure denied CONTROL_STATE_STALE {stale_after:.2f} s "
           f"after it (control_state_max_age_seconds={max_age:g}); every change made during the cut applied "
           f"{caught:.2f} s after the link returned")


async def _health_is(member: Member, status: int) -> bool:
    return await member.health_status(CONTROL_HEALTH) == status


async def _age_above(member: Member, value: float) -> bool:
    age = await member.metric("tradeguard_control_state_age_seconds")
    return age is not None and age > value


async def test_many_sidecars_cluster_kills_one_member_by_pid_and_cuts_only_the_proxied_members_database(
    tmp_path: Path, pg_url: str
) -> None:
    """The support the tests above stand on (tests/support/cluster.py): distinct ids, SIGKILL of one pid, a proxy
    that takes one member's database away and gives it back."""
    async with running_cluster(tmp_path, pg_url, 3, proxied=[2]) as cluster:
        assert [m.sidecar_id for m in cluster] == ["sc-0", "sc-1", "sc-2"]
        assert len({m.pid for m in cluster}) == 3 and cluster[2].proxy is not None and cluster[0].proxy is None
        assert all(f"sidecar_id='{m.sidecar_id}'" in m.log() for m in cluster)

        assert cluster[1].kill() == -signal.SIGKILL
        assert not cluster[1].alive and cluster[0].alive and cluster[2].alive

        cluster[2].proxy.cut()
        assert await eventually(lambda: _health_is(cluster[2], NOT_SERVING), timeout=10)
        assert await cluster[0].health_status(CONTROL_HEALTH) == SERVING
        cluster[2].proxy.restore()
        assert await eventually(lambda: _health_is(cluster[2], SERVING), timeout=15)

