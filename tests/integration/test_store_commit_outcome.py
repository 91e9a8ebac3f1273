"""An admin write whose COMMIT reached the database but whose answer was lost answers the truth.

Real PostgreSQL behind a FaultProxy that breaks the connection at the COMMIT: after the server got it
(`trap_commit(deliver=True)`: it commits, the client never hears so) or before it (`deliver=False`). The store
asks the database on a new connection (txid_status of the transaction's txid) and reports what happened:
committed -> the call returns as if nothing broke (memory is updated, the RPC answers OK); not committed ->
UNAVAILABLE "not saved"; cannot tell (the database is out of reach) -> UNAVAILABLE "may or may not have been
saved" (in_doubt).
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import psycopg
import pytest

from tests.support.databases import open_store
from tests.support.pg import fresh_database, plain_dsn
from tests.support.proxy import FaultProxy
from tests.support.sidecar import running_sidecar
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.store.errors import StoreUnavailable, unsaved
from tradeguard_server.store.records import ConfigRecord
from tradeguard_server.store.store import RiskStore

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_database("tradeguard_commit") as url:
        yield url


def rows(url: str, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(plain_dsn(url)) as conn:
        return list(conn.execute(query).fetchall())


def config(config_id: str) -> ConfigRecord:
    return ConfigRecord("a-1", config_id, daily_max_drawdown_percentage=1.0)


# ---- the store ---------------------------------------------------------------------------------------------

async def test_a_commit_whose_answer_was_lost_but_that_committed_returns_as_saved(pg_url: str) -> None:
    proxy = await FaultProxy().start()
    try:
        async with open_store(proxy.url_for(pg_url)) as store:
            await store.load()  # start-up (migration) commits are over: the next COMMIT is the write's
            await store.save_config(config("before"))
            proxy.trap_commit(deliver=True)

            stored, created = await store.save_config(config("cut-after-commit"))

            assert proxy.commits_trapped == 1
            assert (stored.config_id, created) == ("cut-after-commit", True)
    finally:
        await proxy.close()
    assert rows(pg_url, "SELECT config_id FROM risk_configurations ORDER BY config_id") == [
        ("before",), ("cut-after-commit",)]


async def test_a_commit_cut_before_it_reached_the_database_says_not_saved(pg_url: str) -> None:
    proxy = await FaultProxy().start()
    try:
        async with open_store(proxy.url_for(pg_url)) as store:
            await store.load()  # start-up (migration) commits are over: the next COMMIT is the write's
            await store.save_config(config("before"))
            proxy.trap_commit(deliver=False)

            with pytest.raises(StoreUnavailable, match="did not commit") as caught:
                await store.save_config(config("cut-before-commit"))

            assert proxy.commits_trapped == 1
            assert not caught.value.in_doubt
            assert unsaved("configuration", caught.value).startswith("configuration not saved")
    finally:
        await proxy.close()
    assert rows(pg_url, "SELECT config_id FROM risk_configurations ORDER BY config_id") == [("before",)]


async def test_a_lost_commit_answer_with_the_database_gone_is_reported_in_doubt(pg_url: str) -> None:
    proxy = await FaultProxy(refuse_after_trap=True).start()
    try:
        async with open_store(proxy.url_for(pg_url), drain_timeout=1.0, settle_s=0.5) as store:
            await store.load()  # start-up (migration) commits are over: the next COMMIT is the write's
            await store.save_config(config("before"))
            proxy.trap_commit(deliver=True)  # it commits; the connection asking txid_status is refused

            with pytest.raises(StoreUnavailable, match="could not be learned") as caught:
                await store.save_config(config("unknown"))

            assert caught.value.in_doubt
            assert unsaved("configuration", caught.value).startswith("configuration may or may not have been saved")
            assert proxy.refused >= 1
    finally:
        await proxy.close()


# ---- the admin API -----------------------------------------------------------------------------------------

def breaker(name: str) -> t.CircuitBreaker:
    b = t.CircuitBreaker(name=name, account_id="a-1", condition="equity_floor", action="alert")
    b.parameters.update({"value": 9000})
    return b


async def test_save_config_and_create_breaker_whose_commit_answer_was_lost_answer_ok_and_are_in_force(
    pg_url: str,
) -> None:
    proxy = await FaultProxy().start()
    try:
        async with running_sidecar(database_url=proxy.url_for(pg_url), enable_persistence=True) as sidecar, \
                grpc.aio.insecure_channel(sidecar.address) as channel:
            store = sidecar.store
            assert isinstance(store, RiskStore)
            admin = adg.AdminServiceStub(channel)
            assert await store.flush(timeout=10)  # the writer is idle: the next COMMIT is the admin write's

            proxy.trap_commit(deliver=True)
            saved = await admin.SaveConfig(ad.SaveConfigRequest(config=t.RiskConfiguration(
                account_id="a-1", config_id="tight", is_active=True, daily_max_drawdown_percentage=1.0)), timeout=30)
            assert proxy.commits_trapped == 1
            assert saved.config.config_id == "tight"
            got = await admin.GetConfig(ad.GetConfigRequest(account_id="a-1", config_id="tight"), timeout=5)
            assert got.config.daily_max_drawdown_percentage == 1.0
            assert sidecar.engine.limits_for("a-1").daily_max_drawdown_percentage == 1.0

            proxy.trap_commit(deliver=True)
            created = await admin.CreateBreaker(ad.CreateBreakerRequest(breaker=breaker("floor")), timeout=30)
            assert proxy.commits_trapped == 2
            listed = await admin.ListBreakers(ad.ListBreakersRequest(account_id="a-1"), timeout=5)
            assert [b.id for b in listed.breakers] == [created.breaker.id]
            risk = rsg.RiskServiceStub(channel)  # in force: equity below its floor fires it
            await risk.ReportEquity(rs.ReportEquityRequest(trader_id="bot-1", account_id="a-1", equity=8_500.0),
                                    timeout=5)
            events = await admin.ListBreakerEvents(ad.ListBreakerEventsRequest(account_id="a-1"), timeout=10)
            assert [e.breaker_id for e in events.events] == [created.breaker.id]

            with pytest.raises(grpc.aio.AioRpcError) as retried:  # a retry creates no second breaker
                await admin.CreateBreaker(ad.CreateBreakerRequest(breaker=breaker("floor")), timeout=30)
            assert retried.value.code() == grpc.StatusCode.ALREADY_EXISTS
            assert created.breaker.id in (retried.value.details() or "")
    finally:
        await proxy.close()
    assert rows(pg_url, "SELECT config_id FROM risk_configurations") == [("tight",)]
    assert rows(pg_url, "SELECT id FROM circuit_breakers") == [(created.breaker.id,)]
