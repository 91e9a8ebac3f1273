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


async def test_patch_of_a_configuration_changes_only_the_fields_in_the_body() -> None:
    async with http_sidecar() as (_sc, http):
        await http("POST", "/api/risk/configurations", CONFIG_DATA)

        status, _, patched = await http("PATCH", "/api/risk/configurations", {
            "config_id": "low_risk", "account_id": "account123", "daily_max_drawdown_percentage": 3.0})
        assert status == 200, patched
        assert patched["daily_max_drawdown_percentage"] == 3.0
        assert patched["weekly_max_drawdown_percentage"] == 5.0 and len(patched["symbol_configs"]) == 1
        assert patched["is_active"] is True

        status, _, got = await http("GET", "/v1/admin/accounts/account123/configs/low_risk")
        assert status == 200 and got["config"] == patched


async def test_patch_with_an_update_mask_query_uses_it_and_clears_named_fields_not_in_the_body() -> None:
    async with http_sidecar() as (_sc, http):
        await http("POST", "/api/risk/configurations", CONFIG_DATA)

        status, _, resp = await http(
            "PATCH", "/v1/admin/configs?update_mask=symbol_configs,monthly_max_drawdown_percentage",
            {"config_id": "low_risk", "account_id": "account123", "daily_max_drawdown_percentage": 9.0})
        assert status == 200, resp
        cfg = resp["config"]
        assert cfg["symbol_configs"] == [] and "monthly_max_drawdown_percentage" not in cfg
        assert cfg["daily_max_drawdown_percentage"] == 2.0  # in the body, not in the mask: unchanged

        status, _, bad = await http("PATCH", "/v1/admin/configs?update_mask=max_daily_los",
                                    {"config_id": "low_risk", "account_id": "account123"})
        assert status == 400 and "'max_daily_los'" in violations(bad)["update_mask.paths[0]"]


async def test_patch_of_a_breaker_through_the_seeds_path_changes_only_the_fields_in_the_body() -> None:
    async with http_sidecar() as (_sc, http):
        _, _, created = await http("POST", "/api/risk/circuit-breakers/db", BREAKER_DATA)
        path = f"/api/risk/circuit-breakers/db/{created['id']}"

        status, _, patched = await http("PATCH", path, {"parameters": {"threshold": 0.12}})
        assert status == 200, patched
        assert patched == created | {"parameters": {"threshold": 0.12}, "updated_at": patched["updated_at"]}

        status, _, disabled = await http("PATCH", f"/v1/admin/breakers/{created['id']}", {"enabled": False})
        assert status == 200 and disabled["breaker"]["enabled"] is False
        assert disabled["breaker"]["parameters"] == {"threshold": 0.12}

        status, _, empty = await http("PATCH", path, {})
        assert status == 400 and "breaker" in violations(empty)
