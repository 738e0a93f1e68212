"""Directed rounding on float64 tensors: upper bounds on exact real results of floating-point operations.

Every error bound of ``implreg.numerics`` is computed in float64 from non-negative terms with these helpers,
so that the computed bound is never below the exact real bound (IEEE 754 round-to-nearest is assumed, as on
every CPU and CUDA device torch supports):

- a correctly rounded operation (+ − × ÷ √) errs by at most half an ulp of its result, and one
  ``nextafter`` towards +∞ moves by a full ulp, so ``up(fl(a ∘ b)) ≥ a ∘ b`` exactly, subnormals included;
- a sum or dot product of n non-negative terms in any order errs by at most γ_{n−1}·(exact sum) with
  γ_n = n·u/(1 − n·u), u = 2⁻⁵³ (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., §3.1 and
  Thm 3.5), plus at most 2⁻¹⁰⁷⁵ absolute per product that underflows; additions are exact in the subnormal
  range, so sums of floats add no absolute error;
- exp, log and pow are not correctly rounded: their documented accuracy is ≤ 1 ulp (glibc, SLEEF u10
  functions that torch uses on CPU) and ≤ 2 ulp (CUDA math library, Programming Guide Appendix "Mathematical
  Functions"); we allow ``LIBM_ULPS`` = 4 ulp and step that many ulps (+1 for a binade boundary).

NaN produced while bounding (0·∞ with an infinite error) becomes +∞, which is always a valid upper bound.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

U = 2.0**-53                # unit roundoff of float64 (round to nearest)
TINY = 2.0**-1074           # smallest positive subnormal: the spacing of floats below 2^-1022
LIBM_ULPS = 4               # allowed error of torch's exp/log/pow, in ulps (see the module docstring)
INF = math.inf


def nan_to_inf(x: Tensor) -> Tensor:
    """NaN → +∞ (an unknown non-negative bound is bounded by +∞)."""
    return torch.where(torch.isnan(x), torch.full_like(x, INF), x)


def up(x: Tensor, steps: int = 1) -> Tensor:
    """x moved ``steps`` floats towards +∞ (NaN → +∞)."""
    x = nan_to_inf(x)
    inf = torch.full_like(x, INF)
    for _ in range(steps):
        x = torch.nextafter(x, inf)
    return x


def dn(x: Tensor, steps: int = 1) -> Tensor:
    """x moved ``steps`` floats towards −∞."""
    ninf = torch.full_like(x, -INF)
    for _ in range(steps):
        x = torch.nextafter(x, ninf)
    return x


def ulp(z: Tensor) -> Tensor:
    """nextafter(|z|, +∞) − |z| (exact by Sterbenz): ≥ the rounding error of any correctly rounded operation
    whose rounded result is z (the error is ≤ half the spacing around the exact result, ≤ this spacing)."""
    a = z.abs()
    out = torch.nextafter(a, torch.full_like(a, INF)) - a
    return torch.where(torch.isfinite(out), out, torch.full_like(out, INF))


def add_up(*terms: Tensor) -> Tensor:
    """Upper bound on the exact sum of non-negative terms (each addition rounded upward)."""
    acc = terms[0]
    for t in terms[1:]:
        acc = up(acc + t)
    return nan_to_inf(acc)


def mul_up(a: Tensor, b: Tensor | float) -> Tensor:
    """Upper bound on a·b for non-negative a, b (0·∞ → ∞)."""
    return up(a * b)


def div_up(a: Tensor, b: Tensor) -> Tensor:
    """Upper bound on a/b for a ≥ 0, b > 0 (b = 0 → ∞)."""
    out = up(a / b)
    return torch.where(b > 0, out, torch.full_like(out, INF))


def sub_dn(a: Tensor, b: Tensor) -> Tensor:
    """Lower bound on a − b."""
    return dn(a - b)


def gamma_up(n: int) -> float:
    """An upper bound on γ_n = n·u/(1 − n·u) as a float (+∞ if n·u ≥ 1/2)."""
    if n <= 0:
        return 0.0
    nu = n * U
    if nu >= 0.5:
        return INF
    return math.nextafter(math.nextafter(nu, INF) / math.nextafter(1.0 - nu, 0.0) * (1 + 4 * U), INF)


def reduction_up(s: Tensor, n: int, products: bool = False) -> Tensor:
    """Upper bound on the exact value of a float sum (or dot product, ``products``) of n non-negative terms
    whose float result is s: s/(1 − γ_n) (+ n·2⁻¹⁰⁷⁴ for underflowing products)."""
    g = gamma_up(n)
    c = math.nextafter(1.0 + 2.0 * g, INF)  # 1/(1 − γ) ≤ 1 + 2γ for γ ≤ 1/2
    out = up(s * c)
    if products:
        out = up(out + n * TINY)
    return out


def libm_up(y: Tensor) -> Tensor:
    """Upper bound on the exact value of a libm function whose float result is y (≤ LIBM_ULPS ulps off)."""
    return up(y, LIBM_ULPS + 1)


def libm_dn(y: Tensor) -> Tensor:
    """Lower bound on the exact value of a libm function whose float result is y."""
    return dn(y, LIBM_ULPS + 1)


def frobenius_up(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Upper bound on the exact Frobenius norm (Σ x²)^(1/2) of the float entries of x over ``dims``.

    Scaled by a power of two 2^k ≥ max|x| (exact scaling) so that squares neither overflow nor lose the
    norm to underflow; each square that underflows loses ≤ 2⁻¹⁰⁷⁵, covered by adding n·2⁻¹⁰⁷⁴.
    """
    a = nan_to_inf(x.abs())
    n = 1
    for d in dims:
        n *= x.shape[d]
    m = a.amax(dim=dims, keepdim=True) if n > 0 else torch.zeros_like(a.sum(dim=dims, keepdim=True))
    finite = torch.isfinite(m)
    _, e = torch.frexp(torch.where(finite & (m > 0), m, torch.ones_like(m)))
    scale = torch.ldexp(torch.ones_like(m), e.to(m.dtype))            # 2^e > max|x|
    r = a / scale                                                      # exact unless subnormal (covered below)
    s = reduction_up((r * r).sum(dim=dims, keepdim=True), n, products=True)
    root = up(torch.sqrt(s))
    out = up(root * scale)
    out = torch.where(finite, out, torch.full_like(out, INF))
    out = torch.where(m == 0, torch.zeros_like(out), out)
    return out.squeeze(dims) if dims else out
