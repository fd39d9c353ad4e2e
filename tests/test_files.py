"""The file store, file names and signed file links, without a server."""

from __future__ import annotations

import hashlib
import mmap
import os
import stat
import time
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from roomcast.client.terminal import clean
from roomcast.files import FileLinks, FileStore, safe_file_name
from roomcast.textsafe import CONTROLS, FORMAT
from roomcast.websocket import release_pages

SECRET = "file-links-test-secret-" + "x" * 20


async def test_put_keeps_a_file_once_under_its_digest(tmp_path: Path) -> None:
    """put returns the SHA-256 and keeps the bytes once, under root/ab/<digest>, private."""
    store = FileStore(tmp_path / "files")
    data = bytes(range(256)) * 10
    digest = await store.put(data)
    assert digest == hashlib.sha256(data).hexdigest()
    path = store.path(digest)
    assert path == tmp_path / "files" / digest[:2] / digest
    assert path.read_bytes() == data
    assert await store.put(data) == digest
    assert [p.name for p in path.parent.iterdir()] == [digest]  # no temporary file left
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_path_refuses_anything_but_a_digest(tmp_path: Path) -> None:
    """A digest that is not 64 hex digits (a path, upper case) is refused, never joined."""
    store = FileStore(tmp_path)
    for bad in ("../../etc/passwd", "A" * 64, "a" * 63, "", "a" * 63 + "/"):
        with pytest.raises(ValueError):
            store.path(bad)


def test_a_link_is_valid_until_it_expires() -> None:
    """A signed link checks for its file until its expiry, not after, nor for another file."""
    links = FileLinks(SECRET, seconds=60)
    url = links.url("abc123", now=1000.0)
    path, query = url.split("?")
    assert path == "/files/abc123"
    params = dict(part.split("=", 1) for part in query.split("&"))
    assert params["expires"] == "1060"
    assert links.check("abc123", params["expires"], params["signature"], now=1059.0)
    assert not links.check("abc123", params["expires"], params["signature"], now=1061.0)
    assert not links.check("abc124", params["expires"], params["signature"], now=1000.0)
    assert not links.check("abc123", "1061", params["signature"], now=1000.0)
    assert not FileLinks(SECRET + "!").check(
        "abc123", params["expires"], params["signature"], now=1000.0
    )


@given(st.text(max_size=40), st.text(max_size=60))
def test_forged_links_never_check(expires: str, signature: str) -> None:
    """Whatever expires and signature say, only the server's own signature passes."""
    assert not FileLinks(SECRET).check("file1", expires, signature, now=0.0)


@settings(max_examples=300)
@given(st.text(max_size=300))
def test_safe_file_names_have_no_path_or_control_characters(name: str) -> None:
    """Any name becomes 1-255 characters without separators, controls or a leading dot."""
    safe = safe_file_name(name)
    assert 1 <= len(safe) <= 255
    assert not any(c in safe for c in '/\\:*?"<>|') and not any(ord(c) < 32 for c in safe)
    assert not any(ord(c) in CONTROLS | FORMAT for c in safe)
    assert not safe.startswith((".", " "))


#: Every bidi control: embeddings, overrides, isolates and marks.
BIDI = [*map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))]
BIDI += ["\u200e", "\u200f", "\u061c"]


@pytest.mark.parametrize("bidi", BIDI, ids=lambda c: f"U+{ord(c):04X}")
def test_safe_file_names_lose_bidi_controls(bidi: str) -> None:
    """Bidi controls are removed from file names, and the terminal chat shows them as U+FFFD."""
    assert safe_file_name(f"invoice{bidi}fdp.exe") == "invoicefdp.exe"
    assert safe_file_name(f"{bidi}.bashrc") == "bashrc"  # no leading dot hidden behind one
    assert clean(f"a{bidi}b") == "a\ufffdb"


def test_safe_file_names_lose_invisible_format_characters_and_keep_joiners() -> None:
    """Zero-width and tag characters go; emoji joiners, accents and scripts stay."""
    assert safe_file_name("pay\u200broll\u00ad\ufeff\u2060.pdf\U000e0041") == "payroll.pdf"
    assert safe_file_name("a\x85b\x9bc\u2028d") == "a_b_c_d"
    kept = "caf\u00e9 \U0001f469\u200d\U0001f4bb \u0645\u06cc\u200c\u062e\u0648\u0627\u0645.txt"
    assert safe_file_name(kept) == kept


def test_format_set_covers_every_format_character_but_the_joiners() -> None:
    """textsafe.FORMAT holds every Unicode Cf character but ZWNJ and ZWJ, and nothing visible."""
    cf = {c for c in range(0x110000) if unicodedata.category(chr(c)) == "Cf"}
    assert cf - FORMAT == {0x200C, 0x200D}
    assert all(unicodedata.category(chr(c)) in ("Cf", "Cn") for c in FORMAT)
    assert not FORMAT & CONTROLS


def test_release_pages_gives_back_whole_pages_only() -> None:
    """release_pages covers only the whole pages inside a writable buffer; they read as zeros."""
    page = mmap.PAGESIZE
    private = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS  # like the heap picows' buffer is on
    with mmap.mmap(-1, 4 * page, flags=private) as area:
        area.write(b"\xff" * (4 * page))
        view = memoryview(area)[10 : 3 * page + 10]
        released = release_pages(view)
        assert released == 2 * page
        assert area[page : 3 * page] == b"\0" * (2 * page)
        assert area[:10] == b"\xff" * 10 and area[3 * page : 3 * page + 10] == b"\xff" * 10
        view.release()
    assert release_pages(memoryview(b"read only" * 1000)) == 0


async def test_sweep_deletes_only_old_files_no_message_names(tmp_path: Path) -> None:
    """sweep keeps named files and recent ones; it deletes old unnamed files and leftovers."""
    store = FileStore(tmp_path)
    kept, dropped, recent = [await store.put(data) for data in (b"kept", b"dropped", b"recent")]
    leftover = store.path(kept).parent / ".incoming-x"
    leftover.write_bytes(b"half")
    old = time.time() - 2 * 3600
    for path in (store.path(kept), store.path(dropped), leftover):
        os.utime(path, (old, old))
    assert await store.sweep({kept}) == 2
    assert store.path(kept).exists() and store.path(recent).exists()
    assert not store.path(dropped).exists() and not leftover.exists()


async def test_the_files_quota_counts_new_contents_and_what_a_sweep_frees(tmp_path: Path) -> None:
    """fits() measures the folder once; a repeat costs nothing; a sweep gives room back."""
    files = FileStore(tmp_path / "files", quota=100)
    assert await files.fits(100) and not await files.fits(101)
    first = await files.put(b"a" * 60)
    await files.put(b"a" * 60)  # the same content: kept once, counted once
    assert await files.fits(40) and not await files.fits(41)
    assert await files.sweep({first}, grace=0) == 0
    assert await files.sweep(set(), grace=0) == 1
    assert await files.fits(100)
    # A new store over the same folder measures what is there.
    await files.put(b"b" * 30)
    again = FileStore(tmp_path / "files", quota=100)
    assert await again.fits(70) and not await again.fits(71)


async def test_no_files_quota_fits_anything(tmp_path: Path) -> None:
    """A quota of 0 is no quota."""
    assert await FileStore(tmp_path, quota=0).fits(2**60)
