"""roomcast's exceptions, one tree.

::

    RoomcastError
    ├── ProtocolError        a frame from a peer is malformed or not allowed
    │                        (sans-I/O; carries the error code and the frame id)
    ├── DomainError          the rules refuse a request; raised by the core for
    │   │                    every edge, which maps each kind to its own error
    │   │                    form in one place (``ErrorReply.refused`` on the
    │   │                    WebSocket, ``api.refused`` over HTTP)
    │   ├── Forbidden        the user may not do that
    │   │   ├── Banned       banned from the room or server (``until_ms``)
    │   │   └── Muted        muted in the room (``until_ms``)
    │   ├── NotFound         no such room or file
    │   │   └── NoSuchMessage  no such message, or not in a conversation the
    │   │                      user may read (``not_found`` on the WebSocket)
    │   ├── UnknownUser      no registered user has that name
    │   ├── NameTaken        a registered user has that name already
    │   ├── RoomExists       a room with that name exists already
    │   ├── InvalidRequest   a value the core checks is unusable (a name, a
    │   │                    password, an id reused for another message)
    │   ├── TooLarge         past a size limit
    │   ├── QuotaExceeded    past the sender's or the server's file quota
    │   └── TooFrequent      asked too often: again after ``retry_after`` s
    ├── AuthError            a token is missing, forged, expired or not for us
    ├── ConfigError          the server's configuration is unusable (the CLI
    │                        prints it as one line and exits with status 2)
    └── BackendError         a store or broker failed; raised at the backend
        ├── StoreError       boundary from the driver's own exception, which is
        │   │                kept as ``__cause__``
        │   └── StoreBusy    the store's write queue is full: nothing was
        │                    stored, send it again after ``retry_after`` s
        └── BrokerError

Nothing above ``store/`` and ``broker/`` sees a driver's exception types.
"""

from __future__ import annotations

from typing import Any

from .protocol.codes import ErrorCode

__all__ = [
    "AuthError",
    "Banned",
    "BackendError",
    "BrokerError",
    "ConfigError",
    "DomainError",
    "Forbidden",
    "InvalidRequest",
    "Muted",
    "NameTaken",
    "NoSuchMessage",
    "NotFound",
    "ProtocolError",
    "QuotaExceeded",
    "RoomExists",
    "RoomcastError",
    "StoreBusy",
    "StoreError",
    "TooFrequent",
    "TooLarge",
    "UnknownUser",
]


class RoomcastError(Exception):
    """Base class of every exception roomcast raises on purpose."""


class ProtocolError(RoomcastError):
    """A peer sent a frame that roomcast refuses.

    The server answers it with an ``error`` frame carrying :attr:`code`,
    :attr:`message` and, when the frame had one, its :attr:`frame_id`; the
    connection stays open.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        frame_id: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.frame_id = frame_id
        self.extra = extra or {}

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class DomainError(RoomcastError):
    """The rules refuse a request; ``str()`` is the reason to show the user.

    The core raises these whichever edge the request came through; it
    never chooses an error frame or an HTTP status.
    """


class Forbidden(DomainError):
    """The user may not do that (a private room, someone else's room or file)."""


class NotFound(DomainError):
    """There is no such room or file."""


class NoSuchMessage(NotFound):
    """No such message, or not one the user may read: the two are not told apart."""


class UnknownUser(DomainError):
    """No registered user has that name."""


class NameTaken(DomainError):
    """A registered user has that name already."""


class RoomExists(DomainError):
    """A room with that name exists already."""


class InvalidRequest(DomainError):
    """A value the core checks is unusable: a user name, a password, a reused id."""


class TooLarge(DomainError):
    """Past a size limit."""


class QuotaExceeded(DomainError):
    """Past the sender's daily upload quota or the server's files quota."""


class AuthError(RoomcastError):
    """A credential was refused; ``str()`` says why, without echoing it."""


class ConfigError(RoomcastError):
    """The configuration cannot be used; ``str()`` is the one line to show."""


class BackendError(RoomcastError):
    """A store or broker operation failed."""


class TooFrequent(DomainError):
    """The user asks for this too often; they may ask again after :attr:`retry_after` s."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Banned(Forbidden):
    """The user is banned from the room (or the server) until :attr:`until_ms`.

    ``until_ms`` is None for a ban with no end.
    """

    def __init__(self, message: str, *, until_ms: int | None, reason: str = "") -> None:
        super().__init__(message)
        self.until_ms = until_ms
        self.reason = reason


class Muted(Forbidden):
    """The user may read the room but not send or react in it until :attr:`until_ms`."""

    def __init__(self, message: str, *, until_ms: int | None) -> None:
        super().__init__(message)
        self.until_ms = until_ms


class StoreError(BackendError):
    """The message store failed."""


class StoreBusy(StoreError):
    """The store has more messages queued than it may hold: this one was refused.

    Nothing was stored; the sender may send it again after
    :attr:`retry_after` seconds (the node answers ``rate_limited``).
    """

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BrokerError(BackendError):
    """The broker failed."""
