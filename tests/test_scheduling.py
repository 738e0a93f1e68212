"""``implreg.harness.scheduling.long_first_order``: each xdist worker's initial worksteal part starts with its
share of the long (pooled) claims; a permutation that keeps the order within each kind."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from implreg.harness.scheduling import long_first_order


def _parts(n_items: int, workers: int) -> list[range]:
    """The contiguous parts xdist's worksteal scheduler first sends: ⌊R/(n − i)⌋ of the R items left, in turn."""
    out, start, left = [], 0, n_items
    for i in range(workers):
        size = left // (workers - i)
        out.append(range(start, start + size))
        start, left = start + size, left - size
    return out


@given(is_long=st.lists(st.booleans(), max_size=80), workers=st.integers(1, 6))
def test_permutation_keeping_each_kind_in_order(is_long: list[bool], workers: int) -> None:
    order = long_first_order(is_long, workers)
    assert sorted(order) == list(range(len(is_long)))
    for kind in (True, False):
        picked = [k for k in order if is_long[k] == kind]
        if workers == 1 or kind is False:
            assert picked == sorted(picked)


@given(is_long=st.lists(st.booleans(), max_size=80), workers=st.integers(2, 6))
def test_every_part_starts_with_its_long_items(is_long: list[bool], workers: int) -> None:
    order = long_first_order(is_long, workers)
    n_long = sum(is_long)
    parts = _parts(len(order), workers)
    if any(len(range(i, n_long, workers)) > len(p) for i, p in enumerate(parts)):
        assert all(is_long[k] for k in order[:n_long])  # too many to share out: all of them first
        return
    for i, part in enumerate(parts):
        kinds = [is_long[order[j]] for j in part]
        share = len(range(i, n_long, workers))
        assert kinds == [True] * share + [False] * (len(part) - share)


def test_the_suite_at_two_workers() -> None:
    """9 pooled claims among 62 (the suite at ef37b91, pooled ones at these file positions): 5 start worker 0's
    31, 4 start worker 1's."""
    pooled = {3, 5, 7, 12, 24, 27, 31, 40, 58}
    order = long_first_order([k in pooled for k in range(62)], 2)
    assert order[:5] == [3, 7, 24, 31, 58] and order[31:35] == [5, 12, 27, 40]
    assert order[5:8] == [0, 1, 2]
