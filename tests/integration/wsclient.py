"""Small helpers around the ``websockets`` client for integration tests."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import ClientConnection

#: The longest a test waits for one expected frame.
RECV_TIMEOUT = 5.0


async def recv_json(ws: ClientConnection, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
    """The next frame, parsed."""
    data = await asyncio.wait_for(ws.recv(), timeout)
    frame = json.loads(data)
    assert isinstance(frame, dict)
    return frame


async def recv_type(
    ws: ClientConnection, kind: str, timeout: float = RECV_TIMEOUT
) -> dict[str, Any]:
    """Skip frames until one of type ``kind`` arrives."""
    async with asyncio.timeout(timeout):
        while True:
            frame = await recv_json(ws, timeout)
            if frame["type"] == kind:
                return frame


async def send_json(ws: ClientConnection, kind: str, payload: Any = None, **extra: Any) -> None:
    """Send one frame."""
    frame: dict[str, Any] = {"type": kind, **extra}
    if payload is not None:
        frame["payload"] = payload
    await ws.send(json.dumps(frame))


async def welcome(ws: ClientConnection) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read the ``system`` frame and the lobby ``joined`` frame that follow a connect."""
    system = await recv_json(ws)
    assert system["type"] == "system"
    joined = await recv_json(ws)
    assert joined["type"] == "joined"
    return system, joined
