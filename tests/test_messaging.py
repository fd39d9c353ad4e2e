"""Messaging through the node: chat stored then acked, resends, history, store failures, directs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from roomcast.broker.memory import MemoryBroker
from roomcast.config import Limits
from roomcast.exceptions import StoreError
from roomcast.node import Node
from roomcast.store.base import AppendResult
from roomcast.store.memory import MemoryStore
from roomcast.store.sqlite import SQLiteStore
from tests.fakes import receive_text
from tests.nodes import connected, fast_accounts, started, text


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
        token = (await accounts.open_session(name)).token
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


# -- changes, replies and mentions --------------------------------------------------


async def signed_in(names: tuple[str, ...]) -> tuple[Node, dict[str, Any]]:
    """A node with these users registered and each connected and signed in (frames read)."""
    store = MemoryStore()
    accounts = fast_accounts(store)
    for name in names:
        await accounts.register(name, "long enough password")
    node = Node(store=store, broker=MemoryBroker(), accounts=accounts)
    await node.start()
    peers = {}
    for name in names:
        peer = await connected(node)
        token = (await accounts.open_session(name)).token
        await receive_text(node, peer, text("auth", {"token": token}))
        peers[name] = peer
    for peer in peers.values():
        peer.received()
    return node, peers


async def test_a_change_is_decided_stored_published_then_acked() -> None:
    """An edit reaches every member as the room's next seq; a guest may not edit or delete."""
    node, peers = await signed_in(("alice", "bob"))
    alice, bob = peers["alice"], peers["bob"]
    await receive_text(node, alice, text("chat", {"message": "helo"}, id="c1"))
    await node.flush()
    message_id = alice.of_type("ack")[0]["payload"]["message_id"]
    await receive_text(
        node, alice, text("edit", {"message_id": message_id, "message": "hello"}, id="e1")
    )
    await node.flush()
    frames = alice.received()
    assert [f["type"] for f in frames][-2:] == ["edit", "ack"]
    assert frames[-1]["payload"] == {"room": "lobby", "seq": 2, "message_id": message_id}
    assert [f["payload"]["seq"] for f in bob.of_type("edit")] == [2]
    guest = await connected(node)
    guest.received()
    for kind, payload in (
        ("edit", {"message_id": message_id, "message": "mine"}),
        ("delete", {"message_id": message_id}),
    ):
        await receive_text(node, guest, text(kind, payload, id=kind))
        await node.flush()
        (refused,) = guest.of_type("error")
        assert refused["payload"]["code"] == "forbidden", kind
    await node.close()


async def test_mentions_name_only_users_who_may_read_and_reach_their_inbox() -> None:
    """@name resolves to registered users (any case) and sends each a mention, not the sender."""
    node, peers = await signed_in(("alice", "bob"))
    alice, bob = peers["alice"], peers["bob"]
    await receive_text(node, bob, text("leave", {"room": "lobby"}))
    await receive_text(
        node, alice, text("chat", {"message": "@Bob @alice @ghost a@bob.example"}, id="c1")
    )
    await node.flush()
    (chat,) = alice.of_type("chat")
    assert chat["payload"]["mentions"] == ["bob", "alice"]
    (mention,) = bob.of_type("mention")
    assert mention["payload"] == {
        "room": "lobby",
        "message_id": chat["payload"]["message_id"],
        "from": "alice",
        "seq": 1,
    }
    assert alice.of_type("mention") == []
    await node.close()


async def test_a_reply_quotes_what_it_answers_and_names_its_thread() -> None:
    """A reply carries reply_to, thread (the root) and a quote; another room's is refused."""
    node, peers = await signed_in(("alice",))
    alice = peers["alice"]
    await receive_text(node, alice, text("chat", {"message": "root " * 40}, id="c1"))
    await node.flush()
    root = alice.of_type("ack")[0]["payload"]["message_id"]
    await receive_text(node, alice, text("chat", {"message": "a", "reply_to": root}, id="c2"))
    await node.flush()
    reply = alice.of_type("chat")[-1]["payload"]
    assert (reply["reply_to"], reply["thread"]) == (root, root)
    assert reply["quote"] == {"from": "alice", "message": ("root " * 40)[:100]}
    await receive_text(node, alice, text("join", {"room": "elsewhere"}))
    await node.flush()
    elsewhere = {"room": "elsewhere", "message": "b", "reply_to": root}
    await receive_text(node, alice, text("chat", elsewhere, id="c3"))
    await node.flush()
    assert alice.of_type("error")[-1]["payload"]["code"] == "invalid_message"
    await node.close()


async def test_a_change_of_a_message_stored_lately_needs_no_store_read() -> None:
    """Reacting to a message this node just stored reads nothing; an unknown one is read."""
    node, peers = await signed_in(("alice",))
    alice = peers["alice"]
    store = node.store
    assert isinstance(store, MemoryStore)
    reads: list[str] = []
    read = store.message_by_id

    async def counted(message_id: str) -> Any:
        reads.append(message_id)
        return await read(message_id)

    store.message_by_id = counted  # type: ignore[method-assign]
    await receive_text(node, alice, text("chat", {"message": "new"}, id="c1"))
    await node.flush()
    message_id = alice.of_type("ack")[0]["payload"]["message_id"]
    await receive_text(node, alice, text("react", {"message_id": message_id, "emoji": "👍"}))
    await node.flush()
    assert reads == [] and alice.of_type("reaction")[0]["payload"]["seq"] == 2
    await receive_text(node, alice, text("react", {"message_id": "f" * 32, "emoji": "👍"}, id="r"))
    await node.flush()
    assert reads == ["f" * 32] and alice.of_type("error")[0]["payload"]["code"] == "not_found"
    await node.close()
