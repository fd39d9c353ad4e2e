"""The Broker contract, run against every broker implementation."""

from __future__ import annotations

from roomcast.broker.base import Publication
from roomcast.broker.memory import MemoryBroker, MemoryBus


async def test_publications_reach_other_nodes_not_the_publisher() -> None:
    """A publication goes to every other node's handler and not back to its own."""
    bus = MemoryBus()
    got: dict[str, list[Publication]] = {"a": [], "b": [], "c": []}
    brokers = {}
    for node_id in got:
        brokers[node_id] = MemoryBroker(bus)
        await brokers[node_id].start(node_id, got[node_id].append)
    pub = Publication("a", "lobby", None, b"frame")
    brokers["a"].publish(pub)
    assert got == {"a": [], "b": [pub], "c": [pub]}
    await brokers["b"].close()
    brokers["a"].publish(pub)
    assert (len(got["b"]), len(got["c"])) == (1, 2)
    await brokers["a"].ping()
