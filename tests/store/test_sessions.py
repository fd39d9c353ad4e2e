"""The Store contract for sessions and account life, run against every store.

A session is stored under its user's name as registered; its refresh hash
changes only by compare-and-set; revocations are seen by every reader of
``revoked_since``; a password change, a ban everywhere and an account's
deletion revoke in the same write. Deleting a user erases what they said and
everything of theirs, leaving tombstones where their messages were.
Retention forgets ended sessions a day on (SQLite and PostgreSQL).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from roomcast.model import (
    FOREVER_MS,
    AuditEntry,
    Ban,
    Change,
    ChatMessage,
    DirectMessage,
    Mute,
    StoredSession,
)
from roomcast.query import parse_query
from roomcast.store.base import Draft, SearchFilter, Store
from tests.fakes import Clock
from tests.store.backends import Database, database

NOW = 1_790_000_000_000
DAY = 86_400_000
LATER = NOW + 30 * DAY


def session(sid: str, name: str = "ann", created: int = NOW) -> StoredSession:
    """A live session ``sid`` of ``name``, its refresh hash named after it."""
    return StoredSession(sid, name, "hash-" + sid, created, LATER)


async def users(store: Store, *names: str) -> None:
    for name in names:
        assert await store.create_user(name, "argon-" + name)


# -- sessions ------------------------------------------------------------------------------


async def test_a_session_is_read_with_its_user(store: Store) -> None:
    """session_user gives the session (under the name as registered) and the user at once."""
    await users(store, "Ann")
    await store.create_session(session("s1", "ANN"))
    found = await store.session_user("s1")
    assert found is not None
    stored, user = found
    assert stored == StoredSession("s1", "Ann", "hash-s1", NOW, LATER)
    assert (user.name, user.password_hash, user.admin) == ("Ann", "argon-Ann", False)
    assert await store.session_user("nope") is None
    await store.create_session(session("s2", "ghost"))
    assert await store.session_user("s2") is None


async def test_refresh_rotates_by_compare_and_set(store: Store) -> None:
    """The hash changes only from the one given, on a live session; a used one fails."""
    await users(store, "ann")
    await store.create_session(session("s1"))
    assert await store.rotate_session("s1", "hash-s1", "second", LATER + DAY, NOW)
    assert not await store.rotate_session("s1", "hash-s1", "third", LATER, NOW)
    found = await store.session_user("s1")
    assert found is not None and (found[0].refresh_hash, found[0].expires_ms) == (
        "second",
        LATER + DAY,
    )
    assert not await store.rotate_session("s1", "second", "x", LATER, LATER + DAY)  # expired
    assert not await store.rotate_session("nope", "second", "x", LATER, NOW)
    assert await store.revoke_sessions("ann", NOW, only="s1") == ["s1"]
    assert not await store.rotate_session("s1", "second", "x", LATER, NOW)


async def test_revocation_takes_one_all_or_all_but_one(store: Store) -> None:
    """revoke_sessions returns what it revoked, once; revoked_since lists it for every node."""
    await users(store, "Ann", "bob")
    for sid in ("a1", "a2", "a3", "a4"):
        await store.create_session(session(sid, "Ann"))
    await store.create_session(session("b1", "bob"))
    await store.create_session(StoredSession("a0", "Ann", "h", NOW - 2 * DAY, NOW - DAY))
    assert await store.revoke_sessions("ann", NOW, only="a2") == ["a2"]
    assert await store.revoke_sessions("ann", NOW, only="b1") == []
    assert await store.revoke_sessions("ANN", NOW + 5, keep="a3") == ["a1", "a4"]
    assert await store.revoke_sessions("ann", NOW + 9) == ["a3"]
    assert await store.revoke_sessions("ann", NOW + 9) == []
    assert sorted(await store.revoked_since(NOW)) == [
        ("a1", "Ann"),
        ("a2", "Ann"),
        ("a3", "Ann"),
        ("a4", "Ann"),
    ]
    assert sorted(await store.revoked_since(NOW + 5)) == [
        ("a1", "Ann"),
        ("a3", "Ann"),
        ("a4", "Ann"),
    ]
    found = await store.session_user("a2")
    assert found is not None and found[0].revoked_ms == NOW
    bob = await store.session_user("b1")
    assert bob is not None and bob[0].revoked_ms is None


async def test_a_new_password_ends_every_other_session(store: Store) -> None:
    """set_password changes the hash and revokes all but the session kept, in one write."""
    await users(store, "ann")
    for sid in ("s1", "s2", "s3"):
        await store.create_session(session(sid))
    assert await store.set_password("ANN", "new-hash", NOW, keep="s2") == ["s1", "s3"]
    user = await store.get_user("ann")
    assert user is not None and user.password_hash == "new-hash"
    assert await store.set_password("ann", "newer", NOW) == ["s2"]
    assert await store.set_password("ghost", "x", NOW) == []
    assert await store.get_user("ghost") is None


async def test_admins_are_made_and_unmade(store: Store) -> None:
    """set_admin says whether the user is there; get_user shows it."""
    await users(store, "Ann")
    assert await store.set_admin("ann", True)
    user = await store.get_user("ANN")
    assert user is not None and user.admin
    await store.create_session(session("s1", "Ann"))
    found = await store.session_user("s1")
    assert found is not None and found[1].admin
    assert await store.set_admin("Ann", False)
    user = await store.get_user("ann")
    assert user is not None and not user.admin
    assert not await store.set_admin("ghost", True)


async def test_a_ban_everywhere_revokes_and_is_lifted(store: Store) -> None:
    """A ban sets its end and reason and revokes every session; a lift clears it."""
    await users(store, "ann")
    await store.create_session(session("s1"))
    await store.create_session(session("s2"))
    assert await store.set_user_ban("ANN", NOW + DAY, "spam", NOW) == ["s1", "s2"]
    user = await store.get_user("ann")
    assert user is not None
    assert (user.banned_until_ms, user.ban_reason) == (NOW + DAY, "spam")
    assert user.banned(NOW) and not user.banned(NOW + DAY)
    assert await store.set_user_ban("ann", FOREVER_MS, "", NOW) == []
    assert await store.set_user_ban("ann", None, "", NOW) == []
    user = await store.get_user("ann")
    assert user is not None and (user.banned_until_ms, user.ban_reason) == (None, "")
    assert await store.set_user_ban("ghost", None, "", NOW) is None


# -- deleting an account --------------------------------------------------------------------


async def test_deleting_a_user_erases_them_and_keeps_tombstones(store: Store, clock: Clock) -> None:
    """Their texts, edits, reactions, markers, roles, sessions and account go; seqs stay."""
    guest = await store.append("lobby", "ann", "said by a guest called ann")
    clock.now += 10
    await users(store, "Ann", "bob")
    [ann, bob] = ["Ann", "bob"]
    said = (await store.append("lobby", ann, "my secret plan")).message
    await store.submit(Draft(ann, room="lobby", kind="edit", target=said.message_id, text="v2"))
    answer = (await store.append("lobby", bob, "nice plan")).message
    await store.submit(Draft(ann, room="lobby", kind="react", target=answer.message_id, text="👍"))
    await store.submit(Draft(bob, room="lobby", kind="react", target=said.message_id, text="🎉"))
    direct = (await store.append_direct(ann, bob, "direct secret")).message
    await store.submit(Draft(ann, to=bob, kind="edit", target=direct.message_id, text="dm v2"))
    reply = await store.append_direct(bob, ann, "a reply to ann")
    await store.append_direct(ann, ann, "a note to self")
    await store.save_markers([(ann, "lobby", 3), (bob, "lobby", 3)])
    assert await store.create_room("team", owner=ann, private=True, members=frozenset({bob}))
    assert await store.create_room("club", owner=bob, private=True, members=frozenset({ann}))
    audit = AuditEntry("club", NOW, bob, "moderator", ann)
    assert await store.set_moderator("club", ann, True, audit)
    await store.set_ban("lobby", Ban(ann, FOREVER_MS, "", bob, NOW), audit)
    await store.set_mute("dev", Mute(ann, NOW + DAY, bob, NOW), audit)
    await store.add_notification("n1", reply.message.message_id, b'{"user":"Ann","message":"x"}')
    await store.add_notification("n2", answer.message_id, b'{"user":"bob","message":"y"}')
    await store.create_session(session("s1", ann))
    await store.create_session(session("s2", ann))

    assert await store.delete_user("ann", NOW) == ["s1", "s2"]

    assert await store.get_user("ann") is None
    assert await store.session_user("s1") is None
    assert sorted(await store.revoked_since(NOW)) == [("s1", "Ann"), ("s2", "Ann")]
    events = await store.since("lobby", 0, limit=10)
    assert [event.seq for event in events] == [1, 2, 3, 4, 5, 6]
    first, mine, edit, theirs = events[:4]
    assert isinstance(first, ChatMessage) and first.message == guest.message.message
    assert isinstance(mine, ChatMessage) and mine.sender == ann
    assert (mine.message, mine.deleted, mine.file, mine.mentions) == ("", True, None, ())
    assert isinstance(edit, Change) and edit.text == ""
    assert isinstance(theirs, ChatMessage) and theirs.message == "nice plan"
    history, _ = await store.history("lobby")
    assert [(m.message, m.reactions) for m in history] == [
        (guest.message.message, ()),
        ("", ()),
        ("nice plan", ()),
    ]
    inbox, _ = await store.direct_history(bob)
    assert [(m.sender, m.message, m.deleted) for m in inbox] == [
        (ann, "", True),
        (bob, "a reply to ann", False),
    ]
    dm_events, _ = await store.direct_since(bob, 0, limit=10)
    assert [e.text for e in dm_events if isinstance(e, Change)] == [""]
    assert await store.markers(ann) == {} and await store.markers(bob) == {"lobby": 3}
    hits, _ = await store.search(SearchFilter(parse_query("secret"), bob))
    assert hits == []
    team = await store.room_access("team")
    assert team is not None and team.owner is None and team.members == {bob}
    club = await store.room_access("club")
    assert club is not None and club.members == frozenset()
    settings = await store.room_settings("club")
    assert settings is not None and settings.moderators == frozenset()
    assert await store.bans("lobby", NOW) == [] and await store.mutes("dev", NOW) == []
    assert [n for n, _, _ in await store.due_notifications(10)] == ["n2"]
    assert await store.delete_user("ann", NOW) is None


async def test_a_name_deleted_can_be_registered_afresh(store: Store) -> None:
    """A new user of a deleted name starts with an empty direct stream and no live session."""
    await users(store, "ann", "bob")
    await store.append_direct("ann", "bob", "one")
    await store.append_direct("bob", "ann", "two")
    await store.create_session(session("s1"))
    assert await store.delete_user("ANN", NOW) == ["s1"]
    assert await store.create_user("ann", "fresh")
    assert await store.direct_last_seq("ann") == 0
    sent = await store.append_direct("bob", "ann", "welcome back")
    assert (sent.sender_seq, sent.recipient_seq) == (3, 1)
    [only], _ = await store.direct_history("ann")
    assert isinstance(only, DirectMessage) and only.message == "welcome back"
    # The old session, kept a day for every node's revocation poll, stays revoked.
    found = await store.session_user("s1")
    assert found is None or found[0].revoked_ms == NOW
    assert await store.revoke_sessions("ann", NOW + 1) == []


# -- retention ---------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """An empty database that stores are opened on, one after another."""
    async with database(request.param, tmp_path) as fresh:
        yield fresh


async def test_retention_forgets_sessions_a_day_after_they_end(db: Database) -> None:
    """Expired or revoked more than a day ago: deleted, with or without history_days."""
    clock = Clock()
    now = int(clock() * 1000)
    async with db.opened(clock=clock) as store:
        await users(store, "ann")
        await store.create_session(StoredSession("old", "ann", "h", now - 40 * DAY, now - 2 * DAY))
        await store.create_session(StoredSession("ended", "ann", "h", now - 40 * DAY, now - 1000))
        await store.create_session(StoredSession("live", "ann", "h", now, now + 30 * DAY))
        await store.create_session(StoredSession("revoked", "ann", "h", now, now + DAY))
        assert await store.revoke_sessions("ann", now - 2 * DAY, only="revoked") == ["revoked"]
        await store.create_session(StoredSession("just", "ann", "h", now, now + DAY))
        assert await store.revoke_sessions("ann", now - 1000, only="just") == ["just"]
        assert await store.prune() == 0
        rows = await db.fetch("SELECT id FROM sessions ORDER BY id")
        assert rows == [("ended",), ("just",), ("live",)]
    clock.now += 2 * 86400
    async with db.opened(clock=clock, history_days=30):  # a pass at start
        pass
    assert await db.fetch("SELECT id FROM sessions") == [("live",)]
