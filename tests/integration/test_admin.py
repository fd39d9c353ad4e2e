"""The admin HTTP API on a real server: only admins; bans, passwords, admins, accounts, rooms."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from tests.integration.admins import create_admin, request, sign_in
from tests.integration.serverproc import ServerProcess
from tests.integration.users import PASSWORD, closed_with, expect_pong, register, user_ws
from tests.integration.wsclient import recv_type, send_json

ISO_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")

#: Every admin route, with a body where it takes one.
ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/api/admin/rooms", None),
    ("DELETE", "/api/admin/rooms/books", None),
    ("GET", "/api/admin/users/bob", None),
    ("PUT", "/api/admin/users/bob/ban", {}),
    ("DELETE", "/api/admin/users/bob/ban", None),
    ("POST", "/api/admin/users/bob/password", {}),
    ("PUT", "/api/admin/users/bob/admin", None),
    ("DELETE", "/api/admin/users/bob/admin", None),
    ("DELETE", "/api/admin/users/bob", None),
]


@pytest.fixture
async def people(server: ServerProcess) -> dict[str, str]:
    """root (an admin, made by the CLI), alice and bob signed in: their tokens."""
    for name in ("root", "alice", "bob"):
        await register(server, name)
    await create_admin(server.data_dir, "root")
    return {name: (await sign_in(server, name))["token"] for name in ("root", "alice", "bob")}


async def closed_soon(ws: ClientConnection) -> tuple[int, str]:
    """``ws``'s close code and reason, within the 3 s bound."""
    started = time.monotonic()
    closed = await closed_with(ws, timeout=4.0)
    assert time.monotonic() - started <= 3.0
    return closed


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
async def test_only_admins_may(
    server: ServerProcess, people: dict[str, str], method: str, path: str, body: Any
) -> None:
    """Without a token 401; with a member's token 403 forbidden, and nothing happens."""
    status, _ = await request(server, method, path, json=body)
    assert status == 401
    status, answer = await request(server, method, path, json=body, bearer=people["alice"])
    assert (status, answer["error"]["code"]) == (403, "forbidden")
    status, me = await request(server, "GET", "/api/me", bearer=people["bob"])
    assert status == 200 and me["user"]["admin"] is False


async def test_a_login_says_who_is_an_admin(server: ServerProcess, people: dict[str, str]) -> None:
    """The admin's login and /api/me say admin: true."""
    assert (await sign_in(server, "root"))["user"] == {"name": "root", "admin": True}
    _, me = await request(server, "GET", "/api/me", bearer=people["root"])
    assert me["user"]["admin"] is True


async def test_ban_and_unban_a_user(server: ServerProcess, people: dict[str, str]) -> None:
    """A timed ban closes bob's sockets, shows in his record, refuses his login; unban lifts it."""
    root = people["root"]
    ws = await user_ws(server, people["bob"])
    status, body = await request(
        server,
        "PUT",
        "/api/admin/users/BOB/ban",
        json={"for": 3600, "reason": "cool off"},
        bearer=root,
    )
    assert status == 200, body
    ban = body["ban"]
    assert (ban["user"], ban["reason"]) == ("bob", "cool off") and ISO_Z.fullmatch(ban["until"])
    assert await closed_soon(ws) == (1008, "banned")
    status, body = await request(server, "GET", "/api/admin/users/bob", bearer=root)
    assert status == 200
    assert body["user"]["banned_until"] == ban["until"]
    assert body["user"]["ban_reason"] == "cool off" and body["user"]["admin"] is False
    status, body = await request(
        server, "POST", "/api/login", json={"username": "bob", "password": PASSWORD}
    )
    assert (status, body["error"]["code"], body["error"]["until"]) == (403, "banned", ban["until"])
    assert (await request(server, "DELETE", "/api/admin/users/bob/ban", bearer=root))[0] == 204
    status, body = await request(server, "GET", "/api/admin/users/bob", bearer=root)
    assert "banned_until" not in body["user"]
    await sign_in(server, "bob")
    for bad in (
        {"until": "yesterday"},
        {"until": "2001-01-01T00:00:00Z"},
        {"for": -5},
        {"for": 60, "until": "2099-01-01T00:00:00Z"},
        {"reason": "x" * 501},
        {"reason": 5},
    ):
        status, body = await request(
            server, "PUT", "/api/admin/users/bob/ban", json=bad, bearer=root
        )
        assert (status, body["error"]["code"]) == (400, "invalid_message"), bad
    status, body = await request(
        server,
        "PUT",
        "/api/admin/users/bob/ban",
        json={"until": "2099-01-01T00:00:00Z"},
        bearer=root,
    )
    assert body["ban"]["until"] == "2099-01-01T00:00:00.000Z"
    status, _ = await request(server, "PUT", "/api/admin/users/nobody/ban", json={}, bearer=root)
    assert status == 404
    status, body = await request(server, "PUT", "/api/admin/users/root/ban", json={}, bearer=root)
    assert status == 400 and "yourself" in body["error"]["message"]


async def test_reset_a_password(server: ServerProcess, people: dict[str, str]) -> None:
    """A reset gives a generated password (or the one given) and ends every session."""
    root = people["root"]
    ws = await user_ws(server, people["bob"])
    status, body = await request(server, "POST", "/api/admin/users/bob/password", bearer=root)
    assert status == 200 and len(body["password"]) >= 12
    assert await closed_soon(ws) == (1008, "signed out")
    assert (await request(server, "GET", "/api/me", bearer=people["bob"]))[0] == 401
    status, _ = await request(
        server, "POST", "/api/login", json={"username": "bob", "password": PASSWORD}
    )
    assert status == 401
    await sign_in(server, "bob", body["password"])
    status, body = await request(
        server,
        "POST",
        "/api/admin/users/bob/password",
        json={"password": "chosen by root"},
        bearer=root,
    )
    assert (status, body) == (200, {"password": "chosen by root"})
    await sign_in(server, "bob", "chosen by root")
    status, body = await request(
        server, "POST", "/api/admin/users/bob/password", json={"password": "short"}, bearer=root
    )
    assert status == 400


async def test_make_and_unmake_admins(server: ServerProcess, people: dict[str, str]) -> None:
    """Promoted, alice may use the admin API at once; demoted, her sessions end."""
    root = people["root"]
    assert (await request(server, "PUT", "/api/admin/users/alice/admin", bearer=root))[0] == 204
    status, _ = await request(server, "GET", "/api/admin/rooms", bearer=people["alice"])
    assert status == 200
    ws = await user_ws(server, people["alice"])
    assert (await request(server, "DELETE", "/api/admin/users/alice/admin", bearer=root))[0] == 204
    assert await closed_soon(ws) == (1008, "signed out")
    assert (await request(server, "GET", "/api/admin/rooms", bearer=people["alice"]))[0] == 401
    alice = (await sign_in(server, "alice"))["token"]
    assert (await request(server, "GET", "/api/admin/rooms", bearer=alice))[0] == 403
    assert (await request(server, "PUT", "/api/admin/users/zed/admin", bearer=root))[0] == 404


async def test_delete_a_user(server: ServerProcess, people: dict[str, str]) -> None:
    """An admin deletes bob's account: his sockets close, his login fails, he is not found."""
    root = people["root"]
    ws = await user_ws(server, people["bob"])
    assert (await request(server, "DELETE", "/api/admin/users/bob", bearer=root))[0] == 204
    assert await closed_soon(ws) == (1008, "account deleted")
    status, _ = await request(
        server, "POST", "/api/login", json={"username": "bob", "password": PASSWORD}
    )
    assert status == 401
    status, body = await request(server, "GET", "/api/admin/users/bob", bearer=root)
    assert (status, body["error"]["code"]) == (404, "not_found")
    assert (await request(server, "DELETE", "/api/admin/users/bob", bearer=root))[0] == 404


async def test_list_and_delete_rooms(server: ServerProcess, people: dict[str, str]) -> None:
    """Admins see every room, private ones too, and delete one: its members are told."""
    root = people["root"]
    status, created = await request(
        server,
        "POST",
        "/api/rooms",
        json={"name": "secret", "private": True, "members": ["bob"]},
        bearer=people["alice"],
    )
    assert status == 201, created
    bob = await user_ws(server, people["bob"])
    await send_json(bob, "join", {"room": "secret"}, id="j")
    await recv_type(bob, "joined")
    status, body = await request(server, "GET", "/api/admin/rooms", bearer=root)
    assert status == 200
    rooms = {room["name"]: room for room in body["rooms"]}
    secret = rooms["secret"]
    assert secret["private"] is True and secret["owner"] == "alice"
    assert set(secret) == {
        "name",
        "title",
        "private",
        "owner",
        "moderators",
        "topic",
        "slow_mode",
        "receipts",
        "member_count",
    }
    assert secret["member_count"] == 1
    assert (await request(server, "DELETE", "/api/admin/rooms/secret", bearer=root))[0] == 204
    removed = await recv_type(bob, "removed")
    assert removed["payload"]["room"] == "secret" and removed["payload"]["by"] == "root"
    status, body = await request(server, "GET", "/api/admin/rooms", bearer=root)
    assert "secret" not in {room["name"] for room in body["rooms"]}
    assert (await request(server, "DELETE", "/api/admin/rooms/secret", bearer=root))[0] == 404
    await expect_pong(bob, "still-connected")
    await bob.close()
