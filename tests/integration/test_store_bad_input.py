"""Bad input gets INVALID_ARGUMENT naming the field, the same on PostgreSQL, SQLite and memory; never INTERNAL or
a raw database error.

Page tokens are ASCII digits only ("²" passes str.isdigit and int() refuses it; "٣" passes both and reads as 3)
and fit the column; free text (a breaker description, a pause reason) takes no NUL or other control character
except tab and line breaks (PostgreSQL cannot store NUL, SQLite would), and names and ids none at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from tests.support.databases import postgres_database_fixture, store_url_fixture
from tests.support.sidecar import running_sidecar
from tests.support.status import violations
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t

pytestmark = pytest.mark.integration

pg_url = postgres_database_fixture()
store_url = store_url_fixture(backends=("postgresql", "sqlite", "memory"))


@pytest.fixture
def db_url(store_url: str, request: pytest.FixtureRequest) -> str:
    return "memory" if request.node.callspec.params["store_url"] == "memory" else store_url


@pytest.fixture
async def admin(db_url: str) -> AsyncIterator[adg.AdminServiceStub]:
    durable = db_url != "memory"
    async with running_sidecar(database_url=db_url, enable_persistence=durable) as sidecar, \
            grpc.aio.insecure_channel(sidecar.address) as channel:
        risk = rsg.RiskServiceStub(channel)
        await risk.ReportEquity(rs.ReportEquityRequest(trader_id="bot-1", account_id="a-1", equity=10_000.0))
        yield adg.AdminServiceStub(channel)


async def rejected(call: object) -> dict[str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    return violations(caught.value)


BAD_NUMBERS = ["²", "٣", "1²", "-1", " 1", "1 ", "9" * 19, "9" * 5000, "1\x00"]


@pytest.mark.parametrize("token", BAD_NUMBERS)
async def test_a_history_page_token_that_is_not_a_small_ascii_number_is_invalid(
    admin: adg.AdminServiceStub, db_url: str, token: str
) -> None:
    call = admin.ListRiskStateHistory(ad.ListRiskStateHistoryRequest(trader_id="bot-1", account_id="a-1",
                                                                     page_token=token), timeout=10)
    if db_url == "memory":  # no history without a database; the token is still checked first
        assert "page_token" in await rejected(call)
        return
    assert list(await rejected(call)) == ["page_token"]


@pytest.mark.parametrize("token", ["mem:²", "mem:٣", "mem:" + "9" * 400, "²:x", "٣:x", "9" * 200 + ":x", "1:\x00",
                                   "1:", ":x", "1:a b", "x" * 300])
async def test_a_breaker_events_page_token_it_did_not_hand_out_is_invalid(
    admin: adg.AdminServiceStub, token: str
) -> None:
    call = admin.ListBreakerEvents(ad.ListBreakerEventsRequest(account_id="a-1", page_token=token), timeout=10)
    assert list(await rejected(call)) == ["page_token"]


def breaker(**fields: str) -> t.CircuitBreaker:
    values = {"name": "floor", "account_id": "a-1", "condition": "equity_floor", "action": "alert", **fields}
    b = t.CircuitBreaker(**values)
    b.parameters.update({"value": 9000})
    return b


@pytest.mark.parametrize(("fields", "field"), [
    ({"description": "stop\x00now"}, "breaker.description"),
    ({"description": "colour \x1b[31mred"}, "breaker.description"),
    ({"name": "flo\x00or"}, "breaker.name"),
    ({"name": "two\nlines"}, "breaker.name"),
])
async def test_control_characters_in_breaker_text_are_rejected_on_every_database(
    admin: adg.AdminServiceStub, fields: dict[str, str], field: str
) -> None:
    assert field in await rejected(admin.CreateBreaker(ad.CreateBreakerRequest(breaker=breaker(**fields)),
                                                       timeout=10))
    listed = await admin.ListBreakers(ad.ListBreakersRequest(account_id="a-1"), timeout=10)
    assert list(listed.breakers) == []


async def test_a_multi_line_breaker_description_is_kept(admin: adg.AdminServiceStub) -> None:
    created = await admin.CreateBreaker(ad.CreateBreakerRequest(breaker=breaker(description="line 1\n\tline 2")),
                                        timeout=10)
    assert created.breaker.description == "line 1\n\tline 2"


async def test_a_nul_in_a_config_id_or_a_pause_reason_is_rejected_naming_the_field(admin: adg.AdminServiceStub) -> None:
    cfg = t.RiskConfiguration(account_id="a-1", config_id="c\x001", daily_max_drawdown_percentage=2.0)
    assert "config.config_id" in await rejected(admin.SaveConfig(ad.SaveConfigRequest(config=cfg), timeout=10))
    pause = ad.PauseTradingRequest(trader_id="bot-1", account_id="a-1", trading_state=t.TRADING_STATE_HALTED,
                                   reason="stop\x00")
    assert list(await rejected(admin.PauseTrading(pause, timeout=10))) == ["reason"]
