"""Claims from "Norm-Based Capacity Control in Neural Networks" (Neyshabur, Tomioka & Srebro, COLT 2015, arXiv
1503.00036), collected in Neyshabur's thesis (arXiv 1709.01953): CLAIMS.md 17 (path norms are rescaling-invariant;
weight decay, max-norm and the spectral product are not), 18 (path norm by two passes), 19 (path norm = min over
rescalings of μ_{p,∞}^d), 20 (layer balancing), 21 (depth-2 weight decay = convex net norm) and 25 (Rademacher
bounds).  Theorem/lemma numbers are CLAIMS.md's, as reconstructed (not confirmed against the published PDF).

Every quantity is certified (implreg.capacity); with integer p (rational quantities) ties are decided exactly.
Identities at real p hold within 1e-12 relative (``capacity.identity``): their sides are different expressions in
real powers, which no finite precision separates from equality.
"""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from implreg import capacity as C
from implreg import certify, evidence
from implreg.claims import Source, claim
from implreg.harness import experiment_evidence as X
from implreg.relu import network as R
from implreg.strategies.relu import group_norm_exponents, inputs, net_widths, relu_nets, rescaled_nets

NEYSHABUR_2015 = Source(key="neyshabur-2015", title="Norm-Based Capacity Control in Neural Networks", year=2015,
                        authors="B. Neyshabur, R. Tomioka, N. Srebro", arxiv="1503.00036", venue="COLT 2015")
ps_any = st.one_of(st.sampled_from([1.0, 2.0, 3.0]), st.floats(1.0, 4.0))
SINGLE = ["nets as claim 17 with nonzero weights", "one hidden unit v, factor 2ᵉ, 1 ≤ |e| ≤ 4"]
NETS = net_widths(depth=(2, 4), width=(1, 4), outputs=(1, 3))  # claim 17's nets


def _control(what: str, claim_id: str, section: str, **kw):
    """A negative control: a false variant that must be refuted by the comparison ``what``."""
    return claim(claim_id, source=NEYSHABUR_2015.at(section, confirmed=False), kind="conjecture", expect="refuted",
                 max_examples=50, refuted_by=what, **kw)


# ---------------------------------------------------------------------------------------------- claim 17


@claim("neyshabur-2015/path-norm-rescaling-invariant", kind="proposition", expect="holds", max_examples=50,
       source=NEYSHABUR_2015.at("§3, eq. 7 (path regularizer)", confirmed=False),
       statement=r"For every $p \ge 1$ the $\ell_p$ path norm $\phi_p(w) = (\sum_{\text{paths}}\prod_e |w_e|^p)^{1/p}$ "
       r"is invariant under node rescaling by positive factors.",
       latex=r"\phi_p(\rho_c(w)) = \phi_p(w)\quad \forall c > 0,\ p \ge 1",
       hypotheses=["bias-free layered ReLU net, depth 2–4, widths ≤ 4, 1–3 outputs",
                   "a factor 2ᵉ > 0 per hidden unit, |e| ≤ 4",
                   "p ∈ {1, 2, 3} (φ_p^p decided exactly) ∪ [1, 4] (within 1e-12 relative)"])
@given(inst=rescaled_nets(NETS), p=ps_any)
def path_norm_rescaling_invariant(inst, p):
    net, s = inst
    w2 = R.rescale(net, s)
    certify(C.identity(C.path_norm_pow(w2, p), C.path_norm_pow(net, p), p), what=f"φ_p(ρ(w))^p = φ_p(w)^p, p = {p:g}")
    X.rescaling_scatter("μ₂,₂", C.group_norm(net, 2, 2), C.group_norm(w2, 2, 2))


def _unit_control(slug: str, section: str, measure, exponent: float | None, what: str, measure_text: str, latex: str):
    """A negative control: ``measure`` (described by ``measure_text``) is invariant under rescaling one hidden unit,
    refuted by ``what``: measure(ρ(w)) = measure(w), decided as ``C.identity`` at ``exponent``."""
    def control(inst):
        certify(C.rescaling_identity(measure, *inst, exponent), what=what)

    control.__name__ = control.__qualname__ = slug.replace("-", "_")  # the registry and reports key on it
    return _control(what, f"neyshabur-2015/{slug}", section, latex=latex, hypotheses=SINGLE,
                    statement=f"Negative control: {measure_text} is invariant under rescaling one hidden unit.",
                    )(given(inst=rescaled_nets(NETS, single=True))(control))


weight_decay_rescaling_invariant = _unit_control(
    "weight-decay-rescaling-invariant", "§3 (rescaling: weight decay is not invariant)", C.weight_decay, 2,
    "μ_{2,2}(ρ(w)) = μ_{2,2}(w)", r"weight decay $\mu_{2,2}(w) = (\sum_e w_e^2)^{1/2}$",
    r"\mu_{2,2}(\rho_{c,v}(w)) = \mu_{2,2}(w)")
max_norm_rescaling_invariant = _unit_control(
    "max-norm-rescaling-invariant", "§3 (rescaling: the max-norm is not invariant)",
    lambda w: C.group_norm(w, 2, math.inf) ** 2, 2, "μ_{2,∞}(ρ(w)) = μ_{2,∞}(w) (squared)",
    r"the max-norm $\mu_{2,\infty}(w) = \max_v \|w_{\to v}\|_2$", r"\mu_{2,\infty}(\rho_{c,v}(w)) = \mu_{2,\infty}(w)")
SPEC_WHAT = "Π‖W̃_k‖₂ = Π‖W_k‖₂ within 1e-12 relative"
spectral_product_node_rescaling_invariant = _unit_control(
    "spectral-product-node-rescaling-invariant", "§3 (rescaling)", C.spectral_product, None, SPEC_WHAT,
    r"the product of spectral norms $\prod_k \|W_k\|_2$",
    r"\prod_k \|\widetilde W_k\|_2 = \prod_k \|W_k\|_2,\ \ \widetilde w = \rho_{c,v}(w)")


@claim("neyshabur-2015/spectral-product-layer-rescaling-invariant", kind="proposition", expect="holds",
       max_examples=50, source=NEYSHABUR_2015.at("§3 (rescaling)", confirmed=False),
       statement=r"The product of spectral norms is invariant under whole-layer rescaling $W_i \mapsto cW_i$, "
       r"$W_{i+1} \mapsto W_{i+1}/c$ ($c > 0$).",
       latex=r"\|cW_i\|_2\,\|W_{i+1}/c\|_2 = \|W_i\|_2\,\|W_{i+1}\|_2",
       hypotheses=["nets as claim 17", "one hidden layer i, factor c = 2ᵉ, |e| ≤ 4",
                   "within 1e-12 relative (singular values are not rational in the weights)"])
@given(inst=rescaled_nets(NETS, layer=True))
def spectral_product_layer_rescaling_invariant(inst):
    certify(C.rescaling_identity(C.spectral_product, *inst, None), what=SPEC_WHAT)


# ---------------------------------------------------------------------------------------------- claim 18


@claim("neyshabur-2015/path-norm-two-passes", kind="identity", expect="holds", max_examples=50,
       source=NEYSHABUR_2015.at("§3, eq. 7; computed as in Path-SGD §4", confirmed=False),
       statement=r"$\phi_p(w)^p$ equals the output of the network with weights $|w|^p$ (no nonlinearity needed) on "
       r"the all-ones input, summed over outputs, and equals the sum over all input→output paths of "
       r"$\prod_e |w_e|^p$.",
       latex=r"\phi_p^p(w)=\mathbf 1^\top|W_d|^{p}\cdots|W_1|^{p}\mathbf 1=\sum_{\text{paths}}\prod_{e}|w_e|^p",
       hypotheses=["bias-free layered ReLU net, depth 1–4, widths ≤ 4, 1–3 outputs",
                   "p ∈ {1, 2, 3} (decided exactly) ∪ [1, 4] (within 1e-12 relative)"])
@given(net=relu_nets(net_widths(depth=(1, 4), outputs=(1, 3)), batch=(1, 3)), p=ps_any)
def path_norm_two_passes(net, p):
    certify(C.identity(C.path_norm_pow(net, p), C.path_norm_brute_pow(net, p), p),
            what=f"two passes = path enumeration, p = {p:g}")


# ---------------------------------------------------------------------------------------------- claim 19

MIN_WHAT = "μ_{p,∞}(w̃)^d = φ_p(w) at the constructed minimizer, within its construction bound"


@claim("neyshabur-2015/path-norm-min-over-rescalings", kind="theorem", expect="holds", max_examples=50,
       source=NEYSHABUR_2015.at("Theorem 5 with Lemma 19", confirmed=False),
       statement=r"For a network with a single output, the $\ell_p$ path norm equals the minimum over rescalings of "
       r"$\mu_{p,\infty}(\tilde w)^d$; it is attained by normalizing every hidden unit's incoming $\ell_p$ norm to 1 "
       r"and then balancing the layers, and every rescaling satisfies "
       r"$\mu_{p,\infty}(\tilde w)^d \ge \gamma_{p,\infty}(\tilde w) \ge \phi_p(w)$.",
       latex=r"\phi_p(w)=\min_{\tilde w\sim w}\mu_{p,\infty}(\tilde w)^d,\qquad "
       r"\mu_{p,\infty}(\tilde w)^d\ \ge\ \gamma_{p,\infty}(\tilde w)\ \ge\ \phi_p(w)",
       hypotheses=["bias-free layered ReLU net, depth 2–4, widths ≤ 4, ONE output",
                   "every weight nonzero (magnitudes in [1/8, 2]), so every hidden unit has incoming weight",
                   "equality part: p ∈ {1, 2, 3} ∪ [1, 4]; inequality part: p ∈ {1, 2, 3}, compared as p-th powers "
                   "(rational, so ties are decided exactly)",
                   "random rescalings: a factor 2ᵉ per hidden unit, |e| ≤ 4"])
@given(inst=rescaled_nets(net_widths(depth=(2, 4), outputs=1), nonzero=True), p=st.sampled_from([1.0, 2.0, 3.0]),
       p_real=st.floats(1.0, 4.0))
def path_norm_min_over_rescalings(inst, p, p_real):
    net, s = inst
    for q in (p, p_real):  # w̃ = ρ_ĉ(w), ĉ the float factors: normalize units, then balance layers
        certify(C.path_norm_minimizer_attains(net, q), what=MIN_WHAT)
    v = R.rescale(net, s)  # every rescaling, in p-th powers: μ_{p,∞}(v)^{dp} ≥ γ_{p,∞}(v)^p ≥ φ_p(v)^p
    mu, gam = C.rescaling_chain_pow(v, p)
    certify(mu >= gam, what="μ_{p,∞}(ρ(w))^{dp} ≥ γ_{p,∞}(ρ(w))^p")
    certify(gam >= C.path_norm_pow(v, p), what="γ_{p,∞}(ρ(w))^p ≥ φ_p(ρ(w))^p")
    evidence.scalar("μ_{p,∞}(ρ(w))^d / φ_p(w) at random rescalings (theorem: ≥ 1)",
                    (mu.value / C.path_norm_pow(v, p).value) ** (1 / p))


@_control(MIN_WHAT, "neyshabur-2015/path-norm-min-over-rescalings-several-outputs", "Theorem 5 (single output)",
          statement=r"Negative control: the equality $\phi_p(w) = \min_{\tilde w \sim w}\mu_{p,\infty}(\tilde w)^d$ "
          r"also holds for networks with several outputs (false: the minimum is $\max_o \phi_p^{(o)}$, the largest "
          r"per-output path norm).", latex=r"\phi_p(w)=\min_{\tilde w\sim w}\mu_{p,\infty}(\tilde w)^d\quad(n_d\ge 2)",
          hypotheses=["as the theorem, with 2–3 outputs"])
@given(inst=rescaled_nets(net_widths(depth=(2, 4), outputs=(2, 3)), single=True), p=ps_any)
def path_norm_min_several_outputs(inst, p):
    certify(C.path_norm_minimizer_attains(inst[0], p), what=MIN_WHAT)


# ---------------------------------------------------------------------------------------------- claim 20


@claim("neyshabur-2015/layer-balancing", kind="lemma", expect="holds", max_examples=50,
       source=NEYSHABUR_2015.at("Claim 1", confirmed=False),
       statement=r"For every network $\mu_{p,q}(w) \ge d^{1/q}\gamma_{p,q}(w)^{1/d}$ (AM–GM over the $d$ layer "
       r"norms), with equality after the whole-layer rescaling $\tilde W_k = \gamma^{1/d} W_k / \|W_k\|_{p,q}$.",
       latex=r"\mu_{p,q}(w)\ \ge\ d^{1/q}\,\gamma_{p,q}(w)^{1/d},\qquad "
       r"\mu_{p,q}(\tilde w) = d^{1/q}\gamma_{p,q}(w)^{1/d}\ \text{for}\ \tilde W_k=\gamma^{1/d}W_k/\|W_k\|_{p,q}",
       hypotheses=["bias-free layered ReLU net, depth 1–4, widths ≤ 4, 1–3 outputs, nonzero weights",
                   "p ∈ {1, 2, 3}, q ∈ {p, 2p, ∞} ∪ [1, 4]; the inequality as (μ^q)^d ≥ d^d Π_k ‖W_k‖^q (q = ∞: "
                   "(max_k M_k)^d ≥ Π_k M_k with M_k = ‖W_k‖_{p,∞}^p), rational for q ∈ {p, 2p, ∞}: ties decided "
                   "exactly; at real q up to 1e-12 relative",
                   "the equality within the balancing's construction bound (C.layer_balancing_error, derived)"])
@given(net=relu_nets(net_widths(depth=(1, 4), outputs=(1, 3)), batch=(1, 3), nonzero=True), pq=group_norm_exponents())
def layer_balancing(net, pq):
    p, q = pq
    lhs, rhs = C.layer_amgm_pow(net, p, q)
    certify(C.dominates(lhs, rhs, 1.0 if math.isinf(q) else q / p),
            what=f"μ_{{p,q}} ≥ d^{{1/q}}γ^{{1/d}} (q-th and d-th powers), p = {p}, q = {q:g}")
    certify(C.layer_balancing_attains(net, p, q), what=f"μ_{{p,q}}(w̃) = d^{{1/q}}γ^{{1/d}} after balancing, q = {q:g}")
    evidence.scalar("μ_{p,q}(w) / (d^{1/q} γ^{1/d}) (claim: ≥ 1)",
                    C.group_norm(net, p, q).value / C.layer_amgm_bound(net, p, q).value)


# ---------------------------------------------------------------------------------------------- claim 21


@claim("neyshabur-2015/weight-decay-depth2-convex-norm", kind="theorem", expect="holds", max_examples=50,
       source=NEYSHABUR_2015.at("Theorem 10", confirmed=False),
       statement=r"For depth-2 networks, the minimum over rescalings of the weight decay "
       r"$\sum_j (\|u_j\|^2 + \|v_j\|^2)$ equals $2\sum_j \|u_j\|_2\|v_j\|_2$ ($u_j$ the incoming, $v_j$ the "
       r"outgoing weights of hidden unit $j$), attained at $c_j = (\|v_j\|/\|u_j\|)^{1/2}$.",
       latex=r"\min_{c>0}\sum_j\Big(c_j^2\|u_j\|^2+\frac{\|v_j\|^2}{c_j^2}\Big)=2\sum_j\|u_j\|_2\,\|v_j\|_2",
       hypotheses=["depth-2 bias-free ReLU net, 1–4 hidden units, 1–2 outputs, nonzero weights",
                   "random rescalings: a factor 2ᵉ per hidden unit, |e| ≤ 4",
                   "attained: the float factors ĉ_j = c*_j(1 + η), |η| ≤ 8u, so the excess is ≤ 4η²·value (second "
                   "order at a stationary point; C.weight_decay_minimizer_error), the tolerance of the equality"])
@given(inst=rescaled_nets(net_widths(depth=2, outputs=(1, 2)), nonzero=True))
def weight_decay_depth2_convex_norm(inst):
    net, v = inst[0], R.rescale(*inst)
    certify(C.weight_decay_minimizer_attains(net), what="Σ‖c u‖² + ‖v/c‖² at c* = 2Σ‖u‖‖v‖")
    certify(C.weight_decay(v) >= C.convex_net_norm(v), what="WD(ρ(w)) ≥ 2Σ‖u‖‖v‖")
    evidence.scalar("weight decay / 2Σ‖u_j‖‖v_j‖ at random rescalings (theorem: ≥ 1)",
                    C.weight_decay(v).value / C.convex_net_norm(net).value)


# ---------------------------------------------------------------------------------------------- claim 25


@claim("neyshabur-2015/rademacher-depth1", kind="lemma", expect="holds", max_examples=40,
       source=NEYSHABUR_2015.at("Lemma 15 and Theorem 1 (d = 1)", confirmed=False),
       statement=r"For depth 1 (linear predictors with $\|w\|_1 \le \phi$) the empirical Rademacher complexity is "
       r"exactly $\phi\,\mathbb{E}_\xi\|\sum_i \xi_i x_i\|_\infty / m$, and it is at most "
       r"$\sqrt{4\phi^2\log(2D)\max_i\|x_i\|_\infty^2/m}$.",
       latex=r"\hat{\mathcal{R}}_S=\frac{\phi}{m}\,\mathbb{E}_\xi\left\|\sum_i\xi_i x_i\right\|_\infty"
       r"\ \le\ \sqrt{\frac{4\phi^2\log(2D)\max_i\|x_i\|_\infty^2}{m}}",
       hypotheses=["m ∈ [1, 40] points in [−2, 2]ᴰ, D ∈ [1, 8], φ = 1 (both sides scale linearly in φ)",
                   "m ≤ 14: exact average over all 2^m sign vectors; m > 14: 20000 Monte-Carlo sign vectors with a "
                   "Hoeffding interval at level 0.999 (its half-width is R̂'s error, an estimate)",
                   "constant 4 log(2D): the weaker of COLT'15's main-text and appendix versions"])
@given(x=inputs((1, 8), m=(1, 40)), seed=st.integers(0, 2**16))
def rademacher_depth1(x, seed):
    r_hat = C.rademacher_linear(x, 1.0, level=0.999, seed=seed)
    bound = C.rademacher_bound(1, 1.0, x)
    certify(r_hat <= bound, what="R̂ ≤ COLT'15 bound (d = 1)")
    X.rademacher_evidence(1, bound, r_hat)


@claim("neyshabur-2015/rademacher-deep-search", kind="theorem", expect="holds", max_examples=12,
       source=NEYSHABUR_2015.at("Theorem 1 with p = 1, q = ∞, and Corollary 7", confirmed=False),
       statement=r"No depth-$d$ ReLU network in $\{\phi_1(w) \le \phi\}$ found by search beats the bound "
       r"$\sqrt{4^{d-1}\phi^2\cdot 4\log(2D)\max_i\|x_i\|_\infty^2/m}$ on the empirical Rademacher complexity: a "
       r"certified lower bound $L \le \hat{\mathcal R}_S$, built from nets in the class, stays below it.",
       latex=r"L\ \le\ \mathbb E_\xi\sup_{\phi_1(w)\le\phi}\frac1m\sum_i\xi_i f_w(x_i)\ \le\ "
       r"\sqrt{\frac{4^{d-1}\phi^2\cdot 4\log(2D)\max_i\|x_i\|_\infty^2}{m}}",
       hypotheses=["m ∈ [1, 24] points in [−2, 2]ᴰ, D ∈ [1, 4], depth d ∈ {2, 3}, φ = 1",
                   "L = E_ξ max(single-unit nets ±σ(±x_j), Adam search over width-8 nets): exact average over all "
                   "2^m sign vectors for m ≤ 14 (one-sided Hoeffding over 20000 for m > 14) plus the search's gain "
                   "on 16 sign vectors (one-sided Hoeffding, level 0.999 overall; see capacity.rademacher_relu_lower)",
                   "how tight: the check refutes every bound below L (exactly for m ≤ 14). It cannot refute one "
                   "between L and the paper's bound, and need not: R̂ (a non-convex sup) is not computable, and at "
                   "m = 1, where L = R̂ = φ‖x‖_∞ exactly, the bound is 2^d√(log 2D) ≥ 3.3 times R̂ — the 4^{d−1} and "
                   "4 log(2D) constants are worst-case. Planted bounds R̂/1.5 are refuted where R̂ is known "
                   "(tests/test_capacity.py)"])
@given(x=inputs((1, 4), m=(1, 24)), depth=st.sampled_from([2, 3]), seed=st.integers(0, 2**16))
def rademacher_deep_search(x, depth, seed):
    low = C.rademacher_relu_lower(x, depth, seed=seed)
    bound = C.rademacher_bound(depth, 1.0, x)
    certify(low.certified <= bound, what=f"certified lower bound on R̂ (depth {depth}; {low.how}) ≤ COLT'15 bound")
    X.rademacher_evidence(depth, bound, low.certified)
