"""The bare-framework baseline: a grpc.aio server with TradeGuard's proto shape and no TradeGuard in it.

`tradeguard.v1.RiskService` is registered the ordinary way (generated `add_RiskServiceServicer_to_server`,
generated request deserializers and response serializers); `CanTrade` and `ReportEquity` return a constant
response built once at start. By default the constant is the very response the sidecar gave for the same
request (captured by `bench/run.py` and passed with `--can-trade-response` / `--report-equity-response`),
so both servers put the same bytes on the wire and the difference is TradeGuard's own work.

    .venv/bin/python bench/baseline_server.py --listen 127.0.0.1:0 --ready-file /tmp/b.ready [--no-uvloop]

Same server options as the sidecar (max message size, max concurrent streams, SO_REUSEPORT off). Binds only
loopback or unix: addresses. Stops on SIGTERM / SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t


def default_can_trade() -> rs.CanTradeResponse:
    return rs.CanTradeResponse(allowed=True, code=t.DECISION_CODE_ALLOWED, reason="all checks passed",
                               trading_state=t.TRADING_STATE_ACTIVE)


class ConstantRiskService(rsg.RiskServiceServicer):
    """CanTrade / ReportEquity answer a constant, Session answers every request with the CanTrade constant; the
    other RPCs keep the generated UNIMPLEMENTED."""

    def __init__(self, can_trade: rs.CanTradeResponse, report_equity: rs.ReportEquityResponse) -> None:
        self._can_trade = can_trade
        self._report_equity = report_equity

    async def CanTrade(self, request: rs.CanTradeRequest, context: Any) -> rs.CanTradeResponse:
        return self._can_trade

    async def ReportEquity(
        self, request: rs.ReportEquityRequest, context: Any
    ) -> rs.ReportEquityResponse:
        return self._report_equity

    async def Session(
        self, request_iterator: AsyncIterator[rs.SessionRequest], context: Any
    ) -> AsyncIterator[rs.SessionResponse]:
        """The bare streaming servicer (issue 18): each request answered with the constant CanTradeResponse and its
        request_id, as the generated stubs make it (an async generator over the request iterator)."""
        async for request in request_iterator:
            yield rs.SessionResponse(request_id=request.request_id, can_trade=self._can_trade)


def check_loopback(listen: str) -> None:
    if listen.startswith("unix:"):
        return
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise SystemExit(f"baseline_server: refusing to listen on {listen!r}: loopback or unix: only")


def write_ready_file(path: str, address: str) -> None:
    tmp = f"{path}.tmp"
    Path(tmp).write_text(address)
    os.replace(tmp, path)


async def serve(args: argparse.Namespace, can_trade: rs.CanTradeResponse, report_equity: rs.ReportEquityResponse
                ) -> None:
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", 1 << 20),
        ("grpc.max_send_message_length", 1 << 20),
        ("grpc.max_concurrent_streams", 1000),
        ("grpc.so_reuseport", 0),
    ])
    rsg.add_RiskServiceServicer_to_server(ConstantRiskService(can_trade, report_equity), server)
    port = server.add_insecure_port(args.listen)
    address = args.listen if args.listen.startswith("unix:") else f"{args.listen.rsplit(':', 1)[0]}:{port}"
    await server.start()
    if args.ready_file:
        write_ready_file(args.ready_file, address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--ready-file", default="")
    parser.add_argument("--can-trade-response", default="", help="file with a serialized CanTradeResponse")
    parser.add_argument("--report-equity-response", default="", help="file with a serialized ReportEquityResponse")
    parser.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    check_loopback(args.listen)
    can_trade = default_can_trade()
    if args.can_trade_response:
        can_trade = rs.CanTradeResponse.FromString(Path(args.can_trade_response).read_bytes())
    report_equity = rs.ReportEquityResponse()
    if args.report_equity_response:
        report_equity = rs.ReportEquityResponse.FromString(Path(args.report_equity_response).read_bytes())
    runner = asyncio.run
    if args.uvloop:
        import uvloop

        runner = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(args, can_trade, report_equity))
    return 0


if __name__ == "__main__":
    sys.exit(main())
