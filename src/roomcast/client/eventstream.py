"""The HTTP fallback transport: Server-Sent Events down, POSTs up.

Some networks let HTTP through but refuse a WebSocket upgrade (a corporate
proxy answering 403). The server then offers the same connection over plain
HTTP (docs/protocol.md, "HTTP fallback"): ``GET /events`` is a stream of
Server-Sent Events carrying the server's frames, in order, and
``POST /events/{stream}`` carries the client's. :class:`EventStream` is
that connection seen as the client sees a WebSocket: it offers what
:class:`~roomcast.client.Client` uses of a websockets ``ClientConnection``
(``send`` text or bytes, ``async for`` over the frames, ``close``, and the
close code and reason received, :attr:`EventStream.close_rcvd`), so that
one code path sends, resumes and reconnects over either transport.

- **The stream is read by a thread**: :mod:`http.client` (what
  :mod:`urllib` runs on; the client needs no HTTP library of its own) in a
  daemon thread, which hands each line's event to the event loop. Closing
  shuts the socket down, which ends the thread's blocked read at once.
- **Frames go up one POST at a time**, so that they arrive in order; the
  frames queued while one is in flight go together in the next (NDJSON, at
  most :data:`MAX_LINES`). A file (bytes) goes alone.
- **The keepalive is a ``ping`` frame**: the server drops a stream that has
  not POSTed for a heartbeat (the ``open`` event says how long), as it
  drops a WebSocket that missed a pong. Its ``pong`` coming back on the
  stream is the client's proof that the stream still flows.
- **A stream that ends without a close event is a lost connection**
  (1006), as is a POST the server cannot take (404: the stream is gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeAlias, TypeVar

import orjson
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus
from websockets.frames import Close
from websockets.http11 import Response

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

__all__ = [
    "MAX_LINES",
    "Connection",
    "EventStream",
    "SseEvent",
    "SseParser",
    "events_url",
    "take_batch",
]

logger = logging.getLogger("roomcast.client")

_T = TypeVar("_T")

#: A connection of either transport, as the client uses it.
Connection: TypeAlias = "ClientConnection | EventStream"

#: Text frames one POST may carry (the server refuses more).
MAX_LINES: Final = 64
#: Bytes of text frames one POST gathers at most (one frame over it goes
#: alone): a bound on a request, far under any frame limit's multiple.
MAX_BATCH_BYTES: Final = 1024 * 1024
#: The longest line of the stream read: a frame as big as the client takes
#: over WebSocket (its max_size), with room for the ``data: `` before it.
MAX_LINE: Final = 32 * 1024 * 1024 + 64
#: The most of an error answer's body read (a proxy's page can be anything).
MAX_ERROR_BODY: Final = 64 * 1024
#: Seconds a POST may take.
POST_TIMEOUT: Final = 30.0
#: Seconds :meth:`EventStream.close` waits for the reader thread to end.
CLOSE_WAIT: Final = 2.0
#: The keepalive frame: no ``id``, so that its ``pong`` is told from an
#: application's own ``ping`` request, which has one.
_PING: Final = '{"type":"ping","payload":{}}'


def events_url(ws_url: str) -> str:
    """The ``GET /events`` URL of a server whose WebSocket is at ``ws_url`` (pure).

    ``ws://`` becomes ``http://`` (``wss://``, ``https://``); a path ending in
    ``/ws`` ends in ``/events`` instead, so that a server mounted under a
    prefix keeps it.
    """
    parts = urllib.parse.urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/")
    path = path.removesuffix("/ws") + "/events"
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, "", ""))


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One Server-Sent Event: its ``event`` name ("message" when it had none) and data."""

    event: str
    data: str


class SseParser:
    """Server-Sent Events, one line at a time (pure).

    Lines come without their line ending. ``data`` lines add up; a blank
    line ends the event. Comments (``: ping``) and the fields this client
    has no use for (``id``, ``retry``) are skipped.
    """

    def __init__(self) -> None:
        #: The ``event`` field of the event being read.
        self._event = ""
        #: Its ``data`` lines so far.
        self._data: list[str] = []

    def feed(self, line: str) -> SseEvent | None:
        """Take one line; the event it ends, if it ends one."""
        if not line:
            event, data = self._event or "message", self._data
            self._event, self._data = "", []
            return SseEvent(event, "\n".join(data)) if data else None
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None


def take_batch(queue: deque[str | bytes]) -> tuple[bytes, str]:
    """Take the next POST's frames off ``queue``: its body and content type (pure).

    A file (bytes) at the head goes alone; otherwise the text frames up to
    the next file, at most :data:`MAX_LINES` and :data:`MAX_BATCH_BYTES`
    (at least one), one per line. ``queue`` must not be empty.
    """
    if isinstance(queue[0], bytes):
        return queue.popleft(), "application/octet-stream"  # type: ignore[return-value]
    lines: list[bytes] = []
    size = 0
    while queue and isinstance(queue[0], str) and len(lines) < MAX_LINES:
        line = _one_line(queue[0]).encode()
        if lines and size + len(line) > MAX_BATCH_BYTES:
            break
        queue.popleft()
        lines.append(line)
        size += len(line) + 1
    return b"\n".join(lines) + b"\n", "application/x-ndjson"


def _one_line(frame: str) -> str:
    """A JSON text on one line: a line break can only be whitespace between its tokens."""
    if "\n" in frame or "\r" in frame:
        return frame.replace("\r", " ").replace("\n", " ")
    return frame


class EventStream:
    """One connection over ``GET /events`` and ``POST /events/{stream}``.

    Made by :meth:`open`, which returns once the server's ``open`` event
    came. Iterating yields the server's text frames until the stream ends;
    :attr:`close_rcvd` then holds the close event's code and reason (None:
    the connection was lost).
    """

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        *,
        open_timeout: float,
        ping_interval: float | None,
        ping_timeout: float | None,
    ) -> None:
        self.url = url
        #: Seconds to connect and to get the answer's head (the stream then has no timeout).
        self.open_timeout = open_timeout
        #: Sent with the GET and with every POST (the bearer token, if any).
        self._headers = headers
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        #: The close event received (None: none yet, or the stream was lost).
        self.close_rcvd: Close | None = None
        #: The stream's id, from the ``open`` event: where frames are POSTed.
        self.stream: str | None = None
        #: Seconds within which the server wants a POST (0: it does not ask).
        self.heartbeat = 0.0
        self._loop = asyncio.get_running_loop()
        #: The server's frames, then None once the stream ended.
        self._frames: asyncio.Queue[str | None] = asyncio.Queue()
        #: Resolved by the ``open`` event; failed by an error answer or a lost stream.
        self._opened: asyncio.Future[None] = self._loop.create_future()
        #: Frames waiting for the next POST, oldest first.
        self._outgoing: deque[str | bytes] = deque()
        self._wake = asyncio.Event()
        #: Set by a keepalive ``pong``.
        self._pong = asyncio.Event()
        self._ended = False
        #: Guards :attr:`_sock` and :attr:`_shut` between the loop and the reader thread.
        self._lock = threading.Lock()
        #: The stream's socket, once connected: shut down to end the thread's read.
        self._sock: socket.socket | None = None
        self._shut = False
        #: Resolved when the reader thread has ended.
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._tasks: list[asyncio.Task[None]] = []
        self._thread = threading.Thread(
            target=self._read_stream, name="roomcast-events", daemon=True
        )

    @classmethod
    async def open(
        cls,
        url: str,
        headers: dict[str, str] | None = None,
        *,
        open_timeout: float = 10.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
    ) -> EventStream:
        """Open the stream at ``url`` (``GET /events``) and wait for its ``open`` event.

        Raises:
            InvalidStatus: the server (or a proxy) answered other than 200;
                its response, as a refused WebSocket handshake's.
            InvalidMessage: a 200 that is not an event stream, or a stream
                that ended before its ``open`` event.
            OSError: the server cannot be reached.
            TimeoutError: no ``open`` event within ``open_timeout``.
        """
        conn = cls(
            url,
            dict(headers or {}),
            open_timeout=open_timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
        )
        conn._thread.start()
        try:
            await asyncio.wait_for(asyncio.shield(conn._opened), open_timeout)
        except BaseException:
            await conn.close()
            raise
        every = [s for s in (ping_interval, conn.heartbeat / 2) if s]
        conn._tasks.append(asyncio.create_task(conn._post_frames()))
        if every:
            conn._tasks.append(asyncio.create_task(conn._keepalive(min(every))))
        return conn

    # -- what the client uses --------------------------------------------------

    async def send(self, data: str | bytes) -> None:
        """Queue one frame (text, or bytes for a file) for the next POST.

        Raises:
            ConnectionClosed: the stream has ended.
        """
        if self._ended or self._shut:
            raise ConnectionClosed(self.close_rcvd, None)
        self._outgoing.append(data)
        self._wake.set()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str]:
        while (frame := await self._frames.get()) is not None:
            yield frame

    async def close(self) -> None:
        """End the stream: shut its socket down, stop sending, wait for the reader thread."""
        self._shut_down()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._thread.is_alive():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._done), CLOSE_WAIT)

    # -- the reader thread -----------------------------------------------------

    def _read_stream(self) -> None:
        """The thread: GET the stream and hand what it carries to the loop, until it ends."""
        conn: http.client.HTTPConnection | None = None
        try:
            conn = self._connect()
            response = conn.getresponse()
            if response.status != 200:
                body = response.read(MAX_ERROR_BODY)
                self._post(self._refused, response.status, response.reason, response.headers, body)
                return
            kind = response.headers.get("Content-Type", "")
            if not kind.startswith("text/event-stream"):
                self._post(self._failed, InvalidMessage(f"not an event stream: {kind!r}"))
                return
            with self._lock:
                if self._sock is not None:
                    # Liveness is the keepalive's to judge, not a read timeout's.
                    self._sock.settimeout(None)
            parser = SseParser()
            while raw := response.readline(MAX_LINE):
                if not raw.endswith(b"\n"):
                    break  # a line over the limit, or cut in the middle: lost
                event = parser.feed(raw.decode().rstrip("\r\n"))
                if event is not None:
                    self._post(self._arrived, event)
        except Exception as exc:  # any failure ends the stream
            self._post(self._failed, exc)
        finally:
            if conn is not None:
                conn.close()
            self._post(self._ended_stream)

    def _connect(self) -> http.client.HTTPConnection:
        """Connect and send the GET; the socket is kept so that close can shut it down."""
        parts = urllib.parse.urlsplit(self.url)
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(parts.netloc, timeout=self.open_timeout)
        else:
            conn = http.client.HTTPConnection(parts.netloc, timeout=self.open_timeout)
        conn.connect()
        with self._lock:
            self._sock = conn.sock
            if self._shut:
                conn.close()
                raise ConnectionAbortedError("closed while connecting")
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store", **self._headers}
        conn.request("GET", parts.path or "/", headers=headers)
        return conn

    def _post(self, callback: Callable[..., None], *args: object) -> None:
        """Run ``callback(*args)`` on the loop (dropped once the loop is closed)."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, *args)

    # -- on the loop: what the thread hands over ------------------------------

    def _arrived(self, event: SseEvent) -> None:
        if event.event == "message":
            if '"pong"' in event.data and self._is_keepalive_pong(event.data):
                self._pong.set()
            else:
                self._frames.put_nowait(event.data)
        elif event.event == "open":
            self._opening(event.data)
        elif event.event == "close":
            self.close_rcvd = _close_event(event.data)

    def _opening(self, data: str) -> None:
        try:
            about = orjson.loads(data)
            stream, heartbeat = about["stream"], about.get("heartbeat", 0)
            if not isinstance(stream, str) or type(heartbeat) not in (int, float):
                raise TypeError("stream is a string, heartbeat a number")
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            self._failed(InvalidMessage(f"bad open event: {exc!r}"))
            self._shut_down()
            return
        self.stream, self.heartbeat = stream, float(heartbeat)
        if not self._opened.done():
            self._opened.set_result(None)

    @staticmethod
    def _is_keepalive_pong(data: str) -> bool:
        with contextlib.suppress(orjson.JSONDecodeError):
            frame = orjson.loads(data)
            return type(frame) is dict and frame.get("type") == "pong" and frame.get("id") is None
        return False

    def _refused(
        self, status: int, reason: str, headers: http.client.HTTPMessage, body: bytes
    ) -> None:
        found = Headers()
        for name, value in headers.items():
            found[name] = value
        self._failed(InvalidStatus(Response(status, reason, found, body)))

    def _failed(self, exc: BaseException) -> None:
        if not self._opened.done():
            self._opened.set_exception(exc)
            self._opened.exception()  # retrieved: open() may have given up already
        else:
            logger.info("event stream %s ended: %r", self.stream, exc)

    def _ended_stream(self) -> None:
        self._ended = True
        if not self._opened.done():
            self._failed(InvalidMessage("the stream ended before its open event"))
        self._frames.put_nowait(None)
        if not self._done.done():
            self._done.set_result(None)

    def _shut_down(self) -> None:
        """Shut the stream's socket down: the thread's read returns, the stream ends."""
        with self._lock:
            self._shut = True
            sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _lose(self, why: str) -> None:
        logger.info("event stream %s lost: %s", self.stream, why)
        self._shut_down()

    # -- on the loop: sending ------------------------------------------------

    async def _post_frames(self) -> None:
        """POST the queued frames, one request at a time, in order."""
        assert self.stream is not None
        url = f"{self.url.rstrip('/')}/{urllib.parse.quote(self.stream, safe='')}"
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outgoing and not self._shut:
                body, kind = take_batch(self._outgoing)
                headers = {**self._headers, "Content-Type": kind}
                try:
                    status, answer = await _in_thread(_post_once, url, body, headers)
                except (OSError, http.client.HTTPException) as exc:
                    self._lose(f"POST failed: {exc!r}")
                    return
                if status == 204:
                    continue
                logger.warning("POST refused with %d: %r", status, answer[:200])
                if status in (400, 413):
                    # Nothing of it was carried out. Mostly the server closes
                    # the stream for it (1007, 1009): let its close event say
                    # why. A stream it keeps (a body cut off on the way) is
                    # dropped all the same, so that the frames go again.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(self._done), CLOSE_WAIT)
                self._lose(f"POST answered {status}")
                return

    async def _keepalive(self, every: float) -> None:
        """A ``ping`` every ``every`` seconds; no ``pong`` within ``ping_timeout``: lost."""
        while True:
            await asyncio.sleep(every)
            self._pong.clear()
            try:
                await self.send(_PING)
            except ConnectionClosed:
                return
            if self.ping_timeout is not None:
                try:
                    await asyncio.wait_for(self._pong.wait(), self.ping_timeout)
                except TimeoutError:
                    self._lose(f"no pong within {self.ping_timeout} s")
                    return


def _close_event(data: str) -> Close:
    """The code and reason of a ``close`` event (1006 if it cannot be read)."""
    try:
        about = orjson.loads(data)
        code, reason = about.get("code"), about.get("reason", "")
    except (orjson.JSONDecodeError, AttributeError):
        return Close(1006, "")
    if type(code) is not int:
        return Close(1006, "")
    return Close(code, reason if isinstance(reason, str) else "")


#: POSTs go straight to the server, as the stream's GET does (neither takes
#: a proxy from ``HTTP_PROXY``): both must reach the same node the same way.
_DIRECT: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _post_once(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """One blocking POST: its status and (the start of) its body."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with _DIRECT.open(request, timeout=POST_TIMEOUT) as response:
            return int(response.status), bytes(response.read(MAX_ERROR_BODY))
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read(MAX_ERROR_BODY))


async def _in_thread(function: Callable[..., _T], *args: object) -> _T:
    """``function(*args)`` in a daemon thread of its own.

    Not the loop's executor: a POST still waiting for a server that went
    away must not hold up the application's exit.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def settle(result: _T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = function(*args)
        except BaseException as exc:  # handed to the awaiting task
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, None, exc)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name="roomcast-post", daemon=True).start()
    return await future
