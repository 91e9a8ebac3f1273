"""Slack, Discord and Telegram payloads as their receivers expect them, and `tradeguard alert-test` run as a
subprocess against a real local receiver. Secrets (webhook URLs, the bot token) never reach a log or the output."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import grpc
import pytest

from tests.support.alert_receiver import AlertReceiver
from tests.support.sidecar import running_sidecar
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t

pytestmark = pytest.mark.integration

TOKEN = "123456:SECRET-bot-token"
BIN = Path(sys.executable).parent / "tradeguard"


async def test_slack_discord_and_telegram_get_their_own_formats_and_no_secret_is_logged(
        receiver: AlertReceiver, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    slack, discord = receiver.url("/slack/T000/B000/XXXXsecret"), receiver.url("/discord/1/secret-token")
    async with running_sidecar(alert_slack_webhook_url=slack, alert_discord_webhook_url=discord,
                               alert_telegram_bot_token=TOKEN, alert_telegram_chat_id="-100200",
                               alert_telegram_api_url=receiver.url(""), sidecar_id="sc-f") as sc, \
            grpc.aio.insecure_channel(sc.address) as ch:
        ids = {"trader_id": "bot-1", "account_id": "acct-1"}
        await rsg.RiskServiceStub(ch).ReportEquity(rs.ReportEquityRequest(**ids, equity=10_000))
        await adg.AdminServiceStub(ch).PauseTrading(ad.PauseTradingRequest(
            **ids, trading_state=t.TRADING_STATE_HALTED, reason="fat finger"))
        assert await receiver.wait_for(lambda got: len(got) >= 3)
    by_path = {r.path: r.body for r in receiver.received}
    assert len(receiver.received) == 3 and set(by_path) == {
        "/slack/T000/B000/XXXXsecret", "/discord/1/secret-token", f"/bot{TOKEN}/sendMessage"}
    slack_body = by_path["/slack/T000/B000/XXXXsecret"]
    assert list(slack_body) == ["text"]
    assert slack_body["text"].startswith("[TradeGuard CRITICAL] trader_paused trader bot-1 account acct-1: ")
    assert "fat finger" in slack_body["text"] and "sidecar sc-f" in slack_body["text"]
    assert by_path["/discord/1/secret-token"] == {"content": slack_body["text"]}
    telegram = by_path[f"/bot{TOKEN}/sendMessage"]
    assert telegram == {"chat_id": "-100200", "text": slack_body["text"], "disable_web_page_preview": True}
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("tradeguard"))  # (not the
    # receiver's own access log)
    assert "alerts: delivering to slack (http://127.0.0.1:" in logged
    assert TOKEN not in logged and "XXXXsecret" not in logged and "secret-token" not in logged


async def run_cli(*args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADEGUARD_")}
    proc = await asyncio.create_subprocess_exec(str(BIN), "alert-test", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_alert_test_command_sends_one_test_alert_per_notifier_and_prints_ok(receiver: AlertReceiver) -> None:
    code, out, err = await run_cli("--alert-webhook-url", receiver.url(), "--alert-slack-webhook-url",
                                   receiver.url("/slack/secret"), "--alert-telegram-bot-token", TOKEN,
                                   "--alert-telegram-chat-id", "42", "--alert-telegram-api-url", receiver.url(""))
    assert code == 0, (out, err)
    lines = out.splitlines()
    assert lines == [f"webhook (http://127.0.0.1:{receiver.port}): OK", f"slack (http://127.0.0.1:{receiver.port}): OK",
                     f"telegram (http://127.0.0.1:{receiver.port}): OK"]
    [webhook] = receiver.bodies("/hook")
    assert webhook["event"] == "test" and webhook["details"] == {"test": True}
    assert webhook["trader_id"] == "" and "alert-test" in webhook["reason"]
    assert receiver.bodies("/slack/secret")[0]["text"].startswith("[TradeGuard INFO] test: ")
    assert receiver.bodies(f"/bot{TOKEN}/sendMessage")[0]["chat_id"] == "42"


async def test_alert_test_command_names_the_failed_notifier_and_exits_1(receiver: AlertReceiver) -> None:
    receiver.status = 500
    code, out, err = await run_cli("--alert-discord-webhook-url", receiver.url("/discord/secret-path"))
    assert code == 1, (out, err)
    assert out.startswith(f"discord (http://127.0.0.1:{receiver.port}): FAILED: HTTP 500 from ")
    assert "secret-path" not in out + err


async def test_alert_test_command_without_notifiers_exits_2_naming_the_settings() -> None:
    code, out, err = await run_cli()
    assert code == 2 and out == ""
    assert "no notifier configured" in err and "alert_webhook_url" in err


async def test_the_readme_alert_test_example_works_when_pasted() -> None:
    """README "Alerts", "Try it": the shell block run as written (on a free port instead of 8099)."""
    import re
    import socket

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("\n## Alerts\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = block.group(1).replace("8099", str(port))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADEGUARD_")}
    env["PATH"] = f"{BIN.parent}{os.pathsep}{env.get('PATH', '')}"
    proc = await asyncio.create_subprocess_exec("bash", "-c", script + "\nwait\n", env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out = (await asyncio.wait_for(proc.communicate(), 60))[0].decode()
    assert proc.returncode == 0, out
    assert f"webhook (http://127.0.0.1:{port}): OK" in out
    assert '{"event": "test", "severity": "info", "trader_id": "", "account_id": "", "reason": "test alert' in out
