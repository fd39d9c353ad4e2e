"""``roomcast chat``'s moderation and account commands in pseudo-terminals against a real server."""

from __future__ import annotations

import asyncio
import re

from tests.integration.serverproc import ServerProcess
from tests.integration.test_terminal_chat import Chat, chat, ended, screen, user
from tests.integration.users import PASSWORD, register

__all__ = ["chat"]  # the fixture, shared with test_terminal_chat

NEW_PASSWORD = "another horse battery staple"


def test_moderating_a_room_from_the_terminal(chat: Chat, server: ServerProcess) -> None:
    """/room, /topic, /mute, /ban, /audit: both sides see the lines; /logout exits 0."""
    for name in ("ann", "bob"):
        asyncio.run(register(server, name))
    ann, bob = user(chat, server, "ann"), user(chat, server, "bob")
    ann.sendline("/join dev")  # the first to join a public room owns it
    ann.expect_exact("* joined dev")
    bob.sendline("/join dev")
    bob.expect_exact("* joined dev")
    bob.sendline("/room")
    bob.expect_exact("* dev (public): owner ann; no moderators; 2 members; slow mode off")
    bob.expect_exact("* you are a member")

    ann.sendline("/topic release on friday")
    ann.expect_exact('* topic of dev: "release on friday"')
    bob.expect_exact('* topic of dev: "release on friday"')  # what changed, not the whole room
    ann.sendline("/mute bob 5m")
    ann.expect(r"\* bob is muted in dev \(until \d\d:\d\d\)")
    bob.sendline("can I talk")
    bob.expect(r"! muted: [^\r]+ \(until \d\d:\d\d\)\r")
    ann.sendline("/unmute bob")
    ann.expect_exact("* bob may write in dev again")
    ann.sendline("/ban bob 1h spamming")
    ann.expect(r"\* bob is banned from dev \(until \d\d:\d\d\)")
    bob.expect(r"! ann banned you from dev \(until \d\d:\d\d\): spamming; messages go to lobby\r")
    bob.sendline("/join dev")
    bob.expect(r"! banned: [^\r]+ \(until \d\d:\d\d\)\r")

    ann.sendline("/audit")
    ann.expect_exact("* moderation log of dev, newest first: 4 entries")
    ann.expect(r"\] ann ban bob \"spamming\"")
    ann.sendline("/help")
    ann.expect_exact("* /deleteaccount ")

    bob.sendline("/logout")
    assert ended(bob) == 0
    assert "* signed out" in screen(bob)
    for shown in (screen(ann), screen(bob)):
        assert "Traceback" not in shown


def test_password_and_delete_account_from_the_terminal(chat: Chat, server: ServerProcess) -> None:
    """/password asks without echo and signs the other terminal out; /deleteaccount exits 0."""
    asyncio.run(register(server, "cat"))
    cat, cat_too = user(chat, server, "cat"), user(chat, server, "cat")
    cat.sendline("/password")
    cat.expect_exact("current password:")
    cat.sendline(PASSWORD)
    cat.expect_exact("new password:")
    cat.sendline(NEW_PASSWORD)
    cat.expect_exact("new password again:")
    cat.sendline(NEW_PASSWORD)
    cat.expect_exact("* password changed; 1 other session signed out")
    assert ended(cat_too) == 1
    assert re.findall(r"roomcast: [^\r\n]*", screen(cat_too)) == [
        "roomcast: error: the server ended this session: signed out"
    ]

    cat.sendline("/deleteaccount")
    cat.expect_exact("password of cat, to delete the account:")
    cat.sendline(NEW_PASSWORD)
    cat.expect_exact("type yes:")
    cat.sendline("yes")
    assert ended(cat) == 0
    shown = screen(cat)
    assert "* account deleted" in shown
    assert PASSWORD not in shown and NEW_PASSWORD not in shown  # nothing echoed
    assert "Traceback" not in shown
