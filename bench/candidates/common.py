"""Protocol bits shared by the candidate broadcast servers.

Each candidate speaks just enough of roomcast's protocol for bench/lib/loadgen:
a ``system`` welcome frame on connect, ``chat`` broadcast to every client (one
room, ``lobby``) with a roomcast-shaped payload, and ``ping`` -> ``pong`` with
the same ``id`` and ``payload``. Everything is serialized with orjson.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def welcome() -> bytes:
    return orjson.dumps(
        {"type": "system", "payload": {"message": "connected"}, "timestamp": now_iso()}
    )


class Room:
    """The single room every client is in; numbers chat messages."""

    def __init__(self) -> None:
        self.seq = 0

    def chat(self, message: str, sender: str) -> bytes:
        self.seq += 1
        payload = {
            "room": "lobby",
            "message": message,
            "from": sender,
            "seq": self.seq,
            "message_id": uuid.uuid4().hex,
        }
        return orjson.dumps({"type": "chat", "payload": payload, "timestamp": now_iso()})


def handle(room: Room, raw: bytes | str, sender: str) -> tuple[str, bytes] | None:
    """Return ("broadcast", frame) or ("reply", frame) for one client message."""
    try:
        data: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    kind = data.get("type")
    payload = data.get("payload")
    if kind == "chat" and isinstance(payload, dict):
        return "broadcast", room.chat(str(payload.get("message", "")), sender)
    if kind == "ping":
        return "reply", orjson.dumps({"type": "pong", "id": data.get("id"), "payload": payload})
    return None


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=0)
    return parser.parse_args()


def announce(name: str, port: int) -> None:
    print(f"{name} listening on http://127.0.0.1:{port}", flush=True)


async def wait_for_stop() -> None:
    """Block until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve_aiohttp(name: str, handler: Any, port: int) -> None:
    """Serve ``handler`` at / and /ws with aiohttp until SIGTERM or SIGINT."""
    from aiohttp import web

    app = web.Application()
    app.router.add_get("/ws", handler)
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    announce(name, runner.addresses[0][1])
    await wait_for_stop()
    await runner.cleanup()
