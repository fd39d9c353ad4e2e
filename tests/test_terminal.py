"""The terminal chat's pure parts: commands, rendering, typing throttle, room switching."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import cast

import pytest

from roomcast.client import (
    Client,
    ConnectionState,
    DirectMessage,
    FileRef,
    Presence,
    Reply,
    RoomMessage,
    SendError,
    ServerError,
    StateChange,
    Typing,
)
from roomcast.client.terminal import (
    Command,
    Dm,
    Empty,
    Help,
    History,
    Invalid,
    Join,
    Leave,
    Quit,
    Say,
    TerminalChat,
    TypingThrottle,
    Who,
    clean,
    parse_command,
    render,
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
    """Room, file and direct messages are one line: local time, room or dm, sender, text."""
    chat = RoomMessage("dev", "ann", "hello  there", 3, "m1", STAMP)
    assert render(chat) == "[11:05] dev <ann> hello  there"
    file = FileRef("cat.png", "image/png", 1234, "/files/abc?sig=1")
    assert (
        render(RoomMessage("dev", "ann", "", 4, "m2", STAMP, file))
        == "[11:05] dev <ann> sent file cat.png (1234 bytes) /files/abc?sig=1"
    )
    assert render(DirectMessage("bob", "ann", "psst", 7, "m3", STAMP)) == (
        "[11:05] dm <bob\u2192ann> psst"
    )
    assert render(DirectMessage("bob", "ann", "", 8, "m4", STAMP, file)) == (
        "[11:05] dm <bob\u2192ann> sent file cat.png (1234 bytes) /files/abc?sig=1"
    )
    now = datetime(2024, 5, 1, 22, 59, tzinfo=UTC)
    assert render(RoomMessage("lobby", "x", "no stamp", 1, "m5", None), now=now) == (
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
