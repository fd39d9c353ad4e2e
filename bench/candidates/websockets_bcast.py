"""Candidate (c): the websockets library (asyncio API) with ``websockets.broadcast()``.

Serializes each chat frame once and hands it to ``broadcast()``, which writes
to every connection without awaiting. Compression off. Runs on uvloop.
"""

from __future__ import annotations

import itertools

import uvloop
from common import Room, announce, handle, parse_args, wait_for_stop, welcome
from websockets.asyncio.server import ServerConnection, broadcast, serve

ROOM = Room()
CLIENTS: set[ServerConnection] = set()
_ids = itertools.count(1)


async def ws_handler(ws: ServerConnection) -> None:
    name = f"guest-{next(_ids)}"
    await ws.send(welcome().decode())
    CLIENTS.add(ws)
    try:
        async for raw in ws:
            out = handle(ROOM, raw, name)
            if out is None:
                continue
            kind, frame = out
            if kind == "reply":
                await ws.send(frame.decode())
            else:
                broadcast(CLIENTS, frame.decode())
    finally:
        CLIENTS.discard(ws)


async def main() -> None:
    args = parse_args(__doc__ or "")
    async with serve(
        ws_handler, "127.0.0.1", args.port, compression=None, ping_interval=None
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        announce("websockets", port)
        await wait_for_stop()


if __name__ == "__main__":
    uvloop.run(main())
