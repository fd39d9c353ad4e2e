"""Close codes and error codes: the vocabulary both ends of a connection share.

Close codes end a connection (RFC 6455 section 7.4 and the IANA registry);
error codes travel inside an ``error`` frame and leave the connection open.
"""

from __future__ import annotations

import enum

__all__ = ["CloseCode", "ErrorCode"]


class CloseCode(enum.IntEnum):
    """WebSocket close codes roomcast sends."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013


class ErrorCode(enum.StrEnum):
    """Codes carried by ``error`` frames; the connection stays open."""

    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    FORBIDDEN = "forbidden"
    #: Banned from the room (or the server): ``until`` (ISO 8601, or null) and ``reason``.
    BANNED = "banned"
    #: Muted in the room: ``until`` (ISO 8601, or null).
    MUTED = "muted"
    NOT_MEMBER = "not_member"
    #: No such message, or not in a conversation the user may read.
    NOT_FOUND = "not_found"
    UNKNOWN_USER = "unknown_user"
    AUTH_FAILED = "auth_failed"
    TOKEN_EXPIRED = "token_expired"
    RATE_LIMITED = "rate_limited"
    TOO_LARGE = "too_large"
    #: A file would pass the sender's upload quota or the server's files quota.
    QUOTA_EXCEEDED = "quota_exceeded"
    INTERNAL = "internal"
