"""Helpers for sessions and admin tests: the ``roomcast admin`` command, sign-ins with
refresh tokens, and HTTP calls that may answer 204."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.integration.serverproc import ServerProcess
from tests.integration.users import PASSWORD
from tests.integration.wsclient import RECV_TIMEOUT


def run_admin(
    *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``roomcast admin ARGS`` with ``stdin``; its exit status and output."""
    full_env = {"ROOMCAST_PASSWORD_HASH": "small", **os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "roomcast", "admin", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
        check=False,
    )


async def admin(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """:func:`run_admin` without blocking the loop."""
    return await asyncio.to_thread(run_admin, *args, stdin=stdin)


async def create_admin(data_dir: Path | str, name: str, *extra: str) -> None:
    """Make ``name`` (with the password :data:`PASSWORD`) an admin with the CLI."""
    done = await admin("--data-dir", str(data_dir), *extra, "create-admin", name, stdin=PASSWORD)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{name} is an admin\n"


async def request(
    server: ServerProcess,
    method: str,
    path: str,
    *,
    json: Any = None,
    bearer: str | None = None,
) -> tuple[int, Any]:
    """One HTTP request: its status and JSON body (None for 204)."""
    headers = {"Authorization": f"Bearer {bearer}"} if bearer is not None else {}
    timeout = aiohttp.ClientTimeout(total=RECV_TIMEOUT * 2)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        async with http.request(method, server.http_url(path), json=json, headers=headers) as resp:
            if resp.status == 204:
                assert not await resp.read()
                return 204, None
            assert resp.content_type == "application/json", await resp.text()
            return resp.status, await resp.json()


async def sign_in(server: ServerProcess, name: str, password: str = PASSWORD) -> dict[str, Any]:
    """Log ``name`` in: the whole answer (token, refresh_token, expiries, user)."""
    status, body = await request(
        server, "POST", "/api/login", json={"username": name, "password": password}
    )
    assert status == 200, body
    return body  # type: ignore[no-any-return]
