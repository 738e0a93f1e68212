"""Tests of implreg.relu.network against independent computations: numpy forward passes, exact rational arithmetic
(every float64 is a dyadic rational), and torch autograd on a separately written loss.

Tolerances.  Forward passes are compared with numpy at 1e-12 relative to Σ|W||h| magnitudes (both are
float64 evaluations of the same sums, differing by summation order: ≤ 2γ_n ≈ 1e-15 relative, so 1e-12
is loose on purpose).  The error *bounds* are tested against exact rationals with no tolerance at all.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from implreg.errors import InvalidInputError
from implreg.relu import capacity as C
from implreg.relu import network as R
from implreg.strategies.relu import inputs, net_widths, node_rescalings, relu_nets

SETTINGS = settings(max_examples=30, deadline=None)
small_nets = relu_nets(net_widths(depth=st.integers(1, 3), width=st.integers(1, 3), inputs=st.integers(1, 3),
                                  outputs=st.integers(1, 2)), batch=(1, 2))


def np_forward(Ws: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    """f(x) for one net, rows of x are inputs (independent numpy version)."""
    h = x
    for k, W in enumerate(Ws):
        z = h @ W.T
        h = np.maximum(z, 0.0) if k < len(Ws) - 1 else z
    return h


def frac_forward(Ws, x):
    """Exact pre-activations of every layer for one input row (lists of Fractions)."""
    h, zs = [Fraction(v) for v in x], []
    for k, W in enumerate(Ws):
        z = [sum((Fraction(w) * hi for w, hi in zip(row, h, strict=True)), Fraction(0)) for row in W]
        zs.append(z)
        h = [max(zi, Fraction(0)) for zi in z] if k < len(Ws) - 1 else z
    return zs


def net_np(net: R.ReluNet, b: int) -> list[np.ndarray]:
    return [W[b].numpy() for W in net.weights]


# ---------------------------------------------------------------------------------------------- forward


@SETTINGS
@given(data=st.data())
def test_forward_matches_numpy(data):
    net = data.draw(small_nets)
    x = data.draw(inputs(net.widths[0]))
    out = R.forward(net, x)
    assert out.shape == (net.batch, x.shape[0], net.widths[-1])
    for b in range(net.batch):
        ref = np_forward(net_np(net, b), x.numpy())
        np.testing.assert_allclose(out.value[b].numpy(), ref, rtol=1e-12, atol=1e-12)


@SETTINGS
@given(data=st.data(), scale=st.integers(-40, 40))
def test_certified_forward_error_bound_holds_exactly(data, scale):
    """|f̂ − f| ≤ error for every output, f computed exactly in rationals; weights scaled by 2^scale (exact)
    so tiny and huge magnitudes are drawn; the rescaled net's bound covers the exact rescaling ρ_c(w)."""
    net = data.draw(small_nets).map(lambda W: W * 2.0**scale)
    x = data.draw(inputs(net.widths[0], m=st.integers(1, 3)))
    s = data.draw(node_rescalings(net)) if net.depth >= 2 else None
    for w in [net] + ([R.rescale(net, s)] if s is not None else []):
        f = R.forward(w, x)
        assert f.rigorous
        for b in range(net.batch):
            Ws = C.to_fractions(net, b)
            if w is not net:  # ρ_c(w) exactly, the float factors taken as exact rationals
                Ws = C.rescale_fractions(Ws, C.scaling_to_fractions(s, b))
            for n, row in enumerate(x.tolist()):
                for o, zv in enumerate(frac_forward(Ws, row)[-1]):
                    assert abs(Fraction(f.value[b, n, o].item()) - zv) <= Fraction(f.error[b, n, o].item())


def test_forward_accepts_batched_inputs_and_checks_shapes():
    net = R.random_net((3, 4, 2), batch=2, generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    out = R.forward(net, x).value
    for b in range(2):
        np.testing.assert_allclose(out[b].numpy(), np_forward(net_np(net, b), x[b].numpy()), rtol=1e-13)
    with pytest.raises(InvalidInputError, match="shape"):
        R.forward(net, torch.zeros(5, 4, dtype=torch.float64))
    with pytest.raises(InvalidInputError, match="float32"):
        R.forward(net, torch.zeros(5, 3, dtype=torch.float32))


def test_bad_nets_are_rejected_with_clear_errors():
    W = torch.zeros(1, 2, 3, dtype=torch.float64)
    with pytest.raises(InvalidInputError, match="columns"):
        R.ReluNet((W, torch.zeros(1, 1, 3, dtype=torch.float64)))
    with pytest.raises(InvalidInputError, match="NaN"):
        R.ReluNet((torch.full((1, 2, 2), float("nan"), dtype=torch.float64),))
    with pytest.raises(InvalidInputError, match="batch"):
        R.ReluNet((W, torch.zeros(2, 1, 2, dtype=torch.float64)))
    with pytest.raises(InvalidInputError):
        R.ReluNet(())
    with pytest.raises(InvalidInputError, match="widths"):
        R.random_net((3,))


# ---------------------------------------------------------------------------------------------- rescaling


@SETTINGS
@given(data=st.data())
def test_positive_rescaling_leaves_function_unchanged(data):
    net = data.draw(small_nets.filter(lambda n: n.depth >= 2))
    s = data.draw(node_rescalings(net))
    x = data.draw(inputs(net.widths[0]))
    a, b = R.forward(net, x), R.forward(R.rescale(net, s), x)
    # both certify the same exact function, so their enclosures must overlap
    assert bool(((a.value - b.value).abs() <= a.error + b.error).all())


@SETTINGS
@given(data=st.data())
def test_power_of_two_rescaling_is_bit_exact(data):
    net = data.draw(small_nets.filter(lambda n: n.depth >= 2))
    s = data.draw(node_rescalings(net, powers_of_two=True))
    x = data.draw(inputs(net.widths[0]))
    assert torch.equal(R.forward(net, x).value, R.forward(R.rescale(net, s), x).value)
    back = R.rescale(R.rescale(net, s), s.inverse())
    assert all(torch.equal(a, b) for a, b in zip(back.weights, net.weights, strict=True))


def test_negative_factor_changes_the_function():
    # f(x) = 1·σ(1·x); rescaling the hidden unit by c = −1 gives (−1)·σ(−x): f(1) = 1 becomes 0.
    net = R.ReluNet((torch.ones(1, 1, 1, dtype=torch.float64), torch.ones(1, 1, 1, dtype=torch.float64)))
    x = torch.ones(1, 1, dtype=torch.float64)
    neg = R.rescale_node(net, 1, 0, -1.0)
    assert R.forward(net, x).item() == 1.0
    assert R.forward(neg, x).item() == 0.0
    assert not bool(R.NodeScaling.single(net, 1, 0, -1.0).is_positive.all())


def test_rescale_matches_its_definition():
    g = torch.Generator().manual_seed(3)
    net = R.random_net((2, 3, 4, 2), batch=2, generator=g)
    c1 = torch.tensor([[2.0, 0.5, 3.0], [1.0, 4.0, 0.25]], dtype=torch.float64)
    c2 = torch.tensor([[1.5, 2.0, 0.5, 1.0], [3.0, 1.0, 1.0, 0.5]], dtype=torch.float64)
    out = R.rescale(net, R.NodeScaling((c1, c2)))
    W1, W2, W3 = (W.numpy() for W in net.weights)
    for b in range(2):
        D1, D2 = np.diag(c1[b].numpy()), np.diag(c2[b].numpy())
        np.testing.assert_allclose(out.weights[0][b].numpy(), D1 @ W1[b], rtol=1e-15)
        np.testing.assert_allclose(out.weights[1][b].numpy(), D2 @ W2[b] @ np.linalg.inv(D1), rtol=1e-15)
        np.testing.assert_allclose(out.weights[2][b].numpy(), W3[b] @ np.linalg.inv(D2), rtol=1e-15)


def test_single_whole_layer_and_layer_factor_scalings():
    g = torch.Generator().manual_seed(4)
    net = R.random_net((2, 3, 3, 1), batch=1, generator=g)
    s = R.rescale_node(net, 2, 1, 4.0)
    assert torch.equal(s.weights[1][0, 1], 4.0 * net.weights[1][0, 1])
    assert torch.equal(s.weights[2][0, :, 1], net.weights[2][0, :, 1] / 4.0)
    assert torch.equal(s.weights[0], net.weights[0])
    lay = R.rescale_layer(net, 1, 2.0)
    assert torch.equal(lay.weights[0], 2.0 * net.weights[0])
    assert torch.equal(lay.weights[1], net.weights[1] / 2.0)
    assert torch.equal(lay.weights[2], net.weights[2])
    a = torch.tensor([[2.0, 4.0]], dtype=torch.float64)
    la = R.rescale(net, R.NodeScaling.from_layer_factors(net, a))
    assert torch.equal(la.weights[0], 2.0 * net.weights[0])
    assert torch.equal(la.weights[1], 4.0 * net.weights[1])
    assert torch.equal(la.weights[2], net.weights[2] / 8.0)
    with pytest.raises(InvalidInputError, match="hidden layer"):
        R.rescale_node(net, 3, 0, 2.0)
    with pytest.raises(InvalidInputError, match="NodeScaling"):
        R.rescale(net, R.NodeScaling((torch.ones(1, 3, dtype=torch.float64),)))


def test_compose_and_inverse():
    g = torch.Generator().manual_seed(5)
    net = R.random_net((2, 3, 2, 1), batch=2, generator=g)
    s = R.NodeScaling((torch.full((2, 3), 2.0, dtype=torch.float64), torch.full((2, 2), 0.5, dtype=torch.float64)))
    t = R.NodeScaling((torch.full((2, 3), 4.0, dtype=torch.float64), torch.full((2, 2), 8.0, dtype=torch.float64)))
    a = R.rescale(R.rescale(net, t), s)
    b = R.rescale(net, s.compose(t))
    assert all(torch.equal(x, y) for x, y in zip(a.weights, b.weights, strict=True))


# ---------------------------------------------------------------------------------------------- gradients


def autograd_loss(weights, x, y, kind):
    """Separately written loss on a list of (B, n_k, n_{k−1}) tensors, for autograd."""
    h = x.expand(weights[0].shape[0], *x.shape)
    for k, W in enumerate(weights):
        h = h @ W.transpose(1, 2)
        if k < len(weights) - 1:
            h = torch.relu(h)
    if kind == "mse":
        return 0.5 * ((h - y) ** 2).sum(dim=(1, 2)) / x.shape[0]
    return torch.nn.functional.cross_entropy(h.transpose(1, 2), y.expand(h.shape[0], -1), reduction="none").mean(1)


@pytest.mark.parametrize("kind", ["mse", "ce"])
def test_closed_form_gradients_match_autograd(kind):
    g = torch.Generator().manual_seed(7)
    net = R.random_net((3, 5, 4, 3), batch=3, generator=g)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    y = torch.randn(6, 3, generator=g, dtype=torch.float64) if kind == "mse" else torch.tensor([0, 1, 2, 1, 0, 2])
    val, grads = R.loss_and_grads(net, x, y, kind)
    ws = [W.clone().requires_grad_(True) for W in net.weights]
    ref = autograd_loss(ws, x, y, kind)
    ref.sum().backward()
    np.testing.assert_allclose(val.numpy(), ref.detach().numpy(), rtol=1e-13)
    for G, W in zip(grads, ws, strict=True):
        np.testing.assert_allclose(G.numpy(), W.grad.numpy(), rtol=1e-11, atol=1e-14)
    cert = R.loss(net, x, y, kind)
    np.testing.assert_allclose(cert.value.numpy(), ref.detach().numpy(), rtol=1e-13)
    assert bool(((cert.value - ref.detach()).abs() <= cert.error + 1e-15 * ref.detach().abs()).all())


def frac_grads(Ws, x, y):
    """Exact mse gradient by the path formula ∂L/∂w_e = (1/m) Σ_n Σ_o r_no Σ_{active paths p ∋ e, p → o}
    Π_{e' ≠ e} w_e' · x_{n, i(p)}: independent of backpropagation."""
    import itertools

    d = len(Ws)
    widths = [len(Ws[0][0])] + [len(W) for W in Ws]
    m = len(x)
    G = [[[Fraction(0)] * widths[k] for _ in range(widths[k + 1])] for k in range(d)]
    for xn, yn in zip(x, y, strict=True):
        zs = frac_forward(Ws, xn)
        r = [zo - Fraction(t) for zo, t in zip(zs[-1], yn, strict=True)]
        for path in itertools.product(*(range(n) for n in widths)):
            if any(zs[k][path[k + 1]] <= 0 for k in range(d - 1)):
                continue  # some hidden unit on the path is inactive (σ'(0) = 0)
            ws = [Fraction(Ws[k][path[k + 1]][path[k]]) for k in range(d)]
            for k in range(d):
                prod = Fraction(1)
                for j in range(d):
                    if j != k:
                        prod *= ws[j]
                G[k][path[k + 1]][path[k]] += r[path[d]] * prod * Fraction(xn[path[0]]) / m
    return G


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_gradient_error_bound_holds_exactly(data):
    net = data.draw(relu_nets(net_widths(depth=st.integers(1, 3), width=st.integers(1, 3),
                                         inputs=st.integers(1, 2), outputs=st.integers(1, 2))))
    x = data.draw(inputs(net.widths[0], m=st.integers(1, 3)))
    y = data.draw(inputs(net.widths[-1], m=x.shape[0]))
    _, grads = R.loss_and_grads(net, x, y)
    bounds, ambiguous = R.grad_error_bound(net, x, y)
    if bool(ambiguous[0]):
        return  # the float mask may be wrong there; the bound is documented as void
    G = frac_grads([W[0].tolist() for W in net.weights], x.tolist(), y.tolist())
    for k in range(net.depth):
        for i, row in enumerate(G[k]):
            for j, gex in enumerate(row):
                assert abs(Fraction(grads[k][0, i, j].item()) - gex) <= Fraction(bounds[k][0, i, j].item())


def test_flatten_roundtrip():
    net = R.random_net((3, 2, 4, 1), batch=2, generator=torch.Generator().manual_seed(1))
    flat = R.flatten(net)
    assert flat.shape == (2, net.num_params)
    back = R.unflatten(flat, net.widths)
    assert all(torch.equal(a, b) for a, b in zip(back.weights, net.weights, strict=True))
    with pytest.raises(InvalidInputError):
        R.unflatten(flat[:, :-1], net.widths)


def test_gamma_and_unit_roundoff():
    assert R.unit_roundoff(torch.float64) == 2.0**-53
    assert R.gamma(10, torch.float64) == pytest.approx(10 * 2.0**-53, rel=1e-12)
    with pytest.raises(InvalidInputError):
        R.gamma(2**60, torch.float64)
