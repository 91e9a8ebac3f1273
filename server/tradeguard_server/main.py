"""Entry point: `tradeguard serve | migrate | health | admin | alert-test | restore`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import MISSING
from typing import Any, get_type_hints

from .settings import (
    HELP,
    PRECEDENCE,
    Settings,
    SettingsError,
    describe_sources,
    load_cli_settings,
    load_settings,
    settings_fields,
)

log = logging.getLogger("tradeguard")


# The settings `tradeguard migrate` uses; serve takes them all.
MIGRATE_SETTINGS = ("database_url", "log_level", "log_json", "config", "strict")


def _add_setting_flags(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    hints = get_type_hints(Settings)
    for f in settings_fields():
        if names is not None and f.name not in names:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        env = f"TRADEGUARD_{f.name.upper()}"
        what = HELP.get(f.name, "see README, Settings").replace("%", "%%")
        if hints[f.name] is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{what} (env {env}; default {str(default).lower()})")
        else:
            parser.add_argument(flag, dest=f.name, default=None, metavar=_metavar(f.name, hints[f.name]),
                                help=f"{what} (env {env}; default {default!r})")


def _metavar(name: str, kind: Any) -> str:
    if name == "config" or name.endswith(("_file", "_dir")) or name.startswith("tls_"):
        return "PATH"
    if name.endswith("listen"):
        return "HOST:PORT"
    if name.endswith("_url") or name.endswith("_endpoint"):
        return "URL"
    return "SECONDS" if name.endswith("_s") else str(kind.__name__).upper()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tradeguard", description="gRPC risk-check sidecar for trading bots",
        epilog=f"Settings: {PRECEDENCE}. README.md, \"Settings\", lists them all.")
    cli = load_cli_settings()
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve", help="run the sidecar", description="Run the sidecar. Every setting is a flag, an environment "
        f"variable TRADEGUARD_<NAME> and a key of the --config file; precedence: {PRECEDENCE}.")
    _add_setting_flags(serve)
    migrate = sub.add_parser("migrate", help="upgrade the database schema to the latest revision",
                             description="Upgrade the database schema to the latest revision (serve does it at "
                                         "start unless --no-migrate-on-start).")
    _add_setting_flags(migrate, MIGRATE_SETTINGS)
    check = sub.add_parser("health", help="ask a running sidecar's gRPC health service (exit 0 when SERVING)")
    check.add_argument("--address", default=cli.health_address,
                       help="the sidecar's host:port or unix:/path (env TRADEGUARD_HEALTH_ADDRESS)")
    check.add_argument("--service", default="", help="service name; empty = overall")
    check.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    _add_tls_flags(check, cli)
    admin = sub.add_parser(
        "admin", help="call an AdminService RPC with the admin token (e.g. tradeguard admin GetFeatureFlags)",
        description="Calls tradeguard.v1.AdminService/METHOD with the JSON body and prints the JSON answer. The "
                    "token comes from --token-file, TRADEGUARD_ADMIN_TOKEN, TRADEGUARD_ADMIN_TOKEN_FILE, or the "
                    "file the sidecar created (<state dir>/admin.token, found from the same settings as serve).")
    admin.add_argument("method", help="AdminService method, e.g. PauseTrading, ResumeTrading, SetFeatureFlags")
    admin.add_argument("body", nargs="?", default="{}", help="request as JSON (default {})")
    admin.add_argument("--address", default=cli.admin_address,
                       help="the sidecar's host:port or unix:/path (env TRADEGUARD_ADMIN_ADDRESS)")
    admin.add_argument("--token-file", default="", help="file holding the admin token")
    admin.add_argument("--state-dir", default=None, help="directory of the generated admin.token")
    admin.add_argument("--database-url", default=None, help="(to find admin.token next to the SQLite file)")
    admin.add_argument("--config", default=None, help="the sidecar's settings file (to find its admin token)")
    admin.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer")
    _add_tls_flags(admin, cli)
    alert_test = sub.add_parser(
        "alert-test", help="send one test alert through every configured notifier (exit 0 when all delivered)",
        description="Sends one test alert through every notifier the settings configure (alert_webhook_url, "
                    "alert_slack_webhook_url, alert_discord_webhook_url, alert_telegram_bot_token + "
                    "alert_telegram_chat_id), read from the same flags, environment and --config file as serve; "
                    "prints OK or FAILED with the error per notifier. Exit 1 when any failed, 2 when none is "
                    "configured.")
    _add_setting_flags(alert_test)
    _add_restore_parser(sub, cli)
    return parser


def _add_restore_parser(sub: Any, cli: Any) -> None:
    """`tradeguard restore`: AdminService.RestoreRiskState from the command line (README "History retention and
    restore")."""
    restore = sub.add_parser(
        "restore", help="put a trader back to the state its history recorded at a time (dry run unless --apply)",
        description="Calls AdminService.RestoreRiskState on a running sidecar with the admin token (found as "
                    "`tradeguard admin` finds it) and prints the answer as JSON: the state restored, or with no "
                    "--apply the state it would restore (nothing changes).")
    restore.add_argument("--trader-id", required=True, help="the trader")
    restore.add_argument("--account-id", required=True, help="the trader's account")
    restore.add_argument("--at", required=True, metavar="RFC3339",
                         help="the point in time, e.g. 2026-12-01T10:00:00Z: the newest history row at or before it "
                              "is restored")
    restore.add_argument("--reason", default="", help="why (audited; required with --apply)")
    restore.add_argument("--apply", action="store_true", help="restore for real (default: dry run)")
    restore.add_argument("--address", default=cli.admin_address,
                         help="the sidecar's host:port or unix:/path (env TRADEGUARD_ADMIN_ADDRESS)")
    restore.add_argument("--token-file", default="", help="file holding the admin token")
    restore.add_argument("--state-dir", default=None, help="directory of the generated admin.token")
    restore.add_argument("--database-url", default=None, help="(to find admin.token next to the SQLite file)")
    restore.add_argument("--config", default=None, help="the sidecar's settings file (to find its admin token)")
    restore.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer")
    _add_tls_flags(restore, cli)


def _add_tls_flags(parser: argparse.ArgumentParser, cli: Any) -> None:
    parser.add_argument("--tls-ca", default=cli.health_tls_ca,
                        help="CA file: connect with TLS, trusting it (env TRADEGUARD_HEALTH_TLS_CA)")
    parser.add_argument("--tls-cert", default=cli.health_tls_cert,
                        help="client certificate file, for mTLS (env TRADEGUARD_HEALTH_TLS_CERT)")
    parser.add_argument("--tls-key", default=cli.health_tls_key,
                        help="client key file, for mTLS (env TRADEGUARD_HEALTH_TLS_KEY)")
    parser.add_argument("--tls-server-name", default="", help="name expected in the sidecar's certificate")


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {f.name: getattr(args, f.name, None) for f in settings_fields()}
    return load_settings(None, overrides)


def _start_logging(settings: Settings, serving: bool = True) -> None:
    """Logging as the settings say; then what loading the settings found (unknown variables...) and where each
    given setting came from, once."""
    from .observability.logs import redact_secrets, settings_secrets, setup_logging

    setup_logging(settings.log_level, settings.log_json)
    redact_secrets(settings_secrets(settings))  # observability: secrets never reach the log
    for warning in settings.warnings:
        log.warning("settings: %s", warning)
    log.info("%s", describe_sources(settings, flags_note=serving))


def _serve(settings: Settings) -> int:
    from .observability.logs import redact_secrets
    from .sidecar import Sidecar, StartupError

    _start_logging(settings)
    # The store's writer threads must not starve behind a busy event loop (the default 5 ms GIL switch
    # interval let them write almost nothing under load; 1 ms keeps the backlog moving).
    sys.setswitchinterval(0.001)
    log.debug("starting with settings %s", settings.redacted())
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
    try:
        with contextlib.suppress(KeyboardInterrupt):  # the signal handler normally catches it first
            runner(sidecar.run_until_signalled())
    except StartupError as exc:  # one line with the fix, never a traceback (--log-level debug shows it)
        log.debug("start-up failure", exc_info=exc.__cause__ or exc)
        log.error("cannot start: %s", exc)
        return 1
    return 0


def _migrate(settings: Settings) -> int:
    from .auth import create_private_file, sqlite_path
    from .store.migrate import migrate
    from .store.probe import classify
    from .store.url import redact

    _start_logging(settings, serving=False)
    if settings.database_url == "memory":
        log.error("migrate: database_url is memory: there is no schema to migrate; set --database-url, "
                  "TRADEGUARD_DATABASE_URL, DB_URL or DB_HOST...")
        return 2
    db_file = sqlite_path(settings.database_url)
    if db_file is not None and db_file.parent.is_dir():
        create_private_file(db_file)
    try:
        revision = migrate(settings.database_url)
    except Exception as exc:  # one line with the fix, never a traceback (--log-level debug shows it)
        log.debug("migration failure", exc_info=exc)
        problem = classify(settings.database_url, exc)
        log.error("migrate: %s", problem.message)
        return 1
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
    settings = load_settings(None, {"state_dir": args.state_dir, "database_url": args.database_url,
                                    "config": args.config})
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


def _alert_test(settings: Settings) -> int:
    """`tradeguard alert-test`: one test alert per configured notifier; OK / FAILED each (never a secret)."""
    from .alerts.sendtest import send_test_alert
    from .observability.logs import redact_secrets, settings_secrets, setup_logging

    setup_logging(settings.log_level, settings.log_json)
    redact_secrets(settings_secrets(settings))
    results = asyncio.run(send_test_alert(settings))
    if not results:
        print("tradeguard alert-test: no notifier configured: set alert_webhook_url, alert_slack_webhook_url, "
              "alert_discord_webhook_url, or alert_telegram_bot_token and alert_telegram_chat_id "
              "(flags --alert-..., TRADEGUARD_ALERT_..., or the --config file)", file=sys.stderr)
        return 2
    for name, where, error in results:
        print(f"{name} ({where}): " + ("OK" if not error else f"FAILED: {error}"))
    return 1 if any(error for _name, _where, error in results) else 0


def _restore(args: argparse.Namespace) -> int:
    """`tradeguard restore`: exit 0 with the answer as JSON, 1 when the sidecar refuses, 2 for bad arguments."""
    import grpc
    from google.protobuf import json_format
    from google.protobuf.timestamp_pb2 import Timestamp

    from tradeguard.v1 import admin_service_pb2 as ad

    at = Timestamp()
    try:
        at.FromJsonString(args.at.strip())
    except ValueError:
        print(f"tradeguard restore: --at: expected an RFC 3339 time such as 2026-12-01T10:00:00Z, got {args.at!r}",
              file=sys.stderr)
        return 2
    if args.apply and not args.reason.strip():
        print("tradeguard restore: --reason is required with --apply (it is audited)", file=sys.stderr)
        return 2
    try:
        token = _admin_token(args)
    except SettingsError as exc:
        print(f"tradeguard restore: {exc}", file=sys.stderr)
        return 2
    request = ad.RestoreRiskStateRequest(trader_id=args.trader_id, account_id=args.account_id, at=at,
                                         reason=args.reason, dry_run=not args.apply)
    with _channel(args) as channel:
        call = channel.unary_unary("/tradeguard.v1.AdminService/RestoreRiskState",
                                   request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=ad.RestoreRiskStateResponse.FromString)
        try:
            reply = call(request, timeout=args.timeout, metadata=(("authorization", f"Bearer {token}"),))
        except grpc.RpcError as exc:
            print(f"tradeguard restore: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(json_format.MessageToJson(reply, indent=2, preserving_proto_field_name=True,
                                    always_print_fields_with_no_presence=True))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "health":
        return _health(args)
    if args.command == "admin":
        return _admin(args)
    if args.command == "restore":
        return _restore(args)
    try:
        settings = _settings(args)
    except SettingsError as exc:
        print(f"tradeguard {args.command}: invalid setting: {exc}", file=sys.stderr)
        return 2
    if args.command == "migrate":
        return _migrate(settings)
    if args.command == "alert-test":
        return _alert_test(settings)
    return _serve(settings)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
