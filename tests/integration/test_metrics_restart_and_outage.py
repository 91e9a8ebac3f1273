"""The seed's metrics across a restart and a database outage (issue 19), on the real PostgreSQL:
- per-trader series are back at start from the loaded state, before any trader calls;
- a database that is down at start counts in risk_persistence_failures_total, and tradeguard_store_healthy reads 0
  while health says the store is NOT_SERVING;
- a breaker firing counts in risk_limit_breaches_total with rule `breaker:<name>`.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.support.databases import closed_port
from tests.support.pg import fresh_database
from tests.support.sidecar import running_sidecar
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t

pytestmark = pytest.mark.integration

METRICS = {"metrics_listen": "127.0.0.1:0"}


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_database("tradeguard_metrics") as url:
        yield url


def scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): float(s.value)
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def eventually(check: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


async def test_per_trader_series_are_back_at_start_before_any_trader_calls(pg_url: str) -> None:
    async with running_sidecar(database_url=pg_url, enable_persistence=True) as sc, \
            grpc.aio.insecure_channel(sc.address) as ch:
        risk = rsg.RiskServiceStub(ch)
        await risk.ReportEquity(rs.ReportEquityRequest(trader_id="bot-1", account_id="acct", equity=10_000))
        await risk.ReportEquity(rs.ReportEquityRequest(trader_id="bot-1", account_id="acct", equity=9_900))
        await risk.ReportEquity(rs.ReportEquityRequest(trader_id="bot-2", account_id="acct", equity=5_000))
        await adg.AdminServiceStub(ch).PauseTrading(ad.PauseTradingRequest(
            trader_id="bot-2", account_id="acct", trading_state=t.TRADING_STATE_HALTED, reason="ops"))
        assert await sc.store.flush(timeout=10)

    async with running_sidecar(database_url=pg_url, enable_persistence=True, **METRICS) as sc:
        samples = scrape(sc.metrics_address)  # nobody has called this sidecar yet

    assert value(samples, "risk_daily_pnl", trader_id="bot-1") == -100.0
    assert value(samples, "risk_drawdown", trader_id="bot-1") == pytest.approx(1.0)
    assert value(samples, "risk_trading_paused", trader_id="bot-1") == 0.0
    assert value(samples, "risk_trading_paused", trader_id="bot-2") == 1.0
    assert not [k for k in samples if k[0] == "risk_limit_breaches_total"]  # a restart counts no breach again


async def test_a_database_down_at_start_counts_failures_and_the_health_gauge_reads_0_like_health() -> None:
    down = f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/tradeguard"
    async with running_sidecar(database_url=down, enable_persistence=True, store_call_timeout_s=1.0,
                               **METRICS) as sc, grpc.aio.insecure_channel(sc.address) as ch:
        status = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="tradeguard.store"), timeout=5)
        assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert value(scrape(sc.metrics_address), "tradeguard_store_healthy") == 0.0
        # The sampler copies the store's counters once a second.
        await eventually(lambda: (value(scrape(sc.metrics_address), "risk_persistence_failures_total") or 0) >= 1)
        samples = scrape(sc.metrics_address)
        assert value(samples, "tradeguard_store_healthy") == 0.0
        failures = value(samples, "risk_persistence_failures_total")
        attempts = value(samples, "risk_persistence_attempts_total")
        assert failures is not None and attempts is not None and 1 <= failures <= attempts


async def test_a_breaker_firing_counts_as_a_breach_with_its_rule(pg_url: str) -> None:
    breaker = json_format.ParseDict({
        "name": "drawdown_5", "description": "pause at 5% drawdown", "account_id": "acct",
        "condition": "max_drawdown", "action": "pause_trading", "parameters": {"threshold": 0.05}, "enabled": True,
    }, t.CircuitBreaker())
    async with running_sidecar(database_url=pg_url, enable_persistence=True, **METRICS) as sc, \
            grpc.aio.insecure_channel(sc.address) as ch:
        await adg.AdminServiceStub(ch).CreateBreaker(ad.CreateBreakerRequest(breaker=breaker))
        risk = rsg.RiskServiceStub(ch)
        await risk.ReportEquity(rs.ReportEquityRequest(trader_id="bot-1", account_id="acct", equity=10_000))
        reply = await risk.ReportEquity(rs.ReportEquityRequest(trader_id="bot-1", account_id="acct", equity=9_000))
        samples = scrape(sc.metrics_address)

    (event,) = reply.breaker_events
    assert value(samples, "risk_limit_breaches_total", trader_id="bot-1", rule="breaker:drawdown_5") == 1.0
    assert value(samples, "tradeguard_breaker_firings_total", breaker_id=event.breaker_id) == 1.0
