"""Where alerts go: one HTTP POST per alert and notifier, each in its receiver's format.

- `webhook`: the generic JSON webhook (`alert_webhook_url`): the alert's payload as it is (Alert.payload: event,
  severity, trader_id, account_id, reason, at, sidecar, key, details).
- `slack`: a Slack incoming webhook (`alert_slack_webhook_url`): `{"text": "<one line>"}`.
- `discord`: a Discord webhook (`alert_discord_webhook_url`): `{"content": "<one line>"}` (Discord's limit of 2000
  characters is kept).
- `telegram`: the Bot API (`alert_telegram_bot_token`, `alert_telegram_chat_id`): POST
  `<alert_telegram_api_url>/bot<token>/sendMessage` with `{"chat_id", "text", "disable_web_page_preview"}`.

Any 2xx answer is delivered; anything else (refused, timed out, 4xx, 5xx) is a failure, retried. The URLs hold
secrets: they never appear in a log line or an error text (`Notifier.where` is scheme and host only, and
`describe_error` scrubs them).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from ..settings import Settings
from .alert import summary

DISCORD_MAX = 2000
TELEGRAM_MAX = 4096
ERROR_BODY_MAX = 1024  # bytes of a failed answer's body read (for the error text)


def url_secrets(url: str) -> tuple[str, ...]:
    """What of a webhook URL an error text or log line must never show: the URL as given and as aiohttp / yarl
    print it (without its user:password), the password, the path (Slack's and Discord's secret) and the query."""
    parts = urlsplit(url)
    out = [url, parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()]
    if parts.password:
        out.append(parts.password)
    if parts.username:
        out.append(parts.username)
    if len(parts.path) > 1:
        out.append(parts.path)
    if parts.query:
        out.append(parts.query)
    return tuple(sorted(set(out), key=len, reverse=True))  # longest first: a secret inside another is scrubbed whole


class DeliveryError(Exception):
    """One delivery failed; the text names no secret."""


@dataclass(frozen=True, slots=True)
class Notifier:
    """One configured receiver: its `name` (the metrics' notifier label), the URL to POST to (a secret) and how
    an alert's payload becomes the request body."""

    name: str
    url: str = field(repr=False)
    secrets: tuple[str, ...] = field(repr=False)
    chat_id: str = ""

    @property
    def where(self) -> str:
        """Scheme and host only: what logs and `tradeguard alert-test` show."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "")

    def body(self, payload: dict[str, Any]) -> dict[str, Any]:
        if self.name == "slack":
            return {"text": summary(payload)}
        if self.name == "discord":
            return {"content": summary(payload)[:DISCORD_MAX]}
        if self.name == "telegram":
            return {"chat_id": self.chat_id, "text": summary(payload)[:TELEGRAM_MAX],
                    "disable_web_page_preview": True}
        return payload

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, "***")
        return text

    async def send(self, session: aiohttp.ClientSession, payload: dict[str, Any], timeout_s: float) -> None:
        """POST the alert; raises DeliveryError (no secret in its text) unless the receiver answered 2xx."""
        try:
            # No redirect is followed: a 302 would turn the POST into a GET that a 2xx marks delivered (the alert
            # lost), a 307 would send the alert to wherever the receiver says. A 3xx is a failure, retried.
            async with session.post(self.url, json=self.body(payload), allow_redirects=False,
                                    timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                if 200 <= resp.status < 300:
                    return
                # the first bytes of the answer only: a receiver answering 500 with a body of gigabytes must not
                # fill the sidecar's memory
                text = (await resp.content.read(ERROR_BODY_MAX)).decode(errors="replace")[:200]
                raise DeliveryError(self.scrub(f"HTTP {resp.status} from {self.where}: {text.strip()}"))
        except DeliveryError:
            raise
        except TimeoutError:
            raise DeliveryError(f"no answer from {self.where} within {timeout_s:g} s") from None
        except (aiohttp.ClientError, OSError, asyncio.CancelledError, ValueError) as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise DeliveryError(self.scrub(f"{type(exc).__name__}: {exc}") + f" ({self.where})") from None


def configured_notifiers(s: Settings) -> list[Notifier]:
    """The notifiers the settings configure (none when every alert_* URL is empty)."""
    out: list[Notifier] = []
    if s.alert_webhook_url:
        out.append(Notifier("webhook", s.alert_webhook_url, url_secrets(s.alert_webhook_url)))
    if s.alert_slack_webhook_url:
        out.append(Notifier("slack", s.alert_slack_webhook_url, url_secrets(s.alert_slack_webhook_url)))
    if s.alert_discord_webhook_url:
        out.append(Notifier("discord", s.alert_discord_webhook_url, url_secrets(s.alert_discord_webhook_url)))
    if s.alert_telegram_bot_token:
        base = s.alert_telegram_api_url.rstrip("/")
        url = f"{base}/bot{s.alert_telegram_bot_token}/sendMessage"
        out.append(Notifier("telegram", url, (*url_secrets(url), s.alert_telegram_bot_token),
                            chat_id=s.alert_telegram_chat_id))
    return out
