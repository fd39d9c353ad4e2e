"""The stores' schema, as numbered migrations.

A database records the migrations applied to it in ``schema_version``; at
open a store applies the ones it lacks, each in its own transaction, and
refuses a database whose version is newer than it knows. Migrations are only
ever added, never edited: a later version adds a new one. The SQL is kept to
what SQLite and PostgreSQL both accept, so one list serves both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["LATEST_VERSION", "MIGRATIONS", "VERSION_TABLE", "Migration"]


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema change: its version, what it does, and its statements."""

    version: int
    description: str
    statements: tuple[str, ...]


VERSION_TABLE: Final = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    " version INTEGER PRIMARY KEY,"
    " description TEXT NOT NULL,"
    " applied_ms BIGINT NOT NULL)"
)

MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(
        1,
        "rooms with their last seq; room messages keyed by (room, seq)",
        (
            "CREATE TABLE rooms ("
            " name TEXT PRIMARY KEY,"
            " last_seq BIGINT NOT NULL,"
            " created_ms BIGINT NOT NULL)",
            "CREATE TABLE messages ("
            " room TEXT NOT NULL,"
            " seq BIGINT NOT NULL,"
            " message_id TEXT NOT NULL UNIQUE,"
            " sender TEXT NOT NULL,"
            " body TEXT NOT NULL,"
            " client_id TEXT,"
            " ts_ms BIGINT NOT NULL,"
            " PRIMARY KEY (room, seq))",
            # A resent frame id is looked up by (sender, client_id) within 24 h.
            "CREATE INDEX messages_client_id ON messages (sender, client_id)"
            " WHERE client_id IS NOT NULL",
            # Retention (--history-days) deletes by age.
            "CREATE INDEX messages_ts ON messages (ts_ms)",
        ),
    ),
    Migration(
        2,
        "users; private rooms with owners and members; direct messages and inboxes",
        (
            # name as registered; name_key (lower case) makes names unique
            # regardless of case. dm_seq is the last seq of the user's inbox.
            "CREATE TABLE users ("
            " name TEXT PRIMARY KEY,"
            " name_key TEXT NOT NULL UNIQUE,"
            " password_hash TEXT NOT NULL,"
            " dm_seq BIGINT NOT NULL DEFAULT 0,"
            " created_ms BIGINT NOT NULL)",
            "ALTER TABLE rooms ADD COLUMN private INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE rooms ADD COLUMN owner TEXT",
            "CREATE TABLE room_members ("
            " room TEXT NOT NULL,"
            " name TEXT NOT NULL,"
            " added_ms BIGINT NOT NULL,"
            " PRIMARY KEY (room, name))",
            # A direct message is stored once, and listed in the inbox of
            # both its sender and its recipient, each with its own seq.
            "CREATE TABLE direct_messages ("
            " message_id TEXT PRIMARY KEY,"
            " sender TEXT NOT NULL,"
            " recipient TEXT NOT NULL,"
            " body TEXT NOT NULL,"
            " client_id TEXT,"
            " ts_ms BIGINT NOT NULL)",
            "CREATE INDEX direct_messages_client_id ON direct_messages (sender, client_id)"
            " WHERE client_id IS NOT NULL",
            "CREATE INDEX direct_messages_ts ON direct_messages (ts_ms)",
            "CREATE TABLE inbox ("
            " owner TEXT NOT NULL,"
            " seq BIGINT NOT NULL,"
            " message_id TEXT NOT NULL,"
            " PRIMARY KEY (owner, seq))",
            "CREATE INDEX inbox_message_id ON inbox (message_id)",
        ),
    ),
    Migration(
        3,
        "file messages: a file's metadata on room and direct messages",
        (
            # NULL for a text message; for a file message, store.batch.file_to_column()
            # (name, mime, size, sha256), with an empty body.
            "ALTER TABLE messages ADD COLUMN file TEXT",
            "ALTER TABLE direct_messages ADD COLUMN file TEXT",
        ),
    ),
    Migration(
        4,
        "a sender's file messages by time, for the upload quota",
        (
            "CREATE INDEX messages_files ON messages (sender, ts_ms) WHERE file IS NOT NULL",
            "CREATE INDEX direct_messages_files ON direct_messages (sender, ts_ms)"
            " WHERE file IS NOT NULL",
        ),
    ),
    Migration(
        5,
        "messages change: edits, deletes and reactions as stream events; replies; mentions",
        (
            # kind: 'chat' (a message, text or file), or a change of the
            # message named by target: 'edit' (body: the new text), 'delete',
            # 'react' or 'unreact' (body: the emoji). A chat's target is the
            # message it answers and thread its thread's root. mentions is a
            # JSON list of names. A deleted message keeps its row (its seq) with
            # body, file and mentions erased.
            "ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'chat'",
            "ALTER TABLE messages ADD COLUMN target TEXT",
            "ALTER TABLE messages ADD COLUMN thread TEXT",
            "ALTER TABLE messages ADD COLUMN mentions TEXT",
            "ALTER TABLE messages ADD COLUMN edited_ms BIGINT",
            "ALTER TABLE messages ADD COLUMN deleted_ms BIGINT",
            "CREATE INDEX messages_target ON messages (target) WHERE target IS NOT NULL",
            "CREATE INDEX messages_thread ON messages (thread, seq) WHERE thread IS NOT NULL",
            # The same on direct messages, plus 'mention': a room message
            # (target, in room) names the recipient; it is listed in the
            # recipient's inbox only.
            "ALTER TABLE direct_messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'chat'",
            "ALTER TABLE direct_messages ADD COLUMN target TEXT",
            "ALTER TABLE direct_messages ADD COLUMN room TEXT",
            "ALTER TABLE direct_messages ADD COLUMN mentions TEXT",
            "ALTER TABLE direct_messages ADD COLUMN edited_ms BIGINT",
            "ALTER TABLE direct_messages ADD COLUMN deleted_ms BIGINT",
            "CREATE INDEX direct_messages_target ON direct_messages (target)"
            " WHERE target IS NOT NULL",
            # Who reacted to which message (room or direct) with what, now.
            "CREATE TABLE reactions ("
            " message_id TEXT NOT NULL,"
            " emoji TEXT NOT NULL,"
            " name TEXT NOT NULL,"
            " ts_ms BIGINT NOT NULL,"
            " PRIMARY KEY (message_id, emoji, name))",
        ),
    ),
)

LATEST_VERSION: Final = MIGRATIONS[-1].version
