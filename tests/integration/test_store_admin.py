"""Write-through operations and paging, run against RiskStore (PostgreSQL, SQLite) AND its in-memory twin,
so the twin that unit tests of the layers above rely on behaves like the real store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.support.databases import T0, empty_tables, make_event, make_state, postgres_database_fixture
from tradeguard_server.store.errors import BadCursor, Conflict, InvalidData, NotFound, StoreUnavailable
from tradeguard_server.store.memory import MemoryStore
from tradeguard_server.store.protocol import Store
from tradeguard_server.store.records import BreakerRecord, ConfigRecord, FlagsRecord, SymbolConfigRecord
from tradeguard_server.store.store import RiskStore

pytestmark = pytest.mark.integration

pg_url = postgres_database_fixture()


@pytest.fixture(params=["postgresql", "sqlite", "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s: Store
    if request.param == "memory":
        s = MemoryStore()
    elif request.param == "sqlite":
        s = RiskStore(f"sqlite:///{tmp_path / 'admin.db'}", retry_max_s=0.2)
    else:
        url: str = request.getfixturevalue("pg_url")
        empty_tables(url)
        s = RiskStore(url, retry_max_s=0.2)
    await s.start()
    try:
        yield s
    finally:
        await s.close(drain_timeout=5)


def full_config(account_id: str = "a-1", config_id: str = "c-1", active: bool = True) -> ConfigRecord:
    """Every field set."""
    return ConfigRecord(
        account_id=account_id, config_id=config_id, is_active=active,
        daily_max_drawdown_percentage=5.0, weekly_max_drawdown_percentage=8.5, monthly_max_drawdown_percentage=12.25,
        max_drawdown_percentage=20.0, stop_trading_minutes=30, consecutive_loss_threshold=4,
        cooling_off_period_minutes=45, max_position_size_percentage=10.0, risk_per_trade_percentage=1.5,
        max_correlated_exposure_percentage=25.0, volatility_adjustment_factor=0.5,
        market_regime_thresholds={"high": 2.5, "extreme": 5.0}, position_max_drawdown_percentage=7.0,
        position_trailing_stop_multiplier=2.0, max_order_notional=50_000.0, max_orders_per_window=20,
        order_rate_window_seconds=60, correlation_groups={"majors": ["BTCUSDT", "ETHUSDT"], "alts": ["SOLUSDT"]},
        symbol_configs=[
            SymbolConfigRecord("ETHUSDT", max_position_size_percentage=5.0, max_leverage=3.0,
                               position_max_drawdown_percentage=4.0, risk_per_trade_percentage=0.5),
            SymbolConfigRecord("BTCUSDT", max_leverage=5.0),
        ],
    )


def without_times(cfg: ConfigRecord) -> ConfigRecord:
    return replace(cfg, created_at=None, updated_at=None,
                   symbol_configs=[replace(s, created_at=None, updated_at=None) for s in cfg.symbol_configs])


def breaker(name: str = "dd-10", account_id: str = "a-1", **changes: object) -> BreakerRecord:
    values: dict[str, object] = {"parameters": {"threshold": 0.1}, "symbols": ["BTCUSDT"], "exchanges": None}
    values.update(changes)
    return BreakerRecord("", name, "drawdown over 10%", account_id, "max_drawdown", "pause_trading",
                         **values)  # type: ignore[arg-type]


# ---- configurations ---------------------------------------------------------------------------------------------

async def test_save_config_stores_every_field_and_says_it_was_created(store: Store) -> None:
    cfg = full_config()

    saved, created = await store.save_config(cfg)

    assert created is True
    assert without_times(saved) == cfg
    assert saved.created_at is not None and saved.created_at == saved.updated_at
    assert all(s.created_at is not None for s in saved.symbol_configs)
    assert await store.get_configs("a-1") == [saved]
    assert (await store.load()).configs == [saved]


async def test_saving_a_config_again_replaces_it_and_keeps_created_at(store: Store) -> None:
    first, _ = await store.save_config(full_config())
    changed = replace(full_config(), daily_max_drawdown_percentage=None, market_regime_thresholds={},
                      correlation_groups={}, symbol_configs=[SymbolConfigRecord("SOLUSDT", max_leverage=2.0)])

    saved, created = await store.save_config(changed)

    assert created is False
    assert without_times(saved) == changed
    assert saved.created_at == first.created_at
    assert saved.updated_at is not None and first.updated_at is not None and saved.updated_at >= first.updated_at


async def test_saving_an_active_config_deactivates_the_accounts_others_only(store: Store) -> None:
    await store.save_config(full_config("a-1", "low"))
    await store.save_config(full_config("a-2", "other"))

    await store.save_config(full_config("a-1", "high"))

    active = {(c.account_id, c.config_id): c.is_active for c in (await store.load()).configs}
    assert active == {("a-1", "high"): True, ("a-1", "low"): False, ("a-2", "other"): True}


async def test_delete_config_removes_it_and_a_second_delete_is_not_found(store: Store) -> None:
    await store.save_config(full_config())

    await store.delete_config("a-1", "c-1")

    assert await store.get_configs("a-1") == []
    with pytest.raises(NotFound):
        await store.delete_config("a-1", "c-1")


# ---- breakers ---------------------------------------------------------------------------------------------------

async def test_save_breaker_assigns_an_id_and_round_trips_every_field(store: Store) -> None:
    b = breaker(parameters={"trade_limit": 3, "lookback_minutes": 30.5}, symbols=None, exchanges=["binance"],
                enabled=False)

    saved = await store.save_breaker(b)

    assert len(saved.id) == 36
    assert replace(saved, id="", created_at=None, updated_at=None) == b
    assert saved.created_at is not None
    assert await store.get_breaker(saved.id) == saved
    assert (await store.load()).breakers == [saved]


async def test_a_breaker_name_is_unique_per_account(store: Store) -> None:
    await store.save_breaker(breaker("dd"))
    await store.save_breaker(breaker("dd", account_id="a-2"))

    with pytest.raises(Conflict):
        await store.save_breaker(breaker("dd"))


async def test_update_breaker_keeps_id_account_and_created_at(store: Store) -> None:
    saved = await store.save_breaker(breaker("dd"))
    other = await store.save_breaker(breaker("streak"))

    updated = await store.update_breaker(replace(saved, name="dd-renamed", parameters={"threshold": 0.2},
                                                 account_id="someone-else"))

    assert (updated.id, updated.account_id, updated.created_at) == (saved.id, "a-1", saved.created_at)
    assert (updated.name, updated.parameters) == ("dd-renamed", {"threshold": 0.2})
    with pytest.raises(Conflict):
        await store.update_breaker(replace(other, name="dd-renamed"))
    with pytest.raises(NotFound):
        await store.update_breaker(replace(saved, id="no-such-breaker"))


async def test_enable_disable_and_delete_a_breaker(store: Store) -> None:
    saved = await store.save_breaker(breaker())

    assert (await store.set_breaker_enabled(saved.id, False)).enabled is False
    assert (await store.set_breaker_enabled(saved.id, True)).enabled is True
    await store.delete_breaker(saved.id)

    with pytest.raises(NotFound):
        await store.get_breaker(saved.id)
    with pytest.raises(NotFound):
        await store.delete_breaker(saved.id)
    with pytest.raises(NotFound):
        await store.set_breaker_enabled(saved.id, True)


async def test_list_breakers_is_the_accounts_by_name(store: Store) -> None:
    for name in ("zeta", "alpha", "mid"):
        await store.save_breaker(breaker(name))
    await store.save_breaker(breaker("elsewhere", account_id="a-2"))

    assert [b.name for b in await store.list_breakers("a-1")] == ["alpha", "mid", "zeta"]


async def test_events_outlive_their_breaker(store: Store) -> None:
    saved = await store.save_breaker(breaker())
    store.enqueue_event(replace(make_event("e-1"), breaker_id=saved.id))
    assert await store.flush(timeout=10)

    await store.delete_breaker(saved.id)

    events, _ = await store.list_events(None, saved.id, 10)
    assert [e.id for e in events] == ["e-1"]


# ---- flags ------------------------------------------------------------------------------------------------------

async def test_flags_are_none_until_saved_then_load_back(store: Store) -> None:
    assert (await store.load()).flags is None

    saved = await store.save_flags(FlagsRecord(enable_risk_enforcement=False, enable_persistence=True))

    assert (saved.enable_risk_enforcement, saved.enable_persistence) == (False, True)
    assert (await store.load()).flags == saved


# ---- paging -----------------------------------------------------------------------------------------------------

async def test_history_pages_oldest_first_with_a_cursor(store: Store) -> None:
    for version in range(1, 26):
        store.enqueue_state(make_state("t-1", version), f"change {version}", None)
        store.enqueue_state(make_state("t-other", version), "other trader", None)
    await store.flush(timeout=10)  # written (paging is the subject, not the queue: CI once listed before the write)

    pages: list[list[str]] = []
    cursor: int | None = None
    while True:
        rows, cursor = await store.list_history("t-1", None, None, 10, cursor)
        pages.append([h.reason for h in rows])
        if cursor is None:
            break

    assert [len(p) for p in pages] == [10, 10, 5]
    assert [reason for page in pages for reason in page] == [f"change {v}" for v in range(1, 26)]


async def test_history_time_range_is_start_inclusive_end_exclusive(store: Store) -> None:
    for version in range(1, 11):  # recorded at T0 + version
        store.enqueue_state(make_state("t-1", version), f"change {version}", None)

    rows, cursor = await store.list_history("t-1", T0 + 3, T0 + 7, 100)

    assert [h.state.version for h in rows] == [3, 4, 5, 6]
    assert cursor is None


async def test_events_page_newest_first_and_filter_by_breaker(store: Store) -> None:
    for i in range(12):
        store.enqueue_event(make_event(f"e-{i:02d}", at=T0 + i // 2, breaker_id="b-1" if i % 3 else "b-2"))
    store.enqueue_event(make_event("elsewhere", account_id="a-2"))

    seen: list[str] = []
    cursor: str | None = None
    while True:
        rows, cursor = await store.list_events("a-1", None, 5, cursor)
        seen += [e.id for e in rows]
        if cursor is None:
            break
    only_b2, _ = await store.list_events(None, "b-2", 100)

    assert seen == [f"e-{i:02d}" for i in reversed(range(12))]
    assert [e.id for e in only_b2] == ["e-09", "e-06", "e-03", "e-00"]


async def test_a_value_the_database_cannot_hold_is_invalid_data_not_an_outage(pg_url: str) -> None:
    empty_tables(pg_url)
    store = RiskStore(pg_url)
    await store.start()
    try:
        with pytest.raises(InvalidData):
            await store.save_breaker(breaker("n" * 500))  # name is VARCHAR(128)
        with pytest.raises(InvalidData):
            await store.save_breaker(breaker("nan", parameters={"threshold": float("nan")}))

        assert (await store.save_breaker(breaker("fine"))).name == "fine"
    finally:
        await store.close(drain_timeout=5)


async def test_a_page_cursor_the_store_did_not_hand_out_is_refused(store: Store) -> None:
    with pytest.raises(BadCursor):
        await store.list_events("a-1", None, 10, "garbage")


async def test_memory_twin_holds_snapshots_after_a_failed_load_like_the_real_store() -> None:
    twin = MemoryStore()
    await twin.start()
    twin.states["t-1"] = make_state("t-1", 50)  # stored by a previous run
    twin.available = False
    with pytest.raises(StoreUnavailable):
        await twin.load()
    twin.enqueue_state(make_state("t-1", 3), "memory", None)

    twin.available = True

    assert twin.states["t-1"].version == 50
    assert len(twin.history) == 1
    assert [t.version for t in (await twin.load()).traders] == [50]
    assert twin.states["t-1"].version == 50  # the version rule still applies once released
    assert await twin.flush() is True
