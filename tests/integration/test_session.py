"""RiskService/Session through a real gRPC server: answers in order, errors as the unary RPC's status, auth per
message, cancel-on-disconnect (cancel pauses, clean close does not), and the dead-man's switch."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc_status import rpc_status

from tests.support.sidecar import running_sidecar
from tests.support.wait import eventually
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.engine.types import TradingState
from tradeguard_server.sidecar import Sidecar

pytestmark = pytest.mark.integration

IDS = {"trader_id": "bot-1", "account_id": "acct-1"}
ORDER = t.OrderIntent(symbol="BTCUSDT", exchange="binance", side=t.SIDE_BUY, quantity=0.01, price=50_000,
                      client_order_id="o-1")


def req(request_id: int, **call: object) -> rs.SessionRequest:
    return rs.SessionRequest(request_id=request_id, **call)  # type: ignore[arg-type]


async def exchange(risk: rsg.RiskServiceStub, requests: list[rs.SessionRequest],
                   metadata: tuple[tuple[str, str], ...] = ()) -> list[rs.SessionResponse]:
    """Send each request, read its answer (write -> read), then half-close: a clean close."""
    call = risk.Session(metadata=metadata)
    out = []
    for r in requests:
        await call.write(r)
        out.append(await call.read())
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF  # type: ignore[attr-defined]
    assert await call.code() == grpc.StatusCode.OK
    return out


def paused(sidecar: Sidecar, trader_id: str = "bot-1") -> TradingState | None:
    st = sidecar.engine.traders.get(trader_id)
    if st is None:
        return None
    pause = st.effective_pause(sidecar.engine.clock.now())
    return None if pause is None else pause.state


async def test_session_answers_each_request_in_order_with_its_request_id_as_the_unary_rpc_does(
    risk: rsg.RiskServiceStub,
) -> None:
    answers = await exchange(risk, [
        req(1, can_trade=rs.CanTradeRequest(**IDS)),
        req(2, report_equity=rs.ReportEquityRequest(**IDS, equity=10_000)),
        req(3, can_trade=rs.CanTradeRequest(**IDS, order=ORDER)),
        req(4, report_order=rs.ReportOrderRequest(**IDS, client_order_id="o-1", status=t.ORDER_STATUS_FILLED,
                                                  filled_quantity=0.01)),
        req(5, report_prices=rs.ReportPricesRequest(**IDS, prices=[t.PriceMark(symbol="ETHUSDT", price=3000)])),
    ])

    assert [a.request_id for a in answers] == [1, 2, 3, 4, 5]
    assert [a.WhichOneof("result") for a in answers] == ["can_trade", "report_equity", "can_trade", "report_order",
                                                         "report_prices"]
    assert answers[0].can_trade.code == t.DECISION_CODE_NO_EQUITY_REPORTED
    assert answers[2].can_trade.allowed and answers[2].can_trade.client_order_id == "o-1"
    assert answers[4].report_prices.accepted == 1
    unary = await risk.GetRiskState(rs.GetRiskStateRequest(**IDS))
    assert unary.state.current_equity == 10_000


async def test_a_request_the_unary_rpc_rejects_gets_the_same_status_and_the_stream_goes_on(
    risk: rsg.RiskServiceStub,
) -> None:
    bad = rs.CanTradeRequest(trader_id="bot-1", account_id="", order=t.OrderIntent(symbol="BTCUSDT", quantity=-1))
    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await risk.CanTrade(bad)
    unary_status = rpc_status.from_call(unary.value)
    assert unary_status is not None

    answers = await exchange(risk, [req(7, can_trade=bad), req(8), req(9, can_trade=rs.CanTradeRequest(**IDS))])

    assert answers[0].request_id == 7 and answers[0].WhichOneof("result") == "error"
    assert answers[0].error == unary_status  # code, message and google.rpc.BadRequest details
    assert answers[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert answers[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "call" in answers[1].error.message
    assert answers[2].can_trade.code == t.DECISION_CODE_NO_EQUITY_REPORTED


async def test_unknown_order_report_and_account_mismatch_are_errors_like_unary(risk: rsg.RiskServiceStub) -> None:
    await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))
    unknown = rs.ReportOrderRequest(**IDS, client_order_id="nope", status=t.ORDER_STATUS_FILLED)
    other = rs.CanTradeRequest(trader_id="bot-1", account_id="acct-2")
    expected = []
    for call, r in ((risk.ReportOrder, unknown), (risk.CanTrade, other)):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(r)  # type: ignore[operator]
        expected.append(rpc_status.from_call(err.value) or rs.SessionResponse().error.__class__(
            code=err.value.code().value[0], message=err.value.details() or ""))

    answers = await exchange(risk, [req(1, report_order=unknown), req(2, can_trade=other)])

    assert [a.error for a in answers] == expected
    assert answers[0].error.code == grpc.StatusCode.NOT_FOUND.value[0]


async def test_open_declares_the_trader_and_a_cancelled_session_halts_it_with_cancel_all_orders_on_watch(
    sidecar: Sidecar, risk: rsg.RiskServiceStub,
) -> None:
    await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))
    allowed = await risk.CanTrade(rs.CanTradeRequest(**IDS, order=ORDER))  # a pending order
    assert allowed.allowed
    watch = risk.WatchRiskState(rs.WatchRiskStateRequest(**IDS))
    assert (await watch.read()).reason == "initial"
    call = risk.Session()
    await call.write(req(1, open=rs.SessionOpen(**IDS, on_disconnect=t.TRADING_STATE_HALTED)))
    opened = await call.read()
    assert opened.opened.trader_id == "bot-1" and opened.opened.on_disconnect == t.TRADING_STATE_HALTED
    await call.write(req(2, can_trade=rs.CanTradeRequest(**IDS)))
    assert (await call.read()).can_trade.allowed

    call.cancel()  # the bot is gone without closing its side

    update = await asyncio.wait_for(watch.read(), 5)
    assert update.state.trading_state == t.TRADING_STATE_HALTED
    assert "cancel-on-disconnect" in update.state.pause_reason
    assert any(a.type == t.ACTION_TYPE_CANCEL_ALL_ORDERS for a in update.actions)
    assert paused(sidecar) is TradingState.HALTED
    watch.cancel()


async def test_a_clean_close_pauses_nobody(sidecar: Sidecar, risk: rsg.RiskServiceStub) -> None:
    await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))

    await exchange(risk, [req(1, open=rs.SessionOpen(**IDS, on_disconnect=t.TRADING_STATE_HALTED)),
                          req(2, can_trade=rs.CanTradeRequest(**IDS))])
    await asyncio.sleep(0.05)

    assert paused(sidecar) is None


async def test_metadata_declares_a_reducing_pause_for_a_duration(sidecar: Sidecar, risk: rsg.RiskServiceStub,
                                                                 clock: ManualClock) -> None:
    await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))
    metadata = (("tradeguard-session-trader-id", "bot-1"), ("tradeguard-session-account-id", "acct-1"),
                ("tradeguard-session-on-disconnect", "REDUCING"), ("tradeguard-session-on-disconnect-seconds", "60"))
    call = risk.Session(metadata=metadata)
    await call.write(req(1, can_trade=rs.CanTradeRequest(**IDS)))
    assert (await call.read()).can_trade.allowed

    call.cancel()

    assert await eventually(lambda: paused(sidecar) is TradingState.REDUCING, timeout=5)
    clock.advance(61)
    assert paused(sidecar) is None


async def test_bad_declarations_name_the_field(risk: rsg.RiskServiceStub) -> None:
    call = risk.Session(metadata=(("tradeguard-session-trader-id", "bot-1"),
                                  ("tradeguard-session-on-disconnect", "SLEEP")))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tradeguard-session-on-disconnect" in (err.value.details() or "")
    assert "tradeguard-session-account-id" in (err.value.details() or "")

    answers = await exchange(risk, [
        req(1, open=rs.SessionOpen(**IDS, on_disconnect=t.TRADING_STATE_ACTIVE,
                                   on_disconnect_duration=Duration(seconds=-1))),
        req(2, open=rs.SessionOpen(**IDS)),
        req(3, open=rs.SessionOpen(**IDS)),
    ])
    assert "open.on_disconnect" in answers[0].error.message
    assert "open.on_disconnect_duration" in answers[0].error.message
    assert answers[1].opened.on_disconnect == t.TRADING_STATE_UNSPECIFIED
    assert "already declared" in answers[2].error.message


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[Sidecar]:
    creds = tmp_path / "credentials.toml"
    (tmp_path / "bot1.token").write_text("tok-bot-1-0123456789abcdef\n")
    creds.write_text('[[credential]]\nname = "bot-1"\ntoken_file = "bot1.token"\ntraders = ["bot-1"]\n'
                     'accounts = ["acct-1"]\n')
    async with running_sidecar(credentials_file=str(creds)) as sc:
        yield sc


async def test_a_session_authorizes_each_request_as_unary_calls_are(guarded: Sidecar) -> None:
    async with grpc.aio.insecure_channel(guarded.address) as ch:
        risk = rsg.RiskServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await risk.Session().read()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

        token = (("authorization", "Bearer tok-bot-1-0123456789abcdef"),)
        other = rs.CanTradeRequest(trader_id="bot-2", account_id="acct-1")
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await risk.CanTrade(other, metadata=token)
        answers = await exchange(risk, [req(1, can_trade=other), req(2, can_trade=rs.CanTradeRequest(**IDS)),
                                        req(3, open=rs.SessionOpen(trader_id="bot-2", account_id="acct-1"))],
                                 metadata=token)
        assert answers[0].error == rpc_status.from_call(unary.value) or (
            answers[0].error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
            and answers[0].error.message == unary.value.details())
        assert answers[1].WhichOneof("result") == "can_trade"
        assert answers[2].error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]


async def test_dead_mans_switch_pauses_a_silent_trader_until_resumed(
    sidecar: Sidecar, risk: rsg.RiskServiceStub, admin: adg.AdminServiceStub, clock: ManualClock,
) -> None:
    cfg = t.RiskConfiguration(account_id="acct-1", config_id="hb", is_active=True, heartbeat_timeout_seconds=5,
                              heartbeat_pause_state=t.TRADING_STATE_REDUCING)
    saved = await admin.SaveConfig(ad.SaveConfigRequest(config=cfg))
    assert saved.config.heartbeat_timeout_seconds == 5
    assert saved.config.heartbeat_pause_state == t.TRADING_STATE_REDUCING
    await risk.ReportEquity(rs.ReportEquityRequest(**IDS, equity=10_000))
    clock.advance(4)
    await risk.CanTrade(rs.CanTradeRequest(**IDS))  # heard at +4
    clock.advance(4)
    await asyncio.sleep(0.6)  # two scans: +8 is 4 s after the last call
    assert paused(sidecar) is None

    clock.advance(2)  # 6 s of silence

    assert await eventually(lambda: paused(sidecar) is TradingState.REDUCING, timeout=5)
    assert "dead-man's switch" in sidecar.engine.traders["bot-1"].pauses[-1].reason
    back = await risk.CanTrade(rs.CanTradeRequest(**IDS))  # the bot is back: still paused until resumed
    assert back.trading_state == t.TRADING_STATE_REDUCING
    await admin.ResumeTrading(ad.ResumeTradingRequest(**IDS))
    assert paused(sidecar) is None


async def test_heartbeat_fields_are_validated_naming_the_field(admin: adg.AdminServiceStub) -> None:
    cfg = t.RiskConfiguration(account_id="acct-1", config_id="hb", heartbeat_timeout_seconds=0,
                              heartbeat_pause_state=t.TRADING_STATE_ACTIVE)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.SaveConfig(ad.SaveConfigRequest(config=cfg))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "config.heartbeat_timeout_seconds" in (err.value.details() or "")
    assert "config.heartbeat_pause_state" in (err.value.details() or "")


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize("traced", [False, True], ids=["tracing-off", "tracing-on"])
async def test_history_rows_of_session_calls_record_the_sessions_trace_id(traced: bool) -> None:
    import psycopg

    from tests.support.pg import fresh_database, plain_dsn

    with fresh_database("tradeguard_session_trace") as url:
        async with running_sidecar(database_url=url, enable_persistence=True, tracing=traced) as sc, \
                grpc.aio.insecure_channel(sc.address) as ch:
            await exchange(rsg.RiskServiceStub(ch), [
                req(1, report_equity=rs.ReportEquityRequest(**IDS, equity=10_000)),
                req(2, report_equity=rs.ReportEquityRequest(**IDS, equity=10_001)),
            ], metadata=(("traceparent", f"00-{TRACE_ID}-00f067aa0ba902b7-01"),))
            assert await sc.store.flush(timeout=10)
        with psycopg.connect(plain_dsn(url)) as conn:
            rows = conn.execute("SELECT trace_id FROM risk_state_history WHERE trader_id = %s ORDER BY id",
                                ("bot-1",)).fetchall()
    assert [r[0] for r in rows] == [TRACE_ID, TRACE_ID]


async def test_with_tracing_on_answers_and_cancel_on_disconnect_work_as_without() -> None:
    async with running_sidecar(tracing=True) as sc, grpc.aio.insecure_channel(sc.address) as ch:
        risk = rsg.RiskServiceStub(ch)
        answers = await exchange(risk, [req(1, report_equity=rs.ReportEquityRequest(**IDS, equity=10_000)),
                                        req(2, can_trade=rs.CanTradeRequest(trader_id="bot-1", account_id="")),
                                        req(3, can_trade=rs.CanTradeRequest(**IDS))])
        assert [a.WhichOneof("result") for a in answers] == ["report_equity", "error", "can_trade"]
        call = risk.Session()
        await call.write(req(1, open=rs.SessionOpen(**IDS, on_disconnect=t.TRADING_STATE_HALTED)))
        assert (await call.read()).opened.trader_id == "bot-1"

        call.cancel()

        assert await eventually(lambda: paused(sc) is TradingState.HALTED, timeout=5)


async def test_session_calls_are_counted_in_the_rpc_metrics_per_call_kind() -> None:
    from prometheus_client import generate_latest

    async with running_sidecar(metrics_listen="127.0.0.1:0") as sc, grpc.aio.insecure_channel(sc.address) as ch:
        await exchange(rsg.RiskServiceStub(ch), [req(1, can_trade=rs.CanTradeRequest(**IDS)),
                                                 req(2, report_equity=rs.ReportEquityRequest(**IDS, equity=1.0)),
                                                 req(3, can_trade=rs.CanTradeRequest(**IDS))])
        text = generate_latest(sc.metrics.registry).decode()  # type: ignore[attr-defined]

    assert 'tradeguard_rpc_duration_seconds_count{method="CanTrade"} 2.0' in text
    assert 'tradeguard_rpc_duration_seconds_count{method="ReportEquity"} 1.0' in text
    assert 'tradeguard_decisions_total{code="NO_EQUITY_REPORTED",outcome="denied"} 1.0' in text
