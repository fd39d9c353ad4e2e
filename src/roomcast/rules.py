"""Each room's rules as this node knows them: bans, mutes, slow mode, who is exempt.

Joining, reading and every message sent check them, so they are kept in
memory: a chat must not wait for a store read to learn that its sender is
not muted. A room's rules are read once, when this node first needs them,
and read again when any node changes them (the ``rules`` order, which the
node that changed them applies before it answers). A broker that missed
orders (:meth:`RulesBook.clear` on resync) costs one read per room in use.

Names are compared in lower case: registered names are unique in any case,
and a guest cannot take a registered name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Final

from .model import RoomRules
from .store.base import Store

__all__ = ["MAX_CACHED_ROOMS", "NO_RULES", "RulesBook"]

#: Rooms whose rules are kept at once. Past it the book forgets those no
#: local connection is in (a history reader's room is read again next time):
#: about 200 bytes a room without bans, so the cap bounds memory, not speed.
MAX_CACHED_ROOMS: Final = 10_000

#: A room nobody moderates: nothing to check.
NO_RULES: Final = RoomRules()


class RulesBook:
    """The rules of the rooms this node uses, read once and kept current by orders.

    Args:
        store: where rooms' rules are kept.
        in_use: the rooms this node's connections are in (kept past the cap).
    """

    def __init__(self, store: Store, in_use: Callable[[], Iterable[str]]) -> None:
        self._store = store
        self._in_use = in_use
        #: Room -> its rules, names lower-cased.
        self._rules: dict[str, RoomRules] = {}
        #: Room -> the read under way, so concurrent joins read once.
        self._loading: dict[str, asyncio.Future[RoomRules]] = {}
        #: Rooms changed while their read was under way: that read is not kept.
        self._stale: set[str] = set()

    def cached(self, room: str) -> RoomRules | None:
        """The room's rules if this node has them now (the send path's question)."""
        return self._rules.get(room)

    async def get(self, room: str, now_ms: int) -> RoomRules:
        """The room's rules, read from the store unless kept already."""
        rules = self._rules.get(room)
        if rules is not None:
            return rules
        loading = self._loading.get(room)
        if loading is not None:
            return await asyncio.shield(loading)
        future: asyncio.Future[RoomRules] = asyncio.get_running_loop().create_future()
        self._loading[room] = future
        self._stale.discard(room)
        try:
            rules = _lowered(await self._store.room_rules(room, now_ms))
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # read here: a lone reader must not log it as lost
            raise
        finally:
            self._loading.pop(room, None)
        if room not in self._stale:
            if len(self._rules) >= MAX_CACHED_ROOMS:
                self._trim()
            self._rules[room] = rules
        self._stale.discard(room)
        future.set_result(rules)
        return rules

    def forget(self, room: str) -> None:
        """The room's rules changed somewhere: read them again when next needed."""
        self._rules.pop(room, None)
        if room in self._loading:
            self._stale.add(room)

    def clear(self) -> None:
        """Orders may have been missed: forget every room's rules."""
        self._rules.clear()
        self._stale.update(self._loading)

    def _trim(self) -> None:
        """Forget the rooms no local connection is in."""
        keep = set(self._in_use())
        for room in [room for room in self._rules if room not in keep]:
            del self._rules[room]


def _lowered(rules: RoomRules) -> RoomRules:
    if not rules.slow_mode and not rules.exempt and not rules.mutes and not rules.bans:
        return NO_RULES
    return RoomRules(
        slow_mode=rules.slow_mode,
        exempt=frozenset(name.lower() for name in rules.exempt),
        mutes={name.lower(): until for name, until in rules.mutes.items()},
        bans={name.lower(): ban for name, ban in rules.bans.items()},
    )
