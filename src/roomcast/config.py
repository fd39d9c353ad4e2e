"""Settings, as small frozen value objects with concrete defaults.

:class:`Limits` holds every limit of PROTOCOL section 4 that the server
enforces; :class:`ServerConfig` is what ``roomcast serve`` runs with. The CLI
fills them from flags and ``ROOMCAST_*`` environment variables; library
users build them directly.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .exceptions import ConfigError

if TYPE_CHECKING:
    import ssl

__all__ = ["DEFAULT_LIMITS", "Limits", "ServerConfig", "load_secret", "make_ssl_context"]


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


DEFAULT_LIMITS = Limits()


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
    #: Seconds between heartbeat pings; 0 turns the heartbeat off.
    heartbeat: float = 30.0
    #: Seconds to wait for a client's close frame before dropping it.
    close_timeout: float = 5.0
    limits: Limits = field(default_factory=Limits)

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


def load_secret(data_dir: Path, given: str | None) -> str:
    """The signing secret: ``given``, or one kept in ``data_dir/secret`` (mode 0600).

    A generated secret is written once and read back on every later start,
    so tokens survive a restart.
    """
    if given:
        return given
    path = data_dir / "secret"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    value = secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value
