"""Messages that change, on the chat page in a real Chromium against a real server.

Edits (the Up arrow and the message menu), deletions behind a confirmation,
replies with a quote and the thread pane, reactions from the picker, ``@``
completion and mentions, on rooms and direct messages; a page that was away
applies what changed meanwhile once and in order. ``ROOMCAST_SCREENSHOT=1``
makes the last test write ``docs/img/changes.png``.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Locator, Page, expect

from tests.integration.browser import (
    EXPECT_MS,
    BlockingProxy,
    PageLog,
    bodies,
    chromium,
    join,
    messages,
    open_page,
    register,
    say,
)
from tests.integration.serverproc import ServerProcess
from tests.integration.users import call, login

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "img" / "changes.png"

expect.set_options(timeout=EXPECT_MS)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


def message(page: Page, text: str, conv: str = "#lobby") -> Locator:
    """The one message in ``conv`` whose body has ``text``."""
    return messages(page, conv).filter(
        has=page.locator('[data-testid="body"]', has_text=re.compile(rf"^{re.escape(text)}$"))
    )


async def menu(msg: Locator, item: str) -> None:
    """Open the message's menu and choose ``item`` (a ``menu-*`` test id)."""
    await msg.get_by_test_id("msg-menu").click()
    await msg.get_by_test_id(item).click()


async def react(msg: Locator, emoji: str) -> None:
    """Add ``emoji`` from the message's reaction picker."""
    await msg.get_by_test_id("react-open").click()
    picker = msg.get_by_test_id("picker")
    await expect(picker).to_be_visible()
    await picker.locator(f'[data-testid="picker-emoji"][data-emoji="{emoji}"]').click()
    await expect(picker).to_have_count(0)


def chip(msg: Locator, emoji: str) -> Locator:
    """The reaction chip for ``emoji`` on a message."""
    return msg.locator(f'[data-testid="reaction"][data-emoji="{emoji}"]')


async def two_users(
    browser: Browser,
    server: ServerProcess,
    a: str,
    b: str,
    viewport: tuple[int, int] = (1100, 720),
) -> tuple[Page, PageLog, Page, PageLog]:
    """Two registered users, each on a page of their own."""
    page_a, log_a = await open_page(browser, server.http_url("/"), viewport=viewport)
    page_b, log_b = await open_page(browser, server.http_url("/"), viewport=viewport)
    await register(page_a, a)
    await register(page_b, b)
    return page_a, log_a, page_b, log_b


async def test_edit_with_the_up_arrow_and_from_the_menu(
    browser: Browser, server: ServerProcess
) -> None:
    """Up in an empty box edits your last message, the menu any of yours; others see (edited)."""
    ann, ann_log, bob, bob_log = await two_users(browser, server, "ann", "bob")
    await say(ann, "helo wrld")
    await say(ann, "second thought")
    await expect(messages(ann).last).to_have_attribute("data-state", "acked")
    await expect(bodies(bob)).to_have_text(["helo wrld", "second thought"])

    box = ann.get_by_test_id("input")
    await box.press("ArrowUp")
    edit = ann.get_by_test_id("edit-input")
    await expect(edit).to_be_focused()
    await expect(edit).to_have_value("second thought")
    await edit.fill("second thought, edited")
    await edit.press("Enter")
    await expect(box).to_be_focused()
    await expect(bodies(bob)).to_have_text(["helo wrld", "second thought, edited"])
    await expect(messages(bob).last.get_by_test_id("edited")).to_have_text("(edited)")
    await expect(messages(bob).first.get_by_test_id("edited")).to_have_count(0)
    await expect(messages(ann).last.get_by_test_id("edited")).to_have_text("(edited)")

    # Escape leaves an edit without changing anything.
    await box.press("ArrowUp")
    await ann.get_by_test_id("edit-input").fill("never sent")
    await ann.get_by_test_id("edit-input").press("Escape")
    await expect(ann.get_by_test_id("edit-input")).to_have_count(0)
    await expect(bodies(ann)).to_have_text(["helo wrld", "second thought, edited"])

    # The menu edits an older one; another user's menu offers no Edit for it.
    await menu(message(ann, "helo wrld"), "menu-edit")
    await ann.get_by_test_id("edit-input").fill("hello world")
    await ann.get_by_test_id("edit-save").click()
    await expect(bodies(bob)).to_have_text(["hello world", "second thought, edited"])
    await expect(messages(bob).first.get_by_test_id("edited")).to_have_text("(edited)")
    theirs = message(bob, "hello world")
    await theirs.get_by_test_id("msg-menu").click()
    await expect(theirs.get_by_test_id("msg-actions")).to_be_visible()
    await expect(theirs.get_by_test_id("menu-edit")).to_have_count(0)
    await expect(theirs.get_by_test_id("menu-delete")).to_have_count(0)
    await bob.keyboard.press("Escape")
    await expect(theirs.get_by_test_id("msg-actions")).to_have_count(0)
    await expect(theirs.get_by_test_id("msg-menu")).to_be_focused()

    # A page opened now reads the edited text from history.
    cat, cat_log = await open_page(browser, server.http_url("/"))
    await register(cat, "cat")
    await expect(bodies(cat)).to_have_text(["hello world", "second thought, edited"])
    await expect(messages(cat).get_by_test_id("edited")).to_have_count(2)
    assert ann_log.problems() == [] and bob_log.problems() == [] and cat_log.problems() == []


async def test_delete_asks_first_and_leaves_a_tombstone_on_every_page(
    browser: Browser, server: ServerProcess
) -> None:
    """Delete asks first (Cancel and Escape keep the message); then both pages show a tombstone."""
    ann, ann_log, bob, bob_log = await two_users(browser, server, "dee", "eve")
    await say(ann, "keep this")
    await say(ann, "oops, wrong room")
    await expect(bodies(bob)).to_have_text(["keep this", "oops, wrong room"])
    oops = message(ann, "oops, wrong room")
    dialog = ann.get_by_test_id("confirm-delete")

    # By keyboard: the menu opens on Enter, End reaches Delete, Escape backs out.
    await oops.get_by_test_id("msg-menu").focus()
    await ann.keyboard.press("Enter")
    await expect(oops.get_by_test_id("menu-reply")).to_be_focused()
    await ann.keyboard.press("End")
    await expect(oops.get_by_test_id("menu-delete")).to_be_focused()
    await ann.keyboard.press("Enter")
    await expect(dialog).to_be_visible()
    await expect(dialog).to_contain_text("oops, wrong room")
    await expect(ann.get_by_test_id("confirm-cancel")).to_be_focused()
    await ann.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(oops.get_by_test_id("msg-menu")).to_be_focused()

    await menu(oops, "menu-delete")
    await ann.get_by_test_id("confirm-cancel").click()
    await expect(dialog).to_be_hidden()
    await expect(bodies(ann)).to_have_text(["keep this", "oops, wrong room"])

    await menu(oops, "menu-delete")
    await ann.get_by_test_id("confirm-go").click()
    await expect(dialog).to_be_hidden()
    for page in (ann, bob):
        await expect(bodies(page)).to_have_text(["keep this", "message deleted"])
        await expect(messages(page).last.get_by_test_id("tombstone")).to_have_count(1)
        await expect(messages(page).last).to_have_attribute("data-deleted", "true")
        # A deleted message offers nothing more to do.
        await expect(messages(page).last.get_by_test_id("msg-menu")).to_be_hidden()
    await expect(messages(bob).first.get_by_test_id("tombstone")).to_have_count(0)

    # The text is gone from the server too: history says deleted, with no text.
    token = await login(server, "eve")
    status, body = await call(server, "GET", "/api/rooms/lobby/messages", bearer=token)
    assert status == 200
    last = body["messages"][-1]
    assert last.get("deleted") is True and "message" not in last
    assert ann_log.problems() == [] and bob_log.problems() == []


async def test_a_reply_quotes_and_the_thread_pane_lists_the_replies(
    browser: Browser, server: ServerProcess
) -> None:
    """A reply shows its quote, the root counts replies, the thread pane lists and takes them."""
    ann, ann_log, bob, bob_log = await two_users(browser, server, "fay", "gus")
    question = "Which day works for the launch?"
    await say(ann, question)
    await say(ann, "something else")
    await expect(bodies(bob)).to_have_count(2)

    await menu(message(bob, question), "menu-reply")
    bar = bob.get_by_test_id("reply-bar")
    await expect(bar).to_be_visible()
    await expect(bar).to_contain_text(question)
    await expect(bob.get_by_test_id("input")).to_be_focused()
    await say(bob, "Thursday")
    await expect(bar).to_be_hidden()

    reply = message(ann, "Thursday")
    await expect(reply.get_by_test_id("quote")).to_contain_text("fay")
    await expect(reply.get_by_test_id("quote")).to_contain_text(question)
    root = message(ann, question)
    await expect(root.get_by_test_id("replies")).to_have_text("💬 1 reply")
    await expect(message(ann, "something else").get_by_test_id("replies")).to_have_count(0)

    await root.get_by_test_id("replies").click()
    pane = ann.get_by_test_id("thread-pane")
    await expect(pane).to_be_visible()
    thread = pane.locator('[data-testid="msg"] [data-testid="body"]')
    await expect(thread).to_have_text([question, "Thursday"])
    await expect(ann.get_by_test_id("thread-input")).to_be_focused()
    await ann.get_by_test_id("thread-input").fill("Thursday it is")
    await ann.get_by_test_id("thread-input").press("Enter")
    await expect(thread).to_have_text([question, "Thursday", "Thursday it is"])

    # The reply from the pane is a message of the room, with its quote, for everyone.
    answered = message(bob, "Thursday it is")
    await expect(answered.get_by_test_id("quote")).to_contain_text(question)
    await expect(message(bob, question).get_by_test_id("replies")).to_have_text("💬 2 replies")
    # A quote opens its thread.
    await message(bob, "Thursday").get_by_test_id("quote").click()
    await expect(
        bob.get_by_test_id("thread-pane").locator('[data-testid="msg"] [data-testid="body"]')
    ).to_have_text([question, "Thursday", "Thursday it is"])
    await bob.get_by_test_id("thread-close").click()
    await expect(bob.get_by_test_id("thread-pane")).to_be_hidden()
    await expect(bob.get_by_test_id("input")).to_be_focused()
    assert ann_log.problems() == [] and bob_log.problems() == []


async def test_a_reaction_from_the_picker_shows_on_another_page_with_its_count(
    browser: Browser, server: ServerProcess
) -> None:
    """A picked emoji shows on the other page with count and names; chips toggle; any emoji goes."""
    ann, ann_log, bob, bob_log = await two_users(browser, server, "hal", "ida")
    await say(bob, "ship it?")
    await expect(bodies(ann)).to_have_text(["ship it?"])

    await react(message(ann, "ship it?"), "👍")
    theirs = message(bob, "ship it?")
    thumbs = chip(theirs, "👍")
    await expect(thumbs.get_by_test_id("reaction-count")).to_have_text("1")
    await expect(thumbs).to_have_attribute("title", re.compile(r"\bhal\b"))
    await expect(thumbs).to_have_attribute("aria-pressed", "false")

    # Pressing a chip adds your own: both pages count two.
    await thumbs.click()
    await expect(thumbs.get_by_test_id("reaction-count")).to_have_text("2")
    await expect(thumbs).to_have_attribute("aria-pressed", "true")
    mine = message(ann, "ship it?")
    await expect(chip(mine, "👍").get_by_test_id("reaction-count")).to_have_text("2")
    await expect(chip(mine, "👍")).to_have_attribute("title", re.compile(r"hal, ida"))

    # Any emoji can be typed, and :name: too.
    for typed in ("🦄", ":shipit:"):
        await mine.get_by_test_id("react-open").click()
        await mine.get_by_test_id("picker-input").fill(typed)
        await mine.get_by_test_id("picker-input").press("Enter")
        await expect(chip(theirs, typed).get_by_test_id("reaction-count")).to_have_text("1")

    # Pressing your own chip takes yours back.
    await chip(mine, "👍").click()
    await expect(thumbs.get_by_test_id("reaction-count")).to_have_text("1")
    await expect(thumbs).to_have_attribute("title", re.compile(r"^ida\b"))
    await expect(theirs.get_by_test_id("reaction")).to_have_count(3)
    assert ann_log.problems() == [] and bob_log.problems() == []


async def test_at_completes_a_member_and_the_mentioned_user_sees_it_stand_out(
    browser: Browser, server: ServerProcess
) -> None:
    """``@`` offers members to insert; the one named sees it stand out, or hears of another room."""
    ann, ann_log, bob, bob_log = await two_users(browser, server, "jay", "kim")
    await expect(ann.get_by_test_id("members")).to_contain_text("kim")
    box = ann.get_by_test_id("input")
    await box.press_sequentially("thanks @k")
    options = ann.get_by_test_id("mention-option")
    await expect(options).to_have_text(["@kim"])
    await expect(box).to_have_attribute("aria-expanded", "true")
    await box.press("Enter")  # picks the name, does not send
    await expect(box).to_have_value("thanks @kim ")
    await expect(ann.get_by_test_id("mention-list")).to_be_hidden()
    await box.press_sequentially("for the review")
    await box.press("Enter")

    seen = message(bob, "thanks @kim for the review")
    await expect(seen).to_have_class(re.compile(r"\bmentioned\b"))
    await expect(seen.get_by_test_id("mentions-you")).to_have_text("mentions you")
    await expect(seen.locator(".mention.you")).to_have_text("@kim")
    sent = message(ann, "thanks @kim for the review")
    await expect(sent.locator(".mention")).to_have_text("@kim")
    await expect(sent).not_to_have_class(re.compile(r"\bmentioned\b"))

    # Escape closes the list; text without a match offers nobody.
    await box.press_sequentially("@")
    await expect(options).to_have_text(["@kim"])
    await box.press("Escape")
    await expect(ann.get_by_test_id("mention-list")).to_be_hidden()
    await box.fill("")

    # Named in a room kim is not in: kim's page says so and opens it.
    await join(ann, "garden")
    await say(ann, "@kim the roses are out")
    notice = bob.get_by_test_id("notice")
    await expect(notice).to_contain_text("jay mentioned you in #garden")
    await notice.get_by_test_id("notice-open").click()
    await expect(bob.get_by_test_id("title")).to_have_text("#garden")
    there = message(bob, "@kim the roses are out", "#garden")
    await expect(there).to_have_class(re.compile(r"\bmentioned\b"))
    assert ann_log.problems() == [] and bob_log.problems() == []


async def test_direct_messages_are_edited_deleted_and_reacted_to(
    browser: Browser, server: ServerProcess
) -> None:
    """In a direct conversation both people see edits, reactions and tombstones."""
    ivy, ivy_log, jon, jon_log = await two_users(browser, server, "lou", "max")
    await ivy.get_by_test_id("dm-name").fill("max")
    await ivy.get_by_test_id("dm-name").press("Enter")
    await say(ivy, "lunch at noon?")
    await say(ivy, "at the usual plase")
    await expect(messages(ivy, "@max").last).to_have_attribute("data-state", "acked")
    await jon.get_by_test_id("nav-@lou").click()
    await expect(bodies(jon, "@lou")).to_have_text(["lunch at noon?", "at the usual plase"])

    await react(message(jon, "lunch at noon?", "@lou"), "❤️")
    await expect(
        chip(message(ivy, "lunch at noon?", "@max"), "❤️").get_by_test_id("reaction-count")
    ).to_have_text("1")

    await ivy.get_by_test_id("input").press("ArrowUp")
    await ivy.get_by_test_id("edit-input").fill("at the usual place")
    await ivy.get_by_test_id("edit-input").press("Enter")
    fixed = message(jon, "at the usual place", "@lou")
    await expect(fixed.get_by_test_id("edited")).to_have_text("(edited)")

    await menu(message(ivy, "lunch at noon?", "@max"), "menu-delete")
    await ivy.get_by_test_id("confirm-go").click()
    await expect(bodies(jon, "@lou")).to_have_text(["message deleted", "at the usual place"])
    await expect(messages(jon, "@lou").first.get_by_test_id("reaction")).to_have_count(0)
    # Replies and threads are for rooms: a direct message's menu offers none.
    await message(jon, "at the usual place", "@lou").get_by_test_id("msg-menu").click()
    await expect(jon.get_by_test_id("menu-react")).to_be_visible()
    await expect(jon.get_by_test_id("menu-reply")).to_have_count(0)
    assert ivy_log.problems() == [] and jon_log.problems() == []


PROBE = """async (url) => {
  const m = await import("/static/client.js");
  const backoff = new m.Backoff({first: 50, cap: 500});
  const probe = new m.ChatClient({url, guest: "probe", backoff});
  window.probeEvents = [];
  probe.on("message", (i) => window.probeEvents.push(["message", i.seq, i.text]));
  probe.on("change", (i) => window.probeEvents.push([i.kind, i.seq, i.text ?? i.emoji ?? null]));
  probe.on("state", (s) => { window.probeState = s.state; });
  probe.start();
  window.probe = probe;
}"""


async def test_changes_made_while_a_page_is_away_are_applied_once_and_in_order(
    browser: Browser, server: ServerProcess
) -> None:
    """Back after an outage, the page replays edits, reactions and deletions once, in seq order."""
    proxy = BlockingProxy(server.port)
    await proxy.start()
    try:
        ann, ann_log = await open_page(browser, server.http_url("/"))
        away, away_log = await open_page(browser, f"http://127.0.0.1:{proxy.port}/?backoff=50,500")
        await register(ann, "ned")
        await register(away, "oli")
        # A bare client.js in the same page counts what it is given.
        await away.evaluate(PROBE, f"ws://127.0.0.1:{proxy.port}/ws")
        await away.wait_for_function("() => window.probeState === 'connected'")
        for text in ("one", "two", "three"):
            await say(ann, text)
        await expect(bodies(away)).to_have_text(["one", "two", "three"])

        proxy.blocked = True
        proxy.cut()
        await expect(away.get_by_test_id("banner")).to_have_attribute("data-state", "reconnecting")
        await ann.get_by_test_id("input").press("ArrowUp")
        await ann.get_by_test_id("edit-input").fill("three v2")
        await ann.get_by_test_id("edit-input").press("Enter")
        await expect(message(ann, "three v2").get_by_test_id("edited")).to_have_text("(edited)")
        await menu(message(ann, "three v2"), "menu-edit")
        await ann.get_by_test_id("edit-input").fill("three v3")
        await ann.get_by_test_id("edit-input").press("Enter")
        await expect(message(ann, "three v3").get_by_test_id("edited")).to_have_text("(edited)")
        two = message(ann, "two")
        await react(two, "👍")
        await expect(chip(two, "👍")).to_have_count(1)
        await chip(two, "👍").click()
        await expect(chip(two, "👍")).to_have_count(0)
        await react(two, "🎉")
        await expect(chip(two, "🎉")).to_have_count(1)
        await menu(message(ann, "one"), "menu-delete")
        await ann.get_by_test_id("confirm-go").click()
        await expect(messages(ann).first.get_by_test_id("tombstone")).to_have_count(1)

        proxy.blocked = False
        await expect(away.get_by_test_id("banner")).to_have_attribute("data-state", "connected")
        await expect(bodies(away)).to_have_text(["message deleted", "two", "three v3"])
        await expect(message(away, "three v3").get_by_test_id("edited")).to_have_text("(edited)")
        back = message(away, "two")
        await expect(chip(back, "🎉").get_by_test_id("reaction-count")).to_have_text("1")
        await expect(chip(back, "👍")).to_have_count(0)

        await away.wait_for_function("() => window.probeEvents.length >= 9")
        await away.wait_for_timeout(300)  # anything repeated would have come by now
        events = await away.evaluate("() => window.probeEvents")
        seqs = [e[1] for e in events]
        assert seqs == sorted(set(seqs)), events
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), events
        assert [(e[0], e[2]) for e in events] == [
            ("message", "one"),
            ("message", "two"),
            ("message", "three"),
            ("edit", "three v2"),
            ("edit", "three v3"),
            ("reaction", "👍"),
            ("reaction", "👍"),
            ("reaction", "🎉"),
            ("delete", None),
        ], events
        await away.evaluate("() => window.probe.close()")
        assert ann_log.problems() == []
        assert away_log.page_errors == [] and away_log.dialogs == []
    finally:
        await proxy.stop()


async def test_a_room_with_every_kind_of_change_and_its_screenshot(
    browser: Browser, server: ServerProcess
) -> None:
    """A thread, reactions, an edit, a tombstone and a mention together; the docs' screenshot."""
    ann, ann_log, bob, bob_log = await two_users(browser, server, "nora", "pablo", (1100, 820))
    await join(ann, "launch")
    await join(bob, "launch")
    await say(ann, "Release notes are up: https://example.org/notes")
    await say(bob, "Which day do we ship, Thursday or Friday?")
    await expect(bodies(ann, "#launch")).to_have_count(2)
    await menu(message(ann, "Which day do we ship, Thursday or Friday?", "#launch"), "menu-reply")
    await say(ann, "Thursday, after the freeze")
    await say(bob, "I posted the wrong link, ignore")
    await say(bob, "@nora can you check the changelog wording?")
    await expect(bodies(ann, "#launch")).to_have_count(5)
    wrong = message(bob, "I posted the wrong link, ignore", "#launch")
    await menu(wrong, "menu-delete")
    await bob.get_by_test_id("confirm-go").click()
    notes = "Release notes are up: https://example.org/notes"
    await react(message(bob, notes, "#launch"), "🎉")
    await expect(chip(message(ann, notes, "#launch"), "🎉")).to_have_count(1)
    await react(message(ann, notes, "#launch"), "🎉")
    await react(message(ann, "Thursday, after the freeze", "#launch"), "👍")
    await menu(message(ann, "Thursday, after the freeze", "#launch"), "menu-edit")
    await ann.get_by_test_id("edit-input").fill("Thursday, right after the code freeze")
    await ann.get_by_test_id("edit-input").press("Enter")
    await expect(
        bodies(bob, "#launch").filter(has_text="Thursday, right after the code freeze")
    ).to_have_count(1)
    question = message(bob, "Which day do we ship, Thursday or Friday?", "#launch")
    await question.get_by_test_id("replies").click()
    await bob.get_by_test_id("thread-input").fill("Thursday works for QA too")
    await bob.get_by_test_id("thread-input").press("Enter")
    pane = bob.get_by_test_id("thread-pane")
    await expect(pane.locator('[data-testid="msg"] [data-testid="body"]')).to_have_count(3)

    view = ann
    await expect(chip(message(view, notes, "#launch"), "🎉")).to_have_attribute(
        "title", re.compile(r"pablo, nora")
    )
    await expect(messages(view, "#launch").get_by_test_id("tombstone")).to_have_count(1)
    await expect(messages(view, "#launch").get_by_test_id("edited")).to_have_count(1)
    await expect(view.locator('[data-conv="#launch"] .msg.mentioned')).to_have_count(1)
    await expect(
        message(view, "@nora can you check the changelog wording?", "#launch")
    ).to_have_class(re.compile(r"\bmentioned\b"))
    await expect(
        message(view, "Which day do we ship, Thursday or Friday?", "#launch").get_by_test_id(
            "replies"
        )
    ).to_have_text("💬 2 replies")
    await (
        message(view, "Which day do we ship, Thursday or Friday?", "#launch")
        .get_by_test_id("replies")
        .click()
    )
    await expect(
        view.get_by_test_id("thread-pane").locator('[data-testid="msg"] [data-testid="body"]')
    ).to_have_text(
        [
            "Which day do we ship, Thursday or Friday?",
            "Thursday, right after the code freeze",
            "Thursday works for QA too",
        ]
    )
    if os.environ.get("ROOMCAST_SCREENSHOT") == "1":
        await view.get_by_test_id("thread-input").blur()
        await view.mouse.move(0, 0)
        await expect(view.get_by_test_id("typing")).to_have_text("", timeout=10_000)
        await view.get_by_test_id("scroller").evaluate("s => { s.scrollTop = s.scrollHeight; }")
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        await view.screenshot(path=str(SCREENSHOT))
    assert ann_log.problems() == [] and bob_log.problems() == []
