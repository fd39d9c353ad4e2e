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

The front door also refuses, itself, what neither library should see: a
head with a CR or LF that is not part of a CRLF (400: aiohttp and picows
could read it differently from roomcast, and a bare LF in a header could
forge a log line), and a connection past its address's cap on
connections that are not WebSockets (429, :class:`ConnectionCounts`).
Which address a request comes from, behind a reverse proxy, is
:class:`TrustedProxies`' answer.
"""

from __future__ import annotations

import asyncio
import importlib
import ipaddress
import logging
import secrets
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final, Protocol, cast

import orjson
from picows import WSAutoPingStrategy, WSListener, WSUpgradeResponse, WSUpgradeResponseWithListener

__all__ = [
    "BEARER_SUBPROTOCOL",
    "HEADS_FACTOR",
    "HEAD_TIMEOUT",
    "MAX_HEAD",
    "SUBPROTOCOL",
    "ConnectionCounts",
    "FrontDoor",
    "RequestHead",
    "Router",
    "TrustedProxies",
    "accept",
    "bare_line_break",
    "canonical_address",
    "parse_head",
    "peer_address",
    "subprotocol_offer",
    "websocket_client",
]

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


def bare_line_break(data: bytes | bytearray, start: int = 0, stop: int | None = None) -> bool:
    """Whether ``data[start:stop]`` has a CR or LF that is not part of a CRLF.

    ``start`` must not split a CRLF. A CR that ends the range is not bare
    yet: its LF may come with the next read.
    """
    stop = len(data) if stop is None else stop
    pairs = data.count(b"\r\n", start, stop)
    if data.count(b"\n", start, stop) != pairs:
        return True
    return data.count(b"\r", start, stop) - data.endswith(b"\r", start, stop) != pairs


def parse_head(head: bytes) -> RequestHead | None:
    """Parse a request head (without its final blank line); None if it is not HTTP/1.x.

    Only what routing needs is read; aiohttp or picows parse the request
    again, strictly, and answer a malformed one with 400. A head with a bare
    CR or LF is None too (the front door refuses it before parsing).
    """
    if bare_line_break(head) or head.endswith(b"\r"):
        return None
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

#: The WebSocket subprotocol a browser offers, and the server selects, when it
#: signs in at the handshake (a browser cannot set ``Authorization`` there).
SUBPROTOCOL: Final = "roomcast"
#: How the token is offered next to it: ``roomcast.bearer.TOKEN``. Never
#: selected, so the token is not sent back.
BEARER_SUBPROTOCOL: Final = "roomcast.bearer."


def subprotocol_offer(header: str | None) -> tuple[str | None, str | None]:
    """Read a ``Sec-WebSocket-Protocol`` offer: the subprotocol to select, and a token.

    :data:`SUBPROTOCOL` is selected when it is offered; a
    ``roomcast.bearer.TOKEN`` item carries a token (the first, if several).
    Other items are ignored. Names are compared exactly (RFC 6455 section 4.1).
    """
    if not header:
        return None, None
    selected = token = None
    for item in header.split(","):
        name = item.strip()
        if name == SUBPROTOCOL:
            selected = SUBPROTOCOL
        elif token is None and name.startswith(BEARER_SUBPROTOCOL):
            token = name[len(BEARER_SUBPROTOCOL) :] or None
    return selected, token


def accept(listener: WSListener, subprotocol: str | None = None) -> Admission:
    """A ``101`` answer for ``listener``, naming ``subprotocol`` if the client offered it.

    A browser fails a handshake whose answer selects none of the
    subprotocols it offered, so the one offered is always named.
    """
    if subprotocol is None:
        return listener  # picows builds the plain 101
    response = WSUpgradeResponse.create_101_response({"Sec-WebSocket-Protocol": subprotocol})
    return WSUpgradeResponseWithListener(response, listener)


class Router(Protocol):
    """The server's side of the front door."""

    def http_protocol(self) -> asyncio.Protocol:
        """A new aiohttp request handler for one connection."""

    def websocket_limits(self, registered: bool) -> tuple[int, int]:
        """The largest frame picows reads on a connection, and its first read buffer size.

        ``registered``: the connection signed in with a token at the
        handshake, so it may send files, the largest frames. picows refuses
        a bigger frame from its header, unread, and its limit cannot change
        once the connection is built: it is decided here, at the handshake.
        """

    def admit(self, door: FrontDoor, head: RequestHead) -> None:
        """Decide on a WebSocket handshake; call ``door.to_websocket`` with the answer."""


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def peer_address(transport: asyncio.BaseTransport) -> str:
    """The address at the other end of ``transport`` ("" when there is none, e.g. a Unix socket)."""
    peername = transport.get_extra_info("peername")
    return str(peername[0]) if isinstance(peername, tuple) and peername else ""


def websocket_client(transport: asyncio.BaseTransport, proxies: TrustedProxies) -> str:
    """Who an open WebSocket connection is from, behind ``proxies`` too.

    Only a connection from a trusted proxy has its handshake's
    ``X-Forwarded-For`` read (picows keeps the request on its transport).
    """
    peer = peer_address(transport)
    if peer not in proxies:
        return peer
    ws_transport = getattr(transport.get_protocol(), "transport", None)
    request = getattr(ws_transport, "request", None)
    headers = getattr(request, "headers", None)
    forwarded: list[str] = headers.getall("X-Forwarded-For", []) if headers is not None else []
    return proxies.client(peer, forwarded)


def canonical_address(text: str) -> str | None:
    """``text`` as an IP address in its usual form (IPv4-mapped IPv6 as IPv4), or None."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


class TrustedProxies:
    """The reverse proxies whose ``X-Forwarded-For`` is believed (``--trusted-proxy``).

    Each proxy appends the address it got the request from, so the client is
    the right-most address that is not itself a trusted proxy; everything to
    its left was sent by the client and could be anything. Behind no trusted
    proxy the header is ignored: anyone can send it.

    Args:
        entries: addresses (``127.0.0.1``) or networks (``10.0.0.0/8``).

    Raises:
        ValueError: an entry is neither.
    """

    __slots__ = ("_addresses", "_networks")

    def __init__(self, entries: Iterable[str] = ()) -> None:
        addresses: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in entries:
            network = ipaddress.ip_network(entry.strip(), strict=False)
            if network.num_addresses == 1:
                addresses.add(canonical_address(str(network.network_address)) or "")
            else:
                networks.append(network)
        self._addresses = frozenset(addresses)
        self._networks = tuple(networks)

    def __bool__(self) -> bool:
        return bool(self._addresses or self._networks)

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, str) or not (self._addresses or self._networks):
            return False
        if address in self._addresses:
            return True
        canonical = canonical_address(address)
        if canonical is None:
            return False
        if canonical in self._addresses:
            return True
        ip = ipaddress.ip_address(canonical)
        return any(ip in network for network in self._networks)

    def client(self, peer: str, forwarded: Iterable[str]) -> str:
        """The client's address: ``peer``, or the right-most untrusted ``X-Forwarded-For`` hop.

        ``forwarded`` is every ``X-Forwarded-For`` header, in order. A hop
        that is not an IP address ends the walk: the request is then taken
        to come from the last trusted hop.
        """
        if peer not in self:
            return peer
        client = peer
        hops = [hop for value in forwarded for hop in value.split(",")]
        for hop in reversed(hops):
            address = canonical_address(hop)
            if address is None:
                break
            client = address
            if address not in self:
                break
        return client


#: Connections from one address that may wait for their request head, as a
#: multiple of the HTTP cap: a reconnect storm (500 clients behind one NAT
#: after a restart) opens them all at once, and most become WebSockets, which
#: the HTTP cap does not count; each waiting one costs 1.2 KiB and at most
#: HEAD_TIMEOUT seconds.
HEADS_FACTOR: Final = 8


class ConnectionCounts:
    """Connections open per client address that are not WebSockets, with a cap.

    The front door counts a connection from its start, and gives the count
    back when it becomes a WebSocket (those have their own cap,
    ``max_connections_per_ip``) or closes. Trusted proxies are not counted:
    every client behind one shares its address (limit per client there).

    Args:
        cap: most such connections from one address; 0 is no cap.
        exempt: addresses never counted.
    """

    __slots__ = ("_open", "cap", "exempt")

    def __init__(self, cap: int, exempt: TrustedProxies | None = None) -> None:
        self.cap = cap
        self.exempt = exempt if exempt is not None else TrustedProxies()
        self._open: Counter[str] = Counter()

    def open(self, address: str) -> bool | None:
        """Count a new connection: True if counted, None if not counted, False if refused.

        A new connection may still become a WebSocket, so it is refused only
        past :data:`HEADS_FACTOR` times the cap; the cap itself is applied
        once its request head shows it is plain HTTP (:meth:`over`).
        """
        if self.cap <= 0 or address in self.exempt:
            return None
        if self._open[address] >= self.cap * HEADS_FACTOR:
            return False
        self._open[address] += 1
        return True

    def over(self, address: str) -> bool:
        """Whether ``address`` has more counted connections than the cap."""
        return self._open.get(address, 0) > self.cap

    def close(self, address: str) -> None:
        """A counted connection from ``address`` ended, or became a WebSocket."""
        left = self._open[address] - 1
        if left > 0:
            self._open[address] = left
        else:
            del self._open[address]

    def __getitem__(self, address: str) -> int:
        """Connections counted for ``address`` now."""
        return self._open.get(address, 0)


def error_bytes(status: HTTPStatus, code: str, message: str, *headers: str) -> bytes:
    """A whole JSON HTTP error response that closes the connection, as bytes to write."""
    body = orjson.dumps({"error": {"code": code, "message": message}})
    head = "".join(
        (
            f"HTTP/1.1 {status.value} {status.phrase}\r\n",
            "Content-Type: application/json\r\n",
            f"Content-Length: {len(body)}\r\n",
            f"X-Request-Id: {secrets.token_hex(6)}\r\n",
            *(f"{header}\r\n" for header in headers),
            "Connection: close\r\n\r\n",
        )
    )
    return head.encode("latin-1") + body


class _CountedHTTP(asyncio.Protocol):
    """aiohttp's handler of one connection, which gives its address's count back at the end.

    The front door is no longer the transport's protocol once aiohttp has
    the connection; this thin layer is, so that the end is seen.
    """

    __slots__ = ("_counts", "_handler", "address")

    def __init__(self, handler: asyncio.Protocol, counts: ConnectionCounts, address: str) -> None:
        self._handler, self._counts, self.address = handler, counts, address

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self._handler.eof_received()

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._counts.close(self.address)
        self._handler.connection_lost(exc)


class _QuietLogger(logging.LoggerAdapter[logging.Logger]):
    """picows logs every accept and disconnect at INFO; roomcast logs its own."""

    def info(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self.debug(msg, *args, **kwargs)

    def error(self, msg: object, *args: Any, **kwargs: Any) -> None:
        # A client's framing error is the client's fault, not the server's:
        # INFO, like roomcast's own "failing connection" line, so no client
        # can fill the log with ERROR lines. Anything else stays ERROR.
        if isinstance(msg, str) and msg.startswith("WS parser error"):
            super().info(msg, *args, **kwargs)
        else:
            super().error(msg, *args, **kwargs)


# Not a logging.Logger, so picows does not make a child logger per connection.
_PICOWS_LOGGER: Final = _QuietLogger(logging.getLogger("roomcast.picows"), None)


class FrontDoor(asyncio.Protocol):
    """Reads a connection's first request head and hands the connection over.

    Args:
        router: the server, which decides on WebSocket handshakes.
        counts: connections per address that are not WebSockets, and their
            cap; None counts nothing.
    """

    __slots__ = ("_address", "_buffer", "_counts", "_router", "_timer", "transport")

    def __init__(self, router: Router, counts: ConnectionCounts | None = None) -> None:
        self._router = router
        self._counts = counts
        #: The address this connection is counted under in ``counts``, while it is.
        self._address: str | None = None
        self._buffer = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)
        counts = self._counts
        if counts is not None:
            address = peer_address(transport)
            counted = counts.open(address)
            if counted is False:
                self._refuse_crowded(address, counts.cap)
                return
            if counted:
                self._address = address
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(HEAD_TIMEOUT, self.transport.abort)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        seen = len(buffer)
        buffer += data
        # Only the new bytes are searched (a slow client sends one at a time),
        # from the last three, which may begin the blank line or a CRLF.
        end = buffer.find(b"\r\n\r\n", max(seen - 3, 0))
        stop = len(buffer) if end < 0 else end + 4
        start = seen - 1 if buffer.endswith(b"\r", 0, seen) else seen
        if bare_line_break(buffer, start, stop):
            address = peer_address(self.transport) if self.transport else ""
            logger.info("refused a request head with a bare CR or LF from %s", address)
            self._refuse(
                HTTPStatus.BAD_REQUEST,
                "bad_request",
                "a line of the request head ends without CRLF",
            )
            return
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
        self._uncount()  # WebSockets have their own cap (the server's)
        self.transport.pause_reading()  # until the router has decided
        self._router.admit(self, head)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        self._uncount()

    def _uncount(self) -> None:
        address, self._address = self._address, None
        if address is not None and self._counts is not None:
            self._counts.close(address)

    def _refuse(self, status: HTTPStatus, code: str, message: str, *headers: str) -> None:
        """Answer a JSON error and close, handing the connection to no library."""
        self._stop_timer()
        self._buffer = bytearray()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(error_bytes(status, code, message, *headers))
            transport.close()

    def _refuse_crowded(self, address: str, cap: int) -> None:
        logger.debug("refused a connection from %s: %d open already", address, cap)
        self._refuse(
            HTTPStatus.TOO_MANY_REQUESTS,
            "rate_limited",
            "too many connections from your address",
            "Retry-After: 1",
        )

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def to_http(self) -> None:
        """Hand the connection to aiohttp (through :class:`_CountedHTTP` when counted)."""
        self._stop_timer()
        transport = self.transport
        if transport is None or transport.is_closing():
            return  # its connection_lost comes here
        address = self._address
        if address is not None and self._counts is not None and self._counts.over(address):
            self._refuse_crowded(address, self._counts.cap)
            return
        handler = self._router.http_protocol()
        self._address = None
        if address is not None and self._counts is not None:
            handler = _CountedHTTP(handler, self._counts, address)
        self._switch(handler)

    def to_websocket(self, admission: Admission, *, registered: bool = False) -> None:
        """Hand the connection to picows, which answers the handshake with ``admission``.

        A listener gets ``101 Switching Protocols`` (after picows validated the
        handshake); a refusal is sent as it is, and the connection closed.
        ``registered`` (signed in at the handshake) sets the largest frame
        picows reads (:meth:`Router.websocket_limits`).
        """
        max_frame, read_buffer = self._router.websocket_limits(registered)
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
            False,  # pings are answered by the listener, after it checks their reserved bits
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
