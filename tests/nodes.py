"""Helpers for tests that drive a Node with in-memory backends and fake peers (no sockets)."""

from __future__ import annotations

from typing import Any

import orjson
from argon2 import PasswordHasher

from roomcast.accounts import Accounts
from roomcast.auth import Tokens
from roomcast.broker.memory import MemoryBroker
from roomcast.config import Limits
from roomcast.node import Node
from roomcast.store.memory import MemoryStore
from tests.fakes import FakePeer


async def started(*, store: Any = None, broker: Any = None, limits: Limits | None = None) -> Node:
    node = Node(
        store=store or MemoryStore(),
        broker=broker or MemoryBroker(),
        limits=limits or Limits(),
    )
    await node.start()
    return node


async def connected(node: Node) -> FakePeer:
    peer = FakePeer(node.new_session())
    await node.connect(peer)
    return peer


def text(kind: str, payload: Any = None, **extra: Any) -> bytes:
    frame: dict[str, Any] = {"type": kind, **extra}
    if payload is not None:
        frame["payload"] = payload
    return orjson.dumps(frame)


def name_of(peer: FakePeer) -> str:
    assert peer.session.user is not None
    return peer.session.user.name


def fast_accounts(store: MemoryStore) -> Accounts:
    """Accounts with a cheap argon2 setting, for tests."""
    hasher = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    return Accounts(store, Tokens("k" * 40), hasher=hasher)
