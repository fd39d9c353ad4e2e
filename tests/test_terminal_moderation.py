"""The terminal chat's moderation and account commands (issue 21): parsing, lines, effects.

Pure parts are tested as functions; :class:`TerminalChat` runs against a
fake client that records the calls and answers as the real one does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from roomcast.client import (
    AuditEntry,
    AuditPage,
    BanInfo,
    Client,
    ConnectionState,
    MuteInfo,
    Removed,
    RoomInfo,
    RoomUpdated,
    SendError,
    ServerError,
    StateChange,
    UnreadCounts,
)
from roomcast.client.terminal import (
    HELP,
    BanUser,
    ChangePassword,
    Command,
    DeleteAccount,
    GiveOwner,
    Invalid,
    Kick,
    LeaveRoom,
    Logout,
    MuteUser,
    SetModerator,
    SetTitle,
    SetTopic,
    ShowAudit,
    ShowRoom,
    SlowMode,
    TerminalChat,
    Unban,
    Unmute,
    audit_line,
    parse_command,
    refusal_line,
    removed_line,
    render,
    room_changes,
    room_lines,
)

#: 09:05 UTC, 11:05 in the UTC+2 zone of these tests.
STAMP = datetime(2024, 5, 1, 9, 5, tzinfo=UTC)
NOW = STAMP - timedelta(hours=1)


@pytest.fixture(autouse=True)
def utc_plus_2(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time is UTC+2 for every test here."""
    monkeypatch.setenv("TZ", "XYZ-2")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


DURATION_USAGE = "DURATION like 90s, 30m, 12h, 7d"


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("/kick bob", Kick("bob")),
        ("/kick bob  spamming links ", Kick("bob", "spamming links")),
        ("/kick", Invalid("usage: /kick USER [REASON]")),
        ("/ban eve", BanUser("eve")),
        ("/ban eve 7d", BanUser("eve", 604800)),
        ("/ban eve 12h flooding the room", BanUser("eve", 43200, "flooding the room")),
        ("/ban eve flooding again", BanUser("eve", None, "flooding again")),
        ("/ban", Invalid(f"usage: /ban USER [DURATION] [REASON], {DURATION_USAGE}")),
        ("/unban eve", Unban("eve")),
        ("/unban", Invalid("usage: /unban USER")),
        ("/mute cat 30m", MuteUser("cat", 1800)),
        ("/MUTE cat 90s", MuteUser("cat", 90)),
        ("/mute cat", Invalid(f"usage: /mute USER DURATION, {DURATION_USAGE}")),
        ("/mute cat soon", Invalid(f"usage: /mute USER DURATION, {DURATION_USAGE}")),
        ("/unmute cat", Unmute("cat")),
        ("/mod bob", SetModerator("bob", True)),
        ("/unmod bob", SetModerator("bob", False)),
        ("/mod bob cat", Invalid("usage: /mod USER")),
        ("/owner bob", GiveOwner("bob")),
        ("/topic", SetTopic(None)),
        ("/topic  ship  it ", SetTopic("ship  it")),
        ("/topic -", SetTopic("")),
        ("/title Development", SetTitle("Development")),
        ("/title -", SetTitle("")),
        ("/title", Invalid("usage: /title TEXT (/title - shows the room's name)")),
        ("/slow 30", SlowMode(30)),
        ("/slow 2m", SlowMode(120)),
        ("/slow off", SlowMode(0)),
        ("/slow 0", SlowMode(0)),
        ("/slow", Invalid("usage: /slow SECONDS (0 or off: no slow mode)")),
        ("/slow fast", Invalid("usage: /slow SECONDS (0 or off: no slow mode)")),
        ("/audit", ShowAudit()),
        ("/audit all", Invalid("usage: /audit")),
        ("/room", ShowRoom()),
        ("/leaveroom", LeaveRoom()),
        ("/leaveroom team", LeaveRoom("team")),
        (
            "/leaveroom Team",
            Invalid("/leaveroom: room names are a-z, 0-9, _ and - (at most 64), not 'Team'"),
        ),
        ("/password", ChangePassword()),
        ("/password secret", Invalid("usage: /password")),
        ("/logout", Logout()),
        ("/logout all", Logout(everywhere=True)),
        ("/logout now", Invalid("usage: /logout [all]")),
        ("/deleteaccount", DeleteAccount()),
    ],
)
def test_parse_moderation_and_account_commands(line: str, command: Command) -> None:
    """Each moderation or account line parses to its command, or its usage."""
    assert parse_command(line) == command


def test_help_lists_the_moderation_and_account_commands() -> None:
    """/help names every moderation and account command and the duration form."""
    for name in (
        "/kick USER",
        "/ban USER [DURATION]",
        "/unban USER",
        "/mute USER DURATION",
        "/unmute USER",
        "/mod USER",
        "/unmod USER",
        "/owner USER",
        "/topic",
        "/title TEXT",
        "/slow SECONDS",
        "/audit",
        "/room",
        "/leaveroom",
        "/password",
        "/logout [all]",
        "/deleteaccount",
        "90s, 30m, 12h, 7d",
    ):
        assert name in HELP, name


def test_removed_and_refusal_lines_say_who_why_and_until_when() -> None:
    """Removal, ban, deletion, leaving and refusals read as sentences with local times."""
    assert removed_line(Removed("dev", "ann", "spam")) == "! ann removed you from dev: spam"
    ban = Removed("dev", "ann", "flood", True, STAMP)
    assert removed_line(ban, now=NOW) == "! ann banned you from dev (until 11:05): flood"
    forever = Removed("dev", "ann", None, True, None)
    assert removed_line(forever) == "! ann banned you from dev (until lifted)"
    later = Removed("dev", "", "you are banned", True, STAMP + timedelta(days=2))
    assert removed_line(later, now=NOW) == "! you are banned from dev (until 2024-05-03 11:05)"
    assert removed_line(Removed("dev", "", "forbidden")) == "! you are no longer in dev: forbidden"
    deleted = Removed("dev", "ann", "the room was deleted")
    assert removed_line(deleted) == "! dev was deleted by ann"
    assert removed_line(Removed("team", "Me"), me="me") == "* you left team for good"
    assert (
        removed_line(Removed("d\x1bv", "a\nb", "x\x07"))
        == "! a b removed you from d\ufffdv: x\ufffd"
    )
    assert refusal_line("muted", "you are muted", STAMP, now=NOW) == (
        "! muted: you are muted (until 11:05)"
    )
    assert refusal_line("banned", "out", None) == "! banned: out (until lifted)"
    assert refusal_line("forbidden", "not yours") == "! forbidden: not yours"
    error = ServerError("muted", "hush", None, STAMP)
    assert render(error, now=NOW) == "! muted: hush (until 11:05)"
    assert render(ban, now=NOW) == "! ann banned you from dev (until 11:05): flood"


def settings(**over: Any) -> RoomUpdated:
    """The settings of dev, with ``over`` changed."""
    base: dict[str, Any] = {
        "room": "dev",
        "private": False,
        "owner": "ann",
        "moderators": ("bob",),
        "topic": "",
        "title": "dev",
        "slow_mode": 0,
        "receipts": True,
    }
    return RoomUpdated(**{**base, **over})


def test_room_changes_show_only_what_changed() -> None:
    """Topic, title, slow mode, receipts, owner and moderators each get their line."""
    old = settings()
    assert room_changes(old, old) == []
    assert room_changes(old, settings(topic="ship it")) == ['* topic of dev: "ship it"']
    assert room_changes(settings(topic="x"), old) == ["* dev has no topic now"]
    assert room_changes(old, settings(title="Dev")) == ['* dev is shown as "Dev" now']
    assert room_changes(old, settings(slow_mode=90)) == ["* slow mode 90s between messages in dev"]
    assert room_changes(settings(slow_mode=60), old) == ["* slow mode off in dev"]
    assert room_changes(old, settings(receipts=False)) == ["* read receipts are off in dev"]
    assert room_changes(old, settings(moderators=("bob", "cat"))) == [
        "* cat is a moderator of dev now"
    ]
    # Handing over: bob owns it, ann becomes a moderator; bob is not "demoted".
    assert room_changes(old, settings(owner="bob", moderators=("ann",))) == [
        "* bob owns dev now",
        "* ann is a moderator of dev now",
    ]
    assert room_changes(None, settings(topic="t", slow_mode=3600)) == [
        '* dev changed: owner ann; moderators bob; topic "t"; slow mode 1h between messages'
    ]
    assert room_changes(None, settings(owner=None, moderators=())) == [
        "* dev changed: no owner; no moderators; no topic; slow mode off"
    ]


def test_room_lines_show_settings_role_bans_and_mutes() -> None:
    """/room: settings, topic, role (and a mute), then bans and mutes for moderators."""
    info = RoomInfo(
        "dev",
        "Development",
        True,
        "ann",
        ("bob",),
        "ship it",
        30,
        False,
        3,
        ("ann", "bob", "cat"),
        "moderator",
        None,
        (BanInfo("eve", None, "spam", "ann", STAMP), BanInfo("fay", STAMP, None, None, None)),
        (MuteInfo("cat", STAMP, "bob", STAMP),),
    )
    assert room_lines(info, now=NOW) == [
        '* dev "Development" (private): owner ann; moderators bob; 3 members; '
        "slow mode 30s between messages; receipts off",
        '* topic: "ship it"',
        "* you moderate it",
        "* banned: eve (until lifted, by ann: spam), fay (until 11:05)",
        "* muted: cat (until 11:05, by bob)",
    ]
    member = RoomInfo("lobby", "lobby", False, None, (), role="member", muted_until=STAMP)
    assert room_lines(member, now=NOW) == [
        "* lobby (public): no owner; no moderators; slow mode off; receipts on",
        "* no topic",
        "* you are a member; you are muted (until 11:05)",
    ]
    owner = RoomInfo("mine", "mine", False, "me", (), role="owner")
    assert room_lines(owner)[-2:] == ["* you own it", "* nobody is banned or muted"]


def test_audit_lines_show_when_who_what_and_details() -> None:
    """An audit entry: time, actor, action, target, quoted reason, details."""
    entry = AuditEntry(7, STAMP, "ann", "ban", "eve", "spam", {"until": "2024-05-02T00:00:00Z"})
    assert audit_line(entry, now=STAMP) == (
        '[11:05] ann ban eve "spam" (until=2024-05-02T00:00:00Z)'
    )
    settings_entry = AuditEntry(8, STAMP, "bob", "settings", detail={"slow_mode": 30})
    assert audit_line(settings_entry, now=STAMP + timedelta(days=1)) == (
        "[2024-05-01 11:05] bob settings (slow_mode=30)"
    )


class ModeratingClient:
    """Just enough of :class:`Client` for the moderation commands: records, answers."""

    def __init__(self, rooms: list[str], user: str = "me") -> None:
        self.rooms = rooms
        self.user = user
        self.token: str | None = "t"
        self.refresh_token: str | None = None
        self.unread = UnreadCounts()
        self.state = ConnectionState.CONNECTED
        self.calls: list[tuple[Any, ...]] = []
        self.callback: Any = None
        self.refuse: SendError | None = None
        self.info = RoomInfo("dev", "dev", False, "me", ("bob",), role="owner")

    def on(self, kind: object, callback: object) -> None:
        self.callback = callback

    def _call(self, *call: Any) -> None:
        self.calls.append(call)
        if self.refuse is not None:
            raise self.refuse

    async def room_info(self, room: str) -> RoomInfo:
        self._call("room_info", room)
        return self.info

    async def update_room(self, room: str, **changes: Any) -> RoomInfo:
        self._call("update_room", room, changes)
        self.info = replace(self.info, **changes)
        return self.info

    async def set_moderator(self, room: str, user: str, on: bool = True) -> RoomInfo:
        self._call("set_moderator", room, user, on)
        mods = set(self.info.moderators) | {user} if on else set(self.info.moderators) - {user}
        self.info = replace(self.info, moderators=tuple(sorted(mods)))
        return self.info

    async def remove_member(self, room: str, user: str, reason: str | None = None) -> None:
        self._call("remove_member", room, user, reason)

    async def ban(
        self, room: str, user: str, *, for_seconds: int | None, reason: str | None
    ) -> BanInfo:
        self._call("ban", room, user, for_seconds, reason)
        return BanInfo(user, STAMP if for_seconds else None, reason)

    async def unban(self, room: str, user: str) -> None:
        self._call("unban", room, user)

    async def mute(self, room: str, user: str, *, for_seconds: int) -> MuteInfo:
        self._call("mute", room, user, for_seconds)
        return MuteInfo(user, STAMP)

    async def unmute(self, room: str, user: str) -> None:
        self._call("unmute", room, user)

    async def audit_page(self, room: str, *, limit: int) -> AuditPage:
        self._call("audit_page", room, limit)
        return AuditPage([AuditEntry(2, STAMP, "me", "mute", "cat")], True)

    async def leave_for_good(self, room: str) -> None:
        self._call("leave_for_good", room)
        if room in self.rooms:
            self.rooms.remove(room)

    async def change_password(self, old: str, new: str) -> int:
        self._call("change_password", old, new)
        return 2

    async def logout(self, *, everywhere: bool = False) -> None:
        self._call("logout", everywhere)
        self.state = ConnectionState.CLOSED
        self.callback(StateChange(ConnectionState.CONNECTED, ConnectionState.CLOSED, "signed out"))

    async def delete_account(self, password: str) -> None:
        self._call("delete_account", password)

    async def close(self) -> None:
        pass


async def until(predicate: Any, timeout: float = 5.0) -> None:
    """Let the loop run until ``predicate()`` holds; fail after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def terminal(
    fake: ModeratingClient, room: str = "dev", **options: Any
) -> tuple[TerminalChat, list[str]]:
    lines: list[str] = []
    chat = TerminalChat(cast(Client, fake), room=room, output=lines.append, **options)
    return chat, lines


async def test_moderation_commands_call_the_client_and_say_what_they_did() -> None:
    """Each command acts on the current room and prints one line; refusals print their until."""
    fake = ModeratingClient(["lobby", "dev"])
    chat, lines = terminal(fake)

    async def run(line: str, count: int) -> None:
        assert chat.execute(parse_command(line))
        await until(lambda: len(lines) >= count)

    await run("/kick eve spam", 1)
    await run("/ban eve 1h flood", 2)
    await run("/unban eve", 3)
    await run("/mute cat 30m", 4)
    await run("/unmute cat", 5)
    await run("/mod cat", 6)  # the settings were read first, so this is a change
    await run("/slow 30", 7)
    await run("/topic ship it", 8)
    await run("/audit", 10)
    fake.refuse = SendError("muted", "you are muted", until=STAMP)
    await run("/topic again", 11)
    fake.refuse = None
    # The terminal's clock is the real one: STAMP is another day.
    assert lines[:10] == [
        "* eve is out of dev",
        "* eve is banned from dev (until 2024-05-01 11:05)",
        "* eve may join dev again",
        "* cat is muted in dev (until 2024-05-01 11:05)",
        "* cat may write in dev again",
        "* cat is a moderator of dev now",
        "* slow mode 30s between messages in dev",
        '* topic of dev: "ship it"',
        "* moderation log of dev, newest first: 1 entry, older ones exist",
        "[2024-05-01 11:05] me mute cat",
    ]
    assert lines[10] == "! muted: you are muted (until 2024-05-01 11:05)"
    assert fake.calls[:6] == [
        ("remove_member", "dev", "eve", "spam"),
        ("ban", "dev", "eve", 3600, "flood"),
        ("unban", "dev", "eve"),
        ("mute", "dev", "cat", 1800),
        ("unmute", "dev", "cat"),
        ("room_info", "dev"),
    ]
    assert ("update_room", "dev", {"topic": "ship it"}) in fake.calls
    # The room frame of a change made here adds nothing new.
    chat._on_event(settings(owner="me", moderators=("bob", "cat"), slow_mode=30, topic="ship it"))
    assert len(lines) == 11


async def test_room_frames_show_changes_and_removal_moves_the_current_room() -> None:
    """A room frame shows what changed; removed from the current room, typing goes elsewhere."""
    fake = ModeratingClient(["lobby", "dev"])
    chat, lines = terminal(fake)
    chat._on_event(settings())
    chat._on_event(settings(topic="new topic"))
    chat._on_event(Removed("dev", "ann", "spam", True, None))
    assert lines == [
        "* dev changed: owner ann; moderators bob; no topic; slow mode off",
        '* topic of dev: "new topic"',
        "! ann banned you from dev (until lifted): spam; messages go to lobby",
    ]
    assert chat.room == "lobby" and chat.joined == ["lobby"]
    chat._on_event(Removed("lobby", "", "the room was deleted"))
    assert lines[-1] == "! lobby was deleted; you are in no room" and chat.room is None
    assert chat.execute(parse_command("/kick eve"))
    assert lines[-1] == "! you are in no room: /join ROOM first"


async def test_leaveroom_says_it_once_whichever_comes_first() -> None:
    """/leaveroom prints one line; the removed frame the server also sends adds nothing."""
    fake = ModeratingClient(["lobby", "team"], user="me")
    chat, lines = terminal(fake, room="team")
    assert chat.execute(parse_command("/leaveroom"))
    await until(lambda: len(lines) >= 1)
    chat._on_event(Removed("team", "me"))
    await asyncio.sleep(0.01)
    assert lines == ["* you left team for good; messages go to lobby"]
    assert fake.calls == [("leave_for_good", "team")]


async def test_password_asks_without_echo_and_checks_the_new_one_twice() -> None:
    """/password asks three hidden questions; differing answers change nothing."""
    fake = ModeratingClient(["lobby"])
    answers = iter(["old pw", "new password", "new password", "old pw", "a", "b"])
    asked: list[tuple[str, bool]] = []

    async def ask(prompt: str, hidden: bool) -> str | None:
        asked.append((prompt, hidden))
        return next(answers)

    chat, lines = terminal(fake, room="lobby", ask=ask)
    assert chat.execute(parse_command("/password"))
    await until(lambda: len(lines) >= 1)
    assert chat.execute(parse_command("/password"))
    await until(lambda: len(lines) >= 2)
    assert lines == [
        "* password changed; 2 other sessions signed out",
        "! the new passwords differ; nothing changed",
    ]
    assert fake.calls == [("change_password", "old pw", "new password")]
    assert all(hidden for _, hidden in asked)


async def test_logout_and_delete_account_end_the_chat_with_status_0() -> None:
    """/logout all and /deleteaccount (confirmed) end the chat on purpose; a guest has neither."""
    fake = ModeratingClient(["lobby"])
    chat, lines = terminal(fake, room="lobby")
    chat._ended = asyncio.Event()
    assert chat.execute(parse_command("/logout all"))
    await until(chat._ended.is_set)
    assert fake.calls == [("logout", True)]
    assert (chat._exit_status, chat._farewell) == (0, "* signed out everywhere")

    answers = iter(["pw", "yes"])

    async def ask(prompt: str, hidden: bool) -> str | None:
        return next(answers)

    deleting = ModeratingClient(["lobby"])
    chat, lines = terminal(deleting, room="lobby", ask=ask)
    chat._ended = asyncio.Event()
    assert chat.execute(parse_command("/deleteaccount"))
    await until(chat._ended.is_set)
    assert deleting.calls == [("delete_account", "pw")]
    assert chat._farewell == "* account deleted"

    guest = ModeratingClient(["lobby"])
    guest.token = None
    chat, lines = terminal(guest, room="lobby")
    assert chat.execute(parse_command("/logout"))
    assert chat.execute(parse_command("/password"))
    await until(lambda: len(lines) >= 2)
    assert sorted(lines) == [
        "! you are a guest: /quit leaves",
        "! you are a guest: there is no account",
    ]
    assert guest.calls == []


async def test_delete_account_needs_a_yes() -> None:
    """/deleteaccount answered with anything but yes deletes nothing."""
    fake = ModeratingClient(["lobby"])
    answers = iter(["pw", "no"])

    async def ask(prompt: str, hidden: bool) -> str | None:
        return next(answers)

    chat, lines = terminal(fake, room="lobby", ask=ask)
    assert chat.execute(parse_command("/deleteaccount"))
    await until(lambda: len(lines) >= 1)
    assert lines == ["* nothing deleted"] and fake.calls == []
