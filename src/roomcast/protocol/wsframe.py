"""Server-to-client WebSocket frames, built once and written many times.

A frame the server sends is never masked (RFC 6455 section 5.1), so the bytes
of one broadcast are the same for every member: :func:`text_frame` builds
them once and the hub writes that one ``bytes`` object to each transport.
Reading frames is left to the WebSocket library (picows); only this tiny
writer is ours, because it is the hot path of every fan-out.
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = ["PING_FRAME", "close_frame", "pong_frame", "text_frame"]

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
