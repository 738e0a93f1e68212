"""The order in which ``implreg verify`` hands claims to its pytest-xdist workers.

``--dist worksteal`` gives each of the n workers one contiguous part of the collection (sizes ``⌊R/(n − i)⌋`` of
the R items still unassigned, for worker i = 0, 1, …) and lets an idle worker take the back half of the longest
queue.  The pooled claims (``@claim(instances=…)``) are the long ones: 13–84 s each against ≤ 16 s for every
other claim (fresh-clone verify at ef37b91, 2 workers).  In file order they sat wherever their module put them,
and embedding-norms-diverge (84 s) started 61st of 62: 392 s of claims took 238 s of wall on 2 workers, ~40 s
more than an even split.  So each worker's part starts with its round-robin share of the pooled claims, and the
others fill the parts in file order: the long claims start first everywhere, and stealing, which takes from the
back, moves short ones.  Only the order changes; every claim's seed and result are the same in any order.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["long_first_order"]


def long_first_order(is_long: Sequence[bool], workers: int) -> list[int]:
    """A permutation of ``range(len(is_long))``: worker i's initial worksteal part starts with every n-th long item
    (from the i-th on), then short items in their order; relative order is kept within each kind."""
    total = len(is_long)
    if workers <= 1 or total == 0:
        return list(range(total))
    sizes, left = [], total
    for i in range(workers):
        sizes.append(left // (workers - i))
        left -= sizes[-1]
    long = [k for k, x in enumerate(is_long) if x]
    short = iter(k for k, x in enumerate(is_long) if not x)
    parts = [long[i::workers] for i in range(workers)]
    if any(len(p) > s for p, s in zip(parts, sizes, strict=True)):
        return long + list(short)  # more long items than a part holds: long first, as evenly as that allows
    order = []
    for part, size in zip(parts, sizes, strict=True):
        order += part + [next(short) for _ in range(size - len(part))]
    return order
