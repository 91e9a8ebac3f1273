"""Issue 19, configuration semantics, over the HTTP/JSON API as the seeds' users call it (curl-equivalent requests):
bodies without `is_active` / `enabled`, GetBreaker by name, LogBreakerEvent, PATCH with and without update_mask."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.test_http_api import BREAKER_DATA, CONFIG_DATA, http_sidecar

pytestmark = pytest.mark.integration


def without(data: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != key}


async def test_seed_bodies_without_is_active_or_enabled_create_an_active_config_and_an_enabled_breaker() -> None:
    async with http_sidecar() as (_sc, http):
        status, _, saved = await http("POST", "/api/risk/configurations", without(CONFIG_DATA, "is_active"))
        assert status == 200, saved
        assert saved["is_active"] is True

        status, _, created = await http("POST", "/api/risk/circuit-breakers/db", without(BREAKER_DATA, "enabled"))
        assert status == 200, created
        assert created["enabled"] is True


async def test_seed_bodies_with_explicit_false_create_an_inactive_config_and_a_disabled_breaker() -> None:
    async with http_sidecar() as (_sc, http):
        status, _, saved = await http("POST", "/api/risk/configurations", CONFIG_DATA | {"is_active": False})
        assert status == 200 and saved["is_active"] is False

        status, _, created = await http("POST", "/api/risk/circuit-breakers/db", BREAKER_DATA | {"enabled": False})
        assert status == 200 and created["enabled"] is False
