"""Chat between real clients over real sockets."""

from __future__ import annotations

import re

import aiohttp
from websockets.asyncio.client import connect

from tests.integration.serverproc import ServerProcess
from tests.integration.wsclient import recv_json, recv_type, send_json, welcome

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


async def test_welcome_frame_and_lobby_join(server: ServerProcess) -> None:
    """A new connection gets the system frame with a guest name, then joins lobby."""
    async with connect(server.ws_url()) as ws:
        system, joined = await welcome(ws)
    payload = system["payload"]
    assert payload["message"] == "Connected to WebSocket server"
    assert re.fullmatch(r"guest-[0-9a-f]+", payload["user"]["name"])
    assert payload["user"]["guest"] is True
    assert payload["heartbeat"] == 30
    assert payload["session"]
    assert TIMESTAMP.fullmatch(system["timestamp"])
    assert joined["payload"]["room"] == "lobby"
    assert joined["payload"]["seq"] == 0
    assert joined["payload"]["members"] == [payload["user"]["name"]]


async def test_chat_reaches_every_member_with_gapless_seq(server: ServerProcess) -> None:
    """Chat is broadcast to all lobby members (sender too) with seq 1, 2, 3 and an ack."""
    async with connect(server.ws_url()) as a, connect(server.ws_url("/")) as b:
        (sys_a, _), _ = await welcome(a), await welcome(b)
        for i in range(3):
            await send_json(a, "chat", {"message": f"hello {i}"}, id=f"c{i}")
        frames_a = []
        while sum(f["type"] in ("chat", "ack") for f in frames_a) < 6:
            frames_a.append(await recv_json(a))
        seen_a = [f for f in frames_a if f["type"] == "chat"]
        acks = [f for f in frames_a if f["type"] == "ack"]
        seen_b = [await recv_type(b, "chat") for _ in range(3)]
        assert [f["payload"]["seq"] for f in seen_a] == [1, 2, 3]
        assert [f["payload"] for f in seen_a] == [f["payload"] for f in seen_b]
        for i, frame in enumerate(seen_b):
            assert frame["payload"]["message"] == f"hello {i}"
            assert frame["payload"]["from"] == sys_a["payload"]["user"]["name"]
            assert frame["payload"]["room"] == "lobby"
            assert frame["payload"]["message_id"]
            assert TIMESTAMP.fullmatch(frame["timestamp"])
        assert [ack["id"] for ack in acks] == ["c0", "c1", "c2"]
        for ack, chat in zip(acks, seen_a, strict=True):
            assert ack["payload"]["seq"] == chat["payload"]["seq"]
            assert ack["payload"]["message_id"] == chat["payload"]["message_id"]
        # An ack follows the sender's own copy of the message.
        assert frames_a.index(acks[0]) > frames_a.index(seen_a[0])


async def test_ping_keeps_id_and_payload(server: ServerProcess) -> None:
    """ping is answered by pong with the same id and payload."""
    async with connect(server.ws_url()) as ws:
        await welcome(ws)
        await send_json(ws, "ping", {"n": [1, 2]}, id="p-1")
        pong = await recv_json(ws)
    assert pong["type"] == "pong"
    assert pong["id"] == "p-1"
    assert pong["payload"] == {"n": [1, 2]}


async def test_health_ready_and_json_404(server: ServerProcess) -> None:
    """/health is plain text, /ready reports backends, unknown routes get JSON errors."""
    async with aiohttp.ClientSession() as http:
        async with http.get(server.http_url("/health")) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/plain"
            assert await resp.text() == "WebSocket server is running"
        async with http.get(server.http_url("/ready")) as resp:
            assert resp.status == 200
            assert (await resp.json())["ready"] is True
        async with http.get(server.http_url("/no/such/route")) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["code"] == "not_found"
        async with http.get(server.http_url("/")) as resp:
            assert resp.status == 200
            assert "<title>roomcast</title>" in await resp.text()
