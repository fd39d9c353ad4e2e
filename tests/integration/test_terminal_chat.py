"""``roomcast chat`` in a pseudo-terminal (pexpect) against a real server."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator

import pexpect
import pytest
from websockets.sync.client import connect

from tests.integration.serverproc import ServerFactory, ServerProcess
from tests.integration.users import PASSWORD, call, register, sign_up

Chat = Callable[..., pexpect.spawn]


@pytest.fixture
def chat() -> Iterator[Chat]:
    """Start ``roomcast chat`` in pseudo-terminals; each is ended after the test."""
    children: list[pexpect.spawn] = []

    def spawn(server: ServerProcess, *args: str, password: str | None = None) -> pexpect.spawn:
        env = {k: v for k, v in os.environ.items() if k != "ROOMCAST_PASSWORD"}
        env.update(TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1", PYTHONIOENCODING="utf-8")
        if password is not None:
            env["ROOMCAST_PASSWORD"] = password
        child = pexpect.spawn(
            sys.executable,
            ["-m", "roomcast", "chat", "--url", server.ws_url(), *args],
            env=env,
            encoding="utf-8",
            timeout=15,
            dimensions=(40, 120),
        )
        child.logfile_read = io.StringIO()  # everything the terminal showed
        children.append(child)
        return child

    yield spawn
    for child in children:
        child.close(force=True)


def user(chat: Chat, server: ServerProcess, name: str) -> pexpect.spawn:
    """A chat signed in as the registered ``name``, ready for input."""
    child = chat(server, "--user", name, password=PASSWORD)
    child.expect_exact(f"* you are {name}, talking in lobby")
    return child


def guest(chat: Chat, server: ServerProcess, name: str) -> pexpect.spawn:
    """A chat as the guest ``name``, ready for input."""
    child = chat(server, "--guest", name)
    child.expect_exact(f"* you are {name}, talking in lobby")
    return child


def screen(child: pexpect.spawn) -> str:
    """Everything ``child`` has written to its terminal so far."""
    log = child.logfile_read
    assert isinstance(log, io.StringIO)
    return log.getvalue()


def ended(child: pexpect.spawn) -> int | None:
    """Wait for ``child`` to exit; its exit status."""
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_guest_and_users_chat_join_who_dm(chat: Chat, server: ServerProcess) -> None:
    """Lines reach the others with their sender; /join, /who, typing, /dm and escapes work."""
    asyncio.run(sign_up(server, "ann"))
    asyncio.run(sign_up(server, "bob"))
    ann = user(chat, server, "ann")
    carol = guest(chat, server, "carol")
    ann.expect_exact("* carol joined lobby")

    carol.sendline("hi from carol")
    ann.expect(r"\[\d\d:\d\d\] lobby <carol> hi from carol\r")
    ann.sendline("hi carol")
    carol.expect(r"\[\d\d:\d\d\] lobby <ann> hi carol\r")

    ann.sendline("/join dev")
    ann.expect_exact("* joined dev (1 here); messages go to dev")
    carol.sendline("/join dev")
    carol.expect_exact("* joined dev (2 here); messages go to dev")
    ann.expect_exact("* carol joined dev")
    carol.sendline("dev talk")
    ann.expect_exact("* carol is typing in dev")
    ann.expect(r"\] dev <carol> dev talk\r")
    assert "lobby <carol> dev talk" not in screen(ann)

    ann.sendline("/who")
    ann.expect(r"\* in dev \(2\): ([^\r]*)\r")
    assert sorted(ann.match.group(1).split(", ")) == ["ann", "carol"]

    bob = user(chat, server, "bob")
    bob.sendline("/dm ann psst")
    bob.expect_exact("] dm <bob\u2192ann> psst")
    ann.expect_exact("] dm <bob\u2192ann> psst")
    carol.sendline("/dm ann hi")
    carol.expect_exact("! forbidden: ")
    carol.sendline("still here")
    carol.expect_exact("] dev <carol> still here")

    with connect(server.ws_url()) as ws:
        hostile = {"type": "chat", "payload": {"room": "lobby", "message": "<b>\x1b[31mred"}}
        ws.send(json.dumps(hostile))
        ann.expect(r"\] lobby <guest-[0-9a-f]{8}> <b>\ufffd\[31mred\r")
    assert "\x1b[31mred" not in screen(ann)


def test_survives_a_server_restart(chat: Chat, server_factory: ServerFactory) -> None:
    """After a SIGKILL and a restart on the same port, both chats reconnect and chat again."""
    port = str(free_port())
    server = server_factory("--port", port)
    asyncio.run(sign_up(server, "ann"))
    ann = user(chat, server, "ann")
    bea = guest(chat, server, "bea")
    ann.sendline("before the crash")
    bea.expect_exact("lobby <ann> before the crash")

    server.stop(signal.SIGKILL)
    ann.expect(r"\* reconnecting \([^\r]+\)\r")
    bea.expect(r"\* reconnecting \([^\r]+\)\r")
    bea.sendline("typed while offline")

    again = server_factory("--port", port)
    assert again.port == server.port and again.data_dir == server.data_dir
    ann.expect_exact("* connected", timeout=20)
    bea.expect_exact("* connected", timeout=20)  # bea's queued line has been sent by now
    ann.sendline("after the restart")
    bea.expect_exact("lobby <ann> after the restart")
    ann.expect_exact("lobby <ann> after the restart")
    # The replay on rejoin may come before "* connected": look at the whole screen.
    assert screen(ann).count("lobby <bea> typed while offline") == 1
    assert screen(bea).count("lobby <ann> before the crash") == 1


def test_quit_ctrl_d_and_ctrl_c_exit_0(chat: Chat, server: ServerProcess) -> None:
    """/quit, Ctrl-D and Ctrl-C close the chat with status 0; the others see it leave."""
    watcher = guest(chat, server, "watcher")
    for name, leave in [
        ("quitter", lambda child: child.sendline("/quit")),
        ("eof", lambda child: child.sendeof()),
        ("interrupted", lambda child: child.sendcontrol("c")),
    ]:
        child = guest(chat, server, name)
        leave(child)
        assert ended(child) == 0, name
        watcher.expect_exact(f"* {name} left lobby")
        assert "Traceback" not in screen(child) and "exception" not in screen(child)


def test_wrong_password_exits_1_with_one_line(chat: Chat, server: ServerProcess) -> None:
    """A refused login, password typed at the hidden prompt, is one line and status 1."""
    asyncio.run(register(server, "ann"))
    child = chat(server, "--user", "ann")
    child.expect_exact("password for ann:")
    child.sendline("not the password")
    assert ended(child) == 1
    out = screen(child)
    assert re.findall(r"roomcast: [^\r\n]*", out) == ["roomcast: error: login refused (401)"]
    assert "not the password" not in out
    assert "Traceback" not in out


def test_usage_errors_exit_2(chat: Chat, server: ServerProcess) -> None:
    """A bad --url or --room, or --user with --guest, is one usage line and status 2."""
    for args, message in [
        (["--room", "Not A Room"], "--room must match"),
        (["--user", "ann", "--guest", "bob"], "not allowed with argument"),
    ]:
        child = chat(server, *args)
        assert ended(child) == 2
        lines = [line for line in screen(child).splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("roomcast: error: "), lines
        assert message in lines[0]
    child = pexpect.spawn(
        sys.executable,
        ["-m", "roomcast", "chat", "--url", "http://example.org/"],
        encoding="utf-8",
        timeout=15,
    )
    child.expect_exact("roomcast: error: --url must look like ws://host:port/ws")
    assert ended(child) == 2


def test_reply_edit_react_and_delete_from_the_terminal(chat: Chat, server: ServerProcess) -> None:
    """/reply, /edit last, /react and /delete reach another terminal as lines, once each."""
    asyncio.run(sign_up(server, "ann"))
    asyncio.run(sign_up(server, "bob"))
    ann, bob = user(chat, server, "ann"), user(chat, server, "bob")
    bob.sendline("ship it friday?")
    ann.expect(r"([0-9a-f]{6,}) \[\d\d:\d\d\] lobby <bob> ship it friday\?\r")
    root = ann.match.group(1)
    ann.sendline(f"/reply {root} yes, with @bob on call")
    bob.expect(r'@ ([0-9a-f]{6,}) \[\d\d:\d\d\] lobby <ann> \(reply to bob: "ship it friday\?"\)')
    ann.sendline("/edit last yes, with @bob on call (and me)")
    bob.expect_exact("<ann> yes, with @bob on call (and me) (edited)")
    bob.sendline(f"/react {root} 🚀")
    ann.expect_exact("bob reacted 🚀")
    ann.sendline("/delete last")
    bob.expect_exact("<ann> message deleted")
    bob.sendline(f"/delete {root[:6]}")
    ann.expect_exact("<bob> message deleted")
    ann.sendline(f"/react {root} a b")
    ann.expect_exact("! ")
    assert screen(bob).count("(edited)") == 1


def test_rooms_and_unread_show_counts_and_the_current_room_is_read(
    chat: Chat, server: ServerProcess
) -> None:
    """/rooms and /unread show what ann has not read; what she sees in her room is marked read."""
    token = asyncio.run(sign_up(server, "ann"))
    asyncio.run(sign_up(server, "bob"))
    ann = chat(server, "--user", "ann", "--room", "dev", password=PASSWORD)
    ann.expect_exact("* you are ann, talking in dev")
    bob = user(chat, server, "bob")
    bob.sendline("anyone around?")
    bob.sendline("@ann are you?")
    ann.expect_exact("lobby <bob> @ann are you?")  # shown in passing: dev is ann's room
    ann.sendline("/rooms")
    ann.expect_exact("* rooms: lobby (2, 1 @), dev\r")
    ann.sendline("/unread")
    ann.expect_exact("* unread: lobby (2, 1 @)\r")

    bob.sendline("/join dev")
    bob.expect_exact("* joined dev")
    bob.sendline("in dev now")
    ann.expect_exact("dev <bob> in dev now")

    def dev_read() -> bool:
        status, body = asyncio.run(call(server, "GET", "/api/unread", bearer=token))
        assert status == 200, body
        [dev] = [room for room in body["rooms"] if room["room"] == "dev"]
        return dev["unread"] == 0 and dev["last_read"] == dev["last_seq"] > 0

    deadline = time.monotonic() + 15
    while not dev_read():  # read about a second after it was shown
        assert time.monotonic() < deadline, "ann's terminal did not mark dev read"
        time.sleep(0.1)
    ann.sendline("/unread")
    ann.expect_exact("* unread: lobby (2, 1 @)\r")  # lobby was not her room: still unread


def send_as(server: ServerProcess, token: str, frames: list[tuple[str, dict[str, str]]]) -> None:
    """Send ``frames`` (type, payload) on a connection signed in with ``token``; wait for acks."""
    with connect(server.ws_url(), additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        for n, (kind, payload) in enumerate(frames):
            ws.send(json.dumps({"type": kind, "id": f"f{n}", "payload": payload}))
        waiting = {f"f{n}" for n in range(len(frames))}
        while waiting:
            frame = json.loads(ws.recv(timeout=10))
            assert frame["type"] != "error", frame
            if frame["type"] == "ack":
                waiting.discard(frame.get("id"))


def test_search_more_and_open_from_the_terminal(chat: Chat, server: ServerProcess) -> None:
    """/search numbers [matched] results, /more goes on, /open N shows N in context; errors."""
    asyncio.run(sign_up(server, "ann"))
    bob_token = asyncio.run(sign_up(server, "bob"))
    steps = [("chat", {"room": "lobby", "message": f"deploy step {n}"}) for n in range(11)]
    send_as(server, bob_token, steps)
    # Later than the last step by the clock (results are newest first, by the millisecond:
    # stored in one batch, both would have the same time).
    time.sleep(0.01)
    send_as(server, bob_token, [("direct", {"to": "ann", "message": "deploy keys, ok?"})])
    ann = user(chat, server, "ann")

    ann.sendline("/search deploy")
    ann.expect_exact("* results 1-10 for deploy; /more for more, /open N shows one in")
    ann.expect(r"1\. \[\d\d:\d\d\] @bob <bob> \[deploy\] keys, ok\?\r")
    ann.expect(r"2\. \[\d\d:\d\d\] lobby <bob> \[deploy\] step 10\r")
    ann.expect(r"10\. \[\d\d:\d\d\] lobby <bob> \[deploy\] step 2\r")
    ann.sendline("/more")
    ann.expect_exact("* results 11-12 for deploy, the last")
    ann.expect(r"12\. \[\d\d:\d\d\] lobby <bob> \[deploy\] step 0\r")
    ann.sendline("/more")
    ann.expect_exact("* no more results for deploy")

    ann.sendline("/open 12")
    ann.expect_exact("* around result 12 in lobby: 5 messages, newer ones exist\r")
    ann.expect(r"> [0-9a-f]{6,} \[\d\d:\d\d\] lobby <bob> deploy step 0\r")
    ann.expect(r"[0-9a-f]{6,} \[\d\d:\d\d\] lobby <bob> deploy step 4\r")
    ann.sendline("/open 1")
    ann.expect_exact("* around result 1 in @bob: 1 message\r")
    ann.expect(r"> ([0-9a-f]{6,}) \[\d\d:\d\d\] dm <bob\u2192ann> deploy keys, ok\?\r")
    ann.sendline(f"/reply {ann.match.group(1)} no")  # opened messages can be named
    ann.expect_exact("! direct messages have no replies or threads")

    ann.sendline('/search "deploy step')
    ann.expect_exact('! invalid_message: a quote is not closed: end the phrase with "\r')
    ann.sendline("/open 1")
    ann.expect_exact("! no search results to open: /search QUERY first")
    ann.sendline("/help")
    ann.expect_exact("* /open N ")
    assert "Traceback" not in screen(ann)
