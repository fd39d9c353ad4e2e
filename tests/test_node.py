"""The node's flows with the memory store and broker and fake peers (no sockets)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
from argon2 import PasswordHasher

from roomcast.accounts import Accounts
from roomcast.auth import Tokens
from roomcast.broker.base import Publication
from roomcast.broker.memory import MemoryBroker, MemoryBus
from roomcast.config import Limits
from roomcast.exceptions import StoreError
from roomcast.node import Node
from roomcast.protocol.codes import CloseCode
from roomcast.protocol.messages import encode
from roomcast.protocol.wsframe import text_frame
from roomcast.store.base import AppendResult
from roomcast.store.memory import MemoryStore
from roomcast.store.sqlite import SQLiteStore
from tests.fakes import FakePeer, receive_text


async def started(*, store: Any = None, broker: Any = None, limits: Limits | None = None) -> Node:
    node = Node(
        store=store or MemoryStore(),
        broker=broker or MemoryBroker(),
        limits=limits or Limits(),
    )
    await node.start()
    return node


async def connected(node: Node) -> FakePeer:
    peer = FakePeer(node.new_session())
    await node.connect(peer)
    return peer


def text(kind: str, payload: Any = None, **extra: Any) -> bytes:
    frame: dict[str, Any] = {"type": kind, **extra}
    if payload is not None:
        frame["payload"] = payload
    return orjson.dumps(frame)


def name_of(peer: FakePeer) -> str:
    assert peer.session.user is not None
    return peer.session.user.name


async def test_connect_sends_welcome_then_joined_lobby() -> None:
    """A connection is welcomed and placed in lobby; other lobby members see it join."""
    node = await started()
    first = await connected(node)
    first.received()
    second = await connected(node)
    frames = second.received()
    assert [f["type"] for f in frames] == ["system", "joined"]
    assert frames[0]["payload"]["user"] == {"name": name_of(second), "guest": True}
    assert frames[1]["payload"]["members"] == [name_of(first), name_of(second)]
    assert frames[1]["payload"]["member_count"] == 2
    [presence] = first.received()
    assert presence["type"] == "presence"
    assert presence["payload"] == {"room": "lobby", "user": name_of(second), "event": "join"}


async def test_chat_is_stored_broadcast_then_acked() -> None:
    """A chat gets the next seq, reaches every member, and the sender's ack follows its copy."""
    node = await started()
    a, b = await connected(node), await connected(node)
    a.received(), b.received()
    await receive_text(node, a, text("chat", {"message": "one"}, id="c1"))
    await node.flush()
    await receive_text(node, a, text("chat", {"message": "two"}))
    await node.flush()
    frames = a.received()
    assert [f["type"] for f in frames] == ["chat", "ack", "chat"]
    assert frames[1]["id"] == "c1"
    assert frames[1]["payload"] == {
        "room": "lobby",
        "seq": 1,
        "message_id": frames[0]["payload"]["message_id"],
    }
    assert [f["payload"]["seq"] for f in b.of_type("chat")] == [1, 2]
    history, _ = await node.store.history("lobby")
    assert [m.message for m in history] == ["one", "two"]


async def test_members_see_one_order() -> None:
    """Two senders interleaving: every member sees the same seqs in the same order."""
    node = await started()
    peers = [await connected(node) for _ in range(3)]
    for peer in peers:
        peer.received()
    for i in range(10):
        await receive_text(node, peers[i % 2], text("chat", {"message": str(i)}))
        await node.flush()
    orders = [[f["payload"]["seq"] for f in p.of_type("chat")] for p in peers]
    assert orders == [list(range(1, 11))] * 3


async def test_resent_id_is_acked_again_not_broadcast() -> None:
    """A repeated frame id from the same user is acked with the same message_id only."""
    node = await started()
    a, b = await connected(node), await connected(node)
    a.received(), b.received()
    await receive_text(node, a, text("chat", {"message": "hi"}, id="same"))
    await node.flush()
    first_ack = a.of_type("ack")[0]
    b.received()
    await receive_text(node, a, text("chat", {"message": "hi"}, id="same"))
    await node.flush()
    frames = a.received()
    assert [f["type"] for f in frames] == ["ack"]
    assert frames[0]["payload"] == first_ack["payload"]
    assert b.received() == []


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


async def test_history_pages_oldest_first() -> None:
    """history returns a page before a seq, oldest first, with has_more."""
    node = await started()
    a = await connected(node)
    for i in range(5):
        await receive_text(node, a, text("chat", {"message": f"m{i}"}))
        await node.flush()
    a.received()
    await receive_text(node, a, text("history", {"room": "lobby", "before": 5, "limit": 2}))
    [reply] = a.received()
    assert [m["seq"] for m in reply["payload"]["messages"]] == [3, 4]
    assert reply["payload"]["has_more"] is True


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


async def test_store_failure_is_an_internal_error_without_ack() -> None:
    """If the store fails, the sender gets error internal, no ack, and nothing is broadcast."""

    class BrokenStore(MemoryStore):
        def append(self, *args: Any, **kwargs: Any) -> asyncio.Future[AppendResult]:
            future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
            future.set_exception(StoreError("disk on fire"))
            return future

    node = await started(store=BrokenStore())
    a, b = await connected(node), await connected(node)
    a.received(), b.received()
    await receive_text(node, a, text("chat", {"message": "x"}, id="c"))
    await node.flush()
    [error] = a.received()
    assert error["type"] == "error"
    assert error["id"] == "c"
    assert error["payload"]["code"] == "internal"
    assert b.received() == []


async def test_a_full_store_answers_rate_limited_and_stores_the_rest(tmp_path: Path) -> None:
    """Chats past the store's queue bound get rate_limited with retry_after; the rest are acked."""
    store = SQLiteStore(tmp_path / "full.db", max_queued=3)
    node = await started(store=store, limits=Limits(rate_limit=0))
    a, b = await connected(node), await connected(node)
    a.received(), b.received()
    for i in range(10):  # one burst: all queued in the same loop turn
        assert node.handle_text(a, text("chat", {"message": f"m{i}"}, id=f"c{i}")) is None
    await store.flush()
    await node.flush()
    frames = a.received()
    acks = [f["id"] for f in frames if f["type"] == "ack"]
    refused = [f for f in frames if f["type"] == "error"]
    assert acks == ["c0", "c1", "c2"]
    assert [f["id"] for f in refused] == [f"c{i}" for i in range(3, 10)]
    for error in refused:
        assert error["payload"]["code"] == "rate_limited"
        assert 500 <= error["payload"]["retry_after"] <= 1500
    assert [f["payload"]["message"] for f in b.of_type("chat")] == ["m0", "m1", "m2"]
    # Sent again once the queue has drained, a refused message is stored.
    await receive_text(node, a, text("chat", {"message": "m3"}, id="c3"))
    await store.flush()
    await node.flush()
    assert [f["payload"]["seq"] for f in a.of_type("ack")] == [4]
    await node.close()


async def test_guest_nickname_auth() -> None:
    """auth with a guest nickname renames the connection and tells its rooms."""
    node = await started()
    a, b = await connected(node), await connected(node)
    a.received(), b.received()
    old = name_of(a)
    await receive_text(node, a, text("auth", {"guest": "ann"}, id="a1"))
    [ok] = a.of_type("auth")
    assert ok["id"] == "a1"
    assert ok["payload"] == {"ok": True, "user": {"name": "ann", "guest": True}}
    events = [(f["payload"]["user"], f["payload"]["event"]) for f in b.of_type("presence")]
    assert events == [(old, "leave"), ("ann", "join")]
    assert node.hub.members("lobby") == [name_of(b), "ann"]


async def test_auth_failures_then_close() -> None:
    """Taken or invalid names and tokens fail; the third failure closes with 1008."""
    node = await started()
    a, b = await connected(node), await connected(node)
    await receive_text(node, a, text("auth", {"guest": name_of(b)}))
    await receive_text(node, a, text("auth", {"guest": "guest-abc"}))
    assert [f["payload"]["code"] for f in a.of_type("error")] == ["auth_failed"] * 2
    assert a.closed is None
    await receive_text(node, a, text("auth", {"token": "not-a-token"}))
    assert a.closed is not None and a.closed[0] is CloseCode.POLICY_VIOLATION


async def test_two_nodes_on_one_bus_share_broadcasts() -> None:
    """A chat on one node reaches members on another node through the broker, once."""
    bus, store = MemoryBus(), MemoryStore()
    one = await started(store=store, broker=MemoryBroker(bus))
    two = await started(store=store, broker=MemoryBroker(bus))
    a, b = await connected(one), await connected(two)
    a.received(), b.received()
    await receive_text(one, a, text("chat", {"message": "across"}))
    await one.flush()
    assert [f["payload"]["message"] for f in b.of_type("chat")] == ["across"]
    assert [f["payload"]["message"] for f in a.of_type("chat")] == ["across"]
    await one.close()
    await receive_text(two, b, text("chat", {"message": "after"}))
    await two.flush()
    assert a.received() == []


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


async def test_store_down_at_connect_still_welcomes() -> None:
    """If the lobby cannot be joined, the connection is welcomed and told, not dropped."""

    class FailingReads(MemoryStore):
        async def last_seq(self, room: str) -> int:
            raise StoreError("disk gone")

    node = await started(store=FailingReads())
    a = await connected(node)
    frames = a.received()
    assert [f["type"] for f in frames] == ["system", "error"]
    assert frames[1]["payload"]["code"] == "internal"
    assert a.closed is None


def fast_accounts(store: MemoryStore) -> Accounts:
    """Accounts with a cheap argon2 setting, for tests."""
    hasher = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    return Accounts(store, Tokens("k" * 40), hasher=hasher)


async def test_without_guests_an_unauthenticated_connection_is_closed_after_the_deadline() -> None:
    """With guests off, a connection that does not auth in time is closed with 1008."""
    store = MemoryStore()
    node = Node(
        store=store,
        broker=MemoryBroker(),
        guests=False,
        accounts=fast_accounts(store),
        auth_timeout=0.05,
    )
    await node.start()
    peer = await connected(node)
    assert [f["type"] for f in peer.received()] == ["system"]
    await asyncio.sleep(0.1)
    assert peer.closed is not None and peer.closed[0] is CloseCode.POLICY_VIOLATION


async def signed_in_alice() -> tuple[Node, FakePeer, str]:
    """A node whose re-auth window is 50 ms, a connection, and a token for registered alice."""
    store = MemoryStore()
    accounts = fast_accounts(store)
    await accounts.register("alice", "long enough password")
    node = Node(store=store, broker=MemoryBroker(), accounts=accounts, reauth_timeout=0.05)
    await node.start()
    token, _ = accounts.tokens.issue("alice")
    return node, await connected(node), token


async def test_expired_token_asks_for_a_new_one_then_closes() -> None:
    """When a connection's token expires it gets token_expired, then 1008 if nothing comes."""
    node, peer, token = await signed_in_alice()
    await receive_text(node, peer, text("auth", {"token": token}, id="a"))
    assert peer.of_type("auth")[0]["payload"]["user"] == {"name": "alice", "guest": False}
    node.set_token_expiry(peer, time.time())  # as if it expired now
    await asyncio.sleep(0.01)
    [expired] = peer.of_type("error")
    assert expired["payload"]["code"] == "token_expired"
    assert peer.closed is None
    await asyncio.sleep(0.1)
    assert peer.closed == (CloseCode.POLICY_VIOLATION, "token expired")


async def test_a_new_token_cancels_the_expiry_close() -> None:
    """Sending auth with a fresh token after token_expired keeps the connection open."""
    node, peer, token = await signed_in_alice()
    await receive_text(node, peer, text("auth", {"token": token}))
    node.set_token_expiry(peer, time.time())
    await asyncio.sleep(0.01)
    await receive_text(node, peer, text("auth", {"token": token}))
    await asyncio.sleep(0.1)
    assert peer.closed is None
    node.disconnect(peer)


async def test_direct_message_reaches_both_sides_with_their_own_seqs() -> None:
    """A direct goes to the recipient and the sender with each inbox's seq, then the ack."""
    store = MemoryStore()
    accounts = fast_accounts(store)
    for name in ("alice", "bob", "carol"):
        await accounts.register(name, "long enough password")
    node = Node(store=store, broker=MemoryBroker(), accounts=accounts)
    await node.start()
    peers = {}
    for name in ("alice", "bob", "carol"):
        peer = await connected(node)
        token, _ = accounts.tokens.issue(name)
        await receive_text(node, peer, text("auth", {"token": token}))
        peers[name] = peer
    for peer in peers.values():
        peer.received()  # welcome, presence of the later ones
    await receive_text(node, peers["carol"], text("direct", {"to": "bob", "message": "first"}))
    hi = text("direct", {"to": "BOB", "message": "hi"}, id="d1")
    await receive_text(node, peers["alice"], hi)
    await node.flush()
    alice = peers["alice"].received()
    assert [f["type"] for f in alice] == ["direct", "ack"]
    assert alice[0]["payload"]["to"] == "bob" and alice[0]["payload"]["seq"] == 1
    assert alice[1]["payload"] == {"message_id": alice[0]["payload"]["message_id"], "seq": 1}
    bob = peers["bob"].of_type("direct")
    assert [(f["payload"]["from"], f["payload"]["seq"]) for f in bob] == [
        ("carol", 1),
        ("alice", 2),
    ]
    await receive_text(node, peers["alice"], text("direct", {"to": "nobody", "message": "x"}))
    [error] = peers["alice"].received()
    assert error["payload"]["code"] == "unknown_user"


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
