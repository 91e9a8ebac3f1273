"""tradeguard_client channel settings: targets, TLS files, options and metadata (no connection is made)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tradeguard_client import TLS, AdminClient, AsyncRiskClient, ClientClosedError, RiskClient, TradeGuardError
from tradeguard_client._channel import call_metadata, channel_options


def test_token_becomes_a_bearer_authorization_header_before_extra_metadata() -> None:
    assert call_metadata("s3cret", [("X-Trace", "1")]) == (("authorization", "Bearer s3cret"), ("x-trace", "1"))
    assert call_metadata(None) == ()


@pytest.mark.parametrize("token", ["", "has space", "line\nbreak", "naïve"])
def test_a_token_that_cannot_be_a_header_is_refused(token: str) -> None:
    with pytest.raises(ValueError, match="token"):
        RiskClient("127.0.0.1:1", token=token)


def test_options_merge_defaults_tls_and_caller_with_the_caller_winning() -> None:
    opts = dict(channel_options(TLS(server_name="tradeguard"), [("grpc.initial_reconnect_backoff_ms", 500)]))

    assert opts["grpc.ssl_target_name_override"] == "tradeguard"
    assert opts["grpc.initial_reconnect_backoff_ms"] == 500
    assert str(opts["grpc.primary_user_agent"]).startswith("tradeguard-client-python/")


def test_tls_needs_client_cert_and_key_together() -> None:
    with pytest.raises(ValueError, match="client_cert and client_key"):
        TLS(client_cert=b"cert")


def test_tls_files_are_read_up_front_so_a_bad_path_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="root_ca: cannot read"):
        RiskClient("127.0.0.1:1", tls=TLS(root_ca=tmp_path / "missing.pem"))


@pytest.mark.parametrize("target", ["", "   "])
def test_an_empty_target_is_refused(target: str) -> None:
    with pytest.raises(ValueError, match="target"):
        RiskClient(target)


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("nan"), float("inf")])
def test_a_deadline_must_be_positive_and_finite(timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        AdminClient("127.0.0.1:1", timeout=timeout)


def test_clients_default_to_the_sidecar_default_address_and_deadlines() -> None:
    with RiskClient() as risk, AdminClient() as admin:
        assert (risk.target, risk.timeout, risk.fail_open) == ("127.0.0.1:50051", 1.0, False)
        assert admin.timeout == 5.0


async def test_async_client_opens_no_channel_until_first_use_and_refuses_calls_after_close() -> None:
    client = AsyncRiskClient("unix:/nonexistent/tradeguard.sock")

    await client.close()

    with pytest.raises(ClientClosedError, match="closed") as caught:
        await client.get_risk_state("bot-1", "acct-1")
    assert isinstance(caught.value, TradeGuardError) and caught.value.code.name == "CANCELLED"
