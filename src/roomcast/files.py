"""Stored files: content-addressed blobs, and the signed links that serve them.

A file sent in a binary frame is kept once per content: its SHA-256 names
it, under ``<root>/<first two hex digits>/<digest>``, so the same file sent
twice (or to two rooms) is stored once, and nothing a client sends (its file
name least of all) ever becomes part of a path. The bytes are written to a
temporary file, flushed to disk and renamed into place before the message
that names them is stored, so an acked file message always has its file.

With ``--history-days``, files whose messages have all been pruned are
deleted by :meth:`FileStore.sweep`, run by the server after each prune.

Who may read a file is decided by the message it came in (the room's rules,
or the two sides of a direct message). :class:`FileLinks` signs short-lived
URLs, so a browser's ``<img>`` can fetch a file without a token: anyone
who receives the message may fetch its file for :data:`LINK_SECONDS`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import re
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Final, TypeVar

from .model import Change, ChatMessage, DirectMessage, Mention
from .textsafe import strip_format

__all__ = [
    "LINK_SECONDS",
    "SWEEP_GRACE",
    "FileLinks",
    "FileStore",
    "safe_file_name",
    "with_link",
]

M = TypeVar("M", bound=ChatMessage | DirectMessage | Change | Mention)

#: How long a signed file link is valid.
LINK_SECONDS: Final = 3600
#: A file younger than this is never swept (its message may not be stored yet).
SWEEP_GRACE: Final = 3600.0
_DIGEST: Final = re.compile(r"[0-9a-f]{64}")
#: Characters replaced by ``_`` in a file name as it is shown and downloaded:
#: controls (C0, DEL, C1), line and paragraph separators, path separators
#: and the characters Windows refuses in a name.
_UNSAFE_NAME: Final = re.compile(r'[\x00-\x1f\x7f-\x9f\u2028\u2029/\\:*?"<>|]+')


def safe_file_name(name: str) -> str:
    """A file name fit to show and to offer as a download name.

    Invisible format characters go first (the bidi controls among them:
    ``invoice\\u202efdp.exe`` would show as ``invoiceexe.pdf``; see
    :mod:`roomcast.textsafe`, shared with the terminal chat). Then path
    separators, control characters and the characters Windows refuses
    become ``_``, and leading dots and spaces go: ``../../etc/passwd``
    becomes ``_.._etc_passwd``. Never empty; at most 255 characters. It is
    never used as a path on the server.
    """
    cleaned = _UNSAFE_NAME.sub("_", strip_format(name)).strip().lstrip(". ")
    return cleaned[:255] or "file"


class FileStore:
    """Files under ``root``, named by the SHA-256 of their bytes.

    Args:
        root: the directory (created, mode 0700, when the first file comes).
        quota: the most bytes all files may take together; 0 is no quota.
    """

    def __init__(self, root: Path, *, quota: int = 0) -> None:
        self.root = root
        self.quota = quota
        #: Bytes the kept files take: counted once, on the first :meth:`fits`,
        #: then kept up to date by :meth:`put` and :meth:`sweep`.
        self._usage: int | None = None

    async def fits(self, size: int) -> bool:
        """Whether ``size`` more bytes stay within the quota."""
        if self.quota <= 0:
            return True
        if self._usage is None:
            self._usage = await asyncio.to_thread(self._measure)
        return self._usage + size <= self.quota

    def _measure(self) -> int:
        if not self.root.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.root.glob("??/*") if p.is_file())

    def path(self, digest: str) -> Path:
        """Where the file with this SHA-256 (64 lower-case hex digits) is kept.

        Raises:
            ValueError: ``digest`` is not a SHA-256 hex digest.
        """
        if not _DIGEST.fullmatch(digest):
            raise ValueError("not a SHA-256 hex digest")
        return self.root / digest[:2] / digest

    async def put(self, data: bytes) -> str:
        """Keep ``data`` (on disk, flushed) and return its SHA-256 hex digest."""
        digest, added = await asyncio.to_thread(self._put, data)
        if added and self._usage is not None:
            self._usage += len(data)
        return digest

    def _put(self, data: bytes) -> tuple[str, bool]:
        digest = hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        if target.exists():
            return digest, False
        folder = target.parent
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=folder, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return digest, True

    async def sweep(self, keep: set[str], *, grace: float = SWEEP_GRACE) -> int:
        """Delete the files not in ``keep`` older than ``grace`` seconds; return how many.

        ``grace`` spares a file kept just now whose message is not stored yet.
        """
        removed, freed = await asyncio.to_thread(self._sweep, keep, time.time() - grace)
        if self._usage is not None:
            self._usage = max(0, self._usage - freed)
        return removed

    def _sweep(self, keep: set[str], cutoff: float) -> tuple[int, int]:
        removed = freed = 0
        if not self.root.is_dir():
            return 0, 0
        for folder in self.root.iterdir():
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                name = path.name
                stat = path.stat()
                if stat.st_mtime < cutoff and (name not in keep or not _DIGEST.fullmatch(name)):
                    path.unlink(missing_ok=True)  # a leftover ``.incoming-`` file too
                    removed += 1
                    freed += stat.st_size
        return removed, freed


class FileLinks:
    """Signs and checks ``/files/{file_id}?expires=...&signature=...`` links.

    Args:
        secret: the server's secret; the signing key is derived from it, so a
            link signature is never a token signature.
        seconds: how long a link is valid.
    """

    def __init__(self, secret: str, *, seconds: int = LINK_SECONDS) -> None:
        self._key = hmac.digest(secret.encode(), b"roomcast file links", "sha256")
        self.seconds = seconds

    def _signature(self, file_id: str, expires: int) -> str:
        mac = hmac.digest(self._key, f"{file_id}:{expires}".encode(), "sha256")
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def url(self, file_id: str, *, now: float | None = None) -> str:
        """A link to the file, valid for :attr:`seconds` from ``now``."""
        expires = int(now if now is not None else time.time()) + self.seconds
        return f"/files/{file_id}?expires={expires}&signature={self._signature(file_id, expires)}"

    def check(
        self, file_id: str, expires: str, signature: str, *, now: float | None = None
    ) -> bool:
        """Whether ``signature`` signs ``file_id`` until ``expires``, and that is not past."""
        if not (expires.isascii() and expires.isdigit()) or len(expires) > 12:
            return False
        deadline = int(expires)
        if deadline < (now if now is not None else time.time()):
            return False
        expected = self._signature(file_id, deadline).encode()
        return hmac.compare_digest(signature.encode("utf-8", "replace"), expected)


def with_link(message: M, links: FileLinks | None) -> M:
    """``message`` with a signed link to its file, if it carries one and links are signed.

    Any other event (a change, a mention) comes back as it is.
    """
    if links is None or not isinstance(message, ChatMessage | DirectMessage):
        return message
    file = message.file
    if file is None:
        return message
    return replace(message, file=replace(file, url=links.url(message.message_id)))
