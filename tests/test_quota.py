"""The in-memory quotas (one node): guest nicknames, connections per user, logins, open_quotas."""

from __future__ import annotations

from typing import Any

import pytest

from roomcast.broker.memory import MemoryBroker
from roomcast.config import Limits
from roomcast.exceptions import ConfigError
from roomcast.model import UserInfo
from roomcast.node import Node
from roomcast.quota import MemoryQuotas, open_quotas
from roomcast.quota.memory import ACCOUNT_FREE_FAILURES, ADDRESS_LOGIN_BURST, LoginThrottle
from roomcast.store.memory import MemoryStore
from tests.fakes import FakePeer, receive_text
from tests.nodes import text


async def test_a_guest_nickname_is_one_connections_in_any_case() -> None:
    """A nickname held by one connection is refused to another, whatever its case."""
    quotas = MemoryQuotas()
    assert await quotas.claim_guest("Ann", "c1")
    assert not await quotas.claim_guest("ann", "c2")
    assert not await quotas.claim_guest("ANN", "c2")
    assert await quotas.claim_guest("bob", "c2")


async def test_claiming_ones_own_nickname_again_is_allowed() -> None:
    """The connection that holds a nickname may claim it again (another case too)."""
    quotas = MemoryQuotas()
    assert await quotas.claim_guest("ann", "c1")
    assert await quotas.claim_guest("Ann", "c1")


async def test_a_released_nickname_is_free_and_only_its_holder_releases_it() -> None:
    """Release by another connection changes nothing; by the holder, frees the name."""
    quotas = MemoryQuotas()
    assert await quotas.claim_guest("ann", "c1")
    quotas.release_guest("ann", "c2")
    assert not await quotas.claim_guest("ann", "c2")
    quotas.release_guest("ANN", "c1")
    quotas.release_guest("ANN", "c1")  # twice: nothing more happens
    assert await quotas.claim_guest("ann", "c2")
    assert quotas.guest_holder("Ann") == "c2"


async def test_connections_per_user_stop_at_the_cap() -> None:
    """Up to cap connections count; one more is refused; another user is apart."""
    quotas = MemoryQuotas()
    assert await quotas.add_connection("dora", "c1", 2)
    assert await quotas.add_connection("dora", "c2", 2)
    assert not await quotas.add_connection("dora", "c3", 2)
    assert await quotas.add_connection("eve", "c4", 2)
    assert quotas.connections_of("dora") == {"c1", "c2"}


async def test_a_removed_connection_frees_a_place_once() -> None:
    """Removing a connection (even twice) frees exactly one place."""
    quotas = MemoryQuotas()
    for conn in ("c1", "c2"):
        assert await quotas.add_connection("dora", conn, 2)
    quotas.remove_connection("dora", "c1")
    quotas.remove_connection("dora", "c1")
    quotas.remove_connection("dora", "unknown")
    assert await quotas.add_connection("dora", "c3", 2)
    assert not await quotas.add_connection("dora", "c4", 2)


async def test_counting_a_connection_twice_counts_it_once() -> None:
    """The same connection added again takes no second place, even at the cap."""
    quotas = MemoryQuotas()
    assert await quotas.add_connection("dora", "c1", 1)
    assert await quotas.add_connection("dora", "c1", 1)
    assert quotas.connections() == {"dora": {"c1"}}


async def test_a_cap_of_zero_counts_without_refusing() -> None:
    """cap 0 is no cap: every connection counts and none is refused."""
    quotas = MemoryQuotas()
    for n in range(20):
        assert await quotas.add_connection("dora", f"c{n}", 0)


async def test_logins_go_through_the_throttle() -> None:
    """Five failures go in at once, then the account's next attempt waits (from anywhere)."""
    quotas = MemoryQuotas()
    for _ in range(ACCOUNT_FREE_FAILURES):
        assert await quotas.login_check("192.0.2.1", "alice") == 0.0
        assert await quotas.login_attempt("192.0.2.1", "alice", exists=True) == 0.0
    assert 0 < await quotas.login_check("203.0.113.5", "ALICE") <= 1.0
    assert 0 < await quotas.login_attempt("203.0.113.5", "ALICE", exists=True) <= 1.0


async def test_a_login_from_a_known_address_is_not_held_up() -> None:
    """After a success from an address, that address skips the account's delay."""
    quotas = MemoryQuotas(LoginThrottle())
    await quotas.login_succeeded("198.51.100.1", "alice")
    for _ in range(ACCOUNT_FREE_FAILURES + 1):
        await quotas.login_attempt("192.0.2.1", "alice", exists=True)
    assert await quotas.login_check("192.0.2.1", "alice") > 0
    assert await quotas.login_check("198.51.100.1", "alice") == 0.0


async def test_an_address_gets_its_burst_of_logins() -> None:
    """One address: a burst over any names, then it waits."""
    quotas = MemoryQuotas()
    for n in range(ADDRESS_LOGIN_BURST):
        assert await quotas.login_attempt("192.0.2.1", f"name{n}", exists=False) == 0.0
    assert await quotas.login_attempt("192.0.2.1", "another", exists=False) > 0


def test_open_quotas_is_in_memory_without_redis_and_refuses_other_schemes() -> None:
    """No URL (or memory:) gives MemoryQuotas; an unknown scheme is a ConfigError."""
    assert isinstance(open_quotas(None), MemoryQuotas)
    assert isinstance(open_quotas("memory:"), MemoryQuotas)
    with pytest.raises(ConfigError, match="unsupported --redis-url scheme 'http'"):
        open_quotas("http://127.0.0.1:6379")


def test_open_quotas_chooses_redis_for_a_redis_url() -> None:
    """A redis:// URL gives RedisQuotas (nothing connects until it starts)."""
    quotas = open_quotas("redis://127.0.0.1:6379/0", prefix="p:", ttl=3.0)
    assert type(quotas).__name__ == "RedisQuotas"


# -- the node's use of its quotas (two nodes sharing one MemoryQuotas, as they share Redis) --


async def two_nodes(quotas: MemoryQuotas, cap: int = 10) -> tuple[Node, Node, MemoryStore]:
    store = MemoryStore()
    limits = Limits(max_connections_per_user=cap)
    nodes = [
        Node(store=store, broker=MemoryBroker(), limits=limits, quotas=quotas) for _ in range(2)
    ]
    for node in nodes:
        await node.start()
    return nodes[0], nodes[1], store


async def guest(node: Node, nickname: str | None = None) -> tuple[FakePeer, dict[str, Any]]:
    """A guest connection to ``node``; with ``nickname``, the answer to its auth."""
    peer = FakePeer(node.new_session())
    await node.connect(peer)
    answer: dict[str, Any] = {}
    if nickname is not None:
        peer.received()
        await receive_text(node, peer, text("auth", {"guest": nickname}, id="a"))
        answer = next(f for f in peer.received() if f.get("id") == "a")
    return peer, answer


async def test_a_nickname_held_through_one_nodes_quotas_is_refused_on_another() -> None:
    """A nickname on node a is "in use" on node b in any case, and free once its guest leaves."""
    quotas = MemoryQuotas()
    a, b, _ = await two_nodes(quotas)
    ann, answer = await guest(a, "Ann")
    assert answer["type"] == "auth"
    _, refused = await guest(b, "ann")
    assert refused["payload"] == {"code": "auth_failed", "message": "that name is in use"}
    a.disconnect(ann)
    assert (await guest(b, "ANN"))[1]["type"] == "auth"


async def test_a_guest_that_renames_gives_its_old_nickname_back() -> None:
    """auth as another nickname releases the first; the same name in another case keeps it."""
    quotas = MemoryQuotas()
    a, b, _ = await two_nodes(quotas)
    ann, _ = await guest(a, "ann")
    await receive_text(a, ann, text("auth", {"guest": "ANN"}, id="b"))
    assert quotas.guest_holder("ann") == ann.session.id
    await receive_text(a, ann, text("auth", {"guest": "zoe"}, id="c"))
    assert quotas.guests() == {"zoe": ann.session.id}
    assert (await guest(b, "ann"))[1]["type"] == "auth"


async def test_the_cap_counts_a_users_connections_through_both_nodes() -> None:
    """Cap 2: one token connection per node, a third (auth or handshake) is refused, then fits."""
    quotas = MemoryQuotas()
    a, b, store = await two_nodes(quotas, cap=2)
    await store.create_user("dora", "x")
    user = UserInfo("dora", False)
    first = FakePeer(a.new_session(user))
    await a.connect(first)
    await b.connect(FakePeer(b.new_session(user)))
    third = FakePeer(b.new_session(user))
    await b.connect(third)
    assert third.closed is not None and third.closed[1] == "too many connections for this user"
    a.disconnect(first)
    again = FakePeer(a.new_session(user))
    await a.connect(again)
    assert again.closed is None
    assert len(quotas.connections_of("dora")) == 2
