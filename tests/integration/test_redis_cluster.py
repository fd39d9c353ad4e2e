"""roomcast nodes on a real Redis Cluster: sharded rooms, presence, typing, and a failover.

The cluster is tests/redis_servers.py's (3 masters, 3 replicas, of the test
run's own); each roomcast node is given a different cluster node's address
as ``--redis-url`` (replicas too: any node names the cluster). Rooms are
chosen with the broker's own channel names so that their channels hash to
different shards, so every shard carries some of the traffic.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection

from roomcast.broker.redis import room_channel
from tests.integration.redis_nodes import (
    Clients,
    Conversation,
    Nodes,
    Received,
    all_received,
    chat_through_fault,
    chats,
    in_room,
    join,
    members,
    next_event,
    numbered_chat,
    receive,
)
from tests.integration.serverproc import ServerProcess
from tests.integration.users import sign_up
from tests.integration.wsclient import recv_type, send_json
from tests.redis_servers import RedisClusterRig
from tests.services import fresh_database, fresh_redis_prefix

pytestmark = pytest.mark.redis

#: Seconds from SIGKILL of a master to every acked message at every receiver.
#: The cluster fails over in 2-3 s, and the nodes had everything 5 s after
#: the kill (measured on 2 busy cores); 20 s leaves room for a loaded CI.
FAILOVER_DELIVERY = 20.0


@dataclass
class Trio:
    """Three nodes on one database and key prefix, each on another cluster node's address."""

    group: Nodes
    servers: list[ServerProcess]


@pytest.fixture(scope="module")
def trio(
    tmp_path_factory: pytest.TempPathFactory, redis_cluster_rig: RedisClusterRig
) -> Iterator[Trio]:
    """Three nodes shared by this module's tests without faults (each uses rooms of its own)."""
    prefix = fresh_redis_prefix()
    with fresh_database() as url:
        group = Nodes(tmp_path_factory.mktemp("trio"), url, prefix)
        try:
            yield Trio(group, group.start_all(spread_urls(redis_cluster_rig)))
        finally:
            group.stop()
            redis_cluster_rig.cleanup(prefix)


@pytest.fixture
def nodes(tmp_path: Path, redis_cluster: RedisClusterRig) -> Iterator[Nodes]:
    """No nodes yet, on a fresh database and key prefix; stopped, and the keys gone, after."""
    prefix = fresh_redis_prefix()
    with fresh_database() as url:
        group = Nodes(tmp_path, url, prefix)
        try:
            yield group
        finally:
            group.stop()
            redis_cluster.cleanup(prefix)


def spread_urls(rig: RedisClusterRig) -> list[str]:
    """Three cluster node addresses: a master, another shard's replica, a third shard's master."""
    ranges = rig.slots()
    ports = [ranges[0].master, ranges[1].replicas[0], ranges[2].master]
    return [f"redis://127.0.0.1:{port}" for port in ports]


def rooms_on_every_shard(rig: RedisClusterRig, prefix: str, base: str) -> list[str]:
    """One room per shard, by the slot of the channel the broker gives the room."""
    rooms = rig.one_per_shard(lambda room: room_channel(prefix, room), base=base)
    assert len({rig.master_of(room_channel(prefix, room)) for room in rooms}) == 3
    return rooms


async def test_rooms_on_three_shards_reach_every_node_in_one_order(
    redis_cluster: RedisClusterRig, trio: Trio, ws_clients: Clients
) -> None:
    """Three nodes, three rooms on three shards: every member sees each room's seqs 1..N."""
    rooms = rooms_on_every_shard(redis_cluster, trio.group.prefix, "hall")
    talkers = [(await ws_clients.guest(server))[0] for server in trio.servers]
    for ws in talkers:
        for room in rooms:
            await join(ws, room)
    per_room = 6

    async def talk(index: int, ws: ClientConnection) -> None:
        for n in range(per_room):
            for room in rooms:
                payload = {"room": room, "message": f"{index}-{n}"}
                await send_json(ws, "chat", payload, id=f"{room}-{n}")

    total = per_room * len(talkers) * len(rooms)
    readers = [asyncio.ensure_future(chats(ws, set(rooms), total)) for ws in talkers]
    await asyncio.gather(*(talk(i, ws) for i, ws in enumerate(talkers)))
    seen = await asyncio.gather(*readers)
    for room in rooms:
        orders = [[(m["seq"], m["message_id"]) for m in got if m["room"] == room] for got in seen]
        assert [seq for seq, _ in orders[0]] == list(range(1, per_room * len(talkers) + 1))
        assert orders[1] == orders[0] and orders[2] == orders[0], room


async def test_presence_typing_and_direct_messages_cross_shards_and_nodes(
    redis_cluster: RedisClusterRig, trio: Trio, ws_clients: Clients
) -> None:
    """Joins, member lists, typing and leaves in rooms on every shard reach the other nodes."""
    rooms = rooms_on_every_shard(redis_cluster, trio.group.prefix, "club")
    a, b, c = trio.servers
    names = ("ann", "bob", "cat")
    signed = await asyncio.gather(*(sign_up(a, name) for name in names))
    tokens = dict(zip(names, signed, strict=True))
    ann = await ws_clients.member(a, tokens["ann"])
    bob = await ws_clients.member(b, tokens["bob"])
    cat = await ws_clients.member(c, tokens["cat"])
    for room in rooms:
        await join(ann, room)
        joined = await join(bob, room)
        assert sorted(joined["payload"]["members"]) == ["ann", "bob"], room
        event = await next_event(ann, "presence", in_room(room))
        assert event == {"room": room, "user": "bob", "event": "join"}
        await send_json(cat, "presence", {"room": room}, id=f"p-{room}")
        listing = await next_event(cat, "presence", in_room(room))
        assert sorted(listing["members"]) == ["ann", "bob"] and listing["member_count"] == 2
        await send_json(bob, "typing", {"room": room})
        typing = await next_event(ann, "typing", in_room(room))
        assert typing == {"room": room, "user": "bob"}
    # A direct message crosses nodes on the users' own (sharded) channels.
    await send_json(ann, "direct", {"to": "cat", "message": "psst"}, id="d1")
    got = await recv_type(cat, "direct")
    assert (got["payload"]["from"], got["payload"]["message"]) == ("ann", "psst")
    for room in rooms:
        await send_json(ann, "leave", {"room": room}, id=f"l-{room}")
        left = await next_event(bob, "presence", in_room(room))
        assert left == {"room": room, "user": "ann", "event": "leave"}


async def test_a_guest_nickname_in_use_on_one_node_is_refused_on_another(
    trio: Trio, ws_clients: Clients
) -> None:
    """A guest called Zed on one node keeps the name from a guest on another node."""
    a, _, c = trio.servers
    first, _ = await ws_clients.guest(a)
    await send_json(first, "auth", {"guest": "Zed"}, id="nick")
    assert (await recv_type(first, "auth"))["payload"]["user"]["name"] == "Zed"
    second, _ = await ws_clients.guest(c)
    await send_json(second, "auth", {"guest": "zed"}, id="nick")
    refused = await recv_type(second, "error")
    assert refused["payload"]["code"] == "auth_failed", refused


async def test_a_master_killed_mid_chat_loses_and_repeats_nothing(
    redis_cluster: RedisClusterRig, nodes: Nodes, ws_clients: Clients
) -> None:
    """SIGKILL the master of a room's shard mid-chat: every acked message arrives once, in order."""
    room = rooms_on_every_shard(redis_cluster, nodes.prefix, "talk")[1]
    channel = room_channel(nodes.prefix, room)
    doomed = redis_cluster.master_of(channel)
    survivors = [port for port in redis_cluster.ports if port != doomed]
    # One receiver's node was told the doomed master's address: it must go on
    # from the slot map it learned, not from the address it was given.
    urls = [f"redis://127.0.0.1:{survivors[0]}", f"redis://127.0.0.1:{doomed}"]
    urls.append(f"redis://127.0.0.1:{survivors[1]}")
    a, b, c = await asyncio.to_thread(nodes.start_all, urls)
    sender, sender_name = await ws_clients.guest(a)
    receivers, receiver_names = zip(*[await ws_clients.guest(node) for node in (b, c)], strict=True)
    for ws in (sender, *receivers):
        await join(ws, room)
    got = [Received(), Received()]
    readers = [
        asyncio.ensure_future(receive(ws, room, r)) for ws, r in zip(receivers, got, strict=True)
    ]
    sent = Conversation()
    stop = asyncio.Event()
    talker = asyncio.ensure_future(numbered_chat(sender, room, sent, stop, gap=0.05))
    try:
        await all_received(got, 10, timeout=10)  # the chat flows before the fault
        killed_at = time.monotonic()
        await asyncio.to_thread(redis_cluster.kill_master_of, channel)
        promoted = await asyncio.to_thread(redis_cluster.wait_for_failover, channel, doomed)
        failover = time.monotonic() - killed_at
        # Go on until the nodes are ready again and some more messages went through.
        total = await chat_through_fault(
            [a, b, c], sent, stop, talker, got, killed_at, FAILOVER_DELIVERY
        )
        delivered = time.monotonic() - killed_at - 0.5
    except (TimeoutError, AssertionError) as exc:
        raise AssertionError(
            f"sent {len(sent.seqs)}, received {[len(r.messages) for r in got]}\n{nodes.stderr()}"
        ) from exc
    finally:
        stop.set()
        for task in (*readers, talker):
            task.cancel()
    assert promoted != doomed
    assert sent.seqs == list(range(1, total + 1))
    for received in got:
        assert [m["seq"] for m in received.messages] == sent.seqs
        assert [m["message"] for m in received.messages] == sent.texts
    # Presence is whole again: the three guests, whatever the failover took out.
    async with asyncio.timeout(10):
        while (listing := await members(sender, room, "p"))["member_count"] != 3:
            await asyncio.sleep(0.2)
    assert sorted(listing["members"]) == sorted([sender_name, *receiver_names])
    late = max(t - sent.sent_at[i] for r in got for i, t in enumerate(r.times))
    print(
        f"failover {failover:.1f} s; all {total} acked messages everywhere"
        f" {delivered:.1f} s after the kill; slowest ack {max(sent.ack_waits):.2f} s;"
        f" slowest delivery {late:.2f} s; presence events {[r.presence for r in got]}"
    )
