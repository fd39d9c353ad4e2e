"""A real TCP proxy that refuses WebSocket, as some corporate proxies do.

It reads the head of each connection's first request. One that asks for
``Upgrade: websocket`` is answered ``403 Forbidden`` (a proxy's JSON page,
``Connection: close``) and closed; any other request is passed on and the
connection piped both ways, as by :class:`~tests.netproxy.TcpProxy`, whose
:meth:`cut`, :meth:`down` and :attr:`muted` work the same here. Only the
first request of a connection is looked at: a client that reuses a
connection for an upgrade gets through, as it would through many real ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import re

from tests.netproxy import TcpProxy

#: Seconds a client may take to send its request head.
HEAD_TIMEOUT = 10.0
#: The header that asks for a WebSocket (case and spaces as HTTP allows).
UPGRADE = re.compile(rb"^upgrade[ \t]*:[ \t]*websocket[ \t]*$", re.IGNORECASE | re.MULTILINE)
#: The page of the proxy's refusal (JSON, but not the server's error shape).
_PAGE = b'{"error":"WebSocket is blocked by this network\'s policy"}'
#: What the proxy answers an upgrade with.
REFUSAL = (
    b"HTTP/1.1 403 Forbidden\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: %d\r\n"
    b"Connection: close\r\n"
    b"\r\n%s" % (len(_PAGE), _PAGE)
)


class WsBlockProxy(TcpProxy):
    """Pipes 127.0.0.1:<port> to 127.0.0.1:<target_port>, refusing WebSocket upgrades."""

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port)
        #: Upgrades refused so far.
        self.refused = 0

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            # No head, or one over the stream's 64 KiB limit: no request to pass on.
            writer.transport.abort()
            return
        if UPGRADE.search(head.replace(b"\r\n", b"\n")):
            self.refused += 1
            with contextlib.suppress(OSError):
                writer.write(REFUSAL)
                await writer.drain()
            writer.close()
            return
        await self._pipe_through(reader, writer, head)
