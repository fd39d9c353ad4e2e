"""The HTTP routes of moderation: a room's settings and roles, removals, bans, mutes
and its audit log (``/api/rooms/{room}...``).

Each route reads its input, calls :class:`~roomcast.moderation.Moderation`
(which decides who may) and writes JSON; refusals leave through the one
mapping of :func:`roomcast.api.refused`. docs/protocol.md lists them.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from aiohttp import web

from .api import NODE, HTTPError, bearer_user, json_body, json_response, query_int, room_param
from .exceptions import InvalidRequest
from .model import Ban, Mute, RoomSettings, UserInfo
from .moderation import MAX_BAN_SECONDS, MAX_MUTE_SECONDS, RoomView
from .protocol.messages import format_timestamp, iso_ms, now_ms, until_text, valid_name

__all__ = ["add_routes", "ends_at", "settings_json", "view_json"]

#: Entries one page of the audit log holds at most, and by default.
MAX_AUDIT_PAGE: Final = 100
DEFAULT_AUDIT_PAGE: Final = 50
#: Past every audit entry id: the first page starts at the newest.
_MAX_AUDIT_ID: Final = 2**62


def add_routes(app: web.Application) -> None:
    """Register the moderation routes (``api.add_routes`` must have run: it sets the node)."""
    router = app.router
    router.add_get("/api/rooms/{room}", _room_view)
    router.add_patch("/api/rooms/{room}", _update_room)
    router.add_delete("/api/rooms/{room}", _delete_room)
    router.add_put("/api/rooms/{room}/moderators/{user}", _add_moderator)
    router.add_delete("/api/rooms/{room}/moderators/{user}", _remove_moderator)
    router.add_delete("/api/rooms/{room}/members/{user}", _remove_member)
    router.add_put("/api/rooms/{room}/bans/{user}", _ban)
    router.add_delete("/api/rooms/{room}/bans/{user}", _unban)
    router.add_put("/api/rooms/{room}/mutes/{user}", _mute)
    router.add_delete("/api/rooms/{room}/mutes/{user}", _unmute)
    router.add_get("/api/rooms/{room}/audit", _audit)


# -- reading -------------------------------------------------------------------------


async def _room_view(request: web.Request) -> web.Response:
    """``GET /api/rooms/{room}``: settings, roles and the caller's role (a token is optional)."""
    user = await bearer_user(request) if "Authorization" in request.headers else None
    return json_response({"room": await _view_json(request, user, room_param(request))})


async def _audit(request: web.Request) -> web.Response:
    """``GET /api/rooms/{room}/audit?before=ID&limit=N``: newest first, for owners and
    moderators."""
    user = await bearer_user(request)
    room = room_param(request)
    before = query_int(request, "before", 1, _MAX_AUDIT_ID, None)
    limit = query_int(request, "limit", 1, MAX_AUDIT_PAGE, DEFAULT_AUDIT_PAGE)
    assert limit is not None
    entries, more = await request.app[NODE].moderation.audit(user, room, before=before, limit=limit)
    listed = []
    for entry in entries:
        item: dict[str, Any] = {
            "id": entry.id,
            "at": format_timestamp(entry.at_ms),
            "by": entry.actor,
            "action": entry.action,
        }
        if entry.target is not None:
            item["target"] = entry.target
        if entry.reason:
            item["reason"] = entry.reason
        if entry.detail:
            item["detail"] = dict(entry.detail)
        listed.append(item)
    return json_response({"entries": listed, "has_more": more})


# -- settings and roles ----------------------------------------------------------------

#: What ``PATCH /api/rooms/{room}`` takes, and the type of each.
_SETTINGS: Final[dict[str, type]] = {
    "topic": str,
    "title": str,
    "slow_mode": int,
    "receipts": bool,
    "owner": str,
}


async def _update_room(request: web.Request) -> web.Response:
    """``PATCH /api/rooms/{room}`` ``{"topic"?,"title"?,"slow_mode"?,"receipts"?,"owner"?}``."""
    node = request.app[NODE]
    user = await bearer_user(request)
    room = room_param(request)
    body = await json_body(request)
    unknown = set(body) - set(_SETTINGS)
    if unknown or not body:
        names = ", ".join(_SETTINGS)
        raise HTTPError(400, "invalid_message", f"give some of {names}, and nothing else")
    for key, kind in _SETTINGS.items():
        value = body.get(key)
        if value is not None and type(value) is not kind:
            raise HTTPError(400, "invalid_message", f"{key} must be a {kind.__name__}")
    owner = body.get("owner")
    if owner is not None and not valid_name(owner):
        raise HTTPError(400, "invalid_message", "owner must be a user's name")
    await node.moderation.update(
        user,
        room,
        topic=body.get("topic"),
        title=body.get("title"),
        slow_mode=body.get("slow_mode"),
        receipts=body.get("receipts"),
        owner=owner,
    )
    if body.get("receipts") is not None:
        node.read_state.room_changed(room)
    return json_response({"room": await _view_json(request, user, room)})


async def _delete_room(request: web.Request) -> web.Response:
    """``DELETE /api/rooms/{room}``: its owner (or an admin) erases it."""
    user = await bearer_user(request)
    await request.app[NODE].moderation.delete_room(user, room_param(request))
    return web.Response(status=204)


async def _add_moderator(request: web.Request) -> web.Response:
    """``PUT /api/rooms/{room}/moderators/{user}``: the owner names a moderator."""
    return await _set_moderator(request, True)


async def _remove_moderator(request: web.Request) -> web.Response:
    """``DELETE /api/rooms/{room}/moderators/{user}``."""
    return await _set_moderator(request, False)


async def _set_moderator(request: web.Request, on: bool) -> web.Response:
    user = await bearer_user(request)
    room = room_param(request)
    await request.app[NODE].moderation.set_moderator(user, room, _target(request), on)
    return json_response({"room": await _view_json(request, user, room)})


# -- removals, bans, mutes ---------------------------------------------------------------


async def _remove_member(request: web.Request) -> web.Response:
    """``DELETE /api/rooms/{room}/members/{user}`` (a ``{"reason"}`` body is optional)."""
    user = await bearer_user(request)
    room = room_param(request)
    target = _target(request)
    body = await json_body(request) if request.body_exists else {}
    reason = _reason(body)
    await request.app[NODE].moderation.remove(user, room, target, reason)
    return web.Response(status=204)


async def _ban(request: web.Request) -> web.Response:
    """``PUT /api/rooms/{room}/bans/{user}`` ``{"until"?|"for"?,"reason"?}``."""
    user = await bearer_user(request)
    room = room_param(request)
    target = _target(request)
    body = await json_body(request) if request.body_exists else {}
    until = ends_at(body, now_ms(), longest=MAX_BAN_SECONDS)
    ban = await request.app[NODE].moderation.ban(
        user, room, target, until_ms=until, reason=_reason(body)
    )
    return json_response({"ban": _ban_json(ban)})


async def _unban(request: web.Request) -> web.Response:
    """``DELETE /api/rooms/{room}/bans/{user}``."""
    user = await bearer_user(request)
    await request.app[NODE].moderation.unban(user, room_param(request), _target(request))
    return web.Response(status=204)


async def _mute(request: web.Request) -> web.Response:
    """``PUT /api/rooms/{room}/mutes/{user}`` ``{"until"}`` or ``{"for": seconds}``."""
    user = await bearer_user(request)
    room = room_param(request)
    target = _target(request)
    body = await json_body(request)
    until = ends_at(body, now_ms(), longest=MAX_MUTE_SECONDS, required=True)
    assert until is not None
    mute = await request.app[NODE].moderation.mute(user, room, target, until_ms=until)
    return json_response({"mute": _mute_json(mute)})


async def _unmute(request: web.Request) -> web.Response:
    """``DELETE /api/rooms/{room}/mutes/{user}``."""
    user = await bearer_user(request)
    await request.app[NODE].moderation.unmute(user, room_param(request), _target(request))
    return web.Response(status=204)


# -- reading the input -----------------------------------------------------------------


def _target(request: web.Request) -> str:
    name = request.match_info["user"]
    if not valid_name(name):
        raise HTTPError(400, "invalid_message", "the path must name a user")
    return name


def _reason(body: dict[str, Any]) -> str:
    reason = body.get("reason", "")
    if reason is None:
        return ""
    if not isinstance(reason, str):
        raise HTTPError(400, "invalid_message", "reason must be a string")
    return reason


def ends_at(
    body: dict[str, Any], now_ms: int, *, longest: int, required: bool = False
) -> int | None:
    """When a ban or mute asked for in ``body`` ends (epoch ms): ``{"until": ISO 8601}``
    (UTC unless it says otherwise), ``{"for": seconds}``, or neither (or ``"until":
    null``) for no end, which only a ban may have (``required`` refuses it).

    Raises:
        InvalidRequest: both, neither when ``required``, a malformed time, one not in
            the future, or more than ``longest`` seconds.
    """
    until, seconds = body.get("until"), body.get("for")
    if until is not None and seconds is not None:
        raise InvalidRequest("give until or for, not both")
    if seconds is not None:
        if type(seconds) is not int or not 1 <= seconds <= longest:
            raise InvalidRequest(f"for must be a number of seconds, 1 to {longest}")
        return now_ms + seconds * 1000
    if until is None:
        if required:
            raise InvalidRequest('give "until" (ISO 8601) or "for" (seconds)')
        return None
    ms = iso_ms(until)
    if ms is None:
        raise InvalidRequest('until must be an ISO 8601 time, like "2030-12-01T10:00:00Z"')
    if ms <= now_ms:
        raise InvalidRequest("until must be in the future")
    if ms > now_ms + longest * 1000:
        raise InvalidRequest(f"until is more than {longest} seconds away")
    return ms


# -- writing the output ----------------------------------------------------------------


async def _view_json(request: web.Request, user: UserInfo | None, room: str) -> dict[str, Any]:
    node = request.app[NODE]
    view, count = await asyncio.gather(
        node.moderation.view(user, room), node.membership.member_count(room)
    )
    return view_json(view, count)


def settings_json(settings: RoomSettings, member_count: int) -> dict[str, Any]:
    """A stored room's settings and roles, as every room route shows them."""
    return {
        "name": settings.name,
        "title": settings.title or settings.name,
        "private": settings.private,
        "owner": settings.owner,
        "moderators": sorted(settings.moderators),
        "topic": settings.topic,
        "slow_mode": settings.slow_mode,
        "receipts": settings.receipts,
        "member_count": member_count,
    }


def view_json(view: RoomView, member_count: int) -> dict[str, Any]:
    """A room as ``GET /api/rooms/{room}`` shows it to one viewer."""
    out = settings_json(view.settings, member_count)
    out["role"] = view.role
    if view.members is not None:
        out["members"] = sorted(view.members)
    if view.muted_until is not None:
        out["muted_until"] = until_text(view.muted_until)
    if view.bans is not None:
        out["bans"] = [_ban_json(ban) for ban in view.bans]
    if view.mutes is not None:
        out["mutes"] = [_mute_json(mute) for mute in view.mutes]
    return out


def _ban_json(ban: Ban) -> dict[str, Any]:
    return {
        "user": ban.name,
        "until": until_text(ban.until_ms),
        "reason": ban.reason,
        "by": ban.by,
        "at": format_timestamp(ban.at_ms),
    }


def _mute_json(mute: Mute) -> dict[str, Any]:
    return {
        "user": mute.name,
        "until": until_text(mute.until_ms),
        "by": mute.by,
        "at": format_timestamp(mute.at_ms),
    }
