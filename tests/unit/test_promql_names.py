"""The PromQL name extractor and the exposition parser that tests/e2e/test_prometheus_rules.py relies on."""

from __future__ import annotations

import pytest

from tests.support.promql import (
    PromQLSyntaxError,
    Selector,
    grafana_variable_query,
    metric_names,
    parse_exposition,
    selectors,
    series_names,
    unknown_names,
)


def test_functions_aggregations_grouping_labels_and_keywords_are_not_metric_names() -> None:
    expr = """
      1 - (
        sum by (job, instance) (rate(tradeguard_rpc_duration_seconds_bucket{method="CanTrade",le="0.001"}[5m]))
        /
        sum without (le) (rate(tradeguard_rpc_duration_seconds_count{method="CanTrade"}[1h:1m] offset -5m))
      ) > bool 14.4 * 1e-2
      and on (instance) group_left (version) tradeguard_build_info
      unless ignoring (trader_id) risk_trading_paused @ 1609746000
    """
    assert metric_names(expr) == {"tradeguard_rpc_duration_seconds_bucket", "tradeguard_rpc_duration_seconds_count",
                                  "tradeguard_build_info", "risk_trading_paused"}


def test_label_matchers_are_parsed_with_their_operators_and_unquoted_values() -> None:
    got = selectors(r'risk_limit_breaches_total{trader_id!~"bot-\\d+", rule="breaker:fast drop",} > 0')
    assert got == [Selector("risk_limit_breaches_total", (("trader_id", "!~", r"bot-\d+"),
                                                           ("rule", "=", "breaker:fast drop")))]


def test_strings_numbers_and_durations_are_never_names() -> None:
    expr = 'label_replace(vector(0x1F), "dst", "risk_drawdown", "src", "(.*)") + count_values(`le`, up) + .5 + Inf'
    assert metric_names(expr) == {"up"}


def test_recording_rule_names_with_colons_and_name_matchers_are_names() -> None:
    assert metric_names('tradeguard:cantrade_slo_errors:ratio_rate5m > 0.144 and {__name__="risk_drawdown"}') == \
        {"tradeguard:cantrade_slo_errors:ratio_rate5m", "risk_drawdown"}


def test_grafana_variables_stand_where_promql_has_values() -> None:
    expr = ('sum by (code) (rate(tradeguard_decisions_total{instance=~"$instance", code=~"${code:regex}"}'
            '[$__rate_interval]))')
    assert selectors(expr) == [Selector("tradeguard_decisions_total", (("instance", "=~", "$instance"),
                                                                       ("code", "=~", "${code:regex}")))]


def test_grafana_label_values_queries_give_the_selector_and_the_label() -> None:
    assert grafana_variable_query('label_values(risk_trading_paused{instance=~"$instance"}, trader_id)') == \
        ([Selector("risk_trading_paused", (("instance", "=~", "$instance"),))], "trader_id")
    assert grafana_variable_query("label_values(instance)") == ([], "instance")
    assert grafana_variable_query("query_result(up)") == ([Selector("up")], None)


@pytest.mark.parametrize("bad", ['risk_drawdown{trader_id="x"', "rate(x[5m)", "risk_drawdown ? 1", '{job="x"}'])
def test_malformed_expressions_are_refused_not_guessed(bad: str) -> None:
    with pytest.raises(PromQLSyntaxError):
        selectors(bad)


EXPOSITION = """\
# HELP risk_limit_breaches_total Risk limit breaches, by trader and rule.
# TYPE risk_limit_breaches_total counter
risk_limit_breaches_total{rule="daily_loss",trader_id="t1"} 1.0
# HELP tradeguard_breaker_firings_total Circuit breaker firings, by breaker id.
# TYPE tradeguard_breaker_firings_total counter
# HELP tradeguard_rpc_duration_seconds Server-side duration.
# TYPE tradeguard_rpc_duration_seconds histogram
tradeguard_rpc_duration_seconds_bucket{method="CanTrade",le="0.001"} 2.0
tradeguard_rpc_duration_seconds_bucket{method="CanTrade",le="+Inf"} 2.0
tradeguard_rpc_duration_seconds_count{method="CanTrade"} 2.0
tradeguard_rpc_duration_seconds_sum{method="CanTrade"} 0.0005
# TYPE tradeguard_persist_duration_seconds histogram
# TYPE risk_drawdown gauge
risk_drawdown{trader_id="a \\"quoted\\", id"} 50.0
# TYPE tradeguard_store_healthy gauge
tradeguard_store_healthy 1.0
"""


def test_exposition_names_follow_the_type_suffix_rules_even_without_samples() -> None:
    exp = parse_exposition(EXPOSITION)

    assert {"risk_limit_breaches_total", "tradeguard_breaker_firings_total", "tradeguard_rpc_duration_seconds_bucket",
            "tradeguard_rpc_duration_seconds_count", "tradeguard_rpc_duration_seconds_sum",
            "tradeguard_persist_duration_seconds_bucket", "risk_drawdown", "tradeguard_store_healthy"} <= exp.names
    assert "tradeguard_rpc_duration_seconds" not in exp.names  # a histogram's own name selects nothing
    assert "risk_limit_breaches" not in exp.names  # nor does a counter's name without _total
    assert exp.labels["tradeguard_rpc_duration_seconds_bucket"] == {"method": {"CanTrade"}, "le": {"0.001", "+Inf"}}
    assert exp.labels["risk_drawdown"] == {"trader_id": {'a \\"quoted\\", id'}}


def test_series_names_by_type() -> None:
    assert series_names("x_total", "counter") == {"x_total"}
    assert series_names("x", "gauge") == {"x"}
    assert series_names("x", "untyped") == {"x"}
    assert series_names("x", "histogram") == {"x_bucket", "x_count", "x_sum"}
    assert series_names("x", "summary") == {"x", "x_count", "x_sum"}
    assert series_names("x", "info") == {"x_info"}


def test_unknown_names_leave_out_exported_recorded_and_prometheus_own_series() -> None:
    exp = parse_exposition(EXPOSITION)
    referenced = selectors("risk_trading_paused > 0 or risk_drawdown or up == 0 or ALERTS or tradeguard:x:sum "
                           "or risk_limit_breaches or tradeguard_breaker_firings_total")
    assert unknown_names(referenced, exp, recorded={"tradeguard:x:sum"}) == {"risk_trading_paused",
                                                                              "risk_limit_breaches"}
