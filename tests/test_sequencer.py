"""The sequencer delivers each stream's frames in seq order, without repeats or gaps."""

from __future__ import annotations

import asyncio

from roomcast.sequencer import Sequencer


class Recorder:
    """What a sequencer delivered and asked to fetch."""

    def __init__(self) -> None:
        self.delivered: list[tuple[str, int, bytes]] = []
        self.fetches: list[tuple[str, int, int]] = []

    def deliver(self, stream: str, seq: int, frame: bytes) -> int:
        self.delivered.append((stream, seq, frame))
        return 1

    def fetch(self, stream: str, after: int, before: int) -> None:
        self.fetches.append((stream, after, before))


def make(gap_wait: float = 0.05) -> tuple[Sequencer, Recorder]:
    recorder = Recorder()
    return Sequencer(recorder.deliver, recorder.fetch, gap_wait=gap_wait), recorder


def seqs(recorder: Recorder) -> list[int]:
    return [seq for _, seq, _ in recorder.delivered]


async def test_in_order_frames_go_straight_out() -> None:
    """Consecutive seqs are delivered as they come; repeats are dropped."""
    sequencer, got = make()
    assert sequencer.start("r", 4) == 4
    for seq in (5, 6, 6, 5, 7):
        sequencer.offer("r", seq, b"%d" % seq)
    assert seqs(got) == [5, 6, 7]
    assert sequencer.position("r") == 7


async def test_early_frames_wait_for_the_missing_one() -> None:
    """A frame that overtakes another is held until the other arrives, then both go."""
    sequencer, got = make()
    sequencer.start("r", 0)
    assert sequencer.offer("r", 2, b"2") == 0
    assert sequencer.offer("r", 3, b"3") == 0
    assert seqs(got) == []
    assert sequencer.offer("r", 1, b"1") == 3
    assert seqs(got) == [1, 2, 3]
    await asyncio.sleep(0.1)
    assert got.fetches == []


async def test_an_overdue_gap_is_fetched_then_filled() -> None:
    """A gap still open after gap_wait is fetched; the fetched frames close it."""
    sequencer, got = make(gap_wait=0.01)
    sequencer.start("r", 0)
    sequencer.offer("r", 3, b"3")
    await asyncio.sleep(0.05)
    assert got.fetches == [("r", 0, 3)]
    sequencer.offer("r", 1, b"1")
    sequencer.offer("r", 2, b"2")
    sequencer.filled("r", 3)
    assert seqs(got) == [1, 2, 3]


async def test_a_gap_the_store_lacks_is_skipped() -> None:
    """When the fetch finds nothing, the stream moves past the gap instead of stalling."""
    sequencer, got = make(gap_wait=0.01)
    sequencer.start("r", 0)
    sequencer.offer("r", 3, b"3")
    await asyncio.sleep(0.05)
    sequencer.filled("r", 3)
    assert seqs(got) == [3]


async def test_a_failed_fetch_is_retried() -> None:
    """A fetch that failed (store unreachable) skips nothing and is asked for again."""
    sequencer, got = make(gap_wait=0.01)
    sequencer.start("r", 0)
    sequencer.offer("r", 2, b"2")
    await asyncio.sleep(0.05)
    sequencer.filled("r", 2, complete=False)
    assert seqs(got) == []
    await asyncio.sleep(0.05)
    assert got.fetches == [("r", 0, 2), ("r", 0, 2)]


async def test_frames_before_the_position_is_known_are_kept() -> None:
    """An opened stream keeps frames until start() gives its position, then delivers past it."""
    sequencer, got = make()
    sequencer.open("r")
    sequencer.offer("r", 5, b"5")
    sequencer.offer("r", 6, b"6")
    assert seqs(got) == []
    assert sequencer.start("r", 5) == 6
    assert seqs(got) == [6]
    # A later start (another joiner, an older read) does not move the stream back.
    assert sequencer.start("r", 2) == 6


async def test_streams_are_independent_and_closed_streams_drop_frames() -> None:
    """Each stream has its own order; a closed (or unknown) stream delivers nothing."""
    sequencer, got = make()
    sequencer.start("a", 0)
    sequencer.start("b", 10)
    sequencer.offer("b", 11, b"b")
    sequencer.offer("a", 1, b"a")
    sequencer.close("a")
    assert sequencer.offer("a", 2, b"a") == 0
    assert sequencer.offer("zzz", 1, b"z") == 0
    assert got.delivered == [("b", 11, b"b"), ("a", 1, b"a")]
    assert sequencer.streams() == ["b"]


async def test_reached_wakes_when_delivery_gets_there() -> None:
    """reached() is None once a seq is delivered, else a future done when it is, in order or not."""
    sequencer, _ = make()
    sequencer.start("r", 2)
    assert sequencer.reached("r", 2) is None
    at_3 = sequencer.reached("r", 3)
    at_5 = sequencer.reached("r", 5)
    assert at_3 is not None and at_5 is not None
    sequencer.offer("r", 3, b"3")
    assert at_3.done() and not at_5.done()
    sequencer.offer("r", 5, b"5")  # early: kept aside
    assert not at_5.done()
    sequencer.offer("r", 4, b"4")  # fills the gap, delivering 4 and 5
    assert at_5.done()


async def test_reached_before_a_position_and_after_close() -> None:
    """A stream with no position yet is waited on; closing it releases its waiters."""
    sequencer, _ = make()
    sequencer.open("r")
    waiter = sequencer.reached("r", 1)
    assert waiter is not None and not waiter.done()
    sequencer.close("r")
    assert waiter.done()
    assert sequencer.reached("gone", 1) is None
