"""Abuse protection over real sockets: rate limits, sustained floods, connection caps.

A flooding client gets ``rate_limited`` errors and, after 10 s of it, a 1008
close, while a bystander's pings stay fast; a client within the limit is
never refused; ``--rate-limit 0`` turns the limit off; per-user and per-IP
caps close the connection past them with 1008 and a readable reason. Frames
that queue behind one that waits are rate limited as they arrive and stop
the reading of the connection past 64 KiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import statistics
from collections.abc import AsyncIterator
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.integration.serverproc import ServerFactory, ServerProcess
from tests.integration.users import SECRET, closed_with, login, register, sign_up
from tests.integration.wsclient import (
    OP_BINARY,
    OP_TEXT,
    RECV_TIMEOUT,
    RawWebSocket,
    client_frame,
    recv_json,
    recv_type,
    send_json,
    welcome,
)

#: The most frames the flood test sends, and for how long at most.
FLOOD_MAX_FRAMES, FLOOD_MAX_SECONDS = 5000, 15.0
#: Frames the flooder sends per tick, and the tick (about 250 frames a second).
FLOOD_BATCH, FLOOD_TICK = 5, 0.02
#: A generous bound on the bystander's ping round trip during the flood.
MAX_RTT = 0.25


async def ping_rtt(ws: ClientConnection, fid: str) -> float:
    """Send a ``ping`` and return the seconds until its ``pong`` (other frames skipped)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    await send_json(ws, "ping", {"n": fid}, id=fid)
    async with asyncio.timeout(RECV_TIMEOUT):
        while True:
            frame = await recv_json(ws)
            assert frame["type"] != "error", frame
            if frame["type"] == "pong" and frame.get("id") == fid:
                assert frame["payload"] == {"n": fid}
                return loop.time() - started


async def chat_until_acked(ws: ClientConnection, count: int, *, interval: float = 0.0) -> int:
    """Send ``count`` chats (``interval`` s apart) and read until all are acked; no error allowed.

    Returns how many chat broadcasts the sender saw of its own.
    """

    async def sender() -> None:
        for i in range(count):
            await send_json(ws, "chat", {"message": f"m{i}"}, id=f"m-{i}")
            if interval:
                await asyncio.sleep(interval)

    task = asyncio.create_task(sender())
    acked: set[str] = set()
    own = 0
    try:
        async with asyncio.timeout(30):
            while len(acked) < count:
                frame = await recv_json(ws)
                assert frame["type"] != "error", f"refused: {frame}"
                if frame["type"] == "ack":
                    assert frame["id"] not in acked
                    acked.add(frame["id"])
                elif frame["type"] == "chat":
                    own += 1
        await task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert acked == {f"m-{i}" for i in range(count)}
    return own


# -- rate limits ------------------------------------------------------------------


async def test_flood_is_refused_then_closed_while_others_stay_fast(server: ServerProcess) -> None:
    """A flooder gets rate_limited with retry_after, then 1008 after ~10 s; b's pings stay fast."""
    loop = asyncio.get_running_loop()
    async with connect(server.ws_url()) as b, connect(server.ws_url()) as x:
        await welcome(b)
        await welcome(x)
        sent_ids: set[str] = set()
        errors: list[dict[str, Any]] = []
        first_refusal = asyncio.Event()
        refused_at: list[float] = []

        async def flood() -> None:
            deadline = loop.time() + FLOOD_MAX_SECONDS
            n = 0
            with contextlib.suppress(ConnectionClosed):
                while n < FLOOD_MAX_FRAMES and loop.time() < deadline:
                    for _ in range(FLOOD_BATCH):
                        fid = f"f-{n}"
                        sent_ids.add(fid)
                        await send_json(x, "chat", {"message": f"flood {n}"}, id=fid)
                        n += 1
                    await asyncio.sleep(FLOOD_TICK)

        async def read_flooder() -> tuple[int, str, float]:
            try:
                async with asyncio.timeout(FLOOD_MAX_SECONDS + 5):
                    while True:
                        frame = json.loads(await x.recv())
                        if frame["type"] == "error":
                            errors.append(frame)
                            if not refused_at:
                                refused_at.append(loop.time())
                                first_refusal.set()
            except ConnectionClosed as exc:
                assert exc.rcvd is not None, "the flooder was not sent a close frame"
                return exc.rcvd.code, exc.rcvd.reason, loop.time()

        flooder = asyncio.create_task(flood())
        reader = asyncio.create_task(read_flooder())
        try:
            await asyncio.wait_for(first_refusal.wait(), 5)
            rtts = []
            for i in range(20):
                rtts.append(await ping_rtt(b, f"b-{i}"))
                await asyncio.sleep(0.1)
            code, reason, closed_at = await reader
        finally:
            flooder.cancel()
            reader.cancel()
            await asyncio.gather(flooder, reader, return_exceptions=True)

        assert len(rtts) == 20
        assert max(rtts) < MAX_RTT, (
            f"bystander ping p50 {statistics.median(rtts) * 1000:.1f} ms, "
            f"max {max(rtts) * 1000:.1f} ms during the flood"
        )
        assert code == 1008
        assert reason == "rate limit exceeded for 10 s"
        streak = closed_at - refused_at[0]
        assert 9.0 <= streak <= 13.0, f"closed {streak:.1f} s after the first refusal"
        assert len(sent_ids) <= FLOOD_MAX_FRAMES
        assert len(errors) > 100
        for frame in errors:
            payload = frame["payload"]
            assert payload["code"] == "rate_limited", frame
            assert frame["id"] in sent_ids
            assert isinstance(payload["retry_after"], int) and payload["retry_after"] >= 1
            assert payload["retry_after"] <= 1000 / 20 + 1
        # The bystander is still served normally.
        await send_json(b, "chat", {"message": "after the flood"}, id="b-after")
        ack = await recv_type(b, "ack")
        assert ack["id"] == "b-after"
    assert "Traceback" not in server.stderr()


async def test_a_client_within_the_limit_is_never_refused(server_factory: ServerFactory) -> None:
    """45 chats at 15/s (under 20/s, bursts of 5) are all acked, none refused."""
    server = server_factory("--rate-burst", "5")
    async with connect(server.ws_url()) as ws:
        await welcome(ws)
        own = await chat_until_acked(ws, 45, interval=1 / 15)
    assert own == 45


async def test_rate_limit_zero_lets_a_back_to_back_burst_through(
    server_factory: ServerFactory,
) -> None:
    """With --rate-limit 0, 500 chats sent back to back are all acked with no error."""
    server = server_factory("--rate-limit", "0")
    async with connect(server.ws_url()) as ws:
        await welcome(ws)
        own = await chat_until_acked(ws, 500)
    assert own == 500


# -- connection caps ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def signed_in(
    server: ServerProcess, user: str, token: str
) -> AsyncIterator[ClientConnection]:
    """A connection that authenticated as ``user`` with ``token``."""
    async with connect(server.ws_url()) as ws:
        await welcome(ws)
        await send_json(ws, "auth", {"token": token}, id="auth")
        answer = await recv_type(ws, "auth")
        assert answer["payload"] == {"ok": True, "user": {"name": user, "guest": False}}
        yield ws


async def test_a_users_connection_past_the_cap_is_refused_and_closed(
    server_factory: ServerFactory,
) -> None:
    """With --max-connections-per-user 2 a third auth as the same user is forbidden, then 1008."""
    server = server_factory("--secret", SECRET, "--max-connections-per-user", "2")
    await register(server, "dora", "correct horse battery staple 42")
    token = await login(server, "dora", "correct horse battery staple 42")
    async with signed_in(server, "dora", token) as first, signed_in(server, "dora", token):
        async with connect(server.ws_url()) as third:
            await welcome(third)
            await send_json(third, "auth", {"token": token}, id="auth-3")
            refused = await recv_json(third)
            while refused["type"] == "presence":
                refused = await recv_json(third)
            assert refused["type"] == "error", refused
            assert refused["id"] == "auth-3"
            assert refused["payload"]["code"] == "forbidden"
            assert refused["payload"]["message"] == "too many connections for this user"
            assert await closed_with(third) == (1008, "too many connections for this user")
        await first.close()
        # Once the server has let go of the first connection, dora fits again.
        async with asyncio.timeout(5):
            while True:
                async with connect(server.ws_url()) as again:
                    await welcome(again)
                    await send_json(again, "auth", {"token": token}, id="again")
                    answer = await recv_json(again)
                    while answer["type"] == "presence":
                        answer = await recv_json(again)
                    if answer["type"] == "auth":
                        assert answer["payload"]["user"]["name"] == "dora"
                        break
                    assert answer["payload"]["code"] == "forbidden", answer
                await asyncio.sleep(0.1)


async def test_connections_past_the_per_ip_cap_are_closed_with_1008(
    server_factory: ServerFactory,
) -> None:
    """With --max-connections-per-ip 3 the 4th is upgraded then closed 1008; a freed slot works."""
    server = server_factory("--max-connections-per-ip", "3")
    async with contextlib.AsyncExitStack() as stack:
        open_ = [await stack.enter_async_context(connect(server.ws_url())) for _ in range(3)]
        for ws in open_:
            await welcome(ws)
        async with connect(server.ws_url()) as fourth:
            assert await closed_with(fourth) == (1008, "too many connections from your address")
        await open_[0].close()
        async with asyncio.timeout(5):
            while True:
                async with connect(server.ws_url()) as again:
                    try:
                        await welcome(again)
                        break
                    except ConnectionClosed as exc:
                        assert exc.rcvd is not None and exc.rcvd.code == 1008
                await asyncio.sleep(0.1)
        for ws in open_[1:]:
            await send_json(ws, "ping", id="still")
            assert (await recv_type(ws, "pong"))["id"] == "still"


# -- frames that queue behind one that waits ---------------------------------------
#
# A join waits (up to 2 s, streams.CATCH_UP_WAIT) until live delivery in
# its room has reached the store's last seq. A message stored through a
# second server on the same database, with no broker between the two, never
# reaches the first server live: a join of that room there then holds its
# connection for those 2 s, and every frame sent behind it queues. That is
# a frame waiting on the store, on demand.

#: How long a join of the stalled room holds its connection (streams.CATCH_UP_WAIT).
STALL = 2.0
#: The room the second server writes to behind the first one's back.
STALL_ROOM = "stall"
JOIN_STALL = json.dumps({"type": "join", "id": "stall", "payload": {"room": STALL_ROOM}})


def two_servers(server_factory: ServerFactory, *args: str) -> tuple[ServerProcess, ServerProcess]:
    """Two servers on one data directory (one database) and no broker between them."""
    return server_factory(*args), server_factory(*args)


async def store_behind_its_back(other: ServerProcess) -> None:
    """Store a message in the stalled room through ``other``: the first server never sees it."""
    async with connect(other.ws_url()) as ws:
        await welcome(ws)
        await send_json(ws, "join", {"room": STALL_ROOM}, id="j")
        await recv_type(ws, "joined")
        await send_json(ws, "chat", {"message": "elsewhere", "room": STALL_ROOM}, id="e")
        await recv_type(ws, "ack")


async def raw_with_small_send_buffer(port: int, headers: dict[str, str]) -> RawWebSocket:
    """A bare WebSocket with a small kernel send buffer: what the server leaves unread stays here.

    So whether the server reads on shows in how much the test could write.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(
            asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)), RECV_TIMEOUT
        )
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**20)
    except BaseException:
        sock.close()
        raise
    raw = RawWebSocket(reader, writer)
    await raw.handshake(port, headers=headers)
    assert raw.status == 101
    return raw


async def test_files_behind_a_waiting_frame_stop_the_reading_past_64_kib(
    server_factory: ServerFactory,
) -> None:
    """32 files of 1 MiB behind a join that waits 2 s: under half are taken meanwhile; all acked."""
    # Frames that come while one waits are kept, in order; past 64 KiB of them
    # the connection is not read until they are done, and TCP holds the rest
    # back in the client. Before, the server read up to 64 whole frames (64
    # files of 8 MiB: 512 MiB for one connection) whatever their size.
    first, second = two_servers(server_factory, "--secret", SECRET)
    token = await sign_up(first, "ann")
    raw = await raw_with_small_send_buffer(first.port, {"Authorization": f"Bearer {token}"})
    try:
        assert (await raw.read_json())["type"] == "system"
        assert (await raw.read_json())["type"] == "joined"
        await raw.send_frame(OP_TEXT, JOIN_STALL.encode())
        assert (await raw.read_json())["id"] == "stall"
        await store_behind_its_back(second)

        def upload(i: int) -> bytes:
            header = json.dumps({"room": "lobby", "name": "f", "mime": "x/y", "id": f"f{i}"})
            data = len(header).to_bytes(4, "big") + header.encode() + os.urandom(1 << 20)
            return client_frame(OP_BINARY, data)

        count = 32
        files = [upload(i) for i in range(count)]
        loop = asyncio.get_running_loop()
        started = loop.time()
        await raw.send_frame(OP_TEXT, JOIN_STALL.encode())
        written = taken = 0  # handed to the writer; and gone from it
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STALL - 0.5):
                for data in files:
                    raw.writer.write(data)
                    written += 1
                    await raw.writer.drain()
                    taken += 1
        assert taken < count // 2, f"{taken} MiB taken while a frame waited"
        assert (await raw.read_json())["id"] == "stall"  # joined, before the wait
        rest = asyncio.ensure_future(raw.send_raw(b"".join(files[written:])))
        acks: list[str] = []
        async with asyncio.timeout(STALL + RECV_TIMEOUT * 2):
            while len(acks) < count:
                frame = await raw.read_json()
                assert frame["type"] != "error", frame
                if frame["type"] == "ack":
                    if not acks:
                        waited = loop.time() - started
                        assert waited >= STALL - 0.3, "the join did not wait: no stall to test"
                    acks.append(frame["id"])
        await rest
        assert acks == [f"f{i}" for i in range(count)]
    finally:
        await raw.close()


async def test_frames_behind_a_waiting_one_are_rate_limited_as_they_arrive(
    server_factory: ServerFactory,
) -> None:
    """Chats at 10/s (limit 20/s, burst 5) behind a join that waits 2 s are all acked, in turn."""
    # Each frame is taken from the rate limit when it arrives. Before, the
    # frames kept behind the join were taken when it let them through, all at
    # one instant, and past the burst of 5 they were refused. A refusal made
    # on arrival (the malformed frame here) is answered in its turn: the
    # replies keep the order of the frames.
    first, second = two_servers(server_factory, "--rate-burst", "5")
    loop = asyncio.get_running_loop()
    async with connect(first.ws_url()) as ws:
        await welcome(ws)
        await ws.send(JOIN_STALL)
        await recv_type(ws, "joined")
        await store_behind_its_back(second)
        started = loop.time()
        await ws.send(JOIN_STALL)
        sent: list[str] = []
        for i in range(15):
            await send_json(ws, "chat", {"message": f"m{i}"}, id=f"c{i}")
            if i == 4:
                await send_json(ws, "chat", {}, id="bad")  # no message: invalid_message
                await send_json(ws, "echo", {"n": 1}, id="e1")
                sent += ["bad", "e1"]
            await asyncio.sleep(0.1)
        await send_json(ws, "ping", id="after")
        sent.append("after")
        answered: list[str] = []
        acked: list[str] = []
        async with asyncio.timeout(STALL + RECV_TIMEOUT):
            while "after" not in answered:
                frame = await recv_json(ws)
                if frame["type"] == "error":
                    assert frame["payload"]["code"] == "invalid_message", frame
                if frame["type"] == "ack":
                    acked.append(frame["id"])
                elif frame.get("id") in sent:
                    answered.append(frame["id"])
            assert loop.time() - started >= STALL - 0.3, "the join did not wait: no stall"
            while len(acked) < 15:
                frame = await recv_json(ws)
                assert frame["type"] != "error", frame
                if frame["type"] == "ack":
                    acked.append(frame["id"])
    assert answered == sent
    assert acked == [f"c{i}" for i in range(15)]
