"""Fixtures of the integration tests: a real sidecar in process on 127.0.0.1:0, a channel to it and its stubs.

- `sidecar`: memory only (its own state, nothing on disk), AdminService open (see tests/support/sidecar.py),
  driven by the `clock` fixture (tests/conftest.py: a ManualClock at T0). A module that needs other settings
  overrides `sidecar` and keeps the rest.
- `channel`, `risk`, `admin`: an insecure channel to `sidecar` and its RiskService / AdminService stubs.
- `stubs`: (risk, admin) stubs of a sidecar on the real clock, for tests where time does not matter.
- `certs`: a CA, server and client certificates for TLS tests (once per module; skipped without openssl).

Tests that need a database give `running_sidecar` their own (tests/support/pg.py, or a file in tmp_path);
tests/conftest.py fails any test whose sidecar uses the working directory's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from tests.support.certs import TlsFiles, have_openssl, make_certs
from tests.support.sidecar import running_sidecar
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard_server.engine.clock import ManualClock
from tradeguard_server.sidecar import Sidecar


@pytest.fixture
async def sidecar(clock: ManualClock) -> AsyncIterator[Sidecar]:
    async with running_sidecar(clock=clock) as sc:
        yield sc


@pytest.fixture
async def channel(sidecar: Sidecar) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(sidecar.address) as ch:
        yield ch


@pytest.fixture
def risk(channel: grpc.aio.Channel) -> rsg.RiskServiceStub:
    return rsg.RiskServiceStub(channel)


@pytest.fixture
def admin(channel: grpc.aio.Channel) -> adg.AdminServiceStub:
    return adg.AdminServiceStub(channel)


@pytest.fixture
async def stubs() -> AsyncIterator[tuple[rsg.RiskServiceStub, adg.AdminServiceStub]]:
    async with running_sidecar() as sc, grpc.aio.insecure_channel(sc.address) as ch:
        yield rsg.RiskServiceStub(ch), adg.AdminServiceStub(ch)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    if not have_openssl():
        pytest.skip("openssl CLI not installed")
    return make_certs(tmp_path_factory.mktemp("certs"))
