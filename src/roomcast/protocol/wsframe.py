"""Server-to-client WebSocket frames, built once and written many times.

A frame the server sends is never masked (RFC 6455 section 5.1), so the bytes
of one broadcast are the same for every member: :func:`text_frame` builds
them once and the hub writes that one ``bytes`` object to each transport.
Reading frames is left to the WebSocket library (aiohttp); only this tiny
writer is ours, because it is the hot path of every fan-out.
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = ["PING_FRAME", "MaskChecker", "close_frame", "pong_frame", "text_frame"]

_OP_TEXT: Final = 0x81  # FIN + text
_OP_PONG: Final = 0x8A  # FIN + pong
_OP_CLOSE: Final = 0x88  # FIN + close
_LEN16: Final = struct.Struct(">BBH")
_LEN64: Final = struct.Struct(">BBQ")

#: An unmasked ping with an empty payload.
PING_FRAME: Final = b"\x89\x00"


def _frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((opcode, n)) + payload
    if n < 65536:
        return _LEN16.pack(opcode, 126, n) + payload
    return _LEN64.pack(opcode, 127, n) + payload


def text_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented text frame carrying ``payload`` (UTF-8)."""
    return _frame(_OP_TEXT, payload)


def pong_frame(data: bytes) -> bytes:
    """An unmasked pong echoing a ping's application data (at most 125 bytes)."""
    return _frame(_OP_PONG, data[:125])


def close_frame(code: int, reason: str = "") -> bytes:
    """An unmasked close frame; the reason is cut (on a character) to 123 bytes."""
    data = reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")
    return _frame(_OP_CLOSE, code.to_bytes(2, "big") + data)


class MaskChecker:
    """Finds the first client frame that is not masked (RFC 6455 section 5.1).

    Fed the raw bytes a client sends after the handshake, in any chunks, it
    follows the frame boundaries (reading only each frame's 2 to 14 byte
    header) and reports where an unmasked frame starts. The WebSocket
    library parses the frames; this only enforces the rule it skips.
    """

    __slots__ = ("_head", "_skip")

    def __init__(self) -> None:
        self._skip = 0  # bytes of the current frame's mask and payload still to come
        self._head = b""  # an incomplete frame header carried over

    def feed(self, data: bytes) -> int:
        """Return -1 if every frame header in ``data`` is masked, else the offset
        in ``data`` where the first unmasked frame starts."""
        carried = len(self._head)
        if carried:
            data = self._head + data
            self._head = b""
        pos, end, skip = 0, len(data), self._skip
        while True:
            if skip:
                if end - pos <= skip:
                    self._skip = skip - (end - pos)
                    return -1
                pos += skip
                skip = 0
            if end - pos < 2:
                self._head = data[pos:]
                self._skip = 0
                return -1
            second = data[pos + 1]
            if not second & 0x80:
                return max(0, pos - carried)
            length = second & 0x7F
            size = 2 if length < 126 else 4 if length == 126 else 10
            if end - pos < size:
                self._head = data[pos:]
                self._skip = 0
                return -1
            if size > 2:
                length = int.from_bytes(data[pos + 2 : pos + size], "big")
            pos += size
            skip = 4 + length
