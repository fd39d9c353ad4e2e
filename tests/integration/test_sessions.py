"""Sessions on one real server: refresh tokens, password change, logout, account deletion,
and that a revoked token is refused everywhere and its connections close with 1008."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.integration.admins import create_admin, request, sign_in
from tests.integration.serverproc import ServerProcess
from tests.integration.users import (
    PASSWORD,
    SECRET,
    auth,
    closed_with,
    expect_pong,
    mint,
    register,
    user_ws,
)
from tests.integration.wsclient import recv_type, send_json, welcome

#: The bound within which a revoked session's connections are closed (the contract: 10 s).
BOUND = 3.0


@pytest.fixture
def server(server_factory: Any) -> ServerProcess:
    """A server whose tokens the tests can read (a known secret)."""
    return server_factory("--secret", SECRET)  # type: ignore[no-any-return]


@pytest.fixture
async def alice(server: ServerProcess) -> dict[str, Any]:
    """alice registered and signed in: the login's answer."""
    await register(server, "alice")
    return await sign_in(server, "alice")


async def handshake_refused(server: ServerProcess, token: str) -> tuple[int, str]:
    """The status and body of a handshake with ``token`` that the server refuses."""
    with pytest.raises(InvalidStatus) as refused:
        await connect(
            server.ws_url(), additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=5
        )
    response = refused.value.response
    return response.status_code, response.body.decode()


async def auth_ws(server: ServerProcess, token: str) -> ClientConnection:
    """A guest connection that signs in with an ``auth`` frame."""
    ws = await connect(server.ws_url(), open_timeout=5)
    await welcome(ws)
    reply = await auth(ws, token)
    assert reply["type"] == "auth", reply
    return ws


async def closed_within(ws: ClientConnection, seconds: float = BOUND) -> tuple[int, str]:
    """The close code and reason of ``ws``, which must close within ``seconds``."""
    started = time.monotonic()
    code, reason = await closed_with(ws, timeout=seconds + 1)
    assert time.monotonic() - started <= seconds, f"closed after {time.monotonic() - started:.1f} s"
    return code, reason


async def test_login_returns_a_session_and_me_says_who(
    server: ServerProcess, alice: dict[str, Any]
) -> None:
    """A login gives a 15-minute token with a sid and a refresh token; /api/me names the user."""
    claims = jwt.decode(alice["token"], SECRET, algorithms=["HS256"], audience="roomcast")
    assert claims["exp"] - claims["iat"] == 900
    assert len(claims["sid"]) == 22
    assert alice["refresh_token"].startswith(claims["sid"] + ".")
    assert alice["user"] == {"name": "alice", "admin": False}
    status, body = await request(server, "GET", "/api/me", bearer=alice["token"])
    assert status == 200
    assert set(body["user"]) == {"name", "admin", "created_at"}
    assert (body["user"]["name"], body["user"]["admin"]) == ("alice", False)
    assert (await request(server, "GET", "/api/me"))[0] == 401


async def test_refresh_rotates_and_a_used_token_signs_the_session_out(
    server: ServerProcess, alice: dict[str, Any]
) -> None:
    """A refresh rotates; the used refresh token presented again signs the session out."""
    status, fresh = await request(
        server, "POST", "/api/refresh", json={"refresh_token": alice["refresh_token"]}
    )
    assert status == 200, fresh
    assert set(fresh) == {"token", "expires_at", "refresh_token", "refresh_expires_at", "user"}
    assert fresh["refresh_token"] != alice["refresh_token"]
    sid = jwt.decode(fresh["token"], options={"verify_signature": False})["sid"]
    assert fresh["refresh_token"].startswith(sid + ".") and alice["refresh_token"].startswith(sid)
    ws = await user_ws(server, fresh["token"])
    status, body = await request(
        server, "POST", "/api/refresh", json={"refresh_token": alice["refresh_token"]}
    )
    assert status == 401 and body["error"]["code"] == "auth_failed"
    assert "used already" in body["error"]["message"]
    assert await closed_within(ws) == (1008, "signed out")
    for token in (alice["token"], fresh["token"]):
        assert (await request(server, "GET", "/api/me", bearer=token))[0] == 401
    status, body = await request(
        server, "POST", "/api/refresh", json={"refresh_token": fresh["refresh_token"]}
    )
    assert status == 401 and "signed out" in body["error"]["message"]


@pytest.mark.parametrize(
    "garbage", [None, 42, "", "not.a-refresh-token", "x" * 22 + "." + "y" * 43]
)
async def test_refresh_refuses_what_it_never_gave(server: ServerProcess, garbage: Any) -> None:
    """A missing, malformed or unknown refresh token is 401 auth_failed."""
    status, body = await request(server, "POST", "/api/refresh", json={"refresh_token": garbage})
    assert status == 401 and body["error"]["code"] == "auth_failed"


async def test_password_change_ends_the_other_sessions_and_closes_their_sockets(
    server: ServerProcess, alice: dict[str, Any]
) -> None:
    """A password change closes the other session's sockets (1008, 3 s); this one stays."""
    other = await sign_in(server, "alice")
    mine = await user_ws(server, alice["token"])
    theirs = await user_ws(server, other["token"])
    theirs_by_auth = await auth_ws(server, other["token"])
    status, body = await request(
        server,
        "POST",
        "/api/password",
        json={"old": PASSWORD, "new": "a brand new password"},
        bearer=alice["token"],
    )
    assert (status, body) == (200, {"revoked": 1})
    assert await closed_within(theirs) == (1008, "signed out")
    assert await closed_within(theirs_by_auth) == (1008, "signed out")
    await expect_pong(mine, "still-open")
    assert (await request(server, "GET", "/api/me", bearer=other["token"]))[0] == 401
    assert (await request(server, "GET", "/api/me", bearer=alice["token"]))[0] == 200
    status, _ = await request(
        server, "POST", "/api/login", json={"username": "alice", "password": PASSWORD}
    )
    assert status == 401
    await sign_in(server, "alice", "a brand new password")
    await mine.close()


async def test_password_change_needs_the_old_password_and_a_valid_new_one(
    server: ServerProcess, alice: dict[str, Any]
) -> None:
    """A wrong old password is 401; a bad new one is 400; nothing changes."""
    status, body = await request(
        server,
        "POST",
        "/api/password",
        json={"old": "not the password", "new": "a brand new password"},
        bearer=alice["token"],
    )
    assert (status, body["error"]["code"]) == (401, "auth_failed")
    status, body = await request(
        server,
        "POST",
        "/api/password",
        json={"old": PASSWORD, "new": "short"},
        bearer=alice["token"],
    )
    assert (status, body["error"]["code"]) == (400, "invalid_message")
    await sign_in(server, "alice")


async def test_logout_ends_this_session_and_everywhere_ends_all(
    server: ServerProcess, alice: dict[str, Any]
) -> None:
    """Logout ends this session and closes its sockets; logout everywhere ends them all."""
    other, third = await sign_in(server, "alice"), await sign_in(server, "alice")
    mine, theirs = await user_ws(server, alice["token"]), await user_ws(server, other["token"])
    assert await request(server, "POST", "/api/logout", bearer=alice["token"]) == (204, None)
    assert await closed_within(mine) == (1008, "signed out")
    await expect_pong(theirs, "other-session")
    assert (await request(server, "GET", "/api/me", bearer=alice["token"]))[0] == 401
    status, _ = await request(
        server, "POST", "/api/refresh", json={"refresh_token": alice["refresh_token"]}
    )
    assert status == 401
    status, _ = await request(
        server, "POST", "/api/logout", json={"everywhere": "yes"}, bearer=other["token"]
    )
    assert status == 400
    status, _ = await request(
        server, "POST", "/api/logout", json={"everywhere": True}, bearer=other["token"]
    )
    assert status == 204
    assert await closed_within(theirs) == (1008, "signed out")
    for token in (other["token"], third["token"]):
        assert (await request(server, "GET", "/api/me", bearer=token))[0] == 401


async def test_a_revoked_token_is_refused_at_the_handshake_and_by_auth(
    server: ServerProcess, alice: dict[str, Any]
) -> None:
    """After logout the token is 401 at the handshake and auth_failed in an auth frame."""
    assert (await request(server, "POST", "/api/logout", bearer=alice["token"]))[0] == 204
    status, body = await handshake_refused(server, alice["token"])
    assert status == 401 and "signed out" in body
    async with connect(server.ws_url(), open_timeout=5) as ws:
        await welcome(ws)
        reply = await auth(ws, alice["token"])
        assert reply["type"] == "error" and reply["payload"]["code"] == "auth_failed"
        assert "signed out" in reply["payload"]["message"]


async def test_a_token_without_a_session_is_refused(server: ServerProcess) -> None:
    """A token signed with the secret but without sid (older than sessions) must sign in again."""
    await register(server, "bob")
    status, body = await request(server, "GET", "/api/me", bearer=mint("bob"))
    assert status == 401 and "sign in again" in body["error"]["message"]
    status, _ = await handshake_refused(server, mint("bob"))
    assert status == 401


async def test_a_new_auth_replaces_the_connections_session(
    server: ServerProcess, alice: dict[str, Any]
) -> None:
    """A connection that re-authenticates with another session is closed only with that one."""
    other = await sign_in(server, "alice")
    ws = await user_ws(server, alice["token"])
    assert (await auth(ws, other["token"]))["type"] == "auth"
    assert (await request(server, "POST", "/api/logout", bearer=alice["token"]))[0] == 204
    await asyncio.sleep(0.3)
    await expect_pong(ws, "kept")
    assert (await request(server, "POST", "/api/logout", bearer=other["token"]))[0] == 204
    assert await closed_within(ws) == (1008, "signed out")


async def test_deleting_ones_account(server: ServerProcess, alice: dict[str, Any]) -> None:
    """DELETE /api/me needs the password, closes the sockets, leaves tombstones of messages."""
    ws = await user_ws(server, alice["token"])
    await send_json(ws, "join", {"room": "books"}, id="j")
    await recv_type(ws, "joined")
    await send_json(ws, "chat", {"room": "books", "message": "my secret words"}, id="c")
    await recv_type(ws, "ack")
    status, body = await request(
        server, "DELETE", "/api/me", json={"password": "wrong password"}, bearer=alice["token"]
    )
    assert (status, body["error"]["code"]) == (401, "auth_failed")
    status, _ = await request(
        server, "DELETE", "/api/me", json={"password": PASSWORD}, bearer=alice["token"]
    )
    assert status == 204
    assert await closed_within(ws) == (1008, "account deleted")
    assert (await request(server, "GET", "/api/me", bearer=alice["token"]))[0] == 401
    status, _ = await request(
        server, "POST", "/api/login", json={"username": "alice", "password": PASSWORD}
    )
    assert status == 401
    await register(server, "bob")
    bob = (await sign_in(server, "bob"))["token"]
    status, history = await request(server, "GET", "/api/rooms/books/messages", bearer=bob)
    assert status == 200
    [message] = history["messages"]
    assert message.get("deleted") is True and "message" not in message
    assert "my secret words" not in str(history)


async def test_a_user_banned_everywhere_is_refused(server: ServerProcess) -> None:
    """A user banned everywhere: socket closed, token, refresh and login refused; unban works."""
    await register(server, "root")
    await create_admin(server.data_dir, "root")
    root = (await sign_in(server, "root"))["token"]
    await register(server, "bob")
    bob = await sign_in(server, "bob")
    ws = await user_ws(server, bob["token"])
    status, body = await request(
        server, "PUT", "/api/admin/users/bob/ban", json={"reason": "spam"}, bearer=root
    )
    assert (status, body) == (200, {"ban": {"user": "bob", "until": None, "reason": "spam"}})
    assert await closed_within(ws) == (1008, "banned")
    status, body = await request(server, "GET", "/api/me", bearer=bob["token"])
    assert status == 401 and "banned" in body["error"]["message"]
    status, body = await handshake_refused(server, bob["token"])
    assert status == 401 and "banned" in body
    status, body = await request(
        server, "POST", "/api/refresh", json={"refresh_token": bob["refresh_token"]}
    )
    assert status == 401 and "banned" in body["error"]["message"]
    status, body = await request(
        server, "POST", "/api/login", json={"username": "bob", "password": PASSWORD}
    )
    assert status == 403
    assert body["error"] == {
        "code": "banned",
        "message": "you are banned from this server: spam",
        "until": None,
        "reason": "spam",
    }
    assert (await request(server, "DELETE", "/api/admin/users/bob/ban", bearer=root))[0] == 204
    await sign_in(server, "bob")
