"""A store in process memory: for tests and for running without a disk.

It keeps everything until the process ends. Dedupe keys are kept for 24 h.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

from ..protocol.messages import ChatMessage
from .base import DEDUPE_SECONDS, AppendResult

__all__ = ["MemoryStore"]


class MemoryStore:
    """Rooms as lists in memory; seqs are list positions + 1.

    Args:
        clock: wall-clock seconds (message times and the dedupe window).
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._rooms: dict[str, list[ChatMessage]] = {}
        self._seen: dict[tuple[str, str], tuple[float, ChatMessage]] = {}
        self._clock = clock

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def ping(self) -> None:
        pass

    async def flush(self) -> None:
        pass

    def append(
        self, room: str, sender: str, text: str, *, client_id: str | None = None
    ) -> asyncio.Future[AppendResult]:
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        future.set_result(self._append(room, sender, text, client_id))
        return future

    def _append(self, room: str, sender: str, text: str, client_id: str | None) -> AppendResult:
        now = self._clock()
        if client_id is not None:
            seen = self._seen.get((sender, client_id))
            if seen is not None and now - seen[0] < DEDUPE_SECONDS:
                return AppendResult(seen[1], True)
        messages = self._rooms.setdefault(room, [])
        seq = len(messages) + 1
        message = ChatMessage(room, text, sender, seq, uuid.uuid4().hex, int(now * 1000))
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

    async def first_seq(self, room: str) -> int:
        return 1

    async def history(
        self, room: str, *, before: int | None = None, limit: int = 50
    ) -> tuple[list[ChatMessage], bool]:
        messages = self._rooms.get(room, [])
        end = len(messages) if before is None else max(0, min(before - 1, len(messages)))
        start = max(0, end - limit)
        return messages[start:end], start > 0

    async def since(self, room: str, seq: int, *, limit: int) -> list[ChatMessage]:
        messages = self._rooms.get(room, [])
        return messages[max(seq, 0) : max(seq, 0) + limit]
