"""The trace norm as a factorization norm: ‖M‖_* = min_{UVᵀ = M} ½(‖U‖_F² + ‖V‖_F²), attained at the SVD split
U* = PΣ^{1/2}, V* = QΣ^{1/2} of M = PΣQᵀ  (Srebro, Rennie & Jaakkola 2005; Neyshabur et al., In Search §3).

``svd_split`` checks the attaining half in mpmath: the split of M = UVᵀ is computed at ``dps`` digits from the
exact float inputs (products of two 53-bit numbers summed over k ≤ 4 terms are exact at 200 bits), and its two
defects — how far U*V*ᵀ is from M, and ½(‖U*‖² + ‖V*‖²) from Σσ — come back as Certified leaves.  Both are 0
for the exact SVD; their error is mpmath.svd_r's accuracy, ≈ 10^{5−dps}·σ₁ (an estimate, not a proof), which we
take as 10^{10−dps}·(1 + σ₁)·n.  (In float64 the split would test LAPACK's backward error, which no stated bound
covers.)
"""

from __future__ import annotations

from dataclasses import dataclass

import mpmath
import torch
from torch import Tensor

from implreg.errors import InvalidInputError
from implreg.numerics import Certified

__all__ = ["SvdSplit", "svd_split"]


@dataclass(frozen=True)
class SvdSplit:
    """The SVD split of M = UVᵀ at ``dps`` digits: ``residual`` = max_ij |(U*V*ᵀ − M)_ij| and ``excess`` =
    ½(‖U*‖² + ‖V*‖²) − ‖M‖_*, Certified (1,) leaves with error ``accuracy`` (an estimate); ``tolerance`` = 2 ×
    ``accuracy``, the finest equality that precision resolves."""

    residual: Certified
    excess: Certified
    accuracy: float
    dps: int

    @property
    def tolerance(self) -> float:
        return 2 * self.accuracy


def svd_split(U: Tensor, V: Tensor, dps: int = 60) -> SvdSplit:
    """The SVD split of M = UVᵀ for U (n, k), V (m, k) float64, in mpmath at ``dps`` digits (module docstring)."""
    if U.ndim != 2 or V.ndim != 2 or U.shape[1] != V.shape[1]:
        raise InvalidInputError(f"U (n, k) and V (m, k) with the same k, got {tuple(U.shape)}, {tuple(V.shape)}")
    if dps < 30:
        raise InvalidInputError(f"dps must be ≥ 30 (the accuracy model is 10^(10−dps)), got {dps}")
    n, m = U.shape[0], V.shape[0]
    with mpmath.workdps(dps):
        M = mpmath.matrix(U.double().tolist()) * mpmath.matrix(V.double().tolist()).T
        P, sv, Qt = mpmath.svd_r(M, full_matrices=False, compute_uv=True)
        sig = [abs(sv[i]) for i in range(sv.rows)]
        root = [mpmath.sqrt(s) for s in sig]
        Us = mpmath.matrix([[P[i, j] * root[j] for j in range(len(sig))] for i in range(n)])
        Vs = mpmath.matrix([[Qt[j, i] * root[j] for j in range(len(sig))] for i in range(m)])
        diff = Us * Vs.T - M
        residual = max(abs(diff[i, j]) for i in range(n) for j in range(m))
        excess = (mpmath.fsum(v**2 for v in Us) + mpmath.fsum(v**2 for v in Vs)) / 2 - mpmath.fsum(sig)
        accuracy = float(mpmath.mpf(10) ** (10 - dps) * (1 + max(sig)) * max(n, m))

    def leaf(x, label: str) -> Certified:
        # the float64 of a ≈ 10^-55 defect is within 2^-53 relative of it: ≪ accuracy, added all the same
        v = torch.tensor([float(x)], dtype=torch.float64)
        return Certified.measured(v, accuracy + abs(float(x)) * 2.0**-52, rigorous=False, label=label)

    return SvdSplit(leaf(residual, f"max |U*V*ᵀ − M| at {dps} digits"),
                    leaf(excess, f"½(‖U*‖² + ‖V*‖²) − ‖M‖_* at {dps} digits"), accuracy, dps)
