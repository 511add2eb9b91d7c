"""The one in-process retry delay: doubling from the first delay, capped, starting over on reset."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from acme_runtime.backoff import Backoff


def test_delays_double_up_to_the_cap_and_start_over_after_a_reset() -> None:
    """0.1, 0.2, 0.4, ... never above the cap; after reset() the first delay again."""
    backoff = Backoff(first_s=0.1, max_s=0.5)
    assert [backoff.next_s() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    backoff.reset()
    assert backoff.next_s() == 0.1


@given(
    first_s=st.floats(min_value=0.001, max_value=10),
    factor=st.floats(min_value=1, max_value=1000),
    steps=st.integers(min_value=1, max_value=60),
)
def test_a_backoff_never_decreases_and_never_passes_its_cap(
    first_s: float, factor: float, steps: int
) -> None:
    """Without a reset, each delay is at least the one before and at most the cap."""
    max_s = first_s * factor
    backoff = Backoff(first_s, max_s)
    delays = [backoff.next_s() for _ in range(steps)]
    assert delays[0] == first_s
    assert all(a <= b <= max_s for a, b in pairwise(delays))


def test_a_first_delay_above_the_cap_is_refused() -> None:
    """A schedule that could not double is a configuration mistake, said at once."""
    with pytest.raises(ValueError, match="first_s"):
        Backoff(first_s=2.0, max_s=1.0)
