"""Hypothesis strategies for ReLU nets and their rescalings: valid instances by construction.

    net_widths(depth=..., width=..., inputs=..., outputs=...)   → (n_0, …, n_d); each an int, (lo, hi) or strategy
    relu_nets(widths=net_widths(...) or (3, 4, 1), batch=(1, 3), nonzero=True)   → ReluNet (float64)
    node_rescalings(net)                     → NodeScaling with factors 2^e, e ∈ [−log2_range, log2_range]
    single_node_rescalings(net)              → ρ_{c,v} for one drawn hidden unit v
    layer_rescalings(net)                    → whole-layer rescaling of one drawn hidden layer
    rescaled_nets(widths, single=False)      → (net, a rescaling of it: every unit, one unit, or one layer)
    inputs(n0, m=...)                        → a (m, n0) tensor
    group_norm_exponents()                   → (p, q) for μ_{p,q}: p ∈ {1, 2, 3}, q ∈ {p, 2p, ∞} ∪ [1, 4]
    factor_pairs()                           → (U, V), the two layers of a depth-2 linear net M = UVᵀ

Weights are drawn entry by entry from Hypothesis floats, so failures shrink to small readable nets (zero,
one, small integers); magnitudes below TINY = 2⁻²⁰ are snapped to 0 (no underflow, see TINY).
``nonzero=True`` draws magnitudes in [1/8, 2] with a sign, which guarantees that every hidden unit has
nonzero incoming weights (needed where a claim normalizes units).  Rescaling factors
are 2^e with e a drawn float: always positive, shrinking towards c = 1 (e = 0), and exactly powers of two
when ``powers_of_two=True`` (then every rescaling is exact in floating point).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from implreg.errors import InvalidInputError
from implreg.harness.claims import batches
from implreg.relu.network import NodeScaling, ReluNet

__all__ = [
    "TINY",
    "factor_pairs",
    "group_norm_exponents",
    "inputs",
    "layer_rescalings",
    "net_widths",
    "node_rescalings",
    "relu_nets",
    "rescaled_nets",
    "scaling_exponents",
    "single_node_rescalings",
    "weights",
]


TINY = 2.0**-20
"""Drawn weights and inputs are 0 or of magnitude ≥ TINY, so that no product of the few factors along a path
(≤ 16 factors, powers p ≤ 4) leaves float64's normal range: the rounding bounds assume no underflow."""


def _snap(w: float) -> float:
    return 0.0 if abs(w) < TINY else w


def weights(*, nonzero: bool = False, bound: float = 2.0) -> st.SearchStrategy[float]:
    """One weight: a float in [−bound, bound], 0 or of magnitude ≥ TINY (no NaN/∞/subnormals), or
    ±[1/8, bound] when ``nonzero``."""
    if nonzero:
        mag = st.floats(0.125, bound, allow_subnormal=False)
        return st.tuples(st.booleans(), mag).map(lambda t: -t[1] if t[0] else t[1])
    return st.floats(-bound, bound, allow_nan=False, allow_infinity=False, allow_subnormal=False).map(_snap)


Size = st.SearchStrategy[int] | tuple[int, int] | int


def _size(s: Size) -> st.SearchStrategy[int]:
    """A strategy as given, a range (lo, hi) as the integers lo … hi, an int as itself."""
    if isinstance(s, st.SearchStrategy):
        return s
    if isinstance(s, tuple) and len(s) == 2 and all(isinstance(v, numbers.Integral) for v in s):
        return st.integers(int(s[0]), int(s[1]))
    if isinstance(s, numbers.Integral) and not isinstance(s, bool):
        return st.just(int(s))
    hint = "; for a net's input width pass net.widths[0]" if hasattr(s, "widths") else ""
    raise InvalidInputError(f"a size must be an int, a range (lo, hi) or a strategy of ints, got "
                            f"{type(s).__name__}{hint}")


def net_widths(
    *, depth: Size = (2, 4), width: Size = (1, 4), inputs: Size = (1, 4), outputs: Size = 1,
) -> st.SearchStrategy[tuple[int, ...]]:
    """(n_0, n_1, …, n_d): ``depth`` weight layers (default 2 … 4), hidden widths from ``width`` (default
    1 … 4), n_0 from ``inputs`` (default 1 … 4), n_d from ``outputs`` (default 1); each an int, an inclusive
    range (lo, hi) or a strategy."""
    depth, width, inputs, outputs = _size(depth), _size(width), _size(inputs), _size(outputs)

    @st.composite
    def draw_widths(draw) -> tuple[int, ...]:
        d = draw(depth)
        hidden = [draw(width) for _ in range(d - 1)]
        return (draw(inputs), *hidden, draw(outputs))

    return draw_widths()


@st.composite
def relu_nets(
    draw,
    widths: st.SearchStrategy[tuple[int, ...]] | Sequence[int] | None = None,
    *,
    batch: int | tuple[int, int] = 1,
    nonzero: bool = False,
    bound: float = 2.0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> ReluNet:
    """A batch of bias-free ReLU nets with common widths; weights drawn entrywise (see module docstring).

    ``batch`` is a fixed size or a range (min, max): the nets are drawn as a ``claims.batches`` batch, so a failing
    batch shrinks by deleting nets down to the single net that fails, and in a claim run the harness counts every
    net as an instance (no ``evidence.instances`` call needed) and redraws batches that repeat a net.
    """
    if widths is None:
        widths = net_widths()
    ws = draw(widths) if isinstance(widths, st.SearchStrategy) else tuple(widths)
    lo, hi = (int(batch), int(batch)) if isinstance(batch, int) else (int(batch[0]), int(batch[1]))
    elems = weights(nonzero=nonzero, bound=bound)
    one = st.tuples(*(hnp.arrays(np.float64, (ws[k], ws[k - 1]), elements=elems) for k in range(1, len(ws))))
    nets = draw(batches(one, min_size=lo, max_size=hi))
    mats = [torch.from_numpy(np.stack([n[k] for n in nets])).to(dtype=dtype, device=device) for k in range(len(ws) - 1)]
    return ReluNet(tuple(mats))


def scaling_exponents(
    log2_range: float = 3.0, *, powers_of_two: bool = False
) -> st.SearchStrategy[float]:
    """e ∈ [−log2_range, log2_range] (an integer when ``powers_of_two``); the factor is c = 2^e."""
    if powers_of_two:
        r = int(log2_range)
        return st.integers(-r, r).map(float)
    return st.floats(-log2_range, log2_range, allow_subnormal=False)


@st.composite
def node_rescalings(
    draw, net: ReluNet, *, log2_range: float = 3.0, powers_of_two: bool = False, negative: bool = False
) -> NodeScaling:
    """A factor c_v = ±2^{e_v} for every hidden unit of every net in the batch (``negative``: all c < 0)."""
    sign = -1.0 if negative else 1.0
    exps = scaling_exponents(log2_range, powers_of_two=powers_of_two)
    fs = []
    for n in net.widths[1:-1]:
        arr = draw(hnp.arrays(np.float64, (net.batch, n), elements=exps))
        fs.append(sign * torch.from_numpy(np.exp2(arr)).to(dtype=net.dtype, device=net.device))
    return NodeScaling(tuple(fs))


@st.composite
def single_node_rescalings(
    draw, net: ReluNet, *, log2_range: float = 3.0, powers_of_two: bool = False, negative: bool = False,
    min_log2: float = 0.0,
) -> NodeScaling:
    """ρ_{c,v}: one hidden unit v (same for the batch) and one factor c = ±2^e per net, |e| ≥ ``min_log2``."""
    layer = draw(st.integers(1, net.depth - 1))
    unit = draw(st.integers(0, net.widths[layer] - 1))
    exps = scaling_exponents(log2_range, powers_of_two=powers_of_two)
    if min_log2 > 0:
        exps = exps.filter(lambda e: abs(e) >= min_log2)
    e = np.array([draw(exps) for _ in range(net.batch)])
    c = torch.from_numpy(np.exp2(e)).to(dtype=net.dtype, device=net.device)
    return NodeScaling.single(net, layer, unit, -c if negative else c)


@st.composite
def layer_rescalings(draw, net: ReluNet, *, log2_range: float = 3.0, powers_of_two: bool = False) -> NodeScaling:
    """Whole-layer rescaling W_i ↦ cW_i, W_{i+1} ↦ W_{i+1}/c of one drawn hidden layer i, c = 2^e per net."""
    layer = draw(st.integers(1, net.depth - 1))
    exps = scaling_exponents(log2_range, powers_of_two=powers_of_two)
    c = torch.from_numpy(np.exp2(np.array([draw(exps) for _ in range(net.batch)]))).to(net.dtype)
    return NodeScaling.whole_layer(net, layer, c.to(net.device))


def inputs(
    n0: Size, *, m: Size = (1, 6), bound: float = 2.0,
    dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
) -> st.SearchStrategy[torch.Tensor]:
    """A data matrix x of shape (m, n0) (m and n0 each an int, a range (lo, hi) or a strategy; m default 1 … 6)
    with entries in [−bound, bound]."""
    elems = weights(bound=bound)
    shapes = st.tuples(_size(m), _size(n0))
    return shapes.flatmap(lambda s: hnp.arrays(np.float64, s, elements=elems)).map(
        lambda a: torch.from_numpy(a).to(dtype=dtype, device=device)
    )


def group_norm_exponents() -> st.SearchStrategy[tuple[int, float]]:
    """(p, q) for μ_{p,q}: p ∈ {1, 2, 3} and q ∈ {p, 2p, ∞} (q/p an integer or q = ∞: rational quantities) or a
    real q ∈ [1, 4]."""
    return st.sampled_from([1, 2, 3]).flatmap(lambda p: st.tuples(st.just(p), st.one_of(
        st.sampled_from([float(p), 2.0 * p, math.inf]), st.floats(1.0, 4.0))))


@st.composite
def factor_pairs(draw, *, size: Size = (1, 4)) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, V): U (n×k), V (m×k), float64, entries from ``weights()`` (in [−2, 2], 0 or of magnitude ≥ TINY), n, m and
    k each from ``size`` (default 1 … 4): the two layers of a depth-2 linear net, M = UVᵀ."""
    n, m, k = draw(_size(size)), draw(_size(size)), draw(_size(size))
    U, V = (draw(hnp.arrays(np.float64, (r, k), elements=weights())) for r in (n, m))
    return torch.from_numpy(U), torch.from_numpy(V)


@st.composite
def rescaled_nets(
    draw, widths: st.SearchStrategy[tuple[int, ...]] | Sequence[int] | None = None, *,
    batch: int | tuple[int, int] = (1, 3), single: bool = False, layer: bool = False, nonzero: bool = False,
    log2_range: float = 4.0,
) -> tuple[ReluNet, NodeScaling]:
    """(nets, a positive rescaling): a factor 2^e per hidden unit, |e| ≤ ``log2_range``; with ``single`` one
    hidden unit only, |e| ≥ 1 and nonzero weights (so the rescaling visibly moves non-invariant measures); with
    ``layer`` one whole hidden layer (``layer_rescalings``)."""
    net = draw(relu_nets(widths, batch=batch, nonzero=nonzero or single))
    if single:
        return net, draw(single_node_rescalings(net, log2_range=log2_range, min_log2=1.0))
    return net, draw((layer_rescalings if layer else node_rescalings)(net, log2_range=log2_range))
