"""The pure parts of delivery: backoff, the memory outbox's duplicate rule, notifier bodies, settings checks."""

from __future__ import annotations

import pytest

from tradeguard_server.alerts.alert import Alert, summary
from tradeguard_server.alerts.delivery import Retry
from tradeguard_server.alerts.notifiers import configured_notifiers
from tradeguard_server.alerts.outbox import Delivery, MemoryOutbox
from tradeguard_server.settings import SettingsError, load_settings


def test_retry_delay_doubles_is_capped_and_jittered_into_half_to_full() -> None:
    retry = Retry(initial_s=1.0, max_s=8.0)
    for attempts, base in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (500, 8.0)):
        delays = [retry.delay(attempts) for _ in range(200)]
        assert all(base * 0.5 <= d <= base for d in delays)
        assert max(delays) - min(delays) > 0  # jitter: not every sidecar retries in step


def delivery(key: str, event: str, trader: str = "bot-1", notifier: str = "webhook") -> Delivery:
    return Delivery(key, notifier, event, "sc-1", {}, 0.0, 0.0, trader_id=trader)


async def test_memory_outbox_collapses_a_key_and_a_trader_pause_episode_told_twice() -> None:
    outbox = MemoryOutbox()
    first = [delivery("k1", "trader_paused"), delivery("k1", "trader_paused", notifier="slack")]
    assert await outbox.add(first) == [True, True]
    assert await outbox.add([delivery("k1", "trader_paused")]) == [False]  # the same key
    assert await outbox.add([delivery("k1-moved", "trader_paused")]) == [False]  # same open episode, moved start
    assert await outbox.add([delivery("r1", "trader_resumed"), delivery("k2", "trader_paused")]) == [True, True]
    assert await outbox.add([delivery("x", "trader_paused", trader="bot-2")]) == [True]


def test_webhook_payload_names_event_trader_account_reason_and_chat_formats_one_line() -> None:
    alert = Alert("trader_paused", "trader_paused:bot-1:1.000000", "KILL_SWITCH: HALTED by operator: x", 1.0,
                  "sc-1", "bot-1", "acct-1", details={"source": "manual"})
    payload = alert.payload()
    assert payload == {"event": "trader_paused", "severity": "critical", "trader_id": "bot-1", "account_id": "acct-1",
                       "reason": "KILL_SWITCH: HALTED by operator: x", "at": "1970-01-01T00:00:01.000Z",
                       "sidecar": "sc-1", "key": "trader_paused:bot-1:1.000000", "details": {"source": "manual"}}
    settings = load_settings({}, {"alert_webhook_url": "http://h/hook", "alert_slack_webhook_url": "https://s/x",
                                  "alert_discord_webhook_url": "https://d/y", "alert_telegram_bot_token": "1:T",
                                  "alert_telegram_chat_id": "9", "alert_telegram_api_url": "http://tg:81/"})
    bodies = {n.name: n.body(payload) for n in configured_notifiers(settings)}
    line = summary(payload)
    assert line == ("[TradeGuard CRITICAL] trader_paused trader bot-1 account acct-1: KILL_SWITCH: HALTED by operator: "
                    "x (sidecar sc-1, 1970-01-01T00:00:01.000Z)")
    assert bodies == {"webhook": payload, "slack": {"text": line}, "discord": {"content": line},
                      "telegram": {"chat_id": "9", "text": line, "disable_web_page_preview": True}}
    telegram = configured_notifiers(settings)[-1]
    assert telegram.url == "http://tg:81/bot1:T/sendMessage" and telegram.where == "http://tg:81"
    assert "1:T" not in repr(telegram) and telegram.scrub("see http://tg:81/bot1:T/sendMessage") == "see ***"


@pytest.mark.parametrize(("overrides", "field"), [
    ({"alert_webhook_url": "hooks.example/x"}, "alert_webhook_url"),
    ({"alert_slack_webhook_url": "ftp://x/y"}, "alert_slack_webhook_url"),
    ({"alert_telegram_bot_token": "1:T"}, "alert_telegram_chat_id"),
    ({"alert_retry_initial_s": 0}, "alert_retry_initial_s"),
    ({"alert_retry_initial_s": 10, "alert_retry_max_s": 5}, "alert_retry_max_s"),
    ({"alert_dead_after_failures": 0}, "alert_dead_after_failures"),
    ({"alert_max_pending": 0}, "alert_max_pending"),
])
def test_bad_alert_settings_are_refused_naming_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(SettingsError, match=field):
        load_settings({}, overrides)


def test_alert_secrets_are_hidden_in_the_settings_log_line() -> None:
    settings = load_settings({"TRADEGUARD_ALERT_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/secret"},
                             {"alert_telegram_bot_token": "1:T", "alert_telegram_chat_id": "9"})
    shown = settings.redacted()
    assert shown["alert_slack_webhook_url"] == "***" and shown["alert_telegram_bot_token"] == "***"
    assert shown["alert_telegram_chat_id"] == "9"


def test_payload_numbers_that_json_cannot_carry_become_text() -> None:
    alert = Alert("breaker_fired", "k", "r", 0.0, "sc", details={"triggered_values": {"x": float("inf"),
                                                                                       "y": float("nan"), "z": 1.5}})
    assert alert.payload()["details"] == {"triggered_values": {"x": "inf", "y": "nan", "z": 1.5}}
