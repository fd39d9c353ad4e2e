"""The node wires its collaborators: welcome, two nodes on one bus, a store down at connect."""

from __future__ import annotations

from roomcast.broker.memory import MemoryBroker, MemoryBus
from roomcast.exceptions import StoreError
from roomcast.store.memory import MemoryStore
from tests.fakes import receive_text
from tests.nodes import connected, name_of, started, text


async def test_connect_sends_welcome_then_joined_lobby() -> None:
    """A connection is welcomed and placed in lobby; other lobby members see it join."""
    node = await started()
    first = await connected(node)
    first.received()
    second = await connected(node)
    frames = second.received()
    assert [f["type"] for f in frames] == ["system", "joined"]
    assert frames[0]["payload"]["user"] == {"name": name_of(second), "guest": True}
    assert frames[1]["payload"]["members"] == [name_of(first), name_of(second)]
    assert frames[1]["payload"]["member_count"] == 2
    [presence] = first.received()
    assert presence["type"] == "presence"
    assert presence["payload"] == {"room": "lobby", "user": name_of(second), "event": "join"}


async def test_two_nodes_on_one_bus_share_broadcasts() -> None:
    """A chat on one node reaches members on another node through the broker, once."""
    bus, store = MemoryBus(), MemoryStore()
    one = await started(store=store, broker=MemoryBroker(bus))
    two = await started(store=store, broker=MemoryBroker(bus))
    a, b = await connected(one), await connected(two)
    a.received(), b.received()
    await receive_text(one, a, text("chat", {"message": "across"}))
    await one.flush()
    assert [f["payload"]["message"] for f in b.of_type("chat")] == ["across"]
    assert [f["payload"]["message"] for f in a.of_type("chat")] == ["across"]
    await one.close()
    await receive_text(two, b, text("chat", {"message": "after"}))
    await two.flush()
    assert a.received() == []


async def test_store_down_at_connect_still_welcomes() -> None:
    """If the lobby cannot be joined, the connection is welcomed and told, not dropped."""

    class FailingReads(MemoryStore):
        async def last_seq(self, room: str) -> int:
            raise StoreError("disk gone")

    node = await started(store=FailingReads())
    a = await connected(node)
    frames = a.received()
    assert [f["type"] for f in frames] == ["system", "error"]
    assert frames[1]["payload"]["code"] == "internal"
    assert a.closed is None
