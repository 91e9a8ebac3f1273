"""Feature flags set at run time survive a restart unless set explicitly at start (README "Settings"): the settings
file's `feature_flags` and the seed's ENABLE_* variables are explicit, like a flag; a file without them leaves the
stored (SetFeatureFlags) values in force."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import grpc
import pytest

from tests.integration.test_restart_policy_and_flags import get_flags, set_enforcement, stored_flags
from tests.integration.test_restart_unloaded import sidecar_on
from tradeguard_server.settings import load_settings
from tradeguard_server.sidecar import Sidecar

pytestmark = pytest.mark.integration


def config(tmp_path: Path, name: str, content: dict[str, object]) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(content))
    return str(path)


async def test_run_time_flags_survive_a_restart_unless_the_file_or_a_seed_variable_sets_them(
        pg_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    plain = config(tmp_path, "plain.json", {"max_daily_loss": 3, "stop_trading_minutes": 10})
    explicit = config(tmp_path, "flags.json", {"feature_flags": {"enable_risk_enforcement": True}})
    async with sidecar_on(pg_url) as (_sidecar, ch):
        await set_enforcement(ch, False)  # shadow mode, set at run time and stored

    with caplog.at_level(logging.INFO, logger="tradeguard.persistence"):
        async with sidecar_on(pg_url, config=plain) as (sidecar, ch):
            kept = await get_flags(ch)
            limits = sidecar.settings.default_limits()
    assert "feature flag enable_risk_enforcement=False from the store" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tradeguard.persistence"):
        async with sidecar_on(pg_url, config=explicit) as (_sidecar, ch):
            from_file = await get_flags(ch)
    seeded = Sidecar(load_settings({"ENABLE_RISK_ENFORCEMENT": "true"}, {
        "database_url": pg_url, "listen": "127.0.0.1:0", "uvloop": False, "metrics_listen": "",
        "dev_open_admin": True}))
    await seeded.start()
    try:
        async with grpc.aio.insecure_channel(seeded.address) as ch:
            from_seed_env = await get_flags(ch)
    finally:
        await seeded.stop()

    assert kept == (False, True)  # the file does not name the flag: the run-time value stays
    assert limits.daily_max_drawdown_percentage == 3.0 and limits.stop_trading_minutes == 10
    assert from_file == (True, True)
    assert "enable_risk_enforcement=True given at start overrides the stored value False" in caplog.text
    assert from_seed_env == (True, True)
    assert stored_flags(pg_url) == [(False, True)]  # start-time values are not calls: the stored value is intact
