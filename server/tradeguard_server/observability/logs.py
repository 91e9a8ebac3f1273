"""Structured logging: text by default, one JSON object per line with --log-json.

JSON lines carry `ts`, `level`, `logger`, `msg`, every `extra=` field (a breach has `trader_id`, `rule`,
`value`, `limit`) and, inside a traced RPC, `trace_id` and `span_id`. Text lines end with
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


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
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
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        trace_id = getattr(record, "trace_id", None)
        return f"{line} trace_id={trace_id}" if trace_id else line


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
    return [v for v in values if v]
