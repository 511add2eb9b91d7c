"""Rescinding dead letters: taking back the few a refusal storm cost before it was recognised.

`acme_notify.flow.RefusalStorm` needs a handful of refusals to tell a relay refusing *us* (in
words no rule knows) from bounces; until then those few e-mails were dead-lettered as the
recipients' fault. This replica remembers the dead letters of SMTP refusals it wrote lately,
by refusal; when a storm of one refusal is declared, the ones of that refusal go back on the
stream at once (`Streams.rescind`: replay_dead.lua, audited with this consumer's name), so a
misconfigured relay costs no dead letter at all once it is fixed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Final

import structlog
from prometheus_client import Counter

from acme_notify.replies import refusal_key
from acme_notify.streams import Streams

__all__ = ["Rescinder"]

log = structlog.get_logger(__name__)

#: Dead letters of SMTP refusals remembered, and for how long a storm may take them back.
RESCIND_MEMORY: Final = 256
RESCIND_WINDOW_S: Final = 300.0


class Rescinder:
    def __init__(self, shards: Sequence[Streams], rescinded: Counter) -> None:
        self._shards = shards
        self._rescinded = rescinded
        # (refusal key, loop time, shard index, dead id), oldest first.
        self._recent: deque[tuple[str, float, int, str]] = deque(maxlen=RESCIND_MEMORY)

    def remember(self, reason: str, shard: int, dead_id: str) -> None:
        """An e-mail SMTP refused with `reason` was dead-lettered as `dead_id` on `shard`."""
        now = asyncio.get_running_loop().time()
        self._recent.append((refusal_key(reason), now, shard, dead_id))

    async def rescind(self, storm_key: str, reason: str) -> None:
        """A storm of the refusal `storm_key` was declared: take its dead letters back. Never
        raises: a failure leaves them dead, for `acme dead replay`, and says so."""
        now = asyncio.get_running_loop().time()
        mine: dict[int, list[str]] = {}
        for key, at, shard, dead_id in self._recent:
            if key == storm_key and now - at <= RESCIND_WINDOW_S:
                mine.setdefault(shard, []).append(dead_id)
        if not mine:
            return
        self._recent = deque(
            (item for item in self._recent if item[3] not in mine.get(item[2], ())),
            maxlen=RESCIND_MEMORY,
        )
        for shard, dead_ids in mine.items():
            try:
                replayed = await self._shards[shard].rescind(
                    dead_ids, why=f"refusal storm: {reason}"
                )
            except Exception as exc:  # noqa: BLE001 - they stay dead, for `acme dead replay`
                log.error(
                    "dead_letters_not_rescinded", shard=shard, dead_ids=dead_ids, error=repr(exc)
                )
                continue
            log.warning(
                "dead_letters_rescinded",
                shard=shard,
                dead_ids=dead_ids,
                new_ids=replayed,
                reason=reason,
            )
            self._rescinded.inc(len(replayed))
