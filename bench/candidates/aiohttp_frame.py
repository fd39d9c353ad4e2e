"""Candidate (b): aiohttp, broadcast as one pre-built frame written to every transport.

Each chat message is serialized once and framed once (server frames are
unmasked, so the bytes are identical for every member); the broadcast calls
``transport.write(frame)`` for each member and never awaits. A member whose
kernel+transport buffer passes SLOW_LIMIT bytes is disconnected (slow consumer).
Runs on uvloop.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import cast

import uvloop
from aiohttp import WSMsgType, web
from common import Room, handle, parse_args, serve_aiohttp, welcome

from roomcast.protocol.wsframe import text_frame

SLOW_LIMIT = 16 * 1024 * 1024
ROOM = Room()
CLIENTS: dict[asyncio.Transport, web.WebSocketResponse] = {}
_ids = itertools.count(1)


def broadcast(frame: bytes) -> None:
    for transport in list(CLIENTS):
        if transport.is_closing():
            continue
        transport.write(frame)
        if transport.get_write_buffer_size() > SLOW_LIMIT:
            transport.abort()


async def ws_handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(compress=False)
    await ws.prepare(request)
    transport = cast(asyncio.Transport, request.transport)  # uvloop's is not a subclass
    assert transport is not None
    name = f"guest-{next(_ids)}"
    transport.write(text_frame(welcome()))
    CLIENTS[transport] = ws
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            out = handle(ROOM, msg.data, name)
            if out is None:
                continue
            kind, payload = out
            if kind == "reply":
                transport.write(text_frame(payload))
            else:
                broadcast(text_frame(payload))
    finally:
        CLIENTS.pop(transport, None)
    return ws


async def main() -> None:
    await serve_aiohttp("aiohttp-frame", ws_handler, parse_args(__doc__ or "").port)


if __name__ == "__main__":
    uvloop.run(main())
