"""The Store contract, run against every store implementation.

Every backend is a param of the ``store`` fixture and must pass the same
tests: memory, SQLite, and PostgreSQL (a fresh database per test on the
server of ``ROOMCAST_TEST_DATABASE_URL``; skipped when it does not answer,
failed in CI).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from roomcast.protocol.messages import ChatMessage, DirectMessage, FileInfo
from roomcast.store.base import DEDUPE_SECONDS, Store
from tests.fakes import Clock
from tests.store.backends import opened

PHOTO = FileInfo("cat.png", "image/png", 1234, "ab" * 32)
NOTES = FileInfo("notes.txt", "text/plain", 5, "cd" * 32)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(
    request: pytest.FixtureRequest, clock: Clock, tmp_path: Path
) -> AsyncIterator[Store]:
    async with opened(request.param, tmp_path, clock=clock) as backend:
        yield backend


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
