"""WatchRiskState fan-out: a bounded buffer per stream, so a slow watcher never slows the hot path.

`WatchUpdates` is the engine listener that turns every state change into an update for the trader's watchers
(`WatchHub`). On overflow the oldest pending update is dropped and counted; its actions and breaker events are
carried into the next update sent, so a watcher always gets the latest state and never misses a directive.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable

from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import types_pb2 as t

from ..engine.events import StateChanged
from ..engine.state import TraderState
from ..engine.types import RequiredAction
from . import convert

CARRY_MAX = 256


class Watcher:
    """One WatchRiskState stream."""

    __slots__ = ("buffer", "closed", "event", "peer", "pending", "skipped", "unknown")

    def __init__(self, buffer: int, peer: str = "", unknown: bool = False) -> None:
        self.buffer = buffer
        self.peer = peer  # the connection's address ("" = not counted per connection)
        self.unknown = unknown  # started on a trader id the engine did not know: counted in that budget
        self.pending: deque[rs.WatchRiskStateResponse] = deque()
        self.skipped = 0
        self.closed = False
        self.event = asyncio.Event()

    def push(self, update: rs.WatchRiskStateResponse) -> None:
        if len(self.pending) >= self.buffer:
            dropped = self.pending.popleft()
            self.skipped += 1
            carry = rs.WatchRiskStateResponse()
            carry.actions.extend(dropped.actions[:CARRY_MAX])
            carry.breaker_events.extend(dropped.breaker_events[:CARRY_MAX])
            if len(carry.actions) or len(carry.breaker_events):
                nxt = self.pending[0] if self.pending else update
                nxt.actions.extend(carry.actions)
                nxt.breaker_events.extend(carry.breaker_events)
        self.pending.append(update)
        self.event.set()

    async def next(self) -> rs.WatchRiskStateResponse | None:
        while not self.pending:
            if self.closed:
                return None
            self.event.clear()
            await self.event.wait()
        update = self.pending.popleft()
        if self.skipped:
            update.skipped_updates = self.skipped
            self.skipped = 0
        return update

    def close(self) -> None:
        self.closed = True
        self.event.set()


def connection_key(peer: str) -> str:
    """The per-connection budget's key: a TCP peer (address and port) is one connection. Unix-socket peers
    carry no port (every client looks alike), so they are not counted per connection."""
    return "" if peer.startswith("unix") else peer


class WatchHub:
    """Watchers by trader id, within budgets so that one client can never take the slots other bots need.

    Budgets (0 = none): all streams (`max_watchers`), per trader id (`max_per_trader`), per connection
    (`max_per_connection`), and streams started on trader ids not known yet (`max_unknown`): those cost the
    caller nothing to invent, so together they get a small budget of their own.
    """

    def __init__(self, buffer: int = 64, max_watchers: int = 1000, max_per_trader: int = 0,
                 max_per_connection: int = 0, max_unknown: int = 0) -> None:
        self.buffer = buffer
        self.max_watchers = max_watchers
        self.max_per_trader = max_per_trader  # 0 = no per-trader limit; every report fans out to them all
        self.max_per_connection = max_per_connection
        self.max_unknown = max_unknown
        self._by_trader: dict[str, set[Watcher]] = {}
        self._by_peer: dict[str, int] = {}
        self._unknown = 0
        self._count = 0
        self._closed = False

    def watching(self, trader_id: str) -> bool:
        return trader_id in self._by_trader

    @property
    def count(self) -> int:
        return self._count

    def subscribe(self, trader_id: str, peer: str = "", known: bool = True) -> Watcher | None:
        """A new watcher, or None when a budget is spent or the hub is closed."""
        if self._closed or self._count >= self.max_watchers:
            return None
        watchers = self._by_trader.get(trader_id)
        if watchers is not None and 0 < self.max_per_trader <= len(watchers):
            return None
        key = connection_key(peer)
        if key and 0 < self.max_per_connection <= self._by_peer.get(key, 0):
            return None
        if not known and 0 < self.max_unknown <= self._unknown:
            return None
        watcher = Watcher(self.buffer, key, not known)
        self._by_trader.setdefault(trader_id, set()).add(watcher)
        self._count += 1
        if key:
            self._by_peer[key] = self._by_peer.get(key, 0) + 1
        if not known:
            self._unknown += 1
        return watcher

    def unsubscribe(self, trader_id: str, watcher: Watcher) -> None:
        watchers = self._by_trader.get(trader_id)
        if watchers is not None and watcher in watchers:
            watchers.discard(watcher)
            self._count -= 1
            if not watchers:
                del self._by_trader[trader_id]
            if watcher.peer:
                left = self._by_peer[watcher.peer] - 1
                if left:
                    self._by_peer[watcher.peer] = left
                else:
                    del self._by_peer[watcher.peer]
            if watcher.unknown:
                self._unknown -= 1

    def publish(self, trader_id: str, update: rs.WatchRiskStateResponse) -> None:
        watchers = self._by_trader.get(trader_id)
        if not watchers:
            return
        last = len(watchers) - 1
        for i, watcher in enumerate(watchers):
            if i == last:
                watcher.push(update)
            else:
                copy = rs.WatchRiskStateResponse()
                copy.CopyFrom(update)
                watcher.push(copy)

    def close(self) -> None:
        """End every stream cleanly (shutdown)."""
        self._closed = True
        for watchers in self._by_trader.values():
            for watcher in watchers:
                watcher.close()


def _never() -> bool:
    return False


class WatchUpdates:
    """The engine listener (`events.Listener`) that publishes each StateChanged to the trader's watchers: the
    state, the change's cause as the reason ("equity_report", "paused by operator", "breaker fired on can_trade",
    ...), its actions and its breaker events. Costs one dict lookup for a trader nobody watches.

    `muted()` true: changes are not published (the replay of the calls received before the stored state loaded:
    those were published when they arrived, and the load publishes the resulting state).
    """

    __slots__ = ("_watching", "hub", "muted", "state_msg")

    def __init__(self, hub: WatchHub, state_msg: Callable[[TraderState, bool], t.RiskState],
                 muted: Callable[[], bool] = _never) -> None:
        self.hub = hub
        self.state_msg = state_msg
        self.muted = muted
        self._watching = hub.watching

    def __call__(self, event: StateChanged) -> None:
        st = event.state
        if not self._watching(st.trader_id) or self.muted():
            return
        # Order bookkeeping (an order allowed, accepted, cancelled, released) carries pending_order_count, not the
        # list: a busy bot's every order would otherwise copy every pending order (~60 µs for 100) on the hot path.
        # The initial update, every other change and GetRiskState list them.
        update = rs.WatchRiskStateResponse(state=self.state_msg(st, event.audit), reason=event.cause or event.reason)
        update.actions.extend(convert.action_msg(a) for a in event.actions)
        update.breaker_events.extend(convert.firing_msg(f, st) for f in event.firings)
        self.hub.publish(st.trader_id, update)

    def publish(self, st: TraderState, reason: str, actions: Iterable[RequiredAction] = ()) -> None:
        """An update that is no engine change (the stored state loaded), with the actions in force (a HALTED
        trader's cancel_all_orders)."""
        if self.hub.watching(st.trader_id):
            update = rs.WatchRiskStateResponse(state=self.state_msg(st, True), reason=reason)
            update.actions.extend(convert.action_msg(a) for a in actions)
            self.hub.publish(st.trader_id, update)
