"""Tokens: signed JWTs that name a user and a sign-in, and the refresh credentials.

An access token is an HS256 JSON Web Token (PyJWT) signed with the server's
secret, with issuer and audience ``roomcast``, the user's name in ``sub``,
the sign-in it belongs to in ``sid`` (see ``Sessions`` in
:mod:`roomcast.store.base`) and an expiry, :data:`ACCESS_TTL` (15 minutes)
by default. :meth:`Tokens.verify` accepts only that: another algorithm
(``alg: none`` included), a bad signature, another issuer or audience, a
missing claim (``sid`` too: such a token predates sessions, and its user
must sign in again) or an expired token raise
:class:`~roomcast.exceptions.AuthError`.

An access token is short-lived so that a stolen one is good only for
minutes even where a revocation check were missed; the *refresh token*
keeps a client signed in. It is opaque, ``"<sid>.<secret>"`` with 32 random
bytes of secret, and the store keeps only the SHA-256 of the secret, so a
copy of the database signs nobody in. It works once, and for
:data:`REFRESH_TTL` (30 days) from the last refresh.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import jwt

from .exceptions import AuthError

__all__ = [
    "ACCESS_TTL",
    "ALGORITHM",
    "AUDIENCE",
    "DEFAULT_TTL",
    "ISSUER",
    "REFRESH_TTL",
    "SESSION_ID",
    "Claims",
    "Tokens",
    "bearer_token",
    "hash_secret",
    "make_refresh_token",
    "new_session_id",
    "same_hash",
    "split_refresh_token",
]

ALGORITHM: Final = "HS256"
ISSUER: Final = "roomcast"
AUDIENCE: Final = "roomcast"
#: Seconds an access token is valid: short, because a stolen one works
#: until then; a client refreshes it with its refresh token.
ACCESS_TTL: Final = 900
#: Seconds a new token is valid by default (:data:`ACCESS_TTL`).
DEFAULT_TTL: Final = ACCESS_TTL
#: Seconds a refresh token works, counted from the last refresh.
REFRESH_TTL: Final = 30 * 24 * 3600
#: What a session id looks like: 16 random bytes, URL-safe base64 (22 characters).
SESSION_ID: Final = re.compile(r"[A-Za-z0-9_-]{22}")
#: Random bytes in a refresh token's secret.
REFRESH_SECRET_BYTES: Final = 32
#: What a refresh token's secret looks like (32 bytes, URL-safe base64: 43 characters).
_REFRESH_SECRET: Final = re.compile(r"[A-Za-z0-9_-]{43}")
_SIGN_IN_AGAIN: Final = "the token belongs to no session: sign in again"


@dataclass(frozen=True, slots=True)
class Claims:
    """What a valid token says: who, until when (epoch seconds), and in which sign-in."""

    user: str
    expires_at: int
    session_id: str


class Tokens:
    """Issues and checks the server's access tokens.

    Args:
        secret: the signing secret (``--secret``, or the generated one).
        ttl: seconds a new token is valid.
        clock: wall-clock seconds.
    """

    def __init__(
        self, secret: str, *, ttl: int = DEFAULT_TTL, clock: Callable[[], float] = time.time
    ) -> None:
        if not secret:
            raise ValueError("a signing secret is required")
        self._secret = secret
        self.ttl = ttl
        self._clock = clock

    def issue(self, user: str, session_id: str) -> tuple[str, int]:
        """A new token for ``user`` in sign-in ``session_id``, and its expiry (epoch seconds)."""
        now = int(self._clock())
        expires = now + self.ttl
        claims = {
            "sub": user,
            "sid": session_id,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "exp": expires,
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM), expires

    def verify(self, token: str) -> Claims:
        """The claims of a valid token.

        Raises:
            AuthError: the token is malformed, forged, expired, not ours, or
                names no session.
        """
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                # Expiry is checked below against our clock.
                options={
                    "require": ["exp", "iat", "sub", "iss", "aud"],
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidTokenError:
            raise AuthError("invalid token") from None
        user, expires = claims.get("sub"), claims.get("exp")
        if not isinstance(user, str) or not user or not isinstance(expires, int):
            raise AuthError("invalid token")
        if expires <= self._clock():
            raise AuthError("the token has expired")
        session_id = claims.get("sid")
        if not isinstance(session_id, str) or SESSION_ID.fullmatch(session_id) is None:
            raise AuthError(_SIGN_IN_AGAIN)
        return Claims(user, expires, session_id)


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, or None."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


# -- sessions and refresh tokens ------------------------------------------------------


def new_session_id() -> str:
    """A new session id: 16 random bytes (22 URL-safe characters)."""
    return secrets.token_urlsafe(16)


def hash_secret(secret: str) -> str:
    """What the store keeps of a refresh secret: its SHA-256, in hex.

    A plain hash is enough (no salt, no slow hash): the secret is 256
    random bits, not a password anyone could guess.
    """
    return hashlib.sha256(secret.encode()).hexdigest()


def make_refresh_token(session_id: str) -> tuple[str, str]:
    """A new refresh token for ``session_id``, and the hash the store keeps of it."""
    secret = secrets.token_urlsafe(REFRESH_SECRET_BYTES)
    return f"{session_id}.{secret}", hash_secret(secret)


def split_refresh_token(token: object) -> tuple[str, str]:
    """The session id and the secret's hash of a refresh token.

    Raises:
        AuthError: it is not shaped like one this server gives.
    """
    if not isinstance(token, str):
        raise AuthError("invalid refresh token")
    session_id, dot, secret = token.partition(".")
    if (
        not dot
        or SESSION_ID.fullmatch(session_id) is None
        or _REFRESH_SECRET.fullmatch(secret) is None
    ):
        raise AuthError("invalid refresh token")
    return session_id, hash_secret(secret)


def same_hash(presented: str, stored: str) -> bool:
    """Whether two secret hashes are equal, compared in constant time."""
    return hmac.compare_digest(presented.encode(), stored.encode())
