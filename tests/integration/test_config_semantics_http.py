"""Issue 19, configuration semantics, over the HTTP/JSON API as the seeds' users call it (curl-equivalent requests):
bodies without `is_active` / `enabled`, GetBreaker by name, LogBreakerEvent, PATCH with and without update_mask."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.test_http_api import BREAKER_DATA, CONFIG_DATA, http_sidecar, violations

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


async def test_breaker_read_by_account_and_name_over_http() -> None:
    async with http_sidecar() as (_sc, http):
        _, _, created = await http("POST", "/api/risk/circuit-breakers/db", BREAKER_DATA)

        status, _, got = await http("GET", "/v1/admin/accounts/account123/breakers/max_drawdown_10_percent")
        assert status == 200 and got["breaker"] == created
        status, _, missing = await http("GET", "/v1/admin/accounts/account123/breakers/nope")
        assert status == 404 and missing["code"] == 5
        status, _, both = await http("GET", f"/v1/admin/breakers/{created['id']}?name=x&account_id=account123")
        assert status == 400 and "breaker_id" in violations(both)


async def test_event_logged_by_another_system_through_the_seeds_events_path_is_listed_there() -> None:
    async with http_sidecar() as (_sc, http):
        _, _, created = await http("POST", "/api/risk/circuit-breakers/db", BREAKER_DATA)
        events_path = f"/api/risk/circuit-breakers/db/{created['id']}/events"
        event_data = {"triggered_values": {"drawdown": 0.12}, "action_taken": "close_position",
                      "action_result": {"success": True}}

        status, _, logged = await http("POST", events_path, event_data)
        assert status == 200, logged
        assert {k: logged[k] for k in event_data} == event_data
        assert logged["breaker_id"] == created["id"] and logged["account_id"] == "account123"
        status, _, listed = await http("GET", events_path)
        assert status == 200 and listed == [logged]
        status, _, _ = await http("POST", "/api/risk/circuit-breakers/db/no-such/events", event_data)
        assert status == 404
