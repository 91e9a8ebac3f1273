"""Typed, frozen settings: the only code that reads the environment.

Every field comes from `TRADEGUARD_<NAME>` (upper case) or a CLI flag `--<name-with-dashes>`; the flag
wins. The seed's `DB_HOST`, `DB_PORT`, `DB_USER`, `DB_PASSWORD`, `DB_NAME`, `DB_SSLMODE` build a
PostgreSQL URL when `TRADEGUARD_DATABASE_URL` is not set. OpenTelemetry's standard `OTEL_*` variables that the
sidecar itself acts on are fields too, read under their own names (no `TRADEGUARD_` form, no flag).
`CliSettings`: what the client commands `tradeguard health` / `tradeguard admin` take from the environment.
Nothing else in `tradeguard_server` reads `os.environ` (tests/test_quality.py checks).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, get_type_hints

from .engine.limits import Limits
from .engine.types import TradingState


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
    # Not a setting: the names of the settings given explicitly (environment or CLI) rather than defaulted.
    # A feature flag given at start beats the stored one (README, "Feature flags"). Filled by load_settings.
    given: frozenset[str] = field(default=frozenset(), metadata={"internal": True})

    # ---- derived --------------------------------------------------------------------------------

    @property
    def otlp_traces_endpoint(self) -> str:
        """Where spans are exported: the traces endpoint, else the general one ("" = nowhere)."""
        return self.otel_exporter_otlp_traces_endpoint or self.otel_exporter_otlp_endpoint

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
            if f.name in ("admin_token", "trader_token") and value:
                value = "***"
            elif f.name in ("database_url", "otel_exporter_otlp_endpoint", "otel_exporter_otlp_traces_endpoint"):
                value = redact_url(value)
            elif f.name == "given":
                value = sorted(value)
            out[f.name] = value
        return out


def redact_url(url: str) -> str:
    """Hide every password of a database URL (each form libpq accepts): postgresql://u:***@host/db."""
    from .store.url import redact

    return redact(url)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


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


def _db_url_from_parts(env: Mapping[str, str]) -> str | None:
    if not env.get("DB_HOST"):
        return None
    from .store.url import url_from_parts

    return url_from_parts(env)


def _otel_value(kind: Any, raw: str) -> Any:
    """An OTEL_* variable as OpenTelemetry reads it: a boolean is true only for "true" (any case)."""
    return raw.strip().lower() == "true" if kind is bool else raw


def load_settings(env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None) -> Settings:
    """Build Settings from `env` (None: the process environment) and CLI overrides (None values are ignored)."""
    env = os.environ if env is None else env
    hints = get_type_hints(Settings)
    values: dict[str, Any] = {}
    for f in settings_fields():
        key = f"TRADEGUARD_{f.name.upper()}"
        if key in env:
            values[f.name] = _coerce(key, hints[f.name], env[key])
    for f in otel_fields():
        if env.get(f.metadata["env"]):  # unset and empty are the same to OpenTelemetry
            values[f.name] = _otel_value(hints[f.name], env[f.metadata["env"]])
    if "database_url" not in values:
        parts_url = _db_url_from_parts(env)
        if parts_url:
            values["database_url"] = parts_url
    for name, raw in (overrides or {}).items():
        if raw is not None:
            values[name] = _coerce(f"--{name.replace('_', '-')}", hints[name], raw)
    settings = Settings(**values, given=frozenset(values))
    validate(settings)
    return settings


def validate(s: Settings) -> None:
    from .engine.unloaded import POLICIES

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
