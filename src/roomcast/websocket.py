"""WebSocket connections: picows reads the frames, roomcast writes them.

picows (a Cython WebSocket parser) checks each client frame against RFC 6455
(masking, opcodes, control frame sizes, the frame size limit, close codes);
it calls :class:`WebSocketPeer` once per frame, with no task and no queue in
between. What picows leaves to its user is done here: refusing reserved
bits, answering pings, joining fragmented messages, checking that text is
UTF-8, the close handshake, and keeping each connection's frames in order
when one of them has to wait for the store.

picows' frame size limit is set per connection when the handshake is
answered (``FrontDoor.to_websocket``): the file limit for a connection that
signed in with a token at the handshake, the text limit for every other, so
a big frame from anyone else is refused from its header, unread.

Writing does not go through picows: the node builds each frame once
(:func:`~roomcast.protocol.wsframe.text_frame`) and :meth:`WebSocketPeer.send`
queues those bytes for the :class:`Flusher`, which writes each connection's
frames of one loop turn with one ``write`` on the asyncio transport. A
broadcast to 1,000 members is 1,000 ``write`` calls and nothing else.
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import logging
import mmap
import sys
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

from picows import WSFrame, WSListener, WSMsgType, WSTransport

from .logs import CONN_ID
from .protocol.codes import CloseCode, ErrorCode
from .protocol.messages import ErrorReply, FileHeader, encode
from .protocol.session import Arrival, Session
from .protocol.wsframe import close_frame, text_frame

if TYPE_CHECKING:
    from .node import Node

__all__ = ["DRAIN_TIMEOUT", "Flusher", "PeerOwner", "WebSocketPeer"]

logger = logging.getLogger("roomcast.websocket")

#: Seconds a connection may leave a replay unread before it is dropped.
DRAIN_TIMEOUT: Final = 10.0
#: Frames kept for a connection while one of its frames waits for the store;
#: past this many the connection's socket is not read until they are done.
BACKLOG_PAUSE: Final = 64
#: Bytes of frames kept so (their length as received; characters for text);
#: past this the socket is not read either. One largest text frame: chat
#: traffic (~150-byte frames) reaches BACKLOG_PAUSE first, so this only
#: stops big frames piling up. A kept text frame is held parsed, and parsed
#: JSON can take 24 times its text (measured: 64 KiB of ``[{},{},...]`` is
#: 1.5 MB of Python objects; plain strings about 1x), so a connection keeps
#: at most about 3 MB of text frames (with the one that crosses the bound,
#: under 128 KiB of text in all). What picows has read
#: already when reading pauses still arrives (at most one read buffer), and
#: a file frame is kept whole: one file at most is past the bound.
BACKLOG_BYTES: Final = 64 * 1024
#: Frames one fragmented message may come in; past it the connection is
#: closed with 1009. Each fragment is one callback and one kept ``bytes``
#: (measured: 1,024 two-byte fragments hold 44 KiB and take 1.1 ms), and
#: without a cap empty fragments, which add nothing to the size limit,
#: could be sent forever. The page and the Python client never fragment;
#: 1,024 still lets the largest file (8 MiB) come in 8 KiB pieces.
MAX_FRAGMENTS: Final = 1024
#: A frame larger than this makes the peer give back its read buffer's pages.
BIG_FRAME: Final = 256 * 1024
#: The close code recorded when a connection ended without a close frame.
ABNORMAL_CLOSURE: Final = 1006

_TEXT: Final = WSMsgType.TEXT
_BINARY: Final = WSMsgType.BINARY
_CONTINUATION: Final = WSMsgType.CONTINUATION
_PING: Final = WSMsgType.PING
_PONG: Final = WSMsgType.PONG
_CLOSE: Final = WSMsgType.CLOSE


def _madvise() -> Callable[[int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.madvise
    except (OSError, AttributeError):  # pragma: no cover - no libc madvise
        return None
    function.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    function.restype = ctypes.c_int
    return cast(Callable[[int, int, int], int], function)


_MADVISE: Final = _madvise()
_MADV_DONTNEED: Final = 4  # Linux


def release_pages(buffer: memoryview) -> int:
    """Tell the kernel the whole pages inside ``buffer`` hold nothing needed.

    They stay mapped and read as zeros. Returns the bytes given back (0
    where ``madvise`` is not available).
    """
    if _MADVISE is None or buffer.readonly or len(buffer) < mmap.PAGESIZE:
        return 0
    start = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
    page = mmap.PAGESIZE
    first = (start + page - 1) // page * page
    end = (start + len(buffer)) // page * page
    if end <= first:
        return 0
    if _MADVISE(first, end - first, _MADV_DONTNEED) != 0:  # pragma: no cover - EINVAL etc.
        return 0
    return end - first


#: Close codes a peer may send (RFC 6455 section 7.4.1 and the IANA registry):
#: 1004-1006 and 1015 are reserved, below 1000 and 1016-2999 unassigned.
_CLOSE_CODES_SENDABLE: Final = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)})


def _valid_close_code(code: int) -> bool:
    return code in _CLOSE_CODES_SENDABLE or 3000 <= code <= 4999


class PeerOwner(Protocol):
    """What a peer tells the server about its life (the server implements it)."""

    def peer_opened(self, peer: WebSocketPeer) -> str | None:
        """A handshake finished; return a reason to refuse the connection, or None."""

    def peer_closed(self, peer: WebSocketPeer, code: int) -> None:
        """The connection is gone; ``code`` is the close code it ended with."""


class Flusher:
    """Writes each connection's frames of one loop turn with one ``write``.

    A burst of messages handled in one event-loop turn (a sender's frames
    often arrive together) would cost every member one system call per
    message; instead :meth:`WebSocketPeer.send` queues the frame, and the
    flusher, scheduled once per turn, writes each member's queue joined.
    """

    __slots__ = ("_dirty", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: list[WebSocketPeer] = []
        self._scheduled = False

    def add(self, peer: WebSocketPeer) -> None:
        self._dirty.append(peer)
        if not self._scheduled:
            self._scheduled = True
            # In a context of its own: not in the context (the connection id)
            # of whichever connection happened to send first.
            self._loop.call_soon(self.flush, context=contextvars.Context())

    def flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for peer in dirty:
            peer.flush()


class WebSocketPeer(WSListener):
    """One WebSocket connection, as picows' listener and as the node's peer.

    ``send`` never waits: it queues a pre-built frame, and the flusher writes
    the queue at the end of the loop turn. When more than ``max_queue``
    bytes are waiting in the transport (the client does not read fast
    enough) the connection is closed with 1013 and nothing more is written
    to it; the other members never notice.

    Args:
        node: the node that carries out this connection's frames.
        session: the connection's protocol state.
        owner: the server, told when the connection opens and ends.
        flusher: the loop's write coalescer.
        max_queue: unsent bytes past which the client is a slow consumer.
        max_message: the longest text message, in bytes, also when fragmented.
        max_binary: the longest binary message, also when fragmented: a file
            and its header on a connection signed in at the handshake (picows
            reads frames that big on it), else the text limit.
        close_timeout: seconds to wait for the client's close frame.
        expires_at: when the handshake's token expires (epoch seconds), if any.
    """

    __slots__ = (
        "_backlog",
        "_backlog_bytes",
        "_busy",
        "_close_code",
        "_closer",
        "_flusher",
        "_fragments",
        "_fragments_size",
        "_paused",
        "_pending",
        "_trim_scheduled",
        "alive",
        "close_timeout",
        "closed",
        "expires_at",
        "max_binary",
        "max_message",
        "max_queue",
        "node",
        "owner",
        "remote",
        "session",
        "transport",
    )

    def __init__(
        self,
        node: Node,
        session: Session,
        *,
        owner: PeerOwner,
        flusher: Flusher,
        max_queue: int,
        max_message: int,
        close_timeout: float,
        max_binary: int = 0,
        expires_at: float | None = None,
    ) -> None:
        self.node = node
        self.session = session
        self.owner = owner
        self.max_queue = max_queue
        self.max_message = max_message
        self.max_binary = max_binary
        self.close_timeout = close_timeout
        self.expires_at = expires_at
        self.transport: asyncio.Transport | None = None
        #: The client's address while the server counts it (``peer_opened``).
        self.remote: str | None = None
        #: No more frames go out (a close was sent, or the connection is gone).
        self.closed = False
        #: The client answered the last heartbeat ping.
        self.alive = True
        self._flusher = flusher
        self._pending: list[bytes] = []
        #: The code of the close frame sent or received first.
        self._close_code: int | None = None
        self._closer: asyncio.TimerHandle | None = None
        #: The task finishing a frame that waits for the store, if any.
        self._busy: asyncio.Task[None] | None = None
        #: Frames that came while ``_busy`` runs: whether binary, the bytes a
        #: file still needs, the first step's result, the size received.
        self._backlog: deque[tuple[bool, bytes, Arrival, int]] | None = None
        self._backlog_bytes = 0
        self._paused = False
        self._trim_scheduled = False
        #: The parts of a fragmented message: its type, then its payloads.
        self._fragments: list[bytes] | None = None
        self._fragments_size = 0

    # -- picows callbacks ------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport.underlying_transport
        reset = CONN_ID.set(self.session.id)
        try:
            refusal = self.owner.peer_opened(self)
            if refusal is not None:
                self.close(CloseCode.POLICY_VIOLATION, refusal)
                return
            self._start(self._connect())
        finally:
            CONN_ID.reset(reset)

    async def _connect(self) -> None:
        await self.node.connect(self)
        if self.expires_at is not None and not self.closed:
            self.node.set_token_expiry(self, self.expires_at)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.rsv1 or frame.rsv2 or frame.rsv3:
            # No extension is ever negotiated (RFC 6455 section 5.2).
            self.fail(CloseCode.PROTOCOL_ERROR, "reserved bits set without an extension")
            return
        kind = frame.msg_type
        size = frame.payload_size
        if kind is _TEXT and frame.fin and self._fragments is None:
            if size > self.max_message:
                # On a connection signed in at the handshake picows' frame
                # limit is the file limit, the larger one.
                self.fail(CloseCode.MESSAGE_TOO_BIG, "text frame too big")
                return
            try:
                text = frame.get_payload_as_utf8_text()
            except UnicodeDecodeError:
                self.fail(CloseCode.INVALID_DATA, "text frames must be UTF-8")
                return
            self._received(False, text)
        elif kind is _PONG:
            self.alive = True
        elif kind is _CLOSE:
            self._close_received(frame)
        elif kind is _BINARY and frame.fin and self._fragments is None:
            self._received(True, frame.get_payload_as_bytes())
        elif kind is _PING:
            # Answered here, not by picows, so that its reserved bits are checked.
            if not self.closed:
                transport.send_pong(frame.get_payload_as_bytes())
        else:  # TEXT, BINARY or CONTINUATION: a part of a fragmented message
            self._fragment(kind, frame)
        if size > BIG_FRAME and not self._trim_scheduled:
            self._trim_scheduled = True
            asyncio.get_running_loop().call_soon(self._trim_read_buffer, transport)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        self._pending = []
        if self._closer is not None:
            self._closer.cancel()
            self._closer = None
        if self._backlog is not None:
            self._backlog.clear()
            self._backlog_bytes = 0
        code = self._close_code if self._close_code is not None else ABNORMAL_CLOSURE
        busy = self._busy
        if busy is None:
            self.owner.peer_closed(self, code)
        else:
            # The node forgets the connection after the frame it is carrying
            # out (a join could otherwise put it back in a room).
            busy.add_done_callback(lambda _: self.owner.peer_closed(self, code))

    # -- incoming frames -------------------------------------------------------

    def _fragment(self, kind: WSMsgType, frame: WSFrame) -> None:
        """A part of a fragmented message (RFC 6455 section 5.4)."""
        parts = self._fragments
        if kind is _CONTINUATION:
            if parts is None:
                self.fail(CloseCode.PROTOCOL_ERROR, "continuation frame without a message")
                return
        elif parts is not None:
            self.fail(CloseCode.PROTOCOL_ERROR, "new message before the last one ended")
            return
        else:
            parts = self._fragments = [b"t" if kind is _TEXT else b"b"]
            self._fragments_size = 0
        if len(parts) > MAX_FRAGMENTS:  # parts[0] is the type: this is one fragment more
            self.fail(CloseCode.MESSAGE_TOO_BIG, f"message in more than {MAX_FRAGMENTS} fragments")
            return
        self._fragments_size += frame.payload_size
        limit = self.max_message if parts[0] == b"t" else self.max_binary
        if self._fragments_size > limit:
            self.fail(CloseCode.MESSAGE_TOO_BIG, "message too big")
            return
        parts.append(frame.get_payload_as_bytes())
        if not frame.fin:
            return
        self._fragments = None
        data = b"".join(parts[1:])
        if parts[0] == b"b":
            self._received(True, data)
            return
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            self.fail(CloseCode.INVALID_DATA, "text frames must be UTF-8")
            return
        self._received(False, text)

    def _received(self, binary: bool, data: str | bytes) -> None:
        """Carry out one message now, or keep it behind the one that waits.

        Every chat frame comes this way, so the node is called straight from
        here, with no helper call between: that saves about what the
        reserved-bits check costs (measured on ``on_ws_frame`` for a ping
        frame with a no-op node: ~940 ns before both, ~990 ns after).
        """
        if self.closed:
            return  # after a close frame, data is ignored (RFC 6455 section 5.5.1)
        if self._busy is not None:
            self._keep(binary, data)
            return
        reset = CONN_ID.set(self.session.id)
        try:
            try:
                if binary:
                    assert isinstance(data, bytes)
                    pending = self.node.handle_binary(self, data)
                else:
                    pending = self.node.handle_text(self, data)
            except Exception:
                self._internal_error()
                return
            if pending is not None:
                self._busy = asyncio.get_running_loop().create_task(self._finish(pending))
        finally:
            CONN_ID.reset(reset)

    def _keep(self, binary: bool, data: str | bytes) -> None:
        """Keep a message that came while an earlier one waits; take its first step now.

        It is parsed and rate limited as it arrives, so a flood is refused
        as it comes rather than when the store lets it through; the checks
        that depend on the frames before it wait for its turn. A refusal
        waits in the queue too: the replies keep the order of the frames.
        Past :data:`BACKLOG_PAUSE` messages or :data:`BACKLOG_BYTES` the
        socket is not read until the queue is done.
        """
        session = self.session
        now = asyncio.get_running_loop().time()
        size = len(data)
        kept = b""  # a text frame is kept parsed; a refused frame not at all
        try:
            if binary:
                assert isinstance(data, bytes)
                arrived = session.arrive_binary(data, now)
                if isinstance(arrived, FileHeader):
                    kept = data  # a file needs its bytes
            else:
                arrived = session.arrive_text(data, now)
        except Exception:
            self._internal_error()
            return
        backlog = self._backlog
        if backlog is None:
            backlog = self._backlog = deque()
        backlog.append((binary, kept, arrived, size))
        self._backlog_bytes += size
        if (
            len(backlog) >= BACKLOG_PAUSE or self._backlog_bytes >= BACKLOG_BYTES
        ) and not self._paused:
            transport = self.transport
            if transport is not None:
                self._paused = True
                transport.pause_reading()

    def _handle_kept(
        self, binary: bool, data: bytes, arrived: Arrival
    ) -> Coroutine[Any, Any, None] | None:
        """Carry out a kept message, whose first step was taken on arrival."""
        try:
            if binary:
                return self.node.handle_binary(self, data, arrived)
            return self.node.handle_text(self, "", arrived)
        except Exception:
            self._internal_error()
            return None

    def _start(self, pending: Coroutine[Any, Any, None] | None) -> None:
        if pending is not None:
            self._busy = asyncio.get_running_loop().create_task(self._finish(pending))

    async def _finish(self, pending: Coroutine[Any, Any, None] | None) -> None:
        """Finish a waiting frame, then the frames that came meanwhile, in order."""
        try:
            while True:
                if pending is not None:
                    try:
                        await pending
                    except Exception:
                        self._internal_error()
                backlog = self._backlog
                if not backlog or self.closed:
                    break
                binary, data, arrived, size = backlog.popleft()
                self._backlog_bytes -= size
                pending = self._handle_kept(binary, data, arrived)
        finally:
            self._busy = None
            if self._paused:
                self._paused = False
                if self.transport is not None and not self.closed:
                    self.transport.resume_reading()

    def _trim_read_buffer(self, transport: WSTransport) -> None:
        """Give back the pages of picows' read buffer after a big frame.

        picows grows a connection's read buffer to hold its largest frame
        and never shrinks it: one 8 MiB file would pin 8 MiB for the rest
        of the connection. The part of the buffer past the unread bytes is
        scratch space (``get_buffer`` hands it to the next read), so its
        whole pages are returned to the kernel; they read as zeros if used
        again. The buffer's size is kept.
        """
        self._trim_scheduled = False
        if self.closed or self.transport is None:
            return
        protocol = self.transport.get_protocol()
        get_buffer = getattr(protocol, "get_buffer", None)
        if get_buffer is not None:
            release_pages(get_buffer(-1))

    def _internal_error(self) -> None:
        logger.exception("internal error on connection %s", self.session.id)
        self.send(text_frame(encode(ErrorReply(ErrorCode.INTERNAL, "internal error"))))

    def _close_received(self, frame: WSFrame) -> None:
        transport = self.transport
        assert transport is not None
        if self._close_code is None:
            # The client closes: answer with its code (RFC 6455 section 5.5.1),
            # after what was queued for it.
            payload = frame.get_payload_as_bytes()
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
            if len(payload) == 1 or (code is not None and not _valid_close_code(code)):
                # RFC 6455 section 7.4: a code no endpoint may send is a
                # protocol error, not a code to send back.
                code = CloseCode.PROTOCOL_ERROR
            self._close_code = code if code is not None else CloseCode.NORMAL
            self.flush()
            self.closed = True
            self._pending = []
            if not transport.is_closing():
                transport.write(close_frame(code) if code is not None else b"\x88\x00")
        # Either way the handshake is complete: the server closes TCP first.
        transport.close()

    # -- the node's side -------------------------------------------------------

    def send(self, frame: bytes) -> None:
        if self.closed:
            return
        pending = self._pending
        pending.append(frame)
        if len(pending) == 1:
            self._flusher.add(self)

    def flush(self) -> None:
        """Write the queued frames now (the flusher calls this once per turn)."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            self.closed = True
            return
        transport.write(pending[0] if len(pending) == 1 else b"".join(pending))
        if transport.get_write_buffer_size() > self.max_queue:
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
        closed with 1013, like any slow consumer. Returns False once the
        connection is closed.
        """
        self.flush()
        transport = self.transport
        if transport is None:
            return False
        low = self.max_queue // 4
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_TIMEOUT
        while not self.closed and transport.get_write_buffer_size() > low:
            if transport.is_closing():
                self.closed = True
                break
            if loop.time() > deadline:
                self.close(CloseCode.TRY_AGAIN_LATER, "slow consumer")
                break
            await asyncio.sleep(0.005)
        return not self.closed

    def close(self, code: CloseCode, reason: str) -> None:
        """Send a close frame; close TCP on the client's answer or after ``close_timeout``."""
        if self.closed:
            return
        self.flush()  # what was sent before the close goes out before it
        if self.closed:
            return
        self.closed = True
        self._close_code = code
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(close_frame(code, reason))
        # A client that stopped reading never answers, nor reads our buffer.
        self._closer = asyncio.get_running_loop().call_later(self.close_timeout, transport.abort)

    def fail(self, code: CloseCode, reason: str) -> None:
        """Fail the connection (RFC 6455 section 7.1.7): a close frame, then close TCP."""
        if self.closed:
            return
        self.flush()
        self.closed = True
        self._close_code = code
        self._pending = []
        transport = self.transport
        if transport is not None and not transport.is_closing():
            logger.info("failing connection %s: %s", self.session.id, reason)
            transport.write(close_frame(code, reason))
            transport.close()

    def terminate(self) -> None:
        """Drop the connection at once (a dead peer: no close handshake)."""
        self.closed = True
        self._pending = []
        if self.transport is not None:
            self.transport.abort()
