"""Claims from Path-SGD (Neyshabur, Salakhutdinov & Srebro, NIPS 2015, arXiv 1506.02617), collected in
Neyshabur's thesis (arXiv 1709.01953): CLAIMS.md 16 (node rescaling preserves the function), 23 (Path-SGD
is rescaling-invariant, SGD is not) and 24 (the Path-SGD scaling by two passes).  Section numbers are as
reconstructed, not confirmed against the published PDF.

Tolerances (every float check in this module).  An identity a = b holds in exact arithmetic; the computed
â, b̂ carry rounding errors bounded by E (derived per quantity in implreg.relu / implreg.pathsgd:
running error analysis, |fl(Σ_n a_j b_j) − Σ a_j b_j| ≤ γ_n Σ|a_j||b_j|, first order, ×1.01).  Equality is
not decidable in floating point; the strongest statement float64 certifies is |a − b| ≤ tol with
tol = 2E: if the identity holds then |â − b̂| ≤ E, so |â − b̂| + E < tol and the check passes, and it
fails (refutes) only when |â − b̂| > 3E, a violation three times the worst-case rounding.  Where the
quantities are rational (every float64 is a dyadic rational and these maps use + − × ÷ only) the same
instance is also decided *exactly* in rational arithmetic (``fractions.Fraction``), which needs no tolerance.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch
from hypothesis import given
from hypothesis import strategies as st

from implreg import certify, evidence
from implreg import pathsgd as PS
from implreg import relu as R
from implreg.capacity import (
    forward_fractions,
    rescale_fractions,
    rows_to_fractions,
    scaling_to_fractions,
    to_fractions,
)
from implreg.claims import Source, claim
from implreg.errors import InvalidInputError
from implreg.strategies.relu import inputs, net_widths, node_rescalings, relu_nets

PATH_SGD = Source(
    key="neyshabur-2015-pathsgd",
    title="Path-SGD: Path-Normalized Optimization in Deep Neural Networks",
    authors="B. Neyshabur, R. Salakhutdinov, N. Srebro",
    year=2015,
    arxiv="1506.02617",
    venue="NIPS 2015",
)

U = R.unit_roundoff(torch.float64)
# A rescaled weight fl(fl(c_v w)/c_u) is within two roundings of the exact ρ(w): relative 2u (≤ γ_2).
RESCALE_REL = 2 * U


# ---------------------------------------------------------------------------------------------- helpers


def _ratio(s: R.NodeScaling, net: R.ReluNet, k: int) -> torch.Tensor:
    """c_k / c_{k−1} broadcast to W_k's shape (the factor ρ applies to layer k), c_0 = c_d = 1."""
    B, d = net.batch, net.depth
    head = s.factors[k - 1] if k < d else torch.ones(B, net.widths[k], dtype=net.dtype)
    tail = s.factors[k - 2] if k > 1 else torch.ones(B, net.widths[k - 1], dtype=net.dtype)
    return head[:, :, None] / tail[:, None, :]


@st.composite
def training_instances(draw, *, negative: bool = False):
    """A batch of small nets, one positive node rescaling per net, inputs x (m, n_0), targets y (m, n_d)."""
    net = draw(relu_nets(net_widths(depth=st.integers(2, 3), width=st.integers(1, 3), inputs=st.integers(1, 3),
                                    outputs=st.integers(1, 2)), batch=(1, 3)))
    s = draw(node_rescalings(net, log2_range=4.0, negative=negative))
    x = draw(inputs(net.widths[0], m=st.integers(1, 4)))
    y = draw(inputs(net.widths[-1], m=x.shape[0]))
    lr = draw(st.sampled_from([0.5, 0.1, 0.01]))
    return net, s, x, y, lr


# ---------------------------------------------------------------------------------------------- claim 16


def _function_unchanged(net: R.ReluNet, s: R.NodeScaling, x: torch.Tensor) -> None:
    evidence.instances(net.batch)
    w2 = R.rescale(net, s)
    a, b = R.forward(net, x), R.forward(w2, x)
    # f̂(w) and f̂(ρ̂ w) approximate the same exact f (for c > 0): |â − b̂| ≤ E(w) + E(ρ̂ w; ε_w = 2u)
    err = R.forward_error_bound(net, x)[-1] + R.forward_error_bound(w2, x, RESCALE_REL)[-1]
    certify.close(b, a, tol=2 * err, error=err, what="f_{ρ(w)}(x) vs f_w(x) (float64, tol = 2×rounding bound)")
    # exact: the same instance in rational arithmetic, ρ applied exactly with the drawn factors
    same = []
    for i in range(net.batch):
        Ws = to_fractions(net, i)
        xf = rows_to_fractions(x)
        rescaled = rescale_fractions(Ws, scaling_to_fractions(s, i))
        same.append(forward_fractions(Ws, xf) == forward_fractions(rescaled, xf))
    certify.that(torch.tensor(same), what="f_{ρ(w)}(x) = f_w(x) in exact rational arithmetic")


@claim(
    "neyshabur-2015-pathsgd/rescaling-preserves-function",
    source=PATH_SGD.at("§3 (rescaling and unbalanceness)", confirmed=False),
    kind="proposition",
    expect="holds",
    statement=r"Node rescaling of any hidden units by factors $c > 0$ (incoming weights $\times c$, outgoing "
    r"$\times 1/c$) leaves the function computed by a bias-free ReLU network unchanged.",
    latex=r"c_v > 0 \;\forall v \;\Rightarrow\; f_{\rho_c(w)}(x) = f_w(x)\quad\forall x",
    hypotheses=["bias-free layered ReLU net, depth 2–3, widths ≤ 3, 1–2 outputs",
                "one factor c_v = 2ᵉ > 0 per hidden unit, e ∈ [−4, 4]", "1–4 inputs in [−2, 2]ⁿ⁰"],
    max_examples=40,
)
@given(inst=training_instances())
def rescaling_preserves_function(inst):
    net, s, x, _, _ = inst
    _function_unchanged(net, s, x)


@claim(
    "neyshabur-2015-pathsgd/negative-rescaling-preserves-function",
    source=PATH_SGD.at("§3 (rescaling and unbalanceness)", confirmed=False),
    kind="conjecture",
    expect="refuted",
    statement=r"Negative control: node rescaling by factors $c < 0$ leaves the function unchanged "
    r"(false: $\sigma(cz) = c\,\sigma(z)$ needs $c \ge 0$).",
    latex=r"c_v < 0 \;\Rightarrow\; f_{\rho_c(w)} = f_w",
    hypotheses=["as the positive claim, with every factor −2ᵉ < 0"],
    max_examples=40,
)
@given(inst=training_instances(negative=True))
def negative_rescaling_preserves_function(inst):
    net, s, x, _, _ = inst
    _function_unchanged(net, s, x)


# ---------------------------------------------------------------------------------------------- claim 23


def _step_commutes(inst, method: str, *, trajectories: bool = True) -> None:
    """One step in float64 (tol = 2×bound) and exactly; with ``trajectories`` also 2 exact steps and 10
    bit-exact float64 steps under power-of-two factors (the negative control needs only the one step)."""
    net, s, x, y, lr = inst
    evidence.instances(net.batch)
    step = PS.path_sgd_step if method == "path-sgd" else PS.sgd_step
    w2 = R.rescale(net, s)
    A = R.rescale(step(net, x, y, lr), s)  # ρ(step(w))
    B = step(w2, x, y, lr)  # step(ρ(w))
    eA, ambA = PS.step_error_bound(net, x, y, lr, method)
    eB, ambB = PS.step_error_bound(w2, x, y, lr, method, weight_rel_err=RESCALE_REL)
    float_ok = ~(ambA | ambB)  # nets whose ReLU masks are certified: the float bounds apply
    for k in range(1, net.depth + 1):
        # ρ applied to the computed step: exact factor c_k/c_{k−1} times its error, plus two roundings
        err = _ratio(s, net, k) * eA[k - 1] + RESCALE_REL * A.weights[k - 1].abs() + eB[k - 1]
        if bool(float_ok.any()):
            certify.close(B.weights[k - 1][float_ok], A.weights[k - 1][float_ok], tol=2 * err[float_ok],
                          error=err[float_ok], what=f"layer {k}: step(ρ(w)) vs ρ(step(w)) (float64)")
    # exact, every net (and the only decision where a mask was not certified in float)
    exact_step = PS.path_sgd_step_exact if method == "path-sgd" else PS.sgd_step_exact
    xf, yf, eta = rows_to_fractions(x), rows_to_fractions(y), Fraction(lr)
    same, same2 = [], []
    for i in range(net.batch):
        Ws, cs = to_fractions(net, i), scaling_to_fractions(s, i)
        one = exact_step(Ws, xf, yf, eta)
        two = exact_step(rescale_fractions(Ws, cs), xf, yf, eta)
        same.append(rescale_fractions(one, cs) == two)
        if trajectories:  # two steps: both trajectories compute the same function (on the training inputs)
            same2.append(forward_fractions(exact_step(one, xf, yf, eta), xf)
                         == forward_fractions(exact_step(two, xf, yf, eta), xf))
    certify.that(torch.tensor(same), what="step(ρ(w)) = ρ(step(w)) in exact rational arithmetic")
    if not trajectories:
        return
    certify.that(torch.tensor(same2), what="2-step trajectories from w and ρ(w) compute the same function (exact)")
    # k steps in float64 with power-of-two factors (exact scalings commute with every IEEE operation):
    # bit-identical functions after 10 steps
    s2 = R.NodeScaling(tuple(torch.exp2(torch.round(torch.log2(c))) for c in s.factors))
    a, b = net, R.rescale(net, s2)
    for _ in range(10):
        a, b = step(a, x, y, lr), step(b, x, y, lr)
    certify.that(torch.equal(R.forward(a, x), R.forward(b, x)),
                 what="10-step float64 trajectories from w and ρ(w), ρ by powers of two: bit-identical functions")


@claim(
    "neyshabur-2015-pathsgd/path-sgd-rescaling-invariant",
    source=PATH_SGD.at("§4, Path-SGD update (eq. as reconstructed)", confirmed=False),
    kind="proposition",
    expect="holds",
    statement=r"The Path-SGD update $w_e \leftarrow w_e - \eta\,(\partial L/\partial w_e)/\gamma_e(w)$, with "
    r"$\gamma_e = \gamma_{\mathrm{in}}(u)\,\gamma_{\mathrm{out}}(v)$ from the squared weights, commutes with every "
    r"positive node rescaling $\rho$: $\mathrm{step}(\rho(w)) = \rho(\mathrm{step}(w))$; hence trajectories from "
    r"$w$ and from $\rho(w)$ compute the same functions.",
    latex=r"\mathrm{step}(\rho(w)) = \rho(\mathrm{step}(w)),\qquad "
    r"\mathrm{step}(w)_e = w_e - \eta\,\frac{\partial L/\partial w_e}{\gamma_{\mathrm{in}}(u)\gamma_{\mathrm{out}}(v)}",
    hypotheses=["bias-free ReLU net, depth 2–3, widths ≤ 3", "positive node rescaling, factors 2ᵉ, |e| ≤ 4",
                "squared loss on 1–4 points, full-batch steps, η ∈ {0.5, 0.1, 0.01}"],
    max_examples=40,
)
@given(inst=training_instances())
def path_sgd_rescaling_invariant(inst):
    _step_commutes(inst, "path-sgd")
    net, s, x, y, _ = inst
    # evidence: max |f − f̃| along 25 float64 steps of Path-SGD and SGD from w and ρ(w), η = 0.01 (SGD may
    # diverge on the unbalanced rescaled net; a line ends when the gap exceeds 1e3)
    steps = 25
    for method, step in (("Path-SGD", PS.path_sgd_step), ("SGD", PS.sgd_step)):
        a, b, gaps = net, R.rescale(net, s), []
        for _ in range(steps):
            try:
                a, b = step(a, x, y, 0.01), step(b, x, y, 0.01)
            except InvalidInputError:  # NaN/Inf weights: diverged
                break
            gap = PS.function_gap(a, b, x)
            if bool((gap > 1e3).any()):  # one of the two runs is diverging: end the line here
                break
            gaps.append(gap.clamp_min(1e-17))
        if gaps:
            evidence.series("max_x |f_t(w) − f_t(ρ(w))| along training, η = 0.01 (floored at 1e-17, cut at 1e3)",
                            x=torch.arange(1, len(gaps) + 1), y=torch.stack(gaps, dim=1), group=method,
                            xlabel="step t", ylabel="function gap", log_y=True)


@claim(
    "neyshabur-2015-pathsgd/sgd-rescaling-invariant",
    source=PATH_SGD.at("§3 (SGD is not rescaling invariant)", confirmed=False),
    kind="conjecture",
    expect="refuted",
    statement=r"Negative control: plain gradient descent commutes with node rescaling, "
    r"$\mathrm{step}(\rho(w)) = \rho(\mathrm{step}(w))$ (false: the gradient scales as $1/c$ where the weight "
    r"scales as $c$).",
    latex=r"w - \eta\nabla L(w)\ \text{commutes with}\ \rho",
    hypotheses=["as the Path-SGD claim"],
    max_examples=40,
)
@given(inst=training_instances())
def sgd_rescaling_invariant(inst):
    _step_commutes(inst, "sgd", trajectories=False)


# ---------------------------------------------------------------------------------------------- claim 24


def _frac_scaling_brute(Ws):
    """Σ_{paths ∋ e} Π_{e' ≠ e} w_e'² for every edge, by enumerating paths, exactly."""
    import itertools

    widths = [len(Ws[0][0])] + [len(W) for W in Ws]
    out = [[[Fraction(0)] * widths[k] for _ in range(widths[k + 1])] for k in range(len(Ws))]
    for p in itertools.product(*(range(n) for n in widths)):
        sq = [Ws[k][p[k + 1]][p[k]] ** 2 for k in range(len(Ws))]
        for k in range(len(Ws)):
            out[k][p[k + 1]][p[k]] += math.prod(sq[:k] + sq[k + 1 :], start=Fraction(1))
    return out


@claim(
    "neyshabur-2015-pathsgd/scaling-two-passes",
    source=PATH_SGD.at("§4 (computing γ_e with two passes)", confirmed=False),
    kind="identity",
    expect="holds",
    statement=r"The Path-SGD scaling $\gamma_e = \partial\phi_2^2/\partial(w_e^2)$, the sum over paths through $e$ "
    r"of the product of the other squared weights, equals $\gamma_{\mathrm{in}}(u)\,\gamma_{\mathrm{out}}(v)$, "
    r"computed by one forward pass of the all-ones input and one backward pass from the outputs through the "
    r"squared weights.",
    latex=r"\gamma_e=\frac{\partial\phi_2^2}{\partial w_e^2}=\sum_{p\ni e}\prod_{e'\in p,e'\neq e}w_{e'}^2"
    r"=\gamma_{\mathrm{in}}(u)\,\gamma_{\mathrm{out}}(v)",
    hypotheses=["bias-free layered ReLU net, depth 1–4, widths ≤ 4, 1–3 outputs"],
    max_examples=40,
)
@given(net=relu_nets(net_widths(depth=st.integers(1, 4), width=st.integers(1, 4), inputs=st.integers(1, 4),
                                outputs=st.integers(1, 3)), batch=(1, 3)))
def scaling_two_passes(net):
    evidence.instances(net.batch)
    two, brute = PS.path_sgd_scaling(net), PS.path_sgd_scaling_brute(net, 2.0)
    e_two = PS.path_sgd_scaling_error_bound(net)
    u = R.unit_roundoff(net.dtype)
    for k, (a, b, ea) in enumerate(zip(two, brute, e_two, strict=True), start=1):
        # brute force: d − 1 squared factors (one rounding each) multiplied (d − 2 roundings), then a sum of
        # P ≥ 0 terms (γ_{P−1}): relative (2d − 3 + P)·u to first order, ×1.01
        eb = 1.01 * (2 * net.depth + net.num_paths) * u * b
        err = ea + eb
        certify.close(a, b, tol=2 * err, error=err, what=f"layer {k}: γ_in·γ_out vs Σ_paths (float64)")
    same = []
    for i in range(net.batch):
        Ws = to_fractions(net, i)
        exact_two = PS._exact_scaling(Ws)
        same.append(exact_two == _frac_scaling_brute(Ws))
    certify.that(torch.tensor(same), what="two passes = path enumeration in exact rational arithmetic")
