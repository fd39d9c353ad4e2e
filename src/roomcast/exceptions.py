"""roomcast's exceptions, one tree.

::

    RoomcastError
    ├── ProtocolError        a frame from a peer is malformed or not allowed
    │                        (sans-I/O; carries the error code and the frame id)
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
    "BackendError",
    "BrokerError",
    "ConfigError",
    "ProtocolError",
    "RoomcastError",
    "StoreBusy",
    "StoreError",
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


class AuthError(RoomcastError):
    """A credential was refused; ``str()`` says why, without echoing it."""


class ConfigError(RoomcastError):
    """The configuration cannot be used; ``str()`` is the one line to show."""


class BackendError(RoomcastError):
    """A store or broker operation failed."""


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
