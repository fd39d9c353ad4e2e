"""Small helpers around the ``websockets`` client for integration tests."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import ClientConnection

#: The longest a test waits for one expected frame.
RECV_TIMEOUT = 5.0


async def recv_json(ws: ClientConnection, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
    """The next frame, parsed."""
    data = await asyncio.wait_for(ws.recv(), timeout)
    frame = json.loads(data)
    assert isinstance(frame, dict)
    return frame


async def recv_type(
    ws: ClientConnection, kind: str, timeout: float = RECV_TIMEOUT
) -> dict[str, Any]:
    """Skip frames until one of type ``kind`` arrives."""
    async with asyncio.timeout(timeout):
        while True:
            frame = await recv_json(ws, timeout)
            if frame["type"] == kind:
                return frame


async def answer(ws: ClientConnection, fid: str) -> dict[str, Any]:
    """The next frame answering the client frame ``fid`` (others skipped)."""
    async with asyncio.timeout(RECV_TIMEOUT):
        while True:
            frame = await recv_json(ws)
            if frame.get("id") == fid:
                return frame


async def ask(ws: ClientConnection, kind: str, payload: dict[str, Any], fid: str) -> dict[str, Any]:
    """Send one frame with id ``fid``; the frame answering it."""
    await send_json(ws, kind, payload, id=fid)
    return await answer(ws, fid)


async def send_json(ws: ClientConnection, kind: str, payload: Any = None, **extra: Any) -> None:
    """Send one frame."""
    frame: dict[str, Any] = {"type": kind, **extra}
    if payload is not None:
        frame["payload"] = payload
    await ws.send(json.dumps(frame))


async def welcome(ws: ClientConnection) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read the ``system`` frame and the lobby ``joined`` frame that follow a connect."""
    system = await recv_json(ws)
    assert system["type"] == "system"
    joined = await recv_json(ws)
    assert joined["type"] == "joined"
    return system, joined


# -- bare sockets: protocol-level probes ----------------------------------------
#
# ``RawWebSocket`` speaks just enough RFC 6455 over an asyncio stream to send
# frames no well-behaved library would (unmasked, bad UTF-8, a header
# declaring a huge payload) and to read what the server answers, close frames
# included. Everything goes to 127.0.0.1 only.

#: The sample key of RFC 6455 section 1.3 (a probe needs no randomness).
WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
#: The masking key every probe frame uses.
MASK_KEY = b"\x37\xfa\x21\x3d"

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA


def mask(payload: bytes, key: bytes = MASK_KEY) -> bytes:
    """``payload`` XORed with the 4-byte ``key`` (RFC 6455 section 5.3)."""
    n = len(payload)
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def client_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    masked: bool = True,
    length: int | None = None,
    fin: bool = True,
) -> bytes:
    """One frame as a client sends it: final and masked unless told otherwise.

    ``length`` declares a payload length other than ``len(payload)`` (a
    header announcing more than is sent).
    """
    n = len(payload) if length is None else length
    bit = 0x80 if masked else 0
    head = bytes(((0x80 if fin else 0) | opcode,))
    if n < 126:
        head += bytes((bit | n,))
    elif n < 65536:
        head += bytes((bit | 126,)) + n.to_bytes(2, "big")
    else:
        head += bytes((bit | 127,)) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    return head + MASK_KEY + mask(payload)


class RawWebSocket:
    """A WebSocket client on a bare TCP stream, for frames libraries refuse to send."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.status = 0
        self.response_headers: dict[str, str] = {}
        #: Every frame read so far, as ``(opcode, payload)``.
        self.frames: list[tuple[int, bytes]] = []

    @classmethod
    async def open(cls, port: int, *, rcvbuf: int | None = None) -> RawWebSocket:
        """A TCP connection to 127.0.0.1:``port``, with no handshake yet.

        ``rcvbuf`` sets ``SO_RCVBUF`` before connecting (a client that reads
        slowly then fills the server's buffers quickly).
        """
        import socket

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), RECV_TIMEOUT)
            reader, writer = await asyncio.open_connection(sock=sock, limit=2**20)
        except BaseException:
            sock.close()
            raise
        return cls(reader, writer)

    @classmethod
    async def connect(
        cls,
        port: int,
        path: str = "/ws",
        *,
        headers: dict[str, str] | None = None,
        rcvbuf: int | None = None,
    ) -> RawWebSocket:
        """Open a connection and complete the opening handshake (status 101)."""
        raw = await cls.open(port, rcvbuf=rcvbuf)
        try:
            await raw.handshake(port, path, headers=headers)
            assert raw.status == 101, f"handshake answered {raw.status}"
        except BaseException:
            await raw.close()
            raise
        return raw

    async def handshake(
        self, port: int, path: str = "/ws", *, headers: dict[str, str] | None = None
    ) -> None:
        """Send the upgrade request; read the status line and headers."""
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {WS_KEY}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in (headers or {}).items()),
        ]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self.writer.drain()
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), RECV_TIMEOUT)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        for line in header_lines:
            if ":" in line:
                key, value = line.split(":", 1)
                self.response_headers[key.strip().lower()] = value.strip()

    async def send_raw(self, data: bytes) -> None:
        """Write bytes as they are."""
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), RECV_TIMEOUT)

    async def send_frame(
        self,
        opcode: int,
        payload: bytes = b"",
        *,
        masked: bool = True,
        length: int | None = None,
        fin: bool = True,
    ) -> None:
        """Send one frame (see :func:`client_frame`)."""
        await self.send_raw(client_frame(opcode, payload, masked=masked, length=length, fin=fin))

    async def read_frame(self, timeout: float = RECV_TIMEOUT) -> tuple[int, bytes]:
        """The next frame from the server: ``(opcode, payload)``.

        Raises ``asyncio.IncompleteReadError`` (or ``ConnectionError``) when
        the connection ends first.
        """
        async with asyncio.timeout(timeout):
            head = await self.reader.readexactly(2)
            opcode, n = head[0] & 0x0F, head[1] & 0x7F
            assert not head[1] & 0x80, "the server masked a frame (RFC 6455 5.1 forbids it)"
            if n == 126:
                n = int.from_bytes(await self.reader.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await self.reader.readexactly(8), "big")
            payload = await self.reader.readexactly(n)
        self.frames.append((opcode, payload))
        return opcode, payload

    async def read_json(self, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        """The next text frame, parsed (control frames are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                opcode, payload = await self.read_frame(timeout)
                if opcode == OP_TEXT:
                    frame = json.loads(payload)
                    assert isinstance(frame, dict)
                    return frame
                assert opcode in (OP_PING, OP_PONG), f"unexpected opcode {opcode:#x}"

    async def read_until_closed(
        self, timeout: float = RECV_TIMEOUT
    ) -> tuple[list[tuple[int, bytes]], int | None]:
        """Read until the server ends the connection.

        Returns the frames read by this call and the close code of the
        server's close frame (``None`` when the TCP connection ended without
        one). Raises ``TimeoutError`` when it is still open after ``timeout``
        (:attr:`frames` then shows what arrived).
        """
        frames: list[tuple[int, bytes]] = []
        async with asyncio.timeout(timeout):
            while True:
                try:
                    opcode, payload = await self.read_frame(timeout)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return frames, None
                frames.append((opcode, payload))
                if opcode == OP_CLOSE:
                    code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                    return frames, code

    async def read_to_eof(self, timeout: float = RECV_TIMEOUT) -> bytes:
        """Every byte until the server closes the TCP connection."""
        chunks: list[bytes] = []
        async with asyncio.timeout(timeout):
            while True:
                try:
                    chunk = await self.reader.read(65536)
                except ConnectionError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks)

    async def close(self) -> None:
        """Close the TCP connection (no close handshake)."""
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), RECV_TIMEOUT)
        except (ConnectionError, TimeoutError):
            pass

    async def __aenter__(self) -> RawWebSocket:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
