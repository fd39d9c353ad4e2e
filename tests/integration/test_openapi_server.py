"""The OpenAPI document against a real server: each operation's happy path, then a
schemathesis run over every operation, each answer checked against the document."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from importlib import resources
from typing import Any

import aiohttp
import jsonschema_rs
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.admins import create_admin
from tests.integration.serverproc import ServerProcess
from tests.integration.test_file_sharing import send_file
from tests.integration.users import PASSWORD, register, sign_up, user_ws
from tests.integration.wsclient import RECV_TIMEOUT, ask

#: What the fuzzer checks of every answer.
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]
#: Examples per operation and generation mode: about 800 requests over 50 operations,
#: 12 to 18 s on 2 cores (docs/design.md, "The HTTP API as OpenAPI 3.1"). Larger runs
#: (60 and 40) found nothing more.
EXAMPLES = {GenerationMode.POSITIVE: 8, GenerationMode.NEGATIVE: 4}
#: Operations that end the caller's session or account: each gets an account of its own.
OWN_ACCOUNT = {"logout": "quitter", "change_password": "changer", "delete_me": "leaver"}
#: The admin the fuzzer's admin operations run as, and the member everything else runs as.
ADMIN, MEMBER = "root", "fuzzer"
#: Not fuzzed: its answer is a stream that lasts as long as the client reads it (the happy
#: path opens one, and the fuzzer POSTs to streams).
ENDLESS = frozenset({"open_events"})
#: Operations not run a second time on the seeded room, message and user: they would erase
#: them for the operations after (the random names of the first run reach them anyway).
UNSEEDED = frozenset({"delete_room", "admin_delete_room", "admin_delete_user"})


def document() -> dict[str, Any]:
    """The document as the package ships it."""
    text = resources.files("roomcast.web").joinpath("openapi.json").read_text()
    return json.loads(text)  # type: ignore[no-any-return]


DOC = document()


def operation_of(method: str, template: str) -> dict[str, Any]:
    return DOC["paths"][template][method.lower()]  # type: ignore[no-any-return]


def check_answer(method: str, template: str, status: int, content_type: str, body: bytes) -> None:
    """The answer is one the document describes: its status, media type and schema."""
    responses = operation_of(method, template)["responses"]
    assert str(status) in responses, f"{method} {template}: {status} is not documented"
    answer = responses[str(status)]
    if "$ref" in answer:
        answer = DOC["components"]["responses"][answer["$ref"].rsplit("/", 1)[1]]
    content = answer.get("content")
    if not content:
        assert body == b"", f"{method} {template}: {status} should have no body"
        return
    assert content_type in content or "*/*" in content, (method, template, content_type)
    if content_type == "application/json":
        schema = {"allOf": [content[content_type]["schema"]], "components": DOC["components"]}
        jsonschema_rs.Draft202012Validator(schema).validate(json.loads(body))


class Caller:
    """Calls the server as named users, checking every answer against the document."""

    def __init__(self, server: ServerProcess, http: aiohttp.ClientSession) -> None:
        self.server = server
        self.http = http
        #: Tokens by user name.
        self.tokens: dict[str, str] = {}
        #: The operations called, as (METHOD, path template).
        self.called: set[tuple[str, str]] = set()

    async def __call__(
        self,
        who: str | None,
        method: str,
        template: str,
        status: int,
        body: Any = None,
        headers: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
        **path: str,
    ) -> Any:
        """``method template`` (filled with ``path``, with ``query``) as ``who``; its JSON,
        or its bytes."""
        sent = dict(headers or {})
        if who is not None:
            sent["Authorization"] = f"Bearer {self.tokens[who]}"
        url = self.server.http_url(template.format(**path))
        async with self.http.request(method, url, json=body, headers=sent, params=query) as resp:
            raw = await resp.read()
            assert resp.status == status, (method, url, resp.status, raw[:300])
            check_answer(method, template, resp.status, resp.content_type, raw)
            self.called.add((method, template))
            return json.loads(raw) if resp.content_type == "application/json" else raw


@pytest.fixture
async def people(server: ServerProcess) -> dict[str, str]:
    """The fuzzer's member and admin, an account for each session-ending call, and bob:
    their tokens."""
    names = [MEMBER, ADMIN, "bob", *OWN_ACCOUNT.values()]
    await register(server, ADMIN)
    await create_admin(server.data_dir, ADMIN)
    tokens = await asyncio.gather(*(sign_up(server, n) for n in names if n != ADMIN))
    signed = dict(zip([n for n in names if n != ADMIN], tokens, strict=True))
    async with aiohttp.ClientSession() as http:
        body = {"username": ADMIN, "password": PASSWORD}
        async with http.post(server.http_url("/api/login"), json=body) as resp:
            signed[ADMIN] = (await resp.json())["token"]
    return signed


async def test_every_operation_answers_as_documented(
    server: ServerProcess, people: dict[str, str]
) -> None:
    """A happy path through every documented operation; each answer fits the document."""
    timeout = aiohttp.ClientTimeout(total=RECV_TIMEOUT * 2)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        call = Caller(server, http)
        call.tokens.update(people)
        await service_routes(call)
        await account_routes(call)
        await room_routes(call)
        await message_routes(call, server)
        await admin_routes(call)
        await event_routes(call)
    assert call.called == {
        (method.upper(), path) for path, item in DOC["paths"].items() for method in item
    }
    assert "Traceback" not in server.stderr()


async def service_routes(call: Caller) -> None:
    """The page, its files, health, readiness, metrics, this document, and /ws unupgraded."""
    assert b"<html" in (await call(None, "GET", "/", 200)).lower()
    await call(None, "GET", "/static/{name}", 200, name="client.js")
    await call(None, "GET", "/static/{name}", 404, name="nothing.js")
    await call(None, "GET", "/health", 200)
    assert (await call(None, "GET", "/ready", 200))["ready"] is True
    assert b"roomcast_connections" in await call(None, "GET", "/metrics", 200)
    assert await call(None, "GET", "/api/openapi.json", 200) == DOC
    assert (await call(None, "GET", "/ws", 400))["error"]["code"] == "bad_request"


async def account_routes(call: Caller) -> None:
    """Sign-up, login, refresh, me, settings, password, logout and deleting an account."""
    pw = {"username": "newbie", "password": PASSWORD}
    await call(None, "POST", "/api/register", 201, pw)
    await call(None, "POST", "/api/register", 409, pw)
    signed = await call(None, "POST", "/api/login", 200, pw)
    await call(None, "POST", "/api/login", 401, {**pw, "password": "wrong password"})
    renewed = await call(
        None, "POST", "/api/refresh", 200, {"refresh_token": signed["refresh_token"]}
    )
    call.tokens["newbie"] = renewed["token"]
    assert (await call("newbie", "GET", "/api/me", 200))["user"]["name"] == "newbie"
    await call(None, "GET", "/api/me", 401)
    assert await call("newbie", "GET", "/api/me/settings", 200) == {"hide_receipts": False}
    await call("newbie", "PUT", "/api/me/settings", 200, {"hide_receipts": True})
    await call("newbie", "PUT", "/api/me/settings", 400, {"hide_receipts": True, "x": 1})
    new = {"old": PASSWORD, "new": "another password"}
    assert await call("newbie", "POST", "/api/password", 200, new) == {"revoked": 0}
    await call("newbie", "POST", "/api/logout", 204, {"everywhere": True})
    await call("newbie", "GET", "/api/me", 401)
    signed = await call(None, "POST", "/api/login", 200, {**pw, "password": new["new"]})
    call.tokens["newbie"] = signed["token"]
    await call("newbie", "DELETE", "/api/me", 401, {"password": PASSWORD})
    await call("newbie", "DELETE", "/api/me", 204, {"password": new["new"]})


async def room_routes(call: Caller) -> None:
    """Rooms, their settings, members, moderators, bans, mutes and audit log."""
    room = {"room": "den"}
    body = {"name": "den", "private": True, "members": ["bob"]}
    created = await call(MEMBER, "POST", "/api/rooms", 201, body)
    assert created["room"]["members"] == ["bob"]
    await call(MEMBER, "POST", "/api/rooms", 409, body)
    await call(MEMBER, "POST", "/api/rooms", 201, {"name": "open", "private": False})
    listed = await call(None, "GET", "/api/rooms", 200)
    assert "den" not in [r["name"] for r in listed["rooms"]]
    await call(MEMBER, "GET", "/api/rooms", 200)
    await call(MEMBER, "POST", "/api/rooms/{room}/members", 200, {"members": ["quitter"]}, **room)
    await call("changer", "GET", "/api/rooms/{room}", 404, **room)
    view = await call(MEMBER, "GET", "/api/rooms/{room}", 200, **room)
    assert view["room"]["role"] == "owner" and view["room"]["bans"] == []
    await call(MEMBER, "PATCH", "/api/rooms/{room}", 200, {"topic": "t", "slow_mode": 0}, **room)
    await call(MEMBER, "PATCH", "/api/rooms/{room}", 400, {"color": "red"}, **room)
    both = {**room, "user": "bob"}
    await call(MEMBER, "PUT", "/api/rooms/{room}/moderators/{user}", 200, **both)
    await call(MEMBER, "DELETE", "/api/rooms/{room}/moderators/{user}", 200, **both)
    await call(MEMBER, "PUT", "/api/rooms/{room}/mutes/{user}", 200, {"for": 60}, **both)
    await call(MEMBER, "PUT", "/api/rooms/{room}/mutes/{user}", 400, {}, **both)
    await call(MEMBER, "DELETE", "/api/rooms/{room}/mutes/{user}", 204, **both)
    ban = {"for": 60, "reason": "spam"}
    await call(MEMBER, "PUT", "/api/rooms/{room}/bans/{user}", 200, ban, **both)
    await call("bob", "GET", "/api/rooms/{room}", 403, **room)
    await call(MEMBER, "DELETE", "/api/rooms/{room}/bans/{user}", 204, **both)
    await call(MEMBER, "DELETE", "/api/rooms/{room}/bans/{user}", 404, **both)
    quitter = {**room, "user": "quitter"}
    await call(
        MEMBER, "DELETE", "/api/rooms/{room}/members/{user}", 204, {"reason": "x"}, **quitter
    )
    audit = await call(MEMBER, "GET", "/api/rooms/{room}/audit", 200, **room)
    assert audit["entries"] and audit["entries"][0]["action"] == "remove"
    await call("bob", "GET", "/api/rooms/{room}/audit", 403, **room)
    await call(MEMBER, "DELETE", "/api/rooms/{room}", 204, room="open")
    await call(MEMBER, "DELETE", "/api/rooms/{room}", 403, room="open")


async def message_routes(call: Caller, server: ServerProcess) -> None:
    """Posting, history, changes, direct messages, unread, search and files."""
    room = {"room": "den"}
    sent = await call(MEMBER, "POST", "/api/rooms/{room}/messages", 201, {"message": "hi"}, **room)
    reply = {"message": "hello there", "reply_to": sent["message_id"], "id": "c1"}
    await call("bob", "POST", "/api/rooms/{room}/messages", 201, reply, **room)
    page = await call(MEMBER, "GET", "/api/rooms/{room}/messages", 200, **room)
    assert [m["type"] for m in page["messages"]][-2:] == ["chat", "chat"]
    both = {"before": "1", "around": "1"}
    await call(MEMBER, "GET", "/api/rooms/{room}/messages", 400, query=both, **room)
    mid = {"message_id": sent["message_id"]}
    await call(MEMBER, "PATCH", "/api/messages/{message_id}", 200, {"message": "hi!"}, **mid)
    await call("bob", "PATCH", "/api/messages/{message_id}", 403, {"message": "no"}, **mid)
    emoji = {**mid, "emoji": "%F0%9F%91%8D"}
    key = {"Idempotency-Key": "r1"}
    await call(
        "bob", "PUT", "/api/messages/{message_id}/reactions/{emoji}", 200, None, key, **emoji
    )
    # The fuzzer's find: a chat under the reaction's key was a 500 (not a chat); now a 400.
    reused = await call(
        "bob", "POST", "/api/rooms/{room}/messages", 400, {"message": "x", "id": "r1"}, **room
    )
    assert reused["error"]["code"] == "invalid_message"
    await call("bob", "DELETE", "/api/messages/{message_id}/reactions/{emoji}", 200, **emoji)
    await call(MEMBER, "DELETE", "/api/messages/{message_id}", 200, **mid)
    await call(MEMBER, "DELETE", "/api/messages/{message_id}", 404, message_id="nope")
    history = await call(MEMBER, "GET", "/api/rooms/{room}/messages", 200, **room)
    assert any(m.get("deleted") for m in history["messages"])
    ws = await user_ws(server, call.tokens["bob"])
    assert (await ask(ws, "join", {"room": "den"}, "j1"))["type"] == "joined"
    message, _ = await send_file(
        ws, b"\x89PNG" + bytes(60), "f1", room="den", name="p.png", mime="image/png"
    )
    await ws.close()
    file_id = {"file_id": message["payload"]["message_id"]}
    assert (await call(MEMBER, "GET", "/files/{file_id}", 200, **file_id)).startswith(b"\x89PNG")
    await call("changer", "GET", "/files/{file_id}", 403, **file_id)
    await call(MEMBER, "GET", "/files/{file_id}", 404, file_id="0" * 20)
    peer = {"with": "bob", "before": "5"}
    direct = await call(MEMBER, "GET", "/api/direct/messages", 200, query=peer)
    assert direct["messages"] == [] and direct["has_more"] is False
    await call(MEMBER, "GET", "/api/direct/messages", 400, query={"since": "0", "with": "bob"})
    unread = await call(MEMBER, "GET", "/api/unread", 200)
    assert [r for r in unread["rooms"] if r["room"] == "den"][0]["unread"] >= 1
    found = await call(MEMBER, "GET", "/api/search", 200, query={"q": "hello", "room": "den"})
    assert found["results"][0]["from"] == "bob"
    await call(MEMBER, "GET", "/api/search", 400, query={"q": "hello", "direct": "maybe"})


async def admin_routes(call: Caller) -> None:
    """Every /api/admin/ route as an admin, and one as a member (403)."""
    await call(MEMBER, "GET", "/api/admin/rooms", 403)
    rooms = await call(ADMIN, "GET", "/api/admin/rooms", 200)
    assert "den" in [r["name"] for r in rooms["rooms"]]
    await call(ADMIN, "GET", "/api/admin/users/{user}", 200, user="BOB")
    await call(ADMIN, "GET", "/api/admin/users/{user}", 404, user="nobody")
    ban = await call(ADMIN, "PUT", "/api/admin/users/{user}/ban", 200, {"for": 60}, user="bob")
    assert ban["ban"]["user"] == "bob" and ban["ban"]["until"]
    banned = await call(ADMIN, "GET", "/api/admin/users/{user}", 200, user="bob")
    assert banned["user"]["banned_until"] == ban["ban"]["until"]
    await call(ADMIN, "DELETE", "/api/admin/users/{user}/ban", 204, user="bob")
    given = {"password": "a brand new one"}
    reset = await call(ADMIN, "POST", "/api/admin/users/{user}/password", 200, given, user="bob")
    assert reset == given
    await call(ADMIN, "PUT", "/api/admin/users/{user}/admin", 204, user="bob")
    await call(ADMIN, "DELETE", "/api/admin/users/{user}/admin", 204, user="bob")
    await call(ADMIN, "DELETE", "/api/admin/rooms/{room}", 204, room="den")
    await call(ADMIN, "DELETE", "/api/admin/users/{user}", 204, user="bob")
    await call(ADMIN, "DELETE", "/api/admin/users/{user}", 404, user="bob")


async def event_routes(call: Caller) -> None:
    """The HTTP fallback: a stream opened signed in, a frame POSTed to it, an unknown one."""
    headers = {"Authorization": f"Bearer {call.tokens[MEMBER]}"}
    async with call.http.get(call.server.http_url("/events"), headers=headers) as stream:
        check_answer("GET", "/events", stream.status, stream.content_type, b"")
        call.called.add(("GET", "/events"))
        assert await stream.content.readline() == b"event: open\n"
        opened = json.loads((await stream.content.readline()).removeprefix(b"data: "))
        ping = {"type": "ping", "id": "p1", "payload": {"n": 1}}
        await call(None, "POST", "/events/{stream}", 204, ping, stream=opened["stream"])
        async with asyncio.timeout(RECV_TIMEOUT):
            while b'"pong"' not in (line := await stream.content.readline()):
                assert line, "the stream ended before the pong"
    await call(None, "POST", "/events/{stream}", 404, ping, stream=opened["stream"])


async def test_fuzzing_every_operation_finds_no_error_and_no_schema_break(
    server: ServerProcess, people: dict[str, str]
) -> None:
    """schemathesis over every operation: no 5xx; each status, type and body as documented."""
    started = time.monotonic()
    seeds = await seeded(server, people)
    failures = await asyncio.to_thread(fuzz, server, people, seeds)
    assert failures == [], "\n\n".join(failures)
    assert "Traceback" not in server.stderr()
    assert time.monotonic() - started < 60


async def seeded(server: ServerProcess, tokens: dict[str, str]) -> dict[str, str]:
    """A private room of the fuzzer's with bob in it, and a message of the fuzzer's there:
    path parameters that name real things, so that the fuzzer gets past the 404s."""
    timeout = aiohttp.ClientTimeout(total=RECV_TIMEOUT * 2)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        call = Caller(server, http)
        call.tokens.update(tokens)
        body = {"name": "den", "members": ["bob"]}
        await call(MEMBER, "POST", "/api/rooms", 201, body)
        sent = await call(
            MEMBER, "POST", "/api/rooms/{room}/messages", 201, {"message": "hi"}, room="den"
        )
    return {"room": "den", "user": "bob", "message_id": sent["message_id"]}


def fuzz(server: ServerProcess, tokens: dict[str, str], seeds: dict[str, str]) -> list[str]:
    """Run every operation's examples, with random path parameters, then with ``seeds``
    for those it has; what failed, one text per operation, mode and pass."""
    schema = schemathesis.openapi.from_dict(DOC)
    failures = []
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            op_id = operation.definition.raw["operationId"]
            if op_id in ENDLESS:
                continue
            who = OWN_ACCOUNT.get(
                op_id, ADMIN if operation.path.startswith("/api/admin/") else MEMBER
            )
            headers = {"Authorization": f"Bearer {tokens[who]}"}
            fixed = {k: v for k, v in seeds.items() if "{" + k + "}" in operation.path}
            passes = [None] if not fixed or op_id in UNSEEDED else [None, fixed]
            for path, mode in itertools.product(passes, EXAMPLES):
                strategy = operation.as_strategy(generation_mode=mode, path_parameters=path)
                try:
                    fuzz_test(strategy, EXAMPLES[mode])(server.url, session, headers)
                except Unsatisfiable:  # nothing of it can be made invalid (no parameter, no body)
                    assert mode == GenerationMode.NEGATIVE
                except (Exception, BaseExceptionGroup) as exc:  # each failing one is reported
                    where = f"{operation.method.upper()} {operation.path} {path or ''}"
                    failures.append(f"{where} ({mode}): {exc}")
    return failures


def fuzz_test(strategy: Any, examples: int) -> Any:
    """A Hypothesis test of ``examples`` cases of ``strategy``, each called and checked."""

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def test(case: Any, base_url: str, session: requests.Session, headers: dict[str, str]) -> None:
        case.call_and_validate(
            base_url=base_url, session=session, headers=headers, checks=CHECKS, timeout=10
        )

    return lambda base_url, session, headers: test(
        base_url=base_url, session=session, headers=headers
    )
