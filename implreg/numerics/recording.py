"""The recorder hook: a context variable in which the harness registers the recorder of the running claim.

It lives at the bottom layer so that certified comparisons (``implreg.numerics``) can record what they decided
without importing the harness; ``implreg.harness.recorder`` sets it.  Outside a claim run ``current()`` is None.
"""

from __future__ import annotations

import contextvars
from typing import Any

#: The running claim's recorder (an ``implreg.harness.recorder.Recorder``), or None.
_CURRENT: contextvars.ContextVar[Any] = contextvars.ContextVar("implreg_recorder", default=None)


def current() -> Any:
    """The recorder of the claim that is running in this context, or None."""
    return _CURRENT.get()


def built(cmp: Any) -> None:
    """A comparison was made: the running claim's recorder keeps it until ``certify`` decides it."""
    rec = _CURRENT.get()
    if rec is not None and hasattr(rec, "note_built"):
        rec.note_built(cmp)


def decided(cmp: Any) -> None:
    """``certify`` took the comparison."""
    rec = _CURRENT.get()
    if rec is not None and hasattr(rec, "note_decided"):
        rec.note_decided(cmp)


def unchecked_read(solution: Any, text: str) -> None:
    """A claim read the final state of a solve that did not finish on some instances, without asking which (its
    ``ok``): the running claim's recorder keeps it until the solution's ``ok`` is read."""
    rec = _CURRENT.get()
    if rec is not None and hasattr(rec, "note_unchecked"):
        rec.note_unchecked(solution, text)


def checked(solution: Any) -> None:
    """The claim asked which instances of ``solution`` finished (``ok``, ``status``, ``raise_on_failure``)."""
    rec = _CURRENT.get()
    if rec is not None and hasattr(rec, "note_checked"):
        rec.note_checked(solution)
