"""The order lifecycle: orders count from the moment CanTrade allows them (pure functions over a TraderState).

An allowed order becomes a *pending order* (types.PendingOrder). Until it is finished its unfilled quantity
counts in every exposure check as if it had filled (checks.split_order and the exposure checks read the per-venue
sums in `TraderState.pending`, kept here, so no check walks the orders). What happens to it comes from
ReportOrder:

- `filled_quantity` is cumulative: a report moves only what it adds to the known fill from pending into the
  position (`apply_fill`), so a repeated or older report moves nothing;
- a final status (FILLED, CANCELLED, REJECTED, EXPIRED) is never undone; the order leaves the pending orders and
  is remembered among the last FINISHED_ORDERS_KEPT finished ones, so a repeated or late report is recognised
  (a late larger fill of a finished order still counts);
- an order nothing is reported on for pending_order_ttl_seconds is released (`expire`): it stops counting.
  Every report refreshes that time, so a working order re-reported (ACCEPTED) keeps counting.

A later ReportPositions is the truth: it replaces the positions, fills included. A fill of an order allowed before
the last ReportPositions may already be in it: it is kept apart (`unreconciled`, see `report`) and counts in
the exposure checks but never as a position an order could reduce, until the next ReportPositions: an over-count
of exposure, never an under-count, and never a "reducing" order that in truth opens a position.
"""

from __future__ import annotations

import heapq
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from dataclasses import replace

from .state import (
    FILL_TIMES_KEPT,
    FINISHED_ORDERS_KEPT,
    INF,
    ORDER_IDS_KEPT,
    ORDER_TIMES_KEPT,
    TraderState,
    VenuePending,
)
from .types import OrderStatus, PendingOrder, Position, Side

_BUY = Side.BUY


class UnknownOrderError(LookupError):
    """ReportOrder named a client_order_id the trader has no pending or recent order under."""


def _count(st: TraderState, order: PendingOrder, sign: int) -> None:
    """Add (sign 1) or take back (sign -1) what an order may still add on its venue: its unfilled quantity while
    it is live, plus its unreconciled fill (see `report`). Only a live order counts as open."""
    qty = order.remaining + order.unreconciled
    is_open = not order.status.final
    if qty <= 0.0 and not is_open:
        return
    key = (order.symbol, order.exchange)
    vp = st.pending.get(key)
    if vp is None:
        if sign < 0:
            return
        vp = st.pending[key] = VenuePending()
        st.pending_venues.setdefault(order.symbol, set()).add(order.exchange)
    qty *= sign
    notional = qty * order.price
    if order.side is _BUY:
        vp.buy += qty
        vp.buy_notional += notional
        st.pending_notional[0] += notional
    else:
        vp.sell += qty
        vp.sell_notional += notional
        st.pending_notional[1] += notional
    if is_open:
        vp.count += sign
    vp.entries += sign
    if vp.entries <= 0:
        del st.pending[key]
        venues = st.pending_venues.get(order.symbol)
        if venues is not None:
            venues.discard(order.exchange)
            if not venues:
                del st.pending_venues[order.symbol]


def uncount(st: TraderState, order: PendingOrder) -> None:
    """Take an order's contribution out of the venue sums for a moment (put it back with `recount`)."""
    _count(st, order, -1)


def recount(st: TraderState, order: PendingOrder) -> None:
    _count(st, order, 1)


def rebuild_pending(st: TraderState) -> None:
    """Recompute the per-venue sums from the pending orders and the unreconciled fills (after a restore)."""
    st.pending = {}
    st.pending_venues = {}
    st.pending_notional = [0.0, 0.0]
    for order in st.orders.values():
        _count(st, order, 1)
    for order in st.finished_orders.values():
        if order.unreconciled > 0.0:
            _count(st, order, 1)
    st.expiry_heap = [(o.expires_at, oid) for oid, o in st.orders.items()]
    heapq.heapify(st.expiry_heap)
    st.next_order_expiry = next_expiry(st)


_SIDE_INT = {side: int(side) for side in Side}  # int(Side.BUY) costs ~0.1 µs; the key holds the int


def _allowed_at(order: PendingOrder) -> float:
    return order.allowed_at


def rebuild_windows(st: TraderState, *, stored: bool = False) -> None:
    """Rebuild the order windows after a restore (never on the hot path), from the orders the state holds (the
    pending ones and the last FINISHED_ORDERS_KEPT finished ones, by allowed_at) and the times it was restored with:
    - `recent_orders` (duplicate_order_window_ms, memory only): the key the engine builds, (symbol, int(side),
      quantity, price), -> when the last such order was allowed; the newest ORDER_IDS_KEPT keys, oldest first, as
      the engine keeps it;
    - `order_times` (max_orders_per_window, order_rate breakers): the stored times (engine.snapshot: the newest
      1,000) merged with every allowed_at: an order in both counts once;
    - `fill_times` (max_fills_per_window): with `stored` (a row written since the windows are stored) the stored
      times as they are: every partial fill counts, and a resume that emptied the window stays empty. Without it
      (a row of an older version), one time per order with a fill, its `last_fill_at`: a lower bound.

    Times after the clock's now (a clock stepped back across the restart) are clamped by `clamp_windows`, which
    RiskEngine.restore calls.
    """
    known = sorted((*st.orders.values(), *st.finished_orders.values()), key=_allowed_at)
    recent: OrderedDict[tuple[str, int, float, float], float] = OrderedDict()
    pop, side_int = recent.pop, _SIDE_INT
    for order in known:
        key = (order.symbol, side_int[order.side], order.quantity, order.price)  # as RiskEngine._reserve builds it
        pop(key, None)
        recent[key] = order.allowed_at
    while len(recent) > ORDER_IDS_KEPT:
        recent.popitem(last=False)
    st.recent_orders = recent
    count_held_orders(st)
    if not stored:
        fills = sorted(o.last_fill_at for o in known if o.filled > 0.0 and o.last_fill_at > 0.0)
        st.fill_times = deque(fills, maxlen=FILL_TIMES_KEPT)


def count_held_orders(st: TraderState, now: float = INF) -> None:
    """Every order `st` holds (pending, and the last FINISHED_ORDERS_KEPT finished) counts in `order_times` at its
    allowed_at, once: merged with the times there (an order in both counts once). Times after `now` count as now on
    both sides (clamp_windows), so a time clamped at a restore and its order's own time are one."""
    allowed = sorted(min(o.allowed_at, now) for o in (*st.orders.values(), *st.finished_orders.values()))
    times = st.order_times
    if not times:
        st.order_times = deque(allowed, maxlen=ORDER_TIMES_KEPT)
        return
    merged = merge_times((min(t, now) for t in times), allowed)
    if len(merged) != len(times):  # (an order more: replaced; the times as they were otherwise)
        times.clear()
        times.extend(merged)


def merge_times(kept: Iterable[float], more: Iterable[float]) -> list[float]:
    """Two lists of order times of the same orders as one, sorted: a time in both counts as often as in the one
    holding it more often (an order in an older row's order times and among its orders counts once)."""
    merged = Counter(kept) | Counter(more)
    return sorted(merged.elements())


def clamp_windows(st: TraderState, now: float) -> None:
    """Window times after `now` count as now (as the engine takes a report's time after now): a clock stepped back
    across a restart would otherwise keep a restored order or fill in its window for as long as the step, and a
    duplicate denied all that time. Clamped, each counts for one window from now at most. (Clamping keeps sorted
    times sorted, and the duplicate keys in their order.)"""
    for times in (st.order_times, st.fill_times):
        if times and max(times) > now:
            clamped = [min(t, now) for t in times]
            times.clear()
            times.extend(clamped)
    recent = st.recent_orders
    if recent and max(recent.values()) > now:
        for key, at in list(recent.items()):
            if at > now:
                recent[key] = now


def add_order(st: TraderState, order: PendingOrder) -> None:
    """A newly allowed order starts counting."""
    st.orders[order.client_order_id] = order
    _count(st, order, 1)
    _schedule(st, order)


def _schedule(st: TraderState, order: PendingOrder) -> None:
    heapq.heappush(st.expiry_heap, (order.expires_at, order.client_order_id))
    if order.expires_at < st.next_order_expiry:
        st.next_order_expiry = order.expires_at


def _finish(st: TraderState, order: PendingOrder) -> None:
    """A live order becomes finished (its contribution already taken back by the caller); what it still holds
    unreconciled counts on among the finished ones."""
    st.orders.pop(order.client_order_id, None)
    finished = st.finished_orders
    finished[order.client_order_id] = order
    finished.move_to_end(order.client_order_id)
    if order.unreconciled > 0.0:
        _count(st, order, 1)
    while len(finished) > FINISHED_ORDERS_KEPT:
        _id, old = finished.popitem(last=False)
        if old.unreconciled > 0.0:  # forgotten: its fill is taken as not in the reported position
            _count(st, old, -1)
            apply_fill(st, old, old.unreconciled, old.avg_price or old.price)


def find(st: TraderState, client_order_id: str) -> PendingOrder | None:
    return st.orders.get(client_order_id) or st.finished_orders.get(client_order_id)


def report(
    st: TraderState, client_order_id: str, status: OrderStatus, filled: float, avg_price: float, now: float,
    ttl_s: float,
) -> tuple[PendingOrder, float, bool, bool]:
    """Apply one ReportOrder. Returns (the order after it, the quantity newly filled, whether it changed, whether
    only its expiry moved: a repeated ACCEPTED keeps a resting order counting for another TTL, which the stored
    state must know too). `TraderState.next_order_expiry` stays a lower bound: a report only moves an expiry later.

    `filled` is cumulative; a smaller one than known moves nothing; FILLED means the whole order. A report on a
    finished order changes only a larger fill; its status stays. ALLOWED is not a status a bot reports.

    A new fill moves into the position on the order's venue, unless a ReportPositions came after the order was
    allowed (`PendingOrder.reported`): that report may already contain the fill, so the fill is kept as the order's
    `unreconciled` quantity instead. It counts like pending quantity (in the exposure checks, never as a position
    an order could reduce) until the next ReportPositions, which contains it for certain.
    """
    live = st.orders.get(client_order_id)
    order = live or st.finished_orders.get(client_order_id)
    if order is None:
        raise UnknownOrderError(
            f"client_order_id {client_order_id!r} names no order CanTrade allowed for this trader (or one finished "
            f"long ago): report the position with ReportPositions instead")
    if status is OrderStatus.FILLED:
        filled = order.quantity  # FILLED means the whole order, whatever quantity came with it
    filled = min(filled, order.quantity)
    new_fill = filled - order.filled if filled > order.filled else 0.0
    fill_price = avg_price if avg_price > 0.0 else order.price
    total = order.filled + new_fill
    avg = ((order.avg_price * order.filled + fill_price * new_fill) / total) if new_fill > 0.0 and total > 0.0 \
        else order.avg_price
    if live is None and order.released and not status.final and total < order.quantity:
        # Released by its TTL, but the bot says it is still working: it counts again.
        _count(st, order, -1)
        del st.finished_orders[client_order_id]
        live = replace(order, status=status if status > OrderStatus.ALLOWED else OrderStatus.ACCEPTED, released=False,
                       expires_at=now + ttl_s)
        if new_fill > 0.0:
            live = _filled(st, replace(live, filled=total, avg_price=avg, last_fill_at=now), new_fill, fill_price)
        add_order(st, live)
        return live, new_fill, True, False
    if live is None:  # finished: only a larger fill still counts
        if new_fill <= 0.0:
            return order, 0.0, False, False
        _count(st, order, -1)
        updated = _filled(st, replace(order, filled=total, avg_price=avg, expires_at=now + ttl_s, last_fill_at=now),
                          new_fill, fill_price)
        st.finished_orders[client_order_id] = updated
        _count(st, updated, 1)
        return updated, new_fill, True, False
    new_status = status if status > order.status or status.final else order.status
    if total >= order.quantity and not new_status.final:
        new_status = OrderStatus.FILLED
    if new_fill <= 0.0 and new_status is order.status:
        # Nothing new, but the bot says the order is alive: it keeps counting for another TTL.
        if order.expires_at < now + ttl_s:
            order = replace(order, expires_at=now + ttl_s)
            st.orders[client_order_id] = order  # (the same quantities: the venue sums stand)
            _schedule(st, order)
            return order, 0.0, False, True
        return order, 0.0, False, False
    _count(st, order, -1)
    updated = replace(order, filled=total, avg_price=avg, status=new_status, expires_at=now + ttl_s)
    if new_fill > 0.0:
        updated = _filled(st, replace(updated, last_fill_at=now), new_fill, fill_price)
    if updated.status.final:
        _finish(st, updated)
    else:
        st.orders[client_order_id] = updated
        _count(st, updated, 1)
        _schedule(st, updated)
    return updated, new_fill, True, False


def _filled(st: TraderState, order: PendingOrder, qty: float, price: float) -> PendingOrder:
    """A new fill of `order` (its contribution taken back by the caller): into the position, or kept unreconciled
    when a positions report since the order was allowed may already hold it."""
    if order.reported:
        return replace(order, unreconciled=order.unreconciled + qty)
    apply_fill(st, order, qty, price)
    return order


def positions_reported(st: TraderState, observed_at: float) -> None:
    """A ReportPositions replaced the positions with a snapshot taken at `observed_at`: it holds every fill
    reported by then. An order whose latest fill was reported later keeps all its fills unreconciled (the snapshot
    may hold none of them): they count as exposure, never as a position to reduce, until a later snapshot holds
    them. Every order allowed by then is marked `reported`: its later fills may be in this snapshot too."""
    changed = False
    for oid, order in list(st.orders.items()):
        keep = order.filled if order.last_fill_at > observed_at else 0.0
        reported = order.reported or order.allowed_at <= observed_at
        if reported != order.reported or keep != order.unreconciled:
            st.orders[oid] = replace(order, reported=reported, unreconciled=keep)
            changed = True
    for oid, order in list(st.finished_orders.items()):
        keep = order.filled if order.last_fill_at > observed_at else 0.0
        reported = order.reported or order.allowed_at <= observed_at  # (a late fill of it may be in the snapshot)
        if reported != order.reported or keep != order.unreconciled:
            st.finished_orders[oid] = replace(order, reported=reported, unreconciled=keep)
            changed = True
    if changed:
        rebuild_pending(st)


def expire(st: TraderState, now: float) -> list[PendingOrder]:
    """Release the pending orders nothing was reported on in time (they stop counting). Returns them. (A released
    order's unreconciled fill still counts, until the next ReportPositions.)"""
    heap, gone = st.expiry_heap, []
    while heap and heap[0][0] <= now:
        at, oid = heapq.heappop(heap)
        order = st.orders.get(oid)
        if order is None or order.expires_at != at:  # finished, or refreshed since (a later entry stands for it)
            continue
        _count(st, order, -1)
        _finish(st, replace(order, status=OrderStatus.EXPIRED, released=True))
        gone.append(order)
    st.next_order_expiry = next_expiry(st)
    return gone


def next_expiry(st: TraderState) -> float:
    """When the next pending order may be released (inf when none; earlier when a refreshed entry is first)."""
    return st.expiry_heap[0][0] if st.expiry_heap else float("inf")


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
