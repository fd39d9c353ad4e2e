"""Hostile and broken input: one client's garbage never reaches or stalls another.

Every test has a bystander ``b`` in the lobby that must still chat (its ack
and its own broadcast arrive, and no stray broadcast) after the attacker
``x`` has done its worst. The attacker is a ``websockets`` client, or a bare
socket (:class:`RawWebSocket`) for frames no library sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.integration.serverproc import ServerFactory, ServerProcess
from tests.integration.wsclient import (
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    RECV_TIMEOUT,
    RawWebSocket,
    recv_json,
    recv_type,
    send_json,
    welcome,
)

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
_checks = itertools.count()


@pytest.fixture
async def b(server: ServerProcess) -> AsyncIterator[ClientConnection]:
    """The bystander: a well-behaved client in the lobby, connected first."""
    async with connect(server.ws_url()) as ws:
        await welcome(ws)
        yield ws


@pytest.fixture
async def x(server: ServerProcess, b: ClientConnection) -> AsyncIterator[ClientConnection]:
    """The attacker, on the ``websockets`` client (connected after ``b``)."""
    async with connect(server.ws_url(), max_size=None) as ws:
        await welcome(ws)
        yield ws


async def chat_and_collect(ws: ClientConnection, text: str, fid: str) -> list[dict[str, Any]]:
    """Send a chat with id ``fid``; return every chat frame read up to its ack.

    Fails on any ``error`` frame. The sender's own broadcast is the last
    chat in the list (an ack follows the sender's copy).
    """
    await send_json(ws, "chat", {"message": text}, id=fid)
    chats: list[dict[str, Any]] = []
    async with asyncio.timeout(RECV_TIMEOUT):
        while True:
            frame = await recv_json(ws)
            assert frame["type"] != "error", f"chat {fid!r} was refused: {frame}"
            if frame["type"] == "chat":
                chats.append(frame)
            elif frame["type"] == "ack" and frame.get("id") == fid:
                assert chats, "the ack came before the sender's own broadcast"
                assert chats[-1]["payload"]["message"] == text
                assert frame["payload"]["seq"] == chats[-1]["payload"]["seq"]
                assert frame["payload"]["message_id"] == chats[-1]["payload"]["message_id"]
                return chats


async def prove_unaffected(
    b: ClientConnection,
    x: ClientConnection | None = None,
    *,
    earlier: tuple[str, ...] = (),
) -> None:
    """``x`` (when still open) and the bystander ``b`` both chat normally.

    ``b`` must see exactly the chats in ``earlier``, then ``x``'s check
    message, then its own: nothing the attacker sent was broadcast.
    """
    n = next(_checks)  # a resent id would be deduplicated: each check has its own
    seen_by_b: list[str] = list(earlier)
    if x is not None:
        own = await chat_and_collect(x, f"x is still open {n}", f"x-open-{n}")
        assert [c["payload"]["message"] for c in own][-1] == f"x is still open {n}"
        seen_by_b.append(f"x is still open {n}")
    chats = await chat_and_collect(b, f"b is unaffected {n}", f"b-ok-{n}")
    assert [c["payload"]["message"] for c in chats] == [*seen_by_b, f"b is unaffected {n}"]
    seqs = [c["payload"]["seq"] for c in chats]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"gap in seqs {seqs}"


async def expect_error(ws: ClientConnection, code: str, fid: str | None) -> dict[str, Any]:
    """The next frame (presence events aside) is an ``error`` with ``code``, for ``fid``."""
    frame = await recv_json(ws)
    while frame["type"] == "presence":
        frame = await recv_json(ws)
    assert frame["type"] == "error", frame
    assert frame["payload"]["code"] == code, frame
    assert isinstance(frame["payload"]["message"], str) and frame["payload"]["message"]
    if fid is None:
        assert "id" not in frame, frame
    else:
        assert frame["id"] == fid, frame
    return frame


async def expect_closed(ws: ClientConnection, timeout: float = RECV_TIMEOUT) -> int | None:
    """Read until the server closes ``ws``; return the close code it sent."""
    async with asyncio.timeout(timeout):
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await ws.recv()
    return info.value.rcvd.code if info.value.rcvd is not None else None


async def presence_join(b: ClientConnection) -> str:
    """The name in the next ``presence`` join event ``b`` sees."""
    async with asyncio.timeout(RECV_TIMEOUT):
        while True:
            frame = await recv_type(b, "presence")
            if frame["payload"].get("event") == "join":
                return str(frame["payload"]["user"])


async def presence_leave(b: ClientConnection, name: str, timeout: float) -> dict[str, Any]:
    """Wait for the ``presence`` leave event of ``name`` (other frames skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            frame = await recv_json(b, timeout)
            payload = frame["payload"]
            if frame["type"] == "presence" and payload.get("user") == name:
                if payload.get("event") == "leave":
                    return frame


# -- text frames with bad content ---------------------------------------------


async def test_non_json_text_is_invalid_json_and_stays_open(
    x: ClientConnection, b: ClientConnection
) -> None:
    """A text frame that is not JSON gets error invalid_json; that socket still chats."""
    await x.send("hello{")
    await expect_error(x, "invalid_json", None)
    await prove_unaffected(b, x)


WRONG_SHAPES: list[tuple[str, str | None]] = [
    ("[]", None),
    ('"x"', None),
    ("5", None),
    ("{}", None),
    ('{"type":5,"id":"w-type"}', "w-type"),
    ('{"type":"chat","payload":"str","id":"w-payload"}', "w-payload"),
    ('{"type":"chat","payload":{},"id":"w-empty"}', "w-empty"),
    ('{"type":"chat","payload":{"message":5},"id":"w-msg"}', "w-msg"),
    ('{"type":"chat","payload":{"message":"hi","room":"Lobby"},"id":"w-r1"}', "w-r1"),
    ('{"type":"chat","payload":{"message":"hi","room":"-x"},"id":"w-r2"}', "w-r2"),
    (
        json.dumps({"type": "chat", "payload": {"message": "hi", "room": "a" * 65}, "id": "w-r3"}),
        "w-r3",
    ),
    ('{"type":"chat","payload":{"message":"hi","room":"a b"},"id":"w-r4"}', "w-r4"),
    ('{"type":"chat","payload":{"message":"hi"},"id":123}', None),
    (json.dumps({"type": "chat", "payload": {"message": "hi"}, "id": "i" * 65}), None),
]


async def test_wrong_shapes_are_invalid_message_and_nothing_is_broadcast(
    x: ClientConnection, b: ClientConnection
) -> None:
    """JSON of the wrong shape gets invalid_message (with the id when valid), nothing else."""
    for text, fid in WRONG_SHAPES:
        await x.send(text)
        frame = await recv_json(x)
        assert frame["type"] == "error", f"{text[:80]} -> {frame}"
        assert frame["payload"]["code"] == "invalid_message", f"{text[:80]} -> {frame}"
        if fid is None:
            assert "id" not in frame, f"{text[:80]} -> {frame}"
        else:
            assert frame.get("id") == fid, f"{text[:80]} -> {frame}"
    await prove_unaffected(b, x)


async def test_chat_over_4000_characters_is_too_large(
    x: ClientConnection, b: ClientConnection
) -> None:
    """Chat text of 4001 characters gets too_large; exactly 4000 (2-byte chars) is sent."""
    await send_json(x, "chat", {"message": "é" * 4001}, id="big")
    await expect_error(x, "too_large", "big")
    limit = "é" * 4000
    chats = await chat_and_collect(x, limit, "at-limit")
    assert chats[-1]["payload"]["message"] == limit
    await prove_unaffected(b, x, earlier=(limit,))


async def test_unknown_type_and_echo_are_echoed_whole(
    x: ClientConnection, b: ClientConnection
) -> None:
    """An unknown type, and echo, come back as echo whose payload is the whole frame."""
    for frame in (
        {"type": "foo", "payload": {"a": 1}, "id": "e1"},
        {"type": "echo", "payload": {"b": [1, "two", None]}, "id": "e2", "extra": True},
    ):
        await x.send(json.dumps(frame))
        echo = await recv_json(x)
        assert echo["type"] == "echo", echo
        assert echo["id"] == frame["id"]
        assert echo["payload"] == frame
        assert TIMESTAMP.fullmatch(echo["timestamp"])
    await prove_unaffected(b, x)


async def test_spoofed_sender_and_timestamp_are_overwritten(
    x: ClientConnection, b: ClientConnection
) -> None:
    """payload.from, seq, message_id and the timestamp a client sends are ignored."""
    x_name = await presence_join(b)
    before = datetime.now(UTC)
    await x.send(
        json.dumps(
            {
                "type": "chat",
                "id": "spoof",
                "payload": {"message": "hi", "from": "admin", "seq": 999, "message_id": "m"},
                "timestamp": "1970-01-01",
            }
        )
    )
    chat = await recv_type(b, "chat")
    payload = chat["payload"]
    assert payload["message"] == "hi"
    assert payload["from"] == x_name != "admin"
    assert payload["seq"] == 1
    assert payload["message_id"] != "m"
    assert TIMESTAMP.fullmatch(chat["timestamp"]), chat["timestamp"]
    sent_at = datetime.strptime(chat["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs((sent_at - before).total_seconds()) < 300, chat["timestamp"]
    ack = await recv_type(x, "ack")
    assert ack["id"] == "spoof"
    await prove_unaffected(b, x)


async def test_chat_to_a_room_not_joined_is_not_member(
    x: ClientConnection, b: ClientConnection
) -> None:
    """Chat to a room the sender has not joined gets not_member and reaches no one."""
    await send_json(x, "chat", {"message": "sneaky", "room": "elsewhere"}, id="nm")
    await expect_error(x, "not_member", "nm")
    await prove_unaffected(b, x)


HOSTILE_TEXTS = [
    "<script>alert('x')</script><img src=x onerror=alert(1)>",
    "'; DROP TABLE messages;-- \" OR 1=1 --",
    "\u202egnp.exe (right-to-left override)",
    "4-byte emoji \U0001f600\U0001f680\U0001f9d1\u200d\U0001f4bb",
    "control \u0001 and escape \u001b[31m characters",
]


async def test_hostile_content_is_delivered_byte_identical(
    x: ClientConnection, b: ClientConnection
) -> None:
    """Markup, SQL, RTL override, 4-byte emoji and control characters arrive and stay unchanged."""
    for i, text in enumerate(HOSTILE_TEXTS):
        chats = await chat_and_collect(x, text, f"h{i}")
        assert chats[-1]["payload"]["message"].encode() == text.encode()
        got = await recv_type(b, "chat")
        assert got["payload"]["message"].encode() == text.encode()
    await send_json(x, "history", {"room": "lobby"}, id="hist")
    history = await recv_type(x, "history")
    assert history["id"] == "hist"
    stored = [m["message"] for m in history["payload"]["messages"]]
    assert [s.encode() for s in stored] == [t.encode() for t in HOSTILE_TEXTS]
    await prove_unaffected(b, x)


async def test_nul_in_a_message_is_refused(x: ClientConnection, b: ClientConnection) -> None:
    """U+0000 in a chat is invalid_message (no store keeps it), and reaches no one."""
    await send_json(x, "chat", {"message": "nul \u0000 in the middle"}, id="nul")
    await expect_error(x, "invalid_message", "nul")
    await prove_unaffected(b, x)


# -- frame sizes ----------------------------------------------------------------


def padded_echo(size: int) -> str:
    """An echo frame of exactly ``size`` bytes (ASCII)."""
    empty = json.dumps({"type": "echo", "id": "pad", "payload": {"pad": ""}})
    frame = json.dumps({"type": "echo", "id": "pad", "payload": {"pad": "p" * (size - len(empty))}})
    assert len(frame.encode()) == size
    return frame


async def test_text_frame_of_exactly_64_kib_is_accepted(
    x: ClientConnection, b: ClientConnection
) -> None:
    """A text frame of exactly 65536 bytes is read and answered (its echo comes back)."""
    frame = padded_echo(65536)
    await x.send(frame)
    echo = await recv_json(x)
    assert echo["type"] == "echo", echo
    assert echo["payload"] == json.loads(frame)
    await prove_unaffected(b, x)


async def test_text_frame_over_64_kib_closes_1009(x: ClientConnection, b: ClientConnection) -> None:
    """A text frame of 65537 bytes closes that connection with 1009 only."""
    await x.send(padded_echo(65537))
    assert await expect_closed(x) == 1009
    await prove_unaffected(b)


async def test_frame_header_declaring_50_mib_closes_1009_before_the_payload(
    server: ServerProcess, b: ClientConnection
) -> None:
    """A header announcing a 50 MiB text frame is refused with 1009 with no payload sent."""
    async with await RawWebSocket.connect(server.port) as raw:
        await raw.send_frame(OP_TEXT, b"", length=50 * 1024 * 1024)
        frames, code = await raw.read_until_closed()
    assert code == 1009, f"close code {code}; frames {frames}"
    await prove_unaffected(b)


async def test_invalid_utf8_text_closes_1007(server: ServerProcess, b: ClientConnection) -> None:
    """A text frame that is not UTF-8 closes that connection with 1007."""
    async with await RawWebSocket.connect(server.port) as raw:
        await raw.send_frame(OP_TEXT, b'{"type":"ping","x":"\xce\xba\xff\xfe"}')
        frames, code = await raw.read_until_closed()
    assert code == 1007, f"close code {code}; frames {frames}"
    await prove_unaffected(b)


# -- binary frames --------------------------------------------------------------


async def test_binary_garbage_is_invalid_message_and_guest_files_are_forbidden(
    x: ClientConnection, b: ClientConnection
) -> None:
    """Malformed binary frames get invalid_message; a guest's file gets forbidden; all stay open."""
    noise = random.Random(6455).randbytes(300)
    assert int.from_bytes(noise[:4], "big") > len(noise)  # its "header length" is nonsense
    garbage = [
        b"\x00\x01",
        noise,
        (100).to_bytes(4, "big") + b'{"name":"a"}',  # header length past the end
        (2).to_bytes(4, "big") + b"[]rest",  # header is not an object
    ]
    for data in garbage:
        await x.send(data)
        await expect_error(x, "invalid_message", None)
    header = json.dumps({"room": "lobby", "name": "a.txt", "mime": "text/plain", "id": "f1"})
    encoded = header.encode()
    await x.send(len(encoded).to_bytes(4, "big") + encoded + b"file body")
    await expect_error(x, "forbidden", "f1")
    await prove_unaffected(b, x)


# -- frame-level protocol violations ------------------------------------------


async def test_unmasked_client_frame_closes_1002(
    server: ServerProcess, b: ClientConnection
) -> None:
    """An unmasked client frame fails that connection with 1002; nothing is broadcast."""
    chat = json.dumps({"type": "chat", "payload": {"message": "unmasked"}, "id": "u1"})
    async with await RawWebSocket.connect(server.port) as raw:
        await raw.send_frame(OP_TEXT, chat.encode(), masked=False)
        code: int | None = -1
        with contextlib.suppress(TimeoutError):
            _, code = await raw.read_until_closed(timeout=3)
    texts = [p.decode() for op, p in raw.frames if op == OP_TEXT]
    assert code != -1, f"still open 3 s after an unmasked frame; it received {texts}"
    assert code == 1002, f"close code {code}; frames {raw.frames}"
    await prove_unaffected(b)


async def test_a_close_code_no_peer_may_send_is_answered_1002(server: ServerProcess) -> None:
    """A close frame with a reserved or unassigned code is a protocol error, not echoed."""
    for code in (0, 999, 1005, 1006, 1015, 2999, 5000):
        async with await RawWebSocket.connect(server.port) as raw:
            await raw.send_frame(OP_CLOSE, code.to_bytes(2, "big"))
            _, answered = await raw.read_until_closed(timeout=3)
        assert answered == 1002, code


async def test_json_nested_too_deep_to_echo_is_invalid_message(
    server: ServerProcess, b: ClientConnection
) -> None:
    """orjson reads 1,024 levels but writes 254: an echo or ping that deep is refused, not 500."""
    deep = "[" * 600 + "]" * 600
    for kind in ("echo", "ping", "no-such-type"):
        async with await RawWebSocket.connect(server.port) as raw:
            await raw.read_json()  # welcome
            await raw.read_json()  # joined
            frame = f'{{"type":"{kind}","id":"deep","payload":{{"x":{deep}}}}}'
            await raw.send_frame(OP_TEXT, frame.encode())
            reply = await raw.read_json()
            assert reply["type"] == "error" and reply["id"] == "deep", reply
            assert reply["payload"]["code"] == "invalid_message"
    assert "Traceback" not in server.stderr() and "internal error" not in server.stderr()
    await prove_unaffected(b)


async def test_framing_errors_are_not_logged_as_server_errors(server: ServerProcess) -> None:
    """A client's framing error (here an unmasked frame) is an INFO line, never ERROR."""
    async with await RawWebSocket.connect(server.port) as raw:
        await raw.send_frame(OP_TEXT, b"{}", masked=False)
        await raw.read_until_closed(timeout=3)
    await asyncio.sleep(0.2)
    levels = [line.split()[2] for line in server.stderr().splitlines() if line[:2] == "20"]
    assert "un-masked" in server.stderr() and "ERROR" not in levels


# -- connections that never finish --------------------------------------------


async def test_silent_and_half_request_sockets_do_not_block_others_and_are_dropped(
    server: ServerProcess, b: ClientConnection
) -> None:
    """Silent TCP and half a request line: others are served meanwhile; both dropped in ~12 s."""
    silent = await RawWebSocket.open(server.port)
    half = await RawWebSocket.open(server.port)
    try:
        await half.send_raw(b"GET /ws HT")
        await prove_unaffected(b)
        async with connect(server.ws_url()) as late:
            await welcome(late)
            await prove_unaffected(b, late)
        # The server's keep-alive timeout is 10 s; both must be gone soon after.
        results = await asyncio.gather(
            silent.read_to_eof(timeout=13), half.read_to_eof(timeout=13), return_exceptions=True
        )
        for name, result in zip(("silent", "half request line"), results, strict=True):
            assert not isinstance(result, TimeoutError), f"{name} socket still open after 13 s"
            assert not isinstance(result, BaseException), f"{name}: {result!r}"
    finally:
        await silent.close()
        await half.close()
    await prove_unaffected(b)


async def test_heartbeat_drops_a_client_that_never_answers_pings(
    server_factory: ServerFactory,
) -> None:
    """With --heartbeat 1 a client that never pongs is dropped; one that pongs stays."""
    server = server_factory("--heartbeat", "1")
    loop = asyncio.get_running_loop()
    async with connect(server.ws_url()) as b:
        b_since = loop.time()
        system, _ = await welcome(b)
        assert system["payload"]["heartbeat"] == 1
        async with await RawWebSocket.connect(server.port) as raw:
            name = await presence_join(b)
            # Never answer a ping: read until the server drops the connection.
            code: int | None = -1
            with contextlib.suppress(TimeoutError):
                _, code = await raw.read_until_closed(timeout=5)
            opcodes = [op for op, _ in raw.frames]
            assert code != -1, f"still connected 5 s after connecting; opcodes {opcodes}"
            leave = await presence_leave(b, name, timeout=5)
        assert leave["payload"]["room"] == "lobby"
        assert OP_PING in opcodes, f"no ping frame before the drop; opcodes {opcodes}"
        assert code in (None, 1011), f"close code {code}"
        # b answers pings (the websockets client does it by itself): it is
        # still connected after more than three intervals.
        await asyncio.sleep(max(0.0, 3.5 - (loop.time() - b_since)))
        await prove_unaffected(b)


async def test_slow_consumer_is_dropped_and_the_others_get_every_message(
    server: ServerProcess, b: ClientConnection
) -> None:
    """A client that never reads is closed once too much is queued; b gets every seq."""
    # Ten senders, each within the per-connection rate limit (bursts of 40,
    # then 20/s), push megabytes into the lobby: 3,900 euro signs are 3,900
    # characters but 11.7 kB of UTF-8. The kernel's socket buffers swallow a
    # few MB before the server's own queue for the slow client grows.
    senders_count, burst, per_second, max_messages = 10, 38, 18, 3000
    text = "\u20ac" * 3900
    slow = await RawWebSocket.connect(server.port, rcvbuf=4096)  # handshake, then never read
    try:
        slow_name = await presence_join(b)
        received: list[dict[str, Any]] = []
        slow_left = asyncio.Event()

        async def watch() -> None:
            async for data in b:
                frame = json.loads(data)
                payload = frame["payload"]
                if frame["type"] == "chat":
                    received.append(payload)
                elif frame["type"] == "presence" and payload.get("user") == slow_name:
                    if payload.get("event") == "leave":
                        slow_left.set()

        async def drain(ws: ClientConnection) -> None:
            async for _ in ws:
                pass

        sent = 0
        async with contextlib.AsyncExitStack() as stack:
            senders = [
                await stack.enter_async_context(connect(server.ws_url(), ping_interval=None))
                for _ in range(senders_count)
            ]
            tasks = [asyncio.create_task(watch())]
            tasks += [asyncio.create_task(drain(ws)) for ws in senders]
            try:
                async with asyncio.timeout(60):
                    wave = burst
                    while not slow_left.is_set() and sent < max_messages:
                        for i, ws in enumerate(senders):
                            for _ in range(wave):
                                chat = {
                                    "type": "chat",
                                    "payload": {"message": f"{i}:{sent}:{text}"},
                                }
                                await ws.send(json.dumps(chat, ensure_ascii=False))
                                sent += 1
                        wave = per_second
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(slow_left.wait(), 1.0)
                    assert slow_left.is_set(), f"slow consumer still there after {sent} messages"
                    while len(received) < sent:
                        await asyncio.sleep(0.05)
            finally:
                # Close while the senders still read: their close frames queue
                # behind megabytes of broadcasts.
                await asyncio.gather(*(ws.close() for ws in senders))
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        seqs = [p["seq"] for p in received]
        assert seqs == list(range(1, sent + 1)), "b missed or reordered messages"
        origin = [tuple(map(int, p["message"].split(":", 2)[:2])) for p in received]
        assert sorted(n for _, n in origin) == list(range(sent)), "b lost or duplicated some"
        for i in range(senders_count):
            mine = [n for sender, n in origin if sender == i]
            assert mine == sorted(mine), f"sender {i}'s messages out of order"
        assert all(p["message"].endswith(text) for p in received)
        # The slow socket itself has been ended by the server.
        await slow.read_to_eof(timeout=10)
    finally:
        await slow.close()
    assert "slow consumer" in server.stderr()
    await prove_unaffected(b)
