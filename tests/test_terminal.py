"""The terminal chat's pure parts: commands, rendering, typing throttle, room switching."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from roomcast.client import (
    Client,
    ConnectionState,
    DirectHistoryPage,
    DirectMessage,
    FileRef,
    HistoryPage,
    Mention,
    MessageDeleted,
    MessageEdited,
    Presence,
    Quote,
    Reaction,
    Reply,
    RoomMessage,
    SearchPage,
    SearchResult,
    SendError,
    ServerError,
    StateChange,
    Typing,
    Unread,
    UnreadCounts,
)
from roomcast.client.terminal import (
    HELP,
    Command,
    CountUnread,
    Delete,
    Dm,
    Edit,
    Empty,
    Help,
    History,
    Invalid,
    Join,
    Leave,
    MessageIndex,
    More,
    Open,
    Quit,
    React,
    ReplyTo,
    Rooms,
    Say,
    Search,
    TerminalChat,
    Thread,
    TypingThrottle,
    Who,
    clean,
    emphasise,
    parse_command,
    render,
    rooms_line,
    search_line,
    unread_line,
)

#: 09:05 UTC, shown as 11:05 in the UTC+2 zone the rendering tests use.
STAMP = datetime(2024, 5, 1, 9, 5, 30, tzinfo=UTC)


@pytest.fixture
def utc_plus_2(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time is UTC+2 for the test."""
    monkeypatch.setenv("TZ", "XYZ-2")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("hello world", Say("hello world")),
        ("  indented  ", Say("  indented  ")),
        ("", Empty()),
        ("   ", Empty()),
        ("//join is a verb", Say("/join is a verb")),
        ("/join dev", Join("dev")),
        ("/JOIN dev", Join("dev")),
        ("/join", Invalid("usage: /join ROOM")),
        ("/join a b", Invalid("usage: /join ROOM")),
        ("/leave", Leave(None)),
        ("/leave dev", Leave("dev")),
        ("/leave a b", Invalid("usage: /leave [ROOM]")),
        ("/who", Who(None)),
        ("/who dev", Who("dev")),
        ("/dm bob hi there  you", Dm("bob", "hi there  you")),
        ("/dm  bob   spaced ", Dm("bob", "spaced")),
        ("/dm bob", Invalid("usage: /dm USER TEXT")),
        ("/dm bob    ", Invalid("usage: /dm USER TEXT")),
        ("/dm", Invalid("usage: /dm USER TEXT")),
        ("/history", History(20)),
        ("/history 5", History(5)),
        ("/history 100", History(100)),
        ("/history 0", Invalid("usage: /history [N], N from 1 to 100")),
        ("/history 101", Invalid("usage: /history [N], N from 1 to 100")),
        ("/history x", Invalid("usage: /history [N], N from 1 to 100")),
        ("/history -3", Invalid("usage: /history [N], N from 1 to 100")),
        ("/reply 0a1b2c sure  thing ", ReplyTo("0a1b2c", "sure  thing")),
        ("/reply 0a1b2c", Invalid("usage: /reply ID TEXT")),
        ("/edit last fixed it", Edit("last", "fixed it")),
        ("/edit 0a1b fixed", Edit("0a1b", "fixed")),
        ("/edit 0a1b   ", Invalid("usage: /edit ID|last TEXT")),
        ("/delete last", Delete("last")),
        ("/delete 0a1b2c", Delete("0a1b2c")),
        ("/delete", Invalid("usage: /delete ID|last")),
        ("/delete a b", Invalid("usage: /delete ID|last")),
        ("/react 0a1b \U0001f44d", React("0a1b", "\U0001f44d")),
        ("/unreact 0a1b :tada:", React("0a1b", ":tada:", added=False)),
        ("/react 0a1b", Invalid("usage: /react ID EMOJI")),
        ("/unreact 0a1b x y", Invalid("usage: /unreact ID EMOJI")),
        ("/thread 0a1b", Thread("0a1b")),
        ("/thread", Invalid("usage: /thread ID")),
        ("/rooms", Rooms()),
        ("/rooms dev", Invalid("usage: /rooms")),
        ("/unread", CountUnread()),
        ("/UNREAD", CountUnread()),
        ("/unread all", Invalid("usage: /unread")),
        ("/search deploy", Search("deploy")),
        ('/SEARCH  "the deploy"  -staging ', Search('"the deploy"  -staging')),
        ("/search more", Search("more")),
        ("/search", Invalid("usage: /search QUERY")),
        ("/search   ", Invalid("usage: /search QUERY")),
        ("/more", More()),
        ("/more please", Invalid("usage: /more")),
        ("/open 3", Open(3)),
        ("/open 0", Invalid("usage: /open N (the number before a search result)")),
        ("/open x", Invalid("usage: /open N (the number before a search result)")),
        ("/open", Invalid("usage: /open N (the number before a search result)")),
        ("/open 1 2", Invalid("usage: /open N (the number before a search result)")),
        ("/help", Help()),
        ("/quit", Quit()),
        ("/quit now", Invalid("usage: /quit")),
        ("/frobnicate x", Invalid("unknown command /frobnicate; /help lists the commands")),
        ("/", Invalid("unknown command /; /help lists the commands")),
    ],
)
def test_parse_command(line: str, command: Command) -> None:
    """Each typed line parses to the command (or usage message) it should."""
    assert parse_command(line) == command


@pytest.mark.parametrize("line", ["/join Dev", "/join ../x", "/who -x", "/leave " + "a" * 65])
def test_parse_command_refuses_bad_room_names(line: str) -> None:
    """A room name the server would refuse is a usage message, not a request."""
    command = parse_command(line)
    assert isinstance(command, Invalid)
    assert "room names are a-z, 0-9, _ and -" in command.message


def test_clean_replaces_every_control_character() -> None:
    """ESC, CSI, other C0/C1 controls and bidi overrides are replaced; breaks become spaces."""
    assert clean("<b>\x1b[31mred") == "<b>\ufffd[31mred"
    assert clean("a\x9b2Jb\x07c\x00d\x7f") == "a\ufffd2Jb\ufffdc\ufffdd\ufffd"
    assert clean("line1\nline2\r\tx\u2028y") == "line1 line2  x y"
    assert clean("abc\u202edcba\u2066x\u2069") == "abc\ufffddcba\ufffdx\ufffd"
    fine = "caf\u00e9 \U0001f469\u200d\U0001f4bb \u4e2d <b>&amp;"
    assert clean(fine) == fine


@pytest.mark.usefixtures("utc_plus_2")
def test_render_messages() -> None:
    """Room, file and direct messages are one line: short id, time, room or dm, sender, text."""
    chat = RoomMessage("dev", "ann", "hello  there", 3, "0a1b2c3d4e", STAMP)
    assert render(chat) == "0a1b2c [11:05] dev <ann> hello  there"
    file = FileRef("cat.png", "image/png", 1234, "/files/abc?sig=1")
    assert (
        render(RoomMessage("dev", "ann", "", 4, "m2", STAMP, file))
        == "m2 [11:05] dev <ann> sent file cat.png (1234 bytes) /files/abc?sig=1"
    )
    assert render(DirectMessage("bob", "ann", "psst", 7, "m3", STAMP)) == (
        "m3 [11:05] dm <bob\u2192ann> psst"
    )
    assert render(DirectMessage("bob", "ann", "", 8, "m4", STAMP, file)) == (
        "m4 [11:05] dm <bob\u2192ann> sent file cat.png (1234 bytes) /files/abc?sig=1"
    )
    now = datetime(2024, 5, 1, 22, 59, tzinfo=UTC)
    assert render(RoomMessage("lobby", "x", "no stamp", 1, "", None), now=now) == (
        "[00:59] lobby <x> no stamp"
    )


@pytest.mark.usefixtures("utc_plus_2")
def test_render_cleans_everything_received() -> None:
    """Control characters in any received field (names, text, file, errors) never reach the tty."""
    evil = "\x1b]0;owned\x07"
    lines = [
        render(RoomMessage(evil, evil, evil, 1, "m", STAMP)),
        render(DirectMessage(evil, evil, evil, 1, "m", STAMP)),
        render(RoomMessage("r", "s", "", 1, "m", STAMP, FileRef(evil, "x/y", 1, evil))),
        render(Presence(evil, evil, "join")),
        render(Typing(evil, evil)),
        render(ServerError(evil, evil)),
        render(StateChange(ConnectionState.CONNECTED, ConnectionState.RECONNECTING, evil)),
    ]
    for line in lines:
        assert line is not None and "\ufffd]0;owned\ufffd" in line
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in line), line


def test_render_presence_typing_errors_and_states() -> None:
    """Presence, typing, errors and connection states have their one-line forms."""
    assert render(Presence("dev", "ann", "join")) == "* ann joined dev"
    assert render(Presence("dev", "ann", "leave")) == "* ann left dev"
    assert render(Presence("dev", "ann", "wave")) is None
    assert render(Typing("dev", "ann")) == "* ann is typing in dev"
    assert render(ServerError("rate_limited", "slow down")) == "! rate_limited: slow down"
    s = ConnectionState
    assert render(StateChange(s.DISCONNECTED, s.CONNECTING)) == "* connecting"
    assert render(StateChange(s.CONNECTED, s.RECONNECTING, "connection lost")) == (
        "* reconnecting (connection lost)"
    )
    assert render(StateChange(s.RECONNECTING, s.CONNECTED)) == "* connected"
    assert render(StateChange(s.CONNECTED, s.CLOSED, "closed by the application")) is None
    assert render(Reply("joined", {"room": "lobby"}, None)) is None
    taken_out = Reply("left", {"room": "team", "reason": "ann may not be in team"}, None)
    assert render(taken_out) == "! you are no longer in team: ann may not be in team"
    assert render(Reply("left", {"room": "team"}, "l1")) is None


def test_typing_throttle() -> None:
    """One typing line per user and room per 3 s; other users and rooms are independent."""
    throttle = TypingThrottle(3.0)
    assert throttle.allow("ann", "dev", 100.0)
    assert not throttle.allow("ann", "dev", 102.9)
    assert throttle.allow("ann", "lobby", 102.9)
    assert throttle.allow("bob", "dev", 102.9)
    assert throttle.allow("ann", "dev", 103.0)
    assert not throttle.allow("ann", "dev", 105.9)


class FakeClient:
    """Just enough of :class:`Client` for :class:`TerminalChat` to run commands."""

    def __init__(self, rooms: list[str]) -> None:
        self.rooms = rooms
        self.sent: list[tuple[str, ...]] = []
        self.refuse: set[str] = set()
        self.unread = UnreadCounts()
        self.state = ConnectionState.CONNECTED

    def on(self, kind: object, callback: object) -> None:
        pass

    async def send_chat(self, text: str, room: str) -> None:
        self.sent.append(("chat", room, text))

    async def join(self, room: str) -> Reply:
        self.sent.append(("join", room))
        self.rooms.append(room)  # like Client: listed before the server answers
        if room in self.refuse:
            raise SendError("forbidden", "private room")
        return Reply("joined", {"room": room, "member_count": 2}, "x")

    def last_seq(self, room: str) -> int | None:
        return 0

    async def leave(self, room: str) -> Reply:
        self.sent.append(("leave", room))
        self.rooms.remove(room)
        return Reply("left", {"room": room}, "x")


async def test_commands_switch_the_current_room() -> None:
    """/join makes the room current at once; a refused join and /leave fall back; text follows."""
    fake = FakeClient(["lobby"])
    lines: list[str] = []
    chat = TerminalChat(cast(Client, fake), output=lines.append)

    async def run(line: str) -> None:
        assert chat.execute(parse_command(line))
        await asyncio.sleep(0)  # let the background send run
        await asyncio.sleep(0)

    await run("/join dev")
    assert chat.room == "dev"
    await run("in dev")
    fake.refuse.add("secret")
    await run("/join secret")
    assert chat.room == "dev"
    await run("/leave")
    assert chat.room == "lobby"
    await run("in lobby")
    await run("/leave")
    assert chat.room is None
    await run("nowhere")
    assert not chat.execute(Quit())
    assert fake.sent == [
        ("join", "dev"),
        ("chat", "dev", "in dev"),
        ("join", "secret"),
        ("leave", "dev"),
        ("chat", "lobby", "in lobby"),
        ("leave", "lobby"),
    ]
    assert lines == [
        "* joined dev (2 here); messages go to dev",
        "! forbidden: private room",
        "* left dev; messages go to lobby",
        "* left lobby; you are in no room",
        "! you are in no room: /join ROOM first",
    ]


# -- messages that change -------------------------------------------------------------------


def chat(seq: int, message_id: str, text: str = "", **fields: Any) -> RoomMessage:
    """A room message at STAMP (room dev, from ann unless ``fields`` say otherwise)."""
    sender = str(fields.pop("sender", "ann"))
    room = str(fields.pop("room", "dev"))
    return RoomMessage(room, sender, text or f"text {seq}", seq, message_id, STAMP, **fields)


def test_help_lists_the_commands_that_change_messages() -> None:
    """/help names /reply, /edit, /delete, /react, /unreact and /thread."""
    for command in ("/reply ID", "/edit ID|last", "/delete ID|last", "/react ID", "/unreact"):
        assert command in HELP
    assert "/thread ID" in HELP


def test_the_index_gives_short_ids_and_resolves_starts() -> None:
    """Short ids are 6 characters, longer when taken; a unique start or whole id resolves."""
    index = MessageIndex()
    first = index.add(chat(1, "abcdef0123456789abcdef0123456789"))
    second = index.add(chat(2, "abcdef9999999999abcdef0123456789"))
    third = index.add(chat(3, "0123456789abcdef0123456789abcdef"))
    assert (first.short, second.short, third.short) == ("abcdef", "abcdef9", "012345")
    assert index.resolve("abcdef") == first.message_id  # the short id shown, though not unique
    assert index.resolve("abcdef9") == second.message_id
    assert index.resolve("0123") == third.message_id
    assert index.resolve(third.message_id) == third.message_id
    with pytest.raises(LookupError, match="2 messages start with abc"):
        index.resolve("abc")
    with pytest.raises(LookupError, match="no message ffff seen here"):
        index.resolve("ffff")
    unseen = "f" * 32
    assert index.resolve(unseen) == unseen  # a whole id: the server decides
    assert index.add(chat(1, first.message_id, "again")).short == "abcdef"  # the same one
    assert len(index) == 3


def test_the_index_forgets_the_oldest_and_follows_changes() -> None:
    """Past its limit the oldest message is forgotten; edits and deletes update what is known."""
    index = MessageIndex(limit=2)
    for seq, message_id in enumerate(["aaaaaa1", "bbbbbb1", "cccccc1"], 1):
        index.add(chat(seq, message_id))
    assert index.get("aaaaaa1") is None and len(index) == 2
    with pytest.raises(LookupError):
        index.resolve("aaaaaa")
    index.change(MessageEdited("bbbbbb1", "new text", "ann", 9, None, room="dev"))
    edited = index.get("bbbbbb1")
    assert edited is not None and edited.text == "new text"
    index.change(MessageDeleted("cccccc1", "ann", 10, room="dev"))
    deleted = index.get("cccccc1")
    assert deleted is not None and deleted.deleted and deleted.text == ""
    index.change(MessageEdited("zzzzzz1", "nobody knows", "x", 11, None, room="dev"))
    assert index.get("zzzzzz1") is None


def test_last_is_your_newest_live_message_in_the_room() -> None:
    """last: the newest message of the sender in the room, not deleted (and for /edit no file)."""
    index = MessageIndex()
    index.add(chat(1, "aaaaaa1", sender="me"))
    index.add(chat(2, "bbbbbb1", sender="me", room="lobby"))
    index.add(chat(3, "cccccc1", sender="bob"))
    file = FileRef("x.png", "image/png", 1, "/f")
    index.add(chat(4, "dddddd1", sender="me", file=file))
    index.add(DirectMessage("me", "bob", "dm", 1, "eeeeee1", STAMP))
    assert index.last("me", "dev") == index.get("dddddd1")
    found = index.last("me", "dev", text_only=True)
    assert found is not None and found.message_id == "aaaaaa1"
    index.change(MessageDeleted("aaaaaa1", "me", 5, room="dev"))
    assert index.last("me", "dev", text_only=True) is None
    assert index.last("nobody", "dev") is None


@pytest.mark.usefixtures("utc_plus_2")
def test_render_replies_mentions_and_message_state() -> None:
    """Replies quote their message; a mention of you starts with @; edits, reactions are shown."""
    reply = chat(
        5,
        "0a1b2c3d",
        "@me sure",
        sender="bob",
        reply_to="9f8e7d6c",
        quote=Quote("ann", "a question that goes on and on and on for a long while"),
        mentions=("Me",),
    )
    assert render(reply, me="me") == (
        "@ 0a1b2c [11:05] dev <bob> (reply to ann: "
        '"a question that goes on and on and on f\u2026") @me sure'
    )
    assert str(render(reply, me="ann")).startswith("0a1b2c [11:05]")  # not mentioned: no mark
    own = chat(6, "1a1b2c3d", "@me note to self", sender="me", mentions=("me",))
    assert render(own, me="me") == "1a1b2c [11:05] dev <me> @me note to self"  # you, to you
    gone = chat(7, "2a1b2c3d", "ok", reply_to="x", quote=Quote("bob", None, deleted=True))
    assert render(gone) == "2a1b2c [11:05] dev <ann> (reply to bob: deleted message) ok"
    bare = chat(8, "3a1b2c3d", "ok", reply_to="9f8e7d6c5b")
    assert render(bare) == "3a1b2c [11:05] dev <ann> (reply to 9f8e7d) ok"
    state = chat(
        9,
        "4a1b2c3d",
        "v2",
        edited_at=STAMP,
        reactions={"\U0001f44d": ("bob", "cat"), ":tada:": ("bob",)},
        reply_count=3,
    )
    assert render(state) == (
        "4a1b2c [11:05] dev <ann> v2 (edited) [\U0001f44d 2, :tada: 1] (3 replies)"
    )
    deleted = chat(10, "5a1b2c3d", "", deleted=True, edited_at=STAMP, reply_count=1)
    assert render(deleted) == "5a1b2c [11:05] dev <ann> message deleted (1 reply)"
    dm = DirectMessage("bob", "me", "hey @me", 3, "6a1b2c3d", STAMP, mentions=("me",))
    assert render(dm, me="me") == "@ 6a1b2c [11:05] dm <bob\u2192me> hey @me"


@pytest.mark.usefixtures("utc_plus_2")
def test_render_changes() -> None:
    """Edits, deletes, reactions and mentions are one line each, naming the message by its id."""
    index = MessageIndex()
    index.add(chat(1, "0a1b2c3d", "the original", sender="bob"))
    edit = MessageEdited("0a1b2c3d", "the new one", "bob", 2, STAMP, room="dev")
    assert render(edit, seen=index) == "0a1b2c [11:05] dev <bob> the new one (edited)"
    dm_edit = MessageEdited("7a1b2c3d", "psst!", "bob", 4, STAMP, sender="bob", to="me")
    assert render(dm_edit) == "7a1b2c [11:05] dm <bob\u2192me> psst! (edited)"
    erased = MessageEdited("0a1b2c3d", "", "bob", 2, STAMP, room="dev")  # deleted since
    assert render(erased, seen=index) == "0a1b2c [11:05] dev <bob> - (edited)"
    dm_delete = MessageDeleted("7a1b2c3d", "bob", 5, sender="bob", to="me", timestamp=STAMP)
    assert render(dm_delete) == "7a1b2c [11:05] dm <bob\u2192me> message deleted"
    by_owner = MessageDeleted("0a1b2c3d", "owner", 3, room="dev", timestamp=STAMP)
    assert render(by_owner, seen=index) == ("0a1b2c [11:05] dev <bob> message deleted by owner")
    by_author = MessageDeleted("0a1b2c3d", "bob", 3, room="dev", timestamp=STAMP)
    assert render(by_author, seen=index) == "0a1b2c [11:05] dev <bob> message deleted"
    unknown = MessageDeleted("8a1b2c3d", "bob", 3, room="dev", timestamp=STAMP)
    assert render(unknown, seen=index) == "8a1b2c [11:05] dev message deleted by bob"
    added = Reaction("0a1b2c3d", "\U0001f44d", "cat", True, 4, room="dev")
    assert render(added, seen=index) == (
        "* cat reacted \U0001f44d to 0a1b2c in dev (<bob> the original)"
    )
    removed = Reaction("9a1b2c3d", ":tada:", "cat", False, 5, sender="a", to="b")
    assert render(removed) == "* cat took back :tada: on 9a1b2c in dm <a\u2192b>"
    mention = Mention("far", "aa1b2c3d", "bob", 6)
    assert render(mention) == "@ bob mentioned you in far (aa1b2c)"


def test_render_cleans_every_changed_field() -> None:
    """Edited text, emoji, quotes, reactions and ids from the network never reach the tty raw."""
    evil = "\x1b]0;owned\x07"
    lines = [
        render(MessageEdited(evil, evil, evil, 1, STAMP, room=evil)),
        render(MessageEdited("m", "t", evil, 1, STAMP, sender=evil, to=evil)),
        render(MessageDeleted(evil, evil, 1, room=evil)),
        render(Reaction(evil, evil, evil, True, 1, room=evil)),
        render(Mention(evil, evil, evil, 1)),
        render(chat(1, evil, evil, quote=Quote(evil, evil), reactions={evil: ("x",)})),
    ]
    for line in lines:
        assert line is not None and "\ufffd" in line
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in line), line


class ChangingClient(FakeClient):
    """A fake client that also edits, deletes, reacts and reads threads."""

    def __init__(self, rooms: list[str], user: str = "me") -> None:
        super().__init__(rooms)
        self.user = user
        self.callback: object = None
        self.thread: list[RoomMessage] = []

    def on(self, kind: object, callback: object) -> None:
        self.callback = callback

    async def send_chat(self, text: str, room: str, *, reply_to: str | None = None) -> None:
        self.sent.append(
            ("chat", room, text) if reply_to is None else ("reply", room, text, reply_to)
        )

    async def edit(self, message_id: str, text: str) -> None:
        self.sent.append(("edit", message_id, text))

    async def delete(self, message_id: str) -> None:
        if message_id in self.refuse:
            raise SendError("forbidden", "not yours")
        self.sent.append(("delete", message_id))

    async def react(self, message_id: str, emoji: str) -> None:
        self.sent.append(("react", message_id, emoji))

    async def unreact(self, message_id: str, emoji: str) -> None:
        self.sent.append(("unreact", message_id, emoji))

    async def history(
        self, room: str, *, limit: int, thread: str | None = None
    ) -> tuple[list[RoomMessage], bool]:
        self.sent.append(("history", room, str(thread)))
        return self.thread, False


@pytest.mark.usefixtures("utc_plus_2")
async def test_commands_name_messages_by_short_id_or_last() -> None:
    """/edit last, /delete, /reply, /react, /unreact, /thread resolve ids against messages seen."""
    fake = ChangingClient(["lobby", "dev"])
    lines: list[str] = []
    chat_ui = TerminalChat(cast(Client, fake), room="dev", output=lines.append)
    show = chat_ui._on_event
    mine = "a" * 8 + "1" * 24
    theirs = "b" * 8 + "2" * 24
    direct = "c" * 8 + "3" * 24
    show(chat(1, mine, "first try", sender="me"))
    show(chat(2, theirs, "hello @me", sender="bob", mentions=("me",)))
    show(DirectMessage("bob", "me", "psst", 1, direct, STAMP))

    async def run(line: str) -> None:
        assert chat_ui.execute(parse_command(line))
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    await run("/edit last second try")
    await run("/reply bbbb me too")
    await run("/react bbbbbb \U0001f44d")
    await run("/unreact bbbbbbbb \U0001f44d")
    await run("/delete aaaaaa")
    fake.refuse.add(theirs)
    await run("/delete bbbbbb")
    await run("/reply cccccc no")
    await run("/edit zzzz nothing")
    await run("/join other")
    await run("/edit last nothing of mine here")
    fake.thread = [
        chat(2, theirs, "hello @me", sender="bob"),
        chat(3, "d" * 32, "yes", reply_to=theirs),
    ]
    await run("/thread bbbbbb")
    assert fake.sent == [
        ("edit", mine, "second try"),
        ("reply", "dev", "me too", theirs),
        ("react", theirs, "\U0001f44d"),
        ("unreact", theirs, "\U0001f44d"),
        ("delete", mine),
        ("join", "other"),
        ("history", "dev", theirs),
    ]
    assert lines == [
        "aaaaaa [11:05] dev <me> first try",
        "@ bbbbbb [11:05] dev <bob> hello @me",
        "cccccc [11:05] dm <bob\u2192me> psst",
        "! forbidden: not yours",
        "! direct messages have no replies or threads",
        "! no message zzzz seen here (ids are shown before each message)",
        "* joined other (2 here); messages go to other",
        "! no message of yours in other to edit",
        "* thread bbbbbb in dev: 1 reply",
        "bbbbbb [11:05] dev <bob> hello @me",
        "dddddd [11:05] dev <ann> (reply to bbbbbb) yes",
    ]


@pytest.mark.usefixtures("utc_plus_2")
async def test_mentions_show_once_and_changes_follow_the_messages() -> None:
    """A mention from a room you are in is not shown twice; edits name the author seen before."""
    fake = ChangingClient(["lobby"])
    lines: list[str] = []
    chat_ui = TerminalChat(cast(Client, fake), output=lines.append)
    chat_ui._on_event(Mention("lobby", "e" * 32, "bob", 1, STAMP))
    chat_ui._on_event(Mention("far", "f" * 32, "bob", 2, STAMP))
    chat_ui._on_event(chat(1, "1" * 32, "typo", sender="bob", room="lobby"))
    chat_ui._on_event(MessageEdited("1" * 32, "fixed", "bob", 2, STAMP, room="lobby"))
    chat_ui._on_event(Reaction("1" * 32, ":+1:", "me", True, 3, room="lobby"))
    chat_ui._on_event(MessageDeleted("1" * 32, "bob", 4, room="lobby", timestamp=STAMP))
    chat_ui._on_event(Reaction("1" * 32, ":+1:", "me", False, 5, room="lobby"))
    assert lines == [
        "@ bob mentioned you in far (ffffff)",
        "111111 [11:05] lobby <bob> typo",
        "111111 [11:05] lobby <bob> fixed (edited)",
        "* me reacted :+1: to 111111 in lobby (<bob> fixed)",
        "111111 [11:05] lobby <bob> message deleted",
        "* me took back :+1: on 111111 in lobby (<bob> message deleted)",
    ]


# -- read markers and unread counts ---------------------------------------------------------


def counts(rooms: dict[str, Unread], direct: Unread | None = None, **peers: Unread) -> UnreadCounts:
    """Unread counts as the client would keep them."""
    return UnreadCounts(rooms, direct, peers)


def test_help_lists_rooms_and_unread() -> None:
    """/help names /rooms and /unread."""
    assert "/rooms" in HELP and "/unread" in HELP


def test_rooms_and_unread_lines_show_counts_with_mentions_marked() -> None:
    """/rooms lists the rooms joined with (unread, mentions @); /unread only what is unread."""
    known = counts(
        {"lobby": Unread(0, 0, 9), "dev": Unread(3, 1, 40), "ops": Unread(2, 0, 5)},
        Unread(2, 0, 17),
        bob=Unread(2, 0, 17),
        cat=Unread(0, 0, 17),
    )
    assert rooms_line(["lobby", "dev", "new"], known) == "* rooms: lobby, dev (3, 1 @), new; dm (2)"
    assert rooms_line(["lobby"], counts({})) == "* rooms: lobby"
    assert rooms_line([], known) == "* you are in no room"
    assert unread_line(known) == "* unread: dev (3, 1 @), ops (2), dm bob (2)"
    assert unread_line(counts({}, Unread(1, 0, 3))) == "* unread: dm (1)"
    assert unread_line(counts({"lobby": Unread(0, 0, 9)})) == "* nothing unread"
    evil = counts({"\x1b[2J": Unread(1, 0, 0)})
    assert "\x1b" not in unread_line(evil) and "\x1b" not in rooms_line(["\x1b[2J"], evil)


class ReadingClient(ChangingClient):
    """A fake client that also marks read and answers unread."""

    def __init__(self, rooms: list[str], user: str = "me") -> None:
        super().__init__(rooms, user)
        self.server_counts = UnreadCounts()

    async def mark_read(self, room: str, seq: int | None = None) -> None:
        if room in self.refuse:
            raise SendError("not_member", "join it first")
        self.sent.append(("read", room, str(seq)))

    async def mark_read_direct(self, seq: int | None = None) -> None:
        self.sent.append(("read_direct", str(seq)))

    async def unread_counts(self) -> UnreadCounts:
        self.sent.append(("unread",))
        return self.server_counts


async def until(predicate: Any, timeout: float = 5.0) -> None:
    """Let the loop run until ``predicate()`` holds; fail after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def reads(fake: FakeClient) -> list[tuple[str, ...]]:
    return [sent for sent in fake.sent if sent[0] in ("read", "read_direct")]


@pytest.mark.usefixtures("utc_plus_2")
async def test_what_is_shown_in_the_current_room_is_marked_read_once_a_second() -> None:
    """Shown in the current room, and direct messages: one read a second each, the newest seq."""
    fake = ReadingClient(["lobby", "dev"])
    lines: list[str] = []
    chat_ui = TerminalChat(cast(Client, fake), room="dev", output=lines.append, read_delay=0.05)
    show = chat_ui._on_event
    show(chat(5, "a" * 32, sender="bob"))
    show(chat(6, "b" * 32, sender="bob"))
    show(Reaction("a" * 32, ":+1:", "bob", True, 7, room="dev"))
    show(chat(9, "c" * 32, sender="bob", room="lobby"))  # shown in passing: not read
    show(DirectMessage("bob", "me", "psst", 3, "d" * 32, STAMP))
    show(Typing("dev", "bob"))  # not a message
    assert not reads(fake)  # not at once: a second later
    await until(lambda: len(reads(fake)) == 2)
    assert reads(fake) == [("read", "dev", "7"), ("read_direct", "3")]
    # The next message shown starts another wait; one read for all shown by then.
    fake.unread = counts({"dev": Unread(0, 0, 7)})
    show(chat(8, "e" * 32, sender="bob"))
    show(chat(10, "f" * 32, sender="bob"))
    await until(lambda: len(reads(fake)) == 3)
    assert reads(fake)[-1] == ("read", "dev", "10")
    # Read as far already (another device): nothing sent.
    fake.unread = counts({"dev": Unread(0, 0, 12)})
    show(chat(11, "1" * 32, sender="bob"))
    show(chat(12, "2" * 32, sender="bob", room="lobby"))
    chat_ui.room = "lobby"
    show(chat(12, "2" * 32, sender="bob", room="lobby"))
    await until(lambda: len(reads(fake)) == 4)
    assert reads(fake)[-1] == ("read", "lobby", "12")
    # A room left meanwhile, or a refused read: nothing shown, no error line.
    fake.refuse.add("lobby")
    show(chat(13, "3" * 32, sender="bob", room="lobby"))
    await until(lambda: chat_ui._read_timer is None and not chat_ui._tasks)
    assert not [line for line in lines if line.startswith("!")]


@pytest.mark.usefixtures("utc_plus_2")
async def test_history_reads_the_room_a_thread_does_not() -> None:
    """/history shows the room's newest: read up to them; /thread's replies leave the marker."""
    fake = ReadingClient(["lobby", "dev"])
    chat_ui = TerminalChat(cast(Client, fake), room="dev", output=[].append, read_delay=0.01)
    fake.thread = [chat(3, "a" * 32, sender="bob"), chat(4, "b" * 32, reply_to="a" * 32)]
    assert chat_ui.execute(parse_command(f"/thread {'a' * 32}"))  # a whole id: not seen yet
    await until(lambda: ("history", "dev", "a" * 32) in fake.sent)
    assert chat_ui._read_timer is None
    assert chat_ui.execute(parse_command("/history 2"))
    await until(lambda: bool(reads(fake)))
    assert reads(fake) == [("read", "dev", "4")]


async def test_quitting_sends_the_reads_still_waiting() -> None:
    """Leaving before the second is up still marks what was shown."""
    fake = ReadingClient(["lobby"])
    chat_ui = TerminalChat(cast(Client, fake), output=[].append, read_delay=60.0)
    chat_ui._on_event(chat(4, "a" * 32, sender="bob", room="lobby"))
    await chat_ui._flush_reads()
    assert reads(fake) == [("read", "lobby", "4")] and chat_ui._read_timer is None


async def test_rooms_unread_join_and_greeting_show_the_counts() -> None:
    """/rooms from the cache, /unread from the server, and the join and greeting lines."""
    fake = ReadingClient(["lobby"])
    lines: list[str] = []
    chat_ui = TerminalChat(cast(Client, fake), output=lines.append)
    fake.unread = counts({"lobby": Unread(2, 1, 4), "dev": Unread(3, 0, 8)})
    chat_ui._on_event(StateChange(ConnectionState.CONNECTING, ConnectionState.CONNECTED))
    assert lines[-1] == "* you are me, talking in lobby (2 unread, 1 @); /help lists the commands"
    assert chat_ui.execute(parse_command("/join dev"))
    await until(lambda: lines[-1].startswith("* joined"))
    assert lines[-1] == "* joined dev (2 here, 3 unread); messages go to dev"
    assert chat_ui.execute(parse_command("/rooms"))
    assert lines[-1] == "* rooms: lobby (2, 1 @), dev (3)"
    fake.server_counts = counts({"team": Unread(1, 1, 0)}, Unread(0, 0, 2))
    assert chat_ui.execute(parse_command("/unread"))
    await until(lambda: lines[-1].startswith("* unread"))
    assert lines[-1] == "* unread: team (1, 1 @)"


# -- search ------------------------------------------------------------------------------------


def found(
    seq: int, snippet: str, spans: tuple[tuple[int, int], ...], **fields: Any
) -> SearchResult:
    """A search result at STAMP in dev from bob, unless ``fields`` say otherwise."""
    where = {"room": "dev"} if "with_" not in fields else {}
    return SearchResult(
        seq,
        str(fields.pop("message_id", f"m{seq}")),
        str(fields.pop("sender", "bob")),
        fields.pop("at", STAMP),
        snippet,
        snippet,
        spans,
        **{**where, **fields},
    )


def test_help_lists_search_more_and_open() -> None:
    """/help names /search, /more and /open."""
    assert "/search QUERY" in HELP and "/more" in HELP and "/open N" in HELP


def test_matched_words_are_bracketed_and_everything_else_cleaned() -> None:
    """Highlights (code points) become [word]; bad spans are passed over; escapes are cleaned."""
    assert emphasise("the deploy failed, deploying", ((4, 10), (19, 28))) == (
        "the [deploy] failed, [deploying]"
    )
    assert emphasise("🚀 deploy", ((2, 8),)) == "🚀 [deploy]"  # not UTF-16
    assert emphasise("abc", ((2, 9), (1, 1), (-1, 2))) == "abc"  # past the end, empty, negative
    assert emphasise("abcdef", ((3, 5), (0, 4))) == "[abcd]ef"  # an overlap: the first kept
    assert emphasise("\x1b[2J deploy\nnow", ((5, 11),)) == "\ufffd[2J [deploy] now"


@pytest.mark.usefixtures("utc_plus_2")
def test_search_lines_name_the_room_or_peer_the_author_and_the_day_when_not_today() -> None:
    """A room result shows its room, a direct one @peer; an older one its date; edits say so."""
    today = STAMP + timedelta(hours=3)
    assert search_line(1, found(4, "the deploy", ((4, 10),)), now=today) == (
        "1. [11:05] dev <bob> the [deploy]"
    )
    direct = found(7, "deploy done", ((0, 6),), with_="bob", edited_at=STAMP)
    assert search_line(12, direct, now=today + timedelta(days=2)) == (
        "12. [2024-05-01 11:05] @bob <bob> [deploy] done (edited)"
    )
    evil = found(1, "x", (), room="\x1b[2J", sender="\u202ebob")
    assert "\x1b" not in search_line(1, evil) and "\u202e" not in search_line(1, evil)


class SearchingClient(ChangingClient):
    """A fake client that answers searches page by page and reads history around a seq."""

    def __init__(self, rooms: list[str], user: str = "me") -> None:
        super().__init__(rooms, user)
        self.pages: dict[str | None, SearchPage] = {}
        self.around: list[RoomMessage] = []
        self.direct_around: list[DirectMessage] = []

    async def search(self, query: str, *, limit: int, cursor: str | None = None) -> SearchPage:
        self.sent.append(("search", query, str(cursor)))
        if query.startswith('"') and query.count('"') == 1:
            raise SendError("invalid_message", 'a quote is not closed: end the phrase with "')
        return self.pages[cursor]

    async def history_page(self, room: str, *, around: int, limit: int) -> HistoryPage:
        self.sent.append(("around", room, str(around)))
        return HistoryPage(room, self.around, True, False)

    async def direct_history_page(
        self, *, around: int, limit: int, with_: str | None = None
    ) -> DirectHistoryPage:
        self.sent.append(("direct_around", str(around), str(with_)))
        return DirectHistoryPage(self.direct_around, False, True, 40)


@pytest.mark.usefixtures("utc_plus_2")
async def test_search_more_and_open_show_numbered_results_and_their_context() -> None:
    """/search numbers results, /more goes on, /open N shows N (marked >) in context; errors."""
    fake = SearchingClient(["lobby"])
    lines: list[str] = []
    chat_ui = TerminalChat(cast(Client, fake), output=lines.append, read_delay=0.01)
    fake.pages = {
        None: SearchPage([found(5, "the deploy failed", ((4, 10),), message_id="m5" * 16)], "c1"),
        "c1": SearchPage(
            [found(3, "deploy notes", ((0, 6),), with_="bob", sender="me", message_id="d3" * 16)]
        ),
    }

    async def run(line: str, lines_after: int) -> None:
        assert chat_ui.execute(parse_command(line))
        await until(lambda: len(lines) >= lines_after)

    await run("/open 1", 1)
    await run("/more", 2)
    await run("/search deploy", 4)
    await run("/more", 6)
    await run("/more", 7)
    await run("/open 3", 8)
    fake.around = [
        chat(4, "m4" * 16, "before it", sender="ann"),
        chat(5, "m5" * 16, "the deploy failed", sender="bob"),
    ]
    await run("/open 1", 11)
    fake.direct_around = [
        DirectMessage("bob", "me", "deploy notes?", 2, "d2" * 16, STAMP),
        DirectMessage("me", "bob", "deploy notes", 3, "d3" * 16, STAMP),
    ]
    await run("/open 2", 14)
    await run('/search "unclosed', 15)
    await run("/open 1", 16)
    assert lines == [
        "! no search results to open: /search QUERY first",
        "! no search to continue: /search QUERY first",
        "* results 1-1 for deploy; /more for more, /open N shows one in its conversation",
        "1. [2024-05-01 11:05] dev <bob> the [deploy] failed",
        "* results 2-2 for deploy, the last",
        "2. [2024-05-01 11:05] @bob <me> [deploy] notes",
        "* no more results for deploy",
        "! no result 3: the results shown are 1-2",
        "* around result 1 in dev: 2 messages, older ones exist",
        "m4m4m4 [11:05] dev <ann> before it",
        "> m5m5m5 [11:05] dev <bob> the deploy failed",
        "* around result 2 in @bob: 2 messages, newer ones exist",
        "d2d2d2 [11:05] dm <bob\u2192me> deploy notes?",
        "> d3d3d3 [11:05] dm <me\u2192bob> deploy notes",
        '! invalid_message: a quote is not closed: end the phrase with "',
        "! no search results to open: /search QUERY first",
    ]
    assert [s for s in fake.sent if s[0] != "read"] == [
        ("search", "deploy", "None"),
        ("search", "deploy", "c1"),
        ("around", "dev", "5"),
        ("direct_around", "3", "bob"),
        ("search", '"unclosed', "None"),
    ]
    # Messages opened can be named by the commands; nothing opened is marked read.
    assert chat_ui.messages.resolve("m4m4m4") == "m4" * 16
    assert chat_ui._read_timer is None
