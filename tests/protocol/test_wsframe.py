"""Server frames built once are valid RFC 6455 frames (checked with websockets' parser)."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from roomcast.protocol.wsframe import PING_FRAME, close_frame, pong_frame, text_frame


def parse(data: bytes) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False, max_size=None)
    try:
        next(parser)
    except StopIteration as done:
        frame = done.value
        assert isinstance(frame, Frame)
        return frame
    raise AssertionError("incomplete frame")


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_text_frames_of_every_length_encoding(size: int) -> None:
    """Text frames use the 7-bit, 16-bit and 64-bit length forms correctly."""
    payload = b"a" * size
    frame = parse(text_frame(payload))
    assert frame.opcode is Opcode.TEXT
    assert frame.fin
    assert frame.data == payload


def test_ping_and_pong() -> None:
    """The heartbeat ping is empty; a pong echoes (at most 125 bytes of) the ping data."""
    assert parse(PING_FRAME).opcode is Opcode.PING
    assert parse(PING_FRAME).data == b""
    pong = parse(pong_frame(b"abc"))
    assert (pong.opcode, pong.data) == (Opcode.PONG, b"abc")
    assert parse(pong_frame(b"x" * 200)).data == b"x" * 125


def test_close_frame() -> None:
    """A close frame carries the code and a reason cut on a character boundary."""
    frame = parse(close_frame(1002, "é" * 100))
    assert frame.opcode is Opcode.CLOSE
    assert int.from_bytes(frame.data[:2], "big") == 1002
    assert frame.data[2:].decode() == "é" * 61  # 122 bytes: a 123rd would split a character
