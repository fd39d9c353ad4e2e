"""The HTTP fallback over real sockets: ``GET /events`` (SSE) down, ``POST /events/{id}`` up.

The stream is read with aiohttp's client and parsed here, line by line (an
independent reader of the format, not the server's code); WebSocket clients
on the same server, or on another node, are the ``websockets`` library.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.integration.redis_nodes import start_node
from tests.integration.serverproc import ServerFactory, ServerProcess
from tests.integration.users import sign_up, user_ws
from tests.integration.wsclient import recv_json, recv_type, send_json, welcome
from tests.services import REDIS_URL, fresh_database, redis_prefix

#: The longest a test waits for one expected event.
WAIT = 5.0


class Http:
    """The test's HTTP client, and the streams it opened (closed when the test ends)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.responses: list[aiohttp.ClientResponse] = []


class EventStream:
    """One ``GET /events`` response, read as Server-Sent Events, and its POSTs."""

    def __init__(self, http: Http, server: ServerProcess) -> None:
        self.http = http
        self.server = server
        self.response: aiohttp.ClientResponse | None = None
        self.stream = ""
        #: Comment lines seen (``: ping``), in order.
        self.comments: list[str] = []

    async def open(self, headers: dict[str, str] | None = None) -> int:
        """Open the stream; its status (on 200, the ``open`` event is read)."""
        self.response = await self.http.session.get(
            self.server.http_url("/events"), headers=headers
        )
        self.http.responses.append(self.response)
        if self.response.status != 200:
            return self.response.status
        assert self.response.headers["Content-Type"] == "text/event-stream"
        assert self.response.headers["Cache-Control"] == "no-store"
        assert self.response.headers["X-Accel-Buffering"] == "no"
        assert len(self.response.headers["X-Request-Id"]) == 12
        kind, data = await self.event()
        assert kind == "open", (kind, data)
        self.stream = data["stream"]
        assert len(self.stream) >= 32
        return 200

    async def event(self, timeout: float = WAIT) -> tuple[str, Any]:
        """The next event: its type (``message`` for a frame) and parsed data;
        ``("end", None)`` when the response ends, ``("lost", None)`` when it is cut off."""
        assert self.response is not None
        kind = "message"
        data: list[str] = []
        async with asyncio.timeout(timeout):
            while True:
                try:
                    line = await self.response.content.readline()
                except (aiohttp.ClientPayloadError, ConnectionError):
                    return "lost", None  # the chunked body ended without its last chunk
                if not line:
                    return "end", None
                text = line.decode("utf-8").rstrip("\n")
                if text == "":
                    if data:
                        return kind, json.loads("\n".join(data))
                    continue
                field, _, value = text.partition(":")
                value = value.removeprefix(" ")
                if field == "":
                    self.comments.append(value)
                elif field == "event":
                    kind = value
                elif field == "data":
                    data.append(value)

    async def frame(self, timeout: float = WAIT) -> dict[str, Any]:
        """The next frame (fails on any other event)."""
        kind, data = await self.event(timeout)
        assert kind == "message", (kind, data)
        assert isinstance(data, dict)
        return data

    async def until(self, kind: str, fid: str | None = None) -> dict[str, Any]:
        """The next frame of type ``kind`` (with id ``fid`` if given), others skipped."""
        async with asyncio.timeout(WAIT):
            while True:
                frame = await self.frame()
                if frame["type"] == kind and (fid is None or frame.get("id") == fid):
                    return frame

    async def closed_with(self) -> tuple[int, str]:
        """Skip frames until the close event; its code and reason (the response then ends)."""
        async with asyncio.timeout(WAIT):
            while True:
                kind, data = await self.event()
                assert kind != "end", "the stream ended without a close event"
                if kind == "close":
                    assert await self.event() == ("end", None)
                    return data["code"], data["reason"]

    async def post(
        self,
        *frames: dict[str, Any],
        body: bytes | None = None,
        content_type: str = "application/json",
        stream: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """POST ``frames`` as NDJSON (or ``body`` as it is); the status and JSON error."""
        if body is None:
            body = b"\n".join(json.dumps(frame).encode() for frame in frames)
        url = self.server.http_url(f"/events/{stream or self.stream}")
        async with self.http.session.post(
            url, data=body, headers={"Content-Type": content_type, **(headers or {})}
        ) as resp:
            if resp.status == 204:
                assert await resp.read() == b""
                return 204, None
            assert resp.content_type == "application/json", await resp.text()
            return resp.status, await resp.json()

    async def welcome(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The ``system`` frame and the lobby's ``joined`` frame."""
        system = await self.frame()
        assert system["type"] == "system"
        joined = await self.until("joined")
        return system, joined


@pytest.fixture
async def http() -> AsyncIterator[Http]:
    """The test's HTTP client: every stream it opened ends with it."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_read=30)) as session:
        client = Http(session)
        try:
            yield client
        finally:
            for response in client.responses:
                response.close()


async def opened(
    http: Http, server: ServerProcess, token: str | None = None
) -> tuple[EventStream, dict[str, Any]]:
    """A stream to ``server`` (signed in with ``token`` if given) past its welcome; the
    ``system`` frame's payload."""
    sse = EventStream(http, server)
    headers = {"Authorization": f"Bearer {token}"} if token is not None else None
    assert await sse.open(headers) == 200
    system, _ = await sse.welcome()
    return sse, system["payload"]


def chat(room: str, text: str, fid: str) -> dict[str, Any]:
    return {"type": "chat", "id": fid, "payload": {"room": room, "message": text}}


async def chats_of(ws: ClientConnection, count: int) -> list[str]:
    """The texts of the next ``count`` chat frames on ``ws``."""
    texts: list[str] = []
    while len(texts) < count:
        frame = await recv_type(ws, "chat")
        texts.append(frame["payload"]["message"])
    return texts


async def test_a_stream_and_a_websocket_chat_both_ways(server: ServerProcess, http: Http) -> None:
    """A guest's POSTed chat is acked on its stream and reaches a WebSocket, and back."""
    sse, me = await opened(http, server)
    assert me["user"]["guest"] and me["heartbeat"] == 30
    ws = await connect(server.ws_url(), open_timeout=5)
    await welcome(ws)
    assert await sse.post(chat("lobby", "from sse", "s1")) == (204, None)
    mine = await sse.until("chat")  # a sender gets its message, then the ack
    ack = await sse.until("ack", "s1")
    assert mine["payload"]["seq"] == ack["payload"]["seq"]
    got = await recv_type(ws, "chat")
    assert (got["payload"]["message"], got["payload"]["from"]) == ("from sse", me["user"]["name"])
    await send_json(ws, "chat", {"room": "lobby", "message": "from ws"}, id="w1")
    back = await sse.until("chat")
    assert back["payload"]["message"] == "from ws"
    # Several frames in one POST are carried out in order (a ping is answered at once,
    # a chat once stored, as on a WebSocket).
    status, _ = await sse.post(
        chat("lobby", "a", "s2"), {"type": "ping", "id": "p"}, chat("lobby", "b", "s3")
    )
    assert status == 204
    replies = [await sse.frame() for _ in range(5)]
    assert [f["id"] for f in replies if f["type"] in ("ack", "pong")] == ["p", "s2", "s3"]
    assert [f["payload"]["message"] for f in replies if f["type"] == "chat"] == ["a", "b"]
    assert await chats_of(ws, 3) == ["from ws", "a", "b"]
    await ws.close()


async def test_a_resent_id_is_acked_again_and_not_sent_twice(
    server: ServerProcess, http: Http
) -> None:
    """The same chat id POSTed twice: two acks of one seq, one message for the others."""
    sse, _ = await opened(http, server)
    ws = await connect(server.ws_url(), open_timeout=5)
    await welcome(ws)
    await sse.post(chat("lobby", "once", "same"))
    first = await sse.until("ack", "same")
    await sse.post(chat("lobby", "once", "same"))
    again = await sse.until("ack", "same")
    assert again["payload"]["seq"] == first["payload"]["seq"]
    await sse.post(chat("lobby", "next", "other"))
    assert await chats_of(ws, 2) == ["once", "next"]
    await ws.close()


async def test_a_reconnect_with_since_gets_only_what_it_missed(
    server: ServerProcess, http: Http, tokens: dict[str, str]
) -> None:
    """A stream that ends and comes back joins with since: only the messages in between."""
    sse, _ = await opened(http, server, tokens["alice"])
    await sse.post({"type": "join", "id": "j", "payload": {"room": "r"}})
    await sse.until("joined", "j")
    await sse.post(chat("r", "seen", "c1"))
    seen = (await sse.until("ack", "c1"))["payload"]["seq"]
    assert sse.response is not None
    sse.response.close()  # the connection is dropped
    bob = await user_ws(server, tokens["bob"])
    await send_json(bob, "join", {"room": "r"}, id="j")
    await recv_type(bob, "joined")
    for n in (1, 2):
        await send_json(bob, "chat", {"room": "r", "message": f"missed {n}"}, id=f"m{n}")
        await recv_type(bob, "ack")
    again, _ = await opened(http, server, tokens["alice"])
    await again.post({"type": "join", "id": "j2", "payload": {"room": "r", "since": seen}})
    await again.until("joined", "j2")
    replayed = [(await again.until("chat"))["payload"]["message"] for _ in range(2)]
    assert replayed == ["missed 1", "missed 2"]
    await again.post(chat("r", "live", "c2"))
    assert (await again.until("chat"))["payload"]["message"] == "live"  # nothing else first
    await bob.close()


async def test_sign_in_by_header_and_by_auth_frame(
    server: ServerProcess, http: Http, tokens: dict[str, str]
) -> None:
    """A token in Authorization signs the stream in at the open; an auth frame signs a guest in."""
    _, alice = await opened(http, server, tokens["alice"])
    assert alice["user"] == {"name": "alice", "guest": False}
    sse, guest = await opened(http, server)
    assert guest["user"]["guest"]
    await sse.post({"type": "auth", "id": "a", "payload": {"token": tokens["bob"]}})
    signed = await sse.until("auth", "a")
    assert signed["payload"]["user"]["name"] == "bob"
    await sse.post(chat("lobby", "as bob", "c"))
    assert (await sse.until("chat"))["payload"]["from"] == "bob"


async def test_refusals_before_a_stream_opens(server_factory: ServerFactory, http: Http) -> None:
    """A refused token is 401, a foreign origin 403 (open and POST), an unknown stream 404."""
    server = server_factory("--allowed-origin", "https://chat.example.org")
    sse = EventStream(http, server)
    assert await sse.open({"Authorization": "Bearer not-a-token"}) == 401
    assert sse.response is not None
    assert (await sse.response.json())["error"]["code"] == "auth_failed"
    assert await sse.open({"Origin": "https://evil.example"}) == 403
    assert (await sse.response.json())["error"]["code"] == "forbidden"
    assert await sse.open({"Origin": "https://chat.example.org"}) == 200
    status, body = await sse.post(
        chat("lobby", "x", "x"), headers={"Origin": "https://evil.example"}
    )
    assert (status, body["error"]["code"]) == (403, "forbidden")
    status, body = await sse.post(chat("lobby", "x", "x"), stream="no-such-stream")
    assert (status, body["error"]["code"]) == (404, "not_found")
    assert await sse.post() == (204, None)  # an empty POST is fine (a heartbeat answer)


async def test_a_line_over_the_limit_is_413_and_closes_1009(
    server: ServerProcess, http: Http
) -> None:
    """A line past the text frame limit: 413, the stream closes 1009, later POSTs are 404."""
    sse, _ = await opened(http, server)
    line = json.dumps(chat("lobby", "x" * 70_000, "big")).encode()
    status, body = await sse.post(body=b'{"type":"ping","id":"p"}\n' + line)
    assert (status, body["error"]["code"]) == (413, "too_large")
    assert await sse.closed_with() == (1009, "text frame too big")  # the ping was not carried out
    status, _ = await sse.post({"type": "ping"})
    assert status == 404


async def test_non_utf8_is_400_and_closes_1007_too_many_lines_only_400(
    server: ServerProcess, http: Http
) -> None:
    """65 lines are refused (400) and the stream lives; a body not UTF-8 is 400 and closes 1007."""
    sse, _ = await opened(http, server)
    status, body = await sse.post(*[{"type": "ping"}] * 65)
    assert (status, body["error"]["code"]) == (400, "bad_request")
    assert await sse.post({"type": "ping", "id": "alive"}) == (204, None)
    assert (await sse.frame())["id"] == "alive"
    status, body = await sse.post(body=b'{"type":"ping","id":"\xff"}', content_type="text/plain")
    assert (status, body["error"]["code"]) == (400, "bad_request")
    assert await sse.closed_with() == (1007, "text frames must be UTF-8")


async def test_files_need_a_user_signed_in_at_the_open(
    server: ServerProcess, http: Http, tokens: dict[str, str]
) -> None:
    """A signed-in stream POSTs a file; a guest's file past the text limit is 413 + 1009."""
    sse, _ = await opened(http, server, tokens["alice"])
    header = json.dumps({"room": "lobby", "name": "a.bin", "mime": "x/y", "id": "f"}).encode()
    data = bytes(range(256)) * 400  # 100 KiB: past the text frame limit
    frame = len(header).to_bytes(4, "big") + header + data
    assert await sse.post(body=frame, content_type="application/octet-stream") == (204, None)
    message = await sse.until("file")
    ack = await sse.until("ack", "f")
    assert message["payload"]["size"] == len(data)
    assert message["payload"]["message_id"] == ack["payload"]["message_id"]
    guest, _ = await opened(http, server)
    status, body = await guest.post(body=frame, content_type="application/octet-stream")
    assert (status, body["error"]["code"]) == (413, "too_large")
    assert (await guest.closed_with())[0] == 1009


async def test_a_stream_that_never_posts_is_dropped_and_a_posting_one_is_not(
    server_factory: ServerFactory, http: Http
) -> None:
    """Pings arrive as comments; a stream with no POSTs is cut off (1006), a posting one stays."""
    server = server_factory("--heartbeat", "0.5")
    silent, me = await opened(http, server)
    assert me["heartbeat"] == 0.5
    talker, _ = await opened(http, server)

    async def end_of_silent() -> tuple[str, Any]:
        # Read as it comes: what is unread when the connection is cut off is lost.
        while (event := await silent.event())[0] == "message":
            pass
        return event

    silent_end = asyncio.ensure_future(end_of_silent())
    for _ in range(10):  # a POST every 0.15 s: three in each heartbeat
        await asyncio.sleep(0.15)
        assert await talker.post({"type": "ping"}) == (204, None)
    assert await silent_end == ("lost", None)  # no close event: 1006
    assert silent.comments == ["ping"]
    assert await talker.post({"type": "ping", "id": "still"}) == (204, None)
    assert (await talker.until("pong", "still"))["type"] == "pong"
    assert "missed a heartbeat" in server.stderr()


async def test_a_server_stop_closes_streams_with_1001(
    server_factory: ServerFactory, http: Http
) -> None:
    """SIGTERM: the stream gets the close event 1001 "server shutting down"."""
    server = server_factory()
    sse, _ = await opened(http, server)
    stopping = asyncio.ensure_future(asyncio.to_thread(server.stop))
    assert await sse.closed_with() == (1001, "server shutting down")
    assert await stopping == 0


async def test_the_per_address_cap_counts_streams_and_websockets(
    server_factory: ServerFactory, http: Http
) -> None:
    """Past --max-connections-per-ip a stream or a WebSocket closes 1008, until one ends."""
    server = server_factory("--max-connections-per-ip", "1")
    first, _ = await opened(http, server)
    second = EventStream(http, server)
    assert await second.open() == 200
    assert await second.closed_with() == (1008, "too many connections from your address")
    ws = await connect(server.ws_url(), open_timeout=5)
    await ws.wait_closed()
    assert ws.close_code == 1008
    assert first.response is not None
    first.response.close()
    async with asyncio.timeout(WAIT):
        while True:  # until the server has seen the first one go
            third = EventStream(http, server)
            assert await third.open() == 200
            kind, data = await third.event()
            if kind == "message":
                assert data["type"] == "system"
                break
            assert (kind, data["code"]) == ("close", 1008)
            await asyncio.sleep(0.05)


@pytest.fixture
async def two_nodes(tmp_path: Path) -> AsyncIterator[list[ServerProcess]]:
    """Two nodes sharing a fresh PostgreSQL database and a Redis prefix."""
    with redis_prefix() as prefix, fresh_database() as url:
        nodes = await asyncio.gather(
            *(asyncio.to_thread(start_node, tmp_path, url, REDIS_URL, prefix) for _ in range(2))
        )
        try:
            yield nodes
        finally:
            await asyncio.gather(*(asyncio.to_thread(node.stop) for node in nodes))


async def test_a_stream_on_one_node_and_a_websocket_on_another_agree_on_order(
    two_nodes: list[ServerProcess], http: Http
) -> None:
    """An SSE client on node A and a WebSocket on B see one order; B answers A's stream 404."""
    a, b = two_nodes
    alice, bob = await asyncio.gather(sign_up(a, "alice"), sign_up(b, "bob"))
    sse, _ = await opened(http, a, alice)
    ws = await user_ws(b, bob)
    await sse.post({"type": "join", "id": "j", "payload": {"room": "mix"}})
    await sse.until("joined", "j")
    await send_json(ws, "join", {"room": "mix"}, id="j")
    await recv_type(ws, "joined")
    for n in range(5):  # both sides at once
        await sse.post(chat("mix", f"a{n}", f"a{n}"))
        await send_json(ws, "chat", {"room": "mix", "message": f"b{n}"}, id=f"b{n}")

    async def stream_order() -> list[tuple[int, str]]:
        got: list[tuple[int, str]] = []
        while len(got) < 10:
            frame = await sse.until("chat")
            got.append((frame["payload"]["seq"], frame["payload"]["message"]))
        return got

    async def socket_order() -> list[tuple[int, str]]:
        got: list[tuple[int, str]] = []
        while len(got) < 10:
            frame = await recv_json(ws, 10)
            if frame["type"] == "chat" and frame["payload"]["room"] == "mix":
                got.append((frame["payload"]["seq"], frame["payload"]["message"]))
        return got

    seen_a, seen_b = await asyncio.gather(stream_order(), socket_order())
    assert seen_a == seen_b
    assert [seq for seq, _ in seen_a] == sorted(seq for seq, _ in seen_a)
    assert {text for _, text in seen_a} == {f"{s}{n}" for s in "ab" for n in range(5)}
    status, body = await sse.post({"type": "ping"}, stream=sse.stream, headers={})
    assert status == 204
    other = EventStream(http, b)
    status, body = await other.post({"type": "ping"}, stream=sse.stream)
    assert (status, body["error"]["code"]) == (404, "not_found")
    await ws.close()


async def raw_post_head(
    server: ServerProcess, stream: str, head: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A POST to ``stream`` whose head (``head``: extra header lines) is sent, not its body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        f"POST /events/{stream} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\n{head}\r\n".encode()
    )
    await writer.drain()
    return reader, writer


async def test_a_post_whose_stream_ends_before_its_frames_ran_is_404(
    server: ServerProcess, http: Http
) -> None:
    """A POST still arriving when its stream ends answers 404, never a 204 for frames not run."""
    sse, _ = await opened(http, server)
    body = json.dumps({"type": "ping", "id": "late"}).encode() + b"\n"
    reader, writer = await raw_post_head(server, sse.stream, f"Content-Length: {len(body)}\r\n")
    writer.write(body[:5])
    await writer.drain()
    await asyncio.sleep(0.2)  # the handler holds the stream's lock, reading the body
    assert sse.response is not None
    sse.response.close()  # the client's stream connection goes away
    await asyncio.sleep(0.3)
    writer.write(body[5:])
    await writer.drain()
    try:
        status_line = await asyncio.wait_for(reader.readline(), WAIT)
    finally:
        writer.close()
        await writer.wait_closed()
    assert status_line.split()[1] == b"404", status_line


async def test_a_broken_chunked_body_is_400_at_once_and_over_a_mebibyte_413(
    server: ServerProcess, http: Http
) -> None:
    """A malformed chunk is 400 without waiting for the body timeout; a 1 MiB+ body is 413."""
    sse, _ = await opened(http, server)
    reader, writer = await raw_post_head(server, sse.stream, "Transfer-Encoding: chunked\r\n")
    writer.write(b"3\r\nabc\r\nzz\r\n")
    await writer.drain()
    try:
        status_line = await asyncio.wait_for(reader.readline(), 8.0)  # the body timeout is 10 s
    finally:
        writer.close()
        await writer.wait_closed()
    assert status_line.split()[1] == b"400", status_line
    assert await sse.post({"type": "ping", "id": "still"}) == (204, None)
    assert (await sse.until("pong", "still"))["id"] == "still"
    line = json.dumps(chat("lobby", "x" * 60_000, "f")).encode()
    url = server.http_url(f"/events/{sse.stream}")
    lines = io.BytesIO(b"\n".join([line] * 18))
    ndjson = {"Content-Type": "application/json"}
    async with http.session.post(url, data=lines, headers=ndjson) as resp:
        assert resp.status == 413  # 18 lines of 60 KB: no line too long, the whole too big
        assert (await resp.json())["error"]["code"] == "too_large"
    assert await sse.closed_with() == (1009, "request body too big")


async def test_an_empty_binary_post_carries_out_nothing(server: ServerProcess, http: Http) -> None:
    """An empty octet-stream POST is a heartbeat answer, not a broken file frame."""
    sse, _ = await opened(http, server)
    assert await sse.post(body=b"", content_type="application/octet-stream") == (204, None)
    assert await sse.post({"type": "ping", "id": "next"}) == (204, None)
    assert (await sse.frame())["id"] == "next"  # no error frame came before it
