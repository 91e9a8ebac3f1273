"""Structured logging: text by default, one JSON object per line with --log-json.

No value can break a line or forge one: the text format escapes control characters in the message (a newline
in a client's PauseTrading reason stays `\\n`) and indents a traceback's lines; JSON escapes them by its own
rules (ASCII only, so U+2028 too). JSON lines carry `ts`, `level`, `logger`, `msg`, every `extra=` field (a breach has
`trader_id`, `rule`, `value`, `limit`) and, inside a traced RPC, `trace_id` and `span_id`. Text lines end with
`trace_id=<hex>` when traced. `redact_secrets` scrubs known secret values (admin token, trader token,
database password) from every line, as a second line of defence behind `Settings.redacted()`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

if TYPE_CHECKING:
    from ..settings import Settings

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
REDACTED = "***"


# Characters a log line must not carry raw: C0 and C1 controls, DEL, and the Unicode line and paragraph
# separators that some viewers break lines at. Each becomes a Python-style escape (\\n, \\x00, \\u2028).
_ESCAPES = {c: repr(chr(c))[1:-1] for c in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)}
_ESCAPES_BUT_NEWLINE = {c: e for c, e in _ESCAPES.items() if c != 0x0A}


def escape_controls(text: str, keep_newlines: bool = False) -> str:
    """`text` with every control character escaped (`keep_newlines`: except \\n, for tracebacks)."""
    return text.translate(_ESCAPES_BUT_NEWLINE if keep_newlines else _ESCAPES)


class TraceContextFilter(logging.Filter):
    """Adds `trace_id` / `span_id` (hex) to records emitted inside a span."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid and not hasattr(record, "trace_id"):
            record.trace_id = format(ctx.trace_id, "032x")
            record.span_id = format(ctx.span_id, "016x")
        return True


class SecretFilter(logging.Filter):
    """Replaces every occurrence of the given secrets in the rendered message (and traceback) with ***."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # longest first, so a secret that contains another is scrubbed whole
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        scrubbed = self.scrub(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            cleaned = self.scrub(text)
            if cleaned != text:
                record.exc_info, record.exc_text = None, cleaned
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD and isinstance(value, str):
                record.__dict__[key] = self.scrub(value)
        return True


def utc_timestamp(record: logging.LogRecord) -> str:
    """The record's time as ISO-8601 UTC with milliseconds: 2026-12-01T05:46:42.106Z (text and JSON lines alike)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": utc_timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """One line per record: control characters in the message (a newline in a client's reason, an escape
    sequence) are escaped, so no value can forge a line or rewrite the terminal. A traceback follows on lines
    indented by four spaces, so no line of it can pass for a record either."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return utc_timestamp(record)

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.message
        record.message = escape_controls(message)
        try:
            return super().formatMessage(record)
        finally:
            record.message = message

    def format(self, record: logging.LogRecord) -> str:
        line, _sep, rest = super().format(record).partition("\n")
        trace_id = getattr(record, "trace_id", None)
        if trace_id:
            line = f"{line} trace_id={escape_controls(str(trace_id))}"
        if rest:
            line += "".join(f"\n    {part}" for part in escape_controls(rest, keep_newlines=True).split("\n"))
        return line


def setup_logging(level: str = "INFO", as_json: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else TextFormatter())
    handler.addFilter(TraceContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def redact_secrets(secrets: Iterable[str]) -> None:
    """Scrub these values from every line the root logger's handlers write (idempotent per value)."""
    wanted = [s for s in secrets if s]
    if not wanted:
        return
    for handler in logging.getLogger().handlers:
        existing = next((f for f in handler.filters if isinstance(f, SecretFilter)), None)
        if existing is not None:
            handler.removeFilter(existing)
            wanted = [*existing.secrets, *wanted]
        # the secret filter runs first, so nothing downstream sees the raw value
        handler.filters.insert(0, SecretFilter(wanted))


def settings_secrets(settings: Settings) -> list[str]:
    """The secret values in these settings: tokens and the database password."""
    from urllib.parse import quote

    from ..store.url import url_secrets

    values = [settings.admin_token, settings.trader_token]
    with contextlib.suppress(OSError):
        values.append(settings.admin_token_value())
    for password in url_secrets(settings.database_url):  # every form libpq accepts (?password=, unencoded @)
        values += [password, quote(password, safe="")]
    from ..alerts.notifiers import url_secrets as alert_url_secrets
    from ..settings import ALERT_SECRETS  # alerts: webhook URLs and the Telegram bot token

    values += [getattr(settings, name) for name in ALERT_SECRETS]
    for name in ALERT_SECRETS[:3]:  # also as aiohttp prints them (no user:password), their path, password, query
        if getattr(settings, name):
            values += alert_url_secrets(getattr(settings, name))
    return [v for v in values if v]
