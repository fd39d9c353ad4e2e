"""The Quotas interface: limits counted over every node, not per process.

Three limits must hold for the whole service, whichever node a client
reaches: a guest's nickname is unique, a user has at most
``--max-connections-per-user`` connections, and failed logins slow down
the next ones for an account and an address. :class:`Quotas` is what the
node asks; :class:`~roomcast.quota.memory.MemoryQuotas` answers for one
process and :class:`~roomcast.quota.redis.RedisQuotas` for every node
sharing a Redis.

Each claim names the connection it is for (its session id), so giving one
back is idempotent and cannot give back another connection's claim of the
same name. Giving back never waits: the node calls it from a disconnect.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Quotas"]


class Quotas(Protocol):
    """Guest names, connections per user and the login throttle, shared by the nodes."""

    async def start(self, node_id: str) -> None:
        """Begin counting for node ``node_id`` (before any claim)."""
        ...

    async def close(self) -> None:
        """Give back every claim this node holds and stop."""
        ...

    async def claim_guest(self, name: str, conn: str) -> bool:
        """Reserve guest nickname ``name`` (any case) for connection ``conn``.

        False when another connection, on any node, uses it.
        """
        ...

    def release_guest(self, name: str, conn: str) -> None:
        """Connection ``conn`` no longer uses guest nickname ``name``."""
        ...

    async def add_connection(self, user: str, conn: str, cap: int) -> bool:
        """Count connection ``conn`` for ``user``; False when ``user`` has ``cap`` already."""
        ...

    def remove_connection(self, user: str, conn: str) -> None:
        """Connection ``conn`` no longer counts for ``user``."""
        ...

    async def login_check(self, address: str, name: str) -> float:
        """Seconds a login for ``name`` from ``address`` must wait; 0: ask the store.

        Takes nothing: a refused attempt costs no store read.
        """
        ...

    async def login_attempt(self, address: str, name: str, *, exists: bool) -> float:
        """Seconds until this login may be tried; 0: go ahead (counted as failed until
        :meth:`login_succeeded`)."""
        ...

    async def login_succeeded(self, address: str, name: str) -> None:
        """The login for ``name`` worked: forget its failures, trust ``address`` for it."""
        ...
