"""What the SQL stores share: every query but the batch writer's, written once.

:class:`SQLStore` is the store's algorithm over a small driver seam, the way
python-socketio writes its pub/sub manager once and each backend only its
I/O. A backend (:class:`~roomcast.store.sqlite.SQLiteStore`,
:class:`~roomcast.store.postgres.PostgresStore`) brings what truly differs:

- its connections, and how a job runs on one: :meth:`SQLStore._read`,
  :meth:`SQLStore._write_now` (its own transaction),
  :meth:`SQLStore._migration` (a transaction under the schema lock) and
  :meth:`SQLStore._pruning` (the right to prune, and a transaction per chunk);
- how it stores one batch (:meth:`SQLStore._write_batch`) and allocates
  its seqs (a cache on SQLite's one writer; a reservation in the database
  with several nodes on PostgreSQL), and how many batches it may write at
  once (``lanes``: SQLite 1, PostgreSQL
  :data:`~roomcast.store.postgres.WRITE_LANES`). Which lane a draft waits
  in, when batches are taken and how many, how their futures resolve and
  when ``flush`` returns is :class:`SQLStore`'s
  (:class:`~.batch.WriteQueue`), the same for both;
- the few statements whose dialects differ (:attr:`SQLStore._NAMES_IN`,
  :attr:`SQLStore._FILE_SIZE`).

Queries are written for PostgreSQL (``$1`` placeholders) in the SQL both
databases accept; SQLite's connection rewrites ``$1`` to its own ``?1``. A
job is an ``async`` function of a :class:`SQLConn`: on PostgreSQL it awaits
asyncpg, on SQLite the same code runs to its end in the database's thread
without ever suspending (:func:`run_sync`), so no thread hop is added per
statement. The statements of a batch's transaction stay each backend's own,
with its raw driver calls: it is the hot path, measured in
bench/store_seam.py and bench/scenarios/pg_lanes.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Final, Protocol, TypeVar

import orjson

from ..exceptions import InvalidRequest, StoreError
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
from ..query import Query
from .base import (
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
from .batch import (
    MAX_QUEUED,
    MESSAGE_COLUMNS,
    BatchedAppends,
    Pending,
    Plan,
    Target,
    WriteQueue,
    chat_from_row,
    direct_from_row,
    file_from_column,
    message_from_row,
    names_from_column,
)
from .schema import LATEST_VERSION, MIGRATIONS, VERSION_TABLE, Migration

__all__ = [
    "DIRECT_HIT_COLUMNS",
    "SEARCH_TIMEOUT",
    "SEARCH_TOO_LONG",
    "ROOM_HIT_COLUMNS",
    "SearchSQL",
    "apply_changes",
    "load_targets",
    "PRUNE_CHUNK",
    "PRUNE_INTERVAL",
    "SESSION_GRACE",
    "Job",
    "Prune",
    "SQLConn",
    "SQLStore",
    "run_sync",
]

T = TypeVar("T")

#: Rows deleted per transaction when old history is pruned.
PRUNE_CHUNK: Final = 5000
#: Seconds between retention passes.
PRUNE_INTERVAL: Final = 3600.0
#: Seconds a revoked or expired session is kept: every node's revocation poll
#: (a minute back) has seen it long before retention deletes it.
SESSION_GRACE: Final = 86400.0
#: Past every seq: ``history`` without ``before`` reads from the newest.
_NEWEST: Final = 2**62
#: Seconds a search may read before it is cut off and refused: a query that
#: matches a great many messages of rooms the reader may not read would
#: otherwise hold a reading connection (SQLite has one) from everyone else.
SEARCH_TIMEOUT: Final = 2.0
#: What a search cut off by :data:`SEARCH_TIMEOUT` is told.
SEARCH_TOO_LONG: Final = (
    "the search took too long: narrow it (a room, a longer word, fewer prefixes)"
)


class SQLConn(Protocol):
    """What a job needs of a connection; ``$1``-style placeholders, rows as sequences."""

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        """Every row of ``sql``."""

    async def fetchrow(self, sql: str, *args: Any) -> Sequence[Any] | None:
        """The first row of ``sql``, or None."""

    async def fetchval(self, sql: str, *args: Any) -> Any:
        """The first column of the first row of ``sql``, or None."""

    async def execute(self, sql: str, *args: Any) -> int:
        """Run ``sql``; how many rows it inserted, updated or deleted."""

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run ``sql`` once per row of parameters."""


#: Work on one connection: one read, or the statements of one transaction.
Job = Callable[[SQLConn], Coroutine[Any, Any, T]]


def run_sync(job: Coroutine[Any, Any, T]) -> T:
    """Run a job that never suspends (its connection answers at once) to its end, here.

    SQLite's connection does its work when called, so a job over it finishes
    in one step, in the database's thread.

    Raises:
        RuntimeError: the job waited for something else, which it must not.
    """
    try:
        job.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    job.close()
    raise RuntimeError("a job on a SQLite connection awaited something other than it")


# -- the queries ------------------------------------------------------------------------

_LAST_SEQ: Final = "SELECT last_seq FROM rooms WHERE name = $1"
_FIRST_SEQ: Final = (
    "SELECT coalesce((SELECT min(seq) FROM messages WHERE room = $1),"
    " (SELECT last_seq FROM rooms WHERE name = $1) + 1, 1)"
)
#: Messages (not changes) of a room, newest first, before $2.
_HISTORY: Final = (
    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE room = $1 AND seq < $2 AND kind = 'chat'"
    " ORDER BY seq DESC LIMIT $3"
)
#: The same, for one thread: its root ($4) and its replies.
_THREAD: Final = (
    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE room = $1 AND seq < $2 AND kind = 'chat'"
    " AND (thread = $4 OR message_id = $4) ORDER BY seq DESC LIMIT $3"
)
#: Messages from seq $2 on, oldest first (the newer half of ``around``).
_FROM: Final = (
    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE room = $1 AND seq >= $2 AND kind = 'chat'"
    " ORDER BY seq LIMIT $3"
)
#: Every event (messages and changes) after $2, oldest first.
_SINCE: Final = (
    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE room = $1 AND seq > $2 ORDER BY seq LIMIT $3"
)
_DM_SEQ: Final = "SELECT dm_seq FROM users WHERE name = $1"
#: A direct-stream event's columns, in the order :func:`~.batch.direct_from_row` reads them.
_INBOX: Final = (
    "SELECT d.sender, d.recipient, d.body, d.message_id, d.ts_ms, i.seq, d.file, d.kind,"
    " d.target, d.room, d.mentions, d.edited_ms, d.deleted_ms FROM inbox i"
    " JOIN direct_messages d ON d.message_id = i.message_id WHERE i.owner = $1"
)
_INBOX_AFTER: Final = f"{_INBOX} AND i.seq > $2 ORDER BY i.seq LIMIT $3"
#: Messages before / from a seq; ``{peer}`` is empty, or :data:`_WITH_PEER`.
_INBOX_BEFORE: Final = (
    f"{_INBOX} AND i.seq < $2 AND d.kind = 'chat'{{peer}} ORDER BY i.seq DESC LIMIT $3"
)
_INBOX_FROM: Final = f"{_INBOX} AND i.seq >= $2 AND d.kind = 'chat'{{peer}} ORDER BY i.seq LIMIT $3"
#: Only the conversation between the inbox's owner ($1) and $4.
_WITH_PEER: Final = (
    " AND ((d.sender = $4 AND d.recipient = $1) OR (d.sender = $1 AND d.recipient = $4))"
)
#: A message (not a change) by id, from either table: a room message has a
#: room, a direct one a recipient (the last column). Each half is one
#: unique index lookup.
_BY_ID: Final = (
    f"SELECT {MESSAGE_COLUMNS}, CAST(NULL AS TEXT) FROM messages"
    " WHERE message_id = $1 AND kind = 'chat'"
    " UNION ALL"
    " SELECT NULL, body, sender, NULL, message_id, ts_ms, file, kind, NULL, NULL, mentions,"
    " edited_ms, deleted_ms, recipient FROM direct_messages"
    " WHERE message_id = $1 AND kind = 'chat'"
)
#: Reactions to the messages ``IN`` a list; each with its time, for their order.
_REACTIONS: Final = "SELECT message_id, emoji, name, ts_ms FROM reactions WHERE message_id"
#: Live replies per thread root ``IN`` a list (the caller adds the rest).
_REPLY_COUNTS: Final = "SELECT thread, count(*) FROM messages WHERE thread"
#: What a reply quotes of the messages ``IN`` a list.
_QUOTED: Final = "SELECT message_id, sender, body, deleted_ms FROM messages WHERE message_id"
#: The messages a batch's changes name (``$1``: the list), in id order,
#: each row locked with ``{lock}`` (PostgreSQL's ``FOR UPDATE``: two nodes
#: changing one message at once take turns; SQLite has one writer): what
#: :func:`load_targets` reads.
_TARGET_MESSAGES: Final = (
    "SELECT * FROM (SELECT message_id, sender, room, CAST(NULL AS TEXT) AS recipient,"
    " deleted_ms FROM messages WHERE kind = 'chat' AND message_id {ids}"
    " ORDER BY message_id{lock}) AS m"
    " UNION ALL SELECT * FROM (SELECT message_id, sender, CAST(NULL AS TEXT), recipient,"
    " deleted_ms FROM direct_messages WHERE kind = 'chat' AND message_id {ids}"
    " ORDER BY message_id{lock}) AS d"
)
_TARGET_REACTIONS: Final = "SELECT message_id, emoji, name FROM reactions WHERE message_id {ids}"
#: What changes do to their messages (:func:`apply_changes`).
_EDIT: Final = "UPDATE messages SET body = $1, edited_ms = $2 WHERE message_id = $3"
_EDIT_DIRECT: Final = "UPDATE direct_messages SET body = $1, edited_ms = $2 WHERE message_id = $3"
_ADD_REACTION: Final = (
    "INSERT INTO reactions (message_id, emoji, name, ts_ms) VALUES ($1, $2, $3, $4)"
    " ON CONFLICT DO NOTHING"
)
_REMOVE_REACTION: Final = "DELETE FROM reactions WHERE message_id = $1 AND emoji = $2 AND name = $3"
#: A delete erases the text, file and mentions of the message and the texts
#: of its edits (the tombstone keeps its seq), and its reactions. A file
#: message keeps only its file's size (``{"size": N}``, for the sender's
#: upload quota: deleting a file does not give its bytes back);
#: ``SIZE`` is the backend's :attr:`SQLStore._FILE_SIZE`.
_ERASE: Final = (
    "UPDATE {table} SET body = '', mentions = NULL, deleted_ms = $1,"
    " file = CASE WHEN file IS NULL THEN NULL"
    " ELSE '{{\"size\":' || CAST(SIZE AS TEXT) || '}}' END WHERE message_id = $2"
)
_ERASE_EDITS: Final = "UPDATE messages SET body = '' WHERE target = $1 AND kind = 'edit'"
_ERASE_DIRECT_EDITS: Final = (
    "UPDATE direct_messages SET body = '' WHERE target = $1 AND kind = 'edit'"
)
_ERASE_REACTIONS: Final = "DELETE FROM reactions WHERE message_id = $1"
#: A deleted message's notifications not yet delivered carry its text.
_ERASE_NOTIFICATIONS: Final = "DELETE FROM notifications WHERE message_id = $1"
_FILE_DIGESTS: Final = (
    "SELECT file FROM messages WHERE file IS NOT NULL"
    " UNION SELECT file FROM direct_messages WHERE file IS NOT NULL"
)
#: A sender's file messages since ``$2``; each half uses its ``*_files`` index.
_FILES_SINCE: Final = (
    "SELECT file FROM messages WHERE sender = $1 AND ts_ms >= $2 AND file IS NOT NULL"
    " UNION ALL SELECT file FROM direct_messages"
    " WHERE sender = $1 AND ts_ms >= $2 AND file IS NOT NULL"
)
_CREATE_USER: Final = (
    "INSERT INTO users (name, name_key, password_hash, created_ms)"
    " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING"
)
#: A user's columns, as :func:`_user_from_row` reads them (of the alias ``u``).
_USER_COLUMNS: Final = (
    "u.name, u.password_hash, u.created_ms, u.hide_receipts, u.admin, u.banned_until_ms,"
    " u.ban_reason"
)
_GET_USER: Final = f"SELECT {_USER_COLUMNS} FROM users u WHERE u.name_key = $1"
#: A room is there (not deleted) unless no message came since it was deleted
#: (schema version 8: a deleted room's row keeps its seqs).
_LIVE: Final = "(erased_seq IS NULL OR last_seq > erased_seq)"
_LIVE_R: Final = "(r.erased_seq IS NULL OR r.last_seq > r.erased_seq)"
#: A new room, or a deleted one's name taken again (its seqs go on).
_CREATE_ROOM: Final = (
    "INSERT INTO rooms (name, last_seq, created_ms, private, owner)"
    " VALUES ($1, 0, $2, $3, $4) ON CONFLICT (name) DO UPDATE SET"
    " created_ms = excluded.created_ms, private = excluded.private, owner = excluded.owner,"
    " erased_seq = NULL WHERE rooms.erased_seq = rooms.last_seq"
)
_ADD_MEMBER: Final = (
    "INSERT INTO room_members (room, name, added_ms) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
)
#: Rooms with their rules, one row per member (one row, member NULL, for none).
_ACCESS: Final = (
    "SELECT r.name, r.private, r.owner, m.name, r.receipts FROM rooms r"
    " LEFT JOIN room_members m ON m.room = r.name"
)
_ROOM_ACCESS: Final = f"{_ACCESS} WHERE r.name = $1 AND {_LIVE_R}"
_VISIBLE_ROOMS: Final = (
    f"{_ACCESS} WHERE {_LIVE_R} AND (r.private = 0 OR r.owner = $1"
    " OR r.name IN (SELECT room FROM room_members WHERE name = $1))"
)
#: One retention chunk: up to $2 room messages older than $1; then the ids
#: of up to $2 such direct messages, whose inbox rows and rows are deleted.
_PRUNE_MESSAGES: Final = (
    "DELETE FROM messages WHERE (room, seq) IN"
    " (SELECT room, seq FROM messages WHERE ts_ms < $1 LIMIT $2)"
)
_OLD_DIRECT: Final = "SELECT message_id FROM direct_messages WHERE ts_ms < $1 LIMIT $2"
_PRUNE_INBOX: Final = "DELETE FROM inbox WHERE message_id = $1"
_PRUNE_DIRECT: Final = "DELETE FROM direct_messages WHERE message_id = $1"
#: Notifications older than the history kept: their text goes with the messages.
_PRUNE_NOTIFICATIONS: Final = "DELETE FROM notifications WHERE created_ms < $1"
#: Sessions expired or revoked before $1 (a day ago: every node has seen the revocation).
_PRUNE_SESSIONS: Final = "DELETE FROM sessions WHERE expires_ms < $1 OR revoked_ms < $1"

# -- read state -------------------------------------------------------------------------

#: Moves a marker forward only, however the writes of two nodes interleave.
_SAVE_MARKER: Final = (
    "INSERT INTO read_markers (name, stream, seq, updated_ms) VALUES ($1, $2, $3, $4)"
    " ON CONFLICT (name, stream) DO UPDATE SET seq = excluded.seq,"
    " updated_ms = excluded.updated_ms WHERE read_markers.seq < excluded.seq"
)
_MARKERS: Final = "SELECT stream, seq FROM read_markers WHERE name = $1"
_MARKER: Final = "SELECT seq FROM read_markers WHERE name = $1 AND stream = $2"
#: Unread messages of a room in ``($3, $4]`` not from $2, and those naming $2
#: (``$5``: the LIKE pattern of the name inside the ``mentions`` JSON list).
_UNREAD_IN_ROOM: Final = (
    "SELECT count(*), coalesce(sum(CASE WHEN mentions LIKE $5 ESCAPE '!' THEN 1 ELSE 0 END), 0)"
    " FROM messages WHERE room = $1 AND seq > $3 AND seq <= $4 AND kind = 'chat'"
    " AND deleted_ms IS NULL AND sender <> $2"
)
_LAST_MESSAGE: Final = (
    "SELECT seq, ts_ms FROM messages WHERE room = $1 AND kind = 'chat' AND deleted_ms IS NULL"
    " ORDER BY seq DESC LIMIT 1"
)
_INBOX_MESSAGES: Final = (
    "FROM inbox i JOIN direct_messages d ON d.message_id = i.message_id"
    " WHERE i.owner = $1 AND d.kind = 'chat'"
)
_UNREAD_DIRECT: Final = (
    f"SELECT d.sender, i.seq, d.mentions {_INBOX_MESSAGES} AND i.seq > $2"
    " AND d.deleted_ms IS NULL AND d.sender <> $1 ORDER BY i.seq"
)
_LAST_DIRECT: Final = (
    f"SELECT i.seq, d.ts_ms {_INBOX_MESSAGES} AND d.deleted_ms IS NULL{{peer}}"
    " ORDER BY i.seq DESC LIMIT 1"
)
_READERS: Final = (
    "SELECT r.name, r.seq FROM read_markers r JOIN users u ON u.name = r.name"
    " WHERE r.stream = $1 AND r.seq >= $2 AND u.hide_receipts = 0 ORDER BY r.seq DESC LIMIT $3"
)
_READER_COUNT: Final = "SELECT count(*) FROM read_markers WHERE stream = $1"
#: The newest message between $1 and $2 at seq $3 or before in $1's stream: its seq in $2's.
_DIRECT_SEQ_FOR: Final = (
    "SELECT o.seq FROM inbox i JOIN direct_messages d ON d.message_id = i.message_id"
    " JOIN inbox o ON o.message_id = i.message_id AND o.owner = $2"
    " WHERE i.owner = $1 AND i.seq <= $3 AND d.kind = 'chat'"
    " AND ((d.sender = $1 AND d.recipient = $2) OR (d.sender = $2 AND d.recipient = $1))"
    " ORDER BY i.seq DESC LIMIT 1"
)
_DIRECT_PEERS: Final = (
    f"SELECT DISTINCT CASE WHEN d.sender = $1 THEN d.recipient ELSE d.sender END"
    f" {_INBOX_MESSAGES} AND i.seq > $2 AND i.seq <= $3 AND d.sender <> d.recipient"
)
_HIDE_RECEIPTS: Final = "UPDATE users SET hide_receipts = $2 WHERE name = $1"
_ROOM_RECEIPTS: Final = "UPDATE rooms SET receipts = $2 WHERE name = $1"
_ADD_NOTIFICATION: Final = (
    "INSERT INTO notifications (id, message_id, body, attempts, due_ms, created_ms)"
    " VALUES ($1, $2, $3, 0, $4, $4) ON CONFLICT DO NOTHING"
)
_DUE_NOTIFICATIONS: Final = (
    "SELECT id, body, attempts FROM notifications WHERE due_ms <= $1 ORDER BY due_ms LIMIT $2"
)
#: Taken only if no other node took it since it was read (its attempts would have moved).
_CLAIM_NOTIFICATION: Final = (
    "UPDATE notifications SET attempts = attempts + 1, due_ms = $3 WHERE id = $1 AND attempts = $2"
)
_RETRY_NOTIFICATION: Final = "UPDATE notifications SET due_ms = $2 WHERE id = $1"
_FINISH_NOTIFICATION: Final = "DELETE FROM notifications WHERE id = $1"


# -- moderation ---------------------------------------------------------------------------

_SETTINGS_COLUMNS: Final = "name, private, owner, topic, title, slow_mode, receipts"
_ROOM_SETTINGS: Final = f"SELECT {_SETTINGS_COLUMNS} FROM rooms WHERE name = $1 AND {_LIVE}"
_ALL_ROOMS: Final = f"SELECT {_SETTINGS_COLUMNS} FROM rooms WHERE {_LIVE}"
_MODERATORS: Final = "SELECT name FROM room_moderators WHERE room = $1"
_ALL_MODERATORS: Final = "SELECT room, name FROM room_moderators"
_BANS: Final = (
    "SELECT name, until_ms, reason, by_name, at_ms FROM room_bans WHERE room = $1 AND until_ms > $2"
)
_MUTES: Final = (
    "SELECT name, until_ms, by_name, at_ms FROM room_mutes WHERE room = $1 AND until_ms > $2"
)
_ADD_MODERATOR: Final = (
    "INSERT INTO room_moderators (room, name) VALUES ($1, $2) ON CONFLICT DO NOTHING"
)
_REMOVE_MODERATOR: Final = "DELETE FROM room_moderators WHERE room = $1 AND name = $2"
_REMOVE_MEMBER: Final = "DELETE FROM room_members WHERE room = $1 AND name = $2"
_ROOM_OWNER: Final = f"SELECT owner, private FROM rooms WHERE name = $1 AND {_LIVE}"
_SET_OWNER: Final = "UPDATE rooms SET owner = $2 WHERE name = $1"
_SET_BAN: Final = (
    "INSERT INTO room_bans (room, name, until_ms, reason, by_name, at_ms)"
    " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (room, name) DO UPDATE SET"
    " until_ms = excluded.until_ms, reason = excluded.reason, by_name = excluded.by_name,"
    " at_ms = excluded.at_ms"
)
_SET_MUTE: Final = (
    "INSERT INTO room_mutes (room, name, until_ms, by_name, at_ms)"
    " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (room, name) DO UPDATE SET"
    " until_ms = excluded.until_ms, by_name = excluded.by_name, at_ms = excluded.at_ms"
)
#: A lift deletes the row, ended or not; it lifted something if the row had not ended.
_LIFT: Final = "DELETE FROM {table} WHERE room = $1 AND name = $2 RETURNING until_ms"
#: A public room stored with no owner (the lobby, a room a guest made), or a deleted
#: room's row made live again (its seqs carry on).
_STORE_PUBLIC_ROOM: Final = (
    "INSERT INTO rooms (name, last_seq, created_ms, private, owner)"
    " VALUES ($1, 0, $2, 0, NULL) ON CONFLICT (name) DO UPDATE SET"
    " created_ms = excluded.created_ms, private = 0, owner = NULL,"
    " erased_seq = NULL WHERE rooms.erased_seq = rooms.last_seq"
)
#: The same, but a deleted room stays deleted: its rules are not read.
_STORE_PUBLIC_ROOM_ONCE: Final = (
    "INSERT INTO rooms (name, last_seq, created_ms, private, owner)"
    " VALUES ($1, 0, $2, 0, NULL) ON CONFLICT (name) DO NOTHING"
)
#: None keeps a setting as it is.
_UPDATE_ROOM: Final = (
    "UPDATE rooms SET topic = coalesce($2, topic), title = coalesce($3, title),"
    f" slow_mode = coalesce($4, slow_mode) WHERE name = $1 AND {_LIVE}"
)
_ADD_AUDIT: Final = (
    "INSERT INTO audit (room, at_ms, actor, action, target, reason, detail)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id"
)
_AUDIT_LOG: Final = (
    "SELECT id, room, at_ms, actor, action, target, reason, detail FROM audit"
    " WHERE room = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
)
#: Deleting a room resets its row to a public room's defaults and marks it
#: erased at its last seq; the room is gone until a message or a create comes.
#: A deleted room keeps whether it was private: a message that arrives after the
#: deletion (from a node not told yet) lands where only admins may read it.
_ERASE_ROOM_ROW: Final = (
    "UPDATE rooms SET owner = NULL, topic = '', title = '', slow_mode = 0,"
    f" receipts = 1, erased_seq = last_seq WHERE name = $1 AND {_LIVE} RETURNING last_seq"
)
_ROOM_MESSAGE_IDS: Final = "SELECT message_id FROM messages WHERE room = $1"
#: The newest event of a deleted room stays as an empty deleted message, so a
#: client's seqs and the room's stay one line.
_TOMBSTONE: Final = (
    "UPDATE messages SET kind = 'chat', body = '', file = NULL, mentions = NULL,"
    " target = NULL, thread = NULL, edited_ms = NULL, client_id = NULL,"
    " deleted_ms = coalesce(deleted_ms, $3) WHERE room = $1 AND seq = $2"
)
#: Each a room's rows of one table, which a deleted room takes with it.
_ROOM_ROWS: Final = (
    "DELETE FROM room_members WHERE room = $1",
    "DELETE FROM room_moderators WHERE room = $1",
    "DELETE FROM room_bans WHERE room = $1",
    "DELETE FROM room_mutes WHERE room = $1",
    "DELETE FROM read_markers WHERE stream = $1",
)

# -- sessions and accounts ----------------------------------------------------------------

_USER_NAME: Final = "SELECT name FROM users WHERE name_key = $1"
#: Stored under the user's name as registered; nothing for a user who is not there.
_CREATE_SESSION: Final = (
    "INSERT INTO sessions (id, name, refresh_hash, created_ms, expires_ms, revoked_ms)"
    " SELECT CAST($1 AS TEXT), name, CAST($3 AS TEXT), CAST($4 AS BIGINT),"
    " CAST($5 AS BIGINT), CAST($6 AS BIGINT) FROM users WHERE name_key = $2"
)
_SESSION_USER: Final = (
    "SELECT s.id, s.name, s.refresh_hash, s.created_ms, s.expires_ms, s.revoked_ms,"
    f" s.previous_hash, {_USER_COLUMNS}"
    " FROM sessions s JOIN users u ON u.name = s.name WHERE s.id = $1"
)
#: The compare-and-set of a refresh: the old hash, not revoked, not expired at $5.
_ROTATE_SESSION: Final = (
    "UPDATE sessions SET previous_hash = refresh_hash, refresh_hash = $3, expires_ms = $4"
    " WHERE id = $1 AND refresh_hash = $2 AND revoked_ms IS NULL AND expires_ms > $5"
)
#: A user's live sessions revoked at $2; ``{which}`` narrows them (to $3, or all but $3).
_REVOKE_SESSIONS: Final = (
    "UPDATE sessions SET revoked_ms = $2"
    " WHERE name = $1 AND revoked_ms IS NULL AND expires_ms > $2{which} RETURNING id"
)
#: By the partial index sessions_revoked.
_REVOKED_SINCE: Final = "SELECT id, name FROM sessions WHERE revoked_ms >= $1"
_SET_PASSWORD: Final = "UPDATE users SET password_hash = $2 WHERE name_key = $1 RETURNING name"
_SET_ADMIN: Final = "UPDATE users SET admin = $2 WHERE name_key = $1"
_SET_USER_BAN: Final = (
    "UPDATE users SET banned_until_ms = $2, ban_reason = $3 WHERE name_key = $1 RETURNING name"
)
_USER_ROW: Final = "SELECT name, created_ms FROM users WHERE name_key = $1"
#: A deleted user's messages since they registered ($1 the name, $2 then): what
#: was said under the name before was a guest's. Chat rows, then their edits.
_USER_MESSAGES: Final = (
    "SELECT message_id FROM {table} WHERE sender = $1 AND ts_ms >= $2 AND kind = 'chat'"
)
_BLANK_MESSAGES: Final = (
    "UPDATE {table} SET body = '', file = NULL, mentions = NULL,"
    " deleted_ms = coalesce(deleted_ms, $3) WHERE sender = $1 AND ts_ms >= $2 AND kind = 'chat'"
)
_BLANK_EDITS: Final = (
    "UPDATE {table} SET body = '' WHERE sender = $1 AND ts_ms >= $2 AND kind = 'edit'"
)
#: What else a deleted user takes with them; $1 is the name as registered,
#: $2 the LIKE pattern of their name as a notification's ``user``.
_USER_ROWS: Final = (
    "DELETE FROM reactions WHERE name = $1",
    "DELETE FROM read_markers WHERE name = $1",
    "DELETE FROM room_members WHERE name = $1",
    "DELETE FROM room_moderators WHERE name = $1",
    "DELETE FROM room_bans WHERE name = $1",
    "DELETE FROM room_mutes WHERE name = $1",
    "UPDATE rooms SET owner = NULL WHERE owner = $1",
    # Their direct stream: its rows, then the events no stream lists any
    # more (mentions of them, messages to themself).
    "DELETE FROM inbox WHERE owner = $1",
    "DELETE FROM direct_messages WHERE (recipient = $1 OR sender = $1)"
    " AND NOT EXISTS (SELECT 1 FROM inbox i WHERE i.message_id = direct_messages.message_id)",
    "DELETE FROM users WHERE name = $1",
)
_USER_NOTIFICATIONS: Final = "DELETE FROM notifications WHERE body LIKE $1 ESCAPE '!'"


# -- search -------------------------------------------------------------------------------

#: A room message's columns, as :func:`~.batch.chat_from_row` reads them, of the alias ``m``.
ROOM_HIT_COLUMNS: Final = ", ".join(f"m.{column.strip()}" for column in MESSAGE_COLUMNS.split(","))
#: How many columns of a search's row are the message's (the same for both kinds);
#: the position's follow, then the score.
_HIT_WIDTH: Final = ROOM_HIT_COLUMNS.count(",") + 1
#: Where each kind's row has the message's time.
_HIT_MS: Final = {"rooms": 5, "direct": 4}
#: A direct message's columns in ``$2``'s stream, as :func:`~.batch.direct_from_row` reads them.
DIRECT_HIT_COLUMNS: Final = (
    "d.sender, d.recipient, d.body, d.message_id, d.ts_ms, i.seq, d.file, d.kind,"
    " d.target, d.room, d.mentions, d.edited_ms, d.deleted_ms"
)
#: The rooms reader ``$2`` may read now: public ones, and private ones they own or
#: belong to (none but public ones for a guest, whose ``$2`` is NULL).
_READABLE_ROOMS: Final = (
    "m.room IN (SELECT name FROM rooms WHERE private = 0 OR owner = $2"
    " UNION SELECT room FROM room_members WHERE name = $2)"
)
#: Not the rooms reader ``$2`` is banned from at ``{now}`` (by the index room_bans_name).
_NOT_BANNED: Final = (
    "m.room NOT IN (SELECT room FROM room_bans WHERE name = $2 AND until_ms > {now})"
)


@dataclass(frozen=True, slots=True)
class SearchSQL:
    """A backend's engine, as a search uses it.

    ``rooms`` and ``direct`` select the messages matching the engine's query
    ``$1`` (room messages as ``m``; direct ones as ``d`` in reader ``$2``'s
    inbox ``i``): their columns, then ``position``'s, then ``{score}`` (how
    well it matches, higher is better, or 0 when newest first). ``position``
    orders each kind newest first in the way the index reads fastest, and
    is what a cursor keeps (of types ``types``).
    """

    rooms: str
    direct: str
    position: tuple[str, str]
    types: tuple[type, ...]
    score: tuple[str, str]
    compile: Callable[[Query], str]


class SQLStore(BatchedAppends):
    """A store over a SQL database: every read, account, room, file and retention query.

    Args:
        history_days: delete messages older than this many days (0 keeps
            everything). At least 1, so resends are recognised for 24 h.
        clock: wall-clock seconds, for message times and retention.
        max_queued: most messages waiting for the writers; past it an
            append fails with :class:`~roomcast.exceptions.StoreBusy`.
        place: where the messages are, for logs and errors (a path, or
            ``PostgreSQL at host:port``: never a password).
        lanes: the queue's lanes, and how many batches the backend may
            write at once, each in its own transaction on writer ``0`` to
            ``lanes - 1`` (1 for SQLite, which has one writer).
    """

    #: The backend's logger (``roomcast.store.<backend>``).
    _log: ClassVar[logging.Logger]
    #: Which engine: ``sqlite`` or ``postgres`` (each has its own migration statements).
    _DIALECT: ClassVar[str]
    #: ``name IN`` a list passed as ``$1`` (as :meth:`_names` makes it).
    _NAMES_IN: ClassVar[str]
    #: A ``file`` column's ``size`` (the JSON of ``batch.file_to_column``), as a number.
    _FILE_SIZE: ClassVar[str]
    #: The backend's full-text engine.
    _SEARCH: ClassVar[SearchSQL]

    def __init__(
        self,
        *,
        history_days: int,
        clock: Callable[[], float],
        max_queued: int = MAX_QUEUED,
        place: str,
        lanes: int = 1,
    ) -> None:
        if history_days < 0:
            raise ValueError("history_days must be 0 (keep everything) or more")
        self.history_days = history_days
        self._clock = clock
        self._place = place
        self._queue = WriteQueue(max_queued, lanes)
        #: The writers with no batch, and each writer's batch being written.
        self._free_writers = list(reversed(range(lanes)))
        self._jobs: list[asyncio.Future[Any] | None] = [None] * lanes
        #: A :meth:`_kick` is scheduled for this loop turn.
        self._kick_scheduled = False
        #: Not open (yet, or any more): appends and reads are refused.
        self._closed = True
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Why the last batch failed, until one is stored again (logged once).
        self._write_error: str | None = None
        self._pruner: asyncio.Task[None] | None = None
        #: Called with (messages, seconds) after each batch is written (metrics).
        self.on_batch: Callable[[int, float], None] | None = None

    # -- the seam: each backend's own ---------------------------------------------------

    async def _connect(self) -> None:
        """Open the connections, migrate (:meth:`_migrate`) and start the writer."""
        raise NotImplementedError

    async def _disconnect(self) -> None:
        """Stop the writer and close the connections (everything queued is stored)."""
        raise NotImplementedError

    def _write_batch(
        self, writer: int, batch: list[Pending]
    ) -> Awaitable[list[AppendResult | DirectResult | Exception]]:
        """Store ``batch`` in one transaction (as ``writer``): each draft's result, in order.

        Each writer has one batch at a time; the batches of different writers
        run at once (never two with one room or conversation), so what two
        transactions may both lock is the backend's to order (never a
        deadlock).
        """
        raise NotImplementedError

    def _writer_running(self) -> bool:
        """Whether the backend can write batches now (its connections are open)."""
        raise NotImplementedError

    def _writer_idle(self) -> None:
        """Every lane has finished what was queued: the writer's time is free."""

    async def _read(self, job: Job[T]) -> T:
        """Run ``job`` on a reading connection, driver errors as StoreError."""
        raise NotImplementedError

    async def _write_now(self, job: Job[T]) -> T:
        """Run ``job`` in a transaction of its own, driver errors as StoreError."""
        raise NotImplementedError

    async def _migration(self, job: Job[T]) -> T:
        """Run ``job`` in a transaction under the schema lock (one migrator at a time)."""
        raise NotImplementedError

    def _pruning(self) -> contextlib.AbstractAsyncContextManager[Prune | None]:
        """How to run each retention chunk, or None when another node is pruning."""
        raise NotImplementedError

    def _search_pruned(self) -> None:
        """Retention deleted messages: their words are to leave the search index too."""

    def _inbox_gone(self, owner: str) -> None:
        """``owner``'s inbox was deleted with them (in the deleting transaction): a seq
        the backend keeps of it is no more (a name registered again starts at 0)."""

    async def _erased(self, tables: tuple[str, ...]) -> None:
        """A room or an account was erased from ``tables`` (committed): have the old
        text leave the database's files too, as a message delete's does."""

    async def _search_read(self, job: Job[T]) -> T:
        """Run a search's ``job`` as :meth:`_read` does, for :data:`SEARCH_TIMEOUT` at most.

        Raises:
            InvalidRequest: it took longer (:data:`SEARCH_TOO_LONG`).
        """
        raise NotImplementedError

    @staticmethod
    def _names(names: list[str]) -> Any:
        """``names`` as the parameter of :attr:`_NAMES_IN`."""
        raise NotImplementedError

    def _reason(self, exc: BaseException) -> str:
        """One line saying why a batch failed."""
        return str(exc) or type(exc).__name__

    # -- life cycle ----------------------------------------------------------------------

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._connect()
        self._closed = False
        # The first pass runs before the server accepts anyone, so no client is
        # told about messages that are about to go. Without history_days it
        # still forgets ended sessions.
        await self._prune_logged()
        self._pruner = asyncio.ensure_future(self._prune_forever())
        self._log.debug("storing messages in %s", self._place)

    async def close(self) -> None:
        if self._closed:
            return
        await self.flush()
        while self._writer_running() and not self._queue.idle():
            # Queued by a callback of the last batch's futures, as flush returned.
            await self.flush()
        self._closed = True
        if self._pruner is not None:
            self._pruner.cancel()
            await asyncio.gather(self._pruner, return_exceptions=True)
            self._pruner = None
        await self._disconnect()

    async def ping(self) -> None:
        await self._read(_ping)

    async def _migrate(self) -> None:
        """Bring the schema up to :data:`LATEST_VERSION`, one migration per transaction.

        Each transaction re-reads the version under the schema lock, so two
        processes starting together do not both migrate.
        """
        job = functools.partial(
            _migrate_once, now_ms=int(self._clock() * 1000), dialect=self._DIALECT
        )
        while (migration := await self._migration(job)) is not None:
            self._log.debug("database schema migrated to version %d", migration.version)

    # -- writes ----------------------------------------------------------------------------

    def submit(self, draft: Draft) -> asyncio.Future[Any]:
        loop = self._loop or asyncio.get_running_loop()
        refusal = StoreError("the store is closed") if self._closed else None
        refusal = refusal or unstorable(draft.text, draft.client_id)
        if refusal is not None:
            refused: asyncio.Future[Any] = loop.create_future()
            refused.set_exception(refusal)
            return refused
        future, lane = self._queue.add(loop, draft)
        if lane is not None and self._free_writers and not self._kick_scheduled:
            # The writers take everything queued in this loop turn.
            # A batch holds many connections' messages: its callbacks (and
            # log lines) run in a context of their own, not in the sender's.
            self._kick_scheduled = True
            loop.call_soon(self._kick, context=contextvars.Context())
        return future

    def _kick(self) -> None:
        """Hand the free writers the batches the queue gives them now (maybe none)."""
        self._kick_scheduled = False
        if not self._writer_running():
            return
        free = self._free_writers
        for batch, lanes in self._queue.take(len(free)):
            writer = free.pop()
            job = asyncio.ensure_future(self._write_batch(writer, batch))
            self._jobs[writer] = job
            done = functools.partial(self._written, writer, batch, lanes, time.perf_counter())
            job.add_done_callback(done)

    def _written(
        self,
        writer: int,
        batch: list[Pending],
        lanes: tuple[int, ...],
        started: float,
        job: asyncio.Future[list[AppendResult | DirectResult | Exception]],
    ) -> None:
        """``writer`` finished ``batch``: resolve its futures, hand out what waits."""
        self._jobs[writer] = None
        self._free_writers.append(writer)
        outcome: Sequence[AppendResult | DirectResult | Exception] | BaseException
        if job.cancelled():
            outcome = StoreError("write cancelled")
        else:
            outcome = job.exception() or job.result()
        self._batch_done(batch, outcome, time.perf_counter() - started, lanes)
        queue = self._queue
        if queue.queued:
            self._kick()
        elif queue.idle():
            queue.wake_idle()
            self._writer_idle()

    async def _stop_lanes(self) -> None:
        """Cancel the batches being written (their drafts fail) and wait for them to end."""
        jobs = [job for job in self._jobs if job is not None]
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)

    def _batch_done(
        self,
        batch: list[Pending],
        outcome: Sequence[AppendResult | DirectResult | Exception] | BaseException,
        seconds: float,
        lanes: tuple[int, ...] = (0,),
    ) -> None:
        """A writer finished ``batch`` (which held ``lanes``): report it, resolve its futures."""
        if self.on_batch is not None:
            try:
                self.on_batch(len(batch), seconds)
            except Exception:  # a metrics hook must not stop the writer
                self._log.exception("on_batch failed")
        if not isinstance(outcome, BaseException):
            if self._write_error is not None:
                self._log.warning("writes to %s work again", self._place)
                self._write_error = None
            self._queue.finish(batch, outcome, lanes=lanes)
            return
        reason = self._reason(outcome)
        if self._write_error != reason:
            self._log.error("cannot write to %s: %s", self._place, reason)
        self._write_error = reason
        self._queue.finish(batch, outcome, reason, lanes)

    async def flush(self) -> None:
        # Every lane: the queue is idle only when none waits or writes.
        if self._writer_running():
            await self._queue.wait_idle()

    # -- room messages ---------------------------------------------------------------

    async def last_seq(self, room: str) -> int:
        value = await self._read(lambda conn: conn.fetchval(_LAST_SEQ, room))
        return int(value) if value is not None else 0

    async def first_seq(self, room: str) -> int:
        return int(await self._read(lambda conn: conn.fetchval(_FIRST_SEQ, room)))

    async def history(
        self, room: str, *, before: int | None = None, limit: int = 50, thread: Thread = None
    ) -> tuple[list[ChatMessage], bool]:
        bound = before if before is not None else _NEWEST

        async def job(conn: SQLConn) -> tuple[list[ChatMessage], bool]:
            if thread is None:
                rows = await conn.fetch(_HISTORY, room, bound, limit + 1)
            else:
                rows = await conn.fetch(_THREAD, room, bound, limit + 1, thread)
            page = [chat_from_row(row) for row in reversed(rows[:limit])]
            return await self._as_now(conn, page), len(rows) > limit

        return await self._read(job)

    async def around(
        self, room: str, seq: int, *, limit: int
    ) -> tuple[list[ChatMessage], bool, bool]:
        older_limit = limit // 2

        async def job(conn: SQLConn) -> tuple[list[ChatMessage], bool, bool]:
            older = await conn.fetch(_HISTORY, room, seq, older_limit + 1)
            newer = await conn.fetch(_FROM, room, seq, limit - older_limit + 1)
            page = [chat_from_row(row) for row in reversed(older[:older_limit])]
            page += [chat_from_row(row) for row in newer[: limit - older_limit]]
            more_older = len(older) > older_limit
            return await self._as_now(conn, page), more_older, len(newer) > limit - older_limit

        return await self._read(job)

    async def since(self, room: str, seq: int, *, limit: int) -> list[ChatMessage | Change]:
        rows = await self._read(lambda conn: conn.fetch(_SINCE, room, seq, limit))
        return [message_from_row(row) for row in rows]

    async def message_by_id(self, message_id: str) -> ChatMessage | DirectMessage | None:
        row = await self._read(lambda conn: conn.fetchrow(_BY_ID, message_id))
        if row is None:
            return None
        room, body, sender, _seq, found_id, ts_ms, file, _kind, *_rest = row
        names, edited, gone, recipient = tuple(row)[10:]
        if room is None:
            return DirectMessage(
                sender,
                recipient,
                body,
                found_id,
                ts_ms,
                file=file_from_column(file),
                mentions=names_from_column(names),
                edited_ms=edited,
                deleted=gone is not None,
            )
        return chat_from_row(tuple(row)[:13])

    async def _as_now(self, conn: SQLConn, page: list[ChatMessage]) -> list[ChatMessage]:
        """``page`` with what history shows beside each message: reactions, replies, quotes."""
        if not page:
            return page
        ids = self._names([m.message_id for m in page])
        reactions = _group_reactions(await conn.fetch(f"{_REACTIONS} {self._NAMES_IN}", ids))
        counts = {
            row[0]: int(row[1])
            for row in await conn.fetch(
                f"{_REPLY_COUNTS} {self._NAMES_IN} AND kind = 'chat' AND deleted_ms IS NULL"
                " GROUP BY thread",
                ids,
            )
        }
        answered = {m.reply_to for m in page if m.reply_to is not None}
        quotes: dict[str, Quote] = {}
        if answered:
            rows = await conn.fetch(f"{_QUOTED} {self._NAMES_IN}", self._names(sorted(answered)))
            quotes = {row[0]: Quote.of(row[1], row[2], row[3] is not None) for row in rows}
        out = []
        for message in page:
            extra: dict[str, Any] = {}
            if message.message_id in reactions:
                extra["reactions"] = reactions[message.message_id]
            if message.message_id in counts:
                extra["reply_count"] = counts[message.message_id]
            if message.reply_to is not None and message.reply_to in quotes:
                extra["quote"] = quotes[message.reply_to]
            out.append(replace(message, **extra) if extra else message)
        return out

    # -- direct messages -------------------------------------------------------------

    async def direct_last_seq(self, owner: str) -> int:
        value = await self._read(lambda conn: conn.fetchval(_DM_SEQ, owner))
        return int(value) if value is not None else 0

    async def direct_history(
        self, owner: str, *, before: int | None = None, limit: int = 50, peer: str | None = None
    ) -> tuple[list[DirectMessage], bool]:
        bound = before if before is not None else _NEWEST
        query, extra = _conversation(_INBOX_BEFORE, peer)

        async def job(conn: SQLConn) -> tuple[list[DirectMessage], bool]:
            rows = await conn.fetch(query, owner, bound, limit + 1, *extra)
            page = [direct_from_row(row) for row in reversed(rows[:limit])]
            return await self._with_reactions(conn, page), len(rows) > limit

        return await self._read(job)

    async def direct_around(
        self, owner: str, seq: int, *, limit: int, peer: str | None = None
    ) -> tuple[list[DirectMessage], bool, bool]:
        older_limit = limit // 2
        before, extra = _conversation(_INBOX_BEFORE, peer)
        after, _extra = _conversation(_INBOX_FROM, peer)

        async def job(conn: SQLConn) -> tuple[list[DirectMessage], bool, bool]:
            older = await conn.fetch(before, owner, seq, older_limit + 1, *extra)
            newer = await conn.fetch(after, owner, seq, limit - older_limit + 1, *extra)
            page = [direct_from_row(row) for row in reversed(older[:older_limit])]
            page += [direct_from_row(row) for row in newer[: limit - older_limit]]
            more_older = len(older) > older_limit
            more_newer = len(newer) > limit - older_limit
            return await self._with_reactions(conn, page), more_older, more_newer

        return await self._read(job)

    async def _with_reactions(
        self, conn: SQLConn, page: list[DirectMessage | Change | Mention]
    ) -> list[DirectMessage]:
        """The direct messages of ``page``, each with its reactions."""
        messages = [m for m in page if isinstance(m, DirectMessage)]
        if not messages:
            return messages
        ids = self._names([m.message_id for m in messages])
        found = _group_reactions(await conn.fetch(f"{_REACTIONS} {self._NAMES_IN}", ids))
        return [
            replace(m, reactions=found[m.message_id]) if m.message_id in found else m
            for m in messages
        ]

    async def direct_since(
        self, owner: str, seq: int, *, limit: int
    ) -> tuple[list[DirectMessage | Change | Mention], bool]:
        rows = await self._read(lambda conn: conn.fetch(_INBOX_AFTER, owner, seq, limit + 1))
        return [direct_from_row(row) for row in rows[:limit]], len(rows) > limit

    # -- files -------------------------------------------------------------------------

    async def file_digests(self) -> set[str]:
        rows = await self._read(lambda conn: conn.fetch(_FILE_DIGESTS))
        return {info.sha256 for row in rows if (info := file_from_column(row[0])) is not None}

    async def file_bytes_since(self, sender: str, since_ms: int) -> int:
        query = f"SELECT COALESCE(SUM({self._FILE_SIZE}), 0) FROM ({_FILES_SINCE}) AS f"
        return int(await self._read(lambda conn: conn.fetchval(query, sender, since_ms)))

    # -- users -----------------------------------------------------------------------------

    async def create_user(self, name: str, password_hash: str) -> bool:
        row = (name, name.lower(), password_hash, int(self._clock() * 1000))
        return await self._write_now(lambda conn: conn.execute(_CREATE_USER, *row)) == 1

    async def get_user(self, name: str) -> StoredUser | None:
        row = await self._read(lambda conn: conn.fetchrow(_GET_USER, name.lower()))
        return _user_from_row(row) if row is not None else None

    # -- rooms -----------------------------------------------------------------------------

    async def create_room(
        self, name: str, *, owner: str, private: bool, members: frozenset[str]
    ) -> bool:
        now_ms = int(self._clock() * 1000)

        async def job(conn: SQLConn) -> bool:
            if await conn.execute(_CREATE_ROOM, name, now_ms, int(private), owner) != 1:
                return False
            await _add_members(conn, name, members, now_ms)
            return True

        return await self._write_now(job)

    async def add_room_members(self, name: str, members: frozenset[str]) -> None:
        now_ms = int(self._clock() * 1000)
        await self._write_now(
            functools.partial(_add_members, room=name, members=members, now_ms=now_ms)
        )

    async def room_access(self, name: str) -> RoomAccess | None:
        rows = await self._read(lambda conn: conn.fetch(_ROOM_ACCESS, name))
        return _accesses(rows)[0] if rows else None

    async def known_rooms(self, names: list[str]) -> set[str]:
        if not names:
            return set()
        query = f"SELECT name FROM rooms WHERE name {self._NAMES_IN} AND {_LIVE}"
        rows = await self._read(lambda conn: conn.fetch(query, self._names(names)))
        return {row[0] for row in rows}

    async def list_rooms(self, user: str | None) -> list[RoomAccess]:
        rows = await self._read(lambda conn: conn.fetch(_VISIBLE_ROOMS, user))
        # By code point, as SQLite's BINARY and PostgreSQL's "C" collation order.
        return sorted(_accesses(rows), key=lambda access: access.name)

    # -- search ------------------------------------------------------------------------------

    async def search(self, search: SearchFilter) -> tuple[list[SearchHit], str | None]:
        kinds = [] if search.direct else ["rooms"]
        if search.reader is not None and search.room is None:
            kinds.append("direct")
        if search.relevance:
            return await self._search_best(search, kinds)
        return await self._search_newest(search, kinds)

    async def _search_newest(
        self, search: SearchFilter, kinds: list[str]
    ) -> tuple[list[SearchHit], str | None]:
        """Newest first: each kind read from where its last page ended, merged by time.

        The cursor keeps each kind's position, or False once a kind has no more.
        """
        state = read_cursor(search) or {}
        if not isinstance(state, dict):
            raise InvalidRequest("cursor is not one a search gave")
        match = self._SEARCH.compile(search.query)

        async def job(conn: SQLConn) -> dict[str, list[Sequence[Any]]]:
            found: dict[str, list[Sequence[Any]]] = {}
            for kind in kinds:
                after = state.get(kind)
                if after is False:
                    continue
                sql, args = self._search_sql(search, kind, match, after, search.limit + 1)
                found[kind] = await conn.fetch(sql, *args)
            return found

        found = await self._search_read(job)
        taken = {kind: 0 for kind in found}
        page: list[tuple[str, Sequence[Any]]] = []
        while len(page) < search.limit:
            heads = [
                (kind, rows[taken[kind]]) for kind, rows in found.items() if taken[kind] < len(rows)
            ]
            if not heads:
                break
            kind, row = max(heads, key=lambda head: _hit_ms(*head))
            taken[kind] += 1
            page.append((kind, row))
        more = False
        for kind, rows in found.items():
            if taken[kind] == len(rows):
                state[kind] = False  # fewer than a page and one were left: no more
            else:
                more = True
                if taken[kind]:
                    last = rows[taken[kind] - 1]
                    state[kind] = list(last[_HIT_WIDTH:-1])
        return [self._hit(search, kind, row) for kind, row in page], (
            write_cursor(search, state) if more else None
        )

    async def _search_best(
        self, search: SearchFilter, kinds: list[str]
    ) -> tuple[list[SearchHit], str | None]:
        """Best first: the matches up to the page's end ranked again, up to
        :data:`MAX_RELEVANCE_RESULTS`; the cursor is how many came before."""
        offset = read_cursor(search) or 0
        if not isinstance(offset, int) or not 0 <= offset < MAX_RELEVANCE_RESULTS:
            raise InvalidRequest("cursor is not one a search gave")
        match = self._SEARCH.compile(search.query)
        end = min(offset + search.limit, MAX_RELEVANCE_RESULTS)

        async def job(conn: SQLConn) -> list[tuple[str, Sequence[Any]]]:
            found = []
            for kind in kinds:
                sql, args = self._search_sql(search, kind, match, None, end + 1)
                found += [(kind, row) for row in await conn.fetch(sql, *args)]
            return found

        found = await self._search_read(job)
        found.sort(key=lambda item: (-float(item[1][-1]), -_hit_ms(*item)))
        more = len(found) > end and end < MAX_RELEVANCE_RESULTS
        hits = [self._hit(search, kind, row) for kind, row in found[offset:end]]
        return hits, write_cursor(search, end) if more else None

    def _search_sql(
        self, search: SearchFilter, kind: str, match: str, after: Any, limit: int
    ) -> tuple[str, list[Any]]:
        """The query for one kind of message (``rooms`` or ``direct``) and its arguments.

        Every value the user gave is an argument; the SQL is the backend's
        and this method's own.
        """
        engine = self._SEARCH
        args: list[Any] = [match, search.reader]

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        rooms = kind == "rooms"
        alias = "m" if rooms else "d"
        where = [f"{alias}.deleted_ms IS NULL"]
        if rooms:
            where.append(_READABLE_ROOMS)
            if search.reader is not None:
                where.append(_NOT_BANNED.format(now=arg(int(self._clock() * 1000))))
            if search.room is not None:
                where.append(f"m.room = {arg(search.room)}")
        elif search.peer is not None:
            peer = arg(search.peer)
            where.append(
                f"((d.sender = {peer} AND d.recipient = $2)"
                f" OR (d.sender = $2 AND d.recipient = {peer}))"
            )
        if search.sender is not None:
            where.append(f"{alias}.sender = {arg(search.sender)}")
        if search.after_ms is not None:
            where.append(f"{alias}.ts_ms > {arg(search.after_ms)}")
        if search.before_ms is not None:
            where.append(f"{alias}.ts_ms < {arg(search.before_ms)}")
        position = engine.position[0 if rooms else 1].split(", ")
        if after is not None:
            if not (
                isinstance(after, list)
                and len(after) == len(position)
                and all(_position_value(v, t) for v, t in zip(after, engine.types, strict=False))
            ):
                raise InvalidRequest("cursor is not one a search gave")
            where.append(f"({', '.join(position)}) < ({', '.join(arg(v) for v in after)})")
        newest = ", ".join(f"{column} DESC" for column in position)
        order = f"score DESC, {newest}" if search.relevance else newest
        score = engine.score[0 if rooms else 1] if search.relevance else "0"
        select = (engine.rooms if rooms else engine.direct).format(score=score)
        sql = f"{select} AND {' AND '.join(where)} ORDER BY {order} LIMIT {arg(limit)}"
        return sql, args

    @staticmethod
    def _hit(search: SearchFilter, kind: str, row: Sequence[Any]) -> SearchHit:
        if kind == "rooms":
            return SearchHit(chat_from_row(tuple(row)[:_HIT_WIDTH]))
        message = direct_from_row(tuple(row)[:_HIT_WIDTH])
        assert isinstance(message, DirectMessage)
        peer = message.to if message.sender == search.reader else message.sender
        return SearchHit(message, peer)

    # -- read state ----------------------------------------------------------------------------

    async def save_markers(self, markers: Sequence[Marker]) -> None:
        if not markers:
            return
        now_ms = int(self._clock() * 1000)
        furthest: dict[tuple[str, str], int] = {}
        for name, stream, seq in markers:  # one row per marker: a statement updates it once
            furthest[name, stream] = max(seq, furthest.get((name, stream), seq))
        # In key order: two nodes writing the same users' markers lock rows alike.
        rows = sorted((name, stream, seq) for (name, stream), seq in furthest.items())
        await self._write_now(lambda conn: self._upsert_markers(conn, rows, now_ms))

    @staticmethod
    async def _upsert_markers(conn: SQLConn, rows: list[Marker], now_ms: int) -> None:
        """Move each marker forward, one statement per row (SQLite runs them in-process)."""
        await conn.executemany(_SAVE_MARKER, [(*row, now_ms) for row in rows])

    async def markers(self, name: str) -> dict[str, int]:
        rows = await self._read(lambda conn: conn.fetch(_MARKERS, name))
        return {row[0]: int(row[1]) for row in rows}

    async def marker(self, name: str, stream: str) -> int | None:
        value = await self._read(lambda conn: conn.fetchval(_MARKER, name, stream))
        return int(value) if value is not None else None

    async def unread_in_room(self, room: str, name: str, after: int, upto: int) -> tuple[int, int]:
        if upto <= after:
            return 0, 0
        pattern = _mention_pattern(name)
        row = await self._read(
            lambda conn: conn.fetchrow(_UNREAD_IN_ROOM, room, name, after, upto, pattern)
        )
        assert row is not None
        return int(row[0]), int(row[1])

    async def last_message(self, room: str) -> tuple[int, int] | None:
        row = await self._read(lambda conn: conn.fetchrow(_LAST_MESSAGE, room))
        return (int(row[0]), int(row[1])) if row is not None else None

    async def unread_direct(self, name: str, after: int) -> list[tuple[str, int, bool]]:
        rows = await self._read(lambda conn: conn.fetch(_UNREAD_DIRECT, name, after))
        return [(row[0], int(row[1]), name in names_from_column(row[2])) for row in rows]

    async def last_direct(self, name: str, peer: str | None) -> tuple[int, int] | None:
        args: tuple[str, ...]
        if peer is None:
            query, args = _LAST_DIRECT.format(peer=""), (name,)
        else:
            query = _LAST_DIRECT.format(peer=" AND (d.sender = $2 OR d.recipient = $2)")
            args = (name, peer)
        row = await self._read(lambda conn: conn.fetchrow(query, *args))
        return (int(row[0]), int(row[1])) if row is not None else None

    async def readers(self, room: str, *, at_least: int = 0, limit: int) -> list[tuple[str, int]]:
        rows = await self._read(lambda conn: conn.fetch(_READERS, room, at_least, limit))
        return [(row[0], int(row[1])) for row in rows]

    async def reader_count(self, room: str) -> int:
        return int(await self._read(lambda conn: conn.fetchval(_READER_COUNT, room)))

    async def direct_seq_for(self, reader: str, peer: str, upto: int) -> int | None:
        value = await self._read(lambda conn: conn.fetchval(_DIRECT_SEQ_FOR, reader, peer, upto))
        return int(value) if value is not None else None

    async def direct_peers(self, name: str, after: int, upto: int) -> list[str]:
        rows = await self._read(lambda conn: conn.fetch(_DIRECT_PEERS, name, after, upto))
        return sorted(row[0] for row in rows)

    async def set_hide_receipts(self, name: str, hidden: bool) -> None:
        await self._write_now(lambda conn: conn.execute(_HIDE_RECEIPTS, name, int(hidden)))

    async def set_room_receipts(self, room: str, on: bool) -> None:
        await self._write_now(lambda conn: conn.execute(_ROOM_RECEIPTS, room, int(on)))

    # -- notifications ---------------------------------------------------------------------

    async def add_notification(self, notification_id: str, message_id: str, body: bytes) -> None:
        row = (notification_id, message_id, body.decode(), int(self._clock() * 1000))
        await self._write_now(lambda conn: conn.execute(_ADD_NOTIFICATION, *row))

    async def due_notifications(self, limit: int) -> list[Outgoing]:
        now_ms = int(self._clock() * 1000)
        rows = await self._read(lambda conn: conn.fetch(_DUE_NOTIFICATIONS, now_ms, limit))
        return [(row[0], row[1].encode(), int(row[2])) for row in rows]

    async def claim_notification(self, notification_id: str, attempts: int, lease: float) -> bool:
        until = int((self._clock() + lease) * 1000)
        claim = (notification_id, attempts, until)
        return await self._write_now(lambda conn: conn.execute(_CLAIM_NOTIFICATION, *claim)) == 1

    async def retry_notification(self, notification_id: str, delay: float) -> None:
        due = int((self._clock() + delay) * 1000)
        await self._write_now(lambda conn: conn.execute(_RETRY_NOTIFICATION, notification_id, due))

    async def finish_notification(self, notification_id: str) -> None:
        await self._write_now(lambda conn: conn.execute(_FINISH_NOTIFICATION, notification_id))

    async def notification_count(self) -> int:
        query = "SELECT count(*) FROM notifications"
        return int(await self._read(lambda conn: conn.fetchval(query)))

    # -- moderation ----------------------------------------------------------------------------

    async def room_settings(self, room: str) -> RoomSettings | None:
        async def job(conn: SQLConn) -> RoomSettings | None:
            row = await conn.fetchrow(_ROOM_SETTINGS, room)
            if row is None:
                return None
            moderators = frozenset(row[0] for row in await conn.fetch(_MODERATORS, room))
            return _settings_from_row(row, moderators)

        return await self._read(job)

    async def room_rules(self, room: str, now_ms: int) -> RoomRules:
        async def job(conn: SQLConn) -> RoomRules:
            row = await conn.fetchrow(_ROOM_SETTINGS, room)
            if row is None:
                return RoomRules()
            exempt = {name for (name,) in await conn.fetch(_MODERATORS, room)}
            if row[2] is not None:
                exempt.add(row[2])
            mutes = {
                m.name: m.until_ms
                for m in map(_mute_from_row, await conn.fetch(_MUTES, room, now_ms))
            }
            bans = {b.name: b for b in map(_ban_from_row, await conn.fetch(_BANS, room, now_ms))}
            return RoomRules(int(row[5]), frozenset(exempt), mutes, bans)

        return await self._read(job)

    async def claim_room(self, room: str, owner: str, now_ms: int) -> bool:
        claim = (room, now_ms, 0, owner)
        return await self._write_now(lambda conn: conn.execute(_CREATE_ROOM, *claim)) == 1

    async def set_moderator(self, room: str, name: str, on: bool, audit: AuditEntry) -> bool:
        async def job(conn: SQLConn) -> bool:
            await conn.execute(_STORE_PUBLIC_ROOM_ONCE, room, audit.at_ms)
            if await conn.execute(_ADD_MODERATOR if on else _REMOVE_MODERATOR, room, name) != 1:
                return False
            await _add_audit(conn, audit)
            return True

        return await self._write_now(job)

    async def set_owner(self, room: str, name: str, audit: AuditEntry) -> None:
        now_ms = audit.at_ms

        async def job(conn: SQLConn) -> None:
            row = await conn.fetchrow(_ROOM_OWNER, room)
            if row is not None:
                old, private = row[0], bool(row[1])
                await conn.execute(_SET_OWNER, room, name)
                await conn.execute(_REMOVE_MODERATOR, room, name)
                if old is not None and old != name:
                    await conn.execute(_ADD_MODERATOR, room, old)
                if private:
                    # The old owner read it as its owner: as a moderator, a member.
                    keep = frozenset({name} if old is None else {name, old})
                    await _add_members(conn, room, keep, now_ms)
            await _add_audit(conn, audit)

        await self._write_now(job)

    async def remove_member(self, room: str, name: str, audit: AuditEntry) -> bool:
        async def job(conn: SQLConn) -> bool:
            removed = await conn.execute(_REMOVE_MEMBER, room, name)
            removed += await conn.execute(_REMOVE_MODERATOR, room, name)
            await _add_audit(conn, audit)
            return removed > 0

        return await self._write_now(job)

    async def set_ban(self, room: str, ban: Ban, audit: AuditEntry) -> None:
        row = (room, ban.name, ban.until_ms, ban.reason, ban.by, ban.at_ms)

        async def job(conn: SQLConn) -> None:
            await conn.execute(_STORE_PUBLIC_ROOM_ONCE, room, audit.at_ms)
            await conn.execute(_SET_BAN, *row)
            await conn.execute(_REMOVE_MODERATOR, room, ban.name)
            await _add_audit(conn, audit)

        await self._write_now(job)

    async def lift_ban(self, room: str, name: str, audit: AuditEntry) -> bool:
        return await self._lift("room_bans", room, name, audit)

    async def set_mute(self, room: str, mute: Mute, audit: AuditEntry) -> None:
        row = (room, mute.name, mute.until_ms, mute.by, mute.at_ms)

        async def job(conn: SQLConn) -> None:
            await conn.execute(_STORE_PUBLIC_ROOM_ONCE, room, audit.at_ms)
            await conn.execute(_SET_MUTE, *row)
            await _add_audit(conn, audit)

        await self._write_now(job)

    async def lift_mute(self, room: str, name: str, audit: AuditEntry) -> bool:
        return await self._lift("room_mutes", room, name, audit)

    async def _lift(self, table: str, room: str, name: str, audit: AuditEntry) -> bool:
        """End ``name``'s ban or mute (``table``); whether one held at the audit's time."""
        query = _LIFT.format(table=table)

        async def job(conn: SQLConn) -> bool:
            rows = await conn.fetch(query, room, name)
            if not any(int(row[0]) > audit.at_ms for row in rows):
                return False
            await _add_audit(conn, audit)
            return True

        return await self._write_now(job)

    async def bans(self, room: str, now_ms: int) -> list[Ban]:
        rows = await self._read(lambda conn: conn.fetch(_BANS, room, now_ms))
        return sorted(map(_ban_from_row, rows), key=lambda ban: ban.name)

    async def mutes(self, room: str, now_ms: int) -> list[Mute]:
        rows = await self._read(lambda conn: conn.fetch(_MUTES, room, now_ms))
        return sorted(map(_mute_from_row, rows), key=lambda mute: mute.name)

    async def update_room(
        self,
        room: str,
        audit: AuditEntry,
        *,
        topic: str | None = None,
        title: str | None = None,
        slow_mode: int | None = None,
    ) -> bool:
        async def job(conn: SQLConn) -> bool:
            if await conn.execute(_UPDATE_ROOM, room, topic, title, slow_mode) != 1:
                # The lobby or a room a guest made, never stored: stored now, owned by no one.
                await conn.execute(_STORE_PUBLIC_ROOM, room, audit.at_ms)
                await conn.execute(_UPDATE_ROOM, room, topic, title, slow_mode)
            await _add_audit(conn, audit)
            return True

        return await self._write_now(job)

    async def delete_room(self, room: str, audit: AuditEntry) -> bool:
        async def job(conn: SQLConn) -> bool:
            # First: on PostgreSQL the row's lock holds every batch for the room
            # (they reserve seqs on it) until this commits.
            if await conn.fetchrow(_ERASE_ROOM_ROW, room) is None:
                return False
            top = await conn.fetchval("SELECT max(seq) FROM messages WHERE room = $1", room)
            await conn.execute(
                f"DELETE FROM reactions WHERE message_id IN ({_ROOM_MESSAGE_IDS})", room
            )
            await conn.execute(
                f"DELETE FROM notifications WHERE message_id IN ({_ROOM_MESSAGE_IDS})", room
            )
            if top is not None:
                await conn.execute("DELETE FROM messages WHERE room = $1 AND seq < $2", room, top)
                await conn.execute(_TOMBSTONE, room, top, audit.at_ms)
            for statement in _ROOM_ROWS:
                await conn.execute(statement, room)
            await _add_audit(conn, audit)
            return True

        if not await self._write_now(job):
            return False
        await self._erased(("messages", "reactions", "notifications", "rooms", "read_markers"))
        return True

    async def add_audit(self, audit: AuditEntry) -> None:
        await self._write_now(functools.partial(_add_audit, audit=audit))

    async def audit_log(self, room: str, *, before: int | None, limit: int) -> list[AuditEntry]:
        bound = before if before is not None else _NEWEST
        rows = await self._read(lambda conn: conn.fetch(_AUDIT_LOG, room, bound, limit))
        return [_audit_from_row(row) for row in rows]

    async def all_rooms(self) -> list[RoomSettings]:
        async def job(conn: SQLConn) -> list[RoomSettings]:
            moderators: dict[str, set[str]] = {}
            for room, name in await conn.fetch(_ALL_MODERATORS):
                moderators.setdefault(room, set()).add(name)
            return [
                _settings_from_row(row, frozenset(moderators.get(row[0], ())))
                for row in await conn.fetch(_ALL_ROOMS)
            ]

        rooms = await self._read(job)
        return sorted(rooms, key=lambda settings: settings.name)

    # -- sessions and accounts ---------------------------------------------------------------

    async def create_session(self, session: StoredSession) -> None:
        row = (
            session.id,
            session.name.lower(),
            session.refresh_hash,
            session.created_ms,
            session.expires_ms,
            session.revoked_ms,
        )
        await self._write_now(lambda conn: conn.execute(_CREATE_SESSION, *row))

    async def session_user(self, session_id: str) -> tuple[StoredSession, StoredUser] | None:
        row = await self._read(lambda conn: conn.fetchrow(_SESSION_USER, session_id))
        if row is None:
            return None
        revoked = row[5]
        session = StoredSession(
            row[0],
            row[1],
            row[2],
            int(row[3]),
            int(row[4]),
            int(revoked) if revoked is not None else None,
            row[6],
        )
        return session, _user_from_row(tuple(row)[7:])

    async def rotate_session(
        self, session_id: str, old_hash: str, new_hash: str, expires_ms: int, now_ms: int
    ) -> bool:
        swap = (session_id, old_hash, new_hash, expires_ms, now_ms)
        return await self._write_now(lambda conn: conn.execute(_ROTATE_SESSION, *swap)) == 1

    async def revoke_sessions(
        self, name: str, now_ms: int, *, only: str | None = None, keep: str | None = None
    ) -> list[str]:
        async def job(conn: SQLConn) -> list[str]:
            # As registered; the name as given when the user is gone.
            registered = await conn.fetchval(_USER_NAME, name.lower())
            return await _revoke(conn, registered or name, now_ms, only=only, keep=keep)

        return await self._write_now(job)

    async def revoked_since(self, since_ms: int) -> list[tuple[str, str]]:
        rows = await self._read(lambda conn: conn.fetch(_REVOKED_SINCE, since_ms))
        return [(row[0], row[1]) for row in rows]

    async def set_password(
        self, name: str, password_hash: str, now_ms: int, *, keep: str | None = None
    ) -> list[str]:
        async def job(conn: SQLConn) -> list[str]:
            registered = await conn.fetchval(_SET_PASSWORD, name.lower(), password_hash)
            if registered is None:
                return []
            return await _revoke(conn, registered, now_ms, keep=keep)

        return await self._write_now(job)

    async def set_admin(self, name: str, on: bool) -> bool:
        return (
            await self._write_now(lambda conn: conn.execute(_SET_ADMIN, name.lower(), int(on))) == 1
        )

    async def set_user_ban(
        self, name: str, until_ms: int | None, reason: str, now_ms: int
    ) -> list[str] | None:
        async def job(conn: SQLConn) -> list[str] | None:
            stored_reason = reason if until_ms is not None else None
            registered = await conn.fetchval(_SET_USER_BAN, name.lower(), until_ms, stored_reason)
            if registered is None:
                return None
            if until_ms is None:
                return []
            return await _revoke(conn, registered, now_ms)

        return await self._write_now(job)

    async def delete_user(self, name: str, now_ms: int) -> list[str] | None:
        async def job(conn: SQLConn) -> list[str] | None:
            row = await conn.fetchrow(_USER_ROW, name.lower())
            if row is None:
                return None
            registered, since = row[0], int(row[1])
            revoked = await _revoke(conn, registered, now_ms)
            for table in ("messages", "direct_messages"):
                mine = _USER_MESSAGES.format(table=table)
                for erased in ("reactions", "notifications"):
                    await conn.execute(
                        f"DELETE FROM {erased} WHERE message_id IN ({mine})", registered, since
                    )
                await conn.execute(_BLANK_MESSAGES.format(table=table), registered, since, now_ms)
                await conn.execute(_BLANK_EDITS.format(table=table), registered, since)
            await conn.execute(_USER_NOTIFICATIONS, _notified_pattern(registered))
            for statement in _USER_ROWS:
                await conn.execute(statement, registered)
            self._inbox_gone(registered)
            return revoked

        revoked = await self._write_now(job)
        if revoked is not None:
            await self._erased(
                ("messages", "direct_messages", "reactions", "notifications", "users", "inbox")
            )
        return revoked

    # -- retention ---------------------------------------------------------------------------

    async def prune(self) -> int:
        """Delete messages older than ``history_days``; return how many went.

        A chunk of at most :data:`PRUNE_CHUNK` of each kind per transaction,
        so writes go on between them. When another node holds the right to
        prune (PostgreSQL), this returns 0 at once. Every pass (with
        ``history_days`` 0 too) first deletes the sessions that expired or
        were revoked more than :data:`SESSION_GRACE` seconds ago.
        """
        if self._closed:
            return 0
        now = self._clock()
        cutoff = int((now - self.history_days * 86400) * 1000)
        chunk = functools.partial(_prune_chunk, cutoff_ms=cutoff)
        total = 0
        async with self._pruning() as run:
            if run is None:
                return 0
            ended = int((now - SESSION_GRACE) * 1000)
            await run(functools.partial(_prune_sessions, before_ms=ended))
            if not self.history_days:
                return 0
            while True:
                rooms, direct = await run(chunk)
                total += rooms + direct
                if rooms < PRUNE_CHUNK and direct < PRUNE_CHUNK:
                    if total:
                        self._search_pruned()
                    return total

    async def _prune_logged(self) -> None:
        try:
            removed = await self.prune()
        except StoreError as exc:
            self._log.error("%s", exc)
            return
        if removed:
            self._log.info("pruned %d messages older than %d days", removed, self.history_days)

    async def _prune_forever(self) -> None:
        while True:
            await asyncio.sleep(PRUNE_INTERVAL)
            await self._prune_logged()


#: Runs one retention chunk in a transaction of its own; says how many rows of each kind went.
Prune = Callable[[Job[tuple[int, int]]], Awaitable[tuple[int, int]]]


async def _ping(conn: SQLConn) -> None:
    await conn.fetchval("SELECT 1")


async def _migrate_once(conn: SQLConn, now_ms: int, dialect: str) -> Migration | None:
    """Apply the next migration the database lacks (inside the schema lock); None when none."""
    await conn.execute(VERSION_TABLE)
    version = int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))
    if version > LATEST_VERSION:
        raise StoreError(
            f"the database has schema version {version}; this roomcast knows up to "
            f"{LATEST_VERSION}: upgrade roomcast"
        )
    pending = [m for m in MIGRATIONS if m.version > version]
    if not pending:
        return None
    migration = pending[0]
    for statement in migration.for_dialect(dialect):
        await conn.execute(statement)
    await conn.execute(
        "INSERT INTO schema_version (version, description, applied_ms) VALUES ($1, $2, $3)",
        migration.version,
        migration.description,
        now_ms,
    )
    return migration


async def _prune_chunk(conn: SQLConn, cutoff_ms: int) -> tuple[int, int]:
    """Delete one chunk of what is older than ``cutoff_ms``: (room messages, direct ones)."""
    await conn.execute(_PRUNE_NOTIFICATIONS, cutoff_ms)
    rooms = await conn.execute(_PRUNE_MESSAGES, cutoff_ms, PRUNE_CHUNK)
    old = await conn.fetch(_OLD_DIRECT, cutoff_ms, PRUNE_CHUNK)
    if old:
        ids = [(row[0],) for row in old]
        await conn.executemany(_PRUNE_INBOX, ids)
        await conn.executemany(_PRUNE_DIRECT, ids)
    return rooms, len(old)


async def _prune_sessions(conn: SQLConn, before_ms: int) -> tuple[int, int]:
    """Delete the sessions that ended before ``before_ms``: (how many, 0)."""
    return await conn.execute(_PRUNE_SESSIONS, before_ms), 0


async def _add_audit(conn: SQLConn, audit: AuditEntry) -> int:
    """Log ``audit`` in the transaction of the change it tells of; its id."""
    detail = orjson.dumps(dict(audit.detail)).decode() if audit.detail else None
    row = (audit.room, audit.at_ms, audit.actor, audit.action, audit.target, audit.reason, detail)
    return int(await conn.fetchval(_ADD_AUDIT, *row))


async def _revoke(
    conn: SQLConn, name: str, now_ms: int, *, only: str | None = None, keep: str | None = None
) -> list[str]:
    """Revoke user ``name``'s (as registered) live sessions, or only ``only``, or all
    but ``keep``; the ids revoked, sorted."""
    args: tuple[Any, ...] = (name, now_ms)
    which = ""
    if only is not None:
        which, args = " AND id = $3", (*args, only)
    elif keep is not None:
        which, args = " AND id <> $3", (*args, keep)
    rows = await conn.fetch(_REVOKE_SESSIONS.format(which=which), *args)
    return sorted(row[0] for row in rows)


def _user_from_row(row: Sequence[Any]) -> StoredUser:
    """A user from a row of :data:`_USER_COLUMNS`."""
    name, password_hash, created_ms, hide_receipts, admin, banned_until, reason = row[:7]
    return StoredUser(
        name,
        password_hash,
        int(created_ms),
        bool(hide_receipts),
        bool(admin),
        int(banned_until) if banned_until is not None else None,
        reason or "",
    )


def _settings_from_row(row: Sequence[Any], moderators: frozenset[str]) -> RoomSettings:
    """A room's settings from a row of :data:`_SETTINGS_COLUMNS`."""
    name, private, owner, topic, title, slow_mode, receipts = row[:7]
    return RoomSettings(
        name, bool(private), owner, moderators, topic, title, int(slow_mode), bool(receipts)
    )


def _ban_from_row(row: Sequence[Any]) -> Ban:
    return Ban(row[0], int(row[1]), row[2], row[3], int(row[4]))


def _mute_from_row(row: Sequence[Any]) -> Mute:
    return Mute(row[0], int(row[1]), row[2], int(row[3]))


def _audit_from_row(row: Sequence[Any]) -> AuditEntry:
    entry_id, room, at_ms, actor, action, target, reason, detail = row[:8]
    return AuditEntry(
        room,
        int(at_ms),
        actor,
        action,
        target,
        reason,
        orjson.loads(detail) if detail else {},
        int(entry_id),
    )


def _notified_pattern(name: str) -> str:
    """The ``LIKE`` pattern (escape ``!``) of a notification body whose ``user`` is ``name``.

    In the JSON a quote inside a string is escaped, so ``"user":"name"`` is
    only ever the key; names are unique whatever their case, so SQLite's
    case-blind LIKE finds this user's alone.
    """
    key = '"user":' + orjson.dumps(name).decode()
    escaped = key.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return f"%{escaped}%"


async def load_targets(
    conn: SQLConn, plan: Plan, ids_in: str, ids: Callable[[list[str]], Any], lock: str = ""
) -> dict[str, Target]:
    """The messages ``plan``'s changes name, with their reactions, as the transaction sees them.

    ``ids_in`` is the backend's ``IN`` a list (``$1``), and ``ids`` makes
    that parameter from a list (:attr:`SQLStore._NAMES_IN`, :meth:`SQLStore._names`);
    ``lock`` (`` FOR UPDATE``) locks each message's row until the batch
    commits, so no other batch changes it between this read and that commit.
    """
    wanted = sorted(plan.targets())
    if not wanted:
        return {}
    param = ids(wanted)
    targets = {
        row[0]: Target(row[0], row[1], row[2], row[3], row[4] is not None)
        for row in await conn.fetch(_TARGET_MESSAGES.format(ids=ids_in, lock=lock), param)
    }
    for message_id, emoji, name in await conn.fetch(_TARGET_REACTIONS.format(ids=ids_in), param):
        if message_id in targets:
            targets[message_id].reactions.setdefault(emoji, set()).add(name)
    return targets


async def apply_changes(conn: SQLConn, plan: Plan, file_size: str) -> None:
    """Do to the messages what ``plan``'s changes say (after its events are inserted).

    ``file_size`` is the backend's :attr:`SQLStore._FILE_SIZE`.

    Edits and reactions first, deletes last: a delete erases the texts of
    the edits before it, including this batch's, and nothing in a batch
    changes a message after it is deleted (:meth:`Plan.decide` refuses it).
    """
    if plan.edits:
        await conn.executemany(_EDIT, plan.edits)
    if plan.direct_edits:
        await conn.executemany(_EDIT_DIRECT, plan.direct_edits)
    if plan.reactions:
        inserts, deletes = plan.reaction_rows()
        if inserts:
            await conn.executemany(_ADD_REACTION, inserts)
        if deletes:
            await conn.executemany(_REMOVE_REACTION, deletes)
    for table, erase_edits, deletes in (
        ("messages", _ERASE_EDITS, plan.deletes),
        ("direct_messages", _ERASE_DIRECT_EDITS, plan.direct_deletes),
    ):
        if deletes:
            erase = _ERASE.format(table=table).replace("SIZE", file_size)
            await conn.executemany(erase, deletes)
            ids = [(row[1],) for row in deletes]
            await conn.executemany(erase_edits, ids)
            await conn.executemany(_ERASE_REACTIONS, ids)
            await conn.executemany(_ERASE_NOTIFICATIONS, ids)


def _position_value(value: object, kind: type) -> bool:
    """Whether ``value`` can be a cursor position's part of type ``kind``: a cursor is
    only checked against its search, so its values are checked before they are bound."""
    if type(value) is not kind:
        return False
    if isinstance(value, int):
        return -(2**63) <= value < 2**63  # a BIGINT, a SQLite integer
    assert isinstance(value, str)
    return len(value) <= 64 and value.isascii() and "\x00" not in value


def _conversation(query: str, peer: str | None) -> tuple[str, tuple[str, ...]]:
    """An inbox ``query`` for the whole stream, or for the conversation with ``peer``
    (its ``$4``), and the arguments it adds."""
    if peer is None:
        return query.format(peer=""), ()
    return query.format(peer=_WITH_PEER), (peer,)


def _hit_ms(kind: str, row: Sequence[Any]) -> int:
    """When a search's row (of ``rooms`` or ``direct``) was stored."""
    return int(row[_HIT_MS[kind]])


def _group_reactions(rows: list[Sequence[Any]]) -> dict[str, Reactions]:
    """Reactions rows ``(message_id, emoji, name, ts_ms)`` by message, each in time order."""
    grouped: dict[str, dict[str, list[str]]] = {}
    for message_id, emoji, name, _ts in sorted(rows, key=lambda row: (row[3], row[1], row[2])):
        grouped.setdefault(message_id, {}).setdefault(emoji, []).append(name)
    return {
        message_id: tuple((emoji, tuple(names)) for emoji, names in emojis.items())
        for message_id, emojis in grouped.items()
    }


async def _add_members(conn: SQLConn, room: str, members: frozenset[str], now_ms: int) -> None:
    if members:
        await conn.executemany(_ADD_MEMBER, [(room, name, now_ms) for name in sorted(members)])


def _accesses(rows: list[Sequence[Any]]) -> list[RoomAccess]:
    """Rooms' rules from rows of :data:`_ACCESS` (one per member), in the rows' order."""
    rooms: dict[str, tuple[bool, str | None, set[str], bool]] = {}
    for name, private, owner, member, receipts in rows:
        room = rooms.get(name)
        if room is None:
            room = rooms[name] = (bool(private), owner, set(), bool(receipts))
        if member is not None:
            room[2].add(member)
    return [
        RoomAccess(name, private, owner, frozenset(members), receipts)
        for name, (private, owner, members, receipts) in rooms.items()
    ]


def _mention_pattern(name: str) -> str:
    """The ``LIKE`` pattern (escape ``!``) of ``name`` in a ``mentions`` JSON list."""
    escaped = name.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return f'%"{escaped}"%'
