"""Tokens: signed JWTs that name a user.

A token is an HS256 JSON Web Token (PyJWT) signed with the server's secret,
with issuer and audience ``roomcast``, the user's name in ``sub``, and an
expiry (24 h by default). :meth:`Tokens.verify` accepts only that: another
algorithm (``alg: none`` included), a bad signature, another issuer or
audience, a missing claim or an expired token raise
:class:`~roomcast.exceptions.AuthError`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import jwt

from .exceptions import AuthError

__all__ = ["ALGORITHM", "AUDIENCE", "ISSUER", "Claims", "Tokens", "bearer_token"]

ALGORITHM: Final = "HS256"
ISSUER: Final = "roomcast"
AUDIENCE: Final = "roomcast"
#: Seconds a token is valid by default.
DEFAULT_TTL: Final = 24 * 3600


@dataclass(frozen=True, slots=True)
class Claims:
    """What a valid token says: who, and until when (epoch seconds)."""

    user: str
    expires_at: int


class Tokens:
    """Issues and checks the server's tokens.

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

    def issue(self, user: str) -> tuple[str, int]:
        """A new token for ``user`` and its expiry (epoch seconds)."""
        now = int(self._clock())
        expires = now + self.ttl
        claims = {"sub": user, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": expires}
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM), expires

    def verify(self, token: str) -> Claims:
        """The claims of a valid token.

        Raises:
            AuthError: the token is malformed, forged, expired or not ours.
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
        return Claims(user, expires)


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, or None."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
