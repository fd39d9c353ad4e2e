"""Brokers: how a node's publications reach the other nodes.

:class:`~roomcast.broker.base.Broker` is the interface; :func:`open_broker`
chooses an implementation (imported only when chosen).
"""

from __future__ import annotations

from ..exceptions import ConfigError
from .base import Broker, Publication

__all__ = ["Broker", "Publication", "open_broker"]


def open_broker(
    url: str | None, *, prefix: str = "roomcast:", presence_ttl: float = 30.0
) -> Broker:
    """The broker for a ``--redis-url`` (``None`` for the in-process broker).

    Args:
        url: ``redis://`` or ``rediss://`` (TLS; one server or any node of a
            Redis Cluster), ``redis+sentinel://`` (Sentinels), or None.
        prefix: what every Redis key and channel name starts with, so
            several services (or tests) can share one Redis.
        presence_ttl: seconds after which a node that stopped refreshing its
            presence is taken for dead and its users leave their rooms.

    Raises:
        ConfigError: the URL is not one roomcast can use.
    """
    from .memory import MemoryBroker

    if url is None or url == "memory:":
        return MemoryBroker()
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in {"redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel"}:
        from .redis import RedisBroker

        return RedisBroker(url, prefix=prefix, presence_ttl=presence_ttl)
    raise ConfigError(
        f"unsupported --redis-url scheme {scheme or url!r}: use redis://, rediss:// "
        "or redis+sentinel://"
    )
