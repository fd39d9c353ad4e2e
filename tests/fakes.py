"""In-process stand-ins for connections, for hub and node tests (no sockets)."""

from __future__ import annotations

import json
from typing import Any

from roomcast.node import Node
from roomcast.protocol.codes import CloseCode
from roomcast.protocol.messages import UserInfo
from roomcast.protocol.session import Session


def decode_frame(frame: bytes) -> Any:
    """The JSON inside an unmasked server text frame (as built by ``wsframe``)."""
    assert frame[0] == 0x81, "not a final text frame"
    length = frame[1] & 0x7F
    offset = 2 if length < 126 else 4 if length == 126 else 10
    return json.loads(frame[offset:])


class FakePeer:
    """Records what the node writes to it."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.frames: list[bytes] = []
        self.closed: tuple[CloseCode, str] | None = None

    @classmethod
    def named(cls, name: str, *, guest: bool = True) -> FakePeer:
        return cls(Session(f"s-{name}", UserInfo(name, guest)))

    def send(self, frame: bytes) -> None:
        self.frames.append(frame)

    def close(self, code: CloseCode, reason: str) -> None:
        self.closed = (code, reason)

    async def drain(self) -> bool:
        return self.closed is None

    def received(self) -> list[dict[str, Any]]:
        """Every frame so far, decoded, and forget them."""
        out = [decode_frame(f) for f in self.frames]
        self.frames.clear()
        return out

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.received() if f["type"] == kind]


class Clock:
    """A wall clock the test moves by hand (seconds since the epoch)."""

    def __init__(self) -> None:
        self.now = 1_790_000_000.0

    def __call__(self) -> float:
        return self.now


async def receive_text(node: Node, peer: FakePeer, data: str | bytes) -> None:
    """Carry out one text frame from ``peer`` completely (the server's reader does it in steps)."""
    pending = node.handle_text(peer, data)
    if pending is not None:
        await pending


async def receive_binary(node: Node, peer: FakePeer, data: bytes) -> None:
    """Carry out one binary frame from ``peer`` completely."""
    pending = node.handle_binary(peer, data)
    if pending is not None:
        await pending
