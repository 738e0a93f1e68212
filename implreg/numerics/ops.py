"""Elementwise arithmetic, reductions and data movement on ``Certified`` values (float tier).

Each function returns value = the float64 result and error = a rigorous bound on |exact − value| that covers
the operands' errors (first-order AND higher-order terms) and the rounding of both the value and the bound
(``rounding.py``).  Notation: x̂, ŷ values, e_x, e_y errors, ẑ the float result, u = 2⁻⁵³.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from implreg.errors import InvalidInputError
from implreg.numerics import rounding as R
from implreg.numerics.certified import Certified, lift, lift_all

INF = float("inf")


def _rig(*xs: Certified) -> bool:
    return all(x.rigorous for x in xs)


def _bcast(a: Certified, b: Certified, what: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    try:
        av, bv = torch.broadcast_tensors(a.value, b.value)
    except RuntimeError:
        raise InvalidInputError(
            f"{what}: shapes {tuple(a.shape)} and {tuple(b.shape)} do not broadcast") from None
    ae, be = torch.broadcast_tensors(a.error, b.error)
    return av, bv, ae, be


# ---------------------------------------------------------------------------------------------- + − × ÷
def add(a: Any, b: Any) -> Certified:
    """a + b: error ≤ e_a + e_b + ulp(ẑ) (ẑ is correctly rounded)."""
    a, b = lift_all([a, b])
    av, bv, ae, be = _bcast(a, b, "a + b")
    z = av + bv
    return Certified(z, R.add_up(ae, be, R.ulp(z)), _rig(a, b), "add", (a, b))


def sub(a: Any, b: Any) -> Certified:
    """a − b: error ≤ e_a + e_b + ulp(ẑ)."""
    a, b = lift_all([a, b])
    av, bv, ae, be = _bcast(a, b, "a − b")
    z = av - bv
    return Certified(z, R.add_up(ae, be, R.ulp(z)), _rig(a, b), "sub", (a, b))


def mul(a: Any, b: Any) -> Certified:
    """a·b: |ab − âb̂| ≤ |â|e_b + |b̂|e_a + e_a·e_b, plus ulp(ẑ) for rounding the product."""
    a, b = lift_all([a, b])
    av, bv, ae, be = _bcast(a, b, "a · b")
    z = av * bv
    err = R.add_up(R.mul_up(av.abs(), be), R.mul_up(bv.abs(), ae), R.mul_up(ae, be), R.ulp(z))
    if a is b:
        op = "square"
    else:
        op = "mul"
    return Certified(z, err, _rig(a, b), op, (a, b))


def div(a: Any, b: Any) -> Certified:
    """a / b: |a/b − â/b̂| ≤ (e_a + |â/b̂|·e_b)/(|b̂| − e_b) when |b̂| > e_b (+∞ otherwise), plus ulp(ẑ).

    (a/b − â/b̂ = (a − â)/b + â(b̂ − b)/(b·b̂) and |b| ≥ |b̂| − e_b.)  Division by an exact 0 gives NaN/±∞.
    """
    a, b = lift_all([a, b])
    av, bv, ae, be = _bcast(a, b, "a / b")
    z = av / bv
    babs = bv.abs()
    d = R.sub_dn(babs, be)                               # lower bound on |b|
    q = R.div_up(av.abs(), babs)
    err = R.add_up(R.div_up(R.add_up(ae, R.mul_up(q, be)), d), R.ulp(z))
    err = torch.where(d > 0, err, torch.full_like(err, INF))
    return Certified(z, err, _rig(a, b), "div", (a, b))


def neg(a: Any) -> Certified:
    """−a (exact)."""
    a = lift(a)
    return Certified(-a.value, a.error, a.rigorous, "neg", (a,))


def absolute(a: Any) -> Certified:
    """|a| (exact op; ||a| − |â|| ≤ e_a)."""
    a = lift(a)
    return Certified(a.value.abs(), a.error, a.rigorous, "abs", (a,))


def square(a: Any) -> Certified:
    """a² = a·a."""
    a = lift(a)
    return mul(a, a)


def power(a: Any, p: Any, *, center: str = "value") -> Certified:
    """a**p: integer p by repeated multiplication (and 1/a^|p| for p < 0, a⁰ = 1), real p by the monotone
    map x ↦ x^p on x ≥ 0 (``powr``), Certified p as exp(p·log a).  ``center`` (real p only): see
    :func:`_monotone`."""
    a = lift(a)
    if isinstance(p, Certified):
        return exp(mul(p, log(a)))
    if isinstance(p, Tensor):
        if p.numel() != 1:
            raise InvalidInputError("a ** p: a tensor exponent must be a single number (use exp(p·log a))")
        p = p.item()
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise InvalidInputError(f"a ** p: the exponent must be a real number, got {type(p).__name__}")
    if isinstance(p, numbers.Integral) or (float(p).is_integer() and abs(p) <= 2**31):
        n = int(p)
        if n == 0:
            return Certified.exact(torch.ones_like(a.value))
        result: Certified | None = None
        base = a
        m = abs(n)
        while m:
            if m & 1:
                result = base if result is None else mul(result, base)
            m >>= 1
            if m:
                base = mul(base, base)
        assert result is not None
        return div(1.0, result) if n < 0 else result
    return _monotone(a, "powr", lambda t: torch.pow(t, float(p)), domain="nonneg", params={"p": float(p)},
                     center=center)


# ---------------------------------------------------------------------------------------------- monotone maps
def _monotone(a: Certified, op: str, f: Callable[[Tensor], Tensor], domain: str,
              params: dict | None = None, center: str = "value") -> Certified:
    """Apply a monotone f (increasing or decreasing) on its domain: the exact f(x) for x ∈ [lo, hi] lies
    between f(lo) and f(hi), so |f(x) − ẑ| ≤ max(F⁺ − ẑ, ẑ − F⁻) with F⁺ ≥ max(f(lo), f(hi)) and
    F⁻ ≤ min(f(lo), f(hi)) evaluated with ``LIBM_ULPS`` allowed error.

    domain "nonneg": f on [0, ∞), applied to max(x, 0) where x is not certainly negative (rounding can push
    an exactly-0 quantity below 0); certainly negative entries give NaN.  "pos": (0, ∞); certainly ≤ 0 → NaN.

    ``center="value"`` keeps ẑ = f(x̂) as the value (the best estimate, what a report shows);
    ``center="enclosure"`` takes the midpoint of [F⁻, F⁺] instead, so the ball is the enclosure itself: where
    x's ball reaches below 0 on the "nonneg" domain (σ_min ≈ 1e-17 known to ±2e-3), σ^¼ ∈ [0, 0.2] becomes
    0.1 ± 0.1 instead of 3e-5 ± 0.2, and a sum of such terms keeps its lower end (for comparisons that need a
    bound, not an estimate).  Both are rigorous: the error covers |f(x) − value| for every x in the ball.
    """
    if center not in ("value", "enclosure"):
        raise InvalidInputError(f"center must be 'value' or 'enclosure', got {center!r}")
    x, e = a.value, a.error
    lo, hi = R.dn(x - e), R.up(x + e)
    nan = torch.full_like(x, float("nan"))
    if domain == "all":
        xv = x
        bad = torch.zeros_like(x, dtype=torch.bool)
    else:
        bad = hi < 0 if domain == "nonneg" else hi <= 0
        xv = x.clamp(min=0.0)
        lo = lo.clamp(min=0.0)
    z = f(xv)
    fa, fb = f(lo), f(hi)
    fmax = R.libm_up(torch.maximum(fa, fb))
    fmin = R.libm_dn(torch.minimum(fa, fb))
    if center == "enclosure":
        if domain == "nonneg":
            # sqrt and x^p map [0, ∞) into [0, ∞) exactly, so the libm allowance below 0 is not needed
            fmin = fmin.clamp(min=0.0)
        mid = fmin + 0.5 * (fmax - fmin)  # any float in [F⁻, F⁺]: the error below is measured from it
        z = torch.where(torch.isfinite(mid), mid, z)
    err = torch.maximum(R.up(fmax - z), R.up(z - fmin)).clamp(min=0.0)
    if center == "enclosure" and domain == "nonneg":
        # Enclosure [0, F⁺]: the ball h ± h with h = up(F⁺/2) ≥ F⁺/2 covers it exactly and keeps its lower
        # end at exactly 0 (the general rounding above would put it a few ulps below 0).
        at0 = (fmin == 0) & torch.isfinite(fmax)
        half = R.up(0.5 * fmax)
        z, err = torch.where(at0, half, z), torch.where(at0, half, err)
    err = R.nan_to_inf(err)
    err = torch.where(torch.isfinite(z), err, torch.full_like(err, INF))
    z = torch.where(bad, nan, z)
    return Certified(z, err, a.rigorous, op, (a,), params)


def sqrt(a: Any) -> Certified:
    """√a (of max(a, 0), see ``_monotone``); increasing on [0, ∞)."""
    return _monotone(lift(a), "sqrt", torch.sqrt, "nonneg")


def exp(a: Any) -> Certified:
    """exp(a); increasing."""
    return _monotone(lift(a), "exp", torch.exp, "all")


def log(a: Any) -> Certified:
    """log(a) for a > 0; increasing (+∞ error where a's enclosure reaches 0)."""
    return _monotone(lift(a), "log", torch.log, "pos")


#: Below this a probability's p·log p is not evaluated in float64 (its log would need an enclosure away from 0): its
#: term is the interval [p⁺ log p⁺, 0] instead (−p log p increases on [0, 1/e]), rigorous however small p⁺ is.
XLOGX_FLOOR = 1e-300


def xlogx(a: Any) -> Certified:
    """a·log a on a ≥ 0, with 0·log 0 = 0 (entropy terms).  Float tier: the product where a's enclosure stays
    above ``XLOGX_FLOOR``, else the interval [min, max] of p log p over [0, a⁺]: [a⁺ log a⁺, 0] for a⁺ ≤ 1/e,
    [−1/e, max(0, a⁺ log a⁺)] beyond (the minimum is at 1/e), rounded out by 1 %.  The ball and exact tiers
    re-evaluate it from a's (refined) enclosure, so a term that was an interval in float64 becomes a product once
    a refinement moves a's enclosure away from 0."""
    a = lift(a)
    pf = maximum(a, Certified.exact(torch.full_like(a.value, XLOGX_FLOOR)))
    term = mul(pf, log(pf))
    hi = a.hi.clamp(min=0.0)
    # 1 % ≫ the few ulps of these float64 operations
    hlogh = hi * torch.log(hi.clamp(min=1e-320))
    lower = torch.where(hi < math.exp(-1), hlogh, torch.full_like(hi, -math.exp(-1)))
    lower = torch.where(hi > 0, lower * 1.01, torch.zeros_like(hi))
    upper = torch.where(hi > 1, hlogh * 1.01, torch.zeros_like(hi))
    unbounded = torch.isinf(upper)
    center = torch.where(unbounded, torch.zeros_like(hi), 0.5 * (lower + upper))
    radius = torch.where(unbounded, torch.full_like(hi, math.inf), 0.5 * (upper - lower) * (1 + 1e-15))
    small = Certified.measured(center, radius, rigorous=True, label="a log a near 0")
    chosen = where(a.lo > XLOGX_FLOOR, term, small)
    return Certified(chosen.value, chosen.error, chosen.rigorous, "xlogx", (a,))


# ---------------------------------------------------------------------------------------------- min / max / where
def _select_err(av, bv, ae, be, take_a: Tensor) -> Tensor:
    """Error of min/max: the chosen operand's error where the two enclosures are disjoint, else the larger
    (|min(x, y) − min(x̂, ŷ)| ≤ max(e_x, e_y), an exact selection)."""
    a_lo, a_hi, b_lo, b_hi = R.dn(av - ae), R.up(av + ae), R.dn(bv - be), R.up(bv + be)
    disjoint = (a_hi < b_lo) | (b_hi < a_lo)
    return torch.where(disjoint, torch.where(take_a, ae, be), torch.maximum(ae, be))


def minimum(a: Any, b: Any) -> Certified:
    """Elementwise min(a, b)."""
    a, b = lift_all([a, b])
    av, bv, ae, be = _bcast(a, b, "minimum(a, b)")
    take_a = av <= bv
    return Certified(torch.where(take_a, av, bv), _select_err(av, bv, ae, be, take_a), _rig(a, b), "min2", (a, b))


def maximum(a: Any, b: Any) -> Certified:
    """Elementwise max(a, b)."""
    a, b = lift_all([a, b])
    av, bv, ae, be = _bcast(a, b, "maximum(a, b)")
    take_a = av >= bv
    return Certified(torch.where(take_a, av, bv), _select_err(av, bv, ae, be, take_a), _rig(a, b), "max2", (a, b))


def where(cond: Any, a: Any, b: Any) -> Certified:
    """Elementwise cond ? a : b for an exact boolean condition (a tensor, not a comparison)."""
    if not isinstance(cond, Tensor) or cond.dtype != torch.bool:
        raise InvalidInputError("where(cond, a, b): cond must be a boolean tensor (an exact condition)")
    a, b = lift_all([a, b])
    cond = cond.to(a.device)
    try:
        c, av, bv = torch.broadcast_tensors(cond, a.value, b.value)
        _, ae, be = torch.broadcast_tensors(cond, a.error, b.error)
    except RuntimeError:
        raise InvalidInputError(
            f"where: shapes {tuple(cond.shape)}, {tuple(a.shape)}, {tuple(b.shape)} do not broadcast") from None
    return Certified(torch.where(c, av, bv), torch.where(c, ae, be), _rig(a, b), "where", (a, b), {"cond": cond})


# ---------------------------------------------------------------------------------------------- reductions
def _dims(x: Certified, dim) -> tuple[int, ...]:
    if dim is None:
        return tuple(range(x.ndim))
    ds = (dim,) if isinstance(dim, int) else tuple(dim)
    try:
        return tuple(sorted({d % x.ndim if x.ndim else 0 for d in ds}))
    except ZeroDivisionError:
        return ()


def _count(x: Certified, dims: tuple[int, ...]) -> int:
    n = 1
    for d in dims:
        n *= x.shape[d]
    return n


def sum(x: Any, dim=None, keepdim: bool = False) -> Certified:
    """Σ x over ``dim``: error ≤ Σ e_i + γ_{n−1}·Σ|x̂_i| (summation in any order: Higham eq. (4.4))."""
    x = lift(x)
    dims = _dims(x, dim)
    if x.ndim == 0 or not dims:
        return x
    n = _count(x, dims)
    z = x.value.sum(dim=dims, keepdim=keepdim)
    se = R.reduction_up(x.error.sum(dim=dims, keepdim=keepdim), n)
    sa = R.reduction_up(x.value.abs().sum(dim=dims, keepdim=keepdim), n)
    err = R.add_up(se, R.mul_up(sa, R.gamma_up(max(n - 1, 0))))
    return Certified(z, err, x.rigorous, "sum", (x,), {"dims": dims, "keepdim": keepdim})


def mean(x: Any, dim=None, keepdim: bool = False) -> Certified:
    """Σ x / n (the division by the exact count n is a certified division)."""
    x = lift(x)
    dims = _dims(x, dim)
    if x.ndim == 0 or not dims:
        return x
    return div(sum(x, dims, keepdim), float(_count(x, dims)))


def _extreme(x: Any, dim, keepdim: bool, op: str) -> Certified:
    x = lift(x)
    dims = _dims(x, dim)
    if x.ndim == 0 or not dims:
        return x
    if _count(x, dims) == 0:
        raise InvalidInputError(f"{op} over an empty dimension")
    f = torch.amax if op == "amax" else torch.amin
    # |max_i x_i − max_i x̂_i| ≤ max_i e_i (and the same for min): the max is an exact selection.
    z = f(x.value, dim=dims, keepdim=keepdim)
    err = torch.amax(x.error, dim=dims, keepdim=keepdim)
    return Certified(z, err, x.rigorous, op, (x,), {"dims": dims, "keepdim": keepdim})


def amax(x: Any, dim=None, keepdim: bool = False) -> Certified:
    """Largest entry over ``dim`` (error: the largest error there)."""
    return _extreme(x, dim, keepdim, "amax")


def amin(x: Any, dim=None, keepdim: bool = False) -> Certified:
    """Smallest entry over ``dim``."""
    return _extreme(x, dim, keepdim, "amin")


# ---------------------------------------------------------------------------------------------- data movement
def gather(x: Certified, fn: Callable[[Tensor], Tensor], name: str) -> Certified:
    """A pure data-movement op (index, reshape, transpose, …) applied to value and error alike (exact).

    The ball tier re-applies ``fn`` to a tensor of flat positions to learn which input entry each output
    entry came from.
    """
    try:
        v, e = fn(x.value), fn(x.error)
    except (IndexError, RuntimeError, TypeError) as exc:
        raise InvalidInputError(f"{name} on a Certified of shape {tuple(x.shape)}: {exc}") from None
    return Certified(v, e, x.rigorous, "gather", (x,), {"fn": fn, "name": name})


def getitem(x: Certified, idx: Any) -> Certified:
    """x[idx] with torch indexing (basic and advanced)."""
    if isinstance(idx, Certified):
        raise InvalidInputError("a Certified cannot index; use an exact (integer or boolean) tensor")
    return gather(x, lambda t: t[idx], "indexing")


def _join(seq: Sequence[Any], dim: int, op: str, join: Any) -> Certified:
    """``join`` (torch.stack or torch.cat) of certified values: values and error bounds joined alike."""
    xs = lift_all(list(seq))
    if not xs:
        raise InvalidInputError(f"{op} of an empty sequence")
    try:
        v = join([x.value for x in xs], dim)
        e = join([x.error for x in xs], dim)
    except RuntimeError as exc:
        raise InvalidInputError(f"{op}: {exc}") from None
    return Certified(v, e, _rig(*xs), op, tuple(xs), {"dim": dim % v.ndim})


def stack(seq: Sequence[Any], dim: int = 0) -> Certified:
    """torch.stack of certified values."""
    return _join(seq, dim, "stack", torch.stack)


def cat(seq: Sequence[Any], dim: int = 0) -> Certified:
    """torch.cat of certified values."""
    return _join(seq, dim, "cat", torch.cat)
