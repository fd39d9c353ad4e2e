"""What the server writes to stderr: JSON or text lines with connection and request ids."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
import orjson
from websockets.asyncio.client import connect

from tests.integration.serverproc import ServerFactory, ServerProcess
from tests.integration.users import SECRET, mint
from tests.integration.wsclient import RECV_TIMEOUT, welcome

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
KEYS = {"ts", "level", "logger", "message", "conn", "req", "exc", "stack"}


async def session_of_one_connection(server: ServerProcess) -> str:
    """Connect, read the welcome, close; the session id the server announced."""
    async with connect(server.ws_url()) as ws:
        system, _ = await welcome(ws)
    return str(system["payload"]["session"])


async def register(server: ServerProcess, name: str) -> str:
    """Register ``name`` over HTTP (the server logs it); the response's X-Request-Id."""
    body = {"username": name, "password": "correct horse battery"}
    async with aiohttp.ClientSession() as http:
        async with http.post(server.http_url("/api/register"), json=body) as resp:
            assert resp.status == 201, await resp.text()
            return resp.headers["X-Request-Id"]


async def send_malformed_authorization(server: ServerProcess, token: str) -> bytes:
    """A request whose Authorization line has a control character; the raw answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(
            b"GET /api/rooms HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer " + token.encode() + b"\x01\r\n\r\n"
        )
        await writer.drain()
        return await asyncio.wait_for(reader.read(), RECV_TIMEOUT)
    finally:
        writer.close()


def json_lines(server: ServerProcess) -> list[dict[str, Any]]:
    """Every stderr line of the (stopped) server, each parsed as one JSON object."""
    entries = []
    for line in server.stderr().splitlines():
        entry = orjson.loads(line)
        assert isinstance(entry, dict), line
        entries.append(entry)
    return entries


async def test_json_lines_carry_the_connection_and_request_ids(
    server_factory: ServerFactory,
) -> None:
    """With --log-format json each stderr line is JSON; conn and req match the client's ids."""
    server = server_factory("--secret", SECRET, "--log-level", "debug", "--log-format", "json")
    session = await session_of_one_connection(server)
    request_id = await register(server, "Logan")
    token = mint("Logan")
    answer = await send_malformed_authorization(server, token)
    assert answer.startswith(b"HTTP/1.0 400") and b'"code": "bad_request"' in answer, answer
    async with aiohttp.ClientSession() as http:
        async with http.get(server.http_url("/health")) as resp:
            assert re.fullmatch(r"[0-9a-f]{12}", resp.headers["X-Request-Id"])
            assert resp.headers["X-Request-Id"] != request_id
    assert server.stop() == 0
    entries = json_lines(server)
    for entry in entries:
        assert set(entry) <= KEYS, entry
        assert TS.match(entry["ts"]), entry
        assert entry["level"] in ("debug", "info", "warning", "error"), entry
        assert entry["logger"] and isinstance(entry["message"], str), entry
        assert not ("conn" in entry and "req" in entry), entry
    about_connection = [e for e in entries if session in e["message"]]
    assert len(about_connection) >= 2, entries  # opened and closed
    assert all(e.get("conn") == session for e in about_connection), about_connection
    [registered] = [e for e in entries if e["message"] == "registered user Logan"]
    assert registered["req"] == request_id and registered["logger"] == "roomcast.accounts"
    # A request anyone can send is one INFO line of roomcast's, without a traceback.
    [parse_error] = [e for e in entries if e["message"].startswith("refused a malformed request")]
    assert (parse_error["level"], parse_error["logger"]) == ("info", "roomcast.server")
    assert "exc" not in parse_error
    assert not [e for e in entries if e["logger"] == "aiohttp.server"]
    log = server.stderr()
    assert token not in log and token.rsplit(".", 1)[1] not in log and SECRET not in log


async def test_text_lines_name_the_connection(server_factory: ServerFactory) -> None:
    """By default lines are text as before, with [conn=SESSION] on the connection's lines."""
    server = server_factory()
    session = await session_of_one_connection(server)
    request_id = await register(server, "Tex")
    assert server.stop() == 0
    lines = server.stderr().splitlines()
    opened = [line for line in lines if f"connection {session} opened" in line]
    assert len(opened) == 1, lines
    assert re.match(
        rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}} INFO roomcast\.server \[conn={session}\]: ",
        opened[0],
    ), opened
    assert any(line.endswith(f"[req={request_id}]: registered user Tex") for line in lines), lines
