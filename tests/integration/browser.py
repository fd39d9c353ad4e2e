"""A real browser for the page tests: Debian's Chromium driven by Playwright.

Playwright never downloads a browser here: it launches ``/usr/bin/chromium``.
Without it the page tests are skipped, except on CI (``CI=true``), where a
missing browser is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.async_api import (
    Browser,
    ConsoleMessage,
    Dialog,
    Locator,
    Page,
    async_playwright,
    expect,
)

from tests.integration.users import PASSWORD
from tests.netproxy import TcpProxy

CHROMIUM = Path(os.environ.get("ROOMCAST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: How long an expectation about the page may take (ms).
EXPECT_MS = 5000


def require_chromium() -> None:
    """Skip (or fail on CI) when there is no Chromium to drive."""
    if CHROMIUM.exists():
        return
    message = f"no Chromium at {CHROMIUM}: install it (apt-get install chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class PageLog:
    """What a page reported that a healthy page never does."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        return self.console_errors + self.page_errors + self.dialogs


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Debian's Chromium, launched by Playwright, closed at the end."""
    require_chromium()
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


async def open_page(
    browser: Browser, url: str, *, viewport: tuple[int, int] = (1100, 720)
) -> tuple[Page, PageLog]:
    """A fresh tab (its own sessionStorage) on ``url``, with its errors recorded."""
    context = await browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    page = await context.new_page()
    log = PageLog()

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            log.console_errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda e: log.page_errors.append(str(e)))

    async def on_dialog(dialog: Dialog) -> None:
        log.dialogs.append(f"{dialog.type}: {dialog.message}")
        await dialog.dismiss()

    page.on("dialog", on_dialog)
    response = await page.goto(url)
    assert response is not None and response.ok
    return page, log


async def as_guest(page: Page, nickname: str) -> None:
    """Sign the page in as a guest called ``nickname``."""
    await page.get_by_test_id("guest-name").fill(nickname)
    await page.get_by_test_id("guest-go").click()
    await connected(page)


async def register(page: Page, name: str) -> None:
    """Create the account ``name`` on the page, signed in."""
    await page.get_by_test_id("register-name").fill(name)
    await page.get_by_test_id("register-password").fill(PASSWORD)
    await page.get_by_test_id("register-go").click()
    await connected(page)


async def sign_in(page: Page, name: str) -> None:
    """Sign the page in as the registered user ``name``."""
    await page.get_by_test_id("login-name").fill(name)
    await page.get_by_test_id("login-password").fill(PASSWORD)
    await page.get_by_test_id("login-go").click()
    await connected(page)


async def connected(page: Page) -> None:
    """The page's banner says it is connected."""
    await expect(page.get_by_test_id("banner")).to_have_attribute("data-state", "connected")


def messages(page: Page, conv: str = "#lobby") -> Locator:
    """The messages shown in conversation ``conv`` (``#room`` or ``@user``)."""
    return page.locator(f'[data-conv="{conv}"] [data-testid="msg"]')


def bodies(page: Page, conv: str = "#lobby") -> Locator:
    """The bodies of the messages in ``conv``."""
    return page.locator(f'[data-conv="{conv}"] [data-testid="msg"] [data-testid="body"]')


async def say(page: Page, text: str) -> None:
    """Type ``text`` in the message box and press Enter."""
    box = page.get_by_test_id("input")
    await box.fill(text)
    await box.press("Enter")


async def join(page: Page, room: str) -> None:
    """Join (or create) ``room`` from the sidebar and wait until it shows."""
    await page.get_by_test_id("room-name").fill(room)
    await page.get_by_test_id("room-name").press("Enter")
    await expect(page.get_by_test_id("title")).to_have_text(f"#{room}")


class BlockingProxy(TcpProxy):
    """A TCP proxy that can refuse new connections, as a network that is down does."""

    blocked = False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.blocked:
            writer.transport.abort()
            return
        await super()._accept(reader, writer)


def png(width: int = 96, height: int = 64) -> bytes:
    """A small valid RGB PNG (a gradient), made with zlib alone."""
    rows = b"".join(
        b"\x00" + b"".join(bytes((x * 255 // width, y * 255 // height, 200)) for x in range(width))
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
