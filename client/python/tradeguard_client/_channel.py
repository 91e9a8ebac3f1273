"""Channels: target, TLS / mTLS, channel options and call metadata."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

__all__ = ["TLS", "ChannelSpec", "Options", "call_metadata", "channel_options", "check_target"]

Options = Sequence[tuple[str, str | int]]
Pem = str | Path | bytes

USER_AGENT = "tradeguard-client-python/0.1"

DEFAULT_OPTIONS: tuple[tuple[str, str | int], ...] = (
    # The sidecar is next to the bot: after it restarts, reconnect within ~0.1 s rather than gRPC's
    # default 1 s (growing to 120 s), so a retried call or the next cycle finds it again quickly.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.primary_user_agent", USER_AGENT),
)


def _pem(value: Pem | None, what: str) -> bytes | None:
    """PEM bytes as given, or read from a file path."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    try:
        return Path(value).read_bytes()
    except OSError as exc:
        raise ValueError(f"{what}: cannot read {value}: {exc.strerror or exc}") from None


@dataclass(frozen=True, slots=True)
class TLS:
    """TLS for the channel. Each PEM is either the bytes or a path to the file.

    `root_ca`: the CA that signed the sidecar's certificate (None = the system roots).
    `client_cert` + `client_key`: the client's certificate for mTLS (give both or neither).
    `server_name`: the name to check the server's certificate against, when it differs from the target's
    host (e.g. connecting to 127.0.0.1 with a certificate for "tradeguard").
    """

    root_ca: Pem | None = None
    client_cert: Pem | None = None
    client_key: Pem | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("TLS: give client_cert and client_key together (mTLS), or neither")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.root_ca, "root_ca"),
            private_key=_pem(self.client_key, "client_key"),
            certificate_chain=_pem(self.client_cert, "client_cert"),
        )

    def options(self) -> list[tuple[str, str | int]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def channel_options(tls: TLS | None, extra: Options = ()) -> list[tuple[str, str | int]]:
    """Defaults, then TLS options, then `extra`; a later value for the same key wins."""
    merged: dict[str, str | int] = dict(DEFAULT_OPTIONS)
    if tls is not None:
        merged.update(tls.options())
    merged.update(dict(extra))
    return list(merged.items())


def check_target(target: str) -> str:
    """`host:port`, `[v6]:port`, `unix:/path` or `unix:///path` (anything gRPC accepts)."""
    if not isinstance(target, str) or not target.strip():
        raise ValueError(f"target: give 'host:port' or 'unix:/path', got {target!r}")
    return target.strip()


def call_metadata(token: str | None, extra: Sequence[tuple[str, str]] = ()) -> tuple[tuple[str, str], ...]:
    """`authorization: Bearer <token>` when a token is given, then `extra`."""
    out: list[tuple[str, str]] = []
    if token is not None:
        if not token or any(c.isspace() for c in token) or not token.isascii() or not token.isprintable():
            raise ValueError("token: must be non-empty printable ASCII without spaces")
        out.append(("authorization", f"Bearer {token}"))
    out.extend((k.lower(), v) for k, v in extra)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """Everything needed to open a channel, checked up front (bad targets and unreadable PEMs fail here)."""

    target: str
    credentials: grpc.ChannelCredentials | None
    options: tuple[tuple[str, str | int], ...]

    @classmethod
    def build(cls, target: str, tls: TLS | None, options: Options = ()) -> ChannelSpec:
        return cls(check_target(target), tls.credentials() if tls is not None else None,
                   tuple(channel_options(tls, options)))

    def sync(self) -> grpc.Channel:
        if self.credentials is None:
            return grpc.insecure_channel(self.target, options=self.options)
        return grpc.secure_channel(self.target, self.credentials, options=self.options)

    def aio(self) -> grpc.aio.Channel:
        """Open an asyncio channel; call it inside the event loop that will use the channel."""
        if self.credentials is None:
            return grpc.aio.insecure_channel(self.target, options=self.options)
        return grpc.aio.secure_channel(self.target, self.credentials, options=self.options)
