#!/usr/bin/env python3
"""A tiny trading bot loop guarded by TradeGuard (the Python client, blocking flavour).

Each cycle: report the account equity, ask `can_trade` for a BTCUSDT buy, "fill" it when allowed and
report the closed trade. The simulated PnL loses a little every cycle, so by the fourth cycle the default
5% daily loss limit is breached: new orders are denied (DAILY_LOSS_LIMIT) while a reduce-only order for the
position the bot reports holding is still allowed. One `key=value` line per step.

    tradeguard serve &                      # listens on 127.0.0.1:50051
    python client/python/examples/trader.py --target 127.0.0.1:50051

Exit status: 0, or 1 when the sidecar could not be reached (every order was then denied: fail closed).
"""

from __future__ import annotations

import argparse
import sys
import uuid

from tradeguard_client import Decision, Order, Position, RiskClient, SidecarUnavailableError, TradeGuardError

PNL_PER_CYCLE = (-120.0, -180.0, -260.0, 35.0, -10.0)


def show(step: str, decision: Decision) -> None:
    print(f"step={step} allowed={str(decision.allowed).lower()} code={decision.code} "
          f"trading_state={decision.trading_state} reason={decision.reason!r}")
    for action in decision.actions:
        print(f"step=action type={action.type} symbol={action.symbol or '*'} reason={action.reason!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--target", default="127.0.0.1:50051", help="host:port or unix:/path of the sidecar")
    parser.add_argument("--trader-id", default=f"example-bot-{uuid.uuid4().hex[:8]}",
                        help="trader id (default: a fresh one per run)")
    parser.add_argument("--account-id", default="example-account")
    parser.add_argument("--token", default=None, help="the sidecar's trader token, if it has one")
    parser.add_argument("--cycles", type=int, default=4)
    parser.add_argument("--equity", type=float, default=10_000.0, help="starting equity")
    parser.add_argument("--timeout", type=float, default=1.0, help="deadline of each call, seconds")
    parser.add_argument("--fail-open", action="store_true", help="allow trading when the sidecar is unreachable")
    args = parser.parse_args(argv)

    ids = (args.trader_id, args.account_id)
    equity = args.equity
    unreachable = False
    order = Order("BTCUSDT", "BUY", 0.01, 50_000.0, exchange="binance")
    with RiskClient(args.target, timeout=args.timeout, token=args.token, fail_open=args.fail_open) as guard:
        for cycle in range(1, args.cycles + 1):
            print(f"cycle={cycle} trader_id={args.trader_id} equity={equity:.2f}")
            try:
                guard.report_equity(*ids, equity)
            except SidecarUnavailableError as exc:  # keep going: can_trade fails closed on its own
                unreachable = True
                print(f"step=report_equity error={exc.code.name} msg={exc.message!r}")
            except TradeGuardError as exc:
                print(f"step=report_equity error={exc.code.name} msg={exc.message!r}", file=sys.stderr)
                return 2

            decision = guard.can_trade(*ids, order)
            show("can_trade", decision)
            unreachable |= decision.sidecar_unavailable
            if not decision:
                try:  # the bot still holds 0.01 BTC on binance: selling that much only reduces
                    guard.report_positions(*ids, [Position("BTCUSDT", "BUY", 0.01, 50_000.0, 50_000.0,
                                                           exchange="binance")])
                except TradeGuardError as exc:
                    print(f"step=report_positions error={exc.code.name} msg={exc.message!r}")
                reduce = guard.can_trade(*ids, Order("BTCUSDT", "SELL", 0.01, 50_000.0, exchange="binance",
                                                     reduce_only=True))
                show("can_trade_reduce_only", reduce)
                continue

            pnl = PNL_PER_CYCLE[(cycle - 1) % len(PNL_PER_CYCLE)]  # the order filled and was closed
            try:
                result = guard.report_trade(*ids, trade_id=f"{args.trader_id}-{cycle}", symbol=order.symbol,
                                            side=order.side, realized_pnl=pnl, exchange=order.exchange)
            except TradeGuardError as exc:
                unreachable |= isinstance(exc, SidecarUnavailableError)
                print(f"step=report_trade error={exc.code.name} msg={exc.message!r}")
            else:
                losses = result.state.consecutive_losses if result.state else 0
                print(f"step=report_trade realized_pnl={pnl:.2f} duplicate={str(result.duplicate).lower()} "
                      f"consecutive_losses={losses}")
            equity += pnl
    return 1 if unreachable else 0


if __name__ == "__main__":
    sys.exit(main())
