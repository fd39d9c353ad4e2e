"""Settings, as small frozen value objects with concrete defaults.

:class:`Limits` holds every limit of PROTOCOL section 4 that the server
enforces; :class:`ServerConfig` is what ``roomcast serve`` runs with. The CLI
fills them from flags and ``ROOMCAST_*`` environment variables; library
users build them directly.
"""

from __future__ import annotations

import errno
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from .exceptions import ConfigError

if TYPE_CHECKING:
    import ssl

__all__ = [
    "DEFAULT_LIMITS",
    "MIN_SECRET_BYTES",
    "Limits",
    "ServerConfig",
    "load_secret",
    "make_ssl_context",
]


@dataclass(frozen=True, slots=True)
class Limits:
    """What one connection may do (PROTOCOL section 4)."""

    #: Largest text frame, in bytes; a bigger one closes the connection with 1009.
    max_text_frame: int = 64 * 1024
    #: Largest file a binary frame may carry, in bytes; a bigger frame closes
    #: the connection with 1009 before it is read whole.
    max_file_size: int = 8 * 1024 * 1024
    #: Largest chat or direct message text, in characters (``too_large`` past it).
    max_message_chars: int = 4000
    #: Unsent bytes queued to one connection before it is closed with 1013.
    max_queue_bytes: int = 1024 * 1024
    #: Rooms one connection may be in at once.
    max_rooms: int = 128
    #: Rooms with more users than this send no join/leave events and list
    #: only this many members.
    presence_limit: int = 1000
    #: Messages (chat, direct, typing, files, echo) a second per connection;
    #: commands (join, leave, history, presence, ping, auth) get five times
    #: as many. 0 turns both limits off.
    rate_limit: float = 20.0
    #: Messages one connection may send at once (commands: five times as many).
    rate_burst: int = 40
    #: Connections of one user on this server; 0 is no cap.
    max_connections_per_user: int = 10
    #: Connections from one IP address; 0, the default, is no cap (many
    #: people may share an address behind a proxy).
    max_connections_per_ip: int = 0
    #: Most messages one ``join`` with ``since`` replays, the newest; a client
    #: reads older ones with ``history``. 1,000 frames of a typical 200 bytes
    #: is 200 KB, a fifth of the send queue: a replay drains in a few round
    #: trips, and no request makes the server read a room's whole history.
    max_replay: int = 1000
    #: Bytes of files one registered user may send in 24 hours (0: no quota).
    #: 256 MiB is 32 files at the largest size a day: far beyond what people
    #: share in a chat, yet a flood of 8 MiB files at the rate limit stops
    #: after 1.6 s instead of filling the disk at 160 MiB/s.
    upload_quota: int = 256 * 1024 * 1024
    #: Bytes all kept files may take together (0: no quota): a full disk
    #: would stop the database too, so files stop first.
    files_quota: int = 10 * 1024**3
    #: Connections from one address that are not WebSockets (page loads, API
    #: calls, handshakes not read yet); past it a new one is answered 429 and
    #: closed. A browser opens at most 6 to a host, so 128 serves 20 people
    #: behind one NAT loading the page at once, and holds one address to
    #: about 1 MiB of the server's memory (7 KiB per idle keep-alive
    #: connection, 1.2 KiB per one yet to send its head, measured) and 128
    #: file descriptors. 0 is no cap; trusted proxies are not counted.
    max_http_connections_per_ip: int = 128


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Webhook:
    """Where notifications for users who are away go (``--webhook-url``), and their key."""

    url: str
    #: Signs each body (HMAC-SHA256), so the receiver knows the server sent it.
    secret: str = field(repr=False)


#: The shortest webhook secret: 128 bits, as the HMAC key of a signature.
MIN_WEBHOOK_SECRET_BYTES: Final = 16


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything ``roomcast serve`` needs to run."""

    host: str = "127.0.0.1"
    port: int = 8765
    data_dir: Path = Path("roomcast-data")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    allowed_origins: tuple[str, ...] = ()
    secret: str | None = None
    #: Where messages are kept: ``None`` for ``roomcast.db`` in ``data_dir``,
    #: ``postgresql://...``, ``sqlite:PATH`` or ``memory:``.
    database_url: str | None = None
    #: How nodes reach each other: ``redis://...``, or None for this process
    #: only. Needs a ``database_url`` every node shares (PostgreSQL).
    redis_url: str | None = None
    #: What this service's Redis keys and channel names start with.
    redis_prefix: str = "roomcast:"
    #: Delete messages older than this many days; 0 keeps them all.
    history_days: int = 0
    #: Where files sent in binary frames are kept; None is ``data_dir/files``.
    #: Several nodes must share one (a network file system).
    files_dir: Path | None = None
    #: Whether a connection that has not signed in is a guest; without
    #: guests it must ``auth`` within 10 s.
    guests: bool = True
    #: How hard each password is hashed (argon2id): ``default`` (argon2-cffi's,
    #: RFC 9106's low-memory profile: 3 passes over 64 MiB, 4 lanes; 197 ms
    #: a hash on this project's test host) or ``small`` (OWASP's minimum:
    #: 2 passes over 19 MiB, 1 lane; 46 ms), for hosts short of memory or
    #: CPU. Existing hashes verify either way: each carries its own settings.
    password_hash: str = "default"
    #: Seconds between heartbeat pings; 0 turns the heartbeat off.
    heartbeat: float = 30.0
    #: Seconds to wait for a client's close frame before dropping it.
    close_timeout: float = 5.0
    #: Seconds an HTTP request's body may take to arrive, from when its head
    #: did; past it the answer is 408 and the connection is closed.
    body_timeout: float = 10.0
    #: Reverse proxies (addresses, or networks such as ``10.0.0.0/8``) whose
    #: ``X-Forwarded-For`` names the client; nobody else's is believed.
    trusted_proxies: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    #: Where notifications for users who are away are posted, and the key
    #: that signs them; None sends none.
    webhook: Webhook | None = None
    #: Nodes this one command runs on this host, one process each, sharing
    #: the port (``--workers``); more than 1 needs Redis and PostgreSQL.
    workers: int = 1
    #: Listen with SO_REUSEPORT, so that the workers of one ``--workers``
    #: command each have a listening socket on the one port and the kernel
    #: spreads connections over them.
    reuse_port: bool = False

    @property
    def scheme(self) -> str:
        """``https`` with TLS, ``http`` without."""
        return "https" if self.tls_cert is not None else "http"


def make_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2 or newer) from PEM files.

    Raises:
        ConfigError: the files cannot be read or do not match.
    """
    import ssl

    for path in (cert, key):
        if not path.is_file():
            problem = "not a file" if path.exists() else "no such file"
            raise ConfigError(f"cannot read TLS file {path}: {problem}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise ConfigError(f"cannot read TLS file {exc.filename}: no such file") from None
    except PermissionError as exc:
        raise ConfigError(f"cannot read TLS file {exc.filename}: permission denied") from None
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        raise ConfigError(f"cannot load TLS certificate {cert} / key {key}: {reason}") from None
    return context


def prepare_data_dir(path: Path) -> Path:
    """Create the data directory if needed and check that it is writable."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create data directory {path}: {exc.strerror}") from None
    if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"data directory {path} is not a writable directory")
    return path


#: Shortest secret accepted, in bytes: HS256 wants a key as long as its
#: hash (RFC 7518 section 3.2). A generated one is 64 characters.
MIN_SECRET_BYTES: Final = 32
#: What link() fails with where the file system has no hard links.
_NO_HARD_LINKS: Final = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})


def load_secret(data_dir: Path, given: str | None) -> str:
    """The signing secret: ``given``, or one kept in ``data_dir/secret`` (mode 0600).

    A generated secret is written once and read back on every later start,
    so tokens survive a restart. It is written to a temporary file, fsynced,
    linked into place (so of two servers starting at once the first wins and
    the second reads it) and the directory fsynced: a crash leaves no secret
    file or a whole one.

    An *empty* ``secret`` file is what a crash left before this was so (an
    unsynced write): it is replaced by a new secret. No token was ever signed
    with an empty secret (such a server could not start), so none is lost.
    A non-empty secret shorter than :data:`MIN_SECRET_BYTES` is damaged or
    mistyped, and using or replacing it could sign everyone out or sign with
    a weak key: that is a ConfigError, like a file that cannot be read.

    Raises:
        ConfigError: ``given`` or the kept secret is too short, or the file
            cannot be read or written.
    """
    if given is not None:
        if len(given.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(f"the secret must be at least {MIN_SECRET_BYTES} bytes long")
        return given
    path = data_dir / "secret"
    existing = _read_secret(path)
    if existing is not None and existing != "":
        return existing
    value = secrets.token_urlsafe(48)
    return _write_secret(path, value, replace=existing == "")


def _read_secret(path: Path) -> str | None:
    """The secret kept in ``path``; None if there is none, "" if the file is empty."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    if not raw:
        return ""
    try:
        value = raw.decode().strip()
    except UnicodeDecodeError:
        value = ""
    if len(value.encode()) < MIN_SECRET_BYTES or not value.isprintable():
        raise ConfigError(
            f"{path} is damaged (not a secret of at least {MIN_SECRET_BYTES} bytes): "
            "restore it, or delete it to have a new one generated (every token is then revoked)"
        )
    return value


def _write_secret(path: Path, value: str, *, replace: bool) -> str:
    """Put ``value`` in ``path`` durably; the secret ``path`` then holds.

    A temporary file is written and fsynced, then linked to ``path`` (which
    never overwrites: of two servers starting at once, the second gets the
    first's secret) or, to replace an empty file or where the file system
    has no hard links, renamed over it; then the directory is fsynced.
    """
    folder = path.parent
    try:
        fd, temp = tempfile.mkstemp(dir=folder, prefix=".secret-")  # mode 0600
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w") as out:
            out.write(value + "\n")
            out.flush()
            os.fsync(out.fileno())
        linked = False
        if not replace:
            try:
                os.link(temp, path)
                linked = True
            except FileExistsError:
                existing = _read_secret(path)
                if not existing:  # empty: another server is writing it right now
                    raise ConfigError(
                        f"cannot write {path}: another process is writing it"
                    ) from None
                return existing
            except OSError as exc:
                if exc.errno not in _NO_HARD_LINKS:
                    raise
        if not linked:
            os.replace(temp, path)
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        Path(temp).unlink(missing_ok=True)
    return value
