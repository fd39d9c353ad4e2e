"""Private rooms, posting over HTTP, and direct messages over real sockets.

The server runs with a known ``--secret``; alice, bob and carol are
registered and logged in through the HTTP API before each test.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.integration.serverproc import ServerFactory, ServerProcess
from tests.integration.users import SECRET, bearer, call, create_team, sign_up, user_ws
from tests.integration.wsclient import (
    answer,
    recv_json,
    recv_type,
    send_json,
    welcome,
)

#: How long a test waits to be sure a frame does not arrive.
QUIET = 0.5


@pytest.fixture
async def server(server_factory: ServerFactory) -> ServerProcess:
    """A server with a known secret (rate limits as default)."""
    return server_factory("--secret", SECRET)


async def nothing_of(ws: ClientConnection, kind: str) -> None:
    """No frame of type ``kind`` arrives for :data:`QUIET` seconds."""
    try:
        async with asyncio.timeout(QUIET):
            while True:
                frame = await recv_json(ws)
                assert frame["type"] != kind, frame
    except TimeoutError:
        pass


# -- private rooms ------------------------------------------------------------------


async def test_create_a_private_room(server: ServerProcess, tokens: dict[str, str]) -> None:
    """POST /api/rooms: 201 with owner and members; again 409; bad member 400; no token 401."""
    body = await create_team(server, tokens)
    room = body["room"]
    assert room["name"] == "team" and room["private"] is True
    assert room["owner"] == "alice" and room["members"] == ["bob"]
    assert room["member_count"] == 0
    again = {"name": "team", "private": True, "members": ["bob"]}
    status, body = await call(server, "POST", "/api/rooms", json=again, bearer=tokens["bob"])
    assert (status, body["error"]["code"]) == (409, "room_exists")
    unknown = {"name": "other", "private": True, "members": ["bob", "nobody"]}
    status, body = await call(server, "POST", "/api/rooms", json=unknown, bearer=tokens["alice"])
    assert (status, body["error"]["code"]) == (400, "unknown_user")
    status, body = await call(server, "POST", "/api/rooms", json={"name": "other"})
    assert (status, body["error"]["code"]) == (401, "auth_failed")
    lobby = {"name": "lobby", "private": True}
    status, body = await call(server, "POST", "/api/rooms", json=lobby, bearer=tokens["alice"])
    assert (status, body["error"]["code"]) == (409, "room_exists")
    # The refused requests created nothing: "other" is still free.
    status, body = await call(
        server, "POST", "/api/rooms", json={"name": "other"}, bearer=tokens["carol"]
    )
    assert status == 201 and body["room"]["owner"] == "carol"


async def test_only_members_join_a_private_room(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """carol and a guest are refused team; owner alice and member bob join and chat."""
    await create_team(server, tokens)
    carol = await user_ws(server, tokens["carol"])
    alice = await user_ws(server, tokens["alice"])
    bob = await user_ws(server, tokens["bob"])
    try:
        async with connect(server.ws_url()) as guest:
            await welcome(guest)
            await send_json(guest, "join", {"room": "team"}, id="gj")
            refused = await answer(guest, "gj")
            assert refused["type"] == "error"
            assert refused["payload"]["code"] == "forbidden"
        await send_json(carol, "join", {"room": "team"}, id="cj")
        refused = await answer(carol, "cj")
        assert refused["type"] == "error"
        assert refused["payload"]["code"] == "forbidden"
        await send_json(carol, "chat", {"room": "team", "message": "let me in"}, id="cc")
        refused = await answer(carol, "cc")
        assert refused["type"] == "error"
        assert refused["payload"]["code"] == "not_member"
        for ws, name in ((alice, "alice"), (bob, "bob")):
            await send_json(ws, "join", {"room": "team"}, id=f"j-{name}")
            joined = await answer(ws, f"j-{name}")
            assert joined["type"] == "joined", joined
        await send_json(alice, "chat", {"room": "team", "message": "hi bob"}, id="a1")
        await send_json(bob, "chat", {"room": "team", "message": "hi alice"}, id="b1")
        for ws in (alice, bob):
            seen = [(await recv_type(ws, "chat"))["payload"] for _ in range(2)]
            assert {(m["from"], m["message"]) for m in seen} == {
                ("alice", "hi bob"),
                ("bob", "hi alice"),
            }
            assert all(m["room"] == "team" for m in seen)
        await send_json(carol, "presence", {"room": "team"}, id="cp")
        presence = await answer(carol, "cp")
        assert "carol" not in presence["payload"].get("members", [])
        await nothing_of(carol, "chat")
    finally:
        for ws in (carol, alice, bob):
            await ws.close()


async def test_private_history_is_for_members(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """carol's history of team is forbidden over WebSocket and 403 over HTTP; bob reads it."""
    await create_team(server, tokens)
    status, _ = await call(
        server, "POST", "/api/rooms/team/messages", json={"message": "secret"}, bearer=tokens["bob"]
    )
    assert status == 201
    async with connect(server.ws_url(), additional_headers=bearer(tokens["carol"])) as carol:
        await welcome(carol)
        await send_json(carol, "history", {"room": "team"}, id="h")
        refused = await answer(carol, "h")
        assert refused["type"] == "error"
        assert refused["payload"]["code"] == "forbidden"
    status, body = await call(server, "GET", "/api/rooms/team/messages", bearer=tokens["carol"])
    assert (status, body["error"]["code"]) == (403, "forbidden")
    status, body = await call(server, "GET", "/api/rooms/team/messages", bearer=tokens["bob"])
    assert status == 200
    assert [m["message"] for m in body["messages"]] == ["secret"]


async def test_only_the_owner_adds_members(server: ServerProcess, tokens: dict[str, str]) -> None:
    """bob may not add carol (403); alice may (200), then carol joins; other rooms are 404."""
    await create_team(server, tokens)
    add = {"members": ["carol"]}
    status, body = await call(
        server, "POST", "/api/rooms/team/members", json=add, bearer=tokens["bob"]
    )
    assert (status, body["error"]["code"]) == (403, "forbidden")
    status, body = await call(
        server, "POST", "/api/rooms/team/members", json=add, bearer=tokens["alice"]
    )
    assert status == 200
    assert body["room"]["members"] == ["bob", "carol"]
    async with connect(server.ws_url(), additional_headers=bearer(tokens["carol"])) as carol:
        await welcome(carol)
        await send_json(carol, "join", {"room": "team"}, id="j")
        joined = await answer(carol, "j")
        assert joined["type"] == "joined" and joined["payload"]["room"] == "team"
    public = {"name": "open", "private": False}
    status, _ = await call(server, "POST", "/api/rooms", json=public, bearer=tokens["alice"])
    assert status == 201
    for room in ("nowhere", "open", "lobby"):
        status, body = await call(
            server, "POST", f"/api/rooms/{room}/members", json=add, bearer=tokens["alice"]
        )
        assert (status, body["error"]["code"]) == (404, "not_found"), room


async def test_room_list_shows_private_rooms_to_members_only(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """GET /api/rooms hides team from the anonymous and outsiders (also while in use)."""
    await create_team(server, tokens)
    status, body = await call(server, "GET", "/api/rooms")
    assert status == 200
    names = [r["name"] for r in body["rooms"]]
    assert "lobby" in names and "team" not in names
    status, body = await call(server, "GET", "/api/rooms", bearer=tokens["carol"])
    assert "team" not in [r["name"] for r in body["rooms"]]
    status, _ = await call(
        server,
        "POST",
        "/api/rooms/team/members",
        json={"members": ["carol"]},
        bearer=tokens["alice"],
    )
    assert status == 200
    async with connect(server.ws_url(), additional_headers=bearer(tokens["bob"])) as bob:
        await welcome(bob)
        await send_json(bob, "join", {"room": "team"}, id="j")
        assert (await answer(bob, "j"))["type"] == "joined"
        # With a member in it the room stays hidden from the anonymous.
        status, listed = await call(server, "GET", "/api/rooms")
        assert "team" not in [r["name"] for r in listed["rooms"]]
        status, body = await call(server, "GET", "/api/rooms", bearer=tokens["carol"])
    assert status == 200
    rooms = {r["name"]: r for r in body["rooms"]}
    assert rooms["team"]["private"] is True
    assert rooms["team"]["member_count"] == 1
    assert rooms["team"]["owner"] == "alice"
    assert "lobby" in rooms


# -- posting over HTTP ------------------------------------------------------------------


async def test_post_a_message_over_http(server: ServerProcess, tokens: dict[str, str]) -> None:
    """POST /api/rooms/team/messages is 201 and broadcast once; a resent id is not rebroadcast."""
    await create_team(server, tokens)
    bob = await user_ws(server, tokens["bob"])
    try:
        await send_json(bob, "join", {"room": "team"}, id="j")
        assert (await answer(bob, "j"))["type"] == "joined"
        path = "/api/rooms/team/messages"
        post = {"message": "from http", "id": "http-1"}
        status, body = await call(server, "POST", path, json=post, bearer=tokens["alice"])
        assert status == 201
        assert set(body) == {"room", "seq", "message_id"}
        assert body["room"] == "team" and body["seq"] == 1
        chat = await recv_type(bob, "chat")
        assert chat["payload"] == {
            "room": "team",
            "message": "from http",
            "from": "alice",
            "seq": body["seq"],
            "message_id": body["message_id"],
        }
        status, again = await call(server, "POST", path, json=post, bearer=tokens["alice"])
        assert status == 201
        assert again == body
        # The next chat bob sees is a new one, not a second copy of the first.
        status, third = await call(
            server, "POST", path, json={"message": "marker"}, bearer=tokens["alice"]
        )
        assert status == 201 and third["seq"] == 2
        chat = await recv_type(bob, "chat")
        assert chat["payload"]["message"] == "marker"
        assert chat["payload"]["seq"] == 2
    finally:
        await bob.close()


async def test_bad_posts_over_http(server: ServerProcess, tokens: dict[str, str]) -> None:
    """An outsider's post is 403, over 4000 characters 413, no message 400, no token 401."""
    await create_team(server, tokens)
    path = "/api/rooms/team/messages"
    status, body = await call(server, "POST", path, json={"message": "hi"}, bearer=tokens["carol"])
    assert (status, body["error"]["code"]) == (403, "forbidden")
    cases: list[tuple[Any, int, str]] = [
        ({"message": "x" * 4001}, 413, "too_large"),
        ({}, 400, "invalid_message"),
        ({"message": ""}, 400, "invalid_message"),
        ({"message": 5}, 400, "invalid_message"),
    ]
    for post, expected, code in cases:
        status, body = await call(server, "POST", path, json=post, bearer=tokens["bob"])
        assert (status, body["error"]["code"]) == (expected, code), post
    status, body = await call(server, "POST", path, json={"message": "hi"})
    assert (status, body["error"]["code"]) == (401, "auth_failed")
    status, body = await call(
        server, "POST", path, json={"message": "x" * 4000}, bearer=tokens["bob"]
    )
    assert status == 201 and body["seq"] == 1  # nothing refused above was stored


# -- direct messages ----------------------------------------------------------------


async def test_direct_needs_a_user_and_a_known_recipient(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """A guest's direct is forbidden; a direct to an unregistered name is unknown_user."""
    async with connect(server.ws_url()) as guest:
        await welcome(guest)
        await send_json(guest, "direct", {"to": "bob", "message": "hi"}, id="g")
        refused = await answer(guest, "g")
        assert (refused["type"], refused["payload"]["code"]) == ("error", "forbidden")
        await send_json(guest, "direct_history", {}, id="gh")
        refused = await answer(guest, "gh")
        assert (refused["type"], refused["payload"]["code"]) == ("error", "forbidden")
    async with connect(server.ws_url(), additional_headers=bearer(tokens["alice"])) as alice:
        await welcome(alice)
        await send_json(alice, "direct", {"to": "nobody", "message": "hi"}, id="u")
        refused = await answer(alice, "u")
        assert (refused["type"], refused["payload"]["code"]) == ("error", "unknown_user")


async def test_direct_reaches_every_connection_of_both_users(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """alice's direct reaches bob's two connections and her own two, then one ack; no resend."""
    conns = [await user_ws(server, tokens[name]) for name in ("alice", "alice", "bob", "bob")]
    a1, a2, b1, b2 = conns
    try:
        await send_json(a1, "direct", {"to": "bob", "message": "psst"}, id="d1")
        frames: list[dict[str, Any]] = []
        while not any(f["type"] == "ack" for f in frames):
            frames.append(await recv_json(a1))
        own = [f for f in frames if f["type"] == "direct"]
        ack = frames[-1]
        assert ack["id"] == "d1" and len(own) == 1
        assert frames.index(own[0]) < len(frames) - 1  # the copy before the ack
        sent = own[0]["payload"]
        assert ack["payload"] == {"seq": sent["seq"], "message_id": sent["message_id"]}
        assert sent["from"] == "alice" and sent["to"] == "bob" and sent["message"] == "psst"
        assert sent["seq"] == 1  # alice's inbox
        assert (await recv_type(a2, "direct"))["payload"] == sent
        for ws in (b1, b2):
            got = await recv_type(ws, "direct")
            assert got["payload"] == {
                "from": "alice",
                "to": "bob",
                "message": "psst",
                "message_id": sent["message_id"],
                "seq": 1,  # bob's inbox
            }
        # The same id again: the same ack, and nobody gets a second copy.
        await send_json(a1, "direct", {"to": "bob", "message": "psst"}, id="d1")
        again = await recv_type(a1, "ack")
        assert again["id"] == "d1" and again["payload"] == ack["payload"]
        await send_json(a1, "direct", {"to": "bob", "message": "marker"}, id="d2")
        for ws in (a2, b1, b2):
            nxt = await recv_type(ws, "direct")
            assert nxt["payload"]["message"] == "marker"
            assert nxt["payload"]["seq"] == 2
    finally:
        for ws in conns:
            await ws.close()


async def test_missed_directs_come_back_from_direct_history(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """bob, offline for 3 directs, gets exactly those by since; before pages; HTTP agrees."""
    alice = await user_ws(server, tokens["alice"])
    try:
        bob = await user_ws(server, tokens["bob"])
        await send_json(alice, "direct", {"to": "bob", "message": "seen"}, id="d0")
        last_seen = (await recv_type(bob, "direct"))["payload"]["seq"]
        await bob.close()
        await asyncio.sleep(0.2)
        for i in range(3):
            missed = {"to": "bob", "message": f"missed {i}"}
            await send_json(alice, "direct", missed, id=f"d{i + 1}")
            await answer(alice, f"d{i + 1}")  # its own ack (d0's may come first)
    finally:
        await alice.close()
    async with connect(server.ws_url(), additional_headers=bearer(tokens["bob"])) as bob:
        await welcome(bob)
        await send_json(bob, "direct_history", {"since": last_seen}, id="s")
        reply = await answer(bob, "s")
        assert reply["type"] == "direct_history"
        page = reply["payload"]
        assert [m["message"] for m in page["messages"]] == [f"missed {i}" for i in range(3)]
        seqs = [m["seq"] for m in page["messages"]]
        assert seqs == [last_seen + 1, last_seen + 2, last_seen + 3]
        assert page["has_more"] is False and page["last_seq"] == seqs[-1]
        for m in page["messages"]:
            assert m["from"] == "alice" and m["to"] == "bob" and m["type"] == "direct"
            assert m["message_id"] and m["timestamp"].endswith("Z")
        await send_json(bob, "direct_history", {"before": seqs[-1], "limit": 2}, id="b")
        older = (await answer(bob, "b"))["payload"]
        assert [m["seq"] for m in older["messages"]] == [seqs[0], seqs[1]]
        assert older["has_more"] is True and older["last_seq"] == seqs[-1]
        await send_json(bob, "direct_history", {"before": seqs[0], "limit": 2}, id="b2")
        oldest = (await answer(bob, "b2"))["payload"]
        assert [m["message"] for m in oldest["messages"]] == ["seen"]
        assert oldest["has_more"] is False
        await send_json(bob, "direct_history", {"since": 0}, id="all")
        everything = (await answer(bob, "all"))["payload"]
        await send_json(bob, "direct_history", {"since": 0, "before": 2}, id="both")
        refused = await answer(bob, "both")
        assert (refused["type"], refused["payload"]["code"]) == ("error", "invalid_message")
    assert len(everything["messages"]) == 4
    status, body = await call(server, "GET", "/api/direct/messages?since=0", bearer=tokens["bob"])
    assert status == 200
    assert body == everything
    status, body = await call(
        server, "GET", "/api/direct/messages?since=0&before=2", bearer=tokens["bob"]
    )
    assert (status, body["error"]["code"]) == (400, "invalid_message")
    status, body = await call(server, "GET", "/api/direct/messages?since=0")
    assert (status, body["error"]["code"]) == (401, "auth_failed")


async def test_posting_over_http_has_the_websocket_rate_limit(
    server_factory: ServerFactory,
) -> None:
    """A bot posting over HTTP faster than the per-connection limit gets 429 with Retry-After."""
    server = server_factory("--secret", SECRET, "--rate-limit", "1", "--rate-burst", "3")
    token = await sign_up(server, "botty")
    statuses = []
    for i in range(5):
        status, body = await call(
            server, "POST", "/api/rooms/lobby/messages", json={"message": f"m{i}"}, bearer=token
        )
        statuses.append(status)
        if status == 429:
            assert body["error"]["code"] == "rate_limited"
    assert statuses == [201, 201, 201, 429, 429]
