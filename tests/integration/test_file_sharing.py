"""File transfer over binary frames, and ``GET /files/{file_id}``, over real sockets.

alice, bob and carol are registered; files go to the lobby, a private room
or a direct message, and come back byte for byte over HTTP with the rules
of the message they came in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.integration.serverproc import ServerFactory, ServerProcess
from tests.integration.users import SECRET, call, create_team, sign_up, user_ws
from tests.integration.wsclient import RECV_TIMEOUT, recv_json, send_json

ALL_BYTES = bytes(range(256)) * 4096  # 1 MiB with every byte value


@pytest.fixture
async def server(server_factory: ServerFactory) -> ServerProcess:
    """A server with a known secret and no rate limit (files are big frames)."""
    return server_factory("--secret", SECRET, "--rate-limit", "0")


def file_frame(header: dict[str, Any], body: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    return len(encoded).to_bytes(4, "big") + encoded + body


async def until(ws: ClientConnection, kind: str, fid: str | None = None) -> dict[str, Any]:
    """The next frame of type ``kind`` (with id ``fid`` if given); fails on an error for fid."""
    async with asyncio.timeout(RECV_TIMEOUT):
        while True:
            frame = await recv_json(ws)
            if fid is not None and frame.get("id") == fid and frame["type"] == "error":
                raise AssertionError(f"refused: {frame}")
            if frame["type"] == kind and (fid is None or frame.get("id") == fid):
                return frame


async def fetch(
    server: ServerProcess,
    path: str,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    timeout = aiohttp.ClientTimeout(total=RECV_TIMEOUT * 2)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        async with http.get(server.http_url(path), headers=sent) as resp:
            return resp.status, dict(resp.headers), await resp.read()


def bare(url: str) -> str:
    """The file's path without its signature."""
    return url.split("?", 1)[0]


async def send_file(
    ws: ClientConnection, body: bytes, fid: str, **header: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Send a file; its own ``file`` message and the ack."""
    await ws.send(
        file_frame({"name": "f.bin", "mime": "application/octet-stream", "id": fid, **header}, body)
    )
    message = await until(ws, "file")
    ack = await until(ws, "ack", fid)
    return message, ack


async def test_a_1_mib_file_with_every_byte_value_round_trips(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """A 1 MiB file to the lobby reaches a member as a file message and downloads exactly."""
    alice, bob = await user_ws(server, tokens["alice"]), await user_ws(server, tokens["bob"])
    message, ack = await send_file(alice, ALL_BYTES, "f1", room="lobby", name="all.bin")
    payload = message["payload"]
    assert payload["room"] == "lobby" and payload["from"] == "alice"
    assert (payload["name"], payload["size"]) == ("all.bin", len(ALL_BYTES))
    assert ack["payload"]["message_id"] == payload["message_id"]
    assert ack["payload"]["seq"] == payload["seq"]
    seen = await until(bob, "file")
    assert seen["payload"]["message_id"] == payload["message_id"]
    status, headers, body = await fetch(server, payload["url"])  # the signed link
    assert status == 200 and body == ALL_BYTES
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Disposition"].startswith("attachment;")
    status, _, body = await fetch(server, bare(payload["url"]), token=tokens["carol"])
    assert status == 200 and body == ALL_BYTES
    await alice.close()
    await bob.close()


async def test_range_requests_and_images_inline(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """A Range request gets 206 and the slice; a PNG is served inline with its type."""
    alice = await user_ws(server, tokens["alice"])
    message, _ = await send_file(
        alice, ALL_BYTES[:1000], "img", room="lobby", name="p.png", mime="image/png"
    )
    url = message["payload"]["url"]
    status, headers, body = await fetch(server, url, headers={"Range": "bytes=10-19"})
    assert status == 206 and body == ALL_BYTES[10:20]
    status, headers, _ = await fetch(server, url)
    assert headers["Content-Type"] == "image/png"
    assert headers["Content-Disposition"].startswith("inline;")
    await alice.close()


async def test_a_file_over_the_limit_closes_1009_and_the_server_lives_on(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """A 9 MiB file closes that connection with 1009; another user still sends a file."""
    alice = await user_ws(server, tokens["alice"])
    big = file_frame({"room": "lobby", "name": "big", "mime": "x/y"}, b"\0" * (9 << 20))
    with contextlib.suppress(ConnectionClosed):  # the close may come while it is still sending
        await alice.send(big)
    await alice.wait_closed()
    assert alice.close_code == 1009
    bob = await user_ws(server, tokens["bob"])
    message, _ = await send_file(bob, b"still here", "after", room="lobby")
    assert message["payload"]["size"] == 10
    await bob.close()


async def test_a_private_rooms_file_is_403_for_an_outsider(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """A file in a private room: a member downloads it; an outsider's token gets 403, none 401."""
    await create_team(server, tokens)
    alice = await user_ws(server, tokens["alice"])
    await send_json(alice, "join", {"room": "team"}, id="j")
    await until(alice, "joined")
    message, _ = await send_file(alice, b"secret plans", "p1", room="team")
    path = bare(message["payload"]["url"])
    assert (await fetch(server, path, token=tokens["bob"]))[0] == 200
    status, headers, body = await fetch(server, path, token=tokens["carol"])
    assert status == 403 and json.loads(body)["error"]["code"] == "forbidden"
    assert (await fetch(server, path))[0] == 401
    forged = path + "?expires=99999999999&signature=AAAA"
    assert (await fetch(server, forged))[0] == 403
    await alice.close()


async def test_a_file_name_with_a_path_is_stored_and_served_safely(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """../../etc/passwd as a name: kept under files/ by content, named without slashes."""
    alice = await user_ws(server, tokens["alice"])
    message, _ = await send_file(
        alice, b"not a passwd", "n1", room="lobby", name="../../etc/passwd"
    )
    name = message["payload"]["name"]
    assert "/" not in name and not name.startswith(".")
    status, headers, body = await fetch(server, message["payload"]["url"])
    assert status == 200 and body == b"not a passwd"
    assert "/" not in headers["Content-Disposition"] and "%2F" not in headers["Content-Disposition"]
    stored = [p for p in Path(server.data_dir).rglob("*") if p.is_file() and p.read_bytes() == body]
    assert len(stored) == 1 and stored[0].parent.parent == Path(server.data_dir) / "files"
    await alice.close()


async def test_malformed_file_headers_are_invalid_message(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """A header not JSON, too short, or lying about its length: invalid_message, still open."""
    alice = await user_ws(server, tokens["alice"])
    for frame in (
        (5).to_bytes(4, "big") + b"{nope" + b"body",
        b"\x00\x00",
        (500).to_bytes(4, "big") + b'{"room":"lobby","name":"a","mime":"x/y"}',
    ):
        await alice.send(frame)
        error = await until(alice, "error")
        assert error["payload"]["code"] == "invalid_message", error
    message, _ = await send_file(alice, b"ok", "ok", room="lobby")
    assert message["payload"]["size"] == 2
    await alice.close()


async def test_a_resent_file_is_acked_again_and_not_sent_twice(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """One file id sent twice: one file message, two acks of one message_id, one in history."""
    alice = await user_ws(server, tokens["alice"])
    message, ack = await send_file(alice, b"once", "same", room="lobby")
    await alice.send(
        file_frame({"room": "lobby", "name": "f.bin", "mime": "x/y", "id": "same"}, b"once")
    )
    again = await until(alice, "ack", "same")
    assert again["payload"]["message_id"] == ack["payload"]["message_id"]
    status, body = await call(server, "GET", "/api/rooms/lobby/messages", bearer=tokens["bob"])
    assert status == 200
    files = [m for m in body["messages"] if m["type"] == "file"]
    assert [m["message_id"] for m in files] == [message["payload"]["message_id"]]
    assert (await fetch(server, files[0]["url"]))[2] == b"once"
    await alice.close()


async def test_a_direct_file_reaches_both_sides_and_no_one_else(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """A file to bob: alice and bob get it, bob downloads it with his token, carol gets 403."""
    alice, bob = await user_ws(server, tokens["alice"]), await user_ws(server, tokens["bob"])
    message, _ = await send_file(alice, b"for bob", "d1", to="bob")
    assert message["payload"]["to"] == "bob" and message["payload"]["from"] == "alice"
    received = await until(bob, "file")
    path = bare(received["payload"]["url"])
    assert (await fetch(server, path, token=tokens["bob"]))[2] == b"for bob"
    assert (await fetch(server, path, token=tokens["carol"]))[0] == 403
    await alice.close()
    await bob.close()


async def test_a_joiner_with_since_replays_file_messages(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """Resuming with since replays a file message with a working link, in seq order with chat."""
    alice = await user_ws(server, tokens["alice"])
    await send_json(alice, "chat", {"message": "before"}, id="c1")
    first = (await until(alice, "ack", "c1"))["payload"]["seq"]
    await send_file(alice, b"in between", "f2", room="lobby")
    await alice.close()
    bob = await user_ws(server, tokens["bob"])
    await send_json(bob, "join", {"room": "lobby", "since": first - 1}, id="j")
    chat = await until(bob, "chat")
    file = await until(bob, "file")
    assert chat["payload"]["seq"] + 1 == file["payload"]["seq"]
    assert (await fetch(server, file["payload"]["url"]))[2] == b"in between"
    await bob.close()


#: A name with every bidi control (embeddings, overrides, isolates, marks) between its letters.
BIDI_NAME = "".join(
    f"{letter}{control}"
    for letter, control in zip(
        "abcdefghijklm",
        "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c\u200b",
        strict=True,
    )
)


async def test_bidi_controls_in_a_file_name_never_reach_anyone(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """A name full of bidi and zero-width characters arrives, is kept and downloads without them."""
    alice, bob = await user_ws(server, tokens["alice"]), await user_ws(server, tokens["bob"])
    message, _ = await send_file(
        alice, b"looks like a pdf", "b1", room="lobby", name=f"invoice\u202efdp.{BIDI_NAME}.exe"
    )
    expected = "invoicefdp.abcdefghijklm.exe"
    assert message["payload"]["name"] == expected
    received = await until(bob, "file")
    assert received["payload"]["name"] == expected
    _, headers, _ = await fetch(server, received["payload"]["url"])
    disposition = headers["Content-Disposition"]
    assert expected in disposition and "%E2%80" not in disposition and "%D8%9C" not in disposition
    await send_json(bob, "history", {"room": "lobby"}, id="h")
    page = await until(bob, "history", "h")
    assert [m["name"] for m in page["payload"]["messages"] if "name" in m] == [expected]
    await alice.close()
    await bob.close()


async def refusal(ws: ClientConnection, fid: str) -> dict[str, Any]:
    """The error frame answering ``fid`` (anything else for it fails the test)."""
    async with asyncio.timeout(RECV_TIMEOUT):
        while True:
            frame = await recv_json(ws)
            if frame.get("id") == fid:
                assert frame["type"] == "error", frame
                return frame


async def test_the_upload_quota_refuses_what_passes_it(server_factory: ServerFactory) -> None:
    """Past ``--upload-quota`` bytes in 24 h a user's file is ``quota_exceeded``; others go on."""
    server = server_factory("--secret", SECRET, "--rate-limit", "0", "--upload-quota", "50000")
    alice = await user_ws(server, await sign_up(server, "alice"), max_size=None)
    bob = await user_ws(server, await sign_up(server, "bob"), max_size=None)
    header = {"room": "lobby", "name": "a.bin", "mime": "application/octet-stream"}
    await alice.send(file_frame({**header, "id": "f1"}, b"a" * 30000))
    await until(alice, "ack", "f1")
    await alice.send(file_frame({**header, "id": "f2"}, b"b" * 30000))
    refused = await refusal(alice, "f2")
    assert refused["payload"]["code"] == "quota_exceeded", refused
    # The quota is alice's: bob still sends.
    await bob.send(file_frame({**header, "id": "g1"}, b"c" * 30000))
    await until(bob, "ack", "g1")
    for ws in (alice, bob):
        await ws.close()


async def test_the_files_quota_refuses_new_files_for_everyone(
    server_factory: ServerFactory,
) -> None:
    """Past ``--files-quota`` bytes kept in all, a new file is ``quota_exceeded``."""
    server = server_factory("--secret", SECRET, "--rate-limit", "0", "--files-quota", "50000")
    alice = await user_ws(server, await sign_up(server, "alice"), max_size=None)
    header = {"room": "lobby", "name": "a.bin", "mime": "application/octet-stream"}
    await alice.send(file_frame({**header, "id": "f1"}, b"a" * 40000))
    await until(alice, "ack", "f1")
    await alice.send(file_frame({**header, "id": "f2"}, b"b" * 40000))
    refused = await refusal(alice, "f2")
    assert refused["payload"]["code"] == "quota_exceeded", refused
    await alice.close()
