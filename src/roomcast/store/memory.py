"""A store in process memory: for tests and for running without a disk.

It keeps everything until the process ends. Dedupe keys are kept for 24 h.
It refuses what the SQL stores refuse (U+0000), so a test on it sees what a
server on a database would.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import replace

from ..model import ChatMessage, DirectMessage, FileInfo, RoomAccess, StoredUser
from .base import DEDUPE_SECONDS, AppendResult, DirectResult, unstorable

__all__ = ["MemoryStore"]


class MemoryStore:
    """Rooms as lists in memory; seqs are list positions + 1.

    Args:
        clock: wall-clock seconds (message times and the dedupe window).
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._rooms: dict[str, list[ChatMessage]] = {}
        #: Resendable ids by (sender, frame id, room): one id per destination.
        self._seen: dict[tuple[str, str, str], tuple[float, ChatMessage]] = {}
        #: The same for direct messages, by (sender, frame id, recipient).
        self._seen_direct: dict[tuple[str, str, str], tuple[float, DirectResult]] = {}
        self._inboxes: dict[str, list[DirectMessage]] = {}
        self._by_id: dict[str, ChatMessage | DirectMessage] = {}
        self._users: dict[str, StoredUser] = {}
        self._access: dict[str, RoomAccess] = {}
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
        self,
        room: str,
        sender: str,
        text: str,
        *,
        client_id: str | None = None,
        file: FileInfo | None = None,
    ) -> asyncio.Future[AppendResult]:
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        if (refusal := unstorable(text, client_id)) is not None:
            future.set_exception(refusal)
        else:
            future.set_result(self._append(room, sender, text, client_id, file))
        return future

    def _append(
        self, room: str, sender: str, text: str, client_id: str | None, file: FileInfo | None
    ) -> AppendResult:
        now = self._clock()
        if client_id is not None:
            seen = self._seen.get((sender, client_id, room))
            if seen is not None and now - seen[0] < DEDUPE_SECONDS:
                return AppendResult(seen[1], True)
        messages = self._rooms.setdefault(room, [])
        seq = len(messages) + 1
        message = ChatMessage(
            room, text, sender, seq, uuid.uuid4().hex, int(now * 1000), _unsigned(file)
        )
        messages.append(message)
        self._by_id[message.message_id] = message
        if client_id is not None:
            self._seen[(sender, client_id, room)] = (now, message)
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

    # -- direct messages -------------------------------------------------------

    def append_direct(
        self,
        sender: str,
        recipient: str,
        text: str,
        *,
        client_id: str | None = None,
        file: FileInfo | None = None,
    ) -> asyncio.Future[DirectResult]:
        future: asyncio.Future[DirectResult] = asyncio.get_running_loop().create_future()
        if (refusal := unstorable(text, client_id)) is not None:
            future.set_exception(refusal)
        else:
            future.set_result(self._append_direct(sender, recipient, text, client_id, file))
        return future

    def _append_direct(
        self,
        sender: str,
        recipient: str,
        text: str,
        client_id: str | None,
        file: FileInfo | None,
    ) -> DirectResult:
        now = self._clock()
        if client_id is not None:
            seen = self._seen_direct.get((sender, client_id, recipient))
            if seen is not None and now - seen[0] < DEDUPE_SECONDS:
                first = seen[1]
                return DirectResult(first.message, first.sender_seq, first.recipient_seq, True)
        message = DirectMessage(
            sender, recipient, text, uuid.uuid4().hex, int(now * 1000), file=_unsigned(file)
        )
        self._by_id[message.message_id] = message
        seqs = []
        for owner in dict.fromkeys((sender, recipient)):
            inbox = self._inboxes.setdefault(owner, [])
            inbox.append(message)
            seqs.append(len(inbox))
        result = DirectResult(message, seqs[0], seqs[-1], False)
        if client_id is not None:
            self._seen_direct[(sender, client_id, recipient)] = (now, result)
        return result

    async def direct_last_seq(self, owner: str) -> int:
        return len(self._inboxes.get(owner, ()))

    async def direct_history(
        self, owner: str, *, before: int | None = None, limit: int = 50
    ) -> tuple[list[DirectMessage], bool]:
        inbox = self._inboxes.get(owner, [])
        end = len(inbox) if before is None else max(0, min(before - 1, len(inbox)))
        start = max(0, end - limit)
        return _numbered(inbox, start, end), start > 0

    async def direct_since(
        self, owner: str, seq: int, *, limit: int
    ) -> tuple[list[DirectMessage], bool]:
        inbox = self._inboxes.get(owner, [])
        start = max(seq, 0)
        end = min(start + limit, len(inbox))
        return _numbered(inbox, start, end), end < len(inbox)

    async def message_by_id(self, message_id: str) -> ChatMessage | DirectMessage | None:
        return self._by_id.get(message_id)

    async def file_digests(self) -> set[str]:
        return {m.file.sha256 for m in self._by_id.values() if m.file is not None}

    # -- users and rooms ---------------------------------------------------------

    async def create_user(self, name: str, password_hash: str) -> bool:
        key = name.lower()
        if key in self._users:
            return False
        self._users[key] = StoredUser(name, password_hash)
        return True

    async def get_user(self, name: str) -> StoredUser | None:
        return self._users.get(name.lower())

    async def create_room(
        self, name: str, *, owner: str, private: bool, members: frozenset[str]
    ) -> bool:
        if name in self._access or name in self._rooms:
            return False
        self._access[name] = RoomAccess(name, private, owner, members)
        self._rooms.setdefault(name, [])
        return True

    async def room_access(self, name: str) -> RoomAccess | None:
        access = self._access.get(name)
        if access is None and name in self._rooms:
            return RoomAccess(name, False, None, frozenset())
        return access

    async def file_bytes_since(self, sender: str, since_ms: int) -> int:
        return sum(
            m.file.size
            for m in self._by_id.values()
            if m.file is not None and m.sender == sender and m.ts_ms >= since_ms
        )

    async def known_rooms(self, names: list[str]) -> set[str]:
        return {name for name in names if name in self._access or name in self._rooms}

    async def add_room_members(self, name: str, members: frozenset[str]) -> None:
        access = self._access[name]
        self._access[name] = RoomAccess(
            name, access.private, access.owner, access.members | members
        )

    async def list_rooms(self, user: str | None) -> list[RoomAccess]:
        rooms = []
        for name in sorted(set(self._rooms) | set(self._access)):
            access = await self.room_access(name)
            if access is not None and (not access.private or (user and access.allows(user))):
                rooms.append(access)
        return rooms


def _unsigned(file: FileInfo | None) -> FileInfo | None:
    """``file`` as stored: without the url, which is only ever set for sending."""
    return file if file is None or file.url is None else replace(file, url=None)


def _numbered(inbox: list[DirectMessage], start: int, end: int) -> list[DirectMessage]:
    """``inbox[start:end]``, each with its seq (position + 1)."""
    return [replace(m, seq=i + 1) for i, m in enumerate(inbox[start:end], start)]
