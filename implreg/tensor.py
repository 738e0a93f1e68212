"""CP tensor factorization at toy scale: gradient descent from small init, the zero-filled baseline, and a
numerical tensor rank (Razin & Cohen 2020's tensor experiment, CLAIMS.md claim 10).

Order-3 tensors, batch first: a CP factorization is ``(A, B, C)`` with A (n, I, R), B (n, J, R), C (n, K, R) and
``T_ijk = Σ_r A_ir B_jr C_kr``; the completion loss is ``½ Σ_{Ω} (T_ijk − Y_ijk)²``.

- :func:`cp_tensor` — the tensor of a CP factorization.
- :func:`cp_descent` — batched gradient descent on the factors from i.i.d. N(0, scale²) entries.
- :func:`zero_filled` — the "linear" baseline: observed values, zeros elsewhere.
- :func:`numerical_rank` — the ε-rank: the smallest k for which alternating least squares (several restarts)
  finds a rank-k CP tensor within relative Frobenius distance ε.  ALS can miss the best rank-k fit, so this is
  an upper bound on the true ε-rank; the same procedure is applied to every tensor compared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from implreg.errors import InvalidInputError

__all__ = ["CPDescent", "cp_descent", "cp_tensor", "low_rank_tensor", "numerical_rank", "zero_filled"]


def cp_tensor(A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """``T_ijk = Σ_r A_ir B_jr C_kr`` for batched factors (n, I, R), (n, J, R), (n, K, R) → (n, I, J, K)."""
    if not (A.ndim == B.ndim == C.ndim == 3 and A.shape[-1] == B.shape[-1] == C.shape[-1]):
        raise InvalidInputError(f"CP factors must be (n, ·, R) with a common R, got {A.shape}, {B.shape}, {C.shape}")
    return torch.einsum("nir,njr,nkr->nijk", A, B, C)


def zero_filled(mask: Tensor, target: Tensor) -> Tensor:
    """The baseline completion: observed values where ``mask`` is 1, zeros elsewhere."""
    return mask * target


def low_rank_tensor(rng: np.random.Generator, shape: tuple[int, int, int], rank: int) -> np.ndarray:
    """A rank-``rank`` CP tensor with i.i.d. N(0, 1) factors, normalized to ‖T‖_F = √(IJK) (entries of order 1)."""
    A, B, C = (rng.standard_normal((n, rank)) for n in shape)
    T = np.einsum("ir,jr,kr->ijk", A, B, C)
    return T / np.linalg.norm(T) * math.sqrt(T.size)


@dataclass
class CPDescent:
    """Result of :func:`cp_descent` for a batch: factors, final tensor, observed loss, steps taken, status."""

    A: Tensor
    B: Tensor
    C: Tensor
    loss: Tensor  # (n,) final ½ Σ_Ω residual²
    steps: Tensor  # (n,) steps taken (until the loss target or max_steps)
    converged: Tensor  # (n,) bool: reached the loss target

    @property
    def tensor(self) -> Tensor:
        return cp_tensor(self.A, self.B, self.C)


def cp_descent(mask: Tensor, target: Tensor, *, rank: int, scale: float, lr: float, loss_target: float,
               max_steps: int = 50_000, generator: torch.Generator | None = None) -> CPDescent:
    """Gradient descent ``θ ← θ − lr·∇ℓ(θ)`` on CP factors of width ``rank`` from i.i.d. N(0, scale²) init, per
    instance until ``ℓ ≤ loss_target`` (then frozen) or ``max_steps``.  ``mask``, ``target``: (n, I, J, K).

    ∂ℓ/∂A_ir = Σ_jk R_ijk B_jr C_kr with R = mask ⊙ (T − Y) (and likewise for B, C).
    """
    if mask.shape != target.shape or mask.ndim != 4:
        raise InvalidInputError(f"mask and target must be (n, I, J, K) of one shape, got {mask.shape}, {target.shape}")
    if not (scale > 0 and lr > 0 and loss_target > 0 and rank >= 1):
        raise InvalidInputError("need rank ≥ 1 and positive scale, lr and loss_target")
    n, ni, nj, nk = mask.shape
    z = {"dtype": target.dtype, "device": target.device}
    A = scale * torch.randn(n, ni, rank, generator=generator, **z)
    B = scale * torch.randn(n, nj, rank, generator=generator, **z)
    C = scale * torch.randn(n, nk, rank, generator=generator, **z)
    steps = torch.zeros(n, dtype=torch.int64, device=target.device)
    active = torch.ones(n, dtype=torch.bool, device=target.device)
    loss = torch.empty(n, **z)
    for _ in range(max_steps):
        R = mask * (cp_tensor(A, B, C) - target)
        loss = 0.5 * (R * R).flatten(1).sum(-1)
        active = active & (loss > loss_target) & torch.isfinite(loss)
        if not active.any():
            break
        gA = torch.einsum("nijk,njr,nkr->nir", R, B, C)
        gB = torch.einsum("nijk,nir,nkr->njr", R, A, C)
        gC = torch.einsum("nijk,nir,njr->nkr", R, A, B)
        m = active.to(target.dtype)[:, None, None]
        A, B, C = A - lr * m * gA, B - lr * m * gB, C - lr * m * gC
        steps = steps + active.to(steps.dtype)
    R = mask * (cp_tensor(A, B, C) - target)
    loss = 0.5 * (R * R).flatten(1).sum(-1)
    return CPDescent(A, B, C, loss, steps, loss <= loss_target)


def _als(T: np.ndarray, k: int, rng: np.random.Generator, iters: int) -> float:
    """Relative error of a rank-k CP fit of T by alternating least squares from a random start."""
    ni, nj, nk = T.shape
    A, B, C = (rng.standard_normal((n, k)) for n in (ni, nj, nk))
    T1 = T.reshape(ni, nj * nk)
    T2 = np.moveaxis(T, 1, 0).reshape(nj, ni * nk)
    T3 = np.moveaxis(T, 2, 0).reshape(nk, ni * nj)
    norm = np.linalg.norm(T)

    def kr(X: np.ndarray, Y: np.ndarray) -> np.ndarray:  # Khatri–Rao: rows (x, y) ↦ X_x ∘ Y_y
        return np.einsum("xr,yr->xyr", X, Y).reshape(-1, X.shape[1])

    best = math.inf
    for _ in range(iters):
        A = np.linalg.lstsq(kr(B, C), T1.T, rcond=None)[0].T
        B = np.linalg.lstsq(kr(A, C), T2.T, rcond=None)[0].T
        C = np.linalg.lstsq(kr(A, B), T3.T, rcond=None)[0].T
        err = np.linalg.norm(np.einsum("ir,jr,kr->ijk", A, B, C) - T) / norm
        best = min(best, err)
        if best < 1e-12:
            break
    return float(best)


def numerical_rank(T: np.ndarray | Tensor, eps: float, *, max_rank: int | None = None, restarts: int = 4,
                   iters: int = 150, seed: int = 0) -> int:
    """The smallest k ≤ max_rank such that ALS (``restarts`` random starts, ``iters`` sweeps) reaches relative
    error ≤ ``eps``; ``max_rank + 1`` if none does (default max_rank: I·J·K / max(I, J, K), the generic bound
    on the rank of an I×J×K tensor)."""
    Tn = T.detach().cpu().numpy() if isinstance(T, Tensor) else np.asarray(T, dtype=np.float64)
    if Tn.ndim != 3:
        raise InvalidInputError(f"numerical_rank needs an order-3 tensor, got shape {Tn.shape}")
    if not 0 < eps < 1:
        raise InvalidInputError(f"eps must lie in (0, 1), got {eps}")
    if np.linalg.norm(Tn) == 0:
        return 0
    if max_rank is None:
        max_rank = Tn.size // max(Tn.shape)
    rng = np.random.default_rng(seed)
    for k in range(1, max_rank + 1):
        if any(_als(Tn, k, rng, iters) <= eps for _ in range(restarts)):
            return k
    return max_rank + 1
