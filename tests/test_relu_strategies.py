"""The ReLU strategies produce valid instances by construction: shapes, finiteness, positivity of rescaling
factors, powers of two when asked, nonzero magnitudes, one rescaled unit for single-node rescalings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from implreg.harness.claims import REGISTRY, claim, get_spec
from implreg.harness.verdict import run_claim
from implreg.relu import network as R
from implreg.strategies.relu import (
    TINY,
    factor_pairs,
    group_norm_exponents,
    inputs,
    layer_rescalings,
    net_widths,
    node_rescalings,
    relu_nets,
    rescaled_nets,
    single_node_rescalings,
)

SETTINGS = settings(max_examples=40, deadline=None)


@SETTINGS
@given(data=st.data())
def test_relu_nets_have_the_drawn_widths_and_valid_weights(data):
    ws = data.draw(net_widths(depth=st.integers(1, 4), width=st.integers(1, 5), outputs=st.integers(1, 3)))
    net = data.draw(relu_nets(ws, batch=(1, 3)))
    assert net.widths == ws and 1 <= net.batch <= 3
    assert net.dtype == torch.float64
    for W in net.weights:
        assert bool(torch.isfinite(W).all()) and bool((W.abs() <= 2).all())
        nz = W[W != 0]
        assert bool((nz.abs() >= TINY).all())


@SETTINGS
@given(net=relu_nets(nonzero=True, bound=3.0))
def test_nonzero_nets_have_magnitudes_in_range(net):
    for W in net.weights:
        assert bool((W.abs() >= 0.125).all()) and bool((W.abs() <= 3.0).all())


@SETTINGS
@given(data=st.data())
def test_node_rescalings_are_positive_and_shaped(data):
    net = data.draw(relu_nets(net_widths(depth=st.integers(2, 4)), batch=(1, 3)))
    s = data.draw(node_rescalings(net, log2_range=2.0))
    assert len(s.factors) == net.depth - 1
    for c, n in zip(s.factors, net.widths[1:-1], strict=True):
        assert c.shape == (net.batch, n)
        assert bool((c >= 0.25).all()) and bool((c <= 4.0).all())
    assert bool(s.is_positive.all())
    neg = data.draw(node_rescalings(net, negative=True))
    assert not bool(neg.is_positive.any())


@SETTINGS
@given(data=st.data())
def test_power_of_two_rescalings_are_exact_powers(data):
    net = data.draw(relu_nets(net_widths(depth=st.integers(2, 3))))
    s = data.draw(node_rescalings(net, powers_of_two=True))
    for c in s.factors:
        for v in c.flatten().tolist():
            mant, _ = math.frexp(v)
            assert mant == 0.5


@SETTINGS
@given(data=st.data())
def test_single_node_and_layer_rescalings(data):
    net = data.draw(relu_nets(net_widths(depth=st.integers(2, 4)), batch=(1, 2)))
    s = data.draw(single_node_rescalings(net, min_log2=1.0))
    changed = [(k, j) for k, c in enumerate(s.factors) for j in range(c.shape[1]) if bool((c[:, j] != 1).any())]
    assert len(changed) == 1
    k, j = changed[0]
    c = s.factors[k][:, j]
    assert bool(((c >= 2) | (c <= 0.5)).all())
    lay = data.draw(layer_rescalings(net))
    rows = [c for c in lay.factors if bool((c != 1).any())]
    assert len(rows) <= 1
    for c in rows:
        assert bool((c == c[:, :1]).all())
    R.rescale(net, s)  # applies without error


@SETTINGS
@given(data=st.data())
def test_inputs_shape(data):
    x = data.draw(inputs(3, m=st.integers(2, 5)))
    assert x.ndim == 2 and x.shape[1] == 3 and 2 <= x.shape[0] <= 5 and x.dtype == torch.float64


@SETTINGS
@given(data=st.data())
def test_sizes_as_ranges_and_strategies(data):
    ws = data.draw(net_widths(depth=(1, 3), width=(2, 3), inputs=2, outputs=st.just(4)))
    assert 2 <= len(ws) <= 4 and ws[0] == 2 and ws[-1] == 4 and all(2 <= w <= 3 for w in ws[1:-1])
    x = data.draw(inputs((1, 3), m=(2, 4)))
    assert 2 <= x.shape[0] <= 4 and 1 <= x.shape[1] <= 3


@SETTINGS
@given(pq=group_norm_exponents(), pair=factor_pairs(size=(1, 3)))
def test_group_norm_exponents_and_factor_pairs(pq, pair):
    p, q = pq
    assert p in (1, 2, 3) and (q in (p, 2 * p, math.inf) or 1.0 <= q <= 4.0)
    U, V = pair
    assert U.dtype == V.dtype == torch.float64 and U.shape[1] == V.shape[1] and max(*U.shape, *V.shape) <= 3
    assert bool(((U.abs() <= 2) & ((U == 0) | (U.abs() >= TINY))).all())


@SETTINGS
@given(data=st.data())
def test_rescaled_nets_by_unit_and_by_layer(data):
    widths = net_widths(depth=(2, 3))
    net, s = data.draw(rescaled_nets(widths, single=True))
    assert sum(int((c != 1).any(dim=0).sum()) for c in s.factors) == 1  # one hidden unit
    net, s = data.draw(rescaled_nets(widths, layer=True))
    rows = [c for c in s.factors if bool((c != 1).any())]
    assert len(rows) <= 1 and all(bool((c == c[:, :1]).all()) for c in rows)  # one whole layer
    net, s = data.draw(rescaled_nets(widths))
    assert len(s.factors) == net.depth - 1 and bool(s.is_positive.all())


def test_relu_nets_count_every_net_as_an_instance():
    """relu_nets draws its batch as a claims.batches batch: a claim run counts each net, with no
    evidence.instances call."""
    with REGISTRY.isolated():
        @claim("test/relu-instances", statement="every net of a batch is an instance.", max_examples=5)
        @given(inst=rescaled_nets(net_widths(depth=2), batch=3))
        def counted(inst):
            assert inst[0].batch == 3

        r = run_claim(get_spec(counted), profile="ci")
    assert r["verdict"] == "holds", r["explanation"]
    assert r["hypothesis"]["valid"] >= 1 and r["instances"] == 3 * r["hypothesis"]["valid"]


def test_a_size_that_is_not_a_size_is_named():
    """inputs(net) instead of inputs(net.widths[0]) was 'int() argument must be … not ReluNet'."""
    from implreg.errors import InvalidInputError
    from implreg.relu.network import random_net
    from implreg.strategies.relu import inputs

    net = random_net((2, 3, 1), batch=1)
    with pytest.raises(InvalidInputError, match=r"got ReluNet; for a net's input width pass net\.widths\[0\]"):
        inputs(net)
    with pytest.raises(InvalidInputError, match="got float"):
        inputs(2.5)
    assert inputs(np.int64(2), m=(1, 2)).example().shape[1] == 2
