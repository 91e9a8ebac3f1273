"""tradeguard_client public surface: explicit __all__, and every RPC has a method on both flavours."""

from __future__ import annotations

import inspect
import re

import tradeguard_client
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard_client import AdminClient, AsyncAdminClient, AsyncRiskClient, RiskClient


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def rpcs(module: object, service: str) -> list[str]:
    return [snake(m) for m in module.DESCRIPTOR.services_by_name[service].methods_by_name]  # type: ignore[attr-defined]


def test_all_names_exist_and_private_modules_stay_private() -> None:
    names = set(tradeguard_client.__all__)

    assert all(hasattr(tradeguard_client, n) for n in names)
    assert not any(n.startswith("_") for n in names)
    assert len(names) == len(tradeguard_client.__all__)


def test_risk_clients_have_a_method_per_risk_service_rpc_with_the_same_signature() -> None:
    for name in rpcs(rs, "RiskService"):
        if name == "session":  # the stream the clients send can_trade and the reports over, not a method
            continue
        sync, aio = getattr(RiskClient, name), getattr(AsyncRiskClient, name)
        assert inspect.signature(sync).parameters == inspect.signature(aio).parameters, name
        assert inspect.iscoroutinefunction(aio) or name == "watch_risk_state"


def test_admin_clients_have_a_method_per_admin_service_rpc_with_the_same_signature() -> None:
    for name in rpcs(ad, "AdminService"):
        sync, aio = getattr(AdminClient, name), getattr(AsyncAdminClient, name)
        assert inspect.signature(sync).parameters == inspect.signature(aio).parameters, name
        assert inspect.iscoroutinefunction(aio), name
