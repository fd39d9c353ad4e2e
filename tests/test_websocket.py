"""How a WebSocket peer writes: one write per loop turn, nothing after closing.

The transport here is a recording stand-in (this is a unit test of the
write path); the integration tests drive the same code over real sockets.
"""

from __future__ import annotations

import asyncio

from roomcast.protocol.messages import UserInfo
from roomcast.protocol.session import Session
from roomcast.websocket import Flusher, WebSocketPeer


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def abort(self) -> None:
        self.aborted = True


def make_peer(transport: RecordingTransport, flusher: Flusher) -> WebSocketPeer:
    peer = WebSocketPeer(
        None,  # type: ignore[arg-type]  # no frames come in here
        Session("s", UserInfo("a", True)),
        owner=None,  # type: ignore[arg-type]
        flusher=flusher,
        max_queue=1024,
        max_message=1024,
        close_timeout=1.0,
    )
    peer.transport = transport  # type: ignore[assignment]
    return peer


async def test_frames_of_one_turn_are_written_together() -> None:
    """Frames sent in one loop turn reach the transport as one write, in order."""
    flusher = Flusher(asyncio.get_running_loop())
    transports = [RecordingTransport(), RecordingTransport()]
    peers = [make_peer(t, flusher) for t in transports]
    for frame in (b"one", b"two", b"three"):
        for peer in peers:
            peer.send(frame)
    assert transports[0].writes == []  # nothing before the turn ends
    await asyncio.sleep(0)
    assert [t.writes for t in transports] == [[b"onetwothree"]] * 2
    peers[0].send(b"four")
    await asyncio.sleep(0)
    assert transports[0].writes == [b"onetwothree", b"four"]


async def test_nothing_is_written_to_a_closing_transport() -> None:
    """Once the transport is closing the queued frames are dropped, not written."""
    flusher = Flusher(asyncio.get_running_loop())
    transport = RecordingTransport()
    peer = make_peer(transport, flusher)
    peer.send(b"x")
    transport.closing = True
    await asyncio.sleep(0)
    assert transport.writes == []
    assert peer.closed
    peer.send(b"y")
    await asyncio.sleep(0)
    assert transport.writes == []


async def test_terminate_drops_the_queue_and_aborts() -> None:
    """A terminated peer aborts its transport and writes nothing queued."""
    flusher = Flusher(asyncio.get_running_loop())
    transport = RecordingTransport()
    peer = make_peer(transport, flusher)
    peer.send(b"x")
    peer.terminate()
    await asyncio.sleep(0)
    assert transport.aborted
    assert transport.writes == []
