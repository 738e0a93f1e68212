"""Deep matrix factorization ``W = W_N ⋯ W_1``: product, loss, closed-form gradients, initializations.

Factors are a tuple ``(W_1, …, W_N)`` of batched tensors, ``W_j`` of shape (B, d_j, d_{j−1}), so that the
end-to-end matrix has shape (B, d_N, d_0).  ``dims = (d_0, d_1, …, d_N)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from implreg.errors import InvalidInputError
from implreg.matrix.problems import Problem

Factors = tuple[Tensor, ...]

__all__ = [
    "FactorLayout",
    "Factors",
    "balanced_init",
    "balancedness_defect",
    "end_to_end",
    "end_to_end_velocity",
    "factor_grads",
    "gaussian_init",
    "haar_orthogonal",
    "loss",
    "negate_row",
    "with_det_sign",
]


@dataclass(frozen=True)
class FactorLayout:
    """How factors of widths ``dims = (d_0, …, d_N)`` are packed into one flat state vector (B, P)."""

    dims: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.dims) < 2 or any(int(d) < 1 for d in self.dims):
            raise InvalidInputError(f"factor dims must be ≥ 1 and at least two of them, got {self.dims}")

    @classmethod
    def of(cls, factors: Sequence[Tensor]) -> FactorLayout:
        check_factors(factors)
        return cls((int(factors[0].shape[-1]), *(int(W.shape[-2]) for W in factors)))

    @property
    def depth(self) -> int:
        return len(self.dims) - 1

    @property
    def shapes(self) -> tuple[tuple[int, int], ...]:
        return tuple((self.dims[j + 1], self.dims[j]) for j in range(self.depth))

    @property
    def size(self) -> int:
        return sum(a * b for a, b in self.shapes)

    def pack(self, factors: Sequence[Tensor]) -> Tensor:
        return torch.cat([W.reshape(W.shape[0], -1) for W in factors], dim=-1)

    def unpack(self, y: Tensor) -> Factors:
        out, i = [], 0
        for a, b in self.shapes:
            out.append(y[..., i : i + a * b].reshape(*y.shape[:-1], a, b))
            i += a * b
        return tuple(out)


def check_factors(factors: Sequence[Tensor]) -> None:
    """Raise a clear error unless the factors chain (W_{j+1} has as many columns as W_j has rows)."""
    if len(factors) == 0:
        raise InvalidInputError("a factorization needs at least one factor")
    B = factors[0].shape[0]
    for j, W in enumerate(factors, start=1):
        if W.ndim != 3:
            raise InvalidInputError(f"factor W_{j} must be (B, rows, cols), got shape {tuple(W.shape)}")
        if W.shape[0] != B:
            raise InvalidInputError(f"factor W_{j} has batch {W.shape[0]}, W_1 has batch {B}")
        if j > 1 and W.shape[-1] != factors[j - 2].shape[-2]:
            raise InvalidInputError(
                f"factor W_{j} has {W.shape[-1]} columns but W_{j - 1} has {factors[j - 2].shape[-2]} rows"
            )
        if not torch.isfinite(W).all():
            raise InvalidInputError(f"factor W_{j} has NaN/Inf entries")


def end_to_end(factors: Sequence[Tensor]) -> Tensor:
    """``W = W_N ⋯ W_1``, shape (B, d_N, d_0)."""
    W = factors[0]
    for Wj in factors[1:]:
        W = Wj @ W
    return W


def loss(problem: Problem, factors: Sequence[Tensor]) -> Tensor:
    """``ℓ(W_N ⋯ W_1)``, shape (B,)."""
    return problem.loss(end_to_end(factors))


def factor_grads(problem: Problem, factors: Sequence[Tensor]) -> tuple[Tensor, Factors]:
    """Loss and ``∂ℓ/∂W_j = (W_N⋯W_{j+1})ᵀ ∇ℓ(W) (W_{j−1}⋯W_1)ᵀ`` for every j (Arora et al. 2018, eq. 4).

    Returns ``(loss (B,), (G_1, …, G_N))``.  Prefix and suffix products are formed once: O(N) matmuls.
    """
    N = len(factors)
    prefix = [None] * (N + 1)  # prefix[j] = W_j ⋯ W_1, prefix[0] = I (left implicit)
    prefix[1] = factors[0]
    for j in range(2, N + 1):
        prefix[j] = factors[j - 1] @ prefix[j - 1]
    W = prefix[N]
    r = problem.residual(W)
    value = 0.5 * (r * r).flatten(1).sum(-1)
    G = r if problem.is_completion else torch.einsum("bk,bkij->bij", r, problem.A)
    grads: list[Tensor] = [None] * N  # type: ignore[list-item]
    left = G  # (W_N ⋯ W_{j+1})ᵀ G, built from the top down
    for j in range(N, 0, -1):
        grads[j - 1] = left if j == 1 else left @ prefix[j - 1].transpose(-1, -2)
        if j > 1:
            left = factors[j - 1].transpose(-1, -2) @ left
    return value, tuple(grads)


def end_to_end_velocity(problem: Problem, W: Tensor, depth: int | Tensor) -> Tensor:
    """``Ẇ = −Σ_{j=1}^{N} (WWᵀ)^{(j−1)/N} ∇ℓ(W) (WᵀW)^{(N−j)/N}`` (Arora et al. 2018, Theorem 1).

    Valid for balanced init.  With W = U diag(s) Vᵀ (a full SVD), WWᵀ = U diag(λ) Uᵀ and WᵀW = V diag(μ) Vᵀ with
    λ, μ = s² (zero-padded), and the sum is ``U ((UᵀGV) ∘ K) Vᵀ``, ``K_ab = Σ_j λ_a^{(j−1)/N} μ_b^{(N−j)/N}``
    (0⁰ = 1): one SVD and four products for any N.  ``depth`` is one N for the batch or a (B,) tensor of
    per-instance depths; a row's result has the same bits either way (its K sums its own j = 1 … N in the same
    order; other rows' extra terms do not touch it).
    """
    G = problem.grad(W)
    log_lam, U, log_mu, V = _gram_spectra(W)
    if isinstance(depth, Tensor):
        N = depth.to(dtype=W.dtype, device=W.device).reshape(-1, 1)
        n_max = int(depth.max())
    else:
        N, n_max = torch.full((W.shape[0], 1), float(depth), dtype=W.dtype, device=W.device), int(depth)
    j = torch.arange(n_max, dtype=W.dtype, device=W.device)  # j − 1 for j = 1 … n_max
    # exponents (j − 1)/N and (N − j)/N, (B, n_max): tensor ÷ tensor, rounded once like Python's float division
    left, right, valid = _powers(log_lam, j / N), _powers(log_mu, (N - 1 - j) / N), j < N
    K = torch.zeros_like(W)
    for i in range(n_max):  # in order of j, each row over its own j ≤ N only (one N: every j is every row's)
        term = K + left[:, i, :, None] * right[:, i, None, :]
        K = torch.where(valid[:, i, None, None], term, K) if isinstance(depth, Tensor) else term
    return -(U @ ((U.transpose(-1, -2) @ G @ V) * K) @ V.transpose(-1, -2))


def _gram_spectra(W: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """log λ and eigenvectors U of WWᵀ (B, d), (B, d, d), and log μ and V of WᵀW (B, e), (B, e, e), from one full
    SVD W = U diag(s) Vᵀ: λ = s² padded with zeros to d, μ = s² padded to e (log 0 = −∞).  Singular values at or
    below max(d, e)·u·s_max count as 0: they are rounding noise of exact zeros (the SVD's backward error is
    ~u·‖W‖), which a fractional power would amplify (1e-16^(1/3))."""
    U, s, Vh = torch.linalg.svd(W)
    d, e = W.shape[-2], W.shape[-1]
    floor = max(d, e) * torch.finfo(W.dtype).eps * s.amax(-1, keepdim=True)
    log_s2 = 2.0 * torch.log(torch.where(s <= floor, torch.zeros_like(s), s))

    def padded(n: int) -> Tensor:
        return torch.cat([log_s2, log_s2.new_full((*s.shape[:-1], n - s.shape[-1]), -math.inf)], -1)

    return padded(d), U, padded(e), Vh.transpose(-1, -2)


def _powers(log_lam: Tensor, a: Tensor) -> Tensor:
    """``λ^a = exp(a·log λ)`` (B, J, n) for eigenvalue logs (B, n) and exponents (B, J), with 0⁰ = 1: an exponent 0
    gives exactly 1 (0·log 0 would be NaN)."""
    a = a.unsqueeze(-1)
    return torch.where(a == 0, 1.0, torch.exp(a * log_lam.unsqueeze(-2)))


def balancedness_defect(factors: Sequence[Tensor]) -> Tensor:
    """``max_j ‖W_{j+1}ᵀW_{j+1} − W_j W_jᵀ‖_F`` per instance (0 for balanced factors), shape (B,)."""
    B = factors[0].shape[0]
    out = torch.zeros(B, dtype=factors[0].dtype, device=factors[0].device)
    for Wj, Wn in itertools.pairwise(factors):
        D = Wn.transpose(-1, -2) @ Wn - Wj @ Wj.transpose(-1, -2)
        out = torch.maximum(out, torch.linalg.matrix_norm(D))
    return out


def haar_orthogonal(
    batch: int, n: int, *, generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
) -> Tensor:
    """Haar-distributed orthogonal matrices (B, n, n): QR of a Gaussian with the signs of diag(R) fixed."""
    Z = torch.randn(batch, n, n, generator=generator, dtype=dtype, device=device)
    Q, R = torch.linalg.qr(Z)
    return Q * torch.sign(torch.diagonal(R, dim1=-2, dim2=-1)).unsqueeze(-2)


def balanced_init(
    W0: Tensor, depth: int, *, width: int | None = None, rotations: Sequence[Tensor] | None = None
) -> Factors:
    """Balanced factors with product ``W0``: from ``W0 = U S Vᵀ``, ``W_1 = R_1 S^{1/N} Vᵀ``,
    ``W_j = R_j S^{1/N} R_{j−1}ᵀ``, ``W_N = U S^{1/N} R_{N−1}ᵀ`` (Arora et al. 2018, Procedure 1).

    ``width`` is the common hidden width h (default min(d, d')); ``rotations`` are N−1 orthogonal (B, h, h)
    matrices R_1 … R_{N−1} (default identities).  Satisfies ``W_{j+1}ᵀW_{j+1} = W_j W_jᵀ``.
    """
    if W0.ndim != 3:
        raise InvalidInputError(f"W0 must be (B, d, d'), got shape {tuple(W0.shape)}")
    if depth < 1:
        raise InvalidInputError(f"depth must be ≥ 1, got {depth}")
    if not torch.isfinite(W0).all():
        raise InvalidInputError("W0 has NaN/Inf entries")
    if depth == 1:
        return (W0.clone(),)
    B, d, e = W0.shape
    k = min(d, e)
    h = k if width is None else int(width)
    if h < k:
        raise InvalidInputError(f"balanced init needs hidden width ≥ min(d, d') = {k}, got {h}")
    U, S, Vh = torch.linalg.svd(W0, full_matrices=False)
    # exp(log(σ)/N) rather than σ.pow(1/N): torch.pow's vectorized and scalar paths differ in the last bit,
    # which would make an instance's init depend on its position in the batch (σ = 0 gives exp(-inf) = 0).
    s = torch.exp(torch.log(S) / depth)  # (B, k)
    z = dict(dtype=W0.dtype, device=W0.device)
    if rotations is None:
        rotations = [torch.eye(h, **z).expand(B, h, h) for _ in range(depth - 1)]
    if len(rotations) != depth - 1 or any(tuple(R.shape[-2:]) != (h, h) for R in rotations):
        raise InvalidInputError(f"balanced init of depth {depth} needs {depth - 1} rotations of shape (B, {h}, {h})")
    s_pad = torch.cat([s, torch.zeros(B, h - k, **z)], dim=-1)
    first = torch.cat([s.unsqueeze(-1) * Vh, torch.zeros(B, h - k, e, **z)], dim=-2)  # [S^{1/N} Vᵀ; 0]
    last = torch.cat([U * s.unsqueeze(-2), torch.zeros(B, d, h - k, **z)], dim=-1)  # [U S^{1/N}, 0]
    factors = [rotations[0] @ first]
    for j in range(1, depth - 1):
        factors.append(rotations[j] @ (s_pad.unsqueeze(-1) * rotations[j - 1].transpose(-1, -2)))
    factors.append(last @ rotations[-1].transpose(-1, -2))
    return tuple(f.contiguous() for f in factors)


def gaussian_init(
    batch: int, dims: Sequence[int], scale: float, *, generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
) -> Factors:
    """Independent factors with i.i.d. N(0, scale²) entries; ``dims = (d_0, …, d_N)``."""
    layout = FactorLayout(tuple(int(d) for d in dims))
    if not (scale > 0):
        raise InvalidInputError(f"init scale must be > 0, got {scale}")
    return tuple(
        scale * torch.randn(batch, a, b, generator=generator, dtype=dtype, device=device)
        for a, b in layout.shapes
    )


def negate_row(W: Tensor, flip: Tensor | bool = True, row: int = 0) -> Tensor:
    """``W`` with row ``row`` negated where ``flip`` (B,) is true: det changes sign, |entries| do not."""
    flip_t = torch.as_tensor(flip, device=W.device).reshape(-1, 1)
    sign = torch.where(flip_t, -1.0, 1.0).to(W.dtype)
    out = W.clone()
    out[:, row, :] = out[:, row, :] * sign
    return out


def with_det_sign(W0: Tensor, sign: int) -> Tensor:
    """``W0`` with its first row negated wherever ``sign(det W0) ≠ sign`` (square W0, sign = ±1)."""
    if sign not in (1, -1):
        raise InvalidInputError(f"det sign must be +1 or −1, got {sign}")
    if W0.shape[-1] != W0.shape[-2]:
        raise InvalidInputError(f"a determinant sign needs square matrices, got {tuple(W0.shape[-2:])}")
    det = torch.linalg.det(W0)
    if (det == 0).any():
        raise InvalidInputError("W0 is singular in some instances: its determinant has no sign")
    return negate_row(W0, torch.sign(det) != sign)
