"""The page behind a proxy that refuses WebSocket: it falls back to ``/events`` (HTTP).

The page goes through a real TCP proxy that answers every WebSocket upgrade
with 403, as some corporate proxies do, and pipes plain HTTP; a WebSocket
client talks to the server directly. The page must still connect, chat both
ways, and resume after a reconnect with nothing lost and nothing twice.
"""

from __future__ import annotations

import asyncio
import re

from playwright.async_api import Browser, expect

from roomcast.client import Client, RoomMessage
from tests.integration.browser import (
    EXPECT_MS,
    as_guest,
    bodies,
    chromium,
    connected,
    messages,
    open_page,
    say,
)
from tests.integration.serverproc import ServerProcess
from tests.integration.users import sign_up
from tests.wsblock import WsBlockProxy

expect.set_options(timeout=EXPECT_MS)

#: What Chromium logs itself for the refused upgrade and for requests the proxy cut or
#: refused (network errors: an HTTP error status, say a POST answered 404, is not one).
NETWORK_ERRORS = re.compile(r"WebSocket connection to .* failed|Failed to load resource: net::ERR_")


async def received(seen: list[str], texts: list[str]) -> None:
    """Wait until the WebSocket client has received ``texts`` (in this order, at the end)."""
    async with asyncio.timeout(EXPECT_MS / 1000):
        while seen[-len(texts) :] != texts:
            await asyncio.sleep(0.02)


async def test_page_falls_back_to_http_chats_and_resumes(server: ServerProcess) -> None:
    """WebSocket refused: the page connects over /events, chats, and resumes after a cut."""
    carol_token = await sign_up(server, "carol")
    proxy = WsBlockProxy(server.port)
    await proxy.start()
    try:
        async with chromium() as browser, Client(server.ws_url(), token=carol_token) as carol:
            await page_over_http(browser, proxy, carol)
    finally:
        await proxy.stop()


async def page_over_http(browser: Browser, proxy: WsBlockProxy, carol: Client) -> None:
    """The test's steps (the page through ``proxy``, carol on WebSocket)."""
    seen: list[str] = []
    carol.on(RoomMessage, lambda m: seen.append(m.text) if m.room == "lobby" else None)
    # ?backoff=50,500 keeps reconnects quick.
    page, log = await open_page(browser, f"http://127.0.0.1:{proxy.port}/?backoff=50,500")
    await as_guest(page, "pam")
    banner = page.get_by_test_id("banner")
    await expect(banner).to_contain_text("over HTTP")
    assert proxy.refused == 1, "the page tried WebSocket once"

    await say(page, "hello from behind the proxy")
    await received(seen, ["hello from behind the proxy"])
    await expect(messages(page).last).to_have_attribute("data-state", "acked")
    await carol.send_chat("hello pam")
    await expect(bodies(page)).to_have_text(["hello from behind the proxy", "hello pam"])

    # The network goes away: the page's stream and POSTs are cut, new connections refused.
    proxy.down()
    await expect(banner).to_have_attribute("data-state", "reconnecting")
    for n in (1, 2, 3):
        await carol.send_chat(f"while pam was away {n}")
    await say(page, "typed while away")
    await expect(messages(page).last).to_have_attribute("data-state", "sending")
    proxy.up()
    await connected(page)
    await expect(banner).to_contain_text("over HTTP")
    expected = [
        "hello from behind the proxy",
        "hello pam",
        "while pam was away 1",
        "while pam was away 2",
        "while pam was away 3",
        "typed while away",
    ]
    await expect(bodies(page)).to_have_text(expected)
    await expect(messages(page).last).to_have_attribute("data-state", "acked")
    await received(seen, ["typed while away"])
    seqs = [int(s) for s in await messages(page).evaluate_all("l => l.map(m => m.dataset.seq)")]
    assert seqs == list(range(seqs[0], seqs[0] + len(expected))), seqs
    await asyncio.sleep(0.3)  # anything repeated would have arrived by now
    await expect(bodies(page)).to_have_count(len(expected))
    assert seen.count("typed while away") == 1
    # After the fallback the reconnect went straight to HTTP: no second upgrade.
    assert proxy.refused == 1
    # Chromium logs the refused handshake and the requests the cut broke; nothing else.
    assert [e for e in log.console_errors if not NETWORK_ERRORS.search(e)] == [], log.console_errors
    assert log.page_errors == [] and log.dialogs == []
