"""Search: the messages a user may read that match a query, for both edges.

What a user may read is decided by the store at the moment of each search,
from its own rows (public rooms, the private rooms the user owns or belongs
to now, their own direct conversations), never from what a connection has
joined: a member taken out of a private room stops finding its messages
with their next search, on every node. The store's engine matches and
orders; the snippet and its highlights are made here, the same for every
store (:func:`roomcast.query.snippet`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Final

from .exceptions import Forbidden, TooFrequent
from .metrics import Metrics
from .model import UserInfo
from .protocol.messages import SearchReply, SearchRequest
from .query import parse_query, snippet
from .ratelimit import KeyedBuckets
from .rooms import Rooms
from .store.base import SearchFilter, Store

__all__ = ["SEARCH_BURST", "SEARCH_RATE", "MessageSearch"]

#: Searches a user may make at once, then how many a second, over all their
#: connections and the HTTP API on a node. A search reads the index and ranks
#: a page; a search box that asks as the user types stays well inside this.
SEARCH_BURST: Final = 10
SEARCH_RATE: Final = 5.0
#: Users whose search rate is tracked at once.
SEARCHERS_TRACKED: Final = 10_000


class MessageSearch:
    """Full-text search over what each user may read.

    Args:
        store: where the messages and their index are.
        rooms: who may read which room (a search of one room checks it first).
        metrics: where the time of each search is counted.
        clock: monotonic seconds, for the rate of searches.
    """

    def __init__(
        self,
        store: Store,
        rooms: Rooms,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        #: Where the messages and their full-text index are.
        self._store = store
        #: Room access, for a search of one room.
        self._rooms = rooms
        #: Each user's searches (a token bucket per name).
        self._rates = KeyedBuckets(SEARCH_RATE, SEARCH_BURST, SEARCHERS_TRACKED)
        #: Counts each search's time.
        self._metrics = metrics
        self._clock = clock

    async def search(self, user: UserInfo, request: SearchRequest) -> SearchReply:
        """A page of the messages ``user`` may read that match ``request``.

        Raises:
            TooFrequent: past the user's rate of searches.
            InvalidRequest: a query that cannot be searched, or a cursor
                that is not this search's.
            Forbidden: a guest asking for direct messages; a private room
                ``user`` is not in.
            UnknownUser: ``with`` names no registered user.
            BackendError: the store failed.
        """
        wait = self._rates.take(user.name, self._clock())
        if wait:
            raise TooFrequent("too many searches; wait a moment", retry_after=wait)
        query = parse_query(request.q)
        if request.direct and user.guest:
            raise Forbidden("direct messages need a registered user")
        if request.room is not None:
            await self._rooms.check_access(user, request.room)
        peer = None
        if request.peer is not None:
            [peer] = await self._rooms.registered([request.peer])
        sender = request.sender
        if sender is not None:
            # A registered name in any case, as registered; a guest's exactly.
            registered = await self._store.get_user(sender)
            sender = registered.name if registered is not None else sender
        started = time.perf_counter()
        try:
            hits, cursor = await self._store.search(
                SearchFilter(
                    query,
                    None if user.guest else user.name,
                    room=request.room,
                    direct=request.direct,
                    peer=peer,
                    sender=sender,
                    after_ms=request.after_ms,
                    before_ms=request.before_ms,
                    limit=request.limit,
                    cursor=request.cursor,
                    relevance=request.relevance,
                )
            )
        finally:
            # Searches cut off for taking too long are the ones to see.
            self._metrics.search_seconds.observe(time.perf_counter() - started)
        shown = []
        for hit in hits:
            text, spans = snippet(query, hit.message.message)
            shown.append(replace(hit, snippet=text, highlights=tuple(spans)))
        return SearchReply(shown, cursor)
