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

import pytest
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from tests.integration.serverproc import ServerFactory, ServerProcess
from tests.integration.users import SECRET, mint, sign_up
from tests.integration.wsclient import (
    OP_BINARY,
    OP_CLOSE,
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


# -- fragments, reserved bits ----------------------------------------------------


async def test_a_message_in_1024_fragments_is_read_and_one_more_closes_1009(
    server: ServerProcess,
) -> None:
    """1,024 frames make one message (a ping, ponged); a 1,025th fragment closes with 1009."""
    # Empty continuations add nothing to a message's size: without a count,
    # a client could send them forever and the server would keep every one.
    ping = json.dumps({"type": "ping", "id": "many"}).encode()
    empty = client_frame(OP_CONT, b"", fin=False)
    async with await RawWebSocket.connect(server.port) as raw:
        await read_welcome(raw)
        await raw.send_raw(
            client_frame(OP_TEXT, ping[:5], fin=False)
            + empty * 1022
            + client_frame(OP_CONT, ping[5:])
        )
        pong = await raw.read_json()
        assert (pong["type"], pong["id"]) == ("pong", "many")
        await raw.send_raw(client_frame(OP_TEXT, ping[:5], fin=False) + empty * 1024)
        frames, code = await raw.read_until_closed()
    assert code == 1009, frames
    assert frames[-1] == (
        OP_CLOSE,
        (1009).to_bytes(2, "big") + b"message in more than 1024 fragments",
    )


def reserved(frame: bytes, bit: int) -> bytes:
    """``frame`` with reserved bit ``bit`` (1, 2 or 3) of its first byte set."""
    return bytes((frame[0] | (0x80 >> bit),)) + frame[1:]


async def test_reserved_bits_fail_the_connection_with_1002(server: ServerProcess) -> None:
    """RSV1, RSV2 or RSV3 set on a data or control frame closes with 1002 (no extension)."""
    # RFC 6455 section 5.2: with no extension negotiated that gives them a
    # meaning, a frame with a reserved bit set fails the connection.
    ping = json.dumps({"type": "ping", "id": "r"}).encode()
    cases = {
        "text, RSV1": reserved(client_frame(OP_TEXT, ping), 1),
        "ping, RSV2": reserved(client_frame(OP_PING, b"hi"), 2),
        "binary, RSV1": reserved(client_frame(OP_BINARY, b"\x00\x00\x00\x02{}"), 1),
        "continuation, RSV3": client_frame(OP_TEXT, ping[:5], fin=False)
        + reserved(client_frame(OP_CONT, ping[5:]), 3),
        "pong, RSV3": reserved(client_frame(OP_PONG, b""), 3),
    }
    for case, data in cases.items():
        async with await RawWebSocket.connect(server.port) as raw:
            await read_welcome(raw)
            await raw.send_raw(data)
            frames, code = await raw.read_until_closed(timeout=3)
        assert code == 1002, f"{case}: {frames}"
        assert (OP_TEXT, b"") not in frames
        assert not any(op == OP_PONG for op, _ in frames), f"{case}: answered {frames}"


# -- frame size: decided at the handshake -------------------------------------------


@pytest.fixture
def accounts(server_factory: ServerFactory) -> ServerProcess:
    """A server that issues and accepts tokens (signed with SECRET)."""
    return server_factory("--secret", SECRET)


def file_frame(fid: str, body: bytes, room: str = "lobby") -> bytes:
    header = json.dumps({"room": room, "name": "f.bin", "mime": "x/y", "id": fid}).encode()
    return len(header).to_bytes(4, "big") + header + body


async def until_id(raw: RawWebSocket, fid: str) -> dict[str, Any]:
    """The next text frame answering ``fid`` (others skipped)."""
    while True:
        frame = await raw.read_json()
        if frame.get("id") == fid:
            return frame


async def test_a_big_frame_is_refused_from_its_header_unless_signed_in_on_the_handshake(
    accounts: ServerProcess,
) -> None:
    """A 1 MiB binary header closes with 1009 at once, unless the handshake carried a token."""
    # Anonymous, a guest, and a user who signed in with ``auth`` after
    # connecting all get picows' text limit (64 KiB); only the handshake's
    # token sets the file limit, which cannot change once the connection is
    # built. No payload is sent: the refusal comes from the header.
    token = await sign_up(accounts, "ann")
    sign_ins = {
        "anonymous": None,
        "guest": {"guest": "gil"},
        "auth after connecting": {"token": token},
    }
    for case, auth in sign_ins.items():
        async with await RawWebSocket.connect(accounts.port) as raw:
            await read_welcome(raw)
            if auth is not None:
                await raw.send_frame(
                    OP_TEXT, json.dumps({"type": "auth", "id": "a", "payload": auth}).encode()
                )
                assert (await until_id(raw, "a"))["type"] == "auth"
            await raw.send_frame(OP_BINARY, b"", length=1 << 20)
            frames, code = await raw.read_until_closed(timeout=3)
        assert code == 1009, f"{case}: {frames}"
    headers = {"Authorization": f"Bearer {token}"}
    async with await RawWebSocket.connect(accounts.port, headers=headers) as raw:
        await read_welcome(raw)
        await raw.send_frame(OP_BINARY, file_frame("big", bytes(300_000)))
        assert (await until_id(raw, "big"))["type"] == "ack"


async def test_fragmented_binary_follows_the_same_rule(accounts: ServerProcess) -> None:
    """Binary in two 40 KB fragments: 1009 unsigned; a file when signed in on the handshake."""
    token = await sign_up(accounts, "ann")
    body = bytes(80_000)
    data = file_frame("frag", body)
    fragments = client_frame(OP_BINARY, data[:40_000], fin=False) + client_frame(
        OP_CONT, data[40_000:]
    )
    async with await RawWebSocket.connect(accounts.port) as raw:
        await read_welcome(raw)
        await raw.send_raw(fragments)
        frames, code = await raw.read_until_closed(timeout=3)
    assert code == 1009, frames
    headers = {"Authorization": f"Bearer {token}"}
    async with await RawWebSocket.connect(accounts.port, headers=headers) as raw:
        await read_welcome(raw)
        await raw.send_raw(fragments)
        assert (await until_id(raw, "frag"))["type"] == "ack"


async def test_text_over_64_kib_closes_1009_on_a_connection_signed_in_on_the_handshake(
    accounts: ServerProcess,
) -> None:
    """Files may be big there; text frames may not: 100 KB of text closes with 1009."""
    token = await sign_up(accounts, "ann")
    headers = {"Authorization": f"Bearer {token}"}
    async with await RawWebSocket.connect(accounts.port, headers=headers) as raw:
        await read_welcome(raw)
        echo = json.dumps({"type": "echo", "payload": "x" * 100_000}).encode()
        await raw.send_frame(OP_TEXT, echo)
        frames, code = await raw.read_until_closed()
    assert code == 1009, frames
    assert not any(op == OP_TEXT for op, _ in frames[1:]), "the text frame was answered"


async def test_a_browser_signs_in_with_the_subprotocol_offer(accounts: ServerProcess) -> None:
    """Offering ``roomcast, roomcast.bearer.TOKEN``: 101 naming ``roomcast``; signed in; files."""
    # Browsers cannot set Authorization on a WebSocket; the offer is how the
    # page signs in on the handshake. The token is never sent back.
    token = await sign_up(accounts, "ann")
    offer = {"Sec-WebSocket-Protocol": f"roomcast, roomcast.bearer.{token}"}
    async with await RawWebSocket.connect(accounts.port, headers=offer) as raw:
        assert raw.response_headers["sec-websocket-protocol"] == "roomcast"
        system = await raw.read_json()
        assert system["payload"]["user"] == {"name": "ann", "guest": False}
        assert (await raw.read_json())["type"] == "joined"
        await raw.send_frame(OP_BINARY, file_frame("f1", bytes(200_000)))
        assert (await until_id(raw, "f1"))["type"] == "ack"
    assert not any(token in value for value in raw.response_headers.values())
    # A standard client checks the answer names a subprotocol it offered.
    async with connect(
        accounts.ws_url(),
        subprotocols=[Subprotocol("roomcast"), Subprotocol(f"roomcast.bearer.{token}")],
    ) as ws:
        assert ws.subprotocol == "roomcast"
        first = json.loads(await ws.recv())
        assert first["payload"]["user"]["name"] == "ann"


async def test_a_refused_subprotocol_token_opens_unsigned_with_the_text_limit(
    accounts: ServerProcess,
) -> None:
    """A forged token in the offer is no 401 (a browser cannot read one): a guest, 64 KiB frames."""
    forged = mint("ann", key="another secret entirely " * 3)
    for offer in (f"roomcast, roomcast.bearer.{forged}", "roomcast"):
        headers = {"Sec-WebSocket-Protocol": offer}
        async with await RawWebSocket.connect(accounts.port, headers=headers) as raw:
            assert raw.response_headers["sec-websocket-protocol"] == "roomcast"
            system = await raw.read_json()
            assert system["payload"]["user"]["guest"] is True, offer
            assert (await raw.read_json())["type"] == "joined"
            await raw.send_frame(OP_BINARY, b"", length=1 << 20)
            frames, code = await raw.read_until_closed(timeout=3)
        assert code == 1009, f"{offer}: {frames}"
    # Authorization stays strict: a program reads the 401 and logs in again.
    raw = await RawWebSocket.open(accounts.port)
    try:
        await raw.handshake(accounts.port, headers={"Authorization": f"Bearer {forged}"})
        assert raw.status == 401
    finally:
        await raw.close()
