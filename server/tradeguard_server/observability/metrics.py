"""Prometheus metrics: the seed's `risk_*` series plus TradeGuard's own `tradeguard_*` series.

`MetricsSink` is what the rest of the sidecar calls; two independent implementations:
- `PrometheusMetrics`: everything on a private `CollectorRegistry` served by `prometheus_client.start_http_server`
  on `settings.metrics_listen` (default `127.0.0.1:9464`);
- `NullMetrics` (`metrics_listen` empty): every call a no-op, and `instrument` hands the handlers back unwrapped,
  so the hot path pays nothing at all.

Hot-path rules (CanTrade answers in tens of microseconds):
- label children are looked up once and cached (`.labels()` costs microseconds; a dict hit does not);
- per-trader gauges move when the engine announces a state change (`state_changed`), never per CanTrade;
- the per-RPC histogram, the decision counter and `risk_check_latency_ms` are plain ints and floats
  (`_HotPath`), turned into samples at scrape time: one `perf_counter` pair, one bisect and a few
  increments per call, no locks (about 0.9 µs per CanTrade where the handler takes about 100 µs).

Cardinality: at most `MAX_TRADER_LABELS` distinct `trader_id` label values; traders seen after that
share `trader_id="__other__"` (and `tradeguard_metric_label_overflow_total{label="trader_id"}` counts
them). The same cap guards `breaker_id` and decision `code` label values. For `__other__`,
`risk_trading_paused` is the number of overflow traders currently paused; `risk_daily_pnl` and
`risk_drawdown` hold the value of the overflow trader that changed last.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, cast

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from ..store.protocol import HistoryCounters

log = logging.getLogger("tradeguard.metrics")

MAX_TRADER_LABELS = 1000
"""Distinct trader_id (and breaker_id, code) label values kept; the rest go to OTHER."""
OTHER = "__other__"
RPC_BUCKETS = (
    0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5
)
PERSIST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CHECK_METHOD = "CanTrade"
OUTCOMES = ("allowed", "denied", "shadow")
RPC_HELP = "Server-side duration of unary RPC handlers (validation + engine + reply), seconds."
DECISIONS_HELP = "CanTrade decisions by DecisionCode and outcome (shadow = would deny, enforcement off)."
CHECK_HELP = "Duration of the last CanTrade handler, ms."
_go_float = cast(Callable[[float], str], floatToGoString)  # the text prometheus_client itself writes for `le`
_BOUNDS_TEXT = (*(_go_float(b) for b in RPC_BUCKETS), "+Inf")

Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


def parse_listen(listen: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (all interfaces) -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected host:port, got {listen!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def only_metrics_path(app: Any) -> Any:
    """The WSGI app of /metrics, with 404 for every other path: `curl :9464/api/...` must not look like success."""

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "") in ("/metrics", "/metrics/"):
            return cast(Iterable[bytes], app(environ, start_response))
        start_response("404 Not Found", [("Content-Type", "application/json")])
        return [b'{"code":5,"message":"no such path: this listener serves only /metrics","details":[]}']

    return wsgi


class _HotPath(Collector):
    """Lock-free counters for what every RPC touches, exposed through a custom collector at scrape time.

    prometheus_client guards every child with a mutex (about a microsecond per update on a slow host, and
    CanTrade would do three); these are plain ints and floats written by the event-loop thread only and
    read by the scrape thread under the GIL. A scrape may see a bucket and the sum one observation apart.
    """

    def __init__(self) -> None:
        self.rpc: dict[str, tuple[list[int], list[float]]] = {}  # method -> (bucket counts + [+Inf], [sum])
        self.decisions: dict[str, list[int]] = {}  # code name -> [allowed, denied, shadow]
        self.last_check_ms = [0.0]

    def rpc_slot(self, method: str) -> tuple[list[int], list[float]]:
        slot = self.rpc.get(method)
        if slot is None:
            slot = self.rpc[method] = ([0] * (len(RPC_BUCKETS) + 1), [0.0])
        return slot

    def describe(self) -> Iterable[Metric]:
        yield HistogramMetricFamily("tradeguard_rpc_duration_seconds", RPC_HELP, labels=["method"])
        yield CounterMetricFamily("tradeguard_decisions", DECISIONS_HELP, labels=["code", "outcome"])
        yield GaugeMetricFamily("risk_check_latency_ms", CHECK_HELP)

    def collect(self) -> Iterable[Metric]:
        hist = HistogramMetricFamily("tradeguard_rpc_duration_seconds", RPC_HELP, labels=["method"])
        for method, (counts, total) in list(self.rpc.items()):
            cumulative, buckets = 0, []
            for bound, count in zip(_BOUNDS_TEXT, list(counts), strict=True):
                cumulative += count
                buckets.append((bound, float(cumulative)))
            hist.add_metric([method], buckets, total[0])
        yield hist
        decisions = CounterMetricFamily("tradeguard_decisions", DECISIONS_HELP, labels=["code", "outcome"])
        for code, counts in list(self.decisions.items()):
            for outcome, count in zip(OUTCOMES, list(counts), strict=True):
                decisions.add_metric([code, outcome], float(count))
        yield decisions
        yield GaugeMetricFamily("risk_check_latency_ms", CHECK_HELP, value=self.last_check_ms[0])




class _HistoryCollector(Collector):
    """risk_state_history rows, read from the store's counters together at scrape time:
    enqueued = written + dropped + rejected + pending, where pending (queued or being written) is what a
    healthy writer has not committed yet."""

    def __init__(self, store: HistoryCounters) -> None:
        self.store = store

    def describe(self) -> Iterable[Metric]:
        return self.collect()

    def collect(self) -> Iterable[Metric]:
        store = self.store
        enqueued, written = store.enqueued.get("history", 0), store.rows_written.get("history", 0)
        rejected, dropped = store.rejected.get("history", 0), store.dropped_history
        yield CounterMetricFamily("tradeguard_history_rows_enqueued", "risk_state_history rows queued for the "
                                  "store (one per state change while persistence is on).", value=enqueued)
        yield CounterMetricFamily("tradeguard_history_rows_written", "risk_state_history rows committed.",
                                  value=written)
        yield CounterMetricFamily("tradeguard_history_rows_dropped", "risk_state_history rows dropped, oldest "
                                  "first, because the backlog reached queue_size (the database could not keep "
                                  "up or was down).", value=dropped)
        yield CounterMetricFamily("tradeguard_history_rows_rejected", "risk_state_history rows the database "
                                  "refused (logged).", value=rejected)
        yield GaugeMetricFamily("tradeguard_history_rows_pending", "risk_state_history rows queued or being "
                                "written: enqueued - written - dropped - rejected.",
                                value=enqueued - written - dropped - rejected)


class OrderCounters(Protocol):
    """What the pending-order metrics read (the engine), at scrape time."""

    def pending_orders(self) -> int: ...

    def orders_released(self) -> int: ...


class _OrdersCollector(Collector):
    """Pending orders (issue 16), read from the engine at scrape time."""

    def __init__(self, engine: OrderCounters) -> None:
        self.engine = engine

    def describe(self) -> Iterable[Metric]:
        return self.collect()

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily("tradeguard_pending_orders", "Orders CanTrade allowed that are not finished yet "
                                "(they count in the exposure checks as if filled), over every trader.",
                                value=self.engine.pending_orders())
        yield CounterMetricFamily("tradeguard_pending_orders_expired", "Pending orders released because nothing "
                                  "was reported on them for pending_order_ttl_seconds.",
                                  value=self.engine.orders_released())


class ControlCounters(Protocol):
    """What the control-state metrics read (cluster: the plane and its listener), at scrape time."""

    def control_state_age_seconds(self) -> float: ...

    def control_state_version(self) -> int: ...

    def control_changes_applied(self) -> dict[str, int]: ...


class _ControlCollector(Collector):
    """The shared control state (issue 17), read at scrape time: the age grows while nothing is heard."""

    def __init__(self, control: ControlCounters) -> None:
        self.control = control

    def describe(self) -> Iterable[Metric]:
        return self.collect()

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily("tradeguard_control_state_age_seconds", "Seconds since this sidecar last heard the "
                                "shared control state from the database (0 without a shared database).",
                                value=self.control.control_state_age_seconds())
        yield GaugeMetricFamily("tradeguard_control_state_version", "The control-state version this sidecar has "
                                "seen (every CanTrade answer carries it).", value=self.control.control_state_version())
        applied = CounterMetricFamily("tradeguard_control_changes_applied", "Control changes made through other "
                                      "sidecars and applied here, by kind.", labels=["kind"])
        for kind, n in sorted(self.control.control_changes_applied().items()):
            applied.add_metric([kind], n)
        yield applied


class AlertCounters(Protocol):
    """What the alert metrics read (alerts.AlertDispatcher), at scrape time."""

    def alerts_sent(self) -> dict[tuple[str, str], int]: ...

    def alerts_failed(self) -> dict[str, int]: ...

    def alerts_pending(self) -> int: ...

    def notifiers_up(self) -> dict[str, bool]: ...


class _AlertsCollector(Collector):
    """Alerts that reach people (issue 20), read from the dispatcher at scrape time."""

    def __init__(self, alerts: AlertCounters) -> None:
        self.alerts = alerts

    def describe(self) -> Iterable[Metric]:
        return self.collect()

    def collect(self) -> Iterable[Metric]:
        sent = CounterMetricFamily("tradeguard_alerts_sent", "Alerts delivered (the receiver answered 2xx), by "
                                   "notifier and event.", labels=["notifier", "event"])
        for (notifier, event), n in sorted(self.alerts.alerts_sent().items()):
            sent.add_metric([notifier, event], n)
        yield sent
        failed = CounterMetricFamily("tradeguard_alerts_failed", "Alert delivery attempts that failed (each is "
                                     "retried), and deliveries dropped from a full queue, by notifier.",
                                     labels=["notifier"])
        for notifier, n in sorted(self.alerts.alerts_failed().items()):
            failed.add_metric([notifier], n)
        yield failed
        yield GaugeMetricFamily("tradeguard_alerts_pending", "Alert deliveries not done yet (one per alert and "
                                "notifier), over every notifier.", value=self.alerts.alerts_pending())
        up = GaugeMetricFamily("tradeguard_alert_notifier_up", "1 while the notifier delivers; 0 after "
                               "alert_dead_after_failures consecutive failures or an alert older than "
                               "alert_dead_after_s undelivered.", labels=["notifier"])
        for notifier, ok in sorted(self.alerts.notifiers_up().items()):
            up.add_metric([notifier], 1.0 if ok else 0.0)
        yield up


class RetentionCounters(Protocol):
    """The history pruner's counters (store.retention.Pruner), read at scrape time."""

    pruned: dict[str, int]
    last_run_at: float


class _RetentionCollector(Collector):
    """tradeguard_retention_rows_pruned_total{table} and tradeguard_retention_last_run_timestamp_seconds."""

    def __init__(self, pruner: RetentionCounters) -> None:
        self.pruner = pruner

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        pruned = CounterMetricFamily("tradeguard_retention_rows_pruned", "Rows deleted by the history retention "
                                     "(history_retention_days, trade_retention_days, breaker_event_retention_days), "
                                     "by table.", labels=["table"])
        for table, n in self.pruner.pruned.items():
            pruned.add_metric([table], float(n))
        yield pruned
        yield GaugeMetricFamily("tradeguard_retention_last_run_timestamp_seconds", "When the last retention run "
                                "finished, Unix seconds (0: none yet).", value=self.pruner.last_run_at)


class MetricsSink(Protocol):
    """What the sidecar reports to metrics (composition root, store sampler, engine listeners)."""

    def serve(self, listen: str) -> str:
        """Start serving /metrics on `listen` (host:port); returns the bound address ("" when nothing serves)."""

    def close(self) -> None:
        """Stop serving /metrics."""

    def instrument(
        self, methods: Mapping[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        """The method handlers to register, timed or as given."""

    def state_changed(self, trader_id: str, daily_pnl: float, drawdown_pct: float, paused: bool) -> None:
        """A trader's state moved."""

    def breach(self, rule: str, trader_id: str = "") -> None:
        """A risk limit was breached."""

    def breaker_fired(self, breaker_id: str) -> None:
        """A circuit breaker fired."""

    def persist_attempt(self) -> None:
        """The store writer tried to commit a batch."""

    def persist_failure(self) -> None:
        """A batch's commit failed (it is retried)."""

    def persist_latency_ms(self, value: float) -> None:
        """Duration of the last store commit, ms."""

    def queue_depth(self, n: int) -> None:
        """Items waiting in the store write queue."""

    def observe_store(self, store: HistoryCounters) -> None:
        """Export the store's history row counters, read at scrape time."""

    def store_healthy(self, healthy: bool) -> None:
        """Whether the last store write succeeded."""

    def observe_orders(self, engine: OrderCounters) -> None:
        """Export the pending-order gauge and the TTL releases, read at scrape time."""

    def observe_control(self, control: ControlCounters) -> None:
        """Export the control-state age, version and changes applied, read at scrape time."""

    def observe_alerts(self, alerts: AlertCounters) -> None:
        """Export the alert counters (sent, failed, pending, notifier up), read at scrape time."""

    def observe_retention(self, pruner: RetentionCounters) -> None:
        """Export the history pruner's rows pruned and last run, read at scrape time."""


class PrometheusMetrics:
    """The sidecar's metrics (a `MetricsSink`). One instance per Sidecar, each on its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None, max_label_values: int = MAX_TRADER_LABELS,
                 version: str = "") -> None:
        reg = self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.max_label_values = max_label_values
        self._server: WSGIServer | None = None
        self._hot = _HotPath()
        reg.register(self._hot)  # tradeguard_rpc_duration_seconds, tradeguard_decisions, risk_check_latency_ms
        # ---- the seed's series, by their names ----
        self.daily_pnl = Gauge("risk_daily_pnl", "Equity change since the start of the UTC day (account currency).",
                               ["trader_id"], registry=reg)
        self.drawdown = Gauge("risk_drawdown", "Drawdown from peak equity, percent.", ["trader_id"], registry=reg)
        self.trading_paused = Gauge("risk_trading_paused", "1 when the trader is not ACTIVE (REDUCING or HALTED).",
                                    ["trader_id"], registry=reg)
        self.limit_breaches = Counter("risk_limit_breaches", "Risk limit breaches, by trader and rule.",
                                      ["trader_id", "rule"], registry=reg)
        self.persist_attempts = Counter("risk_persistence_attempts", "Batches the store writer tried to commit.",
                                        registry=reg)
        self.persist_failures = Counter("risk_persistence_failures", "Batches whose commit failed (retried).",
                                        registry=reg)
        self.persist_latency_ms_gauge = Gauge("risk_persist_latency_ms", "Duration of the last store commit, ms.",
                                              registry=reg)
        # ---- TradeGuard's own ----
        self.queue_depth_gauge = Gauge("tradeguard_store_queue_depth", "Items waiting in the store write queue.",
                                       registry=reg)
        self.persist_duration = Histogram("tradeguard_persist_duration_seconds", "Store batch commit duration.",
                                          buckets=PERSIST_BUCKETS, registry=reg)
        self.breaker_firings = Counter("tradeguard_breaker_firings", "Circuit breaker firings, by breaker id.",
                                       ["breaker_id"], registry=reg)
        self.store_healthy_gauge = Gauge("tradeguard_store_healthy", "1 when the last store write succeeded.",
                                         registry=reg)
        self.label_overflow = Counter("tradeguard_metric_label_overflow",
                                      f"Folds into {OTHER!r} by the cardinality cap: distinct traders for "
                                      "trader_id, events for code and breaker_id.", ["label"], registry=reg)
        self.build_info = Gauge("tradeguard_build_info", "Build information; the value is always 1.",
                                ["version", "python"], registry=reg)
        self.build_info.labels(version or _version(), platform.python_version()).set(1)
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        # ---- cached children ----
        self._traders: dict[str, tuple[Any, Any, Any]] = {}
        self._overflow_paused: set[str] = set()
        self._overflow_seen: set[str] = set()
        self._other_trader: tuple[Any, Any, Any] | None = None
        self._breaches: dict[tuple[str, str], Any] = {}
        self._decisions_by_number: dict[int, list[int]] = {}
        self._breakers: dict[str, Any] = {}
        self.store_healthy_gauge.set(1)
        # at 0 from the start: TradeGuardMetricLabelOverflow's increase() cannot see a series' first sample, so a
        # counter born at its first fold (at 500 after 1,500 bots start at once) would never fire it
        for label in ("trader_id", "code", "breaker_id"):
            self.label_overflow.labels(label)

    # ---- lifecycle ------------------------------------------------------------------------------

    def serve(self, listen: str) -> str:
        """Start the /metrics HTTP server in a daemon thread; returns the bound host:port."""
        host, port = parse_listen(listen)
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        server.set_app(only_metrics_path(server.get_app()))  # prometheus_client answers every path with the text
        self._server = server
        bound_port = server.server_address[1]
        return f"{host}:{bound_port}" if ":" not in host else f"[{host}]:{bound_port}"

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    # ---- cardinality guard ----------------------------------------------------------------------

    def _capped(self, label: str, value: str, seen: int) -> str:
        if seen < self.max_label_values:
            return value
        self.label_overflow.labels(label).inc()
        return OTHER

    # ---- RPCs -----------------------------------------------------------------------------------

    def observe_rpc(self, method: str, seconds: float) -> None:
        counts, total = self._hot.rpc_slot(method)
        counts[bisect_left(RPC_BUCKETS, seconds)] += 1
        total[0] += seconds

    def timed(self, method: str, behavior: Behavior) -> Behavior:
        """Wrap a unary handler so that its duration lands in the histogram (slots bound once, no locks)."""
        counts, total = self._hot.rpc_slot(method)
        clock, bounds, bucket = time.perf_counter, RPC_BUCKETS, bisect_left
        if method == CHECK_METHOD:
            last_ms = self._hot.last_check_ms
            by_code = self._decisions_by_number
            slot_for = self._decision_slot_for_number

            async def timed_check(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                started = clock()
                try:
                    response = await behavior(request, context)
                finally:
                    elapsed = clock() - started
                    counts[bucket(bounds, elapsed)] += 1
                    total[0] += elapsed
                    last_ms[0] = elapsed * 1000.0
                if response is not None:  # a CanTradeResponse: count the decision it carries
                    slot = by_code.get(response.code) or slot_for(response.code)
                    slot[2 if response.would_deny else 0 if response.allowed else 1] += 1
                return response

            return timed_check

        async def timed_rpc(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = clock()
            try:
                return await behavior(request, context)
            finally:
                elapsed = clock() - started
                counts[bucket(bounds, elapsed)] += 1
                total[0] += elapsed

        return timed_rpc

    def instrument(
        self, methods: Mapping[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        """The method handlers with every unary one timed (streams are not: their length is not latency)."""
        out: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        for name, handler in methods.items():
            if handler.unary_unary is not None:
                handler = grpc.unary_unary_rpc_method_handler(
                    self.timed(name, cast(Behavior, handler.unary_unary)),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
            out[name] = handler
        return out

    # ---- decisions, state, breaches -------------------------------------------------------------

    def decision(self, code_name: str, allowed: bool, shadow: bool) -> None:
        """One CanTrade answer: `shadow` = enforcement off and the checks would have denied."""
        slot = self._hot.decisions.get(code_name) or self._decision_slot(code_name)
        slot[2 if shadow else 0 if allowed else 1] += 1

    def _decision_slot(self, code_name: str) -> list[int]:
        decisions = self._hot.decisions
        label = self._capped("code", code_name, len(decisions))
        slot = decisions.get(label)
        if slot is None:
            slot = decisions[label] = [0, 0, 0]
        return slot

    def _decision_slot_for_number(self, code: int) -> list[int]:
        from ..engine.types import DecisionCode

        try:
            name = DecisionCode(code).name
        except ValueError:
            name = str(code)
        slot = self._hot.decisions.get(name) or self._decision_slot(name)
        if len(self._decisions_by_number) < self.max_label_values:
            self._decisions_by_number[code] = slot
        return slot

    def state_changed(self, trader_id: str, daily_pnl: float, drawdown_pct: float, paused: bool) -> None:
        """A trader's state moved: update its gauges (called from the engine's change listener)."""
        children = self._traders.get(trader_id)
        if children is None:
            children = self._trader_children(trader_id)
        pnl, dd, paused_gauge = children
        pnl.set(daily_pnl)
        dd.set(drawdown_pct)
        if trader_id in self._traders:
            paused_gauge.set(1.0 if paused else 0.0)
            return
        if paused:
            self._overflow_paused.add(trader_id)
        else:
            self._overflow_paused.discard(trader_id)
        paused_gauge.set(float(len(self._overflow_paused)))

    def _trader_children(self, trader_id: str) -> tuple[Any, Any, Any]:
        if len(self._traders) < self.max_label_values:
            children = self._traders[trader_id] = (
                self.daily_pnl.labels(trader_id), self.drawdown.labels(trader_id), self.trading_paused.labels(trader_id)
            )
            return children
        if trader_id not in self._overflow_seen:
            self._overflow_seen.add(trader_id)
            self.label_overflow.labels("trader_id").inc()
        if self._other_trader is None:
            self._other_trader = (self.daily_pnl.labels(OTHER), self.drawdown.labels(OTHER),
                                  self.trading_paused.labels(OTHER))
        return self._other_trader

    def trader_label(self, trader_id: str) -> str:
        """The label value this trader's series use (its id, or OTHER past the cap)."""
        if trader_id in self._traders:
            return trader_id
        return trader_id if len(self._traders) < self.max_label_values else OTHER

    def breach(self, rule: str, trader_id: str = "") -> None:
        """A risk limit breached (the engine logs `RISK LIMIT BREACHED` at the same moment)."""
        key = (trader_id, rule)
        child = self._breaches.get(key)
        if child is None:
            child = self.limit_breaches.labels(self.trader_label(trader_id) if trader_id else "", rule)
            if len(self._breaches) < self.max_label_values * 4:
                self._breaches[key] = child
        child.inc()

    def breaker_fired(self, breaker_id: str) -> None:
        child = self._breakers.get(breaker_id)
        if child is None:
            label = self._capped("breaker_id", breaker_id, len(self._breakers))
            child = self.breaker_firings.labels(label)
            if label != OTHER:
                self._breakers[breaker_id] = child
        child.inc()

    # ---- store ----------------------------------------------------------------------------------

    def persist_attempt(self) -> None:
        self.persist_attempts.inc()

    def persist_failure(self) -> None:
        self.persist_failures.inc()

    def persist_latency_ms(self, value: float) -> None:
        self.persist_latency_ms_gauge.set(value)
        self.persist_duration.observe(value / 1000.0)

    def queue_depth(self, n: int) -> None:
        self.queue_depth_gauge.set(n)

    def observe_store(self, store: HistoryCounters) -> None:
        """Export the store's history row counters (enqueued, written, dropped, rejected, pending) at scrape
        time. Once per PrometheusMetrics."""
        self.registry.register(_HistoryCollector(store))

    def store_healthy(self, healthy: bool) -> None:
        self.store_healthy_gauge.set(1.0 if healthy else 0.0)

    def observe_orders(self, engine: OrderCounters) -> None:
        self.registry.register(_OrdersCollector(engine))

    def observe_control(self, control: ControlCounters) -> None:
        self.registry.register(_ControlCollector(control))

    def observe_alerts(self, alerts: AlertCounters) -> None:
        self.registry.register(_AlertsCollector(alerts))

    def observe_retention(self, pruner: RetentionCounters) -> None:
        self.registry.register(_RetentionCollector(pruner))

    def forget_trader(self, trader_id: str) -> None:
        """A trader left memory (residency.py): its gauges go (the registry would otherwise grow with every trader
        ever seen, up to the cap, and hold stale values), and its slot under the cap is free again."""
        if self._traders.pop(trader_id, None) is not None:
            for gauge in (self.daily_pnl, self.drawdown, self.trading_paused):
                with contextlib.suppress(KeyError):
                    gauge.remove(trader_id)
        elif trader_id in self._overflow_paused:
            self._overflow_paused.discard(trader_id)
            if self._other_trader is not None:
                self._other_trader[2].set(float(len(self._overflow_paused)))
        self._overflow_seen.discard(trader_id)


class NullMetrics:
    """A `MetricsSink` for metrics switched off (`metrics_listen` empty): no registry, no server, every call a
    no-op, and `instrument` returns the very handlers it was given (nothing wraps the hot path)."""

    def serve(self, listen: str) -> str:
        return ""

    def close(self) -> None:
        return None

    def instrument(
        self, methods: Mapping[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        return dict(methods)

    def state_changed(self, trader_id: str, daily_pnl: float, drawdown_pct: float, paused: bool) -> None:
        return None

    def breach(self, rule: str, trader_id: str = "") -> None:
        return None

    def breaker_fired(self, breaker_id: str) -> None:
        return None

    def persist_attempt(self) -> None:
        return None

    def persist_failure(self) -> None:
        return None

    def persist_latency_ms(self, value: float) -> None:
        return None

    def queue_depth(self, n: int) -> None:
        return None

    def observe_store(self, store: HistoryCounters) -> None:
        return None

    def store_healthy(self, healthy: bool) -> None:
        return None

    def observe_orders(self, engine: OrderCounters) -> None:
        return None

    def observe_control(self, control: ControlCounters) -> None:
        return None

    def observe_alerts(self, alerts: AlertCounters) -> None:
        return None

    def observe_retention(self, pruner: RetentionCounters) -> None:
        return None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tradeguard")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        return "unknown"


# ---- the local spool (issue 21, store/spool.py) ---------------------------------------------------------------


class SpoolGauges(Protocol):
    """What the spool metrics read (store.spool.Spool), at scrape time."""

    @property
    def depth(self) -> int: ...

    def oldest_age_s(self, now: float | None = None) -> float: ...

    @property
    def journal_depth(self) -> int: ...  # journaled calls (table journal), counted by the spool thread

    @property
    def alerts_depth(self) -> int: ...  # alert deliveries (table alerts), counted by the spool thread

    @property
    def stats(self) -> Any: ...  # SpoolStats: bytes, dropped, replayed (dicts by kind)


class _SpoolCollector(Collector):
    """tradeguard_spool_*: what the local spool holds and what it dropped and replayed, read at scrape time."""

    def __init__(self, spool: SpoolGauges) -> None:
        self.spool = spool

    def describe(self) -> Iterable[Metric]:
        return self.collect()

    def collect(self) -> Iterable[Metric]:
        spool, stats = self.spool, self.spool.stats
        yield GaugeMetricFamily("tradeguard_spool_depth", "Records in the local spool (not yet in the database).",
                                value=spool.depth)
        yield GaugeMetricFamily("tradeguard_spool_bytes", "Payload bytes in the local spool.", value=stats.bytes)
        yield GaugeMetricFamily("tradeguard_spool_journal", "Calls journaled in the local spool while the stored "
                                "state was not loaded (replayed on it at the load).", value=spool.journal_depth)
        yield GaugeMetricFamily("tradeguard_spool_alerts", "Alert deliveries in the local spool (not yet in the "
                                "alert_outbox table).", value=spool.alerts_depth)
        yield GaugeMetricFamily("tradeguard_spool_oldest_age_seconds", "Age of the oldest record in the local spool "
                                "(0 when empty).", value=spool.oldest_age_s())
        dropped = CounterMetricFamily("tradeguard_spool_dropped", "Records dropped from the full spool, by kind "
                                      "(history only: the oldest first).", labels=["kind"])
        replayed = CounterMetricFamily("tradeguard_spool_replayed", "Spooled records written to the database, by "
                                       "kind.", labels=["kind"])
        for kind in sorted(stats.replayed):
            dropped.add_metric([kind], float(stats.dropped.get(kind, 0)))
            replayed.add_metric([kind], float(stats.replayed[kind]))
        yield dropped
        yield replayed


def observe_spool(metrics: MetricsSink, spool: SpoolGauges) -> None:
    """Export the spool's gauges and counters (PrometheusMetrics only; a no-op for NullMetrics)."""
    if isinstance(metrics, PrometheusMetrics):
        metrics.registry.register(_SpoolCollector(spool))
