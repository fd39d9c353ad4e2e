"""Who is in which room, on this node and on every node.

The hub knows this node's connections and their rooms; the broker tells the
other nodes and keeps the cluster-wide presence. :class:`Membership` is
where the two meet: it changes a connection's rooms and tells the broker
when a user arrives in or leaves a room, and it answers "who is in this
room" for the whole cluster, falling back to this node's members while the
broker is unreachable. A connection's rooms are known twice on purpose: in
its session (so the pure protocol layer decides ``not_member`` and the
room cap alone) and in the hub's index (for fan-out); this is the one place
that changes either, so they never disagree.
"""

from __future__ import annotations

import logging
from typing import Final

from .broker.base import Broker, Publication
from .config import Limits
from .exceptions import BrokerError
from .hub import Hub, Peer
from .model import UserInfo
from .protocol.messages import PresenceEvent, encode
from .protocol.wsframe import text_frame

__all__ = ["ONLINE", "Membership"]

#: The presence "room" every registered user with an open connection is in,
#: on whichever node: whom notifications skip. Room names never start with ``@``.
ONLINE: Final = "@online"

logger = logging.getLogger("roomcast.node")


class Membership:
    """Rooms' members here and everywhere, and the presence events between them.

    Args:
        node_id: this node's id (its own publications come back to it).
        hub: this node's connections and their rooms.
        broker: the cluster-wide presence and the other nodes.
        limits: ``presence_limit``, past which rooms list no names.
    """

    def __init__(self, node_id: str, hub: Hub, broker: Broker, limits: Limits) -> None:
        self._node_id = node_id
        self._hub = hub
        self._broker = broker
        self._limits = limits

    # -- one connection's rooms -------------------------------------------------

    def connected(self, peer: Peer) -> None:
        """A connection opened: it is its user's, and the user may have just come online."""
        user = peer.session.user
        first = user is not None and not user.guest and not self._hub.user_online(user.name)
        self._hub.add(peer)
        if first:
            assert user is not None
            self.announce(ONLINE, user.name, True)

    def join(self, peer: Peer, room: str) -> bool:
        """Put ``peer`` in ``room``; True when it is its user's first connection there.

        The caller announces the arrival (:meth:`announce`) when the member
        may see live frames, so that the order of events stays as the room's.
        """
        peer.session.joined(room)
        return self._hub.join(room, peer)

    def announce(self, room: str, user: str, joined: bool) -> None:
        """Tell every node that ``user`` arrived in or left ``room``."""
        self._broker.presence_changed(room, user, joined)

    def leave(self, peer: Peer, room: str) -> None:
        """Take ``peer`` out of ``room``, telling every node if its user is gone from it."""
        user = peer.session.user
        assert user is not None
        peer.session.left(room)
        if self._hub.leave(room, peer):
            self.announce(room, user.name, False)

    def remove(self, peer: Peer) -> list[str]:
        """Forget a closed connection; the rooms it was in."""
        user = peer.session.user
        rooms = []
        for room, user_left in self._hub.remove(peer, peer.session.closed()):
            if user_left and user is not None:
                self.announce(room, user.name, False)
            rooms.append(room)
        if user is not None and not user.guest and not self._hub.user_online(user.name):
            self.announce(ONLINE, user.name, False)
        return rooms

    def rename(self, peer: Peer, old: UserInfo | None, new: UserInfo) -> None:
        """Move ``peer`` from ``old`` to ``new`` in its rooms, with the presence events due."""
        rooms = peer.session.rooms
        hub = self._hub
        old_name = old.name if old is not None else None
        old_present = set()
        if old_name is not None and old_name != new.name:
            old_present = {r for r in rooms if hub.connections_in(r, old_name) == 1}
        new_present = {r for r in rooms if hub.connections_in(r, new.name) == 0}
        was_online = old is not None and not old.guest
        comes_online = not new.guest and not hub.user_online(new.name)
        hub.rename(peer, old, new)
        if was_online and old is not None and not hub.user_online(old.name):
            self.announce(ONLINE, old.name, False)
        if comes_online:
            self.announce(ONLINE, new.name, True)
        if old_name is not None and old_name != new.name:
            for room in sorted(old_present):
                self.announce(room, old_name, False)
        for room in sorted(new_present):
            self.announce(room, new.name, True)

    # -- reads -------------------------------------------------------------------

    async def members(self, room: str) -> tuple[list[str], int]:
        """The users in ``room`` on every node (at most ``presence_limit`` names), and how many.

        This node's own members count even before the broker has them, and
        are all that is listed while the broker is unreachable.
        """
        limit = self._limits.presence_limit
        local = self._hub.members(room)
        try:
            found = await self._broker.members(room, limit)
        except BrokerError as exc:
            # Chat goes on without the broker: list who is here.
            logger.warning("presence of %s from this node only: %s", room, exc)
            return local[:limit], len(local)
        if found.count > len(found.names) or set(found.names).issuperset(local):
            names, count = found.names, found.count
        else:
            merged = dict.fromkeys([*found.names, *local])
            names, count = list(merged), len(merged)
        return names[:limit], max(count, len(local))

    async def member_count(self, room: str) -> int:
        """How many users are in ``room`` on every node."""
        return (await self.members(room))[1]

    def local_rooms(self) -> list[str]:
        """The rooms with a member on this node."""
        return list(self._hub.rooms())

    def local_presence(self) -> list[tuple[str, str]]:
        """Every ``(room, user)`` with a connection on this node (and :data:`ONLINE`)."""
        return [*self._hub.presence(), *((ONLINE, name) for name in self._hub.online_users())]

    async def online(self, user: str) -> bool:
        """Whether registered user ``user`` has an open connection on any node.

        False while the broker cannot say: better a notification too many than one missed.
        """
        if self._hub.user_online(user):
            return True
        try:
            return await self._broker.present(ONLINE, user)
        except BrokerError as exc:
            logger.warning("cannot tell whether %s is online: %s", user, exc)
            return False

    # -- the broker's presence events ----------------------------------------------

    def presence_changed(self, room: str, user: str, joined: bool, count: int) -> None:
        """Tell ``room``'s members on every node that ``user`` joined or left it."""
        if count > self._limits.presence_limit or room == ONLINE:
            return
        event = PresenceEvent(room, user, "join" if joined else "leave")
        frame = text_frame(encode(event))
        self._hub.deliver(room, frame, skip_user=user)
        self._broker.publish(Publication(self._node_id, room, None, frame, skip_user=user))
