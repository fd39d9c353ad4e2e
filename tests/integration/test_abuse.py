"""Abuse protection over real sockets: rate limits, sustained floods, connection caps.

A flooding client gets ``rate_limited`` errors and, after 10 s of it, a 1008
close, while a bystander's pings stay fast; a client within the limit is
never refused; ``--rate-limit 0`` turns the limit off; per-user and per-IP
caps close the connection past them with 1008 and a readable reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
from collections.abc import AsyncIterator
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import ServerFactory
from tests.integration.serverproc import ServerProcess
from tests.integration.users import SECRET, closed_with, mint, register
from tests.integration.wsclient import RECV_TIMEOUT, recv_json, recv_type, send_json, welcome

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
async def signed_in(server: ServerProcess, user: str) -> AsyncIterator[ClientConnection]:
    """A connection that authenticated as ``user`` with a token."""
    async with connect(server.ws_url()) as ws:
        await welcome(ws)
        await send_json(ws, "auth", {"token": mint(user)}, id="auth")
        answer = await recv_type(ws, "auth")
        assert answer["payload"] == {"ok": True, "user": {"name": user, "guest": False}}
        yield ws


async def test_a_users_connection_past_the_cap_is_refused_and_closed(
    server_factory: ServerFactory,
) -> None:
    """With --max-connections-per-user 2 a third auth as the same user is forbidden, then 1008."""
    server = server_factory("--secret", SECRET, "--max-connections-per-user", "2")
    await register(server, "dora", "correct horse battery staple 42")
    async with signed_in(server, "dora") as first, signed_in(server, "dora"):
        async with connect(server.ws_url()) as third:
            await welcome(third)
            await send_json(third, "auth", {"token": mint("dora")}, id="auth-3")
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
                    await send_json(again, "auth", {"token": mint("dora")}, id="again")
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
