"""The Store contract for moderation, run against every store.

Room settings and roles, bans and mutes that end by the clock, the audit
log written with each change, the erasure of a deleted room (its seqs go on
counting), and searches that leave out the rooms a reader is banned from.
Last, a database of schema version 7 migrates to 8 (SQLite and PostgreSQL).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from roomcast.model import FOREVER_MS, AuditEntry, Ban, ChatMessage, Mute, RoomRules
from roomcast.query import parse_query
from roomcast.store.base import AppendResult, Draft, SearchFilter, Store
from roomcast.store.schema import LATEST_VERSION, MIGRATIONS, VERSION_TABLE
from tests.fakes import Clock
from tests.store.backends import Database, database

NOW = 1_790_000_000_000
HOUR = 3_600_000


def entry(room: str, action: str, target: str | None = None, **detail: Any) -> AuditEntry:
    """An audit entry by ann at the fake clock's time."""
    return AuditEntry(room, NOW, "ann", action, target, "", detail)


async def users(store: Store, *names: str) -> None:
    for name in names:
        assert await store.create_user(name, "hash")


async def say(store: Store, room: str, sender: str, text: str) -> ChatMessage:
    result = await store.append(room, sender, text)
    assert isinstance(result.message, ChatMessage)
    return result.message


async def actions(store: Store, room: str) -> list[tuple[str, str | None]]:
    return [(e.action, e.target) for e in await store.audit_log(room, before=None, limit=100)]


async def found(store: Store, text: str, reader: str | None) -> list[str]:
    """The texts a search finds, sorted (the fake clock gives every message one time)."""
    hits, _ = await store.search(SearchFilter(parse_query(text), reader))
    return sorted(hit.message.message for hit in hits)


# -- settings and roles -----------------------------------------------------------------


async def test_a_claimed_room_has_its_owner_once(store: Store) -> None:
    """claim_room stores a public room owned by its claimer; a stored or used room stays as is."""
    assert await store.room_settings("dev") is None
    assert await store.claim_room("dev", "ann", NOW)
    assert not await store.claim_room("dev", "bob", NOW)
    settings = await store.room_settings("dev")
    assert settings is not None
    assert (settings.name, settings.private, settings.owner, settings.moderators) == (
        "dev",
        False,
        "ann",
        frozenset(),
    )
    assert (settings.topic, settings.title, settings.slow_mode, settings.receipts) == (
        "",
        "",
        0,
        True,
    )
    await say(store, "used", "cyd", "hello")
    assert not await store.claim_room("used", "bob", NOW)
    used = await store.room_settings("used")
    assert used is not None and used.owner is None and not used.private
    access = await store.room_access("dev")
    assert access is not None and access.owner == "ann" and not access.private


async def test_moderators_are_named_and_unnamed_once_each_logged(store: Store) -> None:
    """set_moderator says whether it changed anything, and logs only what it changed."""
    assert await store.claim_room("dev", "ann", NOW)
    assert await store.set_moderator("dev", "bob", True, entry("dev", "moderator", "bob"))
    assert not await store.set_moderator("dev", "bob", True, entry("dev", "moderator", "bob"))
    assert await store.set_moderator("dev", "cyd", True, entry("dev", "moderator", "cyd"))
    settings = await store.room_settings("dev")
    assert settings is not None and settings.moderators == {"bob", "cyd"}
    rules = await store.room_rules("dev", NOW)
    assert rules.exempt == {"ann", "bob", "cyd"}
    assert await store.set_moderator("dev", "bob", False, entry("dev", "unmoderator", "bob"))
    assert not await store.set_moderator("dev", "bob", False, entry("dev", "unmoderator", "bob"))
    assert (await store.room_rules("dev", NOW)).exempt == {"ann", "cyd"}
    assert await actions(store, "dev") == [
        ("unmoderator", "bob"),
        ("moderator", "cyd"),
        ("moderator", "bob"),
    ]


async def test_handing_a_private_room_over_keeps_both_in_it(store: Store) -> None:
    """The new owner stops being a moderator and is a member; the old owner moderates."""
    assert await store.create_room("team", owner="ann", private=True, members=frozenset({"bob"}))
    assert await store.set_moderator("team", "bob", True, entry("team", "moderator", "bob"))
    await store.set_owner("team", "bob", entry("team", "owner", "bob"))
    settings = await store.room_settings("team")
    assert settings is not None and (settings.owner, settings.moderators) == ("bob", {"ann"})
    access = await store.room_access("team")
    assert access is not None and access.owner == "bob" and {"ann", "bob"} <= access.members
    assert access.allows("ann") and not access.allows("cyd")
    assert await actions(store, "team") == [("owner", "bob"), ("moderator", "bob")]
    assert await store.claim_room("open", "ann", NOW)
    await store.set_owner("open", "cyd", entry("open", "owner", "cyd"))
    opened = await store.room_access("open")
    assert opened is not None and opened.owner == "cyd" and opened.members == frozenset()


async def test_removing_a_member_takes_their_role_and_is_logged_either_way(store: Store) -> None:
    """remove_member says whether they were a member or moderator; the entry is kept anyway."""
    members = frozenset({"bob", "cyd"})
    assert await store.create_room("team", owner="ann", private=True, members=members)
    assert await store.set_moderator("team", "cyd", True, entry("team", "moderator", "cyd"))
    assert await store.remove_member("team", "bob", entry("team", "remove", "bob"))
    assert await store.remove_member("team", "cyd", entry("team", "remove", "cyd"))
    assert not await store.remove_member("team", "bob", entry("team", "remove", "bob"))
    access = await store.room_access("team")
    assert access is not None and access.members == frozenset()
    settings = await store.room_settings("team")
    assert settings is not None and settings.moderators == frozenset()
    assert [a for a, _ in await actions(store, "team")] == ["remove"] * 3 + ["moderator"]


async def test_settings_change_what_is_given(store: Store) -> None:
    """update_room keeps what is None; a room never stored is stored with no owner."""
    assert await store.claim_room("dev", "ann", NOW)
    assert await store.update_room("dev", entry("dev", "settings", topic="x"), topic="Ship it")
    assert await store.update_room(
        "dev", entry("dev", "settings", slow_mode=30), title="Dev talk", slow_mode=30
    )
    settings = await store.room_settings("dev")
    assert settings is not None
    assert (settings.topic, settings.title, settings.slow_mode) == ("Ship it", "Dev talk", 30)
    assert (await store.room_rules("dev", NOW)).slow_mode == 30
    assert await store.update_room("lobby", entry("lobby", "settings", topic="hi"), topic="hi")
    lobby = await store.room_settings("lobby")
    assert lobby is not None and (lobby.topic, lobby.owner, lobby.private) == ("hi", None, False)
    assert await actions(store, "lobby") == [("settings", None)]
    [latest, first] = await store.audit_log("dev", before=None, limit=10)
    assert (latest.detail, first.detail) == ({"slow_mode": 30}, {"topic": "x"})


# -- bans and mutes -------------------------------------------------------------------


async def test_bans_hold_until_they_end_or_are_lifted(store: Store) -> None:
    """A ban is in the rules until its time; a moderator banned loses the role; lifts are logged."""
    assert await store.claim_room("dev", "ann", NOW)
    assert await store.set_moderator("dev", "bob", True, entry("dev", "moderator", "bob"))
    short = Ban("bob", NOW + HOUR, "spam", "ann", NOW)
    await store.set_ban("dev", short, entry("dev", "ban", "bob", until=NOW + HOUR))
    forever = Ban("cyd", FOREVER_MS, "", "ann", NOW)
    await store.set_ban("dev", forever, entry("dev", "ban", "cyd"))
    assert await store.bans("dev", NOW) == [short, forever]
    rules = await store.room_rules("dev", NOW)
    assert rules.bans == {"bob": short, "cyd": forever} and rules.exempt == {"ann"}
    assert await store.bans("dev", NOW + HOUR) == [forever]
    assert "bob" not in (await store.room_rules("dev", NOW + HOUR)).bans
    longer = Ban("cyd", NOW + 2 * HOUR, "again", "bob", NOW + 1)
    await store.set_ban("dev", longer, entry("dev", "ban", "cyd"))
    assert await store.bans("dev", NOW) == [short, longer]
    ended = AuditEntry("dev", NOW + HOUR, "ann", "unban", "bob")
    assert not await store.lift_ban("dev", "bob", ended)  # it had ended: nothing to lift
    assert await store.lift_ban("dev", "cyd", entry("dev", "unban", "cyd"))
    assert not await store.lift_ban("dev", "cyd", entry("dev", "unban", "cyd"))
    assert await store.bans("dev", NOW) == []
    assert [a for a, _ in await actions(store, "dev")] == [
        "unban",
        "ban",
        "ban",
        "ban",
        "moderator",
    ]


async def test_mutes_hold_until_they_end_or_are_lifted(store: Store) -> None:
    """Mutes are in the rules until their time; a new mute replaces the old."""
    assert await store.claim_room("dev", "ann", NOW)
    await store.set_mute("dev", Mute("bob", NOW + HOUR, "ann", NOW), entry("dev", "mute", "bob"))
    await store.set_mute("dev", Mute("cyd", NOW + HOUR, "ann", NOW), entry("dev", "mute", "cyd"))
    longer = Mute("bob", NOW + 3 * HOUR, "ann", NOW + 5)
    await store.set_mute("dev", longer, entry("dev", "mute", "bob"))
    assert [m.name for m in await store.mutes("dev", NOW)] == ["bob", "cyd"]
    assert (await store.room_rules("dev", NOW)).mutes == {"bob": NOW + 3 * HOUR, "cyd": NOW + HOUR}
    assert await store.mutes("dev", NOW + 2 * HOUR) == [longer]
    assert await store.lift_mute("dev", "bob", entry("dev", "unmute", "bob"))
    assert not await store.lift_mute("dev", "bob", entry("dev", "unmute", "bob"))
    assert (await store.room_rules("dev", NOW)).mutes == {"cyd": NOW + HOUR}
    assert await store.room_rules("nowhere", NOW) == RoomRules()


async def test_search_leaves_out_rooms_the_reader_is_banned_from(
    store: Store, clock: Clock
) -> None:
    """A banned reader finds nothing in the room until the ban ends; others still do."""
    await users(store, "ann", "bob")
    assert await store.claim_room("dev", "ann", NOW)
    await say(store, "dev", "ann", "deploy in dev")
    await say(store, "lobby", "ann", "deploy in the lobby")
    now = int(clock() * 1000)
    ban = Ban("bob", now + HOUR, "", "ann", now)
    await store.set_ban("dev", ban, entry("dev", "ban", "bob"))
    assert await found(store, "deploy", "bob") == ["deploy in the lobby"]
    both = ["deploy in dev", "deploy in the lobby"]
    assert await found(store, "deploy", "ann") == both
    assert await found(store, "deploy", None) == both
    clock.now += 3600
    assert await found(store, "deploy", "bob") == both


# -- the audit log and every room -------------------------------------------------------


async def test_the_audit_log_pages_newest_first_room_by_room(store: Store) -> None:
    """Entries come back newest first, below ``before``, with their detail as JSON values."""
    for n in range(5):
        await store.add_audit(entry("dev", "delete_message", f"m{n}", author="bob", n=n))
    await store.add_audit(entry("other", "settings"))
    page = await store.audit_log("dev", before=None, limit=2)
    assert [e.target for e in page] == ["m4", "m3"]
    assert page[0].detail == {"author": "bob", "n": 4}
    assert (page[0].room, page[0].actor, page[0].at_ms, page[0].reason) == ("dev", "ann", NOW, "")
    assert page[0].id > page[1].id > 0
    rest = await store.audit_log("dev", before=page[1].id, limit=10)
    assert [e.target for e in rest] == ["m2", "m1", "m0"]
    assert [e.action for e in await store.audit_log("other", before=None, limit=10)] == ["settings"]
    assert (await store.audit_log("other", before=None, limit=1))[0].detail == {}


async def test_all_rooms_lists_every_stored_room_by_name(store: Store) -> None:
    """Public and private rooms, with their moderators, in name order."""
    assert await store.create_room("team", owner="ann", private=True, members=frozenset())
    assert await store.claim_room("dev", "bob", NOW)
    await say(store, "lobby", "cyd", "hi")
    assert await store.set_moderator("dev", "cyd", True, entry("dev", "moderator", "cyd"))
    rooms = await store.all_rooms()
    assert [(r.name, r.private, r.owner, r.moderators) for r in rooms] == [
        ("dev", False, "bob", {"cyd"}),
        ("lobby", False, None, frozenset()),
        ("team", True, "ann", frozenset()),
    ]


# -- deleting a room ---------------------------------------------------------------------


async def test_a_deleted_room_is_erased_and_its_seqs_go_on(store: Store) -> None:
    """Everything of the room goes but its newest event, an empty tombstone; the log stays."""
    await users(store, "ann", "bob")
    members = frozenset({"bob"})
    assert await store.create_room("team", owner="ann", private=True, members=members)
    first = await say(store, "team", "ann", "the secret plan")
    second = await say(store, "team", "bob", "a reply")
    await store.submit(Draft("bob", room="team", kind="react", target=first.message_id, text="👍"))
    edit = Draft("ann", room="team", kind="edit", target=first.message_id, text="edited plan")
    last = await store.submit(edit)
    assert isinstance(last, AppendResult) and last.message.seq == 4
    await store.save_markers([("bob", "team", 4), ("bob", "lobby", 1)])
    assert await store.set_moderator("team", "bob", True, entry("team", "moderator", "bob"))
    await store.set_ban("team", Ban("cyd", FOREVER_MS, "", "ann", NOW), entry("team", "ban"))
    await store.set_mute("team", Mute("dan", NOW + HOUR, "ann", NOW), entry("team", "mute"))
    await store.update_room("team", entry("team", "settings"), topic="plans")
    assert await store.delete_room("team", entry("team", "delete_room"))
    assert await store.room_access("team") is None
    assert await store.room_settings("team") is None
    assert await store.known_rooms(["team"]) == set()
    assert "team" not in [r.name for r in await store.all_rooms()]
    assert [r.name for r in await store.list_rooms("ann")] == []
    assert await store.last_seq("team") == 4
    [tombstone] = await store.since("team", 0, limit=10)
    assert isinstance(tombstone, ChatMessage)
    assert (tombstone.seq, tombstone.message, tombstone.deleted, tombstone.file) == (
        4,
        "",
        True,
        None,
    )
    assert [m.seq for m in (await store.history("team"))[0]] == [4]
    assert await store.message_by_id(first.message_id) is None
    assert await store.message_by_id(second.message_id) is None
    assert await found(store, "plan", "ann") == []
    assert await store.markers("bob") == {"lobby": 1}
    assert await store.bans("team", NOW) == [] and await store.mutes("team", NOW) == []
    assert await store.room_rules("team", NOW) == RoomRules()
    assert [a for a, _ in await actions(store, "team")][:2] == ["delete_room", "settings"]
    assert not await store.delete_room("team", entry("team", "delete_room"))
    assert not await store.delete_room("never", entry("never", "delete_room"))
    again = await say(store, "team", "cyd", "anyone here?")
    assert again.seq == 5
    # A message late for the deletion lands in a private room only admins may read.
    access = await store.room_access("team")
    assert access is not None and access.private and access.owner is None
    assert not access.allows("cyd") and await found(store, "anyone", "cyd") == []


async def test_a_deleted_rooms_name_can_be_created_or_claimed_again(store: Store) -> None:
    """The name is free once its room is deleted: a new room takes it, and counts on."""
    assert await store.create_room("team", owner="ann", private=True, members=frozenset())
    await say(store, "team", "ann", "one")
    await say(store, "team", "ann", "two")
    assert await store.delete_room("team", entry("team", "delete_room"))
    assert await store.create_room("team", owner="bob", private=True, members=frozenset({"cyd"}))
    access = await store.room_access("team")
    assert access is not None and (access.private, access.owner, access.members) == (
        True,
        "bob",
        {"cyd"},
    )
    assert not await store.create_room("team", owner="dan", private=False, members=frozenset())
    assert (await say(store, "team", "bob", "three")).seq == 3
    assert await store.delete_room("team", entry("team", "delete_room"))
    assert await store.claim_room("team", "dan", NOW)
    settings = await store.room_settings("team")
    assert settings is not None and (settings.owner, settings.private) == ("dan", False)
    assert await store.delete_room("team", entry("team", "delete_room"))
    assert await store.delete_room("empty", entry("empty", "delete_room")) is False
    assert await store.claim_room("empty", "dan", NOW)
    assert await store.delete_room("empty", entry("empty", "delete_room"))
    assert await store.room_access("empty") is None and await store.last_seq("empty") == 0


# -- an older database ---------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """An empty database that stores are opened on, one after another."""
    async with database(request.param, tmp_path) as fresh:
        yield fresh


def schema_at(version: int, dialect: str) -> list[str]:
    """The statements that make a ``dialect`` database as roomcast left it at ``version``."""
    statements = [VERSION_TABLE]
    for migration in MIGRATIONS[:version]:
        statements += migration.for_dialect(dialect)
        description = migration.description.replace("'", "''")
        statements.append(
            "INSERT INTO schema_version (version, description, applied_ms)"
            f" VALUES ({migration.version}, '{description}', 0)"
        )
    return statements


async def test_a_version_7_database_gains_moderation_and_sessions(db: Database) -> None:
    """Users and rooms of version 7 read on with the defaults; roles, bans, audit work at once."""
    await db.execute(
        *schema_at(7, db.kind),
        "INSERT INTO users (name, name_key, password_hash, dm_seq, created_ms)"
        " VALUES ('Ann', 'ann', 'h', 0, 5)",
        "INSERT INTO rooms (name, last_seq, created_ms, private, owner)"
        " VALUES ('team', 1, 0, 1, 'Ann'), ('lobby', 1, 0, 0, NULL)",
        "INSERT INTO messages (room, seq, message_id, sender, body, ts_ms)"
        " VALUES ('lobby', 1, 'l1', 'Ann', 'old words', 10)",
    )
    async with db.opened() as store:
        user = await store.get_user("ann")
        assert user is not None
        assert (user.name, user.admin, user.banned_until_ms, user.ban_reason) == (
            "Ann",
            False,
            None,
            "",
        )
        team = await store.room_settings("team")
        assert team is not None and (team.owner, team.private, team.topic, team.slow_mode) == (
            "Ann",
            True,
            "",
            0,
        )
        assert not await store.claim_room("lobby", "Ann", NOW)
        await store.set_ban("lobby", Ban("bob", FOREVER_MS, "", "Ann", NOW), entry("lobby", "ban"))
        [logged] = await store.audit_log("lobby", before=None, limit=5)
        assert logged.id == 1 and logged.action == "ban"
        assert await store.set_user_ban("Ann", NOW + HOUR, "rude", NOW) == []
        assert await store.delete_room("lobby", entry("lobby", "delete_room"))
        assert (await say(store, "lobby", "bob", "new")).seq == 2
    rows = await db.fetch("SELECT max(version) FROM schema_version")
    assert rows == [(LATEST_VERSION,)] and LATEST_VERSION == 8
