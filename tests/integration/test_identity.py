"""Who may read what: names, private rooms and identity changes, over real sockets.

Each test here failed on the code before issue 16: a guest holding a name
that a user then registered received that user's direct messages;
``presence`` listed a private room's members to anyone; ``auth`` as someone
else kept the private rooms of the first identity; and a frame id reused by
another guest or in another room was acked with the first message and
silently dropped.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.integration.serverproc import ServerFactory, ServerProcess
from tests.integration.users import (
    SECRET,
    auth,
    call,
    closed_with,
    create_team,
    login,
    register,
    session_token,
    sign_up,
    user_ws,
)
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
    return server_factory("--secret", SECRET)


async def guest_ws(server: ServerProcess, nickname: str | None = None) -> ClientConnection:
    """A guest connection past its welcome, renamed to ``nickname`` if given."""
    ws = await connect(server.ws_url(), open_timeout=5)
    await welcome(ws)
    if nickname is not None:
        await send_json(ws, "auth", {"guest": nickname}, id="nick")
        frame = await answer(ws, "nick")
        assert frame["type"] == "auth", frame
    return ws


async def frames_for(ws: ClientConnection, seconds: float = QUIET) -> list[dict[str, Any]]:
    """Every frame that arrives within ``seconds`` (the connection may close meanwhile)."""
    frames: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(seconds):
            while True:
                frames.append(await recv_json(ws))
    except (TimeoutError, Exception):
        pass
    return frames


# -- 1. a name belongs to the registered user ----------------------------------------


async def test_registering_takes_the_name_from_a_guest(server: ServerProcess) -> None:
    """Guest ``Carol`` is closed when carol registers, and never sees her direct messages."""
    guest = await guest_ws(server, "Carol")
    alice = await sign_up(server, "alice")
    await register(server, "carol")
    code, reason = await closed_with(guest)
    assert code == 1008 and "registered user" in reason
    # The name is hers now: a guest cannot take it back, in any case.
    again = await guest_ws(server)
    await send_json(again, "auth", {"guest": "CAROL"}, id="nick")
    refused = await answer(again, "nick")
    assert refused["payload"]["code"] == "auth_failed"
    # What is sent to carol reaches only her connections.
    carol = await user_ws(server, await login(server, "carol"))
    sender = await user_ws(server, alice)
    await send_json(sender, "direct", {"to": "carol", "message": "for carol only"}, id="d1")
    got = await recv_type(carol, "direct")
    assert got["payload"]["message"] == "for carol only"
    assert all(f["type"] != "direct" for f in await frames_for(again))
    for ws in (again, carol, sender):
        await ws.close()


async def test_a_token_at_the_handshake_takes_the_name_too(
    server_factory: ServerFactory,
) -> None:
    """A guest still holding a name is closed when its user connects with a token."""
    # Two servers share one SQLite file without a broker, so registering on
    # the second cannot tell the first: the guest on the first keeps the
    # name until dave's own handshake there takes it (the rule auth applies).
    first = server_factory("--secret", SECRET)
    guest = await guest_ws(first, "dave")
    second = server_factory("--secret", SECRET)
    await register(second, "dave")
    assert all(f["type"] != "error" for f in await frames_for(guest, 0.3))
    dave = await user_ws(first, await login(first, "dave"))
    code, _ = await closed_with(guest)
    assert code == 1008
    await send_json(dave, "ping", {}, id="p")
    assert (await answer(dave, "p"))["type"] == "pong"
    await dave.close()


async def test_auth_with_a_token_takes_the_name_from_a_guest_on_the_same_server(
    server: ServerProcess,
) -> None:
    """``auth`` with a token for a name a guest holds closes the guest instead of refusing."""
    guest = await guest_ws(server, "erin")
    await register(server, "erin")  # closes the guest
    await closed_with(guest)
    second = await guest_ws(server)
    reply = await auth(second, await login(server, "erin"))
    assert reply["type"] == "auth" and reply["payload"]["user"] == {"name": "erin", "guest": False}
    await second.close()


# -- 2. every read of a room checks access --------------------------------------------


@pytest.fixture
async def team(server: ServerProcess) -> dict[str, str]:
    """alice owns private room team with member bob; carol is registered too."""
    tokens = {name: await sign_up(server, name) for name in ("alice", "bob", "carol")}
    await create_team(server, tokens)
    return tokens


async def test_presence_of_a_private_room_is_for_its_members(
    server: ServerProcess, team: dict[str, str]
) -> None:
    """``presence`` answers ``forbidden`` to a guest and to a user who is not a member."""
    alice = await user_ws(server, team["alice"])
    await send_json(alice, "join", {"room": "team"}, id="j")
    assert (await answer(alice, "j"))["type"] == "joined"
    for outsider in (await guest_ws(server), await user_ws(server, team["carol"])):
        await send_json(outsider, "presence", {"room": "team"}, id="p")
        reply = await answer(outsider, "p")
        assert reply["type"] == "error" and reply["payload"]["code"] == "forbidden", reply
        assert "alice" not in str(reply)
        await outsider.close()
    bob = await user_ws(server, team["bob"])
    await send_json(bob, "presence", {"room": "team"}, id="p")
    reply = await answer(bob, "p")
    assert reply["type"] == "presence" and "alice" in reply["payload"]["members"]
    for ws in (alice, bob):
        await ws.close()


async def test_typing_history_and_listing_of_a_private_room_are_for_its_members(
    server: ServerProcess, team: dict[str, str]
) -> None:
    """typing needs membership, history (both edges) and GET /api/rooms check access."""
    carol = await user_ws(server, team["carol"])
    await send_json(carol, "typing", {"room": "team"}, id="t")
    assert (await answer(carol, "t"))["payload"]["code"] == "not_member"
    await send_json(carol, "history", {"room": "team"}, id="h")
    assert (await answer(carol, "h"))["payload"]["code"] == "forbidden"
    status, body = await call(server, "GET", "/api/rooms/team/messages", bearer=team["carol"])
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, body = await call(server, "GET", "/api/rooms", bearer=team["carol"])
    assert status == 200 and "team" not in [room["name"] for room in body["rooms"]]
    status, body = await call(server, "GET", "/api/rooms")
    assert "team" not in [room["name"] for room in body["rooms"]]
    await carol.close()


# -- 3. a new identity keeps only what it may have ------------------------------------


async def test_auth_as_a_guest_leaves_the_private_rooms(
    server: ServerProcess, team: dict[str, str]
) -> None:
    """bob switching to a guest name is taken out of team, told why, and cannot post there."""
    bob = await user_ws(server, team["bob"])
    await send_json(bob, "join", {"room": "team"}, id="j")
    assert (await answer(bob, "j"))["type"] == "joined"
    await send_json(bob, "auth", {"guest": "bobby"}, id="a")
    assert (await answer(bob, "a"))["type"] == "auth"
    left = await recv_type(bob, "left")
    assert left["payload"]["room"] == "team" and left["payload"]["reason"]
    await send_json(bob, "chat", {"room": "team", "message": "still here?"}, id="c")
    assert (await answer(bob, "c"))["payload"]["code"] == "not_member"
    await bob.close()


async def test_auth_as_another_user_leaves_the_rooms_it_may_not_be_in(
    server: ServerProcess, team: dict[str, str]
) -> None:
    """bob -> carol (no member of team): left team; lobby is kept."""
    bob = await user_ws(server, team["bob"])
    await send_json(bob, "join", {"room": "team"}, id="j")
    await answer(bob, "j")
    reply = await auth(bob, team["carol"])
    assert reply["type"] == "auth"
    assert (await recv_type(bob, "left"))["payload"]["room"] == "team"
    await send_json(bob, "chat", {"message": "lobby still works"}, id="c")
    assert (await answer(bob, "c"))["type"] == "ack"
    await bob.close()


async def test_the_expiry_deadline_follows_the_new_token(
    server: ServerProcess, team: dict[str, str]
) -> None:
    """A connection that switches to a token expiring soon is asked for a new one then."""
    bob = await user_ws(server, team["bob"])
    short = await session_token(server, "carol", exp=int(time.time()) + 2)
    assert (await auth(bob, short))["type"] == "auth"
    expired = await recv_type(bob, "error", timeout=6)
    assert expired["payload"]["code"] == "token_expired"
    await bob.close()


# -- 4. a frame id never makes another person's or room's message vanish --------------


async def test_a_reused_id_with_another_message_is_an_error_not_a_silent_drop(
    server: ServerProcess,
) -> None:
    """Guest "same" leaves; a second guest "same" reuses id 1 for another text: an error."""
    first = await guest_ws(server, "same")
    await send_json(first, "chat", {"message": "from the first"}, id="1")
    assert (await answer(first, "1"))["type"] == "ack"
    await first.close()
    await asyncio.sleep(0.1)
    second = await guest_ws(server, "same")
    await send_json(second, "chat", {"message": "from the second"}, id="1")
    reply = await answer(second, "1")
    assert reply["type"] == "error" and reply["payload"]["code"] == "invalid_message", reply
    # A real resend (same text) is still acked once, with the first's id.
    await send_json(second, "chat", {"message": "from the first"}, id="1")
    assert (await answer(second, "1"))["type"] == "ack"
    await second.close()


async def test_one_id_in_two_rooms_is_two_messages(server: ServerProcess) -> None:
    """The same id in lobby and in dev: both broadcast, each with its own room's seq."""
    ws = await guest_ws(server, "counter")
    await send_json(ws, "join", {"room": "dev"}, id="j")
    await answer(ws, "j")
    await send_json(ws, "chat", {"message": "hi"}, id="1")
    lobby_ack = await answer(ws, "1")
    await send_json(ws, "chat", {"room": "dev", "message": "hi"}, id="1")
    dev_ack = await answer(ws, "1")
    assert (lobby_ack["type"], dev_ack["type"]) == ("ack", "ack")
    assert lobby_ack["payload"]["room"] == "lobby" and dev_ack["payload"]["room"] == "dev"
    assert lobby_ack["payload"]["message_id"] != dev_ack["payload"]["message_id"]
    await ws.close()
