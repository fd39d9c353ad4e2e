"""Several real nodes on one PostgreSQL database and one Redis act as one server.

Each test gets its own database and Redis key prefix (dropped afterwards),
and starts real ``roomcast serve`` processes with ``--database-url`` and
``--redis-url``; clients are real WebSocket connections to different nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.integration.redis_nodes import HEARTBEAT, start_node
from tests.integration.serverproc import ServerProcess
from tests.integration.users import call, sign_up, user_ws
from tests.integration.wsclient import ask, recv_json, recv_type, send_json, welcome
from tests.netproxy import TcpProxy
from tests.services import REDIS_URL, fresh_database, kill_redis_clients, redis_prefix


class Cluster:
    """Starts nodes sharing one fresh database and one Redis prefix."""

    def __init__(self, tmp_path: Path, database_url: str, prefix: str) -> None:
        self.tmp_path = tmp_path
        self.database_url = database_url
        self.prefix = prefix
        self.nodes: list[ServerProcess] = []
        self.clients: list[ClientConnection] = []

    def start(self, *extra: str) -> ServerProcess:
        node = start_node(self.tmp_path, self.database_url, REDIS_URL, self.prefix, *extra)
        self.nodes.append(node)
        return node


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """Nodes on a fresh database and Redis prefix; all stopped and dropped afterwards."""
    with redis_prefix() as prefix, fresh_database() as url:
        group = Cluster(tmp_path, url, prefix)
        try:
            yield group
        finally:
            for ws in group.clients:
                await ws.close()
            for node in group.nodes:
                await asyncio.to_thread(node.stop)


async def tracked(cluster: Cluster, ws: ClientConnection) -> ClientConnection:
    """``ws``, closed when the test ends."""
    cluster.clients.append(ws)
    return ws


async def guest(cluster: Cluster, node: ServerProcess) -> ClientConnection:
    """A guest connection to ``node``, past its welcome."""
    return (await named_guest(cluster, node))[0]


async def named_guest(cluster: Cluster, node: ServerProcess) -> tuple[ClientConnection, str]:
    """A guest connection to ``node``, past its welcome, and the guest's name."""
    ws = await tracked(cluster, await connect(node.ws_url(), open_timeout=5))
    system, _ = await welcome(ws)
    return ws, system["payload"]["user"]["name"]


async def member(cluster: Cluster, node: ServerProcess, token: str) -> ClientConnection:
    """A connection to ``node`` signed in with ``token``, past its welcome."""
    return await tracked(cluster, await user_ws(node, token))


async def join(ws: ClientConnection, room: str, since: int | None = None) -> dict[str, Any]:
    """Join ``room``; the ``joined`` frame."""
    payload: dict[str, Any] = {"room": room}
    if since is not None:
        payload["since"] = since
    await send_json(ws, "join", payload, id=f"join-{room}")
    return await recv_type(ws, "joined")


async def ack_of(ws: ClientConnection, fid: str) -> int:
    """The seq in the ``ack`` of frame ``fid`` (other frames skipped)."""
    async with asyncio.timeout(10.0):
        while True:
            frame = await recv_json(ws)
            if frame["type"] == "ack" and frame.get("id") == fid:
                return int(frame["payload"]["seq"])


async def chats(ws: ClientConnection, room: str, count: int, timeout: float = 15.0) -> list[Any]:
    """The next ``count`` chat frames of ``room`` (other frames skipped)."""
    got: list[Any] = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            frame = await recv_json(ws, timeout)
            if frame["type"] == "chat" and frame["payload"]["room"] == room:
                got.append(frame["payload"])
    return got


async def test_three_nodes_concurrent_chat_one_gapless_order(cluster: Cluster) -> None:
    """Clients on three nodes chatting at once in one room all see seqs 1..N in one order."""
    nodes = [cluster.start() for _ in range(3)]
    clients = [await guest(cluster, node) for node in nodes for _ in range(2)]
    for ws in clients:
        await join(ws, "town")
    per_client = 15

    async def talk(index: int, ws: ClientConnection) -> None:
        for n in range(per_client):
            await send_json(ws, "chat", {"room": "town", "message": f"{index}-{n}"}, id=f"{n}")

    total = per_client * len(clients)
    readers = [asyncio.ensure_future(chats(ws, "town", total)) for ws in clients]
    await asyncio.gather(*(talk(i, ws) for i, ws in enumerate(clients)))
    seen = await asyncio.gather(*readers)
    orders = [[(m["seq"], m["message_id"]) for m in got] for got in seen]
    assert [seq for seq, _ in orders[0]] == list(range(1, total + 1))
    assert all(order == orders[0] for order in orders)
    assert sorted(m["message"] for m in seen[0]) == sorted(
        f"{i}-{n}" for i in range(len(clients)) for n in range(per_client)
    )
    # History is the same whichever node answers it.
    token = await sign_up(nodes[0], "reader")
    pages = []
    for node in nodes:
        status, body = await call(node, "GET", "/api/rooms/town/messages?limit=100", bearer=token)
        assert status == 200, body
        pages.append([(m["seq"], m["message_id"]) for m in body["messages"]])
    assert pages == [orders[0]] * 3


async def test_presence_and_direct_messages_across_nodes(cluster: Cluster) -> None:
    """Members are the union over nodes, join events come once, and DMs cross nodes."""
    a, b, c = cluster.start(), cluster.start(), cluster.start()
    tokens = {name: await sign_up(a, name) for name in ("ann", "bob", "cat")}
    ann = await member(cluster, a, tokens["ann"])
    ann_too = await member(cluster, c, tokens["ann"])  # ann on a second node
    bob = await member(cluster, b, tokens["bob"])
    await join(ann, "club")
    await join(ann_too, "club")
    joined = await join(bob, "club")
    assert sorted(joined["payload"]["members"]) == ["ann", "bob"]
    event = await recv_type(ann, "presence")
    while event["payload"]["room"] == "lobby":  # bob's lobby join may come late from b
        event = await recv_type(ann, "presence")
    assert event["payload"] == {"room": "club", "user": "bob", "event": "join"}
    cat = await member(cluster, c, tokens["cat"])
    await send_json(cat, "presence", {"room": "club"}, id="p")
    listing = await recv_type(cat, "presence")
    assert sorted(listing["payload"]["members"]) == ["ann", "bob"]
    assert listing["payload"]["member_count"] == 2
    # ann's second connection joining did not announce her again.
    await send_json(bob, "ping", id="marker")
    frame = await recv_json(bob)
    while frame["type"] != "pong":
        assert frame["type"] != "presence" or frame["payload"]["room"] != "club", frame
        frame = await recv_json(bob)
    # A direct message from a to b reaches bob on b, and both of ann's connections.
    await send_json(ann, "direct", {"to": "bob", "message": "psst"}, id="d1")
    got = await recv_type(bob, "direct")
    assert (got["payload"]["from"], got["payload"]["message"]) == ("ann", "psst")
    mine = await recv_type(ann_too, "direct")
    assert mine["payload"]["message_id"] == got["payload"]["message_id"]
    # ann leaves from one node: still present; from both: bob sees one leave.
    await send_json(ann, "leave", {"room": "club"}, id="l1")
    await send_json(ann_too, "leave", {"room": "club"}, id="l2")
    left = await recv_type(bob, "presence")
    while left["payload"]["room"] == "lobby":  # cat's lobby join may come late from c
        left = await recv_type(bob, "presence")
    assert left["payload"] == {"room": "club", "user": "ann", "event": "leave"}


async def test_registering_on_one_node_takes_the_name_from_a_guest_on_another(
    cluster: Cluster,
) -> None:
    """A guest named dan on node a is closed when dan registers on node b."""
    a, b = cluster.start(), cluster.start()
    guest = await tracked(cluster, await connect(a.ws_url(), open_timeout=5))
    await welcome(guest)
    await send_json(guest, "auth", {"guest": "Dan"}, id="nick")
    assert (await recv_type(guest, "auth"))["payload"]["user"]["name"] == "Dan"
    await sign_up(b, "dan")
    refused = await recv_type(guest, "error")
    assert refused["payload"]["code"] == "auth_failed"
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(guest.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_a_killed_node_leaves_presence_and_the_others_carry_on(cluster: Cluster) -> None:
    """SIGKILL one node: the others keep chatting; its users leave within two heartbeats."""
    a, b, doomed = cluster.start(), cluster.start(), cluster.start()
    one, two = await guest(cluster, a), await guest(cluster, b)
    gone, gone_name = await named_guest(cluster, doomed)
    for ws in (one, two, gone):
        await join(ws, "room")
    doomed.stop(signal.SIGKILL)
    wanted = {"room": "room", "user": gone_name, "event": "leave"}
    async with asyncio.timeout(2 * HEARTBEAT + 2.0):
        while (await recv_type(one, "presence"))["payload"] != wanted:
            pass
    await send_json(one, "chat", {"room": "room", "message": "still here"}, id="s")
    got = await chats(two, "room", 1)
    assert got[0]["message"] == "still here"
    await send_json(two, "presence", {"room": "room"}, id="p")
    listing = await recv_type(two, "presence")
    while "members" not in listing["payload"]:
        listing = await recv_type(two, "presence")
    assert gone_name not in listing["payload"]["members"]


async def test_redis_connections_killed_mid_conversation(cluster: Cluster) -> None:
    """Redis drops every connection: fan-out resumes and a resuming client misses nothing."""
    a, b = cluster.start(), cluster.start()
    sender, receiver = await guest(cluster, a), await guest(cluster, b)
    for ws in (sender, receiver):
        await join(ws, "talk")
    for n in range(5):
        await send_json(sender, "chat", {"room": "talk", "message": f"before-{n}"}, id=f"b{n}")
    before = await chats(receiver, "talk", 5)
    raw = aioredis.Redis.from_url(REDIS_URL)
    try:
        # As a Redis restart does: our keys go, and every node's connections
        # drop (only this test's nodes': a shared Redis has other users).
        async for key in raw.scan_iter(match=f"{cluster.prefix}*"):
            await raw.delete(key)
        assert await kill_redis_clients(cluster.prefix) >= 4
    finally:
        await raw.aclose()
    acked = []
    for n in range(20):
        await send_json(sender, "chat", {"room": "talk", "message": f"during-{n}"}, id=f"d{n}")
        acked.append(await ack_of(sender, f"d{n}"))
        await asyncio.sleep(0.05)
    # Fan-out resumes within 5 s: the receiver gets everything, live or caught up.
    during = await chats(receiver, "talk", 20, timeout=5.0)
    assert [m["seq"] for m in during] == acked == list(range(6, 26))
    # A client that resumes from its last seen seq has every acked message.
    late = await guest(cluster, b)
    await join(late, "talk", since=before[-1]["seq"])
    replay = await chats(late, "talk", 20)
    assert [m["seq"] for m in replay] == acked
    # Presence was rebuilt: both nodes' users are listed again.
    await send_json(late, "presence", {"room": "talk"}, id="p")
    frame = await recv_type(late, "presence")
    while "members" not in frame["payload"]:
        frame = await recv_type(late, "presence")
    assert frame["payload"]["member_count"] == 3
    # The receiving node counted its catch-up from the store.
    async with aiohttp.ClientSession() as http, http.get(b.http_url("/metrics")) as resp:
        metrics = await resp.text()
    resyncs = re.search(r'^roomcast_catch_ups_total\{reason="resync"\} (\S+)$', metrics, re.M)
    assert resyncs is not None and float(resyncs.group(1)) >= 1


async def test_ready_is_503_while_redis_is_cut_off(cluster: Cluster) -> None:
    """/ready says 503 while a node cannot reach Redis and 200 once it has reconnected."""
    port = urlsplit(REDIS_URL).port or 6379
    proxy = TcpProxy(port)
    await proxy.start()
    try:
        via_proxy = urlsplit(REDIS_URL)._replace(netloc=f"127.0.0.1:{proxy.port}").geturl()
        node = await asyncio.to_thread(cluster.start, "--redis-url", via_proxy)
        assert (await call(node, "GET", "/ready"))[0] == 200
        proxy.down()
        status, body = await call(node, "GET", "/ready")
        assert status == 503 and body["broker"] != "ok", body
        proxy.up()
        for _ in range(100):
            status, body = await call(node, "GET", "/ready")
            if status == 200:
                break
            await asyncio.sleep(0.1)
        assert status == 200, body
    finally:
        await proxy.stop()


async def test_changes_from_three_nodes_reach_everyone_in_one_order(cluster: Cluster) -> None:
    """Edits and reactions sent at once on three nodes: every member sees one order, gapless."""
    nodes = [cluster.start() for _ in range(3)]
    names = ["ann", "bob", "cyd"]
    signed = await asyncio.gather(*(sign_up(nodes[0], name) for name in names))
    tokens = dict(zip(names, signed, strict=True))
    clients = [
        await member(cluster, node, tokens[name]) for node, name in zip(nodes, names, strict=True)
    ]
    watchers = [await member(cluster, node, tokens["cyd"]) for node in nodes]
    await send_json(clients[0], "chat", {"message": "react to this"}, id="root")
    target = None
    async with asyncio.timeout(10):
        while target is None:
            frame = await recv_json(clients[0])
            if frame["type"] == "ack":
                target = frame["payload"]["message_id"]
    emoji = ["👍", "🎉", "👀", "🚀"]

    async def act(index: int, ws: ClientConnection) -> None:
        for n, one in enumerate(emoji):
            payload = {"message_id": target, "emoji": one}
            await send_json(ws, "react", payload, id=f"r{n}")
            if n % 2:
                await send_json(ws, "unreact", payload, id=f"u{n}")
        if index == 0:
            await send_json(ws, "edit", {"message_id": target, "message": "edited"}, id="e")

    total = 1 + len(names) * (len(emoji) + len(emoji) // 2) + 1

    async def events(ws: ClientConnection) -> list[tuple[Any, ...]]:
        got: list[tuple[Any, ...]] = []
        async with asyncio.timeout(20):
            while len(got) < total:
                frame = await recv_json(ws, 20)
                payload = frame["payload"]
                if frame["type"] in ("chat", "edit", "reaction") and payload.get("room") == "lobby":
                    got.append(
                        (payload["seq"], frame["type"], payload.get("user"), payload.get("emoji"))
                    )
        return got

    async def drain(ws: ClientConnection) -> None:
        # The actors read what they get too: a connection that stops reading
        # stops answering pings and is dropped (and then slow to close).
        with contextlib.suppress(ConnectionClosed):
            async for _ in ws:
                pass

    drains = [asyncio.ensure_future(drain(ws)) for ws in clients]
    readers = [asyncio.ensure_future(events(ws)) for ws in watchers]
    await asyncio.gather(*(act(i, ws) for i, ws in enumerate(clients)))
    seen = await asyncio.gather(*readers)
    for task in drains:
        task.cancel()
    assert [seq for seq, *_ in seen[0]] == list(range(1, total + 1))
    assert seen[1] == seen[0] and seen[2] == seen[0]
    # A member joining late with since=0 replays the same events in the same order.
    late = await member(cluster, nodes[2], tokens["bob"])
    await send_json(late, "join", {"room": "lobby", "since": 0}, id="again")
    assert await events(late) == seen[0]
    status, body = await call(nodes[1], "GET", "/api/rooms/lobby/messages", bearer=tokens["ann"])
    (message,) = body["messages"]
    assert message["message"] == "edited"
    assert sorted(message["reactions"]) == sorted(["👍", "👀"])
    assert all(sorted(names_) == names for names_ in message["reactions"].values())


async def test_a_deleted_message_leaves_the_postgres_table_files(cluster: Cluster) -> None:
    """After a delete, no row version in the message tables (or their TOAST) holds the text."""
    node = cluster.start()
    token = await sign_up(node, "ann")
    ws = await member(cluster, node, token)
    secret = "narwhal-basalt-" * 4
    await send_json(ws, "chat", {"message": secret}, id="c1")
    message_id = None
    async with asyncio.timeout(10):
        while message_id is None:
            frame = await recv_json(ws)
            if frame["type"] == "ack":
                message_id = frame["payload"]["message_id"]
    await send_json(ws, "edit", {"message_id": message_id, "message": secret + "!"}, id="e1")
    assert await ack_of(ws, "e1") == 2
    conn = await asyncpg.connect(cluster.database_url)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
        await conn.execute("CHECKPOINT")  # the pages as they are, on disk
        assert await versions_holding(conn, secret) > 0
        await send_json(ws, "delete", {"message_id": message_id}, id="d1")
        assert await ack_of(ws, "d1") == 3
        async with asyncio.timeout(15):
            while await versions_holding(conn, secret):
                await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def versions_holding(conn: Any, text: str) -> int:
    """How many row versions, live or dead, in the message tables (and their TOAST) hold
    ``text``'s bytes, as the pages on disk have them (``pageinspect``).

    Row versions, not every byte of the files: VACUUM takes a dead version
    out of its page, but PostgreSQL does not zero the space it frees, and
    how a page is compacted over it depends on the sizes of the rows around
    (docs/security.md, "Deleting a message").
    """
    relations = await conn.fetch(
        "SELECT c.oid::regclass::text FROM pg_class c WHERE c.relname IN"
        " ('messages', 'direct_messages')"
        " UNION SELECT t.oid::regclass::text FROM pg_class c JOIN pg_class t"
        " ON t.oid = c.reltoastrelid WHERE c.relname IN ('messages', 'direct_messages')"
    )
    count = 0
    for (relation,) in relations:
        count += await conn.fetchval(
            "SELECT count(*) FROM generate_series(0, pg_relation_size($1::regclass) / 8192 - 1)"
            " AS b, heap_page_items(get_raw_page($1::text, b::int)) AS item"
            " WHERE position($2::bytea IN item.t_data) > 0",
            relation,
            text.encode(),
        )
    return int(count)


async def next_read(ws: ClientConnection) -> dict[str, Any]:
    """The payload of the next ``read`` from another connection (answers to this one skipped)."""
    while "id" in (frame := await recv_type(ws, "read")):
        pass
    return frame["payload"]  # type: ignore[no-any-return]


async def test_a_read_on_one_node_clears_the_count_on_another(cluster: Cluster) -> None:
    """One user on two nodes: a read on one reaches the other at once, and its counts follow."""
    one, two = cluster.start(), cluster.start()
    alice_token, bob_token = await sign_up(one, "alice"), await sign_up(one, "bob")
    phone = await member(cluster, one, alice_token)
    laptop = await member(cluster, two, alice_token)
    bob = await member(cluster, two, bob_token)
    for i in range(3):
        text = "hey @alice" if i == 1 else f"m{i}"
        await send_json(bob, "chat", {"room": "lobby", "message": text}, id=f"b{i}")
        last = await ack_of(bob, f"b{i}")
    status, body = await call(two, "GET", "/api/unread", bearer=alice_token)
    lobby = next(r for r in body["rooms"] if r["room"] == "lobby")
    assert status == 200 and (lobby["unread"], lobby["mentions"]) == (3, 1)
    await send_json(phone, "read", {"room": "lobby", "seq": last}, id="r1")
    assert await next_read(laptop) == {"room": "lobby", "seq": last, "unread": 0, "mentions": 0}

    async def counted() -> tuple[int, int]:
        _, body = await call(two, "GET", "/api/unread", bearer=alice_token)
        lobby = next(r for r in body["rooms"] if r["room"] == "lobby")
        return lobby["unread"], lobby["mentions"]

    async with asyncio.timeout(10):  # node one writes the marker within a second
        while await counted() != (0, 0):
            await asyncio.sleep(0.1)
    direct = {"to": "alice", "message": "on node two"}
    await send_json(bob, "direct", direct, id="d1")
    dm_seq = await ack_of(bob, "d1")
    mine = (await recv_type(laptop, "direct"))["payload"]["seq"]  # after the mention's
    await send_json(laptop, "read", {"direct": True, "with": "bob", "seq": mine}, id="r2")
    assert (await next_read(phone))["with"] == "bob"
    while "direct" not in (receipt := (await recv_type(bob, "receipt"))["payload"]):
        assert receipt == {"room": "lobby", "user": "alice", "seq": last}
    assert receipt == {"direct": True, "user": "alice", "seq": dm_seq}


async def test_every_node_gives_one_user_the_same_search_results(cluster: Cluster) -> None:
    """Three nodes give one user the same pages and cursors; a removal holds on every node."""
    nodes = [cluster.start() for _ in range(3)]
    names = ["ann", "bob", "cyd"]
    signed = await asyncio.gather(*(sign_up(nodes[0], name) for name in names))
    tokens = dict(zip(names, signed, strict=True))
    crew = {"name": "crew", "private": True, "members": ["bob"]}
    status, body = await call(nodes[1], "POST", "/api/rooms", json=crew, bearer=tokens["ann"])
    assert status == 201, body
    writers = [
        await member(cluster, node, tokens[name]) for node, name in zip(nodes, names, strict=True)
    ]
    for ws in writers[:2]:
        await join(ws, "crew")
    for i in range(12):
        who = i % 3
        if i % 4 == 3:
            frame = ("direct", {"to": "ann" if who == 1 else "bob", "message": f"orbit dm {i}"})
        elif who < 2 and i % 2:
            frame = ("chat", {"room": "crew", "message": f"orbit crew {i}"})
        else:
            frame = ("chat", {"room": "lobby", "message": f"orbit lobby {i}"})
        await send_json(writers[who], *frame, id=f"w{i}")
        await ack_of(writers[who], f"w{i}")
    readers = [await member(cluster, node, tokens["bob"]) for node in nodes]

    async def pages(ws: ClientConnection, **extra: Any) -> list[tuple[list[str], str | None]]:
        got: list[tuple[list[str], str | None]] = []
        cursor = None
        while len(got) < 10:
            payload: dict[str, Any] = {"q": "orbit", "limit": 4, **extra}
            if cursor is not None:
                payload["cursor"] = cursor
            reply = await ask(ws, "search", payload, f"s{len(got)}")
            assert reply["type"] == "search", reply
            cursor = reply["payload"].get("cursor")
            got.append(([r["message_id"] for r in reply["payload"]["results"]], cursor))
            if cursor is None:
                break
        return got

    newest = [await pages(ws) for ws in readers]
    assert newest[1] == newest[0] and newest[2] == newest[0]
    ids = [message_id for page, _ in newest[0] for message_id in page]
    assert len(ids) == len(set(ids)) == 12 and len(newest[0]) == 3
    best = [await pages(ws, order="relevance") for ws in readers]
    assert best[1] == best[0] and best[2] == best[0]
    crossed: list[str] = []
    cursor = None
    for node in nodes:  # each page from the next node, on the cursor the last one gave
        params = {"q": "orbit", "limit": "4", **({"cursor": cursor} if cursor else {})}
        query = "&".join(f"{key}={value}" for key, value in params.items())
        status, body = await call(node, "GET", f"/api/search?{query}", bearer=tokens["bob"])
        assert status == 200, body
        crossed += [r["message_id"] for r in body["results"]]
        cursor = body.get("cursor")
    assert crossed == ids and cursor is None
    conn = await asyncpg.connect(cluster.database_url)
    try:
        await conn.execute("DELETE FROM room_members WHERE room = 'crew' AND name = 'bob'")
    finally:
        await conn.close()
    for n, ws in enumerate(readers):
        reply = await ask(ws, "search", {"q": "orbit", "limit": 50}, f"after{n}")
        rooms = {r.get("room") for r in reply["payload"]["results"]}
        assert "crew" not in rooms and "lobby" in rooms, reply


async def test_a_node_joining_a_busy_room_catches_up_in_order(cluster: Cluster) -> None:
    """Members joining mid-burst on nodes that had nobody in the room get each later seq once."""
    fast = ("--rate-limit", "2000", "--rate-burst", "2000")
    a, b, c = cluster.start(*fast), cluster.start(*fast), cluster.start(*fast)
    sender = await guest(cluster, a)
    await join(sender, "busy")
    total = 400

    async def burst() -> None:
        for n in range(total):
            await send_json(sender, "chat", {"room": "busy", "message": f"m{n}"}, id=f"b{n}")
            if n % 10 == 9:
                await asyncio.sleep(0.05)  # 400 messages in about 2 s

    async def acked() -> list[int]:
        return [await ack_of(sender, f"b{n}") for n in range(total)]  # read as they come

    sending = asyncio.ensure_future(asyncio.gather(burst(), acked()))
    await asyncio.sleep(0.3)
    replayed = await guest(cluster, b)  # resumes from the start: replay, then live
    await join(replayed, "busy", since=0)
    replay = asyncio.ensure_future(chats(replayed, "busy", total))  # read as they come
    await asyncio.sleep(0.3)
    live = await guest(cluster, c)  # no since: live from the room's position on
    position = (await join(live, "busy"))["payload"]["seq"]
    assert 0 < position < total, "the second member joined after the burst: nothing tested"
    after = asyncio.ensure_future(chats(live, "busy", total - position))
    _, acks = await sending
    assert sorted(acks) == list(range(1, total + 1))
    got = await replay
    assert [m["seq"] for m in got] == list(range(1, total + 1))
    assert [m["message"] for m in got] == [f"m{n}" for n in range(total)]
    got = await after
    assert [m["seq"] for m in got] == list(range(position + 1, total + 1))


async def received(node: ServerProcess, kind: str) -> float:
    """``roomcast_broker_received_total{kind}`` on ``node``."""
    async with aiohttp.ClientSession() as http, http.get(node.http_url("/metrics")) as resp:
        text = await resp.text()
    found = re.search(rf'^roomcast_broker_received_total{{kind="{kind}"}} (\S+)$', text, re.M)
    assert found is not None, text
    return float(found.group(1))


async def test_a_node_hears_only_the_rooms_its_members_are_in(cluster: Cluster) -> None:
    """A room's traffic reaches the node with a member in it and not a node without one."""
    a, b, c = cluster.start(), cluster.start(), cluster.start()
    sender, listener, elsewhere = (
        await guest(cluster, a),
        await guest(cluster, b),
        await guest(cluster, c),
    )
    await join(sender, "quiet-a")
    await join(listener, "quiet-a")
    await join(elsewhere, "other")
    await asyncio.sleep(0.5)  # the lobby's presence events have crossed
    before_b, before_c = await received(b, "room"), await received(c, "room")
    for n in range(30):
        await send_json(sender, "chat", {"room": "quiet-a", "message": f"m{n}"}, id=f"q{n}")
    assert [m["seq"] for m in await chats(listener, "quiet-a", 30)] == list(range(1, 31))
    await chats(sender, "quiet-a", 30)  # read: a client that reads nothing is slow to close
    await asyncio.sleep(0.3)
    assert await received(b, "room") - before_b == 30
    assert await received(c, "room") == before_c
