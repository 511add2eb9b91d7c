"""Queue N confirmation tasks with no worker running: the peer's side of the drain benchmark.

``python enqueue.py COUNT`` (from bench/peer/.venv, in bench/peer; PEER_REDIS_URL set).
Prints the Celery queue's length afterwards.
"""

from __future__ import annotations

import sys
import uuid

from tasks import app, send_confirmation

_MAX_COUNT = 1_000_000
#: Two items, as the API hands a typical order of bench/loadgen.py over (it varies 1 to 5).
_ITEMS = [
    {"sku": "SKU-1", "name": "Camiseta", "quantity": 2, "unit_price": "29.90"},
    {"sku": "SKU-2", "name": "Caneca", "quantity": 1, "unit_price": "40.00"},
]


def main() -> int:
    count = int(sys.argv[1])
    if not 1 <= count <= _MAX_COUNT:
        print(f"enqueue: COUNT in [1, {_MAX_COUNT}]", file=sys.stderr)
        return 2
    with app.producer_or_acquire() as producer:
        for index in range(count):
            send_confirmation.apply_async(
                (str(uuid.uuid4()), f"customer{index}@example.com", "Ana Souza", "pt-BR",
                 "99.80", "BRL", _ITEMS),
                producer=producer,
            )  # fmt: skip
    with app.connection_for_write() as connection:
        length = connection.default_channel.client.llen("celery")
    print(length)
    return 0


if __name__ == "__main__":
    sys.exit(main())
