"""Read markers, unread counts and receipts over real sockets, on one node.

The server runs on SQLite with a known ``--secret``; alice, bob and carol are
registered and sign in on the handshake.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.integration.clients import wait_for
from tests.integration.serverproc import ServerFactory, ServerProcess
from tests.integration.users import SECRET, bearer, call, create_team, sign_up, user_ws
from tests.integration.wsclient import ask, recv_json, send_json, welcome

#: How long a test waits to be sure a frame does not arrive.
QUIET = 0.5


@pytest.fixture
async def server(server_factory: ServerFactory) -> ServerProcess:
    """A server with a known secret."""
    return server_factory("--secret", SECRET)


async def joined(ws: ClientConnection, room: str = "lobby") -> dict[str, Any]:
    """The ``joined`` frame of ``room`` (skipping what comes before it)."""
    async with asyncio.timeout(5):
        while True:
            frame = await recv_json(ws)
            if frame["type"] == "joined" and frame["payload"]["room"] == room:
                return frame["payload"]  # type: ignore[no-any-return]


async def connected(server: ServerProcess, token: str) -> ClientConnection:
    """A signed-in connection, past its lobby ``joined``."""
    return await user_ws(server, token)


async def lobby_joined(server: ServerProcess, token: str) -> tuple[ClientConnection, Any]:
    """A signed-in connection and the payload of its lobby ``joined``."""
    ws = await connect(server.ws_url(), additional_headers=bearer(token), open_timeout=5)
    _, first = await welcome(ws)
    return ws, first["payload"]


async def chat(ws: ClientConnection, text: str, fid: str, room: str = "lobby") -> dict[str, Any]:
    """Send a chat; its ack's payload."""
    reply = await ask(ws, "chat", {"room": room, "message": text}, fid)
    assert reply["type"] == "ack", reply
    return reply["payload"]  # type: ignore[no-any-return]


async def next_of(ws: ClientConnection, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    """The payload of the next frame of type ``kind``."""
    async with asyncio.timeout(timeout):
        while True:
            frame = await recv_json(ws)
            if frame["type"] == kind:
                return frame["payload"]  # type: ignore[no-any-return]


async def receipt_from(ws: ClientConnection, user: str) -> dict[str, Any]:
    """The next ``receipt`` about ``user``."""
    while (receipt := await next_of(ws, "receipt"))["user"] != user:
        pass
    return receipt


async def none_of(ws: ClientConnection, kind: str) -> list[dict[str, Any]]:
    """Every frame of type ``kind`` that arrives before :data:`QUIET` passes without a frame."""
    found = []
    try:
        while True:
            frame = await recv_json(ws, QUIET)
            if frame["type"] == kind:
                found.append(frame)
    except TimeoutError:
        return found


async def unread(server: ServerProcess, token: str) -> dict[str, Any]:
    status, body = await call(server, "GET", "/api/unread", bearer=token)
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def room_counts(body: dict[str, Any], room: str) -> dict[str, Any]:
    return next(r for r in body["rooms"] if r["room"] == room)


async def test_a_read_on_one_connection_clears_the_other(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """joined counts others' messages after the marker; a read reaches the user's other link."""
    phone = await connected(server, tokens["alice"])
    bob = await connected(server, tokens["bob"])
    await chat(bob, "one", "b1")
    await chat(bob, "two, @alice", "b2")
    third = await chat(bob, "three", "b3")
    await chat(phone, "mine", "a1")  # a reader's own message is never unread
    laptop, counts = await lobby_joined(server, tokens["alice"])
    assert (counts["unread"], counts["mentions"], counts["last_read"]) == (0, 0, 4)
    first_read = await ask(phone, "read", {"room": "lobby", "seq": 0}, "r0")
    assert first_read["payload"]["seq"] == 4, "a marker never moves back"

    reply = await chat(bob, "four", "b4")
    seen = await ask(laptop, "read", {"room": "lobby", "seq": third["seq"]}, "r1")
    assert seen["payload"] == {"room": "lobby", "seq": 4, "unread": 1, "mentions": 0}
    moved = await ask(laptop, "read", {"room": "lobby", "seq": reply["seq"] + 50}, "r2")
    assert moved["payload"] == {"room": "lobby", "seq": reply["seq"], "unread": 0, "mentions": 0}
    on_phone = await next_of(phone, "read")
    assert on_phone == {"room": "lobby", "seq": reply["seq"], "unread": 0, "mentions": 0}
    assert room_counts(await unread(server, tokens["alice"]), "lobby")["unread"] == 0
    for ws in (phone, laptop, bob):
        await ws.close()


async def test_counts_mentions_deletes_and_the_unread_listing(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """Unread counts messages from others after the marker; a delete takes one away."""
    alice = await connected(server, tokens["alice"])
    bob = await connected(server, tokens["bob"])
    await alice.close()
    await chat(bob, "hi", "b1")
    mention = await chat(bob, "look @alice", "b2")
    await chat(bob, "bye", "b3")
    body = await unread(server, tokens["alice"])
    lobby = room_counts(body, "lobby")
    assert (lobby["unread"], lobby["mentions"], lobby["last_read"]) == (3, 1, 0)
    assert lobby["last_seq"] == 3 and lobby["last_at"].endswith("Z")
    reply = await ask(bob, "delete", {"message_id": mention["message_id"]}, "d1")
    assert reply["type"] == "ack", reply
    lobby = room_counts(await unread(server, tokens["alice"]), "lobby")
    assert (lobby["unread"], lobby["mentions"]) == (2, 0)
    status, body = await call(server, "GET", "/api/unread")
    assert status == 401 and body["error"]["code"] == "auth_failed"
    await bob.close()


async def test_direct_conversations_are_counted_and_read_one_by_one(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """Each direct conversation has its own count; reading one leaves the other unread."""
    alice = await connected(server, tokens["alice"])
    bob = await connected(server, tokens["bob"])
    carol = await connected(server, tokens["carol"])
    for i, sender in enumerate((bob, bob, carol)):
        reply = await ask(sender, "direct", {"to": "alice", "message": f"hi {i}"}, f"d{i}")
        assert reply["type"] == "ack", reply
    body = (await ask(alice, "unread", {}, "u1"))["payload"]
    direct = body["direct"]
    assert (direct["unread"], direct["last_seq"]) == (3, 3)
    by_peer = {c["with"]: c["unread"] for c in direct["conversations"]}
    assert by_peer == {"bob": 2, "carol": 1}
    read = await ask(alice, "read", {"direct": True, "with": "bob", "seq": 2}, "r1")
    assert read["payload"] == {"direct": True, "with": "bob", "seq": 2, "unread": 0, "mentions": 0}
    assert await receipt_from(bob, "alice") == {"direct": True, "user": "alice", "seq": 2}
    body = (await ask(alice, "unread", {}, "u2"))["payload"]
    assert {c["with"]: c["unread"] for c in body["direct"]["conversations"]} == {
        "bob": 0,
        "carol": 1,
    }
    history = (await ask(bob, "direct_history", {}, "h1"))["payload"]
    assert history["receipts"] == {"alice": 2}
    for ws in (alice, bob, carol):
        await ws.close()


async def test_receipts_in_a_small_room_and_who_hides_them(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """Members see who read up to where, live and in history; a hidden reader is never named."""
    alice = await connected(server, tokens["alice"])
    bob = await connected(server, tokens["bob"])
    carol = await connected(server, tokens["carol"])
    sent = await chat(alice, "read me", "a1")
    await ask(bob, "read", {"room": "lobby", "seq": sent["seq"]}, "r1")
    assert await receipt_from(alice, "bob") == {"room": "lobby", "user": "bob", "seq": sent["seq"]}
    status, _ = await call(
        server, "PUT", "/api/me/settings", json={"hide_receipts": True}, bearer=tokens["carol"]
    )
    assert status == 200
    await ask(carol, "read", {"room": "lobby", "seq": sent["seq"]}, "r2")
    assert not [f for f in await none_of(alice, "receipt") if f["payload"]["user"] == "carol"]
    history = (await ask(alice, "history", {"room": "lobby"}, "h1"))["payload"]
    assert history["receipts"]["bob"] == sent["seq"]
    assert "carol" not in history["receipts"]
    for ws in (alice, bob, carol):
        await ws.close()


async def test_receipts_never_show_a_private_room_to_outsiders(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """Receipts of a private room reach its members only; outsiders cannot read or list them."""
    await create_team(server, tokens)  # alice owns team, bob is a member
    alice = await connected(server, tokens["alice"])
    bob = await connected(server, tokens["bob"])
    carol = await connected(server, tokens["carol"])
    for ws in (alice, bob):
        await send_json(ws, "join", {"room": "team"})
        await joined(ws, "team")
    sent = await chat(alice, "secret", "a1", room="team")
    await ask(bob, "read", {"room": "team", "seq": sent["seq"]}, "r1")
    assert await receipt_from(alice, "bob") == {"room": "team", "user": "bob", "seq": sent["seq"]}
    assert not await none_of(carol, "receipt")
    refused = await ask(carol, "read", {"room": "team", "seq": 1}, "r2")
    assert refused["payload"]["code"] == "not_member"
    refused = await ask(carol, "history", {"room": "team"}, "h1")
    assert refused["payload"]["code"] == "forbidden"
    assert all(r["room"] != "team" for r in (await unread(server, tokens["carol"]))["rooms"])
    team = room_counts(await unread(server, tokens["bob"]), "team")
    assert team["unread"] == 0 and team["last_read"] == sent["seq"]
    status, body = await call(
        server, "PATCH", "/api/rooms/team", json={"receipts": False}, bearer=tokens["bob"]
    )
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, body = await call(
        server, "PATCH", "/api/rooms/team", json={"receipts": False}, bearer=tokens["alice"]
    )
    assert status == 200 and body["room"]["receipts"] is False
    history = (await ask(alice, "history", {"room": "team"}, "h2"))["payload"]
    assert "receipts" not in history and "read_counts" not in history
    for ws in (alice, bob, carol):
        await ws.close()


async def test_a_guest_marker_lives_on_its_connection(server: ServerProcess) -> None:
    """A guest may mark a room read on its connection; nothing more is kept for it."""
    async with connect(server.ws_url()) as guest:
        _, first = await welcome(guest)
        assert "unread" not in first["payload"]
        reply = await ask(guest, "read", {"room": "lobby", "seq": 0}, "r1")
        assert reply["payload"] == {"room": "lobby", "seq": 0, "unread": 0, "mentions": 0}
        refused = await ask(guest, "unread", {}, "u1")
        assert refused["payload"]["code"] == "forbidden"
        refused = await ask(guest, "read", {"direct": True, "seq": 1}, "r2")
        assert refused["payload"]["code"] == "forbidden"


async def test_bad_read_frames_get_clear_errors(server: ServerProcess) -> None:
    """A read without a seq, with both room and direct, or with a bad seq is invalid_message."""
    async with connect(server.ws_url()) as ws:
        await welcome(ws)
        for i, payload in enumerate(
            (
                {"room": "lobby"},
                {"room": "lobby", "direct": True, "seq": 1},
                {"room": "lobby", "seq": -1},
                {"room": "lobby", "seq": "1"},
                {"direct": False, "seq": 1},
                {"with": "bob", "room": "lobby", "seq": 1},
            )
        ):
            reply = await ask(ws, "read", payload, f"x{i}")
            assert reply["payload"]["code"] == "invalid_message", payload


def stored_marker(data_dir: Path, name: str, stream: str) -> int | None:
    """The marker the server's SQLite database holds (read beside the running server)."""
    with sqlite3.connect(f"file:{data_dir / 'roomcast.db'}?mode=ro", uri=True) as db:
        row = db.execute(
            "SELECT seq FROM read_markers WHERE name = ? AND stream = ?", (name, stream)
        ).fetchone()
    return None if row is None else int(row[0])


async def test_counts_are_right_after_sigkill_and_restart(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """A marker written before the server is killed counts after it restarts."""
    server = server_factory("--secret", SECRET)
    tokens = {name: await sign_up(server, name) for name in ("alice", "bob")}
    alice = await connected(server, tokens["alice"])
    bob = await connected(server, tokens["bob"])
    for i in range(5):
        await chat(bob, f"m{i} @alice" if i == 4 else f"m{i}", f"b{i}")
    await ask(alice, "read", {"room": "lobby", "seq": 3}, "r1")
    await wait_for(lambda: stored_marker(server.data_dir, "alice", "lobby") == 3, timeout=5)
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    again = server_factory("--secret", SECRET)
    body = await unread(again, tokens["alice"])
    lobby = room_counts(body, "lobby")
    assert (lobby["unread"], lobby["mentions"], lobby["last_read"]) == (2, 1, 3)
    laptop, counts = await lobby_joined(again, tokens["alice"])
    assert (counts["unread"], counts["mentions"], counts["last_read"]) == (2, 1, 3)
    await laptop.close()
