"""The certified helpers the capacity claims compare, against independent computations written here: exact
rationals (Fractions, integer p), mpmath at 60 digits, constructed brackets whose answer is known, and the exact
or planted comparisons they must decide (a tie certified, a 1-ulp difference refuted)."""

from __future__ import annotations

import math
from fractions import Fraction

import mpmath
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from implreg.errors import InvalidInputError
from implreg.numerics import Certified, Undecided, certify
from implreg.relu import capacity as C
from implreg.relu import network as R
from implreg.strategies.relu import inputs, net_widths, relu_nets

nets = relu_nets(net_widths(depth=st.integers(1, 4), width=st.integers(1, 3), outputs=st.integers(1, 2)),
                 batch=(1, 2), nonzero=True)
F64 = {"dtype": torch.float64}


def _covers(c: Certified, refs: list, what: str) -> None:
    """Every exact value (Fraction or mpmath) lies within value ± error."""
    v, e = c.value.reshape(-1).tolist(), c.error.reshape(-1).tolist()
    assert len(refs) == len(v), what
    with mpmath.workdps(60):
        for vi, ei, r in zip(v, e, refs, strict=True):
            r = mpmath.mpf(r.numerator) / r.denominator if isinstance(r, Fraction) else r
            assert abs(mpmath.mpf(vi) - r) <= mpmath.mpf(ei), f"{what}: |{vi} − {r}| > {ei}"


def _unit_norms(net: R.ReluNet, b: int, p: int) -> list[list[Fraction]]:
    return [[sum(abs(Fraction(w)) ** p for w in row) for row in W[b].tolist()] for W in net.weights]


@settings(max_examples=30, deadline=None)
@given(net=nets, p=st.sampled_from([1, 2, 3]))
def test_rescaling_chain_pow_is_exact_max_and_product(net, p):
    mu, gam = C.rescaling_chain_pow(net, p)
    M = [[max(s) for s in _unit_norms(net, b, p)] for b in range(net.batch)]
    _covers(mu, [max(m) ** net.depth for m in M], "μ^{dp}")
    _covers(gam, [math.prod(m) for m in M], "γ^p")
    certify(mu >= gam, "AM–GM of the max")  # exact tier: rational for integer p


@settings(max_examples=30, deadline=None)
@given(net=nets, p=st.sampled_from([1, 2, 3]), qsel=st.sampled_from(["p", "2p", "inf"]))
def test_layer_amgm_pow_matches_rationals(net, p, qsel):
    q = {"p": p, "2p": 2 * p, "inf": math.inf}[qsel]
    lhs, rhs = C.layer_amgm_pow(net, p, q)
    d, want_l, want_r = net.depth, [], []
    for b in range(net.batch):
        s = _unit_norms(net, b, p)
        T = [max(sk) for sk in s] if math.isinf(q) else [sum(v ** (q // p) for v in sk) for sk in s]
        want_l.append(max(T) ** d if math.isinf(q) else sum(T) ** d / Fraction(d) ** d)
        want_r.append(math.prod(T))
    _covers(lhs, want_l, "lhs")
    _covers(rhs, want_r, "rhs")


@settings(max_examples=30, deadline=None)
@given(net=nets, p=st.sampled_from([1.0, 2.0, 1.5]), q=st.sampled_from([1.0, 2.0, 3.5, math.inf]))
def test_layer_amgm_bound_matches_mpmath(net, p, q):
    bal = C.layer_amgm_bound(net, p, q)
    refs = []
    with mpmath.workdps(60):
        for b in range(net.batch):
            norms = []
            for W in net.weights:
                rows = [mpmath.fsum(abs(mpmath.mpf(w)) ** p for w in row) ** (1 / mpmath.mpf(p))
                        for row in W[b].tolist()]
                norms.append(max(rows) if math.isinf(q) else mpmath.fsum(r**q for r in rows) ** (1 / mpmath.mpf(q)))
            g = mpmath.fprod(norms) ** (mpmath.mpf(1) / net.depth)
            refs.append(g if math.isinf(q) else mpmath.mpf(net.depth) ** (1 / mpmath.mpf(q)) * g)
    _covers(bal, refs, "d^{1/q} γ^{1/d}")


@settings(max_examples=30, deadline=None)
@given(net=relu_nets(net_widths(depth=st.just(2), width=st.integers(1, 4), outputs=st.integers(1, 2)), batch=(1, 3),
                     nonzero=True))
def test_weight_decay_minimizer_error_bounds_the_excess_at_60_digits(net):
    """WD(ρ_ĉ(w)) − 2Σ‖u‖‖v‖ in exact arithmetic on ρ_ĉ(w) = (ĉ u, v/ĉ) with the float factors ĉ."""
    c = C.weight_decay_minimizer_scaling(net).factors[0]
    rel = C.weight_decay_minimizer_error(net)
    with mpmath.workdps(60):
        for b in range(net.batch):
            W1, W2, cb = net.weights[0][b].tolist(), net.weights[1][b].tolist(), c[b].tolist()
            wd = conv = mpmath.mpf(0)
            for j, cj in enumerate(cb):
                u2 = mpmath.fsum(mpmath.mpf(w) ** 2 for w in W1[j])
                v2 = mpmath.fsum(mpmath.mpf(row[j]) ** 2 for row in W2)
                wd += mpmath.mpf(cj) ** 2 * u2 + v2 / mpmath.mpf(cj) ** 2
                conv += 2 * mpmath.sqrt(u2 * v2)
            assert 0 <= wd - conv <= rel * conv


def test_bracket_separation_and_certified_sides():
    br = C.Bracket(torch.tensor([0.0, 1.0, 5.0], **F64), torch.tensor([2.0, 3.0, 6.0], **F64),
                   torch.full((3,), 1e-10, **F64), "constructed")
    assert br[1:].lower.tolist() == [1.0, 5.0] and br[0].upper.item() == 2.0
    assert not br.certified_lower.rigorous and br.certified_upper.error.tolist() == [1e-10] * 3
    gap = C.bracket_separation(br[1:], br[0])
    assert gap.value.tolist() == [-1.0, 3.0]  # [1, 3] overlaps [0, 2]; [5, 6] is 3 above it
    certify(gap[1] > 0, "disjoint brackets")
    with pytest.raises(AssertionError):
        certify(gap[0] > 0, "overlapping brackets")
    # a separation smaller than the two rounding allowances is undecided, never certified
    touching = C.Bracket(torch.tensor([2.0 + 1e-11], **F64), torch.tensor([3.0], **F64), torch.full((1,), 1e-10, **F64),
                         "constructed")
    with pytest.raises(Undecided):
        certify(C.bracket_separation(touching, br[0])[0] > 0, "within rounding")


def test_rademacher_linear_is_a_leaf_of_the_estimate_and_its_error():
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(3), **F64)
    r = C.rademacher_linear(x, 2.0, seed=1)
    est, err, how = C.rademacher_linear_l1(x, 2.0, seed=1)
    assert r.rigorous and "exact" in how and r.value.tolist() == est.tolist() and r.error.tolist() == err.tolist()
    xl = torch.randn(20, 3, generator=torch.Generator().manual_seed(4), **F64)
    assert not C.rademacher_linear(xl, 1.0).rigorous  # m > 14: Monte Carlo, an estimate


def test_identity_and_dominates_are_exact_at_integer_powers_and_relative_otherwise():
    one = Certified.exact(torch.tensor([1.0], **F64))
    ulp = Certified.exact(torch.tensor([1.0 + 2.0**-52], **F64))
    certify(C.identity(one, one, 2.0), "exact tie")
    with pytest.raises(AssertionError):
        certify(C.identity(ulp, one, 2.0), "1 ulp apart, integer power: exact, refuted")
    certify(C.identity(ulp, one, 2.5), "1 ulp apart, real power: within 1e-12")
    with pytest.raises(AssertionError):
        certify(C.identity(one * (1 + 1e-9), one, 2.5), "1e-9 apart: beyond 1e-12")
    zero = Certified.exact(torch.zeros(1, **F64))
    certify(C.identity(zero, zero, None), "both exactly 0")
    certify(C.dominates(one, ulp, 1.5), "real power: 1 ≥ (1 − 1e-12)(1 + ulp)")
    with pytest.raises(AssertionError):
        certify(C.dominates(one, ulp, 1.0), "integer power: 1 < 1 + ulp, refuted")


@settings(max_examples=10, deadline=None)
@given(x=inputs(2, m=st.integers(1, 5)))
def test_rademacher_linear_lies_below_the_colt_bound(x):
    certify(C.rademacher_linear(x, 1.0) <= C.rademacher_bound(1, 1.0, x), "R̂ ≤ bound")


# ---------------------------------------------------------------------------------------------- the claims' comparisons

ONE_PATH = R.ReluNet((torch.tensor([[[1.0]]], **F64), torch.tensor([[[1.0]]], **F64)))  # 1 → 1 → 1, w = (1, 1)


def test_rescaling_identity_decides_invariance_exactly_both_ways():
    s = R.NodeScaling.single(ONE_PATH, 1, 0, 2.0)
    certify(C.rescaling_identity(lambda w: C.path_norm_pow(w, 2), ONE_PATH, s, 2), "φ₂² is invariant")
    certify(C.rescaling_identity(C.spectral_product, ONE_PATH, s, None), "‖2‖·‖1/2‖ = 1 (depth 2, 1×1)")
    with pytest.raises(AssertionError):  # 2² + (1/2)² ≠ 1 + 1
        certify(C.rescaling_identity(C.weight_decay, ONE_PATH, s, 2), "weight decay is not")


@settings(max_examples=25, deadline=None)
@given(net=relu_nets(net_widths(depth=(2, 4), width=(1, 3)), batch=(1, 2), nonzero=True),
       p=st.sampled_from([1.0, 2.0, 3.0, 1.5]))
def test_minimizer_comparisons_hold_at_the_constructed_minimizers(net, p):
    certify(C.path_norm_minimizer_attains(net, p), "μ_{p,∞}(w̃)^d = φ_p(w)")
    for q in (p, 2 * p, math.inf, 2.5):
        certify(C.layer_balancing_attains(net, p, q), "μ_{p,q}(w̃) = d^{1/q}γ^{1/d}")
    if net.depth == 2:
        certify(C.weight_decay_minimizer_attains(net), "WD(w̃) = 2Σ‖u‖‖v‖")


def test_minimizer_comparisons_refute_wrong_factors_and_several_outputs(monkeypatch):
    """Not vacuous: the identity rescaling of an unbalanced net, and a net with two outputs (minimum max_o φ^{(o)} =
    1 < φ₁ = 2), are refuted."""
    net = R.ReluNet((torch.tensor([[[4.0]]], **F64), torch.tensor([[[1.0]]], **F64)))  # unbalanced: 4 vs 1
    two = R.ReluNet((torch.tensor([[[1.0]]], **F64), torch.tensor([[[1.0], [1.0]]], **F64)))
    with pytest.raises(AssertionError):
        certify(C.path_norm_minimizer_attains(two, 1.0), "several outputs")
    monkeypatch.setattr(C, "weight_decay_minimizer_scaling", R.NodeScaling.identity)
    monkeypatch.setattr(C, "layer_balancing_scaling", lambda n, p, q: R.NodeScaling.identity(n))
    monkeypatch.setattr(C, "path_norm_minimizer_scaling", lambda n, p: R.NodeScaling.identity(n))
    for cmp in (C.weight_decay_minimizer_attains(net), C.layer_balancing_attains(net, 2.0, 2.0),
                C.path_norm_minimizer_attains(net, 1.0)):
        with pytest.raises(AssertionError):
            certify(cmp, "unbalanced factors")


def test_sharpness_sweep_brackets_match_separate_calls_and_pick_the_first_separation():
    x = torch.tensor([[1.0, -0.5], [0.3, 2.0], [-1.0, 1.0]], **F64)
    y = torch.tensor([0, 1, 1])
    net = R.activate_unit(R.random_net((2, 3, 2), 1, generator=torch.Generator().manual_seed(5)), 0, x[0])
    sw = C.sharpness_under_node_rescaling(net, x, y, 0.05, seed=3, max_log4=3)
    assert sw.exponents == [1, -1, 2, -2, 3, -3] and sw.factors.tolist() == [4.0, 0.25, 16.0, 1 / 16, 64.0, 1 / 64]
    alone = C.alpha_sharpness(net, x, y, 0.05, seed=3)  # seeded per net from its weights: batch-independent
    assert sw.base.lower.item() == alone.lower[0].item() and sw.base.upper.item() == alone.upper[0].item()
    assert torch.equal(sw.separation.value, C.bracket_separation(sw.rescaled, sw.base).value)
    lo = sw.separation.lo
    first = [j for j in range(len(sw.exponents)) if lo[j] > 0]
    assert sw.witness == (first[0] if first else int(lo.argmax()))
    with pytest.raises(InvalidInputError):
        C.sharpness_under_node_rescaling(R.cat([net, net]), x, y, 0.05)
