"""W1's ODE, written once for numpy, jax.numpy and torch: the gradient flow of a depth-N factorization.

Ẇ_j = −∂ℓ/∂W_j = −(W_N⋯W_{j+1})ᵀ · R · (W_{j−1}⋯W_1)ᵀ,  R = M ⊙ (W_N⋯W_1 − T),  ℓ = ½‖R‖²_F
(Arora et al. 2019, eq. 2; Razin & Cohen 2020, §3).  The state y packs the 2×2 factors row-major, W_1 first,
with any batch dimensions in front: y[..., 4j : 4j + 4] is W_{j+1}.

Only ``@``, ``*``, ``-``, ``.reshape`` and ``.swapaxes`` are used on the arrays, which numpy, jax and torch spell
alike, so scipy's baseline and both peers integrate literally the same expression; only the concatenation of
the packed state is passed in (``np.concatenate``, ``jnp.concatenate`` or ``torch.cat``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# Razin & Cohen (2020) §3, problem P: Ω = {(1,2),(2,1),(2,2)}, b12 = b21 = 1, b22 = 0 (the same as
# implreg.matrix.problems.razin_cohen_2x2, which the engine solves; tests/test_bench.py checks the two agree).
MASK = np.array([[0.0, 1.0], [1.0, 1.0]])
TARGET = np.array([[0.0, 1.0], [1.0, 0.0]])

Array = Any  # a numpy, jax or torch array: the functions below are written against what the three share


def unpack(y: Array, depth: int) -> list[Array]:
    """The factors W_1, …, W_N, each (..., 2, 2), from the packed state (..., 4N)."""
    batch = tuple(y.shape[:-1])
    return [y[..., 4 * j : 4 * j + 4].reshape(*batch, 2, 2) for j in range(depth)]


def pack(mats: Sequence[Array], concatenate: Callable) -> Array:
    """The packed state (..., 4N) of ``mats`` (each (..., 2, 2)); inverse of :func:`unpack`."""
    return concatenate([m.reshape(*tuple(m.shape[:-2]), 4) for m in mats], -1)


def prefix_products(Ws: Sequence[Array]) -> list[Array]:
    """[W_1, W_2W_1, …, W_N⋯W_1]: the last entry is the end-to-end matrix."""
    pre = [Ws[0]]
    for W in Ws[1:]:
        pre.append(W @ pre[-1])
    return pre


def loss(Ws: Sequence[Array], mask: Array, target: Array) -> Array:
    """ℓ = ½‖M ⊙ (W_N⋯W_1 − T)‖²_F, one value per instance."""
    r = mask * (prefix_products(Ws)[-1] - target)
    return 0.5 * (r * r).reshape(*tuple(r.shape[:-2]), 4).sum(-1)


def velocity(Ws: Sequence[Array], mask: Array, target: Array) -> list[Array]:
    """[Ẇ_1, …, Ẇ_N] = −∇ℓ (formula in the module docstring), accumulating W_Nᵀ⋯W_{j+1}ᵀ·R from the left."""
    N = len(Ws)
    pre = prefix_products(Ws)
    left = mask * (pre[-1] - target)
    grads: list[Array] = [None] * N
    for j in range(N, 0, -1):
        grads[j - 1] = left if j == 1 else left @ pre[j - 2].swapaxes(-1, -2)
        if j > 1:
            left = Ws[j - 1].swapaxes(-1, -2) @ left
    return [-g for g in grads]


def rhs(y: Array, depth: int, mask: Array, target: Array, concatenate: Callable) -> Array:
    """ẏ for the packed state y (..., 4N)."""
    return pack(velocity(unpack(y, depth), mask, target), concatenate)


def end_to_end(y: Array, depth: int) -> Array:
    """W_N⋯W_1 (..., 2, 2) from the packed state."""
    return prefix_products(unpack(y, depth))[-1]
