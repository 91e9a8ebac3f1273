"""BreakerAdmin handlers over BreakerService and the in-memory store twin, without a server: validation,
write-through, ALREADY_EXISTS / NOT_FOUND / UNAVAILABLE, events."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.struct_pb2 import Struct

from tests.support.clock import T0
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import types_pb2 as t
from tradeguard_server.api.breaker_admin import BreakerAdmin
from tradeguard_server.api.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable
from tradeguard_server.engine.breakers import Evaluator
from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.engine.events import Firing, StateChanged
from tradeguard_server.engine.state import TraderState
from tradeguard_server.services.breakers import BreakerService, event_record
from tradeguard_server.store.memory import MemoryStore
from tradeguard_server.store.records import BreakerRecord

CTX: Any = None  # handlers only read the peer from the context, for logs


def params(**values: Any) -> Struct:
    s = Struct()
    s.update(values)
    return s


def seed_breaker(**changes: Any) -> t.CircuitBreaker:
    fields: dict[str, Any] = {
        "name": "max_drawdown_10_percent", "account_id": "account123", "condition": "max_drawdown",
        "action": "close_position", "parameters": params(threshold=0.1), "symbols": ["BTCUSDT", "ETHUSDT"],
        "exchanges": ["binance"],
    }
    fields.update(changes)
    return t.CircuitBreaker(**fields)


@pytest.fixture
def store(clock: ManualClock) -> MemoryStore:
    return MemoryStore(clock=clock.now)


@pytest.fixture
def evaluator() -> Evaluator:
    return Evaluator()


@pytest.fixture
def service(evaluator: Evaluator, store: MemoryStore, clock: ManualClock) -> BreakerService:
    return BreakerService(evaluator, store, clock=clock)


@pytest.fixture
def admin(service: BreakerService) -> BreakerAdmin:
    return BreakerAdmin(service)


async def create(admin: BreakerAdmin, **changes: Any) -> t.CircuitBreaker:
    resp = await admin.create_breaker(ad.CreateBreakerRequest(breaker=seed_breaker(**changes)), CTX)
    return resp.breaker


def fields_of(exc: InvalidArgument) -> list[str]:
    return [f for f, _ in exc.violations]


def enabled_ids(evaluator: Evaluator, account_id: str = "account123") -> list[str]:
    return [b.id for b in evaluator.enabled(account_id)]


# ---- create ---------------------------------------------------------------------------------------


async def test_create_the_seed_example_stores_enables_and_installs_it(
    admin: BreakerAdmin, store: MemoryStore, evaluator: Evaluator
) -> None:
    created = await create(admin)

    assert created.id and created.enabled
    assert created.created_at.seconds == int(T0) and created.updated_at.seconds == int(T0)
    assert dict(created.parameters) == {"threshold": 0.1}
    assert list(created.symbols) == ["BTCUSDT", "ETHUSDT"] and list(created.exchanges) == ["binance"]
    assert store.breakers[created.id].parameters == {"threshold": 0.1}
    assert store.breakers[created.id].symbols == ["BTCUSDT", "ETHUSDT"]
    assert enabled_ids(evaluator) == [created.id]


async def test_create_keeps_integer_parameters_integral(admin: BreakerAdmin, store: MemoryStore) -> None:
    created = await create(admin, condition="consecutive_losses", parameters=params(count=3))

    assert store.breakers[created.id].parameters == {"count": 3}


async def test_create_without_scope_stores_none_meaning_all(admin: BreakerAdmin, store: MemoryStore) -> None:
    created = await create(admin, symbols=[], exchanges=[])

    assert store.breakers[created.id].symbols is None and store.breakers[created.id].exchanges is None


async def test_create_with_unknown_condition_names_the_field(admin: BreakerAdmin, store: MemoryStore) -> None:
    with pytest.raises(InvalidArgument) as err:
        await create(admin, condition="foo")

    assert err.value.violations[0][0] == "breaker.condition"
    assert "unknown condition 'foo'; known: consecutive_losses, daily_loss" in err.value.violations[0][1]
    assert store.breakers == {}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": ""}, "breaker.name"),
        ({"name": "x" * 65}, "breaker.name"),
        ({"name": " padded"}, "breaker.name"),
        ({"description": "d" * 1025}, "breaker.description"),
        ({"account_id": ""}, "breaker.account_id"),
        ({"account_id": "bad id!"}, "breaker.account_id"),
        ({"action": "explode"}, "breaker.action"),
        ({"action": ""}, "breaker.action"),
        ({"parameters": params(threshold=2)}, "breaker.parameters.threshold"),
        ({"parameters": params()}, "breaker.parameters.threshold"),
        ({"parameters": params(threshold="10%")}, "breaker.parameters.threshold"),
        ({"parameters": params(threshold=0.1, extra=1)}, "breaker.parameters.extra"),
        ({"symbols": ["BTC USDT"]}, "breaker.symbols[0]"),
        ({"symbols": ["BTCUSDT", "BTCUSDT"]}, "breaker.symbols[1]"),
        ({"symbols": [f"S{i}" for i in range(101)]}, "breaker.symbols"),
        ({"exchanges": [""]}, "breaker.exchanges[0]"),
    ],
)
async def test_create_rejects_bad_fields_with_a_field_violation(
    admin: BreakerAdmin, store: MemoryStore, changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidArgument) as err:
        await create(admin, **changes)

    assert fields_of(err.value) == [field]
    assert store.breakers == {}


async def test_create_without_a_breaker_is_invalid(admin: BreakerAdmin) -> None:
    with pytest.raises(InvalidArgument) as err:
        await admin.create_breaker(ad.CreateBreakerRequest(), CTX)

    assert fields_of(err.value) == ["breaker"]


async def test_create_with_a_name_taken_in_the_account_is_already_exists(admin: BreakerAdmin) -> None:
    await create(admin)

    with pytest.raises(AlreadyExists):
        await create(admin)
    other_account = await create(admin, account_id="account456")

    assert other_account.name == "max_drawdown_10_percent"


async def test_store_conflict_maps_to_already_exists(admin: BreakerAdmin, store: MemoryStore) -> None:
    await store.save_breaker(BreakerRecord("", "max_drawdown_10_percent", "", "account123", "max_drawdown", "alert"))

    with pytest.raises(AlreadyExists):
        await create(admin)


async def test_create_while_the_store_is_down_is_unavailable_and_installs_nothing(
    admin: BreakerAdmin, service: BreakerService, store: MemoryStore, evaluator: Evaluator
) -> None:
    store.available = False

    with pytest.raises(Unavailable):
        await create(admin)

    assert service.records == {} and evaluator.enabled("account123") == ()


# ---- read -----------------------------------------------------------------------------------------


async def test_get_and_list_answer_from_memory_even_while_the_store_is_down(
    admin: BreakerAdmin, store: MemoryStore
) -> None:
    b = await create(admin, name="b")
    await create(admin, name="a")
    await create(admin, name="c", account_id="other")
    store.available = False

    got = await admin.get_breaker(ad.GetBreakerRequest(breaker_id=b.id), CTX)
    listed = await admin.list_breakers(ad.ListBreakersRequest(account_id="account123"), CTX)

    assert got.breaker == b
    assert [x.name for x in listed.breakers] == ["a", "b"]


async def test_get_unknown_id_is_not_found_and_a_bad_id_is_invalid(admin: BreakerAdmin) -> None:
    with pytest.raises(NotFound):
        await admin.get_breaker(ad.GetBreakerRequest(breaker_id="nope"), CTX)
    with pytest.raises(InvalidArgument):
        await admin.get_breaker(ad.GetBreakerRequest(breaker_id=""), CTX)
    with pytest.raises(InvalidArgument):
        await admin.list_breakers(ad.ListBreakersRequest(account_id=""), CTX)


# ---- update / enable / disable / delete ---------------------------------------------------------


async def test_update_replaces_the_definition_and_keeps_id_account_enabled_and_created_at(
    admin: BreakerAdmin, evaluator: Evaluator, clock: ManualClock
) -> None:
    created = await create(admin)
    clock.advance(60)
    new = seed_breaker(name="dd15", action="pause_trading", parameters=params(threshold=0.15, duration_minutes=5),
                       account_id="", symbols=[], exchanges=[])

    resp = await admin.update_breaker(ad.UpdateBreakerRequest(breaker_id=created.id, breaker=new), CTX)

    b = resp.breaker
    assert (b.id, b.account_id, b.name, b.action, b.enabled) == (created.id, "account123", "dd15", "pause_trading",
                                                                 True)
    assert list(b.symbols) == [] and b.created_at.seconds == int(T0) and b.updated_at.seconds == int(T0) + 60
    compiled = evaluator.get(created.id)
    assert compiled is not None and compiled.params == {"threshold": 0.15} and compiled.duration_s == 300.0
    assert compiled.scope.everything


async def test_update_cannot_move_a_breaker_to_another_account_or_id(admin: BreakerAdmin) -> None:
    created = await create(admin)

    with pytest.raises(InvalidArgument) as err:
        await admin.update_breaker(
            ad.UpdateBreakerRequest(breaker_id=created.id, breaker=seed_breaker(account_id="other", id="zzz")), CTX)

    assert sorted(fields_of(err.value)) == ["breaker.account_id", "breaker.id"]


async def test_update_to_a_name_used_by_another_breaker_is_already_exists(admin: BreakerAdmin) -> None:
    await create(admin, name="one")
    two = await create(admin, name="two")

    with pytest.raises(AlreadyExists):
        await admin.update_breaker(ad.UpdateBreakerRequest(breaker_id=two.id, breaker=seed_breaker(name="one")), CTX)
    same = await admin.update_breaker(
        ad.UpdateBreakerRequest(breaker_id=two.id, breaker=seed_breaker(name="two", description="d")), CTX)

    assert same.breaker.description == "d"


async def test_update_of_an_unknown_breaker_is_not_found(admin: BreakerAdmin) -> None:
    with pytest.raises(NotFound):
        await admin.update_breaker(ad.UpdateBreakerRequest(breaker_id="nope", breaker=seed_breaker()), CTX)


async def test_update_while_the_store_is_down_keeps_the_old_definition_in_force(
    admin: BreakerAdmin, service: BreakerService, store: MemoryStore, evaluator: Evaluator
) -> None:
    created = await create(admin)
    store.available = False

    with pytest.raises(Unavailable):
        await admin.update_breaker(ad.UpdateBreakerRequest(
            breaker_id=created.id, breaker=seed_breaker(parameters=params(threshold=0.5))), CTX)

    compiled = evaluator.get(created.id)
    assert compiled is not None and compiled.params == {"threshold": 0.1}
    assert service.records[created.id].parameters == {"threshold": 0.1}


async def test_disable_and_enable_write_through_and_change_what_is_evaluated(
    admin: BreakerAdmin, store: MemoryStore, evaluator: Evaluator
) -> None:
    created = await create(admin)

    disabled = await admin.disable_breaker(ad.DisableBreakerRequest(breaker_id=created.id), CTX)
    stored_disabled = store.breakers[created.id].enabled
    off = enabled_ids(evaluator)
    enabled = await admin.enable_breaker(ad.EnableBreakerRequest(breaker_id=created.id), CTX)

    assert not disabled.breaker.enabled and not stored_disabled and off == []
    assert enabled.breaker.enabled and enabled_ids(evaluator) == [created.id]
    assert store.breakers[created.id].enabled


async def test_disable_while_the_store_is_down_leaves_the_breaker_enabled(
    admin: BreakerAdmin, service: BreakerService, store: MemoryStore, evaluator: Evaluator
) -> None:
    created = await create(admin)
    store.available = False

    with pytest.raises(Unavailable):
        await admin.disable_breaker(ad.DisableBreakerRequest(breaker_id=created.id), CTX)

    assert enabled_ids(evaluator) == [created.id] and service.records[created.id].enabled


async def test_enable_of_an_enabled_breaker_rearms_without_a_write(
    admin: BreakerAdmin, store: MemoryStore, evaluator: Evaluator, clock: ManualClock
) -> None:
    created = await create(admin)
    compiled = evaluator.get(created.id)
    assert compiled is not None
    compiled.tripped.add("t1")
    clock.advance(60)

    resp = await admin.enable_breaker(ad.EnableBreakerRequest(breaker_id=created.id), CTX)

    assert compiled.tripped == set()
    assert resp.breaker.updated_at.seconds == int(T0) and store.breakers[created.id].updated_at == T0


async def test_delete_removes_from_store_memory_and_evaluator(
    admin: BreakerAdmin, service: BreakerService, store: MemoryStore, evaluator: Evaluator
) -> None:
    created = await create(admin)

    await admin.delete_breaker(ad.DeleteBreakerRequest(breaker_id=created.id), CTX)

    assert store.breakers == {} and service.records == {} and evaluator.enabled("account123") == ()
    with pytest.raises(NotFound):
        await admin.delete_breaker(ad.DeleteBreakerRequest(breaker_id=created.id), CTX)


async def test_delete_while_the_store_is_down_keeps_enforcing(
    admin: BreakerAdmin, service: BreakerService, store: MemoryStore, evaluator: Evaluator
) -> None:
    created = await create(admin)
    store.available = False

    with pytest.raises(Unavailable):
        await admin.delete_breaker(ad.DeleteBreakerRequest(breaker_id=created.id), CTX)

    assert created.id in service.records and evaluator.get(created.id) is not None


# ---- load and events ----------------------------------------------------------------------------


def test_load_installs_enabled_breakers_and_keeps_all_for_reads(service: BreakerService, evaluator: Evaluator) -> None:
    service.load([
        BreakerRecord("x", "x", "", "a1", "max_drawdown", "alert", {"threshold": 0.1}),
        BreakerRecord("y", "y", "", "a1", "max_drawdown", "alert", {"threshold": 0.1}, enabled=False),
        BreakerRecord("z", "z", "", "a1", "gone_condition", "alert", {}),
    ])

    assert sorted(service.records) == ["x", "y", "z"]
    assert enabled_ids(evaluator, "a1") == ["x"]


def firing(event_id: str, breaker_id: str = "b0", account_id: str = "account123", at: float = T0) -> Firing:
    return Firing(
        breaker_id=breaker_id, name="n", condition="max_drawdown", action="close_position",
        triggered_values={"drawdown": 0.12, "threshold": 0.1}, action_result={"success": True},
        positions_affected=[("BTCUSDT", "binance")], actions=[], shadow=False, at=at, event_id=event_id,
        trader_id="t1", account_id=account_id,
    )


def test_record_event_queues_a_breaker_event_row(service: BreakerService, store: MemoryStore) -> None:
    service.record_event(firing("e1"))

    assert store.events == [event_record(firing("e1"))]
    row = store.events[0]
    assert (row.id, row.breaker_id, row.trader_id, row.account_id, row.timestamp) == (
        "e1", "b0", "t1", "account123", T0)
    assert row.positions_affected == [{"symbol": "BTCUSDT", "exchange": "binance"}]
    assert row.triggered_values == {"drawdown": 0.12, "threshold": 0.1} and row.action_taken == "close_position"


def test_events_fired_while_the_store_is_down_are_kept_and_written_later(
    service: BreakerService, store: MemoryStore
) -> None:
    store.available = False
    service.record_event(firing("e1"))
    store.available = True

    assert [e.id for e in store.events] == ["e1"]


def test_each_firing_of_a_state_change_is_recorded_as_record_event_records_it(
    service: BreakerService, store: MemoryStore
) -> None:
    fired = (firing("e1"), firing("e2"))

    service.on_state_changed(StateChanged(TraderState("t1", "account123"), "breaker fired", T0, firings=fired))
    service.on_state_changed(StateChanged(TraderState("t1", "account123"), "equity_report", T0))

    assert store.events == [event_record(firing("e1")), event_record(firing("e2"))]


async def test_list_breaker_events_newest_first_with_paging(admin: BreakerAdmin, service: BreakerService) -> None:
    for i in range(3):
        service.record_event(firing(f"e{i}", at=T0 + i))
    service.record_event(firing("other", breaker_id="b9", account_id="zzz"))

    first = await admin.list_breaker_events(ad.ListBreakerEventsRequest(account_id="account123", page_size=2), CTX)
    second = await admin.list_breaker_events(
        ad.ListBreakerEventsRequest(account_id="account123", page_size=2, page_token=first.next_page_token), CTX)
    by_breaker = await admin.list_breaker_events(ad.ListBreakerEventsRequest(breaker_id="b9"), CTX)

    assert [e.id for e in first.events] == ["e2", "e1"] and first.next_page_token
    assert [e.id for e in second.events] == ["e0"] and second.next_page_token == ""
    assert [e.id for e in by_breaker.events] == ["other"]
    e = first.events[0]
    assert e.triggered_values["drawdown"] == 0.12 and e.action_taken == "close_position"
    assert e.timestamp.seconds == int(T0) + 2
    assert [(p.symbol, p.exchange) for p in e.positions_affected] == [("BTCUSDT", "binance")]


@pytest.mark.parametrize(
    ("req", "field"),
    [
        (ad.ListBreakerEventsRequest(), "account_id"),
        (ad.ListBreakerEventsRequest(account_id="a", page_size=-1), "page_size"),
        (ad.ListBreakerEventsRequest(account_id="a", page_size=1001), "page_size"),
        (ad.ListBreakerEventsRequest(account_id="a", page_token="forged"), "page_token"),
    ],
)
async def test_list_breaker_events_validation(
    admin: BreakerAdmin, req: ad.ListBreakerEventsRequest, field: str
) -> None:
    with pytest.raises(InvalidArgument) as err:
        await admin.list_breaker_events(req, CTX)

    assert fields_of(err.value) == [field]


async def test_list_breaker_events_while_the_store_is_down_is_unavailable(
    admin: BreakerAdmin, store: MemoryStore
) -> None:
    store.available = False

    with pytest.raises(Unavailable):
        await admin.list_breaker_events(ad.ListBreakerEventsRequest(account_id="a"), CTX)


def test_handlers_cover_every_breaker_rpc(admin: BreakerAdmin) -> None:
    names = {m.name for m in ad.DESCRIPTOR.services_by_name["AdminService"].methods if "Breaker" in m.name}

    assert set(admin.handlers()) == names
    for name, (request_cls, fn) in admin.handlers().items():
        assert request_cls.DESCRIPTOR.name == f"{name}Request" and callable(fn)


async def test_memory_only_lists_the_latest_events_from_memory_with_paging(
    admin: BreakerAdmin, service: BreakerService, store: MemoryStore
) -> None:
    store.persistence_enabled = False
    for i in range(3):
        service.record_event(firing(f"e{i}", at=T0 + i))
    service.record_event(firing("other", account_id="zzz"))

    first = await admin.list_breaker_events(ad.ListBreakerEventsRequest(account_id="account123", page_size=2), CTX)
    second = await admin.list_breaker_events(
        ad.ListBreakerEventsRequest(account_id="account123", page_size=2, page_token=first.next_page_token), CTX)

    assert store.events == []
    assert [e.id for e in first.events] == ["e2", "e1"] and first.next_page_token.startswith("mem:")
    assert [e.id for e in second.events] == ["e0"] and second.next_page_token == ""
    with pytest.raises(InvalidArgument):
        await admin.list_breaker_events(ad.ListBreakerEventsRequest(account_id="a", page_token="mem:x"), CTX)
