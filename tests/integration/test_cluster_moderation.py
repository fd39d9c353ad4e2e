"""Moderation across three real nodes on one PostgreSQL database and one Redis.

A removal or ban made on one node takes the user's connections on every
node out of the room at once, and a ban holds when the user reconnects to
another node; a mute made on one node refuses messages sent through another.
"""

from __future__ import annotations

import asyncio
from typing import Any

from websockets.asyncio.client import ClientConnection

from tests.integration.test_cluster import Cluster, cluster, join, member
from tests.integration.users import call, sign_up
from tests.integration.wsclient import ask, recv_json, recv_type, send_json

__all__ = ["cluster"]


async def quiet_for(ws: ClientConnection, kinds: set[str], seconds: float) -> list[dict[str, Any]]:
    """Every frame ``ws`` gets for ``seconds``; none may be of ``kinds``."""
    frames: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while (left := end - loop.time()) > 0:
        try:
            frame = await recv_json(ws, timeout=left)
        except TimeoutError:
            break
        assert frame["type"] not in kinds, frame
        frames.append(frame)
    return frames


async def test_a_removed_member_gets_nothing_more_from_the_room_on_any_node(
    cluster: Cluster,
) -> None:
    """bob, on two other nodes, is removed on the first: both get removed, then nothing."""
    a, b, c = cluster.start(), cluster.start(), cluster.start()
    alice = await sign_up(a, "alice")
    bob = await sign_up(b, "bob")
    status, body = await call(
        a, "POST", "/api/rooms", json={"name": "team", "members": ["bob"]}, bearer=alice
    )
    assert status == 201, body
    owner = await member(cluster, a, alice)
    bob_b, bob_c = await member(cluster, b, bob), await member(cluster, c, bob)
    for ws in (owner, bob_b, bob_c):
        await join(ws, "team")
    status, body = await call(
        a, "DELETE", "/api/rooms/team/members/bob", json={"reason": "done"}, bearer=alice
    )
    assert status == 204, body
    for ws in (bob_b, bob_c):
        removed = await recv_type(ws, "removed")
        assert removed["payload"] == {"room": "team", "by": "alice", "reason": "done"}
    ack = await ask(owner, "chat", {"room": "team", "message": "after bob"}, "after")
    assert ack["type"] == "ack"
    for ws in (bob_b, bob_c):
        await quiet_for(ws, {"chat", "typing"}, 1.0)
        refused = await ask(ws, "history", {"room": "team"}, "h")
        assert refused["payload"]["code"] == "forbidden"
    status, _ = await call(b, "GET", "/api/rooms/team/messages", bearer=bob)
    assert status == 403


async def test_a_banned_user_cannot_rejoin_by_reconnecting_to_another_node(
    cluster: Cluster,
) -> None:
    """carol is banned on the first node; a fresh connection to the third still cannot join."""
    a, b, c = cluster.start(), cluster.start(), cluster.start()
    alice = await sign_up(a, "alice")
    carol = await sign_up(b, "carol")
    owner = await member(cluster, a, alice)
    await join(owner, "dev")  # alice makes dev, and owns it
    carol_b = await member(cluster, b, carol)
    await join(carol_b, "dev")
    status, body = await call(
        a, "PUT", "/api/rooms/dev/bans/carol", json={"for": 3600, "reason": "spam"}, bearer=alice
    )
    assert status == 200 and body["ban"]["reason"] == "spam", body
    removed = await recv_type(carol_b, "removed")
    assert removed["payload"]["banned"] is True and removed["payload"]["until"]
    await carol_b.close()
    carol_c = await member(cluster, c, carol)
    await send_json(carol_c, "join", {"room": "dev"}, id="again")
    refused = await recv_type(carol_c, "error")
    assert refused["payload"]["code"] == "banned" and refused["payload"]["reason"] == "spam"
    status, body = await call(c, "GET", "/api/rooms/dev/messages", bearer=carol)
    assert status == 403 and body["error"]["code"] == "banned"
    status, _ = await call(a, "DELETE", "/api/rooms/dev/bans/carol", bearer=alice)
    assert status == 204
    # The third node hears of the lift through Redis, a moment after the answer.
    for attempt in range(40):
        answer = await ask(carol_c, "join", {"room": "dev"}, f"unbanned-{attempt}")
        if answer["type"] == "joined":
            break
        assert answer["payload"]["code"] == "banned"
        await asyncio.sleep(0.05)
    assert answer["type"] == "joined"


async def test_a_mute_made_on_one_node_holds_on_the_others(cluster: Cluster) -> None:
    """dan is muted through the first node; his chat through the second is refused, with until."""
    a, b, _ = cluster.start(), cluster.start(), cluster.start()
    alice = await sign_up(a, "alice")
    dan = await sign_up(b, "dan")
    owner = await member(cluster, a, alice)
    await join(owner, "dev")
    dan_b = await member(cluster, b, dan)
    await join(dan_b, "dev")
    status, body = await call(a, "PUT", "/api/rooms/dev/mutes/dan", json={"for": 600}, bearer=alice)
    assert status == 200, body
    # The room frame comes after the rules order on the same channel: node b has it.
    await recv_type(dan_b, "room")
    refused = await ask(dan_b, "chat", {"room": "dev", "message": "still here"}, "m")
    assert refused["payload"]["code"] == "muted"
    assert refused["payload"]["until"] == body["mute"]["until"]
    status, _ = await call(a, "DELETE", "/api/rooms/dev/mutes/dan", bearer=alice)
    assert status == 204
    await recv_type(dan_b, "room")
    ack = await ask(dan_b, "chat", {"room": "dev", "message": "back"}, "m2")
    assert ack["type"] == "ack"
