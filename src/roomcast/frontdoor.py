"""One port, two protocols: the first request of a connection picks its handler.

Every accepted connection starts with a :class:`FrontDoor`. It reads only
the head of the first HTTP request (request line and headers) and hands the
connection over, with the bytes read so far, to one of two libraries:

- a WebSocket handshake for ``/ws`` (or ``/``) goes to picows, whose Cython
  frame parser is the fast path of every chat connection;
- anything else goes to aiohttp's request handler, which serves the HTTP
  routes (the page, the API, ``/metrics``) and keeps the connection alive.

The hand-over uses ``transport.set_protocol``, so it works the same under
TLS (the front door sees decrypted bytes). What to do with a WebSocket
handshake (check its origin, its token, build the listener) is the
server's decision, taken through :class:`Router`.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final, Protocol, cast

import orjson
from picows import WSAutoPingStrategy, WSListener, WSUpgradeResponse, WSUpgradeResponseWithListener

__all__ = ["HEAD_TIMEOUT", "MAX_HEAD", "FrontDoor", "RequestHead", "Router", "parse_head"]

logger = logging.getLogger("roomcast.frontdoor")

#: The largest request head the front door reads before handing over (aiohttp
#: and picows refuse larger ones themselves).
MAX_HEAD: Final = 16 * 1024
#: Seconds a new connection has to send its first request head.
HEAD_TIMEOUT: Final = 10.0
#: Paths where a WebSocket handshake is accepted (``/`` as the original server did).
WEBSOCKET_PATHS: Final = frozenset({"/ws", "/"})

# picows builds this protocol in ws_create_server; it is not in its stubs.
_WSProtocol: Final[Callable[..., asyncio.BufferedProtocol]] = importlib.import_module(
    "picows.picows"
).WSProtocol


@dataclass(frozen=True, slots=True)
class RequestHead:
    """The first request line and headers of a connection."""

    method: str
    path: str
    #: Header names in lower case; a repeated header keeps its last value.
    headers: dict[str, str]

    @property
    def is_websocket(self) -> bool:
        """Whether this asks for a WebSocket on one of :data:`WEBSOCKET_PATHS`."""
        return (
            self.method == "GET"
            and self.path in WEBSOCKET_PATHS
            and self.headers.get("upgrade", "").lower() == "websocket"
        )


def parse_head(head: bytes) -> RequestHead | None:
    """Parse a request head (without its final blank line); None if it is not HTTP/1.x.

    Only what routing needs is read; aiohttp or picows parse the request
    again, strictly, and answer a malformed one with 400.
    """
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            return None
        headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
    target = parts[1].decode("latin-1")
    return RequestHead(parts[0].decode("latin-1"), target.partition("?")[0], headers)


def refusal(status: int, code: str, message: str) -> WSUpgradeResponseWithListener:
    """A JSON HTTP error for a refused WebSocket handshake (picows sends it and closes)."""
    body = orjson.dumps({"error": {"code": code, "message": message}})
    response = WSUpgradeResponse.create_error_response(
        HTTPStatus(status), body, {"Content-Type": "application/json"}
    )
    return WSUpgradeResponseWithListener(response, None)


#: What the router gives the front door for a WebSocket handshake.
Admission = WSListener | WSUpgradeResponseWithListener


class Router(Protocol):
    """The server's side of the front door."""

    def http_protocol(self) -> asyncio.Protocol:
        """A new aiohttp request handler for one connection."""

    def websocket_limits(self) -> tuple[int, int]:
        """The largest frame picows accepts, and its first read buffer size."""

    def admit(self, door: FrontDoor, head: RequestHead) -> None:
        """Decide on a WebSocket handshake; call ``door.to_websocket`` with the answer."""


class _QuietLogger(logging.LoggerAdapter[logging.Logger]):
    """picows logs every accept and disconnect at INFO; roomcast logs its own."""

    def info(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self.debug(msg, *args, **kwargs)


# Not a logging.Logger, so picows does not make a child logger per connection.
_PICOWS_LOGGER: Final = _QuietLogger(logging.getLogger("roomcast.picows"), None)


class FrontDoor(asyncio.Protocol):
    """Reads a connection's first request head and hands the connection over."""

    __slots__ = ("_buffer", "_router", "_timer", "transport")

    def __init__(self, router: Router) -> None:
        self._router = router
        self._buffer = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(HEAD_TIMEOUT, self.transport.abort)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD:
                self.to_http()  # aiohttp answers 431 or 400
            return
        self._stop_timer()
        head = parse_head(bytes(buffer[:end]))
        if head is None or not head.is_websocket:
            self.to_http()
            return
        assert self.transport is not None
        self.transport.pause_reading()  # until the router has decided
        self._router.admit(self, head)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def to_http(self) -> None:
        """Hand the connection to aiohttp."""
        self._stop_timer()
        self._switch(self._router.http_protocol())

    def to_websocket(self, admission: Admission) -> None:
        """Hand the connection to picows, which answers the handshake with ``admission``.

        A listener gets ``101 Switching Protocols`` (after picows validated the
        handshake); a refusal is sent as it is, and the connection closed.
        """
        max_frame, read_buffer = self._router.websocket_limits()
        protocol = _WSProtocol(
            None,  # host and port: client side only
            None,  # path: client side only
            False,  # server side
            lambda request: admission,
            _PICOWS_LOGGER,
            True,  # disconnect on an exception in a callback (roomcast catches its own)
            None,  # no handshake timeout: the head is here already
            False,  # no automatic pings: the server's heartbeat pings
            20.0,  # (auto ping idle timeout, unused)
            20.0,  # (auto ping reply timeout, unused)
            WSAutoPingStrategy.PING_WHEN_IDLE,  # (unused)
            True,  # answer pings with pongs
            max_frame,
            None,  # no extra response headers
            read_buffer,
        )
        self._switch(protocol)

    def _switch(self, protocol: asyncio.BaseProtocol) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        data, self._buffer = bytes(self._buffer), bytearray()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if isinstance(protocol, asyncio.BufferedProtocol):
            view = memoryview(data)
            while view and not transport.is_closing():
                buffer = memoryview(protocol.get_buffer(len(view)))
                n = min(len(buffer), len(view))
                buffer[:n] = view[:n]
                view = view[n:]
                protocol.buffer_updated(n)
        elif data:
            cast(asyncio.Protocol, protocol).data_received(data)
        transport.resume_reading()
