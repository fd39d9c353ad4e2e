"""The server-wide admins' HTTP API, under ``/api/admin/``.

Every route needs the bearer token of an admin (``users.admin``, read with
the token's session on every request, so a demotion counts at once); anyone
else gets 403 ``forbidden``. Admins list and delete rooms, look users up,
ban them everywhere, reset their passwords, make or unmake admins and
delete accounts. What ends sessions closes their connections on every node
(:class:`~roomcast.revocation.Revocations`). The first admin comes from
``roomcast admin create-admin``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web

from .accounts import USERNAME, Accounts, Credential
from .api import (
    NODE,
    HTTPError,
    account_deleted,
    bearer_credential,
    json_body,
    json_response,
    room_param,
    user_json,
)
from .api_rooms import ends_at, settings_json
from .exceptions import InvalidRequest
from .model import StoredUser
from .moderation import MAX_BAN_SECONDS, MAX_REASON, checked_text
from .protocol.messages import until_text
from .revocation import BANNED, SIGNED_OUT

__all__ = ["add_routes", "ban_reason", "ban_until"]

logger = logging.getLogger("roomcast.api")


def add_routes(app: web.Application) -> None:
    """Register the ``/api/admin/`` routes (``api.add_routes`` calls this)."""
    app.router.add_get("/api/admin/rooms", _rooms)
    app.router.add_delete("/api/admin/rooms/{room}", _delete_room)
    app.router.add_get("/api/admin/users/{user}", _user_info)
    app.router.add_put("/api/admin/users/{user}/ban", _ban)
    app.router.add_delete("/api/admin/users/{user}/ban", _unban)
    app.router.add_post("/api/admin/users/{user}/password", _reset_password)
    app.router.add_put("/api/admin/users/{user}/admin", _promote)
    app.router.add_delete("/api/admin/users/{user}/admin", _demote)
    app.router.add_delete("/api/admin/users/{user}", _delete_user)


async def _admin(request: web.Request) -> tuple[Credential, Accounts]:
    """The caller's credential if they are an admin; else 401 or 403."""
    credential = await bearer_credential(request)
    accounts = request.app[NODE].accounts
    if not credential.user.admin or accounts is None:
        raise HTTPError(403, "forbidden", "only an admin may do that")
    return credential, accounts


def _name(request: web.Request) -> str:
    """The ``{user}`` of the path: a name that can be registered, or a 404."""
    name = request.match_info["user"]
    if USERNAME.fullmatch(name) is None:
        raise HTTPError(404, "not_found", f"no user named {name[:64]}")
    return name


def ban_until(body: dict[str, Any], now_ms: int) -> int | None:
    """When a ban asked for in ``body`` ends (epoch ms), or None for no end (as for a
    room's ban: :func:`~roomcast.api_rooms.ends_at`)."""
    return ends_at(body, now_ms, longest=MAX_BAN_SECONDS)


def ban_reason(value: object) -> str:
    """A ban's reason: printable text of at most :data:`MAX_REASON` characters, trimmed."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRequest("reason must be text")
    return checked_text(value, "reason", MAX_REASON, lines=False)


def _ban_json(user: StoredUser, until_ms: int | None, reason: str) -> dict[str, Any]:
    return {"user": user.name, "until": until_text(until_ms), "reason": reason}


# -- rooms ---------------------------------------------------------------------------


async def _rooms(request: web.Request) -> web.Response:
    """``GET /api/admin/rooms``: every stored room, public and private, by name."""
    await _admin(request)
    node = request.app[NODE]
    rooms = await node.store.all_rooms()
    # Member counts are read together (one round trip to the broker's server).
    counts = await asyncio.gather(*(node.membership.member_count(r.name) for r in rooms))
    return json_response(
        {"rooms": [settings_json(r, n) for r, n in zip(rooms, counts, strict=True)]}
    )


async def _delete_room(request: web.Request) -> web.Response:
    """``DELETE /api/admin/rooms/{room}``: 204; the room is erased, its members are out."""
    credential, _ = await _admin(request)
    room = room_param(request)
    await request.app[NODE].moderation.delete_room(credential.user, room)
    logger.info("admin %s deleted the room %s", credential.user.name, room)
    return web.Response(status=204)


# -- users ---------------------------------------------------------------------------


async def _user_info(request: web.Request) -> web.Response:
    """``GET /api/admin/users/{user}``: ``{"user":{"name","admin","created_at",
    "banned_until"?,"ban_reason"?}}`` (the ban fields while a ban holds)."""
    _, accounts = await _admin(request)
    user = await accounts.user(_name(request))
    out = user_json(user)
    if user.banned(_now_ms()):
        out["banned_until"] = until_text(user.banned_until_ms)
        if user.ban_reason:
            out["ban_reason"] = user.ban_reason
    return json_response({"user": out})


async def _ban(request: web.Request) -> web.Response:
    """``PUT /api/admin/users/{user}/ban`` ``{"until"?,"for"?,"reason"?}``: the user is
    banned everywhere, signed out, and their connections closed."""
    credential, accounts = await _admin(request)
    name = _name(request)
    body = await json_body(request) if await request.read() else {}
    until_ms = ban_until(body, _now_ms())
    reason = ban_reason(body.get("reason"))
    user, revoked = await accounts.ban_user(name, until_ms, reason, by=credential.user.name)
    request.app[NODE].revocations.revoked(revoked, user.name, reason=BANNED)
    return json_response({"ban": _ban_json(user, until_ms, reason)})


async def _unban(request: web.Request) -> web.Response:
    """``DELETE /api/admin/users/{user}/ban``: 204 (also when there was no ban)."""
    credential, accounts = await _admin(request)
    await accounts.unban_user(_name(request), by=credential.user.name)
    return web.Response(status=204)


async def _reset_password(request: web.Request) -> web.Response:
    """``POST /api/admin/users/{user}/password`` ``{"password"?}``: ``{"password"}``
    (generated when not given); every session of the user ends."""
    credential, accounts = await _admin(request)
    name = _name(request)
    body = await json_body(request) if await request.read() else {}
    given = body.get("password")
    if given is not None and not isinstance(given, str):
        raise InvalidRequest("password must be text")
    user, password, revoked = await accounts.reset_password(name, given, by=credential.user.name)
    request.app[NODE].revocations.revoked(revoked, user.name)
    return json_response({"password": password})


async def _promote(request: web.Request) -> web.Response:
    """``PUT /api/admin/users/{user}/admin``: 204; the user is an admin."""
    credential, accounts = await _admin(request)
    await accounts.set_admin(_name(request), True, by=credential.user.name)
    return web.Response(status=204)


async def _demote(request: web.Request) -> web.Response:
    """``DELETE /api/admin/users/{user}/admin``: 204; the user is no admin, and their
    sessions end (a connection must not keep an admin's rights)."""
    credential, accounts = await _admin(request)
    user, revoked = await accounts.set_admin(_name(request), False, by=credential.user.name)
    request.app[NODE].revocations.revoked(revoked, user.name, reason=SIGNED_OUT)
    return web.Response(status=204)


async def _delete_user(request: web.Request) -> web.Response:
    """``DELETE /api/admin/users/{user}``: 204; the account is erased as ``DELETE
    /api/me`` erases it."""
    credential, accounts = await _admin(request)
    user, revoked = await accounts.delete_user(_name(request), by=credential.user.name)
    account_deleted(request.app[NODE], user.name, revoked)
    return web.Response(status=204)


def _now_ms() -> int:
    return int(time.time() * 1000)
