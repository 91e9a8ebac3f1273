"""ConfigService over the in-memory store twin, without a server: activation, write-through, load."""

from __future__ import annotations

import pytest

from tests.support.clock import T0
from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.engine.engine import RiskEngine
from tradeguard_server.services.configs import ConfigService
from tradeguard_server.store.errors import NotFound, StoreUnavailable
from tradeguard_server.store.memory import MemoryStore
from tradeguard_server.store.records import ConfigRecord


@pytest.fixture
def engine(clock: ManualClock) -> RiskEngine:
    return RiskEngine(clock)


@pytest.fixture
def store(clock: ManualClock) -> MemoryStore:
    return MemoryStore(clock=clock.now)


def config(config_id: str = "c1", active: bool = True, **values: object) -> ConfigRecord:
    return ConfigRecord(account_id="a1", config_id=config_id, is_active=active, **values)  # type: ignore[arg-type]


async def test_saving_an_active_configuration_enforces_it_and_deactivates_the_others(engine: RiskEngine) -> None:
    service = ConfigService(engine, MemoryStore(), durable=False)

    await service.save(config("c1", daily_max_drawdown_percentage=3.0), "op")
    saved, created = await service.save(config("c2", daily_max_drawdown_percentage=4.0), "op")

    assert created and saved.record.created_at == T0 and saved.record.updated_at == T0
    assert [(c.record.config_id, c.record.is_active) for c in service.in_account("a1")] == [
        ("c1", False), ("c2", True)]
    assert engine.limits_for("a1").config_id == "c2" and engine.limits_for("a1").daily_max_drawdown_percentage == 4.0


async def test_deleting_the_active_configuration_brings_back_the_defaults(engine: RiskEngine) -> None:
    service = ConfigService(engine, MemoryStore(), durable=False)
    await service.save(config("c1"), "op")

    await service.delete("a1", "c1", "op")

    assert service.in_account("a1") == [] and engine.limits_for("a1") is engine.defaults
    with pytest.raises(NotFound):
        service.get("a1", "c1")


async def test_a_write_the_store_refuses_changes_nothing(engine: RiskEngine, store: MemoryStore) -> None:
    service = ConfigService(engine, store, durable=True)
    store.available = False

    with pytest.raises(StoreUnavailable):
        await service.save(config("c1"), "op")

    assert service.in_account("a1") == [] and engine.limits_for("a1") is engine.defaults


async def test_an_empty_regime_map_given_is_kept_only_in_memory(engine: RiskEngine, store: MemoryStore) -> None:
    memory = ConfigService(engine, MemoryStore(), durable=False)
    durable = ConfigService(engine, store, durable=True)

    kept, _ = await memory.save(config("c1"), "op", regimes_given=True)
    stored, _ = await durable.save(config("c1"), "op", regimes_given=True)

    assert kept.regimes_given and not stored.regimes_given
    assert store.configs[("a1", "c1")].created_at == T0


def test_load_installs_the_active_limits_and_keeps_a_configuration_already_held(engine: RiskEngine) -> None:
    service = ConfigService(engine, MemoryStore(), durable=False)
    service.load([config("c1", max_drawdown_percentage=9.0)])

    service.load([config("c1", max_drawdown_percentage=1.0), config("c2", active=False)])

    assert service.get("a1", "c1").record.max_drawdown_percentage == 9.0
    assert [c.record.config_id for c in service.in_account("a1")] == ["c1", "c2"]
    assert engine.limits_for("a1").max_drawdown_percentage == 9.0
