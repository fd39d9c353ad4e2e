"""Messages in the SQLite store: crashes, restarts, replays, resends and disk trouble.

Every test runs the real server process on a real data directory and talks
to it over real sockets with the ``websockets`` client. A server started
twice in one test (``server_factory()`` called again) uses the same
``tmp_path``, so the same data directory and the same ``roomcast.db``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from roomcast.config import DEFAULT_LIMITS
from tests.integration.serverproc import ServerFactory, ServerProcess
from tests.integration.wsclient import recv_json, recv_type, send_json, welcome

#: The database file the server keeps in its data directory.
DB_NAME = "roomcast.db"
#: How long a chat may wait for its answer while the database is locked
#: (the busy timeout is 2 s; the batch then fails).
LOCKED_ANSWER_TIMEOUT = 6.0


# -- helpers ---------------------------------------------------------------------


@contextlib.asynccontextmanager
async def guest(
    server: ServerProcess, name: str | None = None, **kwargs: Any
) -> AsyncIterator[ClientConnection]:
    """A connection past its welcome, renamed to guest ``name`` when given."""
    async with connect(server.ws_url(), **kwargs) as ws:
        await welcome(ws)
        if name is not None:
            await send_json(ws, "auth", {"guest": name}, id="auth")
            answer = await recv_type(ws, "auth")
            assert answer["payload"]["ok"] is True, answer
            assert answer["payload"]["user"]["name"] == name
        yield ws


async def join(ws: ClientConnection, room: str, since: int | None = None) -> dict[str, Any]:
    """Send ``join`` and return the ``joined`` payload (the very next non-presence frame)."""
    payload: dict[str, Any] = {"room": room}
    if since is not None:
        payload["since"] = since
    await send_json(ws, "join", payload, id=f"join-{room}")
    frame = await next_frame(ws)
    assert frame["type"] == "joined", frame
    assert frame["id"] == f"join-{room}"
    assert frame["payload"]["room"] == room
    return frame["payload"]


async def next_frame(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    """The next frame that is not a presence event."""
    async with asyncio.timeout(timeout):
        while True:
            frame = await recv_json(ws, timeout)
            if frame["type"] != "presence":
                return frame


async def until_pong(ws: ClientConnection, tag: str) -> list[dict[str, Any]]:
    """Send a ping and return every non-presence frame that came before its pong."""
    await send_json(ws, "ping", {"tag": tag}, id=f"ping-{tag}")
    frames = []
    while True:
        frame = await next_frame(ws)
        if frame["type"] == "pong" and frame.get("id") == f"ping-{tag}":
            return frames
        frames.append(frame)


async def chat_acked(
    ws: ClientConnection, message: str, frame_id: str, room: str = "lobby"
) -> dict[str, Any]:
    """Send one chat and return its ack payload (the sender's own copy comes first)."""
    await send_json(ws, "chat", {"room": room, "message": message}, id=frame_id)
    own = None
    while True:
        frame = await next_frame(ws)
        if frame["type"] == "chat" and frame["payload"]["message"] == message:
            own = frame["payload"]
        elif frame["type"] == "ack" and frame["id"] == frame_id:
            assert own is not None, "the ack came before the sender's own copy"
            assert own["message_id"] == frame["payload"]["message_id"]
            assert own["seq"] == frame["payload"]["seq"]
            return frame["payload"]
        else:
            assert frame["type"] == "chat", frame


async def read_history(ws: ClientConnection, room: str) -> list[dict[str, Any]]:
    """A room's whole stored history, oldest first, paged backwards with ``before``."""
    messages: list[dict[str, Any]] = []
    before: int | None = None
    for page_no in range(10_000):
        payload: dict[str, Any] = {"room": room, "limit": 100}
        if before is not None:
            payload["before"] = before
        await send_json(ws, "history", payload, id=f"history-{page_no}")
        frame = await recv_type(ws, "history")
        assert frame["id"] == f"history-{page_no}"
        page = frame["payload"]["messages"]
        assert len(page) <= 100
        messages[:0] = page
        if not frame["payload"]["has_more"]:
            return messages
        assert page, "has_more with an empty page"
        before = page[0]["seq"]
    raise AssertionError("history never ended")


async def http_get(server: ServerProcess, path: str) -> tuple[int, str, bytes]:
    """Status, content type and body of GET ``path``."""
    async with aiohttp.ClientSession() as http, http.get(server.http_url(path)) as resp:
        return resp.status, resp.content_type, await resp.read()


async def ready_status(server: ServerProcess) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of GET /ready."""
    async with aiohttp.ClientSession() as http, http.get(server.http_url("/ready")) as resp:
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()


@contextlib.asynccontextmanager
async def health_watch(server: ServerProcess) -> AsyncIterator[list[int]]:
    """Poll /health every 0.1 s while the block runs; yields the statuses seen."""
    statuses: list[int] = []

    async def poll() -> None:
        while True:
            status, _, body = await http_get(server, "/health")
            assert body == b"WebSocket server is running"
            statuses.append(status)
            await asyncio.sleep(0.1)

    task = asyncio.create_task(poll())
    try:
        yield statuses
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert statuses, "/health was never polled"


@dataclass
class Pumped:
    """What one pipelined sender saw."""

    sent: int = 0
    #: frame id -> (message_id, seq), in the order the acks arrived.
    acks: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: payloads of the chat frames received in the pumped room, in order.
    chats: list[dict[str, Any]] = field(default_factory=list)
    #: byte size of those chat frames.
    chat_bytes: int = 0
    closed: bool = False


async def pump(
    ws: ClientConnection,
    room: str,
    tag: str,
    count: int,
    *,
    window: int = 20,
    expect_chats: int = 0,
    text: Callable[[str, int], str] = lambda tag, i: f"{tag}-{i}",
    delay: float = 0.0,
    on_ack: Callable[[], None] | None = None,
    until_closed: bool = False,
) -> Pumped:
    """Send ``count`` chats (ids ``TAG-i``) with up to ``window`` unacked at once.

    Reads until every chat is acked and ``expect_chats`` chat frames of
    ``room`` have arrived. With ``until_closed`` the connection ending is
    the expected way out (the server is killed); otherwise it fails.
    """
    out = Pumped()
    slots = asyncio.Semaphore(window)

    async def send() -> None:
        for i in range(count):
            await slots.acquire()
            await send_json(ws, "chat", {"room": room, "message": text(tag, i)}, id=f"{tag}-{i}")
            out.sent += 1
            if delay:
                await asyncio.sleep(delay)

    async def receive() -> None:
        while len(out.acks) < count or len(out.chats) < expect_chats:
            data = await asyncio.wait_for(ws.recv(), 10.0)
            frame = json.loads(data)
            kind = frame["type"]
            if kind == "chat" and frame["payload"]["room"] == room:
                out.chats.append(frame["payload"])
                out.chat_bytes += len(data)
            elif kind == "ack":
                payload = frame["payload"]
                assert frame["id"] not in out.acks, f"acked twice: {frame}"
                out.acks[frame["id"]] = (payload["message_id"], payload["seq"])
                slots.release()
                if on_ack is not None:
                    on_ack()
            else:
                assert kind in ("chat", "presence"), f"{tag} got {frame}"

    sender = asyncio.create_task(send())
    try:
        await receive()
    except ConnectionClosed:
        if not until_closed:
            raise
        out.closed = True
    finally:
        if not sender.done():
            sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
            await sender
    return out


def assert_gapless(messages: list[dict[str, Any]], room: str) -> None:
    """Seqs are exactly 1..N in order and no message_id appears twice."""
    assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))
    ids = [m["message_id"] for m in messages]
    assert len(set(ids)) == len(ids), "a message_id is stored twice"
    assert all(m["room"] == room for m in messages)


# -- crash and restart -----------------------------------------------------------


async def test_sigkill_mid_stream_keeps_every_acked_message(
    server_factory: ServerFactory,
) -> None:
    """After SIGKILL under load every acked message is stored with its seq, gapless and once."""
    first = server_factory("--rate-limit", "0")  # the writers flood on purpose
    names = [f"writer{i}" for i in range(4)]
    acked_total = 0
    enough = asyncio.Event()

    def counted() -> None:
        nonlocal acked_total
        acked_total += 1
        if acked_total >= 300:
            enough.set()

    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(guest(first, name)) for name in names]
        tasks = [
            asyncio.create_task(
                pump(ws, "lobby", name, 100_000, window=20, on_ack=counted, until_closed=True)
            )
            for ws, name in zip(clients, names, strict=True)
        ]
        try:
            await asyncio.wait_for(enough.wait(), 30)
        finally:
            first.proc.kill()
        assert await asyncio.to_thread(first.proc.wait, 10) == -9
        results = await asyncio.wait_for(asyncio.gather(*tasks), 30)

    assert all(r.closed for r in results)
    sent = sum(r.sent for r in results)
    acked = {fid: ack for r in results for fid, ack in r.acks.items()}
    assert len(acked) >= 300
    assert sent > len(acked), "the kill came after every message was acked"

    second = server_factory()
    async with guest(second) as reader:
        stored = await read_history(reader, "lobby")
        assert_gapless(stored, "lobby")
        by_id = {m["message_id"]: m for m in stored}
        for fid, (message_id, seq) in acked.items():
            assert message_id in by_id, f"acked {fid} ({message_id}) lost in the crash"
            assert by_id[message_id]["seq"] == seq
            assert by_id[message_id]["message"] == fid
        # Each writer's stored messages are a prefix of what it sent, in order.
        for name in names:
            mine = [int(m["message"].rsplit("-", 1)[1]) for m in stored if m["from"] == name]
            assert mine == list(range(len(mine)))
            assert all(m["message"].startswith(f"{name}-") for m in stored if m["from"] == name)
        assert {m["from"] for m in stored} <= set(names)
        # The restarted server carries on from the last stored seq.
        after = await chat_acked(reader, "after the crash", "after-1")
        assert after["seq"] == len(stored) + 1
    async with guest(second) as late:
        await join(late, "lobby", since=len(stored))


async def test_reconnect_with_since_gets_exactly_the_missed_messages(
    server: ServerProcess,
) -> None:
    """A client rejoining with since=S gets joined, the missed messages in order, then live ones."""
    async with guest(server, "bea") as b:
        await join(b, "r")
        async with guest(server, "ana") as a:
            await join(a, "r")
            for i in range(2):
                await chat_acked(b, f"before {i}", f"before-{i}", room="r")
            seen = [await recv_type(a, "chat") for _ in range(2)]
            assert [f["payload"]["seq"] for f in seen] == [1, 2]
            last_seen = seen[-1]["payload"]["seq"]
        missed = [await chat_acked(b, f"missed {i}", f"missed-{i}", room="r") for i in range(5)]
        assert [m["seq"] for m in missed] == list(range(last_seen + 1, last_seen + 6))

        async with guest(server, "ana") as a:
            joined = await join(a, "r", since=last_seen)
            assert joined["recovered"] is True
            assert joined["seq"] == last_seen + 5
            replay = [await next_frame(a) for _ in range(5)]
            assert [f["type"] for f in replay] == ["chat"] * 5
            assert [f["payload"]["seq"] for f in replay] == [m["seq"] for m in missed]
            assert [f["payload"]["message_id"] for f in replay] == [m["message_id"] for m in missed]
            assert [f["payload"]["message"] for f in replay] == [f"missed {i}" for i in range(5)]
            live = await chat_acked(b, "live", "live-1", room="r")
            assert live["seq"] == last_seen + 6
            frame = await next_frame(a)
            assert frame["type"] == "chat"
            assert frame["payload"]["seq"] == live["seq"]
            assert frame["payload"]["message_id"] == live["message_id"]
            assert await until_pong(a, "end") == []


async def test_concurrent_senders_all_see_one_order(server: ServerProcess) -> None:
    """Six clients chatting at once in one room all see seqs 1..180 with the same message_ids."""
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(guest(server, f"six{i}")) for i in range(6)]
        for ws in clients:
            await join(ws, "crowd")
        results = await asyncio.wait_for(
            asyncio.gather(
                *(
                    pump(ws, "crowd", f"six{i}", 30, window=30, expect_chats=180)
                    for i, ws in enumerate(clients)
                )
            ),
            60,
        )
    reference = [(c["seq"], c["message_id"]) for c in results[0].chats]
    assert [seq for seq, _ in reference] == list(range(1, 181))
    assert len({mid for _, mid in reference}) == 180
    for result in results:
        assert [(c["seq"], c["message_id"]) for c in result.chats] == reference
    by_seq = dict(reference)
    for result in results:
        assert len(result.acks) == 30
        for message_id, seq in result.acks.values():
            assert by_seq[seq] == message_id


async def assert_resend_acked(ws: ClientConnection, original: dict[str, Any]) -> None:
    """Resend frame ``r-1``: the very next frame is its ack, equal to the first one."""
    await send_json(ws, "chat", {"message": "only once"}, id="r-1")
    ack = await next_frame(ws)
    assert ack["type"] == "ack", ack
    assert ack["id"] == "r-1"
    assert ack["payload"] == original


async def test_resend_after_reconnect_and_restart_is_stored_once(
    server_factory: ServerFactory,
) -> None:
    """A resent frame id is acked with the first message_id, never rebroadcast or restored."""
    first = server_factory()
    async with guest(first, "bob") as b:
        async with guest(first, "alice") as a:
            original = await chat_acked(a, "only once", "r-1")
        broadcast = await recv_type(b, "chat")
        assert broadcast["payload"]["message_id"] == original["message_id"]
        # Wait until the server has let go of the name "alice".
        while True:
            frame = await recv_json(b)
            if frame["type"] == "presence" and frame["payload"].get("event") == "leave":
                assert frame["payload"]["user"] == "alice"
                break
            assert frame["type"] != "chat", frame

        async with guest(first, "alice") as a:
            await assert_resend_acked(a, original)
            barrier = await chat_acked(a, "after the resend", "r-2")
            assert barrier["seq"] == original["seq"] + 1
        frame = await next_frame(b)
        assert frame["type"] == "chat"
        assert frame["payload"]["message_id"] == barrier["message_id"], "resend rebroadcast"
        history = await read_history(b, "lobby")
        assert_gapless(history, "lobby")
        assert [m["message_id"] for m in history] == [original["message_id"], barrier["message_id"]]

    assert first.stop() == 0
    second = server_factory()
    async with guest(second, "bob") as b:
        async with guest(second, "alice") as a:
            await assert_resend_acked(a, original)
            last = await chat_acked(a, "after the restart", "r-3")
            assert last["seq"] == barrier["seq"] + 1
        frame = await next_frame(b)
        assert frame["type"] == "chat"
        assert frame["payload"]["message_id"] == last["message_id"], "resend rebroadcast"
        history = await read_history(b, "lobby")
        assert_gapless(history, "lobby")
        assert [m["message_id"] for m in history] == [
            original["message_id"],
            barrier["message_id"],
            last["message_id"],
        ]


# -- replay while live -------------------------------------------------------------


async def test_join_since_zero_during_live_stream_is_contiguous(
    server_factory: ServerFactory,
) -> None:
    """Clients joining with since=0 mid-stream get seqs 1..N exactly once, in order."""
    server = server_factory("--rate-limit", "0")  # 400 messages in about a second
    total = 400
    marks = {100: asyncio.Event(), 250: asyncio.Event()}
    acked = 0

    def counted() -> None:
        nonlocal acked
        acked += 1
        if acked in marks:
            marks[acked].set()

    async def late_joiner(mark: int) -> list[dict[str, Any]]:
        async with guest(server, f"late{mark}") as ws:
            await marks[mark].wait()
            joined = await join(ws, "busy", since=0)
            assert joined["recovered"] is True
            assert mark <= joined["seq"] < total, "the join did not land mid-stream"
            chats: list[dict[str, Any]] = []
            while not chats or chats[-1]["seq"] < total:
                frame = await next_frame(ws)
                assert frame["type"] == "chat", frame
                chats.append(frame["payload"])
            assert await until_pong(ws, "end") == []
            return chats

    async with guest(server, "stream") as b:
        await join(b, "busy")
        joiners = [asyncio.create_task(late_joiner(mark)) for mark in marks]
        sent = await asyncio.wait_for(
            pump(
                b,
                "busy",
                "busy",
                total,
                window=4,
                expect_chats=total,
                delay=0.002,
                on_ack=counted,
            ),
            60,
        )
        seen = await asyncio.wait_for(asyncio.gather(*joiners), 30)
    by_seq = {seq: mid for mid, seq in sent.acks.values()}
    assert sorted(by_seq) == list(range(1, total + 1))
    for chats in seen:
        assert [c["seq"] for c in chats] == list(range(1, total + 1))
        assert [c["message_id"] for c in chats] == [by_seq[s] for s in range(1, total + 1)]


async def test_large_replay_is_paced_not_dropped(server_factory: ServerFactory) -> None:
    """A since=0 join replaying far more than the 1 MiB queue limit gets it all, unclosed."""
    server = server_factory("--rate-limit", "0")  # written as fast as acked
    senders, per_sender = 2, 750
    total = senders * per_sender
    replayed = range(
        total - DEFAULT_LIMITS.max_replay + 1, total + 1
    )  # one join replays the newest

    # 4,000 three-byte characters a message: the replay (~12 MB) must be more
    # than the kernel's socket buffers on loopback absorb (~4 MB here) plus
    # the 1 MiB queue, or a server that did not pace the replay would pass too.
    def text(tag: str, i: int) -> str:
        return f"{tag}-{i}-".ljust(4000, "\u20ac")

    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(guest(server, f"big{i}")) for i in range(senders)
        ]
        for ws in clients:
            await join(ws, "big")
        results = await asyncio.wait_for(
            asyncio.gather(
                *(
                    pump(
                        ws, "big", f"big{i}", per_sender, window=100, expect_chats=total, text=text
                    )
                    for i, ws in enumerate(clients)
                )
            ),
            60,
        )
    assert [c["seq"] for c in results[0].chats] == list(range(1, total + 1))

    # A small receive buffer, so little of the replay can sit in the client's kernel.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    sock.setblocking(False)
    await asyncio.wait_for(
        asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port)), 5
    )
    async with guest(server, "slowreader", sock=sock) as reader:
        joined = await join(reader, "big", since=0)
        assert joined["seq"] == total
        assert joined["recovered"] is True
        assert joined["replay_from"] == replayed[0]
        # Read nothing for a while (well under the server's 10 s drain
        # timeout), then read slowly.
        await asyncio.sleep(2.0)
        seqs: list[int] = []
        size = 0
        while len(seqs) < len(replayed):
            data = await asyncio.wait_for(reader.recv(), 15)
            size += len(data.encode() if isinstance(data, str) else data)
            frame = json.loads(data)
            assert frame["type"] == "chat", frame
            seqs.append(frame["payload"]["seq"])
            if len(seqs) % 250 == 0:
                await asyncio.sleep(0.05)
        assert await until_pong(reader, "end") == []
    assert seqs == list(replayed)
    assert size > 10 * 2**20, f"only {size} bytes replayed"


# -- disk trouble ------------------------------------------------------------------


async def test_locked_database_fails_the_chat_then_recovers(server: ServerProcess) -> None:
    """While another process holds the write lock a chat gets error internal; then it is acked."""
    async with guest(server, "lockwriter") as a, guest(server, "lockwatcher") as b:
        first = await chat_acked(a, "before the lock", "lock-0")
        assert (await recv_type(b, "chat"))["payload"]["message_id"] == first["message_id"]
        db = sqlite3.connect(server.data_dir / DB_NAME, isolation_level=None, timeout=5)
        try:
            async with health_watch(server) as health:
                db.execute("BEGIN EXCLUSIVE")
                try:
                    started = time.monotonic()
                    await send_json(a, "chat", {"message": "while locked"}, id="lock-1")
                    answer = await next_frame(a, timeout=LOCKED_ANSWER_TIMEOUT)
                    waited = time.monotonic() - started
                    assert answer["type"] == "error", answer
                    assert answer["id"] == "lock-1"
                    assert answer["payload"]["code"] == "internal"
                    assert waited >= 1.0, f"failed after {waited:.2f} s, before the busy timeout"
                    assert await until_pong(a, "locked") == []
                    assert await until_pong(b, "locked") == []
                    status, body = await ready_status(server)
                    assert status == 503, body
                    assert body["ready"] is False
                    assert body["store"] != "ok"
                finally:
                    db.execute("ROLLBACK")
            assert set(health) == {200}
        finally:
            db.close()

        second = await chat_acked(a, "after the lock", "lock-2")
        assert second["seq"] == first["seq"] + 1
        frame = await next_frame(b)
        assert frame["type"] == "chat"
        assert frame["payload"]["message_id"] == second["message_id"]
        status, body = await ready_status(server)
        assert status == 200, body
        history = await read_history(a, "lobby")
        assert_gapless(history, "lobby")
        assert [m["message"] for m in history] == ["before the lock", "after the lock"]


@pytest.mark.skipif(sys.platform != "linux", reason="prlimit on another process is Linux-only")
async def test_disk_full_fails_the_chat_then_recovers(server: ServerProcess) -> None:
    """With every file write failing (RLIMIT_FSIZE 0) a chat gets error internal; later acked."""
    import resource

    pid = server.proc.pid
    async with guest(server, "fullwriter") as a, guest(server, "fullwatcher") as b:
        first = await chat_acked(a, "before the disk filled", "full-0")
        await recv_type(b, "chat")
        original = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, original[1]))
        try:
            async with health_watch(server) as health:
                await send_json(a, "chat", {"message": "disk full"}, id="full-1")
                answer = await next_frame(a, timeout=LOCKED_ANSWER_TIMEOUT)
                assert answer["type"] == "error", answer
                assert answer["id"] == "full-1"
                assert answer["payload"]["code"] == "internal"
                assert await until_pong(a, "full") == []
                assert await until_pong(b, "full") == []
                status, body = await ready_status(server)
                assert status == 503, body
                assert server.proc.poll() is None
            assert set(health) == {200}
        finally:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, original)

        second = await chat_acked(a, "after the disk was freed", "full-2")
        assert second["seq"] == first["seq"] + 1
        frame = await next_frame(b)
        assert frame["type"] == "chat"
        assert frame["payload"]["message_id"] == second["message_id"]
        status, body = await ready_status(server)
        assert status == 200, body
        history = await read_history(a, "lobby")
        assert_gapless(history, "lobby")
        assert [m["message"] for m in history] == [
            "before the disk filled",
            "after the disk was freed",
        ]


async def test_history_days_prunes_at_start_and_join_says_not_recovered(
    server_factory: ServerFactory,
) -> None:
    """Messages older than --history-days are gone after a restart; since=0 is recovered false."""
    first = server_factory()
    async with guest(first, "ann") as ws:
        for i in range(3):
            await chat_acked(ws, f"m{i + 1}", f"old-{i}")
    assert first.stop() == 0
    three_days_ago_ms = int((time.time() - 3 * 86400) * 1000)
    with sqlite3.connect(first.data_dir / DB_NAME) as conn:
        conn.execute(
            "UPDATE messages SET ts_ms = ? WHERE room = 'lobby' AND seq <= 2",
            (three_days_ago_ms,),
        )
    second = server_factory("--history-days", "1")
    async with guest(second, "bob") as ws:
        joined = await join(ws, "lobby", since=0)
        assert joined["recovered"] is False
        assert joined["seq"] == 3
        replay = await until_pong(ws, "after-replay")
        assert [(f["type"], f["payload"]["seq"]) for f in replay] == [("chat", 3)]
        history = await read_history(ws, "lobby")
        assert [m["message"] for m in history] == ["m3"]
        joined = await join(ws, "lobby", since=2)
        assert joined["recovered"] is True
        ack = await chat_acked(ws, "next", "new-1")
        assert ack["seq"] == 4
