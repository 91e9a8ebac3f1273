"""The console's asset table: what is served at which path, with which headers, and the files it refuses to load."""

from __future__ import annotations

import pytest

from tradeguard_server.console import CONTENT_SECURITY_POLICY, Console, load_console


def test_index_is_served_at_root_and_under_console_and_nothing_else_is_found() -> None:
    console = Console({"index.html": b"<!doctype html>", "app.js": b"1"})
    assert console.find("/") is console.find("/console/index.html")
    assert console.find("/console/app.js") is not None
    for path in ("/app.js", "/console", "/console/", "/console/../app.js", "/index.html", "/console/APP.JS"):
        assert console.find(path) is None, path


def test_asset_headers_carry_type_csp_and_a_content_etag() -> None:
    one = Console({"index.html": b"a"}).find("/")
    other = Console({"index.html": b"b"}).find("/")
    assert one is not None and other is not None
    headers = one.headers()
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert headers["Cache-Control"] == "no-cache" and headers["X-Content-Type-Options"] == "nosniff"
    assert one.etag != other.etag  # a changed file is a new validator


def test_a_file_without_a_known_type_or_a_missing_index_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match=r"notes\.txt: no content type for \.txt"):
        Console({"index.html": b"", "notes.txt": b""})
    with pytest.raises(ValueError, match=r"index\.html is missing"):
        Console({"console.js": b""})


def test_the_installed_package_has_the_page_its_script_style_and_icon() -> None:
    console = load_console()
    assert {"/", "/console/console.js", "/console/console.css", "/console/favicon.svg"} <= console.assets.keys()
