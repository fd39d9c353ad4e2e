"""Search on the chat page, in a real Chromium against a real server.

The search box (Ctrl+K, Enter, arrows, Escape) and its results: snippets
with the matched words marked (also after an emoji), "Load more" through
the cursor, "no results" and the server's own error text, message text
shown as text. Opening a result: a room not joined yet, or one whose newest
page is shown already, opens at the message (the page around it, the
message scrolled to and marked) and scrolling down reaches the newer
messages across the gap; a direct message opens its conversation the same
way. Guests search public rooms only. The other side is a bare WebSocket.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import pytest
from playwright.async_api import Browser, Locator, Page, expect
from websockets.asyncio.client import ClientConnection

from tests.integration.browser import (
    EXPECT_MS,
    PageLog,
    as_guest,
    bodies,
    chromium,
    join,
    messages,
    open_page,
    sign_in,
)
from tests.integration.serverproc import ServerFactory, ServerProcess
from tests.integration.users import call, create_team, user_ws
from tests.integration.wsclient import RECV_TIMEOUT, recv_json, send_json

expect.set_options(timeout=EXPECT_MS)


@pytest.fixture
def server(server_factory: ServerFactory) -> ServerProcess:
    """A server without per-connection rate limits: tests post over a hundred messages at once."""
    return server_factory("--rate-limit", "0")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


async def post_all(ws: ClientConnection, frames: list[tuple[str, dict[str, Any]]]) -> None:
    """Send every frame at once, then wait until the server has stored each one."""
    waiting = set()
    for kind, payload in frames:
        fid = uuid.uuid4().hex
        waiting.add(fid)
        await send_json(ws, kind, payload, id=fid)
    async with asyncio.timeout(RECV_TIMEOUT * 3):
        while waiting:
            frame = await recv_json(ws)
            if frame.get("id") in waiting:
                assert frame["type"] != "error", frame
                waiting.discard(frame["id"])


def say_all(room: str, texts: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """``chat`` frames saying each of ``texts`` in ``room``, for :func:`post_all`."""
    return [("chat", {"room": room, "message": text}) for text in texts]


async def signed_in_page(
    browser: Browser, server: ServerProcess, name: str
) -> tuple[Page, PageLog]:
    """A fresh page signed in as the registered user ``name``."""
    page, log = await open_page(browser, server.http_url("/"))
    await sign_in(page, name)
    return page, log


async def search_for(page: Page, query: str) -> None:
    """Type ``query`` in the search box and press Enter."""
    box = page.get_by_test_id("search-input")
    await box.fill(query)
    await box.press("Enter")


def results(page: Page) -> Locator:
    """The search results shown."""
    return page.get_by_test_id("search-result")


def marks(page: Page, n: int = 0) -> Locator:
    """The marked words in the snippet of result ``n``."""
    return results(page).nth(n).get_by_test_id("result-snippet").locator("mark")


def message(page: Page, conv: str, text: str) -> Locator:
    """The one message in ``conv`` whose body is ``text``."""
    return messages(page, conv).filter(
        has=page.locator('[data-testid="body"]', has_text=re.compile(rf"^{re.escape(text)}$"))
    )


def gaps(page: Page, conv: str) -> Locator:
    """The lines in ``conv`` where messages between two pages are not loaded yet."""
    return page.locator(f'[data-conv="{conv}"] [data-testid="gap"]')


async def scroll_down_until_no_gap(page: Page, conv: str) -> None:
    """Scroll the conversation down a screen at a time, as a reader does, until no gap is left."""
    scroller = page.get_by_test_id("scroller")
    async with asyncio.timeout(EXPECT_MS / 1000 * 2):
        while await gaps(page, conv).count():
            await scroller.evaluate("s => s.scrollBy(0, s.clientHeight)")
            await asyncio.sleep(0.1)


async def test_results_mark_the_words_found_by_a_word_and_by_a_prefix(
    browser: Browser, server: ServerProcess, tokens: dict[str, str]
) -> None:
    """A word and a prefix find the message; the snippet marks the words matched, after an emoji."""
    bob = await user_ws(server, tokens["bob"])
    await post_all(
        bob,
        say_all(
            "lobby", ["🚀🎉 we deploy tonight; the deployment plan is ready", "lunch at noon?"]
        ),
    )
    page, log = await signed_in_page(browser, server, "alice")

    # Ctrl+K goes to the box from anywhere; Enter searches.
    await page.get_by_test_id("input").focus()
    await page.keyboard.press("Control+K")
    await expect(page.get_by_test_id("search-input")).to_be_focused()
    await page.keyboard.type("deploy")
    await page.keyboard.press("Enter")
    await expect(page.get_by_test_id("search-pane")).to_be_visible()
    await expect(results(page)).to_have_count(1)
    result = results(page).first
    await expect(result.get_by_test_id("result-where")).to_have_text("#lobby")
    await expect(result.get_by_test_id("result-from")).to_have_text("bob")
    await expect(result.get_by_test_id("result-snippet")).to_have_text(
        "🚀🎉 we deploy tonight; the deployment plan is ready"
    )
    # Offsets count code points: the two emoji (four UTF-16 units) shift nothing.
    await expect(marks(page)).to_have_text(["deploy"])
    await expect(page.get_by_test_id("search-status")).to_have_text("1 result")

    await search_for(page, "deplo*")
    await expect(marks(page)).to_have_text(["deploy", "deployment"])

    # ↓ from the box reaches the result, Escape closes the results, back in the box.
    await page.get_by_test_id("search-input").press("ArrowDown")
    await expect(result).to_be_focused()
    await page.keyboard.press("Escape")
    await expect(page.get_by_test_id("search-pane")).to_be_hidden()
    await expect(page.get_by_test_id("search-input")).to_be_focused()
    await expect(page.get_by_test_id("search-input")).to_have_value("deplo*")
    await bob.close()
    assert log.problems() == []


async def test_a_result_opens_a_room_not_joined_at_its_message_with_newer_ones_below(
    browser: Browser, server: ServerProcess, tokens: dict[str, str]
) -> None:
    """A result far back in a room not joined opens there, marked; the newest are a click away."""
    bob = await user_ws(server, tokens["bob"])
    await post_all(bob, [("join", {"room": "archive"})])
    texts = [f"filler {i:03d}" for i in range(120)]
    texts[30] = "the needle is here"
    await post_all(bob, say_all("archive", texts))
    page, log = await signed_in_page(browser, server, "alice")

    await search_for(page, "needle")
    await expect(results(page)).to_have_count(1)
    await expect(results(page).first.get_by_test_id("result-where")).to_have_text("#archive")
    await results(page).first.press("Enter")

    await expect(page.get_by_test_id("title")).to_have_text("#archive")
    target = message(page, "#archive", "the needle is here")
    await expect(target).to_be_in_viewport()
    await expect(target).to_have_class(re.compile(r"\bflash\b"))
    # The page around it: older and newer messages, not the newest (past a gap).
    await expect(message(page, "#archive", "filler 029")).to_be_attached()
    await expect(message(page, "#archive", "filler 031")).to_be_attached()
    await expect(message(page, "#archive", "filler 119")).to_have_count(0)
    await expect(gaps(page, "#archive")).to_have_count(1)

    # "Jump to the newest" shows the end, the gap stays between; loading it fills it.
    # (Pressed where they are: scrolled into view, the gap would load by itself.)
    await gaps(page, "#archive").get_by_test_id("jump-newest").dispatch_event("click")
    await expect(message(page, "#archive", "filler 119")).to_be_in_viewport()
    await expect(gaps(page, "#archive")).to_have_count(1)
    await gaps(page, "#archive").get_by_test_id("load-newer").dispatch_event("click")
    await expect(gaps(page, "#archive")).to_have_count(0)
    shown = await bodies(page, "#archive").all_text_contents()
    assert shown == texts[texts.index(shown[0]) :], "each message once, in order, to the end"
    assert texts.index(shown[0]) < 30, "from the page around the result on"
    # Live messages still come at the end.
    await post_all(bob, say_all("archive", ["a live one"]))
    await expect(bodies(page, "#archive").last).to_have_text("a live one")
    await bob.close()
    assert log.problems() == []


async def test_a_result_in_a_room_shown_from_its_newest_page_fills_the_gap_between(
    browser: Browser, server: ServerProcess, tokens: dict[str, str]
) -> None:
    """A result behind the room's newest page loads around it; scrolling down fills the gap."""
    bob = await user_ws(server, tokens["bob"])
    await post_all(bob, [("join", {"room": "archive"})])
    texts = [f"filler {i:03d}" for i in range(120)]
    texts[30] = "the needle is here"
    await post_all(bob, say_all("archive", texts))
    page, log = await signed_in_page(browser, server, "alice")
    await join(page, "archive")
    await expect(bodies(page, "#archive")).to_have_count(50)
    await expect(bodies(page, "#archive").last).to_have_text("filler 119")

    await search_for(page, "needle")
    await results(page).first.click()
    target = message(page, "#archive", "the needle is here")
    await expect(target).to_be_in_viewport()
    await expect(target).to_have_class(re.compile(r"\bflash\b"))
    gap = gaps(page, "#archive")
    await expect(gap).to_have_count(1)
    # The gap sits between the page around the result and the newest page.
    await expect(
        page.locator('[data-conv="#archive"] [data-testid="msg"]:has(+ [data-testid="gap"])')
    ).to_contain_text("filler 054")
    await scroll_down_until_no_gap(page, "#archive")
    shown = await bodies(page, "#archive").all_text_contents()
    assert shown == texts[texts.index(shown[0]) :], "each message once, in order, to the end"
    assert texts.index(shown[0]) < 30, "from the page around the result on"
    await bob.close()
    assert log.problems() == []


async def test_a_direct_result_opens_the_conversation_at_that_message(
    browser: Browser, server: ServerProcess, tokens: dict[str, str]
) -> None:
    """A direct message far back opens its conversation there, marked, with newer ones below."""
    bob = await user_ws(server, tokens["bob"])
    texts = ["meet me for the secret handshake"] + [f"dm filler {i:03d}" for i in range(130)]
    await post_all(bob, [("direct", {"to": "alice", "message": text}) for text in texts])
    page, log = await signed_in_page(browser, server, "alice")
    # The newest page of direct messages lists the conversation, without the oldest ones.
    await expect(page.get_by_test_id("nav-@bob")).to_be_visible()

    await search_for(page, "handshake")
    await expect(results(page)).to_have_count(1)
    await expect(results(page).first.get_by_test_id("result-where")).to_have_text("Direct with bob")
    await results(page).first.click()
    await expect(page.get_by_test_id("title")).to_have_text("@bob")
    target = message(page, "@bob", texts[0])
    await expect(target).to_be_in_viewport()
    await expect(target).to_have_class(re.compile(r"\bflash\b"))
    await expect(message(page, "@bob", "dm filler 000")).to_be_attached()
    await expect(gaps(page, "@bob")).to_have_count(1)

    await scroll_down_until_no_gap(page, "@bob")
    assert await bodies(page, "@bob").all_text_contents() == texts
    await bob.close()
    assert log.problems() == []


async def test_errors_no_results_and_more_pages(
    browser: Browser, server: ServerProcess, tokens: dict[str, str]
) -> None:
    """An unclosed quote shows the server's reason, nothing found says so, Load more pages on."""
    bob = await user_ws(server, tokens["bob"])
    await post_all(bob, say_all("lobby", [f"weekly report number {i}" for i in range(25)]))
    page, log = await signed_in_page(browser, server, "alice")

    unclosed = '"unclosed'
    status, body = await call(
        server, "GET", f"/api/search?q={quote(unclosed)}", bearer=tokens["alice"]
    )
    assert status == 400, body
    reason = body["error"]["message"]
    assert "quote" in reason
    await search_for(page, unclosed)
    await expect(page.get_by_test_id("search-error")).to_contain_text(reason)
    await expect(results(page)).to_have_count(0)

    await search_for(page, "zebra")
    await expect(page.get_by_test_id("search-status")).to_have_text("No messages match “zebra”.")
    await expect(page.get_by_test_id("search-error")).to_be_hidden()
    await expect(results(page)).to_have_count(0)

    await search_for(page, "report")
    await expect(results(page)).to_have_count(20)
    more = page.get_by_test_id("search-more")
    await expect(more).to_be_visible()
    await more.click()
    await expect(results(page)).to_have_count(25)
    await expect(more).to_be_hidden()
    snippets = results(page).get_by_test_id("result-snippet")
    await expect(snippets).to_have_text([f"weekly report number {i}" for i in range(24, -1, -1)])
    await expect(page.get_by_test_id("search-status")).to_have_text("25 results")
    await bob.close()
    assert log.problems() == []


async def test_markup_in_a_message_shows_as_text_in_the_results(
    browser: Browser, server: ServerProcess, tokens: dict[str, str]
) -> None:
    """A message holding HTML is found and shown as its text: no element, no script."""
    bob = await user_ws(server, tokens["bob"])
    text = "<img src=x onerror=alert(1)> payload <b>bold</b>"
    await post_all(bob, say_all("lobby", [text]))
    page, log = await signed_in_page(browser, server, "alice")

    await search_for(page, "payload")
    snippet = results(page).first.get_by_test_id("result-snippet")
    await expect(snippet).to_have_text(text)
    await expect(snippet.locator("mark")).to_have_text(["payload"])
    assert await page.get_by_test_id("search-results").locator("img, b").count() == 0
    await bob.close()
    assert log.problems() == []


async def test_guests_search_public_rooms_only(
    browser: Browser, server: ServerProcess, tokens: dict[str, str]
) -> None:
    """A guest finds messages of public rooms, never of a private one, and has no direct scope."""
    await create_team(server, tokens)
    bob = await user_ws(server, tokens["bob"])
    await post_all(
        bob,
        [("join", {"room": "team"})]
        + say_all("team", ["quarterly numbers, private"])
        + say_all("lobby", ["quarterly numbers, public"]),
    )
    page, log = await open_page(browser, server.http_url("/"))
    await as_guest(page, "visitor")

    await search_for(page, "quarterly")
    await expect(results(page)).to_have_count(1)
    await expect(results(page).first.get_by_test_id("result-snippet")).to_have_text(
        "quarterly numbers, public"
    )
    direct = page.get_by_test_id("search-scope").locator('option[value="direct"]')
    await expect(direct).to_be_disabled()
    assert await direct.evaluate("option => option.hidden")
    await bob.close()
    assert log.problems() == []
