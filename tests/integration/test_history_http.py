"""History over HTTP, and tokens over HTTP and WebSocket (tokens minted with PyJWT)."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect

from tests.integration.serverproc import ServerFactory, ServerProcess
from tests.integration.users import PASSWORD, SECRET, login, mint
from tests.integration.wsclient import recv_type, send_json, welcome


@pytest.fixture
async def server(server_factory: ServerFactory) -> ServerProcess:
    """A server whose tokens the tests can mint, with users alice and carol registered."""
    server = server_factory("--secret", SECRET)
    async with aiohttp.ClientSession() as http:
        for name in ("alice", "carol"):
            body = {"username": name, "password": PASSWORD}
            async with http.post(server.http_url("/api/register"), json=body) as resp:
                assert resp.status == 201, await resp.text()
    return server


async def fill(server: ServerProcess, room: str, count: int) -> None:
    async with connect(server.ws_url()) as ws:
        await welcome(ws)
        await send_json(ws, "join", {"room": room})
        await recv_type(ws, "joined")
        for i in range(count):
            await send_json(ws, "chat", {"room": room, "message": f"m{i + 1}"}, id=f"f{i}")
        for _ in range(count):
            await recv_type(ws, "ack")


async def get(
    server: ServerProcess, path: str, bearer: str | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer is not None else {}
    async with aiohttp.ClientSession() as http:
        async with http.get(server.http_url(path), headers=headers) as resp:
            assert resp.content_type == "application/json"
            return resp.status, await resp.json(), dict(resp.headers)


async def test_pages_of_history_with_a_token(server: ServerProcess) -> None:
    """GET /api/rooms/r/messages pages with before/limit, oldest first, has_more."""
    await fill(server, "books", 7)
    status, body, _ = await get(
        server, "/api/rooms/books/messages?limit=3", await login(server, "alice")
    )
    assert status == 200
    assert body["room"] == "books" and body["has_more"] is True
    assert [m["seq"] for m in body["messages"]] == [5, 6, 7]
    first = body["messages"][0]
    assert first["message"] == "m5" and first["type"] == "chat"
    assert first["timestamp"].endswith("Z") and first["message_id"]
    status, body, _ = await get(
        server, "/api/rooms/books/messages?before=5&limit=10", await login(server, "alice")
    )
    assert [m["seq"] for m in body["messages"]] == [1, 2, 3, 4]
    assert body["has_more"] is False
    status, body, _ = await get(
        server, "/api/rooms/empty-room/messages", await login(server, "alice")
    )
    assert (status, body["messages"], body["has_more"]) == (200, [], False)


async def test_same_history_over_http_and_websocket(server: ServerProcess) -> None:
    """The HTTP page equals the WebSocket history page for the same query."""
    await fill(server, "same", 4)
    _, http_body, _ = await get(
        server, "/api/rooms/same/messages?limit=10", await login(server, "alice")
    )
    async with connect(server.ws_url()) as ws:
        await welcome(ws)
        await send_json(ws, "history", {"room": "same", "limit": 10}, id="h")
        reply = await recv_type(ws, "history")
    assert reply["id"] == "h"
    assert reply["payload"] == http_body


@pytest.mark.parametrize(
    "bearer",
    [
        None,
        mint("nobody-registered"),
        "not-a-jwt",
        mint("alice", key="some-other-secret-" + "x" * 40),
        mint("alice", exp=int(time.time()) - 10),
        mint("alice", aud="elsewhere"),
    ],
    ids=["missing", "unknown-user", "garbage", "forged", "expired", "audience"],
)
async def test_history_needs_a_valid_token(server: ServerProcess, bearer: str | None) -> None:
    """No token, one for no user, a garbage, forged, expired or foreign one: 401 auth_failed."""
    status, body, headers = await get(server, "/api/rooms/lobby/messages", bearer)
    assert status == 401
    assert body["error"]["code"] == "auth_failed"
    assert headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=101", "limit=x", "before=0", "before=-1", "before=1e3"],
)
async def test_bad_paging_is_400(server: ServerProcess, query: str) -> None:
    """before/limit out of range or not integers: 400 JSON invalid_message."""
    status, body, _ = await get(
        server, f"/api/rooms/lobby/messages?{query}", await login(server, "alice")
    )
    assert status == 400
    assert body["error"]["code"] == "invalid_message"


async def test_bad_room_name_is_400(server: ServerProcess) -> None:
    """A room name outside [a-z0-9][a-z0-9_-]{0,63} is 400 invalid_message."""
    status, body, _ = await get(
        server, "/api/rooms/Not%20A%20Room/messages", await login(server, "alice")
    )
    assert status == 400
    assert body["error"]["code"] == "invalid_message"


async def test_websocket_auth_with_a_token(server: ServerProcess) -> None:
    """auth with a valid token makes the connection that registered user; a forged one fails."""
    async with connect(server.ws_url()) as ws:
        await welcome(ws)
        await send_json(ws, "auth", {"token": mint("alice", key="wrong-" + "k" * 40)}, id="a1")
        failed = await recv_type(ws, "error")
        assert failed["id"] == "a1" and failed["payload"]["code"] == "auth_failed"
        await send_json(ws, "auth", {"token": await login(server, "carol")}, id="a2")
        ok = await recv_type(ws, "auth")
        assert ok["id"] == "a2"
        assert ok["payload"] == {"ok": True, "user": {"name": "carol", "guest": False}}
        await send_json(ws, "chat", {"message": "signed in"}, id="c1")
        chat = await recv_type(ws, "chat")
        assert chat["payload"]["from"] == "carol"


async def test_password_guessing_is_throttled(server: ServerProcess) -> None:
    """After five attempts for one name from one address, logins get 429 with Retry-After."""
    statuses = []
    async with aiohttp.ClientSession() as http:
        for i in range(7):
            body = {"username": "alice", "password": f"guess number {i}"}
            async with http.post(server.http_url("/api/login"), json=body) as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    assert int(resp.headers["Retry-After"]) >= 1
                    assert (await resp.json())["error"]["code"] == "rate_limited"
        body = {"username": "carol", "password": PASSWORD}
        async with http.post(server.http_url("/api/login"), json=body) as resp:
            assert resp.status == 200, "another user is not throttled"
    assert statuses == [401] * 5 + [429] * 2
