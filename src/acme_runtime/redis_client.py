"""The one place a Redis client is made from a URL: a single node, or a Redis Cluster.

`redis://`, `rediss://` and `unix://` name one node (redis-py's `Redis.from_url`).
`redis+cluster://[user:password@]host:port[,host:port…][?options]` (`rediss+cluster://` for TLS)
names a Redis Cluster by seed nodes: any one that answers is enough, the client discovers the
rest and follows MOVED/ASK redirections and failovers (redis-py's asyncio `RedisCluster`).

The cluster client is handed to the rest of the code as a `Redis`: it has the same command
methods, and everything the services send touches one hash slot per command or script (each
shard's keys share a hash tag, acme_runtime.channels), which is what a cluster requires. What a
cluster cannot do (MULTI/EXEC with WATCH, keys of several slots in one script) is not used on
the services' paths.
"""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from acme_runtime.env import REDIS_CLUSTER_SCHEMES

__all__ = ["cluster_seeds", "is_cluster", "is_cluster_url", "open_redis"]

#: Client options a cluster URL's query may carry (the rest are the single node's).
_CLUSTER_QUERY: frozenset[str] = frozenset(
    {"ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname"}
)


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in REDIS_CLUSTER_SCHEMES


def is_cluster(redis: Redis) -> bool:
    """Whether a client made by `open_redis` talks to a Redis Cluster."""
    return isinstance(redis, RedisCluster)


def cluster_seeds(url: str) -> list[tuple[str, int]]:
    """The seed nodes of a `redis+cluster://` URL, in order (port 6379 when none is given)."""
    hostspec = urlsplit(url).netloc.rpartition("@")[2]
    seeds = []
    for part in hostspec.split(","):
        parsed = urlsplit(f"//{part}")
        if not parsed.hostname:
            raise ValueError(f"no host in the seed {part!r}")
        seeds.append((parsed.hostname, parsed.port or 6379))
    return seeds


def open_redis(url: str, **options: Any) -> Redis:
    """A client for `url`; `options` are redis-py's connection options (timeouts, retry,
    health checks), applied to every node's connections for a cluster."""
    if not is_cluster_url(url):
        return Redis.from_url(url, **options)
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    unknown = set(query) - _CLUSTER_QUERY
    if unknown:
        raise ValueError(f"options not supported in a cluster URL: {', '.join(sorted(unknown))}")
    tls: dict[str, Any] = {}
    if parts.scheme == "rediss+cluster":
        tls = {"ssl": True, **query}
        if "ssl_check_hostname" in tls:
            tls["ssl_check_hostname"] = tls["ssl_check_hostname"].lower() in ("1", "true", "yes")
    cluster = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in cluster_seeds(url)],
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        **tls,
        **options,
    )
    # Same command API; the services' keys and scripts are cluster-safe (module docstring).
    return cast(Redis, cluster)
