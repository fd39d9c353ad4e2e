"""The transport: HTTP and WebSocket on one port.

This module only moves bytes. Each connection starts at the
:class:`~roomcast.frontdoor.FrontDoor`, which hands WebSocket handshakes to
picows and everything else to aiohttp. The server decides on handshakes
(origin, token, per-address cap), makes each WebSocket connection a
:class:`~roomcast.websocket.WebSocketPeer` whose frames go to the node,
answers the HTTP routes, runs the heartbeat and shuts down in order.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import secrets
import signal
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Final

from aiohttp import web
from yarl import URL

from . import api
from .auth import bearer_token
from .config import Limits, ServerConfig
from .exceptions import AuthError, BackendError
from .frontdoor import FrontDoor, RequestHead, refusal
from .logs import REQUEST_ID
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .node import Node
from .protocol.codes import CloseCode
from .protocol.messages import MAX_FILE_HEADER, UserInfo
from .protocol.wsframe import PING_FRAME
from .websocket import Flusher, WebSocketPeer

__all__ = ["RoomcastServer", "WebSocketPeer"]

logger = logging.getLogger("roomcast.server")

_NODE: Final = web.AppKey("node", Node)
_DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443}

#: Seconds after start, then between, file sweeps (with --history-days).
SWEEP_FIRST: Final = 60.0
SWEEP_INTERVAL: Final = 3600.0
#: The first read buffer of a WebSocket connection (picows grows it for big frames).
READ_BUFFER: Final = 2048
#: Seconds shutdown waits for messages being stored to be acked.
FLUSH_TIMEOUT: Final = 2.0
#: The close reason past ``max_connections_per_ip``.
TOO_MANY_FROM_ADDRESS: Final = "too many connections from your address"


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
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
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
        app.router.add_get("/ws", self._websocket_elsewhere)
        api.add_routes(app, self.node)
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", _static)
        return app

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=_page(), headers=_page_headers("text/html; charset=utf-8"))

    async def _metrics(self, request: web.Request) -> web.Response:
        """``GET /metrics``: Prometheus text format."""
        return web.Response(
            body=self.node.metrics.exposition(), headers={"Content-Type": METRICS_CONTENT_TYPE}
        )

    def _origin_allowed(self, headers: dict[str, str]) -> bool:
        origin = headers.get("origin")
        if origin is None:
            return True  # not a browser: browsers always send Origin
        if origin in self.config.allowed_origins:
            return True
        try:
            url = URL(origin)
            own = URL(f"{self.config.scheme}://{headers.get('host', '')}")
        except ValueError:
            return False
        return _origin_key(url) == _origin_key(own)

    async def _websocket_elsewhere(self, request: web.Request) -> web.Response:
        """``/ws`` reached aiohttp: not a handshake, or one on a reused connection."""
        return _json_error(
            400, "bad_request", "open a WebSocket on a new connection with an Upgrade handshake"
        )

    # -- WebSocket handshakes (the front door's router) ------------------------------

    def http_protocol(self) -> asyncio.Protocol:
        assert self._runner is not None and self._runner.server is not None
        return self._runner.server()

    def websocket_limits(self) -> tuple[int, int]:
        limits = self.config.limits
        return max(limits.max_text_frame, max_binary_frame(limits)), READ_BUFFER

    def admit(self, door: FrontDoor, head: RequestHead) -> None:
        if not self._origin_allowed(head.headers):
            logger.info("refused handshake from origin %s", head.headers.get("origin"))
            door.to_websocket(refusal(403, "forbidden", "origin not allowed"))
            return
        token = bearer_token(head.headers.get("authorization"))
        if token is None:
            door.to_websocket(self._new_peer(None, None))
            return
        # Non-browser clients may sign in with the handshake itself.
        task = asyncio.ensure_future(self._admit_token(door, token))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _admit_token(self, door: FrontDoor, token: str) -> None:
        accounts = self.node.accounts
        if accounts is None:
            door.to_websocket(refusal(401, "auth_failed", "this server accepts no tokens"))
            return
        try:
            user, expires_at = await accounts.user_for_token(token)
        except AuthError as exc:
            door.to_websocket(refusal(401, "auth_failed", str(exc)))
        except BackendError:
            logger.exception("could not check a handshake's token")
            door.to_websocket(refusal(503, "internal", "the server could not check the token"))
        else:
            door.to_websocket(self._new_peer(user, expires_at))

    def _new_peer(self, user: UserInfo | None, expires_at: float | None) -> WebSocketPeer:
        limits = self.config.limits
        return WebSocketPeer(
            self.node,
            self.node.new_session(user),
            owner=self,
            flusher=self._get_flusher(),
            max_queue=limits.max_queue_bytes,
            max_message=limits.max_text_frame,
            max_binary=max_binary_frame(limits),
            close_timeout=self.config.close_timeout,
            expires_at=expires_at,
        )

    def peer_opened(self, peer: WebSocketPeer) -> str | None:
        assert peer.transport is not None
        peername = peer.transport.get_extra_info("peername")
        remote = str(peername[0]) if peername else ""
        # Upgraded first, then closed: a browser can read the close reason,
        # never the body of a refused handshake.
        ip_cap = self.config.limits.max_connections_per_ip
        if ip_cap > 0 and self._per_ip[remote] >= ip_cap:
            logger.info("refused a connection from %s: %d open already", remote, ip_cap)
            return TOO_MANY_FROM_ADDRESS
        self._per_ip[remote] += 1
        peer.remote = remote
        self.peers.add(peer)
        logger.info("connection %s opened from %s", peer.session.id, remote)
        return None

    def peer_closed(self, peer: WebSocketPeer, code: int) -> None:
        remote, peer.remote = peer.remote, None
        if remote is not None:
            self._per_ip[remote] -= 1
            if self._per_ip[remote] <= 0:
                del self._per_ip[remote]
        if peer in self.peers:
            self.peers.discard(peer)
            self.node.disconnect(peer)
        logger.info(
            "connection %s closed (%s)", peer.session.id, code, extra={"conn": peer.session.id}
        )
        metrics = self.node.metrics
        metrics.closes.labels(str(code)).inc()
        if code == CloseCode.TRY_AGAIN_LATER:  # only slow consumers get 1013
            metrics.slow_consumers.inc()

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

    async def _sweep_files(self) -> None:
        """With retention on: delete files whose messages were all pruned, hourly."""
        await asyncio.sleep(SWEEP_FIRST)
        while True:
            try:
                removed = await self.node.sweep_files()
            except (BackendError, OSError) as exc:
                logger.error("cannot sweep files: %s", exc)
            else:
                if removed:
                    logger.info("deleted %d files no message names any more", removed)
            await asyncio.sleep(SWEEP_INTERVAL)

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
        self._runner = runner
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            functools.partial(FrontDoor, self),
            self.config.host,
            self.config.port,
            ssl=ssl_context,
            backlog=2048,
            reuse_address=True,
        )
        host, port = self._listener.sockets[0].getsockname()[:2]
        if ":" in host:
            host = f"[{host}]"
        self.url = f"{self.config.scheme}://{host}:{port}"
        if self.config.heartbeat > 0:
            self._heartbeat = asyncio.ensure_future(self._beat(self.config.heartbeat))
        if self.config.history_days > 0 and self.node.files is not None:
            self._sweeper = asyncio.ensure_future(self._sweep_files())
        return self.url

    async def stop(self) -> None:
        """Stop accepting, close every client with 1001, flush the store."""
        if self._listener is not None:
            self._listener.close()
        for task in (self._heartbeat, self._sweeper):
            if task is not None:
                task.cancel()
        try:
            # Messages received before the stop are stored and acked first.
            await asyncio.wait_for(self.node.flush(), FLUSH_TIMEOUT)
        except TimeoutError:
            logger.warning("messages were still being stored after %.0f s", FLUSH_TIMEOUT)
        for peer in list(self.peers):
            peer.close(CloseCode.GOING_AWAY, "server shutting down")
        await self._until_no_peers(self.config.close_timeout + 1)
        for peer in list(self.peers):
            peer.terminate()
        await self._until_no_peers(1.0)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=1.0)
        if self._runner is not None:
            await self._runner.cleanup()
        await self.node.close()

    async def _until_no_peers(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.peers and loop.time() < deadline:
            await asyncio.sleep(0.01)

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


def max_binary_frame(limits: Limits) -> int:
    """The largest binary frame: the 4-byte length, the largest header, the file."""
    return 4 + MAX_FILE_HEADER + limits.max_file_size


#: The page's Content-Security-Policy: its own scripts, styles and images
#: only (files are served from this origin too), WebSocket to this origin,
#: no inline script, no plugins, no framing.
PAGE_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'; object-src 'none'"
)
#: The page's own files, by extension: their media types.
STATIC_TYPES: Final = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".json": "application/json",
}


def _page_headers(content_type: str) -> dict[str, str]:
    return {
        "Content-Type": content_type,
        "Content-Security-Policy": PAGE_CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


@functools.cache
def _page() -> bytes:
    """The chat page, read from the package once."""
    return resources.files("roomcast.web").joinpath("static/index.html").read_bytes()


@functools.cache
def _asset(name: str) -> bytes | None:
    """One of the page's files (``/static/NAME``), read once; None if there is none."""
    if "/" in name or name.startswith(".") or not name.endswith(tuple(STATIC_TYPES)):
        return None
    path = resources.files("roomcast.web").joinpath("static", name)
    return path.read_bytes() if path.is_file() else None


async def _static(request: web.Request) -> web.Response:
    """``GET /static/{name}``: the page's scripts, styles and icons."""
    name = request.match_info["name"]
    body = _asset(name)
    if body is None:
        raise web.HTTPNotFound()
    content_type = STATIC_TYPES[name[name.rindex(".") :]]
    return web.Response(body=body, headers=_page_headers(content_type))


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


def _http_error(exc: api.HTTPError) -> web.Response:
    """The JSON response for ``exc``, with ``Retry-After`` and ``WWW-Authenticate`` if due."""
    response = _json_error(exc.status, exc.code, exc.message)
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="roomcast"'
    return response


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every HTTP error leaves as JSON ``{"error": {"code", "message"}}``."""
    try:
        return await handler(request)
    except BackendError as exc:
        return _http_error(api.backend_failure(exc))
    except api.HTTPError as exc:
        return _http_error(exc)
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
