"""The Store contract, run against every store implementation.

Every backend is a param of the ``store`` fixture and must pass the same
tests: memory, SQLite, and PostgreSQL (a fresh database per test on the
server of ``ROOMCAST_TEST_DATABASE_URL``; skipped when it does not answer,
failed in CI). What only a durable store promises (reopening, schema
migrations, retention, failed batches) runs against SQLite and PostgreSQL
through the ``db`` fixture. What one database adds is in test_sqlite.py and
test_postgres.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from roomcast.exceptions import StoreError
from roomcast.protocol.messages import ChatMessage, DirectMessage, FileInfo
from roomcast.store import sql
from roomcast.store.base import DEDUPE_SECONDS, Store
from roomcast.store.schema import LATEST_VERSION, MIGRATIONS, VERSION_TABLE
from tests.fakes import Clock
from tests.store.backends import Database, database

DAY = 86400.0

PHOTO = FileInfo("cat.png", "image/png", 1234, "ab" * 32)
NOTES = FileInfo("notes.txt", "text/plain", 5, "cd" * 32)


async def test_seqs_are_per_room_and_gapless(store: Store) -> None:
    """Each room counts 1, 2, 3 on its own."""
    seqs = []
    for room in ["a", "b", "a", "a", "b"]:
        seqs.append((room, (await store.append(room, "ann", "m")).message.seq))
    assert seqs == [("a", 1), ("b", 1), ("a", 2), ("a", 3), ("b", 2)]
    assert await store.last_seq("a") == 3
    assert await store.last_seq("empty") == 0


async def test_appended_message_fields(store: Store) -> None:
    """A stored message keeps room, text, sender and gets an id and a time."""
    result = await store.append("r", "ann", "hello <b>", client_id="c1")
    message = result.message
    assert not result.duplicate
    assert (message.room, message.message, message.sender, message.seq) == (
        "r",
        "hello <b>",
        "ann",
        1,
    )
    assert message.message_id
    assert message.ts_ms == 1_790_000_000_000


async def test_dedupe_by_sender_and_client_id(store: Store, clock: Clock) -> None:
    """The same (sender, id) returns the first message; other senders are separate."""
    first = await store.append("r", "ann", "x", client_id="c1")
    again = await store.append("r", "ann", "x", client_id="c1")
    other = await store.append("r", "bob", "x", client_id="c1")
    assert again.duplicate and again.message == first.message
    assert not other.duplicate and other.message.seq == 2
    clock.now += DEDUPE_SECONDS + 1
    later = await store.append("r", "ann", "x", client_id="c1")
    assert not later.duplicate and later.message.seq == 3


async def test_one_id_in_two_rooms_is_two_messages(store: Store) -> None:
    """The dedupe key names the room: an id reused in another room never collides."""
    lobby = await store.append("lobby", "ann", "x", client_id="1")
    dev = await store.append("dev", "ann", "x", client_id="1")
    assert not lobby.duplicate and not dev.duplicate
    assert (lobby.message.room, dev.message.room) == ("lobby", "dev")
    assert (await store.append("dev", "ann", "x", client_id="1")).duplicate
    assert await store.last_seq("dev") == 1


async def test_one_id_to_two_users_is_two_direct_messages(store: Store) -> None:
    """Likewise a direct message's id is keyed by its recipient."""
    for name in ("ann", "bob", "cid"):
        await store.create_user(name, "hash")
    to_bob = await store.append_direct("ann", "bob", "hi", client_id="1")
    to_cid = await store.append_direct("ann", "cid", "hi", client_id="1")
    assert not to_bob.duplicate and not to_cid.duplicate
    assert to_cid.message.message_id != to_bob.message.message_id
    again = await store.append_direct("ann", "cid", "hi", client_id="1")
    assert again.duplicate and again.message.message_id == to_cid.message.message_id


async def test_resends_queued_together_for_two_rooms_are_two_messages(store: Store) -> None:
    """The in-flight dedupe (a resend while the first is queued) keys the room too."""
    one, two, again = await asyncio.gather(
        store.append("a", "ann", "x", client_id="c1"),
        store.append("b", "ann", "x", client_id="c1"),
        store.append("a", "ann", "x", client_id="c1"),
    )
    assert (one.duplicate, two.duplicate, again.duplicate) == (False, False, True)
    assert again.message.message_id == one.message.message_id


async def test_known_rooms_answers_for_many_rooms_at_once(store: Store) -> None:
    """Rooms created or with a message are known; others are not."""
    await store.create_room("made", owner="ann", private=True, members=frozenset())
    await store.append("used", "ann", "x")
    assert await store.known_rooms(["made", "used", "never"]) == {"made", "used"}
    assert await store.known_rooms([]) == set()


async def test_history_pages(store: Store) -> None:
    """history returns up to limit messages before a seq, oldest first, with has_more."""
    for i in range(1, 8):
        await store.append("r", "ann", f"m{i}")
    page, more = await store.history("r", limit=3)
    assert [m.seq for m in page] == [5, 6, 7] and more
    page, more = await store.history("r", before=5, limit=3)
    assert [m.seq for m in page] == [2, 3, 4] and more
    page, more = await store.history("r", before=2, limit=3)
    assert [m.seq for m in page] == [1] and not more
    page, more = await store.history("r", before=100, limit=2)
    assert [m.seq for m in page] == [6, 7]
    assert await store.history("nothing") == ([], False)


async def test_since(store: Store) -> None:
    """since returns messages after a seq, oldest first, up to a limit."""
    for i in range(1, 6):
        await store.append("r", "ann", f"m{i}")
    assert [m.seq for m in await store.since("r", 2, limit=10)] == [3, 4, 5]
    assert [m.seq for m in await store.since("r", 0, limit=2)] == [1, 2]
    assert await store.since("r", 5, limit=10) == []


async def test_ping(store: Store) -> None:
    """A working store answers ping."""
    await store.ping()


async def test_appends_of_one_turn_resolve_in_order(store: Store) -> None:
    """Many appends queued at once get increasing seqs, and their futures finish in that order."""
    done: list[int] = []
    futures = [store.append("r", "ann", f"m{i}") for i in range(50)]
    for i, future in enumerate(futures):
        future.add_done_callback(lambda _f, i=i: done.append(i))
    results = await asyncio.gather(*futures)
    assert [r.message.seq for r in results] == list(range(1, 51))
    assert [r.message.message for r in results] == [f"m{i}" for i in range(50)]
    assert done == list(range(50))
    await store.flush()


async def test_resend_queued_with_the_first_is_a_duplicate(store: Store) -> None:
    """A resend appended before the first copy is stored resolves to the same message."""
    first, again = (
        store.append("r", "ann", "x", client_id="c1"),
        store.append("r", "ann", "x", client_id="c1"),
    )
    one, two = await first, await again
    assert not one.duplicate and two.duplicate
    assert two.message == one.message
    assert await store.last_seq("r") == 1


async def test_first_seq_of_a_store_that_keeps_everything(store: Store) -> None:
    """A room's first kept seq is 1 (or last + 1 = 1 for a room with nothing)."""
    assert await store.first_seq("r") == 1
    await store.append("r", "ann", "x")
    await store.append("r", "ann", "y")
    assert await store.first_seq("r") == 1


async def test_users_are_unique_regardless_of_case(store: Store) -> None:
    """A name registers once in any case; lookups ignore case and return it as registered."""
    assert await store.create_user("Alice", "hash-1")
    assert not await store.create_user("alice", "hash-2")
    found = await store.get_user("ALICE")
    assert found is not None and (found.name, found.password_hash) == ("Alice", "hash-1")
    assert await store.get_user("bob") is None


async def test_direct_messages_land_in_both_inboxes(store: Store) -> None:
    """A direct message gets a seq in the sender's and the recipient's inbox, each gapless."""
    for name in ("ann", "bob", "cat"):
        await store.create_user(name, "h")
    one = await store.append_direct("ann", "bob", "hi bob", client_id="d1")
    two = await store.append_direct("cat", "bob", "hi from cat")
    three = await store.append_direct("bob", "ann", "hi ann")
    assert (one.sender_seq, one.recipient_seq) == (1, 1)
    assert (two.sender_seq, two.recipient_seq) == (1, 2)
    assert (three.sender_seq, three.recipient_seq) == (3, 2)
    assert await store.direct_last_seq("bob") == 3
    page, more = await store.direct_history("bob")
    assert [(m.seq, m.sender, m.message) for m in page] == [
        (1, "ann", "hi bob"),
        (2, "cat", "hi from cat"),
        (3, "bob", "hi ann"),
    ]
    assert not more
    assert page[0].message_id == one.message.message_id
    since, more = await store.direct_since("bob", 1, limit=1)
    assert [m.seq for m in since] == [2] and more
    before, more = await store.direct_history("bob", before=3, limit=1)
    assert [m.seq for m in before] == [2] and more
    again = await store.append_direct("ann", "bob", "hi bob", client_id="d1")
    assert again.duplicate and again.message.message_id == one.message.message_id
    assert (again.sender_seq, again.recipient_seq) == (1, 1)
    assert await store.direct_last_seq("bob") == 3


async def test_one_direct_conversation_pages_alone_and_around_a_seq(store: Store) -> None:
    """With ``peer``, history and ``around`` read one conversation; their flags count it only."""
    for name in ("ann", "bob", "cat"):
        await store.create_user(name, "h")
    for n in range(6):  # bob's stream: ann, cat, ann, cat, ... (seqs 1 to 12)
        await store.append_direct("ann", "bob", f"ann {n}")
        await store.append_direct("bob", "cat", f"to cat {n}")
    await store.append_direct("bob", "bob", "note")  # seq 13, a conversation of its own
    page, more = await store.direct_history("bob", peer="ann", limit=4)
    assert [(m.seq, m.message) for m in page] == [
        (5, "ann 2"),
        (7, "ann 3"),
        (9, "ann 4"),
        (11, "ann 5"),
    ]
    assert more
    page, more = await store.direct_history("bob", before=5, peer="ann")
    assert [m.seq for m in page] == [1, 3] and not more
    page, older, newer = await store.direct_around("bob", 6, limit=4, peer="cat")
    assert [m.seq for m in page] == [2, 4, 6, 8] and older is False and newer is True
    page, older, newer = await store.direct_around("bob", 7, limit=4)
    assert [m.seq for m in page] == [5, 6, 7, 8] and older and newer
    notes, more = await store.direct_history("bob", peer="bob")
    assert [m.message for m in notes] == ["note"] and not more


async def test_direct_message_to_yourself_is_listed_once(store: Store) -> None:
    """A note to self takes one seq in the one inbox."""
    await store.create_user("ann", "h")
    note = await store.append_direct("ann", "ann", "remember the milk")
    assert (note.sender_seq, note.recipient_seq) == (1, 1)
    assert await store.direct_last_seq("ann") == 1


async def test_private_rooms_and_members(store: Store) -> None:
    """A private room admits its owner and members only; members can be added; lists filter."""
    assert await store.create_room("team", owner="ann", private=True, members=frozenset({"bob"}))
    assert not await store.create_room("team", owner="cat", private=False, members=frozenset())
    access = await store.room_access("team")
    assert access is not None and access.private and access.owner == "ann"
    assert access.allows("ann") and access.allows("bob") and not access.allows("cat")
    await store.add_room_members("team", frozenset({"cat"}))
    access = await store.room_access("team")
    assert access is not None and access.allows("cat")
    await store.append("public-room", "dan", "hello")
    assert await store.room_access("nowhere") is None
    public = await store.room_access("public-room")
    assert public is not None and not public.private and public.allows("anyone")
    assert [r.name for r in await store.list_rooms(None)] == ["public-room"]
    assert [r.name for r in await store.list_rooms("bob")] == ["public-room", "team"]
    assert [r.name for r in await store.list_rooms("eve")] == ["public-room"]


async def test_room_messages_continue_after_creating_a_room(store: Store) -> None:
    """A created room starts at seq 1, and its messages count from there."""
    await store.create_room("made", owner="ann", private=False, members=frozenset())
    assert await store.last_seq("made") == 0
    assert (await store.append("made", "ann", "first")).message.seq == 1


async def test_file_message_takes_the_next_seq_and_keeps_its_file(store: Store) -> None:
    """A file message is stored between chats in seq order and read back with its FileInfo."""
    await store.append("r", "ann", "before")
    signed = FileInfo(PHOTO.name, PHOTO.mime, PHOTO.size, PHOTO.sha256, url="/files/x?sig=1")
    stored = await store.append("r", "bob", "", client_id="f1", file=signed)
    await store.append("r", "ann", "after")
    message = stored.message
    assert not stored.duplicate
    assert (message.seq, message.sender, message.message, message.file) == (2, "bob", "", PHOTO)
    page, more = await store.history("r")
    assert [(m.seq, m.message, m.file) for m in page] == [
        (1, "before", None),
        (2, "", PHOTO),
        (3, "after", None),
    ]
    assert not more and page[1] == message
    assert await store.since("r", 1, limit=1) == [message]
    assert await store.last_seq("r") == 3


async def test_resent_file_message_is_the_first(store: Store) -> None:
    """A file resent with the same (sender, client_id) resolves to the first, file and all."""
    first = await store.append("r", "ann", "", client_id="f1", file=PHOTO)
    again = await store.append("r", "ann", "", client_id="f1", file=NOTES)
    assert again.duplicate and again.message == first.message
    assert again.message.file == PHOTO
    assert await store.last_seq("r") == 1


async def test_direct_file_message_is_in_both_inboxes(store: Store) -> None:
    """A direct file message takes a seq in both inboxes and is listed there with its FileInfo."""
    for name in ("ann", "bob"):
        await store.create_user(name, "h")
    await store.append_direct("ann", "bob", "hi")
    sent = await store.append_direct("ann", "bob", "", client_id="f1", file=NOTES)
    assert (sent.sender_seq, sent.recipient_seq) == (2, 2)
    assert sent.message.file == NOTES and sent.message.message == ""
    for owner in ("ann", "bob"):
        page, _ = await store.direct_history(owner)
        assert [(m.seq, m.message, m.file) for m in page] == [(1, "hi", None), (2, "", NOTES)]
        since, more = await store.direct_since(owner, 1, limit=5)
        assert [(m.seq, m.file) for m in since] == [(2, NOTES)] and not more
    again = await store.append_direct("ann", "bob", "", client_id="f1", file=PHOTO)
    assert again.duplicate and again.message == sent.message
    assert (again.sender_seq, again.recipient_seq) == (2, 2)


async def test_message_by_id(store: Store) -> None:
    """message_by_id finds a room message or a direct one (without a seq), else None."""
    for name in ("ann", "bob"):
        await store.create_user(name, "h")
    await store.append("r", "ann", "text")
    room_file = (await store.append("r", "ann", "", file=PHOTO)).message
    direct_file = (await store.append_direct("ann", "bob", "", file=NOTES)).message
    found = await store.message_by_id(room_file.message_id)
    assert isinstance(found, ChatMessage) and found == room_file
    found = await store.message_by_id(direct_file.message_id)
    assert isinstance(found, DirectMessage) and found == direct_file
    assert found.seq is None and (found.sender, found.to, found.file) == ("ann", "bob", NOTES)
    text = (await store.append_direct("bob", "ann", "plain")).message
    assert await store.message_by_id(text.message_id) == text
    assert await store.message_by_id("no-such-id") is None


async def test_file_digests_name_every_kept_file_once(store: Store) -> None:
    """file_digests lists the digest of each room and direct file message, chat adds none."""
    for name in ("ann", "bob"):
        await store.create_user(name, "h")
    assert await store.file_digests() == set()
    await store.append("r", "ann", "text")
    await store.append("r", "ann", "", file=PHOTO)
    await store.append("s", "bob", "", file=PHOTO)
    await store.append_direct("ann", "bob", "", file=NOTES)
    assert await store.file_digests() == {PHOTO.sha256, NOTES.sha256}


async def test_message_with_u0000_fails_alone(store: Store) -> None:
    """A text or frame id with U+0000 (PostgreSQL cannot hold it) fails alone, on every store."""
    await store.create_user("ann", "h")
    before = store.append("r", "ann", "fine")
    bad_text = store.append("r", "bob", "nul \x00 inside")
    bad_id = store.append("r", "bob", "text", client_id="id\x00")
    bad_direct = store.append_direct("ann", "ann", "note \x00")
    after = store.append("r", "cat", "also fine")
    for bad in (bad_text, bad_id, bad_direct):
        with pytest.raises(StoreError, match="U\\+0000"):
            await bad
    assert [(await f).message.seq for f in (before, after)] == [1, 2]
    assert await store.direct_last_seq("ann") == 0


async def test_a_lone_surrogate_fails_alone(store: Store) -> None:
    """Text or an id that is not valid Unicode (no database encodes it) fails alone."""
    before = store.append("r", "ann", "fine")
    bad_text = store.append("r", "bob", "half \udcff")
    bad_id = store.append("r", "bob", "text", client_id="\udcff")
    after = store.append("r", "cat", "also fine é")
    for bad in (bad_text, bad_id):
        with pytest.raises(StoreError, match="not valid Unicode"):
            await bad
    assert [(await f).message.seq for f in (before, after)] == [1, 2]


async def test_file_bytes_since_counts_a_senders_recent_files(store: Store, clock: Clock) -> None:
    """file_bytes_since adds the sizes of a sender's room and direct files from a time on."""
    for name in ("ann", "bob"):
        await store.create_user(name, "h")
    assert await store.file_bytes_since("ann", 0) == 0
    await store.append("r", "ann", "", file=PHOTO)
    since_ms = int(clock.now * 1000) + 1000
    clock.now += 1
    await store.append("r", "ann", "text")
    await store.append("r", "ann", "", file=PHOTO)
    await store.append_direct("ann", "bob", "", file=NOTES)
    await store.append("r", "bob", "", file=NOTES)
    assert await store.file_bytes_since("ann", 0) == 2 * PHOTO.size + NOTES.size
    assert await store.file_bytes_since("ann", since_ms) == PHOTO.size + NOTES.size
    assert await store.file_bytes_since("bob", 0) == NOTES.size
    assert await store.file_bytes_since("cat", 0) == 0


async def test_rooms_are_listed_by_code_point(store: Store) -> None:
    """list_rooms orders names by code point (upper case first), whatever the database's locale."""
    for name in ("b", "é", "B", "a", "_"):
        await store.append(name, "ann", "x")
    await store.create_room("Z", owner="ann", private=True, members=frozenset({"bob", "cat"}))
    assert [r.name for r in await store.list_rooms("cat")] == ["B", "Z", "_", "a", "b", "é"]
    [team] = [r for r in await store.list_rooms("ann") if r.name == "Z"]
    assert team.members == frozenset({"bob", "cat"}) and team.owner == "ann" and team.private


# -- durable stores: SQLite and PostgreSQL -------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """An empty database that stores are opened on, one after another."""
    async with database(request.param, tmp_path) as fresh:
        yield fresh


async def test_reopened_store_keeps_messages_seqs_and_dedupe(db: Database) -> None:
    """After a close and reopen, history, the next seq and resend detection carry on."""
    async with db.opened() as first:
        stored = await first.append("r", "ann", "one", client_id="c1")
        await first.append("r", "bob", "two")
    async with db.opened() as second:
        again = await second.append("r", "ann", "one", client_id="c1")
        assert again.duplicate and again.message == stored.message
        third = await second.append("r", "ann", "three")
        assert third.message.seq == 3
        messages, more = await second.history("r")
        assert [(m.seq, m.message, m.sender) for m in messages] == [
            (1, "one", "ann"),
            (2, "two", "bob"),
            (3, "three", "ann"),
        ]
        assert not more


async def test_reopened_store_keeps_file_messages(db: Database) -> None:
    """Room and direct file messages, and their dedupe, outlive a close and reopen."""
    async with db.opened() as first:
        for name in ("ann", "bob"):
            await first.create_user(name, "h")
        room = await first.append("r", "ann", "", client_id="f1", file=PHOTO)
        direct = await first.append_direct("ann", "bob", "", client_id="f2", file=PHOTO)
    async with db.opened() as second:
        again = await second.append("r", "ann", "", client_id="f1", file=PHOTO)
        assert again.duplicate and again.message == room.message
        resent = await second.append_direct("ann", "bob", "", client_id="f2", file=PHOTO)
        assert resent.duplicate and resent.message == direct.message
        assert (resent.sender_seq, resent.recipient_seq) == (1, 1)
        assert (await second.since("r", 0, limit=5)) == [room.message]
        [listed], _ = await second.direct_history("bob")
        assert listed.file == PHOTO and listed.seq == 1
        found = await second.message_by_id(direct.message.message_id)
        assert isinstance(found, DirectMessage) and found.file == PHOTO


async def test_close_stores_what_was_queued_and_refuses_what_comes_after(db: Database) -> None:
    """Appends still queued when close is called are written before it returns; later ones fail."""
    store = db.store()
    await store.open()
    futures = [store.append("r", "ann", f"m{i}") for i in range(20)]
    await store.close()
    assert all(f.done() and not f.cancelled() and f.exception() is None for f in futures)
    with pytest.raises(StoreError, match="closed"):
        await store.append("r", "ann", "late")
    async with db.opened() as reopened:
        assert await reopened.last_seq("r") == 20


async def test_schema_version_is_recorded(db: Database) -> None:
    """A new database records every migration, once, in schema_version."""
    async with db.opened():
        pass
    rows = await db.fetch("SELECT version, description FROM schema_version ORDER BY version")
    assert rows == [(m.version, m.description) for m in MIGRATIONS]
    assert [version for version, _ in rows] == list(range(1, LATEST_VERSION + 1))


def schema_at(version: int) -> list[str]:
    """The statements that make a database as roomcast left it at schema ``version``."""
    statements = [VERSION_TABLE]
    for migration in MIGRATIONS[:version]:
        statements += migration.statements
        description = migration.description.replace("'", "''")
        statements.append(
            "INSERT INTO schema_version (version, description, applied_ms)"
            f" VALUES ({migration.version}, '{description}', 0)"
        )
    return statements


async def test_version_2_database_gains_file_columns(db: Database) -> None:
    """A database from before file messages migrates; its messages come back as text."""
    await db.execute(
        *schema_at(2),
        "INSERT INTO messages (room, seq, message_id, sender, body, client_id, ts_ms)"
        " VALUES ('r', 1, 'old1', 'ann', 'from v2', NULL, 5)",
        "INSERT INTO rooms (name, last_seq, created_ms) VALUES ('r', 1, 5)",
    )
    async with db.opened() as store:
        [old], _ = await store.history("r")
        assert (old.seq, old.message, old.file) == (1, "from v2", None)
        added = await store.append("r", "bob", "", file=FileInfo("a.txt", "text/plain", 1, "0f"))
        assert added.message.seq == 2
        assert await store.message_by_id("old1") == old
    rows = await db.fetch("SELECT version FROM schema_version ORDER BY version")
    versions = [version for (version,) in rows]
    assert versions == [1, 2, 3, 4, 5, 6, 7, 8] == list(range(1, LATEST_VERSION + 1))


async def test_version_5_database_reads_its_past_as_read(db: Database) -> None:
    """Upgrading to read markers leaves nobody's direct messages or private rooms unread."""
    await db.execute(
        *schema_at(5),
        "INSERT INTO users (name, name_key, password_hash, dm_seq, created_ms)"
        " VALUES ('Ann', 'ann', 'h', 7, 0), ('bob', 'bob', 'h', 0, 0)",
        "INSERT INTO rooms (name, last_seq, created_ms, private, owner)"
        " VALUES ('team', 4, 0, 1, 'Ann'), ('open', 9, 0, 0, NULL)",
        "INSERT INTO room_members (room, name, added_ms) VALUES ('team', 'bob', 0)",
    )
    async with db.opened() as store:
        assert await store.markers("Ann") == {"@": 7, "team": 4}
        assert await store.markers("bob") == {"team": 4}


async def test_newer_schema_is_refused(db: Database) -> None:
    """A database migrated by a newer roomcast is refused with a clear StoreError."""
    async with db.opened():
        pass
    await db.execute(
        "INSERT INTO schema_version (version, description, applied_ms) VALUES (999, 'x', 0)"
    )
    with pytest.raises(StoreError, match="schema version 999"):
        await db.store().open()


async def test_retention_prunes_old_messages_and_moves_first_seq(db: Database) -> None:
    """With history_days, older room and direct messages go, first_seq moves up, last_seq stays."""
    clock = Clock()
    async with db.opened(history_days=1, clock=clock) as store:
        await store.create_user("ann", "h")
        await store.create_user("bob", "h")
        for i in range(3):
            await store.append("r", "ann", f"old{i}")
        old = await store.append_direct("ann", "bob", "old", file=NOTES)
        clock.now += 2 * DAY
        await store.append("r", "ann", "new")
        assert await store.prune() == 4
        assert await store.first_seq("r") == 4
        assert await store.last_seq("r") == 4
        assert [m.seq for m in await store.since("r", 0, limit=10)] == [4]
        messages, more = await store.history("r")
        assert [m.message for m in messages] == ["new"] and not more
        assert await store.message_by_id(old.message.message_id) is None
        assert await store.direct_history("bob") == ([], False)
        assert await store.file_digests() == set()
        assert await store.direct_last_seq("bob") == 1
        clock.now += 2 * DAY
        assert await store.prune() == 1
        assert await store.first_seq("r") == 5
        assert (await store.append("r", "ann", "next")).message.seq == 5
        assert (await store.append_direct("ann", "bob", "next")).recipient_seq == 2
    assert await db.fetch("SELECT owner, seq FROM inbox ORDER BY owner") == [("ann", 2), ("bob", 2)]


async def test_retention_deletes_in_chunks(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass deletes chunk after chunk until fewer than a chunk of each kind are left."""
    monkeypatch.setattr(sql, "PRUNE_CHUNK", 3)
    clock = Clock()
    async with db.opened(history_days=1, clock=clock) as store:
        await store.create_user("ann", "h")
        for i in range(7):
            await store.append("r", "ann", f"old{i}")
            await store.append_direct("ann", "ann", f"old{i}")
        clock.now += 2 * DAY
        await store.append("r", "ann", "new")
        assert await store.prune() == 14
        assert await store.first_seq("r") == 8
        assert await store.direct_history("ann") == ([], False)


async def test_store_without_retention_prunes_nothing(db: Database, clock: Clock) -> None:
    """history_days 0 keeps everything."""
    async with db.opened(clock=clock) as store:
        await store.append("r", "ann", "x")
        clock.now += 400 * DAY
        assert await store.prune() == 0
        assert await store.first_seq("r") == 1


async def test_failed_batch_is_rolled_back_whole_then_writes_recover(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch with a direct message to an unknown user fails whole; the next batch is stored."""
    async with db.opened() as store:
        await store.create_user("ann", "h")
        room = store.append("r", "ann", "lost with the batch")
        direct = store.append_direct("ann", "ghost", "to nobody")
        for future in (room, direct):
            with pytest.raises(StoreError, match="no user 'ghost'"):
                await future
        assert await store.last_seq("r") == 0
        assert await store.direct_last_seq("ann") == 0
        with caplog.at_level(logging.WARNING, logger="roomcast.store"):
            assert (await store.append("r", "ann", "kept")).message.seq == 1
        assert "work again" in caplog.text
        assert (await store.append_direct("ann", "ann", "note")).sender_seq == 1


async def test_on_batch_hears_of_each_batch_and_cannot_stop_the_writer(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """on_batch gets each batch's size and time; when it raises, it is logged and writes go on."""
    async with db.opened() as store:
        seen: list[tuple[int, float]] = []
        store.on_batch = lambda size, seconds: seen.append((size, seconds))
        await asyncio.gather(*(store.append("r", "ann", f"m{i}") for i in range(5)))
        assert [size for size, _ in seen] == [5] and seen[0][1] >= 0

        def broken(size: int, seconds: float) -> None:
            raise RuntimeError("metrics are down")

        store.on_batch = broken
        with caplog.at_level(logging.ERROR, logger="roomcast.store"):
            assert (await store.append("r", "ann", "still stored")).message.seq == 6
            assert (await store.append("r", "ann", "and this")).message.seq == 7
        assert "on_batch failed" in caplog.text


async def test_reads_run_while_a_batch_is_written(db: Database) -> None:
    """History can be read while appends are queued; it sees whole committed batches only."""
    async with db.opened() as store:
        await store.append("r", "ann", "committed")
        pending = [store.append("r", "ann", f"p{i}") for i in range(200)]
        messages, _ = await store.history("r", limit=500)
        texts = [m.message for m in messages]
        # The read ran before the batch's commit or after it, never inside.
        assert texts in (["committed"], ["committed", *(f"p{i}" for i in range(200))])
        await asyncio.gather(*pending)
        assert await store.last_seq("r") == 201
