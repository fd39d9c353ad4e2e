"""The Broker contract, run against every broker: in-process memory and real Redis.

Each test gets a ``cluster`` factory that starts brokers for several nodes
of one service (one memory bus, or one Redis key prefix of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from roomcast.broker.base import Broker, Members, Publication
from roomcast.broker.memory import MemoryBroker, MemoryBus
from roomcast.broker.redis import RedisBroker
from tests.services import REDIS_URL, redis_prefix


class Recorder:
    """A node as the broker sees it: records every event."""

    def __init__(self) -> None:
        self.publications: list[Publication] = []
        self.presence: list[tuple[str, str, bool, int]] = []
        self.resyncs = 0
        self.local: list[tuple[str, str]] = []

    def on_publication(self, publication: Publication) -> None:
        self.publications.append(publication)

    def on_presence(self, room: str, user: str, joined: bool, count: int) -> None:
        self.presence.append((room, user, joined, count))

    def on_resync(self) -> None:
        self.resyncs += 1

    def local_presence(self) -> list[tuple[str, str]]:
        return list(self.local)


Cluster = Callable[[str], Awaitable[tuple[Broker, Recorder]]]


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until ``check()`` holds; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def settle() -> None:
    """Give a broker time to deliver what it has (for checks that nothing more comes)."""
    await asyncio.sleep(0.2)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def cluster(request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    started: list[Broker] = []
    bus = MemoryBus()
    with contextlib.ExitStack() as stack:
        prefix = stack.enter_context(redis_prefix()) if request.param == "redis" else ""

        async def node(node_id: str) -> tuple[Broker, Recorder]:
            broker: Broker
            if request.param == "memory":
                broker = MemoryBroker(bus)
            else:
                broker = RedisBroker(REDIS_URL, prefix=prefix, presence_ttl=1.0)
            recorder = Recorder()
            await broker.start(node_id, recorder)
            started.append(broker)
            return broker, recorder

        yield node
        for broker in started:
            await broker.close()


async def test_publications_reach_other_nodes_not_the_publisher(cluster: Cluster) -> None:
    """A publication reaches every other subscribed node intact, never its own."""
    (a, got_a), (b, got_b), (c, got_c) = [await cluster(n) for n in ("a", "b", "c")]
    for broker in (a, b, c):
        await broker.subscribe_room("lobby")
        await broker.subscribe_user("ann")
    room_pub = Publication("a", "lobby", None, b"\x81\x02hi", seq=7)
    user_pub = Publication("a", None, "ann", b"frame", skip_user=None, seq=3)
    typing = Publication("a", "lobby", None, b"t", skip_user="ann")
    for pub in (room_pub, user_pub, typing):
        a.publish(pub)
    await eventually(lambda: len(got_b.publications) == 3 and len(got_c.publications) == 3)
    # Each channel keeps its order; different channels' may interleave.
    for got in (got_b, got_c):
        assert [p for p in got.publications if p.room] == [room_pub, typing]
        assert [p for p in got.publications if p.user] == [user_pub]
    await settle()
    assert got_a.publications == []


async def test_publications_keep_their_order(cluster: Cluster) -> None:
    """What one node publishes arrives at another in the order it was published."""
    (a, _), (b, got_b) = await cluster("a"), await cluster("b")
    await b.subscribe_room("r")
    for seq in range(1, 1001):
        a.publish(Publication("a", "r", None, b"x" * (seq % 50), seq=seq))
        if seq % 100 == 0:
            await asyncio.sleep(0)
    await eventually(lambda: len(got_b.publications) == 1000)
    assert [p.seq for p in got_b.publications] == list(range(1, 1001))


async def test_a_big_room_lists_limit_distinct_names_and_counts_all(cluster: Cluster) -> None:
    """A room of 300 (past one scan's worth) lists at most ``limit`` distinct names, counts all."""
    (a, got_a), (b, _) = await cluster("a"), await cluster("b")
    users = [f"user{i:03d}" for i in range(300)]
    for user in users:
        a.presence_changed("big", user, True)
    await eventually(lambda: len(got_a.presence) == 300)
    found = await b.members("big", 50)
    assert found.count == 300
    assert len(found.names) == len(set(found.names)) == 50
    assert found.names == sorted(found.names) and set(found.names) <= set(users)
    assert await b.members("big", 1000) == Members(users, 300)


async def test_join_and_leave_are_told_once_across_nodes(cluster: Cluster) -> None:
    """A user on two nodes joins a room once (first node) and leaves it once (last node)."""
    (a, got_a), (b, got_b) = await cluster("a"), await cluster("b")
    a.presence_changed("r", "ann", True)
    await eventually(lambda: got_a.presence == [("r", "ann", True, 1)])
    b.presence_changed("r", "ann", True)
    b.presence_changed("r", "bob", True)
    await eventually(lambda: got_b.presence == [("r", "bob", True, 2)])
    assert await a.members("r", 10) == Members(["ann", "bob"], 2)
    assert await b.members("r", 1) in (Members(["ann"], 2), Members(["bob"], 2))
    a.presence_changed("r", "ann", False)
    await settle()
    assert got_a.presence == [("r", "ann", True, 1)]
    assert await b.members("r", 10) == Members(["ann", "bob"], 2)
    b.presence_changed("r", "ann", False)
    await eventually(lambda: len(got_b.presence) == 2)
    assert got_b.presence[-1] == ("r", "ann", False, 1)
    assert await a.members("r", 10) == Members(["bob"], 1)
    assert await a.members("empty", 10) == Members([], 0)


async def test_a_closed_node_takes_its_users_out_of_presence(cluster: Cluster) -> None:
    """A node that stops with users still in rooms makes them leave, told once, by itself."""
    (a, got_a), (b, got_b) = await cluster("a"), await cluster("b")
    a.presence_changed("r", "ann", True)
    await eventually(lambda: len(got_a.presence) == 1)
    b.presence_changed("r", "bob", True)
    await eventually(lambda: len(got_b.presence) == 1)
    await a.close()
    assert got_a.presence == [("r", "ann", True, 1), ("r", "ann", False, 1)]
    await settle()
    assert got_b.presence == [("r", "bob", True, 2)]
    assert await b.members("r", 10) == Members(["bob"], 1)


async def test_ping_answers_while_connected(cluster: Cluster) -> None:
    """A started broker's ping succeeds."""
    broker, _ = await cluster("a")
    await broker.ping()


async def test_a_node_hears_only_the_rooms_and_names_it_subscribed(cluster: Cluster) -> None:
    """Room and user publications reach only subscribed nodes; orders without a room reach all."""
    (a, _), (b, got_b), (c, got_c) = [await cluster(n) for n in ("a", "b", "c")]
    await b.subscribe_room("mine")
    await b.subscribe_user("Ann")
    await c.subscribe_room("other")
    for_b = [
        Publication("a", "mine", None, b"room", seq=1),
        Publication("a", None, "ANN", b"direct", seq=1),
        Publication("a", None, "ann", b"", name_claim=True),
        Publication("a", "mine", None, b'{"op":"removed"}', order=True),
        Publication("a", None, "aNN", b'{"op":"muted"}', order=True),
    ]
    for_c = [Publication("a", "other", None, b"elsewhere", seq=1)]
    everyone = Publication("a", None, None, b'{"op":"revoke"}', order=True)
    for pub in (*for_b, *for_c, everyone):
        a.publish(pub)
    await eventually(lambda: len(got_b.publications) == 6 and len(got_c.publications) == 2)
    await settle()
    key = repr  # channels interleave: compare what arrived, not the order across them
    assert sorted(got_b.publications, key=key) == sorted([*for_b, everyone], key=key)
    assert sorted(got_c.publications, key=key) == sorted([*for_c, everyone], key=key)


async def test_an_unsubscribed_room_is_heard_no_more(cluster: Cluster) -> None:
    """After unsubscribe_room, the room's publications stop; subscribing again resumes them."""
    (a, _), (b, got_b) = await cluster("a"), await cluster("b")
    await b.subscribe_room("r")
    a.publish(Publication("a", "r", None, b"1", seq=1))
    await eventually(lambda: len(got_b.publications) == 1)
    b.unsubscribe_room("r")
    await settle()
    a.publish(Publication("a", "r", None, b"2", seq=2))
    await settle()
    await b.subscribe_room("r")
    a.publish(Publication("a", "r", None, b"3", seq=3))
    await eventually(lambda: len(got_b.publications) == 2)
    await settle()
    assert [p.frame for p in got_b.publications] == [b"1", b"3"]


async def test_what_is_published_once_subscribe_returns_arrives(cluster: Cluster) -> None:
    """A publication made the moment subscribe_room returns is delivered (nothing is missed)."""
    (a, _), (b, got_b) = await cluster("a"), await cluster("b")
    for i in range(20):
        await b.subscribe_room(f"room{i}")
        a.publish(Publication("a", f"room{i}", None, b"first", seq=1))
    await eventually(lambda: len(got_b.publications) == 20)
    assert [p.room for p in got_b.publications] == [f"room{i}" for i in range(20)]
