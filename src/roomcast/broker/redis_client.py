"""Connections to Redis as deployed: one server, a Redis Cluster, or one server behind Sentinel.

``--redis-url`` names one address; :func:`open_client` finds out what is
there. A server that says ``cluster_enabled:1`` is a Redis Cluster, and the
client becomes redis-py's cluster client (it learns every shard from that
one address and follows failovers and slot moves by itself). A
``redis+sentinel://`` URL names Sentinels and the service they watch; the
client asks them for the current master, and again after a failover.

Every key and channel roomcast uses carries a hash tag (``{...}``) so that
each command and script touches one slot, which a cluster requires and a
single server does not mind.
"""

from __future__ import annotations

from typing import Final, TypeAlias
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

__all__ = [
    "COMMAND_TIMEOUT",
    "REDIS_ERRORS",
    "RedisClient",
    "SENTINEL_SCHEMES",
    "close_client",
    "open_client",
    "redis_reason",
    "redis_where",
]

#: Seconds one Redis command may take before it counts as failed.
COMMAND_TIMEOUT: Final = 2.0

#: URL schemes that name Sentinels: ``redis+sentinel://host:26379[,host:26379]/service``.
SENTINEL_SCHEMES: Final = frozenset({"redis+sentinel", "rediss+sentinel"})

#: A client for one server (or a Sentinel-watched master), or for a whole cluster.
RedisClient: TypeAlias = "aioredis.Redis | RedisCluster"


def _name(name: str) -> str:
    """A ``CLIENT SETNAME`` value: no spaces, nothing unprintable."""
    return "".join(c if c.isprintable() and not c.isspace() else "_" for c in name)


async def is_cluster(url: str) -> bool:
    """Whether the server at ``url`` is a node of a Redis Cluster.

    Raises:
        RedisError, OSError: the server does not answer.
        ValueError: ``url`` is not a Redis URL.
    """
    if urlsplit(url).scheme.lower() in SENTINEL_SCHEMES:
        return False
    probe = aioredis.Redis.from_url(
        url, socket_connect_timeout=COMMAND_TIMEOUT, socket_timeout=COMMAND_TIMEOUT
    )
    try:
        info = await probe.info("cluster")
    finally:
        await probe.aclose()
    return bool(info.get("cluster_enabled"))


def connect(url: str, *, name: str, retries: int, cluster: bool) -> RedisClient:
    """A client for ``url`` (no round trip yet); ``cluster`` from :func:`is_cluster`.

    Args:
        url: ``redis://``, ``rediss://``, ``unix://``, or ``redis+sentinel://``.
        name: the connection's name in ``CLIENT LIST``.
        retries: quick retries of a command on a fresh connection.
        cluster: whether the URL names a Redis Cluster node.

    Raises:
        ValueError: the URL cannot be used.
    """
    retry = Retry(NoBackoff(), retries)
    if cluster:
        return RedisCluster.from_url(
            url,
            client_name=_name(name),
            socket_connect_timeout=COMMAND_TIMEOUT,
            socket_timeout=COMMAND_TIMEOUT,
            retry=retry,
        )
    parts = urlsplit(url)
    if parts.scheme.lower() in SENTINEL_SCHEMES:
        return _sentinel_master(url, name=_name(name), retry=retry)
    return aioredis.Redis.from_url(
        url,
        client_name=_name(name),
        socket_connect_timeout=COMMAND_TIMEOUT,
        socket_timeout=COMMAND_TIMEOUT,
        retry=retry,
        health_check_interval=0,
    )


async def open_client(url: str, *, name: str, retries: int = 1) -> RedisClient:
    """A client for whatever ``url`` names, found out with one round trip.

    Raises:
        RedisError, OSError: the server does not answer.
        ValueError: the URL cannot be used.
    """
    return connect(url, name=name, retries=retries, cluster=await is_cluster(url))


async def close_client(client: RedisClient) -> None:
    """Close ``client`` and, for a Sentinel URL's, its connections to the Sentinels.

    ``aclose()`` alone leaves those open: they belong to the ``Sentinel``
    that :func:`connect` made, which only the client's pool knows.
    """
    await client.aclose()
    pool = getattr(client, "connection_pool", None)
    manager = getattr(pool, "sentinel_manager", None)
    if manager is not None:
        await manager.aclose()


def _sentinel_master(url: str, *, name: str, retry: Retry) -> aioredis.Redis:
    """The master a ``redis+sentinel://`` URL's Sentinels name, followed across failovers."""
    parts = urlsplit(url)
    service = unquote(parts.path.lstrip("/").split("/", 1)[0])
    if not service:
        raise ValueError("a redis+sentinel:// URL ends with the service name: .../mymaster")
    hosts: list[tuple[str, int]] = []
    netloc = parts.netloc.rsplit("@", 1)[-1]
    for item in netloc.split(","):
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "26379")
        if not host:
            raise ValueError(f"bad Sentinel address {item!r}")
        hosts.append((host.strip("[]"), int(port or 26379)))
    query = parse_qs(parts.query)
    db = int(query.get("db", ["0"])[0])
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        hosts,
        socket_timeout=COMMAND_TIMEOUT,
        sentinel_kwargs={"socket_timeout": COMMAND_TIMEOUT},
    )
    master: aioredis.Redis = sentinel.master_for(
        service,
        db=db,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        client_name=name,
        socket_connect_timeout=COMMAND_TIMEOUT,
        socket_timeout=COMMAND_TIMEOUT,
        retry=retry,
        ssl=parts.scheme.lower().startswith("rediss"),
    )
    return master


def redis_reason(exc: BaseException) -> str:
    """One line saying why a Redis call failed (for logs and the error at start)."""
    if isinstance(exc, MasterNotFoundError):
        # redis-py's own text is the repr of a whole client.
        return "no Sentinel named a master for the service (are they up, is the name right?)"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


def redis_where(url: str) -> str:
    """``host:port`` of a Redis URL, without credentials (for messages)."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        if parts.scheme.lower() in SENTINEL_SCHEMES:
            return f"sentinels {netloc}"
        return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
    except ValueError:
        return "the given address"


#: What a Redis call raises when the server is away or answers with an error.
#: The cluster client's own errors (no shard for a slot, mid-failover) are not
#: RedisErrors.
REDIS_ERRORS: Final = (RedisError, RedisClusterException, OSError)
