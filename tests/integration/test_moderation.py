"""Moderation over real sockets on one node: the room routes, their refusals, the frames.

alice, bob and carol are registered (the ``tokens`` fixture); alice makes the
rooms, so she owns them.
"""

from __future__ import annotations

from typing import Any

from websockets.asyncio.client import ClientConnection

from tests.integration.serverproc import ServerProcess
from tests.integration.users import call, create_team, user_ws
from tests.integration.wsclient import ask, recv_type


async def joined_ws(server: ServerProcess, token: str, room: str) -> ClientConnection:
    ws = await user_ws(server, token)
    answer = await ask(ws, "join", {"room": room}, f"join-{room}")
    assert answer["type"] == "joined", answer
    return ws


async def room_of(server: ServerProcess, room: str, token: str | None) -> dict[str, Any]:
    status, body = await call(server, "GET", f"/api/rooms/{room}", bearer=token)
    assert status == 200, body
    return body["room"]  # type: ignore[no-any-return]


async def test_a_room_shows_its_roles_and_each_viewer_its_own(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """GET /api/rooms/{room}: owner, moderators, topic, slow mode; bans only to moderators."""
    alice = await joined_ws(server, tokens["alice"], "dev")
    await alice.close()
    status, body = await call(
        server, "PUT", "/api/rooms/dev/moderators/bob", bearer=tokens["alice"]
    )
    assert status == 200 and body["room"]["moderators"] == ["bob"], body
    mine = await room_of(server, "dev", tokens["alice"])
    assert (mine["owner"], mine["role"], mine["topic"], mine["slow_mode"]) == (
        "alice",
        "owner",
        "",
        0,
    )
    assert mine["bans"] == [] and mine["mutes"] == []
    assert (await room_of(server, "dev", tokens["bob"]))["role"] == "moderator"
    theirs = await room_of(server, "dev", tokens["carol"])
    assert theirs["role"] == "member" and "bans" not in theirs
    anonymous = await room_of(server, "dev", None)
    assert anonymous["owner"] == "alice" and "bans" not in anonymous
    await create_team(server, tokens)
    status, body = await call(server, "GET", "/api/rooms/team", bearer=tokens["carol"])
    assert status == 404 and body["error"]["code"] == "not_found"


async def test_settings_change_live_and_refusals_are_clear(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """PATCH changes topic and slow mode (members get a room frame); bad values are 400s."""
    alice = await joined_ws(server, tokens["alice"], "dev")
    bob = await joined_ws(server, tokens["bob"], "dev")
    status, body = await call(
        server,
        "PATCH",
        "/api/rooms/dev",
        json={"topic": "ship it", "slow_mode": 5, "title": "Dev"},
        bearer=tokens["alice"],
    )
    assert status == 200 and body["room"]["topic"] == "ship it", body
    frame = await recv_type(bob, "room")
    assert frame["payload"]["topic"] == "ship it" and frame["payload"]["slow_mode"] == 5
    assert frame["payload"]["title"] == "Dev"
    for bad in ({"slow_mode": -1}, {"topic": 5}, {"colour": "red"}, {}, {"title": "x" * 65}):
        status, body = await call(
            server, "PATCH", "/api/rooms/dev", json=bad, bearer=tokens["alice"]
        )
        assert status == 400 and body["error"]["code"] == "invalid_message", (bad, body)
    status, body = await call(
        server, "PATCH", "/api/rooms/dev", json={"topic": "mine"}, bearer=tokens["bob"]
    )
    assert status == 403 and body["error"]["code"] == "forbidden"
    first = await ask(bob, "chat", {"room": "dev", "message": "one"}, "c1")
    assert first["type"] == "ack"
    slowed = await ask(bob, "chat", {"room": "dev", "message": "two"}, "c2")
    assert slowed["payload"]["code"] == "rate_limited" and slowed["payload"]["retry_after"] > 0
    await alice.close()
    await bob.close()


async def test_ban_mute_and_remove_over_http_with_their_frames(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """A ban takes bob out with removed and refuses his join; a mute refuses his chat."""
    alice = await joined_ws(server, tokens["alice"], "dev")
    bob = await joined_ws(server, tokens["bob"], "dev")
    carol = await joined_ws(server, tokens["carol"], "dev")
    status, body = await call(
        server, "PUT", "/api/rooms/dev/mutes/carol", json={"for": 60}, bearer=tokens["alice"]
    )
    assert status == 200 and body["mute"]["user"] == "carol", body
    refused = await ask(carol, "chat", {"room": "dev", "message": "hi"}, "m")
    assert (
        refused["payload"]["code"] == "muted"
        and refused["payload"]["until"] == body["mute"]["until"]
    )
    status, body = await call(
        server, "PUT", "/api/rooms/dev/mutes/carol", json={}, bearer=tokens["alice"]
    )
    assert status == 400
    status, body = await call(
        server,
        "PUT",
        "/api/rooms/dev/bans/bob",
        json={"until": "2099-01-01T00:00:00Z", "reason": "spam"},
        bearer=tokens["alice"],
    )
    assert status == 200 and body["ban"]["until"] == "2099-01-01T00:00:00.000Z", body
    removed = await recv_type(bob, "removed")
    assert removed["payload"] == {
        "room": "dev",
        "by": "alice",
        "reason": "spam",
        "banned": True,
        "until": "2099-01-01T00:00:00.000Z",
    }
    again = await ask(bob, "join", {"room": "dev"}, "again")
    assert again["payload"]["code"] == "banned" and again["payload"]["reason"] == "spam"
    status, body = await call(server, "PUT", "/api/rooms/dev/bans/alice", bearer=tokens["bob"])
    assert status == 403
    status, body = await call(server, "DELETE", "/api/rooms/dev/bans/carol", bearer=tokens["alice"])
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = await call(
        server, "DELETE", "/api/rooms/dev/members/carol", bearer=tokens["alice"]
    )
    assert status == 204
    kicked = await recv_type(carol, "removed")
    assert kicked["payload"] == {"room": "dev", "by": "alice"}
    rejoined = await ask(carol, "join", {"room": "dev"}, "rejoin")  # a kick is no ban
    assert rejoined["type"] == "joined"
    for ws in (alice, bob, carol):
        await ws.close()


async def test_a_member_leaves_a_private_room_for_good(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """bob removes himself from team: he cannot join or read it any more."""
    await create_team(server, tokens)
    bob = await joined_ws(server, tokens["bob"], "team")
    status, _ = await call(server, "DELETE", "/api/rooms/team/members/bob", bearer=tokens["bob"])
    assert status == 204
    removed = await recv_type(bob, "removed")
    assert removed["payload"]["by"] == "bob"
    refused = await ask(bob, "join", {"room": "team"}, "back")
    assert refused["payload"]["code"] == "forbidden"
    status, _ = await call(
        server, "DELETE", "/api/rooms/team/members/alice", bearer=tokens["alice"]
    )
    assert status == 400  # the owner hands the room over first
    await bob.close()


async def test_deleting_a_room_and_its_audit_log(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """The log pages newest first; the owner deletes dev and its members get removed."""
    alice = await joined_ws(server, tokens["alice"], "dev")
    bob = await joined_ws(server, tokens["bob"], "dev")
    sent = await ask(bob, "chat", {"room": "dev", "message": "words to erase"}, "w")
    assert sent["type"] == "ack"
    deleted = await ask(alice, "delete", {"message_id": sent["payload"]["message_id"]}, "d")
    assert deleted["type"] == "ack"
    for path, body in (
        ("/api/rooms/dev/moderators/carol", None),
        ("/api/rooms/dev/mutes/carol", {"for": 30}),
    ):
        status, answer = await call(server, "PUT", path, json=body, bearer=tokens["alice"])
        assert status == 200, answer
    status, page = await call(server, "GET", "/api/rooms/dev/audit?limit=2", bearer=tokens["alice"])
    assert status == 200 and page["has_more"] is True
    assert [e["action"] for e in page["entries"]] == ["mute", "moderator"]
    before = page["entries"][-1]["id"]
    status, rest = await call(
        server, "GET", f"/api/rooms/dev/audit?before={before}", bearer=tokens["alice"]
    )
    assert [e["action"] for e in rest["entries"]] == ["delete_message"]
    assert rest["entries"][0]["detail"] == {"author": "bob"} and rest["has_more"] is False
    status, _ = await call(server, "GET", "/api/rooms/dev/audit", bearer=tokens["bob"])
    assert status == 403
    status, _ = await call(server, "DELETE", "/api/rooms/dev", bearer=tokens["carol"])
    assert status == 403
    status, _ = await call(server, "DELETE", "/api/rooms/dev", bearer=tokens["alice"])
    assert status == 204
    removed = await recv_type(bob, "removed")
    assert removed["payload"]["reason"] == "the room was deleted"
    status, history = await call(server, "GET", "/api/rooms/dev/messages", bearer=tokens["bob"])
    assert status == 200 and all(not m.get("message") for m in history["messages"])
    status, _ = await call(server, "GET", "/api/rooms/dev/audit", bearer=tokens["alice"])
    assert status == 403  # the room is gone, and alice with it owns nothing: admins read it
    await alice.close()
    await bob.close()
