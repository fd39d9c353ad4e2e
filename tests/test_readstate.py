"""ReadState: markers, their coalesced writes, counts and receipts, on a node with no sockets."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from roomcast.exceptions import StoreError
from roomcast.model import UserInfo
from roomcast.node import Node
from roomcast.store.base import Marker
from roomcast.store.memory import MemoryStore
from tests.fakes import FakePeer, receive_text
from tests.nodes import started, text


class CountingStore(MemoryStore):
    """A memory store that records each write of markers, and can fail them."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[list[Marker]] = []
        self.failing = False

    async def save_markers(self, markers: Sequence[Marker]) -> None:
        if self.failing:
            raise StoreError("the disk is full")
        self.writes.append(sorted(markers))
        await super().save_markers(markers)


async def node_with(*names: str) -> tuple[Node, CountingStore]:
    store = CountingStore()
    node = await started(store=store)
    for name in names:
        await store.create_user(name, "hash")
    return node, store


async def signed_in(node: Node, name: str) -> FakePeer:
    peer = FakePeer(node.new_session(UserInfo(name, False)))
    await node.connect(peer)
    peer.received()
    return peer


SENT = itertools.count()


async def say(node: Node, peer: FakePeer, text_: str, room: str = "lobby") -> int:
    """Chat (each with an id of its own); the seq of its ack."""
    fid = f"c{next(SENT)}"
    await receive_text(node, peer, text("chat", {"room": room, "message": text_}, id=fid))
    await node.flush()
    [ack] = [f for f in peer.received() if f["type"] == "ack"]
    return int(ack["payload"]["seq"])


async def read(node: Node, peer: FakePeer, fid: str = "r", **payload: Any) -> dict[str, Any]:
    """Send ``read``; the payload of the frame answering it."""
    await receive_text(node, peer, text("read", payload, id=fid))
    [reply] = [f for f in peer.received() if f.get("id") == fid]
    return reply["payload"]  # type: ignore[no-any-return]


async def test_many_reads_are_one_write_per_user_and_room() -> None:
    """Thirty reads between two writes are written as one marker, the furthest."""
    node, store = await node_with("alice", "bob")
    alice, bob = await signed_in(node, "alice"), await signed_in(node, "bob")
    for i in range(30):
        await say(node, bob, f"m{i}")
    await node.read_state.flush()
    store.writes.clear()
    for seq in range(1, 31):
        assert (await read(node, alice, room="lobby", seq=seq))["seq"] == seq
    await node.read_state.flush()
    assert store.writes == [[("alice", "lobby", 30)]]
    await node.read_state.flush()
    assert len(store.writes) == 1, "nothing moved: nothing written"
    await node.close()


async def test_a_marker_never_moves_back_and_stops_at_the_last_seq() -> None:
    """A lower seq is answered with the marker as it is; a seq past the room is lowered."""
    node, _ = await node_with("alice", "bob")
    alice, bob = await signed_in(node, "alice"), await signed_in(node, "bob")
    other = await signed_in(node, "alice")
    for i in range(3):
        await say(node, bob, f"m{i}")
    assert await read(node, alice, room="lobby", seq=99) == {
        "room": "lobby",
        "seq": 3,
        "unread": 0,
        "mentions": 0,
    }
    assert [f["payload"]["seq"] for f in other.of_type("read")] == [3]
    reply = await read(node, alice, room="lobby", seq=1)
    assert (reply["seq"], reply["unread"]) == (3, 0)
    assert other.of_type("read") == [], "no move: the other connection hears nothing"
    await node.close()


async def test_first_join_reads_a_public_past_and_not_a_private_one() -> None:
    """Joining a public room first marks its past read; a private room one was added to is not."""
    node, store = await node_with("alice", "bob")
    bob = await signed_in(node, "bob")
    await say(node, bob, "before alice came")
    await store.create_room("team", owner="bob", private=True, members=frozenset({"alice"}))
    await receive_text(node, bob, text("join", {"room": "team"}))
    await say(node, bob, "for the team", room="team")
    alice = await signed_in(node, "alice")
    await receive_text(node, alice, text("join", {"room": "team"}))
    [joined] = alice.of_type("joined")
    assert (joined["payload"]["unread"], joined["payload"]["last_read"]) == (1, 0)
    reply = await node.read_state.unread(UserInfo("alice", False))
    counts = {r.room: (r.unread, r.last_read) for r in reply.rooms}
    assert counts == {"lobby": (0, 1), "team": (1, 0)}
    await node.close()


async def test_a_guest_marker_ends_with_its_connection() -> None:
    """A guest's marker answers its own connection and is gone once it disconnects."""
    node, store = await node_with("bob")
    bob = await signed_in(node, "bob")
    await say(node, bob, "one")
    await say(node, bob, "two")
    guest = FakePeer(node.new_session())
    await node.connect(guest)
    guest.received()
    assert (await read(node, guest, room="lobby", seq=1))["unread"] == 1
    await receive_text(node, guest, text("join", {"room": "lobby"}))
    [joined] = guest.of_type("joined")
    assert (joined["payload"]["unread"], joined["payload"]["last_read"]) == (1, 1)
    node.disconnect(guest)
    assert node.read_state._guests == {}
    await node.read_state.flush()
    assert all(name == "bob" for write in store.writes for name, _, _ in write)
    await node.close()


async def test_receipts_name_readers_in_small_rooms_and_count_them_in_big_ones() -> None:
    """Up to the bound a room's history names its readers; past it, counts them per message."""
    node, _ = await node_with("alice", "bob", "carol")
    peers = {name: await signed_in(node, name) for name in ("alice", "bob", "carol")}
    first = await say(node, peers["alice"], "one")
    second = await say(node, peers["alice"], "two")
    await read(node, peers["bob"], room="lobby", seq=second)
    await read(node, peers["carol"], room="lobby", seq=first)
    await node.read_state.flush()
    receipts = [f["payload"] for f in peers["alice"].of_type("receipt")]
    assert {"room": "lobby", "user": "bob", "seq": second} in receipts
    alice = UserInfo("alice", False)
    page = await node.messaging.history(alice, "lobby", before=None, limit=10)
    assert page.receipts == {"alice": second, "bob": second, "carol": first}
    node.read_state.receipts_max = 2
    page = await node.messaging.history(alice, "lobby", before=None, limit=10)
    assert page.receipts is None
    assert page.read_counts == [(first, 2), (second, 1)], "the sender is not counted"
    await node.close()


async def test_a_hidden_reader_sends_no_receipt() -> None:
    """A user who hides receipts moves their marker without anyone being told."""
    node, store = await node_with("alice", "bob")
    alice, bob = await signed_in(node, "alice"), await signed_in(node, "bob")
    seq = await say(node, alice, "did you see?")
    await node.read_state.flush()
    alice.received()
    await store.set_hide_receipts("bob", True)
    await read(node, bob, room="lobby", seq=seq)
    await node.read_state.flush()
    assert alice.of_type("receipt") == []
    assert await store.marker("bob", "lobby") == seq
    await node.close()


async def test_a_failed_write_is_tried_again() -> None:
    """Markers the store refused are kept and written with the next interval's."""
    node, store = await node_with("alice", "bob")
    alice, bob = await signed_in(node, "alice"), await signed_in(node, "bob")
    seq = await say(node, bob, "hi")
    await node.read_state.flush()
    store.failing = True
    await read(node, alice, room="lobby", seq=seq)
    await node.read_state.flush()
    store.failing = False
    await node.read_state.flush()
    assert await store.marker("alice", "lobby") == seq
    await node.close()


async def test_reading_one_direct_conversation_leaves_the_others_unread() -> None:
    """A conversation's marker counts it alone; the whole stream's moves up behind it."""
    node, store = await node_with("alice", "bob", "carol")
    alice = await signed_in(node, "alice")
    bob, carol = await signed_in(node, "bob"), await signed_in(node, "carol")
    for i, sender in enumerate((bob, carol, bob)):
        direct = {"to": "alice", "message": "hi"}
        await receive_text(node, sender, text("direct", direct, id=f"d{i}"))
    await node.flush()
    reply = await read(node, alice, direct=True, seq=3, **{"with": "bob"})
    assert reply == {"direct": True, "with": "bob", "seq": 3, "unread": 0, "mentions": 0}
    counts = await node.read_state.unread(UserInfo("alice", False))
    assert (counts.direct.unread, counts.direct.last_read) == (1, 1)
    assert {c.peer: c.unread for c in counts.conversations} == {"bob": 0, "carol": 1}
    reply = await read(node, alice, "r2", direct=True, seq=3)
    assert (reply["unread"], reply["seq"]) == (0, 3)
    await node.close()
