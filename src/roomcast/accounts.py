"""Registered users: sign-up, sign-in, and turning a token back into a user.

Passwords are hashed with argon2id (``argon2-cffi``'s defaults, RFC 9106's
second recommended set: 64 MiB, 3 passes, 4 lanes, about 0.1 s here) in a
worker thread, at most two at a time, so a burst of logins neither blocks
the event loop nor takes all the memory. A login for a name that does not
exist verifies the password against a dummy hash, so its answer takes as
long as a wrong password's and says the same thing.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Callable
from typing import Final, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from .auth import Tokens
from .exceptions import AuthError, InvalidRequest, NameTaken
from .model import UserInfo
from .store.base import Store

__all__ = [
    "MAX_PASSWORD",
    "MIN_PASSWORD",
    "PASSWORD_HASHES",
    "USERNAME",
    "Accounts",
    "username_problem",
]

#: The argon2id hashers ``--password-hash`` names (config.ServerConfig.password_hash).
PASSWORD_HASHES: Final[dict[str, Callable[[], PasswordHasher]]] = {
    # argon2-cffi's: RFC 9106 low-memory (t=3, m=64 MiB, p=4)
    "default": PasswordHasher,
    # OWASP's minimum for argon2id (t=2, m=19 MiB, p=1)
    "small": lambda: PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1),
}

logger = logging.getLogger("roomcast.accounts")

#: Registered names: 3 to 32 letters, digits, ``_`` or ``-``, not starting with ``-``.
USERNAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{2,31}")
MIN_PASSWORD: Final = 8
#: Longer passwords are refused: hashing cost must not be the attacker's to choose.
MAX_PASSWORD: Final = 256
_WRONG: Final = "wrong username or password"

T = TypeVar("T")


def username_problem(name: object) -> str | None:
    """Why ``name`` cannot be registered, or None when it can."""
    if not isinstance(name, str) or USERNAME.fullmatch(name) is None:
        return "username must be 3 to 32 letters, digits, _ or - (not starting with -)"
    if name.lower().startswith("guest-"):
        return "names starting with guest- are for guests"
    return None


class Accounts:
    """Registration, login and token checks on top of a store.

    Args:
        store: where users are kept.
        tokens: issues and verifies tokens.
        hasher: the argon2 password hasher (tests pass a cheaper one).
        max_parallel: password hashes computed at once.
    """

    def __init__(
        self,
        store: Store,
        tokens: Tokens,
        *,
        hasher: PasswordHasher | None = None,
        max_parallel: int = 2,
    ) -> None:
        self.store = store
        self.tokens = tokens
        self._hasher = hasher or PasswordHasher()
        self._slots = asyncio.Semaphore(max_parallel)
        self._dummy_hash: str | None = None

    async def _in_thread(self, func: Callable[..., T], *args: str) -> T:
        async with self._slots:
            return await asyncio.get_running_loop().run_in_executor(None, func, *args)

    async def register(self, name: object, password: object) -> str:
        """Create a user; return its name.

        Raises:
            InvalidRequest: a bad name or password.
            NameTaken: the name exists, in any case.
        """
        problem = username_problem(name)
        if problem is not None:
            raise InvalidRequest(problem)
        if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
            raise InvalidRequest(f"password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters")
        assert isinstance(name, str)
        hashed = await self._in_thread(self._hasher.hash, password)
        if not await self.store.create_user(name, hashed):
            raise NameTaken("that name is taken")
        logger.info("registered user %s", name)
        return name

    async def login(self, name: object, password: object) -> tuple[str, int, str]:
        """Check a password; return a token, its expiry (epoch seconds) and the user's name.

        Raises:
            AuthError: unknown name or wrong password (the same message for both).
        """
        if not isinstance(name, str) or not isinstance(password, str):
            raise AuthError(_WRONG)
        if len(password) > MAX_PASSWORD or len(name) > 64:
            raise AuthError(_WRONG)
        user = await self.store.get_user(name)
        stored = user.password_hash if user is not None else await self._dummy()
        try:
            await self._in_thread(self._hasher.verify, stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            raise AuthError(_WRONG) from None
        if user is None:
            raise AuthError(_WRONG)
        token, expires = self.tokens.issue(user.name)
        return token, expires, user.name

    async def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = await self._in_thread(self._hasher.hash, secrets.token_urlsafe(16))
        return self._dummy_hash

    async def exists(self, name: str) -> bool:
        """Whether a user named ``name`` (in any letter case) is registered."""
        return await self.store.get_user(name) is not None

    async def user_for_token(self, token: str) -> tuple[UserInfo, int]:
        """The registered user a token names, and when the token expires.

        Raises:
            AuthError: the token is invalid or expired, or its user does not exist.
        """
        claims = self.tokens.verify(token)
        user = await self.store.get_user(claims.user)
        if user is None:
            raise AuthError("the token's user does not exist")
        return UserInfo(user.name, False), claims.expires_at
