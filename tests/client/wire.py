"""A pretend connection for the client's unit tests: no sockets, the client's own parser.

A :class:`FakeConnection` stands in for the WebSocket: what the client
writes is recorded and answered by a function of the test, and what the
"server" sends goes through the client's own parser and handler.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import orjson
from websockets.asyncio.client import ClientConnection

from roomcast.client import Client, ConnectionState, parse_server_frame

Answer = Callable[[dict[str, Any]], list[dict[str, Any]]]


def frame(kind: str, payload: dict[str, Any], **extra: Any) -> bytes:
    return orjson.dumps({"type": kind, "payload": payload, **extra})


def ack(sent: dict[str, Any], **payload: Any) -> list[dict[str, Any]]:
    return [{"type": "ack", "id": sent["id"], "payload": payload}]


class FakeConnection:
    """One pretend connection: records the frames written, answers with ``answer``."""

    def __init__(self, client: Client, answer: Answer | None = None) -> None:
        self.client = client
        self.answer = answer
        self.sent: list[dict[str, Any]] = []

    async def send(self, data: str | bytes) -> None:
        sent = orjson.loads(data)
        self.sent.append(sent)
        if self.answer is not None:
            for reply in self.answer(sent):
                self.push(reply)

    def push(self, server_frame: dict[str, Any]) -> None:
        """The server sends ``server_frame``: the client reads it."""
        self.client._handle(parse_server_frame(orjson.dumps(server_frame)))

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [sent for sent in self.sent if sent["type"] == kind]

    async def close(self) -> None:
        pass


def collect(client: Client) -> list[Any]:
    seen: list[Any] = []
    client.on(None, seen.append)
    return seen


def connected(client: Client, answer: Answer | None = None) -> FakeConnection:
    """The client on a new pretend connection that is up (no resume)."""
    conn = FakeConnection(client, answer)
    client._ws = cast(ClientConnection, conn)
    client._connection += 1
    client._set_state(ConnectionState.CONNECTED)
    return conn


async def resume(client: Client, conn: FakeConnection, reader: asyncio.Future[None]) -> None:
    """The client's resume on ``conn``: joins from where it was, then what waits in the outbox."""
    client._ws = cast(ClientConnection, conn)
    client._connection += 1
    await client._resume(cast(ClientConnection, conn), cast("asyncio.Task[None]", reader))
