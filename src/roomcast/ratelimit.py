"""Rate limits per connection, without I/O: the caller passes the time in.

A :class:`TokenBucket` allows ``burst`` frames at once and ``rate`` a second
after that. A :class:`RateLimiter` holds a connection's two buckets (chat-like
*messages*, and cheaper *commands* at five times the rate) and watches for
*sustained abuse*: refusals that keep coming, each within
:data:`ABUSE_GAP` seconds of the previous one, for :data:`ABUSE_AFTER`
seconds. A client that goes over the limit now and then only gets errors;
one that floods is closed.

Nothing here reads a clock: every method takes ``now`` in seconds (any
monotonic clock, e.g. the event loop's ``time()``), so the tests drive it
with plain numbers.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = [
    "ABUSE_AFTER",
    "ABUSE_GAP",
    "COMMAND_FACTOR",
    "Bucket",
    "KeyedBuckets",
    "RateLimiter",
    "TokenBucket",
]

#: A refusal more than this many seconds after the previous one starts a new streak.
ABUSE_GAP: Final = 2.0
#: A streak of refusals lasting this many seconds is sustained abuse.
ABUSE_AFTER: Final = 10.0
#: The commands bucket's rate and burst, as a multiple of the messages bucket's.
COMMAND_FACTOR: Final = 5
#: Slack for float rounding: a token refilled "exactly" by the time the last
#: refusal named is not refused again for 1e-15 of a token.
_EPSILON: Final = 1e-9


class Bucket(enum.IntEnum):
    """Which of a connection's two buckets a frame draws from."""

    #: chat, direct, typing, files, echo and unknown types.
    MESSAGES = 0
    #: join, leave, history, presence, ping, auth.
    COMMANDS = 1


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` a second; ``rate == 0`` is unlimited.

    The bucket starts full. Each allowed frame takes one token.
    """

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: int) -> None:
        if rate < 0:
            raise ValueError(f"rate must be 0 or more, not {rate}")
        if rate > 0 and burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst}")
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        #: When ``tokens`` was last brought up to date; None before the first take.
        self.updated: float | None = None

    def take(self, now: float) -> float:
        """Take a token at time ``now``: 0.0 when allowed, else seconds until one is free."""
        rate = self.rate
        if rate == 0:
            return 0.0
        updated = self.updated
        if updated is not None and now > updated:
            self.tokens = min(self.burst, self.tokens + (now - updated) * rate)
        if updated is None or now > updated:
            self.updated = now
        if self.tokens >= 1.0 - _EPSILON:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / rate


class KeyedBuckets:
    """A token bucket per key (an address, a user), the least recent forgotten past ``max_keys``.

    Forgetting a key only gives it a fresh burst; whoever has many keys has
    many buckets anyway, so the bound costs nothing in safety.
    """

    __slots__ = ("_buckets", "burst", "max_keys", "rate")

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, key: str, now: float) -> float:
        """Seconds until ``key`` may go on (0: go ahead, counted)."""
        bucket = self._buckets.pop(key, None) or TokenBucket(self.rate, self.burst)
        self._buckets[key] = bucket  # most recent last
        if len(self._buckets) > self.max_keys:
            del self._buckets[next(iter(self._buckets))]
        return bucket.take(now)

    def wait(self, key: str, now: float) -> float:
        """Seconds until ``key`` may go on, taking nothing (0: it may now)."""
        bucket = self._buckets.get(key)
        if bucket is None or bucket.rate == 0:
            return 0.0
        tokens, updated = bucket.tokens, bucket.updated
        if updated is not None and now > updated:
            tokens = min(bucket.burst, tokens + (now - updated) * bucket.rate)
        return 0.0 if tokens >= 1.0 - _EPSILON else (1.0 - tokens) / bucket.rate


class RateLimiter:
    """One connection's two buckets and its abuse streak.

    Args:
        rate: messages a second; commands get :data:`COMMAND_FACTOR` times
            as many. 0 turns both buckets off.
        burst: messages allowed at once (commands: times the factor).
    """

    __slots__ = ("_buckets", "last_refusal", "streak_start")

    def __init__(self, rate: float, burst: int) -> None:
        self._buckets = (
            TokenBucket(rate, burst),
            TokenBucket(rate * COMMAND_FACTOR, burst * COMMAND_FACTOR),
        )
        #: When the current streak of refusals began; None when there is none.
        self.streak_start: float | None = None
        #: When the last refusal happened.
        self.last_refusal: float | None = None

    @property
    def unlimited(self) -> bool:
        """Whether the buckets are off (rate 0)."""
        return self._buckets[0].rate == 0

    def take(self, bucket: Bucket, now: float) -> float:
        """Take a token from ``bucket``: 0.0 when allowed, else the seconds to wait.

        A refusal extends the abuse streak (or starts a new one when the
        previous refusal is more than :data:`ABUSE_GAP` seconds old).
        """
        wait = self._buckets[bucket].take(now)
        if wait > 0.0:
            last = self.last_refusal
            if self.streak_start is None or last is None or now - last > ABUSE_GAP:
                self.streak_start = now
            self.last_refusal = now
        return wait

    def abusive(self, now: float) -> bool:
        """Whether the refusals have kept coming for :data:`ABUSE_AFTER` seconds by ``now``.

        A streak whose last refusal is more than :data:`ABUSE_GAP` seconds
        before ``now`` is over.
        """
        start, last = self.streak_start, self.last_refusal
        if start is None or last is None or now - last > ABUSE_GAP:
            return False
        return last - start >= ABUSE_AFTER
