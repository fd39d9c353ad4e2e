"""Connections through the node: guest nicknames, auth failures, deadlines and token expiry."""

from __future__ import annotations

import asyncio
import time

from roomcast.broker.memory import MemoryBroker
from roomcast.node import Node
from roomcast.protocol.codes import CloseCode
from roomcast.store.memory import MemoryStore
from tests.fakes import FakePeer, receive_text
from tests.nodes import connected, fast_accounts, name_of, started, text


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
    token = (await accounts.open_session("alice")).token
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
