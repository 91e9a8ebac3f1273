"""Two live processes with one sidecar_id (two pods from one manifest) against one PostgreSQL: each trader has one
live owner at a time (cluster/leases.py `claim`), the second process is told why (FAILED_PRECONDITION naming the
shared id) and logs CRITICAL; a process still takes back its own lease when its release failed."""

from __future__ import annotations

import logging

import grpc
import pytest
from sqlalchemy import create_engine

from tests.support.sidecar import running_sidecar
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard_server.cluster import leases
from tradeguard_server.sidecar import Sidecar

pytestmark = pytest.mark.integration


def bot(sc: Sidecar) -> tuple[grpc.aio.Channel, rsg.RiskServiceStub]:
    ch = grpc.aio.insecure_channel(sc.address)
    return ch, rsg.RiskServiceStub(ch)


async def test_a_claim_takes_a_live_lease_naming_its_own_id_only_at_the_epoch_this_process_held(pg_url: str) -> None:
    async with running_sidecar(database_url=pg_url, enable_persistence=True, sidecar_id="A"):
        pass  # the schema
    engine = create_engine(pg_url)
    try:
        with engine.begin() as conn:
            first, got = leases.claim(conn, "t1", "acct", "A", 30.0)
        assert got and first.owner == "A"
        with engine.begin() as conn:  # another process named A, which never held t1: not taken
            held, got = leases.claim(conn, "t1", "acct", "A", 30.0)
        assert not got and held.epoch == first.epoch
        with engine.begin() as conn:  # the process that held it at that epoch (its release failed): taken back
            again, got = leases.claim(conn, "t1", "acct", "A", 30.0, known_epoch=first.epoch)
        assert got and again.epoch == first.epoch + 1
        with engine.begin() as conn:  # another sidecar: not taken while live
            _, got = leases.claim(conn, "t1", "acct", "B", 30.0)
        assert not got
    finally:
        engine.dispose()


async def test_a_twin_started_later_takes_the_leases_and_the_first_process_stops_serving_them(
    pg_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """The twin's start takes back every lease naming A (as a restart does); the first process's next renewal finds
    them gone, evicts the traders and says why; its next call for them is refused, naming the shared id, instead
    of claiming them back (the two used to take the trader from each other on every call, both serving it)."""
    caplog.set_level(logging.CRITICAL, logger="tradeguard")
    async with running_sidecar(database_url=pg_url, enable_persistence=True, sidecar_id="A") as first:
        ch, risk = bot(first)
        async with ch:
            req = rs.ReportEquityRequest(trader_id="t1", account_id="acct", equity=10_000.0)
            await risk.ReportEquity(req)
            assert await first.store.flush(timeout=10)
            async with running_sidecar(database_url=pg_url, enable_persistence=True, sidecar_id="A") as twin:
                assert twin.takeover is not None and "t1" in twin.takeover.owned
                takeover = first.takeover
                assert takeover is not None
                await takeover.renew()
                assert "t1" not in takeover.owned
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await risk.CanTrade(rs.CanTradeRequest(trader_id="t1", account_id="acct"))
                assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert "another live process running with this sidecar's id (A)" in (refused.value.details() or "")
                twin_ch, twin_risk = bot(twin)
                async with twin_ch:
                    assert (await twin_risk.CanTrade(rs.CanTradeRequest(trader_id="t1", account_id="acct"))).allowed
    critical = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
    assert any("ANOTHER LIVE PROCESS" in m and "t1" in m for m in critical), critical
