"""A store in process memory: for tests and for running without a disk.

It keeps everything until the process ends. Dedupe keys are kept for 24 h.
It refuses what the SQL stores refuse (U+0000), so a test on it sees what a
server on a database would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..model import (
    Change,
    ChatMessage,
    DirectMessage,
    Mention,
    Quote,
    Reactions,
    RoomAccess,
    StoredUser,
)
from .base import DEDUPE_SECONDS, AppendResult, DirectResult, Draft, Thread, unstorable
from .batch import BatchedAppends, Pending, Plan, Target, direct_from_row, message_from_row

__all__ = ["MemoryStore"]

#: An event as kept: a message in its current state, a change, or a mention.
_Event = ChatMessage | DirectMessage | Change | Mention


class MemoryStore(BatchedAppends):
    """Rooms and inboxes as lists of event ids in memory; seqs are list positions + 1.

    Each draft is worked out by the same :class:`~.batch.Plan` as the SQL
    stores', with this store's lists in place of tables, so what a change
    may do is decided once for every store.

    Args:
        clock: wall-clock seconds (message times and the dedupe window).
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        #: Each room's and each inbox's events, by id, in seq order.
        self._rooms: dict[str, list[str]] = {}
        self._inboxes: dict[str, list[str]] = {}
        #: Every event by id; a message in its current state.
        self._events: dict[str, _Event] = {}
        #: The edit events of each message, to erase their text with it.
        self._edits: dict[str, list[str]] = {}
        #: Deleted file messages' sender, time and size (the upload quota).
        self._erased_files: list[tuple[str, int, int]] = []
        #: Each message's reactions: emoji -> names, both in order.
        self._reactions: dict[str, dict[str, list[str]]] = {}
        #: Resendable ids by (sender, frame id, room or recipient, direct?).
        self._seen: dict[tuple[str, str, str, bool], tuple[float, AppendResult | DirectResult]] = {}
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

    def submit(self, draft: Draft) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if (refusal := unstorable(draft.text, draft.client_id)) is not None:
            future.set_exception(refusal)
            return future
        outcome = self._store(Pending(draft, future))
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
        return future

    def _store(self, item: Pending) -> AppendResult | DirectResult | Exception:
        now = self._clock()
        now_ms = int(now * 1000)
        key = item.key
        rooms: dict[tuple[str, str, str], AppendResult] = {}
        direct: dict[tuple[str, str, str], DirectResult] = {}
        if key is not None:
            seen = self._seen.get((key[0], key[1], key[3], key[2]))
            if seen is not None and now - seen[0] < DEDUPE_SECONDS:
                if isinstance(seen[1], AppendResult):
                    rooms[(key[0], key[1], key[3])] = replace(seen[1], duplicate=True)
                else:
                    direct[(key[0], key[1], key[3])] = replace(seen[1], duplicate=True)
        plan = Plan([item], rooms, direct)
        plan.decide(self._targets(plan.targets()), now_ms)
        room_seqs = {room: len(self._rooms.get(room, ())) for room in plan.room_counts}
        inbox_seqs = {owner: len(self._inboxes.get(owner, ())) for owner in plan.inbox_counts}
        result = plan.assign(room_seqs, inbox_seqs, now_ms)[0]
        self._keep(plan)
        if key is not None and not isinstance(result, Exception) and not rooms and not direct:
            self._seen[(key[0], key[1], key[3], key[2])] = (now, result)
            if len(self._seen) % 4096 == 0:
                self._expire(now)
        return result

    def _targets(self, ids: set[str]) -> dict[str, Target]:
        targets = {}
        for message_id in ids:
            message = self._events.get(message_id)
            if isinstance(message, ChatMessage):
                target = Target(message_id, message.sender, message.room, None, message.deleted)
            elif isinstance(message, DirectMessage):
                target = Target(message_id, message.sender, None, message.to, message.deleted)
            else:
                continue
            for emoji, names in self._reactions.get(message_id, {}).items():
                target.reactions[emoji] = set(names)
            targets[message_id] = target
        return targets

    def _keep(self, plan: Plan) -> None:
        """Do what ``plan``'s rows say to the lists, as the SQL stores do to their tables."""
        events = self._events
        for row in plan.message_rows:
            room, seq, message_id, sender, body, _cid, ts_ms, file, kind, target, thread, names = (
                row
            )
            event = message_from_row(
                (room, body, sender, seq, message_id, ts_ms, file, kind, target, thread, names)
                + (None, None)
            )
            events[message_id] = event
            self._rooms.setdefault(room, []).append(message_id)
            if kind == "edit":
                self._edits.setdefault(target, []).append(message_id)
        for row in plan.direct_rows:
            message_id, sender, to, body, _cid, ts_ms, file, kind, target, room, names = row
            events[message_id] = direct_from_row(
                (sender, to, body, message_id, ts_ms, None, file, kind, target, room, names)
                + (None, None)
            )
            if kind == "edit":
                self._edits.setdefault(target, []).append(message_id)
        for owner, _seq, message_id in plan.inbox_rows:
            self._inboxes.setdefault(owner, []).append(message_id)
        for body, edited_ms, message_id in (*plan.edits, *plan.direct_edits):
            message = events[message_id]
            assert isinstance(message, ChatMessage | DirectMessage)
            events[message_id] = replace(message, message=body, edited_ms=edited_ms)
        inserts, deletes = plan.reaction_rows() if plan.reactions else ([], [])
        for message_id, emoji, name, _ts in inserts:
            names_of = self._reactions.setdefault(message_id, {}).setdefault(emoji, [])
            if name not in names_of:
                names_of.append(name)
        for message_id, emoji, name in deletes:
            emojis = self._reactions.get(message_id, {})
            if name in emojis.get(emoji, []):
                emojis[emoji].remove(name)
                if not emojis[emoji]:
                    del emojis[emoji]
        for _deleted_ms, message_id in (*plan.deletes, *plan.direct_deletes):
            message = events[message_id]
            assert isinstance(message, ChatMessage | DirectMessage)
            if message.file is not None:
                self._erased_files.append((message.sender, message.ts_ms, message.file.size))
            events[message_id] = replace(
                message, message="", file=None, mentions=(), deleted=True, reactions=()
            )
            self._reactions.pop(message_id, None)
            for edit_id in self._edits.get(message_id, ()):
                edit = events[edit_id]
                assert isinstance(edit, Change)
                events[edit_id] = replace(edit, text="")

    def _expire(self, now: float) -> None:
        stale = [k for k, (t, _) in self._seen.items() if now - t >= DEDUPE_SECONDS]
        for key in stale:
            del self._seen[key]

    # -- reading ---------------------------------------------------------------

    async def last_seq(self, room: str) -> int:
        return len(self._rooms.get(room, ()))

    async def first_seq(self, room: str) -> int:
        return 1

    def _room_messages(self, room: str, thread: Thread = None) -> list[ChatMessage]:
        out = []
        for message_id in self._rooms.get(room, ()):
            message = self._events[message_id]
            if isinstance(message, ChatMessage) and (
                thread is None or thread in (message.thread, message.message_id)
            ):
                out.append(message)
        return out

    async def history(
        self, room: str, *, before: int | None = None, limit: int = 50, thread: Thread = None
    ) -> tuple[list[ChatMessage], bool]:
        messages = self._room_messages(room, thread)
        if before is not None:
            messages = [m for m in messages if m.seq < before]
        page = messages[-limit:] if limit else []
        return self._as_now(page), len(messages) > len(page)

    async def around(
        self, room: str, seq: int, *, limit: int
    ) -> tuple[list[ChatMessage], bool, bool]:
        messages = self._room_messages(room)
        older = [m for m in messages if m.seq < seq]
        newer = [m for m in messages if m.seq >= seq]
        half = limit // 2
        page = (older[-half:] if half else []) + newer[: limit - half]
        return self._as_now(page), len(older) > half, len(newer) > limit - half

    def _as_now(self, page: list[ChatMessage]) -> list[ChatMessage]:
        replies: dict[str, int] = {}
        for room in {message.room for message in page}:
            for message in self._room_messages(room):
                if message.thread is not None and not message.deleted:
                    replies[message.thread] = replies.get(message.thread, 0) + 1
        out = []
        for message in page:
            quote: Quote | None = None
            if message.reply_to is not None:
                answered = self._events.get(message.reply_to)
                if isinstance(answered, ChatMessage):
                    quote = Quote.of(answered.sender, answered.message, answered.deleted)
            out.append(
                replace(
                    message,
                    reactions=self._reactions_of(message.message_id),
                    reply_count=replies.get(message.message_id, 0),
                    quote=quote,
                )
            )
        return out

    def _reactions_of(self, message_id: str) -> Reactions:
        emojis = self._reactions.get(message_id, {})
        return tuple((emoji, tuple(names)) for emoji, names in emojis.items() if names)

    async def since(self, room: str, seq: int, *, limit: int) -> list[ChatMessage | Change]:
        ids = self._rooms.get(room, [])[max(seq, 0) : max(seq, 0) + limit]
        out: list[ChatMessage | Change] = []
        for message_id in ids:
            event = self._events[message_id]
            assert isinstance(event, ChatMessage | Change)
            out.append(event)
        return out

    # -- direct messages -------------------------------------------------------

    async def direct_last_seq(self, owner: str) -> int:
        return len(self._inboxes.get(owner, ()))

    async def direct_history(
        self, owner: str, *, before: int | None = None, limit: int = 50
    ) -> tuple[list[DirectMessage], bool]:
        inbox = self._inboxes.get(owner, [])
        end = len(inbox) if before is None else max(0, min(before - 1, len(inbox)))
        messages = [
            replace(m, seq=i + 1, reactions=self._reactions_of(m.message_id))
            for i, m in enumerate(self._events[x] for x in inbox[:end])
            if isinstance(m, DirectMessage)
        ]
        page = messages[-limit:] if limit else []
        return page, len(messages) > len(page)

    async def direct_since(
        self, owner: str, seq: int, *, limit: int
    ) -> tuple[list[DirectMessage | Change | Mention], bool]:
        inbox = self._inboxes.get(owner, [])
        start = max(seq, 0)
        end = min(start + limit, len(inbox))
        out: list[DirectMessage | Change | Mention] = []
        for i in range(start, end):
            event = self._events[inbox[i]]
            assert isinstance(event, DirectMessage | Change | Mention)
            out.append(replace(event, seq=i + 1))
        return out, end < len(inbox)

    async def message_by_id(self, message_id: str) -> ChatMessage | DirectMessage | None:
        event = self._events.get(message_id)
        return event if isinstance(event, ChatMessage | DirectMessage) else None

    def _messages(self) -> list[ChatMessage | DirectMessage]:
        return [m for m in self._events.values() if isinstance(m, ChatMessage | DirectMessage)]

    async def file_digests(self) -> set[str]:
        return {m.file.sha256 for m in self._messages() if m.file is not None}

    # -- users and rooms ---------------------------------------------------------

    async def create_user(self, name: str, password_hash: str) -> bool:
        key = name.lower()
        if key in self._users:
            return False
        self._users[key] = StoredUser(name, password_hash, int(self._clock() * 1000))
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
        erased = sum(
            size for who, ts_ms, size in self._erased_files if who == sender and ts_ms >= since_ms
        )
        return erased + sum(
            m.file.size
            for m in self._messages()
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
