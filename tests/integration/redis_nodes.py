"""roomcast nodes on a Redis of the test's own (a Redis Cluster, or Redis behind Sentinel).

What tests/integration/test_cluster.py does with the shared Redis, for the
rigs of tests/redis_servers.py: each node is a real ``roomcast serve`` on a
fresh PostgreSQL database, given its own ``--redis-url`` (any node of a
cluster, or a ``redis+sentinel://`` URL), and the clients are real
WebSocket connections. :func:`numbered_chat` is the conversation the
failover tests hold while Redis loses a master.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from tests.integration.serverproc import ServerProcess, start_server
from tests.integration.users import SECRET, call, user_ws
from tests.integration.wsclient import recv_json, recv_type, send_json, welcome

#: Heartbeat of the test nodes, in seconds: a dead node's users leave
#: presence within two of these.
HEARTBEAT = 1.0


def start_node(
    tmp_path: Path, database_url: str, redis_url: str, prefix: str, *extra: str
) -> ServerProcess:
    """A ``roomcast serve`` node of one service: its database, Redis, prefix and secret."""
    return start_server(
        tmp_path,
        "--database-url",
        database_url,
        "--redis-url",
        redis_url,
        "--redis-prefix",
        prefix,
        "--secret",
        SECRET,
        "--heartbeat",
        str(HEARTBEAT),
        *extra,
    )


class Nodes:
    """``roomcast serve`` processes sharing one fresh database and one Redis key prefix."""

    def __init__(self, tmp_path: Path, database_url: str, prefix: str) -> None:
        self.tmp_path = tmp_path
        self.database_url = database_url
        self.prefix = prefix
        self.nodes: list[ServerProcess] = []

    def start(self, redis_url: str, *extra: str) -> ServerProcess:
        """A node on ``redis_url`` (blocks until it listens: call it from a thread when busy)."""
        node = start_node(self.tmp_path, self.database_url, redis_url, self.prefix, *extra)
        self.nodes.append(node)
        return node

    def start_all(self, redis_urls: list[str], *extra: str) -> list[ServerProcess]:
        """One node per URL, started at once (a node takes about 2 s to start here)."""
        with ThreadPoolExecutor(len(redis_urls)) as pool:
            return list(pool.map(lambda url: self.start(url, *extra), redis_urls))

    def stop(self) -> None:
        """Stop every node (by its pid), all at once."""
        if self.nodes:
            with ThreadPoolExecutor(len(self.nodes)) as pool:
                list(pool.map(lambda node: node.stop(), self.nodes))

    def stderr(self) -> str:
        """Every node's log, for failure messages."""
        return "\n".join(f"--- node {n.port}\n{n.stderr()}" for n in self.nodes)


class Clients:
    """A test's WebSocket connections, closed when it ends."""

    def __init__(self) -> None:
        self.open: list[ClientConnection] = []

    async def guest(self, node: ServerProcess) -> tuple[ClientConnection, str]:
        """A guest connection to ``node``, past its welcome, and the guest's name."""
        ws = await connect(node.ws_url(), open_timeout=5)
        self.open.append(ws)
        system, _ = await welcome(ws)
        return ws, str(system["payload"]["user"]["name"])

    async def member(self, node: ServerProcess, token: str) -> ClientConnection:
        """A connection to ``node`` signed in with ``token``, past its welcome."""
        ws = await user_ws(node, token)
        self.open.append(ws)
        return ws

    async def close(self) -> None:
        """Close every connection."""
        await asyncio.gather(*(ws.close() for ws in self.open))


async def join(ws: ClientConnection, room: str, since: int | None = None) -> dict[str, Any]:
    """Join ``room``; the ``joined`` frame."""
    payload: dict[str, Any] = {"room": room}
    if since is not None:
        payload["since"] = since
    await send_json(ws, "join", payload, id=f"join-{room}")
    return await recv_type(ws, "joined")


async def ack_of(ws: ClientConnection, fid: str, timeout: float = 10.0) -> dict[str, Any]:
    """The payload of the ``ack`` of frame ``fid`` (other frames skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            frame = await recv_json(ws, timeout)
            if frame["type"] == "ack" and frame.get("id") == fid:
                return frame["payload"]  # type: ignore[no-any-return]
            assert frame["type"] != "error" or frame.get("id") != fid, frame


async def chats(
    ws: ClientConnection, rooms: set[str], count: int, timeout: float = 15.0
) -> list[dict[str, Any]]:
    """The next ``count`` chat payloads of ``rooms`` (other frames skipped)."""
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            frame = await recv_json(ws, timeout)
            if frame["type"] == "chat" and frame["payload"]["room"] in rooms:
                got.append(frame["payload"])
    return got


def in_room(room: str) -> Callable[[dict[str, Any]], bool]:
    """A :func:`next_event` match: the payload is about ``room``."""
    return lambda payload: payload.get("room") == room


async def next_event(
    ws: ClientConnection, kind: str, match: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The payload of the next ``kind`` frame whose payload ``match`` accepts (others skipped).

    Presence and typing of other rooms (the lobby's, say) arrive in between,
    from other nodes, in no order the test controls.
    """
    async with asyncio.timeout(10.0):
        while not match(payload := (await recv_type(ws, kind, 10.0))["payload"]):
            pass
    return payload  # type: ignore[no-any-return]


@dataclass
class Received:
    """What one receiver got of a room: chat payloads, when each came (monotonic), and
    the room's presence events."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    presence: list[dict[str, Any]] = field(default_factory=list)


async def receive(ws: ClientConnection, room: str, into: Received) -> None:
    """Collect ``room``'s chats and presence events from ``ws`` into ``into`` until cancelled."""
    while True:
        frame = await recv_json(ws, 3600)
        payload = frame.get("payload")
        if not isinstance(payload, dict) or payload.get("room") != room:
            continue
        if frame["type"] == "chat":
            into.messages.append(payload)
            into.times.append(time.monotonic())
        elif frame["type"] == "presence" and "event" in payload:
            into.presence.append(payload)


async def members(ws: ClientConnection, room: str, fid: str) -> dict[str, Any]:
    """The ``presence`` listing of ``room`` (its ``members`` and ``member_count``)."""
    await send_json(ws, "presence", {"room": room}, id=fid)
    return await next_event(ws, "presence", lambda p: p.get("room") == room and "members" in p)


@dataclass
class Conversation:
    """What :func:`numbered_chat` sent: acked seqs, texts, and when each was sent."""

    seqs: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)
    ack_waits: list[float] = field(default_factory=list)


async def numbered_chat(
    sender: ClientConnection, room: str, sent: Conversation, stop: asyncio.Event, gap: float
) -> None:
    """Send ``m0``, ``m1``, ... to ``room`` with ids, each after the last one's ack, until
    ``stop`` is set; every ack's seq goes into ``sent`` (``gap`` seconds between sends)."""
    n = 0
    while not stop.is_set():
        text = f"m{n}"
        started = time.monotonic()
        await send_json(sender, "chat", {"room": room, "message": text}, id=text)
        ack = await ack_of(sender, text)
        sent.ack_waits.append(time.monotonic() - started)
        sent.seqs.append(int(ack["seq"]))
        sent.texts.append(text)
        sent.sent_at.append(started)
        n += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), gap)


async def all_received(receivers: list[Received], count: int, timeout: float) -> None:
    """Wait until every receiver has at least ``count`` messages; TimeoutError after ``timeout``."""
    async with asyncio.timeout(timeout):
        while any(len(r.messages) < count for r in receivers):
            await asyncio.sleep(0.05)


async def chat_through_fault(
    nodes: list[ServerProcess],
    sent: Conversation,
    stop: asyncio.Event,
    talker: asyncio.Future[None],
    receivers: list[Received],
    killed_at: float,
    within: float,
) -> int:
    """After a fault at ``killed_at``: wait until every node is ready again and five more
    messages are acked, stop the chat, and wait (until ``within`` seconds after the fault)
    for every receiver to have all of it; how many were sent. A repeat would show by the
    return: half a second more is waited for it."""
    async with asyncio.timeout(within):
        while [(await call(node, "GET", "/ready"))[0] for node in nodes] != [200] * len(nodes):
            await asyncio.sleep(0.1)
    more = len(sent.seqs) + 5
    async with asyncio.timeout(within):
        while len(sent.seqs) < more:
            await asyncio.sleep(0.05)
    stop.set()
    await talker
    total = len(sent.seqs)
    await all_received(receivers, total, within - (time.monotonic() - killed_at))
    await asyncio.sleep(0.5)
    return total
