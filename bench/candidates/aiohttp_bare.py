"""Candidate (a): bare aiohttp, broadcast by awaiting ``ws.send_str`` per member.

Serializes each chat frame once, then ``await ws.send_bytes``-style per client
through aiohttp's own writer (text frames). Runs on uvloop.
"""

from __future__ import annotations

import itertools

import uvloop
from aiohttp import WSMsgType, web
from common import Room, handle, parse_args, serve_aiohttp, welcome

ROOM = Room()
CLIENTS: set[web.WebSocketResponse] = set()
_ids = itertools.count(1)


async def ws_handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(compress=False)
    await ws.prepare(request)
    name = f"guest-{next(_ids)}"
    await ws.send_str(welcome().decode())
    CLIENTS.add(ws)
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            out = handle(ROOM, msg.data, name)
            if out is None:
                continue
            kind, frame = out
            text = frame.decode()
            if kind == "reply":
                await ws.send_str(text)
                continue
            for client in list(CLIENTS):
                if not client.closed:
                    await client.send_str(text)
    finally:
        CLIENTS.discard(ws)
    return ws


async def main() -> None:
    await serve_aiohttp("aiohttp-bare", ws_handler, parse_args(__doc__ or "").port)


if __name__ == "__main__":
    uvloop.run(main())
