"""The composition root: the only place that wires settings, engine, store, servers, health and signals."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .api.admin_service import SERVICE as ADMIN_SERVICE
from .api.admin_service import AdminService
from .api.binding_admin import BindingAdmin
from .api.breaker_admin import BreakerAdmin
from .api.config_admin import ConfigAdmin
from .api.dispatch import admin_guard, service, trader_guard
from .api.history_admin import HistoryAdmin
from .api.risk_service import SERVICE as RISK_SERVICE
from .api.risk_service import RiskService
from .api.risk_state import state_msg
from .api.risk_states_admin import RiskStatesAdmin
from .api.session import SessionEnd, SessionService
from .api.watch import WatchHub, WatchUpdates
from .auth import Credentials, create_private_file, sqlite_path, state_dir
from .cluster.takeover import Takeover
from .engine.breakers.evaluator import Evaluator
from .engine.clock import Clock, SystemClock
from .engine.engine import RiskEngine
from .engine.events import Listener
from .engine.heartbeat import HEARTBEAT_SCAN_S, DeadMansSwitch
from .engine.types import Flags, TradingState
from .httpapi import HttpApi
from .observability.metrics import MetricsSink, NullMetrics, PrometheusMetrics, observe_spool
from .observability.state_metrics import StateMetrics
from .observability.tracing import Tracing, history_trace_id, setup_tracing, tracing_enabled
from .persistence import Persistence
from .services.breakers import BreakerService
from .services.configs import ConfigService
from .settings import Settings, SettingsError
from .store.memory import MemoryStore
from .store.protocol import Store
from .store.spool import SpoolError
from .store.store import RiskStore
from .store.url import is_postgres

log = logging.getLogger("tradeguard")

PROBE_TIMEOUT_S = 5.0  # the start-up check of the database configuration waits at most this long
STORE_HEALTH = "tradeguard.store"
STATE_HEALTH = "tradeguard.state"  # SERVING once the stored state is installed (README, "Restarts")
CONTROL_HEALTH = "tradeguard.control"  # SERVING while the shared control state is heard (cluster.listener)
ALERTS_HEALTH = "tradeguard.alerts"  # NOT_SERVING while a notifier is down (alerts/); not part of the overall status
MEMORY_URL = "memory"
ORDER_RELEASE_INTERVAL_S = 1.0  # how often pending orders past their TTL are released without a call


class StartupError(Exception):
    """The sidecar cannot start; the message is one line saying why and what to do."""


def check_listen_address(listen: str) -> None:
    """Raise StartupError when `listen` (host:port) cannot be bound: in use, not an address of this machine, or
    a privileged port. grpc's own bind error says only "Failed to bind" (after a line of its C core's log)."""
    if listen.startswith("unix:"):
        return
    host, _sep, port_text = listen.rpartition(":")
    host = host.strip("[]")
    if not port_text.isdigit() or int(port_text) == 0:
        return  # grpc parses the rest; port 0 = any free port
    try:
        addresses = socket.getaddrinfo(host or None, int(port_text), type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"cannot listen on {listen}: {host!r} is not a name or address of this machine "
                           f"({exc.strerror}); fix --listen / TRADEGUARD_LISTEN") from None
    errors: list[OSError] = []
    for family, kind, proto, _canon, sockaddr in addresses:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc does: TIME_WAIT is no conflict
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                errors.append(exc)
                continue
        return  # grpc binds what it can, as long as one address works
    if not errors:
        return
    code = errors[0].errno
    if code == errno.EADDRINUSE:
        why = (f"the port is already in use (another tradeguard serve? `ss -ltnp 'sport = :{port_text}'` shows "
               f"who holds it); stop it or choose another port with --listen / TRADEGUARD_LISTEN")
    elif code == errno.EADDRNOTAVAIL:
        why = "that address is not one of this machine's; fix --listen / TRADEGUARD_LISTEN (127.0.0.1:PORT)"
    elif code == errno.EACCES:
        why = "permission denied (ports below 1024 need privileges); use a port above 1023"
    else:
        why = f"{errors[0].strerror or errors[0]}; fix --listen / TRADEGUARD_LISTEN"
    raise StartupError(f"cannot listen on {listen}: {why}")


def is_loopback(listen: str) -> bool:
    if listen.startswith("unix:"):
        return True
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read(setting: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise StartupError(f"{setting}: cannot read {path} ({exc.strerror or exc}); fix --{setting.replace('_', '-')}"
                           f" / TRADEGUARD_{setting.upper()}") from None


def server_credentials(s: Settings) -> grpc.ServerCredentials | None:
    if not s.tls_cert:
        return None
    key = _read("tls_key", s.tls_key)
    cert = _read("tls_cert", s.tls_cert)
    if s.tls_client_ca:
        ca = _read("tls_client_ca", s.tls_client_ca)
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
    return grpc.ssl_server_credentials([(key, cert)])


def server_options(s: Settings) -> list[tuple[str, int]]:
    """grpc core options: message sizes, and the limits that keep hostile or broken clients in check."""
    def ms(seconds: float) -> int:
        return int(seconds * 1000)

    options = [
        ("grpc.max_receive_message_length", s.max_message_bytes),
        # Requests are capped; answers are not: an answer echoes the state (positions, actions) and can be
        # larger than the request that produced it. Capping it at the same size once applied a report and then
        # failed that call, and every later CanTrade of the trader, with RESOURCE_EXHAUSTED.
        ("grpc.max_send_message_length", -1),
        ("grpc.max_concurrent_streams", streams_per_connection(s)),
        ("grpc.so_reuseport", 0),
    ]
    if s.max_connections:
        options.append(("grpc.max_allowed_incoming_connections", s.max_connections))
    if s.handshake_timeout_s:
        options.append(("grpc.server_handshake_timeout_ms", ms(s.handshake_timeout_s)))
    if s.keepalive_time_s:
        options += [("grpc.keepalive_time_ms", ms(s.keepalive_time_s)),
                    ("grpc.keepalive_timeout_ms", ms(s.keepalive_timeout_s or 20.0)),
                    ("grpc.keepalive_permit_without_calls", 1)]
    if s.max_connection_idle_s:
        options.append(("grpc.max_connection_idle_ms", ms(s.max_connection_idle_s)))
    return options


def streams_per_connection(s: Settings) -> int:
    """HTTP/2 streams per connection: the smaller of max_concurrent_streams and max_streams_per_connection (README
    "Fairness and overload"); grpc core refuses more before Python sees them, and clients wait for a free one."""
    limits = [n for n in (s.max_concurrent_streams, s.max_streams_per_connection) if n > 0]
    return min(limits) if limits else s.max_concurrent_streams


def write_ready_file(path: str, address: str) -> None:
    """Atomically write the bound address (tests and supervisors wait for this file)."""
    tmp = f"{path}.tmp"
    Path(tmp).write_text(address)
    os.replace(tmp, path)


class Sidecar:
    """A running TradeGuard: gRPC server + engine (+ store). `start`, then `stop`."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.credentials = Credentials(settings)  # creates the admin token file at first start
        self._check_exposure()
        self.durable = settings.database_url != MEMORY_URL
        db_file = sqlite_path(settings.database_url) if self.durable and settings.enable_persistence else None
        if db_file is not None and db_file.parent.is_dir():
            create_private_file(db_file)  # every trader's state: owner-only, whatever the umask
        # Every state change of the engine goes to each of these listeners, in order. The engine holds this list:
        # each listener is added below (one line) once its owner is built, since the owners need the engine.
        self.listeners: list[Listener] = []
        # A breaker re-armed, changed, disabled or deleted ends its episodes in the traders' states (stored).
        self.breakers = Evaluator(on_episodes_ended=lambda breaker_id: self.engine.end_breaker_episodes(breaker_id))
        self.engine = RiskEngine(
            clock or SystemClock(),
            defaults=settings.default_limits(),
            flags=Flags(settings.enable_risk_enforcement, settings.enable_persistence and self.durable),
            reset_offset_s=settings.period_reset_offset_s,
            breakers=self.breakers,
            listeners=self.listeners,
        )
        self.store: Store = (
            RiskStore(settings.database_url, queue_size=settings.queue_size,
                      migrate_on_start=settings.migrate_on_start, clock=self.engine.clock.now,
                      call_timeout_s=settings.store_call_timeout_s, on_health_change=self._on_store_health,
                      spool_path=spool_file(settings), spool_max_bytes=settings.spool_max_bytes)
            if self.durable else MemoryStore(settings.queue_size, clock=self.engine.clock.now,
                                             on_health_change=self._on_store_health)
        )
        # Issue 17, cluster mode (the database is PostgreSQL): one owner per trader (cluster.takeover). None in
        # single mode (SQLite, memory). The writer fences each trader's row with its lease epoch.
        self.takeover: Takeover | None = None
        if isinstance(self.store, RiskStore) and is_postgres(settings.database_url):
            store = self.store
            self.takeover = Takeover(self.engine, lambda fn: store.db.call(fn, write=True), settings.sidecar_name,
                                     settings.trader_lease_seconds, policy=settings.foreign_trader_policy,
                                     forget=store.queue.drop_state)
            store.writer.epoch_of = self.takeover.epoch_of
        self.hub = WatchHub(buffer=settings.watch_buffer, max_watchers=settings.max_concurrent_streams,
                            max_per_trader=settings.max_watchers_per_trader,
                            max_per_connection=settings.max_watchers_per_connection,
                            max_unknown=settings.max_watchers_unknown_traders)
        self.config_service = ConfigService(self.engine, self.store, self.durable)
        self.breaker_service = BreakerService(self.breakers, self.store, clock=self.engine.clock)
        self.persistence = Persistence(self.store, self.engine, self.config_service, self.breaker_service,
                                       history_trace_id,
                                       load_timeout_s=settings.store_call_timeout_s,
                                       unloaded_policy=settings.unloaded_state_policy,
                                       flags_given=settings.given, on_loaded=self._state_loaded,
                                       owners=self.takeover)
        # ---- the shared control state (issue 17, cluster/): changes recorded in the changing transaction; in
        # cluster mode (database_url is PostgreSQL) a listener applies the other sidecars' changes. ----
        from .cluster.changes import trader_changes
        from .cluster.listener import ControlListener
        from .cluster.plane import ControlPlane

        self.cluster = self.durable and is_postgres(settings.database_url)
        self.control = ControlPlane(self.engine, self.store, self.config_service, self.breaker_service,
                                    self.persistence, origin=settings.sidecar_name, cluster=self.cluster)
        self.config_service.record = self.breaker_service.record = self.persistence.record = self.control.record
        if self.cluster:
            self.persistence.forward_pause = self._forward_pause
        self.control_listener = ControlListener(
            settings.database_url, self.control, max_age_s=settings.control_state_max_age_seconds,
            stale_action=settings.control_state_stale_action, poll_s=settings.control_poll_seconds,
            on_hearing=self._on_control_hearing, lease_lapsed=self._lease_lapsed) if self.cluster else None
        if self.takeover is not None:  # a claimed trader: its pause / resume changes replayed, scope pauses synced
            self.takeover.read_changes = trader_changes
            self.takeover.replay = self.control.replay_trader
        self._control_tasks: set[asyncio.Task[Any]] = set()
        # ----
        self.risk = RiskService(self.engine, self.hub, settings.max_clock_skew_s, on_trade=self.persistence.on_trade,
                                trade_known=self.persistence.trade_known if self.durable else None,
                                control=self.control, owners=self.takeover)
        # Issue 18: the Session stream (cancel-on-disconnect) and the dead-man's switch hear every bot call.
        self.deadman = DeadMansSwitch(self.engine)
        self.risk.heard = self.deadman.heard
        self._closing = False  # stopping: sessions end without cancel-on-disconnect pauses
        self.session = SessionService(self.risk, on_lost=self._session_lost, closing=lambda: self._closing,
                                      heard=self.deadman.heard)
        self._heartbeats: asyncio.Task[None] | None = None
        self._pending_stores: set[asyncio.Task[bool]] = set()
        self.admin = AdminService(self.engine, self._on_flags, store_now=self._store_now,
                                  loaded=lambda: self.persistence.loaded, control=self.control,
                                  owns=self._takes_trader)
        self.configs = ConfigAdmin(self.config_service)
        self.breaker_admin = BreakerAdmin(self.breaker_service, bound_account=self._bound_account)
        self.bindings = BindingAdmin(self.engine, self._store_now, self.takeover)
        for handlers in (self.configs.handlers(), self.breaker_admin.handlers(),
                         HistoryAdmin(self.store, self.durable).handlers(),
                         self.bindings.handlers(),
                         RiskStatesAdmin(self.engine, self.takeover, settings.sidecar_name).handlers()):
            self.admin.extend(handlers)
        # Point-in-time restore (AdminService.RestoreRiskState; api/restore_admin.py): from the history rows.
        from .api.restore_admin import RestoreAdmin

        history_at = self.store.history_at if isinstance(self.store, RiskStore) else None
        self.restore_admin = RestoreAdmin(self.engine, history_at, self._store_now, self.takeover, self.control)
        self.admin.extend(self.restore_admin.handlers())
        self.watch = WatchUpdates(self.hub, lambda st, orders: state_msg(self.engine, st, orders),
                                  muted=lambda: self.persistence.replaying)
        # The engine's listeners, in the order each hears a change (metrics, when on, in _init_observability):
        self.listeners.append(self.breaker_service.on_state_changed)  # circuit_breaker_events rows (never dropped)
        self.listeners.append(self.persistence.on_state_changed)  # the state and its history row to the store queue
        self.listeners.append(self.watch)  # WatchRiskState updates
        # ---- account-wide limits (issue 17; cluster.account_view): CanTrade's account checks through the engine's
        # account_checks hook (called only for accounts with an account-wide limit); rounds every
        # account_view_seconds (started in start(), stopped in stop()). In cluster mode (PostgreSQL) the view reads the
        # other sidecars' traders on a connection of its own. A breach pauses the account through the control plane
        # (every sidecar, traders that appear later too).
        from .cluster.account_view import AccountPauser, AccountView, PlaneAccountPauser, RemoteSource
        from .store.url import normalize_url

        self.account_pauser: AccountPauser = PlaneAccountPauser(self.control)
        cluster_url = normalize_url(settings.database_url) if self.durable else ""
        self.account_view = AccountView(
            self.engine, self.account_pauser, settings.account_view_seconds,
            RemoteSource(cluster_url) if cluster_url and is_postgres(cluster_url) else None,
            actor=f"account_limits@{settings.sidecar_name}")
        self.engine.account_checks = self.account_view.checks
        self.listeners.append(self.account_view.on_state_changed)  # which local traders each limited account has
        # ---- (end of account-wide limits)
        # ---- history retention (store/retention.py): old history, trade and breaker-event rows pruned in batches
        # off the hot path (SQLite: on the store's thread; PostgreSQL: a connection of its own, one sidecar at a
        # time). Started in start(), closed in stop().
        from .store.retention import OwnConnection, Pruner, RetentionPolicy, StoreThread

        self.pruner: Pruner | None = None
        if isinstance(self.store, RiskStore):
            policy = RetentionPolicy(settings.history_retention_days, settings.trade_retention_days,
                                     settings.breaker_event_retention_days, settings.retention_interval_seconds,
                                     settings.retention_batch_size)
            if is_postgres(settings.database_url):
                own = OwnConnection(self.store.url)
                self.pruner = Pruner(policy, own, self.engine.clock.now, hypertable=own.run)
            else:
                self.pruner = Pruner(policy, StoreThread(self.store.db.call), self.engine.clock.now)
        # ---- (end of history retention)
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.server: grpc.aio.Server | None = None
        self.address = ""
        self.http: HttpApi | None = None  # the HTTP/JSON API (http_listen), on this event loop
        self.http_address = ""
        self.grpc_handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}  # "/service/Method" -> what gRPC runs
        self._health_task: asyncio.Task[None] | None = None
        self._sampler: asyncio.Task[None] | None = None
        self._spool_health_task: asyncio.Task[None] | None = None  # issue 21: the spool's health component
        self._releaser: asyncio.Task[None] | None = None
        self._admin_guard = admin_guard(self.credentials)
        # No trader credential can ever appear without a file to re-read: then CanTrade pays for no guard at all.
        can_guard = self.credentials.table.trader_auth or settings.trader_token_file or settings.credentials_file
        self._trader_guard = trader_guard(self.credentials) if can_guard else None
        self._credentials_task: asyncio.Task[None] | None = None
        self._init_observability()
        self._init_admission()
        self._init_alerts()
        self._init_residency()

    # ---- access ---------------------------------------------------------------------------------

    def _check_exposure(self) -> None:
        """Refuse to serve an open RiskService (or an open AdminService) beyond loopback unless --insecure."""
        s, table = self.settings, self.credentials.table
        beyond = [listen for listen in (s.listen, s.http_listen) if listen and not is_loopback(listen)]
        if not beyond or s.insecure:
            return
        listen = beyond[0]  # the HTTP listener (http_listen) serves the same services: the same rule
        if table.admin_open:
            raise SettingsError(f"refusing to listen on {listen} (beyond loopback) with dev_open_admin: "
                                "anyone on the network could switch enforcement off; pass --insecure to insist")
        if not table.trader_auth:
            raise SettingsError(
                f"refusing to listen on {listen} (beyond loopback) with RiskService open to any caller: set "
                "--credentials-file (per-bot tokens) or --trader-token-file, or pass --insecure"
            )

    def _log_exposure(self) -> None:
        s = self.settings
        for level, line in self.credentials.describe():
            log.log(level, "access: %s", line)
        if s.insecure:
            log.warning("INSECURE (--insecure): the loopback rule is off; listening on %s with the credentials "
                        "above, and without TLS the bearer tokens cross the network in clear", s.listen)
        if s.metrics_listen and not is_loopback(s.metrics_listen):
            log.warning("metrics on %s (beyond loopback) WITHOUT AUTH: /metrics shows every trader's PnL, "
                        "drawdown and pause to anyone who can reach it; restrict it with a NetworkPolicy or "
                        "listen on 127.0.0.1", s.metrics_listen)
        if self.http is not None and not is_loopback(s.http_listen):
            log.warning("HTTP API on %s (beyond loopback): its /metrics, /healthz, /readyz and /openapi.json answer "
                        "WITHOUT AUTH (the API itself takes the same tokens as gRPC)", s.http_listen)

    async def _reload_credentials(self) -> None:
        """Re-read token and credentials files when they change (rotation without a restart)."""
        from .observability.logs import redact_secrets

        period = self.settings.credentials_reload_s
        while True:
            await asyncio.sleep(period)
            if self.credentials.reload_if_changed():
                redact_secrets(self.credentials.tokens())

    # ---- persistence ----------------------------------------------------------------------------

    async def _on_flags(self, old: Flags, new: Flags) -> bool:
        if new.enable_persistence and not self.durable:
            from .api.errors import FailedPrecondition

            raise FailedPrecondition("enable_persistence: no database is configured (database_url=memory)")
        return await self.persistence.on_flags(old, new)

    async def _state_loaded(self) -> None:
        now = self.engine.clock.now()
        traders = list(self.engine.traders.values())
        if self.state_metrics is not None:  # each trader's gauges at once, not only with its next change
            self.state_metrics.restore(traders)
        for st in traders:  # watchers of a trader see the installed state at once (a halted one: cancel orders)
            self.watch.publish(st, "stored state loaded", self.engine.cancel_actions(st, now))
        if self.alerts.notifiers:  # paused traders: their episodes taken up (alerts/episodes.py)
            self.alert_watcher.restored(traders, now)
        await self._prime_control()  # the account and every-account pauses, before the state is called loaded
        await self.health.set(STATE_HEALTH, health_pb2.HealthCheckResponse.SERVING)

    # ---- the shared control state (cluster/) ------------------------------------------------------

    async def _prime_control(self, background: bool = False) -> None:
        """Once the stored state is installed: read the scope pauses (retried in the background while the store
        cannot answer), then apply the other sidecars' changes from the version the state was read at."""
        from .store.errors import StoreError

        delay = 0.2
        while True:
            try:
                await self.control.prime(self.persistence.control_version)
                break
            except StoreError as exc:
                if not background:  # the first try: go on (serving), retry in the background
                    log.warning("control state: scope pauses not read yet (%s); retrying", exc)
                    task = asyncio.get_running_loop().create_task(self._prime_control(background=True))
                    self._control_tasks.add(task)
                    task.add_done_callback(self._control_tasks.discard)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        if self.control_listener is not None:
            self.control_listener.wake.set()
        else:  # single-sidecar mode: the control state is this sidecar's own, always current
            await self.health.set(CONTROL_HEALTH, health_pb2.HealthCheckResponse.SERVING)

    async def _start_control(self) -> None:
        if self.control_listener is not None:
            await self.control_listener.start()
        elif self.control.primed:
            await self.health.set(CONTROL_HEALTH, health_pb2.HealthCheckResponse.SERVING)

    def _lease_lapsed(self) -> bool:
        """Past trader_lease_seconds without renewing its leases, another sidecar may have taken this one's traders
        over: the control state's stale action applies to them from then on."""
        t = self.takeover
        return t is not None and bool(t.owned) and time.monotonic() - t.last_renewed > t.lease_s

    async def _stop_control(self) -> None:
        for task in list(self._control_tasks):
            task.cancel()
        if self.control_listener is not None:
            await self.control_listener.stop()

    async def _takes_trader(self, trader_id: str, account_id: str) -> bool:
        """Cluster mode, a kill switch for a trader not in this engine: applied here only when this sidecar owns it.
        Otherwise (another sidecar owns it, or none does yet) its change row is committed and applied by the owner
        (on NOTIFY), or by whichever sidecar claims the trader next (the claim replays the trader's changes): a kill
        switch never makes this sidecar the owner of a trader its bot does not talk to. A trader bound to another
        account (its lease, else its stored row) is INVALID_ARGUMENT naming account_id, as on its owner."""
        from .api.errors import InvalidArgument
        from .cluster import leases

        takeover = self.takeover
        if takeover is None or trader_id in takeover.owned or self.engine.journal is not None:
            # (while the stored state is not loaded - database down at start - ownership cannot be known: the pause
            # is in force here at once, journaled and replayed on the stored state, and its change row is stored
            # as soon as the database answers, so the owner applies it too, whichever sidecar that is)
            return True

        def bound(conn: Any) -> str | None:
            lease = leases.owners_of(conn, [trader_id]).get(trader_id)
            if lease is not None:
                return lease.account_id
            rec = leases.stored_state(conn, trader_id)
            return None if rec is None else rec.account_id

        account = await takeover.run(bound)
        if account is not None and account != account_id:
            raise InvalidArgument([("account_id", f"trader_id {trader_id!r} is bound to account_id {account!r}")])
        return False

    def _on_control_hearing(self, hearing: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if hearing else health_pb2.HealthCheckResponse.NOT_SERVING
        task = asyncio.get_running_loop().create_task(self.health.set(CONTROL_HEALTH, status))
        self._control_tasks.add(task)
        task.add_done_callback(self._control_tasks.discard)

    def _bound_account(self, trader_id: str) -> str | None:
        """The account trader_id is bound to, None for a trader id not known here."""
        st = self.engine.traders.get(trader_id)
        return None if st is None else st.account_id

    async def _forward_pause(self, account_id: str, trader_id: str, state: TradingState, until: float | None,
                             reason: str) -> None:
        """A kill switch journaled here for a trader another sidecar owns (persistence.forward_pause): stored as the
        control change that sidecar applies, as PauseTrading does for a trader held elsewhere."""
        await self.control.store.append_change(self.control.pause_change(account_id, trader_id, state, until, reason,
                                                                         actor="journal replay"))

    async def _store_now(self) -> bool:
        """Wait (bounded) until every state change made so far is committed: kill-switch RPCs answer after it."""
        timeout = self.settings.kill_switch_store_timeout_s
        if not self.persistence.loaded:  # in force, journaled, written once the stored state is loaded
            return bool(timeout) and await self.persistence.journal_committed(timeout)  # (in the local spool)
        if not self.engine.flags.enable_persistence or not timeout:  # 0 = answer at once, as other changes
            return True
        return await self.store.flush(timeout=timeout)

    def _on_store_health(self, healthy: bool) -> None:
        if healthy:
            log.info("store available")
        self.alert_watcher.store_health(healthy, self.engine.clock.now())
        self.metrics.store_healthy(healthy)
        self.persistence.on_health_change(healthy)
        status = health_pb2.HealthCheckResponse.SERVING if healthy else health_pb2.HealthCheckResponse.NOT_SERVING
        if self._health_task is None or self._health_task.done():
            self._health_task = asyncio.get_running_loop().create_task(self.health.set(STORE_HEALTH, status))

    async def _release_orders(self) -> None:
        """Once a second, release the pending orders whose TTL passed, in every trader: the metrics, the watchers and
        the stored state see a release without waiting for the trader's next call."""
        engine = self.engine
        while True:
            await asyncio.sleep(ORDER_RELEASE_INTERVAL_S)
            if engine.journal is None:  # (while the stored state loads, the load decides what is pending)
                try:
                    engine.release_expired()
                except Exception:  # a listener failed: logged by the engine; the next round tries again
                    log.exception("releasing expired pending orders failed")

    def _store_soon(self) -> None:
        """A pause made without a caller waiting (cancel-on-disconnect, dead-man's switch): flushed like a kill
        switch, in a task of its own."""
        task = asyncio.get_running_loop().create_task(self._store_now())
        self._pending_stores.add(task)
        task.add_done_callback(self._pending_stores.discard)

    def _session_lost(self, end: SessionEnd) -> None:
        """Cancel-on-disconnect: a declared session ended without a clean close: pause its trader."""
        d = end.declared
        if d.state is None:
            return
        reason = (f"cancel-on-disconnect: the Session from {end.peer} ended without a clean close ({end.why})")
        self.engine.pause(d.trader_id, d.account_id, d.state, d.duration_s, reason, by="cancel-on-disconnect")
        self._store_soon()

    async def _watch_heartbeats(self) -> None:
        """The dead-man's switch: every HEARTBEAT_SCAN_S, pause the traders whose heartbeat is overdue."""
        while True:
            await asyncio.sleep(HEARTBEAT_SCAN_S)
            # (while the stored state loads, nobody has been heard yet; while stopping, new calls are refused, so
            # no call of a bot can be heard here: a shutdown's grace is not the bot's silence)
            if self.engine.journal is None and not self._closing:
                try:
                    if self.deadman.scan():
                        self._store_soon()
                except Exception:
                    log.exception("dead-man's switch scan failed")

    async def _sample_store(self) -> None:
        """Copy the store's counters into metrics once a second (the writer itself never touches metrics)."""
        store, metrics = self.store, self.metrics
        seen = {"attempts": 0, "failures": 0}
        while True:
            for _ in range(store.attempts - seen["attempts"]):
                metrics.persist_attempt()
            for _ in range(store.failures - seen["failures"]):
                metrics.persist_failure()
            seen = {"attempts": store.attempts, "failures": store.failures}
            metrics.persist_latency_ms(store.last_persist_latency_ms)
            metrics.queue_depth(store.queue_depth)
            metrics.store_healthy(store.healthy)
            await asyncio.sleep(1.0)

    # ---- alerts that reach people (issue 20, alerts/) ----------------------------------------------

    def _init_alerts(self) -> None:
        """The dispatcher (outbox in the store: PostgreSQL / SQLite table, or memory) and the watcher that turns
        state changes, kill switches and health changes into alerts. Without a notifier configured, nothing is
        listened to and nothing runs."""
        from .alerts import AlertDispatcher, AlertWatcher, configured_notifiers
        from .alerts.delivery import Retry
        from .alerts.outbox import MemoryOutbox, Outbox, SqlOutbox

        s = self.settings
        store = self.store
        outbox: Outbox = (SqlOutbox(store.db.call, lambda: store.healthy) if isinstance(store, RiskStore)
                          else MemoryOutbox())
        retry = Retry(s.alert_timeout_s, s.alert_retry_initial_s, s.alert_retry_max_s, s.alert_dead_after_failures,
                      s.alert_dead_after_s, s.alert_max_pending, s.alert_poll_s)
        # With a local spool (PostgreSQL), deliveries the outbox cannot take wait there, not only in memory.
        spool = store.spool if isinstance(store, RiskStore) else None
        self.alerts = AlertDispatcher(configured_notifiers(s), outbox, s.sidecar_name, retry,
                                      on_health=self._on_alerts_health, spool=spool)
        self.alert_watcher = AlertWatcher(self.alerts.submit, s.sidecar_name,
                                          muted=lambda: self.persistence.replaying,
                                          enforced=lambda: self.engine.flags.enable_risk_enforcement)
        if self.alerts.notifiers:
            self.listeners.append(self.alert_watcher)  # last: it only enqueues
            self.control.on_scope = self._on_scope_alert
            listener = self.control_listener
            if listener is not None:  # CONTROL_STATE_STALE: overdue past control_state_max_age_seconds
                # The episode ends once fresh for a while (cluster/listener.py): a relapse meanwhile is the same one.
                # Its recovered alert is dated when the control state was heard again (fresh_seconds ago).
                listener.recover_s = s.control_state_max_age_seconds + s.trader_lease_seconds
                listener.on_overdue = lambda overdue: self.alert_watcher.control_health(
                    not overdue, self.engine.clock.now() - listener.fresh_seconds())
            self.metrics.observe_alerts(self.alerts)

    def _on_scope_alert(self, scope: Any, was: bool) -> None:
        from .engine.engine import iso_utc

        details: dict[str, Any] = {} if scope.state is None else {
            "state": scope.state.name, "until": None if scope.until is None else iso_utc(scope.until)}
        self.alert_watcher.scope_changed(scope.account_id, scope.state is not None, scope.reason,
                                         f"{scope.actor} via sidecar {scope.origin}", scope.version, scope.since,
                                         details, was=was)

    def _on_alerts_health(self, up: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING
        task = asyncio.get_running_loop().create_task(self.health.set(ALERTS_HEALTH, status))
        self._control_tasks.add(task)
        task.add_done_callback(self._control_tasks.discard)

    # ---- observability (metrics + tracing) -------------------------------------------------------

    def _init_observability(self) -> None:
        """Metrics object (no-op when metrics_listen is empty) and, when enabled, the tracer provider.

        Tests may replace `self.tracing` (e.g. with an in-memory exporter) before `start`.
        """
        s = self.settings
        self.metrics: MetricsSink = PrometheusMetrics() if s.metrics_listen or s.http_listen else NullMetrics()
        self.metrics.observe_store(self.store)  # history rows enqueued / written / dropped, read at scrape time
        self.metrics.observe_orders(self.engine)  # pending orders and TTL releases, read at scrape time
        if isinstance(self.store, RiskStore) and self.store.spool is not None:
            observe_spool(self.metrics, self.store.spool)  # tradeguard_spool_*, read at scrape time
        self.metrics.observe_control(self.control)  # control-state age, version, changes applied
        if self.pruner is not None:
            self.metrics.observe_retention(self.pruner)  # rows pruned by table, last run
        self.metrics_address = ""
        traced = tracing_enabled(s.tracing, s.otlp_traces_endpoint, s.otel_sdk_disabled)
        self.tracing: Tracing | None = setup_tracing(s.otlp_traces_endpoint, s.otel_service_name) if traced else None
        self.state_metrics: StateMetrics | None = None
        if not isinstance(self.metrics, NullMetrics):
            self.state_metrics = StateMetrics(self.metrics, self.engine.clock.now)
            self.listeners.append(self.state_metrics)  # gauges, breaches, firings

    # ---- fairness and overload (api/admission.py) ----------------------------------------------------

    def _init_admission(self) -> None:
        from .api.admission import AdmissionCollector, admission_from_settings

        self.admission = admission_from_settings(self.settings)
        self.admission.credentials_in_force = self._trader_guard is not None  # else RiskService is open
        self.session.admission = self.admission  # calls inside a Session are judged as the unary ones
        registry = getattr(self.metrics, "registry", None)
        if registry is not None:
            registry.register(AdmissionCollector(self.admission))

    def _admitted(self, service_name: str, methods: dict[str, grpc.RpcMethodHandler[Any, Any]]
                  ) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        """`methods` with admission in front (RiskService: the hot path, its streams; AdminService: its budget)."""
        from google.protobuf import message_factory

        from tradeguard.v1 import risk_service_pb2 as rs

        from .api.admission import ADMIN, HOT

        if service_name == ADMIN_SERVICE:
            return self.admission.wrap(methods, ADMIN)
        service_desc = rs.DESCRIPTOR.services_by_name[service_name.rsplit(".", 1)[-1]]
        parsers = {m.name: message_factory.GetMessageClass(m.input_type).FromString
                   for m in service_desc.methods if not m.client_streaming and not m.server_streaming}
        return self.admission.wrap(methods, HOT, parsers)

    # ---- bounded traders (issue 21, residency.py) -------------------------------------------------

    def _init_residency(self) -> None:
        """max_traders and idle eviction. Nothing is evicted with the memory store (it would lose the state); in
        cluster mode an evicted trader's lease is released and its next call claims it (reading its stored row)."""
        from .observability.residency_metrics import ResidencyCollector
        from .residency import Residency

        s = self.settings
        store = self.store if isinstance(self.store, RiskStore) else None
        deadman, session, hub, persistence = self.deadman, self.session, self.hub, self.persistence

        def pinned_by_calls(st: Any, _now: float) -> str | None:
            trader_id = st.trader_id
            if trader_id in session.declared_open:
                return "session"
            if hub.watching(trader_id):
                return "watcher"
            if trader_id in persistence._unsnapped:  # order bookkeeping not queued yet (next turn of the loop)
                return "bookkeeping"
            return None

        def forget_heard(trader_id: str) -> None:
            deadman.last.pop(trader_id, None)
            deadman.tripped.pop(trader_id, None)

        self.residency = Residency(
            self.engine, max_traders=s.max_traders, idle_s=s.trader_idle_evict_seconds, written=store,
            read=None if store is None or self.takeover is not None else store.read_trader,
            owners=self.takeover, trader_stored=None if store is None else store.trader_stored,
            pins=[pinned_by_calls], last_heard=deadman.last.get, touch=deadman.heard)
        self.residency.forgets += [self.risk.answers.forget, forget_heard]
        self.residency.rejoined = deadman.returned
        self.residency.taken_over = deadman.taken_over
        if self.takeover is not None:
            self.takeover.installed = self.residency.claimed
            self.takeover.called = deadman.heard
        if store is not None:
            self.residency.forgets.append(store.forget_trader)  # the writer's per-trader encoding cache
        if isinstance(self.metrics, PrometheusMetrics):
            self.residency.forgets.append(self.metrics.forget_trader)
            self.metrics.registry.register(ResidencyCollector(self.residency))
        self.risk.residency = self.residency
        self.persistence.admit = self.residency.admit  # the start-up load leaves idle traders in the store

        async def ensure(trader_id: str, account_id: str) -> None:  # an operator's call is never refused
            await self.residency.ensure(trader_id, account_id, creates=False)

        self.admin.ensure = self.bindings.ensure = ensure
        self.restore_admin.ensure = ensure  # an evicted trader is loaded before it is restored (attack21)
        if store is None and s.trader_idle_evict_seconds:
            log.info("trader_idle_evict_seconds=%g: no eviction with database_url=memory (the state would be lost); "
                     "max_traders=%d still bounds new traders", s.trader_idle_evict_seconds, s.max_traders)

    def _interceptors(self) -> list[grpc.aio.ServerInterceptor[Any, Any]]:
        """The tracing interceptor, or none at all when tracing is off (the hot path pays nothing)."""
        return [] if self.tracing is None else [self.tracing.interceptor()]

    def _start_metrics(self) -> None:
        listen = self.settings.metrics_listen
        if not listen:
            return
        try:
            self.metrics_address = self.metrics.serve(listen)
        except OSError as exc:  # a busy metrics port must not take the risk checks down with it
            log.error("metrics: cannot listen on %s (%s); serving without /metrics", listen, exc)
            return
        log.info("metrics on http://%s/metrics", self.metrics_address)

    async def _start_http(self) -> None:
        """The HTTP/JSON API on http_listen, over the very handlers gRPC runs. A busy port is logged, not fatal
        (as for metrics): the risk checks over gRPC must not go down with it."""
        from .httpapi import build_http_api, parse_http_listen, ssl_context

        listen = self.settings.http_listen
        if not listen:
            return
        registry = getattr(self.metrics, "registry", None)
        metrics_text = None if registry is None else lambda: (generate_latest(registry), CONTENT_TYPE_LATEST)
        api = build_http_api(self.settings, self.grpc_handlers, ready=self._ready, metrics_text=metrics_text,
                             tracer_provider=None if self.tracing is None else self.tracing.provider)
        api.admit(self.admission, self.settings.http_max_concurrent)  # its own budget (README "Fairness and overload")
        host, port = parse_http_listen(listen)
        try:
            self.http_address = await api.start(host, port, ssl_context(self.settings),
                                                shutdown_timeout=self.settings.shutdown_grace_s)
        except OSError as exc:
            log.error("http: cannot listen on %s (%s); serving without the HTTP API", listen, exc)
            return
        self.http = api
        scheme = "https" if self.settings.tls_cert else "http"
        log.info("HTTP API on %s://%s (/v1/..., the seeds' /api/... paths, /openapi.json, /metrics, /healthz, "
                 "/readyz)", scheme, self.http_address)

    async def _ready(self) -> bool:
        """Readiness for /readyz: the gRPC health service's overall status."""
        from .httpapi.context import HttpContext

        reply = await self.health.Check(health_pb2.HealthCheckRequest(service=""), HttpContext({}, "internal"))
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def _stop_observability(self) -> None:
        self.metrics.close()
        if self.tracing is not None:
            self.tracing.shutdown()

    # ---- lifecycle ------------------------------------------------------------------------------

    async def check_database(self) -> None:
        """Stop the start on a database configuration that can never work (authentication failure, unknown
        database or role, an option the driver refuses) unless allow_degraded_start; an unreachable database is
        an outage, tolerated: the store keeps retrying."""
        from .store.probe import MISCONFIGURED, Problem, probe

        url = self.settings.database_url
        if not self.durable:
            return
        # At most PROBE_TIMEOUT_S, and no longer than the start waits for the load (store_call_timeout_s): a slow
        # database costs the start at most twice that bound, never the probe's own connect timeout.
        bound = min(PROBE_TIMEOUT_S, self.settings.store_call_timeout_s or PROBE_TIMEOUT_S)
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Problem | None] = loop.create_future()

        def deliver(result: Problem | None) -> None:
            if not answer.done():
                answer.set_result(result)

        def run() -> None:  # a daemon thread: one still connecting when given up on keeps nothing waiting
            result = probe(url, PROBE_TIMEOUT_S)
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting any more
                loop.call_soon_threadsafe(deliver, result)

        threading.Thread(target=run, name="tradeguard-db-probe", daemon=True).start()
        try:
            problem = await asyncio.wait_for(answer, bound)
        except TimeoutError:
            return  # no answer in time: an outage as far as anyone can tell; the store's load says more
        if problem is None or problem.kind != MISCONFIGURED:
            return
        if not self.settings.allow_degraded_start:
            raise StartupError(f"{problem.message} (or pass --allow-degraded-start to serve anyway, as during an "
                               "outage)")
        log.error("%s; serving anyway (--allow-degraded-start): the stored state is not loaded and CanTrade "
                  "answers under unloaded_state_policy=%s until the database accepts the connection",
                  problem.message, self.settings.unloaded_state_policy)

    async def start(self) -> str:
        s = self.settings
        await self.check_database()
        check_listen_address(s.listen)
        server = grpc.aio.server(
            interceptors=self._interceptors(),
            options=server_options(s),
            maximum_concurrent_rpcs=s.max_concurrent_rpcs or None,
        )
        # Registered methods (as the generated stubs register them): grpc core matches the path itself,
        # instead of asking every generic handler in turn. The generic handlers stay as the fallback.
        risk_methods = self.risk.methods(self._trader_guard)
        if self.tracing is not None:
            self.session.tracer = self.tracing.provider.get_tracer("tradeguard.session")
        risk_methods["Session"] = self.session.handler(self._trader_guard, self.metrics)
        for name, methods in ((RISK_SERVICE, risk_methods),
                              (ADMIN_SERVICE, self.admin.methods(self._admin_guard))):
            timed = self._admitted(name, self.metrics.instrument(methods))
            self.grpc_handlers.update({f"/{name}/{method}": handler for method, handler in timed.items()})
            server.add_generic_rpc_handlers((service(name, timed),))
            server.add_registered_method_handlers(name, timed)  # type: ignore[attr-defined]  # not in grpc-stubs
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (RISK_SERVICE, ADMIN_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        creds = server_credentials(s)
        # A unix socket counts as loopback: make it owner-only whatever the umask (0777 would give any local
        # user the sidecar); chmod after binding as well, for a socket file that already existed.
        old_umask = os.umask(0o077) if s.listen.startswith("unix:") else None
        try:
            port = server.add_secure_port(s.listen, creds) if creds else server.add_insecure_port(s.listen)
        except RuntimeError as exc:  # "Failed to bind": what check_listen_address could not foresee
            raise StartupError(f"cannot listen on {s.listen} ({exc}); fix --listen / TRADEGUARD_LISTEN") from None
        finally:
            if old_umask is not None:
                os.umask(old_umask)
        if s.listen.startswith("unix:"):
            with contextlib.suppress(OSError):
                os.chmod(s.listen.removeprefix("unix:").removeprefix("//"), 0o600)
        if s.listen.startswith("unix:"):
            self.address = s.listen
        else:
            host = s.listen.rsplit(":", 1)[0]
            self.address = f"{host}:{port}"
        # grpc's HealthServicer says "" SERVING from construction: nothing is SERVING until it is true.
        for name in ("", RISK_SERVICE, ADMIN_SERVICE, STORE_HEALTH, STATE_HEALTH, CONTROL_HEALTH):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        # The stored state is loaded before the first RPC is answered. When it cannot be (database down, or
        # slower than store_call_timeout_s), the engine answers under unloaded_state_policy until it is.
        await self.health.set(ALERTS_HEALTH, health_pb2.HealthCheckResponse.SERVING)  # until a notifier is down
        self.alerts.start()  # delivery task (takes up the outbox's undelivered alerts once the store answers)
        try:
            await self.persistence.start()
        except SpoolError as exc:
            raise StartupError(f"{exc}; fix --spool-path / TRADEGUARD_SPOOL_PATH (off = no spool)") from None
        if self.takeover is not None:
            self.takeover.start()  # lease renewal (every trader_lease_seconds / 3)
        self.metrics.store_healthy(self.store.healthy)  # the gauge says what health says, from the start
        if self.store.healthy:
            await self.health.set(STORE_HEALTH, health_pb2.HealthCheckResponse.SERVING)
        await server.start()
        self.server = server
        self._start_metrics()
        await self._start_http()
        if not isinstance(self.metrics, NullMetrics):
            self._sampler = asyncio.get_running_loop().create_task(self._sample_store())
        self._releaser = asyncio.get_running_loop().create_task(self._release_orders())
        self.admission.start()  # the overload ticker (api/admission.py)
        await self._start_control()
        self._spool_health_task = watch_spool_health(self.store, self.health)
        self.account_view.start()  # account-wide limits: the view's rounds
        self._heartbeats = asyncio.get_running_loop().create_task(self._watch_heartbeats())
        if self.pruner is not None:
            self.pruner.start()  # history retention, in the background
        self.residency.start()  # bounded traders: idle ones leave memory once stored
        for name in ("", RISK_SERVICE, ADMIN_SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if s.credentials_reload_s:
            self._credentials_task = asyncio.get_running_loop().create_task(self._reload_credentials())
        self._log_exposure()
        loaded = self.persistence.loaded
        log.info("TradeGuard listening on %s (tls=%s, admin=%s, traders=%s, enforcement=%s, stored state %s)",
                 self.address, bool(creds), "open" if self.credentials.table.admin_open else "token",
                 "per-credential" if self.credentials.table.trader_auth else "open",
                 self.engine.flags.enable_risk_enforcement,
                 "loaded" if loaded else f"NOT LOADED: unloaded_state_policy={s.unloaded_state_policy}")
        if not self.engine.flags.enable_risk_enforcement:
            log.warning("SHADOW MODE: enable_risk_enforcement is off: every CanTrade answers allowed (would_deny says "
                        "what would have been denied)")
        if s.ready_file:
            write_ready_file(s.ready_file, self.address)
        return self.address

    async def stop(self) -> None:
        """Health NOT_SERVING, streams ended, in-flight calls finished, then the store drained."""
        log.info("shutting down: health NOT_SERVING, finishing in-flight calls")
        await self.health.enter_graceful_shutdown()
        self._closing = True
        self.hub.close()
        # Both listeners drain together, within the same grace: in-flight calls finish, new ones are refused.
        stops: list[Awaitable[None]] = [] if self.server is None else [self.server.stop(self.settings.shutdown_grace_s)]
        if self.http is not None:
            stops.append(self.http.stop())
        await asyncio.gather(*stops)
        await self.admission.stop()
        for task in (self._sampler, self._releaser, self._heartbeats, self._spool_health_task):
            if task is not None:
                task.cancel()
        if self._credentials_task is not None:
            self._credentials_task.cancel()
        if self.takeover is not None:
            await self.takeover.close()  # no renewal after the release (persistence.close releases the leases)
        await self._stop_control()
        if self.pruner is not None:
            await self.pruner.close()  # a batch in progress ends with its transaction
        await self.account_view.stop()  # account-wide limits: the view's rounds and connection
        await self.alerts.stop()  # undelivered alerts stay in the outbox for the next start
        await self.residency.close()
        await self.persistence.close(self.settings.drain_timeout_s)
        await asyncio.to_thread(self._stop_observability)
        log.info("stopped")

    async def run_until_signalled(self) -> None:
        import signal

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
        except StartupError:
            raise
        except Exception as exc:  # every start-up failure is one line (main logs the traceback at debug level)
            with contextlib.suppress(Exception):  # release what was started (the store's threads)
                await asyncio.wait_for(self.stop(), self.settings.drain_timeout_s + 5.0)
            raise StartupError(f"{type(exc).__name__}: {exc}") from exc
        # What start-up made (modules, stored state, configurations) lives as long as the process: take it out of
        # the collector's reach, so that a full collection on the event loop scans only what was made since
        # (measured in bench/: 27 ms per full collection before, under 1 ms after).
        gc.collect()
        gc.freeze()
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)
            await self.stop()


# ---- the local spool (issue 21, store/spool.py) ------------------------------------------------------------------

SPOOL_HEALTH = "tradeguard.spool"  # NOT_SERVING while the spool cannot be written or is over spool_max_bytes


def spool_file(settings: Settings) -> str | None:
    """The spool's path: PostgreSQL only (None for SQLite and memory, and for spool_path "off"); spool_path, else
    <state_dir>/tradeguard-spool-<sidecar name>.db (one per sidecar: sidecars sharing a directory do not share it)."""
    if not is_postgres(settings.database_url) or settings.spool_path.lower() == "off":
        return None
    if settings.spool_path:
        return settings.spool_path
    return str(state_dir(settings) / f"tradeguard-spool-{settings.sidecar_name}.db")


def watch_spool_health(store: Store, servicer: Any) -> asyncio.Task[None] | None:
    """Keep the health component tradeguard.spool current (once a second): SERVING while the spool takes what the
    database cannot, NOT_SERVING while it cannot be written or states, trades and events alone exceed
    spool_max_bytes (the limit is soft for them). Not registered without a spool (SQLite, memory, off)."""
    if not isinstance(store, RiskStore) or store.spool is None:
        return None
    spool, writer = store.spool, store.writer

    async def watch() -> None:
        last: int | None = None
        while True:
            ok = not spool.stats.over_limit and not writer.spool_failing
            status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
            if status != last:
                await servicer.set(SPOOL_HEALTH, status)
                last = status
            await asyncio.sleep(1.0)

    return asyncio.get_running_loop().create_task(watch())
