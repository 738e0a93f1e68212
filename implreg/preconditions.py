"""Preconditions of a check: what must be true for a claim's comparisons to mean anything.

A claim's *conclusion* is asserted through ``certify`` (a certified-false comparison refutes the claim).  Its
*preconditions* — the solver reached the requested loss, the drawn instance is in the claim's domain, the
init is balanced — are stated with ``require``.  A failed precondition is never a refutation:

- ``require(cond, what)`` raises ``PreconditionFailed`` naming ``what``: the verdict is ``error`` ("the check
  could not be carried out"), however the claim's expectation reads, so a negative control can never pass
  because its solver failed;
- ``require(cond, what, discard=True)`` discards the example instead (like ``hypothesis.assume``) and counts
  the discard under ``what``; the report lists the reasons, and a claim whose every example is discarded is
  ``error`` (no valid instance), one with too few valid examples ``inconclusive``.

``hypothesis.assume`` stays the tool for filtering draws; ``discard=True`` is for conditions only known after
computing (a flow that did not converge) that the claim's statement explicitly excludes.
"""

from __future__ import annotations

import contextvars
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from implreg.errors import ImplregError, InvalidInputError

__all__ = ["PreconditionFailed", "discard_counts", "require", "tally"]

_DISCARDS: contextvars.ContextVar[Counter[str] | None] = contextvars.ContextVar("implreg_discards", default=None)


class PreconditionFailed(ImplregError):
    """A precondition of the check failed (not the claim's conclusion): the verdict is ``error``."""

    def __init__(self, what: str, detail: str):
        self.what = what
        super().__init__(f"precondition failed: {what} ({detail})")


def _as_bool_array(cond: Any, what: str) -> np.ndarray:
    if type(cond).__module__.startswith("torch"):
        if str(cond.dtype) != "torch.bool":
            raise InvalidInputError(f"require({what!r}): expected a bool or boolean tensor, got dtype {cond.dtype}")
        return cond.detach().to("cpu").numpy()
    arr = np.asarray(cond)
    if arr.dtype != np.bool_:
        raise InvalidInputError(f"require({what!r}): expected a bool or boolean array, got dtype {arr.dtype}")
    return arr


def require(cond: Any, what: str, *, discard: bool = False) -> None:
    """State a precondition of the check: ``cond`` (a bool, or a boolean array/tensor checked elementwise).

    False anywhere: raise ``PreconditionFailed`` naming ``what`` (verdict ``error``), or with ``discard=True``
    discard the example (``hypothesis.reject``) and count it under ``what``.  Never a refutation.
    """
    if not isinstance(what, str) or not what.strip():
        raise InvalidInputError("require: give what='…', the precondition in words (it names the failure)")
    arr = _as_bool_array(cond, what)
    bad = ~arr
    if not bad.any():
        return
    first = tuple(int(i) for i in np.unravel_index(int(np.flatnonzero(bad)[0]), arr.shape)) if arr.shape else ()
    where = "the (single) instance" if not first else f"instance {first[0] if len(first) == 1 else first}"
    detail = f"false at {where}; {int(bad.sum())} of {arr.size} instance(s)"
    if discard:
        counts = _DISCARDS.get()
        if counts is not None:
            counts[what] += 1
        from hypothesis import currently_in_test_context, reject
        from hypothesis.errors import UnsatisfiedAssumption

        if not currently_in_test_context():  # a pooled body (implreg.harness.pooling) runs outside Hypothesis
            raise UnsatisfiedAssumption(what)
        reject()
    raise PreconditionFailed(what, detail)


@contextmanager
def tally() -> Iterator[Counter[str]]:
    """Count ``require(..., discard=True)`` discards by reason while a claim runs (used by the verdict)."""
    counts: Counter[str] = Counter()
    token = _DISCARDS.set(counts)
    try:
        yield counts
    finally:
        _DISCARDS.reset(token)


def discard_counts() -> dict[str, int] | None:
    """The discards counted so far in the running claim (None outside a claim run)."""
    counts = _DISCARDS.get()
    return None if counts is None else dict(counts)
