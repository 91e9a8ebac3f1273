"""Typed, frozen settings: the only code that reads the environment.

Every field comes from a CLI flag `--<name-with-dashes>`, `TRADEGUARD_<NAME>` (upper case), or the settings file
(`--config FILE`, JSON or TOML, keys named as the fields); precedence: flag > environment > file > default (and
for the two feature flags, the stored SetFeatureFlags values sit between the file and the default: see
persistence.py). The seeds' names are read too, each only when its `TRADEGUARD_` name is not set:
`ENABLE_PERSISTENCE`, `ENABLE_RISK_ENFORCEMENT`, `LOG_LEVEL`, `DB_URL` and `DATABASE_URL` (in this order), and
`DB_HOST`, `DB_PORT`, `DB_USER`, `DB_PASSWORD`, `DB_NAME`, `DB_SSLMODE`, which build a PostgreSQL URL (a partial
set gets libpq's defaults, localhost:5432, with a warning; DB_HOST may carry the port, `db:5433` or `[::1]:5433`,
and a DB_PORT that names another port is an error). The file also takes the seed's keys `max_daily_loss`,
`max_drawdown`, `stop_trading_minutes` and `feature_flags {enable_persistence, enable_risk_enforcement}`.
A key given twice in the file is an error naming it (JSON would keep the last one silently).
Unknown `TRADEGUARD_*` variables and unknown file keys are reported (`Settings.warnings`, with a "did you mean"),
or refused with `--strict`. OpenTelemetry's standard `OTEL_*` variables that the sidecar itself acts on are fields
too, read under their own names (no `TRADEGUARD_` form, no flag).
`CliSettings`: what the client commands `tradeguard health` / `tradeguard admin` take from the environment.
Nothing else in `tradeguard_server` reads `os.environ` (tests/test_quality.py checks).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from .engine.limits import Limits
from .engine.types import TradingState

FOREIGN_TRADER_POLICIES = ("reject", "read_only")
STALE_ACTIONS = ("serve", "reduce_only", "halt")
SIDECAR_ID = re.compile(r"[A-Za-z0-9._:@-]+")

# What each setting does, for `tradeguard serve --help` (README "Settings" has the same in its table).
HELP = {
    "listen": "gRPC address: host:port or unix:/path",
    "database_url": "memory (no database), sqlite:///file.db, or postgresql://user:password@host:5432/name "
                    "(also DB_URL, DATABASE_URL, or the DB_* parts)",
    "migrate_on_start": "upgrade the database schema at start",
    "enable_risk_enforcement": "enforce decisions; off = shadow mode (also ENABLE_RISK_ENFORCEMENT; changeable at "
                               "run time)",
    "enable_persistence": "write state to the database; off = memory only (also ENABLE_PERSISTENCE; changeable at "
                          "run time)",
    "queue_size": "history rows kept in memory while the database does not keep up",
    "drain_timeout_s": "seconds shutdown waits for the store queue to drain",
    "shutdown_grace_s": "seconds shutdown waits for in-flight RPCs",
    "daily_max_drawdown_percentage": "default daily loss limit, % (0 = off; the file's max_daily_loss)",
    "weekly_max_drawdown_percentage": "default weekly loss limit, % (0 = off)",
    "monthly_max_drawdown_percentage": "default monthly loss limit, % (0 = off)",
    "max_drawdown_percentage": "default drawdown-from-peak limit, % (0 = off; the file's max_drawdown)",
    "stop_trading_minutes": "minutes a loss-limit breach pauses trading (0 = until resumed)",
    "breach_state": "trading state a breach moves to: REDUCING or HALTED",
    "period_reset_utc": "UTC time of day (HH:MM) when days, weeks and months start",
    "admin_token": "the AdminService token (prefer admin_token_file)",
    "admin_token_file": "file holding the AdminService token; neither = generated in <state_dir>/admin.token",
    "state_dir": "directory of the generated admin token; empty = the SQLite file's directory, else .",
    "trader_token": "one shared RiskService token for every trader (prefer credentials_file)",
    "trader_token_file": "file holding the shared RiskService token",
    "credentials_file": "TOML file of per-bot tokens and the traders / accounts each may act for",
    "credentials_reload_s": "seconds between checks of the token and credentials files (0 = never re-read)",
    "dev_open_admin": "DEVELOPMENT ONLY: AdminService without a token",
    "insecure": "allow listening beyond loopback with RiskService open (no trader credentials)",
    "tls_cert": "TLS certificate file (PEM)",
    "tls_key": "TLS private key file (PEM)",
    "tls_client_ca": "CA file for client certificates (mTLS)",
    "metrics_listen": "Prometheus /metrics address host:port (empty = off)",
    "http_listen": "the HTTP/JSON API, /metrics, /healthz, /readyz and /openapi.json on host:port (empty = off)",
    "log_level": "debug, info, warning or error, any case (also LOG_LEVEL)",
    "log_json": "one JSON object per log line",
    "max_message_bytes": "largest request accepted, bytes",
    "max_concurrent_streams": "HTTP/2 streams per connection, and WatchRiskState streams in all",
    "watch_buffer": "updates buffered per WatchRiskState stream before the oldest are skipped",
    "ready_file": "file the bound address is written to once serving",
    "uvloop": "run the event loop on uvloop",
    "tracing": "OpenTelemetry spans for every RPC (also on with OTEL_EXPORTER_OTLP_ENDPOINT)",
    "max_concurrent_rpcs": "RPCs in progress server-wide, streams included (0 = no limit)",
    "max_connections": "TCP connections at once (0 = no limit)",
    "max_watchers_per_trader": "WatchRiskState streams per trader id (0 = no limit)",
    "max_watchers_per_connection": "WatchRiskState streams per TCP connection (0 = no limit)",
    "max_watchers_unknown_traders": "WatchRiskState streams on trader ids not known yet, all together (0 = no limit)",
    "handshake_timeout_s": "seconds a connection may take to complete its HTTP/2 (and TLS) handshake (0 = off)",
    "keepalive_time_s": "seconds without traffic before a connection is pinged (0 = off)",
    "keepalive_timeout_s": "seconds an unanswered ping waits before the connection is closed",
    "max_connection_idle_s": "seconds a connection with no RPC in progress is kept (0 = off)",
    "kill_switch_store_timeout_s": "seconds PauseTrading / ResumeTrading wait for their commit",
    "max_clock_skew_s": "seconds a report's observed_at / closed_at may be ahead of the sidecar's clock",
    "store_call_timeout_s": "seconds an admin store call, and the start-up load, wait for the database",
    "unloaded_state_policy": "what CanTrade answers while the stored state is not loaded: reduce_only, halted or "
                             "memory",
    "allow_degraded_start": "serve even when the database configuration cannot work (wrong password, unknown "
                            "database), as during an outage",
    "config": "settings file, JSON or TOML (every setting, and the seed's max_daily_loss, max_drawdown, "
              "stop_trading_minutes, feature_flags); flags and environment win over it",
    "sidecar_id": "this sidecar's name among the sidecars sharing a PostgreSQL database (owner of its traders, origin "
                  "in the audit trail); empty = the host name (the pod name in Kubernetes)",
    "trader_lease_seconds": "seconds a sidecar's ownership of a trader lasts without renewal (PostgreSQL: another "
                            "sidecar takes the trader over once it lapses)",
    "foreign_trader_policy": "what a sidecar answers for a trader another live sidecar owns: reject "
                             "(FAILED_PRECONDITION naming the owner) or read_only (decisions from the stored state, "
                             "reducing orders only, nothing written)",
    "control_state_max_age_seconds": "seconds without hearing the database after which the control state is stale "
                                     "and control_state_stale_action applies",
    "control_state_stale_action": "what a stale control state does to new exposure: serve, reduce_only or halt",
    "control_poll_seconds": "seconds between the slow re-reads of the control state (besides LISTEN/NOTIFY)",
    "account_view_seconds": "seconds between reads of the account's traders on other sidecars (account-wide "
                            "limits); also how often a sidecar publishes its own",
    "history_retention_days": "days of risk_state_history kept; older rows are pruned in batches (0 = forever; each "
                              "trader's newest row is always kept)",
    "trade_retention_days": "days of trade_reports kept (the ids that make a retried ReportTrade a duplicate; 0 = "
                            "forever, else at least 7)",
    "breaker_event_retention_days": "days of circuit_breaker_events kept (0 = forever)",
    "retention_interval_seconds": "seconds between pruning runs",
    "retention_batch_size": "rows deleted per short transaction while pruning",
    "max_traders": "traders held in memory at most (~3 KB each); a call that would add one more is answered "
                   "RESOURCE_EXHAUSTED (HTTP 429) naming this setting; 0 = no bound",
    "trader_idle_evict_seconds": "seconds without a call or report after which an unpinned trader (not paused, no "
                                 "pending orders, no session, no heartbeat) leaves memory once its state is stored; "
                                 "its next call loads it again; 0 = never (never with database_url=memory)",
    "strict": "unknown TRADEGUARD_* variables and unknown settings-file keys stop the start (default: a warning)",
    # ---- alerts (README "Alerts"; alerts/) ----
    "alert_webhook_url": "generic JSON webhook: one POST per alert (empty = off; a secret: never logged)",
    "alert_slack_webhook_url": "Slack incoming-webhook URL (empty = off; a secret: never logged)",
    "alert_discord_webhook_url": "Discord webhook URL (empty = off; a secret: never logged)",
    "alert_telegram_bot_token": "Telegram bot token; with alert_telegram_chat_id (empty = off; never logged)",
    "alert_telegram_chat_id": "Telegram chat id the bot posts alerts to",
    "alert_telegram_api_url": "Telegram Bot API base URL (a local Bot API server, or a test receiver)",
    "alert_timeout_s": "seconds one alert delivery may take before it counts as failed",
    "alert_retry_initial_s": "seconds before the first retry of a failed delivery (doubled each time, with jitter)",
    "alert_retry_max_s": "longest wait between two retries of a delivery, seconds",
    "alert_dead_after_failures": "consecutive failures after which a notifier counts as down (health, metrics)",
    "alert_dead_after_s": "seconds an alert may stay undelivered before its notifier counts as down",
    "alert_max_pending": "deliveries kept in memory (waiting for the database or a notifier); oldest dropped beyond",
    "alert_poll_s": "seconds between the delivery task's looks at the outbox when nothing woke it",
    # The local spool (issue 21, store/spool.py).
    "spool_path": "PostgreSQL: the local file where the store keeps what the database cannot take (outage, "
                  "writer behind); empty = <state_dir>/tradeguard-spool-<sidecar name>.db; off = no spool",
    "spool_max_bytes": "the spool's size limit, bytes: past it the oldest history rows are dropped (states, trades, "
                       "events and pending orders never are)",
}

HELP.update({  # fairness and overload (README "Fairness and overload")
    "max_streams_per_connection": "HTTP/2 streams one connection may open (grpc core refuses more before Python "
                                  "sees them: the client's call fails UNAVAILABLE), and Session / WatchRiskState "
                                  "streams it may hold (0 = off: max_concurrent_streams applies)",
    "max_calls_per_connection": "while the event loop is overloaded (or the connection is on probation after a "
                                "penalty): calls one connection may start per 100 ms; beyond, its calls are shed "
                                "with RESOURCE_EXHAUSTED and retry-after for a penalty (0 = off)",
    "max_calls_per_trader": "while the event loop is overloaded (or the trader is on probation after a penalty): "
                            "calls one trader_id may start per 100 ms; beyond, its calls (and its connections') are "
                            "shed for a penalty (0 = off)",
    "admin_max_concurrent": "AdminService calls in progress at once; more are shed (0 = no limit)",
    "http_max_concurrent": "HTTP API requests in progress at once, server-sent event streams not included; more "
                           "get 429 with Retry-After (0 = no limit)",
    "http_max_streams": "HTTP API server-sent event streams (WatchRiskState) open at once, a budget of their own; "
                        "more get 429 with Retry-After (0 = no limit)",
    "overload_lag_ms": "event loop lag, ms, from which the sidecar is overloaded and sheds flooding connections "
                       "and traders",
    "shed_hold_s": "seconds a flood's shed call is held at least before its RESOURCE_EXHAUSTED (its stream stays "
                   "taken, so a client that retries at once cannot refill the queue; a repeat offender's are held "
                   "for a share of its longer penalty; 0 = answer at once)",
    "retry_after_s": "a flooding connection's or trader's first penalty, seconds (a repeat offender's grows 4x a "
                     "time, up to 60 s); a shed call's retry-after, google.rpc.RetryInfo and HTTP Retry-After give "
                     "what is left of it",
})


class SettingsError(ValueError):
    """A setting has a value that cannot be used."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of the sidecar, with its default."""

    listen: str = "127.0.0.1:50051"
    database_url: str = "sqlite:///tradeguard.db"
    migrate_on_start: bool = True
    enable_risk_enforcement: bool = True
    enable_persistence: bool = True
    queue_size: int = 100_000  # history rows kept while the database does not keep up (store.HISTORY_BACKLOG_ROWS)
    drain_timeout_s: float = 10.0
    shutdown_grace_s: float = 5.0
    daily_max_drawdown_percentage: float = 5.0
    weekly_max_drawdown_percentage: float = 0.0
    monthly_max_drawdown_percentage: float = 0.0
    max_drawdown_percentage: float = 20.0
    stop_trading_minutes: int = 30
    breach_state: str = "REDUCING"
    period_reset_utc: str = "00:00"
    # Credentials (README.md, "Security"). With neither admin_token nor admin_token_file, the admin token is
    # created at first start in <state_dir>/admin.token (owner-only), its path logged.
    admin_token: str = ""
    admin_token_file: str = ""
    state_dir: str = ""  # where the generated admin token lives; "" = the SQLite file's directory, else "."
    trader_token: str = ""  # one shared token for RiskService (any trader); prefer credentials_file
    trader_token_file: str = ""
    credentials_file: str = ""  # TOML: per-bot tokens and the traders / accounts each may act for
    credentials_reload_s: float = 2.0  # token and credentials files are re-read this often when changed (0 = never)
    dev_open_admin: bool = False  # DEVELOPMENT ONLY: AdminService answers without a token (logged loudly)
    insecure: bool = False
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    metrics_listen: str = "127.0.0.1:9464"
    # The HTTP/JSON API, /metrics, /healthz, /readyz, /openapi.json (README, "HTTP/JSON API"); "" = off. 8088, not
    # 8080: the bot in the same pod (NOFX's API) owns 8080.
    http_listen: str = "127.0.0.1:8088"
    log_level: str = "INFO"
    log_json: bool = False
    max_message_bytes: int = 1 << 20
    max_concurrent_streams: int = 1000
    watch_buffer: int = 64
    ready_file: str = ""
    uvloop: bool = True
    tracing: bool = False  # OpenTelemetry server spans; also on when OTEL_EXPORTER_OTLP_ENDPOINT is set
    # OpenTelemetry's standard variables (README.md, "Traces"), read under their own names only: an endpoint turns
    # tracing on and spans go there over OTLP/gRPC (the traces one wins); OTEL_SDK_DISABLED=true keeps tracing off
    # whatever else is set. The exporter and the SDK read the others themselves (OTEL_EXPORTER_OTLP_HEADERS /
    # _CERTIFICATE / _INSECURE, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER[_ARG]).
    otel_sdk_disabled: bool = field(default=False, metadata={"env": "OTEL_SDK_DISABLED"})
    otel_exporter_otlp_endpoint: str = field(default="", metadata={"env": "OTEL_EXPORTER_OTLP_ENDPOINT"})
    otel_exporter_otlp_traces_endpoint: str = field(default="", metadata={"env": "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"})
    otel_service_name: str = field(default="", metadata={"env": "OTEL_SERVICE_NAME"})  # service.name; "" = tradeguard
    # Limits against hostile or broken clients (README.md, "Reliability"). 0 = no limit / off.
    max_concurrent_rpcs: int = 0  # RPCs in progress server-wide (streams included); beyond: RESOURCE_EXHAUSTED
    max_connections: int = 1000  # TCP connections at once; more are closed at accept
    max_watchers_per_trader: int = 8  # WatchRiskState streams per trader_id (each report fans out to them)
    max_watchers_per_connection: int = 64  # WatchRiskState streams per TCP connection
    max_watchers_unknown_traders: int = 32  # WatchRiskState streams on trader ids not known yet, all together
    handshake_timeout_s: float = 10.0  # a connection that has not completed its HTTP/2 (and TLS) handshake
    keepalive_time_s: float = 60.0  # ping a connection after this long without traffic...
    keepalive_timeout_s: float = 20.0  # ...and close it (and its streams) when the ping is not answered
    max_connection_idle_s: float = 300.0  # GOAWAY a connection with no RPC in progress for this long
    kill_switch_store_timeout_s: float = 2.0  # PauseTrading / ResumeTrading wait this long for their commit
    max_clock_skew_s: float = 5.0  # a report's observed_at / closed_at further ahead of our clock: INVALID_ARGUMENT
    store_call_timeout_s: float = 30.0  # admin store calls give up (UNAVAILABLE) on a database that does not answer
    # What CanTrade answers while the stored state is not loaded (database down or slow at start): reduce_only,
    # halted, or memory (answer from what arrived since the start, as if nothing was stored). README, "Restarts".
    unloaded_state_policy: str = "reduce_only"
    # Many sidecars sharing one PostgreSQL database (README "Running many sidecars"); unused with SQLite or memory.
    sidecar_id: str = ""  # "" = the host name (see sidecar_name)
    trader_lease_seconds: float = 10.0
    foreign_trader_policy: str = "reject"
    control_state_max_age_seconds: float = 60.0
    control_state_stale_action: str = "reduce_only"
    control_poll_seconds: float = 5.0
    account_view_seconds: float = 0.5
    # History retention (README "History retention and restore"; store/retention.py): rows older than these many
    # days are pruned in batches off the hot path (0 = kept forever). trade_reports keep the trade ids that make a
    # retried ReportTrade a duplicate: at least TRADE_RETENTION_MIN_DAYS.
    history_retention_days: float = 90.0
    trade_retention_days: float = 365.0
    breaker_event_retention_days: float = 365.0
    retention_interval_seconds: float = 3600.0
    retention_batch_size: int = 1000
    # Bounded traders (issue 21, residency.py; README "Bounded traders"): at most max_traders in memory (~2.9 KB
    # each measured: 100,000 = ~290 MiB); idle ones leave memory after trader_idle_evict_seconds (0 = never).
    max_traders: int = 100_000
    trader_idle_evict_seconds: float = 3600.0
    # A database misconfiguration that cannot heal (authentication failure, unknown database) stops the start;
    # with this the sidecar serves anyway, as during an outage (README, "Settings").
    allow_degraded_start: bool = False
    # The local spool (issue 21, store/spool.py; PostgreSQL only). "" = <state_dir>/tradeguard-spool-<name>.db.
    spool_path: str = ""
    spool_max_bytes: int = 256 << 20
    config: str = field(default="", metadata={"file": False})  # the settings file (JSON or TOML); not in the file
    strict: bool = False  # unknown TRADEGUARD_* variables and unknown file keys stop the start instead of a warning
    # ---- fairness and overload (README "Fairness and overload"; api/admission.py). 0 = no limit / off.
    max_streams_per_connection: int = 0  # HTTP/2 streams one connection may open (grpc core, before Python)...
    # ...and Session / WatchRiskState streams it may hold; the smaller of this and max_concurrent_streams applies;
    # off by default (0): over it grpc core refuses the stream and a client fails the call UNAVAILABLE
    # (a bot that waits for each answer starts at most ~50 per 100 ms even when catching up after a stall)
    max_calls_per_connection: int = 200  # while overloaded: calls one connection may start per 100 ms
    max_calls_per_trader: int = 200  # while overloaded: calls one trader_id may start per 100 ms
    admin_max_concurrent: int = 16  # AdminService calls in progress at once
    http_max_concurrent: int = 64  # HTTP API requests in progress at once (server-sent event streams not included)
    http_max_streams: int = 256  # HTTP server-sent event streams (WatchRiskState) open at once: their own budget
    overload_lag_ms: float = 20.0  # the event loop this late means overloaded
    shed_hold_s: float = 1.0  # a flood's shed call is answered after this long (its stream stays taken meanwhile)
    retry_after_s: float = 1.0  # a flooder's first penalty; retry-after / RetryInfo / Retry-After: what is left
    # ---- alerts that reach people (README "Alerts"; alerts/): notifiers, and how delivery retries ----
    alert_webhook_url: str = ""  # generic JSON POST per alert
    alert_slack_webhook_url: str = ""  # Slack incoming webhook: {"text": ...}
    alert_discord_webhook_url: str = ""  # Discord webhook: {"content": ...}
    alert_telegram_bot_token: str = ""  # Telegram: POST <api>/bot<token>/sendMessage {"chat_id", "text"}
    alert_telegram_chat_id: str = ""
    alert_telegram_api_url: str = "https://api.telegram.org"
    alert_timeout_s: float = 5.0
    alert_retry_initial_s: float = 1.0
    alert_retry_max_s: float = 300.0
    alert_dead_after_failures: int = 5
    alert_dead_after_s: float = 300.0
    alert_max_pending: int = 10_000
    alert_poll_s: float = 5.0
    # Not settings: the names of the settings given explicitly (flag, environment or file) rather than defaulted.
    # A feature flag given at start beats the stored one (README, "Feature flags"). Filled by load_settings, as are
    # where each given value came from (name -> "flag --x" / "env X" / "file F") and what loading found worth a
    # warning (unknown variables and keys, ignored or defaulted database variables), logged at start.
    given: frozenset[str] = field(default=frozenset(), metadata={"internal": True})
    sources: tuple[tuple[str, str], ...] = field(default=(), metadata={"internal": True})
    warnings: tuple[str, ...] = field(default=(), metadata={"internal": True})

    # ---- derived --------------------------------------------------------------------------------

    @property
    def otlp_traces_endpoint(self) -> str:
        """Where spans are exported: the traces endpoint, else the general one ("" = nowhere)."""
        return self.otel_exporter_otlp_traces_endpoint or self.otel_exporter_otlp_endpoint

    @property
    def sidecar_name(self) -> str:
        """This sidecar's name among those sharing the database: sidecar_id, else the host name."""
        import socket

        return self.sidecar_id or socket.gethostname()[:128] or "tradeguard"

    @property
    def period_reset_offset_s(self) -> float:
        hours, minutes = self.period_reset_utc.split(":")
        return int(hours) * 3600.0 + int(minutes) * 60.0

    def default_limits(self) -> Limits:
        def pct(value: float) -> float | None:
            return value if value > 0 else None

        return Limits(
            daily_max_drawdown_percentage=pct(self.daily_max_drawdown_percentage),
            weekly_max_drawdown_percentage=pct(self.weekly_max_drawdown_percentage),
            monthly_max_drawdown_percentage=pct(self.monthly_max_drawdown_percentage),
            max_drawdown_percentage=pct(self.max_drawdown_percentage),
            stop_trading_minutes=self.stop_trading_minutes,
            breach_state=TradingState[self.breach_state],
        )

    def admin_token_value(self) -> str:
        """The configured admin token (stripped), "" when none is configured or its file cannot be read."""
        if self.admin_token:
            return self.admin_token.strip()
        if self.admin_token_file:
            try:
                with open(self.admin_token_file, encoding="utf-8") as fh:
                    return fh.read().strip()
            except OSError:
                return ""
        return ""

    def redacted(self) -> dict[str, Any]:
        """Settings for the start-up log line, with secrets hidden."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("admin_token", "trader_token", *ALERT_SECRETS) and value:
                value = "***"
            elif f.name in ("database_url", "otel_exporter_otlp_endpoint", "otel_exporter_otlp_traces_endpoint"):
                value = redact_url(value)
            elif f.name == "given":
                value = sorted(value)
            elif f.name in ("sources", "warnings"):
                continue
            out[f.name] = value
        return out


def redact_url(url: str) -> str:
    """Hide every password of a database URL (each form libpq accepts): postgresql://u:***@host/db."""
    from .store.url import redact

    return redact(url)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(name: str, kind: Any, raw: str | bool | int | float) -> Any:
    if isinstance(raw, bool) or kind is str:
        return raw
    text = str(raw).strip()
    try:
        if kind is bool:
            lowered = text.lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError(text)
        value = kind(text)
    except ValueError:
        raise SettingsError(f"{name}: expected {kind.__name__}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingsError(f"{name}: must be finite, got {text!r}")
    return value


# ---- where values come from ---------------------------------------------------------------------

# The seeds' unprefixed variables, each read only when its TRADEGUARD_ name is not set (and only when not empty).
SEED_ENV = {"ENABLE_PERSISTENCE": "enable_persistence", "ENABLE_RISK_ENFORCEMENT": "enable_risk_enforcement",
            "LOG_LEVEL": "log_level"}
DB_URL_ENV = ("DB_URL", "DATABASE_URL")  # after TRADEGUARD_DATABASE_URL, in this order
DB_PART_ENV = ("DB_HOST", "DB_PORT", "DB_USER", "DB_PASSWORD", "DB_NAME", "DB_SSLMODE")
# The seed's configuration file keys, and the settings they set (percentages, as the settings are).
SEED_FILE_KEYS = {"max_daily_loss": "daily_max_drawdown_percentage", "max_drawdown": "max_drawdown_percentage"}
FEATURE_FLAGS_KEY = "feature_flags"  # the seed's {"enable_persistence": ..., "enable_risk_enforcement": ...}
FLAG_NAMES = ("enable_persistence", "enable_risk_enforcement")
# TRADEGUARD_ variables other programs read (the example bots; the test suite and bench/ by prefix): never reported.
OTHER_PROGRAMS_ENV = frozenset({"TRADEGUARD_ADDR"})
OTHER_PROGRAMS_PREFIXES = ("TRADEGUARD_TEST_", "TRADEGUARD_MODEL_", "TRADEGUARD_BENCH_")
# What Kubernetes puts in every pod of a namespace with a Service named `tradeguard` (and Docker links for a linked
# container of that name): TRADEGUARD_SERVICE_HOST, TRADEGUARD_PORT_50051_TCP_ADDR, ... Never reported.
SERVICE_LINK_ENV = re.compile(r"TRADEGUARD_(SERVICE_HOST|SERVICE_PORT(_\w+)?|NAME|ENV_\w+"
                              r"|PORT(_\d+_(TCP|UDP|SCTP)(_(ADDR|PORT|PROTO))?)?)")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
PRECEDENCE = "flag > env > file > stored feature flags > default"


@dataclass(slots=True)
class _Layer:
    """Values of one source (flags, environment or file), each with where it came from."""

    values: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)

    def set(self, name: str, value: Any, origin: str) -> None:
        self.values[name] = value
        self.origin[name] = origin


def _from_file(name: str, kind: Any, raw: Any) -> Any:
    """A file value (JSON or TOML types) as the setting's type; strings are read as the environment's are."""
    if isinstance(raw, str):
        return _coerce(name, kind, raw)
    if kind is bool and isinstance(raw, bool):
        return raw
    if kind is int and isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if kind is int and isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if kind is float and isinstance(raw, int | float) and not isinstance(raw, bool):
        if not math.isfinite(raw):
            raise SettingsError(f"{name}: must be finite, got {raw!r}")
        return float(raw)
    raise SettingsError(f"{name}: expected {kind.__name__}, got {raw!r}")


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _env_layer(env: Mapping[str, str], hints: Mapping[str, Any], notes: list[str], unknown: list[str]) -> _Layer:
    layer = _Layer()
    for f in settings_fields():
        key = f"TRADEGUARD_{f.name.upper()}"
        if key in env:
            if hints[f.name] is bool and not env[key].strip():
                # An empty switch (compose's ${VAR} of an unset VAR) is no value: read as false it would, e.g.,
                # switch enforcement off without a word.
                notes.append(f"{key} is empty: ignored (unset it, or give true or false)")
                continue
            layer.set(f.name, _coerce(key, hints[f.name], env[key]), f"env {key}")
    for key, name in SEED_ENV.items():
        if name not in layer.values and env.get(key, "").strip():
            layer.set(name, _coerce(key, hints[name], env[key]), f"env {key}")
    for f in otel_fields():
        if env.get(f.metadata["env"]):  # unset and empty are the same to OpenTelemetry
            layer.set(f.name, _otel_value(hints[f.name], env[f.metadata["env"]]), f"env {f.metadata['env']}")
    _database_url_from_env(env, layer, notes)
    known = {f"TRADEGUARD_{f.name.upper()}" for f in settings_fields()} | cli_env_names() | OTHER_PROGRAMS_ENV
    for key in sorted(env):
        if key.startswith("TRADEGUARD_") and key not in known and not key.startswith(OTHER_PROGRAMS_PREFIXES) and \
                not SERVICE_LINK_ENV.fullmatch(key):
            unknown.append(f"unknown environment variable {key}{_suggest(key, known)}")
    return layer


def _database_url_from_env(env: Mapping[str, str], layer: _Layer, notes: list[str]) -> None:
    """TRADEGUARD_DATABASE_URL, else DB_URL, else DATABASE_URL, else the DB_* parts; what is set and not used is
    said (a URL in two variables that differ, DB_* next to a URL)."""
    urls = [(key, env[key].strip()) for key in DB_URL_ENV if env.get(key, "").strip()]
    parts = [key for key in DB_PART_ENV if env.get(key, "").strip()]
    if "database_url" in layer.values:
        chosen = layer.origin["database_url"].removeprefix("env ")
    elif urls:
        key, url = urls[0]
        layer.set("database_url", url, f"env {key}")
        chosen = key
    elif parts:
        from .store.url import url_from_parts

        given = {key: env[key] for key in DB_PART_ENV if key in env}
        if "DB_HOST" not in parts:
            given["DB_HOST"] = "localhost"
            notes.append(f"{', '.join(parts)} set without DB_HOST: connecting to PostgreSQL on localhost:"
                         f"{given.get('DB_PORT', '').strip() or 5432} (libpq's defaults; set DB_HOST to connect "
                         f"elsewhere, or unset the DB_* variables to use SQLite)")
        try:
            url = url_from_parts(given)
        except ValueError as exc:
            raise SettingsError(f"DB_* variables: {exc}") from None
        layer.set("database_url", url, f"env {', '.join(parts)}")
        return
    else:
        return
    ignored = [key for key, url in urls if key != chosen and url != layer.values["database_url"]] + parts
    if ignored:
        notes.append(f"{', '.join(ignored)} ignored: the database URL comes from {chosen}")


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object of the settings file; a key given twice is refused (json keeps the last one silently)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _toml_duplicate(content: bytes, exc: tomllib.TOMLDecodeError) -> str:
    """tomllib's "Cannot overwrite a value (at line N, ...)" names no key: the key of that line, when it is one."""
    found = re.search(r"Cannot overwrite a value \(at line (\d+)", str(exc))
    if not found:
        return ""
    lines = content.decode("utf-8", errors="replace").splitlines()
    number = int(found.group(1))
    key = lines[number - 1].split("=", 1)[0].strip() if 0 < number <= len(lines) else ""
    return f": key {key!r} is given twice" if key else ""


def read_config_file(path: str) -> dict[str, Any]:
    """The settings file as a mapping: TOML when it ends in .toml, JSON otherwise (JSON first, then TOML, for a
    name with neither suffix). Raises SettingsError naming the file."""
    try:
        content = Path(path).read_bytes()
    except OSError as exc:
        raise SettingsError(f"config file {path}: cannot read it ({exc.strerror or exc})") from None
    suffix = Path(path).suffix.lower()
    errors = []
    for kind in (("toml",) if suffix == ".toml" else ("json",) if suffix == ".json" else ("json", "toml")):
        try:
            if kind == "toml":
                data = tomllib.loads(content.decode("utf-8"))
            else:
                data = json.loads(content, object_pairs_hook=_json_object)
        except _DuplicateKey as dup:  # JSON would keep the last silently; TOML refuses duplicates itself
            raise SettingsError(f"config file {path}: key {dup.key!r} is given twice in one object (only one value "
                                "can be meant: give it once)") from None
        except tomllib.TOMLDecodeError as exc:
            errors.append(f"not TOML: {exc}{_toml_duplicate(content, exc)}")
            continue
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            errors.append(f"not {kind.upper()}: {exc}")
            continue
        if not isinstance(data, dict):
            raise SettingsError(f"config file {path}: expected an object of settings, got {type(data).__name__}")
        return data
    raise SettingsError(f"config file {path}: {'; '.join(errors)}")


def _file_layer(path: str, hints: Mapping[str, Any], notes: list[str], unknown: list[str]) -> _Layer:
    layer = _Layer()
    data = read_config_file(path)
    names = {f.name for f in fields(Settings) if not f.metadata.get("internal") and f.metadata.get("file", True)}
    known_keys = names | set(SEED_FILE_KEYS) | {FEATURE_FLAGS_KEY}
    for raw_key, raw in data.items():
        key = str(raw_key).replace("-", "_")
        if key == FEATURE_FLAGS_KEY and isinstance(raw, dict):
            for flag_key, flag_value in raw.items():
                flag = str(flag_key).replace("-", "_")
                if flag not in FLAG_NAMES:
                    unknown.append(f"unknown key {FEATURE_FLAGS_KEY}.{flag_key} in {path}"
                                   f"{_suggest(flag, FLAG_NAMES)}")
                    continue
                _set_from_file(layer, flag, hints[flag], flag_value, f"{FEATURE_FLAGS_KEY}.{flag_key}", path)
            continue
        if key not in known_keys:
            unknown.append(f"unknown key {raw_key} in {path}{_suggest(key, known_keys)}")
            continue
        if key == FEATURE_FLAGS_KEY:
            raise SettingsError(f"config file {path}: {FEATURE_FLAGS_KEY}: expected an object such as "
                                '{"enable_persistence": true, "enable_risk_enforcement": true}')
        name = SEED_FILE_KEYS.get(key, key)
        value = _from_file(f"{path}: {raw_key}", hints[name], raw)
        if key in SEED_FILE_KEYS and 0 < value < 1:
            notes.append(f"{path}: {raw_key}={raw} is read as {raw} % (the value is a percentage: 5 means 5 %)")
        _set_from_file(layer, name, hints[name], raw, str(raw_key), path, value)
    return layer


def _set_from_file(layer: _Layer, name: str, kind: Any, raw: Any, key: str, path: str,
                   value: Any = dataclasses.MISSING) -> None:
    if value is dataclasses.MISSING:
        value = _from_file(f"{path}: {key}", kind, raw)
    if name in layer.values and layer.values[name] != value:
        raise SettingsError(f"config file {path}: {key} and {layer.origin[name].rsplit(': ', 1)[-1]} both set "
                            f"{name}, to different values; keep one")
    layer.set(name, value, f"file {path}: {key}")


def load_settings(env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None) -> Settings:
    """Build Settings from CLI overrides (None values are ignored), `env` (None: the process environment) and the
    settings file they name (`config`), in this precedence. Raises SettingsError (one line) for a value that cannot
    be used, and, with `strict`, for unknown variables and keys."""
    env = os.environ if env is None else env
    hints = get_type_hints(Settings)
    notes: list[str] = []
    unknown: list[str] = []
    flags = _Layer()
    for name, raw in (overrides or {}).items():
        if raw is not None:
            flag = f"--{name.replace('_', '-')}"
            flags.set(name, _coerce(flag, hints[name], raw), f"flag {flag}")
    from_env = _env_layer(env, hints, notes, unknown)
    config = flags.values.get("config", from_env.values.get("config", ""))
    from_file = _file_layer(config, hints, notes, unknown) if config else _Layer()
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for layer in (from_file, from_env, flags):  # lowest precedence first
        values.update(layer.values)
        origin.update(layer.origin)
    if "log_level" in values:
        level = str(values["log_level"]).strip().upper()
        values["log_level"] = "WARNING" if level == "WARN" else level
    if unknown and values.get("strict", False):
        raise SettingsError(f"{'; '.join(unknown)} (--strict)")
    settings = Settings(**values, given=frozenset(values), sources=tuple(sorted(origin.items())),
                        warnings=tuple(unknown + notes))
    validate(settings)
    return settings


def describe_sources(s: Settings, flags_note: bool = True) -> str:
    """One line for the start-up log: each setting given at start, its value (secrets hidden) and where it came
    from; with `flags_note`, the feature flags not given, which follow the stored SetFeatureFlags values."""
    shown = s.redacted()
    given = ", ".join(f"{name}={shown[name]!r} ({origin})" for name, origin in s.sources if name in shown)
    left = [name for name in FLAG_NAMES if name not in s.given]
    flags = f"; not given, so as last set at run time (stored), else default: {', '.join(left)}" if (
        left and flags_note) else ""
    return f"settings given ({PRECEDENCE}): {given or 'none, all defaults'}{flags}"


def _otel_value(kind: Any, raw: str) -> Any:
    """An OTEL_* variable as OpenTelemetry reads it: a boolean is true only for "true" (any case)."""
    return raw.strip().lower() == "true" if kind is bool else raw


def validate(s: Settings) -> None:
    from .engine.unloaded import POLICIES

    if s.log_level not in LOG_LEVELS:
        raise SettingsError(f"log_level: must be one of debug, info, warning, error, critical (any case), "
                            f"got {s.log_level!r}")
    if s.database_url != "memory":
        from .store.url import normalize_url

        try:
            normalize_url(s.database_url)
        except ValueError as exc:
            raise SettingsError(f"database_url: {exc}; expected postgresql://user:password@host:5432/name, "
                                "sqlite:///path.db or memory") from None

    if s.unloaded_state_policy not in POLICIES:
        raise SettingsError(f"unloaded_state_policy: must be one of {', '.join(POLICIES)}, "
                            f"got {s.unloaded_state_policy!r}")

    from .store.url import ambiguous_password

    if ambiguous_password(s.database_url):
        raise SettingsError(f"database_url: the password holds an unencoded '@' ({redact_url(s.database_url)}); "
                            "percent-encode it as %40")
    if s.credentials_reload_s < 0:
        raise SettingsError("credentials_reload_s: must be >= 0 (0 = never re-read)")
    if s.breach_state not in ("REDUCING", "HALTED"):
        raise SettingsError("breach_state: must be REDUCING or HALTED")
    try:
        hours, minutes = s.period_reset_utc.split(":")
        if not (0 <= int(hours) < 24 and 0 <= int(minutes) < 60):
            raise ValueError
    except ValueError:
        raise SettingsError(f"period_reset_utc: expected HH:MM, got {s.period_reset_utc!r}") from None
    for name in ("daily_max_drawdown_percentage", "weekly_max_drawdown_percentage",
                 "monthly_max_drawdown_percentage", "max_drawdown_percentage"):
        if not 0 <= getattr(s, name) <= 100:
            raise SettingsError(f"{name}: must be in [0, 100] (0 = off)")
    if s.stop_trading_minutes < 0:
        raise SettingsError("stop_trading_minutes: must be >= 0")
    if s.queue_size < 1:
        raise SettingsError("queue_size: must be >= 1")
    if s.max_message_bytes < 1024:
        raise SettingsError("max_message_bytes: must be >= 1024")
    for name in ("max_concurrent_rpcs", "max_connections", "max_watchers_per_trader",
                 "max_watchers_per_connection", "max_watchers_unknown_traders"):
        if getattr(s, name) < 0:
            raise SettingsError(f"{name}: must be >= 0 (0 = no limit)")
    if 0 < s.max_concurrent_rpcs <= s.max_concurrent_streams and s.max_concurrent_streams > 0:
        raise SettingsError("max_concurrent_rpcs: must be greater than max_concurrent_streams (the WatchRiskState "
                            "streams held open would leave no room for CanTrade)")
    for name in ("handshake_timeout_s", "keepalive_time_s", "keepalive_timeout_s", "max_connection_idle_s",
                 "kill_switch_store_timeout_s", "store_call_timeout_s"):
        if getattr(s, name) < 0:
            raise SettingsError(f"{name}: must be >= 0 (0 = off)")
    if s.foreign_trader_policy not in FOREIGN_TRADER_POLICIES:
        raise SettingsError(f"foreign_trader_policy: must be one of {', '.join(FOREIGN_TRADER_POLICIES)}, "
                            f"got {s.foreign_trader_policy!r}")
    if s.control_state_stale_action not in STALE_ACTIONS:
        raise SettingsError(f"control_state_stale_action: must be one of {', '.join(STALE_ACTIONS)}, "
                            f"got {s.control_state_stale_action!r}")
    for name, low in (("trader_lease_seconds", 1.0), ("control_state_max_age_seconds", 1.0),
                      ("control_poll_seconds", 0.1), ("account_view_seconds", 0.05)):
        value = getattr(s, name)
        if not math.isfinite(value) or value < low or value > 86_400:
            raise SettingsError(f"{name}: must be between {low:g} and 86400 seconds, got {value!r}")
    if s.sidecar_id and (len(s.sidecar_id) > 128 or not SIDECAR_ID.fullmatch(s.sidecar_id)):
        raise SettingsError(f"sidecar_id: at most 128 of A-Z a-z 0-9 . _ - : @, got {s.sidecar_id!r}")
    if bool(s.tls_cert) != bool(s.tls_key):
        raise SettingsError("tls_cert and tls_key: give both or neither")
    if s.tls_client_ca and not s.tls_cert:
        raise SettingsError("tls_client_ca: needs tls_cert and tls_key")
    if s.metrics_listen:
        _host, sep, port = s.metrics_listen.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            raise SettingsError(f"metrics_listen: expected host:port (or empty to disable), got {s.metrics_listen!r}")
    if s.http_listen:
        _host, sep, port = s.http_listen.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            raise SettingsError(f"http_listen: expected host:port (or empty to disable), got {s.http_listen!r}")
    if s.spool_max_bytes < 1 << 20:
        raise SettingsError(f"spool_max_bytes: must be >= 1048576 (1 MiB), got {s.spool_max_bytes}")
    if s.max_traders < 0:
        raise SettingsError(f"max_traders: must be >= 0 (0 = no bound), got {s.max_traders}")
    if not math.isfinite(s.trader_idle_evict_seconds) or s.trader_idle_evict_seconds < 0:
        raise SettingsError("trader_idle_evict_seconds: must be >= 0 seconds (0 = never evict), got "
                            f"{s.trader_idle_evict_seconds!r}")
    _validate_fairness(s)
    validate_alerts(s)
    validate_retention(s)


def _validate_fairness(s: Settings) -> None:
    for name in ("max_streams_per_connection", "max_calls_per_connection", "max_calls_per_trader",
                 "admin_max_concurrent", "http_max_concurrent", "http_max_streams"):
        if getattr(s, name) < 0:
            raise SettingsError(f"{name}: must be >= 0 (0 = no limit)")
    for name, low, high in (("overload_lag_ms", 1.0, 60_000.0), ("shed_hold_s", 0.0, 60.0),
                            ("retry_after_s", 0.001, 3600.0)):
        value = getattr(s, name)
        if not math.isfinite(value) or not low <= value <= high:
            raise SettingsError(f"{name}: must be between {low:g} and {high:g}, got {value!r}")


# ---- alerts (alerts/): the settings that hold secrets, and their checks ----
# A webhook URL carries its secret in the path (Slack, Discord, most generic receivers): the whole URL is one.
ALERT_SECRETS = ("alert_webhook_url", "alert_slack_webhook_url", "alert_discord_webhook_url",
                 "alert_telegram_bot_token")


def validate_alerts(s: Settings) -> None:
    from urllib.parse import urlsplit

    for name in (*ALERT_SECRETS[:3], "alert_telegram_api_url"):
        value = getattr(s, name)
        try:  # a malformed host or port ("http://[::1:80/", "http://h:99999/") fails here, not at the first alert
            parts = urlsplit(value)
            valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
        except ValueError:
            valid = False
        if value and not valid:
            raise SettingsError(f"{name}: expected an http:// or https:// URL (or empty to disable)")
    if bool(s.alert_telegram_bot_token) != bool(s.alert_telegram_chat_id):
        raise SettingsError("alert_telegram_bot_token and alert_telegram_chat_id: give both or neither")
    for name in ("alert_timeout_s", "alert_retry_initial_s", "alert_retry_max_s", "alert_dead_after_s",
                 "alert_poll_s"):
        value = getattr(s, name)
        if not math.isfinite(value) or value <= 0 or value > 86_400:
            raise SettingsError(f"{name}: must be above 0 and at most 86400 seconds, got {value!r}")
    if s.alert_retry_max_s < s.alert_retry_initial_s:
        raise SettingsError("alert_retry_max_s: must be >= alert_retry_initial_s")
    if s.alert_dead_after_failures < 1:
        raise SettingsError("alert_dead_after_failures: must be >= 1")
    if s.alert_max_pending < 1:
        raise SettingsError("alert_max_pending: must be >= 1")


# ---- history retention ----------------------------------------------------------------------------

# A trade id must outlive every retry of its ReportTrade: a bot retries within seconds, but one that replays its
# trade log after a crash, a deploy or a long outage of the exchange or the sidecar sends trades days old; a pruned
# id reported again counts as a new trade (the loss streak and the per-symbol statistics count it twice).
TRADE_RETENTION_MIN_DAYS = 7.0
RETENTION_MAX_DAYS = 36_500.0
RETENTION_BATCH_MAX = 100_000


def validate_retention(s: Settings) -> None:
    for name in ("history_retention_days", "trade_retention_days", "breaker_event_retention_days"):
        value = getattr(s, name)
        if not 0 <= value <= RETENTION_MAX_DAYS:
            raise SettingsError(f"{name}: must be between 0 (keep forever) and {RETENTION_MAX_DAYS:g} days, "
                                f"got {value!r}")
    if 0 < s.trade_retention_days < TRADE_RETENTION_MIN_DAYS:
        raise SettingsError(
            f"trade_retention_days: {s.trade_retention_days:g} is shorter than the floor of "
            f"{TRADE_RETENTION_MIN_DAYS:g} days: trade_reports rows are what makes a retried or replayed ReportTrade "
            "a duplicate, and a trade id pruned before its last retry would be counted twice; give at least "
            f"{TRADE_RETENTION_MIN_DAYS:g} (or 0 to keep them forever)")
    if not 1 <= s.retention_interval_seconds <= 7 * 86_400:
        raise SettingsError(f"retention_interval_seconds: must be between 1 and 604800 seconds, got "
                            f"{s.retention_interval_seconds!r}")
    if not 1 <= s.retention_batch_size <= RETENTION_BATCH_MAX:
        raise SettingsError(f"retention_batch_size: must be between 1 and {RETENTION_BATCH_MAX} rows, got "
                            f"{s.retention_batch_size!r}")


def settings_fields() -> list[dataclasses.Field[Any]]:
    """The settings (each a TRADEGUARD_ environment variable and a CLI flag); not the internal or OTEL_ fields."""
    return [f for f in fields(Settings) if not f.metadata.get("internal") and "env" not in f.metadata]


def otel_fields() -> list[dataclasses.Field[Any]]:
    """The fields read from OpenTelemetry's standard variables (metadata "env" names the variable)."""
    return [f for f in fields(Settings) if "env" in f.metadata]


@dataclass(frozen=True, slots=True)
class CliSettings:
    """What the client commands take from the environment: `tradeguard health` (the image's HEALTHCHECK) and
    `tradeguard admin` call a running sidecar. Each field is `TRADEGUARD_<NAME>`; the command's flag wins."""

    health_address: str = "127.0.0.1:50051"  # `tradeguard health --address`
    admin_address: str = "127.0.0.1:50051"  # `tradeguard admin --address`
    health_tls_ca: str = ""  # --tls-ca of both commands (TLS to the sidecar when given)
    health_tls_cert: str = ""  # --tls-cert of both (mTLS client certificate)
    health_tls_key: str = ""  # --tls-key of both


def load_cli_settings(env: Mapping[str, str] | None = None) -> CliSettings:
    """CliSettings from `env` (None: the process environment)."""
    env = os.environ if env is None else env
    keys = {f.name: f"TRADEGUARD_{f.name.upper()}" for f in fields(CliSettings)}
    return CliSettings(**{name: env[key] for name, key in keys.items() if key in env})


def cli_env_names() -> frozenset[str]:
    """The TRADEGUARD_ variables of the client commands (CliSettings)."""
    return frozenset(f"TRADEGUARD_{f.name.upper()}" for f in fields(CliSettings))
