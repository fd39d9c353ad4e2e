"""Account life on the chat page, in a real Chromium against a real server.

The page keeps a refresh token, never the password; an expiring token is
renewed with it (and a refused renewal shows the sign-in form); a password
change or a sign-out everywhere ends the user's other pages, which go back
to the sign-in form saying why; an account deleted from the page is gone.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from playwright.async_api import Browser, Page, Route, expect

from tests.integration.browser import (
    EXPECT_MS,
    PageLog,
    bodies,
    chromium,
    connected,
    messages,
    open_page,
    register,
    say,
    sign_in,
)
from tests.integration.serverproc import ServerFactory, ServerProcess
from tests.integration.users import PASSWORD, SECRET, call

expect.set_options(timeout=EXPECT_MS)

#: How long the revocation of a session may take to reach its pages (the server's bound is 3 s).
REVOKED_MS = 6000
NEW_PASSWORD = "a different horse battery"
#: Seconds the tokens the refresh test hands the page live (the server's are 15 minutes).
TTL = 6


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


async def stored(page: Page) -> str:
    """Everything the page keeps in sessionStorage and localStorage, as one string."""
    return str(
        await page.evaluate(
            "() => JSON.stringify([Object.entries(sessionStorage), Object.entries(localStorage)])"
        )
    )


async def saved_session(page: Page) -> dict[str, Any]:
    """The session the page saved (sessionStorage)."""
    raw = await page.evaluate("() => sessionStorage.getItem('roomcast.session')")
    assert isinstance(raw, str)
    saved = json.loads(raw)
    assert isinstance(saved, dict)
    return saved


def unexpected(log: PageLog) -> list[str]:
    """What the page reported besides the 401s this test asks for (Chromium logs each)."""
    return [p for p in log.problems() if "status of 401 (Unauthorized)" not in p]


async def open_account(page: Page) -> None:
    """Open the account pane from the top bar."""
    await page.get_by_test_id("account-open").click()
    await expect(page.get_by_test_id("account-pane")).to_be_visible()
    await expect(page.locator("#account-pane-h")).to_be_focused()


async def test_a_password_change_signs_the_other_pages_out(
    browser: Browser, server: ServerProcess
) -> None:
    """The page stores a refresh token, not the password; a new password ends the other page."""
    ann, ann_log = await open_page(browser, server.http_url("/"))
    other, other_log = await open_page(browser, server.http_url("/"))
    await register(ann, "ann")
    await sign_in(other, "ann")
    kept = await stored(ann)
    assert PASSWORD not in kept and "password" not in kept.lower()
    session = await saved_session(ann)
    assert session["name"] == "ann" and session["refreshToken"].count(".") == 1

    await open_account(ann)
    await expect(ann.get_by_test_id("acct-who")).to_contain_text("Signed in as ann, since")
    await ann.get_by_test_id("pw-old").fill(PASSWORD)
    await ann.get_by_test_id("pw-new").fill(NEW_PASSWORD)
    await ann.get_by_test_id("pw-again").fill(NEW_PASSWORD + "?")
    await ann.get_by_test_id("pw-go").click()
    status = ann.get_by_test_id("password-status")
    await expect(status).to_have_text("The two new passwords differ.")
    await expect(ann.get_by_test_id("pw-again")).to_be_focused()

    await ann.get_by_test_id("pw-old").fill("not my password")
    await ann.get_by_test_id("pw-again").fill(NEW_PASSWORD)
    await ann.get_by_test_id("pw-go").click()
    await expect(status).to_contain_text("Password not changed: the current password is wrong")

    await ann.get_by_test_id("pw-old").fill(PASSWORD)
    await ann.get_by_test_id("pw-go").click()
    await expect(status).to_have_text("Password changed. 1 other session was signed out.")
    await expect(ann.get_by_test_id("pw-new")).to_have_value("")
    assert NEW_PASSWORD not in await stored(ann)

    # The other page goes back to the sign-in form, saying why, and stays there.
    await expect(other.get_by_test_id("signin")).to_be_visible(timeout=REVOKED_MS)
    await expect(other.get_by_test_id("signin-error")).to_contain_text("You were signed out")
    await expect(other.get_by_test_id("login-name")).to_have_value("ann")
    assert await other.evaluate("() => sessionStorage.getItem('roomcast.session')") is None
    # This page goes on.
    await say(ann, "still here")
    await expect(bodies(ann).last).to_have_text("still here")
    await expect(ann.get_by_test_id("banner")).to_have_attribute("data-state", "connected")
    status_code, _ = await call(
        server, "POST", "/api/login", json={"username": "ann", "password": NEW_PASSWORD}
    )
    assert status_code == 200
    await other.wait_for_timeout(1500)
    await expect(other.get_by_test_id("signin")).to_be_visible()  # no reconnect loop

    # Sign out ends the session on the server too: its refresh token is refused from then on.
    refresh = (await saved_session(ann))["refreshToken"]
    await ann.get_by_test_id("signout").click()
    await expect(ann.get_by_test_id("signin-note")).to_have_text("Signed out.")
    status_code, body = await call(server, "POST", "/api/refresh", json={"refresh_token": refresh})
    assert status_code == 401, body
    # The other page may learn of the revocation from an API call's 401 before the socket closes.
    assert unexpected(ann_log) == [] and unexpected(other_log) == []


async def test_sign_out_everywhere_then_delete_the_account(
    browser: Browser, server: ServerProcess
) -> None:
    """Sign out everywhere ends both pages; a deleted account cannot sign in again."""
    bob, bob_log = await open_page(browser, server.http_url("/"))
    other, other_log = await open_page(browser, server.http_url("/"))
    await register(bob, "bob")
    await sign_in(other, "bob")

    await open_account(bob)
    await bob.get_by_test_id("acct-signout-all").click()
    ask = bob.get_by_test_id("ask-dialog")
    await expect(ask).to_contain_text("Sign out everywhere?")
    await expect(bob.get_by_test_id("ask-cancel")).to_be_focused()
    await bob.keyboard.press("Escape")
    await expect(ask).to_be_hidden()
    await expect(bob.get_by_test_id("acct-signout-all")).to_be_focused()
    await expect(bob.get_by_test_id("banner")).to_have_attribute("data-state", "connected")
    await bob.get_by_test_id("acct-signout-all").click()
    await bob.get_by_test_id("ask-go").click()
    await expect(bob.get_by_test_id("signin")).to_be_visible()
    await expect(bob.get_by_test_id("signin-note")).to_have_text("Signed out on every device.")
    await expect(other.get_by_test_id("signin")).to_be_visible(timeout=REVOKED_MS)
    await expect(other.get_by_test_id("signin-error")).to_contain_text("You were signed out")

    # Signed in again: a wrong password deletes nothing; the right one deletes the account.
    await sign_in(bob, "bob")
    await say(bob, "goodbye, all")
    await open_account(bob)
    await bob.get_by_test_id("delete-password").fill("wrong password")
    await bob.get_by_test_id("delete-account").click()
    await expect(ask).to_contain_text("Delete your account?")
    await bob.get_by_test_id("ask-go").click()
    await expect(bob.get_by_test_id("delete-status")).to_contain_text(
        "Not deleted: the password is wrong"
    )
    await bob.get_by_test_id("delete-password").fill(PASSWORD)
    await bob.get_by_test_id("delete-account").click()
    await bob.get_by_test_id("ask-go").click()
    await expect(bob.get_by_test_id("signin")).to_be_visible()
    await expect(bob.get_by_test_id("signin-note")).to_have_text("Your account was deleted.")
    status, body = await call(
        server, "POST", "/api/login", json={"username": "bob", "password": PASSWORD}
    )
    assert status == 401, body
    await bob.get_by_test_id("login-password").fill(PASSWORD)
    await bob.get_by_test_id("login-go").click()
    await expect(bob.get_by_test_id("signin-error")).to_contain_text(
        "Sign-in failed", timeout=2 * EXPECT_MS
    )
    assert unexpected(bob_log) == [] and other_log.problems() == []


async def test_an_expired_token_is_renewed_and_a_refused_renewal_asks_to_sign_in(
    browser: Browser, server_factory: ServerFactory
) -> None:
    """On token_expired the page refreshes (rotating the refresh token); a refused one signs out."""
    server = server_factory("--secret", SECRET)
    refreshes: list[str] = []
    refuse = False
    # The page is not told the short expiry: it believes the server's 15 minutes, so
    # only the server's `token_expired` makes it renew.
    issued: list[str] = []

    def short(token: str, seconds: int) -> str:
        """The same token (same user, same session) expiring in ``seconds``."""
        claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="roomcast")
        now = int(time.time())
        claims.update(iat=now, exp=now + seconds)
        return jwt.encode(claims, SECRET, algorithm="HS256")

    async def shorten(route: Route) -> None:
        """Pass the request to the server; give the page a token that expires in ``TTL`` s."""
        if route.request.url.endswith("/api/refresh"):
            sent = json.loads(route.request.post_data or "{}")
            refreshes.append(str(sent.get("refresh_token")))
            if refuse:
                await route.fulfill(
                    status=401,
                    content_type="application/json",
                    body=json.dumps(
                        {"error": {"code": "auth_failed", "message": "the session has ended"}}
                    ),
                )
                return
        response = await route.fetch()
        data = await response.json()
        if response.status == 200:
            data["token"] = short(data["token"], TTL)
            issued.append(data["refresh_token"])
        await route.fulfill(response=response, json=data)

    page, log = await open_page(browser, server.http_url("/"))
    sockets: list[str] = []

    def on_socket(url: str) -> None:
        sockets.append(url)

    page.on("websocket", lambda ws: on_socket(ws.url))
    await page.route("**/api/login", shorten)
    await page.route("**/api/refresh", shorten)
    await register(page, "cat")
    first = (await saved_session(page))["refreshToken"]

    # The server says token_expired after TTL s: the page renews, and stays connected.
    deadline = time.monotonic() + TTL + 6
    while not refreshes and time.monotonic() < deadline:
        await page.wait_for_timeout(100)
    assert refreshes and refreshes[0] == first
    while await saved_refresh(page) == first and time.monotonic() < deadline:
        await page.wait_for_timeout(100)
    assert await saved_refresh(page) != first, "the rotated refresh token was not kept"
    await connected(page)
    await say(page, "renewed")
    await expect(bodies(page).last).to_have_text("renewed")
    await expect(messages(page).last).to_have_attribute("data-state", "acked")
    await expect(page.get_by_test_id("errors")).to_be_empty()
    # Each renewal used the refresh token the one before gave: never one twice. The
    # connection stayed up: the new token went in an `auth` frame.
    assert len(set(refreshes)) == len(refreshes)
    assert len(sockets) == 1, sockets

    # Every renewal presented the refresh token the one before it gave (rotation).
    assert refreshes == issued[: len(refreshes)]

    # The next renewal is refused: back to the sign-in form, with why.
    refuse = True
    await expect(page.get_by_test_id("signin")).to_be_visible(timeout=(TTL + 6) * 1000)
    await expect(page.get_by_test_id("signin-error")).to_contain_text("Sign in again")
    assert await page.evaluate("() => sessionStorage.getItem('roomcast.session')") is None
    assert unexpected(log) == []


async def saved_refresh(page: Page) -> str:
    """The refresh token the page keeps now."""
    return str((await saved_session(page))["refreshToken"])
