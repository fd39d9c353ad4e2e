"""The HTTP API under ``/api``: accounts, rooms, history, publishing, direct messages.

Handlers parse and check the request, call the node, and answer JSON. Every
error leaves as ``{"error": {"code", "message"}}`` through :class:`HTTPError`
(the server's middleware renders it). Authenticated routes take
``Authorization: Bearer TOKEN``; a token is checked the same way as over
WebSocket (signature, expiry, and that its session is live and its user
exists and is not banned everywhere).
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
from aiohttp import web

from .accounts import (
    MAX_PASSWORD,
    MIN_PASSWORD,
    Accounts,
    Credential,
    RefreshReused,
    SignIn,
    username_problem,
)
from .auth import bearer_token
from .exceptions import (
    AuthError,
    BackendError,
    Banned,
    DomainError,
    Forbidden,
    InvalidRequest,
    Muted,
    NameTaken,
    NotFound,
    ProtocolError,
    QuotaExceeded,
    RoomExists,
    StoreBusy,
    TooFrequent,
    TooLarge,
    UnknownUser,
)
from .frontdoor import TrustedProxies
from .model import RoomAccess, StoredUser, UserInfo
from .node import Node
from .protocol.messages import (
    DEFAULT_HISTORY_LIMIT,
    MAX_EMOJI_LENGTH,
    MAX_HISTORY_LIMIT,
    MAX_ID_LENGTH,
    MAX_SEQ,
    ErrorReply,
    format_timestamp,
    parse_search,
    valid_name,
    valid_room,
)
from .quota.memory import (  # the login throttle lived here: its names still import from here
    ACCOUNT_FIRST_DELAY as ACCOUNT_FIRST_DELAY,
    ACCOUNT_FORGET as ACCOUNT_FORGET,
    ACCOUNT_FREE_FAILURES as ACCOUNT_FREE_FAILURES,
    ACCOUNT_MAX_DELAY as ACCOUNT_MAX_DELAY,
    ADDRESS_LOGIN_BURST as ADDRESS_LOGIN_BURST,
    ADDRESS_LOGIN_RATE as ADDRESS_LOGIN_RATE,
    AddressBuckets,
    LoginThrottle as LoginThrottle,
    address_key as address_key,
)
from .ratelimit import KeyedBuckets
from .revocation import ACCOUNT_DELETED
from .rooms import MAX_MEMBERS

__all__ = ["HTTPError", "add_routes"]

logger = logging.getLogger("roomcast.api")

NODE: Final = web.AppKey("node", Node)
#: Registrations per client address: a household or a class signs up at
#: once, then one every 10 s (6 a minute). Each is an argon2id hash (64 MiB,
#: about 0.1 s of a core), and each makes a name that costs nothing to hold.
REGISTER_BURST: Final = 10
REGISTER_RATE: Final = 1 / 10
#: Longest user name a login is counted under: a longer one cannot exist
#: (``Accounts.login`` refuses it without hashing), and the tables keep no
#: key a client made big.
MAX_LOGIN_NAME: Final = 64


_REGISTRATIONS: Final = web.AppKey("register_throttle", AddressBuckets)
_PROXIES: Final = web.AppKey("trusted_proxies", TrustedProxies)
#: Untrusted peers seen sending X-Forwarded-For (one is enough to say so once).
_FORWARDERS: Final = web.AppKey[set[str]]("untrusted_forwarders")
#: The WebSocket message rate limit, per user, for ``POST .../messages``.
_POSTS: Final = web.AppKey("post_throttle", KeyedBuckets)
#: Users whose posting rate is tracked at once.
POSTERS_TRACKED: Final = 10_000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HTTPError(Exception):
    """Leaves a handler as a JSON error response."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retry_after: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        #: Seconds the client should wait (sent as ``Retry-After``).
        self.retry_after = retry_after
        #: More fields of the error object (a ban's ``until`` and ``reason``).
        self.extra = extra


def add_routes(app: web.Application, node: Node, proxies: TrustedProxies | None = None) -> None:
    """Register the ``/api`` routes on ``app``; ``proxies`` name who forwards for clients."""
    app[NODE] = node
    app[_PROXIES] = proxies if proxies is not None else TrustedProxies()
    app[_FORWARDERS] = set()
    app[_REGISTRATIONS] = AddressBuckets(REGISTER_RATE, REGISTER_BURST)
    app[_POSTS] = KeyedBuckets(node.limits.rate_limit, node.limits.rate_burst, POSTERS_TRACKED)
    app.router.add_post("/api/register", _register)
    app.router.add_post("/api/login", _login)
    app.router.add_post("/api/refresh", _refresh)
    app.router.add_post("/api/password", _change_password)
    app.router.add_post("/api/logout", _logout)
    app.router.add_get("/api/me", _me)
    app.router.add_delete("/api/me", _delete_me)
    app.router.add_get("/api/rooms", _list_rooms)
    app.router.add_post("/api/rooms", _create_room)
    app.router.add_post("/api/rooms/{room}/members", _add_members)
    app.router.add_get("/api/rooms/{room}/messages", _room_messages)
    app.router.add_post("/api/rooms/{room}/messages", _post_message)
    app.router.add_get("/api/direct/messages", _direct_messages)
    app.router.add_patch("/api/messages/{message_id}", _edit_message)
    app.router.add_delete("/api/messages/{message_id}", _delete_message)
    app.router.add_put("/api/messages/{message_id}/reactions/{emoji}", _add_reaction)
    app.router.add_delete("/api/messages/{message_id}/reactions/{emoji}", _remove_reaction)
    app.router.add_get("/api/unread", _unread)
    app.router.add_get("/api/search", _search)
    app.router.add_get("/api/me/settings", _settings)
    app.router.add_put("/api/me/settings", _change_settings)
    app.router.add_get("/files/{file_id}", _file)


# -- helpers -----------------------------------------------------------------------


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body, or a 400."""
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise HTTPError(400, "invalid_json", "the body is not valid JSON") from None
    if type(body) is not dict:
        raise HTTPError(400, "invalid_message", "the body must be a JSON object")
    return body


async def bearer_user(request: web.Request) -> UserInfo:
    """The registered user of the request's bearer token, or a 401."""
    return (await bearer_credential(request)).user


async def bearer_credential(request: web.Request) -> Credential:
    """The user, expiry and session of the request's bearer token, or a 401.

    The session is read every time: a token of a session signed out, of a
    user deleted or banned everywhere, is refused however long it has left.
    """
    token = bearer_token(request.headers.get("Authorization"))
    if token is None:
        raise HTTPError(401, "auth_failed", "send Authorization: Bearer TOKEN")
    accounts = request.app[NODE].accounts
    if accounts is None:
        raise HTTPError(401, "auth_failed", "this server accepts no tokens")
    try:
        return await accounts.user_for_token(token)
    except AuthError as exc:
        raise HTTPError(401, "auth_failed", str(exc)) from None


def room_param(request: web.Request) -> str:
    room = request.match_info["room"]
    if not valid_room(room):
        raise HTTPError(400, "invalid_message", "room names match [a-z0-9][a-z0-9_-]{0,63}")
    return room


def query_int(
    request: web.Request, name: str, low: int, high: int, default: int | None
) -> int | None:
    """An integer query parameter in ``[low, high]``, or a 400 JSON error."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPError(400, "invalid_message", f"{name} must be an integer") from None
    if not low <= value <= high:
        raise HTTPError(400, "invalid_message", f"{name} must be between {low} and {high}")
    return value


#: The HTTP status and error code of each refusal of the core.
REFUSALS: Final[dict[type[DomainError], tuple[int, str]]] = {
    Forbidden: (403, "forbidden"),
    NotFound: (404, "not_found"),
    UnknownUser: (400, "unknown_user"),
    NameTaken: (409, "name_taken"),
    RoomExists: (409, "room_exists"),
    InvalidRequest: (400, "invalid_message"),
    TooLarge: (413, "too_large"),
    QuotaExceeded: (413, "quota_exceeded"),
    TooFrequent: (429, "rate_limited"),
}


def refused(exc: DomainError) -> HTTPError:
    """The JSON error for a refusal of the core (the HTTP API's one mapping)."""
    if isinstance(exc, Banned | Muted):
        # The same fields as the WebSocket's error frame (until, reason).
        frame = ErrorReply.refused(exc)
        return HTTPError(403, str(frame.code), frame.message, extra=frame.extra)
    for kind in type(exc).__mro__:
        if kind in REFUSALS:
            status, code = REFUSALS[kind]
            wait = exc.retry_after if isinstance(exc, TooFrequent) else None
            return HTTPError(status, code, str(exc), retry_after=wait)
    return HTTPError(400, "invalid_message", str(exc))


def _names(value: object, field: str) -> list[str]:
    if value is None:
        return []
    if (
        not isinstance(value, list)
        or len(value) > MAX_MEMBERS
        or not all(isinstance(v, str) and 0 < len(v) <= 64 for v in value)
    ):
        raise HTTPError(400, "invalid_message", f"{field} must be a list of user names")
    return value


async def _room_json(access: RoomAccess, node: Node, *, with_members: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": access.name,
        "private": access.private,
        "member_count": await node.membership.member_count(access.name),
        "receipts": access.receipts,
    }
    if access.owner is not None:
        out["owner"] = access.owner
    if with_members and access.private:
        out["members"] = sorted(access.members)
    return out


# -- accounts ----------------------------------------------------------------------


def client_address(request: web.Request) -> str:
    """The client's address: the peer's, or behind a trusted proxy its ``X-Forwarded-For``."""
    proxies, peer = request.app[_PROXIES], request.remote or ""
    forwarded = request.headers.getall("X-Forwarded-For", ())
    if forwarded and peer not in proxies and not request.app[_FORWARDERS]:
        # Once: a proxy left out of --trusted-proxy makes all its clients one address.
        request.app[_FORWARDERS].add(peer)
        logger.warning(
            "a request from %s carries X-Forwarded-For: if that is a reverse proxy, give it "
            "--trusted-proxy, or per-address limits count all its clients as one",
            peer,
        )
    return proxies.client(peer, forwarded)


def _hashed(username: object, password: object) -> bool:
    """Whether registering this name and password goes as far as hashing the password."""
    return (
        username_problem(username) is None
        and isinstance(password, str)
        and MIN_PASSWORD <= len(password) <= MAX_PASSWORD
    )


async def _register(request: web.Request) -> web.Response:
    """``POST /api/register`` ``{"username","password"}``: 201, 400 invalid, 409 taken."""
    body = await json_body(request)
    accounts = request.app[NODE].accounts
    if accounts is None:
        raise HTTPError(403, "forbidden", "this server has no accounts")
    username, password = body.get("username"), body.get("password")
    if _hashed(username, password):  # a request refused as invalid costs nothing
        wait = request.app[_REGISTRATIONS].take(client_address(request), time.monotonic())
        if wait > 0:
            raise HTTPError(
                429, "rate_limited", "too many sign-ups from your address", retry_after=wait
            )
    name = await accounts.register(username, password)
    # A guest using the name (on any node) loses it now.
    request.app[NODE].connections.claim_name(name)
    return json_response({"user": {"name": name}}, status=201)


async def _login(request: web.Request) -> web.Response:
    """``POST /api/login`` ``{"username","password"}``: 200 with a token, 401 otherwise."""
    body = await json_body(request)
    accounts = request.app[NODE].accounts
    if accounts is None:
        raise HTTPError(403, "forbidden", "this server has no accounts")
    username = body.get("username")
    # Counted over every node when they share a Redis (the node's quotas).
    quotas = request.app[NODE].quotas
    address = client_address(request)
    # A name that is not a string or longer than any can be is refused unhashed.
    counted = isinstance(username, str) and len(username) <= MAX_LOGIN_NAME
    if counted:
        assert isinstance(username, str)
        wait = await quotas.login_check(address, username)
        if wait <= 0:
            # Asked of every name, so that this takes as long whether it exists or not.
            exists = username_problem(username) is None and await accounts.exists(username)
            wait = await quotas.login_attempt(address, username, exists=exists)
        if wait > 0:
            raise HTTPError(
                429, "rate_limited", "too many login attempts; wait and retry", retry_after=wait
            )
    try:
        signed = await accounts.login(username, body.get("password"))
    except AuthError as exc:
        raise HTTPError(401, "auth_failed", str(exc)) from None
    name = signed.user.name
    if counted:
        await quotas.login_succeeded(address, name)
    request.app[NODE].connections.claim_name(name)
    return json_response(_signed_in(signed))


def _signed_in(signed: SignIn) -> dict[str, Any]:
    """The answer to a login or a refresh."""
    return {
        "token": signed.token,
        "expires_at": format_timestamp(signed.expires_at * 1000),
        "refresh_token": signed.refresh_token,
        "refresh_expires_at": format_timestamp(signed.refresh_expires_at * 1000),
        "user": {"name": signed.user.name, "admin": signed.user.admin},
    }


def _accounts(request: web.Request) -> Accounts:
    accounts = request.app[NODE].accounts
    if accounts is None:
        raise HTTPError(403, "forbidden", "this server has no accounts")
    return accounts


async def _refresh(request: web.Request) -> web.Response:
    """``POST /api/refresh`` ``{"refresh_token"}``: new tokens (the old refresh token
    stops working); 401 when it is unknown, used, revoked or expired.

    A refresh token presented a second time ends its whole session, and the
    connections that use it: one of its two holders is not its owner.
    """
    body = await json_body(request)
    accounts = _accounts(request)
    try:
        signed = await accounts.refresh(body.get("refresh_token"))
    except RefreshReused as exc:
        request.app[NODE].revocations.revoked(exc.revoked, exc.user)
        raise HTTPError(401, "auth_failed", str(exc)) from None
    except AuthError as exc:
        raise HTTPError(401, "auth_failed", str(exc)) from None
    return json_response(_signed_in(signed))


async def _password_attempt(request: web.Request, name: str) -> str:
    """Count a password check of ``name``'s own (as a login); its address, or a 429.

    Whoever holds a token could otherwise guess its user's password here
    as fast as hashing goes.
    """
    quotas = request.app[NODE].quotas
    address = client_address(request)
    wait = await quotas.login_check(address, name)
    if wait <= 0:
        wait = await quotas.login_attempt(address, name, exists=True)
    if wait > 0:
        raise HTTPError(429, "rate_limited", "too many password attempts", retry_after=wait)
    return address


async def _change_password(request: web.Request) -> web.Response:
    """``POST /api/password`` ``{"old","new"}``: ``{"revoked": N}``; every other session
    of the user ends (and its connections close); this one stays."""
    credential = await bearer_credential(request)
    body = await json_body(request)
    name = credential.user.name
    address = await _password_attempt(request, name)
    try:
        revoked = await _accounts(request).change_password(
            credential, body.get("old"), body.get("new")
        )
    except AuthError as exc:
        raise HTTPError(401, "auth_failed", str(exc)) from None
    await request.app[NODE].quotas.login_succeeded(address, name)
    request.app[NODE].revocations.revoked(revoked, name)
    return json_response({"revoked": len(revoked)})


async def _logout(request: web.Request) -> web.Response:
    """``POST /api/logout`` ``{"everywhere"?: bool}``: 204; the session (or every session
    of the user) ends, and the connections that use it close."""
    credential = await bearer_credential(request)
    body = await json_body(request) if await request.read() else {}
    everywhere = body.get("everywhere", False)
    if type(everywhere) is not bool:
        raise HTTPError(400, "invalid_message", "everywhere must be true or false")
    revoked = await _accounts(request).logout(credential, everywhere=everywhere)
    request.app[NODE].revocations.revoked(revoked, credential.user.name)
    return web.Response(status=204)


async def _me(request: web.Request) -> web.Response:
    """``GET /api/me``: ``{"user":{"name","admin","created_at"}}``."""
    credential = await bearer_credential(request)
    account = await request.app[NODE].store.get_user(credential.user.name)
    if account is None:
        raise HTTPError(401, "auth_failed", "this account does not exist any more")
    return json_response({"user": user_json(account)})


def user_json(account: StoredUser) -> dict[str, Any]:
    """A registered user as ``/api/me`` and the admin API show it."""
    return {
        "name": account.name,
        "admin": account.admin,
        "created_at": format_timestamp(account.created_ms) if account.created_ms else None,
    }


async def _delete_me(request: web.Request) -> web.Response:
    """``DELETE /api/me`` ``{"password"}``: 204; the account is erased (docs: what
    stays as tombstones), every session ends and its connections close."""
    credential = await bearer_credential(request)
    body = await json_body(request)
    name = credential.user.name
    await _password_attempt(request, name)
    try:
        revoked = await _accounts(request).delete_account(credential, body.get("password"))
    except AuthError as exc:
        raise HTTPError(401, "auth_failed", str(exc)) from None
    account_deleted(request.app[NODE], name, revoked)
    return web.Response(status=204)


#: Sweeps of files started after an account was deleted.
_SWEEPS: Final[set[asyncio.Task[None]]] = set()


def account_deleted(node: Node, name: str, revoked: list[str]) -> None:
    """After ``name``'s account was erased: close its connections everywhere, and
    delete its files' bytes that no message names any more (in the background)."""
    node.revocations.revoked(revoked, name, reason=ACCOUNT_DELETED)
    # Its roles, bans and mutes are gone from the store: every node reads rules again.
    node.moderation.rules.clear()

    async def sweep() -> None:
        try:
            removed = await node.messaging.sweep_files()
        except (BackendError, OSError) as exc:
            logger.error("cannot delete the files of a deleted account: %s", exc)
        else:
            logger.info("deleted %d files after the account %s was deleted", removed, name)

    task = asyncio.ensure_future(sweep())
    _SWEEPS.add(task)
    task.add_done_callback(_SWEEPS.discard)


# -- rooms -------------------------------------------------------------------------


async def _list_rooms(request: web.Request) -> web.Response:
    """``GET /api/rooms``: the rooms the caller may see (public ones without a token)."""
    node = request.app[NODE]
    user = await bearer_user(request) if "Authorization" in request.headers else None
    rooms = await node.rooms.visible(user)
    # Member counts are read together (one round trip to the broker's server).
    listed = await asyncio.gather(
        *(_room_json(access, node, with_members=True) for access in rooms)
    )
    return json_response({"rooms": listed})


async def _create_room(request: web.Request) -> web.Response:
    """``POST /api/rooms`` ``{"name","private"?,"members"?}``: 201, or 409 when it exists."""
    node = request.app[NODE]
    user = await bearer_user(request)
    body = await json_body(request)
    name = body.get("name")
    if not isinstance(name, str):
        raise HTTPError(400, "invalid_message", "name must match [a-z0-9][a-z0-9_-]{0,63}")
    private = body.get("private", True)
    if not isinstance(private, bool):
        raise HTTPError(400, "invalid_message", "private must be true or false")
    members = _names(body.get("members"), "members")
    access = await node.rooms.create(user, name, private=private, members=members)
    logger.info("%s created %s room %s", user.name, "private" if private else "public", name)
    return json_response({"room": await _room_json(access, node, with_members=True)}, status=201)


async def _add_members(request: web.Request) -> web.Response:
    """``POST /api/rooms/{room}/members`` ``{"members":[...]}``: owner only."""
    node = request.app[NODE]
    user = await bearer_user(request)
    room = room_param(request)
    body = await json_body(request)
    names = _names(body.get("members"), "members")
    updated = await node.rooms.add_members(user, room, names)
    return json_response({"room": await _room_json(updated, node, with_members=True)})


# -- read state --------------------------------------------------------------------


async def _unread(request: web.Request) -> web.Response:
    """``GET /api/unread``: the caller's unread counts in each room and direct conversation."""
    user = await bearer_user(request)
    reply = await request.app[NODE].read_state.unread(user)
    return json_response(reply.payload())


#: ``GET /api/search``'s parameters that are not text, as the ``search`` frame has them.
_SEARCH_FLAGS: Final = {"true": True, "false": False}


async def _search(request: web.Request) -> web.Response:
    """``GET /api/search?q=...&room=&direct=&with=&from=&after=&before=&limit=&cursor=&order=``:
    the caller's search, answered as the WebSocket ``search``."""
    user = await bearer_user(request)
    fields: dict[str, Any] = {key: request.query[key] for key in request.query}
    if "direct" in fields:
        if fields["direct"] not in _SEARCH_FLAGS:
            raise HTTPError(400, "invalid_message", "direct must be true or false")
        fields["direct"] = _SEARCH_FLAGS[fields["direct"]]
    if "limit" in fields:
        fields["limit"] = query_int(request, "limit", 1, MAX_SEQ, None)
    try:
        search = parse_search(fields)
    except ProtocolError as exc:
        raise HTTPError(400, str(exc.code), exc.message.replace("payload.", "")) from None
    reply = await request.app[NODE].search.search(user, search)
    return json_response(reply.payload())


async def _settings(request: web.Request) -> web.Response:
    """``GET /api/me/settings``: ``{"hide_receipts"}``."""
    user = await bearer_user(request)
    account = await request.app[NODE].store.get_user(user.name)
    return json_response({"hide_receipts": account is not None and account.hide_receipts})


async def _change_settings(request: web.Request) -> web.Response:
    """``PUT /api/me/settings`` ``{"hide_receipts": bool}``: the settings as they are now."""
    user = await bearer_user(request)
    body = await json_body(request)
    hidden = body.get("hide_receipts")
    if type(hidden) is not bool or set(body) != {"hide_receipts"}:
        raise HTTPError(400, "invalid_message", 'give {"hide_receipts": true} or false')
    await request.app[NODE].read_state.hide_receipts(user, hidden)
    return json_response({"hide_receipts": hidden})


# -- messages ----------------------------------------------------------------------


async def _room_messages(request: web.Request) -> web.Response:
    """``GET /api/rooms/{room}/messages?before=SEQ|around=SEQ&thread=ID&limit=N``: history."""
    user = await bearer_user(request)
    room = room_param(request)
    before = query_int(request, "before", 1, MAX_SEQ, None)
    around = query_int(request, "around", 1, MAX_SEQ, None)
    thread = request.query.get("thread")
    if before is not None and around is not None:
        raise HTTPError(400, "invalid_message", "give before or around, not both")
    if thread is not None:
        _check_message_id(thread, "thread")
        if around is not None:
            raise HTTPError(400, "invalid_message", "around does not page a thread; use before")
    limit = query_int(request, "limit", 1, MAX_HISTORY_LIMIT, None) or DEFAULT_HISTORY_LIMIT
    reply = await request.app[NODE].messaging.history(
        user, room, before=before, limit=limit, thread=thread, around=around
    )
    return json_response(reply.payload())


async def _post_message(request: web.Request) -> web.Response:
    """``POST /api/rooms/{room}/messages`` ``{"message","id"?}``: 201 ``{"seq","message_id"}``."""
    node = request.app[NODE]
    user = await bearer_user(request)
    room = room_param(request)
    body = await json_body(request)
    text, client_id = body.get("message"), body.get("id")
    limit = node.limits.max_message_chars
    if not isinstance(text, str) or not text.strip() or "\x00" in text:
        raise HTTPError(400, "invalid_message", "message must be a non-empty string without U+0000")
    if len(text) > limit:
        raise HTTPError(413, "too_large", f"message is longer than {limit} characters")
    if client_id is not None and (
        not isinstance(client_id, str) or len(client_id) > MAX_ID_LENGTH or "\x00" in client_id
    ):
        raise HTTPError(400, "invalid_message", f"id must be a string of at most {MAX_ID_LENGTH}")
    reply_to = body.get("reply_to")
    if reply_to is not None:
        _check_message_id(reply_to, "reply_to")
    wait = request.app[_POSTS].take(user.name, time.monotonic())
    if wait > 0:
        raise HTTPError(429, "rate_limited", "too many messages; slow down", retry_after=wait)
    message = await node.messaging.post(user, room, text, client_id=client_id, reply_to=reply_to)
    return json_response({"room": room, "seq": message.seq, "message_id": message.message_id}, 201)


# -- changes -----------------------------------------------------------------------


def _check_message_id(value: object, what: str) -> str:
    """``value`` if it can be a message id (1 to 64 characters, no U+0000), or a 400."""
    if (
        not isinstance(value, str)
        or not value
        or len(value) > MAX_ID_LENGTH
        or "\x00" in value
        or not _utf8(value)
    ):
        raise HTTPError(
            400,
            "invalid_message",
            f"{what} must be a message id of 1 to {MAX_ID_LENGTH} characters",
        )
    return value


async def _change(
    request: web.Request, kind: str, text: str = "", client_id: Any = None
) -> web.Response:
    """Make one change for the caller: 200 with the WebSocket ``ack`` payload.

    The frame id of a resend comes in the body (``"id"``, for ``PATCH``) or
    the ``Idempotency-Key`` header: the same change sent again with the same
    key is applied once.
    """
    node = request.app[NODE]
    user = await bearer_user(request)
    message_id = _check_message_id(request.match_info["message_id"], "message_id")
    client_id = client_id if client_id is not None else request.headers.get("Idempotency-Key")
    if client_id is not None and (
        not isinstance(client_id, str)
        or len(client_id) > MAX_ID_LENGTH
        or "\x00" in client_id
        or not _utf8(client_id)
    ):
        raise HTTPError(400, "invalid_message", f"id must be a string of at most {MAX_ID_LENGTH}")
    wait = request.app[_POSTS].take(user.name, time.monotonic())
    if wait > 0:
        raise HTTPError(429, "rate_limited", "too many messages; slow down", retry_after=wait)
    ack = await node.messaging.change_now(user, kind, message_id, text, client_id=client_id)
    return json_response(ack.payload())


def _utf8(text: str) -> bool:
    """Whether ``text`` is valid Unicode (bytes of a header that are not UTF-8 are surrogates)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


async def _edit_message(request: web.Request) -> web.Response:
    """``PATCH /api/messages/{message_id}`` ``{"message","id"?}``: edit one's own message."""
    body = await json_body(request)
    text = body.get("message")
    limit = request.app[NODE].limits.max_message_chars
    if not isinstance(text, str) or not text.strip() or "\x00" in text:
        raise HTTPError(400, "invalid_message", "message must be a non-empty string without U+0000")
    if len(text) > limit:
        raise HTTPError(413, "too_large", f"message is longer than {limit} characters")
    return await _change(request, "edit", text, body.get("id"))


async def _delete_message(request: web.Request) -> web.Response:
    """``DELETE /api/messages/{message_id}``: take a message back (its text is erased)."""
    return await _change(request, "delete")


def _emoji(request: web.Request) -> str:
    emoji = request.match_info["emoji"]
    if len(emoji) > MAX_EMOJI_LENGTH:
        raise HTTPError(400, "invalid_message", f"emoji is longer than {MAX_EMOJI_LENGTH}")
    return emoji


async def _add_reaction(request: web.Request) -> web.Response:
    """``PUT /api/messages/{message_id}/reactions/{emoji}``: react (the emoji percent-encoded)."""
    return await _change(request, "react", _emoji(request))


async def _remove_reaction(request: web.Request) -> web.Response:
    """``DELETE /api/messages/{message_id}/reactions/{emoji}``: take one's reaction back."""
    return await _change(request, "unreact", _emoji(request))


async def _direct_messages(request: web.Request) -> web.Response:
    """``GET /api/direct/messages?before=SEQ|since=SEQ|around=SEQ&with=NAME&limit=N``: the
    caller's direct messages (``with``: one conversation's)."""
    user = await bearer_user(request)
    before = query_int(request, "before", 1, MAX_SEQ, None)
    since = query_int(request, "since", 0, MAX_SEQ, None)
    around = query_int(request, "around", 1, MAX_SEQ, None)
    if sum(value is not None for value in (before, since, around)) > 1:
        raise HTTPError(400, "invalid_message", "give one of before, since and around")
    peer = request.query.get("with")
    if peer is not None and (since is not None or not valid_name(peer)):
        raise HTTPError(
            400, "invalid_message", "with is a name, given with before or around (not since)"
        )
    limit = query_int(request, "limit", 1, MAX_HISTORY_LIMIT, None) or DEFAULT_HISTORY_LIMIT
    messaging = request.app[NODE].messaging
    reply = await messaging.direct_history(
        user, before=before, since=since, limit=limit, around=around, peer=peer
    )
    return json_response(reply.payload())


#: Media types a browser may show inline from this origin: raster images,
#: audio, video, plain text and PDF. Anything else (HTML, SVG, XML, scripts)
#: is a download, so a file can never run as a page of roomcast's origin.
INLINE_TYPES: Final = frozenset(
    {
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/avif",
        "audio/mpeg",
        "audio/ogg",
        "audio/wav",
        "video/mp4",
        "video/webm",
        "text/plain",
        "application/pdf",
    }
)


async def _file(request: web.Request) -> web.StreamResponse:
    """``GET /files/{file_id}``: a file, for whoever may read the message it came in.

    A signed link (``expires`` and ``signature`` from the message's ``url``)
    needs no token; otherwise a bearer token names the user, who must be
    allowed in the room, or be one side of the direct message. Ranges,
    ``HEAD`` and conditional requests are aiohttp's ``FileResponse``.
    """
    node = request.app[NODE]
    file_id = request.match_info["file_id"]
    if len(file_id) > 64 or not file_id.isalnum():
        raise HTTPError(404, "not_found", "no such file")
    expires, signature = request.query.get("expires"), request.query.get("signature")
    signed = False
    if expires is not None or signature is not None:
        links = node.messaging.links
        if links is None or not links.check(file_id, expires or "", signature or ""):
            raise HTTPError(403, "forbidden", "the link is not valid, or it has expired")
        signed = True
    message = await node.messaging.file_message(file_id)
    reader = None if signed else await bearer_user(request)
    info, path = await node.messaging.open_file(message, reader)
    inline = info.mime in INLINE_TYPES
    disposition = "inline" if inline else "attachment"
    quoted = urllib.parse.quote(info.name, safe="")
    return web.FileResponse(
        path,
        headers={
            "Content-Type": info.mime,
            "Content-Disposition": f"{disposition}; filename*=UTF-8''{quoted}",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Cache-Control": "private, max-age=3600",
        },
    )


def backend_failure(exc: BackendError) -> HTTPError:
    """The 503 answer when the store or broker failed, or is full (then ``rate_limited``)."""
    if isinstance(exc, StoreBusy):
        return HTTPError(
            503,
            "rate_limited",
            "the server is busy storing messages; send it again later",
            retry_after=exc.retry_after,
        )
    logger.error("backend failure: %s", exc)
    return HTTPError(503, "internal", "the server could not do that now; retry")
