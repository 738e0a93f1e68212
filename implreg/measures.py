"""Matrix measures: norms, Schatten and entrywise (quasi-)norms, singular values, ranks, error bounds.

Every measure takes a batch ``W`` of shape (B, d, d') (real float32/float64, finite, on any device) and
returns a (B,) tensor of the same dtype on the same device; instances never influence each other.
Singular values come from ``torch.linalg.svdvals`` (no autograd support is needed or promised).

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

__all__ = [
    "MEASURES",
    "NORMS",
    "distance_to_rank",
    "effective_rank",
    "entrywise",
    "frobenius",
    "norm_error_bound",
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
    if W.ndim != 3:
        raise InvalidInputError(
            f"{name} must be a batch of matrices of shape (B, d, d'), got shape {tuple(W.shape)} "
            f"(ndim {W.ndim}); add a batch dimension with W.unsqueeze(0)"
        )
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


# ---------------------------------------------------------------------------------------------- helpers


def _power_mean_root(x: Tensor, p: float) -> Tensor:
    """(Σ_j x_ij^p)^(1/p) along the last dim for x ≥ 0, shape (B, N) → (B,); scaled by max_j x_ij so that it
    neither overflows nor underflows unless the result itself does.
    """
    m = x.amax(dim=-1)
    if math.isinf(p):
        return m
    nonzero = m > 0
    safe_m = torch.where(nonzero, m, torch.ones_like(m))
    ratio = x / safe_m[:, None]  # in [0, 1], exact division up to rounding
    if p == 1.0:
        out = x.sum(dim=-1)
    elif p == 2.0:
        out = safe_m * (ratio * ratio).sum(dim=-1).sqrt()  # only correctly rounded operations
    else:
        # x^p as exp(p·log x), not torch.pow: on CPU torch.pow(·, scalar) evaluates the SIMD body and the
        # scalar tail of a tensor with different routines (1 ulp apart), so an instance's value would depend
        # on its position in the batch; exp and log use one routine at every position (tests: torch.equal).
        # Accuracy: a term t = exp(p log r) gets relative error ≈ eps·|log t|, i.e. ≤ eps·max(t|log t|) =
        # eps/e relative to the sum s ≥ 1; the root exp(log(s)/p) adds ≈ 2·eps·log(s)/p, no worse than the
        # conditioning of s ↦ s^(1/p) itself (summation error N·eps amplified by 1/p).
        s = torch.exp(p * torch.log(ratio)).sum(dim=-1)  # 1 ≤ s ≤ N where m > 0 (log 0 = −inf ↦ exp = 0)
        log_root = torch.log(s) / p
        direct = safe_m * torch.exp(log_root)
        # exp(log_root) overflows for tiny p although m·s^(1/p) may be representable: stay in log space there.
        logspace = torch.exp(torch.log(safe_m) + log_root)
        out = torch.where(torch.isfinite(direct), direct, logspace)
    return torch.where(nonzero, out, torch.zeros_like(out))


def _entries(W: Tensor) -> Tensor:
    """|W| flattened per instance to (B, d·d'), contiguous: one summation order whatever W's memory layout."""
    return W.abs().reshape(W.shape[0], W.shape[1] * W.shape[2]).contiguous()


# ---------------------------------------------------------------------------------------------- measures


def singular_values(W: Tensor) -> Tensor:
    """Singular values σ_1 ≥ … ≥ σ_k ≥ 0, k = min(d, d'), shape (B, k).

    Computed by ``torch.linalg.svdvals`` (LAPACK/cuSOLVER, backward stable: |σ̂_r − σ_r| ≲ n·eps·‖W‖_2).
    """
    _check_W(W)
    return torch.linalg.svdvals(W)


def frobenius(W: Tensor) -> Tensor:
    """Frobenius norm ‖W‖_F = (Σ_ij w_ij²)^(1/2) = (Σ_r σ_r²)^(1/2)  (Horn & Johnson, Matrix Analysis §5.6).

    Computed from the entries (no SVD), scaled by max |w_ij| so that it does not overflow.
    """
    _check_W(W)
    return _power_mean_root(_entries(W), 2.0)


def nuclear(W: Tensor) -> Tensor:
    """Nuclear (trace) norm ‖W‖_* = Σ_r σ_r, the Schatten-1 norm  (Horn & Johnson, Matrix Analysis §5.6)."""
    _check_W(W)
    return torch.linalg.svdvals(W).sum(dim=-1)


def spectral(W: Tensor) -> Tensor:
    """Spectral (operator 2-) norm ‖W‖_2 = σ_1, the Schatten-∞ norm (Horn & Johnson, Matrix Analysis §5.6)."""
    _check_W(W)
    return torch.linalg.svdvals(W)[..., 0]


def sigma_min(W: Tensor) -> Tensor:
    """Smallest singular value σ_k, k = min(d, d') (0 iff W is rank-deficient)  (Horn & Johnson §7.3)."""
    _check_W(W)
    return torch.linalg.svdvals(W)[..., -1]


def schatten(W: Tensor, p: float) -> Tensor:
    """Schatten-p (quasi-)norm ‖W‖_{S_p} = (Σ_r σ_r^p)^(1/p), any p > 0; p = ∞ gives σ_1  (Bhatia, Matrix
    Analysis §IV.2).  A norm for p ≥ 1, a quasi-norm for 0 < p < 1 (as in Razin & Cohen 2020).

    For p < 1 tiny singular values dominate: rounding noise σ ≈ eps·‖W‖ of a numerically rank-deficient W
    contributes (eps·‖W‖)^p, so the value is ill-conditioned there (see ``norm_error_bound``).
    """
    _check_W(W)
    p = _check_p(p)
    return _power_mean_root(torch.linalg.svdvals(W), p)


def entrywise(W: Tensor, p: float) -> Tensor:
    """Entrywise ℓ_p (quasi-)norm ‖vec W‖_p = (Σ_ij |w_ij|^p)^(1/p), any p > 0; p = ∞ gives max |w_ij|
    (Horn & Johnson, Matrix Analysis §5.6).  A norm for p ≥ 1, a quasi-norm for 0 < p < 1.
    """
    _check_W(W)
    p = _check_p(p)
    return _power_mean_root(_entries(W), p)


def distance_to_rank(W: Tensor, k: int) -> Tensor:
    """Frobenius distance to the nearest matrix of rank ≤ k: min_{rank M ≤ k} ‖W − M‖_F = (Σ_{r>k} σ_r²)^(1/2)
    (Eckart & Young 1936).  k ranges over 0 … min(d, d'); k = 0 gives ‖W‖_F, k = min(d, d') gives 0.

    Absolute accuracy is that of the tail singular values, ≈ n·eps·‖W‖_2: an exactly rank-k W gives
    ~1e-16·‖W‖, not 0.
    """
    _check_W(W)
    kmax = min(W.shape[-2], W.shape[-1])
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise InvalidInputError(f"rank k must be an integer in 0 … {kmax}, got {k!r}")
    if not 0 <= k <= kmax:
        raise InvalidInputError(
            f"rank k must be in 0 … min(d, d') = {kmax} for W of shape {tuple(W.shape)}, got {k}"
        )
    if k == kmax:
        return W.new_zeros(W.shape[0])
    return _power_mean_root(torch.linalg.svdvals(W)[..., int(k) :], 2.0)


def effective_rank(W: Tensor) -> Tensor:
    """Effective rank erank(W) = exp(−Σ_r p_r log p_r), p_r = σ_r / Σ_s σ_s, with 0·log 0 = 0  (Roy & Vetterli
    2007, Def. 1).  Lies in [1, min(d, d')]; it is NaN for W = 0 (p undefined), per instance.

    NaN rather than an exception so that a zero instance does not fail the rest of its batch; callers that may
    meet W = 0 must check ``torch.isnan`` themselves (``x <= c`` is False but ``~(x > c)`` is True for NaN).
    """
    _check_W(W)
    s = torch.linalg.svdvals(W)
    total = s.sum(dim=-1, keepdim=True)
    prob = s / torch.where(total > 0, total, torch.ones_like(total))
    entropy = -torch.special.xlogy(prob, prob).sum(dim=-1)  # xlogy(0, 0) = 0
    return torch.where(total[..., 0] > 0, torch.exp(entropy), torch.full_like(entropy, math.nan))


# ---------------------------------------------------------------------------------------------- registries


NORMS: Mapping[str, Callable[[Tensor], Tensor]] = MappingProxyType(
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
"""Every norm and quasi-norm a report iterates over: readable name → function of W, (B, d, d') → (B,)."""

MEASURES: Mapping[str, Callable[[Tensor], Tensor]] = MappingProxyType(
    {**NORMS, "sigma-min": sigma_min, "effective-rank": effective_rank}
)
"""NORMS plus the other scalar measures that ``norm_error_bound`` knows: name → function of W."""


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
