"""Names stored before they were normalized (README "Names"): a breaker scope or a symbol override saved as
`btcusdt` / `Binance` still applies to the normalized `BTCUSDT` on `binance` once loaded."""

from __future__ import annotations

from tradeguard.v1 import types_pb2 as t
from tradeguard_server.api.config_rules import limits_from_config
from tradeguard_server.api.convert import position_from_msg
from tradeguard_server.engine.breakers import Evaluator
from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.engine.engine import RiskEngine
from tradeguard_server.engine.limits import Limits
from tradeguard_server.services.breakers import BreakerService
from tradeguard_server.store.memory import MemoryStore
from tradeguard_server.store.records import BreakerRecord

T0 = 1_767_268_800.0


def test_a_stored_breaker_scope_in_another_spelling_fires_for_the_normalized_position() -> None:
    clock = ManualClock(T0)
    evaluator = Evaluator()
    breakers = BreakerService(evaluator, MemoryStore(clock=clock.now), clock=clock)
    engine = RiskEngine(clock, breakers=evaluator)
    breakers.load([BreakerRecord("b1", "dd", "", "a", "max_drawdown", "close_position", {"threshold": 0.1},
                                 symbols=["btcusdt"], exchanges=["Binance"])])
    engine.report_equity("t", "a", 10_000.0, None)
    engine.report_positions("t", "a", [position_from_msg(t.Position(
        symbol="BtcUsdt", exchange="BINANCE", side=t.SIDE_BUY, quantity=0.1, entry_price=50_000, mark_price=50_000))])

    outcome = engine.report_equity("t", "a", 8_900.0, None)

    assert (breakers.records["b1"].symbols, breakers.records["b1"].exchanges) == (["BTCUSDT"], ["binance"])
    assert [f.breaker_id for f in outcome.firings] == ["b1"]


def test_a_stored_symbol_override_in_lower_case_applies_to_the_symbol() -> None:
    cfg = t.RiskConfiguration(config_id="c", account_id="a", symbol_configs=[
        t.SymbolRiskConfiguration(symbol="btcusdt", max_leverage=5)], correlation_groups=[
        t.CorrelationGroup(name="majors", symbols=["btcusdt", "EthUsdt"])])

    limits = limits_from_config(cfg, Limits())

    assert limits.for_symbol("BTCUSDT") is not None and limits.for_symbol("btcusdt") is None
    assert limits.group_of("ETHUSDT") == frozenset({"BTCUSDT", "ETHUSDT"})
