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
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any, Final

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.typedefs import Middleware
from aiohttp.web_protocol import RequestHandler
from yarl import URL

from . import api, api_admin, api_rooms
from .accounts import Credential
from .auth import bearer_token
from .config import Limits, ServerConfig
from .eventstream import EventStreamPeer, EventStreams, reads_own_body
from .exceptions import AuthError, BackendError, DomainError
from .frontdoor import (
    ConnectionCounts,
    FrontDoor,
    RequestHead,
    TrustedProxies,
    accept,
    refusal,
    subprotocol_offer,
    websocket_client,
)
from .logs import REQUEST_ID
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .node import Node
from .protocol.codes import CloseCode
from .protocol.messages import MAX_FILE_HEADER
from .protocol.wsframe import PING_FRAME
from .websocket import Flusher, WebSocketPeer

__all__ = ["RoomcastServer", "WebSocketPeer"]

#: A client's connection: a WebSocket, or an event stream (the HTTP fallback).
Connection = WebSocketPeer | EventStreamPeer

logger = logging.getLogger("roomcast.server")

_NODE: Final = web.AppKey("node", Node)
_DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443}

#: Seconds after start, then between, file sweeps.
SWEEP_FIRST: Final = 60.0
SWEEP_INTERVAL: Final = 3600.0
#: The first read buffer of a WebSocket connection (picows grows it for big frames).
READ_BUFFER: Final = 2048
#: Seconds shutdown waits for messages being stored to be acked.
FLUSH_TIMEOUT: Final = 2.0
#: Seconds aiohttp reads and drops the rest of a body it refused (too large,
#: or late: ``body_timeout``) before closing, so that the client reads the
#: answer rather than a reset; short, so a slow client gains little by it
#: (aiohttp's default is 10 s).
LINGERING_TIME: Final = 2.0
#: The close reason past ``max_connections_per_ip``.
TOO_MANY_FROM_ADDRESS: Final = "too many connections from your address"
#: Seconds an idle HTTP keep-alive connection stays open.
KEEPALIVE_TIMEOUT: Final = 10.0


class JSONErrorHandler(RequestHandler):
    """aiohttp's handler of one HTTP connection, answering a request it cannot parse
    (a line past 8,190 bytes, a malformed head) with roomcast's JSON error.

    aiohttp would answer in plain text, quoting the request back, and log an
    ERROR with a traceback: anyone can send such a request, so it is logged
    at INFO, one line, and answered like every other refusal.
    """

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:
            raise ConnectionError("a response was sent already; the connection is dropped")
        if isinstance(exc, LineTooLong):
            code, text = "too_large", "a line of the request head is longer than 8190 bytes"
        else:
            code, text = "bad_request", "the request could not be read as HTTP/1.1"
        logger.info("refused a malformed request from %s: %s", request.remote, text)
        response = _json_error(status, code, text)
        response.force_close()
        return response

    #: Called when the connection is lost: an event stream (``GET /events``)
    #: ends with it, which aiohttp does not tell a handler that is not writing.
    on_lost: Callable[[], None] | None = None

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        if self.on_lost is not None:
            self.on_lost()


class RoomcastServer:
    """The HTTP + WebSocket front of one node.

    Args:
        node: the node that handles the frames.
        config: host, port, TLS, origins, heartbeat and limits.
    """

    def __init__(self, node: Node, config: ServerConfig) -> None:
        self.node = node
        self.config = config
        self.peers: set[Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._flusher: Flusher | None = None
        #: The HTTP fallback's streams (``/events``).
        self.streams = EventStreams(node, config, self)
        #: Open connections (WebSockets and event streams) per client address.
        self._per_ip: Counter[str] = Counter()
        #: Whose X-Forwarded-For names the client (``--trusted-proxy``).
        self.proxies = TrustedProxies(config.trusted_proxies)
        self.url: str = ""
        self.app = self._make_app()

    # -- application -------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(
            middlewares=[_request_ids, _json_errors, _body_deadline(self.config.body_timeout)],
            client_max_size=1024 * 1024,
        )
        app[_NODE] = self.node
        app.router.add_get("/health", _health)
        app.router.add_get("/ready", _ready)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/ws", self._websocket_elsewhere)
        self.streams.add_routes(app)
        api.add_routes(app, self.node, self.proxies)
        api_rooms.add_routes(app)
        api_admin.add_routes(app)
        app.router.add_get("/", self._index)
        app[_ASSETS] = _assets()  # read once: a name not in it costs a dict lookup
        app.router.add_get("/static/{name}", _static)
        app.router.add_get("/api/openapi.json", _openapi)
        return app

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=_page(), headers=_page_headers("text/html; charset=utf-8"))

    async def _metrics(self, request: web.Request) -> web.Response:
        """``GET /metrics``: Prometheus text format."""
        return web.Response(
            body=self.node.metrics.exposition(), headers={"Content-Type": METRICS_CONTENT_TYPE}
        )

    def origin_allowed(self, headers: Mapping[str, str]) -> bool:
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
        # Built as the runner's server builds it (no access log: roomcast logs its own).
        return JSONErrorHandler(
            self._runner.server,
            loop=asyncio.get_running_loop(),
            access_log=None,  # type: ignore[arg-type]  # None: none, as AppRunner passes it
            keepalive_timeout=KEEPALIVE_TIMEOUT,
            lingering_time=LINGERING_TIME,
        )

    def websocket_limits(self, registered: bool) -> tuple[int, int]:
        limits = self.config.limits
        if registered:
            return max(limits.max_text_frame, max_binary_frame(limits)), READ_BUFFER
        # Files need a registered user: anyone else's big frame is refused unread.
        return limits.max_text_frame, READ_BUFFER

    def admit(self, door: FrontDoor, head: RequestHead) -> None:
        headers = head.headers
        if not self.origin_allowed(headers):
            logger.info("refused handshake from origin %s", headers.get("origin"))
            door.to_websocket(refusal(403, "forbidden", "origin not allowed"))
            return
        # A client may sign in with the handshake itself: with Authorization,
        # or, from a browser (which cannot set it), in the subprotocol offer.
        subprotocol, offered = subprotocol_offer(headers.get("sec-websocket-protocol"))
        token = bearer_token(headers.get("authorization"))
        strict = token is not None  # Authorization wins over the offer
        if token is None:
            token = offered
        if token is None:
            door.to_websocket(accept(self._new_peer(None), subprotocol))
            return
        task = asyncio.ensure_future(self._admit_token(door, token, subprotocol, strict=strict))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _admit_token(
        self, door: FrontDoor, token: str, subprotocol: str | None, *, strict: bool
    ) -> None:
        """Open a connection signed in as ``token``'s user, or refuse it.

        A refused ``Authorization`` token (``strict``) is answered 401, which
        a program reads (and logs in again). A refused token in the
        subprotocol offer is not: a browser cannot read a refused handshake,
        only retry it. That connection opens unsigned (with the text frame
        limit), and the page's ``auth`` frame, which it sends anyway, gets
        the error it acts on (it renews the token, or asks to sign in).
        """
        accounts = self.node.accounts
        try:
            if accounts is None:
                raise AuthError("this server accepts no tokens")
            credential = await accounts.user_for_token(token)
        except AuthError as exc:
            if strict:
                door.to_websocket(refusal(401, "auth_failed", str(exc)))
            else:
                door.to_websocket(accept(self._new_peer(None), subprotocol))
        except BackendError:
            logger.exception("could not check a handshake's token")
            door.to_websocket(refusal(503, "internal", "the server could not check the token"))
        else:
            peer = self._new_peer(credential)
            door.to_websocket(accept(peer, subprotocol), registered=True)

    def _new_peer(self, credential: Credential | None) -> WebSocketPeer:
        """A connection's listener; ``credential`` is who signed in at the handshake, if
        anyone (the connection remembers its session, for revocation).

        Only such a connection may send frames past the text limit (files):
        its fragmented binary messages get the same limit as its frames.
        """
        limits = self.config.limits
        user = credential.user if credential is not None else None
        expires_at = credential.expires_at if credential is not None else None
        sign_in = credential.session_id if credential is not None else None
        return WebSocketPeer(
            self.node,
            self.node.connections.new_session(user, sign_in=sign_in),
            owner=self,
            flusher=self._get_flusher(),
            max_queue=limits.max_queue_bytes,
            max_message=limits.max_text_frame,
            max_binary=max_binary_frame(limits) if user is not None else limits.max_text_frame,
            close_timeout=self.config.close_timeout,
            expires_at=expires_at,
        )

    def peer_opened(self, peer: WebSocketPeer) -> str | None:
        assert peer.transport is not None
        return self.connection_opened(peer, websocket_client(peer.transport, self.proxies))

    def connection_opened(self, peer: Connection, remote: str) -> str | None:
        """Count a connection from ``remote``; a reason to close it, or None."""
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

    def peer_closed(self, peer: Connection, code: int) -> None:
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
        metrics.closed(code)  # a fixed set of labels: a client picks its close code
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
        """Hourly: delete files no kept message names.

        Those are files whose messages were pruned (``--history-days``) and
        orphans: a file kept whose message was then refused or failed.
        """
        await asyncio.sleep(SWEEP_FIRST)
        while True:
            try:
                removed = await self.node.messaging.sweep_files()
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
        # Guest names, connections per user and logins, counted with the other nodes.
        await self.node.quotas.start(self.node.id)
        runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            keepalive_timeout=KEEPALIVE_TIMEOUT,
            shutdown_timeout=2.0,
            lingering_time=LINGERING_TIME,
        )
        await runner.setup()
        self._runner = runner
        loop = asyncio.get_running_loop()
        counts = ConnectionCounts(self.config.limits.max_http_connections_per_ip, self.proxies)
        self._listener = await loop.create_server(
            functools.partial(FrontDoor, self, counts),
            self.config.host,
            self.config.port,
            ssl=ssl_context,
            backlog=2048,
            reuse_address=True,
            # A worker of --workers: one listening socket per worker on the one port.
            reuse_port=self.config.reuse_port or None,
        )
        host, port = self._listener.sockets[0].getsockname()[:2]
        if ":" in host:
            host = f"[{host}]"
        self.url = f"{self.config.scheme}://{host}:{port}"
        if self.config.heartbeat > 0:
            self._heartbeat = asyncio.ensure_future(self._beat(self.config.heartbeat))
        if self.node.messaging.files is not None:  # orphans (a file whose message failed) too
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
        tasks = self._tasks | self.streams.tasks
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        if self._runner is not None:
            await self._runner.cleanup()
        await self.node.quotas.close()  # what this node's connections held is given back
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


#: The page's files by name: their bytes and media type (:func:`_assets`).
_ASSETS: Final = web.AppKey[dict[str, tuple[bytes, str]]]("static_assets")


def _assets() -> dict[str, tuple[bytes, str]]:
    """The files ``/static/NAME`` serves: the package's ``static`` folder, read once.

    Only files with a type in :data:`STATIC_TYPES` (not the page itself,
    nor hidden ones). Built at start, so whatever name a client makes up,
    a miss is one dict lookup: no file system call, and nothing kept.
    """
    assets = {}
    for entry in resources.files("roomcast.web").joinpath("static").iterdir():
        name = entry.name
        content_type = STATIC_TYPES.get(name[name.rfind(".") :]) if "." in name else None
        if content_type is not None and not name.startswith(".") and entry.is_file():
            assets[name] = (entry.read_bytes(), content_type)
    return assets


async def _static(request: web.Request) -> web.Response:
    """``GET /static/{name}``: the page's scripts, styles and icons."""
    asset = request.app[_ASSETS].get(request.match_info["name"])
    if asset is None:
        raise web.HTTPNotFound()
    body, content_type = asset
    return web.Response(body=body, headers=_page_headers(content_type))


@functools.cache
def _openapi_document() -> bytes:
    """The OpenAPI 3.1 document of every HTTP route, read from the package once."""
    return resources.files("roomcast.web").joinpath("openapi.json").read_bytes()


async def _openapi(request: web.Request) -> web.Response:
    """``GET /api/openapi.json``: the HTTP API as OpenAPI 3.1 (docs/protocol.md, section 2)."""
    return web.Response(
        body=_openapi_document(),
        headers={"Content-Type": "application/json", "Cache-Control": "no-cache"},
    )


def _origin_key(url: URL) -> tuple[str, str, int | None]:
    scheme = (url.scheme or "").lower()
    port = url.explicit_port or _DEFAULT_PORTS.get(scheme)
    return scheme.replace("ws", "http", 1), (url.host or "").lower(), port


def _json_error(
    status: int, code: str, message: str, extra: dict[str, Any] | None = None
) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if extra:
        error.update(extra)
    return web.json_response({"error": error}, status=status)


_STATUS_CODES: Final = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
}


def _body_deadline(seconds: float) -> Middleware:
    """A middleware that reads each request's body within ``seconds`` of its head.

    aiohttp waits for a body as long as the client keeps sending it: one
    byte every few seconds held a connection for good. The body (at most
    ``client_max_size``) is read here, whole, so handlers have it at once;
    when it is late the answer is 408 and the connection is closed. Frames
    POSTed to an event stream are read by their handler, with the limits
    of frames (``eventstream.reads_own_body``).
    """

    @web.middleware
    async def body_deadline(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.body_exists and not reads_own_body(request):
            try:
                async with asyncio.timeout(seconds):
                    await request.read()
            except TimeoutError:
                logger.info("request body from %s not in within %g s", request.remote, seconds)
                response = _json_error(
                    408, "timeout", f"the request body did not arrive within {seconds:g} s"
                )
                response.force_close()
                return response
            except ConnectionError:
                # The client left halfway: nobody reads this, and it is no server error.
                response = _json_error(400, "bad_request", "the request body was cut off")
                response.force_close()
                return response
        return await handler(request)

    return body_deadline


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
    response = _json_error(exc.status, exc.code, exc.message, exc.extra)
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
    except DomainError as exc:
        return _http_error(api.refused(exc))
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
