"""Ordered streams through the node: join replay, joins while busy, gaps, other nodes' messages."""

from __future__ import annotations

import asyncio

from roomcast.broker.base import Publication
from roomcast.broker.memory import MemoryBroker
from roomcast.config import Limits
from roomcast.exceptions import StoreError
from roomcast.protocol.messages import encode
from roomcast.protocol.wsframe import text_frame
from roomcast.store.memory import MemoryStore
from tests.fakes import receive_text
from tests.nodes import connected, started, text


async def test_join_since_replays_missed_messages_in_order() -> None:
    """join with since sends joined, then every stored message after since, in order."""
    node = await started()
    a = await connected(node)
    for i in range(5):
        await receive_text(node, a, text("chat", {"message": f"m{i}"}))
        await node.flush()
    late = await connected(node)
    late.received()
    await receive_text(node, late, text("join", {"room": "lobby", "since": 2}))
    frames = late.received()
    assert frames[0]["type"] == "joined"
    assert frames[0]["payload"]["seq"] == 5
    assert frames[0]["payload"]["recovered"] is True
    assert [f["payload"]["seq"] for f in frames[1:]] == [3, 4, 5]


class GatedStore(MemoryStore):
    """A memory store whose ``last_seq`` waits until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def last_seq(self, room: str) -> int:
        self.waiting.set()
        await self.gate.wait()
        return await super().last_seq(room)


async def test_messages_during_a_join_come_after_the_replay_once() -> None:
    """Messages stored while a join reads the store follow joined and the replay, none twice."""
    store = GatedStore()
    store.gate.set()
    node = await started(store=store)
    a, b = await connected(node), await connected(node)
    for p in (a, b):
        await receive_text(node, p, text("join", {"room": "r"}))
    for i in range(3):
        await receive_text(node, a, text("chat", {"message": f"m{i}", "room": "r"}))
    await node.flush()
    b.received()
    store.gate.clear()
    store.waiting.clear()
    joining = asyncio.create_task(receive_text(node, b, text("join", {"room": "r", "since": 1})))
    await store.waiting.wait()
    # Stored before the join read the last seq: the replay covers it.
    await receive_text(node, a, text("chat", {"message": "m3", "room": "r"}))
    await node.flush()
    assert b.received() == []
    store.gate.set()
    await joining
    await receive_text(node, a, text("chat", {"message": "m4", "room": "r"}))
    await node.flush()
    frames = b.received()
    assert frames[0]["type"] == "joined"
    assert frames[0]["payload"]["seq"] == 4 and frames[0]["payload"]["recovered"] is True
    assert [(f["type"], f["payload"]["seq"]) for f in frames[1:]] == [
        ("chat", 2),
        ("chat", 3),
        ("chat", 4),
        ("chat", 5),
    ]


async def test_join_outlasting_its_hold_reads_the_rest_from_the_store() -> None:
    """If more arrives during a join than may be held, the join replays it from the store."""
    store = GatedStore()
    store.gate.set()
    node = await started(store=store, limits=Limits(max_queue_bytes=600))
    a, b = await connected(node), await connected(node)
    await receive_text(node, a, text("join", {"room": "r"}))
    b.received()
    store.gate.clear()
    store.waiting.clear()
    joining = asyncio.create_task(receive_text(node, b, text("join", {"room": "r"})))
    await store.waiting.wait()
    for i in range(20):  # far more than 600 bytes of frames
        await receive_text(node, a, text("chat", {"message": f"live {i}", "room": "r"}))
    await node.flush()
    store.gate.set()
    await joining
    frames = b.received()
    assert frames[0]["type"] == "joined"
    chats = [f["payload"]["seq"] for f in frames if f["type"] == "chat"]
    assert chats == list(range(frames[0]["payload"]["seq"] + 1, 21))


async def test_recovered_is_false_when_the_gap_is_not_kept() -> None:
    """since before the oldest kept message, or beyond the last seq, answers recovered false."""

    class PrunedStore(MemoryStore):
        async def first_seq(self, room: str) -> int:
            return 3

    node = await started(store=PrunedStore())
    a = await connected(node)
    for i in range(5):
        await receive_text(node, a, text("chat", {"message": f"m{i}"}))
    await node.flush()
    a.received()
    await receive_text(node, a, text("join", {"room": "lobby", "since": 0}))
    frames = a.received()
    assert frames[0]["payload"]["recovered"] is False
    assert [f["payload"]["seq"] for f in frames[1:]] == [3, 4, 5]
    await receive_text(node, a, text("join", {"room": "lobby", "since": 2}))
    frames = a.received()
    assert frames[0]["payload"]["recovered"] is True
    assert [f["payload"]["seq"] for f in frames[1:]] == [3, 4, 5]
    await receive_text(node, a, text("join", {"room": "lobby", "since": 99}))
    frames = a.received()
    assert frames[0]["payload"]["recovered"] is False
    assert len(frames) == 1


async def test_failed_join_leaves_no_membership() -> None:
    """A join whose store read fails answers internal and does not leave the user in the room."""

    class FailingReads(MemoryStore):
        async def last_seq(self, room: str) -> int:
            if room == "lobby":
                return 0
            raise StoreError("disk gone")

    node = await started(store=FailingReads())
    a = await connected(node)
    a.received()
    await receive_text(node, a, text("join", {"room": "r"}, id="j"))
    [error] = a.received()
    assert error["payload"]["code"] == "internal" and error["id"] == "j"
    assert "r" not in a.session.rooms
    assert node.hub.member_count("r") == 0


async def test_another_nodes_messages_are_delivered_in_seq_order() -> None:
    """A publication that overtakes another waits for it; a lost one is read from the store."""
    store = MemoryStore()
    node = await started(store=store)
    member = await connected(node)
    await receive_text(node, member, text("join", {"room": "r"}))
    member.received()
    # Another node stored seqs 1..3; its publications arrive as 2, 3 (1 never comes).
    stored = [(await store.append("r", "ann", f"m{i}")).message for i in range(3)]
    frames = [text_frame(encode(message)) for message in stored]
    for message, frame in list(zip(stored, frames, strict=True))[1:]:
        node.on_publication(Publication("elsewhere", "r", None, frame, seq=message.seq))
    assert member.received() == []
    async with asyncio.timeout(5):
        while len(member.frames) < 3:
            await asyncio.sleep(0.01)
    got = member.of_type("chat")
    assert [f["payload"]["seq"] for f in got] == [1, 2, 3]
    # Repeats (a publication resent after a Redis outage) are dropped.
    node.on_publication(Publication("elsewhere", "r", None, frames[2], seq=3))
    assert member.received() == []


class RecordingBroker(MemoryBroker):
    """A memory broker that records subscriptions, in order with the store's reads."""

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    async def subscribe_room(self, room: str) -> None:
        self.log.append(f"subscribe {room}")
        await super().subscribe_room(room)

    def unsubscribe_room(self, room: str) -> None:
        self.log.append(f"unsubscribe {room}")
        super().unsubscribe_room(room)

    async def subscribe_user(self, user: str) -> None:
        self.log.append(f"subscribe user {user}")
        await super().subscribe_user(user)

    def unsubscribe_user(self, user: str) -> None:
        self.log.append(f"unsubscribe user {user}")
        super().unsubscribe_user(user)


class LoggedStore(MemoryStore):
    """A memory store that logs each read of a room's last seq."""

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    async def last_seq(self, room: str) -> int:
        self.log.append(f"last_seq {room}")
        return await super().last_seq(room)


async def test_a_room_is_heard_before_its_position_is_read() -> None:
    """A room is heard before its seq is read, until its last member leaves; a nickname too."""
    log: list[str] = []
    node = await started(store=LoggedStore(log), broker=RecordingBroker(log))
    a, b = await connected(node), await connected(node)
    await receive_text(node, a, text("join", {"room": "r"}))
    assert log.index("subscribe r") < log.index("last_seq r")
    await receive_text(node, b, text("join", {"room": "r"}))
    await receive_text(node, a, text("leave", {"room": "r"}))
    assert "unsubscribe r" not in log  # b is still in it
    await receive_text(node, b, text("leave", {"room": "r"}))
    assert log.count("unsubscribe r") == 1
    assert not [entry for entry in log if "user" in entry]  # guest-… names need no channel
    await receive_text(node, a, text("auth", {"guest": "Ann"}))
    assert "subscribe user Ann" in log
    node.disconnect(a)
    assert log[-1] == "unsubscribe user Ann"
