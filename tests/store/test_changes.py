"""The Store contract for messages that change, run against every store.

Edits, deletes and reactions are drafts (``Store.submit``) decided against
the message's state in the transaction that stores them; replies carry
their thread; mentions land in the named users' inboxes.
"""

from __future__ import annotations

import asyncio

import pytest

from roomcast.exceptions import InvalidRequest, NoSuchMessage
from roomcast.model import Change, ChatMessage, DirectMessage, FileInfo, Mention
from roomcast.store.base import AppendResult, DirectResult, Draft, Store
from roomcast.store.batch import MAX_REACTIONS


def change(kind: str, target: str, by: str, text: str = "", **where: str | None) -> Draft:
    """A change draft in ``lobby`` unless ``to`` is given."""
    room = None if "to" in where else where.get("room", "lobby")
    return Draft(by, room=room, to=where.get("to"), text=text, kind=kind, target=target)


async def room_change(store: Store, draft: Draft) -> Change:
    result = await store.submit(draft)
    assert isinstance(result, AppendResult) and isinstance(result.message, Change)
    return result.message


async def test_changes_take_the_rooms_next_seqs_and_history_shows_the_state(store: Store) -> None:
    """edit, react and delete are events 2, 3, 4; history has one message, as it is now."""
    first = (await store.append("lobby", "ann", "helo")).message
    edit = await room_change(store, change("edit", first.message_id, "ann", "hello"))
    react = await room_change(store, change("react", first.message_id, "bob", "👍"))
    assert (edit.seq, react.seq, edit.text, react.by) == (2, 3, "hello", "bob")
    (now,), more = await store.history("lobby")
    assert not more and now.message == "hello" and now.edited_ms is not None
    assert now.reactions == (("👍", ("bob",)),)
    gone = await room_change(store, change("delete", first.message_id, "ann"))
    assert gone.seq == 4 and await store.last_seq("lobby") == 4
    (tombstone,), _ = await store.history("lobby")
    assert tombstone.deleted and tombstone.message == "" and tombstone.reactions == ()
    events = await store.since("lobby", 0, limit=10)
    assert [type(e).__name__ for e in events] == ["ChatMessage", "Change", "Change", "Change"]
    replayed_edit = events[1]
    assert isinstance(replayed_edit, Change) and replayed_edit.text == ""  # erased with it
    found = await store.message_by_id(first.message_id)
    assert isinstance(found, ChatMessage) and found.deleted
    assert await store.message_by_id(edit.target) is not None


async def test_what_the_state_refuses_or_ignores(store: Store) -> None:
    """A second delete and a second reaction change nothing; an edit of a deleted message fails."""
    target = (await store.append("lobby", "ann", "x")).message.message_id
    await room_change(store, change("react", target, "bob", "🎉"))
    again = await room_change(store, change("react", target, "bob", "🎉"))
    assert again.seq is None
    absent = await room_change(store, change("unreact", target, "bob", "🦄"))
    assert absent.seq is None
    assert (await room_change(store, change("delete", target, "ann"))).seq == 3
    assert (await room_change(store, change("delete", target, "ann"))).seq is None
    with pytest.raises(InvalidRequest):
        await store.submit(change("edit", target, "ann", "y"))
    with pytest.raises(InvalidRequest):
        await store.submit(change("react", target, "bob", "👍"))
    with pytest.raises(NoSuchMessage):
        await store.submit(change("edit", "f" * 32, "ann", "y"))
    assert await store.last_seq("lobby") == 3


async def test_one_batch_is_decided_in_order(store: Store) -> None:
    """Changes queued together are decided one after another, as if sent apart."""
    target = (await store.append("lobby", "ann", "x")).message.message_id
    futures = [
        store.submit(change("react", target, "bob", "👍")),
        store.submit(change("unreact", target, "bob", "👍")),
        store.submit(change("react", target, "bob", "👍")),
        store.submit(change("delete", target, "ann")),
        store.submit(change("edit", target, "ann", "late")),
    ]
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    seqs = [o.message.seq for o in outcomes[:4] if isinstance(o, AppendResult)]
    assert seqs == [2, 3, 4, 5] and isinstance(outcomes[4], InvalidRequest)
    assert await store.last_seq("lobby") == 5
    (message,), _ = await store.history("lobby")
    assert message.deleted and message.reactions == ()


async def test_reactions_are_capped_per_message(store: Store) -> None:
    """The first MAX_REACTIONS emoji are taken; one more is refused; a known one still counts."""
    target = (await store.append("lobby", "ann", "x")).message.message_id
    for i in range(MAX_REACTIONS):
        await room_change(store, change("react", target, "ann", chr(0x1F600 + i)))
    with pytest.raises(InvalidRequest):
        await store.submit(change("react", target, "ann", "🦄"))
    assert (await room_change(store, change("react", target, "bob", chr(0x1F600)))).seq
    (message,), _ = await store.history("lobby")
    assert message.reactions[0] == (chr(0x1F600), ("ann", "bob"))


async def test_a_resent_change_is_the_first(store: Store) -> None:
    """The same change with the same id is found again, not applied twice."""
    target = (await store.append("lobby", "ann", "x")).message.message_id
    draft = Draft("ann", room="lobby", text="y", client_id="e1", kind="edit", target=target)
    first = await store.submit(draft)
    again = await store.submit(draft)
    assert isinstance(first, AppendResult) and isinstance(again, AppendResult)
    assert again.duplicate and again.message == first.message
    assert await store.last_seq("lobby") == 2


async def test_replies_carry_their_thread_and_history_pages_it(store: Store) -> None:
    """A reply keeps reply_to and thread; thread history lists the root and its replies."""
    root = (await store.append("lobby", "ann", "root")).message.message_id
    await store.append("lobby", "bob", "aside")
    for text in ("one", "two"):
        await store.submit(Draft("bob", room="lobby", text=text, reply_to=root, thread=root))
    page, more = await store.history("lobby", thread=root)
    assert [m.message for m in page] == ["root", "one", "two"] and not more
    assert page[0].reply_count == 2 and page[1].thread == root
    assert page[1].quote is not None and page[1].quote.message == "root"
    older, more = await store.history("lobby", thread=root, before=page[2].seq, limit=1)
    assert [m.message for m in older] == ["one"] and more
    around, older_exist, newer_exist = await store.around("lobby", 3, limit=2)
    assert [m.seq for m in around] == [2, 3] and older_exist and newer_exist


async def test_mentions_land_in_the_named_users_inboxes(store: Store) -> None:
    """A room message naming users lists them, and each (not the sender) gets a mention."""
    for name in ("ann", "bob"):
        assert await store.create_user(name, "hash")
    result = await store.submit(
        Draft("ann", room="lobby", text="@bob @ann", mentions=("bob", "ann"))
    )
    assert isinstance(result, AppendResult)
    assert result.mentioned == (("bob", 1),)
    events, more = await store.direct_since("bob", 0, limit=10)
    assert not more and events == [
        Mention("lobby", result.message.message_id, "ann", 1, result.message.ts_ms)
    ]
    assert await store.direct_since("ann", 0, limit=10) == ([], False)
    (message,), _ = await store.history("lobby")
    assert message.mentions == ("bob", "ann")


async def test_direct_changes_go_to_both_inboxes(store: Store) -> None:
    """An edit and a reaction of a direct message take the next seq of each side's inbox."""
    for name in ("ann", "bob"):
        assert await store.create_user(name, "hash")
    sent = await store.append_direct("ann", "bob", "psst")
    target = sent.message.message_id
    edit = await store.submit(change("edit", target, "ann", "psst!", to="bob"))
    react = await store.submit(change("react", target, "bob", "🤫", to="ann"))
    assert isinstance(edit, DirectResult) and isinstance(react, DirectResult)
    assert (edit.sender_seq, edit.recipient_seq) == (2, 2)
    assert (react.sender_seq, react.recipient_seq) == (3, 3)
    events, _ = await store.direct_since("bob", 0, limit=10)
    assert [type(e).__name__ for e in events] == ["DirectMessage", "Change", "Change"]
    (message,), _ = await store.direct_history("bob")
    assert isinstance(message, DirectMessage) and message.message == "psst!"
    assert message.reactions == (("🤫", ("bob",)),)
    gone = await store.submit(change("delete", target, "ann", to="bob"))
    assert isinstance(gone, DirectResult) and gone.sender_seq == 4
    (tombstone,), _ = await store.direct_history("ann")
    assert tombstone.deleted and tombstone.message == "" and tombstone.reactions == ()


async def test_a_deleted_file_message_keeps_counting_against_the_upload_quota(
    store: Store,
) -> None:
    """A deleted file message loses its file (and digest) but its size still counts."""
    photo = FileInfo("cat.png", "image/png", 1234, "ab" * 32)
    sent = (await store.append("lobby", "ann", "", file=photo)).message
    assert await store.file_bytes_since("ann", 0) == 1234
    await room_change(store, change("delete", sent.message_id, "ann"))
    (tombstone,), _ = await store.history("lobby")
    assert tombstone.deleted and tombstone.file is None
    assert await store.file_digests() == set()
    assert await store.file_bytes_since("ann", 0) == 1234
