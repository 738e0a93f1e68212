"""Claims from Path-SGD (Neyshabur, Salakhutdinov & Srebro, NIPS 2015, arXiv 1506.02617), collected in
Neyshabur's thesis (arXiv 1709.01953): CLAIMS.md 16 (node rescaling preserves the function), 23 (Path-SGD
is rescaling-invariant, SGD is not) and 24 (the Path-SGD scaling by two passes).  Section numbers are as
reconstructed, not confirmed against the published PDF.

Every check is exact.  Forward passes and the scaling γ_e are certified values (implreg.relu, implreg.pathsgd)
of the exact weights — ``rescale`` keeps ρ_c(w) exact — and their equalities are decided in exact arithmetic
where float bounds cannot.  A step uses + − × ÷ and ReLU masks only, so step(ρ(w)) = ρ(step(w)) is decided in
rational arithmetic (``fractions.Fraction``; every float64 is a dyadic rational).
"""

from __future__ import annotations

from fractions import Fraction

import torch
from hypothesis import given
from hypothesis import strategies as st

from implreg import certify, evidence
from implreg import pathsgd as PS
from implreg import relu as R
from implreg.capacity import forward_fractions, rescale_fractions, rows_to_fractions, scaling_to_fractions, to_fractions
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


FN_WHAT = "f_{ρ(w)}(x) = f_w(x)"


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
    evidence.instances(net.batch)
    certify(R.forward(R.rescale(net, s), x) == R.forward(net, x), what=FN_WHAT)


@claim(
    "neyshabur-2015-pathsgd/negative-rescaling-preserves-function",
    source=PATH_SGD.at("§3 (rescaling and unbalanceness)", confirmed=False),
    kind="conjecture",
    expect="refuted",
    statement=r"Negative control: node rescaling by factors $c < 0$ leaves the function unchanged "
    r"(false: $\sigma(cz) = c\,\sigma(z)$ needs $c \ge 0$).",
    latex=r"c_v < 0 \;\Rightarrow\; f_{\rho_c(w)} = f_w",
    hypotheses=["as the positive claim, with every factor −2ᵉ < 0"],
    refuted_by=FN_WHAT,
    max_examples=40,
)
@given(inst=training_instances(negative=True))
def negative_rescaling_preserves_function(inst):
    net, s, x, _, _ = inst
    evidence.instances(net.batch)
    certify(R.forward(R.rescale(net, s), x) == R.forward(net, x), what=FN_WHAT)


# ---------------------------------------------------------------------------------------------- claim 23


STEP_WHAT = "step(ρ(w)) = ρ(step(w)) in exact rational arithmetic"


def _step_commutes(inst, method: str, *, trajectories: bool = True) -> None:
    """One step exactly; with ``trajectories`` also 2 exact steps and 10 bit-exact float64 steps under
    power-of-two factors (the negative control needs only the one step)."""
    net, s, x, y, lr = inst
    evidence.instances(net.batch)
    exact_step = PS.path_sgd_step_exact if method == "path-sgd" else PS.sgd_step_exact
    xf, yf, eta = rows_to_fractions(x), rows_to_fractions(y), Fraction(lr)
    same, same2 = [], []
    for i in range(net.batch):
        Ws, cs = to_fractions(net, i), scaling_to_fractions(s, i)
        one, two = exact_step(Ws, xf, yf, eta), exact_step(rescale_fractions(Ws, cs), xf, yf, eta)
        same.append(rescale_fractions(one, cs) == two)
        if trajectories:  # two steps: both trajectories compute the same function (on the training inputs)
            same2.append(forward_fractions(exact_step(one, xf, yf, eta), xf)
                         == forward_fractions(exact_step(two, xf, yf, eta), xf))
    certify.that(torch.tensor(same), what=STEP_WHAT)
    if not trajectories:
        return
    certify.that(torch.tensor(same2), what="2-step trajectories from w and ρ(w) compute the same function (exact)")
    # k steps in float64 with power-of-two factors (exact scalings commute with every IEEE operation)
    step = PS.path_sgd_step if method == "path-sgd" else PS.sgd_step
    a, b = net, R.rescale(net, R.NodeScaling(tuple(torch.exp2(torch.round(torch.log2(c))) for c in s.factors)))
    for _ in range(10):
        a, b = step(a, x, y, lr), step(b, x, y, lr)
    certify.that(torch.equal(R.forward(a, x).value, R.forward(b, x).value),
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
    refuted_by=STEP_WHAT,
    max_examples=40,
)
@given(inst=training_instances())
def sgd_rescaling_invariant(inst):
    _step_commutes(inst, "sgd", trajectories=False)


# ---------------------------------------------------------------------------------------------- claim 24


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
    for k, (two, brute) in enumerate(zip(PS.path_sgd_scaling(net), PS.path_sgd_scaling_brute(net, 2.0),
                                         strict=True), start=1):
        certify(two == brute, what=f"layer {k}: γ_in·γ_out = Σ_paths Π_(e'≠e) w²")
