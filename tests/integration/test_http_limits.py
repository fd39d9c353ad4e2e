"""Plain HTTP against slow and hostile clients, over real sockets.

A body that trickles in is cut off at ``--body-timeout`` (408); one address
gets at most ``--max-http-connections-per-ip`` connections that are not
WebSockets (429 past it), trusted proxies excepted; a head with a bare CR
or LF is refused by the front door (400 JSON) and cannot forge a log line;
behind ``--trusted-proxy`` the WebSocket cap counts the forwarded address.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect

from roomcast.cli import build_parser, config_from_args
from roomcast.config import ServerConfig
from roomcast.exceptions import ConfigError
from roomcast.frontdoor import HEADS_FACTOR
from tests.integration.serverproc import ServerFactory, ServerProcess, serve_command
from tests.integration.users import closed_with
from tests.integration.wsclient import RECV_TIMEOUT, WS_KEY, welcome

#: The body deadline the slow-body test runs the server with, in seconds.
BODY_TIMEOUT = 1.0
#: How long aiohttp may go on reading a refused body before it closes
#: (``roomcast.server.LINGERING_TIME``), and slack for a loaded machine.
LINGER, SLACK = 2.0, 1.0
#: A log line as the text format writes it: it starts with a timestamp.
RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


@contextlib.asynccontextmanager
async def raw(
    server: ServerProcess,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A bare TCP connection to the server, closed at the end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """The status, headers (lower-case names) and body of one raw HTTP response."""
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


async def read_to_eof(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the server sends until it closes (a reset counts as closed)."""
    chunks = []
    async with asyncio.timeout(timeout):
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
    return b"".join(chunks)


# -- slow bodies ----------------------------------------------------------------------


async def test_a_slow_body_is_answered_408_and_closed_at_the_deadline(
    server_factory: ServerFactory,
) -> None:
    """A 1,000-byte body sent a byte every 0.2 s gets 408 JSON at --body-timeout, then EOF."""
    server = server_factory("--body-timeout", str(BODY_TIMEOUT))
    loop = asyncio.get_running_loop()
    async with raw(server) as (reader, writer):
        writer.write(
            b"POST /api/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        started = loop.time()

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                while True:
                    await asyncio.sleep(0.2)
                    writer.write(b" ")
                    await writer.drain()

        sender = asyncio.create_task(trickle())
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BODY_TIMEOUT + SLACK + 1)
            answered = loop.time() - started
            status, headers, _ = response(head)
            body = await reader.readexactly(int(headers["content-length"]))
            rest = await read_to_eof(reader, LINGER + SLACK)
            closed = loop.time() - started
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
    assert status == 408 and headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "timeout"
    assert BODY_TIMEOUT - 0.1 <= answered <= BODY_TIMEOUT + SLACK, answered
    assert rest == b"" and closed <= BODY_TIMEOUT + LINGER + SLACK, closed
    assert "Traceback" not in server.stderr()


async def test_a_body_in_time_is_still_read_whole(server_factory: ServerFactory) -> None:
    """A body split in slow parts that ends before the deadline is handled as usual (401)."""
    server = server_factory("--body-timeout", str(BODY_TIMEOUT * 3))
    body = b'{"username": "nobody", "password": "wrong password"}'
    async with raw(server) as (reader, writer):
        writer.write(
            b"POST /api/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:10]
        )
        await writer.drain()
        await asyncio.sleep(BODY_TIMEOUT / 2)
        writer.write(body[10:])
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), RECV_TIMEOUT)
    assert response(head)[0] == 401


# -- connections per address ----------------------------------------------------------


async def test_http_connections_past_the_per_address_cap_get_429(
    server_factory: ServerFactory,
) -> None:
    """With a cap of 3: a 4th HTTP request gets 429 JSON and EOF; WebSockets do not count."""
    server = server_factory("--max-http-connections-per-ip", "3")
    async with contextlib.AsyncExitStack() as stack:
        sockets = [await stack.enter_async_context(connect(server.ws_url())) for _ in range(3)]
        for ws in sockets:
            await welcome(ws)
        idle = [await stack.enter_async_context(raw(server)) for _ in range(3)]
        async with raw(server) as (reader, writer):
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            refused = await read_to_eof(reader, RECV_TIMEOUT)
        status, headers, body = response(refused)
        assert (status, headers["retry-after"], headers["connection"]) == (429, "1", "close")
        assert json.loads(body)["error"]["code"] == "rate_limited"
        # A slot freed is a slot to use: one idle connection sends a request.
        reader, writer = idle[0]
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert response(await read_to_eof(reader, RECV_TIMEOUT))[0] == 200
        async with asyncio.timeout(RECV_TIMEOUT):
            while True:
                async with raw(server) as (reader, writer):
                    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if response(await read_to_eof(reader, RECV_TIMEOUT))[0] == 200:
                        break
                await asyncio.sleep(0.05)


async def test_connections_waiting_for_a_head_are_capped_at_a_multiple(
    server_factory: ServerFactory,
) -> None:
    """Heads not yet sent count up to HEADS_FACTOR times the cap; one more is refused at once."""
    server = server_factory("--max-http-connections-per-ip", "2")
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(2 * HEADS_FACTOR):
            await stack.enter_async_context(raw(server))
        async with raw(server) as (reader, _):
            status, _, body = response(await read_to_eof(reader, RECV_TIMEOUT))
    assert status == 429 and json.loads(body)["error"]["code"] == "rate_limited"


async def test_a_trusted_proxy_is_not_capped(server_factory: ServerFactory) -> None:
    """Connections from a --trusted-proxy address are not counted against the cap."""
    server = server_factory("--max-http-connections-per-ip", "2", "--trusted-proxy", "127.0.0.1")
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(4):
            await stack.enter_async_context(raw(server))
        async with raw(server) as (reader, writer):
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert response(await read_to_eof(reader, RECV_TIMEOUT))[0] == 200


# -- bare CR or LF: refused, and no forged log line -----------------------------------

#: What a forged log line would say.
FORGED = "2030-01-01 00:00:00,000 CRITICAL roomcast.server: forged by a client"


async def test_a_bare_lf_or_cr_in_a_head_is_400_and_forges_no_log_line(
    server_factory: ServerFactory,
) -> None:
    """Handshake or plain request with a bare LF or CR: 400 JSON, closed, no forged log line."""
    server = server_factory("--log-level", "debug")
    handshake = (
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n"
    )
    heads = [
        handshake + f"Origin: http://evil.example\n{FORGED}\r\n\r\n",
        handshake + f"Origin: http://evil.example\r{FORGED}\r\n\r\n",
        f"GET /api/rooms HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Note: a\n{FORGED}\r\n\r\n",
        "GET / HTTP/1.1\nHost: 127.0.0.1\n\n",
    ]
    for head in heads:
        async with raw(server) as (reader, writer):
            writer.write(head.encode())
            status, headers, body = response(await read_to_eof(reader, RECV_TIMEOUT))
        assert (status, headers["content-type"]) == (400, "application/json"), head
        assert json.loads(body)["error"]["code"] == "bad_request", head
    # The same Origin, well formed, is refused and logged, on one line.
    async with raw(server) as (reader, writer):
        writer.write((handshake + "Origin: http://evil.example\r\n\r\n").encode())
        assert response(await read_to_eof(reader, RECV_TIMEOUT))[0] == 403
    assert server.stop() == 0
    lines = server.stderr().splitlines()
    assert any("refused handshake from origin http://evil.example" in line for line in lines)
    assert sum("bare CR or LF" in line for line in lines) == len(heads), lines
    assert not any("forged by a client" in line for line in lines), lines
    assert all(RECORD.match(line) or line.startswith("  ") for line in lines), lines


# -- the client's address behind a trusted proxy --------------------------------------


async def forwarded_ws(server: ServerProcess, address: str) -> ClientConnection:
    """A WebSocket whose handshake says it was forwarded for ``address``."""
    return await connect(server.ws_url(), additional_headers={"X-Forwarded-For": address})


async def test_the_websocket_cap_counts_the_forwarded_address_behind_a_trusted_proxy(
    server_factory: ServerFactory,
) -> None:
    """--trusted-proxy: the cap of 1 is per X-Forwarded-For client; untrusted, per peer."""
    behind = server_factory("--max-connections-per-ip", "1", "--trusted-proxy", "127.0.0.1")
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(await forwarded_ws(behind, "198.51.100.7"))
        await welcome(first)
        other = await stack.enter_async_context(
            await forwarded_ws(behind, "203.0.113.9, 198.51.100.8")  # right-most counts
        )
        await welcome(other)
        again = await stack.enter_async_context(
            await forwarded_ws(behind, "203.0.113.9, 198.51.100.7")
        )
        assert await closed_with(again) == (1008, "too many connections from your address")
    direct = server_factory("--max-connections-per-ip", "1")
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(await forwarded_ws(direct, "198.51.100.7"))
        await welcome(first)
        spoofed = await stack.enter_async_context(await forwarded_ws(direct, "198.51.100.8"))
        assert await closed_with(spoofed) == (1008, "too many connections from your address")


def test_a_trusted_proxy_that_is_no_address_is_refused_at_start(tmp_path: Path) -> None:
    """--trusted-proxy must be an IP address or network: one line on stderr, exit status 2."""
    result = subprocess.run(
        serve_command("--port", "0", "--data-dir", str(tmp_path), "--trusted-proxy", "nginx"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("roomcast: error: --trusted-proxy must be an IP address")
    assert len(result.stderr.splitlines()) == 1


def test_the_new_flags_read_the_environment_and_flags_win() -> None:
    """ROOMCAST_TRUSTED_PROXY (space-separated) and the other new variables work; flags win."""

    def config(argv: list[str], env: dict[str, str]) -> ServerConfig:
        return config_from_args(build_parser(env).parse_args(["serve", *argv]))

    default = config([], {})
    assert (default.trusted_proxies, default.body_timeout) == ((), 10.0)
    assert default.limits.max_http_connections_per_ip == 128
    env = {
        "ROOMCAST_TRUSTED_PROXY": "127.0.0.1 10.0.0.0/8",
        "ROOMCAST_BODY_TIMEOUT": "2.5",
        "ROOMCAST_MAX_HTTP_CONNECTIONS_PER_IP": "0",
    }
    from_env = config([], env)
    assert from_env.trusted_proxies == ("127.0.0.1", "10.0.0.0/8")
    assert (from_env.body_timeout, from_env.limits.max_http_connections_per_ip) == (2.5, 0)
    flags = config(["--trusted-proxy", "::1", "--trusted-proxy", "192.0.2.1"], env)
    assert flags.trusted_proxies == ("::1", "192.0.2.1")
    with pytest.raises(ConfigError, match="--body-timeout"):
        config(["--body-timeout", "0"], {})
