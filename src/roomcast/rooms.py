"""The rules of rooms: who may be in one, who may create one or add members.

Both edges call these: the WebSocket side (``join``, ``history``,
``presence``, files) through the node, the HTTP API for the room routes. A
refusal is a :class:`~roomcast.exceptions.DomainError`; each edge turns it
into its own error form.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Final, Protocol

from .exceptions import Banned, Forbidden, InvalidRequest, NotFound, RoomExists, UnknownUser
from .model import FOREVER_MS, Ban, RoomAccess, UserInfo
from .protocol.messages import LOBBY, format_timestamp, now_ms, valid_room
from .rules import RulesBook
from .store.base import Store

__all__ = ["MAX_MEMBERS", "Occupancy", "Rooms"]

#: Most members one request may name (creating a room or adding to one):
#: each is one store read.
MAX_MEMBERS: Final = 1000


class Occupancy(Protocol):
    """Who is in rooms now, as the node's membership knows it (every node)."""

    def local_rooms(self) -> Iterable[str]:
        """The rooms with a member on this node."""

    async def member_count(self, room: str) -> int:
        """How many users are in ``room`` on every node."""


class Rooms:
    """Room access and the room lifecycle.

    Args:
        store: where rooms, their owners and members, and users are kept.
        occupancy: who is in which room now (a room in use exists even
            before it has a stored message).
        rules: each room's bans (and mutes, slow mode), kept in memory.
    """

    def __init__(self, store: Store, occupancy: Occupancy, rules: RulesBook) -> None:
        self._store = store
        self._occupancy = occupancy
        self.rules = rules

    # -- access ------------------------------------------------------------------

    async def may_access(self, user: UserInfo, room: str) -> bool:
        """Whether ``user`` may join, read and post in ``room``.

        Public rooms are open to everyone not banned from them; a private
        room to its owner and members, who are registered users. Admins
        may enter any room.
        """
        return await self.refusal(user, room) is None

    async def check_access(self, user: UserInfo, room: str) -> None:
        """Raise :class:`Forbidden` (:class:`Banned` for a ban) unless ``user`` may join,
        read and post in ``room``."""
        refusal = await self.refusal(user, room)
        if refusal is not None:
            raise refusal

    async def refusal(self, user: UserInfo, room: str) -> Forbidden | None:
        """Why ``user`` may not be in ``room``, or None when they may."""
        refusal, _ = await self._judge(user, room)
        return refusal

    async def _judge(self, user: UserInfo, room: str) -> tuple[Forbidden | None, RoomAccess | None]:
        """Why ``user`` may not be in ``room`` (or None), and the room's stored access."""
        ban = await self.ban_of(user, room)
        if ban is not None:
            return banned_from(room, ban), None
        if room == LOBBY:
            return None, None
        access = await self._store.room_access(room)
        if user.admin or access is None or not access.private:
            return None, access
        if not user.guest and access.allows(user.name):
            return None, access
        return Forbidden(f"{room} is a private room"), access

    async def ban_of(self, user: UserInfo, room: str) -> Ban | None:
        """``user``'s ban from ``room`` if it has not ended (admins are never banned)."""
        if user.admin:
            return None
        now = now_ms()
        ban = (await self.rules.get(room, now)).bans.get(user.name.lower())
        return ban if ban is not None and ban.until_ms > now else None

    async def enter(self, user: UserInfo, room: str) -> None:
        """Check that ``user`` may join ``room``; a registered user who is first into a
        public room nobody stored yet becomes its owner.

        Raises:
            Forbidden: a private room ``user`` is not in.
            Banned: ``user`` is banned from ``room``.
        """
        refusal, access = await self._judge(user, room)
        if refusal is not None:
            raise refusal
        if user.guest or room == LOBBY:
            return
        if access is None and await self._occupancy.member_count(room) == 0:
            # It has no messages either (the store checks): this join creates it.
            await self._store.claim_room(room, user.name, now_ms())

    # -- listing -----------------------------------------------------------------

    async def visible(self, user: UserInfo | None) -> list[RoomAccess]:
        """Every room ``user`` may see, by name: public ones, and private ones it is in.

        A room with members on this node that the store does not list is a
        public room with no message yet, or a private room the caller is not
        in: the store tells which in one read for all of them.
        """
        name = user.name if user is not None and not user.guest else None
        rooms = {access.name: access for access in await self._store.list_rooms(name)}
        unlisted = [room for room in self._occupancy.local_rooms() if room not in rooms]
        known = await self._store.known_rooms(unlisted)
        for room in unlisted:
            if room not in known:
                rooms[room] = RoomAccess(room, False, None, frozenset())
        rooms.setdefault(LOBBY, RoomAccess(LOBBY, False, None, frozenset()))
        return [rooms[room] for room in sorted(rooms)]

    # -- changes -----------------------------------------------------------------

    async def create(
        self, owner: UserInfo, name: str, *, private: bool, members: list[str]
    ) -> RoomAccess:
        """Create ``name`` owned by ``owner``, with ``members`` (registered users).

        Raises:
            Forbidden: ``owner`` is a guest.
            InvalidRequest: ``name`` is not a room name.
            UnknownUser: a member is not registered.
            RoomExists: the room is stored, or in use (the lobby always is).
        """
        if owner.guest:
            raise Forbidden("rooms are created by registered users")
        if not valid_room(name):
            raise InvalidRequest("name must match [a-z0-9][a-z0-9_-]{0,63}")
        found = await self.registered(members)
        if name == LOBBY or await self._occupancy.member_count(name) > 0:
            raise RoomExists(f"{name} exists already")
        if not await self._store.create_room(
            name, owner=owner.name, private=private, members=found
        ):
            raise RoomExists(f"{name} exists already")
        return RoomAccess(name, private, owner.name, found)

    async def add_members(self, user: UserInfo, room: str, names: list[str]) -> RoomAccess:
        """Add registered users to the private room ``room``; its owner only.

        Raises:
            InvalidRequest: no name given.
            NotFound: there is no private room ``room``.
            Forbidden: ``user`` is not the owner.
            UnknownUser: a name is not registered.
        """
        if not names:
            raise InvalidRequest("members must name at least one user")
        access = await self._store.room_access(room)
        if access is None or not access.private:
            raise NotFound(f"there is no private room {room}")
        if user.guest or access.owner != user.name:
            raise Forbidden(f"only the owner of {room} may add members")
        members = await self.registered(names)
        await self._store.add_room_members(room, members)
        return RoomAccess(room, True, access.owner, access.members | members)

    async def set_receipts(self, user: UserInfo, room: str, on: bool) -> RoomAccess:
        """Turn read receipts in ``room`` on or off; its owner only.

        Raises:
            NotFound: there is no stored room ``room`` (or a private one ``user`` is not in).
            Forbidden: ``user`` is not its owner (a room made by joining it has none).
        """
        access = await self._store.room_access(room)
        if access is None or (access.private and (user.guest or not access.allows(user.name))):
            raise NotFound(f"there is no room {room}")
        if user.guest or access.owner != user.name:
            raise Forbidden(f"only the owner of {room} may change its receipts")
        await self._store.set_room_receipts(room, on)
        return replace(access, receipts=on)

    async def registered(self, names: list[str]) -> frozenset[str]:
        """The names as registered (their own letter case).

        Raises:
            InvalidRequest: more than :data:`MAX_MEMBERS` names.
            UnknownUser: the first name that is not registered.
        """
        if len(names) > MAX_MEMBERS:
            raise InvalidRequest(f"at most {MAX_MEMBERS} members at once")
        found = set()
        for name in names:
            user = await self._store.get_user(name)
            if user is None:
                raise UnknownUser(f"there is no user {name}")
            found.add(user.name)
        return frozenset(found)


def banned_from(room: str, ban: Ban) -> Banned:
    """The refusal for a banned user, saying until when and why."""
    until = None if ban.until_ms >= FOREVER_MS else ban.until_ms
    when = "until it is lifted" if until is None else f"until {format_timestamp(until)}"
    why = f": {ban.reason}" if ban.reason else ""
    return Banned(f"you are banned from {room} {when}{why}", until_ms=until, reason=ban.reason)
