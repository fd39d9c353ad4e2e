"""Quotas: the limits that must hold over every node (guest names, connections per user, logins).

:class:`~roomcast.quota.base.Quotas` is the interface the node asks;
:func:`open_quotas` chooses an implementation, as
:func:`~roomcast.broker.open_broker` chooses the broker: in memory for one
node, in Redis when nodes share one (imported only when chosen).
"""

from __future__ import annotations

from ..exceptions import ConfigError
from .base import Quotas
from .memory import MemoryQuotas

__all__ = ["MemoryQuotas", "Quotas", "open_quotas"]

#: URL schemes :class:`~roomcast.quota.redis.RedisQuotas` connects to.
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel"})


def open_quotas(url: str | None, *, prefix: str = "roomcast:", ttl: float = 30.0) -> Quotas:
    """The quotas for a ``--redis-url`` (``None``: this process's own).

    Args:
        url: the Redis the nodes share, or None.
        prefix: what every Redis key starts with (``--redis-prefix``).
        ttl: seconds after which a node that stopped refreshing is taken for
            dead and the names and connections it held are free.

    Raises:
        ConfigError: the URL is not one roomcast can use.
    """
    if url is None or url == "memory:":
        return MemoryQuotas()
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in REDIS_SCHEMES:
        from .redis import RedisQuotas

        return RedisQuotas(url, prefix=prefix, ttl=ttl)
    raise ConfigError(
        f"unsupported --redis-url scheme {scheme or url!r}: use redis:// or rediss://"
    )
