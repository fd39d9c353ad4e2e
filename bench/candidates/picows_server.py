"""Candidate (d): picows server, broadcast with ``WSTransport.send`` per member.

picows parses frames in Cython and calls ``on_ws_frame`` synchronously; the
broadcast serializes once and calls ``send(TEXT, frame)`` for each member
(never awaits). Runs on uvloop.
"""

from __future__ import annotations

import itertools

import uvloop
from common import Room, announce, handle, parse_args, wait_for_stop, welcome
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

ROOM = Room()
CLIENTS: set[WSTransport] = set()
_ids = itertools.count(1)


class Member(WSListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.name = f"guest-{next(_ids)}"

    def on_ws_connected(self, transport: WSTransport) -> None:
        transport.send(WSMsgType.TEXT, welcome())
        CLIENTS.add(transport)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        CLIENTS.discard(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        if frame.msg_type != WSMsgType.TEXT:
            return
        out = handle(ROOM, frame.get_payload_as_bytes(), self.name)
        if out is None:
            return
        kind, payload = out
        if kind == "reply":
            transport.send(WSMsgType.TEXT, payload)
            return
        for member in list(CLIENTS):
            member.send(WSMsgType.TEXT, payload)


def factory(request: WSUpgradeRequest) -> Member | None:
    return Member() if request.path in (b"/", b"/ws", "/", "/ws") else None


async def main() -> None:
    args = parse_args(__doc__ or "")
    server = await ws_create_server(factory, "127.0.0.1", args.port)
    announce("picows", server.sockets[0].getsockname()[1])
    await wait_for_stop()
    server.close()


if __name__ == "__main__":
    uvloop.run(main())
