"""Housekeeping of consumer-group members, shared by the notifier and the receipts consumer."""

from __future__ import annotations

from redis.asyncio import Redis

from acme_runtime.lua import load_script

__all__ = ["prune_consumers"]


async def prune_consumers(
    redis: Redis, stream: str, group: str, *, min_idle_ms: int, keep: str = "", only: str = ""
) -> list[str]:
    """Deletes the group's consumers with no pending entries, idle for `min_idle_ms`; `keep`
    is never deleted, and `only` limits it to one name (a replica leaving removes itself)."""
    deleted = await load_script("prune_consumers").run(
        redis, [stream], [group, min_idle_ms, keep, only]
    )
    return [name.decode() if isinstance(name, bytes) else str(name) for name in deleted]
