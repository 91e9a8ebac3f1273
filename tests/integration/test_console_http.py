"""The operator console as the HTTP listener serves it (no browser): the page and its assets with their content types,
a strict Content-Security-Policy and revalidated caching, served without a token while every data call keeps the
API's token rules; unknown paths still 404, and the console is not on the metrics listener."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import aiohttp
import pytest

from tests.integration.test_http_api import http_sidecar
from tradeguard_server.console import CONTENT_SECURITY_POLICY, load_console

pytestmark = pytest.mark.integration

ADMIN = "console-admin-token-0123456789abcdef"
TRADER = "console-trader-token-0123456789abcdef"
TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}


class _Refs(HTMLParser):
    """The URLs an HTML page loads (script src, link href), its inline scripts and its style attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0
        self.style_attributes = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "script":
            if named.get("src"):
                self.urls.append(str(named["src"]))
            else:
                self.inline_scripts += 1
        if tag == "link" and named.get("href"):
            self.urls.append(str(named["href"]))
        if "style" in named:
            self.style_attributes += 1


def _refs(html: str) -> _Refs:
    parser = _Refs()
    parser.feed(html)
    return parser


async def test_page_and_every_asset_it_loads_are_served_without_a_token_with_content_type_and_csp() -> None:
    async with http_sidecar(admin_token=ADMIN, trader_token=TRADER) as (_sc, http):
        status, headers, html = await http("GET", "/")
        assert status == 200
        assert headers["Content-Type"] == "text/html; charset=utf-8"
        assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert "default-src 'self'" in CONTENT_SECURITY_POLICY and "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Cache-Control"] == "no-cache" and headers["ETag"].startswith('"')
        refs = _refs(html)
        assert refs.inline_scripts == 0 and refs.style_attributes == 0  # the CSP would block them
        assert sorted(refs.urls) == ["/console/console.css", "/console/console.js", "/console/favicon.svg"]
        for url in refs.urls:
            status, headers, body = await http("GET", url)
            assert status == 200, url
            assert headers["Content-Type"] == TYPES[url[url.rfind("."):]], url
            assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
            assert body
        # the data is not: the same routes, the same rules
        status, _, error = await http("GET", "/v1/risk/state?trader_id=bot-1&account_id=acct-1")
        assert status == 401 and error["code"] == 16
        status, _, _ = await http("GET", "/v1/risk/state?trader_id=bot-1&account_id=acct-1", token=TRADER)
        assert status == 200
        status, _, error = await http("GET", "/v1/admin/bindings", token=TRADER)
        assert status == 403 and error["code"] == 7


async def test_an_unchanged_asset_is_revalidated_with_304_and_head_answers_the_headers() -> None:
    async with http_sidecar() as (_sc, http):
        status, headers, _ = await http("GET", "/console/console.js")
        assert status == 200
        etag = headers["ETag"]
        status, again, body = await http("GET", "/console/console.js", headers={"If-None-Match": etag})
        assert status == 304 and body == "" and again["ETag"] == etag
        status, _, body = await http("GET", "/console/console.js", headers={"If-None-Match": '"another"'})
        assert status == 200 and body
        async with aiohttp.ClientSession() as session, session.head(http.base + "/") as reply:
            assert reply.status == 200 and reply.headers["Content-Type"] == "text/html; charset=utf-8"
        status, headers, _ = await http("POST", "/", {})
        assert status == 405 and headers["Allow"] == "GET, HEAD"


async def test_unknown_paths_around_the_console_still_answer_404() -> None:
    async with http_sidecar(metrics_listen="127.0.0.1:0") as (sc, http):
        for path in ("/index.html", "/console", "/console/nope.js", "/console/..%2Fconsole.js",
                     "/console/../console/console.js.map", "/console/static/console.js", "/favicon.ico",
                     "/console/console.js/extra", "/console/%2e%2e/__init__.py"):
            status, _, error = await http("GET", path)
            assert status == 404 and error["code"] == 5, path
        assert (await http("GET", "/console/index.html"))[0] == 200
        async with aiohttp.ClientSession() as session:
            for path in ("/", "/console/console.js"):
                async with session.get(f"http://{sc.metrics_address}{path}") as reply:
                    assert reply.status == 404, path


async def test_a_page_of_another_site_cannot_load_the_console_or_drive_the_api_through_it() -> None:
    async with http_sidecar() as (_sc, http):
        status, _, error = await http("GET", "/", headers={"Sec-Fetch-Site": "cross-site"})
        assert status == 403 and error["code"] == 7
        status, _, _ = await http("GET", "/", headers={"Sec-Fetch-Site": "none"})  # typed or bookmarked: served
        assert status == 200


def test_console_assets_name_no_other_origin_and_keep_the_token_out_of_urls() -> None:
    console = load_console()
    for path, asset in console.assets.items():
        text = asset.body.decode()
        others = set(re.findall(r"https?://[^\s\"')]+", text)) - {"http://www.w3.org/2000/svg"}
        assert not others, (path, others)  # no CDN, no web font, nothing fetched from elsewhere
    script = console.assets["/console/console.js"].body.decode()
    assert "sessionStorage" in script and "localStorage" not in script
    assert "innerHTML" not in script and "eval(" not in script
    assert "EventSource" not in script.replace("EventSource cannot", "")  # fetch() streams carry the token header
