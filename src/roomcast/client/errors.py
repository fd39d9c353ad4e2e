"""The client's errors, in one module that both the connection and the HTTP calls raise.

They live apart from :mod:`roomcast.client.core` so that the mixins the
:class:`~roomcast.client.Client` is made of (sign-in, moderation) can raise
them without importing the connection code. Pure: no I/O.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .events import parse_time

__all__ = [
    "AuthRefused",
    "ClientClosed",
    "ClientError",
    "QueueFull",
    "SendError",
    "SignedOut",
    "send_error",
]


class ClientError(Exception):
    """Base of the client's errors."""


class SendError(ClientError):
    """The server refused a frame (``error``) or an HTTP request (an error status).

    ``code`` and ``message`` are the server's. For a refusal because of a
    ban or a mute (``banned``, ``muted``), ``until`` is when it ends (None:
    no end) and ``reason`` why (a ban's, when the moderator gave one). For
    ``rate_limited`` over HTTP, ``retry_after`` is the seconds to wait (over
    the WebSocket the client waits and resends by itself). ``status`` is
    the HTTP status of a refused request (None on the WebSocket).
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        until: datetime | None = None,
        reason: str | None = None,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.until = until
        self.reason = reason
        self.retry_after = retry_after
        self.status = status


class QueueFull(ClientError):
    """More frames wait for the server than ``max_queue``; the new one is refused."""


class AuthRefused(ClientError):
    """The server refused who this client says it is; the client has stopped."""


class SignedOut(AuthRefused):
    """The server ended this user's session: the client has stopped and will not reconnect.

    ``reason`` is the server's (the WebSocket close reason): ``signed out``
    (a logout, a password change elsewhere, an admin's reset), ``banned``,
    ``account deleted``. Only a new sign-in (with the password) starts again.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"the server ended this session: {reason}")
        self.reason = reason


class ClientClosed(ClientError):
    """The client is closed (by the application, or for good by the server)."""


def send_error(
    payload: dict[str, Any], *, status: int | None = None, retry_after: float | None = None
) -> SendError:
    """The :class:`SendError` of an ``error`` payload (the frame's, or an HTTP body's ``error``).

    ``retry_after``: seconds, when the caller read them elsewhere (an HTTP
    ``Retry-After`` header); else the payload's (milliseconds, as the wire has them).
    """
    reason = payload.get("reason")
    wait = payload.get("retry_after")
    if retry_after is None and isinstance(wait, int | float) and not isinstance(wait, bool):
        retry_after = wait / 1000
    return SendError(
        str(payload.get("code", "") or (status or "")),
        str(payload.get("message", "")),
        until=parse_time(payload.get("until")),
        reason=reason if isinstance(reason, str) and reason else None,
        retry_after=retry_after,
        status=status,
    )
