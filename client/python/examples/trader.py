#!/usr/bin/env python3
"""A tiny trading bot loop guarded by TradeGuard (the Python client, blocking flavour).

Each cycle: report the account equity, ask `can_trade` for a BTCUSDT buy, and when it is allowed place it
at a simulated venue under `decision.client_order_id`, then report what happened to the order with
`report_order` (FILLED, or REJECTED when the venue refuses it: the sidecar counts an allowed order as
exposure until then). A filled position is closed within the cycle: the bot reports its positions (flat)
and the closed trade. The venue refuses the third order; the simulated PnL loses a little on every fill,
so in the fifth cycle the default 5% daily loss limit is breached: new orders are denied (DAILY_LOSS_LIMIT)
while a reduce-only order for the position the bot reports holding is still allowed. Whenever an answer
carries a CANCEL_ALL_ORDERS action (the trader was HALTED), the bot cancels the listed orders at the venue
and reports them CANCELLED. One `key=value` line per step.

    tradeguard serve &                      # listens on 127.0.0.1:50051
    python client/python/examples/trader.py --target 127.0.0.1:50051

Exit status: 0, or 1 when the sidecar could not be reached (every order was then denied: fail closed).
"""

from __future__ import annotations

import argparse
import sys
import uuid

from tradeguard_client import (
    Decision,
    Order,
    Position,
    ReportResult,
    RiskClient,
    SidecarUnavailableError,
    StateUpdate,
    TradeGuardError,
)

PNL_PER_FILL = (-120.0, -180.0, -260.0, 35.0, -10.0)


class Venue:
    """A simulated exchange: fills every order at its price, except that it refuses the `reject`-th one."""

    def __init__(self, reject: int = 3) -> None:
        self.placed = 0
        self.reject = reject

    def place(self, client_order_id: str, order: Order) -> bool:
        """True: filled in full at the order's price; False: refused, nothing filled."""
        self.placed += 1
        return self.placed != self.reject

    def cancel(self, client_order_id: str) -> None:
        """A real bot cancels the order at its exchange here (nothing rests on this venue's book)."""


def show(step: str, decision: Decision) -> None:
    print(f"step={step} allowed={str(decision.allowed).lower()} code={decision.code} "
          f"trading_state={decision.trading_state} client_order_id={decision.client_order_id or '-'} "
          f"reason={decision.reason!r}")
    for action in decision.actions:
        print(f"step=action type={action.type} symbol={action.symbol or '*'} reason={action.reason!r}")


def report_order(guard: RiskClient, ids: tuple[str, str], client_order_id: str, status: str,
                 filled: float = 0.0, price: float = 0.0) -> ReportResult | None:
    try:
        result = guard.report_order(*ids, client_order_id, status, filled_quantity=filled, average_price=price)
    except TradeGuardError as exc:
        print(f"step=report_order client_order_id={client_order_id} error={exc.code.name} msg={exc.message!r}")
        return None
    pending = len(result.state.pending_orders) if result.state else 0
    print(f"step=report_order client_order_id={client_order_id} status={status} filled_quantity={filled:g} "
          f"duplicate={str(result.duplicate).lower()} pending_orders={pending}")
    return result


def cancel_if_asked(guard: RiskClient, ids: tuple[str, str], venue: Venue,
                    answer: Decision | ReportResult | StateUpdate | None) -> None:
    """The kill switch: cancel every working order at the venue, then report each one CANCELLED."""
    if answer is None or not answer.cancel_all_orders:
        return
    print(f"step=cancel_all_orders client_order_ids={','.join(answer.cancel_order_ids) or '-'}")
    for order_id in answer.cancel_order_ids:
        venue.cancel(order_id)
        report_order(guard, ids, order_id, "CANCELLED")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--target", default="127.0.0.1:50051", help="host:port or unix:/path of the sidecar")
    parser.add_argument("--trader-id", default=f"example-bot-{uuid.uuid4().hex[:8]}",
                        help="trader id (default: a fresh one per run)")
    parser.add_argument("--account-id", default="example-account")
    parser.add_argument("--token", default=None, help="the sidecar's trader token, if it has one")
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--equity", type=float, default=10_000.0, help="starting equity")
    parser.add_argument("--timeout", type=float, default=1.0, help="deadline of each call, seconds")
    parser.add_argument("--fail-open", action="store_true", help="allow trading when the sidecar is unreachable")
    args = parser.parse_args(argv)

    ids = (args.trader_id, args.account_id)
    equity = args.equity
    unreachable = False
    fills = 0
    venue = Venue()
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

            decision = guard.can_trade(*ids, order)  # the client makes the client_order_id
            show("can_trade", decision)
            cancel_if_asked(guard, ids, venue, decision)
            unreachable |= decision.sidecar_unavailable
            if not decision:
                try:  # the bot still holds 0.01 BTC on binance: selling that much only reduces
                    held = guard.report_positions(*ids, [Position("BTCUSDT", "BUY", 0.01, 50_000.0, 50_000.0,
                                                                  exchange="binance")])
                    cancel_if_asked(guard, ids, venue, held)
                except TradeGuardError as exc:
                    print(f"step=report_positions error={exc.code.name} msg={exc.message!r}")
                reduce_order = Order("BTCUSDT", "SELL", 0.01, 50_000.0, exchange="binance", reduce_only=True)
                reduce = guard.can_trade(*ids, reduce_order)
                show("can_trade_reduce_only", reduce)
                if reduce and venue.place(reduce.client_order_id, reduce_order):
                    cancel_if_asked(guard, ids, venue, report_order(guard, ids, reduce.client_order_id, "FILLED",
                                                                    reduce_order.quantity, reduce_order.price))
                continue

            if not venue.place(decision.client_order_id, order):
                # Nothing filled: say so, or the sidecar keeps counting the order until its TTL passes.
                cancel_if_asked(guard, ids, venue, report_order(guard, ids, decision.client_order_id, "REJECTED"))
                continue
            result = report_order(guard, ids, decision.client_order_id, "FILLED", order.quantity, order.price)
            cancel_if_asked(guard, ids, venue, result)

            # The position is closed within the cycle: report the positions (flat now) and the closed trade.
            pnl = PNL_PER_FILL[fills % len(PNL_PER_FILL)]
            fills += 1
            try:
                cancel_if_asked(guard, ids, venue, guard.report_positions(*ids, []))
                trade = guard.report_trade(*ids, trade_id=f"{args.trader_id}-{cycle}", symbol=order.symbol,
                                           side=order.side, realized_pnl=pnl, exchange=order.exchange)
            except TradeGuardError as exc:
                unreachable |= isinstance(exc, SidecarUnavailableError)
                print(f"step=report_trade error={exc.code.name} msg={exc.message!r}")
            else:
                losses = trade.state.consecutive_losses if trade.state else 0
                print(f"step=report_trade realized_pnl={pnl:.2f} duplicate={str(trade.duplicate).lower()} "
                      f"consecutive_losses={losses}")
                cancel_if_asked(guard, ids, venue, trade)
            equity += pnl
    return 1 if unreachable else 0


if __name__ == "__main__":
    sys.exit(main())
