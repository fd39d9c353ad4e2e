"""Roles, bans, mutes, room settings, the audit log and the admin routes: a part of the ``Client``.

Moderation goes over the HTTP API (``/api/rooms/{room}/...`` and
``/api/admin/...``), not the WebSocket: each action is one request that
is done, or refused with a :class:`~roomcast.client.SendError`, at once,
and is never queued or resent. Its effects come back on the connection:
the user acted on gets a ``removed`` frame (:class:`~roomcast.client.Removed`),
the members a ``room`` frame (:class:`~roomcast.client.RoomUpdated`).

The answers are small frozen classes, read here; the parsing is pure.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from .events import parse_time
from .signin import AccountInfo, SignInMixin, account_info, quoted

__all__ = [
    "AUDIT_PAGE",
    "ROLES",
    "AuditEntry",
    "AuditPage",
    "BanInfo",
    "ModerationMixin",
    "MuteInfo",
    "RoomInfo",
    "audit_page",
    "ban_info",
    "mute_info",
    "parse_duration",
    "room_info",
]

#: What a user may be in a room (``RoomInfo.role``; None for a guest or a non-member).
ROLES: Final = ("owner", "moderator", "member", "admin")
#: Entries an audit page holds when no limit is given (the server's default).
AUDIT_PAGE: Final = 50
#: The units a duration may be written in: seconds each.
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION: Final = re.compile(r"(\d{1,9})([smhdw]?)")
_NO_DETAIL: Final[Mapping[str, Any]] = MappingProxyType({})


def parse_duration(text: str) -> int:
    """Seconds in a duration written ``90s``, ``30m``, ``12h``, ``7d``, ``2w`` or ``45`` (seconds).

    Raises:
        ValueError: anything else, or zero.
    """
    found = _DURATION.fullmatch(text.strip().lower())
    if found is None:
        raise ValueError(f"a duration is a number and s, m, h, d or w (90s, 30m, 7d), not {text!r}")
    seconds = int(found.group(1)) * _UNITS[found.group(2) or "s"]
    if seconds <= 0:
        raise ValueError("a duration is longer than zero")
    return seconds


@dataclass(frozen=True, slots=True)
class BanInfo:
    """A user banned from a room (or, from an admin's ban, from the whole server).

    ``until`` None: until lifted. ``by`` and ``at``: who banned them and
    when (None where the server does not say, as for a server-wide ban).
    """

    user: str
    until: datetime | None
    reason: str | None = None
    by: str | None = None
    at: datetime | None = None


@dataclass(frozen=True, slots=True)
class MuteInfo:
    """A member who may read a room but not write in it until ``until``."""

    user: str
    until: datetime | None
    by: str | None = None
    at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RoomInfo:
    """A room's settings and roles, as ``GET /api/rooms/{room}`` shows them to the caller.

    ``title`` is the name shown (the room's name when none was set);
    ``slow_mode`` the seconds a member waits between two messages (0: off).
    ``members`` lists a private room's members (None for a public room).
    ``role``: the caller's (``owner``, ``moderator``, ``member``, ``admin``;
    None for a guest, or a registered user not in the room). ``muted_until``:
    the caller is muted until then. ``bans`` and ``mutes`` are shown to the
    owner, moderators and admins only (empty for others).
    """

    name: str
    title: str
    private: bool
    owner: str | None
    moderators: tuple[str, ...]
    topic: str = ""
    slow_mode: int = 0
    receipts: bool = True
    member_count: int | None = None
    members: tuple[str, ...] | None = None
    role: str | None = None
    muted_until: datetime | None = None
    bans: tuple[BanInfo, ...] = ()
    mutes: tuple[MuteInfo, ...] = ()

    @property
    def moderates(self) -> bool:
        """Whether the caller may moderate the room (owner, moderator or admin)."""
        return self.role in ("owner", "moderator", "admin")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One moderation action in a room's audit log.

    ``action``: ``remove``, ``ban``, ``unban``, ``mute``, ``unmute``,
    ``moderator``, ``unmoderator``, ``owner``, ``settings``,
    ``delete_message`` or ``delete_room``; ``target`` the user (or message
    id) acted on; ``detail`` what else the server recorded (``until``, the
    settings changed, a deleted message's ``author``).
    """

    id: int
    at: datetime | None
    by: str
    action: str
    target: str | None = None
    reason: str | None = None
    detail: Mapping[str, Any] = field(default_factory=lambda: _NO_DETAIL, hash=False)


@dataclass(frozen=True, slots=True)
class AuditPage:
    """A page of a room's audit log, newest first; ``has_more``: older entries exist."""

    entries: list[AuditEntry]
    has_more: bool

    @property
    def before(self) -> int | None:
        """What to pass as ``before`` for the next (older) page; None on the last."""
        return self.entries[-1].id if self.entries and self.has_more else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _names(value: object) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def _name(item: dict[str, Any], key: str) -> str:
    value = item[key]
    if not isinstance(value, str):
        raise TypeError(f"{key} is a string")
    return value


def ban_info(item: dict[str, Any]) -> BanInfo:
    """The :class:`BanInfo` of a ``ban`` object. Raises KeyError or TypeError without a user."""
    return BanInfo(
        _name(item, "user"),
        parse_time(item.get("until")),
        _text(item.get("reason")),
        _text(item.get("by")),
        parse_time(item.get("at")),
    )


def mute_info(item: dict[str, Any]) -> MuteInfo:
    """The :class:`MuteInfo` of a ``mute`` object. Raises KeyError or TypeError without a user."""
    return MuteInfo(
        _name(item, "user"),
        parse_time(item.get("until")),
        _text(item.get("by")),
        parse_time(item.get("at")),
    )


def room_info(item: dict[str, Any]) -> RoomInfo:
    """The :class:`RoomInfo` of a ``room`` object (``name``, or ``room`` as the frame has it).

    Raises:
        KeyError, TypeError: the object has no name, or a list of bans or
            mutes holds something else than objects with a user.
    """
    name = item.get("name", item.get("room"))
    if not isinstance(name, str):
        raise TypeError("a room has a name")
    members = item.get("members")
    slow = item.get("slow_mode")
    count = item.get("member_count")
    return RoomInfo(
        name=name,
        title=_text(item.get("title")) or name,
        private=item.get("private") is True,
        owner=_text(item.get("owner")),
        moderators=_names(item.get("moderators")),
        topic=str(item.get("topic") or ""),
        slow_mode=slow if type(slow) is int else 0,
        receipts=item.get("receipts") is not False,
        member_count=count if type(count) is int else None,
        members=_names(members) if isinstance(members, list) else None,
        role=_text(item.get("role")),
        muted_until=parse_time(item.get("muted_until")),
        bans=tuple(ban_info(b) for b in item.get("bans") or ()),
        mutes=tuple(mute_info(m) for m in item.get("mutes") or ()),
    )


def _audit_entry(item: dict[str, Any]) -> AuditEntry:
    entry_id = item["id"]
    if type(entry_id) is not int:
        raise TypeError("an audit entry's id is a number")
    detail = item.get("detail")
    return AuditEntry(
        entry_id,
        parse_time(item.get("at")),
        str(item.get("by") or ""),
        _name(item, "action"),
        _text(item.get("target")),
        _text(item.get("reason")),
        MappingProxyType(dict(detail)) if type(detail) is dict and detail else _NO_DETAIL,
    )


def audit_page(payload: dict[str, Any]) -> AuditPage:
    """The :class:`AuditPage` of ``GET /api/rooms/{room}/audit``'s answer.

    Raises:
        ValueError: the entries are not a list of entries with an id and action.
    """
    try:
        entries = payload["entries"]
        if not isinstance(entries, list):
            raise TypeError("entries is a list")
        return AuditPage([_audit_entry(e) for e in entries], payload.get("has_more") is True)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"malformed audit answer: {exc!r}") from None


def _iso(value: datetime | str) -> str:
    """A time for the server: UTC with milliseconds (a naive datetime is taken as UTC)."""
    if isinstance(value, str):
        return value
    when = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _until(
    until: datetime | str | None, for_seconds: int | None, *, required: bool
) -> dict[str, Any]:
    """The ``until`` or ``for`` of a ban or mute request."""
    if until is not None and for_seconds is not None:
        raise ValueError("give until or for_seconds, not both")
    if until is not None:
        return {"until": _iso(until)}
    if for_seconds is not None:
        if isinstance(for_seconds, bool) or not isinstance(for_seconds, int) or for_seconds <= 0:
            raise ValueError(f"for_seconds is a number of seconds above 0, not {for_seconds!r}")
        return {"for": for_seconds}
    if required:
        raise ValueError("a mute ends: give until or for_seconds")
    return {}


def _room_path(room: str, *rest: str) -> str:
    return "/".join(["/api/rooms", quoted(room), *(quoted(part) for part in rest)])


class ModerationMixin(SignInMixin):
    """The :class:`~roomcast.client.Client`'s room moderation and admin calls (HTTP).

    Each raises :class:`~roomcast.client.SendError` when the server refuses
    (``forbidden``: not yours to do; ``not_found``: no such room, or a
    private one you are not in; ``banned``; ``invalid_message``; ...), and
    :class:`OSError` when it cannot be reached.
    """

    if TYPE_CHECKING:

        def _forget_room(self, room: str) -> None: ...

    # -- rooms ---------------------------------------------------------------------

    async def room_info(self, room: str) -> RoomInfo:
        """The room's settings, roles and your role in it; bans and mutes if you moderate it.

        A guest (no token) sees public rooms. ``not_found`` for a private
        room you are not in; ``banned`` (with ``until``) if you are banned.
        """
        body = await self._api("GET", _room_path(room))
        return room_info(body["room"])

    async def update_room(
        self,
        room: str,
        *,
        topic: str | None = None,
        title: str | None = None,
        slow_mode: int | None = None,
        receipts: bool | None = None,
        owner: str | None = None,
    ) -> RoomInfo:
        """Change the room's settings (what is given; None keeps it); the room as it is now.

        ``topic`` (at most 500 characters; "" clears it) and ``slow_mode``
        (seconds between one member's messages, 0 to 3600; 0 is off): owner,
        moderators, admins. ``title`` (the name shown, at most 64
        characters; "" shows the name), ``receipts`` and ``owner`` (hand the
        room over: you become a moderator): the owner and admins. Every
        member gets a :class:`~roomcast.client.RoomUpdated`.

        Raises:
            ValueError: nothing to change.
        """
        given = {
            "topic": topic,
            "title": title,
            "slow_mode": slow_mode,
            "receipts": receipts,
            "owner": owner,
        }
        body = {key: value for key, value in given.items() if value is not None}
        if not body:
            raise ValueError("give at least one of topic, title, slow_mode, receipts, owner")
        answer = await self._api("PATCH", _room_path(room), body)
        return room_info(answer["room"])

    async def delete_room(self, room: str) -> None:
        """Delete the room and its messages for good (its owner, or an admin).

        Every member's connections get :class:`~roomcast.client.Removed`; the
        audit log keeps the room's entries.
        """
        await self._api("DELETE", _room_path(room))
        self._forget_room(room)

    async def set_moderator(self, room: str, user: str, on: bool = True) -> RoomInfo:
        """Make ``user`` a moderator of ``room`` (``on`` False: no longer); the room now.

        The owner and admins only.
        """
        method = "PUT" if on else "DELETE"
        answer = await self._api(method, _room_path(room, "moderators", user))
        return room_info(answer["room"])

    async def remove_member(self, room: str, user: str, reason: str | None = None) -> None:
        """Take ``user`` out of ``room`` now, on every device (owner, moderators, admins).

        From a private room they are no longer a member; from a public one
        it is a kick: they may join again. They get
        :class:`~roomcast.client.Removed` with ``reason``.
        """
        body = {"reason": reason} if reason else None
        await self._api("DELETE", _room_path(room, "members", user), body)

    async def leave_for_good(self, room: str) -> None:
        """Stop being a member of the private room ``room`` (``leave`` only leaves for now).

        Your other connections get :class:`~roomcast.client.Removed`, and
        this client stops following the room.

        Raises:
            ValueError: the client does not know who it is yet (not
                connected, and made without a username).
        """
        me = self.user or self.username
        if me is None:
            raise ValueError("connect first: the client does not know who you are yet")
        await self._api("DELETE", _room_path(room, "members", me))
        self._forget_room(room)

    async def ban(
        self,
        room: str,
        user: str,
        *,
        until: datetime | str | None = None,
        for_seconds: int | None = None,
        reason: str | None = None,
    ) -> BanInfo:
        """Ban ``user`` from ``room`` (taking them out now); the ban as stored.

        Until ``until`` (a datetime; naive is UTC), for ``for_seconds``, or
        (neither) until lifted. A banned moderator loses the role. Owner,
        moderators and admins; never the owner, a moderator (for a
        moderator) or an admin.

        Raises:
            ValueError: both ``until`` and ``for_seconds``, or a bad ``for_seconds``.
        """
        body = _until(until, for_seconds, required=False)
        if reason:
            body["reason"] = reason
        answer = await self._api("PUT", _room_path(room, "bans", user), body)
        return ban_info(answer["ban"])

    async def unban(self, room: str, user: str) -> None:
        """Lift ``user``'s ban from ``room`` (``not_found`` when they are not banned)."""
        await self._api("DELETE", _room_path(room, "bans", user))

    async def mute(
        self,
        room: str,
        user: str,
        *,
        until: datetime | str | None = None,
        for_seconds: int | None = None,
    ) -> MuteInfo:
        """Mute ``user`` in ``room``: they may read, not write, until ``until`` or for a while.

        At most 30 days. Their ``chat``, files, reactions and edits there
        are refused with ``muted`` (and ``until``).

        Raises:
            ValueError: neither or both of ``until`` and ``for_seconds``.
        """
        body = _until(until, for_seconds, required=True)
        answer = await self._api("PUT", _room_path(room, "mutes", user), body)
        return mute_info(answer["mute"])

    async def unmute(self, room: str, user: str) -> None:
        """Lift ``user``'s mute in ``room`` (``not_found`` when they are not muted)."""
        await self._api("DELETE", _room_path(room, "mutes", user))

    async def audit_page(
        self, room: str, *, before: int | None = None, limit: int | None = None
    ) -> AuditPage:
        """A page of ``room``'s moderation log, newest first (owner, moderators, admins).

        ``before``: an entry id, the entries older than it (the last page's
        :attr:`AuditPage.before`). ``limit``: 1 to 100 (the server's 50 by default).
        """
        asked = {"before": before, "limit": limit}
        query = "&".join(f"{key}={value}" for key, value in asked.items() if value is not None)
        path = _room_path(room, "audit") + (f"?{query}" if query else "")
        return audit_page(await self._api("GET", path))

    async def audit(self, room: str, *, limit: int | None = None) -> AsyncIterator[AuditEntry]:
        """Every entry of ``room``'s moderation log, newest first, page after page.

        ``limit``: the size of each page asked for. Pages are asked for as
        the iteration reaches them: stop iterating to stop asking.
        """
        before: int | None = None
        while True:
            page = await self.audit_page(room, before=before, limit=limit)
            for entry in page.entries:
                yield entry
            if page.before is None or (before is not None and page.before >= before):
                return
            before = page.before

    # -- admins ------------------------------------------------------------------------

    async def admin_rooms(self) -> list[RoomInfo]:
        """Every room of the server, public and private (admins only)."""
        answer = await self._api("GET", "/api/admin/rooms")
        return [room_info(item) for item in answer["rooms"]]

    async def admin_delete_room(self, room: str) -> None:
        """Delete any room (admins only); as :meth:`delete_room`."""
        await self._api("DELETE", f"/api/admin/rooms/{quoted(room)}")
        self._forget_room(room)

    async def admin_user(self, user: str) -> AccountInfo:
        """A user's account, with their server-wide ban if any (admins only)."""
        answer = await self._api("GET", f"/api/admin/users/{quoted(user)}")
        return account_info(answer["user"])

    async def admin_ban_user(
        self,
        user: str,
        *,
        until: datetime | str | None = None,
        for_seconds: int | None = None,
        reason: str | None = None,
    ) -> BanInfo:
        """Ban ``user`` from the whole server (admins only): every session ends at once.

        Until ``until``, for ``for_seconds``, or (neither) until lifted.
        """
        body = _until(until, for_seconds, required=False)
        if reason:
            body["reason"] = reason
        answer = await self._api("PUT", f"/api/admin/users/{quoted(user)}/ban", body)
        return ban_info(answer["ban"])

    async def admin_unban_user(self, user: str) -> None:
        """Lift ``user``'s server-wide ban (admins only)."""
        await self._api("DELETE", f"/api/admin/users/{quoted(user)}/ban")

    async def admin_reset_password(self, user: str, password: str | None = None) -> str:
        """Set ``user``'s password (None: the server makes one up); the password.

        Every session of theirs ends. Admins only.
        """
        body = {"password": password} if password is not None else {}
        answer = await self._api("POST", f"/api/admin/users/{quoted(user)}/password", body)
        return str(answer["password"])

    async def admin_set_admin(self, user: str, on: bool = True) -> None:
        """Make ``user`` an admin (``on`` False: no longer; their sessions end). Admins only."""
        await self._api("PUT" if on else "DELETE", f"/api/admin/users/{quoted(user)}/admin")

    async def admin_delete_user(self, user: str) -> None:
        """Delete ``user``'s account as :meth:`delete_account` does (admins only)."""
        await self._api("DELETE", f"/api/admin/users/{quoted(user)}")
