"""Perturbation bounds that carry a simulator's error estimate into the quantities claims compare.

Each function takes a batch of matrices (any leading dimensions, batch first) and an entrywise bound ``e`` on
their error (a tensor broadcasting against the leading dimensions, or a float) and returns a bound on the error
of the derived quantity, *including* the float64 rounding of evaluating it here.  Bounds are rigorous given
``e``; ``e`` itself is whatever the simulator estimates (see ``implreg.matrix.flow``), so a certified comparison is as
good as that estimate — which the tests of the simulators validate against the mpmath reference.

- :func:`product_error`: end-to-end matrix ``W_N⋯W_1`` from errors of the factors' entries.
- :func:`det2_error`: det of 2×2 matrices.
- :func:`completion_loss_error`, :func:`residual_norm_error`: the completion loss and ‖residual‖₂.
- :func:`measure_error`: every norm and quasi-norm of ``implreg.matrix.measures.NORMS`` (quasi-norms included).
- :func:`measure_interval`: an interval for the same, tight for quasi-norms near a zero singular value.
- :func:`effective_rank_2x2`: effective rank of 2×2 matrices with a rigorous upper value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from fractions import Fraction

import torch
from torch import Tensor

from implreg.errors import InvalidInputError
from implreg.matrix import measures

__all__ = [
    "U64",
    "completion_loss_error",
    "det2_error",
    "effective_rank_2x2",
    "measure_error",
    "measure_interval",
    "product_error",
    "residual_norm_error",
]

U64 = float(torch.finfo(torch.float64).eps)  # unit roundoff 2^-52 (a safe over-estimate of 2^-53)


def _e(e: Tensor | float, like: Tensor) -> Tensor:
    t = torch.as_tensor(e, dtype=like.dtype, device=like.device)
    if not torch.isfinite(t).all() or (t < 0).any():
        raise InvalidInputError("the error bound e must be finite and ≥ 0")
    return t


def product_error(factors: Sequence[Tensor], e: Tensor | float) -> Tensor:
    """Bound on max_ab |δ(W_N⋯W_1)_ab| when every entry of every factor W_j (…, a_j, b_j) errs by ≤ e (…).

    ‖Π_j(W_j + E_j) − Π_j W_j‖₂ ≤ Π_j(‖W_j‖₂ + ‖E_j‖₂) − Π_j‖W_j‖₂ (expand the product; each term with an E
    is bounded by the product of norms), ‖E_j‖₂ ≤ ‖E_j‖_F ≤ √(a_j b_j)·e, and |entry| ≤ ‖·‖₂.  The difference
    of products is formed by the recurrence D ← D(a + b) + P·b, P ← P·a (no cancellation).  Rounding of the
    float64 product: |fl(AB) − AB| ≤ γ_k|A||B| entrywise (Higham, Thm 3.5), chained: ≤ N·k_max·u·Π‖|W_j|‖_F.
    """
    if len(factors) == 0:
        raise InvalidInputError("product_error needs at least one factor")
    e = _e(e, factors[0])
    P = D = None
    frob = None
    kmax = max(max(W.shape[-1], W.shape[-2]) for W in factors)
    for W in factors:
        a = torch.linalg.matrix_norm(W, ord=2)
        b = math.sqrt(W.shape[-1] * W.shape[-2]) * e
        f = torch.linalg.matrix_norm(W)
        if P is None:
            P, D, frob = a, b + torch.zeros_like(a), f
        else:
            D = D * (a + b) + P * b
            P = P * a
            frob = frob * f
    rounding = 1.01 * len(factors) * kmax * U64 * frob
    return (D + rounding) * (1 + 4 * U64)


def det2_error(W: Tensor, e: Tensor | float) -> Tensor:
    """Bound on |det(W + E) − fl(det W)| for 2×2 W (…, 2, 2) and |E_ij| ≤ e.

    det(W + E) − det W = W₁₁E₂₂ + E₁₁W₂₂ − W₁₂E₂₁ − E₁₂W₂₁ + det E, so |·| ≤ e·Σ_ij|W_ij| + 2e²; evaluating
    W₁₁W₂₂ − W₁₂W₂₁ in float64 adds ≤ 2u(|W₁₁W₂₂| + |W₁₂W₂₁|) (plus the same for torch.linalg.det's LU: ×2).
    """
    if W.shape[-2:] != (2, 2):
        raise InvalidInputError(f"det2_error needs 2×2 matrices, got shape {tuple(W.shape)}")
    e = _e(e, W)
    a = W.abs()
    lin = e * a.sum((-1, -2)) + 2 * e * e
    rnd = 4 * U64 * (a[..., 0, 0] * a[..., 1, 1] + a[..., 0, 1] * a[..., 1, 0])
    return (lin + rnd) * (1 + 4 * U64)


def residual_norm_error(mask: Tensor, e: Tensor | float) -> Tensor:
    """Bound on |‖r(W + E)‖₂ − ‖r(W)‖₂| for completion residuals r = mask ⊙ (W − b): ≤ ‖mask ⊙ E‖_F ≤ √m·e,
    m = #observed entries (…); rounding is added by callers that evaluate ‖r‖ (see completion_loss_error)."""
    m = mask.flatten(-2).sum(-1)
    return torch.sqrt(m) * _e(e, mask)


def completion_loss_error(mask: Tensor, target: Tensor, W: Tensor, e: Tensor | float) -> Tensor:
    """Bound on |ℓ(W + E) − fl(ℓ(W))| for ℓ = ½‖mask ⊙ (W − b)‖²: ≤ ‖r‖√m·e + ½m·e² + (m + 2)u·ℓ."""
    e = _e(e, W)
    r = mask * (W - target)
    m = mask.flatten(-2).sum(-1)
    nr = torch.linalg.vector_norm(r.flatten(-2), dim=-1)
    loss = 0.5 * nr * nr
    return (nr * torch.sqrt(m) * e + 0.5 * m * e * e + (m + 2) * U64 * loss) * (1 + 4 * U64)


_QUASI = re.compile(r"^(schatten|entrywise)-([0-9]*\.?[0-9]+)$")


def _power_sum_error(x: Tensor, dx: Tensor, p: float) -> Tensor:
    """Bound on |Σ_i (x_i + δ_i)^p − Σ_i x_i^p| over |δ_i| ≤ dx, x_i ≥ 0, 0 < p < 1 (…, n) → (…).

    |a^p − b^p| ≤ |a − b|^p (subadditivity of t^p) and ≤ p·min(a, b)^{p−1}|a − b| (mean value theorem);
    min(a, b) ≥ x − dx."""
    dxe = dx.unsqueeze(-1)
    lo = (x - dxe).clamp(min=0)
    mvt = torch.where(lo > 0, p * torch.exp((p - 1) * torch.log(lo.clamp(min=1e-300))) * dxe,
                      torch.full_like(x, math.inf))
    return torch.minimum(mvt, dxe ** p).sum(-1)


def measure_error(name: str, W: Tensor, e: Tensor | float) -> Tensor:
    """Bound on |m(W + E) − fl(m(W))| for m = measures.NORMS[name] (or any schatten-p / entrywise-p), |E_ij| ≤ e.

    Norms (p ≥ 1): ``measures.norm_error_bound`` (reverse triangle inequality).  Quasi-norms (0 < p < 1), for
    which that returns +inf: X = Σ x_i^p over singular values (Weyl: |δσ_r| ≤ √(dd')·e) or entries (|δw| ≤ e)
    moves by ΔX ≤ :func:`_power_sum_error`, and X^{1/p} (convex, increasing) by ≤ (1/p)(X + ΔX)^{1/p−1}ΔX.
    Rounding: an SVD-based value is exact for a matrix within ~n·u·‖W‖₂ of W (backward stability); we add
    8·n·u·(‖W‖₂ + value)·(1/p for quasi-norms, to cover the p-th powers and root).
    """
    if W.ndim < 3:
        raise InvalidInputError(f"W must be (…, d, d'), got shape {tuple(W.shape)}")
    lead = W.shape[:-2]
    Wf = W.reshape(-1, *W.shape[-2:])
    e = _e(e, W).expand(lead).reshape(-1)
    d, dp = W.shape[-2], W.shape[-1]
    n = max(d, dp)
    value = _measure(name, Wf)
    spec = measures.spectral(Wf).value
    m = _QUASI.match(name)
    if m is not None and float(m.group(2)) < 1:
        p = float(m.group(2))
        if m.group(1) == "schatten":
            x, dx = torch.linalg.svdvals(Wf), math.sqrt(d * dp) * e
        else:
            x, dx = Wf.abs().flatten(-2), e
        X = torch.exp(p * torch.log(x.clamp(min=1e-300))).where(x > 0, torch.zeros_like(x)).sum(-1)
        dX = _power_sum_error(x, dx, p)
        bound = (1 / p) * torch.exp((1 / p - 1) * torch.log((X + dX).clamp(min=1e-300))) * dX
        slack = 8 * n * U64 * (spec + value) / p
    else:
        bound = measures.norm_error_bound(name, Wf, e)
        slack = 8 * n * U64 * (spec + value)
    return ((bound + slack) * (1 + 4 * U64)).reshape(lead)


def _measure(name: str, W: Tensor) -> Tensor:
    if name in measures.NORMS:
        return measures.NORMS[name](W).value
    m = _QUASI.match(name) or re.match(r"^(schatten|entrywise)-(inf|[0-9]*\.?[0-9]+)$", name)
    if m is None:
        raise InvalidInputError(f"unknown norm {name!r}")
    p = math.inf if m.group(2) == "inf" else float(m.group(2))
    return (measures.schatten(W, p) if m.group(1) == "schatten" else measures.entrywise(W, p)).value


def effective_rank_2x2(W: Tensor, e: Tensor | float) -> tuple[Tensor, Tensor]:
    """(erank(W), upper) for 2×2 W: ``upper`` ≥ erank(W + E) for every |E_ij| ≤ e (Roy & Vetterli 2007).

    erank = exp(H(q)), q = σ₂/(σ₁ + σ₂) ∈ [0, ½], H the binary entropy (increasing on [0, ½]).  By Weyl
    |δσ_r| ≤ 2e, so q(W + E) ≤ q⁺ = min(½, (σ₂ + 2e)/(σ₁ + σ₂)) (the sum σ₁ + σ₂ moves by ≤ 4e: the bound uses
    (σ₂ + 2e)/(σ₁ + σ₂ − 4e)), and erank(W + E) ≤ exp(H(q⁺)); a relative 1e-14 covers the rounding of H.
    """
    if W.shape[-2:] != (2, 2):
        raise InvalidInputError(f"effective_rank_2x2 needs 2×2 matrices, got shape {tuple(W.shape)}")
    e = _e(e, W)
    s = torch.linalg.svdvals(W)
    tot = s.sum(-1)
    q = s[..., 1] / tot
    dtot = (tot - 4 * e).clamp(min=1e-300)
    qp = torch.clamp((s[..., 1] + 2 * e + 4 * U64 * s[..., 0]) / dtot, max=0.5)
    qp = torch.where(tot - 4 * e > 0, qp, torch.full_like(qp, 0.5))

    def H(x: Tensor) -> Tensor:
        return -(torch.special.xlogy(x, x) + torch.special.xlogy(1 - x, 1 - x))

    return torch.exp(H(q)), torch.exp(H(qp)) * (1 + 1e-14)


def _pmean(x: Tensor, p: float) -> Tensor:
    """(Σ x_i^p)^{1/p} over the last axis for x ≥ 0, 0 < p (x_i = 0 contributes 0)."""
    xp = torch.where(x > 0, torch.exp(p * torch.log(x.clamp(min=1e-300))), torch.zeros_like(x))
    s = xp.sum(-1)
    return torch.where(s > 0, torch.exp(torch.log(s.clamp(min=1e-300)) / p), torch.zeros_like(s))


def measure_interval(name: str, W: Tensor, e: Tensor | float, *, sv_lo: Tensor | None = None,
                     sv_hi: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """An interval [lo, hi] containing m(W + E) for every |E_ij| ≤ e, for m = NORMS[name] (or any
    schatten-p / entrywise-p), including float64 rounding.

    Norms (p ≥ 1): value ± :func:`measure_error`.  Quasi-norms (0 < p < 1) are increasing in every singular
    value (Schatten) or |entry| (entrywise), so the interval comes from σ_r ∓ √(dd')·e (Weyl) or |w_ij| ∓ e,
    clipped at 0 — much tighter than a symmetric bound when a singular value is below e (x ↦ x^p is steep
    there).  ``sv_lo``/``sv_hi`` (…, k): independent bounds on the singular values (e.g. σ_min from a solver
    that carries log σ_min with relative precision); the intersection with Weyl's is used.
    """
    lead = W.shape[:-2]
    m = _QUASI.match(name)
    if m is None or float(m.group(2)) >= 1:
        v = _measure(name, W.reshape(-1, *W.shape[-2:])).reshape(lead)
        err = measure_error(name, W, e)
        return v - err, v + err
    p = float(m.group(2))
    e = _e(e, W).expand(lead)
    d, dp = W.shape[-2], W.shape[-1]
    if m.group(1) == "schatten":
        s = torch.linalg.svdvals(W)
        r = math.sqrt(d * dp) * e.unsqueeze(-1)
        lo_x, hi_x = (s - r).clamp(min=0), s + r
        if sv_lo is not None:
            lo_x = torch.maximum(lo_x, sv_lo)
        if sv_hi is not None:
            hi_x = torch.minimum(hi_x, sv_hi)
        hi_x = torch.maximum(hi_x, lo_x)
    else:
        a = W.abs().flatten(-2)
        lo_x, hi_x = (a - e.unsqueeze(-1)).clamp(min=0), a + e.unsqueeze(-1)
    lo, hi = _pmean(lo_x, p), _pmean(hi_x, p)
    slack = 8 * max(d, dp) * U64 * (hi + torch.linalg.matrix_norm(W, ord=2)) / p
    return (lo - slack).clamp(min=0), hi + slack


def exact_det(M: Sequence[Sequence[object]]) -> Fraction:
    """det M in exact rational arithmetic (Gaussian elimination over ℚ): entries are Fractions, ints or floats
    (every float is a dyadic rational, so nothing is rounded).  The oracle for det signs that float64 cannot
    be trusted with."""
    A = [[x if isinstance(x, Fraction) else Fraction(float(x)) for x in row] for row in M]
    n, det = len(A), Fraction(1)
    for c in range(n):
        p = next((r for r in range(c, n) if A[r][c] != 0), None)
        if p is None:
            return Fraction(0)
        if p != c:
            A[c], A[p] = A[p], A[c]
            det = -det
        det *= A[c][c]
        for r in range(c + 1, n):
            f = A[r][c] / A[c][c]
            A[r] = [a - f * b for a, b in zip(A[r], A[c], strict=True)]
    return det
