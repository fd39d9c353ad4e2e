"""Webhook notifications for users who are away, over real sockets and real HTTP.

A receiver in the test process (aiohttp on 127.0.0.1, port 0) answers the
server's posts as the test tells it; the server keeps SQLite in its data
dir, so a restart finds the outbox it left.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from tests.integration.clients import wait_for
from tests.integration.serverproc import ServerFactory, ServerProcess
from tests.integration.users import SECRET, call, sign_up, user_ws
from tests.integration.wsclient import answer, send_json

WEBHOOK_SECRET = "webhook-secret-for-tests-0123456789"


class Receiver:
    """An HTTP endpoint that fails its first ``failures`` posts, and keeps every one."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        #: (status answered, headers, body) of each post, in order.
        self.posts: list[tuple[int, dict[str, str], bytes]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = 500 if self.failures > 0 else 204
        self.failures -= 1
        self.posts.append((status, dict(request.headers), body))
        return web.Response(status=status)

    def delivered(self) -> list[dict[str, Any]]:
        """The bodies answered with a 2xx."""
        return [orjson.loads(body) for status, _, body in self.posts if status < 300]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A receiver listening on 127.0.0.1, stopped after the test."""
    hook = Receiver()
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    hook.url = f"http://127.0.0.1:{port}/hook"
    yield hook
    await runner.cleanup()


def serve(factory: ServerFactory, receiver: Receiver) -> ServerProcess:
    return factory(
        "--secret", SECRET, "--webhook-url", receiver.url, "--webhook-secret", WEBHOOK_SECRET
    )


def outbox(data_dir: Path) -> list[tuple[str, int, int]]:
    """The server's waiting notifications: (id, attempts, due_ms)."""
    with sqlite3.connect(f"file:{data_dir / 'roomcast.db'}?mode=ro", uri=True) as db:
        return [
            (row[0], int(row[1]), int(row[2]))
            for row in db.execute("SELECT id, attempts, due_ms FROM notifications")
        ]


async def chat(ws: Any, text: str, fid: str) -> None:
    await send_json(ws, "chat", {"room": "lobby", "message": text}, id=fid)
    reply = await answer(ws, fid)
    assert reply["type"] == "ack", reply


async def test_a_mention_while_away_is_delivered_once_across_failures_and_a_restart(
    server_factory: ServerFactory, receiver: Receiver
) -> None:
    """Two failed posts, a SIGKILL, a restart: then one delivery, signed, and one unread mention."""
    receiver.failures = 2
    server = serve(server_factory, receiver)
    tokens = {name: await sign_up(server, name) for name in ("alice", "bob", "carol")}
    alice = await user_ws(server, tokens["alice"])  # reads the lobby once, then goes away
    await alice.close()
    carol = await user_ws(server, tokens["carol"])  # here: no notification for her
    bob = await user_ws(server, tokens["bob"])
    await chat(bob, "@alice and @carol, look", "b1")
    # The retry after the second failure is scheduled (due within seconds, not a lease).
    await wait_for(
        lambda: any(
            attempts == 2 and due < (time.time() + 3) * 1000
            for _, attempts, due in outbox(server.data_dir)
        ),
        timeout=15,
    )
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    restarted = serve(server_factory, receiver)
    await wait_for(lambda: len(receiver.delivered()) == 1, timeout=20)
    await asyncio.sleep(1.5)  # longer than a poll of the outbox: nothing more comes
    assert [status for status, _, _ in receiver.posts] == [500, 500, 204]
    ids = {headers["X-Roomcast-Delivery"] for _, headers, _ in receiver.posts}
    assert len(ids) == 1, "every attempt carries the one delivery id"
    status, headers, body = receiver.posts[-1]
    expected = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Roomcast-Signature"] == f"sha256={expected}"
    note = receiver.delivered()[0]
    assert note["id"] in ids
    assert {k: note[k] for k in ("event", "user", "room", "from", "message")} == {
        "event": "mention",
        "user": "alice",
        "room": "lobby",
        "from": "bob",
        "message": "@alice and @carol, look",
    }
    assert note["at"].endswith("Z") and note["message_id"]
    assert outbox(restarted.data_dir) == []
    status, counts = await call(restarted, "GET", "/api/unread", bearer=tokens["alice"])
    lobby = next(r for r in counts["rooms"] if r["room"] == "lobby")
    assert (lobby["unread"], lobby["mentions"]) == (1, 1)
    await carol.close()
    await bob.close()


async def test_a_direct_message_while_away_is_notified(
    server_factory: ServerFactory, receiver: Receiver
) -> None:
    """A direct message to a user with no connection is posted; one to a present user is not."""
    server = serve(server_factory, receiver)
    tokens = {name: await sign_up(server, name) for name in ("alice", "bob", "carol")}
    carol = await user_ws(server, tokens["carol"])
    bob = await user_ws(server, tokens["bob"])
    for i, to in enumerate(("carol", "alice")):
        await send_json(bob, "direct", {"to": to, "message": f"psst {to}"}, id=f"d{i}")
        assert (await answer(bob, f"d{i}"))["type"] == "ack"
    await wait_for(lambda: len(receiver.delivered()) == 1, timeout=10)
    await asyncio.sleep(1.5)
    [note] = receiver.delivered()
    assert (note["event"], note["user"], note["from"], note["message"]) == (
        "direct",
        "alice",
        "bob",
        "psst alice",
    )
    assert "room" not in note
    await carol.close()
    await bob.close()


def test_webhook_flags_are_checked(tmp_path: Path) -> None:
    """A webhook URL needs a long enough secret and an http(s) scheme: one line, exit 2."""
    cases = [
        (["--webhook-url", "http://127.0.0.1:9/hook"], "--webhook-secret"),
        (["--webhook-url", "ftp://x/hook", "--webhook-secret", WEBHOOK_SECRET], "http://"),
        (["--webhook-secret", WEBHOOK_SECRET], "needs --webhook-url"),
        (["--webhook-url", "http://127.0.0.1:9/", "--webhook-secret", "short"], "16 bytes"),
    ]
    for args, says in cases:
        done = subprocess.run(
            [sys.executable, "-m", "roomcast", "serve", "--data-dir", str(tmp_path), *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 2, done
        assert says in done.stderr and done.stderr.count("\n") == 1, done.stderr
