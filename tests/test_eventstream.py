"""The HTTP fallback's pure parts: POST bodies, SSE events, and a stream's send queue.

The transport and response here are recording stand-ins (a unit test of
the write path, like tests/test_websocket.py);
tests/integration/test_event_stream.py drives the same code over real sockets.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from roomcast.eventstream import (
    MAX_LINES,
    PING_COMMENT,
    BodyRefused,
    EventStreamPeer,
    close_event,
    frame_payload,
    is_binary,
    open_event,
    text_body_limit,
    text_frames,
)
from roomcast.protocol.codes import CloseCode
from roomcast.protocol.messages import UserInfo
from roomcast.protocol.session import Session
from roomcast.protocol.wsframe import PING_FRAME, close_frame, text_frame


def test_frame_payload_strips_every_header_length() -> None:
    """The payload comes back whole after a 2-, 4- and 10-byte text frame header."""
    for size in (0, 1, 125, 126, 65535, 65536, 70000):
        payload = b"x" * size
        assert bytes(frame_payload(text_frame(payload))) == payload


def test_open_and_close_events() -> None:
    """The open event names the stream and heartbeat; the close event the code and reason."""
    assert open_event("abc", 30.0) == (b'event: open\ndata: {"stream":"abc","heartbeat":30}\n\n')
    assert b'"heartbeat":0.5' in open_event("abc", 0.5)
    event = close_event(CloseCode.POLICY_VIOLATION, 'signed "out"\n')
    head, data, end = event.split(b"\n", 2)
    assert head == b"event: close" and end == b"\n"
    assert json.loads(data.removeprefix(b"data: ")) == {
        "code": 1008,
        "reason": 'signed "out"\n',
    }


def test_only_octet_stream_is_binary() -> None:
    """application/octet-stream (any case, with parameters) is a file; all else is text."""
    assert is_binary("application/octet-stream")
    assert is_binary("Application/Octet-Stream; x=1")
    assert not is_binary(None)
    assert not is_binary("application/json")
    assert not is_binary("text/plain;charset=UTF-8")


def test_text_frames_one_per_line() -> None:
    """Each non-blank line is one frame, in order; CRLF and blank lines are fine."""
    body = b'{"a":1}\r\n\n   \n{"b":"\xc3\xa9"}\n'
    assert text_frames(body, 100) == ['{"a":1}', '{"b":"é"}']
    assert text_frames(b"", 100) == []


def test_a_line_past_the_limit_is_too_big() -> None:
    """A line one byte over the text limit is 413 and closes with 1009; at the limit it passes."""
    assert text_frames(b"x" * 10 + b"\n", 10) == ["x" * 10]
    with pytest.raises(BodyRefused) as refused:
        text_frames(b"ok\n" + b"x" * 11, 10)
    assert (refused.value.status, refused.value.code) == (413, "too_large")
    assert refused.value.close is CloseCode.MESSAGE_TOO_BIG


def test_non_utf8_is_invalid_data() -> None:
    """A line that is not UTF-8 is 400 and closes with 1007."""
    with pytest.raises(BodyRefused) as refused:
        text_frames(b'{"a":1}\n"\xff"', 100)
    assert (refused.value.status, refused.value.code) == (400, "bad_request")
    assert refused.value.close is CloseCode.INVALID_DATA


def test_more_than_max_lines_is_refused_without_closing() -> None:
    """64 lines pass; 65 are 400 and leave the stream open (blank lines do not count)."""
    assert len(text_frames(b"{}\n\n" * MAX_LINES, 10)) == MAX_LINES
    with pytest.raises(BodyRefused) as refused:
        text_frames(b"{}\n" * (MAX_LINES + 1), 10)
    assert (refused.value.status, refused.value.close) == (400, None)


def test_a_cut_body_is_too_big() -> None:
    """The start of a body too long to read is refused, by its long line if it shows one."""
    with pytest.raises(BodyRefused) as refused:
        text_frames(b"{}\n" + b"\n" * 50, 10, complete=False)
    assert (refused.value.status, refused.value.close) == (413, CloseCode.MESSAGE_TOO_BIG)
    with pytest.raises(BodyRefused) as refused:
        text_frames(b'{}\n"\xff', 10, complete=False)  # a cut character is not an error
    assert refused.value.message == "request body too big"
    assert text_body_limit(10) == MAX_LINES * 12


class RecordingTransport:
    """What a stream reads of its transport: the unsent bytes; and abort."""

    def __init__(self) -> None:
        self.buffered = 0
        self.aborted = False

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True


class RecordingResponse:
    """A response that keeps what is written to it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.ended = False

    async def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    async def write_eof(self) -> None:
        self.ended = True


def make_peer(transport: RecordingTransport, max_queue: int = 1024) -> EventStreamPeer:
    return EventStreamPeer(
        None,  # type: ignore[arg-type]  # no frames come in here
        Session("s", UserInfo("a", True)),
        stream="id",
        transport=transport,  # type: ignore[arg-type]
        max_queue=max_queue,
        max_message=1024,
        max_binary=1024,
        close_timeout=1.0,
    )


async def test_frames_of_one_turn_are_one_write_then_the_close_ends_it() -> None:
    """Frames sent in one turn go out as one write of SSE events; a close event ends it."""
    peer = make_peer(RecordingTransport())
    response = RecordingResponse()
    pump = asyncio.ensure_future(peer.pump(response))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    peer.send(text_frame(b'{"n":1}'))
    peer.send(PING_FRAME)
    peer.send(text_frame(b'{"n":2}'))
    peer.send(close_frame(1000))  # not a frame a stream carries
    await asyncio.sleep(0.01)
    assert response.writes == [b'data: {"n":1}\n\n' + PING_COMMENT + b'data: {"n":2}\n\n']
    peer.close(CloseCode.GOING_AWAY, "server shutting down")
    peer.send(text_frame(b'{"n":3}'))  # after the close: dropped
    await asyncio.wait_for(pump, 1)
    assert response.writes[1:] == [close_event(1001, "server shutting down")]
    assert response.ended and peer.close_code == 1001


async def test_a_lost_stream_writes_nothing_more_and_ends_1006() -> None:
    """After the connection is lost nothing is written, the writer stops, the code is 1006."""
    peer = make_peer(RecordingTransport())
    response = RecordingResponse()
    pump = asyncio.ensure_future(peer.pump(response))  # type: ignore[arg-type]
    peer.send(text_frame(b"{}"))
    peer.lost()
    await asyncio.wait_for(pump, 1)
    assert response.writes == [] and not response.ended
    assert peer.closed and peer.close_code == 1006


async def test_more_queued_than_max_queue_closes_1013() -> None:
    """Frames queued past max_queue close the stream as a slow consumer."""
    peer = make_peer(RecordingTransport(), max_queue=100)
    peer.send(text_frame(b"x" * 60))
    assert not peer.closed
    peer.send(text_frame(b"x" * 60))
    assert peer.closed and peer.close_code == CloseCode.TRY_AGAIN_LATER


async def test_drain_waits_for_the_transport_then_gives_up_on_close() -> None:
    """drain returns True once little is unsent, and False once the stream is closed."""
    transport = RecordingTransport()
    peer = make_peer(transport, max_queue=400)
    assert await peer.drain()
    transport.buffered = 200
    draining = asyncio.ensure_future(peer.drain())
    await asyncio.sleep(0.02)
    assert not draining.done()
    transport.buffered = 50
    assert await asyncio.wait_for(draining, 1)
    transport.buffered = 200
    draining = asyncio.ensure_future(peer.drain())
    await asyncio.sleep(0.02)
    peer.close(CloseCode.NORMAL, "bye")
    assert not await asyncio.wait_for(draining, 1)
