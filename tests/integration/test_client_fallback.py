"""The Python client over the HTTP fallback (SSE down, POST up), against real servers.

The network that refuses WebSocket is a real TCP proxy (``tests/wsblock.py``)
that answers every upgrade 403 and pipes everything else; it also cuts the
piped connections, as a network fault does. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pexpect
import pytest

from roomcast.client import (
    AuthRefused,
    Client,
    ConnectionState,
    DirectMessage,
    RoomMessage,
    SessionTokens,
    StateChange,
)
from tests.integration.clients import collect, fast_backoff, wait_for
from tests.integration.serverproc import start_server
from tests.integration.users import PASSWORD, SECRET, call, mint, register, sign_up
from tests.wsblock import WsBlockProxy

#: The server's heartbeat in these tests (seconds): short, so that a client
#: that did not POST often enough would be dropped within the tests.
HEARTBEAT = "1"


class Node:
    """A server on a fixed port, with a WebSocket-blocking proxy in front."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.server = start_server(tmp_path, "--secret", SECRET, "--heartbeat", HEARTBEAT)
        self.port = self.server.port
        self.proxy = WsBlockProxy(self.port)
        #: The test's clients, closed after it (before the proxy stops).
        self.clients: list[Client] = []

    def client(self, url: str, **options: Any) -> Client:
        """A client the fixture closes after the test."""
        client = Client(url, **options)
        self.clients.append(client)
        return client

    def restart(self) -> None:
        """Stop the server (SIGTERM: it closes the streams with 1001) and start it on its data."""
        self.server.stop(signal.SIGTERM)
        self.server = start_server(
            self.tmp_path,
            "--secret",
            SECRET,
            "--heartbeat",
            HEARTBEAT,
            "--port",
            str(self.port),
        )

    def blocked_url(self) -> str:
        """The server's WebSocket URL through the proxy."""
        return f"ws://127.0.0.1:{self.proxy.port}/ws"


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    """A server and a started proxy; both stopped after the test."""
    node = Node(tmp_path)
    await node.proxy.start()
    yield node
    for client in node.clients:
        await client.close()
    await node.proxy.stop()
    node.server.stop(signal.SIGKILL)


def texts(events: list[Any], room: str = "lobby") -> list[str]:
    return [e.text for e in events if isinstance(e, RoomMessage) and e.room == room]


def direct_texts(events: list[Any]) -> list[str]:
    return [e.text for e in events if isinstance(e, DirectMessage)]


def reader_threads() -> set[threading.Thread]:
    """The client's stream reader threads alive now."""
    return {t for t in threading.enumerate() if t.name == "roomcast-events" and t.is_alive()}


async def test_behind_the_proxy_the_client_falls_back_and_chats_with_websocket(
    node: Node,
) -> None:
    """Upgrade refused: the client goes over HTTP and chats, DMs and shares a file with a WS one."""
    tokens = {name: await sign_up(node.server, name) for name in ("amy", "ben")}
    amy = node.client(node.blocked_url(), token=tokens["amy"], backoff=fast_backoff(1))
    ben = node.client(node.server.ws_url(), token=tokens["ben"], transport="websocket")
    amy_seen, ben_seen = collect(amy), collect(ben)
    before = reader_threads()
    async with amy, ben:
        assert amy.transport == "http" and ben.transport == "websocket"
        assert node.proxy.refused == 1 and amy.state is ConnectionState.CONNECTED
        connected = [e for e in amy_seen if isinstance(e, StateChange)][-1]
        assert (connected.new, connected.reason) == (ConnectionState.CONNECTED, "over HTTP")
        ack = await amy.send_chat("over http")
        assert ack.type == "ack"
        await ben.send_chat("over websocket")
        for seen in (amy_seen, ben_seen):
            await wait_for(lambda seen=seen: texts(seen) == ["over http", "over websocket"])
        await ben.send_direct("amy", "psst")
        await amy.send_direct("ben", "hi ben")
        await wait_for(lambda: direct_texts(amy_seen) == ["psst", "hi ben"])
        data = bytes(range(256)) * 300  # 75 KiB: a binary POST
        await amy.send_file(data, room="lobby", name="blob.bin")
        await wait_for(lambda: any(isinstance(e, RoomMessage) and e.file for e in ben_seen))
        [shared] = [e for e in ben_seen if isinstance(e, RoomMessage) and e.file]
        assert shared.file is not None and await ben.download(shared.file) == data
        assert set(await amy.presence()) >= {"amy", "ben"}
        # Idle for over two heartbeats, which drop a stream that does not POST:
        # the client's pings keep it (no reconnect).
        await asyncio.sleep(2.5)
        assert len(amy.attempts) == 1 and amy.state is ConnectionState.CONNECTED
    assert reader_threads() <= before


async def test_sends_during_cuts_are_acked_once_and_delivered_once(node: Node) -> None:
    """60 sends while the proxy cuts the streams 8 times: each acked once, stored and seen once."""
    tokens = {name: await sign_up(node.server, name) for name in ("cal", "dee")}
    cal = node.client(
        node.blocked_url(), token=tokens["cal"], backoff=fast_backoff(2), open_timeout=3
    )
    dee = node.client(node.server.ws_url(), token=tokens["dee"], backoff=fast_backoff(3))
    cal_seen, dee_seen = collect(cal), collect(dee)
    await cal.connect()
    await dee.connect()
    sent = [f"m{i}" for i in range(60)]

    async def talk() -> list[int]:
        seqs = []
        for text in sent:
            ack = await cal.send_chat(text, timeout=60)
            seqs.append(ack.payload["seq"])
            await asyncio.sleep(0.02)
        return seqs

    talker = asyncio.ensure_future(talk())
    for i in range(8):
        await asyncio.sleep(0.15)
        node.proxy.cut("reset" if i % 2 else "close")
    seqs = await asyncio.wait_for(talker, 60)
    assert len(cal.attempts) >= 3, "the cuts did not reach the stream"
    assert len(set(seqs)) == 60
    for seen in (cal_seen, dee_seen):
        await wait_for(lambda seen=seen: len(texts(seen)) >= 60)
        messages = [e for e in seen if isinstance(e, RoomMessage)]
        assert [m.text for m in messages] == sent  # once each, in order
        assert [m.seq for m in messages] == sorted(seqs)
    status, body = await call(
        node.server, "GET", "/api/rooms/lobby/messages?limit=100", bearer=tokens["dee"]
    )
    assert status == 200 and [m["message"] for m in body["messages"]] == sent
    assert cal.transport == "http" and node.proxy.refused == 1  # later reconnects skip WS
    await cal.close()
    await dee.close()


async def test_a_reconnect_resumes_rooms_and_direct_messages(node: Node) -> None:
    """Away behind a dead proxy, then back: the room's and the DMs' missed messages, once each."""
    tokens = {name: await sign_up(node.server, name) for name in ("eve", "fay")}
    eve = node.client(
        node.blocked_url(), token=tokens["eve"], rooms=("dev",), backoff=fast_backoff(4)
    )
    fay = node.client(node.server.ws_url(), token=tokens["fay"], rooms=("dev",))
    seen = collect(eve)
    await eve.connect()
    await fay.connect()
    await fay.send_chat("before", room="dev")
    await fay.send_direct("eve", "dm before")
    await wait_for(lambda: texts(seen, "dev") == ["before"])
    node.proxy.down()
    await wait_for(lambda: eve.state is ConnectionState.RECONNECTING)
    for i in range(5):
        await fay.send_chat(f"away {i}", room="dev")
        await fay.send_direct("eve", f"dm away {i}")
    node.proxy.up()
    await wait_for(lambda: len(texts(seen, "dev")) >= 6)
    await fay.send_direct("eve", "dm after")
    dms = ["dm before", *[f"dm away {i}" for i in range(5)], "dm after"]
    await wait_for(lambda: direct_texts(seen) == dms)
    assert texts(seen, "dev") == ["before", *[f"away {i}" for i in range(5)]]
    assert len(eve.attempts) >= 2 and node.proxy.refused == 1
    direct = [e.seq for e in seen if isinstance(e, DirectMessage)]
    assert direct == sorted(set(direct))
    assert eve.transport == "http"
    await eve.close()
    await fay.close()


async def test_a_server_restart_loses_nothing(node: Node) -> None:
    """SIGTERM (close event 1001) and a start on the same data: sends queue, missed ones replay."""
    tokens = {name: await sign_up(node.server, name) for name in ("gus", "hex")}
    gus = node.client(node.blocked_url(), token=tokens["gus"], backoff=fast_backoff(5))
    seen = collect(gus)
    await gus.connect()
    await gus.send_chat("one")
    await asyncio.to_thread(node.server.stop, signal.SIGTERM)
    await wait_for(lambda: gus.state is ConnectionState.RECONNECTING)
    pending = asyncio.ensure_future(gus.send_chat("two", timeout=60))
    await asyncio.to_thread(node.restart)
    hex_ = node.client(node.server.ws_url(), token=tokens["hex"], transport="websocket")
    await hex_.connect()
    await hex_.send_chat("three")
    assert (await pending).type == "ack"
    await wait_for(lambda: len(texts(seen)) >= 3)
    assert sorted(texts(seen)) == ["one", "three", "two"] and len(texts(seen)) == 3
    reasons = [e.reason or "" for e in seen if isinstance(e, StateChange)]
    assert any(r.startswith("closed with 1001") for r in reasons), reasons  # the close event
    assert gus.transport == "http"
    await gus.close()
    await hex_.close()


async def test_http_only_works_without_a_proxy(node: Node) -> None:
    """transport="http" straight to the server: /events from the start; close ends its thread."""
    before = reader_threads()
    async with node.client(node.server.ws_url(), guest="ivy", transport="http") as ivy:
        seen = collect(ivy)
        assert ivy.transport == "http" and ivy.user == "ivy"
        assert (await ivy.send_chat("plain http")).type == "ack"
        await wait_for(lambda: texts(seen) == ["plain http"])
        assert len(reader_threads() - before) == 1
    await wait_for(lambda: reader_threads() <= before)
    assert node.proxy.piped == 0


async def test_websocket_only_through_the_blocking_proxy_fails(node: Node) -> None:
    """transport="websocket": the proxy's 403 refuses it for good; /events is never tried."""
    client = node.client(node.blocked_url(), guest="jay", transport="websocket")
    with pytest.raises(AuthRefused):
        await client.connect()
    assert client.state is ConnectionState.CLOSED and client.transport is None
    assert node.proxy.refused == 1 and node.proxy.piped == 0


async def test_a_close_event_with_1008_stops_the_client_as_on_websocket(node: Node) -> None:
    """Signed out everywhere from another device: the stream's close event stops it, SignedOut."""
    token = await sign_up(node.server, "kai")
    kai = node.client(node.blocked_url(), username="kai", password=PASSWORD)
    before = reader_threads()
    await kai.connect()
    assert kai.transport == "http"
    status, _ = await call(
        node.server, "POST", "/api/logout", json={"everywhere": True}, bearer=token
    )
    assert status in (200, 204)
    await wait_for(lambda: kai.state is ConnectionState.CLOSED)
    assert kai.closed_reason is not None and kai.closed_reason.endswith("signed out")
    assert len(kai.attempts) == 1  # not signed in again
    await kai.close()
    assert reader_threads() <= before


async def test_the_terminal_chat_goes_over_http_and_says_so(node: Node) -> None:
    """``roomcast chat`` behind the proxy: it connects over HTTP, shows it, and its line arrives."""
    listener = node.client(node.server.ws_url(), guest="obs")
    seen = collect(listener)
    await listener.connect()
    env = {**os.environ, "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1"}
    child = pexpect.spawn(
        sys.executable,
        ["-m", "roomcast", "chat", "--url", node.blocked_url(), "--guest", "zed"],
        env=env,
        encoding="utf-8",
        timeout=15,
        dimensions=(40, 120),
    )
    try:
        # The proxy runs on this loop: the terminal is waited for in a thread.
        await asyncio.to_thread(child.expect_exact, "* connected (over HTTP)")
        await asyncio.to_thread(child.expect_exact, "* you are zed, talking in lobby")
        child.sendline("hello from behind a proxy")
        await wait_for(lambda: texts(seen) == ["hello from behind a proxy"])
        child.sendline("/quit")
        await asyncio.to_thread(child.expect, pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0 and node.proxy.refused == 1


async def test_tokens_are_renewed_over_http_as_over_websocket(node: Node) -> None:
    """A token /events refuses (401) is renewed; so is one that expires while the stream is open."""
    await register(node.server, "lea")
    status, body = await call(
        node.server, "POST", "/api/login", json={"username": "lea", "password": PASSWORD}
    )
    assert status == 200, body
    sid = jwt.decode(body["token"], options={"verify_signature": False})["sid"]
    # Good for an hour as far as the client can tell, but not signed by the server.
    forged = mint("lea", key="another secret" * 4, sid=sid, exp=int(time.time()) + 3600)
    lea = node.client(
        node.blocked_url(),
        token=forged,
        refresh_token=body["refresh_token"],
        backoff=fast_backoff(8),
    )
    seen = collect(lea)
    await lea.connect()
    assert lea.transport == "http" and lea.user == "lea" and lea.token != forged
    assert len(lea.attempts) == 2  # refused with 401, renewed, connected
    # Now a token that expires while the stream is open: renewed with auth on it.
    status, body = await call(
        node.server, "POST", "/api/login", json={"username": "lea", "password": PASSWORD}
    )
    sid = jwt.decode(body["token"], options={"verify_signature": False})["sid"]
    short = mint("lea", sid=sid, exp=int(time.time()) + 2)
    mia = node.client(
        node.blocked_url(), token=short, refresh_token=body["refresh_token"], transport="http"
    )
    mia_seen = collect(mia)
    await mia.connect()
    await wait_for(lambda: any(isinstance(e, SessionTokens) for e in mia_seen), timeout=10)
    await asyncio.sleep(1.0)  # past the server's grace period had auth not come
    assert (await mia.send_chat("still connected")).type == "ack"
    assert len(mia.attempts) == 1 and mia.state is ConnectionState.CONNECTED
    assert any(isinstance(e, SessionTokens) for e in seen)


async def test_a_frame_over_the_limit_closes_the_stream_with_1009(node: Node) -> None:
    """A POSTed frame over 64 KiB: 413, the close event's 1009 reaches the client, it reconnects."""
    nia = node.client(node.server.ws_url(), guest="nia", transport="http", backoff=fast_backoff(9))
    seen = collect(nia)
    await nia.connect()
    with pytest.raises(TimeoutError):
        await nia.request("echo", {"text": "x" * 70_000}, timeout=1.0)
    reasons = [e.reason or "" for e in seen if isinstance(e, StateChange)]
    assert "closed with 1009 text frame too big" in reasons, reasons
    await wait_for(lambda: nia.state is ConnectionState.CONNECTED)
    assert (await nia.send_chat("fine again")).type == "ack"
