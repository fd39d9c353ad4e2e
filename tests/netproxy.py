"""A real TCP proxy on 127.0.0.1 that a test can cut: the network, not a mock of it.

Clients connect to the proxy's port; each connection is piped to the server
over a second real socket. :meth:`TcpProxy.cut` ends every piped connection
the way a network fault does: ``reset`` aborts both sockets (RST, as when a
NAT entry or a Wi-Fi link dies), ``close`` closes them (FIN without a
WebSocket close frame, as when a server process exits). While
:attr:`TcpProxy.refusing` is set, new connections are reset at once, as by a
server that is down.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


class TcpProxy:
    """Pipes 127.0.0.1:<port> to 127.0.0.1:<target_port>."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.cuts = 0
        #: Reset new connections at once (the server behind is "down").
        self.refusing = False
        #: Drop what the server sends: the client's frames still arrive, the
        #: answers are lost on the way back (a link that dies after a send).
        self.muted = False
        #: Connections piped to the target so far.
        self.piped = 0
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        await self._pipe_through(reader, writer)

    async def _pipe_through(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes = b""
    ) -> None:
        """Pipe a client's connection to the target (``first``: bytes already read from it)
        until either side ends; reset it when the target cannot be reached."""
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.piped += 1
        up_writer.write(first)
        pair = (writer, up_writer)
        self._pairs.add(pair)
        try:
            await asyncio.gather(
                _pipe(reader, up_writer), _pipe(up_reader, writer, lambda: self.muted)
            )
        finally:
            self._pairs.discard(pair)
            for w in pair:
                w.transport.abort()

    def cut(self, how: str = "reset") -> int:
        """End every piped connection now; return how many."""
        pairs = list(self._pairs)
        for pair in pairs:
            for w in pair:
                if how == "reset":
                    w.transport.abort()
                else:
                    w.transport.close()
        self.cuts += 1
        return len(pairs)

    def down(self) -> None:
        """Act as a server that went away: cut every connection and refuse new ones."""
        self.refusing = True
        self.cut()

    def up(self) -> None:
        """Accept connections again."""
        self.refusing = False

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()


async def _pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    muted: Callable[[], bool] = lambda: False,
) -> None:
    try:
        while chunk := await reader.read(65536):
            if muted():
                continue
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.transport.close()
