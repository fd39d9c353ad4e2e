"""The HTTP fallback transport: Server-Sent Events down, POST up.

Some proxies refuse the WebSocket upgrade. Behind one a client opens
``GET /events`` instead: a ``text/event-stream`` response that stays open and
carries every frame the node sends, and it POSTs its own frames to
``/events/{stream}``. The node cannot tell the difference: an
:class:`EventStreamPeer` is a :class:`~roomcast.hub.Peer` like
:class:`~roomcast.websocket.WebSocketPeer`, with the same close codes, the
same limits and the same order of frames, so every guarantee of the
WebSocket (acks, resends with the same id, ``join`` with ``since``) holds.

The node builds each frame once, as a WebSocket text frame; :meth:`send`
strips the frame's header (a few bytes) and queues the payload between
``data: `` and a blank line, and the stream's writer task writes what was
queued in one loop turn with one write, as the WebSocket's flusher does.

A stream lives in the process that opened it: a POST that reaches another
node (or comes after the stream ended) is answered 404, and the client
reconnects.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

import orjson
from aiohttp import http_exceptions, web

from . import api
from .accounts import Credential
from .auth import bearer_token
from .config import ServerConfig
from .exceptions import AuthError, BackendError
from .logs import CONN_ID, REQUEST_ID
from .protocol.codes import CloseCode, ErrorCode
from .protocol.messages import ErrorReply, encode
from .protocol.session import Session
from .protocol.wsframe import text_frame
from .websocket import ABNORMAL_CLOSURE, DRAIN_TIMEOUT

if TYPE_CHECKING:
    from .node import Node

__all__ = [
    "MAX_LINES",
    "BodyRefused",
    "EventStreamPeer",
    "EventStreams",
    "StreamOwner",
    "close_event",
    "frame_payload",
    "is_binary",
    "open_event",
    "reads_own_body",
    "text_frames",
]

logger = logging.getLogger("roomcast.eventstream")

#: Where a client opens a stream, and where it POSTs its frames.
OPEN_PATH: Final = "/events"
POST_PATH: Final = "/events/{stream}"
#: Text frames one POST may carry: a client sends what it queued together,
#: as many as a WebSocket's backlog keeps before it stops reading
#: (``websocket.BACKLOG_PAUSE``).
MAX_LINES: Final = 64
#: The most bytes of text frames one POST may carry: what the server reads of
#: any other request body (``client_max_size``). 64 lines of the largest
#: frame would be 4 MiB held (and copied) per stream; the clients send at
#: most this much in one POST.
MAX_TEXT_BODY: Final = 1024 * 1024
#: The body of a POST that carries a file (anything else is NDJSON text).
BINARY_TYPE: Final = "application/octet-stream"
#: The headers of the stream: no cache may keep it, and nginx must not buffer
#: it (``X-Accel-Buffering``), or frames would reach the client late.
STREAM_HEADERS: Final = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-store",
    "X-Accel-Buffering": "no",
}
#: What the heartbeat's ping becomes: an SSE comment, which every client
#: ignores and every proxy sees as traffic.
PING_COMMENT: Final = b": ping\n\n"
#: The seconds one poll of :meth:`EventStreamPeer.drain` sleeps (as the WebSocket's).
DRAIN_POLL: Final = 0.005

_DATA: Final = b"data: "
_END: Final = b"\n\n"
#: The first byte of a text frame (FIN + text) and of a ping (FIN + ping).
_TEXT_FRAME: Final = 0x81
_PING_FRAME: Final = 0x89


# -- the wire format: pure functions ----------------------------------------------------


def frame_payload(frame: bytes) -> memoryview:
    """The payload of an unmasked server frame (``text_frame``'s output), uncopied."""
    n = frame[1] & 0x7F
    start = 2 if n < 126 else 4 if n == 126 else 10
    return memoryview(frame)[start:]


def open_event(stream: str, heartbeat: float) -> bytes:
    """The first event of a stream: its id, and how often the client must POST."""
    beat: float = int(heartbeat) if heartbeat == int(heartbeat) else heartbeat
    data = orjson.dumps({"stream": stream, "heartbeat": beat})
    return b"event: open\ndata: " + data + _END


def close_event(code: int, reason: str) -> bytes:
    """The last event of a stream: the WebSocket close code and reason."""
    data = orjson.dumps({"code": int(code), "reason": reason})
    return b"event: close\ndata: " + data + _END


def is_binary(content_type: str | None) -> bool:
    """Whether a POST with this ``Content-Type`` header carries one binary frame."""
    if content_type is None:
        return False
    return content_type.partition(";")[0].strip().lower() == BINARY_TYPE


class BodyRefused(Exception):
    """A POST body the stream cannot carry out, and what it costs the stream.

    Args:
        status: the HTTP status of the answer.
        code: the ``error.code`` of the answer.
        message: the ``error.message``, also the close reason.
        close: the close code the stream is closed with, or None to keep it.
    """

    def __init__(self, status: int, code: str, message: str, close: CloseCode | None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.close = status, code, message, close


def text_frames(body: bytes, max_line: int, *, complete: bool = True) -> list[str]:
    """The text frames of an NDJSON body: one per line, blank lines skipped.

    Checked line by line, in order, as a WebSocket checks its frames: a
    line longer than ``max_line`` bytes is refused as a too-big frame
    (1009), one that is not UTF-8 as invalid data (1007); more than
    :data:`MAX_LINES` lines is refused without closing the stream. A
    refused body is carried out not at all.

    ``complete`` False: ``body`` is the start of a body that was too long
    to read whole; its last line may be cut, so it is only measured, and
    if nothing before it is refused the body is refused as too big.

    Raises:
        BodyRefused: the body, or one of its lines, is refused.
    """
    lines = body.split(b"\n")
    cut = None if complete else lines.pop()
    frames: list[str] = []
    for line in lines:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.strip():
            continue
        if len(line) > max_line:
            raise BodyRefused(413, "too_large", "text frame too big", CloseCode.MESSAGE_TOO_BIG)
        if len(frames) == MAX_LINES:
            raise BodyRefused(400, "bad_request", f"more than {MAX_LINES} lines in one POST", None)
        try:
            frames.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            raise BodyRefused(
                400, "bad_request", "text frames must be UTF-8", CloseCode.INVALID_DATA
            ) from None
    if cut is not None:
        if len(cut) > max_line:
            raise BodyRefused(413, "too_large", "text frame too big", CloseCode.MESSAGE_TOO_BIG)
        raise BodyRefused(413, "too_large", "request body too big", CloseCode.MESSAGE_TOO_BIG)
    return frames


def text_body_limit(max_line: int) -> int:
    """The most bytes of an NDJSON body read: :data:`MAX_LINES` lines ending in CRLF,
    and at most :data:`MAX_TEXT_BODY`."""
    return min(MAX_LINES * (max_line + 2), MAX_TEXT_BODY)


def reads_own_body(request: web.Request) -> bool:
    """Whether ``request`` is a POST of frames, whose handler reads its body itself.

    Its limit is not the server's ``client_max_size``: a file is larger, and
    a line too long must close the stream as well as refuse the POST.
    """
    info = request.match_info.route.resource
    return info is not None and info.canonical == POST_PATH


# -- the connection ---------------------------------------------------------------------


@runtime_checkable
class LossWatched(Protocol):
    """An HTTP connection handler that says when its connection is lost (the server's)."""

    on_lost: Callable[[], None] | None


class StreamOwner(Protocol):
    """What the server does for event streams (``RoomcastServer`` implements it)."""

    def origin_allowed(self, headers: Mapping[str, str]) -> bool:
        """Whether a request with these (lower-cased) headers comes from an allowed origin."""

    def websocket_limits(self, registered: bool) -> tuple[int, int]:
        """The largest frame a connection reads (and its first read buffer)."""

    def connection_opened(self, peer: EventStreamPeer, remote: str) -> str | None:
        """A stream is open from ``remote``; a reason to refuse it, or None."""

    def peer_closed(self, peer: EventStreamPeer, code: int) -> None:
        """The stream is gone; ``code`` is the close code it ended with."""


class EventStreamPeer:
    """One event stream, as the node's peer: a WebSocket connection over HTTP.

    ``send`` never waits: it queues the frame's payload, and the stream's
    writer (:meth:`pump`, the ``GET /events`` handler) writes what was queued
    in one loop turn with one write. When more than ``max_queue`` bytes are
    unsent (queued here or in the transport) the stream is closed with 1013.

    Args:
        node: the node that carries out this stream's frames.
        session: the connection's protocol state.
        stream: the secret id the client POSTs to.
        transport: the stream's TCP connection.
        max_queue: unsent bytes past which the client is a slow consumer.
        max_message: the longest text frame (one line of a POST), in bytes.
        max_binary: the longest binary frame (a POST body): with a file on a
            stream signed in when it opened, else the text limit.
        close_timeout: seconds the close event may take to be written.
        expires_at: when the opening token expires (epoch seconds), if any.
    """

    __slots__ = (
        "_close_code",
        "_closer",
        "_ended",
        "_lost",
        "_pending",
        "_queued",
        "_wake",
        "alive",
        "close_timeout",
        "closed",
        "expires_at",
        "lock",
        "max_binary",
        "max_message",
        "max_queue",
        "node",
        "remote",
        "session",
        "stream",
        "transport",
    )

    def __init__(
        self,
        node: Node,
        session: Session,
        *,
        stream: str,
        transport: asyncio.Transport,
        max_queue: int,
        max_message: int,
        max_binary: int,
        close_timeout: float,
        expires_at: float | None = None,
    ) -> None:
        self.node = node
        self.session = session
        self.stream = stream
        self.transport = transport
        self.max_queue = max_queue
        self.max_message = max_message
        self.max_binary = max_binary
        self.close_timeout = close_timeout
        self.expires_at = expires_at
        #: The client's address while the server counts it (``connection_opened``).
        self.remote: str | None = None
        #: No more frames go out (closing, closed, or the connection is gone).
        self.closed = False
        #: The client POSTed since the last heartbeat ping.
        self.alive = True
        #: Held while frames of this stream are carried out: the connect, then
        #: each POST, one after another in arrival order (asyncio's lock is FIFO).
        self.lock = asyncio.Lock()
        #: Bytes to write, in order (parts of SSE events, joined by the writer).
        self._pending: list[bytes | memoryview] = []
        #: About how many bytes ``_pending`` holds.
        self._queued = 0
        #: Set when ``_pending`` gets its first part, or the stream ends.
        self._wake = asyncio.Event()
        #: The writer writes what is pending, then stops (a close or a loss).
        self._ended = False
        #: The connection is gone: nothing more can be written.
        self._lost = False
        #: The code of the close event sent, if any.
        self._close_code: int | None = None
        self._closer: asyncio.TimerHandle | None = None

    @property
    def close_code(self) -> int:
        """The code the stream ended (or is ending) with: 1006 without a close event."""
        return self._close_code if self._close_code is not None else ABNORMAL_CLOSURE

    # -- the node's side -------------------------------------------------------

    def send(self, frame: bytes) -> None:
        """Queue a pre-built WebSocket frame as an SSE event (a ping as a comment)."""
        if self.closed:
            return
        pending = self._pending
        if not pending:
            self._wake.set()
        kind = frame[0]
        if kind == _TEXT_FRAME:
            pending += (_DATA, frame_payload(frame), _END)
        elif kind == _PING_FRAME:
            pending.append(PING_COMMENT)
        else:  # a pong or close frame: nothing an event stream carries
            return
        self._queued += len(frame) + 8
        if self._queued > self.max_queue:
            self._slow_consumer()

    def send_raw(self, data: bytes) -> None:
        """Queue bytes of the event stream itself (the ``open`` event)."""
        if not self._pending:
            self._wake.set()
        self._pending.append(data)
        self._queued += len(data)

    def _unsent(self) -> int:
        return self._queued + self.transport.get_write_buffer_size()

    def _slow_consumer(self) -> None:
        logger.warning(
            "closing slow consumer %s: more than %d bytes unsent",
            self.session.id,
            self.max_queue,
            extra={"conn": self.session.id},
        )
        self.close(CloseCode.TRY_AGAIN_LATER, "slow consumer")

    async def drain(self) -> bool:
        """Wait until at most a quarter of ``max_queue`` is unsent.

        A client that reads nothing for :data:`DRAIN_TIMEOUT` seconds is
        closed with 1013, as on a WebSocket. Returns False once the stream
        is closed.
        """
        low = self.max_queue // 4
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_TIMEOUT
        while not self.closed and self._unsent() > low:
            if self.transport.is_closing():
                self.lost()
                break
            if loop.time() > deadline:
                self.close(CloseCode.TRY_AGAIN_LATER, "slow consumer")
                break
            await asyncio.sleep(DRAIN_POLL)
        return not self.closed

    def close(self, code: CloseCode, reason: str) -> None:
        """End the stream with a close event, after what was queued before it.

        A client that does not read it within ``close_timeout`` is cut off.
        """
        if self.closed:
            return
        self.closed = True
        self._close_code = code
        self._ended = True
        self.send_raw(close_event(code, reason))
        self._wake.set()
        loop = asyncio.get_running_loop()
        self._closer = loop.call_later(self.close_timeout, self.transport.abort)

    def terminate(self) -> None:
        """Drop the stream at once (a dead client: no close event)."""
        self.lost()
        self.transport.abort()

    def lost(self) -> None:
        """The connection is gone (or dropped): stop writing, end the writer."""
        self.closed = True
        self._lost = True
        self._ended = True
        self._pending = []
        self._queued = 0
        self._wake.set()

    # -- the writer ------------------------------------------------------------

    async def pump(self, response: web.StreamResponse) -> None:
        """Write the queued events until the stream ends; then end the response."""
        wake = self._wake
        try:
            while not self._lost:
                pending = self._pending
                if not pending:
                    if self._ended:
                        break
                    await wake.wait()
                    wake.clear()
                    continue
                self._pending = []
                self._queued = 0
                await response.write(pending[0] if len(pending) == 1 else b"".join(pending))
                if not self.closed and self._unsent() > self.max_queue:
                    self._slow_consumer()
            if not self._lost:
                await response.write_eof()
        except ConnectionError:
            # The client left mid-write (aiohttp's ClientConnectionResetError).
            self.lost()
        finally:
            if self._closer is not None:
                self._closer.cancel()
                self._closer = None

    # -- frames from the client ------------------------------------------------

    async def carry_out(self, binary: bool, frames: list[str] | list[bytes]) -> bool:
        """Carry out a POST's frames in order (the caller holds :attr:`lock`).

        Returns False when the stream ended before every frame was carried out.
        """
        node = self.node
        reset = CONN_ID.set(self.session.id)
        try:
            for data in frames:
                if self.closed:
                    return False
                try:
                    if binary:
                        assert isinstance(data, bytes)
                        pending = node.handle_binary(self, data)
                    else:
                        pending = node.handle_text(self, data)
                    if pending is not None:
                        await pending
                except Exception:
                    self.internal_error()
            return True
        finally:
            CONN_ID.reset(reset)

    def internal_error(self) -> None:
        """Log the exception being handled; tell the client with an ``internal`` error frame."""
        logger.exception("internal error on connection %s", self.session.id)
        self.send(text_frame(encode(ErrorReply(ErrorCode.INTERNAL, "internal error"))))


# -- the routes -------------------------------------------------------------------------


class EventStreams:
    """The routes of the HTTP fallback and this node's open streams, by id.

    Args:
        node: the node the streams' frames go to.
        config: heartbeat, limits, body and close timeouts.
        owner: the server: origin checks, frame limits, the per-address cap.
    """

    def __init__(self, node: Node, config: ServerConfig, owner: StreamOwner) -> None:
        self.node = node
        self.config = config
        self.owner = owner
        #: Open streams by their secret id.
        self.streams: dict[str, EventStreamPeer] = {}
        #: Tasks that end a stream once the frames it is carrying out are done.
        self.tasks: set[asyncio.Task[None]] = set()

    def add_routes(self, app: web.Application) -> None:
        """Register ``GET /events`` and ``POST /events/{stream}`` on ``app``."""
        app.router.add_get(OPEN_PATH, self.open, allow_head=False)
        app.router.add_post(POST_PATH, self.post)

    def _check_origin(self, request: web.Request) -> None:
        headers = {
            name.lower(): value
            for name in ("Origin", "Host")
            if (value := request.headers.get(name)) is not None
        }
        if not self.owner.origin_allowed(headers):
            resource = request.match_info.route.resource
            path = resource.canonical if resource is not None else request.path  # not the secret
            logger.info("refused %s %s from origin %s", request.method, path, headers.get("origin"))
            raise api.HTTPError(403, "forbidden", "origin not allowed")

    async def _credential(self, request: web.Request) -> Credential | None:
        """Who the ``Authorization`` header signs in, if it is there (as at a handshake)."""
        token = bearer_token(request.headers.get("Authorization"))
        if token is None:
            return None
        accounts = self.node.accounts
        try:
            if accounts is None:
                raise AuthError("this server accepts no tokens")
            return await accounts.user_for_token(token)
        except AuthError as exc:
            raise api.HTTPError(401, "auth_failed", str(exc)) from None
        except BackendError:
            logger.exception("could not check an event stream's token")
            raise api.HTTPError(503, "internal", "the server could not check the token") from None

    async def open(self, request: web.Request) -> web.StreamResponse:
        """``GET /events``: open a stream; it lasts as long as this response."""
        self._check_origin(request)
        credential = await self._credential(request)
        transport = request.transport
        if transport is None:  # the client left while its token was checked
            raise api.HTTPError(400, "bad_request", "the connection is gone")
        limits = self.config.limits
        user = credential.user if credential is not None else None
        stream = secrets.token_urlsafe(24)
        peer = EventStreamPeer(
            self.node,
            self.node.connections.new_session(
                user, sign_in=credential.session_id if credential is not None else None
            ),
            stream=stream,
            transport=transport,
            max_queue=limits.max_queue_bytes,
            max_message=limits.max_text_frame,
            # Files need a user signed in at the open, as on a WebSocket.
            max_binary=self.owner.websocket_limits(user is not None)[0],
            close_timeout=self.config.close_timeout,
            expires_at=credential.expires_at if credential is not None else None,
        )
        response = web.StreamResponse(headers=STREAM_HEADERS)
        request_id = REQUEST_ID.get()
        if request_id is not None:  # sent with the head, which goes out now
            response.headers["X-Request-Id"] = request_id
        await response.prepare(request)
        # Nobody knows the stream's id yet: the lock is free and taken without
        # waiting, and the first POST waits until the connection is welcomed.
        await peer.lock.acquire()
        reset = CONN_ID.set(peer.session.id)
        try:
            refusal = self.owner.connection_opened(peer, api.client_address(request))
        finally:
            CONN_ID.reset(reset)
        # The server counts the stream from here: ``_end`` tells it of the end.
        protocol = request.protocol
        try:
            if isinstance(protocol, LossWatched):
                protocol.on_lost = peer.lost
            peer.send_raw(open_event(stream, self.config.heartbeat))
            self.streams[stream] = peer
            if refusal is not None:
                peer.close(CloseCode.POLICY_VIOLATION, refusal)
                peer.lock.release()
            else:
                self._spawn(self._connect(peer))
            await peer.pump(response)
        finally:
            if isinstance(protocol, LossWatched):
                protocol.on_lost = None
            self.streams.pop(stream, None)
            self._end(peer)
        return response

    async def _connect(self, peer: EventStreamPeer) -> None:
        """Welcome the stream (the lock is held for it), as a WebSocket's ``_connect``."""
        reset = CONN_ID.set(peer.session.id)
        try:
            await self.node.connect(peer)
            if peer.expires_at is not None and not peer.closed:
                self.node.set_token_expiry(peer, peer.expires_at)
        except Exception:
            peer.internal_error()
        finally:
            CONN_ID.reset(reset)
            peer.lock.release()

    def _end(self, peer: EventStreamPeer) -> None:
        """Tell the server the stream ended, after the frames it is carrying out.

        The node forgets the connection only then (a ``join`` finishing
        later could otherwise put it back in a room).
        """
        peer.lost()
        if not peer.lock.locked():
            self.owner.peer_closed(peer, peer.close_code)
            return

        async def after_frames() -> None:
            async with peer.lock:
                self.owner.peer_closed(peer, peer.close_code)

        self._spawn(after_frames())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def post(self, request: web.Request) -> web.StreamResponse:
        """``POST /events/{stream}``: frames from the client, carried out before the 204."""
        self._check_origin(request)
        peer = self.streams.get(request.match_info["stream"])
        if peer is None or peer.closed:
            raise api.HTTPError(404, "not_found", "no such event stream on this server")
        peer.alive = True
        binary = is_binary(request.headers.get("Content-Type"))
        async with peer.lock:
            if peer.closed:  # while an earlier POST was carried out
                raise api.HTTPError(404, "not_found", "the event stream ended")
            limit = peer.max_binary if binary else text_body_limit(peer.max_message)
            read = await _read_body(request, limit, self.config.body_timeout)
            if isinstance(read, web.StreamResponse):
                return read
            body, complete = read
            try:
                if binary:
                    if not complete:
                        raise BodyRefused(
                            413, "too_large", "binary frame too big", CloseCode.MESSAGE_TOO_BIG
                        )
                    frames: list[str] | list[bytes] = [body] if body else []
                else:
                    frames = text_frames(body, peer.max_message, complete=complete)
            except BodyRefused as refused:
                if refused.close is not None:
                    logger.info("closing event stream %s: %s", peer.session.id, refused.message)
                    peer.close(refused.close, refused.message)
                raise api.HTTPError(refused.status, refused.code, refused.message) from None
            if not await peer.carry_out(binary, frames):
                raise api.HTTPError(404, "not_found", "the event stream ended")
        return web.Response(status=204)


async def _read_body(
    request: web.Request, limit: int, timeout: float
) -> tuple[bytes, bool] | web.StreamResponse:
    """At most ``limit`` + 1 bytes of the body, and whether that is all of it.

    A body that makes no progress for ``timeout`` seconds gets 408, one cut
    off or badly chunked 400, as the server's other bodies
    (``server._body_deadline``). The deadline is per read, not for the whole
    body: a file on a slow uplink arrives as long as its bytes keep coming,
    as over a WebSocket.
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        return b"", False  # refused from its length, unread
    content = request.content
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= limit:
            async with asyncio.timeout(timeout):
                chunk = await content.read(limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except TimeoutError:
        logger.info("request body from %s not in within %g s", request.remote, timeout)
        return _closing_error(
            408, "timeout", f"the request body did not arrive within {timeout:g} s"
        )
    except (ConnectionError, http_exceptions.HttpProcessingError):
        return _closing_error(400, "bad_request", "the request body was cut off or malformed")
    body = b"".join(chunks)
    if size > limit:
        return body[:limit], False
    return body, True


def _closing_error(status: int, code: str, message: str) -> web.Response:
    response = web.json_response({"error": {"code": code, "message": message}}, status=status)
    response.force_close()
    return response
