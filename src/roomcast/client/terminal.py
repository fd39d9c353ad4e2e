"""``roomcast chat``: a line-based chat in a terminal, on top of :class:`Client`.

Three parts, the first two pure:

- :func:`parse_command` turns a typed line into a :data:`Command`;
- :func:`render` turns an event into the one line printed for it (after
  :func:`clean` has replaced every control character that came from the
  network, so other users cannot send terminal escape sequences), and
  :func:`search_line` a search result;
  :class:`MessageIndex` remembers the messages shown, so that commands name
  them by the short id printed before each one;
- :class:`TerminalChat` ties a :class:`Client` to a prompt_toolkit prompt:
  lines arriving print above the prompt (``patch_stdout``), commands run in
  the background so the prompt never waits for the server, and the client
  reconnects by itself while the state changes are shown.

Moderation (``/kick``, ``/ban``, ``/mute``, ``/topic``, ``/room``, ...) and
the account (``/password``, ``/logout``, ``/deleteaccount``) are commands
like the others; passwords are asked for with a prompt that does not echo.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final

from prompt_toolkit import PromptSession
from prompt_toolkit.buffer import Buffer
from prompt_toolkit.patch_stdout import patch_stdout

from ..protocol.messages import LOBBY, MAX_HISTORY_LIMIT, valid_room
from ..textsafe import CONTROLS, FORMAT, LINE_BREAKS
from .core import AuthRefused, Client, ClientClosed, QueueFull, SendError
from .events import (
    ConnectionState,
    DirectMessage,
    Event,
    FileRef,
    Mention,
    MessageDeleted,
    MessageEdited,
    Presence,
    Reaction,
    Removed,
    Reply,
    RoomMessage,
    RoomUpdated,
    SearchPage,
    SearchResult,
    ServerError,
    StateChange,
    Typing,
    Unread,
    UnreadCounts,
)
from .moderation import AuditEntry, RoomInfo, parse_duration

__all__ = [
    "BanUser",
    "ChangePassword",
    "Command",
    "CountUnread",
    "Delete",
    "DeleteAccount",
    "Dm",
    "Edit",
    "Empty",
    "GiveOwner",
    "Help",
    "History",
    "Invalid",
    "Join",
    "Kick",
    "Leave",
    "LeaveRoom",
    "Logout",
    "MessageIndex",
    "More",
    "MuteUser",
    "Open",
    "Quit",
    "React",
    "ReplyTo",
    "Rooms",
    "Say",
    "Search",
    "Seen",
    "SetModerator",
    "SetTitle",
    "SetTopic",
    "ShowAudit",
    "ShowRoom",
    "SlowMode",
    "TerminalChat",
    "Thread",
    "TypingThrottle",
    "Unban",
    "Unmute",
    "Who",
    "audit_line",
    "clean",
    "emphasise",
    "parse_command",
    "refusal_line",
    "removed_line",
    "render",
    "room_changes",
    "room_lines",
    "rooms_line",
    "search_line",
    "unread_line",
]

#: Seconds between two "is typing" lines for one user in one room (and
#: between two typing notices this terminal sends to one room).
TYPING_INTERVAL: Final = 3.0
DEFAULT_HISTORY: Final = 20
#: Characters of a message id shown before each message (more when two
#: messages seen start alike).
SHORT_ID: Final = 6
#: Characters of a message quoted in a reply or a reaction line.
EXCERPT: Final = 40
#: What ``/edit`` and ``/delete`` take for your last message in the current room.
LAST: Final = "last"
#: Seconds a shown message waits before the terminal tells the server it was
#: read: one ``read`` a second at most, for the newest seq shown by then.
READ_DELAY: Final = 1.0
#: Search results a page (``/search``, then each ``/more``): a screenful.
SEARCH_PAGE: Final = 10
#: Messages ``/open`` shows around a result: half before it, half from it on.
OPEN_CONTEXT: Final = 10
#: How a matched word shows in a result's snippet. The terminal prints plain
#: text (escape sequences are not passed through), so brackets, not bold.
MATCH_START: Final = "["
MATCH_END: Final = "]"

HELP: Final = """\
* plain text goes to the current room (a line starting with // sends one starting with /)
* /join ROOM          join ROOM and make it the current room
* /leave [ROOM]       leave ROOM (default: the current room)
* /dm USER TEXT       send a direct message (registered users only)
* /who [ROOM]         who is in ROOM (default: the current room)
* /history [N]        the last N messages of the current room (default 20, at most 100)
* /reply ID TEXT      answer message ID (the id shown before it; its start will do)
* /edit ID|last TEXT  change your message ID (last: your last one in the current room)
* /delete ID|last     delete your message ID
* /react ID EMOJI     react to message ID (an emoji or :name:); /unreact ID EMOJI undoes it
* /thread ID          message ID and the replies to it
* /rooms              your rooms with what is unread: dev (3, 1 @) is 3 unread, 1 naming you
* /unread             what you have not read anywhere, rooms and direct messages
* /search QUERY       search what you may read: words (all of them), "a phrase", prefix*, -not
* /more               the next results of the last search
* /open N             search result N in its conversation, with the messages around it
* /quit               leave (Ctrl-D does too)
* lines starting with @ mention you
* in the current room, for its owner and moderators (DURATION: 90s, 30m, 12h, 7d):
* /room               the room's settings and your role (its bans and mutes if you moderate it)
* /topic [TEXT]       show the topic, or set it (/topic - clears it)
* /title TEXT         the name shown for the room (the owner; /title - shows its name)
* /kick USER [REASON] take USER out of the room now (of a private room, for good)
* /ban USER [DURATION] [REASON]  keep USER out for DURATION (none: until /unban USER)
* /mute USER DURATION USER may read but not write for DURATION; /unmute USER ends it
* /mod USER           make USER a moderator (the owner); /unmod USER takes it back
* /owner USER         hand the room over to USER (you become a moderator)
* /slow SECONDS       seconds between one member's messages (0 or off: none)
* /audit              the room's moderation log, newest first
* /leaveroom [ROOM]   leave a private room for good (default: the current room)
* your account (registered users):
* /password           change your password (your other devices are signed out)
* /logout [all]       sign out and quit (all: on every device)
* /deleteaccount      delete your account for good"""
#: Entries ``/audit`` shows: a screenful.
AUDIT_LINES: Final = 20
#: The reason the server gives in ``removed`` when a room was deleted.
ROOM_DELETED: Final = "the room was deleted"


# -- commands ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Say:
    """Send ``text`` to the current room."""

    text: str


@dataclass(frozen=True, slots=True)
class Join:
    """Join ``room`` and make it the current room."""

    room: str


@dataclass(frozen=True, slots=True)
class Leave:
    """Leave ``room`` (None: the current room)."""

    room: str | None = None


@dataclass(frozen=True, slots=True)
class Dm:
    """Send ``text`` to the user ``to``."""

    to: str
    text: str


@dataclass(frozen=True, slots=True)
class Who:
    """List who is in ``room`` (None: the current room)."""

    room: str | None = None


@dataclass(frozen=True, slots=True)
class History:
    """Show the last ``limit`` messages of the current room."""

    limit: int = DEFAULT_HISTORY


@dataclass(frozen=True, slots=True)
class ReplyTo:
    """Answer the message ``target`` (an id, or the start of one) with ``text``."""

    target: str
    text: str


@dataclass(frozen=True, slots=True)
class Edit:
    """Change the text of the message ``target`` (an id, its start, or ``last``)."""

    target: str
    text: str


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete the message ``target`` (an id, its start, or ``last``)."""

    target: str


@dataclass(frozen=True, slots=True)
class React:
    """Add (``added``) or take back the reaction ``emoji`` on the message ``target``."""

    target: str
    emoji: str
    added: bool = True


@dataclass(frozen=True, slots=True)
class Thread:
    """Show the message ``target`` and its replies."""

    target: str


@dataclass(frozen=True, slots=True)
class Rooms:
    """List the rooms joined, each with its unread count as the client knows it."""


@dataclass(frozen=True, slots=True)
class CountUnread:
    """Ask the server what is unread, in every room and direct conversation."""


@dataclass(frozen=True, slots=True)
class Search:
    """Search every message the user may read for ``query`` (the server's query syntax)."""

    query: str


@dataclass(frozen=True, slots=True)
class More:
    """Show the next page of results of the last search."""


@dataclass(frozen=True, slots=True)
class Open:
    """Show search result ``number`` (from 1) among the messages around it."""

    number: int


@dataclass(frozen=True, slots=True)
class Kick:
    """Take ``user`` out of the current room now (of a private room, for good)."""

    user: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class BanUser:
    """Ban ``user`` from the current room for ``seconds`` (None: until lifted)."""

    user: str
    seconds: int | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Unban:
    """Lift ``user``'s ban from the current room."""

    user: str


@dataclass(frozen=True, slots=True)
class MuteUser:
    """Mute ``user`` in the current room for ``seconds``."""

    user: str
    seconds: int


@dataclass(frozen=True, slots=True)
class Unmute:
    """Lift ``user``'s mute in the current room."""

    user: str


@dataclass(frozen=True, slots=True)
class SetModerator:
    """Make ``user`` a moderator of the current room (``on`` False: no longer)."""

    user: str
    on: bool = True


@dataclass(frozen=True, slots=True)
class GiveOwner:
    """Hand the current room over to ``user``."""

    user: str


@dataclass(frozen=True, slots=True)
class SetTopic:
    """Set the current room's topic to ``text`` ("": clear it; None: show it)."""

    text: str | None = None


@dataclass(frozen=True, slots=True)
class SetTitle:
    """Set the name shown for the current room to ``text`` ("": its name)."""

    text: str


@dataclass(frozen=True, slots=True)
class SlowMode:
    """Make one member wait ``seconds`` between messages in the current room (0: off)."""

    seconds: int


@dataclass(frozen=True, slots=True)
class ShowAudit:
    """Show the current room's moderation log, newest first."""


@dataclass(frozen=True, slots=True)
class ShowRoom:
    """Show the current room's settings, the user's role, bans and mutes."""


@dataclass(frozen=True, slots=True)
class LeaveRoom:
    """Leave the private ``room`` (None: the current room) for good."""

    room: str | None = None


@dataclass(frozen=True, slots=True)
class ChangePassword:
    """Change the password (asked for without echo)."""


@dataclass(frozen=True, slots=True)
class Logout:
    """Sign out (``everywhere``: on every device) and quit."""

    everywhere: bool = False


@dataclass(frozen=True, slots=True)
class DeleteAccount:
    """Delete the account for good (the password is asked for without echo)."""


@dataclass(frozen=True, slots=True)
class Help:
    """Show the commands."""


@dataclass(frozen=True, slots=True)
class Quit:
    """Close the connection and exit."""


@dataclass(frozen=True, slots=True)
class Empty:
    """A blank line: nothing to do."""


@dataclass(frozen=True, slots=True)
class Invalid:
    """A line that is not a valid command; ``message`` says why."""

    message: str


Command = (
    Say
    | Join
    | Leave
    | Dm
    | Who
    | History
    | ReplyTo
    | Edit
    | Delete
    | React
    | Thread
    | Rooms
    | CountUnread
    | Search
    | More
    | Open
    | Kick
    | BanUser
    | Unban
    | MuteUser
    | Unmute
    | SetModerator
    | GiveOwner
    | SetTopic
    | SetTitle
    | SlowMode
    | ShowAudit
    | ShowRoom
    | LeaveRoom
    | ChangePassword
    | Logout
    | DeleteAccount
    | Help
    | Quit
    | Empty
    | Invalid
)
#: The commands that moderate the current room.
Moderate = (
    Kick
    | BanUser
    | Unban
    | MuteUser
    | Unmute
    | SetModerator
    | GiveOwner
    | SetTopic
    | SetTitle
    | SlowMode
    | ShowAudit
    | ShowRoom
)


def _room_arg(name: str, usage: str) -> Command | None:
    """None when ``name`` is a valid room name, else the :class:`Invalid` to show."""
    if valid_room(name):
        return None
    return Invalid(f"{usage}: room names are a-z, 0-9, _ and - (at most 64), not {name!r}")


#: The commands that take one user name, and what each makes of it.
_ONE_USER: Final[dict[str, Callable[[str], Command]]] = {
    "unban": Unban,
    "unmute": Unmute,
    "mod": lambda user: SetModerator(user, True),
    "unmod": lambda user: SetModerator(user, False),
    "owner": GiveOwner,
}
#: The commands that take nothing.
_BARE: Final[dict[str, Callable[[], Command]]] = {
    "rooms": Rooms,
    "unread": CountUnread,
    "more": More,
    "help": Help,
    "quit": Quit,
    "audit": ShowAudit,
    "room": ShowRoom,
    "password": ChangePassword,
    "deleteaccount": DeleteAccount,
}


def _duration(text: str) -> int | None:
    try:
        return parse_duration(text)
    except ValueError:
        return None


def _parse_moderation(name: str, rest: str) -> Command | None:
    """A moderation or account command that takes arguments; None for another name."""
    args = rest.split()
    if name in _ONE_USER:
        return _ONE_USER[name](args[0]) if len(args) == 1 else Invalid(f"usage: /{name} USER")
    if name == "kick":
        user, _, why = rest.strip().partition(" ")
        return Kick(user, why.strip() or None) if user else Invalid("usage: /kick USER [REASON]")
    if name == "ban":
        if not args:
            return Invalid("usage: /ban USER [DURATION] [REASON], DURATION like 90s, 30m, 12h, 7d")
        user, _, more = rest.strip().partition(" ")
        first, _, after = more.strip().partition(" ")
        seconds = _duration(first) if first else None
        reason = (after if seconds is not None else more).strip() or None
        return BanUser(user, seconds, reason)
    if name == "mute":
        seconds = _duration(args[1]) if len(args) == 2 else None
        if seconds is None:
            return Invalid("usage: /mute USER DURATION, DURATION like 90s, 30m, 12h, 7d")
        return MuteUser(args[0], seconds)
    if name == "topic":
        text = rest.strip()
        return SetTopic(None if not text else "" if text == "-" else text)
    if name == "title":
        text = rest.strip()
        if not text:
            return Invalid("usage: /title TEXT (/title - shows the room's name)")
        return SetTitle("" if text == "-" else text)
    if name == "slow":
        if len(args) == 1 and args[0].lower() in ("0", "off"):
            return SlowMode(0)
        seconds = _duration(args[0]) if len(args) == 1 else None
        if seconds is None:
            return Invalid("usage: /slow SECONDS (0 or off: no slow mode)")
        return SlowMode(seconds)
    if name == "leaveroom":
        if len(args) > 1:
            return Invalid("usage: /leaveroom [ROOM]")
        room = args[0] if args else None
        if room is not None and (invalid := _room_arg(room, "/leaveroom")):
            return invalid
        return LeaveRoom(room)
    if name == "logout":
        if args not in ([], ["all"]):
            return Invalid("usage: /logout [all]")
        return Logout(everywhere=bool(args))
    return None


def parse_command(line: str) -> Command:
    """What the typed ``line`` asks for (pure: no I/O)."""
    if not line.strip():
        return Empty()
    if line.startswith("//"):
        return Say(line[1:])
    if not line.startswith("/"):
        return Say(line)
    name, _, rest = line[1:].partition(" ")
    name = name.lower()
    args = rest.split()
    if name == "join":
        if len(args) != 1:
            return Invalid("usage: /join ROOM")
        return _room_arg(args[0], "/join") or Join(args[0])
    if name in ("leave", "who"):
        if len(args) > 1:
            return Invalid(f"usage: /{name} [ROOM]")
        room = args[0] if args else None
        if room is not None and (invalid := _room_arg(room, f"/{name}")):
            return invalid
        return Leave(room) if name == "leave" else Who(room)
    if name == "dm":
        to, _, text = rest.strip().partition(" ")
        if not to or not text.strip():
            return Invalid("usage: /dm USER TEXT")
        return Dm(to, text.strip())
    if name == "history":
        if not args:
            return History()
        if len(args) == 1 and args[0].isdigit() and 1 <= int(args[0]) <= MAX_HISTORY_LIMIT:
            return History(int(args[0]))
        return Invalid(f"usage: /history [N], N from 1 to {MAX_HISTORY_LIMIT}")
    if name in ("reply", "edit"):
        target, _, text = rest.strip().partition(" ")
        if not target or not text.strip():
            return Invalid(
                "usage: /reply ID TEXT" if name == "reply" else "usage: /edit ID|last TEXT"
            )
        return ReplyTo(target, text.strip()) if name == "reply" else Edit(target, text.strip())
    if name == "delete":
        if len(args) != 1:
            return Invalid("usage: /delete ID|last")
        return Delete(args[0])
    if name in ("react", "unreact"):
        if len(args) != 2:
            return Invalid(f"usage: /{name} ID EMOJI")
        return React(args[0], args[1], added=name == "react")
    if name == "thread":
        if len(args) != 1:
            return Invalid("usage: /thread ID")
        return Thread(args[0])
    if name == "search":
        # The whole rest is the query: quotes and minus signs are its syntax.
        if not rest.strip():
            return Invalid("usage: /search QUERY")
        return Search(rest.strip())
    if name == "open":
        if len(args) == 1 and args[0].isdigit() and int(args[0]) >= 1:
            return Open(int(args[0]))
        return Invalid("usage: /open N (the number before a search result)")
    if name in _BARE:
        return Invalid(f"usage: /{name}") if args else _BARE[name]()
    moderation = _parse_moderation(name, rest)
    if moderation is not None:
        return moderation
    return Invalid(f"unknown command /{clean(name)}; /help lists the commands")


# -- rendering -----------------------------------------------------------------

#: Controls (ESC and CSI among them) and invisible format characters (the
#: bidi controls among them, which reorder what follows) show as U+FFFD, so
#: a reader sees that something was there; line breaks and tabs as a space.
#: The sets are shared with the server's file names (:mod:`roomcast.textsafe`).
_CLEAN: Final = {c: "\ufffd" for c in CONTROLS | FORMAT} | {c: " " for c in LINE_BREAKS}


def clean(text: str) -> str:
    """``text`` safe to print: line breaks and tabs become spaces, other controls U+FFFD."""
    return text.translate(_CLEAN)


def _clock(stamp: datetime | None, now: datetime | None) -> str:
    when = stamp or now or datetime.now(UTC)
    return when.astimezone().strftime("[%H:%M]")


def _body(text: str, file: FileRef | None) -> str:
    if file is None:
        return clean(text)
    return f"sent file {clean(file.name)} ({file.size} bytes) {clean(file.url)}"


def _excerpt(text: str, limit: int = EXCERPT) -> str:
    text = clean(text)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


@dataclass(frozen=True, slots=True)
class Seen:
    """What the terminal knows of a message it has shown."""

    message_id: str
    #: The id shown before it: its first characters, unique among those seen.
    short: str
    #: None: a direct message.
    room: str | None
    sender: str
    to: str
    text: str
    is_file: bool = False
    deleted: bool = False


class MessageIndex:
    """The last ``limit`` messages shown, by id, so that commands can name them. Pure.

    Each gets a short id, its first :data:`SHORT_ID` characters (more when a
    message seen earlier starts alike): the terminal prints it before the
    message, and :meth:`resolve` takes it, or any unique start of an id.
    """

    def __init__(self, limit: int = 5000) -> None:
        self.limit = limit
        self._seen: dict[str, Seen] = {}  # in the order first seen
        self._shorts: dict[str, str] = {}  # short id -> message id

    def __len__(self) -> int:
        return len(self._seen)

    def get(self, message_id: str) -> Seen | None:
        """What is known of ``message_id``, or None."""
        return self._seen.get(message_id)

    def short(self, message_id: str) -> str:
        """The short id shown for ``message_id`` (its start when it is not known)."""
        seen = self._seen.get(message_id)
        return seen.short if seen is not None else message_id[:SHORT_ID]

    def add(self, message: RoomMessage | DirectMessage) -> Seen:
        """Remember ``message`` (or take its newer state: history shows the current one)."""
        room = message.room if isinstance(message, RoomMessage) else None
        to = message.to if isinstance(message, DirectMessage) else ""
        known = self._seen.get(message.message_id)
        short = known.short if known is not None else self._new_short(message.message_id)
        seen = Seen(
            message.message_id,
            short,
            room,
            message.sender,
            to,
            message.text,
            message.file is not None,
            message.deleted,
        )
        self._seen[message.message_id] = seen
        self._shorts[short] = message.message_id
        while len(self._seen) > self.limit:
            oldest = next(iter(self._seen.values()))
            del self._seen[oldest.message_id]
            if self._shorts.get(oldest.short) == oldest.message_id:
                del self._shorts[oldest.short]
        return seen

    def _new_short(self, message_id: str) -> str:
        for length in range(SHORT_ID, len(message_id)):
            if message_id[:length] not in self._shorts:
                return message_id[:length]
        return message_id

    def change(self, event: MessageEdited | MessageDeleted) -> None:
        """Take an edit or a delete into what is known."""
        seen = self._seen.get(event.message_id)
        if seen is None:
            return
        if isinstance(event, MessageEdited):
            self._seen[event.message_id] = replace(seen, text=event.text)
        else:
            self._seen[event.message_id] = replace(seen, text="", deleted=True)

    def last(self, sender: str, room: str, *, text_only: bool = False) -> Seen | None:
        """The newest message of ``sender`` in ``room`` that is not deleted."""
        for seen in reversed(self._seen.values()):
            if seen.sender == sender and seen.room == room and not seen.deleted:
                if not (text_only and seen.is_file):
                    return seen
        return None

    def resolve(self, ref: str) -> str:
        """The message id ``ref`` names: a short id shown, a whole id, or a unique start.

        A whole id (32 characters or more) not seen here is taken as it is:
        the server knows whether it exists.

        Raises:
            LookupError: no message seen starts with ``ref``, or several do
                (the message says which).
        """
        if ref in self._shorts:
            return self._shorts[ref]
        if ref in self._seen:
            return ref
        matches = [message_id for message_id in self._seen if message_id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise LookupError(f"{len(matches)} messages start with {ref}: type more of the id")
        if len(ref) >= 32:
            return ref
        raise LookupError(f"no message {ref} seen here (ids are shown before each message)")


def _where(room: str | None, sender: str | None, to: str | None) -> str:
    if room is not None:
        return clean(room)
    return f"dm <{clean(sender or '?')}\u2192{clean(to or '?')}>"


def _mentioned(me: str | None, sender: str, mentions: tuple[str, ...]) -> bool:
    if me is None or me.casefold() == sender.casefold():
        return False
    return me.casefold() in (name.casefold() for name in mentions)


def _message_line(
    message: RoomMessage | DirectMessage,
    now: datetime | None,
    me: str | None,
    seen: MessageIndex | None,
) -> str:
    if isinstance(message, RoomMessage):
        who = f"{clean(message.room)} <{clean(message.sender)}>"
    else:
        who = f"dm <{clean(message.sender)}\u2192{clean(message.to)}>"
    parts = [f"{_clock(message.timestamp, now)} {who}"]
    if message.reply_to is not None or message.quote is not None:
        quote = message.quote
        if quote is None:
            answered = _short(message.reply_to or "", seen)
            parts.append(f"(reply to {answered})")
        elif quote.deleted or quote.text is None:
            parts.append(f"(reply to {clean(quote.sender)}: deleted message)")
        else:
            parts.append(f'(reply to {clean(quote.sender)}: "{_excerpt(quote.text)}")')
    parts.append("message deleted" if message.deleted else _body(message.text, message.file))
    if message.edited_at is not None and not message.deleted:
        parts.append("(edited)")
    if message.reactions:
        counts = ", ".join(f"{clean(e)} {len(users)}" for e, users in message.reactions.items())
        parts.append(f"[{counts}]")
    if message.reply_count:
        parts.append(f"({message.reply_count} repl{'y' if message.reply_count == 1 else 'ies'})")
    line = " ".join(parts)
    if message.message_id:
        line = f"{_short(message.message_id, seen)} {line}"
    return f"@ {line}" if _mentioned(me, message.sender, message.mentions) else line


def _short(message_id: str, seen: MessageIndex | None) -> str:
    return clean(seen.short(message_id) if seen is not None else message_id[:SHORT_ID])


def _about(message_id: str, seen: MessageIndex | None) -> str:
    """`` (<sender> start of its text)`` for a message seen, else nothing."""
    known = seen.get(message_id) if seen is not None else None
    if known is None:
        return ""
    if known.deleted:
        return f" (<{clean(known.sender)}> message deleted)"
    text = "a file" if known.is_file else _excerpt(known.text)
    return f" (<{clean(known.sender)}> {text})"


def _change_line(
    event: MessageEdited | MessageDeleted, now: datetime | None, seen: MessageIndex | None
) -> str:
    """An edit shows the new text; a delete that the message is gone (and who did it)."""
    stamp = event.edited_at if isinstance(event, MessageEdited) else event.timestamp
    head = f"{_short(event.message_id, seen)} {_clock(stamp, now)}"
    # A replayed edit of a message deleted since has lost its text.
    text = clean(event.text) if isinstance(event, MessageEdited) and event.text else "-"
    if event.room is None:  # a direct message: the conversation names its author
        where = f"{head} {_where(None, event.sender, event.to)}"
        if isinstance(event, MessageEdited):
            return f"{where} {text} (edited)"
        by = "" if event.by == event.sender else f" by {clean(event.by)}"
        return f"{where} message deleted{by}"
    known = seen.get(event.message_id) if seen is not None else None
    author = known.sender if known is not None else None
    where = f"{head} {clean(event.room)}"
    if isinstance(event, MessageEdited):
        return f"{where} <{clean(author or event.by)}> {text} (edited)"
    if author is None:
        return f"{where} message deleted by {clean(event.by)}"
    by = "" if event.by == author else f" by {clean(event.by)}"
    return f"{where} <{clean(author)}> message deleted{by}"


def render(
    event: Event,
    *,
    now: datetime | None = None,
    me: str | None = None,
    seen: MessageIndex | None = None,
) -> str | None:
    """The line shown for ``event``, or None when it shows nothing (pure).

    Times are the server's, in local time (``now`` when a message has none).
    Messages start with their short id (``seen``'s, else their first six
    characters), and with ``@`` when they mention ``me``. Edits and deletes
    name the message's author when ``seen`` knows it. The end of the
    connection (``CLOSED``) renders as nothing: the chat reports it as it
    exits.
    """
    if isinstance(event, RoomMessage | DirectMessage):
        return _message_line(event, now, me, seen)
    if isinstance(event, MessageEdited | MessageDeleted):
        return _change_line(event, now, seen)
    if isinstance(event, Reaction):
        did = "reacted" if event.added else "took back"
        on = "to" if event.added else "on"
        where = _where(event.room, event.sender, event.to)
        about = _about(event.message_id, seen)
        return (
            f"* {clean(event.user)} {did} {clean(event.emoji)} {on} "
            f"{_short(event.message_id, seen)} in {where}{about}"
        )
    if isinstance(event, Mention):
        short = _short(event.message_id, seen)
        return f"@ {clean(event.sender)} mentioned you in {clean(event.room)} ({short})"
    if isinstance(event, Presence):
        verb = {"join": "joined", "leave": "left"}.get(event.event)
        return None if verb is None else f"* {clean(event.user)} {verb} {clean(event.room)}"
    if isinstance(event, Typing):
        return f"* {clean(event.user)} is typing in {clean(event.room)}"
    if isinstance(event, ServerError):
        return refusal_line(event.code, event.message, event.until, now=now)
    if isinstance(event, Removed):
        return removed_line(event, me=me, now=now)
    if isinstance(event, Reply) and event.type == "left" and event.payload.get("reason"):
        room, reason = str(event.payload.get("room", "")), str(event.payload["reason"])
        return f"! you are no longer in {clean(room)}: {clean(reason)}"
    if isinstance(event, StateChange):
        reason = f" ({clean(event.reason)})" if event.reason else ""
        if event.new is ConnectionState.CONNECTING:
            return "* connecting"
        if event.new is ConnectionState.RECONNECTING:
            return f"* reconnecting{reason}"
        if event.new is ConnectionState.CONNECTED:
            return f"* connected{reason}"  # "(over HTTP)": the fallback transport
    return None


def _counts(unread: Unread | None, word: str = "") -> str:
    """``3, 1 @`` (with ``word``: ``3 unread, 1 @``): unread messages, those naming you.

    Empty when all is read, so that a list shows only what waits.
    """
    if unread is None or (unread.unread <= 0 and unread.mentions <= 0):
        return ""
    mentions = f", {unread.mentions} @" if unread.mentions > 0 else ""
    return f"{unread.unread}{word}{mentions}"


def _in_brackets(text: str) -> str:
    return f" ({text})" if text else ""


def rooms_line(rooms: list[str], counts: UnreadCounts) -> str:
    """``/rooms``: the rooms joined, in order, each with what is unread there (pure).

    The direct messages follow when their count is known and not zero.
    """
    if not rooms:
        return "* you are in no room"
    listed = ", ".join(
        f"{clean(room)}{_in_brackets(_counts(counts.rooms.get(room)))}" for room in rooms
    )
    direct = _counts(counts.direct)
    return f"* rooms: {listed}" + (f"; dm ({direct})" if direct else "")


def unread_line(counts: UnreadCounts) -> str:
    """``/unread``: every room and direct conversation with something unread (pure)."""
    parts = [
        f"{clean(room)} ({_counts(u)})" for room, u in sorted(counts.rooms.items()) if _counts(u)
    ]
    parts += [
        f"dm {clean(peer)} ({_counts(u)})"
        for peer, u in sorted(counts.conversations.items())
        if _counts(u)
    ]
    if not parts and _counts(counts.direct):
        parts.append(f"dm ({_counts(counts.direct)})")  # no conversation listed: the stream's
    return f"* unread: {', '.join(parts)}" if parts else "* nothing unread"


def emphasise(snippet: str, highlights: tuple[tuple[int, int], ...]) -> str:
    """``snippet`` safe to print, each highlighted ``[start, end)`` in brackets (pure).

    Spans are code point offsets, as the server gives them; one that is
    empty, out of the snippet or overlaps the one before is passed over.
    """
    parts: list[str] = []
    done = 0
    for start, end in sorted(highlights):
        if start < done or end <= start or end > len(snippet):
            continue
        parts += [clean(snippet[done:start]), MATCH_START, clean(snippet[start:end]), MATCH_END]
        done = end
    parts.append(clean(snippet[done:]))
    return "".join(parts)


def _when(stamp: datetime | None, now: datetime | None) -> str:
    """``[14:02]`` today (local time), ``[2026-11-30 14:02]`` before: results can be old."""
    today = (now or datetime.now(UTC)).astimezone()
    when = (stamp or today).astimezone()
    if when.date() == today.date():
        return when.strftime("[%H:%M]")
    return when.strftime("[%Y-%m-%d %H:%M]")


def search_line(number: int, result: SearchResult, *, now: datetime | None = None) -> str:
    """The line of search result ``number``: where, who, when, the snippet with its matches.

    A room result names its room; a direct one ``@`` the other side of the
    conversation (you, for a note to yourself). Pure.
    """
    where = clean(result.room) if result.room is not None else f"@{clean(result.with_ or '?')}"
    edited = " (edited)" if result.edited_at is not None else ""
    text = emphasise(result.snippet, result.highlights)
    return f"{number}. {_when(result.at, now)} {where} <{clean(result.sender)}> {text}{edited}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# -- moderation lines ------------------------------------------------------------------


def _until(until: datetime | None, now: datetime | None = None) -> str:
    """``until 14:02`` today (local time), ``until 2026-11-30 14:02`` another day."""
    if until is None:
        return "until lifted"
    today = (now or datetime.now(UTC)).astimezone()
    when = until.astimezone()
    if when.date() == today.date():
        return when.strftime("until %H:%M")
    return when.strftime("until %Y-%m-%d %H:%M")


def _span(seconds: int) -> str:
    """``90s``, ``30m``, ``12h``, ``7d``: the largest unit that divides ``seconds``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _slow(seconds: int) -> str:
    return f"slow mode {_span(seconds)} between messages" if seconds else "slow mode off"


def refusal_line(
    code: str, message: str, until: datetime | None = None, *, now: datetime | None = None
) -> str:
    """The ``!`` line of a refusal; a ban or mute says until when (pure)."""
    line = f"! {clean(code)}: {clean(message)}"
    if code in ("banned", "muted"):
        line += f" ({_until(until, now)})"
    return line


def removed_line(event: Removed, *, me: str | None = None, now: datetime | None = None) -> str:
    """What the terminal says when this user is out of a room: who did it, why, until when."""
    room, by = clean(event.room), clean(event.by)
    why = f": {clean(event.reason)}" if event.reason else ""
    if event.reason == ROOM_DELETED and not event.banned:
        return f"! {room} was deleted" + (f" by {by}" if by else "")
    if event.banned:
        if not by:  # found out on a reconnect: the server's message would repeat this
            return f"! you are banned from {room} ({_until(event.until, now)})"
        return f"! {by} banned you from {room} ({_until(event.until, now)}){why}"
    if by and me is not None and event.by.casefold() == me.casefold():
        return f"* you left {room} for good"
    if by:
        return f"! {by} removed you from {room}{why}"
    return f"! you are no longer in {room}{why}"


def _names_list(names: tuple[str, ...] | list[str]) -> str:
    return ", ".join(clean(name) for name in names)


def room_changes(old: RoomUpdated | None, new: RoomUpdated) -> list[str]:
    """The lines that say how a room's settings changed from ``old`` to ``new`` (pure).

    With no ``old`` (the terminal did not know the room's settings), one
    line with the settings that matter to its members.
    """
    room = clean(new.room)
    if old is None:
        parts = [
            f"owner {clean(new.owner)}" if new.owner else "no owner",
            f"moderators {_names_list(new.moderators)}" if new.moderators else "no moderators",
            f'topic "{clean(new.topic)}"' if new.topic else "no topic",
            _slow(new.slow_mode),
        ]
        return [f"* {room} changed: {'; '.join(parts)}"]
    lines: list[str] = []
    if new.topic != old.topic:
        lines.append(
            f'* topic of {room}: "{clean(new.topic)}"'
            if new.topic
            else f"* {room} has no topic now"
        )
    if new.title != old.title:
        lines.append(f'* {room} is shown as "{clean(new.title)}" now')
    if new.slow_mode != old.slow_mode:
        lines.append(f"* {_slow(new.slow_mode)} in {room}")
    if new.receipts != old.receipts:
        lines.append(f"* read receipts are {'on' if new.receipts else 'off'} in {room}")
    if new.owner != old.owner:
        lines.append(f"* {clean(new.owner or 'nobody')} owns {room} now")
    before, after = set(old.moderators), set(new.moderators)
    for name in sorted(after - before):
        lines.append(f"* {clean(name)} is a moderator of {room} now")
    for name in sorted(before - after):
        if name != new.owner:  # a moderator who became the owner is not demoted
            lines.append(f"* {clean(name)} is no longer a moderator of {room}")
    return lines


_ROLE_LINE: Final = {
    "owner": "you own it",
    "moderator": "you moderate it",
    "admin": "you are an admin",
    "member": "you are a member",
}


def room_lines(info: RoomInfo, *, now: datetime | None = None) -> list[str]:
    """``/room``: the room's settings, your role, and its bans and mutes if you see them (pure)."""
    name = clean(info.name)
    head = f"* {name}" + (f' "{clean(info.title)}"' if info.title != info.name else "")
    parts = [
        f"owner {clean(info.owner)}" if info.owner else "no owner",
        f"moderators {_names_list(info.moderators)}" if info.moderators else "no moderators",
    ]
    if info.member_count is not None:
        parts.append(_plural(info.member_count, "member"))
    parts += [_slow(info.slow_mode), f"receipts {'on' if info.receipts else 'off'}"]
    kind = "private" if info.private else "public"
    lines = [f"{head} ({kind}): {'; '.join(parts)}"]
    lines.append(f'* topic: "{clean(info.topic)}"' if info.topic else "* no topic")
    role = _ROLE_LINE.get(info.role or "", "you are not a member")
    if info.muted_until is not None:
        role += f"; you are muted ({_until(info.muted_until, now)})"
    lines.append(f"* {role}")
    if info.bans:
        bans = [
            f"{clean(b.user)} ({_until(b.until, now)}"
            + (f", by {clean(b.by)}" if b.by else "")
            + (f": {clean(b.reason)}" if b.reason else "")
            + ")"
            for b in info.bans
        ]
        lines.append(f"* banned: {', '.join(bans)}")
    if info.mutes:
        mutes = [
            f"{clean(m.user)} ({_until(m.until, now)}"
            + (f", by {clean(m.by)}" if m.by else "")
            + ")"
            for m in info.mutes
        ]
        lines.append(f"* muted: {', '.join(mutes)}")
    if info.moderates and not info.bans and not info.mutes:
        lines.append("* nobody is banned or muted")
    return lines


def audit_line(entry: AuditEntry, *, now: datetime | None = None) -> str:
    """One entry of ``/audit``: when, who, what, to whom, why, and the details (pure)."""
    parts = [_when(entry.at, now), clean(entry.by), clean(entry.action)]
    if entry.target:
        parts.append(clean(entry.target))
    if entry.reason:
        parts.append(f'"{clean(entry.reason)}"')
    details = [f"{clean(str(k))}={clean(str(v))}" for k, v in entry.detail.items()]
    if details:
        parts.append(f"({', '.join(details)})")
    return " ".join(parts)


def _as_update(info: RoomInfo) -> RoomUpdated:
    """The settings of a room read over HTTP, as a ``room`` frame has them."""
    return RoomUpdated(
        info.name,
        info.private,
        info.owner,
        tuple(sorted(info.moderators)),
        info.topic,
        info.title,
        info.slow_mode,
        info.receipts,
    )


class TypingThrottle:
    """Lets one typing line (or notice) through per user and room per ``interval`` seconds."""

    def __init__(self, interval: float = TYPING_INTERVAL) -> None:
        self.interval = interval
        self._last: dict[tuple[str, str], float] = {}

    def allow(self, user: str, room: str, now: float) -> bool:
        """Whether to show (or send) typing for ``user`` in ``room`` at ``now``."""
        last = self._last.get((user, room))
        if last is not None and now - last < self.interval:
            return False
        if len(self._last) > 1000:  # forget the stale ones now and then
            self._last = {k: t for k, t in self._last.items() if now - t < self.interval}
        self._last[(user, room)] = now
        return True


# -- the terminal --------------------------------------------------------------


class TerminalChat:
    """One terminal chatting through ``client``, in ``room`` at first.

    ``output`` prints one line; by default :func:`print`, which goes above the
    prompt while it is shown.

    What the terminal shows is read: every message (or change) shown in the
    current room moves the room's read marker, and every direct message the
    direct stream's, ``read_delay`` seconds later, to the newest seq shown by
    then (one ``read`` per conversation a second at most).

    ``ask(prompt, hidden)`` asks the user a question (``/password``,
    ``/deleteaccount``): by default a prompt of its own, without echo when
    ``hidden`` and kept out of the history; None when the user gave up.
    """

    def __init__(
        self,
        client: Client,
        *,
        room: str = LOBBY,
        output: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        read_delay: float = READ_DELAY,
        ask: Callable[[str, bool], Awaitable[str | None]] | None = None,
    ) -> None:
        self.client = client
        self.ask = ask or _ask
        self.room: str | None = room
        #: The rooms joined, the last joined last (``client.rooms`` also lists
        #: rooms whose join was refused).
        self.joined: list[str] = list(client.rooms)
        self.output = output or (lambda line: print(line, flush=True))
        self.clock = clock
        self._seen_typing = TypingThrottle()
        self._sent_typing = TypingThrottle()
        #: The messages shown, for the ids that commands take.
        self.messages = MessageIndex()
        self._tasks: set[asyncio.Task[None]] = set()
        self._quitting = False
        self._ended: asyncio.Event | None = None
        self._greeted = False
        self._session: PromptSession[str] | None = None
        self.read_delay = read_delay
        #: The newest seq shown and not yet marked read, by room (None: direct).
        self._unread_shown: dict[str | None, int] = {}
        self._read_timer: asyncio.TimerHandle | None = None
        #: The last search: its query, the results shown (``/open N`` is the
        #: Nth), where its next page starts (None: no more).
        self._query: str | None = None
        self._results: list[SearchResult] = []
        self._cursor: str | None = None
        #: Counts searches, so that the answer of one replaced by a newer is dropped.
        self._search_number = 0
        #: A page of the last search is being asked for.
        self._searching = False
        #: Each room's settings as last seen (a ``room`` frame, ``/room``, a change
        #: made here), so that a change shows what changed.
        self._settings: dict[str, RoomUpdated] = {}
        #: Set when the chat ends on purpose (signed out, account deleted): the
        #: exit status and the last line.
        self._exit_status: int | None = None
        self._farewell: str | None = None
        client.on(None, self._on_event)

    # -- events ----------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if isinstance(event, Typing) and not self._seen_typing.allow(
            event.user, event.room, self.clock()
        ):
            return
        if isinstance(event, StateChange):
            self._on_state(event)
        if isinstance(event, Mention) and event.room in self.client.rooms:
            return  # the message itself shows it, marked with @
        if isinstance(event, Removed):
            self._removed(event)
            return
        if isinstance(event, RoomUpdated):
            self._settings_seen(event)
            return
        if isinstance(event, RoomMessage | DirectMessage):
            self.messages.add(event)
        line = render(event, me=self.client.user, seen=self.messages)
        if isinstance(event, MessageEdited | MessageDeleted):
            self.messages.change(event)  # after: the line names the author seen
        if line is not None:
            self.output(line)
            self._read_shown(event)
        if isinstance(event, StateChange) and event.new is ConnectionState.CONNECTED:
            if not self._greeted:
                self._greeted = True
                where = f"talking in {self.room}" if self.room else "in no room"
                if self.room is not None:
                    where += _in_brackets(
                        _counts(self.client.unread.rooms.get(self.room), " unread")
                    )
                you = clean(self.client.user or "?")
                self.output(f"* you are {you}, {where}; /help lists the commands")

    def _read_shown(self, event: Event) -> None:
        """A line was shown for ``event``: mark its conversation read up to it, soon."""
        if isinstance(event, RoomMessage | MessageEdited | MessageDeleted | Reaction):
            key = event.room
            if key is not None and key != self.room:
                return  # shown, but in passing: the current room is the one being read
        elif isinstance(event, DirectMessage):
            key = None
        else:
            return
        self._unread_shown[key] = max(event.seq, self._unread_shown.get(key, 0))
        if self._read_timer is None:
            loop = asyncio.get_running_loop()
            self._read_timer = loop.call_later(self.read_delay, self._send_reads)

    def _send_reads(self) -> list[asyncio.Task[None]]:
        """Tell the server what was shown (the newest seq of each conversation); the sends."""
        self._read_timer = None
        shown, self._unread_shown = self._unread_shown, {}
        counts = self.client.unread
        sends: list[asyncio.Task[None]] = []
        for key, seq in shown.items():
            known = counts.direct if key is None else counts.rooms.get(key)
            if known is not None and seq <= known.last_read:
                continue  # read already (here, or on another device)
            if key is None:
                work = self.client.mark_read_direct(seq)
            elif key in self.client.rooms:
                work = self.client.mark_read(key, seq)
            else:
                continue  # left meanwhile
            sends.append(self._spawn(work, quiet=True))
        return sends

    def _on_state(self, event: StateChange) -> None:
        if event.new is ConnectionState.CLOSED and not self._quitting and self._ended:
            self._ended.set()
        if self._session is not None and self._session.app.is_running:
            self._session.app.invalidate()  # the prompt shows the state

    def _removed(self, event: Removed) -> None:
        """Out of a room (removed, banned, deleted, left on another device): say so, move on."""
        me = self.client.user
        if (
            me is not None
            and event.by.casefold() == me.casefold()
            and event.room not in self.joined
        ):
            return  # this terminal's /leaveroom said it already
        self.output(removed_line(event, me=me) + self._drop_room(event.room))

    def _drop_room(self, room: str) -> str:
        """Forget ``room``; where messages go now, when it was the current room."""
        if room in self.joined:
            self.joined.remove(room)
        self._settings.pop(room, None)
        if room != self.room:
            return ""
        self.room = self.joined[-1] if self.joined else None
        return f"; messages go to {self.room}" if self.room else "; you are in no room"

    def _settings_seen(self, new: RoomUpdated, fallback: str | None = None) -> None:
        """A room's settings as they are now: show what changed since last seen.

        ``fallback``: the line to show instead of a summary when the
        settings were not known before (a change this terminal made).
        """
        old = self._settings.get(new.room)
        self._settings[new.room] = new
        if old is None and fallback is not None:
            self.output(fallback)
            return
        for line in room_changes(old, new):
            self.output(line)

    # -- commands --------------------------------------------------------------

    def execute(self, command: Command) -> bool:
        """Carry out ``command`` (sends run in the background); False to quit."""
        if isinstance(command, Quit):
            return False
        if isinstance(command, Help):
            self.output(HELP)
        elif isinstance(command, Invalid):
            self.output(f"! {command.message}")
        elif isinstance(command, Say):
            if self.room is None:
                self.output("! you are in no room: /join ROOM first")
            else:
                self._spawn(self.client.send_chat(command.text, self.room))
        elif isinstance(command, Join):
            self._spawn(self._join(command.room, self.room))
            self.room = command.room  # what is typed next goes there, after the join
        elif isinstance(command, Leave):
            room = command.room or self.room
            if room is None:
                self.output("! you are in no room")
            else:
                if room in self.joined:
                    self.joined.remove(room)
                if room == self.room:
                    self.room = self.joined[-1] if self.joined else None
                self._spawn(self._leave(room))
        elif isinstance(command, Dm):
            self._spawn(self.client.send_direct(command.to, command.text))
        elif isinstance(command, Who):
            room = command.room or self.room
            if room is None:
                self.output("! you are in no room: /who ROOM")
            else:
                self._spawn(self._who(room))
        elif isinstance(command, History):
            if self.room is None:
                self.output("! you are in no room: /join ROOM first")
            else:
                self._spawn(self._history(self.room, command.limit))
        elif isinstance(command, ReplyTo | Edit | Delete | React | Thread):
            self._change(command)
        elif isinstance(command, Rooms):
            self.output(rooms_line(self.joined, self.client.unread))
        elif isinstance(command, CountUnread):
            self._spawn(self._count_unread())
        elif isinstance(command, Search | More | Open):
            self._search_command(command)
        elif isinstance(command, Kick | BanUser | Unban | MuteUser | Unmute | SetModerator):
            self._moderate(command)
        elif isinstance(command, GiveOwner | SetTopic | SetTitle | SlowMode | ShowAudit | ShowRoom):
            self._moderate(command)
        elif isinstance(command, LeaveRoom):
            room = command.room or self.room
            if room is None:
                self.output("! you are in no room: /leaveroom ROOM")
            else:
                self._spawn(self._leave_for_good(room))
        elif isinstance(command, ChangePassword | DeleteAccount):
            self._spawn(self._account(command))
        elif isinstance(command, Logout):
            self._spawn(self._logout(command.everywhere))
        return True

    def _target(self, command: ReplyTo | Edit | Delete | React | Thread) -> str | None:
        """The message id ``command`` names, or None once a ``!`` line said why not."""
        if isinstance(command, Edit | Delete) and command.target == LAST:
            verb = "edit" if isinstance(command, Edit) else "delete"
            if self.room is None:
                self.output(f"! you are in no room: /{verb} ID")
                return None
            mine = self.messages.last(
                self.client.user or "", self.room, text_only=isinstance(command, Edit)
            )
            if mine is None:
                self.output(f"! no message of yours in {self.room} to {verb}")
                return None
            return mine.message_id
        try:
            return self.messages.resolve(command.target)
        except LookupError as exc:
            self.output(f"! {clean(str(exc))}")
            return None

    def _change(self, command: ReplyTo | Edit | Delete | React | Thread) -> None:
        """Carry out a command that names a message."""
        message_id = self._target(command)
        if message_id is None:
            return
        if isinstance(command, Edit):
            self._spawn(self.client.edit(message_id, command.text))
        elif isinstance(command, Delete):
            self._spawn(self.client.delete(message_id))
        elif isinstance(command, React):
            change = self.client.react if command.added else self.client.unreact
            self._spawn(change(message_id, command.emoji))
        else:
            known = self.messages.get(message_id)
            if known is not None and known.room is None:
                self.output("! direct messages have no replies or threads")
                return
            room = known.room if known is not None else self.room
            if room is None:
                self.output("! you are in no room: /join ROOM first")
            elif isinstance(command, ReplyTo):
                self._spawn(self.client.send_chat(command.text, room, reply_to=message_id))
            else:
                self._spawn(self._thread(room, message_id))

    def _spawn(
        self, work: Coroutine[Any, Any, object], *, quiet: bool = False
    ) -> asyncio.Task[None]:
        task = asyncio.ensure_future(self._report(work, quiet=quiet))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _report(self, work: Coroutine[Any, Any, object], *, quiet: bool = False) -> None:
        """Run ``work``; a failure is one ``!`` line (none when ``quiet``), never the end."""
        try:
            await work
        except SendError as exc:
            if not quiet:
                self.output(refusal_line(exc.code, exc.message, exc.until))
        except (QueueFull, TimeoutError) as exc:
            if not quiet:
                self.output(f"! not sent: {exc or 'no answer from the server'}")
        except ClientClosed:
            pass  # the chat is ending; run() says why
        except AuthRefused as exc:
            if not quiet:
                self.output(f"! {clean(str(exc))}")
        except (OSError, ValueError) as exc:
            # The server cannot be reached over HTTP, or its answer cannot be read.
            if not quiet:
                self.output(f"! not done: {clean(str(exc)) or type(exc).__name__}")

    async def _join(self, room: str, previous: str | None) -> None:
        try:
            reply = await self.client.join(room)
        except SendError:
            if self.room == room:
                self.room = previous
            raise
        if room in self.joined:
            self.joined.remove(room)
        self.joined.append(room)
        here = f"{reply.payload.get('member_count', '?')} here"
        if words := _counts(self.client.unread.rooms.get(room), " unread"):
            here += f", {words}"
        self.output(f"* joined {room} ({here}); messages go to {self.room}")

    async def _leave(self, room: str) -> None:
        await self.client.leave(room)
        now = f"messages go to {self.room}" if self.room else "you are in no room"
        self.output(f"* left {room}; {now}")

    async def _count_unread(self) -> None:
        self.output(unread_line(await self.client.unread_counts()))

    async def _who(self, room: str) -> None:
        members = await self.client.presence(room)
        self.output(f"* in {room} ({len(members)}): {', '.join(clean(m) for m in members)}")

    async def _history(self, room: str, limit: int) -> None:
        messages, has_more = await self.client.history(room, limit=limit)
        n, more = len(messages), ", older ones exist" if has_more else ""
        self.output(f"* history of {room}: {n} message{'' if n == 1 else 's'}{more}")
        self._show(messages, read=True)

    async def _thread(self, room: str, root: str) -> None:
        messages, has_more = await self.client.history(room, thread=root, limit=MAX_HISTORY_LIMIT)
        n = len(messages) - 1
        more = ", older ones exist" if has_more else ""
        short = clean(self.messages.short(root))
        self.output(f"* thread {short} in {room}: {n} repl{'y' if n == 1 else 'ies'}{more}")
        self._show(messages)

    def _show(self, messages: list[RoomMessage], *, read: bool = False) -> None:
        """Print messages read from history (and remember them for the commands).

        ``read``: they are the room's newest, so showing them reads the room
        (a thread's replies are not: the marker is one seq for the room).
        """
        for message in messages:
            self.messages.add(message)
            self.output(render(message, me=self.client.user, seen=self.messages) or "")
            if read:
                self._read_shown(message)

    # -- moderation and the account ----------------------------------------------

    def _moderate(self, command: Moderate) -> None:
        if self.room is None:
            self.output("! you are in no room: /join ROOM first")
        else:
            self._spawn(self._moderation(self.room, command))

    async def _moderation(self, room: str, command: Moderate) -> None:
        """Carry out a moderation command in ``room`` and say what it did."""
        client, where = self.client, clean(room)
        if isinstance(command, ShowRoom):
            info = await client.room_info(room)
            self._settings[room] = _as_update(info)
            for line in room_lines(info):
                self.output(line)
        elif isinstance(command, ShowAudit):
            page = await client.audit_page(room, limit=AUDIT_LINES)
            more = ", older ones exist" if page.has_more else ""
            n = len(page.entries)
            count = f"{n} entr{'y' if n == 1 else 'ies'}"
            self.output(f"* moderation log of {where}, newest first: {count}{more}")
            for entry in page.entries:
                self.output(audit_line(entry))
        elif isinstance(command, SetTopic) and command.text is None:
            info = await client.room_info(room)
            self._settings[room] = _as_update(info)
            self.output(
                f'* topic of {where}: "{clean(info.topic)}"'
                if info.topic
                else f"* {where} has no topic"
            )
        elif isinstance(command, SetModerator | GiveOwner | SetTopic | SetTitle | SlowMode):
            await self._change_settings(room, command)
        else:
            await self._moderate_user(room, command)

    async def _change_settings(
        self, room: str, command: SetModerator | GiveOwner | SetTopic | SetTitle | SlowMode
    ) -> None:
        client, where = self.client, clean(room)
        if room not in self._settings:
            # Known before, the change shows as what changed, whether the
            # room frame or this answer comes first.
            with contextlib.suppress(SendError):
                self._settings[room] = _as_update(await client.room_info(room))
        if isinstance(command, SetModerator):
            info = await client.set_moderator(room, command.user, command.on)
            user = clean(command.user)
            done = f"* {user} is {'a' if command.on else 'no longer a'} moderator of {where}"
        elif isinstance(command, GiveOwner):
            info = await client.update_room(room, owner=command.user)
            done = f"* {clean(command.user)} owns {where} now"
        elif isinstance(command, SetTopic):
            info = await client.update_room(room, topic=command.text)
            topic = clean(info.topic)
            done = f'* topic of {where}: "{topic}"' if topic else f"* {where} has no topic now"
        elif isinstance(command, SetTitle):
            info = await client.update_room(room, title=command.text)
            done = f'* {where} is shown as "{clean(info.title)}" now'
        else:
            info = await client.update_room(room, slow_mode=command.seconds)
            done = f"* {_slow(info.slow_mode)} in {where}"
        self._settings_seen(_as_update(info), done)

    async def _moderate_user(
        self, room: str, command: Kick | BanUser | Unban | MuteUser | Unmute
    ) -> None:
        client, where, user = self.client, clean(room), clean(command.user)
        if isinstance(command, Kick):
            await client.remove_member(room, command.user, command.reason)
            self.output(f"* {user} is out of {where}")
        elif isinstance(command, BanUser):
            ban = await client.ban(
                room, command.user, for_seconds=command.seconds, reason=command.reason
            )
            self.output(f"* {user} is banned from {where} ({_until(ban.until)})")
        elif isinstance(command, Unban):
            await client.unban(room, command.user)
            self.output(f"* {user} may join {where} again")
        elif isinstance(command, MuteUser):
            mute = await client.mute(room, command.user, for_seconds=command.seconds)
            self.output(f"* {user} is muted in {where} ({_until(mute.until)})")
        else:
            await client.unmute(room, command.user)
            self.output(f"* {user} may write in {where} again")

    async def _leave_for_good(self, room: str) -> None:
        await self.client.leave_for_good(room)
        if room in self.joined or room == self.room:  # else the removed frame said it
            self.output(f"* you left {clean(room)} for good" + self._drop_room(room))

    def _registered(self) -> bool:
        """Whether this terminal is signed in as a registered user (guests have no account)."""
        return self.client.token is not None or self.client.refresh_token is not None

    async def _account(self, command: ChangePassword | DeleteAccount) -> None:
        """``/password`` or ``/deleteaccount``: ask (without echo), then do it."""
        if not self._registered():
            self.output("! you are a guest: there is no account")
            return
        if isinstance(command, ChangePassword):
            old = await self.ask("current password: ", True)
            new = await self.ask("new password: ", True) if old else None
            again = await self.ask("new password again: ", True) if new else None
            if not old or not new or again is None:
                self.output("* nothing changed")
            elif new != again:
                self.output("! the new passwords differ; nothing changed")
            else:
                ended = await self.client.change_password(old, new)
                self.output(f"* password changed; {_plural(ended, 'other session')} signed out")
            return
        me = self.client.user or "?"
        password = await self.ask(f"password of {me}, to delete the account: ", True)
        sure = (
            await self.ask(f"delete {me} and all you wrote, for good? type yes: ", False)
            if password
            else None
        )
        if not password or (sure or "").strip().lower() != "yes":
            self.output("* nothing deleted")
            return
        await self._end("* account deleted", self.client.delete_account(password))

    async def _logout(self, everywhere: bool) -> None:
        if not self._registered():
            self.output("! you are a guest: /quit leaves")
            return
        farewell = "* signed out everywhere" if everywhere else "* signed out"
        await self._end(farewell, self.client.logout(everywhere=everywhere))

    async def _end(self, farewell: str, work: Coroutine[Any, Any, None]) -> None:
        """End the chat with ``farewell`` once ``work`` (which closes the client) is done."""
        # Set first: the server may close the connection before the answer comes.
        self._exit_status, self._farewell = 0, farewell
        try:
            await work
        except BaseException:
            self._exit_status = self._farewell = None
            raise
        if self._ended is not None:
            self._ended.set()

    # -- search ----------------------------------------------------------------

    def _search_command(self, command: Search | More | Open) -> None:
        if isinstance(command, Search):
            # A new search replaces the last one at once: its results and
            # numbers are gone, and an answer still on its way is dropped.
            self._search_number += 1
            self._query, self._results, self._cursor = command.query, [], None
            self._searching = True
            self._spawn(self._search_page(self._search_number, command.query, None))
        elif isinstance(command, More):
            if self._query is None:
                self.output("! no search to continue: /search QUERY first")
            elif self._searching:
                self.output("! the search has not answered yet")
            elif self._cursor is None:
                self.output(f"* no more results for {clean(self._query)}")
            else:
                self._searching = True
                self._spawn(self._search_page(self._search_number, self._query, self._cursor))
        elif not self._results:
            self.output("! no search results to open: /search QUERY first")
        elif command.number > len(self._results):
            self.output(
                f"! no result {command.number}: the results shown are 1-{len(self._results)}"
            )
        else:
            self._spawn(self._open(command.number, self._results[command.number - 1]))

    async def _search_page(self, number: int, query: str, cursor: str | None) -> None:
        """Ask for a page of the search ``number`` and show it, numbered on from the last."""
        try:
            page = await self.client.search(query, limit=SEARCH_PAGE, cursor=cursor)
        except SendError:
            if number != self._search_number:
                return  # a newer search replaced this one: its error is not news
            raise
        finally:
            if number == self._search_number:
                self._searching = False
        if number != self._search_number:
            return  # a newer search replaced this one meanwhile
        first = len(self._results) + 1
        self._results.extend(page.results)
        self._cursor = page.cursor
        self.output(self._results_line(query, first, page, later=cursor is not None))
        now = datetime.now(UTC)
        for n, result in enumerate(page.results, first):
            self.output(search_line(n, result, now=now))

    @staticmethod
    def _results_line(query: str, first: int, page: SearchPage, *, later: bool) -> str:
        """The line above a page of results (``later``: not the first): which, and what next."""
        shown = clean(query)
        last = first + len(page.results) - 1
        if not page.results:
            return f"* no more results for {shown}" if later else f"* nothing found for {shown}"
        if not later and page.cursor is None:
            found = _plural(len(page.results), "result")
            return f"* {found} for {shown}; /open N shows one in its conversation"
        line = f"* results {first}-{last} for {shown}"
        if page.cursor is None:
            return f"{line}, the last"
        if not later:
            return f"{line}; /more for more, /open N shows one in its conversation"
        return f"{line}; /more for more"

    async def _open(self, number: int, result: SearchResult) -> None:
        """Show result ``number`` among the messages around it (its room's, or the direct
        conversation's); the message found is marked ``>``. Nothing is marked read: these
        are not the newest."""
        messages: list[RoomMessage] | list[DirectMessage]
        if result.room is not None:
            page = await self.client.history_page(
                result.room, around=result.seq, limit=OPEN_CONTEXT
            )
            messages, older, newer = page.messages, page.has_more, page.has_newer
            where = clean(result.room)
        else:
            direct = await self.client.direct_history_page(
                around=result.seq, limit=OPEN_CONTEXT, with_=result.with_
            )
            messages, older, newer = direct.messages, direct.has_more, direct.has_newer
            where = f"@{clean(result.with_ or '?')}"
        line = f"* around result {number} in {where}: {_plural(len(messages), 'message')}"
        line += ", older ones exist" if older else ""
        line += ", newer ones exist" if newer else ""
        self.output(line)
        for message in messages:
            self.messages.add(message)
            shown = render(message, me=self.client.user, seen=self.messages) or ""
            self.output(f"> {shown}" if message.message_id == result.message_id else shown)

    def _typed(self, buffer: Buffer) -> None:
        """Tell the current room this user is typing (at most every 3 s)."""
        text = buffer.text
        room = self.room
        if room is None or not text.strip() or (text.startswith("/") and not text.startswith("//")):
            return
        if self._sent_typing.allow("", room, self.clock()):
            self._spawn(self.client.typing(room))

    # -- the loop --------------------------------------------------------------

    def _prompt(self) -> str:
        state = self.client.state
        mark = "" if state is ConnectionState.CONNECTED else f"({state.value}) "
        return f"{mark}{self.room or '-'}> "

    async def run(self) -> int:
        """Chat until /quit or Ctrl-D (0), or until the server refuses us for good (1)."""
        self._ended = asyncio.Event()
        starting = asyncio.ensure_future(self.client.connect())
        starting.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._session = session = PromptSession[str]()
        session.default_buffer.on_text_changed += self._typed
        status = 0
        with patch_stdout():
            while True:
                line = await self._read_line(session)
                if line is None:
                    status = 1 if self._exit_status is None else self._exit_status
                    break
                command = parse_command(line)
                if isinstance(command, ChangePassword | DeleteAccount):
                    # Here, not in the background: its questions take the prompt.
                    await self._report(self._account(command))
                elif not self.execute(command):
                    break
        self._quitting = True
        await self._flush_reads()
        await self.client.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._farewell is not None and status == 0:
            print(self._farewell, flush=True)
        if status:
            reason = self.client.closed_reason or "the connection was closed"
            print(f"roomcast: error: {clean(reason)}", file=sys.stderr, flush=True)
        return status

    async def _flush_reads(self, timeout: float = 2.0) -> None:
        """On the way out, send what was shown and not yet marked read (if connected)."""
        if self._read_timer is not None:
            self._read_timer.cancel()
            sends = self._send_reads()
            if sends and self.client.state is ConnectionState.CONNECTED:
                await asyncio.wait(sends, timeout=timeout)

    async def _read_line(self, session: PromptSession[str]) -> str | None:
        """The next line typed; "/quit" for Ctrl-D or Ctrl-C; None once the client ended."""
        assert self._ended is not None
        if self._ended.is_set():
            return None
        typed = asyncio.ensure_future(self._prompt_once(session))
        ended = asyncio.ensure_future(self._ended.wait())
        await asyncio.wait({typed, ended}, return_when=asyncio.FIRST_COMPLETED)
        ended.cancel()
        if typed.done():
            return typed.result()
        typed.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await typed
        return None

    async def _prompt_once(self, session: PromptSession[str]) -> str:
        # Caught here, inside the task: a KeyboardInterrupt leaving a task
        # would stop the event loop.
        try:
            return await session.prompt_async(self._prompt)
        except (EOFError, KeyboardInterrupt):
            return "/quit"


async def _ask(prompt: str, hidden: bool) -> str | None:
    """Ask the user in a prompt of its own (kept out of the chat's history); None: gave up."""
    try:
        return await PromptSession[str]().prompt_async(prompt, is_password=hidden)
    except (EOFError, KeyboardInterrupt):
        return None


async def run_chat(
    url: str,
    *,
    user: str | None = None,
    password: str | None = None,
    guest: str | None = None,
    room: str = LOBBY,
) -> int:
    """Run ``roomcast chat``; the exit status.

    With ``user`` and no ``password``, the password is asked for first.
    """
    if user is not None and password is None:
        try:
            password = await PromptSession[str]().prompt_async(
                f"password for {user}: ", is_password=True
            )
        except (EOFError, KeyboardInterrupt):
            print("roomcast: error: no password given", file=sys.stderr)
            return 1
    rooms = () if room == LOBBY else (room,)
    client = Client(url, username=user, password=password, guest=guest, rooms=rooms)
    return await TerminalChat(client, room=room).run()
