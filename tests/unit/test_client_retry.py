"""tradeguard_client retry policy and retry loops, with a fake clock and fake RPCs (no I/O)."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard_client import IDEMPOTENT_METHODS, RetryPolicy, SidecarUnavailableError, TradeGuardError
from tradeguard_client._retry import call_async, call_sync


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "boom") -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return ()


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


def script(fake: FakeTime, outcomes: list[grpc.StatusCode | str], cost: float = 0.0,
           timeouts: list[float] | None = None) -> Callable[[float], str]:
    """An RPC that fails or answers per `outcomes`, taking `cost` seconds and recording its timeout."""
    seen = timeouts if timeouts is not None else []

    def rpc(timeout: float) -> str:
        seen.append(timeout)
        fake.now += cost
        outcome = outcomes.pop(0)
        if isinstance(outcome, grpc.StatusCode):
            raise FakeRpcError(outcome)
        return outcome

    return rpc


def run(fake: FakeTime, rpc: Callable[[float], str], *, timeout: float = 1.0, retry: bool = True,
        policy: RetryPolicy | None = None) -> str:
    return call_sync(rpc, method="CanTrade", timeout=timeout, policy=policy or RetryPolicy(), retry=retry,
                     sleep=fake.sleep, clock=fake.clock, rand=lambda: 0.5)


def test_backoff_grows_exponentially_up_to_the_cap_with_bounded_jitter() -> None:
    policy = RetryPolicy(initial_backoff=0.05, multiplier=2.0, max_backoff=0.15, jitter=0.2)

    assert [policy.backoff(n) for n in (1, 2, 3, 4)] == pytest.approx([0.05, 0.1, 0.15, 0.15])
    assert policy.backoff(1, rand=0.0) == pytest.approx(0.04)
    assert policy.backoff(1, rand=0.999999) == pytest.approx(0.06, rel=1e-4)


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.DEADLINE_EXCEEDED,
                                  grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INTERNAL,
                                  grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED])
def test_only_unavailable_is_retried(code: grpc.StatusCode) -> None:
    policy = RetryPolicy()

    assert policy.next_delay(code, attempt=1, remaining=10.0) is None
    assert policy.next_delay(grpc.StatusCode.UNAVAILABLE, attempt=1, remaining=10.0) == pytest.approx(0.05)


def test_no_retry_after_max_attempts_or_when_the_deadline_leaves_no_room() -> None:
    policy = RetryPolicy(max_attempts=3)

    assert policy.next_delay(grpc.StatusCode.UNAVAILABLE, attempt=3, remaining=10.0) is None
    assert policy.next_delay(grpc.StatusCode.UNAVAILABLE, attempt=1, remaining=0.055) is None
    assert policy.next_delay(grpc.StatusCode.UNAVAILABLE, attempt=1, remaining=0.07) == pytest.approx(0.05)


@pytest.mark.parametrize("kwargs", [{"max_attempts": 0}, {"initial_backoff": 0.0}, {"max_backoff": float("inf")},
                                    {"multiplier": -1.0}, {"jitter": 1.0}])
def test_policy_refuses_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_call_retries_unavailable_with_backoff_and_each_attempt_gets_the_remaining_deadline() -> None:
    fake = FakeTime()
    timeouts: list[float] = []
    rpc = script(fake, [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE, "ok"], cost=0.01,
                 timeouts=timeouts)

    assert run(fake, rpc) == "ok"
    assert fake.sleeps == pytest.approx([0.05, 0.1])
    assert timeouts == pytest.approx([1.0, 0.94, 0.83])


def test_call_gives_up_after_max_attempts_with_sidecar_unavailable_error() -> None:
    fake = FakeTime()
    rpc = script(fake, [grpc.StatusCode.UNAVAILABLE] * 3)

    with pytest.raises(SidecarUnavailableError) as err:
        run(fake, rpc)

    assert err.value.attempts == 3 and err.value.code == grpc.StatusCode.UNAVAILABLE
    assert err.value.method == "CanTrade" and isinstance(err.value.__cause__, FakeRpcError)
    assert len(fake.sleeps) == 2


def test_call_never_retries_when_the_method_is_not_idempotent() -> None:
    fake = FakeTime()
    rpc = script(fake, [grpc.StatusCode.UNAVAILABLE, "ok"])

    with pytest.raises(SidecarUnavailableError) as err:
        run(fake, rpc, retry=False)

    assert err.value.attempts == 1 and fake.sleeps == []


def test_call_raises_other_errors_at_once_as_trade_guard_error() -> None:
    fake = FakeTime()
    rpc = script(fake, [grpc.StatusCode.NOT_FOUND])

    with pytest.raises(TradeGuardError) as err:
        run(fake, rpc)

    assert type(err.value) is TradeGuardError and err.value.code == grpc.StatusCode.NOT_FOUND
    assert err.value.message == "boom" and fake.sleeps == []


def test_retries_stop_when_the_deadline_is_spent() -> None:
    fake = FakeTime()
    rpc = script(fake, [grpc.StatusCode.UNAVAILABLE] * 5, cost=0.15)

    with pytest.raises(SidecarUnavailableError) as err:
        run(fake, rpc, timeout=0.2, policy=RetryPolicy(max_attempts=5))

    assert err.value.attempts == 1 and fake.sleeps == []


async def test_async_call_retries_like_the_sync_one() -> None:
    fake = FakeTime()
    rpc = script(fake, [grpc.StatusCode.UNAVAILABLE, "ok"])

    async def arpc(timeout: float) -> str:
        return rpc(timeout)

    result = await call_async(arpc, method="GetRiskState", timeout=1.0, policy=RetryPolicy(), retry=True,
                              sleep=fake.async_sleep, clock=fake.clock, rand=lambda: 0.5)

    assert result == "ok" and fake.sleeps == pytest.approx([0.05])


def test_idempotent_methods_are_real_rpcs_and_exclude_writes_that_must_not_repeat() -> None:
    risk = set(rs.DESCRIPTOR.services_by_name["RiskService"].methods_by_name)
    admin = set(ad.DESCRIPTOR.services_by_name["AdminService"].methods_by_name)

    assert risk | admin >= IDEMPOTENT_METHODS
    assert risk - IDEMPOTENT_METHODS == {"WatchRiskState", "Session"}  # streams (a session's calls are retried)
    assert admin - IDEMPOTENT_METHODS == {"CreateBreaker", "DeleteConfig", "DeleteBreaker", "PauseTrading",
                                          "LogBreakerEvent",  # a repeated log would record a second event
                                          "RebindTrader",  # a repeated rebind would reset the state again
                                          "RestoreRiskState"}  # a repeated restore would undo what came after the first
