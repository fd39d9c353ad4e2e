"""WebSocket framing over a bare socket: fragments, ordering, and which handler answers.

picows parses single frames; joining fragmented messages, their size limit
and UTF-8 check, and keeping a connection's frames in order while one waits
for the store are roomcast's (``websocket.py``). The front door sends
WebSocket handshakes to picows and every other request to aiohttp.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.integration.serverproc import ServerProcess
from tests.integration.wsclient import (
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RawWebSocket,
    client_frame,
)


def chat(text: str, fid: str, room: str | None = None) -> bytes:
    payload: dict[str, Any] = {"message": text}
    if room is not None:
        payload["room"] = room
    frame = {"type": "chat", "payload": payload, "id": fid}
    return json.dumps(frame, ensure_ascii=False).encode()


async def read_welcome(raw: RawWebSocket) -> None:
    assert (await raw.read_json())["type"] == "system"
    assert (await raw.read_json())["type"] == "joined"


async def until_ack(raw: RawWebSocket, fid: str) -> list[dict[str, Any]]:
    """Text frames up to and including the ack (or error) for ``fid``."""
    frames = []
    while True:
        frame = await raw.read_json()
        frames.append(frame)
        if frame.get("id") == fid and frame["type"] in ("ack", "error"):
            return frames


async def test_fragmented_text_with_a_ping_between_is_one_message(server: ServerProcess) -> None:
    """A chat in three fragments with a ping between is one message; the ping is ponged."""
    message = chat("κόσμε in pieces", "f1")
    cut1, cut2 = 10, message.index("ό".encode()) + 1  # the second cut splits a character
    async with await RawWebSocket.connect(server.port) as raw:
        await read_welcome(raw)
        await raw.send_raw(
            client_frame(OP_TEXT, message[:cut1], fin=False)
            + client_frame(OP_PING, b"between")
            + client_frame(OP_CONT, message[cut1:cut2], fin=False)
            + client_frame(OP_CONT, message[cut2:])
        )
        frames = await until_ack(raw, "f1")
        assert frames[-1]["type"] == "ack", frames
        assert [f["payload"]["message"] for f in frames if f["type"] == "chat"] == [
            "κόσμε in pieces"
        ]
    assert (OP_PONG, b"between") in raw.frames


async def fails_with(server: ServerProcess, data: bytes) -> int | None:
    async with await RawWebSocket.connect(server.port) as raw:
        await read_welcome(raw)
        await raw.send_raw(data)
        _, code = await raw.read_until_closed()
    return code


async def test_continuation_without_a_message_closes_1002(server: ServerProcess) -> None:
    """A continuation frame with no fragmented message open fails the connection with 1002."""
    assert await fails_with(server, client_frame(OP_CONT, b"orphan")) == 1002


async def test_new_message_inside_a_fragmented_one_closes_1002(server: ServerProcess) -> None:
    """A text frame while a fragmented message is still open fails the connection with 1002."""
    data = client_frame(OP_TEXT, b'{"type":', fin=False) + client_frame(OP_TEXT, chat("x", "x"))
    assert await fails_with(server, data) == 1002


async def test_fragments_over_64_kib_in_all_close_1009(server: ServerProcess) -> None:
    """Fragments under the frame limit each but over 64 KiB together close with 1009."""
    part = b" " * 40_000
    data = client_frame(OP_TEXT, part, fin=False) + client_frame(OP_CONT, part, fin=False)
    assert await fails_with(server, data) == 1009


async def test_fragmented_text_that_is_not_utf8_closes_1007(server: ServerProcess) -> None:
    """Fragments that join into invalid UTF-8 close with 1007."""
    data = client_frame(OP_TEXT, b'{"type":"ping","x":"\xce', fin=False) + client_frame(
        OP_CONT, b'\xff"}'
    )
    assert await fails_with(server, data) == 1007


async def test_frames_after_a_join_wait_for_it(server: ServerProcess) -> None:
    """A join (a store read) and a chat to that room in one write: joined first, then the ack."""
    async with await RawWebSocket.connect(server.port) as raw:
        await read_welcome(raw)
        join = json.dumps({"type": "join", "payload": {"room": "later", "since": 0}, "id": "j"})
        await raw.send_raw(
            client_frame(OP_TEXT, join.encode())
            + b"".join(client_frame(OP_TEXT, chat(f"m{i}", f"c{i}", "later")) for i in range(5))
        )
        frames = await until_ack(raw, "c4")
    kinds = [f["type"] for f in frames]
    assert kinds[0] == "joined", kinds
    assert "error" not in kinds, frames
    acks = [f["id"] for f in frames if f["type"] == "ack"]
    assert acks == [f"c{i}" for i in range(5)]


async def test_http_then_upgrade_on_one_connection_gets_json_400(server: ServerProcess) -> None:
    """After a plain request on a kept-alive connection, an upgrade there gets a JSON 400."""
    raw = await RawWebSocket.open(server.port)
    try:
        await raw.send_raw(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(raw.reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await raw.reader.readexactly(length)
        await raw.handshake(server.port)
        assert raw.status == 400
        assert raw.response_headers["content-type"].startswith("application/json")
    finally:
        await raw.close()


async def test_upgrade_to_another_path_is_a_json_404(server: ServerProcess) -> None:
    """A WebSocket handshake on a path that is not /ws or / is answered by HTTP: 404 JSON."""
    raw = await RawWebSocket.open(server.port)
    try:
        await raw.handshake(server.port, "/elsewhere")
        assert raw.status == 404
        assert raw.response_headers["content-type"].startswith("application/json")
    finally:
        await raw.close()
