"""Token buckets and the abuse streak, driven by a hand-moved clock (no loop, no sleep)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from roomcast.ratelimit import (
    ABUSE_AFTER,
    ABUSE_GAP,
    Bucket,
    KeyedBuckets,
    RateLimiter,
    TokenBucket,
)


class FakeClock:
    """Seconds, moved by hand."""

    def __init__(self, now: float = 500.0) -> None:
        self.now = now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def test_a_full_bucket_allows_the_burst_then_says_how_long_to_wait() -> None:
    """burst frames pass at once; the next waits 1/rate seconds."""
    clock = FakeClock()
    bucket = TokenBucket(rate=10, burst=5)
    assert [bucket.take(clock.now) for _ in range(5)] == [0.0] * 5
    assert bucket.take(clock.now) == pytest.approx(0.1)
    clock.advance(0.04)
    assert bucket.take(clock.now) == pytest.approx(0.06)
    clock.advance(0.06)
    assert bucket.take(clock.now) == 0.0
    assert bucket.take(clock.now) == pytest.approx(0.1)


def test_tokens_refill_at_the_rate_up_to_the_burst() -> None:
    """A long pause refills the bucket only up to burst, not beyond."""
    clock = FakeClock()
    bucket = TokenBucket(rate=2, burst=3)
    for _ in range(3):
        assert bucket.take(clock.now) == 0.0
    clock.advance(1.0)  # two tokens back
    assert [bucket.take(clock.now) for _ in range(3)] == [0.0, 0.0, pytest.approx(0.5)]
    clock.advance(3600.0)
    allowed = sum(bucket.take(clock.now) == 0.0 for _ in range(10))
    assert allowed == 3


def test_refusals_do_not_spend_tokens() -> None:
    """A refused frame costs nothing: the next token still comes after 1/rate."""
    clock = FakeClock()
    bucket = TokenBucket(rate=4, burst=1)
    assert bucket.take(clock.now) == 0.0
    for _ in range(100):
        assert bucket.take(clock.now) > 0.0
    clock.advance(0.25)
    assert bucket.take(clock.now) == 0.0


def test_rate_zero_is_unlimited() -> None:
    """rate 0 allows everything, for the bucket and for the limiter."""
    bucket = TokenBucket(rate=0, burst=0)
    assert all(bucket.take(1.0) == 0.0 for _ in range(100_000))
    limiter = RateLimiter(0, 40)
    assert limiter.unlimited
    assert all(limiter.take(Bucket.MESSAGES, 1.0) == 0.0 for _ in range(10_000))
    assert not limiter.abusive(1.0)


def test_bad_settings_are_refused() -> None:
    """A negative rate or a burst below 1 is a programming error."""
    with pytest.raises(ValueError):
        TokenBucket(rate=-1, burst=5)
    with pytest.raises(ValueError):
        TokenBucket(rate=1, burst=0)


def test_commands_get_five_times_the_messages_budget() -> None:
    """The commands bucket holds 5 x burst and refills at 5 x rate, apart from messages."""
    clock = FakeClock()
    limiter = RateLimiter(20, 40)
    assert sum(limiter.take(Bucket.COMMANDS, clock.now) == 0.0 for _ in range(300)) == 200
    assert sum(limiter.take(Bucket.MESSAGES, clock.now) == 0.0 for _ in range(300)) == 40
    clock.advance(1.0)
    assert sum(limiter.take(Bucket.COMMANDS, clock.now) == 0.0 for _ in range(300)) == 100
    assert sum(limiter.take(Bucket.MESSAGES, clock.now) == 0.0 for _ in range(300)) == 20


def test_ten_seconds_of_refusals_is_abuse() -> None:
    """Refusals each within 2 s of the last, for 10 s, make the connection abusive."""
    clock = FakeClock()
    limiter = RateLimiter(1, 1)
    start = clock.now
    # Every 1.8 s two frames: the first takes the refilled token, the second
    # is refused. The allowed frames in between do not break the streak.
    while True:
        assert limiter.take(Bucket.MESSAGES, clock.now) == 0.0
        assert limiter.take(Bucket.MESSAGES, clock.now) > 0.0
        if clock.now - start >= ABUSE_AFTER:
            break
        assert not limiter.abusive(clock.now)
        clock.advance(ABUSE_GAP * 0.9)
    assert limiter.abusive(clock.now)


def test_a_gap_of_more_than_2_s_ends_the_streak() -> None:
    """A client that pauses over 2 s between refusals starts a new streak each time."""
    clock = FakeClock()
    limiter = RateLimiter(1, 1)
    for _ in range(20):  # 20 rounds of: allowed, refused, then 2.5 s of calm
        assert limiter.take(Bucket.MESSAGES, clock.now) == 0.0
        assert limiter.take(Bucket.MESSAGES, clock.now) > 0.0
        assert not limiter.abusive(clock.now)
        clock.advance(ABUSE_GAP + 0.5)
    assert not limiter.abusive(clock.now)


def test_a_streak_that_stopped_is_not_abuse_later() -> None:
    """abusive() is False once the last refusal is more than 2 s old."""
    clock = FakeClock()
    limiter = RateLimiter(1, 1)
    limiter.take(Bucket.MESSAGES, clock.now)
    for _ in range(120):
        limiter.take(Bucket.MESSAGES, clock.now)
        clock.advance(0.1)
    assert limiter.abusive(clock.now)
    clock.advance(ABUSE_GAP + 0.1)
    assert not limiter.abusive(clock.now)


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(min_value=0.5, max_value=200),
    burst=st.integers(min_value=1, max_value=60),
    gaps=st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=200),
)
def test_never_more_than_burst_plus_rate_times_t(
    rate: float, burst: int, gaps: list[float]
) -> None:
    """In any window of length t at most burst + rate * t frames are allowed."""
    bucket = TokenBucket(rate, burst)
    now = 1000.0
    allowed: list[float] = []
    for gap in gaps:
        now += gap
        if bucket.take(now) == 0.0:
            allowed.append(now)
    for i, first in enumerate(allowed):
        for j in range(i, len(allowed)):
            window = allowed[j] - first
            assert j - i + 1 <= burst + rate * window + 1e-6


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(min_value=0.5, max_value=200),
    burst=st.integers(min_value=1, max_value=60),
    slack=st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=200),
)
def test_a_client_that_waits_as_told_is_never_refused(
    rate: float, burst: int, slack: list[float]
) -> None:
    """Sending no faster than one frame per 1/rate seconds is never refused."""
    bucket = TokenBucket(rate, burst)
    now = 1000.0
    for extra in slack:
        assert bucket.take(now) == 0.0
        now += (1.0 + extra) / rate


def test_keyed_buckets_count_each_key_and_forget_the_least_recent() -> None:
    """Each key has its own burst; past max_keys the least recent key starts afresh."""
    buckets = KeyedBuckets(1.0, 2, max_keys=2)
    assert [buckets.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 1.0]
    assert buckets.take("b", 0.0) == 0.0
    assert buckets.wait("a", 0.5) == 0.5
    buckets.take("c", 0.0)  # a is the least recent: forgotten
    assert buckets.wait("a", 0.0) == 0.0
    assert buckets.take("a", 0.0) == 0.0
