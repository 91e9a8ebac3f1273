"""Many `tradeguard serve` subprocesses on one PostgreSQL database (issue 17: "Running many sidecars").

    async with running_cluster(tmp_path, pg_url, 10, proxied=[3], metrics=True,
                               settings={"control_state_max_age_seconds": 2}) as cluster:
        a, b = cluster[0], cluster[1]
        await a.admin.PauseTrading(...)
        cluster[3].proxy.cut()       # sidecar 3 alone loses its database (its LISTEN connection included)
        b.kill()                     # SIGKILL, by pid

Every member is a real `tradeguard serve` process (tests/support/sidecar.py's spawn_sidecar, each in a thread so
that all of them start at once and the test's event loop keeps running: a member's database proxy lives on that
loop, and so do the stubs), on 127.0.0.1:0 with its own `--sidecar-id` (`sc-<index>` unless named), AdminService
open (--dev-open-admin), the same database URL. With `proxied`, the chosen members reach the database through their
own FaultProxy (tests/support/proxy.py): cutting it takes that member's every database connection (the store's pool
and its LISTEN connection) away while the others keep theirs. With `metrics`, every member serves /metrics on
127.0.0.1:0 (the address is read from its log) and `Member.metric()` scrapes it.

Propagation measurements (`Watch`, `poll_until`) are here too: the e2e tests and bench/propagation.py report the
same numbers the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import signal
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.proxy import FaultProxy
from tests.support.sidecar import SidecarProcess, spawn_sidecar
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard.v1 import types_pb2 as t

CONTROL_HEALTH = "tradeguard.control"
METRICS_LINE = re.compile(r"metrics on http://(\S+)/metrics")
START_TIMEOUT_S = 90.0  # ten processes importing on a busy 2-core machine


def setting_args(settings: Mapping[str, Any]) -> list[str]:
    """`{"control_poll_seconds": 1}` -> `["--control-poll-seconds", "1"]` (booleans: --x / --no-x)."""
    args: list[str] = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        else:
            args += [flag, str(value)]
    return args


@dataclass(eq=False)
class Member:
    """One sidecar of the cluster: its process, its stubs, its proxy (when proxied)."""

    index: int
    sidecar_id: str
    process: SidecarProcess
    channel: grpc.aio.Channel
    proxy: FaultProxy | None = None
    metrics_address: str = ""
    risk: rsg.RiskServiceStub = field(init=False)
    admin: adg.AdminServiceStub = field(init=False)
    health: health_pb2_grpc.HealthStub = field(init=False)

    def __post_init__(self) -> None:
        self.risk = rsg.RiskServiceStub(self.channel)
        self.admin = adg.AdminServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    @property
    def address(self) -> str:
        return self.process.address

    @property
    def pid(self) -> int:
        return self.process.proc.pid

    @property
    def alive(self) -> bool:
        return self.process.proc.poll() is None

    def log(self) -> str:
        return self.process.log()

    def kill(self) -> int:
        """SIGKILL this member's process (its pid only) and reap it: no flush, no lease release."""
        return self.process.terminate(signal.SIGKILL, timeout=10)

    async def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (clean shutdown: final flush, leases released) and wait without blocking the loop (the member's
        proxy runs on it)."""
        if self.alive:
            self.process.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.process.proc.poll() is None:
            if time.monotonic() > deadline:
                self.process.proc.kill()
                break
            await asyncio.sleep(0.02)
        return self.process.proc.wait()

    async def health_status(self, service: str = CONTROL_HEALTH) -> int:
        """The member's gRPC health status for `service` (health_pb2.HealthCheckResponse.SERVING, ...)."""
        reply = await self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(reply.status)

    async def metrics_text(self) -> str:
        if not self.metrics_address:
            raise RuntimeError(f"{self.sidecar_id} runs without /metrics: start the cluster with metrics=True")
        url = f"http://{self.metrics_address}/metrics"

        def get() -> str:
            with urllib.request.urlopen(url, timeout=5) as reply:  # loopback: our own sidecar
                return str(reply.read().decode())

        return await asyncio.to_thread(get)

    async def metric(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """The value of one sample (`name`, with exactly these labels when given) from /metrics; None if absent."""
        return sample(await self.metrics_text(), name, labels)


def sample(text: str, name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """One sample's value from Prometheus text (labels: all of these must match; None: the first `name` sample)."""
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)", line)
        if m is None or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        if labels is None or all(found.get(k) == v for k, v in labels.items()):
            return float(m.group(4))
    return None


@dataclass(eq=False)
class Cluster:
    """The members, in index order; `cluster[i]` is member i."""

    members: list[Member]
    database_url: str
    tmp_path: Path

    def __getitem__(self, index: int) -> Member:
        return self.members[index]

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self) -> Iterator[Member]:
        return iter(self.members)

    def others(self, member: Member) -> list[Member]:
        return [m for m in self.members if m is not member]

    async def hearing(self, timeout: float = 30.0) -> None:
        """Wait until every live member's health `tradeguard.control` is SERVING (TimeoutError naming the others)."""
        deadline = time.monotonic() + timeout
        waiting = [m for m in self.members if m.alive]
        while waiting:
            statuses = await asyncio.gather(*(m.health_status(CONTROL_HEALTH) for m in waiting),
                                            return_exceptions=True)
            waiting = [m for m, s in zip(waiting, statuses, strict=True) if s != health_pb2.HealthCheckResponse.SERVING]
            if waiting and time.monotonic() > deadline:
                raise TimeoutError(f"{[m.sidecar_id for m in waiting]} do not hear the control state in {timeout:g} s")
            if waiting:
                await asyncio.sleep(0.02)


async def _start_member(index: int, sidecar_id: str, tmp_path: Path, database_url: str, args: Sequence[str],
                        proxied: bool, metrics: bool) -> Member:
    proxy = await FaultProxy().start() if proxied else None
    url = proxy.url_for(database_url) if proxy is not None else database_url
    argv = ["--sidecar-id", sidecar_id, "--database-url", url,
            "--metrics-listen", "127.0.0.1:0" if metrics else "", *args]
    try:
        # spawn_sidecar waits for the ready file by polling: in a thread, so that the members start together and
        # the loop keeps forwarding a proxied member's database connections meanwhile.
        process = await asyncio.to_thread(spawn_sidecar, tmp_path, *argv, name=sidecar_id, timeout=START_TIMEOUT_S)
    except BaseException:
        if proxy is not None:
            await proxy.close()
        raise
    metrics_address = ""
    if metrics:
        m = METRICS_LINE.search(process.log())
        if m is None:
            process.terminate(signal.SIGKILL)
            raise RuntimeError(f"{sidecar_id}: no metrics address in its log:\n{process.log()}")
        metrics_address = m.group(1)
    channel = grpc.aio.insecure_channel(process.address)
    return Member(index, sidecar_id, process, channel, proxy, metrics_address)


async def _close_member(member: Member) -> None:
    with contextlib.suppress(Exception):
        await member.channel.close()
    if member.alive:
        with contextlib.suppress(Exception):
            await member.stop(timeout=20)
    if member.proxy is not None:
        await member.proxy.close()


@contextlib.asynccontextmanager
async def running_cluster(tmp_path: Path, database_url: str, n: int, *, proxied: Iterable[int] = (),
                          metrics: bool = False, settings: Mapping[str, Any] | None = None,
                          member_settings: Mapping[int, Mapping[str, Any]] | None = None,
                          names: Sequence[str] | None = None, hearing: bool = True) -> AsyncIterator[Cluster]:
    """n sidecars on `database_url`, started concurrently; each stopped (SIGTERM) at exit, then its proxy closed.

    With `hearing` (the default) the cluster is handed over once every member hears the shared control state
    (health `tradeguard.control` SERVING): a sidecar writes its ready file before its LISTEN connection has made
    its first read, and a change made in between would only be caught up, not heard.

    settings: for every member (`{"control_poll_seconds": 1}`); member_settings: more for one member (by index).
    A member that fails to start fails the whole start (the others are stopped), with its log in the error.
    """
    proxied = set(proxied)
    member_settings = member_settings or {}
    ids = list(names) if names is not None else [f"sc-{i}" for i in range(n)]
    assert len(ids) == n and len(set(ids)) == n, ids

    def args_of(i: int) -> list[str]:
        return setting_args({**(settings or {}), **member_settings.get(i, {})})

    starts = [asyncio.ensure_future(_start_member(i, ids[i], tmp_path, database_url, args_of(i), i in proxied,
                                                  metrics)) for i in range(n)]
    results = await asyncio.gather(*starts, return_exceptions=True)
    members = [r for r in results if isinstance(r, Member)]
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        await asyncio.gather(*(_close_member(m) for m in members))
        raise failures[0]
    cluster = Cluster(members, database_url, tmp_path)
    try:
        if hearing:
            await cluster.hearing()
        yield cluster
    finally:
        await asyncio.gather(*(_close_member(m) for m in members))


# ---- propagation ------------------------------------------------------------------------------------------------


class Watch:
    """A WatchRiskState stream kept open in the background; every update recorded with its arrival time
    (time.monotonic()). `await watch.until(pred, after=mark)` waits for the first update from index `mark` on that
    satisfies pred and returns its arrival time."""

    def __init__(self, member: Member, trader_id: str, account_id: str) -> None:
        self.member, self.trader_id, self.account_id = member, trader_id, account_id
        self.updates: list[tuple[float, rs.WatchRiskStateResponse]] = []
        self._changed = asyncio.Condition()
        self._call: Any = None
        self._task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None

    async def open(self, timeout: float = 10.0) -> Watch:
        self._call = self.member.risk.WatchRiskState(
            rs.WatchRiskStateRequest(trader_id=self.trader_id, account_id=self.account_id))
        self._task = asyncio.ensure_future(self._read())
        if not await self.wait_for(lambda u: True, after=0, timeout=timeout):  # the "initial" update
            raise TimeoutError(f"no initial WatchRiskState update from {self.member.sidecar_id}: {self.error}")
        return self

    async def _read(self) -> None:
        try:
            async for update in self._call:
                arrived = time.monotonic()
                async with self._changed:
                    self.updates.append((arrived, update))
                    self._changed.notify_all()
        except BaseException as exc:  # the stream ended (the member stopped, or close()): waiters are told
            self.error = exc
            async with self._changed:
                self._changed.notify_all()
            if isinstance(exc, asyncio.CancelledError):
                raise

    @property
    def mark(self) -> int:
        """The index the next update will have: pass it as `after` to ignore what came before."""
        return len(self.updates)

    @property
    def last(self) -> rs.WatchRiskStateResponse:
        return self.updates[-1][1]

    async def wait_for(self, pred: Callable[[rs.WatchRiskStateResponse], bool], after: int,
                       timeout: float = 10.0) -> float | None:
        """Arrival time of the first update at index >= after with pred(update); None at the timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen = after
        async with self._changed:
            while True:
                for arrived, update in self.updates[seen:]:
                    if pred(update):
                        return arrived
                seen = max(seen, len(self.updates))
                remaining = deadline - loop.time()
                if remaining <= 0 or (self._task is not None and self._task.done()):
                    return None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)

    async def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


def state_is(state: int) -> Callable[[rs.WatchRiskStateResponse], bool]:
    return lambda update: update.state.trading_state == state


async def poll_until(probe: Callable[[], Awaitable[bool]], timeout: float = 5.0,
                     interval: float = 0.005) -> float | None:
    """Call probe every `interval` seconds (after each answer) until it is true: the time.monotonic() of the answer
    that was true, None at the timeout. A probe that raises (e.g. a call refused while the change is on its way)
    counts as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            ok = await probe()
        except grpc.aio.AioRpcError:
            ok = False
        if ok:
            return time.monotonic()
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(interval)


@dataclass
class Propagation:
    """Propagation times (seconds) by kind of change: from the change's answer at the caller to the effect seen on
    another sidecar (a WatchRiskState update's arrival, or the first poll that sees it)."""

    samples: dict[str, list[float]] = field(default_factory=dict)

    def add(self, kind: str, answered_at: float, seen_at: float) -> float:
        # Seen before the caller had its answer (the NOTIFY raced the answer back): no delay at all.
        delay = max(0.0, seen_at - answered_at)
        self.samples.setdefault(kind, []).append(delay)
        return delay

    def all(self) -> list[float]:
        return [d for kind in self.samples.values() for d in kind]

    def table(self) -> str:
        rows = [("kind", "n", "p50 ms", "p99 ms", "max ms")]
        for kind, values in [*self.samples.items(), ("all", self.all())]:
            p50, p99, top = summary(values)
            rows.append((kind, str(len(values)), f"{p50 * 1000:.1f}", f"{p99 * 1000:.1f}", f"{top * 1000:.1f}"))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths,
                                                                                                   strict=True)))
                         for r in rows)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of values; nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> tuple[float, float, float]:
    """(p50, p99, max)."""
    return percentile(values, 50), percentile(values, 99), (max(values) if values else math.nan)


async def measure_watches(prop: Propagation, kind: str, watches: Mapping[int, Watch], state: int,
                          change: Awaitable[object], timeout: float = 5.0) -> float:
    """Make the change (await it), then wait for `state` on every watch given; record each arrival as a sample of
    `kind`. The largest delay is returned; a watch that never shows the state raises AssertionError."""
    marks = {i: w.mark for i, w in watches.items()}
    await change
    answered = time.monotonic()
    arrivals = await asyncio.gather(*(w.wait_for(state_is(state), after=marks[i], timeout=timeout)
                                      for i, w in watches.items()))
    missing = [watches[i].member.sidecar_id for i, a in zip(watches, arrivals, strict=True) if a is None]
    assert not missing, f"{kind}: {t.TradingState.Name(state)} never reached {missing} in {timeout:g} s"
    return max(prop.add(kind, answered, a) for a in arrivals if a is not None)


async def measure_polls(prop: Propagation, kind: str, members: Sequence[Member],
                        probe: Callable[[Member], Awaitable[bool]], change: Awaitable[object],
                        timeout: float = 5.0) -> float:
    """Make the change, then poll every member (`probe(member)`) every 5 ms until it shows it; record each."""
    await change
    answered = time.monotonic()
    seen = await asyncio.gather(*(poll_until(lambda m=m: probe(m), timeout=timeout) for m in members))
    missing = [m.sidecar_id for m, s in zip(members, seen, strict=True) if s is None]
    assert not missing, f"{kind}: not visible on {missing} in {timeout:g} s"
    return max(prop.add(kind, answered, s) for s in seen if s is not None)


def changes_in_a_round(n: int) -> tuple[int, int]:
    """(changes made, samples taken) by one `control_changes_round` on n sidecars."""
    others = n - 1
    return 1 + 2 + 2 * others + 2, others * (1 + 2 + 2 + 2)


async def control_changes_round(cluster: Cluster, traders: Mapping[int, str], watches: Mapping[int, Watch],
                                account_id: str, prop: Propagation, r: int) -> None:
    """One round of control changes made through member 0, each measured on every other member:

    - SaveConfig (config "many", max_order_notional 100 + r): polled through ListConfigs (what the member enforces),
      then shown enforced: a 500-notional order is denied ORDER_NOTIONAL_LIMIT on every member;
    - SetFeatureFlags enforcement off, then on: polled through GetFeatureFlags;
    - for each other member j: PauseTrading of j's trader (HALTED) then ResumeTrading, seen on j's watch stream (and
      the pause shown enforced on j: CanTrade KILL_SWITCH);
    - the account's PauseTrading (HALTED) and ResumeTrading: seen on every other member's watch stream.
    """
    origin, others = cluster[0], cluster.others(cluster[0])
    other_watches = {m.index: watches[m.index] for m in others}
    halted, active = t.TRADING_STATE_HALTED, t.TRADING_STATE_ACTIVE
    limit = 100.0 + r

    async def lists(m: Member) -> bool:
        configs = (await m.admin.ListConfigs(ad.ListConfigsRequest(account_id=account_id), timeout=5)).configs
        return any(c.config_id == "many" and c.max_order_notional == limit for c in configs)

    saved = t.RiskConfiguration(account_id=account_id, config_id="many", is_active=True, max_order_notional=limit)
    await measure_polls(prop, "config", others, lists, origin.admin.SaveConfig(ad.SaveConfigRequest(config=saved)))
    answers = await asyncio.gather(*(m.risk.CanTrade(rs.CanTradeRequest(
        trader_id=traders[m.index], account_id=account_id, order=new_exposure()), timeout=5) for m in cluster))
    assert all(not a.allowed and a.code == t.DECISION_CODE_ORDER_NOTIONAL_LIMIT for a in answers), answers

    for enforce in (False, True):
        async def flags(m: Member, enforce: bool = enforce) -> bool:
            got = (await m.admin.GetFeatureFlags(ad.GetFeatureFlagsRequest(), timeout=5)).flags
            return got.enable_risk_enforcement is enforce

        await measure_polls(prop, "flags", others, flags, origin.admin.SetFeatureFlags(
            ad.SetFeatureFlagsRequest(flags=t.FeatureFlags(enable_risk_enforcement=enforce))))

    for m in others:
        trader, watch = traders[m.index], {m.index: watches[m.index]}
        await measure_watches(prop, "trader pause", watch, halted, origin.admin.PauseTrading(ad.PauseTradingRequest(
            trader_id=trader, account_id=account_id, trading_state=halted, reason=f"round {r}")))
        denied = await m.risk.CanTrade(rs.CanTradeRequest(trader_id=trader, account_id=account_id), timeout=5)
        assert not denied.allowed and denied.code == t.DECISION_CODE_KILL_SWITCH, denied
        await measure_watches(prop, "trader resume", watch, active, origin.admin.ResumeTrading(
            ad.ResumeTradingRequest(trader_id=trader, account_id=account_id)))

    mark = watches[0].mark if 0 in watches else 0
    await measure_watches(prop, "account pause", other_watches, halted, origin.admin.PauseTrading(
        ad.PauseTradingRequest(account_id=account_id, trading_state=halted, reason=f"account round {r}")))
    if 0 in watches:  # and on the sidecar it was pressed on
        assert await watches[0].wait_for(state_is(halted), after=mark, timeout=5.0) is not None
    await measure_watches(prop, "account resume", other_watches, active, origin.admin.ResumeTrading(
        ad.ResumeTradingRequest(account_id=account_id)))


# ---- what a trader needs before it can be measured ----------------------------------------------------------------


async def own_traders(cluster: Cluster, account_id: str, equity: float = 10_000.0, prefix: str = "bot",
                      members: Iterable[int] | None = None) -> dict[int, str]:
    """One trader per member (`<prefix>-<index>`; all members, or those given), first reported (ReportEquity) to
    that member, which therefore owns it (with leases, a trader belongs to the first sidecar that serves it)."""
    chosen = [cluster[i] for i in members] if members is not None else list(cluster)
    traders = {m.index: f"{prefix}-{m.index}" for m in chosen}
    await asyncio.gather(*(m.risk.ReportEquity(rs.ReportEquityRequest(
        trader_id=traders[m.index], account_id=account_id, equity=equity), timeout=10) for m in chosen))
    return traders


async def open_watches(cluster: Cluster, traders: Mapping[int, str], account_id: str) -> dict[int, Watch]:
    """A WatchRiskState stream per member on its own trader, opened (initial update received)."""
    watches = {i: Watch(cluster[i], trader, account_id) for i, trader in traders.items()}
    await asyncio.gather(*(w.open() for w in watches.values()))
    return watches


def new_exposure(quantity: float = 0.01, price: float = 50_000.0, **extra: Any) -> t.OrderIntent:
    """A BUY that adds exposure (500 notional by default)."""
    return t.OrderIntent(symbol="BTCUSDT", side=t.SIDE_BUY, quantity=quantity, price=price, **extra)
