"""Matrix measures: norms, Schatten and entrywise (quasi-)norms, singular values, ranks, error bounds.

Every measure takes a batch ``W`` of shape (B, d, d') — a Tensor (real float32/float64, finite, any device: exact
input, float32 converted exactly) or an ``implreg.numerics.Certified`` (W with its per-entry error, e.g. a flow's
state) — and returns a ``Certified`` (B,) (float64, same device) built from the numerics ops (``svdvals``,
sums, powers, roots), so its error bound is rigorous given the input's, ``certify`` can compare it without an
``error=`` term, and its equality cases are decided in the exact tier.  ``.value`` is the float64 value.
Instances never influence each other.

Error bounds (``singular_value_error_bound``, ``norm_error_bound``) take an entrywise bound ``e`` with
|E_ij| ≤ e on the error E of W and bound |m(W + E) − m(W)| *in exact arithmetic*.  They do not include the
rounding error of evaluating m itself in floating point (about n·eps·‖W‖_2 for SVD-based measures, n =
max(d, d')); certification adds that to its margin.  A bound of +inf means "no simple rigorous bound":
escalate to the reference instead of trusting the number.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Mapping
from functools import partial
from types import MappingProxyType

import torch
from torch import Tensor

from implreg.errors import InvalidInputError
from implreg.numerics import Certified, Comparison, svdvals, where
from implreg.numerics.ops import power, xlogx

__all__ = [
    "MEASURES",
    "NORMS",
    "distance_to_rank",
    "effective_rank",
    "entrywise",
    "frobenius",
    "norm_at_least",
    "norm_error_bound",
    "norm_increases",
    "nuclear",
    "schatten",
    "sigma_min",
    "singular_value_error_bound",
    "singular_values",
    "spectral",
]

_DTYPES = (torch.float32, torch.float64)


# ---------------------------------------------------------------------------------------------- checks


def _check_W(W: Tensor, name: str = "W") -> None:
    if not isinstance(W, Tensor):
        raise InvalidInputError(f"{name} must be a torch.Tensor of shape (B, d, d'), got {type(W).__name__}")
    if W.ndim < 3:
        raise InvalidInputError(
            f"{name} must be a batch of matrices of shape (B, d, d') (or (B, K, …, d, d')), got shape "
            f"{tuple(W.shape)} (ndim {W.ndim}); add a batch dimension with W.unsqueeze(0)"
        )
    if W.ndim != 3:  # the public measures flatten extra batch dimensions (``_batch_dims``) before they get here
        raise InvalidInputError(f"{name}: internal error, shape {tuple(W.shape)} reached a (B, d, d') routine")
    if W.shape[1] < 1 or W.shape[2] < 1:
        raise InvalidInputError(f"{name} must have d ≥ 1 and d' ≥ 1, got shape {tuple(W.shape)}")
    if W.dtype not in _DTYPES:
        raise InvalidInputError(f"{name} must be float32 or float64, got {W.dtype}")
    if not bool(torch.isfinite(W).all()):
        bad = (~torch.isfinite(W)).flatten(1).any(1).nonzero().flatten().tolist()
        raise InvalidInputError(f"{name} has NaN/Inf entries (instances {bad[:10]})")


def _check_p(p: float, name: str = "p", allow_inf: bool = True) -> float:
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise InvalidInputError(f"{name} must be a real number > 0, got {p!r}")
    p = float(p)
    if math.isnan(p) or p <= 0:
        raise InvalidInputError(f"{name} must be > 0 (quasi-norms 0 < p < 1 are allowed), got {p}")
    if math.isinf(p) and not allow_inf:
        raise InvalidInputError(f"{name} must be finite, got {p}")
    return p


def _check_e(e: Tensor | float, W: Tensor) -> Tensor:
    """The entrywise error bound e as a (B,) tensor of W's dtype and device, rounded *upward* if narrowed."""
    if isinstance(e, bool) or not isinstance(e, Tensor | numbers.Real):
        raise InvalidInputError(f"error bound e must be a float or a (B,) tensor, got {type(e).__name__}")
    src = e if isinstance(e, Tensor) else torch.tensor(float(e), dtype=torch.float64)
    if src.is_complex() or src.dtype == torch.bool:
        raise InvalidInputError(f"error bound e must be real, got dtype {src.dtype}")
    if src.ndim > 1 or (src.ndim == 1 and src.shape[0] != W.shape[0]):
        raise InvalidInputError(
            f"error bound e must be a scalar or have shape (B,) = ({W.shape[0]},), got {tuple(src.shape)}"
        )
    if not src.is_floating_point():
        src = src.to(torch.float64)  # integer bounds: exact below 2^53
    if bool(torch.isnan(src).any()) or bool((src < 0).any()):
        raise InvalidInputError("error bound e must be ≥ 0 and not NaN (+inf is allowed and gives +inf)")
    out = src.to(W.dtype)
    if torch.finfo(src.dtype).bits > torch.finfo(W.dtype).bits:
        # Narrowing rounds to nearest, possibly down: step up one ulp where it did so the bound stays a bound.
        out = torch.where(out.to(src.dtype) < src, torch.nextafter(out, torch.full_like(out, math.inf)), out)
    return out.to(W.device).expand(W.shape[0])


def _bound(coefficient: float, e: Tensor) -> Tensor:
    """coefficient·e rounded upward (0 where e = 0), so that it is ≥ the exact real bound."""
    # The float64 coefficient carries ≤ 3 roundings (pow or sqrt, sqrt, product: ≤ 2 ulp of float64); its
    # conversion to e's dtype and the product add ≤ 1 ulp of e's dtype.  Scaling by (1 + 8 eps) covers these
    # relative errors and the final nextafter covers the scaling's own rounding and subnormal results.
    eps = torch.finfo(e.dtype).eps
    out = torch.nextafter((coefficient * e) * (1.0 + 8.0 * eps), torch.full_like(e, math.inf))
    return torch.where(e == 0, torch.zeros_like(out), out)


# ---------------------------------------------------------------------------------------------- measures


def _batch_dims(fn: Callable[..., Certified]) -> Callable[..., Certified]:
    """Let a measure of (B, d, d') take any batch shape (B, K, …, d, d'): flatten the batch dimensions, measure,
    and give the result back the same leading shape (e.g. a flow's states at K loss levels, (B, K, d, d'))."""

    def measure(W: Tensor | Certified, *args: object, **kwargs: object) -> Certified:
        value = W.value if isinstance(W, Certified) else W
        if not isinstance(value, Tensor) or value.ndim <= 3:
            return fn(W, *args, **kwargs)
        lead = tuple(value.shape[:-2])
        out = fn(W.reshape(-1, *value.shape[-2:]), *args, **kwargs)
        return out.reshape(*lead, *out.shape[1:])

    measure.__name__, measure.__qualname__, measure.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
    measure.__wrapped__ = fn  # type: ignore[attr-defined]
    return measure


def _lift_W(W: Tensor | Certified, name: str = "W") -> Certified:
    """W as a certified value: a Tensor is exact input (its float64 value, float32 converted exactly); a Certified
    keeps its error.  Validation (shape, dtype, finiteness) as before, on the value."""
    if isinstance(W, Certified):
        _check_W(W.value, name)
        return W
    _check_W(W, name)
    return Certified.exact(W.to(torch.float64))


def _pow2_scale(W: Certified) -> tuple[Tensor, Tensor]:
    """Per-instance powers of two (s, 1/s) with s·max|w| ∈ [½, 1) (1 for a zero matrix), from the value and
    error: scaling by them is exact in float64 (no new rounding, only possible underflow of entries ≪ the largest,
    which the certified product accounts for), so squares and p-th powers neither overflow nor underflow unless
    the result itself does — as the float measures did by scaling with max |w|."""
    if W.value.numel() == 0:  # an empty batch: nothing to scale
        ones = torch.ones(W.shape[0], dtype=W.value.dtype, device=W.value.device)
        return ones, ones
    m = (W.value.abs() + W.error).flatten(1).amax(-1)
    m = torch.where(torch.isfinite(m), m, W.value.abs().flatten(1).amax(-1))
    _, ex = torch.frexp(m)
    ex = torch.where(m > 0, ex, torch.zeros_like(ex)).clamp(-1000, 1000)
    two = torch.full_like(m, 2.0)
    return torch.pow(two, -ex.to(m.dtype)), torch.pow(two, ex.to(m.dtype))


def _col(s: Tensor, ndim: int) -> Tensor:
    return s.reshape(s.shape[0], *([1] * (ndim - 1)))


def _pow(x: Certified, p: float) -> Certified:
    """x^p for x ≥ 0 and a real p: exp(p·log x) where x's enclosure lies above 0, the core's ``x ** p`` (a monotone
    map on [0, ∞), which encloses e^p-sized errors near 0) elsewhere.  Why not ``x ** p`` throughout: on CPU
    torch.pow(·, scalar) uses a SIMD routine for the vector body and libm for the tail, so the same entry could
    round differently depending on its position in the batch (instances must not influence each other, to the
    bit); exp and log use one routine at every position.  Integer p stays repeated multiplication (exact op)."""
    if float(p).is_integer():
        return x ** int(p)
    pos = x.lo > 0
    via_log = (where(pos, x, 1.0).log() * p).exp()
    return where(pos, via_log, where(pos, 0.0, x) ** p)


def _pmean(x: Certified, p: float, inv: Tensor) -> Certified:
    """(Σ_j x_j^p)^(1/p) over the last dim of x ≥ 0 already scaled into [0, 1) by s, times 1/s = ``inv``."""
    if math.isinf(p):
        return x.amax(-1) * inv
    if p == 1.0:
        return x.sum(-1) * inv
    if p == 2.0:
        return x.square().sum(-1).sqrt() * inv
    total = _pow(x, p).sum(-1)  # in [0, n]: x ∈ [0, 1)
    direct = _pow(total, 1.0 / p) * inv
    if bool(torch.isfinite(direct.value).all()):
        return direct
    # total^(1/p) overflows for tiny p although the norm may be representable: exp(log(total)/p + log(1/s)) there
    logspace = (total.log() / p + Certified.exact(inv).log()).exp()
    return where(torch.isfinite(direct.value), direct, logspace)


@_batch_dims
def singular_values(W: Tensor | Certified) -> Certified:
    """Singular values σ_1 ≥ … ≥ σ_k ≥ 0, k = min(d, d'), shape (B, k), certified (``numerics.svdvals``: Weyl
    for the input's error plus an a-posteriori bound on LAPACK's rounding)."""
    return svdvals(_lift_W(W))


@_batch_dims
def frobenius(W: Tensor | Certified) -> Certified:
    """Frobenius norm ‖W‖_F = (Σ_ij w_ij²)^(1/2) = (Σ_r σ_r²)^(1/2)  (Horn & Johnson, Matrix Analysis §5.6).

    From the entries (no SVD), scaled by a power of two so that it does not overflow.
    """
    Wc = _lift_W(W)
    s, inv = _pow2_scale(Wc)
    x = (Wc * _col(s, 3)).reshape(Wc.shape[0], Wc.shape[1] * Wc.shape[2])
    return _pmean(x, 2.0, inv)


@_batch_dims
def nuclear(W: Tensor | Certified) -> Certified:
    """Nuclear (trace) norm ‖W‖_* = Σ_r σ_r, the Schatten-1 norm  (Horn & Johnson, Matrix Analysis §5.6)."""
    return svdvals(_lift_W(W)).sum(-1)


@_batch_dims
def spectral(W: Tensor | Certified) -> Certified:
    """Spectral (operator 2-) norm ‖W‖_2 = σ_1, the Schatten-∞ norm (Horn & Johnson, Matrix Analysis §5.6)."""
    return svdvals(_lift_W(W))[:, 0]


@_batch_dims
def sigma_min(W: Tensor | Certified) -> Certified:
    """Smallest singular value σ_k, k = min(d, d') (0 iff W is rank-deficient)  (Horn & Johnson §7.3)."""
    return svdvals(_lift_W(W))[:, -1]


@_batch_dims
def schatten(W: Tensor | Certified, p: float) -> Certified:
    """Schatten-p (quasi-)norm ‖W‖_{S_p} = (Σ_r σ_r^p)^(1/p), any p > 0; p = ∞ gives σ_1  (Bhatia, Matrix
    Analysis §IV.2).  A norm for p ≥ 1, a quasi-norm for 0 < p < 1 (as in Razin & Cohen 2020).

    For p < 1 tiny singular values dominate: a singular value known only to within e contributes up to e^p, so the
    bound is wide there (the certified power of an interval containing 0 says so).
    """
    Wc = _lift_W(W)
    p = _check_p(p)
    sv = svdvals(Wc)
    if math.isinf(p):
        return sv[:, 0]
    s, inv = _pow2_scale(Wc)
    return _pmean(sv * _col(s, 2), p, inv)


@_batch_dims
def entrywise(W: Tensor | Certified, p: float) -> Certified:
    """Entrywise ℓ_p (quasi-)norm ‖vec W‖_p = (Σ_ij |w_ij|^p)^(1/p), any p > 0; p = ∞ gives max |w_ij|
    (Horn & Johnson, Matrix Analysis §5.6).  A norm for p ≥ 1, a quasi-norm for 0 < p < 1.
    """
    Wc = _lift_W(W)
    p = _check_p(p)
    B, d, dp = Wc.shape
    if math.isinf(p):
        return abs(Wc).reshape(B, d * dp).amax(-1)
    s, inv = _pow2_scale(Wc)
    return _pmean(abs(Wc * _col(s, 3)).reshape(B, d * dp), p, inv)


@_batch_dims
def distance_to_rank(W: Tensor | Certified, k: int) -> Certified:
    """Frobenius distance to the nearest matrix of rank ≤ k: min_{rank M ≤ k} ‖W − M‖_F = (Σ_{r>k} σ_r²)^(1/2)
    (Eckart & Young 1936).  k ranges over 0 … min(d, d'); k = 0 gives ‖W‖_F, k = min(d, d') gives 0 (exactly).
    """
    Wc = _lift_W(W)
    kmax = min(Wc.shape[-2], Wc.shape[-1])
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise InvalidInputError(f"rank k must be an integer in 0 … {kmax}, got {k!r}")
    if not 0 <= k <= kmax:
        raise InvalidInputError(
            f"rank k must be in 0 … min(d, d') = {kmax} for W of shape {tuple(Wc.shape)}, got {k}"
        )
    if k == kmax:
        return Certified.exact(torch.zeros(Wc.shape[0], dtype=torch.float64, device=Wc.value.device))
    s, inv = _pow2_scale(Wc)
    return _pmean(svdvals(Wc)[:, int(k):] * _col(s, 2), 2.0, inv)


@_batch_dims
def effective_rank(W: Tensor | Certified) -> Certified:
    """Effective rank erank(W) = exp(−Σ_r p_r log p_r), p_r = σ_r / Σ_s σ_s, with 0·log 0 = 0  (Roy & Vetterli
    2007, Def. 1).  Lies in [1, min(d, d')]; NaN (error ∞) for W = 0 (p undefined), per instance.

    A p_r whose enclosure reaches below 1e-300 (e.g. the rounding-level σ of a rank-deficient W) enters as the
    rigorous interval [p⁺ log p⁺, 0] instead of a logarithm of a ball containing 0; escalation re-evaluates each
    term from p_r's refined enclosure (``numerics.ops.xlogx``).
    """
    Wc = _lift_W(W)
    sv = svdvals(Wc)
    total = sv.sum(-1, keepdim=True)
    # W = 0 exactly (value and error 0): p is undefined.  (The certified σ of an exact zero matrix carries
    # LAPACK's a-posteriori rounding bound, tiny but > 0, so ``total.hi <= 0`` alone does not see it.)
    exact_zero = ((Wc.value == 0) & (Wc.error == 0)).flatten(1).all(-1)
    zero = exact_zero | (total.hi <= 0).squeeze(-1)
    safe_total = where(zero.unsqueeze(-1), Certified.exact(torch.ones_like(total.value)), total)
    prob = sv / safe_total
    out = (-xlogx(prob).sum(-1)).exp()   # p log p ≤ 0; an interval where p's enclosure reaches 0 (see xlogx)
    nan = Certified.measured(torch.full_like(out.value, math.nan), torch.full_like(out.value, math.inf),
                             rigorous=True, label="effective rank of W = 0 (undefined)")
    return where(zero, nan, out)


# ---------------------------------------------------------------------------------------------- registries


NORMS: Mapping[str, Callable[[Tensor | Certified], Certified]] = MappingProxyType(
    {
        "frobenius": frobenius,
        "nuclear": nuclear,
        "spectral": spectral,
        "schatten-0.25": partial(schatten, p=0.25),
        "schatten-0.5": partial(schatten, p=0.5),
        "schatten-0.75": partial(schatten, p=0.75),
        "schatten-1.5": partial(schatten, p=1.5),
        "schatten-3": partial(schatten, p=3.0),
        "entrywise-0.5": partial(entrywise, p=0.5),
        "entrywise-1": partial(entrywise, p=1.0),
        "entrywise-inf": partial(entrywise, p=math.inf),
    }
)
"""Every norm and quasi-norm a report iterates over: readable name → function of W, (B, d, d') → Certified (B,)."""

MEASURES: Mapping[str, Callable[[Tensor | Certified], Certified]] = MappingProxyType(
    {**NORMS, "sigma-min": sigma_min, "effective-rank": effective_rank}
)
"""NORMS plus the other scalar measures that ``norm_error_bound`` knows: name → function of W."""


def norm_at_least(name: str, W: Tensor | Certified, bound: Certified | Tensor | float) -> Comparison:
    """‖W‖ ≥ bound for the norm ``NORMS[name]``; a Schatten-p quasi-norm (p < 1) as the equivalent Σ_r σ_r^p ≥ bound^p
    (bound ≥ 0).  Why: where σ_min's enclosure is [0, e] (σ_min ≈ e^-100 on a flow near rank 1, known to e ≈ 1e-3),
    e^p dominates the sum's width, and the 1/p-th power of the sum would lose its lower end σ₁^p in midpoint–radius
    arithmetic (float64 and Arb alike); the sum itself keeps it."""
    n, p = _comparable_norm("norm_at_least", name, W)
    return n >= (bound ** p if p is not None else bound)


def _comparable_norm(caller: str, name: str, W: Tensor | Certified) -> tuple[Certified, float | None]:
    """``(‖W‖, None)``, or for a Schatten-p quasi-norm (p < 1) ``(Σ_r σ_r^p, p)``, an increasing function of it,
    with each σ_r^p as its enclosure's midpoint (ops.power center="enclosure"): σ_min ∈ [0, e] gives
    σ_min^p ∈ [0, e^p], and the sum's lower end stays σ₁^p, where ẑ ± e^p around σ_min^p ≈ 0 would put it at
    σ₁^p − e^p (≈ 0.2 at ℓ = 1e-2: every such comparison escalated to the mpmath reference)."""
    if name not in NORMS:
        raise InvalidInputError(f"{caller}: unknown norm {name!r}; known: {', '.join(NORMS)}")
    kind, _, p = name.partition("-")
    if kind == "schatten" and float(p) < 1:
        return power(singular_values(W), float(p), center="enclosure").sum(-1), float(p)
    return NORMS[name](W), None


def norm_increases(name: str, W: Tensor | Certified) -> Comparison:
    """‖W[:, k+1]‖ ≥ ‖W[:, k]‖ for consecutive states along dim 1 (e.g. loss levels; W (B, L, d, d')), shape
    (B, L − 1); a Schatten-p quasi-norm (p < 1) as the equivalent Σ_r σ_r^p, each term as its enclosure's
    midpoint, for the reason given in :func:`_comparable_norm` (at depth 2, ℓ ≤ 1e-2: 26 of 320 comparisons left
    to the mpmath reference instead of 303, measured on 64 drawn instances)."""
    n, _ = _comparable_norm("norm_increases", name, W)
    return n[:, 1:] >= n[:, :-1]


# ---------------------------------------------------------------------------------------------- error bounds


def singular_value_error_bound(W: Tensor, e: Tensor | float) -> Tensor:
    """Bound on max_r |σ_r(W + E) − σ_r(W)| for any E with |E_ij| ≤ e: ‖E‖_2 ≤ ‖E‖_F ≤ √(d·d')·e.

    Weyl's inequality for singular values, |σ_r(W + E) − σ_r(W)| ≤ ‖E‖_2 (Horn & Johnson §7.3); e is a float
    or a (B,) tensor of entrywise absolute error bounds (e.g. a simulator's error estimate), +inf allowed.
    """
    _check_W(W)
    e = _check_e(e, W)
    d, dp = W.shape[-2], W.shape[-1]
    # ‖E‖_2 ≤ ‖E‖_F = (Σ E_ij²)^(1/2) ≤ (d·d'·e²)^(1/2); equality for E = e·s tᵀ with s, t sign vectors.
    return _bound(math.sqrt(d * dp), e)


_PARAMETRIC = re.compile(r"^(schatten|entrywise)-(inf|[0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)$")


def norm_error_bound(name: str, W: Tensor, e: Tensor | float) -> Tensor:
    """Bound on |m(W + E) − m(W)| for the measure m = MEASURES[name] and any E with |E_ij| ≤ e, shape (B,).

    For norms (p ≥ 1): |m(W+E) − m(W)| ≤ m(E) (reverse triangle inequality), then m(E) is bounded from e;
    +inf for quasi-norms (p < 1) and effective rank, which have no global Lipschitz constant.  ``name`` is
    any key of MEASURES or any ``schatten-<p>`` / ``entrywise-<p>`` (p a decimal number or ``inf``).
    """
    if not isinstance(name, str):
        raise InvalidInputError(f"measure name must be a string, got {type(name).__name__}")
    _check_W(W)
    e = _check_e(e, W)
    d, dp = W.shape[-2], W.shape[-1]
    n, k = d * dp, min(d, dp)
    inf = torch.full_like(e, math.inf)
    if name in ("frobenius", "spectral", "sigma-min"):
        # Frobenius: reverse triangle inequality, |‖W+E‖_F − ‖W‖_F| ≤ ‖E‖_F ≤ √n·e.
        # spectral = σ_1 and sigma-min = σ_k: Weyl, |σ_r(W+E) − σ_r(W)| ≤ ‖E‖_2 ≤ ‖E‖_F ≤ √n·e.
        return _bound(math.sqrt(n), e)
    if name == "nuclear":
        # |‖W+E‖_* − ‖W‖_*| ≤ ‖E‖_* = Σ_{r≤k} σ_r(E) ≤ √k·‖E‖_F (Cauchy–Schwarz over k terms) ≤ √k·√n·e.
        # (Tighter than the also-true k·√n·e from ‖E‖_* ≤ k·‖E‖_2.)
        return _bound(math.sqrt(k) * math.sqrt(n), e)
    if name == "effective-rank":
        # erank is continuous but −p log p has unbounded slope at p = 0: no global Lipschitz bound.
        return inf
    match = _PARAMETRIC.match(name)
    if match is None:
        raise InvalidInputError(
            f"unknown measure {name!r}; known: {', '.join(MEASURES)}, or 'schatten-<p>' / 'entrywise-<p>'"
        )
    kind, p = match.group(1), _check_p(float(match.group(2)), name)
    if p < 1:
        # Quasi-norms: x ↦ x^p has unbounded slope at 0, so an arbitrarily small E can move a zero singular
        # value (or entry) to e and change the value by ~e^p ≫ e: no Lipschitz bound in e.  Escalate instead.
        return inf
    if kind == "schatten":
        # S_p is a norm for p ≥ 1: |‖W+E‖_{S_p} − ‖W‖_{S_p}| ≤ ‖E‖_{S_p}.  On the k singular values of E,
        # Hölder gives ‖σ‖_p ≤ k^(1/p − 1/2)·‖σ‖_2 for p ≤ 2, and ‖σ‖_p ≤ ‖σ‖_2 for p ≥ 2;
        # finally ‖σ(E)‖_2 = ‖E‖_F ≤ √n·e.
        return _bound(k ** max(0.0, 1.0 / p - 0.5) * math.sqrt(n), e)
    # Entrywise ℓ_p is a norm for p ≥ 1: |‖W+E‖_p − ‖W‖_p| ≤ ‖E‖_p = (Σ|E_ij|^p)^(1/p) ≤ n^(1/p)·e (= e at ∞).
    return _bound(1.0 if math.isinf(p) else n ** (1.0 / p), e)
