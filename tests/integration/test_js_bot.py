"""The Node bot example (clients/js/examples/bot.js) signs in, joins a room and answers there."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.integration.serverproc import ServerFactory, ServerProcess
from tests.integration.test_js_client import installed  # noqa: F401 (a fixture)
from tests.integration.users import PASSWORD, SECRET, call, mint, register
from tests.integration.wsclient import ask, recv_json, send_json, welcome

JS_DIR = Path(__file__).parents[2] / "clients" / "js"
BOT = JS_DIR / "examples" / "bot.js"
#: Node's start, a sign-up and a login (argon2id each), the connection and the join.
READY_SECONDS = 20.0
#: How long the bot may take to stop after SIGTERM (it closes its connection first).
STOP_SECONDS = 5.0
#: How long an answer may take (the bot's round trip, over /events too).
ANSWER_SECONDS = 10.0
#: The life of the short token the renewal test gives the bot (s).
SHORT_TOKEN_SECONDS = 3
#: The room the bot serves: new, so the bot's join makes it.
ROOM = "bots"

#: Node, npm and clients/js/node_modules (``npm ci`` once, under a lock), shared with
#: test_js_client.py; a missing node fails there, it never skips.
pytestmark = [pytest.mark.node, pytest.mark.usefixtures("installed")]


@dataclass
class Bot:
    """A running bot: its ready line's words and what it has logged so far."""

    #: ``ready NAME ROOM TRANSPORT``, split.
    ready: list[str]
    #: Its stderr lines, read as they come.
    log: list[str] = field(default_factory=list)

    async def logged(self, text: str) -> None:
        """Wait until a log line contains ``text``; fail with the log after ANSWER_SECONDS."""
        deadline = time.monotonic() + ANSWER_SECONDS
        while not any(text in line for line in self.log):
            said = "\n".join(self.log)
            assert time.monotonic() < deadline, f"no {text!r} in the bot's log:\n{said}"
            await asyncio.sleep(0.05)


async def read_lines(stream: asyncio.StreamReader, into: list[str]) -> None:
    """Append each line of ``stream`` to ``into`` until it ends."""
    while line := await stream.readline():
        into.append(line.decode(errors="replace").rstrip("\n"))


@contextlib.asynccontextmanager
async def running_bot(server: ServerProcess, **env: str) -> AsyncIterator[Bot]:
    """``node examples/bot.js`` serving ROOM with ``env``, once it said ``ready``.

    The bot is stopped with SIGTERM by its pid at the end and must exit with
    status 0; it is killed (by its pid) only when it hangs or the test failed.
    """
    full_env = {**os.environ, "BOT_SERVER": server.url, "BOT_ROOM": ROOM, **env}
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(BOT.relative_to(JS_DIR)),
        cwd=JS_DIR,
        env=full_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    log: list[str] = []
    reader = asyncio.create_task(read_lines(proc.stderr, log))
    try:
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), READY_SECONDS)
        except TimeoutError:
            line = b""
        if not line.startswith(b"ready "):
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()  # unless it exited already (a refused sign-in)
            await asyncio.wait_for(proc.wait(), STOP_SECONDS)
            await reader
            said = "\n".join(log)
            pytest.fail(f"the bot did not get ready ({line!r}); it said:\n{said}")
        yield Bot(line.decode().split(), log)
        proc.terminate()  # SIGTERM to the bot's own pid
        status = await asyncio.wait_for(proc.wait(), STOP_SECONDS)
        await reader
        assert status == 0, f"the bot exited {status}:\n" + "\n".join(log)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        await reader


async def ask_bot(ws: ClientConnection, bot: str, text: str, fid: str) -> dict[str, Any]:
    """Say ``text`` in ROOM; the next chat from ``bot``, which must reply to it."""
    await send_json(ws, "chat", {"room": ROOM, "message": text}, id=fid)
    asked: str | None = None
    answer: dict[str, Any] | None = None
    while asked is None or answer is None:  # the ack and the answer, in either order
        frame = await recv_json(ws, timeout=ANSWER_SECONDS)
        assert frame["type"] != "error", frame
        if frame["type"] == "ack" and frame.get("id") == fid:
            asked = str(frame["payload"]["message_id"])
        elif frame["type"] == "chat" and frame["payload"]["from"] == bot and answer is None:
            answer = frame["payload"]
    assert answer["room"] == ROOM
    assert answer.get("reply_to") == asked, f"{answer} answers another message than {text!r}"
    return answer


async def join_room(ws: ClientConnection) -> list[str]:
    """Past the welcome, join ROOM; its members."""
    await welcome(ws)
    joined = await ask(ws, "join", {"room": ROOM}, "join")
    assert joined["type"] == "joined", joined
    return [str(name) for name in joined["payload"]["members"]]


async def test_bot_registers_joins_and_answers_commands(server: ServerProcess) -> None:
    """The bot registers its name, answers !echo and !time as replies, and not its own answers."""
    async with running_bot(server, BOT_NAME="echobot", BOT_PASSWORD=PASSWORD) as bot:
        assert bot.ready[1:] == ["echobot", ROOM, "websocket"]
        async with connect(server.ws_url()) as ws:
            assert "echobot" in await join_room(ws)
            echoed = await ask_bot(ws, "echobot", "!echo !echo hi", "c1")
            assert echoed["message"] == "!echo hi"
            # Had the bot taken its own "!echo hi" for a command, its "hi" would
            # come before this answer (one connection writes its frames in
            # order) and answer another message.
            timed = await ask_bot(ws, "echobot", "!time", "c2")
            said = datetime.fromisoformat(timed["message"])
            assert abs((datetime.now(said.tzinfo) - said).total_seconds()) < 30


async def test_guest_bot_answers_over_the_http_fallback(server: ServerProcess) -> None:
    """With BOT_GUEST and BOT_TRANSPORT=http the bot serves the room over /events."""
    async with running_bot(server, BOT_GUEST="helper", BOT_TRANSPORT="http") as bot:
        assert bot.ready[1:] == ["helper", ROOM, "http"]
        async with connect(server.ws_url()) as ws:
            assert "helper" in await join_room(ws)
            echoed = await ask_bot(ws, "helper", "!echo over http", "c1")
            assert echoed["message"] == "over http"


async def test_bot_renews_its_token_with_the_refresh_token(server_factory: ServerFactory) -> None:
    """Given BOT_TOKEN about to expire and BOT_REFRESH_TOKEN, the bot renews and keeps answering."""
    server = server_factory("--secret", SECRET)
    await register(server, "tokenbot")
    status, body = await call(
        server, "POST", "/api/login", json={"username": "tokenbot", "password": PASSWORD}
    )
    assert status == 200, body
    sid = jwt.decode(body["token"], options={"verify_signature": False})["sid"]
    expires = int(time.time()) + SHORT_TOKEN_SECONDS
    short = mint("tokenbot", sid=sid, exp=expires)
    async with running_bot(server, BOT_TOKEN=short, BOT_REFRESH_TOKEN=body["refresh_token"]) as bot:
        async with connect(server.ws_url()) as ws:
            assert "tokenbot" in await join_room(ws)
            await bot.logged("renewed the token")  # on the server's token_expired
            echoed = await ask_bot(ws, "tokenbot", "!echo still here", "c1")
            assert echoed["message"] == "still here"
    # The bot spent the refresh token: presented again, it is refused.
    status, body = await call(
        server, "POST", "/api/refresh", json={"refresh_token": body["refresh_token"]}
    )
    assert status == 401, body
