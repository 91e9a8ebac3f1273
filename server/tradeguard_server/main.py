"""Entry point: `tradeguard serve | migrate | health | admin`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import MISSING
from typing import Any, get_type_hints

from .settings import Settings, SettingsError, load_cli_settings, load_settings, settings_fields

log = logging.getLogger("tradeguard")


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    hints = get_type_hints(Settings)
    for f in settings_fields():
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        env = f"TRADEGUARD_{f.name.upper()}"
        if hints[f.name] is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"(env {env}, default {default})")
        else:
            parser.add_argument(flag, dest=f.name, default=None, metavar=hints[f.name].__name__.upper(),
                                help=f"(env {env}, default {default!r})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tradeguard", description="gRPC risk-check sidecar for trading bots")
    cli = load_cli_settings()
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the sidecar")
    _add_setting_flags(serve)
    migrate = sub.add_parser("migrate", help="upgrade the database schema to the latest revision")
    _add_setting_flags(migrate)
    check = sub.add_parser("health", help="ask a running sidecar's gRPC health service (exit 0 when SERVING)")
    check.add_argument("--address", default=cli.health_address)
    check.add_argument("--service", default="", help="service name; empty = overall")
    check.add_argument("--timeout", type=float, default=3.0)
    check.add_argument("--tls-ca", default=cli.health_tls_ca)
    check.add_argument("--tls-cert", default=cli.health_tls_cert)
    check.add_argument("--tls-key", default=cli.health_tls_key)
    check.add_argument("--tls-server-name", default="")
    admin = sub.add_parser(
        "admin", help="call an AdminService RPC with the admin token (e.g. tradeguard admin GetFeatureFlags)",
        description="Calls tradeguard.v1.AdminService/METHOD with the JSON body and prints the JSON answer. The "
                    "token comes from --token-file, TRADEGUARD_ADMIN_TOKEN, TRADEGUARD_ADMIN_TOKEN_FILE, or the "
                    "file the sidecar created (<state dir>/admin.token, found from the same settings as serve).")
    admin.add_argument("method", help="AdminService method, e.g. PauseTrading, ResumeTrading, SetFeatureFlags")
    admin.add_argument("body", nargs="?", default="{}", help="request as JSON (default {})")
    admin.add_argument("--address", default=cli.admin_address)
    admin.add_argument("--token-file", default="", help="file holding the admin token")
    admin.add_argument("--state-dir", default=None, help="directory of the generated admin.token")
    admin.add_argument("--database-url", default=None, help="(to find admin.token next to the SQLite file)")
    admin.add_argument("--timeout", type=float, default=10.0)
    admin.add_argument("--tls-ca", default=cli.health_tls_ca)
    admin.add_argument("--tls-cert", default=cli.health_tls_cert)
    admin.add_argument("--tls-key", default=cli.health_tls_key)
    admin.add_argument("--tls-server-name", default="")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {f.name: getattr(args, f.name, None) for f in settings_fields()}
    return load_settings(None, overrides)


def _serve(settings: Settings) -> int:
    from .observability.logs import redact_secrets, settings_secrets, setup_logging
    from .sidecar import Sidecar

    setup_logging(settings.log_level, settings.log_json)
    redact_secrets(settings_secrets(settings))  # observability: secrets never reach the log
    # The store's writer threads must not starve behind a busy event loop (the default 5 ms GIL switch
    # interval let them write almost nothing under load; 1 ms keeps the backlog moving).
    sys.setswitchinterval(0.001)
    log.info("starting with settings %s", settings.redacted())
    try:
        sidecar = Sidecar(settings)
    except SettingsError as exc:
        log.error("%s", exc)
        return 2
    redact_secrets(sidecar.credentials.tokens())
    runner = asyncio.run
    if settings.uvloop:
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
            pass
    with contextlib.suppress(KeyboardInterrupt):  # the signal handler normally catches it first
        runner(sidecar.run_until_signalled())
    return 0


def _migrate(settings: Settings) -> int:
    from .auth import create_private_file, sqlite_path
    from .observability.logs import redact_secrets, settings_secrets, setup_logging
    from .store.migrate import migrate
    from .store.url import redact

    setup_logging(settings.log_level, settings.log_json)
    redact_secrets(settings_secrets(settings))  # observability: secrets never reach the log
    db_file = sqlite_path(settings.database_url)
    if db_file is not None and db_file.parent.is_dir():
        create_private_file(db_file)
    revision = migrate(settings.database_url)
    log.info("database %s is at revision %s", redact(settings.database_url), revision)
    return 0


def _channel(args: argparse.Namespace) -> Any:
    import grpc

    if args.tls_ca:
        with open(args.tls_ca, "rb") as fh:
            ca = fh.read()
        key = cert = None
        if args.tls_cert:
            with open(args.tls_cert, "rb") as fh:
                cert = fh.read()
            with open(args.tls_key, "rb") as fh:
                key = fh.read()
        creds = grpc.ssl_channel_credentials(ca, key, cert)
        options = [("grpc.ssl_target_name_override", args.tls_server_name)] if args.tls_server_name else []
        return grpc.secure_channel(args.address, creds, options=options)
    return grpc.insecure_channel(args.address)


def _health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with _channel(args) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            print(f"UNHEALTHY {exc.code().name}: {exc.details()}")
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _admin_token(args: argparse.Namespace) -> str:
    """The admin token as `serve` would find it: --token-file, admin_token, admin_token_file, the generated one."""
    from pathlib import Path

    from .auth import admin_token_path, check_token, read_token_file

    if args.token_file:
        return read_token_file("--token-file", Path(args.token_file))
    settings = load_settings(None, {"state_dir": args.state_dir, "database_url": args.database_url})
    path = admin_token_path(settings)
    if path is None:
        return check_token("admin_token", settings.admin_token)
    return read_token_file("admin token", path)


def _admin(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf import json_format

    from tradeguard.v1 import admin_service_pb2 as ad

    method = ad.DESCRIPTOR.services_by_name["AdminService"].methods_by_name.get(args.method)
    if method is None:
        names = ", ".join(m.name for m in ad.DESCRIPTOR.services_by_name["AdminService"].methods)
        print(f"tradeguard admin: no AdminService method {args.method!r}; one of: {names}", file=sys.stderr)
        return 2
    try:
        token = _admin_token(args)
        request = json_format.Parse(args.body, getattr(ad, method.input_type.name)())
    except (SettingsError, json_format.ParseError) as exc:
        print(f"tradeguard admin: {exc}", file=sys.stderr)
        return 2
    response_cls = getattr(ad, method.output_type.name)
    with _channel(args) as channel:
        call = channel.unary_unary(f"/tradeguard.v1.AdminService/{method.name}",
                                   request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=response_cls.FromString)
        try:
            reply = call(request, timeout=args.timeout, metadata=(("authorization", f"Bearer {token}"),))
        except grpc.RpcError as exc:
            print(f"tradeguard admin: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(json_format.MessageToJson(reply, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "health":
        return _health(args)
    if args.command == "admin":
        return _admin(args)
    try:
        settings = _settings(args)
    except SettingsError as exc:
        print(f"tradeguard: invalid setting: {exc}", file=sys.stderr)
        return 2
    if args.command == "migrate":
        return _migrate(settings)
    return _serve(settings)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
