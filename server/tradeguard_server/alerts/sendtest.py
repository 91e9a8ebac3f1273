"""`tradeguard alert-test`: one test alert through every configured notifier, at once, without the outbox."""

from __future__ import annotations

import socket
import time

import aiohttp

from ..settings import Settings
from .alert import TEST, Alert
from .notifiers import DeliveryError, configured_notifiers


def test_alert(s: Settings) -> Alert:
    at = time.time()
    return Alert(TEST, f"{TEST}:{s.sidecar_name}:{at:.6f}",
                 f"test alert from tradeguard alert-test on {socket.gethostname()}: if you read this, alerts reach "
                 "you here", at, s.sidecar_name, severity="info", details={"test": True})


async def send_test_alert(s: Settings) -> list[tuple[str, str, str]]:
    """(notifier, where, error) for each configured notifier; error "" = delivered."""
    alert = test_alert(s)
    results: list[tuple[str, str, str]] = []
    async with aiohttp.ClientSession() as session:
        for n in configured_notifiers(s):
            try:
                await n.send(session, alert.payload(), s.alert_timeout_s)
            except DeliveryError as exc:
                results.append((n.name, n.where, str(exc)))
            else:
                results.append((n.name, n.where, ""))
    return results
