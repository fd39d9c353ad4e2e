"""One real node storing in PostgreSQL (no Redis): durable, and it survives the database going away.

Each test has a database of its own, dropped afterwards. The outage test
puts a real TCP proxy between the server and PostgreSQL and cuts it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from websockets.asyncio.client import ClientConnection, connect

from roomcast.client import Client
from tests.integration.serverproc import ServerFactory
from tests.integration.users import SECRET, call, sign_up
from tests.integration.wsclient import recv_json, send_json, welcome
from tests.netproxy import TcpProxy
from tests.services import fresh_database


@pytest.fixture
def database() -> Iterator[str]:
    """The URL of a fresh database, dropped after the test."""
    with fresh_database() as url:
        yield url


async def answer(ws: ClientConnection, fid: str) -> dict[str, Any]:
    """The frame answering client frame ``fid`` (others skipped)."""
    async with asyncio.timeout(15.0):
        while True:
            frame = await recv_json(ws, 15.0)
            if frame.get("id") == fid:
                return frame


async def test_messages_survive_a_restart_on_postgres(
    server_factory: ServerFactory, database: str
) -> None:
    """A node on PostgreSQL alone keeps acked messages and their seqs across a restart."""
    args = ("--database-url", database, "--secret", SECRET)
    server = server_factory(*args)
    async with connect(server.ws_url(), open_timeout=5) as ws:
        await welcome(ws)
        for n in range(3):
            await send_json(ws, "chat", {"message": f"m{n}"}, id=f"c{n}")
            assert (await answer(ws, f"c{n}"))["payload"]["seq"] == n + 1
    await asyncio.to_thread(server.stop)
    again = server_factory(*args)
    token = await sign_up(again, "reader")
    status, body = await call(again, "GET", "/api/rooms/lobby/messages", bearer=token)
    assert status == 200, body
    assert [m["message"] for m in body["messages"]] == ["m0", "m1", "m2"]
    async with connect(again.ws_url(), open_timeout=5) as ws:
        await welcome(ws)
        await send_json(ws, "chat", {"message": "m3"}, id="c3")
        assert (await answer(ws, "c3"))["payload"]["seq"] == 4


async def test_postgres_unreachable_then_back(server_factory: ServerFactory, database: str) -> None:
    """PostgreSQL cut off: a send gets error internal, no ack, /ready 503; then it recovers."""
    parts = urlsplit(database)
    proxy = TcpProxy(parts.port or 5432)
    await proxy.start()
    via_proxy = parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}").geturl()
    try:
        # Started off the loop: the proxy runs on it.
        server = await asyncio.to_thread(server_factory, "--database-url", via_proxy)
        async with connect(server.ws_url(), open_timeout=5) as ws:
            await welcome(ws)
            await send_json(ws, "chat", {"message": "before"}, id="a")
            assert (await answer(ws, "a"))["payload"]["seq"] == 1
            proxy.down()
            await send_json(ws, "chat", {"message": "during"}, id="b")
            refused = await answer(ws, "b")
            assert refused["type"] == "error" and refused["payload"]["code"] == "internal"
            status, body = await call(server, "GET", "/ready")
            assert status == 503 and body["ready"] is False and body["store"] != "ok", body
            # The server stays up for everything that needs no database.
            await send_json(ws, "ping", id="p")
            assert (await answer(ws, "p"))["type"] == "pong"
            proxy.up()
            # Sends work again once the database answers; the refused one was never stored.
            for attempt in range(100):
                await send_json(ws, "chat", {"message": "after"}, id=f"c{attempt}")
                reply = await answer(ws, f"c{attempt}")
                if reply["type"] == "ack":
                    break
                await asyncio.sleep(0.1)
            assert reply["type"] == "ack" and reply["payload"]["seq"] == 2, reply
            status, _ = await call(server, "GET", "/ready")
            assert status == 200
    finally:
        await proxy.stop()


async def test_client_library_sends_again_until_the_database_is_back(
    server_factory: ServerFactory, database: str
) -> None:
    """A send made while PostgreSQL is away is retried by the client and acked once it is back."""
    parts = urlsplit(database)
    proxy = TcpProxy(parts.port or 5432)
    await proxy.start()
    via_proxy = parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}").geturl()
    try:
        server = await asyncio.to_thread(server_factory, "--database-url", via_proxy)
        async with Client(server.ws_url(), guest="ann") as ann:
            assert (await ann.send_chat("one")).payload["seq"] == 1
            proxy.down()
            pending = asyncio.ensure_future(ann.send_chat("two"))
            await asyncio.sleep(1.0)
            assert not pending.done()
            proxy.up()
            ack = await asyncio.wait_for(pending, 20)
            assert ack.type == "ack" and ack.payload["seq"] == 2
            messages, _ = await ann.history("lobby")
            assert [m.text for m in messages] == ["one", "two"]
    finally:
        await proxy.stop()
