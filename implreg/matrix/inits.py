"""Batches of matrix-factorization inits, duck-typed: anything with ``depth`` and ``factors(dtype)`` (the
``implreg.strategies.matrix`` instances, or a caller's own), so that this layer needs no strategies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from implreg.errors import InvalidInputError

__all__ = ["is_balanced", "stack_factors"]


def stack_factors(inits: Sequence[Any], dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    """Concatenate the factors (W_1, …, W_N) of instances of one depth and shape along the batch axis."""
    if not inits:
        raise InvalidInputError("stack_factors needs at least one instance")
    per = [i.factors(dtype) for i in inits]
    depth = {len(p) for p in per}
    if len(depth) != 1:
        raise InvalidInputError(f"instances of different depths cannot share a batch: {sorted(depth)}")
    return tuple(torch.cat([p[j] for p in per], dim=0) for j in range(len(per[0])))


def is_balanced(init: Any) -> bool:
    """Whether an init declares itself balanced (W_{j+1}ᵀW_{j+1} = W_jW_jᵀ by construction): ``init.balanced``."""
    return bool(getattr(init, "balanced", False))
