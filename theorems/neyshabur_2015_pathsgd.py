"""Claims from Path-SGD (Neyshabur, Salakhutdinov & Srebro, NIPS 2015, arXiv 1506.02617), collected in Neyshabur's
thesis (arXiv 1709.01953): CLAIMS.md 16 (node rescaling preserves the function), 23 (Path-SGD is rescaling-invariant,
SGD is not) and 24 (the Path-SGD scaling by two passes).  Section numbers are as reconstructed.

Every check is exact: forward passes and γ_e are certified values of the exact weights (``rescale`` keeps ρ_c(w)
exact), and a step uses + − × ÷ and ReLU masks only, so step(ρ(w)) = ρ(step(w)) is decided in rational arithmetic
(``pathsgd.step_commutes_exactly``; every float64 is a dyadic rational).
"""

from __future__ import annotations

from hypothesis import given

from implreg import certify
from implreg.claims import Source, claim
from implreg.harness import experiment_evidence as X
from implreg.relu import network as R
from implreg.relu import pathsgd as PS
from implreg.strategies.relu import net_widths, relu_nets
from implreg.strategies.relu_data import training_instances

PATH_SGD = Source(key="neyshabur-2015-pathsgd", year=2015, arxiv="1506.02617", venue="NIPS 2015",
                  title="Path-SGD: Path-Normalized Optimization in Deep Neural Networks",
                  authors="B. Neyshabur, R. Salakhutdinov, N. Srebro")
TRAINING = ["bias-free ReLU net, depth 2–3, widths ≤ 3", "positive node rescaling, factors 2ᵉ, |e| ≤ 4",
            "squared loss on 1–4 points, full-batch steps, η ∈ {0.5, 0.1, 0.01}"]


# ---------------------------------------------------------------------------------------------- claim 16


FN_WHAT = "f_{ρ(w)}(x) = f_w(x)"


@claim("neyshabur-2015-pathsgd/rescaling-preserves-function", kind="proposition", expect="holds", max_examples=40,
       source=PATH_SGD.at("§3 (rescaling and unbalanceness)", confirmed=False),
       statement=r"Node rescaling of any hidden units by factors $c > 0$ (incoming weights $\times c$, outgoing "
       r"$\times 1/c$) leaves the function computed by a bias-free ReLU network unchanged.",
       latex=r"c_v > 0 \;\forall v \;\Rightarrow\; f_{\rho_c(w)}(x) = f_w(x)\quad\forall x",
       hypotheses=["bias-free layered ReLU net, depth 2–3, widths ≤ 3, 1–2 outputs",
                   "one factor c_v = 2ᵉ > 0 per hidden unit, e ∈ [−4, 4]", "1–4 inputs in [−2, 2]ⁿ⁰"])
@given(inst=training_instances())
def rescaling_preserves_function(inst):
    certify(R.forward(R.rescale(inst.net, inst.scaling), inst.x) == R.forward(inst.net, inst.x), what=FN_WHAT)


@claim("neyshabur-2015-pathsgd/negative-rescaling-preserves-function", kind="conjecture", expect="refuted",
       refuted_by=FN_WHAT, max_examples=40, source=PATH_SGD.at("§3 (rescaling and unbalanceness)", confirmed=False),
       statement=r"Negative control: node rescaling by factors $c < 0$ leaves the function unchanged "
       r"(false: $\sigma(cz) = c\,\sigma(z)$ needs $c \ge 0$).",
       latex=r"c_v < 0 \;\Rightarrow\; f_{\rho_c(w)} = f_w",
       hypotheses=["as the positive claim, with every factor −2ᵉ < 0"])
@given(inst=training_instances(negative=True))
def negative_rescaling_preserves_function(inst):
    certify(R.forward(R.rescale(inst.net, inst.scaling), inst.x) == R.forward(inst.net, inst.x), what=FN_WHAT)


# ---------------------------------------------------------------------------------------------- claim 23


STEP_WHAT = "step(ρ(w)) = ρ(step(w)) in exact rational arithmetic"


@claim("neyshabur-2015-pathsgd/path-sgd-rescaling-invariant", kind="proposition", expect="holds", max_examples=40,
       source=PATH_SGD.at("§4, Path-SGD update (eq. as reconstructed)", confirmed=False),
       statement=r"The Path-SGD update $w_e \leftarrow w_e - \eta\,(\partial L/\partial w_e)/\gamma_e(w)$, with "
       r"$\gamma_e = \gamma_{\mathrm{in}}(u)\,\gamma_{\mathrm{out}}(v)$ from the squared weights, commutes with "
       r"every positive node rescaling $\rho$: $\mathrm{step}(\rho(w)) = \rho(\mathrm{step}(w))$; hence "
       r"trajectories from $w$ and from $\rho(w)$ compute the same functions.",
       latex=r"\mathrm{step}(\rho(w)) = \rho(\mathrm{step}(w)),\qquad \mathrm{step}(w)_e = w_e - \eta\,"
       r"\frac{\partial L/\partial w_e}{\gamma_{\mathrm{in}}(u)\gamma_{\mathrm{out}}(v)}",
       hypotheses=TRAINING)
@given(inst=training_instances())
def path_sgd_rescaling_invariant(inst):
    net, s, x, y, lr = inst
    certify.that(PS.step_commutes_exactly(*inst)[0], what=STEP_WHAT)
    certify.that(PS.step_commutes_exactly(*inst, steps=2)[1],
                 what="2-step trajectories from w and ρ(w) compute the same function (exact)")
    # float64 with power-of-two factors (exact scalings commute with every IEEE operation): bit-identical
    gaps = PS.rescaled_training_gaps(net, s.nearest_powers_of_two(), x, y, lr, 10)
    certify.that(bool((gaps == 0).all()),
                 what="10-step float64 trajectories from w and ρ(w), ρ by powers of two: bit-identical functions")
    X.training_gap_evidence(net, s, x, y, lr=0.01, steps=25)  # the drawn (non-power-of-two) factors


@claim("neyshabur-2015-pathsgd/sgd-rescaling-invariant", kind="conjecture", expect="refuted", refuted_by=STEP_WHAT,
       max_examples=40, source=PATH_SGD.at("§3 (SGD is not rescaling invariant)", confirmed=False),
       statement=r"Negative control: plain gradient descent commutes with node rescaling, "
       r"$\mathrm{step}(\rho(w)) = \rho(\mathrm{step}(w))$ (false: the gradient scales as $1/c$ where the weight "
       r"scales as $c$).",
       latex=r"w - \eta\nabla L(w)\ \text{commutes with}\ \rho", hypotheses=["as the Path-SGD claim"])
@given(inst=training_instances())
def sgd_rescaling_invariant(inst):
    certify.that(PS.step_commutes_exactly(*inst, "sgd")[0], what=STEP_WHAT)


# ---------------------------------------------------------------------------------------------- claim 24


@claim("neyshabur-2015-pathsgd/scaling-two-passes", kind="identity", expect="holds", max_examples=40,
       source=PATH_SGD.at("§4 (computing γ_e with two passes)", confirmed=False),
       statement=r"The Path-SGD scaling $\gamma_e = \partial\phi_2^2/\partial(w_e^2)$, the sum over paths through "
       r"$e$ of the product of the other squared weights, equals $\gamma_{\mathrm{in}}(u)\,\gamma_{\mathrm{out}}(v)$, "
       r"computed by one forward pass of the all-ones input and one backward pass from the outputs through the "
       r"squared weights.",
       latex=r"\gamma_e=\frac{\partial\phi_2^2}{\partial w_e^2}=\sum_{p\ni e}\prod_{e'\in p,e'\neq e}w_{e'}^2"
       r"=\gamma_{\mathrm{in}}(u)\,\gamma_{\mathrm{out}}(v)",
       hypotheses=["bias-free layered ReLU net, depth 1–4, widths ≤ 4, 1–3 outputs"])
@given(net=relu_nets(net_widths(depth=(1, 4), width=(1, 4), inputs=(1, 4), outputs=(1, 3)), batch=(1, 3)))
def scaling_two_passes(net):
    for k, (two, brute) in enumerate(zip(PS.path_sgd_scaling(net), PS.path_sgd_scaling_brute(net, 2.0),
                                         strict=True), start=1):
        certify(two == brute, what=f"layer {k}: γ_in·γ_out = Σ_paths Π_(e'≠e) w²")
