"""Claims from "Norm-Based Capacity Control in Neural Networks" (Neyshabur, Tomioka & Srebro, COLT 2015,
arXiv 1503.00036), collected in Neyshabur's thesis (arXiv 1709.01953): CLAIMS.md 17 (path norms are
rescaling-invariant; weight decay, max-norm and the spectral product are not), 18 (path norm by two passes),
19 (path norm = min over rescalings of μ_{p,∞}^d), 20 (layer balancing), 21 (depth-2 weight decay = convex
net norm) and 25 (Rademacher bounds).  Theorem/lemma numbers are CLAIMS.md's, as reconstructed (not
confirmed against the published PDF).

Tolerances (every float64 check here).  Each computed quantity carries a derived rounding bound E (running
error analysis in implreg.capacity: sums of n nonnegative terms have relative error ≤ γ_n = nu/(1−nu),
a product of k factors ≤ γ_{k−1}, powers via faithful exp/log ≤ 3u|p log x| + 2u, roots divide the
relative error by p; u = 2⁻⁵³; first order, ×1.01).  Exact statements are checked in float64 as
  identities a = b:       |â − b̂| ≤ tol with tol = 2E        (certified iff |â − b̂| + E < 2E),
  inequalities a ≥ b:     â ≥ b̂ − tol with tol = 2E          (certified iff â − b̂ > −E),
where E bounds the error of â − b̂.  If the statement holds exactly the check always passes; it refutes only
when the computed violation exceeds 3E — three times the worst-case rounding.  This is the strongest
statement float64 can certify about an exact equality; where the quantities are rational (integer p: every
float64 is a dyadic rational) the same instance is *also* decided exactly with ``fractions.Fraction``.
Constructed minimizers add a construction bound (how far the float factors are from the exact minimizer,
derived in implreg.capacity.path_norm_minimizer_error / layer_balancing_error).
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import torch
from hypothesis import given
from hypothesis import strategies as st

from implreg import capacity as C
from implreg import certify, evidence
from implreg import relu as R
from implreg.claims import Source, claim
from implreg.strategies.relu import (
    inputs,
    layer_rescalings,
    net_widths,
    node_rescalings,
    relu_nets,
    single_node_rescalings,
)

NEYSHABUR_2015 = Source(
    key="neyshabur-2015",
    title="Norm-Based Capacity Control in Neural Networks",
    authors="B. Neyshabur, R. Tomioka, N. Srebro",
    year=2015,
    arxiv="1503.00036",
    venue="COLT 2015",
)

U = R.unit_roundoff(torch.float64)
RESCALE_REL = 2 * U  # a rescaled weight fl(fl(c_v w)/c_u) is within two roundings of the exact ρ(w)
INT_PS = (1, 2, 3)


def _powd(x: torch.Tensor, ex: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x^d by d − 1 multiplications and its error: d·x^{d−1}·e_x (first order) + γ_{d−1}x^d, ×1.01."""
    y = x.clone()
    for _ in range(d - 1):
        y = y * x
    return y, 1.01 * (d * x.abs() ** (d - 1) * ex + R.gamma(max(d - 1, 0), x.dtype) * y.abs())


ps_any = st.one_of(st.sampled_from([1.0, 2.0, 3.0]), st.floats(1.0, 4.0))


# ---------------------------------------------------------------------------------------------- claim 17


@st.composite
def rescaled_nets(draw, *, single: bool = False, nonzero: bool = False, outputs=None, p=None):
    """(nets, a rescaling, p): all hidden units rescaled (or one unit, ``single``, then |log2 c| ≥ 1)."""
    net = draw(relu_nets(net_widths(depth=st.integers(2, 4), width=st.integers(1, 4), inputs=st.integers(1, 4),
                                    outputs=st.integers(1, 3) if outputs is None else outputs),
                         batch=(1, 3), nonzero=nonzero or single))
    s = draw(single_node_rescalings(net, log2_range=4.0, min_log2=1.0) if single
             else node_rescalings(net, log2_range=4.0))
    return net, s, (draw(p) if p is not None else None)


@claim(
    "neyshabur-2015/path-norm-rescaling-invariant",
    source=NEYSHABUR_2015.at("§3, eq. 7 (path regularizer)", confirmed=False),
    kind="proposition",
    expect="holds",
    statement=r"For every $p \ge 1$ the $\ell_p$ path norm $\phi_p(w) = (\sum_{\text{paths}}\prod_e |w_e|^p)^{1/p}$ "
    r"is invariant under node rescaling by positive factors.",
    latex=r"\phi_p(\rho_c(w)) = \phi_p(w)\quad \forall c > 0,\ p \ge 1",
    hypotheses=["bias-free layered ReLU net, depth 2–4, widths ≤ 4, 1–3 outputs",
                "a factor 2ᵉ > 0 per hidden unit, |e| ≤ 4", "p ∈ {1, 2, 3} ∪ [1, 4]"],
    max_examples=50,
)
@given(inst=rescaled_nets(p=ps_any), seed=st.integers(0, 2**16))
def path_norm_rescaling_invariant(inst, seed):
    net, s, p = inst
    evidence.instances(net.batch)
    w2 = R.rescale(net, s)
    a, b = C.path_norm(w2, p), C.path_norm(net, p)
    err = C.path_norm_error_bound(w2, p, RESCALE_REL) + C.path_norm_error_bound(net, p)
    certify.close(a, b, tol=2 * err, error=err, what=f"φ_p(ρ(w)) vs φ_p(w), p = {p:g} (float64)")
    if p in INT_PS:
        same = [C.exact_path_norm_pow(C.rescale_fractions(C.to_fractions(net, i), C.scaling_to_fractions(s, i)), int(p))
                == C.exact_path_norm_pow(C.to_fractions(net, i), int(p)) for i in range(net.batch)]
        certify.that(torch.tensor(same), what=f"φ_p(ρ(w))^p = φ_p(w)^p in exact rational arithmetic (p = {int(p)})")
    # evidence: φ_2 and μ_{2,2} along 16 successive random rescalings (log-uniform factors in [1/4, 4])
    g = torch.Generator().manual_seed(seed)
    cur, phis, mus = net[0], [], []
    for _ in range(17):
        phis.append(C.path_norm(cur, 2.0) / C.path_norm(net[0], 2.0).clamp_min(1e-300))
        mus.append(C.group_norm(cur, 2.0, 2.0) / C.group_norm(net[0], 2.0, 2.0).clamp_min(1e-300))
        fs = tuple(torch.exp2(4 * torch.rand(1, n, generator=g, dtype=torch.float64) - 2) for n in cur.widths[1:-1])
        cur = R.rescale(cur, R.NodeScaling(fs))
    ks = torch.arange(17)
    plot = "φ₂ (path norm, flat) and μ₂,₂ (weight decay) relative to w, vs random node rescalings applied"
    evidence.series(plot, x=ks, y=torch.cat(phis), group="φ₂", xlabel="rescalings applied",
                    ylabel="relative to w", log_y=True)
    evidence.series(plot, x=ks, y=torch.cat(mus), group="μ₂,₂", xlabel="rescalings applied",
                    ylabel="relative to w", log_y=True)


def _measure_unchanged(net, s, measure, bound, what):
    evidence.instances(net.batch)
    w2 = R.rescale(net, s)
    a, b = measure(w2), measure(net)
    err = bound(w2, RESCALE_REL) + bound(net, 0.0)
    certify.close(a, b, tol=2 * err, error=err, what=what)


_NEG = dict(kind="conjecture", expect="refuted", max_examples=50)


@claim(
    "neyshabur-2015/weight-decay-rescaling-invariant",
    source=NEYSHABUR_2015.at("§3 (rescaling: weight decay is not invariant)", confirmed=False),
    statement=r"Negative control: weight decay $\mu_{2,2}(w) = (\sum_e w_e^2)^{1/2}$ is invariant under rescaling "
    r"one hidden unit.",
    latex=r"\mu_{2,2}(\rho_{c,v}(w)) = \mu_{2,2}(w)",
    hypotheses=["nets as claim 17 with nonzero weights", "one hidden unit v, factor 2ᵉ, 1 ≤ |e| ≤ 4"],
    **_NEG,
)
@given(inst=rescaled_nets(single=True))
def weight_decay_rescaling_invariant(inst):
    net, s, _ = inst
    _measure_unchanged(net, s, lambda w: C.group_norm(w, 2, 2),
                       lambda w, e: C.group_norm_error_bound(w, 2, 2, e), "μ_{2,2}(ρ(w)) vs μ_{2,2}(w)")


@claim(
    "neyshabur-2015/max-norm-rescaling-invariant",
    source=NEYSHABUR_2015.at("§3 (rescaling: the max-norm is not invariant)", confirmed=False),
    statement=r"Negative control: the max-norm $\mu_{2,\infty}(w) = \max_v \|w_{\to v}\|_2$ is invariant under "
    r"rescaling one hidden unit.",
    latex=r"\mu_{2,\infty}(\rho_{c,v}(w)) = \mu_{2,\infty}(w)",
    hypotheses=["nets as claim 17 with nonzero weights", "one hidden unit v, factor 2ᵉ, 1 ≤ |e| ≤ 4"],
    **_NEG,
)
@given(inst=rescaled_nets(single=True))
def max_norm_rescaling_invariant(inst):
    net, s, _ = inst
    _measure_unchanged(net, s, lambda w: C.group_norm(w, 2, math.inf),
                       lambda w, e: C.group_norm_error_bound(w, 2, math.inf, e), "μ_{2,∞}(ρ(w)) vs μ_{2,∞}(w)")


@claim(
    "neyshabur-2015/spectral-product-node-rescaling-invariant",
    source=NEYSHABUR_2015.at("§3 (rescaling)", confirmed=False),
    statement=r"Negative control: the product of spectral norms $\prod_k \|W_k\|_2$ is invariant under rescaling "
    r"one hidden unit.",
    latex=r"\prod_k \|\widetilde W_k\|_2 = \prod_k \|W_k\|_2,\ \ \widetilde w = \rho_{c,v}(w)",
    hypotheses=["nets as claim 17 with nonzero weights", "one hidden unit v, factor 2ᵉ, 1 ≤ |e| ≤ 4",
                "SVD rounding: LAPACK estimate 8·max(m,n)·u·σ₁ per layer (see spectral_product_error_estimate)"],
    **_NEG,
)
@given(inst=rescaled_nets(single=True))
def spectral_product_node_rescaling_invariant(inst):
    net, s, _ = inst
    _measure_unchanged(net, s, C.spectral_product, C.spectral_product_error_estimate,
                       "Π‖W̃_k‖₂ vs Π‖W_k‖₂ (single-node rescaling)")


@claim(
    "neyshabur-2015/spectral-product-layer-rescaling-invariant",
    source=NEYSHABUR_2015.at("§3 (rescaling)", confirmed=False),
    kind="proposition",
    expect="holds",
    statement=r"The product of spectral norms is invariant under whole-layer rescaling $W_i \mapsto cW_i$, "
    r"$W_{i+1} \mapsto W_{i+1}/c$ ($c > 0$).",
    latex=r"\|cW_i\|_2\,\|W_{i+1}/c\|_2 = \|W_i\|_2\,\|W_{i+1}\|_2",
    hypotheses=["nets as claim 17", "one hidden layer i, factor c = 2ᵉ, |e| ≤ 4",
                "SVD rounding: LAPACK estimate 8·max(m,n)·u·σ₁ per layer (an estimate, not a proof)"],
    max_examples=50,
)
@given(data=st.data())
def spectral_product_layer_rescaling_invariant(data):
    net = data.draw(relu_nets(net_widths(depth=st.integers(2, 4), width=st.integers(1, 4),
                                         outputs=st.integers(1, 3)), batch=(1, 3)))
    s = data.draw(layer_rescalings(net, log2_range=4.0))
    _measure_unchanged(net, s, C.spectral_product, C.spectral_product_error_estimate,
                       "Π‖W̃_k‖₂ vs Π‖W_k‖₂ (whole-layer rescaling)")


# ---------------------------------------------------------------------------------------------- claim 18


@claim(
    "neyshabur-2015/path-norm-two-passes",
    source=NEYSHABUR_2015.at("§3, eq. 7; computed as in Path-SGD §4", confirmed=False),
    kind="identity",
    expect="holds",
    statement=r"$\phi_p(w)^p$ equals the output of the network with weights $|w|^p$ (no nonlinearity needed) on "
    r"the all-ones input, summed over outputs, and equals the sum over all input→output paths of "
    r"$\prod_e |w_e|^p$.",
    latex=r"\phi_p^p(w)=\mathbf 1^\top|W_d|^{p}\cdots|W_1|^{p}\mathbf 1=\sum_{\text{paths}}\prod_{e}|w_e|^p",
    hypotheses=["bias-free layered ReLU net, depth 1–4, widths ≤ 4, 1–3 outputs", "p ∈ {1, 2, 3} ∪ [1, 4]"],
    max_examples=50,
)
@given(net=relu_nets(net_widths(depth=st.integers(1, 4), width=st.integers(1, 4), outputs=st.integers(1, 3)),
                     batch=(1, 3)), p=ps_any)
def path_norm_two_passes(net, p):
    evidence.instances(net.batch)
    a, b = C.path_norm_pow(net, p), C.path_norm_brute_pow(net, p)
    err = C.path_norm_pow_error_bound(net, p) + C.path_norm_brute_pow_error_bound(net, p)
    certify.close(a, b, tol=2 * err, error=err, what=f"two passes vs path enumeration, p = {p:g} (float64)")
    if p in INT_PS:
        same = []
        for i in range(net.batch):
            Ws = C.to_fractions(net, i)
            enum = Fraction(0)
            for path in itertools.product(*(range(n) for n in net.widths)):
                enum += math.prod((abs(Ws[k][path[k + 1]][path[k]]) ** int(p) for k in range(net.depth)),
                                  start=Fraction(1))
            same.append(C.exact_path_norm_pow(Ws, int(p)) == enum)
        certify.that(torch.tensor(same), what=f"two passes = enumeration in exact rational arithmetic (p = {int(p)})")


# ---------------------------------------------------------------------------------------------- claim 19


def _minimizer_attains(net: R.ReluNet, p: float) -> None:
    """μ_{p,∞}(w̃)^d = φ_p(w) at the constructed w̃ (normalize units, then balance layers)."""
    d = net.depth
    w = R.rescale(net, C.path_norm_minimizer_scaling(net, p))
    mu, e_mu = C.group_norm(w, p, math.inf), C.group_norm_error_bound(w, p, math.inf, RESCALE_REL)
    mud, e_mud = _powd(mu, e_mu, d)
    phi, e_phi = C.path_norm(net, p), C.path_norm_error_bound(net, p)
    # construction: the float factors are within path_norm_minimizer_error of the exact minimizer
    e_con = C.path_norm_minimizer_error(net, p) * phi
    err = e_mud + e_phi + e_con
    certify.close(mud, phi, tol=2 * err, error=err,
                  what=f"μ_{{p,∞}}(w̃)^d at the constructed minimizer vs φ_p(w), p = {p:g}")
    evidence.scalar("μ_{p,∞}(w̃)^d / φ_p(w) at the constructed minimizer (theorem: = 1)", mud / phi)


@claim(
    "neyshabur-2015/path-norm-min-over-rescalings",
    source=NEYSHABUR_2015.at("Theorem 5 with Lemma 19", confirmed=False),
    kind="theorem",
    expect="holds",
    statement=r"For a network with a single output, the $\ell_p$ path norm equals the minimum over rescalings of "
    r"$\mu_{p,\infty}(\tilde w)^d$; it is attained by normalizing every hidden unit's incoming $\ell_p$ norm to 1 "
    r"and then balancing the layers, and every rescaling satisfies "
    r"$\mu_{p,\infty}(\tilde w)^d \ge \gamma_{p,\infty}(\tilde w) \ge \phi_p(w)$.",
    latex=r"\phi_p(w)=\min_{\tilde w\sim w}\mu_{p,\infty}(\tilde w)^d,\qquad "
    r"\mu_{p,\infty}(\tilde w)^d\ \ge\ \gamma_{p,\infty}(\tilde w)\ \ge\ \phi_p(w)",
    hypotheses=["bias-free layered ReLU net, depth 2–4, widths ≤ 4, ONE output",
                "every weight nonzero (magnitudes in [1/8, 2]), so every hidden unit has incoming weight",
                "equality part: p ∈ {1, 2, 3} ∪ [1, 4]; inequality part: p ∈ {1, 2, 3} (decided exactly on ties)",
                "random rescalings: a factor 2ᵉ per hidden unit, |e| ≤ 4"],
    max_examples=50,
)
@given(inst=rescaled_nets(outputs=st.just(1), nonzero=True, p=st.sampled_from([1.0, 2.0, 3.0])),
       p_real=st.floats(1.0, 4.0))
def path_norm_min_over_rescalings(inst, p_real):
    net, s, p = inst
    evidence.instances(net.batch)
    d = net.depth
    for q in (p, p_real):
        _minimizer_attains(net, q)
    # every rescaling: μ_{p,∞}(v)^d ≥ γ_{p,∞}(v) ≥ φ_p(v) for v = ρ(w) (φ_p(v) = φ_p(w) by claim 17)
    v = R.rescale(net, s)
    mu, e_mu = C.group_norm(v, p, math.inf), C.group_norm_error_bound(v, p, math.inf)
    mud, e_mud = _powd(mu, e_mu, d)
    gam, e_gam = C.layer_product(v, p, math.inf), C.layer_product_error_bound(v, p, math.inf)
    phi, e_phi = C.path_norm(v, p), C.path_norm_error_bound(v, p)
    err1, err2 = e_mud + e_gam, e_gam + e_phi
    certify.at_least(mud, gam - 2 * err1, error=err1, what="μ_{p,∞}(ρ(w))^d ≥ γ_{p,∞}(ρ(w)) (float64)")
    certify.at_least(gam, phi - 2 * err2, error=err2, what="γ_{p,∞}(ρ(w)) ≥ φ_p(ρ(w)) (float64)")
    ok = []
    for i in range(v.batch):
        Ws = C.to_fractions(v, i)
        norms = C.exact_unit_norms_pow(Ws, int(p))  # ‖w_{→u}‖_p^p per unit
        top = max(max(layer) for layer in norms)
        gamma_p = math.prod((max(layer) for layer in norms), start=Fraction(1))  # γ_{p,∞}^p
        phi_p = C.exact_path_norm_pow(Ws, int(p))
        ok.append(top**d >= gamma_p >= phi_p)
    certify.that(torch.tensor(ok), what="μ^{dp} ≥ γ^p ≥ φ^p in exact rational arithmetic (p-th powers)")
    evidence.scalar("μ_{p,∞}(ρ(w))^d / φ_p(w) at random rescalings (theorem: ≥ 1)", mud / phi)
    evidence.scalar("γ_{p,∞}(ρ(w)) / φ_p(w) at random rescalings (theorem: ≥ 1)", gam / phi)


@claim(
    "neyshabur-2015/path-norm-min-over-rescalings-several-outputs",
    source=NEYSHABUR_2015.at("Theorem 5 (single output)", confirmed=False),
    kind="conjecture",
    expect="refuted",
    statement=r"Negative control: the equality $\phi_p(w) = \min_{\tilde w \sim w}\mu_{p,\infty}(\tilde w)^d$ also "
    r"holds for networks with several outputs (false: the minimum is $\max_o \phi_p^{(o)}$, the largest "
    r"per-output path norm).",
    latex=r"\phi_p(w)=\min_{\tilde w\sim w}\mu_{p,\infty}(\tilde w)^d\quad(n_d\ge 2)",
    hypotheses=["as the theorem, with 2–3 outputs"],
    max_examples=50,
)
@given(inst=rescaled_nets(outputs=st.integers(2, 3), single=True, p=ps_any))
def path_norm_min_several_outputs(inst):
    net, _, p = inst
    evidence.instances(net.batch)
    _minimizer_attains(net, p)


# ---------------------------------------------------------------------------------------------- claim 20


def _root(x: torch.Tensor, rel_x: torch.Tensor, r: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x^{1/r} via exp(log(x)/r) and its relative error rel_x/r + 3u|log x|/r + 2u (faithful exp/log)."""
    y = torch.exp(torch.log(x) / r)
    return y, rel_x / r + 3 * U * torch.log(x).abs() / r + 2 * U


@claim(
    "neyshabur-2015/layer-balancing",
    source=NEYSHABUR_2015.at("Claim 1", confirmed=False),
    kind="lemma",
    expect="holds",
    statement=r"For every network $\mu_{p,q}(w) \ge d^{1/q}\gamma_{p,q}(w)^{1/d}$ (AM–GM over the $d$ layer norms), "
    r"with equality after the whole-layer rescaling $\tilde W_k = \gamma^{1/d} W_k / \|W_k\|_{p,q}$.",
    latex=r"\mu_{p,q}(w)\ \ge\ d^{1/q}\,\gamma_{p,q}(w)^{1/d},\qquad "
    r"\mu_{p,q}(\tilde w) = d^{1/q}\gamma_{p,q}(w)^{1/d}\ \text{for}\ \tilde W_k=\gamma^{1/d}W_k/\|W_k\|_{p,q}",
    hypotheses=["bias-free layered ReLU net, depth 1–4, widths ≤ 4, 1–3 outputs (nonzero weights for the equality)",
                "p ∈ {1, 2, 3}, q ∈ {p, 2p, ∞} ∪ [1, 4] (ties of the inequality decided exactly when q ∈ {p, 2p, ∞})"],
    max_examples=50,
)
@given(net=relu_nets(net_widths(depth=st.integers(1, 4), width=st.integers(1, 4), outputs=st.integers(1, 3)),
                     batch=(1, 3), nonzero=True),
       p=st.sampled_from([1, 2, 3]), qsel=st.one_of(st.sampled_from(["p", "2p", "inf"]), st.floats(1.0, 4.0)))
def layer_balancing(net, p, qsel):
    evidence.instances(net.batch)
    q = {"p": float(p), "2p": 2.0 * p, "inf": math.inf}[qsel] if isinstance(qsel, str) else qsel
    d = net.depth
    dq = 1.0 if math.isinf(q) else d ** (1.0 / q)
    mu, e_mu = C.group_norm(net, p, q), C.group_norm_error_bound(net, p, q)
    gam = C.layer_product(net, p, q)
    rel_gam = C.layer_product_error_bound(net, p, q) / gam
    root, rel_root = _root(gam, rel_gam, d)
    rhs = dq * root
    e_rhs = 1.01 * rhs * (rel_root + 4 * U)  # × d^{1/q}: its own rounding (≤ 3u) and the product (u)
    err = e_mu + e_rhs
    certify.at_least(mu, rhs - 2 * err, error=err, what=f"μ_{{p,q}} ≥ d^{{1/q}}γ^{{1/d}}, p = {p}, q = {q:g} (float64)")
    if isinstance(qsel, str):
        ok = []
        for i in range(net.batch):
            norms = C.exact_unit_norms_pow(C.to_fractions(net, i), p)  # s_v = ‖w_{→v}‖_p^p
            if qsel == "inf":  # μ^p = max_k M_k, γ^p = Π_k M_k with M_k = max_{v∈k} s_v: (max M)^d ≥ Π M
                M = [max(layer) for layer in norms]
                ok.append(max(M) ** d >= math.prod(M, start=Fraction(1)))
            else:  # q = jp: ‖W_k‖^q = T_k = Σ_v s_v^j, μ^q = Σ_k T_k; claim ⟺ (Σ T_k)^d ≥ d^d Π T_k
                j = 1 if qsel == "p" else 2
                T = [sum(sv**j for sv in layer) for layer in norms]
                ok.append(sum(T) ** d >= d**d * math.prod(T, start=Fraction(1)))
        certify.that(torch.tensor(ok), what="the inequality in exact rational arithmetic (q-th and d-th powers)")
    # equality after balancing
    w = R.rescale(net, C.layer_balancing_scaling(net, p, q))
    mu2, e_mu2 = C.group_norm(w, p, q), C.group_norm_error_bound(w, p, q, RESCALE_REL)
    e_con = C.layer_balancing_error(net, p, q) * rhs
    err2 = e_mu2 + e_rhs + e_con
    certify.close(mu2, rhs, tol=2 * err2, error=err2,
                  what=f"μ_{{p,q}}(w̃) = d^{{1/q}}γ^{{1/d}} after balancing, q = {q:g}")
    evidence.scalar("μ_{p,q}(w) / (d^{1/q} γ^{1/d}) before balancing (claim: ≥ 1)", mu / rhs)
    evidence.scalar("μ_{p,q}(w̃) / (d^{1/q} γ^{1/d}) after balancing (claim: = 1)", mu2 / rhs)


# ---------------------------------------------------------------------------------------------- claim 21


def _convex_norm_error(net: R.ReluNet) -> torch.Tensor:
    """Rounding of 2Σ_j ‖u_j‖₂‖v_j‖₂: each norm is √(Σ of n squares) — relative (γ_n + u)/2 + u (the sum,
    the squares, the root) — the product u, the sum over H units γ_H, the factor 2 exact; ×1.01."""
    n0, H, no = net.widths
    rel = (R.gamma(n0, net.dtype) + U) / 2 + U + (R.gamma(no, net.dtype) + U) / 2 + U + U + R.gamma(H, net.dtype)
    return 1.01 * rel * C.convex_net_norm(net)


def _weight_decay_error(net: R.ReluNet, weight_rel_err: float) -> torch.Tensor:
    """Rounding of Σ_e w_e² (P terms): squares u each, sum γ_P, relative weight error ε_w doubles; ×1.01."""
    return 1.01 * (R.gamma(net.num_params, net.dtype) + U + 2 * weight_rel_err) * C.weight_decay(net)


@claim(
    "neyshabur-2015/weight-decay-depth2-convex-norm",
    source=NEYSHABUR_2015.at("Theorem 10", confirmed=False),
    kind="theorem",
    expect="holds",
    statement=r"For depth-2 networks, the minimum over rescalings of the weight decay "
    r"$\sum_j (\|u_j\|^2 + \|v_j\|^2)$ equals $2\sum_j \|u_j\|_2\|v_j\|_2$ ($u_j$ the incoming, $v_j$ the "
    r"outgoing weights of hidden unit $j$), attained at $c_j = (\|v_j\|/\|u_j\|)^{1/2}$.",
    latex=r"\min_{c>0}\sum_j\Big(c_j^2\|u_j\|^2+\frac{\|v_j\|^2}{c_j^2}\Big)=2\sum_j\|u_j\|_2\,\|v_j\|_2",
    hypotheses=["depth-2 bias-free ReLU net, 1–4 hidden units, 1–2 outputs, nonzero weights",
                "random rescalings: a factor 2ᵉ per hidden unit, |e| ≤ 4"],
    max_examples=50,
)
@given(data=st.data())
def weight_decay_depth2_convex_norm(data):
    net = data.draw(relu_nets(net_widths(depth=st.just(2), width=st.integers(1, 4), outputs=st.integers(1, 2)),
                              batch=(1, 3), nonzero=True))
    s = data.draw(node_rescalings(net, log2_range=4.0))
    evidence.instances(net.batch)
    conv, e_conv = C.convex_net_norm(net), _convex_norm_error(net)
    # attained: the float factors ĉ_j = c*_j(1 ± η), η ≲ 4u; Σ c²A + B/c² is stationary at c*, so the excess
    # is second order: ≤ 4η²·value (for |η| ≤ 0.1) — far below the rounding, included anyway.
    w = R.rescale(net, C.weight_decay_minimizer_scaling(net))
    wd, e_wd = C.weight_decay(w), _weight_decay_error(w, RESCALE_REL)
    err = e_wd + e_conv + 4 * (4 * U) ** 2 * conv
    certify.close(wd, conv, tol=2 * err, error=err, what="Σ‖c u‖² + ‖v/c‖² at c* vs 2Σ‖u‖‖v‖ (float64)")
    # every rescaling v = ρ(w): WD(v) ≥ 2Σ‖u‖‖v‖ (the right side is invariant; evaluated on v itself)
    v = R.rescale(net, s)
    wd_v, conv_v = C.weight_decay(v), C.convex_net_norm(v)
    err_v = _weight_decay_error(v, 0.0) + _convex_norm_error(v)
    certify.at_least(wd_v, conv_v - 2 * err_v, error=err_v, what="WD(ρ(w)) ≥ 2Σ‖u‖‖v‖ (float64)")
    ok = []
    for i in range(v.batch):
        W1, W2 = C.to_fractions(v, i)
        A = [sum(x * x for x in row) for row in W1]  # ‖u_j‖²
        Bv = [sum(W2[o][j] ** 2 for o in range(len(W2))) for j in range(len(W1))]  # ‖v_j‖²
        # per unit: A_j + B_j ≥ 2√(A_j B_j)  ⟺  (A_j + B_j)² ≥ 4A_jB_j (both sides ≥ 0); summing gives the claim
        ok.append(all((a + b) ** 2 >= 4 * a * b for a, b in zip(A, Bv, strict=True)))
    certify.that(torch.tensor(ok), what="per-unit AM–GM in exact rational arithmetic (implies the sum)")
    evidence.scalar("weight decay / 2Σ‖u_j‖‖v_j‖ at random rescalings (theorem: ≥ 1)", wd_v / conv_v)
    evidence.scalar("weight decay / 2Σ‖u_j‖‖v_j‖ at c* (theorem: = 1)", wd / conv)


# ---------------------------------------------------------------------------------------------- claim 25


@claim(
    "neyshabur-2015/rademacher-depth1",
    source=NEYSHABUR_2015.at("Lemma 15 and Theorem 1 (d = 1)", confirmed=False),
    kind="lemma",
    expect="holds",
    statement=r"For depth 1 (linear predictors with $\|w\|_1 \le \phi$) the empirical Rademacher complexity is "
    r"exactly $\phi\,\mathbb{E}_\xi\|\sum_i \xi_i x_i\|_\infty / m$, and it is at most "
    r"$\sqrt{4\phi^2\log(2D)\max_i\|x_i\|_\infty^2/m}$.",
    latex=r"\hat{\mathcal{R}}_S=\frac{\phi}{m}\,\mathbb{E}_\xi\left\|\sum_i\xi_i x_i\right\|_\infty"
    r"\ \le\ \sqrt{\frac{4\phi^2\log(2D)\max_i\|x_i\|_\infty^2}{m}}",
    hypotheses=["m ∈ [1, 40] points in [−2, 2]ᴰ, D ∈ [1, 8], φ = 1 (both sides scale linearly in φ)",
                "m ≤ 14: exact average over all 2^m sign vectors; m > 14: 20000 Monte-Carlo sign vectors with a "
                "Hoeffding interval at level 0.999 (the error passed to certify is its half-width)",
                "constant 4 log(2D): the weaker of COLT'15's main-text and appendix versions"],
    max_examples=40,
)
@given(data=st.data())
def rademacher_depth1(data):
    m = data.draw(st.integers(1, 40))
    D = data.draw(st.integers(1, 8))
    x = data.draw(inputs(D, m=m))
    seed = data.draw(st.integers(0, 2**16))
    est, half, how = C.rademacher_linear_l1(x, 1.0, level=0.999, seed=seed)
    bound = C.rademacher_bound(1, 1.0, x)
    # the bound's own rounding (a few correctly rounded operations and a log/sqrt): ≤ 10u relative
    certify.at_most(est, bound, error=half + 10 * U * bound, what=f"R̂ ({how}) ≤ COLT'15 bound (d = 1)")
    if bool(bound > 0):
        evidence.scalar("R̂ / bound (depth 1)", (est / bound).item())
        evidence.series("depth 1: R̂ vs bound", x=bound, y=est, group="exact" if "exact" in how else "Monte Carlo",
                        kind="scatter", xlabel="COLT'15 bound", ylabel="R̂ (exact or MC)")


@claim(
    "neyshabur-2015/rademacher-deep-search",
    source=NEYSHABUR_2015.at("Theorem 1 with p = 1, q = ∞, and Corollary 7", confirmed=False),
    kind="theorem",
    expect="holds",
    statement=r"No depth-$d$ ReLU network in $\{\phi_1(w) \le \phi\}$ found by search beats the bound "
    r"$\sqrt{4^{d-1}\phi^2\cdot 4\log(2D)\max_i\|x_i\|_\infty^2/m}$ on the empirical Rademacher complexity: a "
    r"certified lower bound $L \le \hat{\mathcal R}_S$, built from nets in the class, stays below it.",
    latex=r"L\ \le\ \mathbb E_\xi\sup_{\phi_1(w)\le\phi}\frac1m\sum_i\xi_i f_w(x_i)\ \le\ "
    r"\sqrt{\frac{4^{d-1}\phi^2\cdot 4\log(2D)\max_i\|x_i\|_\infty^2}{m}}",
    hypotheses=["m ∈ [1, 24] points in [−2, 2]ᴰ, D ∈ [1, 4], depth d ∈ {2, 3}, φ = 1",
                "L = E_ξ max(single-unit nets ±σ(±x_j), Adam search over width-8 nets): exact average over all 2^m "
                "sign vectors for m ≤ 14 (one-sided Hoeffding over 20000 for m > 14) plus the search's gain on 16 "
                "sign vectors (one-sided Hoeffding, level 0.999 overall; see capacity.rademacher_relu_lower)",
                "how tight: the check refutes every bound below L (exactly for m ≤ 14). It cannot refute one between "
                "L and the paper's bound, and need not: R̂ (a non-convex sup) is not computable, and at m = 1, where "
                "L = R̂ = φ‖x‖_∞ exactly, the bound is 2^d√(log 2D) ≥ 3.3 times R̂ — the 4^{d−1} and 4 log(2D) "
                "constants are worst-case. Planted bounds R̂/1.5 are refuted where R̂ is known "
                "(tests/test_capacity.py)"],
    max_examples=12,
)
@given(data=st.data())
def rademacher_deep_search(data):
    m, D, depth = data.draw(st.integers(1, 24)), data.draw(st.integers(1, 4)), data.draw(st.sampled_from([2, 3]))
    x = data.draw(inputs(D, m=m))
    low = C.rademacher_relu_lower(x, depth, seed=data.draw(st.integers(0, 2**16)))
    bound = C.rademacher_bound(depth, 1.0, x)[0].item()
    # the bound's own rounding (a few correctly rounded operations, a log and a sqrt): ≤ 10u relative
    certify.at_most(low.lower, bound, error=low.rounding + 10 * U * bound,
                    what=f"certified lower bound on R̂ (depth {depth}; {low.how}) ≤ COLT'15 bound")
    if bound > 0:
        evidence.scalar(f"L / bound (depth {depth})", low.lower / bound)
        evidence.series("depth ≥ 2: certified lower bound on R̂ vs bound", x=torch.tensor([bound]),
                        y=torch.tensor([low.lower]), group=f"depth {depth}", kind="scatter",
                        xlabel="COLT'15 bound", ylabel="L ≤ R̂")
