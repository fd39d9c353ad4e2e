"""Seq order for live frames: each stream's frames go out 1, 2, 3, never 1, 3, 2.

With one node, the store's callbacks already run in seq order. With several
nodes writing to one room, node A may commit seq 5 and node B seq 6 while
B's publication reaches node C first, or A's never does (Redis was cut off).
The sequencer sits between "a frame with a seq arrived" and the hub: it
delivers a stream's frames strictly in seq order, drops repeats, keeps early
ones aside, and asks its owner to fetch a gap from the store when the
missing frames have not come within ``gap_wait`` seconds. (A frame is
published only after its message is committed, and seqs are assigned in
commit order, so when seq 6 has arrived, seq 5 is in the store.)

It does no I/O: the node gives it callbacks to deliver a frame and to start
fetching a gap, and calls :meth:`Sequencer.filled` when a fetch is done.
Streams are rooms (and inboxes) with a local member; a stream starts
without a position until the first member's join tells it the room's last
seq (:meth:`Sequencer.start`); frames that arrive before are kept.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

__all__ = ["GAP_WAIT", "MAX_PENDING", "Sequencer"]

logger = logging.getLogger("roomcast.sequencer")

#: Seconds a gap may last before the missing frames are read from the store.
GAP_WAIT: Final = 0.1
#: Frames kept aside per stream; past this the stream skips to its oldest
#: kept frame (its members resume from the store when they next join).
MAX_PENDING: Final = 10_000


class _Stream:
    __slots__ = ("expected", "fetching", "pending", "timer", "waiters")

    def __init__(self, expected: int | None) -> None:
        #: The next seq to deliver; None until the stream's position is known.
        self.expected = expected
        #: Frames that arrived early, by seq.
        self.pending: dict[int, bytes] = {}
        #: The gap timer, armed while frames are pending.
        self.timer: asyncio.TimerHandle | None = None
        #: True while the owner reads a gap from the store.
        self.fetching = False
        #: Joins waiting for delivery to reach a seq (see :meth:`Sequencer.reached`).
        self.waiters: list[tuple[int, asyncio.Future[None]]] = []


class Sequencer:
    """Per stream, delivers frames in seq order.

    Args:
        deliver: called with ``(stream, seq, frame)`` in seq order; returns
            how many connections got the frame.
        fetch: called with ``(stream, after, before)`` when seqs
            ``after < seq < before`` are overdue; the owner reads them from
            the store, :meth:`offer`\\ s them, then calls :meth:`filled`.
        gap_wait: seconds to wait for a missing frame before fetching it.
    """

    __slots__ = ("_deliver", "_fetch", "_streams", "gap_wait")

    def __init__(
        self,
        deliver: Callable[[str, int, bytes], int],
        fetch: Callable[[str, int, int], None],
        *,
        gap_wait: float = GAP_WAIT,
    ) -> None:
        self._deliver = deliver
        self._fetch = fetch
        self._streams: dict[str, _Stream] = {}
        self.gap_wait = gap_wait

    def __contains__(self, stream: str) -> bool:
        return stream in self._streams

    def open(self, stream: str) -> None:
        """Track ``stream`` (a local member arrived); its position comes with :meth:`start`."""
        if stream not in self._streams:
            self._streams[stream] = _Stream(None)

    def start(self, stream: str, last: int) -> int:
        """Set ``stream``'s position from the store's ``last`` seq if it has none.

        Returns the last seq the stream has delivered (or will not deliver),
        which may be past ``last``: a joining member must replay up to there.
        """
        state = self._streams.get(stream)
        if state is None:
            state = self._streams[stream] = _Stream(None)
        if state.expected is None:
            state.expected = last + 1
            self._drain(stream, state)
        assert state.expected is not None
        return state.expected - 1

    def position(self, stream: str) -> int | None:
        """The last seq delivered on ``stream``, or None when it has no position."""
        state = self._streams.get(stream)
        if state is None or state.expected is None:
            return None
        return state.expected - 1

    def reached(self, stream: str, seq: int) -> asyncio.Future[None] | None:
        """A future done once ``stream`` has delivered ``seq``; None if nothing is left to wait for.

        A joining member's replay can send a message whose live delivery is
        still a few loop turns away (the store shows a commit before the
        callbacks that deliver it have run); the join waits on this before
        it lets the member see live frames, so none arrives twice.
        """
        state = self._streams.get(stream)
        if state is None or (state.expected is not None and state.expected > seq):
            return None
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        state.waiters = [(s, w) for s, w in state.waiters if not w.done()]
        state.waiters.append((seq, waiter))
        return waiter

    def streams(self) -> list[str]:
        """The streams with a position (to catch up after the broker was cut off)."""
        return [name for name, state in self._streams.items() if state.expected is not None]

    def close(self, stream: str) -> None:
        """Stop tracking ``stream`` (its last local member left)."""
        state = self._streams.pop(stream, None)
        if state is None:
            return
        if state.timer is not None:
            state.timer.cancel()
        for _, waiter in state.waiters:  # nothing more will be delivered
            if not waiter.done():
                waiter.set_result(None)

    def offer(self, stream: str, seq: int, frame: bytes) -> int:
        """A frame with ``seq``: deliver it (and any it unblocks) or keep it; return deliveries."""
        state = self._streams.get(stream)
        if state is None:
            return 0
        expected = state.expected
        if expected == seq:
            sent = self._deliver(stream, seq, frame)
            state.expected = seq + 1
            if state.pending:
                sent += self._drain(stream, state)
            elif state.waiters:
                _wake(state)
            return sent
        if expected is not None and seq < expected:
            return 0  # a repeat: delivered already
        state.pending[seq] = frame
        if len(state.pending) > MAX_PENDING and expected is not None:
            oldest = min(state.pending)
            logger.warning("%s: gap %d..%d not filled; skipping it", stream, expected, oldest - 1)
            state.expected = oldest
            return self._drain(stream, state)
        if expected is not None:
            self._arm(stream, state)
        return 0

    def filled(self, stream: str, before: int, *, complete: bool = True) -> None:
        """A fetch for seqs up to ``before`` ended; skip what the store did not have.

        With ``complete`` False the fetch failed (the store is unreachable):
        nothing is skipped, and the gap is fetched again after ``gap_wait``.
        """
        state = self._streams.get(stream)
        if state is None:
            return
        state.fetching = False
        if not complete or state.expected is None or state.expected >= before:
            if state.pending:
                self._arm(stream, state)
            return
        logger.warning(
            "%s: seqs %d..%d are not in the store; skipping them",
            stream,
            state.expected,
            before - 1,
        )
        state.expected = before
        self._drain(stream, state)

    def _drain(self, stream: str, state: _Stream) -> int:
        pending = state.pending
        expected = state.expected
        assert expected is not None
        sent = 0
        for seq in [seq for seq in pending if seq < expected]:
            del pending[seq]
        while expected in pending:
            sent += self._deliver(stream, expected, pending.pop(expected))
            expected += 1
        state.expected = expected
        if pending:
            self._arm(stream, state)
        elif state.timer is not None:
            state.timer.cancel()
            state.timer = None
        if state.waiters:
            _wake(state)
        return sent

    def _arm(self, stream: str, state: _Stream) -> None:
        if state.timer is None and not state.fetching:
            loop = asyncio.get_running_loop()
            state.timer = loop.call_later(self.gap_wait, self._overdue, stream)

    def _overdue(self, stream: str) -> None:
        state = self._streams.get(stream)
        if state is None:
            return
        state.timer = None
        if not state.pending or state.expected is None:
            return
        state.fetching = True
        self._fetch(stream, state.expected - 1, min(state.pending))


def _wake(state: _Stream) -> None:
    """Resolve the waiters whose seq ``state`` has now delivered."""
    assert state.expected is not None
    delivered = state.expected - 1
    waiting = []
    for seq, waiter in state.waiters:
        if seq > delivered:
            waiting.append((seq, waiter))
        elif not waiter.done():
            waiter.set_result(None)
    state.waiters = waiting
