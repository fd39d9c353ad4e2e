"""Moderation on the chat page, in a real Chromium against a real server.

An owner mutes, bans and kicks from the member menu, and the member's page
says why; a moderator deletes anyone's message; the room's settings (topic,
title, slow mode) reach every member's page at once, read-only for members;
the moderation log pages back; a deleted room leaves every member's list.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Locator, Page, expect

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
)
from tests.integration.serverproc import ServerProcess
from tests.integration.users import call, login, user_ws
from tests.integration.wsclient import recv_type, send_json

expect.set_options(timeout=EXPECT_MS)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


async def owner_and_member(
    browser: Browser, server: ServerProcess, owner: str, member: str, room: str
) -> tuple[Page, PageLog, Page, PageLog]:
    """``owner`` creates the public ``room`` by joining it first; ``member`` joins it too."""
    own, own_log = await open_page(browser, server.http_url("/"))
    mem, mem_log = await open_page(browser, server.http_url("/"))
    await register(own, owner)
    await register(mem, member)
    await join(own, room)
    await join(mem, room)
    await expect(member_row(own, member)).to_be_visible()
    return own, own_log, mem, mem_log


def member_row(page: Page, name: str) -> Locator:
    """The row of ``name`` in the members list."""
    return page.get_by_test_id("members").locator(f'[data-testid="member"][data-name="{name}"]')


async def member_menu(page: Page, name: str) -> Locator:
    """Open ``name``'s menu from the members list; the menu."""
    row = member_row(page, name)
    await row.get_by_test_id("member-name").click()
    menu = row.get_by_test_id("member-actions")
    await expect(menu).to_be_visible()
    return menu


def nav(page: Page, room: str) -> Locator:
    """The room's entry in the sidebar."""
    return page.get_by_test_id(f"nav-#{room}")


async def open_settings(page: Page) -> Locator:
    """Open the settings pane of the room shown; the pane."""
    await page.get_by_test_id("room-settings-open").click()
    pane = page.get_by_test_id("room-pane")
    await expect(pane).to_be_visible()
    await expect(page.locator("#room-pane-h")).to_be_focused()
    return pane


async def test_an_owner_mutes_and_bans_a_member_who_sees_why(
    browser: Browser, server: ServerProcess
) -> None:
    """Mute: the member's box says until when and stays closed; ban: the room leaves their list."""
    ann, ann_log, bob, bob_log = await owner_and_member(browser, server, "ann", "bob", "den")

    # The member sees no moderation for the owner; the owner sees it all for the member.
    menu = await member_menu(bob, "ann")
    await expect(menu.get_by_role("menuitem")).to_have_text(["Message ann"])
    await bob.keyboard.press("Escape")
    await expect(menu).to_have_count(0)
    await expect(member_row(bob, "ann").get_by_test_id("member-name")).to_be_focused()
    await expect(member_row(bob, "ann").get_by_test_id("member-role")).to_have_text("owner")

    menu = await member_menu(ann, "bob")
    await expect(menu.get_by_role("menuitem")).to_have_text(
        [
            "Message bob",
            "Kick bob out of #den…",
            "Make moderator",
            "Mute for 10 minutes",
            "Mute for 1 hour",
            "Mute for 1 day",
            "Ban…",
        ]
    )
    # The keyboard moves through it; the first item has the focus.
    await expect(menu.get_by_test_id("mm-message")).to_be_focused()
    await ann.keyboard.press("End")
    await expect(menu.get_by_test_id("mm-ban")).to_be_focused()
    await menu.get_by_test_id("mm-mute-600").click()
    await expect(ann.get_by_test_id("notice").last).to_contain_text(
        re.compile(r"bob is muted in #den until \d")
    )
    await expect(member_row(ann, "bob").get_by_test_id("member-muted")).to_have_text("muted")

    # bob is told at once: the box says until when and stays closed; reading goes on.
    note = bob.get_by_test_id("composer-note")
    await expect(note).to_contain_text(re.compile(r"You are muted in #den until \d"))
    await expect(bob.get_by_test_id("input")).to_be_disabled()
    await expect(bob.get_by_test_id("send")).to_be_disabled()
    await say(ann, "still reading?")
    await expect(bodies(bob, "#den").last).to_have_text("still reading?")
    await expect(bob.get_by_test_id("input")).to_be_disabled()

    # The owner lifts the mute from the menu; bob's page reads it when it opens the room again.
    menu = await member_menu(ann, "bob")
    await expect(menu.get_by_test_id("mm-unmute")).to_contain_text("Unmute (muted until")
    await menu.get_by_test_id("mm-unmute").click()
    await expect(member_row(ann, "bob").get_by_test_id("member-muted")).to_have_count(0)
    await nav(bob, "lobby").click()
    await nav(bob, "den").click()
    await expect(bob.get_by_test_id("input")).to_be_enabled()
    await expect(note).to_be_hidden()

    # A ban, with a reason and a duration: bob's page drops the room and says why.
    menu = await member_menu(ann, "bob")
    await menu.get_by_test_id("mm-ban").click()
    dialog = ann.get_by_test_id("mod-dialog")
    await expect(dialog).to_be_visible()
    await expect(dialog.get_by_role("heading")).to_have_text("Ban bob from #den")
    await expect(ann.get_by_test_id("mod-for")).to_be_focused()
    await ann.get_by_test_id("mod-for").select_option(label="1 day")
    await ann.get_by_test_id("mod-reason").fill("spam links")
    await ann.get_by_test_id("mod-go").click()
    await expect(dialog).to_be_hidden()
    await expect(bob.get_by_test_id("notices")).to_contain_text(
        re.compile(r"ann banned you from #den until .+: spam links")
    )
    await expect(nav(bob, "den")).to_have_count(0)
    await expect(bob.get_by_test_id("title")).to_have_text("#lobby")
    await expect(member_row(ann, "bob")).to_have_count(0)

    # Joining again is refused with the same words.
    await bob.get_by_test_id("room-name").fill("den")
    await bob.get_by_test_id("room-name").press("Enter")
    await expect(bob.get_by_test_id("errors")).to_contain_text(
        re.compile(r"You are banned from #den until .+: spam links")
    )
    await expect(bob.get_by_test_id("title")).to_have_text("#lobby")

    # The owner's settings list the ban (with the reason) and the log says what happened.
    pane = await open_settings(ann)
    ban = pane.get_by_test_id("rs-ban")
    await expect(ban).to_have_count(1)
    await expect(ban).to_contain_text(re.compile(r"bob until .+: spam links"))
    log = pane.get_by_test_id("audit-entry")
    await expect(log).to_have_count(3)
    await expect(log.nth(0)).to_contain_text(re.compile(r"ann banned bob until .+: spam links"))
    await expect(log.nth(1)).to_contain_text("ann unmuted bob")
    await expect(log.nth(2)).to_contain_text(re.compile(r"ann muted bob until "))

    # Lifted from the list: bob may join again.
    await ban.get_by_test_id("rs-unban").click()
    await expect(pane.get_by_test_id("rs-bans")).to_have_text("Nobody is banned.")
    await expect(log.first).to_contain_text("ann lifted the ban on bob")
    await join(bob, "den")
    await ann.get_by_test_id("room-pane-close").click()
    await expect(ann.get_by_test_id("room-settings-open")).to_be_focused()
    await expect(member_row(ann, "bob")).to_be_visible()
    assert ann_log.problems() == [] and bob_log.problems() == []


async def test_the_member_menu_offers_what_each_role_may_do(
    browser: Browser, server: ServerProcess
) -> None:
    """A moderator named by the owner kicks and deletes anyone's message; roles show everywhere."""
    ann, ann_log, bob, bob_log = await owner_and_member(browser, server, "cal", "dot", "yard")
    eve, eve_log = await open_page(browser, server.http_url("/"))
    await register(eve, "eve")
    await join(eve, "yard")
    await expect(member_row(bob, "eve")).to_be_visible()

    # A member's menu on another member: a direct message only.
    menu = await member_menu(bob, "eve")
    await expect(menu.get_by_role("menuitem")).to_have_text(["Message eve"])
    await bob.keyboard.press("Escape")

    # The owner names dot a moderator: dot's page knows at once (a `room` frame).
    menu = await member_menu(ann, "dot")
    await menu.get_by_test_id("mm-moderator").click()
    await expect(member_row(ann, "dot").get_by_test_id("member-role")).to_have_text("mod")
    await expect(member_row(bob, "dot").get_by_test_id("member-role")).to_have_text("mod")
    await expect(member_row(eve, "dot").get_by_test_id("member-role")).to_have_text("mod")

    # A moderator may not act on the owner; on a member, all but roles.
    menu = await member_menu(bob, "cal")
    await expect(menu.get_by_role("menuitem")).to_have_text(["Message cal"])
    await bob.keyboard.press("Escape")
    menu = await member_menu(bob, "eve")
    await expect(menu.get_by_role("menuitem")).to_have_text(
        [
            "Message eve",
            "Kick eve out of #yard…",
            "Mute for 10 minutes",
            "Mute for 1 hour",
            "Mute for 1 day",
            "Ban…",
        ]
    )
    await bob.keyboard.press("Escape")
    # The owner's menu on the moderator takes the role back.
    menu = await member_menu(ann, "dot")
    await expect(menu.get_by_test_id("mm-unmoderator")).to_have_text("Remove as moderator")
    await ann.keyboard.press("Escape")

    # eve writes; the moderator opens eve's menu from her name on the message, and deletes it.
    await say(eve, "buy cheap watches")
    theirs = messages(bob, "#yard").filter(has_text="buy cheap watches")
    await theirs.get_by_test_id("author").click()
    await expect(theirs.get_by_test_id("member-actions")).to_be_visible()
    await expect(theirs.get_by_test_id("mm-remove")).to_have_text("Kick eve out of #yard…")
    await bob.keyboard.press("Escape")
    await expect(theirs.get_by_test_id("author")).to_be_focused()
    await theirs.get_by_test_id("msg-menu").click()
    await theirs.get_by_test_id("menu-delete").click()
    confirm = bob.get_by_test_id("confirm-delete")
    await expect(confirm).to_contain_text("Delete this message from eve?")
    await bob.get_by_test_id("confirm-go").click()
    for page in (ann, bob, eve):
        await expect(bodies(page, "#yard").last).to_have_text("message deleted")
    # eve (a member) gets no Delete on the owner's message.
    await say(ann, "house rules: no ads")
    ours = messages(eve, "#yard").filter(has_text="house rules")
    await ours.get_by_test_id("msg-menu").click()
    await expect(ours.get_by_test_id("msg-actions")).to_be_visible()
    await expect(ours.get_by_test_id("menu-delete")).to_have_count(0)
    await eve.keyboard.press("Escape")

    # The moderator kicks eve with a reason: out now, may join again.
    menu = await member_menu(bob, "eve")
    await menu.get_by_test_id("mm-remove").click()
    dialog = bob.get_by_test_id("mod-dialog")
    await expect(dialog.get_by_role("heading")).to_have_text("Kick eve out of #yard")
    await expect(bob.get_by_test_id("mod-for")).to_be_hidden()
    await expect(bob.get_by_test_id("mod-reason")).to_be_focused()
    await bob.get_by_test_id("mod-reason").fill("cool off")
    await bob.get_by_test_id("mod-go").click()
    notice = eve.get_by_test_id("notice").filter(has_text="#yard")
    await expect(notice).to_contain_text("dot took you out of #yard: cool off. You may join it")
    await expect(nav(eve, "yard")).to_have_count(0)
    await notice.get_by_test_id("notice-open").click()  # "Join again"
    await expect(eve.get_by_test_id("title")).to_have_text("#yard")

    # The owner's log names the moderator; the owner hands the room over to dot.
    pane = await open_settings(ann)
    log = pane.get_by_test_id("audit-entry")
    await expect(log.nth(0)).to_contain_text("dot removed eve: cool off")
    await expect(log.nth(1)).to_contain_text("dot deleted a message by eve")
    await expect(log.nth(2)).to_contain_text("cal made dot a moderator")
    await ann.get_by_test_id("rs-new-owner").fill("dot")
    await ann.get_by_test_id("rs-handover").click()
    ask = ann.get_by_test_id("ask-dialog")
    await expect(ask).to_contain_text("Hand #yard over to dot?")
    await expect(ann.get_by_test_id("ask-cancel")).to_be_focused()
    await ann.get_by_test_id("ask-go").click()
    await expect(pane.get_by_test_id("rs-role")).to_have_text(re.compile("You moderate this room"))
    await expect(pane.get_by_test_id("rs-owner")).to_contain_text("dot")
    await expect(member_row(eve, "dot").get_by_test_id("member-role")).to_have_text("owner")
    await expect(member_row(eve, "cal").get_by_test_id("member-role")).to_have_text("mod")
    assert ann_log.problems() == [] and bob_log.problems() == [] and eve_log.problems() == []


async def test_the_owner_of_a_private_room_removes_a_member(
    browser: Browser, server: ServerProcess
) -> None:
    """Removed from a private room: it leaves the member's list for good, with who and why."""
    ann, ann_log = await open_page(browser, server.http_url("/"))
    bob, bob_log = await open_page(browser, server.http_url("/"))
    await register(bob, "kay")
    await register(ann, "joy")
    await ann.get_by_test_id("room-private").check()
    await ann.get_by_test_id("room-members").fill("kay")
    await join(ann, "plans")
    await bob.get_by_test_id("rooms-refresh").click()
    await nav(bob, "plans").click()
    await expect(bob.get_by_test_id("title")).to_have_text("#plans")
    menu = await member_menu(ann, "kay")
    await expect(menu.get_by_test_id("mm-remove")).to_have_text("Remove kay from #plans…")
    await menu.get_by_test_id("mm-remove").click()
    await expect(ann.get_by_test_id("mod-dialog").get_by_role("heading")).to_have_text(
        "Remove kay from #plans"
    )
    await ann.get_by_test_id("mod-go").click()  # no reason: none is needed
    await expect(bob.get_by_test_id("notices")).to_contain_text("joy removed you from #plans.")
    await expect(nav(bob, "plans")).to_have_count(0)
    await bob.get_by_test_id("rooms-refresh").click()
    await expect(nav(bob, "lobby")).to_be_visible()
    await expect(nav(bob, "plans")).to_have_count(0)
    await expect(member_row(ann, "kay")).to_have_count(0)
    assert ann_log.problems() == [] and bob_log.problems() == []


async def test_settings_reach_every_member_and_slow_mode_counts_down(
    browser: Browser, server: ServerProcess
) -> None:
    """Topic and title show live under the name; members read them only; slow mode counts down."""
    ann, ann_log, bob, bob_log = await owner_and_member(browser, server, "fox", "gil", "hall")

    pane = await open_settings(ann)
    await expect(pane.get_by_test_id("rs-role")).to_have_text("You own this room.")
    await ann.get_by_test_id("rs-title").fill("Town hall")
    await ann.get_by_test_id("rs-topic").fill("Questions for Friday's all-hands")
    await ann.get_by_test_id("rs-slow").select_option(label="5 seconds")
    await ann.get_by_test_id("rs-save").click()
    await expect(pane.get_by_test_id("rs-status")).to_have_text("Saved.")
    for page in (ann, bob):
        await expect(page.get_by_test_id("title")).to_have_text("Town hall")
        await expect(page.get_by_test_id("room-slug")).to_have_text("#hall")
        await expect(page.get_by_test_id("topic")).to_have_text("Questions for Friday's all-hands")
    await expect(pane.get_by_test_id("audit-entry").first).to_contain_text(
        "fox set the topic to “Questions for Friday's all-hands”, "
        "the display name to “Town hall”, slow mode to 5 seconds"
    )

    # The member reads the settings and may change none of them.
    theirs = await open_settings(bob)
    await expect(theirs.get_by_test_id("rs-role")).to_have_text(
        "Only the room's owner and moderators change these."
    )
    await expect(bob.get_by_test_id("rs-topic")).to_have_value("Questions for Friday's all-hands")
    await expect(bob.get_by_test_id("rs-topic")).not_to_be_editable()
    await expect(bob.get_by_test_id("rs-title")).not_to_be_editable()
    await expect(bob.get_by_test_id("rs-slow")).to_be_disabled()
    await expect(bob.get_by_test_id("rs-save")).to_be_hidden()
    await expect(bob.get_by_test_id("rs-bans")).to_be_hidden()
    await expect(bob.get_by_test_id("rs-audit")).to_be_hidden()
    await expect(bob.get_by_test_id("rs-delete")).to_be_hidden()
    await bob.keyboard.press("Escape")
    await expect(theirs).to_be_hidden()
    await expect(bob.get_by_test_id("room-settings-open")).to_be_focused()

    # Slow mode: after a message the member's box counts down; the owner is not slowed.
    note = bob.get_by_test_id("composer-note")
    await expect(note).to_have_text("Slow mode is on: one message every 5 seconds.")
    await say(bob, "first question")
    await expect(note).to_contain_text(re.compile(r"Slow mode: you can send again in [1-5] s"))
    await expect(bob.get_by_test_id("send")).to_be_disabled()
    await bob.get_by_test_id("input").fill("too soon")
    await bob.get_by_test_id("input").press("Enter")
    await expect(bob.get_by_test_id("input")).to_have_value("too soon")  # kept, not sent
    await expect(bob.get_by_test_id("send")).to_be_enabled(timeout=7000)
    await bob.get_by_test_id("input").press("Enter")
    await expect(bodies(ann, "#hall")).to_have_text(["first question", "too soon"])
    await expect(bob.get_by_test_id("send")).to_be_enabled(timeout=7000)
    await asyncio.sleep(1)  # the server's wait started a little after the page's
    await say(ann, "answer one")
    await say(ann, "answer two")
    await expect(ann.get_by_test_id("send")).to_be_enabled()

    # Sent from elsewhere first: the server asks the page's message to wait; it goes by itself.
    token = await login(server, "gil")
    ws = await user_ws(server, token)
    try:
        await send_json(ws, "join", {"room": "hall"}, id="j")
        await recv_type(ws, "joined")
        await send_json(ws, "chat", {"room": "hall", "message": "from my phone"}, id="c")
        await recv_type(ws, "ack")
        await say(bob, "from the page")
        await expect(note).to_contain_text(re.compile(r"Slow mode: you can send again in \d s"))
        pending = messages(bob, "#hall").filter(has_text="from the page")
        await expect(pending.get_by_test_id("status")).to_contain_text("(slow mode)")
        await expect(bodies(ann, "#hall").last).to_have_text("from the page", timeout=8000)
        await expect(pending).to_have_attribute("data-state", "acked")
    finally:
        await ws.close()

    # The owner deletes the room: the member's page says so and drops it.
    await ann.get_by_test_id("rs-delete").click()
    await expect(ann.get_by_test_id("ask-dialog")).to_contain_text("Delete #hall?")
    await ann.get_by_test_id("ask-go").click()
    await expect(bob.get_by_test_id("notices")).to_contain_text("#hall was deleted by fox.")
    await expect(nav(bob, "hall")).to_have_count(0)
    await expect(bob.get_by_test_id("title")).to_have_text("#lobby")
    await expect(nav(ann, "hall")).to_have_count(0)
    await expect(ann.get_by_test_id("room-pane")).to_be_hidden()
    assert ann_log.problems() == [] and bob_log.problems() == []


async def test_the_moderation_log_pages_back(browser: Browser, server: ServerProcess) -> None:
    """Twenty entries a page, newest first; Load more reads the older ones until there are none."""
    ann, ann_log, bob, bob_log = await owner_and_member(browser, server, "hugh", "iris", "log")
    token = await login(server, "hugh")
    for i in range(12):
        status, _ = await call(
            server, "PUT", "/api/rooms/log/mutes/iris", json={"for": 60 + i}, bearer=token
        )
        assert status == 200
        status, _ = await call(server, "DELETE", "/api/rooms/log/mutes/iris", bearer=token)
        assert status == 204
    status, _ = await call(
        server, "PATCH", "/api/rooms/log", json={"topic": "the last one"}, bearer=token
    )
    assert status == 200
    pane = await open_settings(ann)
    entries = pane.get_by_test_id("audit-entry")
    await expect(entries).to_have_count(20)
    await expect(entries.first).to_contain_text("hugh set the topic to “the last one”")
    await expect(entries.nth(1)).to_contain_text("hugh unmuted iris")
    more = pane.get_by_test_id("rs-audit-more")
    await more.click()
    await expect(entries).to_have_count(25)
    await expect(entries.last).to_contain_text("hugh muted iris until")
    await expect(more).to_be_hidden()
    # The newest entry comes first again after a change made on the page.
    await ann.get_by_test_id("rs-topic").fill("")
    await ann.get_by_test_id("rs-save").click()
    await expect(entries.first).to_contain_text("hugh set no topic")
    await expect(entries).to_have_count(20)
    assert ann_log.problems() == [] and bob_log.problems() == []
