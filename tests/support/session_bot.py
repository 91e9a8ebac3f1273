"""A bot process for the cancel-on-disconnect fault tests: opens a Session to ADDRESS declaring TRADER / ACCOUNT with
on_disconnect HALTED (the `open` message), asks CanTrade once, prints "ready", then either waits to be killed
(`wait`) or half-closes and exits (`clean`).

    python tests/support/session_bot.py ADDRESS TRADER ACCOUNT wait|clean
"""

from __future__ import annotations

import sys

import grpc

from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t


def main() -> int:
    address, trader, account, mode = sys.argv[1:5]
    with grpc.insecure_channel(address) as channel:
        session = rsg.RiskServiceStub(channel).Session
        opened = False

        def requests():  # type: ignore[no-untyped-def]
            yield rs.SessionRequest(request_id=1, open=rs.SessionOpen(trader_id=trader, account_id=account,
                                                                      on_disconnect=t.TRADING_STATE_HALTED))
            yield rs.SessionRequest(request_id=2, can_trade=rs.CanTradeRequest(trader_id=trader, account_id=account))
            while not opened:  # answers first
                import time

                time.sleep(0.01)
            print("ready", flush=True)
            if mode == "wait":
                import threading

                threading.Event().wait()  # until killed

        for answer in session(requests()):
            if answer.request_id == 2:
                opened = True
    return 0


if __name__ == "__main__":
    sys.exit(main())
