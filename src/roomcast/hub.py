"""The hub: this process's connections and who is in which room.

The hub knows only local connections. Its methods are synchronous and never
wait for a connection: :meth:`Hub.deliver` hands the same pre-built frame to
every member's transport and moves on, so one slow member costs the others
nothing (a member whose unsent data grows too large is closed by its own
transport, see ``server.WebSocketPeer.send``).

Invariant: a peer's ``send`` never adds or removes hub members while the hub
iterates a room; peers leave the hub only when their connection handler
ends, through :meth:`Hub.remove`.

A member that is still catching up on a room (a ``join`` replaying stored
messages) is *held*: frames for that room are kept aside, with their seq,
instead of being written, so the node can send them after the replay and
skip those the replay already covered. That is how a joining client gets
``joined``, then the stored messages, then the live ones, with no gap and
no repeat, whatever the store's latency.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Protocol

from .model import UserInfo
from .protocol.codes import CloseCode
from .protocol.session import Session

__all__ = ["Held", "Hub", "Peer"]


class Peer(Protocol):
    """One connection, as the hub and the node see it."""

    session: Session

    def send(self, frame: bytes) -> None:
        """Queue a pre-built WebSocket frame for this connection; never blocks."""

    def close(self, code: CloseCode, reason: str) -> None:
        """Start closing this connection with ``code``; never blocks."""

    async def drain(self) -> bool:
        """Wait until little is left unsent; False when the connection is gone."""


class Held:
    """Frames kept aside for a member that is catching up on a room."""

    __slots__ = ("frames", "max_bytes", "overflowed", "size")

    def __init__(self, max_bytes: int) -> None:
        self.frames: list[tuple[int | None, bytes]] = []
        self.size = 0
        self.max_bytes = max_bytes
        #: More than ``max_bytes`` arrived: the frames were dropped, and the
        #: node must read the room's messages from the store instead.
        self.overflowed = False

    def add(self, seq: int | None, frame: bytes) -> None:
        if self.overflowed:
            return
        self.size += len(frame)
        if self.size > self.max_bytes:
            self.reset()
            self.overflowed = True
            return
        self.frames.append((seq, frame))

    def reset(self) -> None:
        self.frames = []
        self.size = 0
        self.overflowed = False


class Hub:
    """Local connections, room membership and fan-out."""

    __slots__ = ("_cased", "_guests", "_held", "_names", "_room_names", "_rooms", "peers")

    def __init__(self) -> None:
        self.peers: dict[str, Peer] = {}
        self._rooms: dict[str, dict[Peer, None]] = {}
        self._room_names: dict[str, Counter[str]] = {}
        #: Connections by the exact name they use, guests and users alike.
        self._names: dict[str, dict[Peer, None]] = {}
        #: Guest connections with a nickname, by lower-cased name: a registered
        #: name is unique in any case, so registering ``Carol`` evicts guest
        #: ``carol``.
        self._guests: dict[str, dict[Peer, None]] = {}
        #: Lower-cased name -> connections using it with capitals (most names
        #: have none, so this costs nothing for them): with ``_names`` it says
        #: whether a name is used in any case.
        self._cased: dict[str, int] = {}
        self._held: dict[str, dict[Peer, Held]] = {}

    # -- connections ---------------------------------------------------------

    def add(self, peer: Peer) -> None:
        """Register a new connection (its session must have a user or none yet)."""
        self.peers[peer.session.id] = peer
        user = peer.session.user
        if user is not None:
            self._add_name(user, peer)

    def remove(self, peer: Peer, rooms: Iterable[str]) -> list[tuple[str, bool]]:
        """Forget a connection in ``rooms``; return ``(room, user_left_room)`` for each."""
        self.peers.pop(peer.session.id, None)
        user = peer.session.user
        if user is not None:
            self._drop_name(user, peer)
        return [(room, self.leave(room, peer)) for room in rooms]

    def name_in_use(self, name: str) -> bool:
        """Whether a local connection is using ``name``."""
        return name in self._names

    def connections_of(self, name: str) -> int:
        """How many local connections are using ``name``."""
        conns = self._names.get(name)
        return 0 if conns is None else len(conns)

    def name_used(self, name: str) -> bool:
        """Whether a local connection uses ``name`` in any case (it hears the name's channel)."""
        key = name.lower()
        return key in self._names or key in self._cased

    def user_online(self, name: str) -> bool:
        """Whether registered user ``name`` has a local connection (guests do not count)."""
        conns = self._names.get(name)
        return conns is not None and any(_registered(peer) for peer in conns)

    def online_users(self) -> list[str]:
        """The registered users with a local connection."""
        return [name for name in self._names if self.user_online(name)]

    def guests_named(self, name: str) -> list[Peer]:
        """The local guest connections whose name is ``name`` in any case."""
        conns = self._guests.get(name.lower())
        return list(conns) if conns else []

    def rename(self, peer: Peer, old: UserInfo | None, new: UserInfo) -> None:
        """A connection changes user (``auth``): call before its session does."""
        if old is not None:
            self._drop_name(old, peer)
        self._add_name(new, peer)
        for room in peer.session.rooms:
            names = self._room_names[room]
            if old is not None:
                names[old.name] -= 1
                if names[old.name] <= 0:
                    del names[old.name]
            names[new.name] += 1

    def _add_name(self, user: UserInfo, peer: Peer) -> None:
        conns = self._names.setdefault(user.name, {})
        if peer not in conns:
            conns[peer] = None
            lower = user.name.lower()
            if lower != user.name:
                self._cased[lower] = self._cased.get(lower, 0) + 1
        key = _claimable(user)
        if key is not None:
            self._guests.setdefault(key, {})[peer] = None

    def _drop_name(self, user: UserInfo, peer: Peer) -> None:
        lower = user.name.lower()
        if lower != user.name and peer in self._names.get(user.name, ()):
            left = self._cased[lower] - 1
            if left:
                self._cased[lower] = left
            else:
                del self._cased[lower]
        for index, key in ((self._names, user.name), (self._guests, _claimable(user))):
            if key is None:
                continue
            conns = index.get(key)
            if conns is not None:
                conns.pop(peer, None)
                if not conns:
                    del index[key]

    # -- rooms -----------------------------------------------------------------

    def join(self, room: str, peer: Peer) -> bool:
        """Add ``peer`` to ``room``; True when it is its user's first connection there."""
        members = self._rooms.setdefault(room, {})
        if peer in members:
            return False
        members[peer] = None
        user = peer.session.user
        if user is None:
            return False
        names = self._room_names.setdefault(room, Counter())
        names[user.name] += 1
        return names[user.name] == 1

    def leave(self, room: str, peer: Peer) -> bool:
        """Remove ``peer`` from ``room``; True when its user has no connection left there."""
        self.release(room, peer)
        members = self._rooms.get(room)
        if members is None or peer not in members:
            return False
        del members[peer]
        if not members:
            del self._rooms[room]
        user = peer.session.user
        names = self._room_names.get(room)
        if user is None or names is None:
            return False
        names[user.name] -= 1
        if names[user.name] > 0:
            return False
        del names[user.name]
        if not names:
            del self._room_names[room]
        return True

    def hold(self, room: str, peer: Peer, max_bytes: int) -> Held:
        """Keep ``room``'s frames for ``peer`` aside until :meth:`release`."""
        held = Held(max_bytes)
        self._held.setdefault(room, {})[peer] = held
        return held

    def release(self, room: str, peer: Peer) -> Held | None:
        """Stop holding ``room``'s frames for ``peer``; return what was kept."""
        holds = self._held.get(room)
        if holds is None:
            return None
        held = holds.pop(peer, None)
        if not holds:
            del self._held[room]
        return held

    def members(self, room: str, limit: int | None = None) -> list[str]:
        """The names of the users in ``room`` (at most ``limit`` of them)."""
        names = self._room_names.get(room)
        if not names:
            return []
        if limit is None or len(names) <= limit:
            return list(names)
        return [name for name, _ in zip(names, range(limit), strict=False)]

    def member_count(self, room: str) -> int:
        """How many distinct users are in ``room``."""
        names = self._room_names.get(room)
        return len(names) if names else 0

    def has_members(self, room: str) -> bool:
        """Whether any local connection is in ``room``."""
        return room in self._rooms

    def connections_in(self, room: str, name: str) -> int:
        """How many local connections of user ``name`` are in ``room``."""
        names = self._room_names.get(room)
        return names.get(name, 0) if names else 0

    def presence(self) -> list[tuple[str, str]]:
        """Every ``(room, user)`` with a local connection."""
        return [(room, name) for room, names in self._room_names.items() for name in names]

    def rooms(self) -> dict[str, int]:
        """Every room with a local member, with its number of users."""
        return {room: len(names) for room, names in self._room_names.items()}

    # -- fan-out -------------------------------------------------------------

    def deliver(
        self, room: str, frame: bytes, *, seq: int | None = None, skip_user: str | None = None
    ) -> int:
        """Write ``frame`` to every member of ``room``; return how many got it.

        ``seq`` is the stored message's seq, if the frame carries one: a held
        member gets the frame later only if its replay did not cover it.
        """
        members = self._rooms.get(room)
        if not members:
            return 0
        holds = self._held.get(room)
        if skip_user is None and holds is None:
            for peer in members:
                peer.send(frame)
            return len(members)
        sent = 0
        for peer in members:
            if skip_user is not None:
                user = peer.session.user
                if user is not None and user.name == skip_user:
                    continue
            held = holds.get(peer) if holds is not None else None
            if held is None:
                peer.send(frame)
            else:
                held.add(seq, frame)
            sent += 1
        return sent

    def send_to_user(self, name: str, frame: bytes, *, skip: Peer | None = None) -> int:
        """Write ``frame`` to every local connection signed in as registered user ``name``
        (but ``skip``).

        A guest using the same name gets nothing: what is addressed to a
        user (direct messages, their files) is that user's alone.
        """
        conns = self._names.get(name)
        if not conns:
            return 0
        sent = 0
        for peer in conns:
            if peer is not skip and _registered(peer):
                peer.send(frame)
                sent += 1
        return sent


def _claimable(user: UserInfo) -> str | None:
    """The key of a guest whose name a user could register, or None.

    Registered names never start with ``guest-``, so the generated guest
    names are not indexed: the index costs only guests with a nickname
    (measured: indexing every guest added 0.3 KB to an idle connection).
    """
    if not user.guest:
        return None
    key = user.name.lower()
    return None if key.startswith("guest-") else key


def _registered(peer: Peer) -> bool:
    user = peer.session.user
    return user is not None and not user.guest
