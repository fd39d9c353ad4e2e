"""Reconnect delays: exponential backoff with full jitter (pure, no I/O).

Full jitter (a uniform delay between 0 and the exponential cap, as in the
AWS Architecture Blog's "Exponential Backoff And Jitter") spreads the
reconnects of many clients that lost one server at the same moment over the
whole window, instead of sending them back in waves.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass(slots=True)
class Backoff:
    """How long to wait before each reconnect attempt.

    Args:
        first: the cap of the first delay, in seconds.
        factor: how much the cap grows per failed attempt.
        cap: the largest cap, in seconds.
        stable: seconds a connection must last for the next loss to start
            from ``first`` again.
        rng: the random source (seeded in tests).
    """

    first: float = 0.5
    factor: float = 2.0
    cap: float = 30.0
    stable: float = 60.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        """The delay before the next attempt, and count the attempt."""
        ceiling = min(self.cap, self.first * self.factor ** min(self.attempt, 64))
        self.attempt += 1
        return self.rng.uniform(0.0, ceiling)

    def connected_for(self, seconds: float) -> None:
        """A connection that lasted ``seconds`` ended: reset if it was stable."""
        if seconds >= self.stable:
            self.attempt = 0
