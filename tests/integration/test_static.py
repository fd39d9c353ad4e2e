"""The page and its files over HTTP: a strict CSP, and only the page's own files."""

from __future__ import annotations

import re

import aiohttp

from tests.integration.serverproc import ServerProcess


async def test_the_page_has_a_strict_csp_and_serves_every_file_it_names(
    server: ServerProcess,
) -> None:
    """/ sends a CSP without inline script; each /static file the page names is served, typed."""
    async with aiohttp.ClientSession() as http:
        async with http.get(server.http_url("/")) as resp:
            assert resp.status == 200
            csp = resp.headers["Content-Security-Policy"]
            page = await resp.text()
        assert "script-src 'self';" in csp and "unsafe-inline" not in csp
        assert (
            "frame-ancestors 'none'" in csp and resp.headers["X-Content-Type-Options"] == "nosniff"
        )
        assert not re.search(r"<script(?![^>]*\bsrc=)", page), "an inline script"
        assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page)
        assert assets, "the page names no /static file"
        for path in assets:
            async with http.get(server.http_url(path)) as resp:
                assert resp.status == 200, path
                kind = resp.headers["Content-Type"]
                assert kind.split(";")[0] in {
                    "text/javascript",
                    "text/css",
                    "image/svg+xml",
                    "image/png",
                    "application/json",
                }, path
                assert resp.headers["Content-Security-Policy"] == csp


async def test_nothing_else_is_served_from_static(server: ServerProcess) -> None:
    """Unknown names, other extensions and paths out of the folder are JSON 404s."""
    async with aiohttp.ClientSession() as http:
        for path in (
            "/static/nope.js",
            "/static/index.html",
            "/static/..%2F__init__.py",
            "/static/.hidden.js",
            "/static/../server.py",
        ):
            async with http.get(server.http_url(path)) as resp:
                assert resp.status == 404, path
                assert (await resp.json())["error"]["code"] == "not_found", path
