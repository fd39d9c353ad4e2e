"""A real browser for the page tests: Debian's Chromium driven by Playwright.

Playwright never downloads a browser here: it launches ``/usr/bin/chromium``.
Without it the page tests are skipped, except on CI (``CI=true``), where a
missing browser is a failure.
"""

from __future__ import annotations

import asyncio
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

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
