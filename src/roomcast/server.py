"""The transport: HTTP and WebSocket on one port, with aiohttp.

This module only moves bytes. aiohttp parses HTTP and incoming WebSocket
frames; each WebSocket connection becomes a :class:`WebSocketPeer` whose
frames go to the node, and whose :meth:`~WebSocketPeer.send` writes
pre-built frames straight to the transport (never awaiting, so fan-out costs
one ``write`` per member). The same module answers the HTTP routes, runs the
heartbeat and shuts the server down in order.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import math
import secrets
import signal
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, Final

from aiohttp import WSMsgType, web
from yarl import URL

from . import api
from .auth import bearer_token
from .config import ServerConfig
from .exceptions import AuthError, BackendError
from .logs import CONN_ID, REQUEST_ID
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .node import Node
from .protocol.codes import CloseCode, ErrorCode
from .protocol.messages import (
    ErrorReply,
    encode,
)
from .protocol.session import Session
from .protocol.wsframe import PING_FRAME, MaskChecker, close_frame, pong_frame, text_frame

__all__ = ["RoomcastServer", "WebSocketPeer"]

logger = logging.getLogger("roomcast.server")

_NODE: Final = web.AppKey("node", Node)
_DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443}

#: Seconds a connection may leave a replay unread before it is dropped.
DRAIN_TIMEOUT: Final = 10.0
#: Seconds shutdown waits for messages being stored to be acked.
FLUSH_TIMEOUT: Final = 2.0
#: The close reason past ``max_connections_per_ip``.
TOO_MANY_FROM_ADDRESS: Final = "too many connections from your address"


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


class WebSocketPeer:
    """One WebSocket connection: frames go straight to its transport.

    ``send`` never waits: it queues a pre-built frame, and the flusher writes
    the queue at the end of the loop turn. When more than ``max_queue``
    bytes are waiting in the transport (the client does not read fast
    enough) the connection is closed with 1013 and nothing more is written
    to it; the other members never notice.
    """

    __slots__ = (
        "_flusher",
        "_pending",
        "_tasks",
        "alive",
        "closed",
        "closing",
        "max_queue",
        "session",
        "transport",
        "ws",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport,
        session: Session,
        *,
        max_queue: int,
        flusher: Flusher,
        tasks: set[asyncio.Task[None]],
    ) -> None:
        self.ws = ws
        self.transport = transport
        self.session = session
        self.max_queue = max_queue
        self.closed = False
        #: The close handshake started by :meth:`close`, once there is one.
        self.closing: asyncio.Task[None] | None = None
        self.alive = True
        self._pending: list[bytes] = []
        self._flusher = flusher
        self._tasks = tasks

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
        if self.closed or transport.is_closing():
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
        if self.closed:
            return
        self.flush()  # what was sent before the close goes out before it
        if self.closed:
            return
        self.closed = True
        task = asyncio.ensure_future(self._close(code, reason))
        self.closing = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close(self, code: CloseCode, reason: str) -> None:
        try:
            await self.ws.close(code=code, message=reason.encode()[:123], drain=False)
        finally:
            # A client that stopped reading never flushes our buffer: drop it.
            if self.transport.get_write_buffer_size():
                self.transport.abort()

    def fail(self, code: CloseCode, reason: str) -> None:
        """Fail the connection (RFC 6455 7.1.7): send a close frame, then close TCP."""
        if self.closed:
            return
        self.flush()
        self.closed = True
        self._pending = []
        if not self.transport.is_closing():
            self.transport.write(close_frame(code, reason))
            self.transport.close()

    def terminate(self) -> None:
        """Drop the connection at once (a dead peer: no close handshake)."""
        self.closed = True
        self._pending = []
        self.transport.abort()


class _MaskGuard:
    """Sits in front of aiohttp's frame reader and fails unmasked client frames.

    aiohttp's reader accepts frames without a mask (its threat model lists
    this as a recommended hardening, not done); RFC 6455 section 5.1 says
    a server must close the connection. Frames before the unmasked one are
    still parsed; nothing from it on reaches the reader.
    """

    __slots__ = ("_checker", "_failed", "_inner", "_peer")

    def __init__(self, inner: Any, peer: WebSocketPeer) -> None:
        self._inner = inner
        self._peer = peer
        self._checker = MaskChecker()
        self._failed = False

    def check(self, data: bytes) -> int:
        offset = self._checker.feed(data)
        if offset >= 0:
            self._failed = True
            peer_id = self._peer.session.id
            logger.info("connection %s sent an unmasked frame", peer_id, extra={"conn": peer_id})
            self._peer.fail(CloseCode.PROTOCOL_ERROR, "client frames must be masked")
        return offset

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self._failed:
            return False, b""
        offset = self.check(data)
        if offset < 0:
            return self._inner.feed_data(data)  # type: ignore[no-any-return]
        if offset:
            self._inner.feed_data(data[:offset])
        return False, b""

    def feed_eof(self) -> None:
        self._inner.feed_eof()

    @classmethod
    def install(cls, request: web.Request, tail: bytes, peer: WebSocketPeer) -> None:
        """Put a guard in front of the request's WebSocket reader.

        ``tail`` is what the client sent right after its handshake request
        (aiohttp fed it to the reader already); the guard starts from it so
        it follows the same frame boundaries.
        """
        protocol = request.protocol
        inner = getattr(protocol, "_payload_parser", None)
        if inner is None:  # pragma: no cover - aiohttp changed its internals
            logger.warning("cannot check client frame masking with this aiohttp")
            return
        guard = cls(inner, peer)
        protocol._payload_parser = guard
        if tail:
            guard.check(tail)


class RoomcastServer:
    """The HTTP + WebSocket front of one node.

    Args:
        node: the node that handles the frames.
        config: host, port, TLS, origins, heartbeat and limits.
    """

    def __init__(self, node: Node, config: ServerConfig) -> None:
        self.node = node
        self.config = config
        self.peers: set[WebSocketPeer] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._flusher: Flusher | None = None
        #: Open WebSocket connections per client address.
        self._per_ip: Counter[str] = Counter()
        self.url: str = ""
        self.app = self._make_app()

    # -- application -------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[_request_ids, _json_errors], client_max_size=1024 * 1024)
        app[_NODE] = self.node
        app.router.add_get("/health", _health)
        app.router.add_get("/ready", _ready)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/ws", self._websocket)
        api.add_routes(app, self.node)
        app.router.add_get("/", self._index)
        return app

    async def _index(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        return web.Response(body=_page(), content_type="text/html", charset="utf-8")

    async def _metrics(self, request: web.Request) -> web.Response:
        """``GET /metrics``: Prometheus text format."""
        return web.Response(
            body=self.node.metrics.exposition(), headers={"Content-Type": METRICS_CONTENT_TYPE}
        )

    def _origin_allowed(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:
            return True  # not a browser: browsers always send Origin
        if origin in self.config.allowed_origins:
            return True
        try:
            url = URL(origin)
            own = URL(f"{self.config.scheme}://{request.host}")
        except ValueError:
            return False
        return _origin_key(url) == _origin_key(own)

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if not self._origin_allowed(request):
            logger.info("refused handshake from origin %s", request.headers.get("Origin"))
            return _json_error(403, "forbidden", "origin not allowed")
        limits = self.config.limits
        user, expires_at = None, None
        token = bearer_token(request.headers.get("Authorization"))
        if token is not None:
            # Non-browser clients may sign in with the handshake itself.
            accounts = self.node.accounts
            if accounts is None:
                return _json_error(401, "auth_failed", "this server accepts no tokens")
            try:
                user, expires_at = await accounts.user_for_token(token)
            except AuthError as exc:
                return _json_error(401, "auth_failed", str(exc))
        ws = web.WebSocketResponse(
            # aiohttp refuses a frame whose length is >= max_msg_size.
            max_msg_size=limits.max_text_frame + 1,
            autoping=False,
            compress=False,
            timeout=self.config.close_timeout,
        )
        tail = bytes(getattr(request.protocol, "_message_tail", b""))
        await ws.prepare(request)
        # Upgraded first, then closed: a browser can read the close reason,
        # never the body of a refused handshake.
        remote = request.remote or ""
        ip_cap = limits.max_connections_per_ip
        if ip_cap > 0 and self._per_ip[remote] >= ip_cap:
            logger.info("refused a connection from %s: %d open already", remote, ip_cap)
            await ws.close(code=CloseCode.POLICY_VIOLATION, message=TOO_MANY_FROM_ADDRESS.encode())
            return ws
        transport = request.transport
        assert transport is not None
        node = self.node
        peer = WebSocketPeer(
            ws,
            transport,
            node.new_session(user),
            max_queue=limits.max_queue_bytes,
            flusher=self._get_flusher(),
            tasks=self._tasks,
        )
        # Every line logged in this task from here on (and in the tasks and
        # callbacks it starts) names the connection. aiohttp runs each request
        # in a task of its own, so the id ends with the handler.
        CONN_ID.set(peer.session.id)
        _MaskGuard.install(request, tail, peer)
        self.peers.add(peer)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        logger.info("connection %s opened from %s", peer.session.id, request.remote)
        self._per_ip[remote] += 1  # no await since the cap was checked
        try:
            await node.connect(peer)
            if expires_at is not None:
                node.set_token_expiry(peer, expires_at)
            async for msg in ws:
                kind = msg.type
                try:
                    if kind is WSMsgType.TEXT:
                        await node.receive_text(peer, msg.data)
                    elif kind is WSMsgType.BINARY:
                        await node.receive_binary(peer, msg.data)
                    elif kind is WSMsgType.PONG:
                        peer.alive = True
                    elif kind is WSMsgType.PING:
                        peer.send(pong_frame(msg.data))
                    elif kind is WSMsgType.ERROR:
                        break
                except Exception:
                    logger.exception("internal error on connection %s", peer.session.id)
                    reply = ErrorReply(ErrorCode.INTERNAL, "internal error")
                    peer.send(text_frame(encode(reply)))
                if peer.closed:
                    break  # the node closed it (abuse, auth): finish the handshake below
            if peer.closing is not None:
                # With nobody else reading, ws.close() reads and drops what the
                # client still sends until its close frame. Closing the socket
                # with unread data (a flooder's) would reset the connection,
                # and the client could lose our close frame and its reason.
                timeout = self.config.close_timeout + 1
                if not (await asyncio.wait({peer.closing}, timeout=timeout))[0]:
                    peer.terminate()
        finally:
            self._per_ip[remote] -= 1
            if self._per_ip[remote] <= 0:
                del self._per_ip[remote]
            peer.closed = True
            self.peers.discard(peer)
            node.disconnect(peer)
            if task is not None:
                self._handlers.discard(task)
            logger.info("connection %s closed (%s)", peer.session.id, ws.close_code)
            metrics = self.node.metrics
            metrics.closes.labels(str(ws.close_code)).inc()
            if ws.close_code == CloseCode.TRY_AGAIN_LATER:  # only slow consumers get 1013
                metrics.slow_consumers.inc()
        return ws

    def _get_flusher(self) -> Flusher:
        if self._flusher is None:
            self._flusher = Flusher(asyncio.get_running_loop())
        return self._flusher

    # -- heartbeat ---------------------------------------------------------------

    async def _beat(self, interval: float) -> None:
        """Ping every peer each ``interval``; drop one that missed the last ping."""
        while True:
            await asyncio.sleep(interval)
            for peer in list(self.peers):
                if peer.closed:
                    continue
                if not peer.alive:
                    logger.info(
                        "connection %s missed a heartbeat; dropping",
                        peer.session.id,
                        extra={"conn": peer.session.id},
                    )
                    peer.terminate()
                    continue
                peer.alive = False
                peer.send(PING_FRAME)

    # -- life cycle --------------------------------------------------------------

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> str:
        """Start listening; return the URL it listens on."""
        await self.node.start()
        runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            keepalive_timeout=10.0,
            shutdown_timeout=2.0,
        )
        await runner.setup()
        site = web.TCPSite(
            runner, self.config.host, self.config.port, ssl_context=ssl_context, backlog=2048
        )
        await site.start()
        self._runner, self._site = runner, site
        host, port = runner.addresses[0][:2]
        if ":" in host:
            host = f"[{host}]"
        self.url = f"{self.config.scheme}://{host}:{port}"
        if self.config.heartbeat > 0:
            self._heartbeat = asyncio.ensure_future(self._beat(self.config.heartbeat))
        return self.url

    async def stop(self) -> None:
        """Stop accepting, close every client with 1001, flush the store."""
        if self._site is not None:
            await self._site.stop()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        try:
            # Messages received before the stop are stored and acked first.
            await asyncio.wait_for(self.node.flush(), FLUSH_TIMEOUT)
        except TimeoutError:
            logger.warning("messages were still being stored after %.0f s", FLUSH_TIMEOUT)
        for peer in list(self.peers):
            peer.close(CloseCode.GOING_AWAY, "server shutting down")
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=self.config.close_timeout + 1)
        for peer in list(self.peers):
            peer.terminate()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=1.0)
        if self._runner is not None:
            await self._runner.cleanup()
        await self.node.close()

    async def serve_until_signalled(self, ssl_context: ssl.SSLContext | None = None) -> None:
        """Run until SIGTERM or SIGINT, printing the listening line first."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        url = await self.start(ssl_context)
        print(f"roomcast listening on {url}", flush=True)
        try:
            await stop.wait()
            logger.info("shutting down")
        finally:
            await self.stop()


@functools.cache
def _page() -> bytes:
    """The chat page, read from the package once."""
    return resources.files("roomcast.web").joinpath("static/index.html").read_bytes()


def _origin_key(url: URL) -> tuple[str, str, int | None]:
    scheme = (url.scheme or "").lower()
    port = url.explicit_port or _DEFAULT_PORTS.get(scheme)
    return scheme.replace("ws", "http", 1), (url.host or "").lower(), port


def _json_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


_STATUS_CODES: Final = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
}


@web.middleware
async def _request_ids(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Each plain HTTP request gets an id: on its log lines, and as ``X-Request-Id``.

    A WebSocket handshake gets none; its lines carry the connection id instead.
    """
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return await handler(request)
    request_id = secrets.token_hex(6)
    reset = REQUEST_ID.set(request_id)
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # a redirect (``_json_errors`` answers errors)
        exc.headers["X-Request-Id"] = request_id
        raise
    finally:
        REQUEST_ID.reset(reset)
    if not response.prepared:
        response.headers["X-Request-Id"] = request_id
    return response


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every HTTP error leaves as JSON ``{"error": {"code", "message"}}``."""
    try:
        return await handler(request)
    except BackendError as exc:
        failure = api.backend_failure(exc)
        return _json_error(failure.status, failure.code, failure.message)
    except api.HTTPError as exc:
        response = _json_error(exc.status, exc.code, exc.message)
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="roomcast"'
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _STATUS_CODES.get(exc.status, "error")
        return _json_error(exc.status, code, exc.reason)
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("internal error on %s %s", request.method, request.path)
        return _json_error(500, "internal", "internal server error")


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="WebSocket server is running")


async def _ready(request: web.Request) -> web.Response:
    status = await request.app[_NODE].ready()
    ok = all(value == "ok" for value in status.values())
    return web.json_response({"ready": ok, **status}, status=200 if ok else 503)
