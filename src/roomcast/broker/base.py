"""The Broker interface: carry publications and presence between nodes.

A node delivers its own publications to its local members at once and
publishes them so the *other* nodes deliver them to theirs: the nodes that
subscribed to the room, or to the user, the publication is for (a node
subscribes to the rooms its connections are in and the names they use),
or every node for an order that names no room. Every
publication is stamped with the publishing node's id; a node ignores its
own echo (python-socketio's ``host_id``).

Presence is the broker's too: a node tells it when a user's first local
connection enters a room, or its last one leaves
(:meth:`Broker.presence_changed`), and the broker answers with
:meth:`BrokerEvents.on_presence` only when that makes the user join or leave
the room *in the whole service*, so each join and leave event is sent once,
by one node, however many nodes the user is connected to.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final, Protocol

__all__ = [
    "Broker",
    "BrokerEvents",
    "Members",
    "Publication",
    "decode_publication",
    "encode_publication",
]


@dataclass(frozen=True, slots=True)
class Publication:
    """A frame for a room's members (or a user's connections) on every node."""

    node_id: str
    room: str | None
    user: str | None
    frame: bytes
    skip_user: str | None = None
    #: The stored message's seq (in the room, or in ``user``'s inbox), when
    #: the frame carries one: receivers put such frames back in seq order.
    seq: int | None = None
    #: Not a frame but an order: ``user`` is a registered name now, so the
    #: nodes where guests use it close them (``frame`` is empty).
    name_claim: bool = False
    #: Not a frame but an order (``frame`` is its JSON: a member removed, a
    #: room's rules changed, sessions revoked). With neither ``room`` nor
    #: ``user`` it is for every node; with a room, only for the nodes with
    #: members there, in order with the room's frames; with a user, for the
    #: nodes with connections using the name.
    order: bool = False


@dataclass(frozen=True, slots=True)
class Members:
    """Who is in a room across the service: up to ``limit`` names, and how many in all."""

    names: list[str]
    count: int


class BrokerEvents(Protocol):
    """What a broker tells its node (the node implements it)."""

    def on_publication(self, publication: Publication) -> None:
        """Another node published ``publication``."""

    def on_presence(self, room: str, user: str, joined: bool, count: int) -> None:
        """``user`` joined (or left) ``room`` in the service; ``count`` users remain in it.

        Called on exactly one node per change: that node tells the room.
        """

    def on_resync(self) -> None:
        """The broker was cut off and is back: publications may have been missed."""

    def local_presence(self) -> list[tuple[str, str]]:
        """Every ``(room, user)`` with a connection on this node (to rebuild presence)."""


class Broker(Protocol):
    """Moves publications and presence between the nodes of one service."""

    async def start(self, node_id: str, events: BrokerEvents) -> None:
        """Begin delivering other nodes' publications and presence to ``events``.

        Raises:
            BrokerError: the broker cannot be reached.
        """

    def publish(self, publication: Publication) -> None:
        """Send ``publication`` to every other node; never blocks.

        The message is already stored when it is published, so a broker
        that cannot deliver it loses nothing: nodes catch up from the store
        when the broker is back (:meth:`BrokerEvents.on_resync`).
        """

    async def subscribe_room(self, room: str) -> None:
        """Receive ``room``'s publications from now on (a local member is in it).

        Returns once the broker is sure to deliver what is published after
        the return, so the caller may then read the room's position from the
        store and miss nothing. Never raises: a broker that is cut off
        subscribes when it is back, and then asks the node to catch up.
        """

    def unsubscribe_room(self, room: str) -> None:
        """Stop receiving ``room``'s publications (its last local member left)."""

    async def subscribe_user(self, user: str) -> None:
        """Receive what is published for ``user`` (any case) from now on; like
        :meth:`subscribe_room`."""

    def unsubscribe_user(self, user: str) -> None:
        """Stop receiving what is published for ``user`` (no local connection uses the name)."""

    def presence_changed(self, room: str, user: str, present: bool) -> None:
        """``user``'s first connection on this node entered ``room`` (or its last left)."""

    async def members(self, room: str, limit: int) -> Members:
        """The users in ``room`` on every node."""

    async def present(self, room: str, user: str) -> bool:
        """Whether ``user`` is in ``room`` on any node."""

    async def ping(self) -> None:
        """Raise :class:`~roomcast.exceptions.BrokerError` unless the broker answers."""

    async def close(self) -> None:
        """Leave presence, stop delivering and release resources."""


# -- the wire form of a publication ---------------------------------------------

#: kind (``r`` room, ``u`` user, ``n`` name claim, ``o`` order for every node
#: or a room, ``O`` order for a user), seq (-1 for none),
#: node id, target and skip-user lengths; then the three strings and the frame.
_HEADER: Final = struct.Struct("!cqBHH")
_NO_SEQ: Final = -1
_KINDS: Final = frozenset({b"r", b"u", b"n", b"o", b"O"})


def encode_publication(publication: Publication) -> bytes:
    """The bytes a broker carries for ``publication`` (see :func:`decode_publication`)."""
    if publication.order and publication.user is not None:
        kind, target = b"O", publication.user
    elif publication.order:
        kind, target = b"o", publication.room or ""
    elif publication.room is not None:
        kind, target = b"r", publication.room
    elif publication.user is not None and publication.name_claim:
        kind, target = b"n", publication.user
    elif publication.user is not None:
        kind, target = b"u", publication.user
    else:
        raise ValueError("a publication is for a room or a user, or an order")
    node = publication.node_id.encode()
    name = target.encode()
    skip = (publication.skip_user or "").encode()
    seq = _NO_SEQ if publication.seq is None else publication.seq
    header = _HEADER.pack(kind, seq, len(node), len(name), len(skip))
    return b"".join((header, node, name, skip, publication.frame))


def decode_publication(data: bytes) -> Publication:
    """The publication :func:`encode_publication` made.

    Raises:
        ValueError: ``data`` is not one (truncated, or from something else).
    """
    try:
        kind, seq, node_len, name_len, skip_len = _HEADER.unpack_from(data)
    except struct.error:
        raise ValueError("publication too short") from None
    start = _HEADER.size
    end = start + node_len + name_len + skip_len
    if kind not in _KINDS or seq < _NO_SEQ or len(data) < end or not node_len:
        raise ValueError("not a publication")
    try:
        node = data[start : start + node_len].decode()
        name = data[start + node_len : start + node_len + name_len].decode()
        skip = data[start + node_len + name_len : end].decode()
    except UnicodeDecodeError:
        raise ValueError("publication names are not UTF-8") from None
    if kind == b"o":
        return Publication(node, name or None, None, data[end:], order=True)
    if kind == b"O":
        return Publication(node, None, name, data[end:], order=True)
    return Publication(
        node,
        name if kind == b"r" else None,
        None if kind == b"r" else name,
        data[end:],
        skip or None,
        None if seq == _NO_SEQ else seq,
        name_claim=kind == b"n",
    )
