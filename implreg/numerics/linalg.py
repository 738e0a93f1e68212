"""Matrix operations on ``Certified`` values: matmul, det (closed form ≤ 4×4) and singular values.

Batched like torch: matrices are the last two dimensions.  Bounds are rigorous (see ``rounding.py``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from implreg.errors import InvalidInputError
from implreg.numerics import rounding as R
from implreg.numerics.certified import Certified, lift, lift_all


def _mm_up(a: Tensor, b: Tensor, k: int) -> Tensor:
    """Upper bound on the exact product a @ b of non-negative float matrices (inner dimension k)."""
    return R.reduction_up(R.nan_to_inf(a @ b), k, products=True)


def matmul(a: Any, b: Any) -> Certified:
    """a @ b (torch semantics, batched): |AB − ÂB̂| ≤ |Â|E_B + E_A(|B̂| + E_B) entrywise, plus the rounding of
    the float product, ≤ γ_k|Â||B̂| + k·2⁻¹⁰⁷⁵ (Higham, Thm 3.5; any summation order, FMA or not)."""
    a, b = lift_all([a, b])
    if a.ndim == 0 or b.ndim == 0:
        raise InvalidInputError("matmul needs operands with at least one dimension (use * for scalars)")
    try:
        z = a.value @ b.value
    except RuntimeError as exc:
        raise InvalidInputError(f"matmul of shapes {tuple(a.shape)} and {tuple(b.shape)}: {exc}") from None
    k = a.shape[-1]
    aa, ba = a.value.abs(), b.value.abs()
    err = R.add_up(R.mul_up(_mm_up(aa, ba, k), R.gamma_up(k)), torch.full_like(z, k * R.TINY))
    if bool((b.error != 0).any()):
        err = R.add_up(err, _mm_up(aa, b.error, k))
    if bool((a.error != 0).any()):
        err = R.add_up(err, _mm_up(a.error, R.add_up(ba, b.error), k))
    return Certified(z, err, a.rigorous and b.rigorous, "matmul", (a, b))


def det(x: Any) -> Certified:
    """det of square matrices (…, n, n), n ≤ 4, by its closed form (Leibniz / Laplace expansion in 2×2
    minors) built from the certified + − ×, so its bound is the composition of theirs."""
    x = lift(x)
    if x.ndim < 2 or x.shape[-1] != x.shape[-2]:
        raise InvalidInputError(f"det needs square matrices (…, n, n), got shape {tuple(x.shape)}")
    n = x.shape[-1]
    if not 1 <= n <= 4:
        raise InvalidInputError(f"det is implemented in closed form for n ≤ 4, got n = {n}")

    def m(i: int, j: int) -> Certified:
        return x[..., i, j]

    if n == 1:
        return m(0, 0)
    if n == 2:
        return m(0, 0) * m(1, 1) - m(0, 1) * m(1, 0)
    if n == 3:
        return (m(0, 0) * (m(1, 1) * m(2, 2) - m(1, 2) * m(2, 1))
                - m(0, 1) * (m(1, 0) * m(2, 2) - m(1, 2) * m(2, 0))
                + m(0, 2) * (m(1, 0) * m(2, 1) - m(1, 1) * m(2, 0)))

    # Laplace expansion along rows (0, 1): det = Σ ± (2×2 minor of rows 0,1) · (complementary minor of rows 2,3)
    def minor(r: int, c1: int, c2: int) -> Certified:
        return m(r, c1) * m(r + 1, c2) - m(r + 1, c1) * m(r, c2)

    s0, s1, s2 = minor(0, 0, 1), minor(0, 0, 2), minor(0, 0, 3)
    s3, s4, s5 = minor(0, 1, 2), minor(0, 1, 3), minor(0, 2, 3)
    c5, c4, c3 = minor(2, 2, 3), minor(2, 1, 3), minor(2, 1, 2)
    c2, c1, c0 = minor(2, 0, 3), minor(2, 0, 2), minor(2, 0, 1)
    return s0 * c5 - s1 * c4 + s2 * c3 + s3 * c2 - s4 * c1 + s5 * c0


def svdvals(w: Any) -> Certified:
    """Singular values σ_1 ≥ … ≥ σ_k (k = min(m, n)) of matrices (…, m, n), with a rigorous bound.

    Input error (Weyl): |σ_i(W + E) − σ_i(W)| ≤ ‖E‖_2 ≤ ‖E‖_F (Horn & Johnson, Matrix Analysis, Cor. 7.3.5).
    Rounding (a posteriori): LAPACK returns Û (m×k), Σ̂, V̂ (n×k).  With r ≥ ‖W − ÛΣ̂V̂ᵀ‖_F, α ≥ ‖ÛᵀÛ − I‖_2,
    β ≥ ‖V̂ᵀV̂ − I‖_2 (all bounded rigorously in float64 here) and α, β < 1: Û = Q_U P_U with Q_U orthonormal and
    P_U = (ÛᵀÛ)^(1/2) having singular values in [√(1−α), √(1+α)] (same for V̂), so σ_i(ÛΣ̂V̂ᵀ) = σ_i(P_U Σ̂ P_V)
    ∈ σ̂_i·[√(1−α)√(1−β), √(1+α)√(1+β)] (Ostrowski-type multiplicative bound, Horn & Johnson, Topics in Matrix
    Analysis, Thm 3.3.16), and Weyl adds r.  Hence |σ_i(Ŵ) − σ̂_i| ≤ σ̂_i·(α + β + αβ) + r.
    """
    w = lift(w)
    if w.ndim < 2 or w.shape[-1] < 1 or w.shape[-2] < 1:
        raise InvalidInputError(f"svdvals needs matrices (…, m, n), got shape {tuple(w.shape)}")
    W = w.value
    m, n = W.shape[-2], W.shape[-1]
    k = min(m, n)
    finite = torch.isfinite(W).flatten(-2).all(-1)
    Wc = torch.where(finite[..., None, None], W, torch.zeros_like(W))
    U, S, Vh = torch.linalg.svd(Wc, full_matrices=False)

    # residual bound r: R̂ = fl(W − fl(fl(U·S) @ Vh)); |exact − R̂| ≤ γ_{k+1}(|U|S)|Vh| + k·2⁻¹⁰⁷⁵ + ulp(R̂)
    US = U * S[..., None, :]
    Rhat = Wc - US @ Vh
    prod = R.mul_up(_mm_up(R.up(U.abs() * S[..., None, :]), Vh.abs(), k), R.gamma_up(k + 1))
    dR = R.add_up(prod, torch.full_like(prod, k * R.TINY), R.ulp(Rhat))
    r = R.add_up(R.frobenius_up(Rhat, (-2, -1)), R.frobenius_up(dR, (-2, -1)))

    def ortho_defect(Q: Tensor, inner: int) -> Tensor:
        """Upper bound on ‖QᵀQ − I‖_F for a float Q (columns = the inner dim's partner)."""
        G = Q.mT @ Q
        eye = torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
        D = G - eye
        dG = R.add_up(R.mul_up(_mm_up(Q.abs().mT, Q.abs(), inner), R.gamma_up(inner)),
                      torch.full_like(G, inner * R.TINY), R.ulp(D))
        return R.add_up(R.frobenius_up(D, (-2, -1)), R.frobenius_up(dG, (-2, -1)))

    alpha = ortho_defect(U, m)
    beta = ortho_defect(Vh.mT, n)
    rel = R.add_up(alpha, beta, R.mul_up(alpha, beta))
    err = R.add_up(R.mul_up(S, rel[..., None]), r[..., None])
    ok = (alpha < 1) & (beta < 1) & finite
    err = torch.where(ok[..., None], err, torch.full_like(err, float("inf")))
    if bool((w.error != 0).any()):
        err = R.add_up(err, R.frobenius_up(w.error, (-2, -1))[..., None])
    S = torch.where(finite[..., None], S, torch.full_like(S, float("nan")))
    return Certified(S, err, w.rigorous, "svdvals", (w,))

