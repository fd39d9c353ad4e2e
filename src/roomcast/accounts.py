"""Registered users: sign-up, sign-in, sessions, and turning a token back into a user.

Passwords are hashed with argon2id (``argon2-cffi``'s defaults, RFC 9106's
second recommended set: 64 MiB, 3 passes, 4 lanes, about 0.1 s here) in a
worker thread, at most two at a time, so a burst of logins neither blocks
the event loop nor takes all the memory. A login for a name that does not
exist verifies the password against a dummy hash, so its answer takes as
long as a wrong password's and says the same thing.

Each login opens a *session* (``Sessions`` in :mod:`roomcast.store.base`):
its access tokens name it in ``sid``, and its refresh token renews them.
Every token check reads the session and its user in one store read, so a
token of a session signed out, of a user deleted or banned everywhere, is
refused at once on every node, however long it has left. What ends a
session here returns the ids it revoked: the caller hands them to
:class:`~roomcast.revocation.Revocations`, which closes the connections
that signed in with them.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from .auth import (
    REFRESH_TTL,
    Tokens,
    make_refresh_token,
    new_session_id,
    same_hash,
    split_refresh_token,
)
from .exceptions import AuthError, Banned, InvalidRequest, NameTaken, NotFound
from .model import FOREVER_MS, StoredSession, StoredUser, UserInfo
from .protocol.messages import until_text
from .store.base import Store

__all__ = [
    "MAX_PASSWORD",
    "MIN_PASSWORD",
    "PASSWORD_HASHES",
    "USERNAME",
    "Accounts",
    "Credential",
    "RefreshReused",
    "SignIn",
    "banned_text",
    "password_problem",
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
#: Random bytes of a password an admin reset without giving one (16 characters).
GENERATED_PASSWORD_BYTES: Final = 12
_WRONG: Final = "wrong username or password"
_SIGNED_OUT: Final = "this session was signed out: sign in again"
_REUSED: Final = (
    "this refresh token was used already: the session is signed out in case it was "
    "stolen; sign in again"
)


@dataclass(frozen=True, slots=True)
class Credential:
    """Who a valid access token names: the user, when the token expires, its session."""

    user: UserInfo
    #: Epoch seconds.
    expires_at: int
    session_id: str


@dataclass(frozen=True, slots=True)
class SignIn:
    """What a login or a refresh gives: an access token, a refresh token, their expiries."""

    token: str
    #: When ``token`` expires (epoch seconds).
    expires_at: int
    refresh_token: str
    #: When ``refresh_token`` stops working unless used (epoch seconds).
    refresh_expires_at: int
    user: UserInfo
    session_id: str


class RefreshReused(AuthError):
    """A refresh token that was used already came back: its session is revoked.

    Only two holders of one token can both use it (the client and a thief,
    or a client and its stale copy), and nothing tells which is which, so
    the whole session ends (OAuth 2.0 Security BCP, refresh token rotation).
    """

    def __init__(self, message: str, *, session_id: str, user: str, revoked: list[str]) -> None:
        super().__init__(message)
        self.session_id = session_id
        self.user = user
        #: The session ids revoked now (empty when it was revoked already).
        self.revoked = revoked


T = TypeVar("T")


def username_problem(name: object) -> str | None:
    """Why ``name`` cannot be registered, or None when it can."""
    if not isinstance(name, str) or USERNAME.fullmatch(name) is None:
        return "username must be 3 to 32 letters, digits, _ or - (not starting with -)"
    if name.lower().startswith("guest-"):
        return "names starting with guest- are for guests"
    return None


def password_problem(password: object) -> str | None:
    """Why ``password`` cannot be a password, or None when it can."""
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        return f"password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters"
    return None


def banned_text(user: StoredUser) -> str:
    """What a user banned everywhere is told: until when, and why."""
    until = until_text(user.banned_until_ms)
    text = "you are banned from this server" + (f" until {until}" if until else "")
    return f"{text}: {user.ban_reason}" if user.ban_reason else text


class Accounts:
    """Registration, login, sessions, token checks and admins' actions on users.

    Args:
        store: where users and sessions are kept.
        tokens: issues and verifies access tokens.
        hasher: the argon2 password hasher (tests pass a cheaper one).
        max_parallel: password hashes computed at once.
        clock: wall-clock seconds (session times, bans).
    """

    def __init__(
        self,
        store: Store,
        tokens: Tokens,
        *,
        hasher: PasswordHasher | None = None,
        max_parallel: int = 2,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.tokens = tokens
        self._hasher = hasher or PasswordHasher()
        self._slots = asyncio.Semaphore(max_parallel)
        self._dummy_hash: str | None = None
        self._clock = clock

    async def _in_thread(self, func: Callable[..., T], *args: str) -> T:
        async with self._slots:
            return await asyncio.get_running_loop().run_in_executor(None, func, *args)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def _password_matches(self, stored_hash: str, password: object) -> bool:
        """Whether ``password`` is the one ``stored_hash`` was made of (hashed in a thread)."""
        if not isinstance(password, str) or len(password) > MAX_PASSWORD:
            return False
        try:
            await self._in_thread(self._hasher.verify, stored_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return True

    async def _hash(self, password: object) -> str:
        problem = password_problem(password)
        if problem is not None:
            raise InvalidRequest(problem)
        assert isinstance(password, str)
        return await self._in_thread(self._hasher.hash, password)

    # -- sign-up and sign-in -----------------------------------------------------

    async def register(self, name: object, password: object) -> str:
        """Create a user; return its name.

        Raises:
            InvalidRequest: a bad name or password.
            NameTaken: the name exists, in any case.
        """
        problem = username_problem(name)
        if problem is not None:
            raise InvalidRequest(problem)
        hashed = await self._hash(password)
        assert isinstance(name, str)
        if not await self.store.create_user(name, hashed):
            raise NameTaken("that name is taken")
        logger.info("registered user %s", name)
        return name

    async def login(self, name: object, password: object) -> SignIn:
        """Check a password and open a session: its tokens.

        Raises:
            AuthError: unknown name or wrong password (the same message for both).
            Banned: the password is right, but the user is banned everywhere.
        """
        if not isinstance(name, str) or not isinstance(password, str):
            raise AuthError(_WRONG)
        if len(password) > MAX_PASSWORD or len(name) > 64:
            raise AuthError(_WRONG)
        user = await self.store.get_user(name)
        stored = user.password_hash if user is not None else await self._dummy()
        if not await self._password_matches(stored, password) or user is None:
            raise AuthError(_WRONG)
        if user.banned(self._now_ms()):
            # Said only to whoever knows the password.
            until = None if user.banned_until_ms == FOREVER_MS else user.banned_until_ms
            raise Banned(banned_text(user), until_ms=until, reason=user.ban_reason)
        return await self._open(user)

    async def open_session(self, name: str) -> SignIn:
        """Open a session for registered user ``name`` without a password (tests, tools).

        Raises:
            NotFound: there is no such user.
        """
        user = await self.store.get_user(name)
        if user is None:
            raise NotFound("no such user")
        return await self._open(user)

    async def _open(self, user: StoredUser) -> SignIn:
        session_id = new_session_id()
        refresh, refresh_hash = make_refresh_token(session_id)
        now_ms = self._now_ms()
        expires_ms = now_ms + REFRESH_TTL * 1000
        await self.store.create_session(
            StoredSession(session_id, user.name, refresh_hash, now_ms, expires_ms)
        )
        return self._sign_in(user, session_id, refresh, expires_ms)

    def _sign_in(self, user: StoredUser, session_id: str, refresh: str, expires_ms: int) -> SignIn:
        token, expires = self.tokens.issue(user.name, session_id)
        info = UserInfo(user.name, False, admin=user.admin)
        return SignIn(token, expires, refresh, expires_ms // 1000, info, session_id)

    async def refresh(self, refresh_token: object) -> SignIn:
        """A new access token and refresh token for a refresh token, which stops working.

        Raises:
            RefreshReused: the token was used already (it is the one the last refresh
                replaced); its session is revoked now.
            AuthError: the token is malformed or unknown, its session ended or
                expired, or its user is gone or banned everywhere.
        """
        session_id, presented = split_refresh_token(refresh_token)
        found = await self.store.session_user(session_id)
        if found is None:
            raise AuthError("unknown refresh token: sign in again")
        session, user = found
        now_ms = self._now_ms()
        if user.banned(now_ms):
            raise AuthError(banned_text(user))
        if session.revoked_ms is not None:
            raise AuthError(_SIGNED_OUT)
        if session.expires_ms <= now_ms:
            raise AuthError("the refresh token has expired: sign in again")
        if not same_hash(presented, session.refresh_hash):
            if session.previous_hash is not None and same_hash(presented, session.previous_hash):
                raise await self._reused(session)  # the one before the last: a copy
            # Anything else is no refresh token of ours: it ends nothing (the session id
            # is in every access token, so knowing it must not let anyone sign a user out).
            raise AuthError("unknown refresh token: sign in again")
        refresh, new_hash = make_refresh_token(session_id)
        expires_ms = now_ms + REFRESH_TTL * 1000
        if not await self.store.rotate_session(
            session_id, session.refresh_hash, new_hash, expires_ms, now_ms
        ):
            # Another refresh with the same token won the compare-and-set: used twice.
            raise await self._reused(session)
        return self._sign_in(user, session_id, refresh, expires_ms)

    async def _reused(self, session: StoredSession) -> RefreshReused:
        revoked = await self.store.revoke_sessions(session.name, self._now_ms(), only=session.id)
        logger.warning(
            "a used refresh token of %s came back: session %s revoked", session.name, session.id
        )
        return RefreshReused(_REUSED, session_id=session.id, user=session.name, revoked=revoked)

    async def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = await self._in_thread(self._hasher.hash, secrets.token_urlsafe(16))
        return self._dummy_hash

    async def exists(self, name: str) -> bool:
        """Whether a user named ``name`` (in any letter case) is registered."""
        return await self.store.get_user(name) is not None

    async def user_for_token(self, token: str) -> Credential:
        """The registered user an access token names, its expiry and its session.

        Raises:
            AuthError: the token is invalid or expired; its session was
                signed out or is gone; its user is gone or banned everywhere.
        """
        claims = self.tokens.verify(token)
        found = await self.store.session_user(claims.session_id)
        if found is None:
            raise AuthError("this session has ended: sign in again")
        session, user = found
        if session.name.lower() != claims.user.lower():
            raise AuthError("invalid token")
        if user.banned(self._now_ms()):  # said first: it is why the session ended
            raise AuthError(banned_text(user))
        if session.revoked_ms is not None:
            raise AuthError(_SIGNED_OUT)
        info = UserInfo(user.name, False, admin=user.admin)
        return Credential(info, claims.expires_at, session.id)

    # -- a user's own account ------------------------------------------------------

    async def _stored(self, name: str) -> StoredUser:
        user = await self.store.get_user(name)
        if user is None:
            raise AuthError("this account does not exist any more")
        return user

    async def change_password(self, credential: Credential, old: object, new: object) -> list[str]:
        """Change the signed-in user's password; every other session of theirs ends.

        The session of ``credential`` stays signed in. Returns the ids revoked.

        Raises:
            InvalidRequest: ``new`` is not a valid password.
            AuthError: ``old`` is not the current password.
        """
        problem = password_problem(new)
        if problem is not None:
            raise InvalidRequest(problem)
        user = await self._stored(credential.user.name)
        if not await self._password_matches(user.password_hash, old):
            raise AuthError("wrong password")
        hashed = await self._hash(new)
        revoked = await self.store.set_password(
            user.name, hashed, self._now_ms(), keep=credential.session_id
        )
        logger.info("%s changed their password; %d sessions signed out", user.name, len(revoked))
        return revoked

    async def logout(self, credential: Credential, *, everywhere: bool = False) -> list[str]:
        """End the session of ``credential`` (or every session of its user); the ids revoked."""
        name = credential.user.name
        only = None if everywhere else credential.session_id
        revoked = await self.store.revoke_sessions(name, self._now_ms(), only=only)
        logger.info("%s signed out%s", name, " everywhere" if everywhere else "")
        return revoked

    async def delete_account(self, credential: Credential, password: object) -> list[str]:
        """Erase the signed-in user's account (the password confirms it); the ids revoked.

        Raises:
            AuthError: wrong password.
        """
        user = await self._stored(credential.user.name)
        if not await self._password_matches(user.password_hash, password):
            raise AuthError("wrong password")
        revoked = await self.store.delete_user(user.name, self._now_ms())
        if revoked is None:
            raise AuthError("this account does not exist any more")
        logger.info("%s deleted their account", user.name)
        return revoked

    # -- admins' actions (the caller checked that ``by`` is an admin) -----------------

    async def user(self, name: str) -> StoredUser:
        """The registered user ``name`` (any case).

        Raises:
            NotFound: there is none.
        """
        user = await self.store.get_user(name) if len(name) <= 64 else None
        if user is None:
            raise NotFound(f"no user named {name}")
        return user

    async def ban_user(
        self, name: str, until_ms: int | None, reason: str = "", *, by: str
    ) -> tuple[StoredUser, list[str]]:
        """Ban ``name`` everywhere until ``until_ms`` (None: until lifted); every session
        of theirs ends. The user as registered and the ids revoked.

        Raises:
            NotFound: there is no such user.
            InvalidRequest: ``by`` bans themself.
        """
        user = await self.user(name)
        if user.name.lower() == by.lower():
            raise InvalidRequest("you cannot ban yourself")
        until = FOREVER_MS if until_ms is None else until_ms
        revoked = await self.store.set_user_ban(user.name, until, reason, self._now_ms())
        if revoked is None:
            raise NotFound(f"no user named {name}")
        logger.info(
            "%s banned %s everywhere until %s", by, user.name, until_text(until) or "lifted"
        )
        return user, revoked

    async def unban_user(self, name: str, *, by: str) -> StoredUser:
        """Lift ``name``'s ban everywhere (nothing happens when there is none).

        Raises:
            NotFound: there is no such user.
        """
        user = await self.user(name)
        if await self.store.set_user_ban(user.name, None, "", self._now_ms()) is None:
            raise NotFound(f"no user named {name}")
        logger.info("%s lifted the ban of %s", by, user.name)
        return user

    async def reset_password(
        self, name: str, password: str | None = None, *, by: str
    ) -> tuple[StoredUser, str, list[str]]:
        """Give ``name`` a new password (one is generated when None); every session of
        theirs ends. The user, the password and the ids revoked.

        Raises:
            NotFound: there is no such user.
            InvalidRequest: ``password`` is not a valid password.
        """
        user = await self.user(name)
        if password is None:
            password = secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)
        hashed = await self._hash(password)
        revoked = await self.store.set_password(user.name, hashed, self._now_ms())
        logger.info("%s reset the password of %s", by, user.name)
        return user, password, revoked

    async def set_admin(self, name: str, on: bool, *, by: str) -> tuple[StoredUser, list[str]]:
        """Make ``name`` an admin, or not: a demotion ends every session of theirs, so no
        connection keeps rights it lost. The user and the ids revoked.

        Raises:
            NotFound: there is no such user.
        """
        user = await self.user(name)
        if not await self.store.set_admin(user.name, on):
            raise NotFound(f"no user named {name}")
        revoked: list[str] = []
        if not on and user.admin:
            revoked = await self.store.revoke_sessions(user.name, self._now_ms())
        logger.info("%s %s %s", by, "made an admin:" if on else "demoted", user.name)
        return user, revoked

    async def delete_user(self, name: str, *, by: str) -> tuple[StoredUser, list[str]]:
        """Erase the account ``name`` as :meth:`delete_account` does; the user and the ids
        revoked.

        Raises:
            NotFound: there is no such user.
        """
        user = await self.user(name)
        revoked = await self.store.delete_user(user.name, self._now_ms())
        if revoked is None:
            raise NotFound(f"no user named {name}")
        logger.info("%s deleted the account %s", by, user.name)
        return user, revoked
