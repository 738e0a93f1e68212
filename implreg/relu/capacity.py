"""Capacity measures of ReLU nets: group norms, layer products, path norms, margins, sharpness, Rademacher.

Sources (numbering of Neyshabur, Tomioka & Srebro, COLT 2015, arXiv 1503.00036 — "COLT'15" — and of
Neyshabur, Bhojanapalli, McAllester & Srebro, NIPS 2017, arXiv 1706.08947 — "Exploring" — is as
reconstructed for this catalogue, not confirmed against the published PDFs):

- group norm  μ_{p,q}(w) = (Σ_v (Σ_{u→v} |w_{u→v}|^p)^{q/p})^{1/q}, over every non-input unit v;
  q = ∞: max_v ‖w_{→v}‖_p  (COLT'15 §2, eq. 1).
- layer norm ‖W‖_{p,q} = ℓ_q over rows of the rows' ℓ_p norms; layer product γ_{p,q}(w) = Π_k ‖W_k‖_{p,q}.
- path norm  φ_p(w) = (Σ_{paths} Π_{e∈path} |w_e|^p)^{1/p}, summed over paths to every output
  (COLT'15 §3, eq. 7; Path-SGD §3); φ_p^p is the output of the net with weights |w|^p on the all-ones input
  (no ReLU needed: every quantity is ≥ 0), summed over outputs — "two passes" of Path-SGD (§4).

Every measure takes a ``ReluNet`` batch and returns an ``implreg.numerics.Certified`` (B,) value on its device
and dtype (``.value`` the float64 result, ``.error`` a rigorous bound; see the note in ``implreg.relu.network`` for why
the measures themselves are certified); instances never influence each other.  The construction bounds
``path_norm_minimizer_error`` and ``layer_balancing_error`` (how far the float rescaling factors are from the
exact minimizers) are hand-derived: u = unit roundoff, γ_n = nu/(1−nu), Higham 2002; tested against mpmath.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor

from implreg.errors import InvalidInputError
from implreg.numerics import Certified, Comparison, close, maximum, svdvals, where
from implreg.numerics import cat as ccat
from implreg.numerics import stack as cstack
from implreg.relu.network import (
    SAFETY,
    NodeScaling,
    ReluNet,
    _check_inputs,
    _forward,
    _loss,
    cat,
    certified_weights,
    flatten,
    forward,
    gamma,
    random_net,
    rescale,
    rescale_node,
    tiny_entries,
    unflatten,
    unit_roundoff,
)

__all__ = [
    "REAL_POWER_REL",
    "ZERO_FLOOR",
    "Bracket",
    "RademacherLower",
    "SharpnessSweep",
    "alpha_sharpness",
    "bracket_separation",
    "convex_net_norm",
    "dominates",
    "exact_path_norm_pow",
    "exact_unit_norms_pow",
    "expected_sharpness",
    "exploring_measures",
    "group_norm",
    "identity",
    "layer_amgm_bound",
    "layer_amgm_pow",
    "layer_balancing_attains",
    "layer_balancing_error",
    "layer_balancing_scaling",
    "layer_norms",
    "layer_product",
    "margins",
    "pac_bayes_kl",
    "path_norm",
    "path_norm_brute",
    "path_norm_brute_pow",
    "path_norm_minimizer_attains",
    "path_norm_minimizer_error",
    "path_norm_minimizer_scaling",
    "path_norm_per_output",
    "path_norm_pow",
    "percentile_margin",
    "rademacher_bound",
    "rademacher_linear",
    "rademacher_linear_l1",
    "rademacher_relu_lower",
    "rademacher_search",
    "rescaling_chain_pow",
    "rescaling_identity",
    "rpow",
    "sharpness_under_node_rescaling",
    "spectral_product",
    "to_fractions",
    "unit_norms_pow",
    "weight_decay",
    "weight_decay_minimizer_attains",
    "weight_decay_minimizer_error",
    "weight_decay_minimizer_scaling",
]


# ---------------------------------------------------------------------------------------------- powers


def _check_p(p: float, name: str = "p", allow_inf: bool = False) -> float:
    try:
        p = float(p)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be a real number ≥ 1, got {p!r}") from None
    if math.isnan(p) or p < 1 or (math.isinf(p) and not allow_inf):
        raise InvalidInputError(f"{name} must be ≥ 1{' (or ∞)' if allow_inf else ''} (finite), got {p}")
    return p


def _pow(x: Tensor, e: float) -> tuple[Tensor, Tensor]:
    """x^e for x ≥ 0 with an entrywise bound on its relative rounding error (same shape as x).

    e = 1: exact.  e = 1/2: sqrt, correctly rounded (u).  Integer 2 ≤ e ≤ 16: e − 1 multiplications, γ_{e−1}.
    Otherwise exp(e·log x): torch's log and exp are faithful (≤ 1 ulp ≤ 2u relative, SLEEF u10 kernels on CPU),
    so log x carries absolute error ≤ 2u|log x|, e·log x ≤ 3u|e log x| after the product, and exp turns an
    absolute argument error δ into a relative one ≤ δ(1+δ), plus its own 2u: ≤ 3u|e log x| + 2u (first order).
    exp/log rather than torch.pow: torch.pow's SIMD body and scalar tail differ by an ulp on CPU, which would
    make an instance's value depend on its position in the batch.
    """
    u = unit_roundoff(x.dtype)
    if e == 1.0:
        return x, torch.zeros_like(x)
    if e == 0.5:
        return x.sqrt(), torch.full_like(x, u)
    if e == int(e) and 2 <= e <= 16:
        y = x
        for _ in range(int(e) - 1):
            y = y * x
        return y, torch.full_like(x, gamma(int(e) - 1, x.dtype))
    lx = torch.log(x)
    y = torch.exp(e * lx)
    arg = torch.where(x > 0, (e * lx).abs(), torch.zeros_like(x))
    return y, 3 * u * arg + 2 * u


def _abs_pow(W: Tensor, p: float, weight_rel_err: float) -> tuple[Tensor, Tensor]:
    """|W|^p and its entrywise relative error w.r.t. |W*|^p: (1 ± ε_w)^p ≈ 1 ± p·ε_w, plus rounding of _pow."""
    y, rel = _pow(W.abs(), p)
    return y, rel + p * weight_rel_err


def _row_generators(rows: Tensor, seed: int, salt: bytes = b"") -> list[torch.Generator]:
    """One CPU generator per row (instance), seeded from SHA-256 of the row's float64 bytes, ``salt`` and ``seed``:
    an instance's random draws depend on itself and the seed only — never on its batch-mates or its position in
    the batch (so a shrunk instance re-run alone reproduces its batched result)."""
    gens = []
    data = rows.detach().to("cpu", torch.float64).reshape(rows.shape[0], -1).contiguous()
    tail = salt + int(seed).to_bytes(8, "little", signed=True)
    for r in data:
        h = hashlib.sha256(r.numpy().tobytes() + tail).digest()
        gens.append(torch.Generator().manual_seed(int.from_bytes(h[:8], "little") >> 1))
    return gens


def _per_net_max(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).amax(dim=1)


def _guard(net: ReluNet, rel: Tensor) -> Tensor:
    """+inf where the no-underflow assumption of the rounding model fails (see relu.UNDERFLOW_GUARD)."""
    return torch.where(tiny_entries(*net.weights), torch.full_like(rel, math.inf), rel)


# ---------------------------------------------------------------------------------------------- certified measures
#
# Every measure below is built from the certified ops of implreg.numerics on the exact weights
# (relu.certified_weights), so it carries a rigorous per-net error bound, re-evaluates in Arb balls for
# undecided comparisons and, where every leaf is exact and the operations are rational (integer p, q), is
# decided exactly.  They replace the hand-derived *_error_bound functions of earlier versions.


def rpow(x: Certified, num: float, den: float = 1.0) -> Certified:
    """x^{num/den} for x ≥ 0 with the exponent taken EXACTLY: num and den are floats (exact dyadic rationals).

    Integer exponents: repeated products (rational, so the exact tier decides ties); exponents that are a float
    (1/2, 2.7, q/p when it rounds to nothing): the certified power; otherwise (1/3, q/p, …) exp(num·log(x)/den)
    — a plain ``x ** (1/3)`` would be the power to the rounded exponent fl(1/3), a different number (off by
    ≈ u·|log x| relative).  Where x's float value is 0 (its exact value 0, or below the subnormal floor that
    the certified sums carry as error) log x is undefined, so there the power to fl(num/den) is taken: exact 0
    for an exact 0, and a rigorous enclosure [0, error^{fl(e)}] otherwise (off by ≤ u·|log x| relative).
    """
    e = Fraction(num) / Fraction(den)
    if e.denominator == 1 and 1 <= e.numerator <= 64:
        return x ** int(e.numerator) if e.numerator != 1 else x
    if Fraction(float(e)) == e:
        return x ** float(e)
    zero = x.value == 0
    return where(zero, x ** float(e), (where(zero, 1.0, x).log() * float(num) / float(den)).exp())


def _abs_pow_c(net: ReluNet, p: float) -> tuple[Certified, ...]:
    return tuple(rpow(W.abs(), p) for W in certified_weights(net))


def unit_norms_pow(net: ReluNet, p: float) -> tuple[Certified, ...]:
    """s_v = ‖w_{→v}‖_p^p = Σ_{u→v} |w_{u→v}|^p for every non-input unit: one (B, n_k) value per layer."""
    return tuple(A.sum(-1) for A in _abs_pow_c(net, _check_p(p)))


def _lq(s: Certified, p: float, q: float) -> Certified:
    """(Σ_v s_v^{q/p})^{1/q} over the last dim, q = ∞: max_v s_v^{1/p}."""
    if math.isinf(q):
        return rpow(s.amax(-1), 1.0, p)
    return rpow(rpow(s, q, p).sum(-1), 1.0, q)


def layer_norms(net: ReluNet, p: float, q: float) -> Certified:
    """‖W_k‖_{p,q} for every layer, (B, d): ℓ_q over rows of the rows' ℓ_p norms (q = ∞: max row norm)."""
    p, q = _check_p(p), _check_p(q, "q", allow_inf=True)
    return cstack([_lq(s, p, q) for s in unit_norms_pow(net, p)], 1)


def group_norm(net: ReluNet, p: float, q: float) -> Certified:
    """μ_{p,q}(w) = (Σ_v ‖w_{→v}‖_p^q)^{1/q} over all non-input units v (q = ∞: the max)  (COLT'15 eq. 1).

    μ_{2,2}² = Σ_e w_e² is weight decay; μ_{2,∞} is the max-norm (Srebro & Shraibman 2005).
    """
    p, q = _check_p(p), _check_p(q, "q", allow_inf=True)
    return _lq(ccat(list(unit_norms_pow(net, p)), -1), p, q)


def weight_decay(net: ReluNet) -> Certified:
    """Σ_e w_e² = μ_{2,2}(w)², the ℓ2 (weight-decay) regularizer, (B,)."""
    return sum((W * W).sum(-1).sum(-1) for W in certified_weights(net))


def layer_product(net: ReluNet, p: float, q: float) -> Certified:
    """γ_{p,q}(w) = Π_k ‖W_k‖_{p,q}  (COLT'15 §2–3; the quantity its Theorem 1 bounds capacity by)."""
    N = layer_norms(net, p, q)
    out = N[:, 0]
    for k in range(1, net.depth):
        out = out * N[:, k]
    return out


REAL_POWER_REL = 1e-12
"""Relative tolerance of ``identity``/``dominates`` between expressions in real powers, which no finite precision
separates from equality: ≥ 100× the float64 rounding of the ≤ 256-path sums and few-layer products the claims
compare (≲ 1e-14), and ≥ 1e11× below the change a non-invariant measure shows under a rescaling by 2^e, |e| ≥ 1
(≥ 2^{1/2} − 1 ≈ 0.4)."""

ZERO_FLOOR = 1e-300
"""Absolute floor of ``identity`` for quantities that are never rational (exponent None: singular values): both
sides may be exactly 0 (a zero layer), where the certified SVD still carries a denormal-sized error; every
nonzero product of ≤ 4 spectral norms of drawn nets (entries 0 or ≥ 2⁻²⁰) is ≥ (2⁻²⁰)⁴ ≫ 1e-300."""


def identity(a: Certified, b: Certified, exponent: float | None) -> Comparison:
    """a = b for two expressions of the same quantity: exact when ``exponent`` (the real power inside them) is an
    integer, so both are rational and ties are decided exactly; else |a − b| ≤ REAL_POWER_REL·|b| (+ ZERO_FLOOR
    when exponent is None: quantities never rational, such as singular values)."""
    if exponent is not None and float(exponent).is_integer():
        return a == b
    return close(a, b, REAL_POWER_REL * b.value.abs() + (ZERO_FLOOR if exponent is None else 0.0))


def dominates(a: Certified, b: Certified, exponent: float) -> Comparison:
    """a ≥ b: exact when ``exponent`` (the real power inside a and b) is an integer, else a ≥ (1 − REAL_POWER_REL)·b."""
    return a >= b if float(exponent).is_integer() else a >= (1 - REAL_POWER_REL) * b


def rescaling_identity(measure: Callable[[ReluNet], Certified], net: ReluNet, scaling: NodeScaling,
                       exponent: float | None) -> Comparison:
    """measure(ρ(w)) = measure(w), ρ(w) = ``rescale(net, scaling)`` (rescaling invariance, COLT'15 §3), decided as
    ``identity``: exactly when ``exponent`` (the real power inside ``measure``) is an integer."""
    return identity(measure(rescale(net, scaling)), measure(net), exponent)


def _prod(xs: list[Certified]) -> Certified:
    out = xs[0]
    for x in xs[1:]:
        out = out * x
    return out


def rescaling_chain_pow(net: ReluNet, p: float) -> tuple[Certified, Certified]:
    """(μ_{p,∞}(w)^{dp}, γ_{p,∞}(w)^p) = ((max_v s_v)^d, Π_k max_{v∈k} s_v), s_v = ‖w_{→v}‖_p^p, each (B,): the
    chain μ_{p,∞}^d ≥ γ_{p,∞} ≥ φ_p (COLT'15 Theorem 5 with Lemma 19) in p-th powers, rational for integer p."""
    M = [s.amax(-1) for s in unit_norms_pow(net, p)]
    return cstack(M, -1).amax(-1) ** net.depth, _prod(M)


def layer_amgm_pow(net: ReluNet, p: float, q: float) -> tuple[Certified, Certified]:
    """The two sides of μ_{p,q}(w) ≥ d^{1/q} γ_{p,q}(w)^{1/d} (COLT'15 Claim 1, AM–GM) raised to the q-th and d-th
    powers, each (B,): ((Σ_k T_k)^d / d^d, Π_k T_k), T_k = ‖W_k‖_{p,q}^q = Σ_v s_v^{q/p}; for q = ∞
    ((max_k M_k)^d, Π_k M_k), M_k = ‖W_k‖_{p,∞}^p.  Rational (ties decided exactly) when q/p is an integer or q = ∞."""
    p, q = _check_p(p), _check_p(q, "q", allow_inf=True)
    d, s = net.depth, unit_norms_pow(net, p)
    if math.isinf(q):
        T = [sk.amax(-1) for sk in s]
        return cstack(T, -1).amax(-1) ** d, _prod(T)
    T = [rpow(sk, q, p).sum(-1) for sk in s]
    return sum(T[1:], T[0]) ** d / d**d, _prod(T)


def layer_amgm_bound(net: ReluNet, p: float, q: float) -> Certified:
    """d^{1/q} γ_{p,q}(w)^{1/d}, (B,): the AM–GM lower bound on μ_{p,q}(w) (COLT'15 Claim 1), attained after
    ``layer_balancing_scaling``."""
    bound = rpow(layer_product(net, p, q), 1.0, net.depth)
    return bound if math.isinf(q) else rpow(Certified.exact(float(net.depth)), 1.0, q) * bound


def path_norm_per_output(net: ReluNet, p: float = 2.0) -> Certified:
    """φ_p^p restricted to the paths ending at each output, (B, n_d): |W_d|^p ⋯ |W_1|^p 1  (two passes)."""
    A = _abs_pow_c(net, _check_p(p))
    a = A[0].sum(-1)  # |W_1|^p 1
    for Ak in A[1:]:
        a = (Ak @ a.unsqueeze(-1))[..., 0]
    return a


def path_norm_pow(net: ReluNet, p: float = 2.0) -> Certified:
    """φ_p(w)^p = Σ_paths Π_e |w_e|^p = 1ᵀ|W_d|^p ⋯ |W_1|^p 1, (B,)  (two passes; Path-SGD §4, COLT'15 eq. 7)."""
    return path_norm_per_output(net, p).sum(-1)


def path_norm(net: ReluNet, p: float = 2.0) -> Certified:
    """ℓ_p path norm φ_p(w) = (Σ_paths Π_{e∈path} |w_e|^p)^{1/p}, (B,)  (COLT'15 eq. 7).

    Computed in one pass of the all-ones input through the net with weights |w|^p (no ReLU: all ≥ 0).
    """
    p = _check_p(p)
    return rpow(path_norm_pow(net, p), 1.0, p)


def path_norm_brute_pow(net: ReluNet, p: float = 2.0) -> Certified:
    """φ_p^p by enumerating all Π_k n_k paths (itertools.product over units), (B,).  For small nets only."""
    p = _check_p(p)
    if net.num_paths > 200_000:
        raise InvalidInputError(f"brute-force enumeration of {net.num_paths} paths refused (limit 200000)")
    A = _abs_pow_c(net, p)
    paths = torch.tensor(list(itertools.product(*(range(n) for n in net.widths))), device=net.device)
    terms = A[0][:, paths[:, 1], paths[:, 0]]
    for k, Ak in enumerate(A[1:], start=2):
        terms = terms * Ak[:, paths[:, k], paths[:, k - 1]]
    return terms.sum(-1)


def path_norm_brute(net: ReluNet, p: float = 2.0) -> Certified:
    """φ_p by brute-force path enumeration (the definition, COLT'15 eq. 7), (B,)."""
    p = _check_p(p)
    return rpow(path_norm_brute_pow(net, p), 1.0, p)


def _path_norm_float(net: ReluNet, p: float) -> Tensor:
    """φ_p in plain float64 (autograd-friendly), for the Rademacher search's objective."""
    a = torch.ones(net.batch, net.widths[0], 1, dtype=net.dtype, device=net.device)
    for W in net.weights:
        a = (W.abs() ** p) @ a
    return a.sum(dim=(1, 2)) ** (1.0 / p)


# float helpers of the construction bounds below (path_norm_minimizer_error, layer_balancing_error)


def _path_forward(net: ReluNet, p: float, weight_rel_err: float) -> tuple[Tensor, Tensor]:
    """a_d = |W_d|^p ⋯ |W_1|^p 1 (B, n_d) in float64 and its relative error bound (B,): all quantities ≥ 0,
    so relative errors add along the chain, Θ_k = Θ_{k−1} + ε_p + γ_{n_{k−1}} (first order; Higham 3.5)."""
    a = torch.ones(net.batch, net.widths[0], 1, dtype=net.dtype, device=net.device)
    rel = torch.zeros(net.batch, dtype=net.dtype, device=net.device)
    for W in net.weights:
        A, r = _abs_pow(W, p, weight_rel_err)
        a = A @ a
        rel = rel + _per_net_max(r) + gamma(W.shape[-1], net.dtype)
    return a.squeeze(-1), rel


def _unit_norms_pow_rel(net: ReluNet, p: float, weight_rel_err: float) -> tuple[tuple[Tensor, ...], Tensor]:
    vals, rel = [], torch.zeros(net.batch, dtype=net.dtype, device=net.device)
    for W in net.weights:
        a, r = _abs_pow(W, p, weight_rel_err)
        vals.append(a.sum(dim=-1))
        # a sum of n ≥ 0 terms each with relative error ≤ r: relative error ≤ r + γ_n (first order)
        rel = torch.maximum(rel, _per_net_max(r) + gamma(W.shape[-1], net.dtype))
    return tuple(vals), rel


def _lq_of_unit_norms(s: Tensor, p: float, q: float, rel_s: Tensor) -> tuple[Tensor, Tensor]:
    """(Σ_v s_v^{q/p})^{1/q} over the last dim (q = ∞: max_v s_v^{1/p}) and its relative error bound (B,)."""
    if math.isinf(q):
        m = s.amax(dim=-1)
        y, r = _pow(m, 1.0 / p)
        return y, rel_s / p + _per_net_max(r.unsqueeze(-1))
    t, rt = _pow(s, q / p)
    tot = t.sum(dim=-1)
    rel_tot = (q / p) * rel_s + _per_net_max(rt) + gamma(s.shape[-1], s.dtype)
    y, r = _pow(tot, 1.0 / q)
    return y, rel_tot / q + r


def path_norm_minimizer_scaling(net: ReluNet, p: float = 2.0) -> NodeScaling:
    """The rescaling w̃ of w with μ_{p,∞}(w̃)^d = min over rescalings (COLT'15 Theorem 5 with Lemma 19, as
    reconstructed): normalize every hidden unit's incoming ℓ_p norm to 1 layer by layer, then balance layers.

    Normalizing layers 1 … k−1 gives unit v ∈ layer k incoming norm^p a_k(v) = (|W_k|^p ⋯ |W_1|^p 1)_v, so the
    normalizing factor is a_k(v)^{−1/p}; multiplying layer k by t^{1/d} (t = max_o φ_p^{(o)}, the largest
    per-output path norm; t = φ_p for one output) makes every unit's incoming norm t^{1/d}.  Factor of
    v ∈ layer k: c_v = t^{k/d} a_k(v)^{−1/p}.  For a single output, μ_{p,∞}(w̃)^d = φ_p(w); for several
    outputs it is max_o φ_p^{(o)} < φ_p in general.  Hidden units with a_k(v) = 0 (no incoming path weight)
    keep factor 1.
    """
    p = _check_p(p)
    a = torch.ones(net.batch, net.widths[0], 1, dtype=net.dtype, device=net.device)
    cum = []
    for W in net.weights:
        a = _abs_pow(W, p, 0.0)[0] @ a
        cum.append(a.squeeze(-1))
    t = cum[-1].amax(dim=-1)  # max_o φ_p^{(o)} ^p
    d = net.depth
    logt = torch.log(t) / p  # log of max_o φ^{(o)}
    fs = []
    for k in range(1, d):
        ak = cum[k - 1]
        c = torch.exp((k / d) * logt[:, None] - torch.log(ak) / p)
        fs.append(torch.where(ak > 0, c, torch.ones_like(c)))
    return NodeScaling(tuple(fs))


def path_norm_minimizer_error(net: ReluNet, p: float = 2.0) -> Tensor:
    """Relative bound (B,) on |μ_{p,∞}(ρ_ĉ(w))^d − t| / t for the *computed* factors ĉ of
    ``path_norm_minimizer_scaling`` (exact arithmetic on ρ_ĉ(w); t = max_o φ_p^{(o)}).

    ĉ_v = exp((k/d)·log(t̂)/p − log(â_k(v))/p) uses the two-pass values â_k with relative error Θ_k
    (``_path_forward``) and t̂ = max_o â_d(o) (Θ_d); the exp/log formula adds ≲ 6u(|log t̂| + |log â_k|)/p +
    u|arg| + 2u (faithful exp and log, see ``_pow``).  So ĉ_v = c*_v(1 ± η_k), η_k = (Θ_d + Θ_k)/p + the
    formula's rounding.  Unit v ∈ layer k of ρ_ĉ(w) then has incoming ℓ_p norm N*_v(1 ± (η_k + η_{k−1}))
    (η_0 = η_d = 0: inputs and outputs are not rescaled), every N*_v = t^{1/d}, hence
    t ≤ μ_{p,∞}(ρ_ĉ(w))^d ≤ t(1 + d·max_k(η_k + η_{k−1})) to first order; ×SAFETY.
    """
    p = _check_p(p)
    u = unit_roundoff(net.dtype)
    a = torch.ones(net.batch, net.widths[0], 1, dtype=net.dtype, device=net.device)
    cum, theta = [], []
    rel = torch.zeros(net.batch, dtype=net.dtype, device=net.device)
    for W in net.weights:
        A, r = _abs_pow(W, p, 0.0)
        a = A @ a
        rel = rel + _per_net_max(r) + gamma(W.shape[-1], net.dtype)
        cum.append(a.squeeze(-1))
        theta.append(rel)
    d = net.depth
    logt = torch.log(cum[-1].amax(dim=-1)).abs() / p
    eta = [torch.zeros_like(rel)]
    for k in range(1, d):
        la = torch.log(cum[k - 1].clamp_min(1e-300)).abs().amax(dim=-1) / p
        arg = (k / d) * logt + la
        eta.append((theta[-1] + theta[k - 1]) / p + 6 * u * (logt + la) + u * arg + 2 * u)
    eta.append(torch.zeros_like(rel))
    worst = torch.stack([eta[k] + eta[k - 1] for k in range(1, d + 1)]).amax(dim=0)
    return _guard(net, SAFETY * d * worst)


def path_norm_minimizer_attains(net: ReluNet, p: float = 2.0) -> Comparison:
    """μ_{p,∞}(w̃)^d = φ_p(w) at w̃ = ρ_ĉ(w), ĉ the computed ``path_norm_minimizer_scaling`` (COLT'15 Theorem 5,
    one output): exact up to how far ĉ is from the exact minimizer, so within ``path_norm_minimizer_error``·φ_p(w).
    With several outputs the left side is max_o φ_p^{(o)} < φ_p(w) in general, and the comparison fails."""
    mud = group_norm(rescale(net, path_norm_minimizer_scaling(net, p)), p, math.inf) ** net.depth
    phi = path_norm(net, p)
    return close(mud, phi, path_norm_minimizer_error(net, p) * phi.value)


def layer_balancing_error(net: ReluNet, p: float, q: float) -> Tensor:
    """Relative bound (B,) on max_k |‖W̃_k‖_{p,q} − γ^{1/d}| / γ^{1/d} for the computed ``layer_balancing_scaling``
    (exact arithmetic on the rescaled net), hence on |μ_{p,q}(w̃) − d^{1/q}γ^{1/d}| / (d^{1/q}γ^{1/d}).

    Layer norms N̂_k carry relative error r_k (``_lq_of_unit_norms``); ĝ = exp(mean_k log N̂_k) carries
    δ_g ≤ max_k r_k + 2u max|log N_k| + d·u·max|log N_k| + 2u; the factors â_k = ĝ/N̂_k (k < d) are applied as
    cumulative node factors C_k (k roundings each), the output layer absorbs 1/C_{d−1}.  Hidden layers end at
    g(1 ± (δ_g + r_k + (2k+1)u)), the output layer at g(1 ± ((d−1)δ_g + Σ_k r_k + 3du)); ×SAFETY.
    """
    p, q = _check_p(p), _check_p(q, "q", allow_inf=True)
    u = unit_roundoff(net.dtype)
    s, rel_s = _unit_norms_pow_rel(net, p, 0.0)
    norms, rels = [], []
    for sk in s:
        y, r = _lq_of_unit_norms(sk, p, q, rel_s)
        norms.append(y)
        rels.append(r)
    N, Rl = torch.stack(norms, dim=1), torch.stack(rels, dim=1)
    d = net.depth
    logmax = torch.log(N.clamp_min(1e-300)).abs().amax(dim=1)
    dg = Rl.amax(dim=1) + (2 + d) * u * logmax + 2 * u
    hidden = dg + Rl.amax(dim=1) + (2 * d + 1) * u
    out = (d - 1) * dg + Rl.sum(dim=1) + 3 * d * u
    return _guard(net, SAFETY * torch.maximum(hidden, out))


def layer_balancing_scaling(net: ReluNet, p: float, q: float) -> NodeScaling:
    """Whole-layer rescaling W̃_k = γ^{1/d} W_k / ‖W_k‖_{p,q} (COLT'15 Claim 1, as reconstructed), which makes
    all layer norms equal to γ_{p,q}^{1/d}, so μ_{p,q}(w̃) = d^{1/q} γ_{p,q}(w)^{1/d} (AM–GM equality)."""
    norms = layer_norms(net, p, q).value
    if bool((norms <= 0).any()):
        raise InvalidInputError("layer balancing needs every layer to be nonzero")
    g = torch.exp(torch.log(norms).mean(dim=1))  # γ^{1/d}
    return NodeScaling.from_layer_factors(net, (g[:, None] / norms)[:, :-1])


def layer_balancing_attains(net: ReluNet, p: float, q: float) -> Comparison:
    """μ_{p,q}(w̃) = d^{1/q}γ_{p,q}(w)^{1/d} after the computed ``layer_balancing_scaling`` (COLT'15 Claim 1, the
    AM–GM equality case), within ``layer_balancing_error``·d^{1/q}γ^{1/d} (how far the float factors are off)."""
    bound = layer_amgm_bound(net, p, q)
    mu = group_norm(rescale(net, layer_balancing_scaling(net, p, q)), p, q)
    return close(mu, bound, layer_balancing_error(net, p, q) * bound.value)


def convex_net_norm(net: ReluNet) -> Tensor:
    """2 Σ_j ‖u_j‖_2 ‖v_j‖_2 for depth-2 nets (u_j: incoming row of hidden unit j, v_j: its outgoing column),
    the min over rescalings of Σ_j (‖u_j‖² + ‖v_j‖²) (COLT'15 Theorem 10, as reconstructed; AM–GM)."""
    if net.depth != 2:
        raise InvalidInputError(f"the convex-net norm is defined for depth-2 nets, got depth {net.depth}")
    W1, W2 = certified_weights(net)
    return 2 * ((W1 * W1).sum(-1).sqrt() * (W2 * W2).sum(-2).sqrt()).sum(-1)


def weight_decay_minimizer_error(net: ReluNet) -> float:
    """Relative bound on WD(ρ_ĉ(w)) − 2Σ_j‖u_j‖‖v_j‖ for the computed ``weight_decay_minimizer_scaling``: each
    ĉ_j = c*_j(1 + η) with |η| ≤ 8u (a quotient, a square root and two norms), and at the stationary point c* the
    excess is second order: c²a + b/c² at c*(1 + η) exceeds 2√(ab) by ≤ 4η²·2√(ab)."""
    return 4 * (8 * unit_roundoff(net.dtype)) ** 2


def weight_decay_minimizer_scaling(net: ReluNet) -> NodeScaling:
    """Depth 2: c_j = (‖v_j‖/‖u_j‖)^{1/2} balances ‖c_j u_j‖ = ‖v_j/c_j‖, attaining 2Σ_j ‖u_j‖‖v_j‖
    (the AM–GM equality case); units with u_j = 0 or v_j = 0 keep c_j = 1."""
    if net.depth != 2:
        raise InvalidInputError(f"the closed-form weight-decay minimizer is for depth-2 nets, got {net.depth}")
    W1, W2 = net.weights
    nu, nv = W1.norm(dim=2), W2.norm(dim=1)
    ok = (nu > 0) & (nv > 0)
    c = torch.where(ok, torch.sqrt(nv / torch.where(ok, nu, 1.0)), torch.ones_like(nu))
    return NodeScaling((c,))


def weight_decay_minimizer_attains(net: ReluNet) -> Comparison:
    """Depth 2: Σ_j (‖ĉ_j u_j‖² + ‖v_j/ĉ_j‖²) = 2Σ_j‖u_j‖‖v_j‖ at the computed ``weight_decay_minimizer_scaling`` ĉ
    (COLT'15 Theorem 10), within ``weight_decay_minimizer_error``·2Σ_j‖u_j‖‖v_j‖ (second order in ĉ's rounding)."""
    conv = convex_net_norm(net)
    wd = weight_decay(rescale(net, weight_decay_minimizer_scaling(net)))
    return close(wd, conv, weight_decay_minimizer_error(net) * conv.value)


def spectral_product(net: ReluNet) -> Certified:
    """Π_k ‖W_k‖_2 (product of spectral norms, the Lipschitz bound of f_w; Bartlett et al. 2017), (B,).

    σ_1 by ``numerics.svdvals`` (rigorous: Weyl for the input error plus an a-posteriori bound on LAPACK's).
    """
    out = None
    for W in certified_weights(net):
        s1 = svdvals(W)[:, 0]
        out = s1 if out is None else out * s1
    return out


# ---------------------------------------------------------------------------------------------- exact (rationals)


def to_fractions(net: ReluNet, b: int) -> list[list[list[Fraction]]]:
    """Net b's weights as exact rationals (every float is a dyadic rational): [W_1, …, W_d], rows of Fractions."""
    return [[[Fraction(float(v)) for v in row] for row in W[b].tolist()] for W in net.weights]


def rows_to_fractions(t: Tensor) -> list[list[Fraction]]:
    """A 2-D tensor (e.g. inputs, one row per sample) as rows of exact rationals."""
    return [[Fraction(float(v)) for v in row] for row in t.tolist()]


def scaling_to_fractions(scaling: NodeScaling, b: int) -> list[list[Fraction]]:
    """Rescaling b's factors c_1 … c_{d−1} (one list per hidden layer) as exact rationals."""
    return [[Fraction(float(v)) for v in c[b].tolist()] for c in scaling.factors]


def rescale_fractions(weights: list[list[list[Fraction]]], cs: list[list[Fraction]]) -> list[list[list[Fraction]]]:
    """ρ_c(w) exactly (Neyshabur et al. 2015, §3): W_k ↦ diag(c_k) W_k diag(c_{k−1})⁻¹ with c_0 = c_d = 1."""
    d = len(weights)
    out = []
    for k, W in enumerate(weights, start=1):
        head = cs[k - 1] if k < d else [Fraction(1)] * len(W)
        tail = cs[k - 2] if k > 1 else [Fraction(1)] * len(W[0])
        out.append([[w * head[i] / tail[j] for j, w in enumerate(row)] for i, row in enumerate(W)])
    return out


def forward_fractions(weights: list[list[list[Fraction]]], x: list[list[Fraction]]) -> list[list[Fraction]]:
    """f(x) = W_d σ(W_{d−1} ⋯ σ(W_1 x)) exactly, for every row of x (bias-free, ReLU σ)."""
    out = []
    for xn in x:
        h = list(xn)
        for k, W in enumerate(weights):
            z = [sum((w * hi for w, hi in zip(row, h, strict=True)), Fraction(0)) for row in W]
            h = [max(v, Fraction(0)) for v in z] if k < len(weights) - 1 else z
        out.append(h)
    return out


def exact_unit_norms_pow(weights: list[list[list[Fraction]]], p: int) -> list[list[Fraction]]:
    """Σ_{u→v} |w_{u→v}|^p for every non-input unit, exactly (integer p)."""
    return [[sum(abs(w) ** p for w in row) for row in W] for W in weights]


def exact_path_norm_pow(weights: list[list[list[Fraction]]], p: int, per_output: bool = False):
    """φ_p^p exactly in rationals (integer p) by the two-pass recursion a_k(v) = Σ_u |w_{u→v}|^p a_{k−1}(u)."""
    a = [Fraction(1)] * len(weights[0][0])
    for W in weights:
        a = [sum(abs(w) ** p * ai for w, ai in zip(row, a, strict=True)) for row in W]
    return a if per_output else sum(a)


# ---------------------------------------------------------------------------------------------- margins


def margins(net: ReluNet, x: Tensor, y: Tensor) -> Certified:
    """Multiclass margins f_y(x_n) − max_{j≠y} f_j(x_n), (B, m)  (Exploring §2; Bartlett et al. 2017)."""
    f = forward(net, x)
    y = _labels(net, y, f.shape[1])
    b = torch.arange(net.batch, device=net.device)[:, None]
    n = torch.arange(f.shape[1], device=net.device)[None, :]
    fy = f[b, n, y]
    is_y = torch.nn.functional.one_hot(y, f.shape[-1]).bool()
    # f_y replaced by the row minimum (≤ every other entry), so the row max is max_{j≠y} f_j (n_d ≥ 2)
    other = where(is_y, f.amin(-1).unsqueeze(-1), f).amax(-1)
    return fy - other


def _labels(net: ReluNet, y: Tensor, m: int) -> Tensor:
    if not isinstance(y, Tensor) or y.dtype not in (torch.int64, torch.int32):
        raise InvalidInputError("labels must be an integer tensor of shape (m,) or (B, m)")
    if net.widths[-1] < 2:
        raise InvalidInputError("multiclass margins need at least two outputs")
    y = y.to(device=net.device, dtype=torch.int64)
    if y.ndim == 1:
        y = y.unsqueeze(0).expand(net.batch, m)
    if y.shape != (net.batch, m):
        raise InvalidInputError(f"labels must have shape ({m},) or ({net.batch}, {m}), got {tuple(y.shape)}")
    return y


def percentile_margin(net: ReluNet, x: Tensor, y: Tensor, q: float = 5.0) -> Certified:
    """The q-th percentile of the training margins (linear interpolation, as numpy.percentile), (B,).

    Exploring normalizes every measure by a margin; the authors' code (github.com/bneyshabur/
    generalization-bounds, main.py) uses the 5th percentile of the margins on the training set.
    Certified as a measured leaf: order statistics are 1-Lipschitz in the max-norm and the interpolation is a
    convex combination, so the error is at most the largest margin error (rigorous; no ball refinement).
    """
    if not 0 <= q <= 100:
        raise InvalidInputError(f"percentile q must be in [0, 100], got {q}")
    mg = margins(net, x, y)
    err = mg.error.amax(dim=1)
    return Certified.measured(torch.quantile(mg.value, q / 100.0, dim=1), err, rigorous=mg.rigorous,
                              label=f"{q:g}th percentile margin")


def exploring_measures(net: ReluNet, x: Tensor, y: Tensor, q: float = 5.0) -> dict[str, Tensor]:
    """The margin-normalized capacity measures of Exploring §2.1 (as reconstructed), each (B,):

    - ``l2``:       Π_{i=1}^d 4‖W_i‖_F² / γ²
    - ``l1-path``:  (Σ_paths Π_i 2|w_e|)² / γ² = (2^d φ_1)² / γ²
    - ``l2-path``:  Σ_paths Π_i 4 h_i w_e² / γ² = 4^d Π_{i<d} h_i · φ_2² / γ²   (h_i = width of hidden layer i)
    - ``spectral``: Π_i h_i ‖W_i‖_2² / γ²   (h_d := 1)
    with γ the q-th percentile training margin (``percentile_margin``).  Entries are NaN where γ ≤ 0 (the
    net does not classify a (100 − q)% share of the sample correctly).
    """
    f = _forward(net, x)  # float64 throughout: these feed statistics, not certified comparisons
    yl = _labels(net, y, f.shape[1])
    fy = f.gather(-1, yl.unsqueeze(-1)).squeeze(-1)
    g = torch.quantile(fy - f.scatter(-1, yl.unsqueeze(-1), -math.inf).amax(dim=-1), q / 100.0, dim=1)
    g2 = torch.where(g > 0, g * g, torch.full_like(g, math.nan))
    d = net.depth
    hprod = math.prod(net.widths[1:-1])
    fro = torch.stack([(W * W).sum(dim=(1, 2)) for W in net.weights], dim=1)
    spec = torch.stack([torch.linalg.matrix_norm(W, ord=2) ** 2 for W in net.weights], dim=1)
    phi2 = _path_norm_float(net, 2.0)
    return {
        "l2": (4.0**d) * fro.prod(dim=1) / g2,
        "l1-path": ((2.0**d) * _path_norm_float(net, 1.0)) ** 2 / g2,
        "l2-path": (4.0**d) * hprod * phi2 * phi2 / g2,
        "spectral": hprod * spec.prod(dim=1) / g2,
    }


# ---------------------------------------------------------------------------------------------- sharpness


@dataclass(frozen=True)
class Bracket:
    """A quantity known to lie in [lower − rounding, upper + rounding] per net, each (B,): ``lower`` and ``upper``
    are the computed sides, ``rounding`` bounds their floating-point error, ``method`` says how each was found."""

    lower: Tensor
    upper: Tensor
    rounding: Tensor
    method: str

    @property
    def width(self) -> Tensor:
        return self.upper - self.lower

    def __getitem__(self, index: int | slice | Tensor) -> Bracket:
        return Bracket(self.lower[index], self.upper[index], self.rounding[index], self.method)

    @property
    def certified_lower(self) -> Certified:
        """``lower`` as a Certified leaf with error ``rounding``: a value the quantity reaches, so ≤ it.  Marked an
        estimate: ``rounding`` is a generous hand allowance (≈ 1000× the standard γ_n bound), not a proof."""
        return Certified.measured(self.lower, self.rounding, rigorous=False, label=f"lower side ({self.method})")

    @property
    def certified_upper(self) -> Certified:
        """``upper`` as a Certified leaf with error ``rounding``: a bound the quantity never exceeds (an estimate,
        as :attr:`certified_lower`: float interval propagation without directed rounding)."""
        return Certified.measured(self.upper, self.rounding, rigorous=False, label=f"upper side ({self.method})")


def bracket_separation(a: Bracket, b: Bracket) -> Certified:
    """max(a.lower − b.upper, b.lower − a.upper), certified per entry (broadcast): where it is > 0 the brackets
    are disjoint, so the two bracketed quantities differ (a 0-dim ``b`` is compared with every entry of ``a``)."""
    return maximum(a.certified_lower - b.certified_upper, b.certified_lower - a.certified_upper)


def _box_radius(flat: Tensor, alpha: float, relative: bool) -> Tensor:
    return alpha * flat.abs() if relative else alpha * (flat.abs() + 1.0)


def _loss_flat(flat: Tensor, widths, x: Tensor, y: Tensor, kind: str) -> Tensor:
    return _loss(unflatten(flat, widths), x, y, kind)


def alpha_sharpness(
    net: ReluNet,
    x: Tensor,
    y: Tensor,
    alpha: float,
    *,
    kind: str = "ce",
    steps: int = 60,
    restarts: int = 4,
    relative: bool = False,
    seed: int = 0,
) -> Bracket:
    """α-sharpness ζ_α(w) = (max_{|ν_i| ≤ α(|w_i|+1)} L̂(w+ν) − L̂(w)) / (1 + L̂(w))  (Keskar et al. 2017;
    Exploring §2.3, eq. as reconstructed), bracketed per net.  ``relative=True`` uses the box |ν_i| ≤ α|w_i|.

    Lower side: projected sign-gradient ascent ν = r ⊙ t, t ← clip(t + η_i sign ∇_t L̂(w + r ⊙ t), −1, 1), r the
    box radius, ``steps`` steps with η_i decaying geometrically from 1 to 0.01, from ``restarts`` starts (the
    corner t = sign ∇L̂(w) and uniform random points), also evaluating the nearest vertex sign(t) at every
    step; the best loss seen is a value of L̂ at a feasible point, so it is ≤ the max (up to the rounding of
    one loss evaluation).  Random starts are seeded per net from its weights and ``seed`` (batch-independent).
    Upper side: interval bound propagation
    (midpoint–radius interval arithmetic through the layers, per data point, then the worst case of the loss
    per point, averaged) — a rigorous upper bound on the max, loose by the per-point decoupling.
    Rounding of both sides (sums of ≤ 10³ terms, relative ≲ 1e-13) is covered by ``rounding`` = 1e-10·(1 + L̂)
    on each side.
    """
    if not (alpha > 0 and math.isfinite(alpha)):
        raise InvalidInputError(f"alpha must be a finite positive number, got {alpha}")
    x = _check_inputs(net, x)
    B, R = net.batch, max(1, int(restarts))
    widths = net.widths
    flat = flatten(net).detach()
    r = _box_radius(flat, alpha, relative)
    base = _loss_flat(flat, widths, x, y, kind)
    # replicate every net R times: row b·R + j is restart j of net b
    fr = flat.repeat_interleave(R, dim=0)
    rr = r.repeat_interleave(R, dim=0)
    xr = x.repeat_interleave(R, dim=0)
    yr = y.repeat_interleave(R, dim=0) if y.ndim >= 2 and y.shape[0] == B else y
    g0 = _grad(lambda f: _loss_flat(f, widths, xr, yr, kind), fr)
    starts = torch.stack([torch.rand(R, flat.shape[1], generator=g, dtype=flat.dtype)
                          for g in _row_generators(flat, seed, b"alpha-sharpness")]).to(fr.device) * 2 - 1
    starts[:, 0] = torch.sign(g0.view(B, R, -1)[:, 0])
    t = starts.reshape(B * R, -1)
    best = _loss_flat(fr + rr * t, widths, xr, yr, kind)
    for i in range(steps):
        eta = 1.0 * (0.01 / 1.0) ** (i / max(steps - 1, 1))  # geometric decay 1 → 0.01 (in box-radius units)
        g = _grad(lambda tt: _loss_flat(fr + rr * tt, widths, xr, yr, kind), t)
        t = (t + eta * torch.sign(g)).clamp(-1.0, 1.0)
        best = torch.maximum(best, _loss_flat(fr + rr * t, widths, xr, yr, kind))
        # the nearest vertex too: maxima of losses convex along coordinates sit at vertices
        vertex = torch.where(t >= 0, 1.0, -1.0).to(t)
        best = torch.maximum(best, _loss_flat(fr + rr * vertex, widths, xr, yr, kind))
    lower_max = best.view(B, R).amax(dim=1)
    upper_max = _ibp_max_loss(net, r, x, y, kind)
    slack = 1e-10 * (1.0 + base.abs())
    lo = (lower_max - base) / (1.0 + base)
    up = (upper_max - base) / (1.0 + base)
    return Bracket(lo, up, slack, f"projected sign-gradient ascent ({steps} steps × {R} restarts) / "
                   "interval bound propagation")


@dataclass(frozen=True)
class SharpnessSweep:
    """α-sharpness brackets of one net w and of ρ_{c,v}(w) for c = 4^k, k in ``exponents`` (by increasing |k|): the
    function is the same for every c, so a certified ``separation`` > 0 shows that ζ_α is not rescaling-invariant."""

    exponents: list[int]
    base: Bracket          # 0-dim: ζ_α(w)
    rescaled: Bracket      # (K,): ζ_α(ρ_{4^k, v}(w))
    separation: Certified  # (K,): ``bracket_separation(rescaled, base)``
    witness: int           # the first index whose separation's lower side is > 0 (else the largest lower side)

    @property
    def factors(self) -> Tensor:
        """c = 4^k, (K,) float64."""
        return torch.tensor([4.0**k for k in self.exponents], dtype=torch.float64)


def sharpness_under_node_rescaling(net: ReluNet, x: Tensor, y: Tensor, alpha: float, *, seed: int = 0,
                                   layer: int = 1, unit: int = 0, max_log4: int = 16) -> SharpnessSweep:
    """``alpha_sharpness`` (cross-entropy) of one net (batch 1) and of its rescalings ρ_{c,v}(w), v = (``layer``,
    ``unit``), c = 4^k for k = ±1 … ±``max_log4`` (Exploring §2.3 with Dinh et al. 2017), in one batched call."""
    if net.batch != 1:
        raise InvalidInputError(f"the sharpness sweep rescales one net, got a batch of {net.batch}")
    ks = [k for j in range(1, max_log4 + 1) for k in (j, -j)]
    br = alpha_sharpness(cat([net] + [rescale_node(net, layer, unit, 4.0**k) for k in ks]), x, y, alpha, seed=seed)
    gap = bracket_separation(br[1:], br[0])
    witness = next((j for j in range(len(ks)) if gap.lo[j] > 0), int(gap.lo.argmax()))
    return SharpnessSweep(ks, br[0], br[1:], gap, witness)


def _grad(fn, t: Tensor) -> Tensor:
    """∇ of Σ_b fn(t)_b w.r.t. t (rows independent, so row b is ∇ of fn(t)_b)."""
    with torch.enable_grad():
        t = t.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(t).sum(), t)
    return g


def _ibp_max_loss(net: ReluNet, radius_flat: Tensor, x: Tensor, y: Tensor, kind: str) -> Tensor:
    """Upper bound on max_{|ν| ≤ r} L̂(w + ν) by midpoint–radius interval arithmetic, per net (B,).

    For w ∈ [w_c ± w_r], h ∈ [h_c ± h_r]: |wh − w_c h_c| ≤ |w_c|h_r + w_r|h_c| + w_r h_r, so
    z ∈ [h_c W_cᵀ ± (h_r|W_c|ᵀ + |h_c|W_rᵀ + h_r W_rᵀ)]; ReLU maps [l, u] to [σ(l), σ(u)].  Per point the loss
    is maximized over its own output interval (mse: the farther end; ce: log(1 + Σ_{j≠y} e^{f_j^U − f_y^L})),
    which upper-bounds the shared-ν maximum of the average.
    """
    R = unflatten(radius_flat, net.widths).weights
    hc, hr = x, torch.zeros_like(x)
    for k, (W, Wr) in enumerate(zip(net.weights, R, strict=True), start=1):
        zc = hc @ W.transpose(-1, -2)
        zr = hr @ W.abs().transpose(-1, -2) + hc.abs() @ Wr.transpose(-1, -2) + hr @ Wr.transpose(-1, -2)
        if k < net.depth:
            lo, up = torch.relu(zc - zr), torch.relu(zc + zr)
            hc, hr = (lo + up) / 2, (up - lo) / 2
        else:
            flo, fup = zc - zr, zc + zr
    if kind == "mse":
        m = x.shape[1]
        yy = y if y.ndim == 3 else y.unsqueeze(0).expand_as(fup)
        worst = torch.maximum((fup - yy).abs(), (flo - yy).abs())
        return 0.5 * (worst * worst).sum(dim=(1, 2)) / m
    if kind == "ce":
        yy = y if y.ndim == 2 else y.unsqueeze(0).expand(net.batch, -1)
        fy_lo = flo.gather(-1, yy.unsqueeze(-1))
        diff = fup - fy_lo
        diff = diff.scatter(-1, yy.unsqueeze(-1), 0.0)  # j = y contributes e^0 = 1
        return torch.logsumexp(diff, dim=-1).mean(dim=-1)
    raise InvalidInputError(f"loss kind must be 'mse' or 'ce', got {kind!r}")


def expected_sharpness(
    net: ReluNet,
    x: Tensor,
    y: Tensor,
    sigma: float | Tensor,
    *,
    kind: str = "ce",
    samples: int = 64,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Expected sharpness E_{ν∼N(0,σ²I)}[L̂(w+ν)] − L̂(w) by Monte Carlo, with its standard error, each (B,)
    (Exploring §2.3: the PAC-Bayes view of sharpness; σ a scalar or a per-weight (B, P) tensor).  The noise is
    seeded per net from its weights and ``seed`` (batch-independent)."""
    x = _check_inputs(net, x)
    flat = flatten(net)
    base = _loss_flat(flat, net.widths, x, y, kind)
    B, P = flat.shape
    sig = torch.as_tensor(sigma, dtype=flat.dtype, device=flat.device).expand(B, P)
    noise = torch.stack([torch.randn(samples, P, generator=g, dtype=flat.dtype)
                         for g in _row_generators(flat, seed, b"expected-sharpness")]).to(flat.device)
    pert = (flat[:, None, :] + sig[:, None, :] * noise).reshape(B * samples, P)
    xr = x.repeat_interleave(samples, dim=0)
    yr = y.repeat_interleave(samples, dim=0) if y.ndim >= 2 and y.shape[0] == B else y
    vals = _loss_flat(pert, net.widths, xr, yr, kind).view(B, samples)
    return vals.mean(dim=1) - base, vals.std(dim=1) / math.sqrt(samples)


def pac_bayes_kl(net: ReluNet, sigma: float | Tensor, prior: ReluNet | None = None) -> Tensor:
    """KL(N(w, σ²I) ‖ N(w₀, σ²I)) = ‖w − w₀‖² / (2σ²), (B,)  (Exploring §2.3 with a Gaussian prior at w₀,
    default w₀ = 0; σ a scalar or a per-weight (B, P) tensor, then Σ_i (w_i − w₀_i)²/(2σ_i²))."""
    flat = flatten(net)
    if prior is not None:
        flat = flat - flatten(prior)
    sig = torch.as_tensor(sigma, dtype=flat.dtype, device=flat.device).expand_as(flat)
    return (flat * flat / (2 * sig * sig)).sum(dim=1)


# ---------------------------------------------------------------------------------------------- Rademacher


def rademacher_bound(depth: int, phi: float, x: Tensor) -> Certified:
    """COLT'15 bound on the empirical Rademacher complexity of {depth-d ReLU nets with φ_1(w) ≤ φ} on x:
    √(4^{d−1} φ² · 4 log(2D) · max_i ‖x_i‖_∞² / m)   (Theorem 1 with p = 1, q = ∞ and Corollary 7, as
    reconstructed; the constant 4 log(2D) is the weaker of the versions in the main text and the appendix).

    ``x`` is (m, D) or (B, m, D); returns a certified (B,) value (B = 1 for 2-D x).
    """
    if x.ndim == 2:
        x = x.unsqueeze(0)
    m, D = x.shape[1], x.shape[2]
    xmax = Certified.exact(x.abs().amax(dim=(1, 2)))
    c = Certified.exact(4.0 ** (depth - 1) * 4 * float(phi) ** 2) * Certified.exact(2.0 * D).log() / m
    return c.sqrt() * xmax


def rademacher_linear_l1(
    x: Tensor,
    phi: float = 1.0,
    *,
    level: float = 0.99,
    exact_up_to: int = 14,
    samples: int = 20_000,
    seed: int = 0,
) -> tuple[Tensor, Tensor, str]:
    """Empirical Rademacher complexity of {x ↦ ⟨w, x⟩ : ‖w‖_1 ≤ φ} on x (m, D) or (B, m, D), with an error.

    sup_{‖w‖_1≤φ} (1/m) Σ_i ξ_i⟨w, x_i⟩ = (φ/m)‖Σ_i ξ_i x_i‖_∞ (ℓ1/ℓ∞ duality; COLT'15 Lemma 15, as
    reconstructed), so R̂ = (φ/m) E_ξ ‖Σ_i ξ_i x_i‖_∞.  For m ≤ ``exact_up_to`` the expectation is an exact
    average over all 2^m sign vectors (error: float rounding only, bounded by γ_{m+2^m}·(φ/m)Σ_i‖x_i‖_∞);
    otherwise Monte Carlo over ``samples`` sign vectors with a Hoeffding interval at ``level``: the summand
    lies in [0, (φ/m) Σ_i ‖x_i‖_∞], so |mean − R̂| ≤ range·√(log(2/(1−level))/(2N)) with probability ≥ level
    (sign vectors seeded per instance from its data and ``seed``).
    Returns (estimate (B,), half-width (B,), description).
    """
    if x.ndim == 2:
        x = x.unsqueeze(0)
    m = x.shape[1]
    rng = phi / m * x.abs().amax(dim=2).sum(dim=1)
    if m <= exact_up_to:
        signs = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=m)), dtype=x.dtype, device=x.device)
        vals = (signs @ x).abs().amax(dim=-1)  # (B, 2^m)
        est = phi / m * vals.mean(dim=-1)
        err = SAFETY * gamma(m + signs.shape[0], x.dtype) * rng
        return est, err, f"exact average over all 2^{m} sign vectors"
    xi = torch.stack([torch.randint(0, 2, (samples, m), generator=g) for g in _row_generators(x, seed, b"xi")])
    xi = (xi * 2 - 1).to(x)
    vals = (xi @ x).abs().amax(dim=-1)
    est = phi / m * vals.mean(dim=-1)
    half = rng * math.sqrt(math.log(2 / (1 - level)) / (2 * samples))
    return est, half, f"Monte Carlo over {samples} sign vectors, Hoeffding interval at level {level}"


def rademacher_linear(x: Tensor, phi: float = 1.0, *, level: float = 0.99, seed: int = 0) -> Certified:
    """R̂ of {x ↦ ⟨w, x⟩ : ‖w‖_1 ≤ φ} on x as a Certified (B,) leaf (``rademacher_linear_l1``): rigorous when the
    average over sign vectors is exact (error = rounding), an estimate when it is Monte Carlo (error = the
    Hoeffding half-width at ``level``); the label says which."""
    est, half, how = rademacher_linear_l1(x, phi, level=level, seed=seed)
    return Certified.measured(est, half, rigorous="exact" in how, label=f"R̂ ({how})")


def rademacher_search(
    x: Tensor,
    xi: Tensor,
    depth: int,
    width: int,
    *,
    steps: int = 150,
    restarts: int = 4,
    lr: float = 0.05,
    seed: int = 0,
) -> Tensor:
    """Falsification search for COLT'15's depth-d bound: for each sign vector ξ (S, m), maximize
    (1/m) Σ_i ξ_i f_w(x_i) / φ_1(w) over depth-d nets of the given hidden width by Adam from ``restarts``
    random inits; returns the best value found per ξ, (S,).  The ratio is invariant to rescaling and to
    scaling f, so it is the sup over {φ_1 ≤ 1}; multiplying by φ gives the class {φ_1 ≤ φ}.  Every value
    returned is attained by an actual net, hence a lower bound on the per-ξ supremum.  Initial nets are seeded
    per ξ from (ξ, x, ``seed``), so each ξ's result does not depend on the other sign vectors.
    """
    if x.ndim != 2:
        raise InvalidInputError(f"x must be (m, D), got {tuple(x.shape)}")
    S = xi.shape[0]
    widths = (x.shape[1], *([width] * (depth - 1)), 1)
    gens = _row_generators(torch.cat([xi.to(x), x.reshape(1, -1).expand(S, -1)], dim=1), seed, b"search")
    net = cat([random_net(widths, restarts, generator=g, dtype=x.dtype).to(x.device) for g in gens])
    flat = flatten(net).clone().requires_grad_(True)
    xis = xi.to(x).repeat_interleave(restarts, dim=0)  # (S·R, m)
    opt = torch.optim.Adam([flat], lr=lr)
    best = torch.full((S * restarts,), -math.inf, dtype=x.dtype, device=x.device)

    def objective(f: Tensor) -> Tensor:
        n = unflatten(f, widths)
        out = _forward(n, x).squeeze(-1)  # (S·R, m)
        return (xis * out).mean(dim=1) / _path_norm_float(n, 1.0).clamp_min(1e-300)

    for _ in range(steps):
        opt.zero_grad()
        val = objective(flat)
        best = torch.maximum(best, val.detach())
        (-val.sum()).backward()
        opt.step()
    with torch.no_grad():
        best = torch.maximum(best, objective(flat))
    return best.view(S, restarts).amax(dim=1)


@dataclass(frozen=True)
class RademacherLower:
    """A lower bound on R̂ = E_ξ sup_{φ_1(w) ≤ φ} (1/m) Σ_i ξ_i f_w(x_i) for depth-d bias-free ReLU nets on x.

    ``lower`` ≤ R̂ holds exactly (up to ``rounding``) when ``level`` is 1, else with probability ≥ ``level``
    over the Monte-Carlo sign vectors.  ``baseline`` is the exact (or lower-confidence) mean of the single-unit
    part, ``search_gain`` the lower-confidence gain of the search over it (≥ 0).  ``certified``: ``lower`` as
    a Certified leaf with error ``rounding``, rigorous only when level is 1 (no sampling).
    """

    lower: float
    rounding: float
    level: float
    baseline: float
    search_gain: float
    how: str

    @property
    def certified(self) -> Certified:
        return Certified.measured(torch.tensor([self.lower], dtype=torch.float64), self.rounding,
                                  rigorous=self.level == 1.0, label="lower bound on R̂")


def _single_unit_correlations(x: Tensor, xi: Tensor, phi: float) -> Tensor:
    """b(ξ) = φ max_{j, s=±1} |(1/m) Σ_i ξ_i σ(s x_ij)|, (S,): the nets f = ±φ σ(±x_j) passed through identity
    units (σ∘σ = σ, so any depth d ≥ 2; φ_1 = φ) are in the class, so b(ξ) ≤ sup for every ξ."""
    return phi * (xi @ torch.relu(torch.cat([x, -x], dim=1)) / x.shape[0]).abs().amax(dim=1)


def rademacher_relu_lower(
    x: Tensor,
    depth: int,
    phi: float = 1.0,
    *,
    exact_up_to: int = 14,
    samples: int = 20_000,
    search_xi: int = 16,
    width: int = 8,
    steps: int = 120,
    restarts: int = 4,
    level: float = 0.999,
    seed: int = 0,
) -> RademacherLower:
    """Certified lower bound on the empirical Rademacher complexity of {depth-d ReLU nets, φ_1(w) ≤ φ} on x (m, D).

    R̂ = E_ξ sup_w (1/m)Σ ξ_i f_w(x_i) ≥ E_ξ max(b(ξ), s(ξ)) = E b + E (s − b)⁺, with b the closed-form single-unit
    correlation (``_single_unit_correlations``) and s the value ``rademacher_search`` attains; both are values of
    actual nets in the class.  E b is an exact average over all 2^m sign vectors when m ≤ ``exact_up_to`` (no
    sampling error), else a one-sided Hoeffding lower bound from ``samples`` vectors (b ∈ [0, r], r = φ·mean_i
    ‖x_i‖_∞ since |f(x)| ≤ φ_1‖x‖_∞).  E (s − b)⁺ ∈ [0, r] gets a one-sided Hoeffding lower bound from
    ``search_xi`` vectors, floored at 0.  Each one-sided bound fails with probability ≤ (1 − level)/2.
    The sup itself (a non-convex maximization) is not computable, so no upper bound on R̂ comes with it.
    """
    if x.ndim != 2:
        raise InvalidInputError(f"x must be (m, D), got {tuple(x.shape)}")
    if depth < 2:
        raise InvalidInputError("rademacher_relu_lower is for depth ≥ 2; depth 1 is rademacher_linear_l1 (exact)")
    m = x.shape[0]
    r = phi * x.abs().amax(dim=1).mean().item()
    delta = (1 - level) / 2
    gens = _row_generators(x.reshape(1, -1), seed, b"rademacher-lower")
    if m <= exact_up_to:
        signs = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=m)), dtype=x.dtype, device=x.device)
        base = _single_unit_correlations(x, signs, phi).mean().item()
        how, conf = f"single-unit nets averaged exactly over all 2^{m} sign vectors", 1.0
        n_sum = signs.shape[0]
    else:
        xi = (torch.randint(0, 2, (samples, m), generator=gens[0]) * 2 - 1).to(x)
        base = _single_unit_correlations(x, xi, phi).mean().item() - r * math.sqrt(math.log(1 / delta) / (2 * samples))
        how, conf = f"single-unit nets, one-sided Hoeffding over {samples} sign vectors", 1 - delta
        n_sum = samples
    gain = 0.0
    if search_xi > 0:
        xi = (torch.randint(0, 2, (search_xi, m), generator=gens[0]) * 2 - 1).to(x)
        s = phi * rademacher_search(x, xi, depth, width, steps=steps, restarts=restarts, seed=seed)
        excess = (s - _single_unit_correlations(x, xi, phi)).clamp_min(0.0).mean().item()
        gain = max(0.0, excess - r * math.sqrt(math.log(1 / delta) / (2 * search_xi)))
        how += f", plus the search's gain on {search_xi} sign vectors (one-sided Hoeffding)"
        conf -= delta
    # rounding: sums of ≤ n_sum + m terms of magnitude ≤ r (γ bound), the final two additions; ×SAFETY
    rounding = SAFETY * (gamma(n_sum + m + 2, x.dtype) * 2 * r)
    return RademacherLower(base + gain, rounding, conf, base, gain, how)
