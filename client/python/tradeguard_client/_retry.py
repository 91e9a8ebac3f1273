"""Deadlines and retries: one deadline per call covers every attempt and every backoff pause.

Only `UNAVAILABLE` is retried (the sidecar is restarting, or the connection dropped), and only for calls
that are safe to repeat, because an UNAVAILABLE call may still have reached the server:

- RiskService: CanTrade and GetRiskState (reads; a CanTrade for an order is repeated with the same
  client_order_id, which the sidecar answers with its first decision and counts once); ReportEquity (equity is
  a level, not a delta: a repeat sets the same level, and an older `observed_at` is ignored); ReportTrade
  (idempotent by `trade_id`: a repeat answers `duplicate`); ReportPositions (a snapshot that replaces the
  previous one); ReportOrder (a status and a cumulative `filled_quantity`, not a delta: a repeat changes
  nothing, counts no second fill and answers `duplicate`, so after a lost success the retry reads
  `duplicate=True`; a final status is never undone); ReportPrices (levels, not deltas: a
  repeat sets the same prices again, and a price older than the one known is ignored).
- AdminService reads: GetConfig, ListConfigs, GetBreaker, ListBreakers, ListBreakerEvents, GetFeatureFlags,
  ListRiskStateHistory, ListBindings, ListRiskStates.
- AdminService writes that set an absolute value, so a repeat leaves the same state: SaveConfig (an upsert
  of the whole configuration; after a lost success the repeat reads `created=False`), UpdateBreaker (replaces
  the whole definition), EnableBreaker / DisableBreaker, SetFeatureFlags (sets the fields given), and
  ResumeTrading (ACTIVE again, for a trader, an account or every account: a repeat lifts nothing more).

Never retried: CreateBreaker (a repeat after a lost success creates a second breaker or answers
ALREADY_EXISTS), DeleteConfig / DeleteBreaker (a repeat after a lost success answers NOT_FOUND, reporting a
success as a failure), PauseTrading (a repeat restarts the pause window and writes a second audit entry),
and WatchRiskState (a stream: watch again; the first update of a new stream is the current state).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from ._errors import from_rpc_error

__all__ = [
    "IDEMPOTENT_METHODS",
    "LATE_S",
    "LocalDeadlineExceeded",
    "RetryPolicy",
    "call_async",
    "call_sync",
    "check_fail_open",
    "check_timeout",
]

log = logging.getLogger("tradeguard_client")

R = TypeVar("R")

RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})
MIN_ATTEMPT_S = 0.01
"""A retry is not started unless at least this much of the deadline is left after the backoff pause."""

LATE_S = 0.02
"""How long after a call's deadline the async client's own timer gives up, when gRPC has not (it can be late
by more than 100 ms while the channel keeps reconnecting, e.g. to a server that sends GOAWAY at once)."""


class LocalDeadlineExceeded(grpc.RpcError):
    """DEADLINE_EXCEEDED raised by this client's own timer; looks like the RpcError gRPC would raise."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.DEADLINE_EXCEEDED

    def details(self) -> str:
        return "Deadline Exceeded (the client's timer: gRPC had not ended the call)"


IDEMPOTENT_METHODS = frozenset({
    "CanTrade", "GetRiskState", "ReportEquity", "ReportTrade", "ReportPositions", "ReportOrder", "ReportPrices",
    "GetConfig", "ListConfigs", "GetBreaker", "ListBreakers", "ListBreakerEvents", "GetFeatureFlags",
    "ListRiskStateHistory", "ListBindings", "ListRiskStates",
    "SaveConfig", "UpdateBreaker", "EnableBreaker", "DisableBreaker", "SetFeatureFlags", "ResumeTrading",
})
"""RPCs retried on UNAVAILABLE (see the module docstring for why each is safe to repeat)."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded exponential backoff for UNAVAILABLE, inside the call's deadline.

    Attempt n+1 starts `min(max_backoff, initial_backoff * multiplier**(n-1))` seconds after attempt n
    failed, +/- `jitter` (a fraction), and only if the deadline leaves room for it. `max_attempts=1`
    disables retries. Defaults: 3 attempts, 50 ms then 100 ms pauses.
    """

    max_attempts: int = 3
    initial_backoff: float = 0.05
    max_backoff: float = 0.5
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts: must be >= 1, got {self.max_attempts}")
        for name in ("initial_backoff", "max_backoff", "multiplier"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name}: must be finite and > 0, got {value}")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(f"jitter: must be in [0, 1), got {self.jitter}")

    def backoff(self, attempt: int, rand: float = 0.5) -> float:
        """The pause after failed attempt `attempt` (1-based); `rand` in [0, 1) picks the jitter."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return base * (1.0 - self.jitter + 2.0 * self.jitter * rand)

    def next_delay(self, code: grpc.StatusCode, attempt: int, remaining: float, rand: float = 0.5) -> float | None:
        """How long to pause before retrying after failed attempt `attempt`, or None to give up.

        Gives up on any code but UNAVAILABLE, after `max_attempts`, or when the pause would leave less than
        MIN_ATTEMPT_S of the `remaining` deadline for the next attempt.
        """
        if code not in RETRYABLE_CODES or attempt >= self.max_attempts:
            return None
        delay = self.backoff(attempt, rand)
        if remaining - delay < MIN_ATTEMPT_S:
            return None
        return delay


def _code(error: grpc.RpcError) -> grpc.StatusCode:
    code_fn = getattr(error, "code", None)
    return code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN


def _log_retry(method: str, error: grpc.RpcError, attempt: int, policy: RetryPolicy, delay: float) -> None:
    log.debug("%s: %s (attempt %d/%d), retrying in %.3fs", method, _code(error).name, attempt,
              policy.max_attempts, delay)


def call_sync(fn: Callable[[float], R], *, method: str, timeout: float, policy: RetryPolicy, retry: bool,
              sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
              rand: Callable[[], float] = random.random) -> R:
    """Call `fn(remaining_seconds)` until it succeeds, retrying per `policy` when `retry` is true.

    Raises TradeGuardError (SidecarUnavailableError for UNAVAILABLE / DEADLINE_EXCEEDED) with the number
    of attempts made.
    """
    deadline = clock() + timeout
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn(max(deadline - clock(), 0.0))
        except grpc.RpcError as error:
            delay = policy.next_delay(_code(error), attempt, deadline - clock(), rand()) if retry else None
            if delay is None:
                raise from_rpc_error(error, method, attempt) from error
            _log_retry(method, error, attempt, policy, delay)
        sleep(delay)


async def call_async(fn: Callable[[float], Awaitable[R]], *, method: str, timeout: float, policy: RetryPolicy,  # noqa: ASYNC109
                     retry: bool, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                     clock: Callable[[], float] = time.monotonic, rand: Callable[[], float] = random.random) -> R:
    """The async twin of `call_sync`."""
    deadline = clock() + timeout
    attempt = 0
    while True:
        attempt += 1
        try:
            return await fn(max(deadline - clock(), 0.0))
        except grpc.RpcError as error:
            delay = policy.next_delay(_code(error), attempt, deadline - clock(), rand()) if retry else None
            if delay is None:
                raise from_rpc_error(error, method, attempt) from error
            _log_retry(method, error, attempt, policy, delay)
        await sleep(delay)


def check_timeout(timeout: float, what: str = "timeout") -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"{what}: must be a number of seconds, got {type(timeout).__name__} {timeout!r}")
    if not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"{what}: must be a finite number of seconds > 0, got {timeout!r}")
    return float(timeout)


def check_fail_open(value: object, what: str = "fail_open") -> bool:
    """Only a real bool: `fail_open=os.environ["X"]` ("false" is truthy) must not open the gate."""
    if not isinstance(value, bool):
        raise TypeError(f"{what}: must be True or False, got {type(value).__name__} {value!r} "
                        "(parse strings yourself, e.g. value.lower() in ('1', 'true', 'yes'))")
    return value

