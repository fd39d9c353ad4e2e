"""Prometheus metrics (``prometheus-client``), served at ``GET /metrics``.

Every server has its own :class:`~prometheus_client.CollectorRegistry`, so
several servers in one process (tests) do not share counters. Counters on
the hot path are bound to their labels once (``labels()`` costs a dict
lookup and a lock), and frames received, counted once per frame, are plain
ints reported by a collector; a fan-out adds its whole delivery count with one
``inc(n)``, never one call per member. What can be read off the hub at
scrape time (connections by state, rooms, room memberships) is computed
then, by a collector, instead of being kept up to date on every change.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from .protocol.codes import CloseCode

if TYPE_CHECKING:
    from .hub import Hub

__all__ = ["CLOSE_CODE_LABELS", "CONTENT_TYPE", "Metrics"]

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

#: Latency buckets in seconds: 0.1 ms to 2.5 s.
LATENCY_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
BATCH_BUCKETS: Final = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
#: The close codes ``roomcast_connections_closed_total`` names: those roomcast
#: sends, plus 1006 (no close frame). The code in a client's close frame is
#: the client's to choose (any of 1000-4999), and every label value is a new
#: series kept for the life of the process, so any other code counts as
#: ``other``: clients cannot grow /metrics.
CLOSE_CODE_LABELS: Final = frozenset({str(int(code)) for code in CloseCode} | {"1006"})


class Metrics:
    """The server's counters and histograms, on a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        #: Client frames by type: plain ints (a frame costs one dict
        #: increment, not a prometheus-client lock), reported at scrape time.
        self.frames_in: collections.Counter[str] = collections.Counter()
        r.register(_FramesCollector(self.frames_in))
        self.messages_out = Counter(
            "roomcast_messages_sent",
            "Stored messages broadcast or delivered, by type",
            ["type"],
            registry=r,
        )
        self.deliveries = Counter(
            "roomcast_deliveries",
            "Frames written to local members by fan-out (one per member per message)",
            registry=r,
        )
        self.errors = Counter(
            "roomcast_errors", "Error frames sent to clients, by code", ["code"], registry=r
        )
        self.rate_limited = Counter(
            "roomcast_rate_limited", "Frames refused by the rate limit", registry=r
        )
        self.slow_consumers = Counter(
            "roomcast_slow_consumers_dropped",
            "Connections closed with 1013 because too much was queued for them",
            registry=r,
        )
        self.closes = Counter(
            "roomcast_connections_closed", "Connections ended, by close code", ["code"], registry=r
        )
        self.ack_seconds = Histogram(
            "roomcast_ack_seconds",
            "From receiving a message to acking it (it is stored by then)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_write_seconds = Histogram(
            "roomcast_store_write_seconds",
            "Time to store one batch of messages (one transaction)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_batch_size = Histogram(
            "roomcast_store_batch_size",
            "Messages per stored batch",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.broker_publish_seconds = Histogram(
            "roomcast_broker_publish_seconds",
            "Time to hand one publication to the broker",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.search_seconds = Histogram(
            "roomcast_search_seconds",
            "Time the store took to answer one search",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        received = Counter(
            "roomcast_broker_received",
            "Publications received from other nodes, by what they are for: a room's "
            "members, a user's connections, or an order (each node hears only the rooms "
            "its members are in and the names its connections use)",
            ["kind"],
            registry=r,
        )
        #: Bound once: the receive path counts without a label lookup.
        self.received_room = received.labels("room")
        self.received_user = received.labels("user")
        self.received_order = received.labels("order")
        self.catch_ups = Counter(
            "roomcast_catch_ups",
            "Store reads for messages other nodes' publications did not bring: "
            "gap (a seq overdue) or resync (Redis was away)",
            ["reason"],
            registry=r,
        )
        self.markers_written = Counter(
            "roomcast_read_markers_written",
            "Read markers written to the store (each user and conversation at most once a second)",
            registry=r,
        )
        self.notifications = Counter(
            "roomcast_notifications",
            "Webhook notifications for users away: queued, delivered, failed (an attempt "
            "to retry), dropped (too many for one user or in the queue, not stored, or "
            "the retries ran out)",
            ["outcome"],
            registry=r,
        )
        for outcome in ("queued", "delivered", "failed", "dropped"):
            self.notifications.labels(outcome)
        self.chat_out = self.messages_out.labels("chat")
        self.direct_out = self.messages_out.labels("direct")
        #: Edits, deletes and reactions, in rooms and direct conversations.
        self.change_out = self.messages_out.labels("change")
        self.mention_out = self.messages_out.labels("mention")
        self.receipts_out = self.messages_out.labels("receipt")
        self._errors: dict[str, Counter] = {}
        # Every label up front: the series are the same from the first scrape.
        self._closes: dict[str, Counter] = {
            code: self.closes.labels(code) for code in sorted(CLOSE_CODE_LABELS)
        }
        self._other_closes = self.closes.labels("other")

    def frame_in(self, kind: str) -> None:
        """Count one client frame of type ``kind``."""
        self.frames_in[kind] += 1

    def error(self, code: str) -> None:
        """Count one error frame with ``code``."""
        child = self._errors.get(code)
        if child is None:
            child = self._errors[code] = self.errors.labels(code)
        child.inc()
        if code == "rate_limited":
            self.rate_limited.inc()

    def closed(self, code: int) -> None:
        """Count one ended connection under its close code, or ``other`` if not a known one."""
        self._closes.get(str(code), self._other_closes).inc()

    def observe_batch(self, size: int, seconds: float) -> None:
        """One stored batch: its size and how long it took."""
        self.store_batch_size.observe(size)
        self.store_write_seconds.observe(seconds)

    def watch(self, hub: Hub) -> None:
        """Report ``hub``'s connections, rooms and memberships at every scrape."""
        self.registry.register(_HubCollector(hub))

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)


class _FramesCollector(Collector):
    """``roomcast_frames_received_total`` from a plain counter of ints."""

    def __init__(self, counts: collections.Counter[str]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "roomcast_frames_received",
            "Client frames received, by type (refused: answered with an error instead)",
            labels=["type"],
        )
        for kind, count in sorted(self._counts.items()):
            family.add_metric([kind], count)
        yield family


class _HubCollector(Collector):
    """Gauges read off the hub when Prometheus scrapes."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    def collect(self) -> Iterator[Metric]:
        states = {"guest": 0, "user": 0, "unauthenticated": 0}
        for peer in list(self._hub.peers.values()):
            user = peer.session.user
            state = "unauthenticated" if user is None else "guest" if user.guest else "user"
            states[state] += 1
        connections = GaugeMetricFamily(
            "roomcast_connections", "Open WebSocket connections, by state", labels=["state"]
        )
        for state, count in states.items():
            connections.add_metric([state], count)
        yield connections
        rooms = self._hub.rooms()
        yield GaugeMetricFamily("roomcast_rooms", "Rooms with a local member", value=len(rooms))
        yield GaugeMetricFamily(
            "roomcast_room_members",
            "Users in rooms, summed over rooms (presence size)",
            value=sum(rooms.values()),
        )
        yield GaugeMetricFamily(
            "roomcast_largest_room_members",
            "Users in the largest room",
            value=max(rooms.values(), default=0),
        )
