"""Hypothesis strategies for ReLU nets together with data: supervised instances by construction.

    training_instances(negative=False)   → TrainingInstance(net, scaling, x (m, n_0), y (m, n_d), lr)
    labelled_nets()                      → (a depth-2 net, inputs x (m, n_0), class labels y (m,)), hidden
                                            unit 0 active on x_0

Nets, rescalings and inputs come from ``implreg.strategies.relu`` (so they shrink the same way).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from hypothesis import strategies as st

from implreg.relu.network import NodeScaling, ReluNet, activate_unit
from implreg.strategies.relu import inputs, net_widths, node_rescalings, relu_nets

__all__ = ["TrainingInstance", "labelled_nets", "training_instances"]


class TrainingInstance(NamedTuple):
    """A regression problem for a batch of nets and a rescaling of them: ``pathsgd.step_commutes_exactly(*inst)``."""

    net: ReluNet
    scaling: NodeScaling
    x: torch.Tensor
    y: torch.Tensor
    lr: float


@st.composite
def training_instances(draw, *, negative: bool = False) -> TrainingInstance:
    """1–3 nets of depth 2–3 (widths ≤ 3, 1–3 inputs, 1–2 outputs), one rescaling per net with factors ±2^e,
    |e| ≤ 4 (``negative``: all c < 0), 1–4 inputs and regression targets in [−2, 2], a step size η ∈ {0.5, 0.1,
    0.01}."""
    net = draw(relu_nets(net_widths(depth=(2, 3), width=(1, 3), inputs=(1, 3), outputs=(1, 2)), batch=(1, 3)))
    s = draw(node_rescalings(net, log2_range=4.0, negative=negative))
    x = draw(inputs(net.widths[0], m=(1, 4)))
    y = draw(inputs(net.widths[-1], m=x.shape[0]))
    return TrainingInstance(net, s, x, y, draw(st.sampled_from([0.5, 0.1, 0.01])))


@st.composite
def labelled_nets(draw) -> tuple[ReluNet, torch.Tensor, torch.Tensor]:
    """One depth-2 net (1–4 hidden units, 1–3 inputs, 2–3 classes), 2–6 inputs with x_0 ≠ 0 and class labels;
    hidden unit 0 is made active on x_0 (``relu.activate_unit``)."""
    net = draw(relu_nets(net_widths(depth=st.just(2), width=st.integers(1, 4), inputs=st.integers(1, 3),
                                    outputs=st.integers(2, 3))))
    x = draw(inputs(net.widths[0], m=st.integers(2, 6)).filter(lambda t: bool((t[0] != 0).any())))
    y = torch.tensor(draw(st.lists(st.integers(0, net.widths[-1] - 1), min_size=len(x), max_size=len(x))))
    return activate_unit(net, 0, x[0]), x, y
