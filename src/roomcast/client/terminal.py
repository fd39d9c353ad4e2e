"""``roomcast chat``: a line-based chat in a terminal, on top of :class:`Client`.

Three parts, the first two pure:

- :func:`parse_command` turns a typed line into a :data:`Command`;
- :func:`render` turns an event into the one line printed for it (after
  :func:`clean` has replaced every control character that came from the
  network, so other users cannot send terminal escape sequences);
- :class:`TerminalChat` ties a :class:`Client` to a prompt_toolkit prompt:
  lines arriving print above the prompt (``patch_stdout``), commands run in
  the background so the prompt never waits for the server, and the client
  reconnects by itself while the state changes are shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from prompt_toolkit import PromptSession
from prompt_toolkit.buffer import Buffer
from prompt_toolkit.patch_stdout import patch_stdout

from ..protocol.messages import LOBBY, MAX_HISTORY_LIMIT, valid_room
from ..textsafe import CONTROLS, FORMAT, LINE_BREAKS
from .core import Client, ClientClosed, QueueFull, SendError
from .events import (
    ConnectionState,
    DirectMessage,
    Event,
    FileRef,
    Presence,
    Reply,
    RoomMessage,
    ServerError,
    StateChange,
    Typing,
)

__all__ = [
    "Command",
    "Dm",
    "Empty",
    "Help",
    "History",
    "Invalid",
    "Join",
    "Leave",
    "Quit",
    "Say",
    "TerminalChat",
    "TypingThrottle",
    "Who",
    "clean",
    "parse_command",
    "render",
]

#: Seconds between two "is typing" lines for one user in one room (and
#: between two typing notices this terminal sends to one room).
TYPING_INTERVAL: Final = 3.0
DEFAULT_HISTORY: Final = 20

HELP: Final = """\
* plain text goes to the current room (a line starting with // sends one starting with /)
* /join ROOM      join ROOM and make it the current room
* /leave [ROOM]   leave ROOM (default: the current room)
* /dm USER TEXT   send a direct message (registered users only)
* /who [ROOM]     who is in ROOM (default: the current room)
* /history [N]    the last N messages of the current room (default 20, at most 100)
* /quit           leave (Ctrl-D does too)"""


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


Command = Say | Join | Leave | Dm | Who | History | Help | Quit | Empty | Invalid


def _room_arg(name: str, usage: str) -> Command | None:
    """None when ``name`` is a valid room name, else the :class:`Invalid` to show."""
    if valid_room(name):
        return None
    return Invalid(f"{usage}: room names are a-z, 0-9, _ and - (at most 64), not {name!r}")


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
    if name in ("help", "quit") and args:
        return Invalid(f"usage: /{name}")
    if name == "help":
        return Help()
    if name == "quit":
        return Quit()
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


def render(event: Event, *, now: datetime | None = None) -> str | None:
    """The line shown for ``event``, or None when it shows nothing (pure).

    Times are the server's, in local time (``now`` when a message has none).
    The end of the connection (``CLOSED``) renders as nothing: the chat
    reports it as it exits.
    """
    if isinstance(event, RoomMessage):
        who = f"{clean(event.room)} <{clean(event.sender)}>"
        return f"{_clock(event.timestamp, now)} {who} {_body(event.text, event.file)}"
    if isinstance(event, DirectMessage):
        who = f"dm <{clean(event.sender)}\u2192{clean(event.to)}>"
        return f"{_clock(event.timestamp, now)} {who} {_body(event.text, event.file)}"
    if isinstance(event, Presence):
        verb = {"join": "joined", "leave": "left"}.get(event.event)
        return None if verb is None else f"* {clean(event.user)} {verb} {clean(event.room)}"
    if isinstance(event, Typing):
        return f"* {clean(event.user)} is typing in {clean(event.room)}"
    if isinstance(event, ServerError):
        return f"! {clean(event.code)}: {clean(event.message)}"
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
            return "* connected"
    return None


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
    """

    def __init__(
        self,
        client: Client,
        *,
        room: str = LOBBY,
        output: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.room: str | None = room
        #: The rooms joined, the last joined last (``client.rooms`` also lists
        #: rooms whose join was refused).
        self.joined: list[str] = list(client.rooms)
        self.output = output or (lambda line: print(line, flush=True))
        self.clock = clock
        self._seen_typing = TypingThrottle()
        self._sent_typing = TypingThrottle()
        self._tasks: set[asyncio.Task[None]] = set()
        self._quitting = False
        self._ended: asyncio.Event | None = None
        self._greeted = False
        self._session: PromptSession[str] | None = None
        client.on(None, self._on_event)

    # -- events ----------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if isinstance(event, Typing) and not self._seen_typing.allow(
            event.user, event.room, self.clock()
        ):
            return
        if isinstance(event, StateChange):
            self._on_state(event)
        line = render(event)
        if line is not None:
            self.output(line)
        if isinstance(event, StateChange) and event.new is ConnectionState.CONNECTED:
            if not self._greeted:
                self._greeted = True
                where = f"talking in {self.room}" if self.room else "in no room"
                you = clean(self.client.user or "?")
                self.output(f"* you are {you}, {where}; /help lists the commands")

    def _on_state(self, event: StateChange) -> None:
        if event.new is ConnectionState.CLOSED and not self._quitting and self._ended:
            self._ended.set()
        if self._session is not None and self._session.app.is_running:
            self._session.app.invalidate()  # the prompt shows the state

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
        return True

    def _spawn(self, work: Coroutine[Any, Any, object]) -> None:
        task = asyncio.ensure_future(self._report(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _report(self, work: Coroutine[Any, Any, object]) -> None:
        """Run ``work``; a failure is one ``!`` line, never the end of the chat."""
        try:
            await work
        except SendError as exc:
            self.output(f"! {clean(exc.code)}: {clean(exc.message)}")
        except (QueueFull, TimeoutError) as exc:
            self.output(f"! not sent: {exc or 'no answer from the server'}")
        except ClientClosed:
            pass  # the chat is ending; run() says why

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
        count = reply.payload.get("member_count", "?")
        self.output(f"* joined {room} ({count} here); messages go to {self.room}")

    async def _leave(self, room: str) -> None:
        await self.client.leave(room)
        now = f"messages go to {self.room}" if self.room else "you are in no room"
        self.output(f"* left {room}; {now}")

    async def _who(self, room: str) -> None:
        members = await self.client.presence(room)
        self.output(f"* in {room} ({len(members)}): {', '.join(clean(m) for m in members)}")

    async def _history(self, room: str, limit: int) -> None:
        messages, has_more = await self.client.history(room, limit=limit)
        n, more = len(messages), ", older ones exist" if has_more else ""
        self.output(f"* history of {room}: {n} message{'' if n == 1 else 's'}{more}")
        for message in messages:
            self.output(render(message) or "")

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
                    status = 1
                    break
                if not self.execute(parse_command(line)):
                    break
        self._quitting = True
        await self.client.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if status:
            reason = self.client.closed_reason or "the connection was closed"
            print(f"roomcast: error: {clean(reason)}", file=sys.stderr, flush=True)
        return status

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
