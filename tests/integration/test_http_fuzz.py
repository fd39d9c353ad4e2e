"""The HTTP API, fuzzed: any body, query or path gets a JSON answer below 500.

One real server for the module; hypothesis sends each route odd JSON bodies,
query values and path parts, signed in or not. Every answer must be JSON
(an error as ``{"error": {"code", "message"}}``), never a 5xx, and the
server must log no failure and stay up.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.integration.serverproc import ServerProcess, start_server
from tests.integration.users import SECRET, sign_up

#: (method, path with ``{}`` for a fuzzed part): every route that reads a body or a query.
ROUTES = [
    ("GET", "/api/unread"),
    ("GET", "/api/search"),
    ("GET", "/api/me/settings"),
    ("PUT", "/api/me/settings"),
    ("PATCH", "/api/rooms/{}"),
    ("GET", "/api/rooms"),
    ("POST", "/api/rooms"),
    ("POST", "/api/rooms/{}/members"),
    ("GET", "/api/rooms/{}/messages"),
    ("POST", "/api/rooms/{}/messages"),
    ("GET", "/api/direct/messages"),
    ("PATCH", "/api/messages/{}"),
    ("DELETE", "/api/messages/{}"),
    ("PUT", "/api/messages/{}/reactions/{}"),
    ("POST", "/api/login"),
    ("GET", "/api/rooms/{}"),
    ("DELETE", "/api/rooms/{}"),
    ("PUT", "/api/rooms/{}/moderators/{}"),
    ("DELETE", "/api/rooms/{}/moderators/{}"),
    ("DELETE", "/api/rooms/{}/members/{}"),
    ("PUT", "/api/rooms/{}/bans/{}"),
    ("DELETE", "/api/rooms/{}/bans/{}"),
    ("PUT", "/api/rooms/{}/mutes/{}"),
    ("DELETE", "/api/rooms/{}/mutes/{}"),
    ("GET", "/api/rooms/{}/audit"),
    ("POST", "/api/refresh"),
    ("POST", "/api/password"),
    ("GET", "/api/me"),
    ("GET", "/api/admin/rooms"),
    ("PUT", "/api/admin/users/{}/ban"),
    ("POST", "/api/admin/users/{}/password"),
    # Not POST /api/logout nor DELETE /api/me: they would end the fuzzer's own session.
]
KEYS = ["hide_receipts", "receipts", "name", "private", "members", "message", "reply_to"]
KEYS += ["username", "password", "before", "around", "limit", "thread", "seq", "room"]
KEYS += ["topic", "title", "slow_mode", "owner", "until", "for", "reason", "refresh_token"]
KEYS += ["old", "new", "everywhere"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**62, max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from(["lobby", "team", "\x00", "\ud800", "é" * 70, "-1", "1e999", "true"]),
)
values = st.recursive(
    scalars, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids)
)


def dumps(value: Any) -> bytes:
    """JSON as a client may send it: escapes for lone surrogates, integers past 64 bits."""
    return json.dumps(value).encode()


bodies = st.one_of(
    st.dictionaries(st.sampled_from(KEYS), values, max_size=4).map(dumps),
    values.map(dumps),
    st.binary(max_size=40),
)
path_parts = st.one_of(
    st.sampled_from(["lobby", "team", "nope", "%00", "%FF", "a" * 100, "..", "%2F"]),
    st.text(alphabet="abcxyz019_-%.~", min_size=1, max_size=12),
)
queries = st.dictionaries(
    st.sampled_from(["before", "around", "limit", "thread", "since"])
    | st.sampled_from(["q", "room", "direct", "with", "from", "after", "cursor", "order"]),
    st.one_of(
        st.integers().map(str),
        st.text(alphabet="0123456789-e.x", max_size=25),
        st.text(max_size=30),
        st.sampled_from(['"open', "NEAR(a b) OR c", "deplo*", "-x", "a\x00", "x" * 300]),
        st.sampled_from(["true", "false", "relevance", "2026-12-01", "1e999", "WyJrIiwgMV0"]),
    ),
    max_size=4,
)


class Target:
    def __init__(self, server: ServerProcess, runner: asyncio.Runner, token: str) -> None:
        self.server = server
        self.runner = runner
        self.token = token


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """One server, and a signed-in user's token, for every example."""
    tmp: Path = tmp_path_factory.mktemp("http-fuzz")
    server = start_server(tmp, "--secret", SECRET, "--log-format", "json")
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        try:
            yield Target(server, runner, runner.run(sign_up(server, "fuzzer")))
        finally:
            code = server.stop()
    assert code == 0, f"the server exited with {code}"
    entries = [json.loads(line) for line in server.stderr().splitlines() if line.strip()]
    failures = [entry for entry in entries if entry["level"] in ("error", "critical")]
    assert not failures, failures


async def request(
    target: Target, method: str, path: str, body: bytes, query: dict[str, str], signed: bool
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {target.token}"} if signed else {}
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        async with http.request(
            method, target.server.http_url(path), data=body, params=query, headers=headers
        ) as resp:
            raw = await resp.read()
            if resp.status == 204:
                assert raw == b""
                return 204, None
            assert resp.content_type == "application/json", (resp.status, raw[:200])
            return resp.status, orjson.loads(raw)


@pytest.mark.timeout(300)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    route=st.sampled_from(ROUTES),
    parts=st.lists(path_parts, min_size=2, max_size=2),
    body=bodies,
    query=queries,
    signed=st.booleans(),
)
def test_any_request_gets_a_json_answer_below_500(
    target: Target,
    route: tuple[str, str],
    parts: list[str],
    body: bytes,
    query: dict[str, str],
    signed: bool,
) -> None:
    """Whatever the body, query or path part, the answer is JSON and not a server error."""
    method, template = route
    path = template.format(*parts[: template.count("{}")])
    status, answer = target.runner.run(request(target, method, path, body, query, signed))
    assert status < 500, (method, path, status, answer)
    if status >= 400:
        extra = {"until", "reason"} if answer["error"]["code"] in ("banned", "muted") else set()
        assert set(answer["error"]) - extra == {"code", "message"}, answer
    assert target.server.proc.poll() is None, "the server has exited"
