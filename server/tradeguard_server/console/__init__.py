"""The operator console: static HTML, CSS and JavaScript served at `/` and `/console/...` of the HTTP listener.

The page holds no data and no secret, so it is served without a token; everything it shows comes from the HTTP API
itself (the same routes, guards and audit as any other client: reading with the trader or admin token, acting with
the admin token, sent by the page as `Authorization: Bearer ...`). The assets ship in the Python package
(`static/`), are read once at start, and are answered from memory: nothing a request names reaches the filesystem.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

__all__ = ["CONTENT_SECURITY_POLICY", "Asset", "Console", "load_console"]

# The page may load and talk to its own origin only: no inline script or style, no framing, no form posts elsewhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
INDEX = "index.html"
PREFIX = "/console/"


@dataclass(frozen=True, slots=True)
class Asset:
    """One file of the console, as answered."""

    body: bytes
    content_type: str
    etag: str  # a strong validator: the content's digest, so a changed file is never served from a stale cache

    def headers(self) -> dict[str, str]:
        return {
            "Content-Type": self.content_type,
            "ETag": self.etag,
            # Revalidated on every load (a 304 when unchanged): an upgraded sidecar's page is never mixed with an old
            # script from the cache.
            "Cache-Control": "no-cache",
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
            "Cross-Origin-Opener-Policy": "same-origin",
            "Cross-Origin-Resource-Policy": "same-origin",
        }


class Console:
    """The console's assets by URL path: `/` (index.html) and `/console/<file>`."""

    def __init__(self, files: dict[str, bytes]) -> None:
        if INDEX not in files:
            raise ValueError(f"console: {INDEX} is missing from the package's static files")
        self.assets: dict[str, Asset] = {}
        for name, body in files.items():
            suffix = name[name.rfind("."):] if "." in name else ""
            content_type = _TYPES.get(suffix)
            if content_type is None:
                raise ValueError(f"console: {name}: no content type for {suffix or 'a file without a suffix'}")
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            asset = Asset(body, content_type, etag)
            self.assets[PREFIX + name] = asset
            if name == INDEX:
                self.assets["/"] = asset

    def find(self, path: str) -> Asset | None:
        """The asset answered at `path` (the request's path, trailing slash removed), or None."""
        return self.assets.get(path)


def load_console() -> Console:
    """The console of the installed package (its `static/` files)."""
    static = resources.files(__package__).joinpath("static")
    files = {entry.name: entry.read_bytes() for entry in static.iterdir()
             if entry.is_file() and not entry.name.startswith(".")}
    return Console(files)
