"""UUIDv7 identifiers: well formed, time-ordered, and never repeated, across the refills of
the random pool and across a fork."""

from __future__ import annotations

import os
import uuid

from acme_runtime.ids import uuid7, uuid7_time_ms


def test_ids_are_version_7_with_the_rfc_variant_and_carry_their_millisecond() -> None:
    value = uuid7(1_700_000_000_123)
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert uuid7_time_ms(value) == 1_700_000_000_123


def test_ids_sort_by_creation_time() -> None:
    assert uuid7(1_000) < uuid7(1_001) < uuid7(2_000)


def test_ten_thousand_ids_across_many_refills_of_the_random_pool_are_distinct() -> None:
    ids = {uuid7(5_000) for _ in range(10_000)}  # one millisecond: only the random bits differ
    assert len(ids) == 10_000


def test_a_forked_child_does_not_hand_out_its_parents_next_ids() -> None:
    uuid7()  # the pool holds bytes the parent has not used yet
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.close(read)
        os.write(write, b"".join(uuid7(1).bytes for _ in range(5)))
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    parents = b"".join(uuid7(1).bytes for _ in range(5))
    assert len(child) == 80
    assert child != parents
