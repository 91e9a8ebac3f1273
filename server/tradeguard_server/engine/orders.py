"""The order lifecycle: orders count from the moment CanTrade allows them (pure functions over a TraderState).

An allowed order becomes a *pending order* (types.PendingOrder). Until it is finished its unfilled quantity
counts in every exposure check as if it had filled (checks.split_order and the exposure checks read the per-venue
sums in `TraderState.pending`, kept here, so no check walks the orders). What happens to it comes from
ReportOrder:

- `filled_quantity` is cumulative: a report moves only what it adds to the known fill from pending into the
  position (`apply_fill`), so a repeated or older report moves nothing;
- a final status (FILLED, CANCELLED, REJECTED, EXPIRED) is never undone; the order leaves the pending orders and
  is remembered among the last FINISHED_ORDERS_KEPT finished ones, so a repeated or late report is recognised
  (a late larger fill of a finished order still moves into the position);
- an order nothing is reported on for pending_order_ttl_seconds is released (`expire`): it stops counting.
  Every report refreshes that time, so a working order re-reported (ACCEPTED) keeps counting.

A later ReportPositions is the truth: it replaces the positions, fills included. Report a fill before the
positions that contain it, or the fill counts twice (in the reported position and in the pending order) until
it is reported: an over-count, never an under-count.
"""

from __future__ import annotations

from dataclasses import replace

from .state import FINISHED_ORDERS_KEPT, TraderState, VenuePending
from .types import OrderStatus, PendingOrder, Position, Side

_BUY = Side.BUY


class UnknownOrderError(LookupError):
    """ReportOrder named a client_order_id the trader has no pending or recent order under."""


def _count(st: TraderState, order: PendingOrder, sign: int) -> None:
    """Add (sign 1) or take back (sign -1) an order's unfilled quantity in its venue's sums."""
    key = (order.symbol, order.exchange)
    vp = st.pending.get(key)
    if vp is None:
        if sign < 0:
            return
        vp = st.pending[key] = VenuePending()
    qty = order.remaining * sign
    if order.side is _BUY:
        vp.buy += qty
        vp.buy_notional += qty * order.price
    else:
        vp.sell += qty
        vp.sell_notional += qty * order.price
    vp.count += sign
    if vp.count <= 0:
        del st.pending[key]


def rebuild_pending(st: TraderState) -> None:
    """Recompute the per-venue sums from the pending orders (after a restore)."""
    st.pending = {}
    for order in st.orders.values():
        _count(st, order, 1)
    st.next_order_expiry = next_expiry(st)


def add_order(st: TraderState, order: PendingOrder) -> None:
    """A newly allowed order starts counting."""
    st.orders[order.client_order_id] = order
    _count(st, order, 1)
    if order.expires_at < st.next_order_expiry:
        st.next_order_expiry = order.expires_at


def _finish(st: TraderState, order: PendingOrder) -> None:
    st.orders.pop(order.client_order_id, None)
    finished = st.finished_orders
    finished[order.client_order_id] = order
    finished.move_to_end(order.client_order_id)
    while len(finished) > FINISHED_ORDERS_KEPT:
        finished.popitem(last=False)


def find(st: TraderState, client_order_id: str) -> PendingOrder | None:
    return st.orders.get(client_order_id) or st.finished_orders.get(client_order_id)


def report(
    st: TraderState, client_order_id: str, status: OrderStatus, filled: float, avg_price: float, now: float,
    ttl_s: float,
) -> tuple[PendingOrder, float, bool]:
    """Apply one ReportOrder. Returns (the order after it, the quantity newly filled, whether anything changed).
    (`TraderState.next_order_expiry` stays a lower bound: a report only moves an expiry later.)

    `filled` is cumulative; a smaller one than known moves nothing. A report on a finished order changes only
    a larger fill (moved into the position); its status stays. ALLOWED is not a status a bot reports.
    """
    return _report(st, client_order_id, status, filled, avg_price, now, ttl_s)


def _report(
    st: TraderState, client_order_id: str, status: OrderStatus, filled: float, avg_price: float, now: float,
    ttl_s: float,
) -> tuple[PendingOrder, float, bool]:
    live = st.orders.get(client_order_id)
    order = live or st.finished_orders.get(client_order_id)
    if order is None:
        raise UnknownOrderError(
            f"client_order_id {client_order_id!r} names no order CanTrade allowed for this trader (or one finished "
            f"long ago): report the position with ReportPositions instead")
    if status is OrderStatus.FILLED and live is not None:
        filled = order.quantity  # FILLED means the whole order, whatever quantity came with it
    filled = min(filled, order.quantity)
    new_fill = filled - order.filled if filled > order.filled else 0.0
    fill_price = avg_price if avg_price > 0.0 else order.price
    total = order.filled + new_fill
    avg = ((order.avg_price * order.filled + fill_price * new_fill) / total) if new_fill > 0.0 and total > 0.0 \
        else order.avg_price
    if live is None:  # finished: only a larger fill still counts
        if new_fill <= 0.0:
            return order, 0.0, False
        updated = replace(order, filled=total, avg_price=avg)
        st.finished_orders[client_order_id] = updated
        apply_fill(st, updated, new_fill, fill_price)
        return updated, new_fill, True
    new_status = status if status > order.status or status.final else order.status
    if total >= order.quantity and not new_status.final:
        new_status = OrderStatus.FILLED
    if new_fill <= 0.0 and new_status is order.status:
        # Nothing new, but the bot says the order is alive: it keeps counting for another TTL.
        if order.expires_at < now + ttl_s:
            _count(st, order, -1)
            order = replace(order, expires_at=now + ttl_s)
            st.orders[client_order_id] = order
            _count(st, order, 1)
        return order, 0.0, False
    _count(st, order, -1)
    updated = replace(order, filled=total, avg_price=avg, status=new_status, expires_at=now + ttl_s)
    if updated.status.final:
        _finish(st, updated)
    else:
        st.orders[client_order_id] = updated
        _count(st, updated, 1)
    if new_fill > 0.0:
        apply_fill(st, updated, new_fill, fill_price)
    return updated, new_fill, True


def expire(st: TraderState, now: float) -> list[PendingOrder]:
    """Release the pending orders nothing was reported on in time (they stop counting). Returns them."""
    gone = [o for o in st.orders.values() if o.expires_at <= now]
    for order in gone:
        _count(st, order, -1)
        _finish(st, replace(order, status=OrderStatus.EXPIRED))
    st.next_order_expiry = next_expiry(st)
    return gone


def next_expiry(st: TraderState) -> float:
    """When the next pending order is released (inf when none)."""
    return min((o.expires_at for o in st.orders.values()), default=float("inf"))


def apply_fill(st: TraderState, order: PendingOrder, qty: float, price: float) -> None:
    """Move `qty` filled at `price` into the position on the order's venue (the next ReportPositions replaces it)."""
    key = (order.symbol, order.exchange)
    pos = st.positions.get(key)
    if pos is None:
        st.positions[key] = Position(order.symbol, order.side, qty, price, price, order.exchange)
        return
    if pos.side is order.side:
        total = pos.quantity + qty
        entry = (pos.entry_price * pos.quantity + price * qty) / total
        st.positions[key] = Position(pos.symbol, pos.side, total, entry, price, pos.exchange, pos.leverage,
                                     pos.volatility)
        return
    left = pos.quantity - qty
    if left > 1e-12 * pos.quantity:
        st.positions[key] = Position(pos.symbol, pos.side, left, pos.entry_price, price, pos.exchange, pos.leverage,
                                     pos.volatility)
    elif left < -1e-12 * pos.quantity:  # flipped
        st.positions[key] = Position(pos.symbol, order.side, -left, price, price, pos.exchange, pos.leverage,
                                     pos.volatility)
    else:
        del st.positions[key]


def cancel_ids(st: TraderState) -> tuple[str, ...]:
    """The client_order_ids a cancel_all_orders action names: every pending order."""
    return tuple(st.orders)
