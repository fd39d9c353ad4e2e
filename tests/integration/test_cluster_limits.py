"""Limits that hold over every node: two real nodes on one PostgreSQL and one Redis.

A guest's nickname, a user's connections (``--max-connections-per-user``)
and the login throttle are counted in Redis, so a client cannot get round
them by reaching another node; a killed node's claims go within its
heartbeat's time to live.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import aiohttp
from websockets.asyncio.client import ClientConnection, connect

from tests.integration.serverproc import ServerProcess
from tests.integration.test_cluster import HEARTBEAT, Cluster, cluster, tracked
from tests.integration.users import PASSWORD, bearer, closed_with, sign_up, user_ws
from tests.integration.wsclient import RECV_TIMEOUT, recv_json, send_json, welcome

__all__ = ["cluster"]

CAP = ("--max-connections-per-user", "2")


#: websockets' client options: buffer every frame, so that a connection the test does
#: not read keeps answering the nodes' heartbeat pings (1 s) instead of being dropped.
UNREAD: dict[str, Any] = {"open_timeout": 5, "max_queue": None}


async def guest_ws(cluster: Cluster, node: ServerProcess) -> ClientConnection:
    """A guest connection to ``node``, past its welcome."""
    ws = await tracked(cluster, await connect(node.ws_url(), **UNREAD))
    await welcome(ws)
    return ws


async def answer_to(ws: ClientConnection, fid: str) -> dict[str, Any]:
    """The ``auth`` or ``error`` frame answering frame ``fid`` (others skipped)."""
    async with asyncio.timeout(RECV_TIMEOUT):
        while True:
            frame = await recv_json(ws)
            if frame["type"] in ("auth", "error") and frame.get("id") == fid:
                return frame


async def nickname(ws: ClientConnection, name: str, fid: str = "nick") -> dict[str, Any]:
    """Send ``auth`` as guest ``name``; the answer."""
    await send_json(ws, "auth", {"guest": name}, id=fid)
    return await answer_to(ws, fid)


async def until_named(cluster: Cluster, node: ServerProcess, name: str) -> float:
    """Try guest ``name`` on ``node`` (a fresh connection a try: failures close one) until it
    is let in; the seconds it took."""
    started = time.monotonic()
    async with asyncio.timeout(10):
        while True:
            ws = await guest_ws(cluster, node)
            if (await nickname(ws, name))["type"] == "auth":
                return time.monotonic() - started
            await ws.close()
            await asyncio.sleep(0.05)


async def login_status(node: ServerProcess, name: str, password: str) -> tuple[int, str | None]:
    """POST /api/login to ``node``: the status and Retry-After."""
    timeout = aiohttp.ClientTimeout(total=RECV_TIMEOUT * 2)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        body = {"username": name, "password": password}
        async with http.post(node.http_url("/api/login"), json=body) as resp:
            await resp.read()
            return resp.status, resp.headers.get("Retry-After")


async def test_a_nickname_taken_on_one_node_is_refused_on_another(cluster: Cluster) -> None:
    """Ann on node A: "ann" on node B is auth_failed "that name is in use" until Ann leaves."""
    a, b = cluster.start(), cluster.start()
    ann = await guest_ws(cluster, a)
    assert (await nickname(ann, "Ann"))["type"] == "auth"
    other = await guest_ws(cluster, b)
    refused = await nickname(other, "ann", "n1")
    assert refused["type"] == "error", refused
    assert refused["payload"] == {"code": "auth_failed", "message": "that name is in use"}
    await ann.close()
    await until_named(cluster, b, "ann")


async def test_a_killed_nodes_nickname_is_free_within_its_ttl(cluster: Cluster) -> None:
    """A node killed with SIGKILL gives nothing back; its guest's name is free on B soon after."""
    a, b = cluster.start(), cluster.start()
    ann = await connect(a.ws_url(), **UNREAD)  # not closed politely: its node dies
    await welcome(ann)
    assert (await nickname(ann, "ann"))["type"] == "auth"
    other = await guest_ws(cluster, b)
    assert (await nickname(other, "ann", "n1"))["type"] == "error"
    await asyncio.to_thread(a.stop, signal.SIGKILL)
    ann.transport.abort()
    # The name waits for the node's time to live (the heartbeat), not longer.
    assert await until_named(cluster, b, "ann") <= HEARTBEAT + 1.0


async def test_the_connection_cap_counts_a_users_connections_on_both_nodes(
    cluster: Cluster,
) -> None:
    """Cap 2, one connection on A and one on B: a third is refused on either node."""
    a, b = cluster.start(*CAP), cluster.start(*CAP)
    token = await sign_up(a, "dora")
    await tracked(cluster, await user_ws(a, token, max_queue=None))
    await tracked(cluster, await user_ws(b, token, max_queue=None))
    # Signed in at the handshake: closed at once, before any welcome.
    for node in (a, b):
        third = await tracked(
            cluster, await connect(node.ws_url(), additional_headers=bearer(token), **UNREAD)
        )
        assert await closed_with(third) == (1008, "too many connections for this user")
    # Signing in with auth: forbidden, then closed.
    third = await guest_ws(cluster, b)
    await send_json(third, "auth", {"token": token}, id="auth-3")
    refused = await answer_to(third, "auth-3")
    assert refused["type"] == "error", refused
    assert refused["payload"]["code"] == "forbidden"
    assert refused["payload"]["message"] == "too many connections for this user"
    assert await closed_with(third) == (1008, "too many connections for this user")


async def test_a_closed_connection_frees_its_place_for_the_other_node(cluster: Cluster) -> None:
    """Cap 2 filled over A and B; when A's connection closes, B lets a new one in."""
    a, b = cluster.start(*CAP), cluster.start(*CAP)
    token = await sign_up(a, "dora")
    first = await user_ws(a, token, max_queue=None)
    await tracked(cluster, await user_ws(b, token, max_queue=None))
    await first.close()
    async with asyncio.timeout(10):
        while True:
            ws = await tracked(
                cluster, await connect(b.ws_url(), additional_headers=bearer(token), **UNREAD)
            )
            frame = await recv_json(ws)
            if frame["type"] == "system":  # the welcome: let in
                break
            await asyncio.sleep(0.1)


async def test_failed_logins_on_one_node_throttle_the_account_on_another(
    cluster: Cluster,
) -> None:
    """Five failures on A: B answers the account's next login 429 with Retry-After."""
    a, b = cluster.start(), cluster.start()
    await sign_up(a, "erin")
    statuses = [(await login_status(a, "erin", f"guess {n}"))[0] for n in range(5)]
    assert statuses == [401] * 5
    status, retry = await login_status(b, "ERIN", "one more guess")
    assert status == 429 and int(retry or 0) >= 1
    # Even the right password waits (this address never signed in since).
    assert (await login_status(b, "erin", PASSWORD))[0] == 429
    assert (await login_status(b, "someone-else", "x"))[0] == 401
