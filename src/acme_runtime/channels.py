"""Names of the Redis keys the two services share: the wire contract's addresses.

Every key carries the `{acme}` hash tag so that all of them live in one Redis Cluster slot and
the Lua scripts, which touch several at once, stay cluster-safe. The notifier's private keys
(ledger, locks) live in `acme_notify.keys`; these are only the ones both sides must agree on.
"""

from __future__ import annotations

from typing import Final

HASH_TAG: Final = "{acme}"

#: The stream of order notification events (producer: order service; consumer: notifier group).
EVENTS_STREAM: Final = f"{HASH_TAG}:events"
#: Consumer group of the notifier replicas on EVENTS_STREAM.
NOTIFIER_GROUP: Final = "notifier"
#: The stream of delivery receipts (producer: notifier; consumer: order service).
RECEIPTS_STREAM: Final = f"{HASH_TAG}:receipts"
#: Consumer group of the order service on RECEIPTS_STREAM.
RECEIPTS_GROUP: Final = "orders"
#: Entries moved out of EVENTS_STREAM after too many failed deliveries or a permanent failure.
DEAD_STREAM: Final = f"{HASH_TAG}:dead"
#: Prefix of the publish-once dedupe keys, one per event id, value = the entry's stream id.
PUBLISHED_PREFIX: Final = f"{HASH_TAG}:published:"


def published_key(event_id: str) -> str:
    """The dedupe key that makes publishing event `event_id` idempotent."""
    return f"{PUBLISHED_PREFIX}{event_id}"
