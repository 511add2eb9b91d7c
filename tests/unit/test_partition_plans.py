"""Which partitions a retention round drops: whole ranges past the retention, the floor with
them, and an empty floor never on its own (no drop-and-make-again churn every round)."""

from __future__ import annotations

from acme_runtime.partitions import Partition, plan_expired, uuid7_bound

MINUTE_MS = 60_000
T0 = 1_800_000_000_000 // MINUTE_MS * MINUTE_MS


def grid(first_minute: int, count: int) -> list[Partition]:
    """A floor below minute `first_minute`, then `count` one-minute partitions."""
    floor = Partition("t_floor", None, uuid7_bound(T0 + first_minute * MINUTE_MS))
    return [floor] + [
        Partition(
            f"t_{m}",
            uuid7_bound(T0 + m * MINUTE_MS),
            uuid7_bound(T0 + (m + 1) * MINUTE_MS),
        )
        for m in range(first_minute, first_minute + count)
    ]


def test_old_partitions_go_with_the_floor_which_moves_up_below_the_first_kept() -> None:
    parts = grid(0, 10)
    expired, floor = plan_expired(parts, "t", retention_s=300, now_ms=T0 + 8 * MINUTE_MS)
    assert [p.name for p in expired] == ["t_floor", "t_0", "t_1", "t_2"]
    assert floor == Partition("t_floor", None, uuid7_bound(T0 + 3 * MINUTE_MS))


def test_an_empty_floor_right_below_the_kept_partitions_stays() -> None:
    """After a round the floor's upper bound is the cutoff's partition's lower bound, older
    than the retention: it is left alone while it holds nothing."""
    parts = grid(3, 7)
    now = T0 + 8 * MINUTE_MS + 30_000
    assert plan_expired(parts, "t", retention_s=300, now_ms=now) == ([], None)


def test_a_floor_holding_rows_past_retention_goes_even_alone() -> None:
    parts = grid(3, 7)
    now = T0 + 8 * MINUTE_MS + 30_000
    expired, floor = plan_expired(parts, "t", retention_s=300, now_ms=now, floor_has_rows=True)
    assert [p.name for p in expired] == ["t_floor"]
    assert floor == Partition("t_floor", None, uuid7_bound(T0 + 3 * MINUTE_MS))


def test_nothing_goes_while_every_partition_is_inside_the_retention() -> None:
    parts = grid(0, 10)
    assert plan_expired(parts, "t", retention_s=3_600, now_ms=T0 + 8 * MINUTE_MS) == ([], None)
