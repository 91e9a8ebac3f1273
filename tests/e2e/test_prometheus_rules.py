"""deploy/prometheus and deploy/grafana against the real tools and a real sidecar (issue 20, must-show 3).

- `promtool check config`, `promtool check rules` and `promtool test rules` pass (Debian's `prometheus` package;
  .ci/run installs it);
- every series that rules.yml, the series rules_test.yml feeds and asserts, and every Grafana panel and variable
  query names is one a live sidecar exports on /metrics (or a recording rule of rules.yml, or a series Prometheus
  writes itself: `up`, `ALERTS`), with label names and `le`/`method` values the scrape has;
- a real Prometheus server scrapes a real sidecar and TradeGuardTraderPaused fires after a daily-loss breach.
  The rules it loads are rules.yml with every `for:` rewritten to 2s (production holds most alerts for 1m or
  more); nothing else is changed.

Without promtool/prometheus these tests skip on a developer machine and fail under CI (CI=true).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import json_format

from tests.support.promql import (
    PROMETHEUS_SERIES,
    Exposition,
    Selector,
    grafana_variable_query,
    parse_exposition,
    selectors,
    unknown_names,
)
from tests.support.sidecar import running_sidecar, start_sidecar
from tests.support.wait import eventually_sync
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "deploy" / "prometheus"
RULES = PROM_DIR / "rules.yml"
RULES_TEST = PROM_DIR / "rules_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "tradeguard.json"
README_ANCHOR = "README.md#prometheus-alerts-and-grafana"
SCRAPE_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series
CHECKED_VALUES = {"method", "le", "code", "outcome"}  # labels whose `=` values must appear in the scrape
TRADER, ACCOUNT = "bot-1", "acct-1"
BREAKER = {"name": "drawdown-10", "account_id": "acct-1", "condition": "max_drawdown", "action": "alert",
           "parameters": {"threshold": 0.1}, "enabled": True}
BTC = t.Position(symbol="BTCUSDT", exchange="binance", side=t.SIDE_BUY, quantity=0.1, entry_price=50_000,
                 mark_price=50_000)
ALERT_TIMEOUT_S = 60.0


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        reason = f"{name} not found (Debian package prometheus)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: .ci/run installs it")
        pytest.skip(f"{reason}; apt-get install prometheus")
    return path


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True, timeout=300, cwd=cwd,
                          check=False)


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    return groups


def alerts() -> list[dict[str, Any]]:
    return [r for g in rule_groups() for r in g["rules"] if "alert" in r]


def recorded() -> set[str]:
    return {r["record"] for g in rule_groups() for r in g["rules"] if "record" in r}


# ---- promtool -------------------------------------------------------------------------------------


def test_promtool_check_rules_accepts_the_rules() -> None:
    out = promtool("check", "rules", "deploy/prometheus/rules.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in rule_groups())} rules found" in out.stdout


def test_promtool_check_config_accepts_the_scrape_config_and_its_rule_file() -> None:
    out = promtool("check", "config", "deploy/prometheus/prometheus.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 rule files found" in out.stdout


def test_promtool_unit_tests_of_every_alert_pass() -> None:
    out = promtool("test", "rules", "deploy/prometheus/rules_test.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_alert_has_a_promtool_case_where_it_fires_and_one_where_it_does_not() -> None:
    cases = [c for test in yaml.safe_load(RULES_TEST.read_text())["tests"] for c in test.get("alert_rule_test", [])]
    fires = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    names = {a["alert"] for a in alerts()}
    assert names - fires == set()
    assert names - quiet == set()


def test_a_broken_rule_makes_the_promtool_tests_fail(tmp_path: Path) -> None:
    """The unit tests assert something: TradeGuardTraderPaused on a threshold no trader reaches fails them."""
    (tmp_path / "rules.yml").write_text(RULES.read_text().replace("expr: risk_trading_paused > 0",
                                                                  "expr: risk_trading_paused > 1"))
    doc = yaml.safe_load(RULES_TEST.read_text())  # only the cases of that alert: promtool's time goes elsewhere
    doc["tests"] = [test for test in doc["tests"]
                    if any(c["alertname"] == "TradeGuardTraderPaused" for c in test.get("alert_rule_test", []))]
    assert doc["tests"]
    (tmp_path / "rules_test.yml").write_text(yaml.safe_dump(doc))
    out = promtool("test", "rules", "rules_test.yml", cwd=tmp_path)
    assert out.returncode != 0
    assert "TradeGuardTraderPaused" in out.stdout + out.stderr


def test_every_alert_has_for_severity_summary_description_and_the_readme_runbook() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Prometheus alerts and Grafana", 1)[1].split("\n### ", 1)[0]
    for alert in alerts():
        name = alert["alert"]
        assert re.fullmatch(r"\d+[smh]", str(alert.get("for", ""))), name
        assert alert["labels"]["severity"] in ("critical", "warning", "info"), name
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], name
        assert alert["annotations"]["runbook_url"] == README_ANCHOR, name
        assert f"`{name}`" in section, f"{name} is not in README's alert list"


# ---- names against a live scrape ------------------------------------------------------------------


async def live_exposition() -> Exposition:
    """A sidecar's /metrics after calls that make the labelled series exist: decisions allowed and denied, a
    daily-loss and drawdown breach, a breaker firing."""
    async with running_sidecar(metrics_listen="127.0.0.1:0") as sc, grpc.aio.insecure_channel(sc.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        await admin.CreateBreaker(ad.CreateBreakerRequest(breaker=json_format.ParseDict(BREAKER, t.CircuitBreaker())))
        await risk.CanTrade(rs.CanTradeRequest(trader_id=TRADER, account_id=ACCOUNT))  # no equity yet: denied
        await risk.ReportEquity(rs.ReportEquityRequest(trader_id=TRADER, account_id=ACCOUNT, equity=10_000))
        await risk.ReportPositions(rs.ReportPositionsRequest(trader_id=TRADER, account_id=ACCOUNT, positions=[BTC]))
        await risk.CanTrade(rs.CanTradeRequest(trader_id=TRADER, account_id=ACCOUNT))  # allowed
        # -15%: breaches the daily loss and fires the breaker
        await risk.ReportEquity(rs.ReportEquityRequest(trader_id=TRADER, account_id=ACCOUNT, equity=8_500))
        await risk.CanTrade(rs.CanTradeRequest(trader_id=TRADER, account_id=ACCOUNT))  # denied
        with urllib.request.urlopen(f"http://{sc.metrics_address}/metrics", timeout=10) as reply:
            return parse_exposition(reply.read().decode())


@pytest.fixture(scope="module")
def exposition() -> Exposition:
    exp = asyncio.run(live_exposition())  # once for the module: its own loop, closed before the tests run
    # the calls above made the labelled series the rules and panels select on
    for name in ("risk_trading_paused", "risk_limit_breaches_total", "tradeguard_breaker_firings_total",
                 "tradeguard_decisions_total", "tradeguard_rpc_duration_seconds_bucket", "risk_daily_pnl"):
        assert name in exp.labels, f"no samples of {name}"
    return exp


def rule_selectors() -> list[Selector]:
    return [s for g in rule_groups() for r in g["rules"] for s in selectors(r["expr"])]


def rules_test_selectors() -> list[Selector]:
    doc = yaml.safe_load(RULES_TEST.read_text())
    out: list[Selector] = []
    for test in doc["tests"]:
        out += [s for series in test.get("input_series", []) for s in selectors(series["series"])]
        for case in test.get("promql_expr_test", []):
            out += selectors(case["expr"])
    return out


def dashboard_queries() -> tuple[list[str], list[str]]:
    """(every panel target's expr, every variable query) of the dashboard, rows included."""
    dash = json.loads(DASHBOARD.read_text())
    panels = [p for top in dash["panels"] for p in (top, *top.get("panels", []))]
    exprs = [target["expr"] for p in panels for target in p.get("targets", [])]
    exprs += [a["expr"] for a in dash["annotations"]["list"] if "expr" in a]
    variables = [v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
                 for v in dash["templating"]["list"] if v["type"] == "query"]
    return exprs, variables


def dashboard_selectors() -> list[Selector]:
    exprs, variables = dashboard_queries()
    out = [s for e in exprs for s in selectors(e)]
    for query in variables:
        out += grafana_variable_query(query)[0]
    return out


def label_problems(refs: list[Selector], exp: Exposition, check_values: bool) -> list[str]:
    """Label names (and, with check_values, `=` values of CHECKED_VALUES) the scrape never shows for that series."""
    problems = []
    for ref in refs:
        seen = exp.labels.get(ref.name)
        if seen is None:  # recorded, Prometheus' own, or exported without samples: names only
            continue
        for label, op, value in ref.matchers:
            if label in SCRAPE_LABELS:
                continue
            if label not in seen:
                problems.append(f"{ref.name}: no label {label}")
            elif check_values and op == "=" and label in CHECKED_VALUES and value not in seen[label]:
                problems.append(f"{ref.name}: {label}={value!r} never exported (have {sorted(seen[label])})")
    return problems


def test_the_extractors_find_the_series_of_every_file() -> None:
    assert len({s.name for s in rule_selectors()}) >= 10
    assert len({s.name for s in rules_test_selectors()}) >= 10
    assert len({s.name for s in dashboard_selectors()}) >= 20


def test_rules_name_only_series_the_sidecar_exports(exposition: Exposition) -> None:
    refs = rule_selectors()
    assert unknown_names(refs, exposition, recorded()) == set()
    assert label_problems(refs, exposition, check_values=True) == []


def test_rules_tests_feed_and_assert_only_series_the_sidecar_exports(exposition: Exposition) -> None:
    refs = rules_test_selectors()
    assert unknown_names(refs, exposition, recorded()) == set()
    assert label_problems(refs, exposition, check_values=False) == []


def test_grafana_panels_and_variables_name_only_series_the_sidecar_exports(exposition: Exposition) -> None:
    refs = dashboard_selectors()
    assert unknown_names(refs, exposition, recorded=()) == set()  # the dashboard works without the rules loaded
    assert label_problems(refs, exposition, check_values=True) == []
    for query in dashboard_queries()[1]:
        selected, label = grafana_variable_query(query)
        for ref in selected:
            assert label in SCRAPE_LABELS or label in exposition.labels.get(ref.name, {}) \
                or ref.name in PROMETHEUS_SERIES, query


def test_a_misspelt_series_would_be_caught(exposition: Exposition) -> None:
    refs = selectors('risk_trading_pause > 0 or tradeguard_rpc_duration_seconds{method="CanTrade"} '
                     'or tradeguard_rpc_duration_seconds_bucket{method="CanTrade",le="0.0001234"} '
                     'or risk_drawdown{trader="x"}')
    assert unknown_names(refs, exposition) == {"risk_trading_pause", "tradeguard_rpc_duration_seconds"}
    assert label_problems(refs, exposition, check_values=True) == [
        "tradeguard_rpc_duration_seconds_bucket: le='0.0001234' never exported (have ['+Inf', '0.0001', '0.00025', "
        "'0.0005', '0.001', '0.0025', '0.005', '0.01', '0.025', '0.05', '0.1', '0.25', '0.5', '1.0', '2.5', "
        "'2.5e-05', '5e-05'])",
        "risk_drawdown: no label trader",
    ]


# ---- the deploy files fit together ------------------------------------------------------------------


def test_compose_mounts_the_files_where_the_configs_expect_them() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    prometheus, grafana = compose["prometheus"], compose["grafana"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/tradeguard.yml").read_text())
    dashboards_path = provider["providers"][0]["options"]["path"]
    assert f"./deploy/grafana/dashboards:{dashboards_path}:ro" in grafana["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert ":?" in grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"]  # no default admin password
    datasource = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    scrape = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape["job_name"] == "tradeguard"  # TradeGuardSidecarDown selects up{job="tradeguard"}
    assert scrape["static_configs"][0]["targets"] == ["tradeguard:9464"]  # the compose service's metrics_listen
    assert compose["tradeguard"]["environment"]["TRADEGUARD_METRICS_LISTEN"].endswith(":9464")


def test_every_dashboard_panel_queries_the_dashboard_datasource_and_has_a_unique_id() -> None:
    dash = json.loads(DASHBOARD.read_text())
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    for p in panels:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and all(tg["expr"].strip() for tg in p["targets"]), p["title"]
    titles = {p["title"] for p in panels}
    assert {"CanTrade decisions by code", "CanTrade latency quantiles", "Traders paused", "Daily PnL",
            "Drawdown from peak equity", "Risk limit breaches since the sidecar started", "Write queue",
            "Persistence failures", "Control state age"} <= titles


# ---- a real Prometheus ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def api(base: str, path: str, **params: str) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"http://{base}{path}{query}", timeout=5) as reply:
        body = json.loads(reply.read())
    assert body["status"] == "success", body
    return body["data"]


def reachable(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{base}/-/ready", timeout=2) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def test_rules_with_short_holds_rewrites_every_for_and_nothing_else(tmp_path: Path) -> None:
    path = rules_with_short_holds(tmp_path)
    short, original = yaml.safe_load(path.read_text())["groups"], rule_groups()
    assert [r.get("for") for g in short for r in g["rules"] if "alert" in r] == ["2s"] * len(alerts())
    strip = [{k: v for k, v in r.items() if k != "for"} for g in original for r in g["rules"]]
    assert [{k: v for k, v in r.items() if k != "for"} for g in short for r in g["rules"]] == strip


def rules_with_short_holds(tmp_path: Path) -> Path:
    """rules.yml with every alert's `for:` set to 2s (still pending first, then firing)."""
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = "2s"
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@contextlib.contextmanager
def prometheus(tmp_path: Path, target: str) -> Iterator[str]:
    """A Prometheus server on a free loopback port (its host:port) scraping `target` every second with the
    short-hold rules."""
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(rules_with_short_holds(tmp_path))]
    config["scrape_configs"][0]["scrape_interval"] = "1s"
    config["scrape_configs"][0]["static_configs"] = [{"targets": [target]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen([tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def firing(base: str, name: str) -> list[dict[str, Any]]:
    return [a for a in api(base, "/api/v1/alerts")["alerts"]
            if a["labels"]["alertname"] == name and a["state"] == "firing"]


def query(base: str, expr: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = api(base, "/api/v1/query", query=expr)["result"]
    return result


def test_a_real_prometheus_fires_trader_paused_and_the_breach_count_alert_after_a_breach(tmp_path: Path) -> None:
    """`tradeguard serve` in its own process (so process_start_time_seconds is its own start: the breach-count rules
    count a fresh sidecar's first breaches from it), scraped every second by a real Prometheus."""
    metrics = f"127.0.0.1:{free_port()}"
    log = tmp_path / "prometheus.log"
    with start_sidecar(tmp_path, "--metrics-listen", metrics, "--database-url", "memory") as sp, \
            grpc.insecure_channel(sp.address) as ch:
        risk, admin = rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)
        admin.CreateBreaker(ad.CreateBreakerRequest(breaker=json_format.ParseDict(BREAKER, t.CircuitBreaker())))
        risk.ReportEquity(rs.ReportEquityRequest(trader_id=TRADER, account_id=ACCOUNT, equity=10_000))
        risk.ReportPositions(rs.ReportPositionsRequest(trader_id=TRADER, account_id=ACCOUNT, positions=[BTC]))
        assert risk.CanTrade(rs.CanTradeRequest(trader_id=TRADER, account_id=ACCOUNT)).allowed
        with prometheus(tmp_path, metrics) as base:
            assert eventually_sync(lambda: reachable(base), timeout=30, interval=0.2), log.read_text()
            # scraped (bot-1 ACTIVE) and the rule group evaluated over that scrape: nothing fires yet
            assert eventually_sync(lambda: query(base, "tradeguard:traders_paused:sum") != [] and
                                   query(base, f'risk_trading_paused{{trader_id="{TRADER}"}}') != [],
                                   timeout=30, interval=0.2), log.read_text()
            assert [float(r["value"][1]) for r in query(base, "tradeguard:traders_paused:sum")] == [0.0]
            assert firing(base, "TradeGuardTraderPaused") == []
            assert firing(base, "TradeGuardTraderBreachingRepeatedly") == []
            assert query(base, 'up{job="tradeguard"}')[0]["value"][1] == "1"

            # -25%: daily loss (limit 5%), max drawdown (limit 20%) and the 10% drawdown breaker, in one report
            breach = risk.ReportEquity(rs.ReportEquityRequest(trader_id=TRADER, account_id=ACCOUNT, equity=7_500))
            assert breach.state.trading_state != t.TRADING_STATE_ACTIVE
            started = time.monotonic()
            assert eventually_sync(lambda: firing(base, "TradeGuardTraderPaused") != [],
                                   timeout=ALERT_TIMEOUT_S, interval=0.2), api(base, "/api/v1/alerts")
            seconds = time.monotonic() - started
            assert eventually_sync(lambda: firing(base, "TradeGuardTraderBreachingRepeatedly") != [],
                                   timeout=ALERT_TIMEOUT_S, interval=0.2), api(base, "/api/v1/alerts")

            [paused] = firing(base, "TradeGuardTraderPaused")
            assert paused["labels"]["trader_id"] == TRADER
            assert paused["labels"]["severity"] == "warning"
            assert paused["labels"]["job"] == "tradeguard"
            assert paused["annotations"]["summary"] == f"Trader {TRADER} is paused on {metrics}"
            assert paused["annotations"]["runbook_url"] == README_ANCHOR
            [repeated] = firing(base, "TradeGuardTraderBreachingRepeatedly")
            assert repeated["annotations"]["summary"] == f"Trader {TRADER} breached risk limits 3 times in 1h"
            # the breach counters scraped, with the rules the log lines name
            breaches = query(base, f'risk_limit_breaches_total{{trader_id="{TRADER}"}}')
            assert {r["metric"]["rule"] for r in breaches} == {"daily_loss", "max_drawdown", "breaker:drawdown-10"}
            # a healthy store and a reachable sidecar: those alerts stay quiet
            assert firing(base, "TradeGuardStoreUnhealthy") == []
            assert firing(base, "TradeGuardSidecarDown") == []
            print(f"TradeGuardTraderPaused firing {seconds:.1f} s after the breach (scrape and evaluation every 1 s, "
                  "for: 2s)")


GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$instance": ".*", "$trader": ".*"}


def test_every_dashboard_query_runs_on_a_real_prometheus_and_the_main_panels_have_data(tmp_path: Path) -> None:
    """Each panel's PromQL, Grafana's variables filled in as "All" would, is valid for Prometheus itself (the name
    checks above parse leniently), and the panels over the calls made here show data."""
    metrics = f"127.0.0.1:{free_port()}"
    log = tmp_path / "prometheus.log"
    with start_sidecar(tmp_path, "--metrics-listen", metrics, "--database-url", "memory") as sp, \
            grpc.insecure_channel(sp.address) as ch:
        risk = rsg.RiskServiceStub(ch)
        with prometheus(tmp_path, metrics) as base:
            assert eventually_sync(lambda: reachable(base), timeout=30, interval=0.2), log.read_text()
            risk.ReportEquity(rs.ReportEquityRequest(trader_id=TRADER, account_id=ACCOUNT, equity=10_000))
            risk.CanTrade(rs.CanTradeRequest(trader_id=TRADER, account_id=ACCOUNT))
            # counters appear with their first increment: scraped once before the calls that rate() should see
            assert eventually_sync(lambda: query(base, 'tradeguard_decisions_total{code="ALLOWED"} > 0') != [],
                                   timeout=30, interval=0.2), log.read_text()
            for equity in (10_000, 9_900, 9_000):  # the last one breaches the daily loss limit
                risk.ReportEquity(rs.ReportEquityRequest(trader_id=TRADER, account_id=ACCOUNT, equity=equity))
                risk.CanTrade(rs.CanTradeRequest(trader_id=TRADER, account_id=ACCOUNT))
            # scraped before and after the calls: rate() sees them
            assert eventually_sync(lambda: query(base, "increase(tradeguard_decisions_total[1m]) > 0") != [] and
                                   query(base, "risk_trading_paused == 1") != [], timeout=30, interval=0.2), \
                log.read_text()
            exprs, _ = dashboard_queries()
            empty = []
            for expr in exprs:
                filled = expr
                for name, value in GRAFANA_VARIABLES.items():
                    filled = filled.replace(name, value)
                assert "$" not in filled, expr
                if query(base, filled) == []:  # api() asserts status "success": a syntax error fails here
                    empty.append(expr)
    with_data = [e for e in exprs if e not in empty]
    for series in ("tradeguard_decisions_total", 'method="CanTrade"', "risk_trading_paused", "risk_daily_pnl",
                   "risk_drawdown", "risk_limit_breaches_total", "tradeguard_store_queue_depth",
                   "tradeguard_control_state_age_seconds"):
        assert any(series in e for e in with_data), f"no panel over {series} has data; empty: {empty}"
    print(f"{len(with_data)} of {len(exprs)} dashboard queries have data; empty: {empty}")
