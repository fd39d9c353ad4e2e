"""Accounts and tokens over real sockets: register, login, tokens on WebSocket and HTTP.

Every test runs the real server with a known ``--secret``, so tests can mint
their own tokens with PyJWT (forged, expired, short-lived) next to the ones
``/api/login`` issues.
"""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.integration.serverproc import ServerFactory, ServerProcess
from tests.integration.users import (
    PASSWORD,
    SECRET,
    auth,
    bearer,
    call,
    closed_with,
    expect_pong,
    login,
    mint,
    register,
    session_token,
)
from tests.integration.wsclient import RECV_TIMEOUT, recv_json, recv_type, send_json, welcome

ISO_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


@pytest.fixture
async def server(server_factory: ServerFactory) -> ServerProcess:
    """A server with a known secret and the registered user Alice."""
    server = server_factory("--secret", SECRET)
    await register(server, "Alice")
    return server


# -- registration -----------------------------------------------------------------


async def test_register_answers_201_with_the_user(server: ServerProcess) -> None:
    """POST /api/register with a good name and password is 201 {"user": {"name"}}."""
    status, body = await call(
        server, "POST", "/api/register", json={"username": "bob_2", "password": PASSWORD}
    )
    assert (status, body) == (201, {"user": {"name": "bob_2"}})


@pytest.mark.parametrize("name", ["Alice", "alice", "ALICE"])
async def test_register_a_taken_name_in_any_case_is_409(server: ServerProcess, name: str) -> None:
    """A name registered already, in any letter case, is 409 name_taken."""
    status, body = await call(
        server, "POST", "/api/register", json={"username": name, "password": PASSWORD}
    )
    assert status == 409
    assert body["error"]["code"] == "name_taken"


@pytest.mark.parametrize("name", ["ab", "a b", "guest-abc", "Guest-1234", "-dash", "x" * 33, 42])
async def test_register_refuses_bad_usernames(server: ServerProcess, name: object) -> None:
    """Too short, spaces, a guest- prefix, a leading dash, too long, not a string: 400."""
    status, body = await call(
        server, "POST", "/api/register", json={"username": name, "password": PASSWORD}
    )
    assert status == 400
    assert body["error"]["code"] == "invalid_message"


@pytest.mark.parametrize("password", ["", "short", "7chars!", None])
async def test_register_refuses_short_passwords(server: ServerProcess, password: object) -> None:
    """A password shorter than 8 characters (or missing) is 400 invalid_message."""
    status, body = await call(
        server, "POST", "/api/register", json={"username": "dave", "password": password}
    )
    assert status == 400
    assert body["error"]["code"] == "invalid_message"
    status, _ = await call(server, "POST", "/api/login", json={"username": "dave", "password": ""})
    assert status == 401  # nothing was registered


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"", "invalid_json"),
        (b'["dave", "correct horse battery"]', "invalid_message"),
        (b'"dave"', "invalid_message"),
    ],
    ids=["broken", "empty", "list", "string"],
)
async def test_register_needs_a_json_object(server: ServerProcess, raw: bytes, code: str) -> None:
    """A body that is not JSON is 400 invalid_json; JSON that is not an object is 400."""
    status, body = await call(server, "POST", "/api/register", data=raw)
    assert status == 400
    assert body["error"]["code"] == code


# -- login ------------------------------------------------------------------------


async def test_login_returns_a_token_and_the_name_as_registered(server: ServerProcess) -> None:
    """Logging in as ALICE gives a 15-minute token, a refresh token, ISO expiries and Alice."""
    status, body = await call(
        server, "POST", "/api/login", json={"username": "ALICE", "password": PASSWORD}
    )
    assert status == 200
    assert set(body) == {"token", "expires_at", "refresh_token", "refresh_expires_at", "user"}
    assert body["user"] == {"name": "Alice", "admin": False}
    assert isinstance(body["token"], str) and body["token"].count(".") == 2
    assert ISO_Z.fullmatch(body["expires_at"]), body["expires_at"]
    assert ISO_Z.fullmatch(body["refresh_expires_at"]), body["refresh_expires_at"]
    claims = jwt.decode(body["token"], SECRET, algorithms=["HS256"], audience="roomcast")
    assert claims["sub"] == "Alice"
    assert time.time() + 800 < claims["exp"] <= time.time() + 900
    assert body["refresh_token"].startswith(claims["sid"] + ".")


async def test_wrong_password_and_unknown_user_look_the_same(server: ServerProcess) -> None:
    """A wrong password and an unknown user are both 401 with byte-identical bodies."""
    status_a, body_a = await call(
        server, "POST", "/api/login", json={"username": "Alice", "password": "wrong password"}
    )
    status_b, body_b = await call(
        server, "POST", "/api/login", json={"username": "nobody", "password": "wrong password"}
    )
    assert status_a == status_b == 401
    assert body_a == body_b
    assert body_a["error"]["code"] == "auth_failed"


# -- tokens on WebSocket ------------------------------------------------------------


async def test_login_token_authenticates_a_websocket(server: ServerProcess) -> None:
    """auth with a login token makes the guest connection the registered user."""
    token = await login(server, "alice")
    async with connect(server.ws_url()) as ws:
        system, _ = await welcome(ws)
        assert system["payload"]["user"]["guest"] is True
        ok = await auth(ws, token)
        assert ok["type"] == "auth"
        assert ok["payload"] == {"ok": True, "user": {"name": "Alice", "guest": False}}
        await send_json(ws, "chat", {"message": "hi"}, id="c1")
        chat = await recv_type(ws, "chat")
        assert chat["payload"]["from"] == "Alice"


async def test_bearer_token_on_the_handshake_signs_in(server: ServerProcess) -> None:
    """With Authorization: Bearer on the handshake, the welcome already names the user."""
    token = await login(server, "Alice")
    async with connect(server.ws_url(), additional_headers=bearer(token)) as ws:
        system, joined = await welcome(ws)
        assert system["payload"]["user"] == {"name": "Alice", "guest": False}
        assert joined["payload"]["room"] == "lobby"
        assert joined["payload"]["members"] == ["Alice"]


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        mint("Alice", key="another-key-" + "z" * 40),
        mint("Alice", exp=int(time.time()) - 5),
        mint("nobody"),
    ],
    ids=["garbage", "forged", "expired", "unknown-user"],
)
async def test_bad_bearer_on_the_handshake_is_401_before_upgrade(
    server: ServerProcess, token: str
) -> None:
    """A bad Bearer token on the handshake is answered 401 JSON, never upgraded."""
    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
        **bearer(token),
    }
    timeout = aiohttp.ClientTimeout(total=RECV_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        async with http.get(server.http_url("/ws"), headers=headers) as resp:
            assert resp.status == 401
            assert resp.content_type == "application/json"
            body = await resp.json()
    assert body["error"]["code"] == "auth_failed"
    with pytest.raises(InvalidStatus) as info:
        async with connect(server.ws_url(), additional_headers=bearer(token), open_timeout=5):
            pass
    assert info.value.response.status_code == 401


BAD_TOKENS = {
    "forged": lambda: mint("Alice", key="another-key-" + "z" * 40),
    "expired": lambda: mint("Alice", iat=int(time.time()) - 100, exp=int(time.time()) - 10),
    "alg-none": lambda: mint("Alice", algorithm="none"),
    "audience": lambda: mint("Alice", aud="somebody-else"),
    "issuer": lambda: mint("Alice", iss="somebody-else"),
}


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
async def test_bad_token_over_auth_fails(server: ServerProcess, kind: str) -> None:
    """A forged, expired, alg none, wrong-audience or wrong-issuer token: auth_failed, open."""
    async with connect(server.ws_url()) as ws:
        system, _ = await welcome(ws)
        failed = await auth(ws, BAD_TOKENS[kind]())
        assert failed["type"] == "error"
        assert failed["payload"]["code"] == "auth_failed"
        await expect_pong(ws, "still-open")  # one failure does not close
        await send_json(ws, "chat", {"message": "who am I"})
        chat = await recv_type(ws, "chat")
        assert chat["payload"]["from"] == system["payload"]["user"]["name"]


async def test_third_failed_auth_closes_with_1008(server: ServerProcess) -> None:
    """Forged, expired, then alg none: three auth_failed errors, then a 1008 close."""
    async with connect(server.ws_url()) as ws:
        await welcome(ws)
        for i, kind in enumerate(["forged", "expired", "alg-none"]):
            failed = await auth(ws, BAD_TOKENS[kind](), fid=f"a{i}")
            assert failed["type"] == "error"
            assert failed["payload"]["code"] == "auth_failed"
        assert (await closed_with(ws))[0] == 1008


async def test_a_guest_cannot_take_a_registered_name(server: ServerProcess) -> None:
    """auth {"guest": "alice"} while Alice is registered is auth_failed."""
    async with connect(server.ws_url()) as ws:
        await welcome(ws)
        for fid, name in (("g1", "alice"), ("g2", "Alice")):
            await send_json(ws, "auth", {"guest": name}, id=fid)
            failed = await recv_type(ws, "error")
            assert failed["id"] == fid
            assert failed["payload"]["code"] == "auth_failed"
        await send_json(ws, "auth", {"guest": "zelda"}, id="g3")
        ok = await recv_type(ws, "auth")
        assert ok["payload"]["user"] == {"name": "zelda", "guest": True}


async def test_expired_token_asks_for_a_fresh_one_then_keeps_going(server: ServerProcess) -> None:
    """A 3 s token brings token_expired within ~5 s; a fresh token's auth keeps it open."""
    async with connect(server.ws_url()) as ws:
        await welcome(ws)
        started = time.monotonic()
        short = await session_token(server, "Alice", exp=int(time.time()) + 3)
        ok = await auth(ws, short, fid="short")
        assert ok["type"] == "auth", ok
        expired = await recv_type(ws, "error", timeout=6.0)
        waited = time.monotonic() - started
        assert expired["payload"]["code"] == "token_expired"
        assert "id" not in expired
        assert 1.0 <= waited <= 5.5, f"token_expired after {waited:.1f} s"
        ok = await auth(ws, await login(server, "Alice"), fid="fresh")
        assert ok["type"] == "auth", ok
        assert ok["payload"] == {"ok": True, "user": {"name": "Alice", "guest": False}}
        await asyncio.sleep(1.0)
        await expect_pong(ws, "after")
        await send_json(ws, "chat", {"message": "still here"}, id="c")
        chat = await recv_type(ws, "chat")
        assert chat["payload"]["from"] == "Alice"


# -- --no-guests -------------------------------------------------------------------


async def test_no_guests_needs_auth_before_anything(server_factory: ServerFactory) -> None:
    """With --no-guests a connection has no user: chat is forbidden, ping works, guests fail."""
    server = server_factory("--secret", SECRET, "--no-guests")
    async with connect(server.ws_url()) as ws:
        system = await recv_json(ws)
        assert system["type"] == "system"
        assert system["payload"]["user"] == {"name": "", "guest": False}
        await send_json(ws, "chat", {"message": "hello?"}, id="c1")
        refused = await recv_json(ws)
        assert refused["type"] == "error" and refused["id"] == "c1"  # no lobby joined before
        assert refused["payload"]["code"] == "forbidden"
        assert refused["payload"]["message"] == "authenticate first"
        await expect_pong(ws, "p1")
        await send_json(ws, "auth", {"guest": "zelda"}, id="g")
        failed = await recv_json(ws)
        assert failed["type"] == "error" and failed["id"] == "g"
        assert failed["payload"]["code"] == "auth_failed"


async def test_no_guests_closes_the_unauthenticated_not_the_signed_in(
    server_factory: ServerFactory,
) -> None:
    """With --no-guests a silent connection is closed 1008 after ~10 s; one that auths stays."""
    server = server_factory("--secret", SECRET, "--no-guests")
    await register(server, "Alice")
    token = await login(server, "Alice")
    async with connect(server.ws_url()) as silent, connect(server.ws_url()) as member:
        started = time.monotonic()
        assert (await recv_json(silent))["type"] == "system"
        assert (await recv_json(member))["type"] == "system"
        ok = await auth(member, token)
        assert ok["payload"] == {"ok": True, "user": {"name": "Alice", "guest": False}}
        joined = await recv_json(member)
        assert joined["type"] == "joined"
        assert joined["payload"]["room"] == "lobby"
        assert (await closed_with(silent, timeout=15.0))[0] == 1008
        waited = time.monotonic() - started
        assert 8.5 <= waited <= 15.0, f"closed after {waited:.1f} s"
        await asyncio.sleep(0.5)
        await expect_pong(member, "alive")
        await send_json(member, "chat", {"message": "made it"}, id="c")
        chat = await recv_type(member, "chat")
        assert chat["payload"]["from"] == "Alice"


# -- secrets stay out of the logs ----------------------------------------------------


async def test_tokens_and_passwords_are_never_logged(server_factory: ServerFactory) -> None:
    """After tokens are used over HTTP, WS auth and the handshake, stderr holds none of them."""
    server = server_factory("--secret", SECRET, "--log-level", "debug")
    password = "s3cret-Password-" + "q" * 8
    await register(server, "Logan", password)
    token = await login(server, "Logan", password)
    wrong = "Wrong-" + password
    status, _ = await call(
        server, "POST", "/api/login", json={"username": "Logan", "password": wrong}
    )
    assert status == 401
    status, _ = await call(server, "GET", "/api/rooms", bearer=token)
    assert status == 200
    status, _ = await call(server, "GET", "/api/rooms/lobby/messages", bearer=token)
    assert status == 200
    forged = mint("Logan", key="another-key-" + "z" * 40)
    status, _ = await call(server, "GET", "/api/rooms", bearer=forged)
    assert status == 401
    async with connect(server.ws_url()) as ws:
        await welcome(ws)
        assert (await auth(ws, forged, fid="bad"))["type"] == "error"
        assert (await auth(ws, token))["type"] == "auth"
    async with connect(server.ws_url(), additional_headers=bearer(token)) as ws:
        await welcome(ws)
    server.stop()  # everything it logged is on disk
    log = server.stderr()
    assert "registered user Logan" in log  # it does log, just not secrets
    for secret in (token, forged, password, wrong, SECRET):
        assert secret not in log
    # Nor the signature part alone (the part that makes a token usable).
    assert token.rsplit(".", 1)[1] not in log


# -- throttles: per account, per address, behind a trusted proxy ----------------------


async def post_from(
    server: ServerProcess, path: str, body: dict[str, str], forwarded_for: str | None = None
) -> tuple[int, str, str | None]:
    """POST ``body`` as JSON, forwarded for ``forwarded_for``: status, error code, Retry-After."""
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for is not None else {}
    timeout = aiohttp.ClientTimeout(total=RECV_TIMEOUT * 2)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        async with http.post(server.http_url(path), json=body, headers=headers) as resp:
            answer = await resp.json()
            code = answer["error"]["code"] if "error" in answer else ""
            return resp.status, code, resp.headers.get("Retry-After")


async def test_guesses_from_many_addresses_are_throttled_yet_the_owner_gets_in(
    server_factory: ServerFactory,
) -> None:
    """Failures count per account over all addresses; the owner's address is not locked out."""
    server = server_factory("--secret", SECRET, "--trusted-proxy", "127.0.0.1")
    await register(server, "Alice")
    own, right = "198.51.100.1", {"username": "alice", "password": PASSWORD}
    assert (await post_from(server, "/api/login", right, own))[0] == 200
    guesses = [
        await post_from(server, "/api/login", {"username": "ALICE", "password": f"guess {i}"}, ip)
        for i, ip in enumerate(f"203.0.113.{n}" for n in range(1, 8))
    ]
    assert [status for status, _, _ in guesses] == [401] * 5 + [429] * 2
    assert all(code == "rate_limited" and int(retry or 0) >= 1 for _, code, retry in guesses[5:])
    # The owner, from where she signed in before, is not held up by the guesser ...
    assert (await post_from(server, "/api/login", right, own))[0] == 200
    # ... and her success starts the count afresh for everyone.
    wrong = {"username": "alice", "password": "one more guess"}
    assert (await post_from(server, "/api/login", wrong, "203.0.113.99"))[0] == 401


async def test_a_flood_of_cheap_logins_does_not_reset_an_accounts_throttle(
    server: ServerProcess,
) -> None:
    """10,001 logins with names no account can have do not wipe an account's failure count."""
    wrong = {"username": "Alice", "password": "not the password"}
    statuses = [(await post_from(server, "/api/login", wrong))[0] for _ in range(6)]
    assert statuses == [401] * 5 + [429]
    throttled_at = time.monotonic()
    body = b'{"username":"%s","password":"x"}'
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for batch in range(11):  # pipelined, 1,000 requests a write
            requests = []
            for i in range(batch * 1000, min((batch + 1) * 1000, 10_001)):
                payload = body % (b"n%064d" % i)  # 65 characters: refused unhashed
                requests.append(
                    b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
                )
            writer.write(b"".join(requests))
            await writer.drain()
            for _ in requests:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), RECV_TIMEOUT)
                assert head.startswith(b"HTTP/1.1 401"), head
                length = int(re.search(rb"Content-Length: (\d+)", head)[1])  # type: ignore[index]
                await reader.readexactly(length)
    finally:
        writer.close()
    # Past the first wait (1 s) one more attempt is let through; the count,
    # had it been forgotten, would let five through.
    await asyncio.sleep(max(0.0, throttled_at + 1.1 - time.monotonic()))
    statuses = [(await post_from(server, "/api/login", wrong))[0] for _ in range(2)]
    assert statuses == [401, 429]


async def test_sign_ups_are_limited_per_address(server_factory: ServerFactory) -> None:
    """10 sign-ups an address, then 429 with Retry-After; others unaffected, invalid ones free."""
    server = server_factory("--trusted-proxy", "127.0.0.1")
    here, there = "198.51.100.20", "2001:db8:1:2::7"
    for n in range(10):
        body = {"username": f"user{n}", "password": PASSWORD}
        assert (await post_from(server, "/api/register", body, here))[0] == 201
    status, code, retry = await post_from(
        server, "/api/register", {"username": "user10", "password": PASSWORD}, here
    )
    assert (status, code) == (429, "rate_limited") and int(retry or 0) >= 1
    bad = {"username": "user11", "password": "short"}
    assert (await post_from(server, "/api/register", bad, here))[:2] == (400, "invalid_message")
    body = {"username": "user12", "password": PASSWORD}
    assert (await post_from(server, "/api/register", body, there))[0] == 201


async def test_x_forwarded_for_from_an_untrusted_peer_changes_nothing(
    server_factory: ServerFactory,
) -> None:
    """Without --trusted-proxy a made-up X-Forwarded-For does not escape the sign-up limit."""
    server = server_factory()
    statuses = [
        (
            await post_from(
                server,
                "/api/register",
                {"username": f"spoof{n}", "password": PASSWORD},
                f"192.0.2.{n}",
            )
        )[0]
        for n in range(11)
    ]
    assert statuses == [201] * 10 + [429]
    assert server.stop() == 0
    assert "give it --trusted-proxy" in server.stderr()  # the operator is told, once
