"""The stores' schema, as numbered migrations.

A database records the migrations applied to it in ``schema_version``; at
open a store applies the ones it lacks, each in its own transaction, and
refuses a database whose version is newer than it knows. Migrations are only
ever added, never edited: a later version adds a new one. The SQL is kept to
what SQLite and PostgreSQL both accept, so one list serves both; what only
one engine has (its full-text index) is that dialect's own statements.
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
    #: Run after ``statements`` on SQLite only, or on PostgreSQL only.
    sqlite: tuple[str, ...] = ()
    postgres: tuple[str, ...] = ()

    def for_dialect(self, dialect: str) -> tuple[str, ...]:
        """The statements to run on ``dialect`` (``sqlite`` or ``postgres``)."""
        return self.statements + (self.sqlite if dialect == "sqlite" else self.postgres)


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
    Migration(
        6,
        "read markers, receipts settings, and the outbox of notifications for users away",
        (
            # How far each user has read: stream is a room's name, '@' for the
            # user's whole direct stream, or '@' and a name for one direct
            # conversation (room names never start with '@'). Only moves forward.
            "CREATE TABLE read_markers ("
            " name TEXT NOT NULL,"
            " stream TEXT NOT NULL,"
            " seq BIGINT NOT NULL,"
            " updated_ms BIGINT NOT NULL,"
            " PRIMARY KEY (name, stream))",
            # A room's readers, for receipts and their counts.
            "CREATE INDEX read_markers_stream ON read_markers (stream, seq)",
            "ALTER TABLE rooms ADD COLUMN receipts INTEGER NOT NULL DEFAULT 1",
            "ALTER TABLE users ADD COLUMN hide_receipts INTEGER NOT NULL DEFAULT 0",
            # Webhook deliveries not yet answered with a 2xx: body is the JSON
            # posted, with the text of message_id (erased with the message);
            # due_ms when the next attempt may start (an attempt in flight
            # pushes it past its timeout, so a node that dies mid-post leaves
            # it to another).
            "CREATE TABLE notifications ("
            " id TEXT PRIMARY KEY,"
            " message_id TEXT NOT NULL,"
            " body TEXT NOT NULL,"
            " attempts INTEGER NOT NULL DEFAULT 0,"
            " due_ms BIGINT NOT NULL,"
            " created_ms BIGINT NOT NULL)",
            "CREATE INDEX notifications_due ON notifications (due_ms)",
            "CREATE INDEX notifications_message ON notifications (message_id)",
            # What was there before this version counts as read: the upgrade
            # must not hand every user their whole past as unread. Public rooms
            # need nothing (a first join starts at the room's end).
            "INSERT INTO read_markers (name, stream, seq, updated_ms)"
            " SELECT name, '@', dm_seq, 0 FROM users WHERE dm_seq > 0",
            "INSERT INTO read_markers (name, stream, seq, updated_ms)"
            " SELECT m.name, r.name, r.last_seq, 0 FROM room_members m"
            " JOIN rooms r ON r.name = m.room"
            " UNION SELECT r.owner, r.name, r.last_seq, 0 FROM rooms r"
            " WHERE r.private = 1 AND r.owner IS NOT NULL",
        ),
    ),
    Migration(
        7,
        "full-text search over room and direct messages",
        (
            # A search reads the rooms its reader belongs to.
            "CREATE INDEX room_members_name ON room_members (name)",
        ),
        sqlite=(
            # FTS5 over the message rows themselves (external content: the
            # index keeps words, never a copy of the text), by rowid, which a
            # table without an INTEGER PRIMARY KEY keeps unless VACUUMed
            # (docs/design.md, "Search", says how to rebuild after one). unicode61
            # keeps every script's letters; remove_diacritics 2 folds accents.
            # Chat messages only: an edit's event row keeps its text for
            # replay, and is not searched.
            *(
                statement.format(table=table, index=index)
                for table, index in (
                    ("messages", "messages_search"),
                    ("direct_messages", "direct_search"),
                )
                for statement in (
                    "CREATE VIRTUAL TABLE {index} USING fts5(body, content='{table}',"
                    " content_rowid='rowid', tokenize='unicode61 remove_diacritics 2')",
                    # Kept by triggers, in the transaction that writes the row: a
                    # message is found once it is acked; an edit or a delete (which
                    # empties body) takes its old words out at once.
                    "CREATE TRIGGER {index}_insert AFTER INSERT ON {table}"
                    " WHEN new.kind = 'chat' AND new.body <> '' BEGIN"
                    " INSERT INTO {index} (rowid, body) VALUES (new.rowid, new.body); END",
                    "CREATE TRIGGER {index}_update AFTER UPDATE OF body ON {table}"
                    " WHEN old.kind = 'chat' BEGIN"
                    " INSERT INTO {index} ({index}, rowid, body)"
                    " SELECT 'delete', old.rowid, old.body WHERE old.body <> '';"
                    " INSERT INTO {index} (rowid, body)"
                    " SELECT new.rowid, new.body WHERE new.body <> ''; END",
                    "CREATE TRIGGER {index}_delete AFTER DELETE ON {table}"
                    " WHEN old.kind = 'chat' AND old.body <> '' BEGIN"
                    " INSERT INTO {index} ({index}, rowid, body)"
                    " VALUES ('delete', old.rowid, old.body); END",
                    "INSERT INTO {index} (rowid, body)"
                    " SELECT rowid, body FROM {table} WHERE kind = 'chat' AND body <> ''",
                )
            ),
        ),
        postgres=(
            # A tsvector per chat message (NULL for a change: an edit's event
            # row keeps its text for replay, and is not searched), kept by
            # PostgreSQL from body (a delete's erasure empties it), in a GIN
            # index of chat rows. Stored rather
            # than an index expression: checking a candidate row reads it
            # instead of parsing the text again (phrases, and the newest-first
            # scan, check many), and ANALYZE keeps statistics of its words,
            # which the planner needs to choose between the GIN index and
            # the newest-first scan (it ignores a partial index's expression
            # statistics). 'simple': no stemming and no stop words, so every
            # language is indexed alike.
            *(
                statement.format(table=table, index=index)
                for table, index in (
                    ("messages", "messages_search"),
                    ("direct_messages", "direct_messages_search"),
                )
                for statement in (
                    "ALTER TABLE {table} ADD COLUMN search tsvector GENERATED ALWAYS AS"
                    " (CASE WHEN kind = 'chat' THEN to_tsvector('simple'::regconfig, body) END)"
                    " STORED",
                    # fastupdate off: each insert updates the index itself. With
                    # it on, the batch that fills GIN's 4 MB pending list merges
                    # it into the index in its own transaction: acks p99 106 ms
                    # at 4,000 messages/s against 15-19 ms off (docs/benchmarks.md).
                    "CREATE INDEX {index} ON {table} USING gin (search)"
                    " WITH (fastupdate = off) WHERE kind = 'chat'",
                    "ANALYZE {table}",
                )
            ),
        ),
    ),
    Migration(
        8,
        "moderation: admins, bans everywhere, room roles, bans, mutes and settings,"
        " the audit log; sessions",
        (
            # A ban everywhere ends at banned_until_ms (2**62: until lifted).
            "ALTER TABLE users ADD COLUMN admin INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE users ADD COLUMN banned_until_ms BIGINT",
            "ALTER TABLE users ADD COLUMN ban_reason TEXT",
            "ALTER TABLE rooms ADD COLUMN topic TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE rooms ADD COLUMN title TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE rooms ADD COLUMN slow_mode INTEGER NOT NULL DEFAULT 0",
            # A deleted room keeps its row for its seqs (a name used again goes
            # on counting): erased_seq is its last_seq when it was deleted, and
            # the room is gone while last_seq is still that. A message stored
            # after it, or a create, brings the name back as a new room.
            "ALTER TABLE rooms ADD COLUMN erased_seq BIGINT",
            # Names as the callers give them: as registered, or a guest's
            # (like room_members). A ban or mute past until_ms is no more.
            "CREATE TABLE room_moderators ("
            " room TEXT NOT NULL,"
            " name TEXT NOT NULL,"
            " PRIMARY KEY (room, name))",
            "CREATE INDEX room_moderators_name ON room_moderators (name)",
            "CREATE TABLE room_bans ("
            " room TEXT NOT NULL,"
            " name TEXT NOT NULL,"
            " until_ms BIGINT NOT NULL,"
            " reason TEXT NOT NULL DEFAULT '',"
            " by_name TEXT NOT NULL,"
            " at_ms BIGINT NOT NULL,"
            " PRIMARY KEY (room, name))",
            # A search leaves out the rooms its reader is banned from.
            "CREATE INDEX room_bans_name ON room_bans (name)",
            "CREATE TABLE room_mutes ("
            " room TEXT NOT NULL,"
            " name TEXT NOT NULL,"
            " until_ms BIGINT NOT NULL,"
            " by_name TEXT NOT NULL,"
            " at_ms BIGINT NOT NULL,"
            " PRIMARY KEY (room, name))",
            # A sign-in: refresh_hash is the SHA-256 of its one-use refresh
            # secret. Revoked rows stay a day (every node polls for them), then
            # retention deletes them, as it does expired ones.
            "CREATE TABLE sessions ("
            " id TEXT PRIMARY KEY,"
            " name TEXT NOT NULL,"
            " refresh_hash TEXT NOT NULL,"
            " created_ms BIGINT NOT NULL,"
            " expires_ms BIGINT NOT NULL,"
            " revoked_ms BIGINT,"
            " previous_hash TEXT)",
            "CREATE INDEX sessions_name ON sessions (name)",
            "CREATE INDEX sessions_revoked ON sessions (revoked_ms) WHERE revoked_ms IS NOT NULL",
        ),
        # The audit log, paged newest first by id within a room; detail is a
        # JSON object (NULL for none). It outlives the room it tells of.
        sqlite=(
            "CREATE TABLE audit ("
            " id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " room TEXT NOT NULL,"
            " at_ms BIGINT NOT NULL,"
            " actor TEXT NOT NULL,"
            " action TEXT NOT NULL,"
            " target TEXT,"
            " reason TEXT NOT NULL DEFAULT '',"
            " detail TEXT)",
            "CREATE INDEX audit_room ON audit (room, id)",
        ),
        postgres=(
            "CREATE TABLE audit ("
            " id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " room TEXT NOT NULL,"
            " at_ms BIGINT NOT NULL,"
            " actor TEXT NOT NULL,"
            " action TEXT NOT NULL,"
            " target TEXT,"
            " reason TEXT NOT NULL DEFAULT '',"
            " detail TEXT)",
            "CREATE INDEX audit_room ON audit (room, id)",
        ),
    ),
)

LATEST_VERSION: Final = MIGRATIONS[-1].version
