"""The in-process broker: nodes in one process share a :class:`MemoryBus`.

One ``roomcast serve`` has one node, so its broker has nobody to tell; tests
put several nodes on one bus to check the cross-node path without Redis.
The bus routes as Redis does (a room's publications to the nodes subscribed
to the room, a user's to the nodes subscribed to the name in any case,
orders without a room to every node) and keeps presence the way Redis does:
for each room and user, the nodes the user is connected to.
"""

from __future__ import annotations

from .base import BrokerEvents, Members, Publication

__all__ = ["MemoryBroker", "MemoryBus"]


class MemoryBus:
    """Connects the memory brokers of the nodes in one process."""

    def __init__(self) -> None:
        self.nodes: dict[str, BrokerEvents] = {}
        #: node id -> the channels it subscribed to (``r:ROOM``, ``u:user``).
        self.subscriptions: dict[str, set[str]] = {}
        #: room -> user -> the nodes where the user is in the room.
        self.presence: dict[str, dict[str, set[str]]] = {}


class MemoryBroker:
    """A broker whose other nodes live in the same process."""

    def __init__(self, bus: MemoryBus | None = None) -> None:
        self._bus = bus if bus is not None else MemoryBus()
        self._node_id: str | None = None
        self._events: BrokerEvents | None = None

    async def start(self, node_id: str, events: BrokerEvents) -> None:
        self._node_id = node_id
        self._events = events
        self._bus.nodes[node_id] = events
        self._bus.subscriptions[node_id] = set()

    def publish(self, publication: Publication) -> None:
        channel = _channel(publication)
        subscriptions = self._bus.subscriptions
        for node_id, events in list(self._bus.nodes.items()):
            if node_id != publication.node_id and (
                channel is None or channel in subscriptions.get(node_id, ())
            ):
                events.on_publication(publication)

    async def subscribe_room(self, room: str) -> None:
        self._channels().add(f"r:{room}")

    def unsubscribe_room(self, room: str) -> None:
        self._channels().discard(f"r:{room}")

    async def subscribe_user(self, user: str) -> None:
        self._channels().add(f"u:{user.lower()}")

    def unsubscribe_user(self, user: str) -> None:
        self._channels().discard(f"u:{user.lower()}")

    def _channels(self) -> set[str]:
        if self._node_id is None:
            return set()  # not started, or closed: nothing to route to it
        return self._bus.subscriptions.setdefault(self._node_id, set())

    def presence_changed(self, room: str, user: str, present: bool) -> None:
        node, events = self._node_id, self._events
        if node is None or events is None:
            return
        users = self._bus.presence.setdefault(room, {})
        nodes = users.setdefault(user, set())
        if present:
            first = not nodes
            nodes.add(node)
            if first:
                events.on_presence(room, user, True, len(users))
            return
        if node not in nodes:
            return
        nodes.discard(node)
        if not nodes:
            del users[user]
            if not users:
                del self._bus.presence[room]
            events.on_presence(room, user, False, len(users))

    async def members(self, room: str, limit: int) -> Members:
        users = self._bus.presence.get(room, {})
        return Members(list(users)[:limit], len(users))

    async def present(self, room: str, user: str) -> bool:
        return user in self._bus.presence.get(room, {})

    async def ping(self) -> None:
        pass

    async def close(self) -> None:
        node, events = self._node_id, self._events
        if node is None or events is None:
            return
        # The node's users leave their rooms; the node tells the rooms.
        for room, users in list(self._bus.presence.items()):
            for user in [user for user, nodes in users.items() if node in nodes]:
                self.presence_changed(room, user, False)
        self._bus.nodes.pop(node, None)
        self._bus.subscriptions.pop(node, None)
        self._node_id = self._events = None


def _channel(publication: Publication) -> str | None:
    """The channel ``publication`` goes to, None for every node (an order without a room)."""
    if publication.room is not None:
        return f"r:{publication.room}"
    if publication.user is not None:
        return f"u:{publication.user.lower()}"
    return None
