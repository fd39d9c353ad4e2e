"""The web chat page (``GET /``) in a real browser: Chromium driven by Playwright.

Every test runs the real server as a process and the page in Debian's
Chromium (see ``browser.py``; never a downloaded browser). Network outages
are real too: the server is killed and restarted, and a TCP proxy refuses
the page's connections while the network is "down".
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, TimeoutError as PlaywrightTimeoutError, expect

from roomcast.client import Client
from tests.integration.browser import (
    EXPECT_MS,
    BlockingProxy,
    as_guest,
    bodies,
    chromium,
    connected,
    join,
    messages,
    open_page,
    png,
    register,
    say,
    sign_in,
)
from tests.integration.serverproc import ServerFactory, ServerProcess, start_server
from tests.integration.users import call, sign_up

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "img" / "page.png"

expect.set_options(timeout=EXPECT_MS)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


async def test_two_people_chat_with_presence_and_typing(
    browser: Browser, server: ServerProcess
) -> None:
    """A guest and a registered user chat in the lobby and a new room, see each other and typing."""
    ann, ann_log = await open_page(browser, server.http_url("/"))
    bob, bob_log = await open_page(browser, server.http_url("/"))
    csp = (await ann.request.get(server.http_url("/"))).headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp

    await as_guest(ann, "ann")
    await register(bob, "bob")
    await expect(ann.get_by_test_id("me")).to_have_text("ann (guest)")
    await expect(bob.get_by_test_id("me")).to_have_text("bob")

    # Presence: each sees the other in the lobby's member list.
    await expect(ann.get_by_test_id("members")).to_contain_text("bob")
    await expect(bob.get_by_test_id("members")).to_contain_text("ann")

    await say(ann, "hello from ann")
    await expect(bodies(bob)).to_have_text(["hello from ann"])
    mine = messages(ann).last
    await expect(mine).to_have_attribute("data-state", "acked")
    await expect(mine.locator(".from")).to_have_text("ann")
    await expect(mine.locator("time")).to_have_attribute("datetime", re.compile(r"^\d{4}-"))
    await expect(ann.locator('[data-conv="#lobby"] [data-testid="day"]')).to_have_text(["Today"])

    # Typing: bob types, ann sees it.
    await bob.get_by_test_id("input").press_sequentially("typing here")
    await expect(ann.get_by_test_id("typing")).to_have_text("bob is typing…")
    await bob.get_by_test_id("input").fill("")

    # A new room: bob makes it, ann finds it in the room list and joins.
    await join(bob, "garden")
    await ann.get_by_test_id("rooms-refresh").click()
    await expect(ann.get_by_test_id("nav-#garden").locator(".count")).to_have_text("1")
    await ann.get_by_test_id("nav-#garden").click()
    await expect(ann.get_by_test_id("title")).to_have_text("#garden")
    await expect(bob.get_by_test_id("members")).to_contain_text("ann")
    await expect(bob.get_by_test_id("member-count")).to_have_text("2")
    await say(bob, "welcome to the garden")
    await expect(bodies(ann, "#garden")).to_have_text(["welcome to the garden"])
    await say(ann, "thanks bob")
    await expect(bodies(bob, "#garden")).to_have_text(["welcome to the garden", "thanks bob"])

    # A message in a room you are not looking at is counted as unread.
    await bob.get_by_test_id("nav-#lobby").click()
    await say(bob, "back in the lobby")
    await expect(ann.get_by_test_id("nav-#lobby").get_by_test_id("unread")).to_have_text("1")
    await ann.get_by_test_id("nav-#lobby").click()
    await expect(bodies(ann)).to_have_text(["hello from ann", "back in the lobby"])
    await expect(ann.get_by_test_id("nav-#lobby").get_by_test_id("unread")).to_have_count(0)

    assert ann_log.problems() == [] and bob_log.problems() == []


async def test_server_killed_and_restarted_nothing_lost_nothing_twice(
    browser: Browser, server: ServerProcess, tmp_path: Path
) -> None:
    """After SIGKILL and restart the page resumes: no gap, no duplicate, offline text sent once."""
    carol_token = await sign_up(server, "carol")
    proxy = BlockingProxy(server.port)
    await proxy.start()
    restarted: ServerProcess | None = None
    try:
        # The page goes through the proxy; ?backoff=50,500 keeps reconnects quick.
        page, log = await open_page(browser, f"http://127.0.0.1:{proxy.port}/?backoff=50,500")
        await register(page, "dave")
        await say(page, "before the crash")
        await expect(messages(page).last).to_have_attribute("data-state", "acked")

        proxy.blocked = True  # the network is down from now on, for the page
        server.stop(signal.SIGKILL)
        banner = page.get_by_test_id("banner")
        await expect(banner).to_have_attribute("data-state", "reconnecting")
        await expect(banner).to_contain_text("Reconnecting")
        await say(page, "typed while offline")
        await expect(messages(page).last).to_have_attribute("data-state", "sending")
        await expect(banner).to_contain_text("1 message queued")

        # Same port, same data dir: carol talks while the page is still cut off.
        restarted = start_server(tmp_path, "--port", str(server.port))
        async with Client(restarted.ws_url(), token=carol_token) as carol:
            for n in range(1, 4):
                await carol.send_chat(f"during the outage {n}")
            proxy.blocked = False
            await connected(page)
            expected = [
                "before the crash",
                "during the outage 1",
                "during the outage 2",
                "during the outage 3",
                "typed while offline",
            ]
            await expect(bodies(page)).to_have_text(expected)
            await expect(messages(page).last).to_have_attribute("data-state", "acked")
            seqs = [
                int(s) for s in await messages(page).evaluate_all("l => l.map(m => m.dataset.seq)")
            ]
            assert seqs == list(range(seqs[0], seqs[0] + 5)), seqs

        # The server stored the offline message exactly once, after carol's.
        status, body = await call(
            restarted, "GET", "/api/rooms/lobby/messages?limit=100", bearer=carol_token
        )
        assert status == 200
        assert [m["message"] for m in body["messages"]] == expected
        await asyncio.sleep(0.3)  # anything repeated would have arrived by now
        await expect(bodies(page)).to_have_count(5)
        assert log.page_errors == [] and log.dialogs == []
    finally:
        await proxy.stop()
        if restarted is not None:
            restarted.stop()


async def test_html_in_messages_is_text(browser: Browser, server: ServerProcess) -> None:
    """Markup in a message shows as text: no element is made, no script runs, links are safe."""
    page, log = await open_page(browser, server.http_url("/"))
    await as_guest(page, "erin")
    attack = "<img src=x onerror=alert(1)>"
    link = "see https://example.org/a?b=1&c=<b>x</b> now"
    token = await sign_up(server, "mallory")
    async with Client(server.ws_url(), token=token) as mallory:
        await mallory.send_chat(attack)
        await mallory.send_chat(link)
        await mallory.send_chat("javascript:alert(2) <script>alert(3)</script>")
    await say(page, "<b>bold?</b> <svg onload=alert(4)>")
    await expect(bodies(page)).to_have_text(
        [
            attack,
            link,
            "javascript:alert(2) <script>alert(3)</script>",
            "<b>bold?</b> <svg onload=alert(4)>",
        ]
    )
    lobby = page.locator('[data-conv="#lobby"]')
    assert await lobby.locator("img, script, svg, b").count() == 0
    anchor = lobby.locator("a")
    await expect(anchor).to_have_count(1)
    # "<" cannot be in a URL: it ends the link.
    await expect(anchor).to_have_attribute("href", "https://example.org/a?b=1&c=")
    await expect(anchor).to_have_attribute("rel", "noopener noreferrer")
    await expect(anchor).to_have_attribute("target", "_blank")
    await page.wait_for_timeout(300)
    assert log.dialogs == []
    assert log.problems() == []


async def test_image_file_inline_and_screenshot(
    browser: Browser, server: ServerProcess, tmp_path: Path
) -> None:
    """A registered user's PNG shows inline on both pages (the CSP allows it); a screenshot."""
    fay, fay_log = await open_page(browser, server.http_url("/"))
    gus, gus_log = await open_page(browser, server.http_url("/"))
    await register(fay, "fay")
    await as_guest(gus, "gus")
    await join(fay, "design")
    await join(gus, "design")
    await say(gus, "can you share the mock-up? https://example.org/brief")
    await expect(bodies(fay, "#design")).to_have_count(1)
    picture = tmp_path / "mock-up.png"
    picture.write_bytes(png(240, 150))
    await fay.get_by_test_id("file-input").set_input_files(str(picture))
    for page in (fay, gus):
        image = page.locator('[data-conv="#design"] [data-testid="file-image"]')
        await expect(image).to_have_count(1)
        await expect(image).to_have_attribute("src", re.compile(r"^/files/[0-9a-f]{32}\?"))
        await page.wait_for_function(
            "() => document.querySelector('[data-testid=file-image]')?.naturalWidth === 240"
        )
    await expect(messages(fay, "#design").last).to_have_attribute("data-state", "acked")
    # A file dropped on the messages is sent too; not an image, so a download link.
    dropped = await fay.evaluate_handle(
        "() => { const d = new DataTransfer();"
        " d.items.add(new File(['plain words'], 'notes.txt', {type: 'text/plain'}));"
        " return d; }"
    )
    await fay.dispatch_event('[data-testid="scroller"]', "drop", {"dataTransfer": dropped})
    link = gus.locator('[data-conv="#design"] a', has_text="notes.txt")
    await expect(link).to_have_count(1)
    download = await gus.request.get(server.http_url(await link.get_attribute("href") or ""))
    assert download.ok and await download.body() == b"plain words"
    await say(fay, "here it is, the header is bigger now")
    await expect(bodies(gus, "#design")).to_have_count(4)
    # Guests cannot send files: the attach control is not offered.
    await expect(gus.locator("#attach-label")).to_be_hidden()
    if os.environ.get("ROOMCAST_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        await gus.screenshot(path=str(SCREENSHOT))
    assert fay_log.problems() == [] and gus_log.problems() == []


async def test_phone_screen_and_keyboard(browser: Browser, server: ServerProcess) -> None:
    """On a phone-sized screen the sidebar folds behind a toggle; everything works by keyboard."""
    page, log = await open_page(browser, server.http_url("/"), viewport=(390, 760))
    await page.keyboard.type("hal")  # the nickname field has focus on load
    await page.keyboard.press("Enter")
    await connected(page)
    sidebar = page.get_by_test_id("sidebar")
    menu = page.get_by_test_id("menu")
    await expect(menu).to_be_visible()
    await expect(sidebar).to_be_hidden()
    await menu.click()
    await expect(menu).to_have_attribute("aria-expanded", "true")
    await expect(sidebar).to_be_visible()
    await page.keyboard.press("Escape")
    await expect(sidebar).to_be_hidden()
    await page.get_by_test_id("input").focus()
    await page.keyboard.type("typed with the keyboard")
    await page.keyboard.press("Enter")
    await expect(messages(page).last).to_have_attribute("data-state", "acked")
    assert log.problems() == []


async def test_direct_messages_in_their_own_pane(browser: Browser, server: ServerProcess) -> None:
    """Registered users exchange direct messages in a pane of their own, counted unread."""
    ivy, ivy_log = await open_page(browser, server.http_url("/"))
    jon, jon_log = await open_page(browser, server.http_url("/"))
    await register(ivy, "ivy")
    await register(jon, "jon")
    await ivy.get_by_test_id("dm-name").fill("jon")
    await ivy.get_by_test_id("dm-name").press("Enter")
    await expect(ivy.get_by_test_id("title")).to_have_text("@jon")
    await say(ivy, "just between us")
    await expect(messages(ivy, "@jon").last).to_have_attribute("data-state", "acked")
    await expect(jon.get_by_test_id("nav-@ivy").get_by_test_id("unread")).to_have_text("1")
    await expect(bodies(jon)).to_have_count(0)  # nothing leaked into the lobby
    await jon.get_by_test_id("nav-@ivy").click()
    await expect(bodies(jon, "@ivy")).to_have_text(["just between us"])
    await say(jon, "sure")
    await expect(bodies(ivy, "@jon")).to_have_text(["just between us", "sure"])
    # A direct message to nobody is refused, and the page says so.
    await ivy.get_by_test_id("dm-name").fill("nobody-here")
    await ivy.get_by_test_id("dm-name").press("Enter")
    await say(ivy, "hello?")
    await expect(messages(ivy, "@nobody-here").last).to_have_attribute("data-state", "failed")
    await expect(ivy.get_by_test_id("error")).to_contain_text("unknown_user")
    assert ivy_log.problems() == [] and jon_log.problems() == []


async def test_direct_messages_from_before_the_page_opened_are_listed(
    browser: Browser, server: ServerProcess
) -> None:
    """Direct messages sent before signing in show in their conversation, not as unread news."""
    await sign_up(server, "lea")
    kai_token = await sign_up(server, "kai")
    async with Client(server.ws_url(), token=kai_token) as kai:
        await kai.send_direct("lea", "are you there?")
        await kai.send_direct("lea", "call me")
    page, log = await open_page(browser, server.http_url("/"))
    await sign_in(page, "lea")
    await page.get_by_test_id("nav-@kai").click()
    await expect(bodies(page, "@kai")).to_have_text(["are you there?", "call me"])
    assert log.problems() == []


async def test_refused_nickname_is_shown(browser: Browser, server: ServerProcess) -> None:
    """A nickname the server refuses brings back the sign-in form with the server's reason."""
    page, log = await open_page(browser, server.http_url("/"))
    await page.get_by_test_id("guest-name").fill("guest-1234")
    await page.get_by_test_id("guest-go").click()
    await expect(page.get_by_test_id("signin")).to_be_visible()
    await expect(page.get_by_test_id("signin-error")).to_contain_text("guest-1234 was refused")
    await expect(page.get_by_test_id("guest-name")).to_have_value("guest-1234")
    assert log.problems() == []


async def test_private_rooms_and_scroll_back(browser: Browser, server: ServerProcess) -> None:
    """A private room made with a member is listed for that member only; history pages back."""
    await sign_up(server, "nia")
    await sign_up(server, "oli")
    out_token = await sign_up(server, "pat")
    nia, nia_log = await open_page(browser, server.http_url("/"))
    await register(nia, "ned")
    await nia.get_by_test_id("room-private").check()
    await nia.get_by_test_id("room-members").fill("oli")
    await join(nia, "backstage")
    status, body = await call(server, "GET", "/api/rooms", bearer=out_token)
    assert status == 200 and "backstage" not in [r["name"] for r in body["rooms"]]
    # 120 messages in the lobby, sent before the page opens: 50 shown, then pages of 50.
    async with Client(server.ws_url(), token=out_token) as pat:
        for i in range(120):
            await pat.send_chat(f"old {i}")
    page, log = await open_page(browser, server.http_url("/"))
    await register(page, "quin")
    await expect(bodies(page)).to_have_count(50)
    await expect(bodies(page).last).to_have_text("old 119")
    # Scrolling the button into view loads the next page by itself, and may
    # load the last one too (hiding the button): a click that finds it
    # gone or moving is not needed.
    older = page.get_by_test_id("older")
    with contextlib.suppress(PlaywrightTimeoutError):
        await older.click(timeout=5000)
    await expect(bodies(page).nth(99)).to_be_attached()
    if await bodies(page).count() < 120 and await older.is_visible():
        with contextlib.suppress(PlaywrightTimeoutError):  # it loaded and hid meanwhile
            await older.click(timeout=5000)
    await expect(bodies(page)).to_have_count(120)
    await expect(bodies(page).first).to_have_text("old 0")
    await expect(page.get_by_test_id("older")).to_be_hidden()
    assert nia_log.problems() == [] and log.problems() == []


async def test_a_signed_in_page_sends_a_file_over_64_kib(
    browser: Browser, server: ServerProcess, tmp_path: Path
) -> None:
    """A 300 KB file from a signed-in page arrives whole; a guest downloads the same bytes."""
    # The server reads frames over 64 KiB only on a connection that showed a
    # token at its handshake. A page cannot set Authorization there, so it
    # offers the subprotocols ``roomcast`` and ``roomcast.bearer.TOKEN``.
    hal, hal_log = await open_page(browser, server.http_url("/"))
    ivy, ivy_log = await open_page(browser, server.http_url("/"))
    await register(hal, "hal")
    await as_guest(ivy, "ivy")
    body = os.urandom(300_000)
    upload = tmp_path / "big.bin"
    upload.write_bytes(body)
    await hal.get_by_test_id("file-input").set_input_files(str(upload))
    link = ivy.locator('[data-conv="#lobby"] a', has_text="big.bin")
    await expect(link).to_have_count(1)
    await expect(messages(hal).last).to_have_attribute("data-state", "acked")
    download = await ivy.request.get(server.http_url(await link.get_attribute("href") or ""))
    assert download.ok and await download.body() == body
    assert hal_log.problems() == [] and ivy_log.problems() == []


async def test_a_long_absence_is_shown_whole_and_in_order(
    browser: Browser, server_factory: ServerFactory
) -> None:
    """Back after more than one join replays, the page pages back and shows every message once."""
    server = server_factory("--rate-limit", "0", "--max-replay", "30")
    proxy = BlockingProxy(server.port)
    await proxy.start()
    try:
        page, log = await open_page(browser, f"http://127.0.0.1:{proxy.port}/?backoff=50,500")
        await as_guest(page, "pia")
        await say(page, "before")
        await expect(messages(page).last).to_have_attribute("data-state", "acked")
        proxy.blocked = True
        proxy.cut()
        await expect(page.get_by_test_id("banner")).to_have_attribute("data-state", "reconnecting")
        missed = 30 + 150  # the gap takes two history pages
        async with Client(server.ws_url(), guest="flood") as flood:
            for n in range(missed):
                await flood.send_chat(f"m{n}")
        proxy.blocked = False
        await connected(page)
        await expect(bodies(page)).to_have_count(missed + 1, timeout=30_000)
        texts = await bodies(page).all_inner_texts()
        assert texts == ["before", *(f"m{n}" for n in range(missed))]
        seqs = [int(s) for s in await messages(page).evaluate_all("l => l.map(m => m.dataset.seq)")]
        assert seqs == list(range(seqs[0], seqs[0] + missed + 1))
        assert log.page_errors == [] and log.dialogs == []
    finally:
        await proxy.stop()
