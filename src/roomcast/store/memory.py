"""A store in process memory: for tests and for running without a disk.

It keeps everything until the process ends. Dedupe keys are kept for 24 h.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from ..protocol.messages import ChatMessage, now_ms
from .base import AppendResult

__all__ = ["DEDUPE_SECONDS", "MemoryStore"]

#: How long a resent frame ``id`` is recognised.
DEDUPE_SECONDS = 24 * 3600


class MemoryStore:
    """Rooms as lists in memory; seqs are list positions + 1."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._rooms: dict[str, list[ChatMessage]] = {}
        self._seen: dict[tuple[str, str], tuple[float, ChatMessage]] = {}
        self._clock = clock

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def ping(self) -> None:
        pass

    async def append(
        self, room: str, sender: str, text: str, *, client_id: str | None = None
    ) -> AppendResult:
        now = self._clock()
        if client_id is not None:
            seen = self._seen.get((sender, client_id))
            if seen is not None and now - seen[0] < DEDUPE_SECONDS:
                return AppendResult(seen[1], True)
        messages = self._rooms.setdefault(room, [])
        message = ChatMessage(room, text, sender, len(messages) + 1, uuid.uuid4().hex, now_ms())
        messages.append(message)
        if client_id is not None:
            self._seen[(sender, client_id)] = (now, message)
            if len(self._seen) % 4096 == 0:
                self._expire(now)
        return AppendResult(message, False)

    def _expire(self, now: float) -> None:
        stale = [k for k, (t, _) in self._seen.items() if now - t >= DEDUPE_SECONDS]
        for key in stale:
            del self._seen[key]

    async def last_seq(self, room: str) -> int:
        return len(self._rooms.get(room, ()))

    async def history(
        self, room: str, *, before: int | None = None, limit: int = 50
    ) -> tuple[list[ChatMessage], bool]:
        messages = self._rooms.get(room, [])
        end = len(messages) if before is None else max(0, min(before - 1, len(messages)))
        start = max(0, end - limit)
        return messages[start:end], start > 0

    async def since(self, room: str, seq: int, *, limit: int) -> list[ChatMessage]:
        messages = self._rooms.get(room, [])
        return messages[seq : seq + limit]
