"""Signing in, staying signed in, and the account's own routes: a part of the ``Client``.

A client given a password logs in once (``POST /api/login``) and keeps the
refresh token the server returns with the access token. Access tokens are
short (the server's are good for 15 minutes), so the client renews one when
the server says it expired (``token_expired`` on the connection, then
``auth`` with the new one), when a handshake is refused with 401, and
before an HTTP call made with one about to expire: it refreshes it (``POST
/api/refresh``, which rotates the refresh token), and only when the refresh
is refused does it log in again with the password, if it has one. A client
made from a refresh token alone signs in with it the same way.

Renewals are made one at a time: a refresh token works once, and the
server takes a used one presented again as stolen and ends the whole
session, so two renewals racing must not both spend it.

The HTTP calls here run :mod:`urllib` in a worker thread, like the client's
file downloads: the client needs no HTTP library of its own.
"""

from __future__ import annotations

import asyncio
import base64
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import orjson

from .errors import AuthRefused, SendError, send_error
from .events import SessionTokens, parse_time

if TYPE_CHECKING:
    from .events import Event, Reply
    from .eventstream import Connection

__all__ = [
    "HTTP_TIMEOUT",
    "RENEW_MARGIN",
    "AccountInfo",
    "SignInMixin",
    "account_info",
    "http_call",
    "http_error",
    "jwt_expiry",
    "quoted",
]

#: Seconds an HTTP call may take.
HTTP_TIMEOUT: Final = 30.0
#: An access token with less than this many seconds left is renewed before
#: an HTTP call (and before a handshake) rather than sent to be refused.
RENEW_MARGIN: Final = 30.0


@dataclass(frozen=True, slots=True)
class AccountInfo:
    """A registered user as ``GET /api/me`` (or ``GET /api/admin/users/{user}``) shows it.

    ``banned``: banned from the whole server (admins see it), until
    ``banned_until`` (None: until lifted) for ``ban_reason``.
    """

    name: str
    admin: bool
    created_at: datetime | None = None
    banned: bool = False
    banned_until: datetime | None = None
    ban_reason: str | None = None


def account_info(item: dict[str, Any]) -> AccountInfo:
    """The :class:`AccountInfo` of a ``user`` object.

    Raises KeyError or TypeError for one without its name.
    """
    name = item["name"]
    if not isinstance(name, str):
        raise TypeError("name is a string")
    reason = item.get("ban_reason")
    return AccountInfo(
        name,
        item.get("admin") is True,
        parse_time(item.get("created_at")),
        "banned_until" in item,
        parse_time(item.get("banned_until")),
        reason if isinstance(reason, str) and reason else None,
    )


def http_call(
    method: str, url: str, body: bytes | None, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    """One blocking HTTP request: the status, the headers (names in lower case), the body.

    An error status is an answer like any other; a server that cannot be
    reached raises :class:`OSError` (:class:`urllib.error.URLError`).
    """
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            found = {k.lower(): v for k, v in response.headers.items()}
            return int(response.status), found, bytes(response.read())
    except urllib.error.HTTPError as exc:
        found = {k.lower(): v for k, v in exc.headers.items()}
        return int(exc.code), found, bytes(exc.read())


def http_error(status: int, headers: dict[str, str], body: bytes) -> SendError:
    """The :class:`SendError` of an HTTP error answer (pure).

    The server's JSON ``{"error": {"code", "message", ...}}`` gives the code,
    message, ``until`` and ``reason``; a ``Retry-After`` header the seconds
    to wait when the body does not say it more precisely. Anything else (a
    proxy's page) is the status as the code and the start of the body.
    """
    retry_after: float | None = None
    raw = headers.get("retry-after", "")
    try:
        retry_after = float(raw) if raw else None
    except ValueError:
        retry_after = None
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
    error = parsed.get("error") if type(parsed) is dict else None
    if type(error) is dict:
        # The body's retry_after (milliseconds) is finer than the header's whole seconds.
        header_wait = None if "retry_after" in error else retry_after
        return send_error(error, status=status, retry_after=header_wait)
    text = body.decode("utf-8", "replace")[:200]
    return SendError(str(status), text, retry_after=retry_after, status=status)


def jwt_expiry(token: str) -> float | None:
    """When the JWT ``token`` expires (epoch seconds, its ``exp``), read without checking it.

    Only to renew it in time: the server checks tokens, the client never
    needs to. None for a token that is not a JWT or has no expiry.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return None
    exp = claims.get("exp") if type(claims) is dict else None
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    return float(exp)


class SignInMixin:
    """The :class:`~roomcast.client.Client`'s sign-in: tokens, renewal, account routes.

    Holds no state of its own: the attributes below are the client's.
    """

    url: str
    #: The access token (a JWT) sent on the handshake and as the HTTP bearer.
    token: str | None
    #: The refresh token that renews it (None: the client renews by password, or not at all).
    refresh_token: str | None
    username: str | None
    user: str | None
    #: Whether the user signed in is a server-wide admin (as the server last said).
    admin: bool
    _password: str | None
    _ws: Connection | None
    _renew_lock: asyncio.Lock | None
    #: Why the client is ending on purpose (a logout, a deleted account): a
    #: close by the server meanwhile is then no surprise.
    _leaving: str | None

    if TYPE_CHECKING:

        def _emit(self, event: Event) -> None: ...

        def _http_url(self, path: str) -> str: ...

        async def _close(self, reason: str) -> None: ...

        async def request(
            self, kind: str, payload: dict[str, Any], *, timeout: float | None = 30.0
        ) -> Reply: ...

    # -- tokens ------------------------------------------------------------------

    def _can_renew(self) -> bool:
        """Whether the client can get a new access token by itself."""
        return self.refresh_token is not None or (
            self.username is not None and self._password is not None
        )

    def _token_stale(self, margin: float = RENEW_MARGIN) -> bool:
        """No token, or one that expires within ``margin`` seconds."""
        if self.token is None:
            return True
        expires = jwt_expiry(self.token)
        return expires is not None and expires - margin <= time.time()

    async def _post_json(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"}
        url = self._http_url(path)
        status, _, answer = await asyncio.to_thread(
            http_call, "POST", url, orjson.dumps(body), headers
        )
        return status, answer

    async def _login(self) -> None:
        """Log in with the password; keep the tokens.

        Raises:
            AuthRefused: the server refused the name or password.
            OSError: the server cannot be reached, or answered otherwise (retried).
        """
        assert self.username is not None and self._password is not None
        status, answer = await self._post_json(
            "/api/login", {"username": self.username, "password": self._password}
        )
        if status == 200:
            self._take_tokens(answer)
            return
        if status in (400, 401, 403):
            raise AuthRefused(f"login refused ({status})")
        raise OSError(f"login answered {status}")

    async def _refresh(self) -> bool:
        """Trade the refresh token for new tokens; False when the server refused it.

        A refused refresh token (used, revoked, expired) never works again:
        it is dropped.
        """
        assert self.refresh_token is not None
        status, answer = await self._post_json(
            "/api/refresh", {"refresh_token": self.refresh_token}
        )
        if status == 200:
            self._take_tokens(answer)
            return True
        if status in (400, 401, 403):
            self.refresh_token = None
            return False
        raise OSError(f"refresh answered {status}")

    def _take_tokens(self, answer: bytes) -> None:
        try:
            body = orjson.loads(answer)
            token = body["token"]
            user = body.get("user") or {}
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise OSError("the server's sign-in answer cannot be read") from None
        if not isinstance(token, str) or type(user) is not dict:
            raise OSError("the server's sign-in answer cannot be read")
        self.token = token
        refresh = body.get("refresh_token")
        if isinstance(refresh, str) and refresh:
            self.refresh_token = refresh
        self.admin = user.get("admin") is True
        self._emit(
            SessionTokens(
                str(user.get("name") or self.username or ""),
                self.admin,
                token,
                self.refresh_token,
                parse_time(body.get("expires_at")),
                parse_time(body.get("refresh_expires_at")),
            )
        )

    async def _renew(self, stale: str | None) -> None:
        """A new access token in place of ``stale`` (the one found expired or refused).

        One renewal at a time; a caller that waited for another's finds the
        token new already and spends nothing. Refresh first, the password
        when the refresh is refused.

        Raises:
            AuthRefused: neither works (the session ended and there is no
                password, or the password is refused).
            OSError: the server cannot be reached.
        """
        if self._renew_lock is None:
            self._renew_lock = asyncio.Lock()
        async with self._renew_lock:
            if self.token is not None and self.token != stale:
                return  # renewed meanwhile
            if self.refresh_token is not None and await self._refresh():
                return
            if self.username is not None and self._password is not None:
                await self._login()
                return
            raise AuthRefused("the session has ended: sign in again")

    async def _bearer(self) -> str | None:
        """The access token for an HTTP call, renewed first when it is about to expire."""
        if self._can_renew() and self._token_stale():
            await self._renew(self.token)
        return self.token

    def _token_expired(self) -> None:
        """The server says the connection's token expired: renew it and send ``auth``."""
        if not self._can_renew() or self._ws is None:
            return  # the server closes the connection (1008) after its grace period
        stale = self.token

        async def renew() -> None:
            try:
                await self._renew(stale)
            except AuthRefused as exc:
                await self._close(str(exc))
                return
            assert self.token is not None
            await self.request("auth", {"token": self.token})

        task = asyncio.ensure_future(renew())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    # -- HTTP ----------------------------------------------------------------------

    async def _api(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        retry: bool = True,
    ) -> Any:
        """One call of the HTTP API with this user's token; its JSON answer (None: no body).

        A 401 is renewed and tried once more (unless ``retry`` is False: on
        routes where 401 means a wrong password).

        Raises:
            SendError: the server refused it (its code, message, ``until``...).
            AuthRefused: the token could not be renewed.
            OSError: the server cannot be reached.
        """
        token = await self._bearer()
        data = None if body is None else orjson.dumps(body)
        for attempt in range(2):
            headers = {"Accept": "application/json"}
            if data is not None:
                headers["Content-Type"] = "application/json"
            if token is not None:
                headers["Authorization"] = f"Bearer {token}"
            url = self._http_url(path)
            status, found, answer = await asyncio.to_thread(http_call, method, url, data, headers)
            if status == 401 and retry and attempt == 0 and token is not None:
                if self._can_renew():
                    await self._renew(token)
                    token = self.token
                    continue
            break
        if status >= 400:
            raise http_error(status, found, answer)
        if not answer:
            return None
        try:
            return orjson.loads(answer)
        except orjson.JSONDecodeError:
            raise SendError(str(status), "the answer is not JSON", status=status) from None

    # -- the account -------------------------------------------------------------

    async def me(self) -> AccountInfo:
        """This user's account (``GET /api/me``): name, admin, when it was made."""
        body = await self._api("GET", "/api/me")
        return account_info(body["user"])

    async def change_password(self, old: str, new: str) -> int:
        """Change this user's password; how many of their other sessions were ended.

        Every other device is signed out (their connections closed with
        1008 "signed out"); this client stays signed in, and logs in with
        ``new`` from now on if it was given a password.

        Raises:
            SendError: ``auth_failed`` (401) for a wrong ``old``,
                ``invalid_message`` (400) for a ``new`` the server refuses.
        """
        body = await self._api("POST", "/api/password", {"old": old, "new": new}, retry=False)
        if self._password is not None:
            self._password = new
        revoked = body.get("revoked") if type(body) is dict else None
        return revoked if type(revoked) is int else 0

    async def logout(self, *, everywhere: bool = False) -> None:
        """Sign out (``everywhere``: on every device too) and close this client.

        The tokens are forgotten; the server closes the connections of the
        sessions ended (1008 "signed out"), this one included.
        """
        await self._end_session(
            "signed out everywhere" if everywhere else "signed out",
            "POST",
            "/api/logout",
            {"everywhere": everywhere},
        )

    async def delete_account(self, password: str) -> None:
        """Delete this user's account for good, then close this client.

        Their messages stay as deleted tombstones (no text, no file); their
        sessions, memberships and password are gone.

        Raises:
            SendError: ``auth_failed`` (401) for a wrong ``password``.
        """
        await self._end_session(
            "account deleted", "DELETE", "/api/me", {"password": password}, retry=False
        )

    async def _end_session(
        self, why: str, method: str, path: str, body: dict[str, Any], *, retry: bool = True
    ) -> None:
        self._leaving = why
        try:
            await self._api(method, path, body, retry=retry)
        except BaseException:
            self._leaving = None
            raise
        self.token = self.refresh_token = self._password = None
        await self._close(why)


def quoted(name: str) -> str:
    """``name`` as one path segment of a URL."""
    return urllib.parse.quote(name, safe="")
