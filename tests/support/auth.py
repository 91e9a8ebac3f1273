"""Call metadata for the sidecar's bearer tokens."""

from __future__ import annotations

Metadata = tuple[tuple[str, str], ...]


def bearer(token: str) -> Metadata:
    """gRPC metadata that presents `token` (an admin or a bot token): `authorization: Bearer <token>`."""
    return (("authorization", f"Bearer {token}"),)
