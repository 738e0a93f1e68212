"""Tests of implreg.relu.capacity against independent computations: brute-force path enumeration written here
(itertools, Python floats / Fractions / mpmath), numpy norms, closed forms (AM–GM, ℓ1/ℓ∞ duality, Gaussian
expectations), scipy optimization over rescalings, and exhaustive vertex enumeration for convex maxima.

Tolerances.  Error *bounds* are tested against exact rationals (integer p) or mpmath at 50 digits
(non-integer p) with no slack.  Value comparisons with numpy use rtol 1e-12 (both sides are float64
evaluations of the same sums, differing by ≲ (n + d)·eps ≈ 1e-14 relative).
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from implreg.errors import InvalidInputError
from implreg.relu import capacity as C
from implreg.relu import network as R
from implreg.strategies.relu import inputs, net_widths, node_rescalings, relu_nets

SETTINGS = settings(max_examples=30, deadline=None)
nets = relu_nets(net_widths(depth=st.integers(1, 4), width=st.integers(1, 4), inputs=st.integers(1, 3),
                            outputs=st.integers(1, 2)), batch=(1, 2))
ps = st.sampled_from([1.0, 1.5, 2.0, 3.0, 2.5])


def brute_paths(Ws: list[list[list[float]]]):
    """All input→output paths as tuples of units (n_0 index, …, n_d index)."""
    widths = [len(Ws[0][0])] + [len(W) for W in Ws]
    return itertools.product(*(range(n) for n in widths))


def mp_path_norm_pow(Ws, p) -> mpmath.mpf:
    with mpmath.workdps(50):
        tot = mpmath.mpf(0)
        for path in brute_paths(Ws):
            term = mpmath.mpf(1)
            for k, W in enumerate(Ws):
                term *= mpmath.power(abs(mpmath.mpf(W[path[k + 1]][path[k]])), p)
            tot += term
        return tot


def mp_group_norm(Ws, p, q):
    with mpmath.workdps(50):
        rows = [mpmath.fsum(mpmath.power(abs(mpmath.mpf(w)), p) for w in row) ** (mpmath.mpf(1) / p)
                for W in Ws for row in W]
        if math.isinf(q):
            return max(rows)
        return mpmath.fsum(r**q for r in rows) ** (mpmath.mpf(1) / q)


# ---------------------------------------------------------------------------------------------- path norms


def mp_of(x: float) -> mpmath.mpf:
    return mpmath.mpf(float(x))


def _covers(c, refs, what):
    """Every entry's exact value (refs, mpmath at 60 digits or Fractions) lies within value ± error."""
    assert c.rigorous, what
    v, e = c.value.reshape(-1).tolist(), c.error.reshape(-1).tolist()
    refs = list(np.asarray(refs, dtype=object).reshape(-1))
    assert len(refs) == len(v), what
    with mpmath.workdps(60):
        for vi, ei, r in zip(v, e, refs, strict=True):
            r = mpmath.mpf(r.numerator) / r.denominator if isinstance(r, Fraction) else r
            assert abs(mpmath.mpf(vi) - r) <= mpmath.mpf(ei), f"{what}: |{vi} − {r}| > {ei}"


def mp_root(x, p):
    with mpmath.workdps(60):
        return x ** (mpmath.mpf(1) / p)


# nets that include single paths (all widths 1), zero weights, and tiny/huge magnitudes (a 2^k factor per
# layer, exact): the certified bounds must hold on all of them
edge_nets = st.one_of(nets, relu_nets(net_widths(depth=st.integers(1, 4), width=st.just(1), inputs=st.just(1)),
                                      batch=(1, 2)))
layer_scales = st.lists(st.integers(-40, 40), min_size=4, max_size=4)


def scaled(net, ks):
    return R.ReluNet(tuple(W * 2.0**k for W, k in zip(net.weights, ks, strict=False)))


@settings(max_examples=40, deadline=None)
@given(net=edge_nets, ks=layer_scales, p=ps, q=st.sampled_from([1.0, 2.0, 3.0, 1.5, math.inf]))
def test_certified_measure_bounds_cover_the_exact_values(net, ks, p, q):
    """Every certified measure's bound is never below its actual error (mpmath at 60 digits from the exact
    float inputs; written here path by path and row by row, independently of the library)."""
    net = scaled(net, ks)
    with mpmath.workdps(60):
        for b in range(net.batch):
            Ws = [W[b].tolist() for W in net.weights]
            pp = mp_path_norm_pow(Ws, p)
            _covers(C.path_norm_pow(net[b], p), [pp], "φ_p^p")
            _covers(C.path_norm_brute_pow(net[b], p), [pp], "φ_p^p by enumeration")
            _covers(C.path_norm(net[b], p), [mp_root(pp, p)], "φ_p")
            per_out = [mpmath.fsum(t for path, t in _path_terms(Ws, p) if path[-1] == o) for o in range(len(Ws[-1]))]
            _covers(C.path_norm_per_output(net[b], p), per_out, "per-output φ_p^p")
            rows = [[mp_root(mpmath.fsum(abs(mp_of(w)) ** p for w in row), p) for row in W] for W in Ws]
            def lq(r):
                return max(r) if math.isinf(q) else mp_root(mpmath.fsum(x ** q for x in r), q)
            _covers(C.group_norm(net[b], p, q), [lq([x for r in rows for x in r])], "μ_{p,q}")
            _covers(C.layer_norms(net[b], p, q), [lq(r) for r in rows], "‖W_k‖_{p,q}")
            _covers(C.layer_product(net[b], p, q), [mpmath.fprod(lq(r) for r in rows)], "γ_{p,q}")
            _covers(C.weight_decay(net[b]), [mpmath.fsum(mp_of(w) ** 2 for W in Ws for row in W for w in row)], "WD")
            sv = [max(mpmath.svd_r(mpmath.matrix(W), compute_uv=False)) for W in Ws]
            _covers(C.spectral_product(net[b]), [mpmath.fprod(sv)], "Π‖W_k‖₂")
            if net.depth == 2:
                W1, W2 = Ws
                conv = 2 * mpmath.fsum(mpmath.sqrt(mpmath.fsum(mp_of(w) ** 2 for w in W1[j]))
                                       * mpmath.sqrt(mpmath.fsum(mp_of(W2[o][j]) ** 2 for o in range(len(W2))))
                                       for j in range(len(W1)))
                _covers(C.convex_net_norm(net[b]), [conv], "2Σ‖u‖‖v‖")


def _path_terms(Ws, p):
    for path in brute_paths(Ws):
        t = mpmath.mpf(1)
        for k, W in enumerate(Ws):
            t *= abs(mp_of(W[path[k + 1]][path[k]])) ** p
        yield path, t


@settings(max_examples=30, deadline=None)
@given(data=st.data(), ks=layer_scales)
def test_certified_forward_loss_and_margin_bounds_cover_exact_values(data, ks):
    """Forward pass, mse and cross-entropy losses, margins and the percentile margin against exact rationals
    (forward, mse, margins) and mpmath at 60 digits (the log-sum-exp)."""
    net = scaled(data.draw(relu_nets(net_widths(depth=st.integers(1, 3), width=st.integers(1, 3),
                                                inputs=st.integers(1, 3), outputs=st.integers(2, 3)))), ks)
    x = data.draw(inputs(net.widths[0], m=st.integers(1, 4)))
    m, no = x.shape[0], net.widths[-1]
    y = torch.tensor(data.draw(st.lists(st.integers(0, no - 1), min_size=m, max_size=m)))
    t = data.draw(inputs(no, m=m))
    f_ex = C.forward_fractions(C.to_fractions(net, 0), C.rows_to_fractions(x))  # exact outputs
    _covers(R.forward(net, x), [v for row in f_ex for v in row], "f(x)")
    mse = sum((v - Fraction(tv)) ** 2 for row, trow in zip(f_ex, t.tolist(), strict=True)
              for v, tv in zip(row, trow, strict=True)) / (2 * m)
    _covers(R.loss(net, x, t, "mse"), [mse], "mse")
    with mpmath.workdps(60):
        ce = mpmath.fsum(mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(v.numerator) / v.denominator) for v in row))
                         - mpmath.mpf(row[yi].numerator) / row[yi].denominator
                         for row, yi in zip(f_ex, y.tolist(), strict=True)) / m
    _covers(R.loss(net, x, y, "ce"), [ce], "cross-entropy")
    mg = [row[yi] - max(v for j, v in enumerate(row) if j != yi) for row, yi in zip(f_ex, y.tolist(), strict=True)]
    _covers(C.margins(net, x, y), mg, "margins")
    srt = sorted(mg)
    pos = Fraction(5, 100) * (m - 1)
    lo = int(pos)
    pm = srt[lo] + (pos - lo) * (srt[min(lo + 1, m - 1)] - srt[lo])
    # numpy's linear interpolation computes the position in float; allow its rounding (≤ ulp(pos)·spread)
    got = C.percentile_margin(net, x, y, 5)
    spread = float(srt[-1] - srt[0]) * 2**-50
    assert abs(Fraction(got.value.item()) - pm) <= Fraction(got.error.item()) + Fraction(spread)


def test_path_norm_closed_forms():
    # one path per output: φ_p^p = Π |w|^p ; all-ones net: φ_p^p = number of paths
    W1 = torch.tensor([[[2.0]]], dtype=torch.float64)
    W2 = torch.tensor([[[-3.0]]], dtype=torch.float64)
    net = R.ReluNet((W1, W2))
    assert C.path_norm(net, 1).item() == 6.0
    assert C.path_norm(net, 2).item() == pytest.approx(6.0, rel=1e-15)
    ones = R.ReluNet(tuple(torch.ones(1, a, b, dtype=torch.float64) for a, b in [(3, 2), (4, 3), (2, 4)]))
    assert C.path_norm_pow(ones, 2).item() == 2 * 3 * 4 * 2
    assert torch.equal(C.path_norm_per_output(ones, 1).value, torch.tensor([[24.0, 24.0]], dtype=torch.float64))


@settings(max_examples=20, deadline=None)
@given(net=nets, p=st.sampled_from([1, 2, 3]))
def test_exact_rational_helpers_match_enumeration(net, p):
    Ws = C.to_fractions(net, 0)
    ref = Fraction(0)
    for path in brute_paths(Ws):
        term = Fraction(1)
        for k, W in enumerate(Ws):
            term *= abs(W[path[k + 1]][path[k]]) ** p
        ref += term
    assert C.exact_path_norm_pow(Ws, p) == ref
    norms = C.exact_unit_norms_pow(Ws, p)
    assert norms == [[sum(abs(w) ** p for w in row) for row in W] for W in Ws]


# ---------------------------------------------------------------------------------------------- group norms


@SETTINGS
@given(net=nets, p=ps, q=st.sampled_from([1.0, 2.0, 3.0, 1.5, math.inf]))
def test_group_norm_and_layer_product_match_numpy(net, p, q):
    mu, gam, lay = C.group_norm(net, p, q).value, C.layer_product(net, p, q).value, C.layer_norms(net, p, q).value
    for b in range(net.batch):
        Ws = [W[b].numpy() for W in net.weights]
        rows = [np.sum(np.abs(W) ** p, axis=1) ** (1 / p) for W in Ws]
        per_layer = [np.max(r) if math.isinf(q) else np.sum(r**q) ** (1 / q) for r in rows]
        allrows = np.concatenate(rows)
        mu_np = np.max(allrows) if math.isinf(q) else np.sum(allrows**q) ** (1 / q)
        np.testing.assert_allclose(lay[b].numpy(), per_layer, rtol=1e-12, atol=1e-300)
        np.testing.assert_allclose(mu[b].item(), mu_np, rtol=1e-12, atol=1e-300)
        np.testing.assert_allclose(gam[b].item(), np.prod(per_layer), rtol=1e-12, atol=1e-300)


def test_weight_decay_is_mu22_squared():
    net = R.random_net((3, 4, 2), batch=2, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(C.weight_decay(net).value.numpy(), (C.group_norm(net, 2, 2) ** 2).value.numpy(),
                               rtol=1e-14)


def test_bad_p_is_rejected():
    net = R.random_net((2, 2, 1))
    with pytest.raises(InvalidInputError, match="≥ 1"):
        C.path_norm(net, 0.5)
    with pytest.raises(InvalidInputError):
        C.group_norm(net, 2, float("nan"))


# ---------------------------------------------------------------------------------------------- minimizers


@settings(max_examples=15, deadline=None)
@given(net=relu_nets(net_widths(depth=st.just(2), width=st.integers(1, 4), inputs=st.integers(1, 3)),
                     nonzero=True))
def test_depth2_weight_decay_minimum_is_amgm_closed_form(net):
    """min_c Σ_j (c_j²‖u_j‖² + v_j²/c_j²) = 2Σ_j ‖u_j‖|v_j|: scipy minimizes over log c independently."""
    W1, W2 = net.weights[0][0].numpy(), net.weights[1][0].numpy()
    a, b = np.sum(W1**2, axis=1), np.sum(W2**2, axis=0)

    def wd(logc):
        c2 = np.exp(2 * logc)
        return float(np.sum(c2 * a + b / c2))

    res = minimize(wd, np.zeros(len(a)), method="BFGS", options={"gtol": 1e-12})
    closed = 2 * np.sum(np.sqrt(a * b))
    assert res.fun == pytest.approx(closed, rel=1e-8)
    assert C.convex_net_norm(net).item() == pytest.approx(closed, rel=1e-13)
    w = R.rescale(net, C.weight_decay_minimizer_scaling(net))
    assert C.weight_decay(w).item() == pytest.approx(closed, rel=1e-13)


@settings(max_examples=25, deadline=None)
@given(net=relu_nets(net_widths(depth=st.integers(2, 4), width=st.integers(1, 3), inputs=st.integers(1, 3)),
                     nonzero=True), p=ps)
def test_path_norm_minimizer_normalizes_and_balances(net, p):
    """After the construction every unit's incoming ℓ_p norm equals φ_p^{1/d} (numpy check), so
    μ_{p,∞}(w̃)^d = φ_p(w); and the function is unchanged."""
    w = R.rescale(net, C.path_norm_minimizer_scaling(net, p))
    d = net.depth
    for b in range(net.batch):
        phi = float(mp_path_norm_pow([W[b].tolist() for W in net.weights], p)) ** (1 / p)
        for W in w.weights:
            rows = np.sum(np.abs(W[b].numpy()) ** p, axis=1) ** (1 / p)
            np.testing.assert_allclose(rows, phi ** (1 / d), rtol=1e-12)
    x = torch.randn(4, net.widths[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(R.forward(w, x).value.numpy(), R.forward(net, x).value.numpy(), rtol=1e-12,
                               atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_random_rescalings_never_beat_the_path_norm(data):
    net = data.draw(relu_nets(net_widths(depth=st.integers(2, 3), width=st.integers(1, 3)), nonzero=True))
    s = data.draw(node_rescalings(net))
    w = R.rescale(net, s)
    phi = C.path_norm(net, 2).value
    assert bool((C.group_norm(w, 2, math.inf).value ** net.depth >= phi * (1 - 1e-12)).all())
    assert bool((C.layer_product(w, 2, math.inf).value >= phi * (1 - 1e-12)).all())


def test_layer_balancing_equalizes_layer_norms():
    net = R.random_net((3, 5, 2, 1), batch=2, generator=torch.Generator().manual_seed(2))
    for p, q in [(2, 2), (1, math.inf), (3, 1.5)]:
        w = R.rescale(net, C.layer_balancing_scaling(net, p, q))
        norms = np.array([[np.linalg.norm(np.linalg.norm(W[b].numpy(), ord=p, axis=1), ord=q)
                           for W in w.weights] for b in range(2)])
        gam = np.prod([[np.linalg.norm(np.linalg.norm(W[b].numpy(), ord=p, axis=1), ord=q)
                        for W in net.weights] for b in range(2)], axis=1)
        np.testing.assert_allclose(norms, np.broadcast_to((gam ** (1 / 3))[:, None], norms.shape), rtol=1e-12)


def test_spectral_product_matches_numpy():
    net = R.random_net((3, 5, 4, 2), batch=2, generator=torch.Generator().manual_seed(9))
    ref = [np.prod([np.linalg.norm(W[b].numpy(), 2) for W in net.weights]) for b in range(2)]
    sp = C.spectral_product(net)
    np.testing.assert_allclose(sp.value.numpy(), ref, rtol=1e-13)
    assert sp.rigorous and bool((sp.error > 0).all())


# ---------------------------------------------------------------------------------------------- margins


def test_margins_percentile_and_exploring_measures():
    g = torch.Generator().manual_seed(11)
    net = R.random_net((3, 6, 3), batch=2, generator=g)
    x = torch.randn(20, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (20,), generator=g)
    mg = C.margins(net, x, y).value
    for b in range(2):
        f = R.forward(net, x).value[b].numpy()
        ref = np.array([f[n, y[n]] - np.max(np.delete(f[n], y[n])) for n in range(20)])
        np.testing.assert_allclose(mg[b].numpy(), ref, rtol=1e-14)
        np.testing.assert_allclose(C.percentile_margin(net, x, y, 5)[b].item(), np.percentile(ref, 5), rtol=1e-13)
    # make the margin positive by using the net's own predictions as labels
    yb = R.forward(net, x).value[0].argmax(-1)
    meas = C.exploring_measures(net[0], x, yb)
    gam = np.percentile(C.margins(net[0], x, yb).value[0].numpy(), 5)
    Ws = [W[0].numpy() for W in net.weights]
    l1path = sum(abs(Ws[0][j, i] * Ws[1][o, j]) for i in range(3) for j in range(6) for o in range(3))
    assert meas["l1-path"].item() == pytest.approx((4 * l1path) ** 2 / gam**2, rel=1e-12)
    l2 = 16 * np.sum(Ws[0] ** 2) * np.sum(Ws[1] ** 2) / gam**2
    assert meas["l2"].item() == pytest.approx(l2, rel=1e-12)
    l2path = sum(16 * 6 * (Ws[0][j, i] * Ws[1][o, j]) ** 2 for i in range(3) for j in range(6) for o in range(3))
    assert meas["l2-path"].item() == pytest.approx(l2path / gam**2, rel=1e-12)
    spec = 6 * np.linalg.norm(Ws[0], 2) ** 2 * np.linalg.norm(Ws[1], 2) ** 2 / gam**2
    assert meas["spectral"].item() == pytest.approx(spec, rel=1e-12)


# ---------------------------------------------------------------------------------------------- sharpness


def test_alpha_sharpness_brackets_the_exact_vertex_maximum():
    """Depth 1, mse: L̂ is convex in w, so its max over the box is at a vertex: enumerate all 2^P vertices."""
    g = torch.Generator().manual_seed(13)
    W = torch.randn(1, 2, 3, generator=g, dtype=torch.float64)
    net = R.ReluNet((W,))
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    y = torch.randn(5, 2, generator=g, dtype=torch.float64)
    alpha = 0.05
    br = C.alpha_sharpness(net, x, y, alpha, kind="mse", seed=0)
    w = W.reshape(-1)
    r = alpha * (w.abs() + 1)
    base = R.loss(net, x, y, "mse").item()
    best = -math.inf
    for signs in itertools.product((-1.0, 1.0), repeat=w.numel()):
        v = w + r * torch.tensor(signs, dtype=torch.float64)
        best = max(best, R.loss(R.ReluNet((v.view(1, 2, 3),)), x, y, "mse").item())
    exact = (best - base) / (1 + base)
    assert br.lower.item() - br.rounding.item() <= exact
    assert br.upper.item() + br.rounding.item() >= exact
    # sign ascent may stop at a locally maximal vertex (convex maximization): it must still come close
    assert br.lower.item() >= 0.99 * exact


def test_alpha_sharpness_bracket_contains_random_feasible_points():
    g = torch.Generator().manual_seed(17)
    net = R.random_net((3, 4, 3), batch=2, generator=g)
    x = torch.randn(8, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (8,), generator=g)
    alpha = 0.01
    br = C.alpha_sharpness(net, x, y, alpha, seed=1)
    assert bool((br.lower <= br.upper).all())
    flat = R.flatten(net)
    base = R.loss(net, x, y, "ce").value
    for _ in range(50):
        t = torch.rand(flat.shape, generator=g, dtype=torch.float64) * 2 - 1
        v = flat + alpha * (flat.abs() + 1) * t
        zeta = (R.loss(R.unflatten(v, net.widths), x, y, "ce").value - base) / (1 + base)
        assert bool((zeta <= br.upper + br.rounding).all())


def test_relative_box_sharpness_is_rescaling_invariant_for_power_of_two():
    """With the box |ν_i| ≤ α|w_i| a power-of-two rescaling maps boxes onto boxes and sign ascent is
    equivariant, so the estimates agree bit for bit (independent of the implementation's details only
    through this symmetry)."""
    g = torch.Generator().manual_seed(19)
    net = R.random_net((3, 4, 3), batch=1, generator=g)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (6,), generator=g)
    w2 = R.rescale_node(net, 1, 2, 8.0)
    a = C.alpha_sharpness(net, x, y, 0.01, relative=True, seed=3)
    b = C.alpha_sharpness(w2, x, y, 0.01, relative=True, seed=3)
    assert a.lower.item() == pytest.approx(b.lower.item(), rel=1e-9, abs=1e-15)


def test_expected_sharpness_matches_gaussian_closed_form():
    """Depth 1, mse: E‖(W+N)x − y‖² = ‖Wx − y‖² + σ² n_out ‖x‖², so the expected sharpness is
    σ² n_out Σ_n ‖x_n‖² / (2m)."""
    g = torch.Generator().manual_seed(23)
    net = R.ReluNet((torch.randn(1, 2, 3, generator=g, dtype=torch.float64),))
    x = torch.randn(4, 3, generator=g, dtype=torch.float64)
    y = torch.randn(4, 2, generator=g, dtype=torch.float64)
    sigma = 0.1
    mean, se = C.expected_sharpness(net, x, y, sigma, kind="mse", samples=4000, seed=5)
    exact = sigma**2 * 2 * (x**2).sum().item() / (2 * 4)
    assert abs(mean.item() - exact) <= 5 * se.item()


def test_pac_bayes_kl_closed_form():
    net = R.random_net((3, 2, 1), batch=2, generator=torch.Generator().manual_seed(1))
    prior = R.random_net((3, 2, 1), batch=2, generator=torch.Generator().manual_seed(2))
    flat = R.flatten(net).numpy() - R.flatten(prior).numpy()
    np.testing.assert_allclose(C.pac_bayes_kl(net, 0.5, prior).numpy(), (flat**2).sum(1) / (2 * 0.25), rtol=1e-14)


# ---------------------------------------------------------------------------------------------- Rademacher


def test_rademacher_depth1_exact_enumeration_and_monte_carlo():
    g = torch.Generator().manual_seed(29)
    x = torch.randn(8, 5, generator=g, dtype=torch.float64)
    est, err, how = C.rademacher_linear_l1(x, phi=2.0)
    assert "exact" in how
    # independent: sup_{‖w‖_1≤φ} Σ ξ_i ⟨w, x_i⟩ by linear programming = φ max_j |Σ_i ξ_i x_ij| (vertices ±φe_j)
    xs = x.numpy()
    ref = np.mean([2.0 * np.max(np.abs(np.array(s) @ xs)) / 8 for s in itertools.product((-1, 1), repeat=8)])
    assert abs(est.item() - ref) <= err.item() + 1e-15
    mc, half, how = C.rademacher_linear_l1(x, phi=2.0, exact_up_to=0, samples=20000, seed=7)
    assert "Hoeffding" in how
    assert abs(mc.item() - ref) <= half.item()
    # Massart: R̂ ≤ φ √(2 log 2D / m) max ‖x‖_∞, below the weaker COLT'15 constant used by rademacher_bound
    bound = C.rademacher_bound(1, 2.0, x).value
    massart = 2.0 * math.sqrt(2 * math.log(10) / 8) * x.abs().max().item()
    assert ref <= massart <= bound.item()


def test_rademacher_search_values_are_attained_and_bounded():
    g = torch.Generator().manual_seed(31)
    x = torch.randn(10, 3, generator=g, dtype=torch.float64)
    xi = (torch.randint(0, 2, (4, 10), generator=g) * 2 - 1).to(torch.float64)
    vals = C.rademacher_search(x, xi, depth=2, width=6, steps=60, restarts=2, seed=11)
    assert vals.shape == (4,)
    # |f(x)| ≤ φ_1(w) ‖x‖_∞ for every bias-free ReLU net, so the normalized correlation ≤ mean_i ‖x_i‖_∞
    assert bool((vals <= x.abs().amax(dim=1).mean() * (1 + 1e-12)).all())
    assert bool((vals > 0).all())  # a single unit aligned with a positive-ξ point already beats 0


@pytest.mark.parametrize("depth", [2, 3])
def test_rademacher_lower_bound_is_exact_where_r_hat_is_known_and_refutes_planted_bounds(depth):
    """Closed forms: m = 1 gives R̂ = φ‖x‖_∞ (|f(x)| ≤ φ_1‖x‖_∞, attained by σ(±x_j)); two equal points give
    R̂ = φ‖x‖_∞/2 (ξ = ±(1, 1) contribute ‖x‖_∞ each, ξ = ±(1, −1) contribute 0).  A bound R̂/1.5 (wrong by 1.5×)
    must be refuted by the claim's comparison, the true R̂ and the paper's bound must pass."""
    from implreg import certify

    x1 = torch.tensor([[0.5, -1.75, 1.0]], dtype=torch.float64)
    x2 = torch.tensor([[0.25, -1.5], [0.25, -1.5]], dtype=torch.float64)
    for x, r_hat in ((x1, 1.75), (x2, 0.75)):
        low = C.rademacher_relu_lower(x, depth, phi=1.0, steps=20, restarts=2)
        assert low.level == 1.0 or low.search_gain == 0.0
        assert abs(low.lower - r_hat) <= low.rounding  # the lower bound is R̂ itself here
        certify.at_most(low.lower, C.rademacher_bound(depth, 1.0, x).item(), error=low.rounding, what="L ≤ B")
        with pytest.raises(AssertionError):
            certify.at_most(low.lower, r_hat / 1.5, error=low.rounding, what="planted bound R̂/1.5")


def test_rademacher_lower_bound_below_the_depth2_upper_bound():
    """Depth 2: sup_w Σξ_i f(x_i)/φ_1 = sup_{‖u‖_1≤1} |Σ ξ_i σ(u·x_i)| ≤ max over the positive (negative) ξ part,
    a convex function maximized at the vertices ±e_j: an independent upper bound on R̂ by exhaustive ξ."""
    g = torch.Generator().manual_seed(41)
    x = torch.rand(7, 3, generator=g, dtype=torch.float64) * 4 - 2
    low = C.rademacher_relu_lower(x, 2, steps=30, restarts=2)
    X = np.maximum(np.concatenate([x.numpy(), -x.numpy()], axis=1), 0)  # σ(±x_ij)
    ups = []
    for s in itertools.product((-1, 1), repeat=7):
        s = np.array(s)
        pos = X[s > 0].sum(0).max() if (s > 0).any() else 0.0
        neg = X[s < 0].sum(0).max() if (s < 0).any() else 0.0
        ups.append(max(pos, neg) / 7)
    upper = float(np.mean(ups))
    assert low.lower <= upper + low.rounding
    assert low.lower >= 0.5 * upper  # single-unit nets already reach half the upper bound on these points


def test_random_draws_do_not_depend_on_batch_mates():
    """Sharpness starts, Monte-Carlo signs and search inits are seeded per instance: alone = in a batch."""
    g = torch.Generator().manual_seed(37)
    nets = R.random_net((3, 4, 3), batch=3, generator=g)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (5,), generator=g)
    full = C.alpha_sharpness(nets, x, y, 0.01, seed=4, steps=10)
    alone = C.alpha_sharpness(nets[1], x, y, 0.01, seed=4, steps=10)
    assert full.lower[1].item() == pytest.approx(alone.lower[0].item(), rel=1e-12, abs=1e-15)
    xs = torch.randn(2, 20, 3, generator=g, dtype=torch.float64)
    est, _, _ = C.rademacher_linear_l1(xs, exact_up_to=0, samples=500, seed=1)
    est1, _, _ = C.rademacher_linear_l1(xs[1], exact_up_to=0, samples=500, seed=1)
    assert est[1].item() == pytest.approx(est1[0].item(), rel=1e-12)
    xi = (torch.randint(0, 2, (3, 20), generator=g) * 2 - 1).to(torch.float64)
    v = C.rademacher_search(xs[0], xi, 2, 4, steps=5, restarts=2, seed=2)
    v1 = C.rademacher_search(xs[0], xi[2:], 2, 4, steps=5, restarts=2, seed=2)
    assert v[2].item() == pytest.approx(v1[0].item(), rel=1e-12)


# ---------------------------------------------------------------------------------------------- exact rationals


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_exact_rescaling_preserves_the_function_and_forward_matches_float(data):
    """ρ_c with c > 0 leaves f unchanged exactly (Neyshabur et al. 2015, §3); a negative factor does not in
    general; and the exact forward pass agrees with the float64 one to rounding."""
    net = data.draw(relu_nets(widths=net_widths(), batch=1))  # depth 2–4, widths 1–4
    x = torch.randn(5, net.widths[0], generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99))),
                    dtype=torch.float64)
    s = data.draw(node_rescalings(net))
    Ws, xf = C.to_fractions(net, 0), C.rows_to_fractions(x)
    cs = C.scaling_to_fractions(s, 0)
    assert all(c > 0 for layer in cs for c in layer)
    f = C.forward_fractions(Ws, xf)
    assert C.forward_fractions(C.rescale_fractions(Ws, cs), xf) == f
    # the certified forward pass is within its rigorous bound of the exact one
    fc = R.forward(net, x)
    got, err = fc.value[0], fc.error[0]
    for n in range(5):
        for o, v in enumerate(f[n]):
            assert abs(Fraction(float(got[n, o])) - v) <= Fraction(float(err[n, o]))


def test_rescale_fractions_by_hand():
    """One hidden unit scaled by 2: incoming weights ×2, outgoing ÷2; a negative factor changes f."""
    W1 = [[Fraction(1), Fraction(-3)]]
    W2 = [[Fraction(5)]]
    out = C.rescale_fractions([W1, W2], [[Fraction(2)]])
    assert out == [[[Fraction(2), Fraction(-6)]], [[Fraction(5, 2)]]]
    x = [[Fraction(1), Fraction(0)]]
    assert C.forward_fractions([W1, W2], x) == C.forward_fractions(out, x) == [[Fraction(5)]]
    flipped = C.rescale_fractions([W1, W2], [[Fraction(-1)]])
    assert C.forward_fractions(flipped, x) == [[Fraction(0)]]  # σ(−1) = 0: ReLU is only positively homogeneous
    assert C.rows_to_fractions(torch.tensor([[0.5, -0.25]])) == [[Fraction(1, 2), Fraction(-1, 4)]]


# ---------------------------------------------------------------------------------------------- decisions


@settings(max_examples=20, deadline=None)
@given(net=relu_nets(net_widths(depth=st.integers(1, 4), width=st.just(1), inputs=st.just(1)), batch=(1, 2)),
       ks=layer_scales)
def test_phi1_ge_phi2_is_decided_exactly_at_a_single_path(net, ks):
    """One path: φ₁ = Π|w_e| = (Π w_e²)^{1/2} = φ₂ exactly, so ≥ and ≤ hold and > is refuted (an equality
    case that no error bound alone can decide; every nonzero value here is a product of ≤ 4 dyadics)."""
    from implreg.numerics import certify

    net = scaled(net, ks)
    phi1, phi2 = C.path_norm(net, 1), C.path_norm(net, 2)
    certify(phi1 >= phi2, "φ₁ ≥ φ₂")
    certify(phi1 <= phi2, "φ₁ ≤ φ₂")
    certify(phi1 == phi2, "φ₁ = φ₂")
    with pytest.raises(AssertionError, match="exactly equal"):
        certify(phi1 > phi2, "φ₁ > φ₂")
    certify(C.path_norm(net, 2) >= C.path_norm(net, 3), "φ₂ ≥ φ₃ (equal on one path; p = 3 is a cube root)")


def test_phi1_ge_phi2_strict_where_paths_add_and_refuted_when_reversed():
    """Two paths with |w| = (1, 1): φ₁ = 2 > φ₂ = √2 (decided by the float bounds) and φ₂ ≥ φ₁ is refuted."""
    from implreg.numerics import certify

    net = R.ReluNet((torch.ones(1, 2, 1, dtype=torch.float64), torch.ones(1, 1, 2, dtype=torch.float64)))
    certify(C.path_norm(net, 1) > C.path_norm(net, 2), "φ₁ > φ₂")
    with pytest.raises(AssertionError):
        certify(C.path_norm(net, 2) >= C.path_norm(net, 1), "φ₂ ≥ φ₁")


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_rescaling_invariance_is_decided_exactly_for_non_power_of_two_factors(data):
    """ρ_c with factors 2^e, e real: the float weights of rescale(net) are rounded, but rescale keeps the exact
    ρ_c(w), so φ_2(ρ(w))² = φ_2(w)² and f_{ρ(w)} = f_w are decided exactly (rationals), and a single-unit
    rescaling of weight decay is refuted."""
    from implreg.numerics import certify

    net = data.draw(relu_nets(net_widths(depth=st.integers(2, 3), width=st.integers(1, 3)), nonzero=True))
    s = data.draw(node_rescalings(net, log2_range=3.0))
    x = data.draw(inputs(net.widths[0], m=st.integers(1, 3)))
    w2 = R.rescale(net, s)
    certify(C.path_norm_pow(w2, 2) == C.path_norm_pow(net, 2), "φ₂(ρ(w))² = φ₂(w)²")
    certify(R.forward(w2, x) == R.forward(net, x), "f_ρ(w) = f_w")
    single = R.rescale_node(net, 1, 0, 3.0)
    with pytest.raises(AssertionError):
        certify(C.weight_decay(single) == C.weight_decay(net), "WD(ρ(w)) = WD(w)")


# ---------------------------------------------------------------------------------------------- construction bounds


def _mp_rescaled(net, s, b):
    """ρ_ĉ(w) of net b at 60 digits, the float factors ĉ taken exactly (the product c_k/c_{k−1} is exact there)."""
    d, out = net.depth, []
    for k, W in enumerate(net.weights, start=1):
        head = s.factors[k - 1][b].tolist() if k < d else [1.0] * W.shape[1]
        tail = s.factors[k - 2][b].tolist() if k > 1 else [1.0] * W.shape[2]
        out.append([[mp_of(w) * mp_of(head[i]) / mp_of(tail[j]) for j, w in enumerate(row)]
                    for i, row in enumerate(W[b].tolist())])
    return out


@settings(max_examples=25, deadline=None)
@given(net=relu_nets(net_widths(depth=st.integers(2, 4), width=st.integers(1, 3), outputs=st.integers(1, 2)),
                     batch=(1, 2), nonzero=True), p=ps)
def test_path_norm_minimizer_error_bounds_the_constructed_rescaling(net, p):
    """|μ_{p,∞}(ρ_ĉ(w))^d − t| ≤ bound·t at 60 digits (t = max_o φ_p^{(o)}, the exact minimum value)."""
    s = C.path_norm_minimizer_scaling(net, p)
    bound = C.path_norm_minimizer_error(net, p)
    with mpmath.workdps(60):
        for b in range(net.batch):
            Ws = [W[b].tolist() for W in net.weights]
            t = max(mpmath.fsum(tv for path, tv in _path_terms(Ws, p) if path[-1] == o) for o in range(len(Ws[-1])))
            t = mp_root(t, p)
            mu = max(mp_root(mpmath.fsum(abs(w) ** p for w in row), p) for W in _mp_rescaled(net, s, b) for row in W)
            assert abs(mu**net.depth - t) <= mpmath.mpf(bound[b].item()) * t


@settings(max_examples=25, deadline=None)
@given(net=relu_nets(net_widths(depth=st.integers(1, 4), width=st.integers(1, 3), outputs=st.integers(1, 2)),
                     batch=(1, 2), nonzero=True), p=st.sampled_from([1.0, 2.0, 3.0]),
       q=st.sampled_from([1.0, 2.0, 1.5, math.inf]))
def test_layer_balancing_error_bounds_the_balanced_layer_norms(net, p, q):
    """max_k |‖W̃_k‖_{p,q} − γ^{1/d}| ≤ bound·γ^{1/d} at 60 digits, W̃ = ρ_ĉ(w) with the float factors ĉ."""
    s = C.layer_balancing_scaling(net, p, q)
    bound = C.layer_balancing_error(net, p, q)

    def norm(W):
        rows = [mp_root(mpmath.fsum(abs(mp_of(w)) ** p for w in row), p) for row in W]
        return max(rows) if math.isinf(q) else mp_root(mpmath.fsum(r**q for r in rows), q)

    with mpmath.workdps(60):
        for b in range(net.batch):
            g = mp_root(mpmath.fprod(norm(W[b].tolist()) for W in net.weights), net.depth)
            for Wt in _mp_rescaled(net, s, b):
                assert abs(norm(Wt) - g) <= mpmath.mpf(bound[b].item()) * g


def test_rpow_takes_the_exponent_exactly():
    """x^{1/3} of 2^66 is 2^22 exactly: rpow's enclosure contains it (a plain x ** (1/3) does not), and the
    zero base gives an exact 0."""
    from implreg.numerics import Certified, certify

    x = Certified.exact(torch.tensor([2.0**66, 0.0, 5.0], dtype=torch.float64))
    r = C.rpow(x, 1.0, 3.0)
    with mpmath.workdps(60):
        refs = [mpmath.mpf(2) ** 22, mpmath.mpf(0), mpmath.cbrt(5)]
    _covers(r, refs, "x^{1/3}")
    certify(r[0] == 2.0**22, "cube root of 2^66")
    certify(r[1] == 0.0, "cube root of 0")
