"""ReLU-net helpers for supervised instances: ``relu.activate_unit`` makes the unit active (checked in exact
rationals) and touches nothing else; ``NodeScaling.nearest_powers_of_two`` gives powers of two whose rescaling is
exact in float64; the ``strategies.relu_data`` instances have the promised shapes, signs and active unit."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from implreg.errors import InvalidInputError
from implreg.relu import network as R
from implreg.strategies.relu import inputs, net_widths, relu_nets
from implreg.strategies.relu_data import labelled_nets, training_instances

SETTINGS = settings(max_examples=40, deadline=None)


def _dot(r: list[float], x: list[float]) -> Fraction:
    return sum(Fraction(a) * Fraction(b) for a, b in zip(r, x, strict=True))


@SETTINGS
@given(data=st.data())
def test_activate_unit_makes_the_unit_active_and_keeps_the_rest(data):
    net = data.draw(relu_nets(net_widths(depth=st.integers(2, 3), width=st.integers(1, 3)), batch=(1, 3)))
    x0 = data.draw(inputs(net.widths[0], m=1).filter(lambda t: bool((t != 0).any())))[0]
    unit = data.draw(st.integers(0, net.widths[1] - 1))
    out = R.activate_unit(net, unit, x0)
    for b in range(net.batch):
        assert _dot(out.weights[0][b, unit].tolist(), x0.tolist()) > 0
        if _dot(net.weights[0][b, unit].tolist(), x0.tolist()) > 0:  # already active: unchanged
            assert torch.equal(out.weights[0][b, unit], net.weights[0][b, unit])
    keep = torch.ones(net.widths[1], dtype=torch.bool)
    keep[unit] = False
    assert torch.equal(out.weights[0][:, keep], net.weights[0][:, keep])
    assert all(torch.equal(a, b) for a, b in zip(out.weights[1:], net.weights[1:], strict=True))


def test_activate_unit_cases_by_hand():
    net = R.ReluNet((torch.tensor([[[1.0, -1.0], [-2.0, 0.0], [3.0, 3.0]]], dtype=torch.float64),
                     torch.ones(1, 1, 3, dtype=torch.float64)))
    x0 = torch.tensor([1.0, 1.0], dtype=torch.float64)
    assert R.activate_unit(net, 0, x0).weights[0][0, 0].tolist() == [2.0, 0.0]   # r·x0 = 0 → r + x0
    assert R.activate_unit(net, 1, x0).weights[0][0, 1].tolist() == [2.0, 0.0]   # r·x0 < 0 → −r
    assert R.activate_unit(net, 2, x0).weights[0][0, 2].tolist() == [3.0, 3.0]   # active: unchanged
    with pytest.raises(InvalidInputError):
        R.activate_unit(net, 0, torch.zeros(2, dtype=torch.float64))
    with pytest.raises(InvalidInputError):
        R.activate_unit(net, 3, x0)


def test_nearest_powers_of_two_rescale_exactly():
    c = torch.tensor([[3.0, 0.7, 2.0**-5, 1.4]], dtype=torch.float64)
    s = R.NodeScaling((c,)).nearest_powers_of_two()
    assert s.factors[0].tolist() == [[4.0, 0.5, 2.0**-5, 1.0]]
    net = R.random_net((2, 4, 1), 1, generator=torch.Generator().manual_seed(1))
    w = R.rescale(net, s)
    assert torch.equal(w.weights[0], net.weights[0] * s.factors[0][:, :, None])   # exact: no rounding at all
    assert torch.equal(w.weights[1] * s.factors[0][:, None, :], net.weights[1])


@SETTINGS
@given(inst=training_instances(), neg=training_instances(negative=True))
def test_training_instances_shapes_and_signs(inst, neg):
    net, s, x, y, lr = inst
    assert (inst.net, inst.scaling, inst.x, inst.y, inst.lr) == (net, s, x, y, lr)  # a NamedTuple
    assert 2 <= net.depth <= 3 and 1 <= net.batch <= 3 and lr in (0.5, 0.1, 0.01)
    assert x.shape == (x.shape[0], net.widths[0]) and 1 <= x.shape[0] <= 4 and y.shape == (x.shape[0], net.widths[-1])
    assert bool(s.is_positive.all())
    assert all(bool((c < 0).all()) for c in neg[1].factors)


@SETTINGS
@given(inst=labelled_nets())
def test_labelled_nets_have_unit_zero_active_on_x0(inst):
    net, x, y = inst
    assert net.depth == 2 and net.batch == 1 and 2 <= net.widths[-1] <= 3
    assert y.dtype == torch.int64 and y.shape == (x.shape[0],) and bool(((y >= 0) & (y < net.widths[-1])).all())
    assert _dot(net.weights[0][0, 0].tolist(), x[0].tolist()) > 0
