"""Tests of implreg.relu.pathsgd (and implreg.relu.synthetic) against independent computations: autograd of a
brute-force path norm for γ_e = ∂φ_2²/∂(w_e²), exact rational steps written here, closed forms.

Tolerances.  γ_e from autograd of the enumerated φ_2² vs two passes: both are sums of ≤ P positive products,
rounding ≤ (P + 2d)·eps relative ≈ 1e-13 for P ≤ 500; we allow rtol 1e-11.  Step bounds are tested against
exact rationals with no slack.
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from implreg.errors import InvalidInputError
from implreg.relu import network as R
from implreg.relu import pathsgd as PS
from implreg.relu import synthetic as S
from implreg.strategies.relu import inputs, net_widths, node_rescalings, relu_nets

SETTINGS = settings(max_examples=25, deadline=None)
small = net_widths(depth=st.integers(2, 3), width=st.integers(1, 3), inputs=st.integers(1, 3),
                   outputs=st.integers(1, 2))


def phi2_squared_by_paths(weights: list[torch.Tensor]) -> torch.Tensor:
    """Σ_paths Π w_e² for one net (tensors (n_k, n_{k−1})), by enumeration — differentiable."""
    widths = [weights[0].shape[1]] + [W.shape[0] for W in weights]
    tot = torch.zeros((), dtype=weights[0].dtype)
    for path in itertools.product(*(range(n) for n in widths)):
        term = torch.ones((), dtype=weights[0].dtype)
        for k, W in enumerate(weights):
            term = term * W[path[k + 1], path[k]] ** 2
        tot = tot + term
    return tot


@SETTINGS
@given(net=relu_nets(small, nonzero=True))
def test_scaling_is_derivative_of_path_norm_wrt_squared_weights(net):
    """γ_e = ∂φ_2²/∂(w_e²) = (∂φ_2²/∂w_e)/(2w_e) by autograd of the enumerated path norm (w_e ≠ 0)."""
    ws = [W[0].clone().requires_grad_(True) for W in net.weights]
    phi2_squared_by_paths(ws).backward()
    gam = PS.path_sgd_scaling(net)
    brute = PS.path_sgd_scaling_brute(net)
    for W, G, B_ in zip(ws, gam, brute, strict=True):
        ref = (W.grad / (2 * W.detach())).numpy()
        np.testing.assert_allclose(G.value[0].numpy(), ref, rtol=1e-11)
        np.testing.assert_allclose(B_.value[0].numpy(), ref, rtol=1e-11)


@SETTINGS
@given(net=relu_nets(small))
def test_certified_scaling_error_bound_holds_exactly(net):
    Ws = [[[Fraction(v) for v in row] for row in W[0].tolist()] for W in net.weights]
    widths = net.widths
    gam = [G.value for G in PS.path_sgd_scaling(net)]
    eb = [G.error for G in PS.path_sgd_scaling(net)]
    for k in range(net.depth):
        for i in range(widths[k + 1]):
            for j in range(widths[k]):
                ex = Fraction(0)
                for path in itertools.product(*(range(n) for n in widths)):
                    if path[k] == j and path[k + 1] == i:
                        t = Fraction(1)
                        for kk, W in enumerate(Ws):
                            if kk != k:
                                t *= W[path[kk + 1]][path[kk]] ** 2
                        ex += t
                assert abs(Fraction(gam[k][0, i, j].item()) - ex) <= Fraction(eb[k][0, i, j].item())


def autograd_mse(ws, x, y):
    h = x
    for k, W in enumerate(ws):
        h = h @ W.T
        if k < len(ws) - 1:
            h = torch.relu(h)
    return 0.5 * ((h - y) ** 2).sum() / x.shape[0]


def test_path_sgd_step_is_gradient_over_scaling():
    g = torch.Generator().manual_seed(0)
    net = R.random_net((3, 4, 2), batch=1, generator=g)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    y = torch.randn(6, 2, generator=g, dtype=torch.float64)
    ws = [W[0].clone().requires_grad_(True) for W in net.weights]
    autograd_mse(ws, x, y).backward()
    # γ_in / γ_out by hand for depth 2: γ_e for W1[j,i] = Σ_o W2[o,j]²; for W2[o,j] = Σ_i W1[j,i]²
    W1, W2 = net.weights[0][0], net.weights[1][0]
    g1 = (W2**2).sum(0)[:, None].expand_as(W1)
    g2 = (W1**2).sum(1)[None, :].expand_as(W2)
    new = PS.path_sgd_step(net, x, y, 0.1)
    np.testing.assert_allclose(new.weights[0][0].numpy(), (W1 - 0.1 * ws[0].grad / g1).numpy(), rtol=1e-12)
    np.testing.assert_allclose(new.weights[1][0].numpy(), (W2 - 0.1 * ws[1].grad / g2).numpy(), rtol=1e-12)
    sgd = PS.sgd_step(net, x, y, 0.1)
    np.testing.assert_allclose(sgd.weights[0][0].numpy(), (W1 - 0.1 * ws[0].grad).numpy(), rtol=1e-12)


def frac_step(Ws, x, y, lr, method):
    """Exact Path-SGD / SGD step written here: gradient by the path formula, γ_e by path enumeration."""
    d = len(Ws)
    widths = [len(Ws[0][0])] + [len(W) for W in Ws]
    paths = list(itertools.product(*(range(n) for n in widths)))
    m = len(x)

    def zs_of(xn):
        h, zs = list(xn), []
        for k, W in enumerate(Ws):
            z = [sum((w * hi for w, hi in zip(row, h, strict=True)), Fraction(0)) for row in W]
            zs.append(z)
            h = [max(v, Fraction(0)) for v in z] if k < d - 1 else z
        return zs

    G = [[[Fraction(0)] * widths[k] for _ in range(widths[k + 1])] for k in range(d)]
    for xn, yn in zip(x, y, strict=True):
        zs = zs_of(xn)
        r = [a - b for a, b in zip(zs[-1], yn, strict=True)]
        for p in paths:
            if any(zs[k][p[k + 1]] <= 0 for k in range(d - 1)):
                continue
            for k in range(d):
                prod = Fraction(1)
                for j in range(d):
                    if j != k:
                        prod *= Ws[j][p[j + 1]][p[j]]
                G[k][p[k + 1]][p[k]] += r[p[d]] * prod * xn[p[0]] / m
    out = []
    for k in range(d):
        rows = []
        for i in range(widths[k + 1]):
            row = []
            for j in range(widths[k]):
                if method == "sgd":
                    row.append(Ws[k][i][j] - lr * G[k][i][j])
                    continue
                gam = Fraction(0)
                for p in paths:
                    if p[k] == j and p[k + 1] == i:
                        t = Fraction(1)
                        for kk in range(d):
                            if kk != k:
                                t *= Ws[kk][p[kk + 1]][p[kk]] ** 2
                        gam += t
                row.append(Ws[k][i][j] - (lr * G[k][i][j] / gam if gam else 0))
            rows.append(row)
        out.append(rows)
    return out


@settings(max_examples=20, deadline=None)
@given(data=st.data(), method=st.sampled_from(["path-sgd", "sgd"]))
def test_step_error_bound_holds_exactly_and_exact_step_matches(data, method):
    net = data.draw(relu_nets(small))
    x = data.draw(inputs(net.widths[0], m=st.integers(1, 3)))
    y = data.draw(inputs(net.widths[-1], m=x.shape[0]))
    lr = 0.25
    step = PS.path_sgd_step if method == "path-sgd" else PS.sgd_step
    new = step(net, x, y, lr)
    bounds, amb = PS.step_error_bound(net, x, y, lr, method)
    Ws = [[[Fraction(v) for v in row] for row in W[0].tolist()] for W in net.weights]
    xf = [[Fraction(v) for v in row] for row in x.tolist()]
    yf = [[Fraction(v) for v in row] for row in y.tolist()]
    ex = frac_step(Ws, xf, yf, Fraction(lr), method)
    lib_exact = (PS.path_sgd_step_exact if method == "path-sgd" else PS.sgd_step_exact)(Ws, xf, yf, Fraction(lr))
    assert lib_exact == ex
    if bool(amb[0]):
        return
    for k in range(net.depth):
        for i, row in enumerate(ex[k]):
            for j, v in enumerate(row):
                assert abs(Fraction(new.weights[k][0, i, j].item()) - v) <= Fraction(bounds[k][0, i, j].item())


@SETTINGS
@given(data=st.data())
def test_path_sgd_commutes_with_power_of_two_rescalings_bit_for_bit(data):
    net = data.draw(relu_nets(small, batch=(1, 2)))
    s = data.draw(node_rescalings(net, powers_of_two=True))
    x = data.draw(inputs(net.widths[0]))
    y = data.draw(inputs(net.widths[-1], m=x.shape[0]))
    a = R.rescale(PS.path_sgd_step(net, x, y, 0.1), s)
    b = PS.path_sgd_step(R.rescale(net, s), x, y, 0.1)
    assert all(torch.equal(u, v) for u, v in zip(a.weights, b.weights, strict=True))


def test_sgd_does_not_commute_with_rescaling():
    # f = v σ(u x), x = 1, y = 0: ∂L/∂u = v·(uv) and ∂L/∂v = u·(uv); with u = v = 1, c = 2, η = 0.1:
    # ρ(step(w)) has u = 2(1 − 0.1) = 1.8, step(ρ(w)) has u = 2 − 0.1·(1/2) = 1.95.
    one = torch.ones(1, 1, 1, dtype=torch.float64)
    net = R.ReluNet((one, one))
    x = torch.ones(1, 1, dtype=torch.float64)
    y = torch.zeros(1, 1, dtype=torch.float64)
    a = R.rescale_node(PS.sgd_step(net, x, y, 0.1), 1, 0, 2.0)
    b = PS.sgd_step(R.rescale_node(net, 1, 0, 2.0), x, y, 0.1)
    assert a.weights[0].item() == pytest.approx(1.8)
    assert b.weights[0].item() == pytest.approx(1.95)
    pa = R.rescale_node(PS.path_sgd_step(net, x, y, 0.1), 1, 0, 2.0)
    pb = PS.path_sgd_step(R.rescale_node(net, 1, 0, 2.0), x, y, 0.1)
    assert pa.weights[0].item() == pytest.approx(pb.weights[0].item(), rel=1e-15)


def test_zero_scaling_edges_do_not_move():
    W1 = torch.tensor([[[0.0, 0.0], [1.0, 2.0]]], dtype=torch.float64)  # hidden unit 0 has no input weight
    W2 = torch.tensor([[[3.0, 1.0]]], dtype=torch.float64)
    net = R.ReluNet((W1, W2))
    x = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    new = PS.path_sgd_step(net, x, torch.zeros(1, 1, dtype=torch.float64), 0.1)
    assert bool(torch.isfinite(new.weights[0]).all())
    assert new.weights[1][0, 0, 0].item() == 3.0  # γ_e = γ_in(unit 0) = 0: no update


def test_train_full_batch_equals_repeated_steps_and_minibatches_are_reproducible():
    g = torch.Generator().manual_seed(5)
    net = R.random_net((3, 5, 1), batch=2, generator=g)
    x = torch.randn(12, 3, generator=g, dtype=torch.float64)
    y = R.forward(R.random_net((3, 4, 1), generator=g), x).value[0]  # teacher-net targets
    traj = PS.train(net, x, y, method="path-sgd", lr=0.05, steps=4)
    cur = net
    for _ in range(4):
        cur = PS.path_sgd_step(cur, x, y, 0.05)
    assert all(torch.equal(a, b) for a, b in zip(traj.final.weights, cur.weights, strict=True))
    assert traj.steps == (0, 1, 2, 3, 4) and traj.losses.shape == (2, 5)
    t1 = PS.train(net, x, y, method="sgd", lr=0.05, steps=5, batch_size=4, generator=torch.Generator().manual_seed(1))
    t2 = PS.train(net, x, y, method="sgd", lr=0.05, steps=5, batch_size=4, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(t1.final.weights, t2.final.weights, strict=True))
    ad = PS.train(net, x, y, method="adam", lr=0.01, steps=200)
    assert bool((ad.losses[:, -1] < ad.losses[:, 0]).all())
    with pytest.raises(InvalidInputError):
        PS.train(net, x, y, method="newton")


def test_train_until_loss_stops_early():
    g = torch.Generator().manual_seed(6)
    data = S.gaussian_mixture(20, 10, 4, classes=2, separation=4.0, generator=g)
    net = R.random_net((4, 32, 2), batch=1, generator=g)
    traj = PS.train(net, data.x_train, data.y_train, method="adam", lr=0.01, steps=5000, kind="ce",
                    until_loss=0.05, record_every=100)
    assert traj.losses[0, -1].item() < 0.05
    assert traj.steps[-1] < 5000


def test_synthetic_data_shapes_balance_and_determinism():
    a = S.gaussian_mixture(30, 10, 5, classes=3, generator=torch.Generator().manual_seed(1))
    b = S.gaussian_mixture(30, 10, 5, classes=3, generator=torch.Generator().manual_seed(1))
    assert a.x_train.shape == (30, 5) and a.y_test.shape == (10,)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    counts = torch.bincount(torch.cat([a.y_train, a.y_test]), minlength=3)
    assert counts.max() - counts.min() <= 1
    t = S.teacher_classification(40, 10, (4, 8, 3), generator=torch.Generator().manual_seed(2))
    assert t.classes == 3 and int(t.y_train.max()) <= 2
    r = S.random_labels(t.y_train, 3, generator=torch.Generator().manual_seed(3))
    assert r.shape == t.y_train.shape and int(r.min()) >= 0 and int(r.max()) <= 2
    with pytest.raises(InvalidInputError):
        S.gaussian_mixture(10, 0, 3, classes=1)


def test_step_commutes_exactly_closed_form():
    """f = w₂σ(w₁x), x = 1, y = 0, η = ½, w = (1, 1), ρ: c = 2 on the hidden unit.  By hand: SGD gives
    step(w) = (½, ½), ρ(step(w)) = (1, ¼) but step(ρ(w)) = (7/4, −½); Path-SGD (γ_{w₁} = w₂², γ_{w₂} = w₁²)
    gives step(ρ(w)) = (1, ¼) = ρ(step(w))."""
    one = torch.ones(1, 1, 1, dtype=torch.float64)
    net = R.ReluNet((one, one))
    s = R.NodeScaling((torch.full((1, 1), 2.0, dtype=torch.float64),))
    x, y = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    w_ok, f_ok = PS.step_commutes_exactly(net, s, x, y, 0.5, "path-sgd")
    assert bool(w_ok.all()) and bool(f_ok.all())
    w_bad, _ = PS.step_commutes_exactly(net, s, x, y, 0.5, "sgd")
    assert not bool(w_bad.any())
    # float64 gaps: exactly 0 for Path-SGD with a power-of-two factor, nonzero for SGD
    assert bool((PS.rescaled_training_gaps(net, s, x, y, 0.1, 5) == 0).all())
    assert bool((PS.rescaled_training_gaps(net, s, x, y, 0.1, 5, "sgd")[:, -1] > 0).all())
