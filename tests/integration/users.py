"""Users for integration tests: tokens minted like the server's, sign-up, sign-in.

Servers started with ``--secret SECRET`` accept tokens minted here with PyJWT,
so tests can make the forged, expired and short-lived ones too.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import jwt
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.integration.serverproc import ServerProcess
from tests.integration.wsclient import RECV_TIMEOUT, recv_json, send_json, welcome

#: The secret test servers are started with (``--secret``).
SECRET = "integration-tests-secret-" + "0123456789abcdef" * 3
PASSWORD = "correct horse battery"


def mint(user: str, *, key: str = SECRET, algorithm: str = "HS256", **over: Any) -> str:
    """A token for ``user`` signed like the server's, with claims overridden by ``over``."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": user,
        "iss": "roomcast",
        "aud": "roomcast",
        "iat": now,
        "exp": now + 600,
    }
    claims.update(over)
    if algorithm == "none":
        return jwt.encode(claims, None, algorithm="none")
    return jwt.encode(claims, key, algorithm=algorithm)


async def call(
    server: ServerProcess,
    method: str,
    path: str,
    *,
    json: Any = None,
    data: bytes | None = None,
    bearer: str | None = None,
) -> tuple[int, Any]:
    """One HTTP request to the server: its status and JSON body."""
    headers = {"Authorization": f"Bearer {bearer}"} if bearer is not None else {}
    timeout = aiohttp.ClientTimeout(total=RECV_TIMEOUT * 2)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        async with http.request(
            method, server.http_url(path), json=json, data=data, headers=headers
        ) as resp:
            if resp.status == 204:
                assert not await resp.read()
                return 204, None
            assert resp.content_type == "application/json", await resp.text()
            return resp.status, await resp.json()


async def register(server: ServerProcess, name: str, password: str = PASSWORD) -> None:
    """Register ``name`` (must succeed)."""
    status, body = await call(
        server, "POST", "/api/register", json={"username": name, "password": password}
    )
    assert status == 201, body


async def login(server: ServerProcess, name: str, password: str = PASSWORD) -> str:
    """Log ``name`` in; its token."""
    status, body = await call(
        server, "POST", "/api/login", json={"username": name, "password": password}
    )
    assert status == 200, body
    return str(body["token"])


async def session_token(
    server: ServerProcess, name: str, password: str = PASSWORD, **over: Any
) -> str:
    """A token minted here (claims overridden by ``over``, a short ``exp`` say) in a real
    session of ``name``'s: a login's ``sid``, which the server checks on every token."""
    token = await login(server, name, password)
    sid = jwt.decode(token, options={"verify_signature": False})["sid"]
    return mint(name, sid=sid, **over)


async def sign_up(server: ServerProcess, name: str, password: str = PASSWORD) -> str:
    """Register ``name``, log it in, and return its token."""
    await register(server, name, password)
    return await login(server, name, password)


async def user_ws(server: ServerProcess, token: str, **options: Any) -> ClientConnection:
    """A connection signed in with ``token`` on the handshake, past its welcome.

    ``options`` go to ``websockets``' ``connect`` (``max_size=None`` for big frames).
    """
    ws = await connect(server.ws_url(), additional_headers=bearer(token), open_timeout=5, **options)
    await welcome(ws)
    return ws


async def create_team(server: ServerProcess, tokens: dict[str, str]) -> dict[str, Any]:
    """alice creates the private room team with member bob; the 201 body."""
    status, body = await call(
        server,
        "POST",
        "/api/rooms",
        json={"name": "team", "private": True, "members": ["bob"]},
        bearer=tokens["alice"],
    )
    assert status == 201, body
    return body  # type: ignore[no-any-return]


def bearer(token: str) -> dict[str, str]:
    """The handshake header that signs a WebSocket in with ``token``."""
    return {"Authorization": f"Bearer {token}"}


async def auth(ws: ClientConnection, token: str, fid: str = "auth") -> dict[str, Any]:
    """Send ``auth`` with ``token``; the ``auth`` or ``error`` frame answering it."""
    await send_json(ws, "auth", {"token": token}, id=fid)
    async with asyncio.timeout(RECV_TIMEOUT):
        while True:
            frame = await recv_json(ws)
            if frame["type"] in ("auth", "error") and frame.get("id") == fid:
                return frame


async def closed_with(ws: ClientConnection, timeout: float = RECV_TIMEOUT) -> tuple[int, str]:
    """Read (and drop) frames until the server closes ``ws``; its close code and reason."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    except ConnectionClosed as exc:
        assert exc.rcvd is not None, "the connection ended without a close frame"
        return exc.rcvd.code, exc.rcvd.reason
    raise AssertionError("unreachable")


async def expect_pong(ws: ClientConnection, fid: str) -> None:
    """A ``ping`` gets its ``pong`` (nothing else that matters in between)."""
    await send_json(ws, "ping", {"n": fid}, id=fid)
    async with asyncio.timeout(RECV_TIMEOUT):
        while True:
            frame = await recv_json(ws)
            if frame["type"] == "pong" and frame.get("id") == fid:
                assert frame["payload"] == {"n": fid}
                return
