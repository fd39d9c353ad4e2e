"""A store in process memory: for tests and for running without a disk.

It keeps everything until the process ends. Dedupe keys are kept for 24 h.
It refuses what the SQL stores refuse (U+0000), so a test on it sees what a
server on a database would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

import orjson

from ..exceptions import InvalidRequest
from ..model import (
    AuditEntry,
    Ban,
    Change,
    ChatMessage,
    DirectMessage,
    Mention,
    Mute,
    Quote,
    Reactions,
    RoomAccess,
    RoomRules,
    RoomSettings,
    SearchHit,
    StoredSession,
    StoredUser,
)
from ..query import matches, score
from .base import (
    DEDUPE_SECONDS,
    MAX_RELEVANCE_RESULTS,
    AppendResult,
    DirectResult,
    Draft,
    Marker,
    Outgoing,
    SearchFilter,
    Thread,
    read_cursor,
    unstorable,
    write_cursor,
)
from .batch import BatchedAppends, Pending, Plan, Target, direct_from_row, message_from_row

__all__ = ["MemoryStore"]

#: An event as kept: a message in its current state, a change, or a mention.
_Event = ChatMessage | DirectMessage | Change | Mention


@dataclass(slots=True)
class _Moderation:
    """A room's settings and roles beyond :class:`RoomAccess`."""

    topic: str = ""
    title: str = ""
    slow_mode: int = 0
    moderators: set[str] = field(default_factory=set)
    bans: dict[str, Ban] = field(default_factory=dict)
    mutes: dict[str, Mute] = field(default_factory=dict)


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
        #: Read markers: name -> stream -> seq.
        self._markers: dict[str, dict[str, int]] = {}
        #: Notifications waiting: id -> [body, attempts, due (epoch s), message id].
        self._outbox: dict[str, list[Any]] = {}
        #: Each room's settings and roles, and the audit log (ids are positions + 1).
        self._moderation: dict[str, _Moderation] = {}
        self._audit: list[AuditEntry] = []
        #: Deleted rooms: how many events each had (its last seq) when deleted. A
        #: room is gone while it has no more; its erased events' ids are "".
        self._erased_at: dict[str, int] = {}
        self._sessions: dict[str, StoredSession] = {}
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
            for key in [k for k, item in self._outbox.items() if item[3] == message_id]:
                del self._outbox[key]
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
        ids = self._rooms.get(room, [])
        return next((seq for seq, x in enumerate(ids, start=1) if x), len(ids) + 1)

    def _room_messages(self, room: str, thread: Thread = None) -> list[ChatMessage]:
        out = []
        for message_id in self._rooms.get(room, ()):
            message = self._events.get(message_id)
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
        ids = self._rooms.get(room, [])
        out: list[ChatMessage | Change] = []
        for message_id in ids[max(seq, 0) :]:
            event = self._events.get(message_id)
            if event is None:  # erased with its room
                continue
            assert isinstance(event, ChatMessage | Change)
            out.append(event)
            if len(out) == limit:
                break
        return out

    # -- direct messages -------------------------------------------------------

    async def direct_last_seq(self, owner: str) -> int:
        return len(self._inboxes.get(owner, ()))

    async def direct_history(
        self, owner: str, *, before: int | None = None, limit: int = 50, peer: str | None = None
    ) -> tuple[list[DirectMessage], bool]:
        inbox = self._inboxes.get(owner, [])
        end = len(inbox) if before is None else max(0, min(before - 1, len(inbox)))
        messages = [
            replace(m, seq=i + 1, reactions=self._reactions_of(m.message_id))
            for i, m in enumerate(self._events[x] for x in inbox[:end])
            if isinstance(m, DirectMessage) and _between(m, owner, peer)
        ]
        page = messages[-limit:] if limit else []
        return page, len(messages) > len(page)

    async def direct_around(
        self, owner: str, seq: int, *, limit: int, peer: str | None = None
    ) -> tuple[list[DirectMessage], bool, bool]:
        inbox = self._inboxes.get(owner, [])
        messages = [
            replace(m, seq=i + 1, reactions=self._reactions_of(m.message_id))
            for i, m in enumerate(self._events[x] for x in inbox)
            if isinstance(m, DirectMessage) and _between(m, owner, peer)
        ]
        older = [m for m in messages if m.seq is not None and m.seq < seq]
        newer = [m for m in messages if m.seq is not None and m.seq >= seq]
        half = limit // 2
        page = (older[-half:] if half else []) + newer[: limit - half]
        return page, len(older) > half, len(newer) > limit - half

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
        if self._stored(name):
            return False
        self._access[name] = RoomAccess(name, private, owner, members)
        self._rooms.setdefault(name, [])
        self._erased_at.pop(name, None)
        return True

    def _stored(self, name: str) -> bool:
        """Whether room ``name`` is stored: created or used, and not deleted since."""
        if name not in self._access and name not in self._rooms:
            return False
        erased = self._erased_at.get(name)
        return erased is None or len(self._rooms.get(name, ())) > erased

    async def room_access(self, name: str) -> RoomAccess | None:
        if not self._stored(name):
            return None
        access = self._access.get(name)
        if access is None:
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
        return {name for name in names if self._stored(name)}

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

    # -- search ------------------------------------------------------------------

    async def search(self, search: SearchFilter) -> tuple[list[SearchHit], str | None]:
        """Every stored message tried in turn: the in-memory store keeps little.

        The cursor is a position in store order (newest first), or how
        many results came before (best first).
        """
        position = read_cursor(search)
        if position is not None and (not isinstance(position, int) or position < 0):
            raise InvalidRequest("cursor is not one a search gave")
        reader = search.reader
        inbox = {
            message_id: seq
            for seq, message_id in enumerate(self._inboxes.get(reader or "", ()), start=1)
        }
        found: list[tuple[int, int, SearchHit]] = []
        for index, event in enumerate(self._events.values()):
            hit = self._searched(search, event, inbox)
            if hit is None or not matches(search.query, hit.message.message):
                continue
            if not search.relevance and position is not None and index >= position:
                continue
            found.append((index, score(search.query, hit.message.message), hit))
        if search.relevance:
            offset = position or 0
            end = min(offset + search.limit, MAX_RELEVANCE_RESULTS)
            found.sort(key=lambda item: (-item[1], -item[0]))
            more = len(found) > end and end < MAX_RELEVANCE_RESULTS
            hits = [hit for _i, _s, hit in found[offset:end]]
            return hits, write_cursor(search, end) if more else None
        found.reverse()
        page = found[: search.limit]
        more = len(found) > search.limit
        return [hit for _i, _s, hit in page], write_cursor(search, page[-1][0]) if more else None

    def _searched(
        self, search: SearchFilter, event: object, inbox: dict[str, int]
    ) -> SearchHit | None:
        """``event`` as a hit if ``search`` may look at it (its text aside), else None."""
        if isinstance(event, ChatMessage):
            if search.direct or (search.room is not None and event.room != search.room):
                return None
            access = self._access.get(event.room)
            if (
                access is not None
                and access.private
                and not (search.reader is not None and access.allows(search.reader))
            ):
                return None
            if search.reader is not None and self._banned(event.room, search.reader):
                return None
            hit = SearchHit(event)
        elif isinstance(event, DirectMessage):
            seq = inbox.get(event.message_id)
            if seq is None or search.room is not None:
                return None
            peer = event.to if event.sender == search.reader else event.sender
            if search.peer is not None and peer != search.peer:
                return None
            hit = SearchHit(replace(event, seq=seq), peer)
        else:
            return None
        message = hit.message
        if message.deleted or message.file is not None:
            return None
        if search.sender is not None and message.sender != search.sender:
            return None
        if search.after_ms is not None and message.ts_ms <= search.after_ms:
            return None
        if search.before_ms is not None and message.ts_ms >= search.before_ms:
            return None
        return hit

    # -- read state ----------------------------------------------------------------

    async def save_markers(self, markers: Sequence[Marker]) -> None:
        for name, stream, seq in markers:
            mine = self._markers.setdefault(name, {})
            mine[stream] = max(mine.get(stream, seq), seq)

    async def markers(self, name: str) -> dict[str, int]:
        return dict(self._markers.get(name, {}))

    async def marker(self, name: str, stream: str) -> int | None:
        return self._markers.get(name, {}).get(stream)

    async def unread_in_room(self, room: str, name: str, after: int, upto: int) -> tuple[int, int]:
        unread = mentions = 0
        for _seq, message in self._room_events(room, after, upto):
            if isinstance(message, ChatMessage) and not message.deleted and message.sender != name:
                unread += 1
                mentions += name in message.mentions
        return unread, mentions

    def _room_events(self, room: str, after: int, upto: int) -> list[tuple[int, _Event]]:
        ids = self._rooms.get(room, [])
        return [
            (seq, event)
            for seq in range(after + 1, min(upto, len(ids)) + 1)
            if (event := self._events.get(ids[seq - 1])) is not None
        ]

    async def last_message(self, room: str) -> tuple[int, int] | None:
        for seq, message in reversed(self._room_events(room, 0, len(self._rooms.get(room, [])))):
            if isinstance(message, ChatMessage) and not message.deleted:
                return seq, message.ts_ms
        return None

    def _inbox_messages(self, name: str) -> list[tuple[int, DirectMessage]]:
        inbox = self._inboxes.get(name, [])
        return [
            (seq, message)
            for seq, message in ((i + 1, self._events[x]) for i, x in enumerate(inbox))
            if isinstance(message, DirectMessage)
        ]

    async def unread_direct(self, name: str, after: int) -> list[tuple[str, int, bool]]:
        return [
            (message.sender, seq, name in message.mentions)
            for seq, message in self._inbox_messages(name)
            if seq > after and not message.deleted and message.sender != name
        ]

    async def last_direct(self, name: str, peer: str | None) -> tuple[int, int] | None:
        for seq, message in reversed(self._inbox_messages(name)):
            if not message.deleted and (peer is None or peer in (message.sender, message.to)):
                return seq, message.ts_ms
        return None

    async def readers(self, room: str, *, at_least: int = 0, limit: int) -> list[tuple[str, int]]:
        found = [
            (name, streams[room])
            for name, streams in self._markers.items()
            if room in streams
            and streams[room] >= at_least
            and (user := self._users.get(name.lower())) is not None
            and not user.hide_receipts
        ]
        return sorted(found, key=lambda item: -item[1])[:limit]

    async def reader_count(self, room: str) -> int:
        return sum(room in streams for streams in self._markers.values())

    async def direct_seq_for(self, reader: str, peer: str, upto: int) -> int | None:
        for seq, message in reversed(self._inbox_messages(reader)):
            if seq <= upto and {message.sender, message.to} == {reader, peer}:
                peer_inbox = self._inboxes.get(peer, [])
                return peer_inbox.index(message.message_id) + 1
        return None

    async def direct_peers(self, name: str, after: int, upto: int) -> list[str]:
        return sorted(
            {
                message.to if message.sender == name else message.sender
                for seq, message in self._inbox_messages(name)
                if after < seq <= upto and message.sender != message.to
            }
        )

    async def set_hide_receipts(self, name: str, hidden: bool) -> None:
        user = self._users.get(name.lower())
        if user is not None:
            self._users[name.lower()] = replace(user, hide_receipts=hidden)

    async def set_room_receipts(self, room: str, on: bool) -> None:
        access = await self.room_access(room)
        if access is not None:
            self._access[room] = replace(access, receipts=on)

    # -- moderation ------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _banned(self, room: str, name: str) -> bool:
        ban = self._moderation.get(room, _NO_MODERATION).bans.get(name)
        return ban is not None and ban.until_ms > self._now_ms()

    def _moderated(self, room: str) -> _Moderation:
        return self._moderation.setdefault(room, _Moderation())

    def _log(self, audit: AuditEntry) -> None:
        # As a database gives it back: the detail through JSON.
        detail = orjson.loads(orjson.dumps(dict(audit.detail)))
        self._audit.append(replace(audit, detail=detail, id=len(self._audit) + 1))

    async def room_settings(self, room: str) -> RoomSettings | None:
        access = await self.room_access(room)
        if access is None:
            return None
        extra = self._moderation.get(room, _NO_MODERATION)
        return RoomSettings(
            room,
            access.private,
            access.owner,
            frozenset(extra.moderators),
            extra.topic,
            extra.title,
            extra.slow_mode,
            access.receipts,
        )

    async def room_rules(self, room: str, now_ms: int) -> RoomRules:
        settings = await self.room_settings(room)
        if settings is None:
            return RoomRules()
        extra = self._moderation.get(room, _NO_MODERATION)
        exempt = set(settings.moderators)
        if settings.owner is not None:
            exempt.add(settings.owner)
        return RoomRules(
            settings.slow_mode,
            frozenset(exempt),
            {m.name: m.until_ms for m in extra.mutes.values() if m.until_ms > now_ms},
            {b.name: b for b in extra.bans.values() if b.until_ms > now_ms},
        )

    async def claim_room(self, room: str, owner: str, now_ms: int) -> bool:
        return await self.create_room(room, owner=owner, private=False, members=frozenset())

    async def set_moderator(self, room: str, name: str, on: bool, audit: AuditEntry) -> bool:
        moderators = self._moderated(room).moderators
        if (name in moderators) == on:
            return False
        if on:
            moderators.add(name)
        else:
            moderators.discard(name)
        self._log(audit)
        return True

    async def set_owner(self, room: str, name: str, audit: AuditEntry) -> None:
        access = await self.room_access(room)
        if access is not None:
            moderators = self._moderated(room).moderators
            moderators.discard(name)
            old = access.owner
            if old is not None and old != name:
                moderators.add(old)
            members = access.members
            if access.private:
                members = members | {name} | ({old} if old is not None else set())
            self._access[room] = replace(access, owner=name, members=members)
        self._log(audit)

    async def remove_member(self, room: str, name: str, audit: AuditEntry) -> bool:
        removed = False
        access = self._access.get(room)
        if access is not None and name in access.members:
            self._access[room] = replace(access, members=access.members - {name})
            removed = True
        extra = self._moderation.get(room)
        if extra is not None and name in extra.moderators:
            extra.moderators.discard(name)
            removed = True
        self._log(audit)
        return removed

    async def set_ban(self, room: str, ban: Ban, audit: AuditEntry) -> None:
        extra = self._moderated(room)
        extra.bans[ban.name] = ban
        extra.moderators.discard(ban.name)
        self._log(audit)

    async def lift_ban(self, room: str, name: str, audit: AuditEntry) -> bool:
        ban = self._moderated(room).bans.pop(name, None)
        if ban is None or ban.until_ms <= audit.at_ms:
            return False
        self._log(audit)
        return True

    async def set_mute(self, room: str, mute: Mute, audit: AuditEntry) -> None:
        self._moderated(room).mutes[mute.name] = mute
        self._log(audit)

    async def lift_mute(self, room: str, name: str, audit: AuditEntry) -> bool:
        mute = self._moderated(room).mutes.pop(name, None)
        if mute is None or mute.until_ms <= audit.at_ms:
            return False
        self._log(audit)
        return True

    async def bans(self, room: str, now_ms: int) -> list[Ban]:
        bans = self._moderation.get(room, _NO_MODERATION).bans.values()
        return sorted((b for b in bans if b.until_ms > now_ms), key=lambda b: b.name)

    async def mutes(self, room: str, now_ms: int) -> list[Mute]:
        mutes = self._moderation.get(room, _NO_MODERATION).mutes.values()
        return sorted((m for m in mutes if m.until_ms > now_ms), key=lambda m: m.name)

    async def update_room(
        self,
        room: str,
        audit: AuditEntry,
        *,
        topic: str | None = None,
        title: str | None = None,
        slow_mode: int | None = None,
    ) -> bool:
        if not self._stored(room):
            # The lobby or a room a guest made, never stored: stored now, owned by no one.
            self._rooms.setdefault(room, [])
            self._erased_at.pop(room, None)
            self._access.pop(room, None)
        extra = self._moderated(room)
        if topic is not None:
            extra.topic = topic
        if title is not None:
            extra.title = title
        if slow_mode is not None:
            extra.slow_mode = slow_mode
        self._log(audit)
        return True

    async def delete_room(self, room: str, audit: AuditEntry) -> bool:
        if not self._stored(room):
            return False
        ids = self._rooms.setdefault(room, [])
        for seq, message_id in enumerate(ids, start=1):
            if not message_id:
                continue
            self._forget(message_id)
            event = self._events.pop(message_id)
            if seq < len(ids):
                ids[seq - 1] = ""
                continue
            # The newest stays, an empty deleted message: the room's seqs go on.
            assert isinstance(event, ChatMessage | Change)
            self._events[message_id] = ChatMessage(
                room,
                "",
                event.sender if isinstance(event, ChatMessage) else event.by,
                seq,
                message_id,
                event.ts_ms,
                deleted=True,
            )
        for streams in self._markers.values():
            streams.pop(room, None)
        access = self._access.pop(room, None)
        if access is not None and access.private:
            # A late message lands where only admins may read it.
            self._access[room] = RoomAccess(room, True, None, frozenset())
        self._moderation.pop(room, None)
        self._erased_at[room] = len(ids)
        self._seen = {k: v for k, v in self._seen.items() if k[2] != room or k[3]}
        self._log(audit)
        return True

    def _forget(self, message_id: str) -> None:
        """Drop what goes with a message erased: its reactions, notifications, edits' text."""
        self._reactions.pop(message_id, None)
        for key in [k for k, item in self._outbox.items() if item[3] == message_id]:
            del self._outbox[key]
        for edit_id in self._edits.pop(message_id, ()):
            edit = self._events.get(edit_id)
            if isinstance(edit, Change):
                self._events[edit_id] = replace(edit, text="")

    async def add_audit(self, audit: AuditEntry) -> None:
        self._log(audit)

    async def audit_log(self, room: str, *, before: int | None, limit: int) -> list[AuditEntry]:
        entries = [
            entry
            for entry in reversed(self._audit)
            if entry.room == room and (before is None or entry.id < before)
        ]
        return entries[:limit]

    async def all_rooms(self) -> list[RoomSettings]:
        names = sorted(set(self._rooms) | set(self._access))
        return [settings for name in names if (settings := await self.room_settings(name))]

    # -- sessions and accounts ---------------------------------------------------------------

    async def create_session(self, session: StoredSession) -> None:
        user = self._users.get(session.name.lower())
        if user is not None:
            self._sessions[session.id] = replace(session, name=user.name)

    async def session_user(self, session_id: str) -> tuple[StoredSession, StoredUser] | None:
        session = self._sessions.get(session_id)
        if session is None:
            return None
        user = self._users.get(session.name.lower())
        if user is None or user.name != session.name:
            return None
        return session, user

    async def rotate_session(
        self, session_id: str, old_hash: str, new_hash: str, expires_ms: int, now_ms: int
    ) -> bool:
        session = self._sessions.get(session_id)
        if (
            session is None
            or session.refresh_hash != old_hash
            or session.revoked_ms is not None
            or session.expires_ms <= now_ms
        ):
            return False
        self._sessions[session_id] = replace(
            session, refresh_hash=new_hash, expires_ms=expires_ms, previous_hash=old_hash
        )
        return True

    async def revoke_sessions(
        self, name: str, now_ms: int, *, only: str | None = None, keep: str | None = None
    ) -> list[str]:
        user = self._users.get(name.lower())
        return self._revoke(user.name if user is not None else name, now_ms, only, keep)

    def _revoke(self, name: str, now_ms: int, only: str | None, keep: str | None) -> list[str]:
        revoked = []
        for session in list(self._sessions.values()):
            if (
                session.name == name
                and session.revoked_ms is None
                and session.expires_ms > now_ms
                and (only is None or session.id == only)
                and session.id != keep
            ):
                self._sessions[session.id] = replace(session, revoked_ms=now_ms)
                revoked.append(session.id)
        return sorted(revoked)

    async def revoked_since(self, since_ms: int) -> list[tuple[str, str]]:
        return [
            (s.id, s.name)
            for s in self._sessions.values()
            if s.revoked_ms is not None and s.revoked_ms >= since_ms
        ]

    async def set_password(
        self, name: str, password_hash: str, now_ms: int, *, keep: str | None = None
    ) -> list[str]:
        user = self._users.get(name.lower())
        if user is None:
            return []
        self._users[name.lower()] = replace(user, password_hash=password_hash)
        return self._revoke(user.name, now_ms, None, keep)

    async def set_admin(self, name: str, on: bool) -> bool:
        user = self._users.get(name.lower())
        if user is None:
            return False
        self._users[name.lower()] = replace(user, admin=on)
        return True

    async def set_user_ban(
        self, name: str, until_ms: int | None, reason: str, now_ms: int
    ) -> list[str] | None:
        user = self._users.get(name.lower())
        if user is None:
            return None
        banned = replace(
            user, banned_until_ms=until_ms, ban_reason=reason if until_ms is not None else ""
        )
        self._users[name.lower()] = banned
        return [] if until_ms is None else self._revoke(user.name, now_ms, None, None)

    async def delete_user(self, name: str, now_ms: int) -> list[str] | None:
        user = self._users.get(name.lower())
        if user is None:
            return None
        name = user.name
        revoked = self._revoke(name, now_ms, None, None)
        for message_id, event in list(self._events.items()):
            if event.ts_ms < user.created_ms:
                continue
            if isinstance(event, ChatMessage | DirectMessage) and event.sender == name:
                self._forget(message_id)
                self._events[message_id] = replace(
                    event, message="", file=None, mentions=(), deleted=True, reactions=()
                )
            elif isinstance(event, Change) and event.kind == "edit" and event.by == name:
                self._events[message_id] = replace(event, text="")
        for emojis in self._reactions.values():
            for emoji, names in list(emojis.items()):
                if name in names:
                    names.remove(name)
                    if not names:
                        del emojis[emoji]
        self._markers.pop(name, None)
        for key, item in list(self._outbox.items()):
            if orjson.loads(item[0]).get("user") == name:
                del self._outbox[key]
        for room, access in list(self._access.items()):
            if name in access.members or access.owner == name:
                owner = None if access.owner == name else access.owner
                self._access[room] = replace(access, owner=owner, members=access.members - {name})
        for extra in self._moderation.values():
            extra.moderators.discard(name)
            extra.bans.pop(name, None)
            extra.mutes.pop(name, None)
        self._inboxes.pop(name, None)
        listed = {message_id for inbox in self._inboxes.values() for message_id in inbox}
        for message_id, event in list(self._events.items()):
            if message_id not in listed and _of_inboxes(event):
                del self._events[message_id]
        self._seen = {k: v for k, v in self._seen.items() if k[0] != name}
        del self._users[name.lower()]
        return revoked

    # -- notifications -------------------------------------------------------------

    async def add_notification(self, notification_id: str, message_id: str, body: bytes) -> None:
        self._outbox.setdefault(notification_id, [body, 0, self._clock(), message_id])

    async def due_notifications(self, limit: int) -> list[Outgoing]:
        now = self._clock()
        due = sorted((item[2], key) for key, item in self._outbox.items() if item[2] <= now)
        return [(key, self._outbox[key][0], self._outbox[key][1]) for _, key in due[:limit]]

    async def claim_notification(self, notification_id: str, attempts: int, lease: float) -> bool:
        item = self._outbox.get(notification_id)
        if item is None or item[1] != attempts:
            return False
        item[1] += 1
        item[2] = self._clock() + lease
        return True

    async def retry_notification(self, notification_id: str, delay: float) -> None:
        if notification_id in self._outbox:
            self._outbox[notification_id][2] = self._clock() + delay

    async def finish_notification(self, notification_id: str) -> None:
        self._outbox.pop(notification_id, None)

    async def notification_count(self) -> int:
        return len(self._outbox)


#: A room nobody moderates: no settings, roles, bans or mutes.
_NO_MODERATION: Final = _Moderation()


def _of_inboxes(event: _Event) -> bool:
    """Whether ``event`` is a direct-stream event (listed in inboxes, not in a room)."""
    return isinstance(event, DirectMessage | Mention) or (
        isinstance(event, Change) and event.room is None
    )


def _between(message: DirectMessage, owner: str, peer: str | None) -> bool:
    """Whether ``message`` (in ``owner``'s inbox) is of the conversation with ``peer``
    (any, for None)."""
    return peer is None or {message.sender, message.to} == {owner, peer}
