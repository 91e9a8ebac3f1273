"""Fuzzed RPCs: every request message of every RPC of RiskService and AdminService, generated from the
proto descriptors with valid, boundary and hostile values, sent through a real server (in process, port 0,
SQLite store on). Then raw bytes and mutated protobuf bodies to every method.

Asserted: no UNKNOWN and no INTERNAL status; no ERROR record from the sidecar's or grpc's loggers; the server
still SERVING; and every trader's equity levels (current, peak), consecutive losses and duplicate detection
equal to what the valid subset of the calls implies (a small reference model, below). The reference also
predicts, for the state-changing reports, which requests are valid: a valid one must be OK, an invalid one
INVALID_ARGUMENT.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.struct_pb2 import Struct
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.attack.support import LoopThread, ThreadedSidecar, figure, server_errors
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard_server.engine.clock import ManualClock

pytestmark = pytest.mark.integration

NOW = 1_767_225_600.0  # the server's (manual) clock; it does not move during the fuzz
METHODS: list[MethodDescriptor] = [
    m for svc in (rs.DESCRIPTOR.services_by_name["RiskService"], ad.DESCRIPTOR.services_by_name["AdminService"])
    for m in svc.methods
    if not m.client_streaming  # Session (bidirectional): its own fuzz is tests/integration/test_session_equivalence.py
]
TRADERS = ["t-0", "t-1", "t-2", "t-3"]
ACCOUNTS = ["a-0", "a-1"]
ID_RE = re.compile(r"[A-Za-z0-9._:@/\-]+")
INT_BOUNDS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1), FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1), FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1), FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
ALLOWED_CODES = {
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.RESOURCE_EXHAUSTED,
}

# ---- values ------------------------------------------------------------------------------------------------

HOSTILE_TEXT = [
    "", " ", "x" * 128, "x" * 129, "A" * 12_000, "é" * 6_000, "\U0001f600" * 3_000, "\x00", "bot\x00-1",
    "../../etc/passwd", "'; DROP TABLE risk_state; --", "${jndi:ldap://127.0.0.1/x}", "\u202eevil", "bot 1",
    "%s%s%n", "\r\n", "NaN", "-inf", "t-0", "a-0", "BTCUSDT", "binance", "ÅÄÖ", "\ufeff", "a" * 1025,
]
texts = st.one_of(
    st.sampled_from(HOSTILE_TEXT),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=40),
    st.from_regex(r"[A-Za-z0-9._:@/\-]{1,12}", fullmatch=True),
)
SPECIAL = [0.0, -0.0, 1.0, -1.0, 1e15, 1.0000000000000002e15, 1e16, 1e308, -1e308, 5e-324,
           math.nan, math.inf, -math.inf, 10_000.0, 9_400.0, 100.0, 0.5]
doubles = st.one_of(st.sampled_from(SPECIAL), st.floats(allow_nan=True, allow_infinity=True),
                    st.floats(0, 20_000))
ids = st.one_of(st.sampled_from(TRADERS + ACCOUNTS), texts)
SECONDS = [0, 1, -1, int(NOW) - 3_600, int(NOW) - 1, int(NOW), int(NOW) + 299, int(NOW) + 301,
           253_402_300_799, 253_402_300_800, 2**63 - 1, -(2**63)]
NANOS = [0, 1, 999_999_999, 1_000_000_000, -1, -999_999_999, 2**31 - 1, -(2**31)]
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), doubles, st.integers(-(2**53), 2**53), texts),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)),
    max_leaves=8,
)
PARAM_KEYS = ["threshold", "count", "value", "duration_minutes", "max_orders", "window_seconds", "trade_limit",
              "lookback_minutes", "high", "extreme"]


def _deep_struct(depth: int) -> Struct:
    msg = Struct()
    cur = msg
    for _ in range(depth):
        cur = cur.fields["x"].struct_value
    return msg


def _struct(values: dict[str, Any]) -> Struct:
    msg = Struct()
    msg.update(values)
    return msg


structs = st.one_of(
    st.dictionaries(st.one_of(st.sampled_from(PARAM_KEYS), texts), json_values, max_size=4).map(_struct),
    st.fixed_dictionaries({}, optional={k: st.one_of(doubles, st.integers(-5, 600)) for k in PARAM_KEYS[:8]})
    .map(_struct),
    st.sampled_from([120, 99, 2_000]).map(
        lambda n: _deep_struct(n) if n < 1_000 else _struct({f"k{i}": i for i in range(n)})),
)

# Field-name overrides: mostly plausible values (so that state changes), else the generic hostile ones.
OVERRIDES: dict[str, st.SearchStrategy[Any]] = {
    "trader_id": st.one_of(st.sampled_from(TRADERS), ids),
    "account_id": st.one_of(st.sampled_from(ACCOUNTS), ids),
    "equity": st.one_of(st.floats(0, 20_000), doubles),
    "realized_pnl": st.one_of(st.floats(-500, 500), doubles),
    "trade_id": st.one_of(st.sampled_from([f"tr-{i}" for i in range(8)]), texts),
    "symbol": st.one_of(st.sampled_from(["BTCUSDT", "ETHUSDT"]), texts),
    "exchange": st.one_of(st.sampled_from(["", "binance"]), texts),
    "config_id": st.one_of(st.sampled_from(["c-0", "c-1"]), texts),
    "breaker_id": st.one_of(st.just("@known"), texts),
    "condition": st.one_of(st.sampled_from(["max_drawdown", "daily_loss", "consecutive_losses",
                                            "loss_streak_in_window", "equity_floor", "order_rate",
                                            "position_drawdown"]), texts),
    "action": st.one_of(st.sampled_from(["pause_trading", "reduce_only", "close_position", "alert"]), texts),
    "parameters": structs,
    "market_regime_thresholds": structs,
    "quantity": st.one_of(st.floats(0, 10), doubles),
    "price": st.one_of(st.floats(1, 60_000), doubles),
}


def _timestamp_values() -> st.SearchStrategy[dict[str, int]]:
    return st.fixed_dictionaries({}, optional={
        "seconds": st.one_of(st.sampled_from(SECONDS), st.integers(-(2**63), 2**63 - 1),
                             st.integers(int(NOW) - 10_000, int(NOW) + 10)),
        "nanos": st.one_of(st.sampled_from(NANOS), st.integers(-(2**31), 2**31 - 1)),
    })


def _scalar(fd: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = fd.type
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return doubles if kind == FieldDescriptor.TYPE_DOUBLE else st.floats(width=32, allow_nan=True)
    if kind == FieldDescriptor.TYPE_STRING:
        return texts
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in fd.enum_type.values]
        return st.one_of(st.sampled_from(known), st.sampled_from([max(known) + 1, -1, 2**31 - 1, -(2**31)]))
    low, high = INT_BOUNDS[kind]
    edges = [low, high, 0, 1, -1 if low < 0 else 2, 1000, 1001, 100_000]
    return st.one_of(st.sampled_from(edges), st.integers(low, high), st.integers(0, 1_100))


_memo: dict[tuple[str, int], st.SearchStrategy[Message]] = {}


def messages(desc: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """A strategy for any message type, from its descriptor (fields optional, repeated fields 0-3 long)."""
    key = (desc.full_name, depth)
    if key in _memo:
        return _memo[key]
    cls = message_factory.GetMessageClass(desc)
    if desc.full_name == "google.protobuf.Struct":
        strategy: st.SearchStrategy[Message] = structs
    elif desc.full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
        strategy = _timestamp_values().map(lambda kw: cls(**kw))
    elif depth > 2:
        strategy = st.just(cls())
    else:
        optional: dict[str, st.SearchStrategy[Any]] = {}
        for fd in desc.fields:
            is_message = fd.type == FieldDescriptor.TYPE_MESSAGE
            one = messages(fd.message_type, depth + 1) if is_message else _scalar(fd)
            if fd.name in OVERRIDES and not fd.is_repeated:  # plausible values 3:1, so that state changes
                plausible = OVERRIDES[fd.name]
                one = st.one_of(plausible, plausible, plausible, one)
            optional[fd.name] = st.lists(one, max_size=3) if fd.is_repeated else one
        strategy = st.fixed_dictionaries({}, optional=optional).map(lambda values: _build(cls, values))
    _memo[key] = strategy
    return strategy


def _build(cls: type[Message], values: dict[str, Any]) -> Message:
    msg = cls()
    for name, value in values.items():
        fd = cls.DESCRIPTOR.fields_by_name[name]
        target = getattr(msg, name)
        if fd.is_repeated:
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                for item in value:
                    target.add().CopyFrom(item)
            else:
                target.extend(value)
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            target.CopyFrom(value)
        else:
            setattr(msg, name, value)
    return msg


def _crowded() -> st.SearchStrategy[tuple[MethodDescriptor, Message]]:
    """Deeply repeated fields: just under and over every list limit."""
    by_name = {m.name: m for m in METHODS}

    def positions(n: int) -> Message:
        req = rs.ReportPositionsRequest(trader_id="t-3", account_id="a-1")
        for i in range(n):
            req.positions.add(symbol=f"S{i}", side=1, quantity=1.0, entry_price=10.0, mark_price=10.0)
        return req

    def config(n: int) -> Message:
        req = ad.SaveConfigRequest()
        req.config.account_id, req.config.config_id = "a-1", "crowded"
        for i in range(n):
            req.config.symbol_configs.add(symbol=f"S{i}", max_leverage=2.0)
        for i in range(min(n, 150)):
            req.config.correlation_groups.add(name=f"g{i}", symbols=[f"G{i}"])
        return req

    def breaker(n: int) -> Message:
        req = ad.CreateBreakerRequest()
        b = req.breaker
        b.name, b.account_id, b.condition, b.action = f"crowded-{n}", "a-1", "equity_floor", "alert"
        b.parameters.update({"value": 1.0})
        b.symbols.extend(f"S{i}" for i in range(n))
        b.exchanges.extend(["binance"] * min(n, 3))
        return req

    sizes = st.sampled_from([0, 99, 100, 101, 999, 1_000, 1_001, 4_000])
    return st.one_of(
        sizes.map(lambda n: (by_name["ReportPositions"], positions(n))),
        sizes.map(lambda n: (by_name["SaveConfig"], config(n))),
        sizes.map(lambda n: (by_name["CreateBreaker"], breaker(n))),
    )


def _plausible() -> st.SearchStrategy[tuple[MethodDescriptor, Message]]:
    """Well-formed trader calls with boundary values, so that the reference has state to check."""
    by_name = {m.name: m for m in METHODS}
    trader, account = st.sampled_from(TRADERS), st.sampled_from(ACCOUNTS)
    at = st.one_of(st.none(), st.integers(-7_200, 400).map(lambda d: int(NOW) + d))

    def when(seconds: int | None) -> dict[str, Any]:
        return {} if seconds is None else {"observed_at": {"seconds": seconds}}

    equity = st.builds(
        lambda tr, ac, eq, sec: (by_name["ReportEquity"], rs.ReportEquityRequest(
            trader_id=tr, account_id=ac, equity=eq, **when(sec))),
        trader, account, st.one_of(st.floats(0, 20_000), st.sampled_from([0.0, 1e15, 1.0000000000000002e15])), at)
    trade = st.builds(
        lambda tr, ac, tid, pnl, side: (by_name["ReportTrade"], rs.ReportTradeRequest(
            trader_id=tr, account_id=ac, trade_id=tid, symbol="BTCUSDT", side=side, realized_pnl=pnl)),
        trader, account, st.sampled_from([f"tr-{i}" for i in range(12)]),
        st.one_of(st.floats(-500, 500), st.sampled_from([0.0, -1e15, -1.0000000000000002e15])), st.sampled_from([1, 2]))
    lasting = st.one_of(st.none(), st.sampled_from([1, 60, 31_622_400, 31_622_401]))
    pause = st.builds(
        lambda tr, ac, state, secs: (by_name["PauseTrading"], ad.PauseTradingRequest(
            trader_id=tr, account_id=ac, trading_state=state,
            **({} if secs is None else {"duration": {"seconds": secs}}))),
        trader, account, st.sampled_from([2, 3]), lasting)
    other = st.builds(
        lambda name, tr, ac: (by_name[name], message_factory.GetMessageClass(by_name[name].input_type)(
            trader_id=tr, account_id=ac)),
        st.sampled_from(["ResumeTrading", "CanTrade", "GetRiskState", "WatchRiskState"]), trader, account)
    return st.one_of(equity, equity, trade, trade, pause, other)


_generic = st.one_of(*[messages(m.input_type).map(lambda msg, m=m: (m, msg)) for m in METHODS])
_crowded_calls, _plausible_calls = _crowded(), _plausible()
# 1 in 20 crowded (they are big and slow to build); the rest half generic, half plausible
calls = st.integers(0, 19).flatmap(
    lambda i: _crowded_calls if i == 0 else _generic if i % 2 else _plausible_calls)


# ---- the reference model -------------------------------------------------------------------------------------


def valid_id(value: str, required: bool = True) -> bool:
    if not value:
        return not required
    return len(value) <= 128 and ID_RE.fullmatch(value) is not None


def valid_number(value: float, low: float, high: float = 1e15) -> bool:
    return math.isfinite(value) and low <= value <= high


def timestamp(ts: Any) -> tuple[bool, float | None]:
    """(valid, epoch seconds or None when unset), as the server reads an optional timestamp."""
    if ts.seconds == 0 and ts.nanos == 0:
        return True, None
    if not 0 <= ts.nanos < 1_000_000_000 or not 0 < ts.seconds < 253_402_300_800:
        return False, None
    value = ts.seconds + ts.nanos / 1e9
    return value <= NOW + 5.0, value  # max_clock_skew_s; within it, a time ahead counts as now


@dataclass
class Trader:
    account: str
    equity_reported: bool = False
    current: float = 0.0
    peak: float = 0.0
    last_at: float | None = None
    losses: int = 0
    seen: set[str] = field(default_factory=set)
    trades: list[tuple[float, float]] = field(default_factory=list)  # (closed_at, pnl) by closed_at, ties as reported


@dataclass
class Expect:
    code: grpc.StatusCode
    check: Callable[[Any], None] | None = None  # on the response, when OK


class Reference:
    """What the valid subset of the calls implies for each trader."""

    BINDS = frozenset({"ReportEquity", "ReportTrade", "ReportPositions", "PauseTrading", "ResumeTrading"})

    def __init__(self) -> None:
        self.traders: dict[str, Trader] = {}
        self.breakers: list[str] = []
        # Traders a RestoreRiskState (not a dry run) put back to an earlier history row: their numbers are no longer
        # what this model implies, so they are neither predicted nor checked from then on.
        self.restored: set[str] = set()

    def _account_ok(self, trader_id: str, account_id: str) -> bool:
        t = self.traders.get(trader_id)
        return t is None or t.account == account_id

    def expect(self, method: str, req: Any) -> Expect | None:
        if getattr(req, "trader_id", "") in self.restored:
            return None
        if method == "ReportEquity":
            return self._equity(req)
        if method == "ReportTrade":
            return self._trade(req)
        return None

    def observe(self, method: str, req: Any, code: grpc.StatusCode) -> None:
        """Bindings made by any OK trader call (a trader id is bound to its first account); RebindTrader moves a
        trader id to another account with a fresh state."""
        if code != grpc.StatusCode.OK:
            return
        if method == "RestoreRiskState" and req.HasField("dry_run") and not req.dry_run:
            self.restored.add(req.trader_id)
        if method == "RebindTrader" or (method in self.BINDS and req.trader_id not in self.traders):
            self.traders[req.trader_id] = Trader(req.account_id)

    def _equity(self, req: rs.ReportEquityRequest) -> Expect:
        ts_ok, at = timestamp(req.observed_at)
        valid = (valid_id(req.trader_id) and valid_id(req.account_id) and valid_number(req.equity, 0.0) and ts_ok
                 and self._account_ok(req.trader_id, req.account_id))
        if not valid:
            return Expect(grpc.StatusCode.INVALID_ARGUMENT)
        t = self.traders.setdefault(req.trader_id, Trader(req.account_id))
        when = NOW if at is None else min(at, NOW)
        stale = t.last_at is not None and when < t.last_at
        if stale:
            t.peak = max(t.peak, req.equity)  # the equity was there: a late report still raises the peak
        else:
            t.current = req.equity
            t.peak = req.equity if not t.equity_reported else max(t.peak, req.equity)
            t.equity_reported, t.last_at = True, when
        current, peak = t.current, t.peak

        def check(resp: rs.ReportEquityResponse) -> None:
            assert resp.stale == stale, (req, resp.stale)
            assert (resp.state.current_equity, resp.state.peak_equity) == (current, peak), req

        return Expect(grpc.StatusCode.OK, check)

    def _trade(self, req: rs.ReportTradeRequest) -> Expect:
        ts_ok, closed_at = timestamp(req.closed_at)
        valid = (valid_id(req.trader_id) and valid_id(req.account_id) and valid_id(req.trade_id)
                 and valid_id(req.symbol) and valid_id(req.exchange, required=False) and req.side in (1, 2)
                 and valid_number(req.realized_pnl, -1e15) and ts_ok
                 and self._account_ok(req.trader_id, req.account_id))
        if not valid:
            return Expect(grpc.StatusCode.INVALID_ARGUMENT)
        t = self.traders.setdefault(req.trader_id, Trader(req.account_id))
        duplicate = req.trade_id in t.seen
        if not duplicate:
            t.seen.add(req.trade_id)
            when = NOW if closed_at is None else min(closed_at, NOW)
            t.trades.insert(sum(1 for at, _pnl in t.trades if at <= when), (when, req.realized_pnl))
            t.losses = 0  # losses closed after the newest win
            for _at, pnl in t.trades:
                t.losses = 0 if pnl > 0 else t.losses + (pnl < 0)
        losses = t.losses

        def check(resp: rs.ReportTradeResponse) -> None:
            assert resp.duplicate == duplicate, req
            assert resp.state.consecutive_losses == losses, req

        return Expect(grpc.StatusCode.OK, check)


def _field_violations(exc: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    if status is None:
        return []
    out: list[str] = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            out.extend(v.field for v in bad.field_violations)
    return out


# ---- the server and the calls ------------------------------------------------------------------------------


@dataclass
class Env:
    channel: grpc.Channel
    sidecar: ThreadedSidecar
    reference: Reference = field(default_factory=Reference)
    codes: Counter[str] = field(default_factory=Counter)
    other: Counter[str] = field(default_factory=Counter)  # codes other than OK / INVALID_ARGUMENT, by method
    requests: int = 0
    bad: list[str] = field(default_factory=list)  # UNKNOWN / INTERNAL / unexpected codes

    def method_path(self, m: MethodDescriptor) -> str:
        return f"/{m.containing_service.full_name}/{m.name}"

    def send(self, m: MethodDescriptor, payload: bytes, parsed: Any | None) -> grpc.StatusCode:
        """Send raw bytes to a method; check the status against the reference when it predicts one."""
        expect = self.reference.expect(m.name, parsed) if parsed is not None else Expect(
            grpc.StatusCode.INVALID_ARGUMENT)
        response_cls = message_factory.GetMessageClass(m.output_type)
        path = self.method_path(m)
        self.requests += 1
        reply: bytes | None = None
        try:
            if m.server_streaming:
                stream = self.channel.unary_stream(path)(payload, timeout=10)
                reply = next(stream)
                stream.cancel()
            else:
                reply = self.channel.unary_unary(path)(payload, timeout=10)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            details = exc.details() or ""  # type: ignore[attr-defined]
            if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL) or code not in ALLOWED_CODES or (
                    code == grpc.StatusCode.RESOURCE_EXHAUSTED and "metadata" in details):
                self.bad.append(f"{m.name}: {code.name} {details[:300]} for {payload[:200]!r}")
            elif code == grpc.StatusCode.INVALID_ARGUMENT and not _field_violations(exc):
                self.bad.append(f"{m.name}: INVALID_ARGUMENT without field violations: {details[:300]}")
        self.codes[code.name] += 1
        if code not in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT):
            self.other[f"{m.name}:{code.name}"] += 1
        if parsed is not None:
            self.reference.observe(m.name, parsed, code)
        if expect is not None:
            assert code == expect.code, f"{m.name}: expected {expect.code.name}, got {code.name}: {parsed!r:.500}"
            if code == grpc.StatusCode.OK and expect.check is not None and reply is not None:
                expect.check(response_cls.FromString(reply))
        return code

    def call(self, m: MethodDescriptor, msg: Message) -> None:
        if "breaker_id" in m.input_type.fields_by_name and getattr(msg, "breaker_id", "") == "@known":
            known = self.reference.breakers
            msg.breaker_id = known[self.requests % len(known)] if known else "no-such-breaker"  # type: ignore[attr-defined]
        code = self.send(m, msg.SerializeToString(), msg)
        if m.name == "CreateBreaker" and code == grpc.StatusCode.OK:
            self.reference.breakers.append(self._last_breaker_id(msg))

    def _last_breaker_id(self, msg: Any) -> str:
        stub = self.channel.unary_unary("/tradeguard.v1.AdminService/ListBreakers")
        reply = ad.ListBreakersResponse.FromString(
            stub(ad.ListBreakersRequest(account_id=msg.breaker.account_id).SerializeToString(), timeout=10))
        return next((b.id for b in reply.breakers if b.name == msg.breaker.name), "gone")

    def check_traders(self) -> None:
        get = self.channel.unary_unary("/tradeguard.v1.RiskService/GetRiskState")
        for trader_id, t in self.reference.traders.items():
            if trader_id not in TRADERS or trader_id in self.reference.restored:
                continue
            raw = get(rs.GetRiskStateRequest(trader_id=trader_id, account_id=t.account).SerializeToString(),
                      timeout=10)
            state = rs.GetRiskStateResponse.FromString(raw).state
            got = (state.equity_reported, state.current_equity, state.peak_equity, state.consecutive_losses)
            want = (t.equity_reported, t.current, t.peak, t.losses)
            assert got == want, f"{trader_id}: server {got} != reference {want}"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    loop = LoopThread()
    db = Path(tmp_path_factory.mktemp("fuzz")) / "fuzz.db"
    sidecar = ThreadedSidecar(loop, ManualClock(NOW), database_url=f"sqlite:///{db}")
    sidecar.start()
    channel = grpc.insecure_channel(sidecar.address)
    try:
        yield Env(channel, sidecar)
    finally:
        channel.close()
        sidecar.stop()
        loop.close()


FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
RAW_FUZZ = settings(FUZZ, max_examples=120)


def test_fuzzed_requests_of_every_rpc_never_crash_and_keep_the_reference_state(env: Env) -> None:
    with server_errors() as errors:

        @FUZZ
        @given(st.lists(calls, min_size=1, max_size=16))
        def run(batch: list[tuple[MethodDescriptor, Message]]) -> None:
            bad, logged = len(env.bad), len(errors.records)
            for m, msg in batch:
                env.call(m, msg)
            env.check_traders()
            assert env.bad[bad:] == []
            assert errors.lines()[logged:] == []

        run()
        health = health_pb2_grpc.HealthStub(env.channel)
        statuses = {name: health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
                    for name in ("", "tradeguard.v1.RiskService", "tradeguard.v1.AdminService", "tradeguard.store")}

    figure("fuzz", "typed requests fuzzed", env.requests)
    figure("fuzz", "status codes", dict(env.codes))
    figure("fuzz", "other codes by method", dict(env.other))
    figure("fuzz", "UNKNOWN statuses", env.codes["UNKNOWN"])
    figure("fuzz", "INTERNAL statuses", env.codes["INTERNAL"])
    figure("fuzz", "server exceptions (ERROR log records)", len(errors.records))
    figure("fuzz", "traders checked against the reference", len(env.reference.traders))
    assert env.codes["UNKNOWN"] == env.codes["INTERNAL"] == 0
    assert errors.records == []
    assert set(statuses.values()) == {health_pb2.HealthCheckResponse.SERVING}, statuses
    assert env.codes["OK"] > 100 and env.codes["INVALID_ARGUMENT"] > 100  # both halves were exercised


def _mutations() -> st.SearchStrategy[tuple[MethodDescriptor, bytes]]:
    """Bodies that are not protobuf at all, and valid bodies truncated, bit-flipped, spliced or extended."""

    def mutate(data: tuple[MethodDescriptor, Message, int, int, bytes, int]) -> tuple[MethodDescriptor, bytes]:
        m, msg, op, at, extra, bit = data
        raw = msg.SerializeToString()
        pos = at % (len(raw) + 1)
        if op == 0:
            return m, raw[:pos]
        if op == 1 and raw:
            i = pos % len(raw)
            return m, raw[:i] + bytes([raw[i] ^ (1 << bit)]) + raw[i + 1:]
        if op == 2:
            return m, raw[:pos] + extra + raw[pos:]
        return m, raw + extra

    typed = st.tuples(st.sampled_from(METHODS), st.integers(0, 3), st.integers(0, 10_000), st.binary(max_size=40),
                      st.integers(0, 7)).flatmap(
        lambda t: messages(t[0].input_type).map(lambda msg: (t[0], msg, t[1], t[2], t[3], t[4])))
    garbage = st.tuples(st.sampled_from(METHODS), st.one_of(
        st.binary(max_size=2_000),
        st.sampled_from([b"\xff" * 64, b"\x0a\xff\xff\xff\xff\x0f", b"\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",
                         b"GET / HTTP/1.1\r\n\r\n", b"{\"trader_id\": \"t-0\"}", b"\x08" * 5_000,
                         b"\x12\x05t-0", b"\x0b" * 10, b"\x7a\x00" * 1_000]),
    ))
    return st.one_of(typed.map(mutate), garbage)


def test_raw_and_mutated_bodies_to_every_method_are_answered_properly(env: Env) -> None:
    before = env.requests
    codes_before = Counter(env.codes)
    with server_errors() as errors:

        @RAW_FUZZ
        @given(st.lists(_mutations(), min_size=1, max_size=10))
        def run(batch: list[tuple[MethodDescriptor, bytes]]) -> None:
            bad, logged = len(env.bad), len(errors.records)
            for m, payload in batch:
                cls = message_factory.GetMessageClass(m.input_type)
                try:
                    parsed: Any | None = cls.FromString(payload)
                except DecodeError:
                    parsed = None
                env.send(m, payload, parsed)
            env.check_traders()
            assert env.bad[bad:] == []
            assert errors.lines()[logged:] == []

        run()
    codes = env.codes - codes_before
    figure("fuzz", "raw / mutated bodies sent", env.requests - before)
    figure("fuzz", "raw body status codes", dict(codes))
    figure("fuzz", "raw body UNKNOWN + INTERNAL", codes["UNKNOWN"] + codes["INTERNAL"])
    assert codes["UNKNOWN"] == codes["INTERNAL"] == 0
    assert errors.records == []
    assert codes["INVALID_ARGUMENT"] > 50
