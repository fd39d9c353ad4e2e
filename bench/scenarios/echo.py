"""echo: ping/pong round trips/s with 50 clients, one ping in flight each.

Each client sends ``{"type":"ping","id":..,"payload":{..}}``, waits for the
``pong`` and sends the next; after a warm-up, round trips/s and the p50/p99
round-trip time are taken over a fixed window (bench/lib/loadgen/echo.py).
Every target runs it.

Parameters, and why:

- 50 clients: the issue's echo target ("echo round trips/s with 50
  clients", ≥ 1.5x the Node reference).
- One ping in flight per client: the Node reference's pong carries no id,
  so waiting for each pong is what pairs it with its ping.
- 1 s warm-up, then a 5 s window: the connections' welcome frames and the
  first round trips stay out of the figures; hundreds of thousands of round
  trips are in the window.

    .venv/bin/python -m bench.scenarios.echo --targets roomcast,node,picows --runs 1
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import bench from the repository
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from bench.lib import driver

CLIENTS = 50
WARMUP_SECONDS = 1.0
WINDOW_SECONDS = 5.0

ECHO = driver.Scenario(
    "echo",
    (
        "echo",
        "--clients",
        str(CLIENTS),
        f"--warmup={WARMUP_SECONDS}",
        f"--seconds={WINDOW_SECONDS}",
    ),
)
SCENARIOS = [ECHO]


def main(argv: list[str]) -> int:
    return driver.main(argv, SCENARIOS, __doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
