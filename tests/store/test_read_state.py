"""The Store contract for read state, run against every store.

Read markers only move forward; unread counts take messages from others,
not deleted, never changes; receipts leave out users who hide them; the
outbox of notifications hands each one to one attempt at a time.
"""

from __future__ import annotations

from roomcast.model import ChatMessage, DirectMessage
from roomcast.store.base import AppendResult, DirectResult, Draft, Store
from tests.fakes import Clock


async def users(store: Store, *names: str) -> None:
    for name in names:
        assert await store.create_user(name, "hash")


async def say(store: Store, room: str, sender: str, text: str, *mentions: str) -> ChatMessage:
    result = await store.submit(Draft(sender, room=room, text=text, mentions=mentions))
    assert isinstance(result, AppendResult) and isinstance(result.message, ChatMessage)
    return result.message


async def change(
    store: Store, kind: str, target: str, by: str, *, room: str | None = None, **where: str
) -> None:
    """A change of ``target`` in ``room`` or the conversation ``to``, which must take seqs."""
    to, text = where.get("to"), where.get("text", "")
    draft = Draft(by, room=room, to=to, text=text, kind=kind, target=target)
    result = await store.submit(draft)
    if isinstance(result, AppendResult):
        assert result.message.seq is not None
    else:
        assert isinstance(result, DirectResult) and result.sender_seq > 0


async def dm(store: Store, sender: str, to: str, text: str) -> DirectResult:
    result = await store.append_direct(sender, to, text)
    assert isinstance(result.message, DirectMessage)
    return result


# -- markers --------------------------------------------------------------------------


async def test_markers_only_move_forward(store: Store) -> None:
    """A lower seq changes nothing; a higher one moves the marker; streams are apart."""
    await store.save_markers([("alice", "lobby", 5), ("alice", "@", 3), ("alice", "@bob", 2)])
    await store.save_markers([("alice", "lobby", 4), ("alice", "@", 6), ("bob", "lobby", 1)])
    assert await store.markers("alice") == {"lobby": 5, "@": 6, "@bob": 2}
    assert await store.marker("alice", "lobby") == 5
    assert await store.marker("alice", "@") == 6
    assert await store.marker("alice", "dev") is None
    assert await store.marker("carol", "lobby") is None
    assert await store.markers("carol") == {}
    assert await store.markers("bob") == {"lobby": 1}
    await store.save_markers([])
    assert await store.marker("alice", "lobby") == 5


async def test_one_save_may_name_a_marker_twice(store: Store) -> None:
    """Named twice in one call, a marker ends at the higher seq, in either order."""
    await store.save_markers([("alice", "lobby", 9), ("alice", "lobby", 7), ("bob", "@", 2)])
    await store.save_markers([("alice", "@", 3), ("alice", "@", 4)])
    assert await store.markers("alice") == {"lobby": 9, "@": 4}
    assert await store.markers("bob") == {"@": 2}


# -- unread in a room -------------------------------------------------------------------


async def test_unread_counts_messages_from_others_not_deleted_nor_changes(
    store: Store, clock: Clock
) -> None:
    """Edits, reactions and deletes take seqs but are not messages; a deleted one is gone."""
    await users(store, "alice", "bob")
    first = await say(store, "lobby", "bob", "hi")  # 1
    await say(store, "lobby", "alice", "mine")  # 2
    await say(store, "lobby", "bob", "@alice", "alice")  # 3
    clock.now += 1
    fourth = await say(store, "lobby", "bob", "four")  # 4
    await change(store, "edit", first.message_id, "bob", room="lobby", text="hi!")  # 5
    await change(store, "react", first.message_id, "alice", room="lobby", text="👍")  # 6
    clock.now += 1
    gone = await say(store, "lobby", "bob", "bye", "alice")  # 7
    await change(store, "delete", gone.message_id, "bob", room="lobby")  # 8
    await say(store, "other", "bob", "elsewhere", "alice")
    assert await store.last_seq("lobby") == 8
    assert await store.unread_in_room("lobby", "alice", 0, 8) == (3, 1)
    assert await store.unread_in_room("lobby", "alice", 1, 8) == (2, 1)
    assert await store.unread_in_room("lobby", "alice", 0, 3) == (2, 1)
    assert await store.unread_in_room("lobby", "alice", 3, 8) == (1, 0)
    assert await store.unread_in_room("lobby", "alice", 4, 8) == (0, 0)
    assert await store.unread_in_room("lobby", "alice", 8, 8) == (0, 0)
    assert await store.unread_in_room("lobby", "bob", 0, 8) == (1, 0)
    assert await store.unread_in_room("other", "alice", 0, 1) == (1, 1)
    assert await store.unread_in_room("empty", "alice", 0, 5) == (0, 0)
    assert await store.last_message("lobby") == (4, fourth.ts_ms)
    assert fourth.ts_ms == 1_790_000_001_000


async def test_a_name_with_an_underscore_counts_only_its_own_mentions(store: Store) -> None:
    """LIKE wildcards in a name are escaped: a_b is not mentioned by a mention of axb."""
    await users(store, "a_b", "axb", "a%b", "aab", "bob")
    await say(store, "lobby", "bob", "@axb", "axb")
    await say(store, "lobby", "bob", "@aab", "aab")
    await say(store, "lobby", "bob", "@a_b and @axb", "a_b", "axb")
    assert await store.unread_in_room("lobby", "a_b", 0, 3) == (3, 1)
    assert await store.unread_in_room("lobby", "axb", 0, 3) == (3, 2)
    assert await store.unread_in_room("lobby", "a%b", 0, 3) == (3, 0)
    assert await store.unread_in_room("lobby", "ax", 0, 3) == (3, 0)


async def test_the_last_message_of_a_room_skips_deleted_ones_and_changes(store: Store) -> None:
    """None for an empty room or one whose only message is deleted."""
    assert await store.last_message("lobby") is None
    only = await say(store, "lobby", "bob", "x")
    assert await store.last_message("lobby") == (1, only.ts_ms)
    await change(store, "react", only.message_id, "ann", room="lobby", text="👍")
    assert await store.last_message("lobby") == (1, only.ts_ms)
    await change(store, "delete", only.message_id, "bob", room="lobby")
    assert await store.last_message("lobby") is None


# -- direct streams ---------------------------------------------------------------------


async def test_unread_direct_and_the_conversations_in_a_stream(store: Store, clock: Clock) -> None:
    """Messages from others, not deleted; mentions and own messages take seqs but do not count."""
    await users(store, "alice", "bob", "carol")
    a1 = await dm(store, "alice", "bob", "a1")  # bob 1, alice 1
    clock.now += 1
    c1 = await dm(store, "carol", "bob", "c1")  # bob 2, carol 1
    clock.now += 1
    b1 = await dm(store, "bob", "alice", "b1")  # bob 3, alice 2
    mention = await store.submit(Draft("carol", room="lobby", text="@bob", mentions=("bob",)))
    assert isinstance(mention, AppendResult) and mention.mentioned == (("bob", 4),)
    clock.now += 1
    a2 = await dm(store, "alice", "bob", "a2")  # bob 5, alice 3
    note = await dm(store, "bob", "bob", "note to self")  # bob 6
    named = await store.submit(Draft("carol", to="bob", text="@bob", mentions=("bob",)))
    assert isinstance(named, DirectResult)  # bob 7, carol 2
    seqs = [(r.sender_seq, r.recipient_seq) for r in (a1, c1, b1, a2, note, named)]
    assert seqs == [(1, 1), (1, 2), (3, 2), (3, 5), (6, 6), (2, 7)]
    assert await store.direct_last_seq("bob") == 7
    assert await store.unread_direct("bob", 0) == [
        ("alice", 1, False),
        ("carol", 2, False),
        ("alice", 5, False),
        ("carol", 7, True),
    ]
    assert await store.unread_direct("bob", 5) == [("carol", 7, True)]
    assert await store.unread_direct("alice", 0) == [("bob", 2, False)]
    assert await store.unread_direct("dave", 0) == []
    assert await store.last_direct("bob", None) == (7, named.message.ts_ms)
    assert await store.last_direct("bob", "alice") == (5, a2.message.ts_ms)
    assert await store.last_direct("bob", "carol") == (7, named.message.ts_ms)
    assert await store.last_direct("alice", "carol") is None
    assert await store.last_direct("dave", None) is None
    assert await store.direct_peers("bob", 0, 7) == ["alice", "carol"]
    assert await store.direct_peers("bob", 2, 4) == ["alice"]
    assert await store.direct_peers("bob", 3, 4) == []  # the mention is no conversation
    assert await store.direct_peers("bob", 5, 6) == []  # the note is to nobody else
    assert await store.direct_seq_for("bob", "alice", 7) == 3
    assert await store.direct_seq_for("bob", "alice", 4) == 2
    assert await store.direct_seq_for("bob", "alice", 2) == 1
    assert await store.direct_seq_for("bob", "alice", 0) is None
    assert await store.direct_seq_for("bob", "carol", 1) is None
    assert await store.direct_seq_for("bob", "carol", 6) == 1
    assert await store.direct_seq_for("alice", "bob", 2) == 3
    assert await store.direct_seq_for("alice", "carol", 9) is None


async def test_a_deleted_direct_message_is_neither_unread_nor_last(store: Store) -> None:
    """The delete takes a seq in both streams; the message leaves the counts."""
    await users(store, "alice", "bob")
    first = await dm(store, "alice", "bob", "one")
    second = await dm(store, "alice", "bob", "two")
    await change(store, "delete", second.message.message_id, "alice", to="bob")
    assert await store.direct_last_seq("bob") == 3
    assert await store.unread_direct("bob", 0) == [("alice", 1, False)]
    assert await store.last_direct("bob", "alice") == (1, first.message.ts_ms)
    assert await store.last_direct("alice", None) == (1, first.message.ts_ms)
    await change(store, "edit", first.message.message_id, "alice", to="bob", text="one!")
    assert await store.last_direct("bob", None) == (1, first.message.ts_ms)
    assert await store.unread_direct("bob", 0) == [("alice", 1, False)]


# -- receipts ---------------------------------------------------------------------------


async def test_readers_leave_out_those_who_hide_their_receipts(store: Store) -> None:
    """Furthest first, at least at_least, at most limit; hidden and unknown names never."""
    await users(store, "alice", "bob", "carol", "dave")
    await store.save_markers(
        [
            ("alice", "lobby", 5),
            ("bob", "lobby", 3),
            ("carol", "lobby", 7),
            ("ghost", "lobby", 9),
            ("dave", "dev", 8),
            ("dave", "@", 8),
            ("dave", "@alice", 8),
        ]
    )
    await store.set_hide_receipts("carol", True)
    carol = await store.get_user("carol")
    assert carol is not None and carol.hide_receipts
    alice = await store.get_user("alice")
    assert alice is not None and not alice.hide_receipts
    assert await store.readers("lobby", limit=10) == [("alice", 5), ("bob", 3)]
    assert await store.readers("lobby", at_least=4, limit=10) == [("alice", 5)]
    assert await store.readers("lobby", at_least=5, limit=10) == [("alice", 5)]
    assert await store.readers("lobby", at_least=6, limit=10) == []
    assert await store.readers("lobby", limit=1) == [("alice", 5)]
    assert await store.readers("nowhere", limit=10) == []
    assert await store.reader_count("lobby") == 4
    assert await store.reader_count("dev") == 1
    assert await store.reader_count("nowhere") == 0
    await store.set_hide_receipts("carol", False)
    assert await store.readers("lobby", limit=2) == [("carol", 7), ("alice", 5)]
    carol = await store.get_user("carol")
    assert carol is not None and not carol.hide_receipts


async def test_room_receipts_can_be_turned_off_and_on(store: Store) -> None:
    """A created room and a room known by its messages both start on and keep the setting."""
    assert await store.create_room("team", owner="alice", private=True, members=frozenset())
    await say(store, "lobby", "bob", "x")
    for room in ("team", "lobby"):
        access = await store.room_access(room)
        assert access is not None and access.receipts
    await store.set_room_receipts("team", False)
    await store.set_room_receipts("lobby", False)
    for room in ("team", "lobby"):
        access = await store.room_access(room)
        assert access is not None and not access.receipts
    listed = {access.name: access.receipts for access in await store.list_rooms("alice")}
    assert listed == {"team": False, "lobby": False}
    await store.set_room_receipts("team", True)
    access = await store.room_access("team")
    assert access is not None and access.receipts and access.owner == "alice"


# -- notifications ----------------------------------------------------------------------


async def test_notifications_are_due_claimed_retried_and_finished(
    store: Store, clock: Clock
) -> None:
    """A claim takes one attempt and a lease; a retry is due later; finish forgets it."""
    one, two = b'{"id":"n1","message":"h\xc3\xa9"}', b'{"id":"n2"}'
    await store.add_notification("n1", "m1", one)
    clock.now += 1
    await store.add_notification("n2", "m2", two)
    assert await store.notification_count() == 2
    assert await store.due_notifications(10) == [("n1", one, 0), ("n2", two, 0)]
    assert await store.due_notifications(1) == [("n1", one, 0)]
    assert await store.claim_notification("n1", 0, 15.0)
    assert not await store.claim_notification("n1", 0, 15.0)  # another node took it
    assert not await store.claim_notification("nobody", 0, 15.0)
    assert await store.due_notifications(10) == [("n2", two, 0)]
    clock.now += 16  # the lease ran out: its node died mid-post
    assert await store.due_notifications(10) == [("n2", two, 0), ("n1", one, 1)]
    assert await store.claim_notification("n1", 1, 15.0)
    await store.retry_notification("n1", 30.0)
    assert await store.due_notifications(10) == [("n2", two, 0)]
    clock.now += 29
    assert await store.due_notifications(10) == [("n2", two, 0)]
    clock.now += 2
    assert await store.due_notifications(10) == [("n2", two, 0), ("n1", one, 2)]
    await store.finish_notification("n1")
    assert await store.notification_count() == 1
    assert await store.due_notifications(10) == [("n2", two, 0)]
    await store.finish_notification("n1")  # forgotten already: nothing happens
    assert await store.notification_count() == 1


async def test_adding_a_kept_notification_again_changes_nothing(store: Store, clock: Clock) -> None:
    """The same id keeps its body, attempts and due time."""
    await store.add_notification("n1", "m1", b'{"first":true}')
    assert await store.claim_notification("n1", 0, 15.0)
    await store.add_notification("n1", "m1", b'{"second":true}')
    assert await store.notification_count() == 1
    assert await store.due_notifications(10) == []
    clock.now += 15
    assert await store.due_notifications(10) == [("n1", b'{"first":true}', 1)]


async def test_deleting_a_message_forgets_its_notifications(store: Store) -> None:
    """A notification carries the message's text: a delete of the message takes it too."""
    await store.create_user("alice", "hash")
    kept = await store.append("lobby", "bob", "hello @alice")
    other = await store.append("lobby", "bob", "still here")
    await store.add_notification("n1", kept.message.message_id, b'{"message":"hello @alice"}')
    await store.add_notification("n2", other.message.message_id, b'{"message":"still here"}')
    deleted = await store.submit(
        Draft("bob", room="lobby", kind="delete", target=kept.message.message_id)
    )
    assert deleted.message.seq is not None
    assert [row[0] for row in await store.due_notifications(10)] == ["n2"]
