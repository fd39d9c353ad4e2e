"""Read markers on the chat page, in a real Chromium against a real server.

Unread and mention badges in the sidebar and the count in the tab's title,
cleared by what is on screen while the tab is visible (never by a hidden
tab), the "new messages" line, a read on one device clearing the badge on
another, "Seen" receipts in direct conversations and rooms, the settings
toggles, and guests counting on their own. The other side is a second page
or a bare WebSocket. ``ROOMCAST_SCREENSHOT=1`` makes the last test write
``docs/img/unread.png``.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Locator, Page, expect
from websockets.asyncio.client import ClientConnection

from tests.integration.browser import (
    EXPECT_MS,
    PageLog,
    bodies,
    chromium,
    join,
    messages,
    open_page,
    register,
    say,
    sign_in,
)
from tests.integration.serverproc import ServerProcess
from tests.integration.users import call, login, sign_up, user_ws
from tests.integration.wsclient import answer, recv_type, send_json

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "img" / "unread.png"

expect.set_options(timeout=EXPECT_MS)

#: Records every text frame the page writes to its WebSocket in ``window.__sent``.
RECORD_SENT = """(() => {
  const send = WebSocket.prototype.send;
  window.__sent = [];
  WebSocket.prototype.send = function (data) {
    if (typeof data === "string") {
      try { window.__sent.push(JSON.parse(data)); } catch { /* not JSON */ }
    }
    return send.call(this, data);
  };
})();"""

#: The tab goes to the background, as far as the page can tell.
HIDE = """() => {
  Object.defineProperty(document, "visibilityState", { configurable: true, get: () => "hidden" });
  Object.defineProperty(document, "hidden", { configurable: true, get: () => true });
  document.dispatchEvent(new Event("visibilitychange"));
}"""

#: The tab comes back.
SHOW = """() => {
  delete document.visibilityState;
  delete document.hidden;
  document.dispatchEvent(new Event("visibilitychange"));
}"""


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


async def recorded_page(browser: Browser, server: ServerProcess) -> tuple[Page, PageLog]:
    """A page whose sent frames are recorded and whose timers run on Playwright's clock."""
    page, log = await open_page(browser, server.http_url("/"))
    await page.add_init_script(RECORD_SENT)
    await page.clock.install()
    await page.reload()
    return page, log


async def sent(page: Page, kind: str) -> list[dict[str, Any]]:
    """The frames of type ``kind`` the page has written."""
    frames = await page.evaluate("kind => window.__sent.filter(f => f.type === kind)", kind)
    assert isinstance(frames, list)
    return frames


async def request(ws: ClientConnection, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Send a frame with an id; the frame answering it."""
    fid = uuid.uuid4().hex
    await send_json(ws, kind, payload, id=fid)
    reply = await answer(ws, fid)
    assert reply["type"] != "error", reply
    return reply


async def chat(ws: ClientConnection, room: str, text: str) -> int:
    """Say ``text`` in ``room``; its seq."""
    reply = await request(ws, "chat", {"room": room, "message": text})
    return int(reply["payload"]["seq"])


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Poll the async ``check`` until it holds; fail after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


async def _is(value: Awaitable[int], expected: int) -> bool:
    """Whether the awaited ``value`` is ``expected``."""
    return await value == expected


async def room_unread(server: ServerProcess, token: str, room: str) -> int:
    """The server's unread count of ``room`` for the token's user (``GET /api/unread``)."""
    status, body = await call(server, "GET", "/api/unread", bearer=token)
    assert status == 200, body
    for item in body["rooms"]:
        if item["room"] == room:
            return int(item["unread"])
    return 0


def nav(page: Page, key: str) -> Locator:
    """The sidebar entry of ``#room`` or ``@user``."""
    return page.get_by_test_id(f"nav-{key}")


def message(page: Page, text: str, conv: str = "#lobby") -> Locator:
    """The one message in ``conv`` whose body is ``text``."""
    return messages(page, conv).filter(
        has=page.locator('[data-testid="body"]', has_text=re.compile(rf"^{re.escape(text)}$"))
    )


def new_line(page: Page, conv: str = "#lobby") -> Locator:
    """The "new messages" line of ``conv``."""
    return page.locator(f'[data-conv="{conv}"] [data-testid="new-line"]')


def after_line(page: Page, conv: str = "#lobby") -> Locator:
    """The message right after the "new messages" line."""
    return page.locator(
        f'[data-conv="{conv}"] [data-testid="new-line"] + [data-testid="msg"] [data-testid="body"]'
    )


async def test_badges_count_messages_from_others_and_clear_once_on_screen(
    browser: Browser, server: ServerProcess
) -> None:
    """Messages in a room not shown are badges and the title's count; seen on screen, they clear."""
    bob = await user_ws(server, await sign_up(server, "bob"))
    page, log = await open_page(browser, server.http_url("/"))
    await register(page, "ann")
    token = await login(server, "ann")
    await join(page, "garden")

    await chat(bob, "lobby", "first news")
    await chat(bob, "lobby", "are you around, @ann?")
    await chat(bob, "lobby", "third news")
    await expect(nav(page, "#lobby").get_by_test_id("unread")).to_have_text("3")
    await expect(nav(page, "#lobby").get_by_test_id("mention-badge")).to_have_text("@1")
    await expect(page).to_have_title("(3) roomcast")
    assert await room_unread(server, token, "lobby") == 3

    await nav(page, "#lobby").click()
    await expect(bodies(page)).to_have_text(["first news", "are you around, @ann?", "third news"])
    await expect(nav(page, "#lobby").get_by_test_id("unread")).to_have_count(0)
    await expect(nav(page, "#lobby").get_by_test_id("mention-badge")).to_have_count(0)
    await expect(page).to_have_title("roomcast")
    # The page told the server: the marker moved, for every device.
    await eventually(lambda: _is(room_unread(server, token, "lobby"), 0))

    # Looking at the room, a new message is read as it shows: no badge.
    await chat(bob, "lobby", "one more")
    await expect(bodies(page).last).to_have_text("one more")
    await eventually(lambda: _is(room_unread(server, token, "lobby"), 0))
    await expect(nav(page, "#lobby").get_by_test_id("unread")).to_have_count(0)
    await expect(page).to_have_title("roomcast")
    await bob.close()
    assert log.problems() == []


async def test_the_new_messages_line_marks_where_the_user_left_off(
    browser: Browser, server: ServerProcess
) -> None:
    """Opened with unread messages, a room shows the line before the first one; read, it goes."""
    bob = await user_ws(server, await sign_up(server, "bob"))
    page, log = await open_page(browser, server.http_url("/"))
    await register(page, "ann")
    token = await login(server, "ann")
    await say(page, "I was here")
    await chat(bob, "lobby", "seen already")
    await expect(bodies(page)).to_have_text(["I was here", "seen already"])
    await eventually(lambda: _is(room_unread(server, token, "lobby"), 0))
    await expect(new_line(page)).to_have_count(0)

    await join(page, "garden")
    await chat(bob, "lobby", "news one")
    await chat(bob, "lobby", "news two")
    await expect(nav(page, "#lobby").get_by_test_id("unread")).to_have_text("2")
    await nav(page, "#lobby").click()
    await expect(new_line(page)).to_be_visible()
    await expect(new_line(page)).to_have_text("New messages")
    await expect(after_line(page)).to_have_text("news one")
    before = page.locator(
        '[data-conv="#lobby"] [data-testid="msg"]:has(+ [data-testid="new-line"])'
    ).get_by_test_id("body")
    await expect(before).to_have_text("seen already")
    # The line stays while the room is open, also once read and with more coming.
    await expect(nav(page, "#lobby").get_by_test_id("unread")).to_have_count(0)
    await chat(bob, "lobby", "news three")
    await expect(bodies(page).last).to_have_text("news three")
    await expect(after_line(page)).to_have_text("news one")

    # Opened again with nothing new: no line.
    await nav(page, "#garden").click()
    await nav(page, "#lobby").click()
    await expect(bodies(page).last).to_have_text("news three")
    await expect(new_line(page)).to_have_count(0)
    await bob.close()
    assert log.problems() == []


async def test_a_hidden_tab_reads_nothing_and_another_device_clears_its_badges(
    browser: Browser, server: ServerProcess
) -> None:
    """A hidden tab leaves messages unread; the same user reading on a second page clears them."""
    bob = await user_ws(server, await sign_up(server, "bob"))
    first, first_log = await recorded_page(browser, server)
    await register(first, "ann")
    token = await login(server, "ann")
    await expect(first.get_by_test_id("title")).to_have_text("#lobby")

    await first.evaluate(HIDE)
    await chat(bob, "lobby", "while you were away")
    await chat(bob, "lobby", "still away?")
    # Shown in the open room, but nobody saw them: unread, and no `read` was sent.
    await expect(bodies(first)).to_have_text(["while you were away", "still away?"])
    await expect(nav(first, "#lobby").get_by_test_id("unread")).to_have_text("2")
    await expect(first).to_have_title("(2) roomcast")
    await first.clock.run_for(5000)  # long past the read debounce
    assert await sent(first, "read") == []
    assert await room_unread(server, token, "lobby") == 2

    # A second device: the line where ann left off, the messages read there...
    second, second_log = await open_page(browser, server.http_url("/"))
    await sign_in(second, "ann")
    await expect(new_line(second)).to_be_visible()
    await expect(after_line(second)).to_have_text("while you were away")
    await expect(nav(second, "#lobby").get_by_test_id("unread")).to_have_count(0)
    await expect(second).to_have_title("roomcast")
    # ...and the hidden page hears of it: its badge and title clear, it sent nothing.
    await expect(nav(first, "#lobby").get_by_test_id("unread")).to_have_count(0)
    await expect(first).to_have_title("roomcast")
    assert await sent(first, "read") == []
    assert await room_unread(server, token, "lobby") == 0

    # Back on the first page with something new: the tab must be visible to read it.
    await chat(bob, "lobby", "one for the first page")
    await expect(nav(first, "#lobby").get_by_test_id("unread")).to_have_text("1")
    await expect(nav(second, "#lobby").get_by_test_id("unread")).to_have_count(0)
    await first.evaluate(SHOW)
    await expect(nav(first, "#lobby").get_by_test_id("unread")).to_have_count(0)
    await expect(new_line(first)).to_be_visible()
    await expect(after_line(first)).to_have_text("one for the first page")
    await first.clock.run_for(2000)
    reads = await sent(first, "read")
    assert [f["payload"] for f in reads][-1:] == [
        {"room": "lobby", "seq": await _last_seq(server, token)}
    ]
    await eventually(lambda: _is(room_unread(server, token, "lobby"), 0))
    await bob.close()
    assert first_log.problems() == [] and second_log.problems() == []


async def _last_seq(server: ServerProcess, token: str) -> int:
    status, body = await call(server, "GET", "/api/unread", bearer=token)
    assert status == 200, body
    return int(next(r["last_seq"] for r in body["rooms"] if r["room"] == "lobby"))


async def test_seen_in_a_direct_conversation_once_the_peer_reads(
    browser: Browser, server: ServerProcess
) -> None:
    """My message shows "Seen" once the peer's page has it on screen; a new page still says so."""
    ann, ann_log = await open_page(browser, server.http_url("/"))
    bob, bob_log = await open_page(browser, server.http_url("/"))
    await register(ann, "ann")
    await register(bob, "bob")
    await ann.get_by_test_id("dm-name").fill("bob")
    await ann.get_by_test_id("dm-name").press("Enter")
    await say(ann, "lunch at noon?")
    await expect(messages(ann, "@bob").last).to_have_attribute("data-state", "acked")
    await say(ann, "or one?")
    await expect(messages(ann, "@bob").last).to_have_attribute("data-state", "acked")
    seen = messages(ann, "@bob").get_by_test_id("receipt").filter(has_text="Seen")
    await expect(seen).to_have_count(0)

    await expect(nav(bob, "@ann").get_by_test_id("unread")).to_have_text("2")
    await expect(bob).to_have_title("(2) roomcast")
    await nav(bob, "@ann").click()
    await expect(bodies(bob, "@ann")).to_have_text(["lunch at noon?", "or one?"])
    await expect(nav(bob, "@ann").get_by_test_id("unread")).to_have_count(0)
    await expect(bob).to_have_title("roomcast")

    await expect(seen).to_have_count(1)
    await expect(message(ann, "or one?", "@bob").get_by_test_id("receipt")).to_have_text("Seen")
    await expect(seen).to_have_attribute("title", "Seen by bob")

    # A newer message not read yet: "Seen" stays on the last one bob read.
    await nav(bob, "#lobby").click()
    await expect(bob.get_by_test_id("title")).to_have_text("#lobby")
    await say(ann, "bring the slides")
    await expect(messages(ann, "@bob").last).to_have_attribute("data-state", "acked")
    await expect(nav(bob, "@ann").get_by_test_id("unread")).to_have_text("1")
    await expect(message(ann, "or one?", "@bob").get_by_test_id("receipt")).to_have_text("Seen")
    await expect(seen).to_have_count(1)
    await nav(bob, "@ann").click()
    await expect(bodies(bob, "@ann").last).to_have_text("bring the slides")
    await expect(message(ann, "bring the slides", "@bob").get_by_test_id("receipt")).to_have_text(
        "Seen"
    )
    await expect(seen).to_have_count(1)

    # A new page of ann's reads the receipt from direct_history.
    again, again_log = await open_page(browser, server.http_url("/"))
    await sign_in(again, "ann")
    await nav(again, "@bob").click()
    await expect(message(again, "bring the slides", "@bob").get_by_test_id("receipt")).to_have_text(
        "Seen"
    )
    assert ann_log.problems() == [] and bob_log.problems() == [] and again_log.problems() == []


async def test_a_bare_client_reading_a_direct_message_shows_seen(
    browser: Browser, server: ServerProcess
) -> None:
    """A peer's `read` with `with` (its own stream's seq) shows "Seen"; the page reads replies."""
    bob = await user_ws(server, await sign_up(server, "bob"))
    page, log = await open_page(browser, server.http_url("/"))
    await register(page, "ann")
    await page.get_by_test_id("dm-name").fill("bob")
    await page.get_by_test_id("dm-name").press("Enter")
    await say(page, "did you get the file?")
    frame = await recv_type(bob, "direct")
    assert frame["payload"]["message"] == "did you get the file?"
    seen = messages(page, "@bob").get_by_test_id("receipt").filter(has_text="Seen")
    await expect(seen).to_have_count(0)
    await request(bob, "read", {"direct": True, "with": "ann", "seq": frame["payload"]["seq"]})
    await expect(messages(page, "@bob").last.get_by_test_id("receipt")).to_have_text("Seen")

    # bob answers; ann is on the conversation, so it is read at once.
    await request(bob, "direct", {"to": "ann", "message": "yes, thanks"})
    await expect(bodies(page, "@bob").last).to_have_text("yes, thanks")
    await expect(nav(page, "@bob").get_by_test_id("unread")).to_have_count(0)
    receipt = await recv_type(bob, "receipt")
    assert receipt["payload"]["direct"] is True and receipt["payload"]["user"] == "ann"
    await bob.close()
    assert log.problems() == []


async def test_room_receipts_and_the_owner_turns_them_off(
    browser: Browser, server: ServerProcess
) -> None:
    """In a small room "Seen by" lists readers; the owner's toggle turns receipts off for it."""
    bob_token = await sign_up(server, "bob")
    page, log = await open_page(browser, server.http_url("/"))
    await register(page, "ann")
    token = await login(server, "ann")
    await page.get_by_test_id("room-private").check()
    await page.get_by_test_id("room-members").fill("bob")
    await join(page, "team")
    toggle = page.get_by_test_id("room-receipts")
    await expect(toggle).to_be_visible()
    await expect(toggle).to_be_checked()

    bob = await user_ws(server, bob_token)
    await request(bob, "join", {"room": "team"})
    await say(page, "standup in five")
    await expect(messages(page, "#team").last).to_have_attribute("data-state", "acked")
    mine = message(page, "standup in five", "#team")
    seq = int(await mine.get_attribute("data-seq") or 0)
    assert seq > 0
    await request(bob, "read", {"room": "team", "seq": seq})
    await expect(mine.get_by_test_id("receipt")).to_have_text("Seen by bob")

    await toggle.uncheck()
    await expect(mine.get_by_test_id("receipt")).to_have_count(1)
    await expect(mine.get_by_test_id("receipt")).to_be_hidden()
    await expect(toggle).not_to_be_checked()
    status, body = await call(server, "GET", "/api/rooms", bearer=token)
    assert status == 200
    assert next(r for r in body["rooms"] if r["name"] == "team")["receipts"] is False

    # Not the owner: bob's page has no such toggle, in team or elsewhere.
    other, other_log = await open_page(browser, server.http_url("/"))
    await sign_in(other, "bob")
    await nav(other, "#team").click()
    await expect(other.get_by_test_id("title")).to_have_text("#team")
    await expect(other.get_by_test_id("room-receipts")).to_be_hidden()
    await expect(other.get_by_test_id("hide-receipts")).to_be_visible()
    await bob.close()
    assert log.problems() == [] and other_log.problems() == []


async def test_hide_my_read_receipts_is_saved(browser: Browser, server: ServerProcess) -> None:
    """The settings toggle saves hide_receipts; a new page reads it back; guests have no toggle."""
    page, log = await open_page(browser, server.http_url("/"))
    await register(page, "ann")
    token = await login(server, "ann")
    box = page.get_by_test_id("hide-receipts")
    await expect(box).to_be_visible()
    await expect(box).not_to_be_checked()
    await box.check()

    async def hidden() -> bool:
        status, body = await call(server, "GET", "/api/me/settings", bearer=token)
        return status == 200 and body["hide_receipts"] is True

    await eventually(hidden)
    again, again_log = await open_page(browser, server.http_url("/"))
    await sign_in(again, "ann")
    await expect(again.get_by_test_id("hide-receipts")).to_be_checked()

    guest, guest_log = await open_page(browser, server.http_url("/"))
    await guest.get_by_test_id("guest-name").fill("visitor")
    await guest.get_by_test_id("guest-go").click()
    await expect(guest.get_by_test_id("banner")).to_have_attribute("data-state", "connected")
    await expect(guest.get_by_test_id("settings")).to_be_hidden()
    assert log.problems() == [] and again_log.problems() == [] and guest_log.problems() == []


async def test_a_guest_counts_on_its_own(browser: Browser, server: ServerProcess) -> None:
    """A guest's badges and title come from the page alone; it sends no `read` or `unread`."""
    bob = await user_ws(server, await sign_up(server, "bob"))
    page, log = await recorded_page(browser, server)
    await page.get_by_test_id("guest-name").fill("visitor")
    await page.get_by_test_id("guest-go").click()
    await expect(page.get_by_test_id("banner")).to_have_attribute("data-state", "connected")
    await join(page, "garden")
    await chat(bob, "lobby", "hello visitor")
    await chat(bob, "lobby", "anyone?")
    await expect(nav(page, "#lobby").get_by_test_id("unread")).to_have_text("2")
    await expect(page).to_have_title("(2) roomcast")
    await nav(page, "#lobby").click()
    await expect(after_line(page)).to_have_text("hello visitor")
    await expect(nav(page, "#lobby").get_by_test_id("unread")).to_have_count(0)
    await expect(page).to_have_title("roomcast")
    await page.clock.run_for(2000)
    assert await sent(page, "read") == [] and await sent(page, "unread") == []
    await bob.close()
    assert log.problems() == []


async def test_unread_everywhere_at_a_glance(browser: Browser, server: ServerProcess) -> None:
    """Badges for rooms and people, the title's total, the line and "Seen by" together."""
    bob = await user_ws(server, await sign_up(server, "bob"))
    cat = await user_ws(server, await sign_up(server, "cat"))
    page, log = await open_page(browser, server.http_url("/"))
    await register(page, "ann")
    # A public room ann owns (made over HTTP): receipts on, her toggle for them.
    status, body = await call(
        server,
        "POST",
        "/api/rooms",
        json={"name": "launch", "private": False},
        bearer=await login(server, "ann"),
    )
    assert status == 201, body
    await join(page, "launch")
    for ws in (bob, cat):
        await request(ws, "join", {"room": "launch"})
    await say(page, "Plan for Friday: ship read markers")
    await say(page, "Who can review the page?")
    await expect(messages(page, "#launch").last).to_have_attribute("data-state", "acked")
    seq = int(await messages(page, "#launch").last.get_attribute("data-seq") or 0)
    for ws in (bob, cat):
        await request(ws, "read", {"room": "launch", "seq": seq})
    last = message(page, "Who can review the page?", "#launch")
    await expect(last.get_by_test_id("receipt")).to_have_text("Seen by bob, cat")

    await page.evaluate(HIDE)
    await chat(bob, "launch", "I can, after lunch")
    await chat(cat, "launch", "Me too, send the link")
    await chat(bob, "lobby", "Coffee anyone?")
    await chat(cat, "lobby", "@ann the demo room is booked")
    await chat(bob, "lobby", "Build is green again")
    await request(cat, "direct", {"to": "ann", "message": "Got a minute?"})
    await expect(nav(page, "#launch").get_by_test_id("unread")).to_have_text("2")
    await expect(page).to_have_title("(6) roomcast")
    await page.evaluate(SHOW)
    await expect(after_line(page, "#launch")).to_have_text("I can, after lunch")
    await expect(nav(page, "#launch").get_by_test_id("unread")).to_have_count(0)
    await expect(nav(page, "#lobby").get_by_test_id("unread")).to_have_text("3")
    await expect(nav(page, "#lobby").get_by_test_id("mention-badge")).to_have_text("@1")
    await expect(nav(page, "@cat").get_by_test_id("unread")).to_have_text("1")
    await expect(page).to_have_title("(4) roomcast")
    await expect(last.get_by_test_id("receipt")).to_have_text("Seen by bob, cat")
    await expect(page.get_by_test_id("room-receipts")).to_be_checked()

    if os.environ.get("ROOMCAST_SCREENSHOT") == "1":
        await page.get_by_test_id("input").blur()
        await page.mouse.move(0, 0)
        await expect(page.get_by_test_id("typing")).to_have_text("")
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOT))
    for ws in (bob, cat):
        await ws.close()
    assert log.problems() == []
