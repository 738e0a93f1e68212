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
