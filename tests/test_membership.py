"""Membership through the node: presence on join, leave and disconnect; big rooms; several nodes."""

from __future__ import annotations

from roomcast.broker.memory import MemoryBroker, MemoryBus
from roomcast.config import Limits
from roomcast.store.memory import MemoryStore
from tests.fakes import FakePeer, receive_text
from tests.nodes import connected, name_of, started, text


async def test_join_leave_presence_and_typing() -> None:
    """join/leave tell the other members; typing reaches others only; presence lists members."""
    node = await started()
    a, b = await connected(node), await connected(node)
    a.received(), b.received()
    await receive_text(node, a, text("join", {"room": "dev"}, id="j"))
    joined = a.of_type("joined")[0]
    assert joined["id"] == "j"
    assert joined["payload"]["members"] == [name_of(a)]
    await receive_text(node, b, text("join", {"room": "dev"}))
    assert a.of_type("presence")[0]["payload"]["event"] == "join"
    await receive_text(node, b, text("typing", {"room": "dev"}))
    assert a.of_type("typing")[0]["payload"] == {"room": "dev", "user": name_of(b)}
    assert b.of_type("typing") == []
    await receive_text(node, a, text("presence", {"room": "dev"}, id="p"))
    members = a.of_type("presence")[0]
    assert members["id"] == "p"
    assert members["payload"]["members"] == [name_of(a), name_of(b)]
    await receive_text(node, b, text("leave", {"room": "dev"}))
    assert b.of_type("left")[0]["payload"] == {"room": "dev"}
    assert a.of_type("presence")[0]["payload"] == {
        "room": "dev",
        "user": name_of(b),
        "event": "leave",
    }


async def test_disconnect_tells_rooms_the_user_left() -> None:
    """When a connection ends its user leaves every room it was in."""
    node = await started()
    a, b = await connected(node), await connected(node)
    a.received()
    node.disconnect(b)
    [leave] = a.received()
    assert leave["payload"] == {"room": "lobby", "user": name_of(b), "event": "leave"}
    assert node.hub.members("lobby") == [name_of(a)]


async def test_big_rooms_send_no_presence_events() -> None:
    """Above the presence limit joins are silent and member lists are capped."""
    node = await started(limits=Limits(presence_limit=2))
    peers = [await connected(node) for _ in range(3)]
    presence = [f for f in peers[0].received() if f["type"] == "presence"]
    # The second member's join is announced; the third passes the limit of 2.
    assert [f["payload"]["user"] for f in presence] == [name_of(peers[1])]
    joined = [f for f in peers[2].received() if f["type"] == "joined"][0]
    assert len(joined["payload"]["members"]) == 2
    assert joined["payload"]["member_count"] == 3


async def test_two_nodes_announce_a_user_on_both_once() -> None:
    """A user connected to two nodes joins and leaves a room once for the other members."""
    bus, store = MemoryBus(), MemoryStore()
    one = await started(store=store, broker=MemoryBroker(bus))
    two = await started(store=store, broker=MemoryBroker(bus))
    watcher = await connected(one)
    first = FakePeer.named("ann")
    second = FakePeer.named("ann")
    await one.connect(first)
    await two.connect(second)
    await receive_text(two, second, text("leave", {"room": "lobby"}))
    await receive_text(one, first, text("leave", {"room": "lobby"}))
    events = [f["payload"] for f in watcher.of_type("presence") if f["payload"]["user"] == "ann"]
    assert events == [
        {"room": "lobby", "user": "ann", "event": "join"},
        {"room": "lobby", "user": "ann", "event": "leave"},
    ]
