"""Revocation: a signed-out session's connections close on every node (fake peers, no sockets)."""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
import pytest

from roomcast import revocation
from roomcast.broker.base import Publication
from roomcast.broker.memory import MemoryBroker, MemoryBus
from roomcast.exceptions import StoreError
from roomcast.model import FOREVER_MS, StoredUser, UserInfo
from roomcast.node import Node
from roomcast.protocol.codes import CloseCode
from roomcast.revocation import (
    ACCOUNT_DELETED,
    REVOCATION_BOUND,
    REVOCATION_POLL,
    REVOCATION_WINDOW,
    Revocations,
    revoke_order,
)
from tests.fakes import FakePeer, receive_text
from tests.nodes import started, text

SID = "S" * 22
OTHER = "O" * 22
SIGNED_OUT = (CloseCode.POLICY_VIOLATION, "signed out")


async def signed_in(node: Node, name: str, session_id: str) -> FakePeer:
    """A connection of registered ``name`` that signed in at the handshake with ``session_id``."""
    session = node.connections.new_session(UserInfo(name, False), sign_in=session_id)
    peer = FakePeer(session)
    await node.connect(peer)
    return peer


class FakeSessions:
    """What the poll reads: the revocations it is given (or a failure), and their users."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str]] = []
        self.since: list[int] = []
        self.fail = False
        self.users: dict[str, StoredUser] = {
            name: StoredUser(name, "hash") for name in ("alice", "bob")
        }

    async def get_user(self, name: str) -> StoredUser | None:
        return self.users.get(name)

    async def revoked_since(self, since_ms: int) -> list[tuple[str, str]]:
        self.since.append(since_ms)
        if self.fail:
            raise StoreError("the database is away")
        return list(self.rows)


def revocations(node: Node, store: FakeSessions, poll: float = REVOCATION_POLL) -> Revocations:
    return Revocations(
        node_id=node.id,
        connections=node.connections,
        broker=node.broker,
        store=store,  # type: ignore[arg-type]  # only what the poll reads
        poll=poll,
    )


def test_the_bound_is_the_poll_plus_a_read_and_within_the_contract() -> None:
    """Connections close within 3 s (a 2 s poll over the last minute), under the contract's 10 s."""
    assert REVOCATION_POLL == 2.0
    assert REVOCATION_BOUND == 3.0 < 10.0
    assert REVOCATION_WINDOW == 60.0


async def test_revoked_closes_the_sessions_connections_here_and_on_other_nodes() -> None:
    """revoked closes the session's connections here at once and on other nodes by order."""
    bus = MemoryBus()
    a = await started(broker=MemoryBroker(bus))
    b = await started(broker=MemoryBroker(bus))
    here, there = await signed_in(a, "alice", SID), await signed_in(b, "alice", SID)
    other_session = await signed_in(b, "alice", OTHER)
    guest = FakePeer(a.new_session())
    await a.connect(guest)
    assert a.connections.signed_in_with(SID) == [here]
    assert a.connections.sign_in_of(here) == SID and a.connections.sign_in_of(guest) is None
    assert a.revocations.revoked([SID], "alice") == 1
    assert here.closed == SIGNED_OUT
    assert there.closed == SIGNED_OUT
    assert other_session.closed is None and guest.closed is None
    await a.close()
    await b.close()


async def test_the_reason_travels_with_the_order() -> None:
    """An account deleted closes its connections with that reason, on every node."""
    bus = MemoryBus()
    a = await started(broker=MemoryBroker(bus))
    b = await started(broker=MemoryBroker(bus))
    there = await signed_in(b, "alice", SID)
    a.revocations.revoked([SID, OTHER], "alice", reason=ACCOUNT_DELETED)
    assert there.closed == (CloseCode.POLICY_VIOLATION, "account deleted")
    assert orjson.loads(revoke_order([SID], "alice")) == {
        "op": "revoke",
        "sessions": [SID],
        "user": "alice",
    }
    await a.close()
    await b.close()


async def test_nothing_revoked_publishes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty list of sessions closes nothing and sends no order."""
    published: list[Publication] = []
    node = await started()
    monkeypatch.setattr(node.broker, "publish", published.append)
    assert node.revocations.revoked([], "alice") == 0
    assert published == []
    await node.close()


async def test_orders_that_do_not_parse_are_ignored() -> None:
    """A revoke order without a list of sessions, or with an unknown reason, closes safely."""
    node = await started()
    peer = await signed_in(node, "alice", SID)
    assert node.revocations.on_order({"op": "revoke", "sessions": SID}) == 0
    assert node.revocations.on_order({"op": "revoke", "sessions": [7, None]}) == 0
    assert peer.closed is None
    node.on_publication(
        Publication("elsewhere", None, None, revoke_order([SID], "alice", "hacked"), order=True)
    )
    assert peer.closed == SIGNED_OUT  # an unknown reason becomes "signed out"
    await node.close()


async def test_a_disconnected_or_reauthenticated_connection_is_forgotten() -> None:
    """A connection leaves the index when it ends, and when it becomes a guest."""
    node = await started()
    first = await signed_in(node, "alice", SID)
    second = await signed_in(node, "alice", SID)
    assert set(node.connections.signed_in_with(SID)) == {first, second}
    node.disconnect(first)
    assert node.connections.signed_in_with(SID) == [second]
    await receive_text(node, second, text("auth", {"guest": "ally"}))
    assert second.session.user == UserInfo("ally", True)
    assert node.connections.signed_in_with(SID) == []
    assert node.connections.sign_in_of(second) is None
    node.revocations.revoked([SID], "alice")
    assert second.closed is None
    await node.close()


async def test_the_poll_closes_what_the_store_says_was_revoked() -> None:
    """Revocations no order brought (the CLI's, a dropped one) are read from the store."""
    node = await started()
    store = FakeSessions()
    poller = revocations(node, store)
    peer = await signed_in(node, "alice", SID)
    bystander = await signed_in(node, "bob", OTHER)
    assert await poller.poll_once() == 0
    store.rows = [(SID, "alice")]
    before = int((time.time() - REVOCATION_WINDOW) * 1000)
    assert await poller.poll_once() == 1
    assert store.since[-1] >= before  # the last minute, by the wall clock
    assert peer.closed == SIGNED_OUT and bystander.closed is None
    await node.close()


async def test_the_poll_says_why_the_session_ended() -> None:
    """The poll closes with why: banned, account deleted (the store keeps no reason)."""
    node = await started()
    store = FakeSessions()
    poller = revocations(node, store)
    store.users["bob"] = StoredUser("bob", "hash", banned_until_ms=FOREVER_MS)
    del store.users["alice"]
    alice, bob = await signed_in(node, "alice", SID), await signed_in(node, "bob", OTHER)
    store.rows = [(SID, "alice"), (OTHER, "bob"), ("N" * 22, "nobody-here")]
    assert await poller.poll_once() == 2
    assert alice.closed == (CloseCode.POLICY_VIOLATION, "account deleted")
    assert bob.closed == (CloseCode.POLICY_VIOLATION, "banned")
    await node.close()


async def test_the_poll_also_closes_a_connection_that_signed_in_after_the_revocation() -> None:
    """A connection indexed after its session was handled is closed at the next poll."""
    node = await started()
    store = FakeSessions()
    store.rows = [(SID, "alice")]
    poller = revocations(node, store)
    assert await poller.poll_once() == 0
    late = await signed_in(node, "alice", SID)
    assert await poller.poll_once() == 1
    assert late.closed == SIGNED_OUT
    await node.close()


async def test_the_poll_runs_every_interval_and_survives_a_failing_store(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The poll task reads every interval; a store failure is logged once and it goes on."""
    node = await started()
    store = FakeSessions()
    store.fail = True
    poller = revocations(node, store, poll=0.01)
    peer = await signed_in(node, "alice", SID)
    with caplog.at_level(logging.WARNING, logger="roomcast.revocation"):
        poller.start()
        await asyncio.sleep(0.1)
    failures = [r for r in caplog.records if "cannot read revoked sessions" in r.getMessage()]
    assert len(store.since) > 3 and len(failures) == 1
    store.fail = False
    store.rows = [(SID, "alice")]
    await asyncio.sleep(0.05)
    assert peer.closed == SIGNED_OUT
    await poller.close()
    polls = len(store.since)
    await asyncio.sleep(0.05)
    assert len(store.since) == polls  # stopped
    await node.close()


async def test_memory_of_handled_sessions_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sessions remembered as handled are forgotten past the window, and capped in number."""
    node = await started()
    poller = revocations(node, FakeSessions())
    for index in range(100):
        poller.on_order({"op": "revoke", "sessions": [f"{index:022d}"], "user": "alice"})
    handled = poller._handled
    assert len(handled) == 100
    loop_now = asyncio.get_running_loop().time()
    for key in list(handled)[:99]:
        handled[key] = loop_now - REVOCATION_WINDOW - 60
    poller.on_order({"op": "revoke", "sessions": ["x" * 22], "user": "alice"})
    assert list(handled) == [f"{99:022d}", "x" * 22]  # the old ones are gone
    monkeypatch.setattr(revocation, "MAX_REMEMBERED", 10)
    poller.on_order({"op": "revoke", "sessions": [f"{i:022d}" for i in range(50)], "user": "a"})
    assert len(handled) == 10
    await node.close()
