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


async def test_names_of_any_length_are_404_json_and_never_a_server_error(
    server: ServerProcess,
) -> None:
    """Names too long for a file system (255+ bytes), odd or many: each a JSON 404, no traceback."""
    names = ["a" * 300 + ".js", "b" * 255 + ".css", "%00.js", "%E2%80%AE.svg", "x.js%0Ay"]
    names += [f"miss-{i}.js" for i in range(500)]
    async with aiohttp.ClientSession() as http:
        for name in names:
            async with http.get(server.http_url(f"/static/{name}")) as resp:
                assert resp.status == 404, name
                assert (await resp.json())["error"]["code"] == "not_found", name
        async with http.get(server.http_url("/static/app.js")) as resp:
            assert resp.status == 200, "the page's own files are still served"
    assert server.stop() == 0
    assert "Traceback" not in server.stderr() and "internal error" not in server.stderr()
