"""Claims from Razin & Cohen, "Implicit Regularization in Deep Learning May Not Be Explainable by Norms"
(NeurIPS 2020, arXiv 2005.06398): CLAIMS.md 1–6 and 8–10.  (Claim 7, Gunasekar et al.'s conjecture transposed
to this problem, lives with its source in ``gunasekar_2017.py``.)

The problem P: 2×2 completion, Ω = {(1,2), (2,1), (2,2)}, b₁₂ = b₂₁ = 1, b₂₂ = 0.  Theorem numbers are as
reconstructed (unconfirmed).  The theorems are asymptotic (t → ∞); each claim checks an exact finite-time
corollary at loss levels ℓ_k < ½ along every trajectory (states located where ℓ(W(t)) first reaches ℓ_k):

* det W(t) > 0 at every level and at save times (claim 1);
* |W₁₁| ≥ f(ℓ) = (1 − √(2ℓ))²/√(2ℓ), hence every listed norm/quasi-norm ≥ f(ℓ) (each dominates |W₁₁|: the
  constant is 1), and each norm increases from level to level (claim 2);
* σ_min(W) ≤ g(ℓ) = δ(1 + (1 + δ)²/(1 − δ)²), δ = √(2ℓ) (from σ_min ≤ |W₂₂| + |W₁₂W₂₁|/|W₁₁| and the bound on
  |W₁₁|), so the distance to rank 1 → 0, and erank(W) ≤ exp(H(g/(f + g))) → 1 (claim 3).

Depth 2 is solved by the hybrid balanced solver (``implreg.flow.spectral``: factor coordinates until σ_min/σ_max
< 1e-3, then log σ_min coordinates, which keep det W's sign and size — det W ≈ e^{−266} at ℓ = 1e-3); depths
3–5 by Dormand–Prince in factor coordinates (``implreg.matrix.levels.flow_to_levels``).  Every comparison is
on certified values (the solvers' two-tolerance errors carried by certified arithmetic); undecided entries are
re-solved by the mpmath reference inside ``certify``.
"""

from __future__ import annotations

import math
from functools import reduce

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from implreg import certify, evidence, measures, stats
from implreg import factorization as fz
from implreg.claims import Source, batches, claim, require, sample
from implreg.harness.flow_evidence import bound_curve, det_vs_balanced_flow, reference_agreement, vs_loss
from implreg.matrix import levels as lv
from implreg.matrix import symbolic as sym
from implreg.numerics import Certified, cat, close, maximum
from implreg.problems import razin_cohen_2x2, razin_cohen_embedding, razin_cohen_observed, razin_cohen_perturbed
from implreg.strategies import matrix as ms

RAZIN_COHEN_2020 = Source(
    key="razin-cohen-2020",
    title="Implicit Regularization in Deep Learning May Not Be Explainable by Norms",
    authors="N. Razin, N. Cohen",
    year=2020,
    arxiv="2005.06398",
    venue="NeurIPS 2020",
)

DEPTHS = (2, 3, 4, 5)
INIT_SCALE = (1e-3, 1e-1)
#: Levels for claims 1 and 3 (to 3e-3: a third of the cost of 1e-3) and claim 2.  Adjacent levels are far enough
#: apart that each norm's increase between them is resolvable from the entries' error bounds.  Claim 2 stops at
#: 3e-3 too: at 1e-3 the Schatten-¼ quasi-norm is not certifiable from the solvers' errors (σ_min's enclosure
#: [0, ≈2e-3] at depth 3 in midpoint–radius arithmetic), nor from the 30–49-digit reference (measured 2026-12-05).
SHORT_LEVELS = (0.4, 0.2, 0.1, 5e-2, 3e-2, 2e-2, 1e-2, 5e-3, 3e-3)
NORM_LEVELS = (0.4, 0.2, 0.1, 3e-2, 1e-2, 3e-3)
#: Depth-2 instances per pooled batch (≤ 1024 instances) re-solved by the mpmath reference past the switch (≈ 1–2 s each
#: at 60 digits).
REF_CHECKS = 3
SAVE_T = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
BALANCED_2X2 = ("N ≥ 2 (depths 2–5 drawn)", "balanced init: W_(j+1)ᵀW_(j+1) = W_jW_jᵀ (built from drawn σ and Haar "
                "rotations)", "det W(0) > 0 (by construction)", f"init scale σ₁(W(0)) ∈ {list(INIT_SCALE)}")


def _balanced_pos(N: int):
    return ms.balanced_inits(depth=N, det_sign=+1, scale=INIT_SCALE)


# ---------------------------------------------------------------------------------------------- claim 1
@claim("razin-cohen-2020/det-sign-preserved", kind="theorem", expect="holds", budget_s=300, instances=1000,
       source=RAZIN_COHEN_2020.at("Theorem 1", confirmed=False),
       statement="On the 2×2 problem P, gradient flow on a depth-N ≥ 2 factorization from a balanced init with "
                 "det W(0) > 0 keeps det W(t) > 0 for all t.  Checked at every loss level "
                 f"{list(SHORT_LEVELS)} and at times {list(SAVE_T)} (where reached) for depths 2–5.  Depth 2 runs "
                 "the hybrid solver: past its switch to log σ_min coordinates the det sign is carried by "
                 "construction (σ_min = e^λ > 0), so there its check certifies the integration, not an independent "
                 f"fact; the independent check: for {REF_CHECKS} drawn instances per pooled batch the mpmath reference "
                 "(balanced factors at its precision, det W = det W₁·det W₂ at 60–100 digits) decides det W > 0 at "
                 "every level at and after the switch.",
       latex=r"N \ge 2,\ W_{j+1}^\top W_{j+1} = W_j W_j^\top,\ \det W(0) > 0 \;\Rightarrow\; \det W(t) > 0\ "
             r"\forall t \ge 0",
       hypotheses=BALANCED_2X2)
@given(by_depth=ms.depth_batches(DEPTHS, _balanced_pos, min_size=8, max_size=16))
def det_sign_preserved(by_depth):
    """det W in product form Π det W_j at depths 3–5 (``lv.certified_det``); depth 2 through the hybrid solver, whose
    sign past the switch is carried by construction and is checked independently against the reference."""
    for N, batch in by_depth.items():
        sol = lv.flow_to_levels(razin_cohen_2x2(len(batch)), batch, SHORT_LEVELS, save_at=SAVE_T)
        det, save_det = lv.certified_det(sol)
        certify(det > 0, what=f"det W > 0 at each loss level (depth {N})")
        certify(save_det[sol.saved] > 0, what=f"det W > 0 at the save times (depth {N})")
        log_det = sol.level_log_abs_det if N == 2 else torch.log(det.value.abs())
        vs_loss("log |det W(t)| vs loss (balanced init, det W(0) > 0)", sol.certified.level_loss, log_det,
                 f"depth {N}", "log |det W|", log_y=False)
        if N == 2:  # the independent check past the switch: the mpmath reference's det W₁·det W₂
            ref, table = lv.reference_dets_past_switch(sol, batch[:REF_CHECKS])
            for row in table:
                evidence.table("depth 2: det W past the switch, mpmath reference (det W₁·det W₂)", row)
            certify(ref > 0, what="det W > 0 past the switch (mpmath reference, product form, depth 2)")
    evidence.note("Finite-time check: det W > 0 at every recorded loss level and save time; depth 2 through the "
                  "hybrid balanced solver (det ≈ e^-100 at ℓ = 3e-3), depths 3–5 by Dormand–Prince with the det "
                  "guard (det W = Π det W_j); undecided entries escalate to the mpmath reference.")


# ---------------------------------------------------------------------------------------------- claim 2
@claim("razin-cohen-2020/norms-diverge", kind="theorem", expect="holds", instances=1000,
       source=RAZIN_COHEN_2020.at("Theorem 1", confirmed=False),
       statement="Same hypotheses as det-sign-preserved: whenever ℓ(W(t)) < ½, |W₁₁(t)| ≥ (1 − √(2ℓ))²/√(2ℓ), so "
                 "every norm and quasi-norm (Frobenius, nuclear, spectral, Schatten-p incl. 0 < p < 1, entrywise ℓ_p) "
                 "is ≥ that bound (each dominates |W₁₁|) and → ∞ as ℓ → 0; each norm increases as the loss falls.  "
                 f"Checked at the loss levels {list(NORM_LEVELS)} for depths 2–5.",
       latex=r"\ell(W(t)) < \tfrac12 \;\Rightarrow\; \|W(t)\| \ge |W_{11}(t)| \ge "
             r"\frac{(1-\sqrt{2\ell})^2}{\sqrt{2\ell}} \to \infty \quad (\ell \to 0)",
       hypotheses=BALANCED_2X2,
       budget_s=480)
@given(by_depth=ms.depth_batches(DEPTHS, _balanced_pos, min_size=8, max_size=16))
def norms_diverge(by_depth):
    for N, batch in by_depth.items():
        sol = lv.flow_to_levels(razin_cohen_2x2(len(batch)), batch, NORM_LEVELS)
        W, loss = sol.certified.level_end_to_end, sol.certified.level_loss
        f = lv.w11_lower_bound(lv.level_values(sol))  # at each level ℓ_k itself
        certify(W[..., 0, 0].abs() >= f, what=f"|W₁₁| ≥ (1 − √2ℓ)²/√2ℓ at each loss level (depth {N})")
        reference_agreement(sol, batch[0], f"depth {N}")
        vs_loss("|W₁₁| vs loss", loss, W.value[..., 0, 0].abs(), f"depth {N}", "|W₁₁|")
        for name, norm in measures.NORMS.items():
            n = norm(W)
            certify(measures.norm_at_least(name, W, f), what=f"{name} ≥ (1 − √2ℓ)²/√2ℓ (depth {N})")
            certify(measures.norm_increases(name, W), what=f"{name} increases as the loss falls (depth {N})")
            if name in ("frobenius", "nuclear"):
                vs_loss(f"{name} norm vs loss", loss, n.value, f"depth {N}", f"‖W‖ ({name})")
    bound_curve("|W₁₁| vs loss", lv.w11_lower_bound, 1e-3, 0.45, "lower bound (1 − √2ℓ)²/√2ℓ")
    evidence.note(f"Finite-time corollary checked at ℓ ∈ {list(NORM_LEVELS)}: |W₁₁| and every norm in "
                  f"{', '.join(measures.NORMS)} ≥ (1 − √2ℓ)²/√2ℓ, and every norm larger at each smaller level.")


# ---------------------------------------------------------------------------------------------- claim 3

#: Levels where the erank bound exp(H(g/(f+g))) is below 2 (at ℓ ≥ 0.05, g ≥ f and the bound is the trivial 2).
ERANK_LEVELS = torch.tensor([bool(lv.erank_upper_bound(x) < 1.99) for x in SHORT_LEVELS])


@claim("razin-cohen-2020/rank-tends-to-one", kind="corollary", expect="holds", budget_s=300, instances=1000,
       source=RAZIN_COHEN_2020.at("Theorem 1 (rank part)", confirmed=False),
       statement="Same hypotheses as det-sign-preserved: σ_min(W) ≤ |W₂₂| + |W₁₂W₂₁|/|W₁₁| = O(√ℓ), so the distance "
                 "to the rank-1 matrices → 0 and the effective rank → 1.  Checked at the loss levels "
                 f"{list(SHORT_LEVELS)} for depths 2–5 as σ_min(W) = dist(W, rank 1) ≤ g(ℓ) = δ(1 + (1+δ)²/(1−δ)²), "
                 "δ = √(2ℓ), and erank(W) ≤ exp(H(g/(f + g))) (f the |W₁₁| bound of norms-diverge) where that is < 2.",
       latex=r"\sigma_{\min}(W) \le |W_{22}| + \frac{|W_{12}W_{21}|}{|W_{11}|} \le \sqrt{2\ell}\Big(1 + "
             r"\tfrac{(1+\sqrt{2\ell})^2}{(1-\sqrt{2\ell})^2}\Big) \to 0,\quad \operatorname{erank}(W) \to 1",
       hypotheses=BALANCED_2X2)
@given(by_depth=ms.depth_batches(DEPTHS, _balanced_pos, min_size=8, max_size=16))
def rank_tends_to_one(by_depth):
    for N, batch in by_depth.items():
        v = lv.flow_to_levels(razin_cohen_2x2(len(batch)), batch, SHORT_LEVELS).certified
        W, loss = v.level_end_to_end, v.level_loss
        g = lv.sigma_min_upper_bound(loss)
        smin, erank = measures.sigma_min(W), measures.effective_rank(W)
        certify(smin <= g, what=f"σ_min(W) ≤ g(ℓ) (depth {N})")
        certify(measures.distance_to_rank(W, 1) <= g, what=f"dist(W, rank 1) ≤ g(ℓ) (depth {N})")
        certify(erank[:, ERANK_LEVELS] <= lv.erank_upper_bound(loss[:, ERANK_LEVELS]),
                what=f"erank(W) ≤ exp(H(g/(f+g))) (depth {N})")
        vs_loss("σ_min(W) vs loss", loss, smin.value, f"depth {N}", "σ_min = distance to rank 1")
        vs_loss("effective rank vs loss", loss, erank.value, f"depth {N}", "erank(W)", log_y=False)
    bound_curve("σ_min(W) vs loss", lv.sigma_min_upper_bound, 3e-3, 0.1, "upper bound g(ℓ)")
    bound_curve("effective rank vs loss", lv.erank_upper_bound, 3e-3, 0.1, "upper bound exp(H(g/(f+g)))")


# ---------------------------------------------------------------------------------------------- claim 4
@claim("razin-cohen-2020/det-sign-symmetry", kind="proposition", expect="holds", max_examples=30,
       source=RAZIN_COHEN_2020.at("§3 (probability ½, exact part)", confirmed=False),
       statement="Negating the first row of W_N maps any init θ to θ' with identical |entries| (so an i.i.d. "
                 "init distribution symmetric about 0 assigns θ and θ' the same density) and det W(θ') = −det W(θ) "
                 "exactly; hence P[det W(0) > 0] = P[det W(0) < 0] = ½ (det = 0 has probability 0).",
       latex=r"\theta' = (W_1,\dots,\operatorname{diag}(-1,1,\dots)W_N):\ p(\theta') = p(\theta),\ "
             r"\det W(\theta') = -\det W(\theta)",
       hypotheses=("any depth 1–5 and square end-to-end size d = 1–3, hidden widths d … 3 (a narrower hidden layer "
                   "makes det W ≡ 0, where P[det W(0) > 0] = ½ is false: excluded)",
                   "entries i.i.d. from a continuous distribution symmetric about 0"))
@given(init=st.integers(1, 3).flatmap(lambda d: st.lists(st.integers(d, 3), min_size=0, max_size=4).flatmap(
    lambda h: ms.gaussian_inits(dims=(d, *h, d), scale=(1e-2, 10.0)))))
def det_sign_symmetry(init):
    factors = [Certified.exact(W) for W in init.factors()]
    flipped = [*factors[:-1], Certified.exact(fz.negate_row(factors[-1].value))]
    det0, det1 = (reduce(lambda W, Wj: Wj @ W, fs).det() for fs in (factors, flipped))
    certify(det1 == -det0, what="det W(θ') = −det W(θ) exactly")  # exact inputs: decided in rational arithmetic
    certify.that(all(bool((a.value.abs() == b.value.abs()).all()) for a, b in zip(factors, flipped, strict=True)),
                 what="|entries| of θ' equal those of θ (same density under any symmetric i.i.d. law)")


#: Entries from each family (all continuous and symmetric about 0), from a seeded generator.
_DRAW = {"gaussian": lambda rng, n: rng.standard_normal(n), "uniform": lambda rng, n: rng.uniform(-1.0, 1.0, n),
         "laplace": lambda rng, n: rng.laplace(0.0, 1.0, n), "student-t(3)": lambda rng, n: rng.standard_t(3, n)}
#: Equivalence margin and sample size: at n = 2000 the exact TOST shows P ∈ ½ ± 0.05 with power 0.97 when P = ½
#: (``stats._binom_tost_power``); a two-sided test at n = 600 had power ≈ 0.5 against P = 0.45.
P_HALF_MARGIN, P_HALF_N = 0.05, 2000
#: Every (family, scale, depth, size, hidden width) a sample row may use; one Hypothesis draw picks a row's setting
#: (one draw per row keeps the 600-row sample within Hypothesis' example-size limits).
_SETTINGS = [(f, 10.0**e, N, d, h) for f in _DRAW for e in (-3, -2, -1, 0, 1) for N in range(1, 6)
             for d in (1, 2, 3) for h in (1, 2, 3) if h >= d or N == 1]


@claim("razin-cohen-2020/det-positive-probability-half", kind="empirical", expect="holds", max_examples=1,
       source=RAZIN_COHEN_2020.at("§3 (probability ½)", confirmed=False),
       statement="For init entries drawn i.i.d. from a continuous distribution symmetric about 0 (any scale, any "
                 "depth), P[det W(0) > 0] = ½.  Statistical part: exact binomial equivalence test (TOST) of "
                 f"P ∈ (½ − {P_HALF_MARGIN}, ½ + {P_HALF_MARGIN}) at level 0.01 over {P_HALF_N} inits (power ≈ 0.97 "
                 "at P = ½; family, scale, depth, size and hidden widths ≥ size drawn by Hypothesis, entries drawn "
                 "from the stated law by a seeded generator): holds when the data show P within the margin.",
       latex=r"\Pr[\det W(0) > 0] = \tfrac12",
       hypotheses=(f"families {', '.join(_DRAW)}", "scales 10^-3 … 10", "depth 1–5", "end-to-end size d = 1–3",
                   "hidden widths d … 3 (a narrower hidden layer makes det W ≡ 0, and the claim is then false: "
                   "P[det W(0) > 0] = 0)"))
@sample(n=P_HALF_N, test=stats.proportion(0.5, within=P_HALF_MARGIN, alpha=0.01),
        setting=st.integers(0, len(_SETTINGS) - 1))
def det_positive_probability_half(setting, rng):
    family, scale, depth, d, width = _SETTINGS[setting]
    dims = (d, *([width] * (depth - 1)), d)
    W = scale * _DRAW[family](rng, (dims[1], dims[0]))
    for j in range(1, depth):
        W = (scale * _DRAW[family](rng, (dims[j + 1], dims[j]))) @ W
    return bool(np.linalg.det(W) > 0)


# ---------------------------------------------------------------------------------------------- claim 5
@claim("razin-cohen-2020/solutions-det-minus-one", kind="identity", expect="holds", max_examples=40,
       source=RAZIN_COHEN_2020.at("§3 (the problem P)", confirmed=False),
       statement="Every solution of P is [[w, 1], [1, 0]] with det −1 (rank 2); over the solutions the nuclear norm "
                 "is √(w² + 4), minimized at the bounded completion w = 0 (value 2), and so is every other listed norm "
                 "and quasi-norm.  Symbolic proof (sympy), cross-checked numerically at drawn w.",
       latex=r"\det\begin{pmatrix} w & 1\\ 1 & 0\end{pmatrix} = -1,\quad \left\|\begin{pmatrix} w & 1\\ 1 & 0"
             r"\end{pmatrix}\right\|_* = \sqrt{w^2+4} \ge 2 = \min",
       hypotheses=("w any real number (drawn in [−10⁶, 10⁶] for the numeric cross-check)",))
@given(w=st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False))
def solutions_det_minus_one(w):
    for proof in (sym.completion_det(), sym.completion_norms()):
        evidence.note(proof.note())
        certify.that(proof.holds, what=proof.statement)
    W = Certified.exact(torch.tensor([[[w, 1.0], [1.0, 0.0]]], dtype=torch.float64))
    certify(W.det() == -1, what="numeric det = −1")
    # numeric norms against the closed forms the proof uses (σ₁,₂ = (√(w²+4) ± |w|)/2), both certified
    a = W[:, 0, 0].abs()
    r = (a * a + 4).sqrt()
    s1, s2 = (r + a) / 2, 2 / (r + a)
    closed = {"frobenius": (a * a + 2).sqrt(), "nuclear": r, "spectral": s1, "entrywise-inf": maximum(a, 1.0),
              "entrywise-1": a + 2}
    for name, norm in measures.NORMS.items():
        kind, _, p = name.partition("-")
        if name not in closed:
            p = float(p)
            closed[name] = (s1**p + s2**p) ** (1 / p) if kind == "schatten" else (a**p + 2) ** (1 / p)
        # agreement to 40 bits: far beyond both sides' certified errors (≈ 1e-15 relative), far below any
        # mistake in a formula (the symbolic proof above is the claim; this cross-checks the library's measures)
        certify(close(norm(W), closed[name], tol=2.0**-40 * closed[name].value),
                what=f"numeric {name} = its closed form over the completions")


# ---------------------------------------------------------------------------------------------- claim 6

_UNBAL_WHAT = "det W ≥ 0 where ℓ = 1e-3 and at the save times"


@claim("razin-cohen-2020/unbalanced-det-sign-preserved",
       kind="conjecture", expect="refuted", refuted_by=_UNBAL_WHAT, budget_s=120, max_examples=6,
       source=RAZIN_COHEN_2020.at("Theorem 1 without the balancedness hypothesis (negative control)", confirmed=False),
       statement="Negative control: 'the determinant sign is preserved for unbalanced (i.i.d. Gaussian) init' — "
                 "depth 2, det W(0) > 0, entries i.i.d. N(0, s²).  Exact gradient flow flips the sign for most such "
                 "inits; the harness must find and shrink one.  Checked: det W ≥ 0 at the save times and at ℓ = 1e-3.",
       latex=r"\det W(0) > 0 \;\Rightarrow\; \det W(t) > 0 \quad\text{(unbalanced init: false)}",
       hypotheses=("depth 2, 2×2 factors", "entries i.i.d. N(0, s²), s ∈ [1e-3, 1e-2]", "det W(0) > 0 (first row of "
                   "W_2 negated where needed, a measure-preserving map)"))
@given(batch=batches(ms.gaussian_inits(dims=(2, 2, 2), scale=(1e-3, 1e-2), det_sign=+1), max_size=8))
def unbalanced_det_sign_preserved(batch):
    save = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0)
    sol = lv.flow_to_levels(razin_cohen_2x2(len(batch)), batch, (1e-3,), save_at=save, guard="none", t_max=1e4)
    require(torch.isfinite(sol.level_t[:, 0]), "every instance reached ℓ = 1e-3")
    det, save_det = lv.certified_det(sol)  # det W = det W₁·det W₂
    det_vs_balanced_flow(batch[:4], torch.tensor(save), torch.where(sol.saved, save_det.value, math.nan)[:4])
    certify(cat([det[:, 0], save_det[sol.saved]]) >= 0, what=_UNBAL_WHAT)


# ---------------------------------------------------------------------------------------------- claim 8
#: Claim 8: levels below which δ = √(2ℓ) < ¼ ≤ min(|z|, |z′|) for every drawn z, z′ (δ(3e-2) = 0.245), save times
#: (states of flows that never reach those levels: trapped ones), and the horizon.
ROBUST_LEVELS = (3e-2, 1e-2)
ROBUST_SAVES = (10.0, 30.0, 100.0)
ROBUST_T = 100.0
_W_WHAT = "|w| ≥ (|z|−δ)(|z′|−δ)/(|ε|+δ) at the unobserved entry"
_S_WHAT = "σ_min(W) ≤ (|ε|+δ)(1 + (|z|+δ)(|z′|+δ)/((|z|−δ)(|z′|−δ)))"


def _robust_instance(N: int):
    return ms.perturbed_observations().flatmap(
        lambda o: st.tuples(st.just(o), ms.balanced_inits(depth=N, det_sign=o.det_sign, scale=INIT_SCALE)))


@claim("razin-cohen-2020/perturbed-robustness", kind="theorem", expect="holds", budget_s=300, instances=1000,
       source=RAZIN_COHEN_2020.at("§ Robustness to Perturbations (derived finite-time form)", confirmed=False),
       statement="Observations [[∗, z], [z′, ε]] (z, z′ ≠ 0, ε arbitrary, ∗ at any position), balanced init with "
                 "sign det W(0) = sign(z·z′) (in the frame of ∗ at (1,1)), depth N ≥ 2: at every state, with "
                 "δ = √(2ℓ) < min(|z|, |z′|), the unobserved entry has |w| ≥ (|z|−δ)(|z′|−δ)/(|ε|+δ) and "
                 "σ_min(W) ≤ (|ε|+δ)(1 + (|z|+δ)(|z′|+δ)/((|z|−δ)(|z′|−δ))) — the paper's ‖W‖ = Ω(min(|z|,|z′|)/"
                 "(|ε|+√2ℓ)) and distance to rank 1 = O((|ε|+√2ℓ)/min(|z|,|z′|)), made exact (derived from the det "
                 "sign alone).  Checked at the loss levels "
                 f"{list(ROBUST_LEVELS)} and the times {list(ROBUST_SAVES)} (where δ < min(|z|, |z′|)) for depths "
                 "2–4, with the authors' (−2, ½, ε ∈ {½, 0.1, 0.05, 0.01}) among the drawn (z, z′, ε).  Subsumes the "
                 "earlier perturbed-rank-one-if-converging (its bound W₁₁ ≤ −(2−δ)(½−δ)/(ε+δ) is this one there).",
       latex=r"\delta = \sqrt{2\ell} < \min(|z|,|z'|) \;\Rightarrow\; |w| \ge \frac{(|z|-\delta)(|z'|-\delta)}"
             r"{|\varepsilon|+\delta},\ \sigma_{\min}(W) \le (|\varepsilon|+\delta)\Big(1 + "
             r"\frac{(|z|+\delta)(|z'|+\delta)}{(|z|-\delta)(|z'|-\delta)}\Big)",
       hypotheses=("N ∈ {2, 3, 4}", "balanced init with the det sign of the theorem", f"init scale {list(INIT_SCALE)}",
                   "|z|, |z′| ∈ [¼, 4], |ε| ∈ [0.01, ½], signs and the position of ∗ drawn"))
@given(by_depth=ms.depth_batches((2, 3, 4), _robust_instance, min_size=1, max_size=4))
def perturbed_robustness(by_depth):
    """Proof of the bounds (checked numerically on 10⁵ random matrices before encoding): the det sign is kept
    (balanced flow, any loss), W₁₂W₂₁ has the sign of zz′ and modulus ≥ (|z|−δ)(|z′|−δ), |W₂₂| ≤ |ε|+δ, so
    |w||W₂₂| > |W₁₂W₂₁|; and σ_min = |det W|/σ_max ≤ |W₂₂| + |W₁₂W₂₁|/|w|."""
    for batch in by_depth.values():
        obs, inits = zip(*batch, strict=True)
        z, zp, eps = (torch.tensor([getattr(o, a) for o in obs], dtype=torch.float64) for a in ("z", "zp", "eps"))
        at = torch.tensor([o.unobserved for o in obs])
        v = lv.flow_to_levels(razin_cohen_observed(z, zp, eps, at), inits, ROBUST_LEVELS, save_at=ROBUST_SAVES,
                           t_max=ROBUST_T).certified
        at_levels, at_saves = (lv.robustness_bounds(W, loss, z, zp, eps, at) for W, loss in
                               ((v.level_end_to_end, v.level_loss), (v.save_end_to_end, v.save_loss)))
        for b in (at_levels, at_saves):  # at the states where δ < min(|z|, |z′|)
            certify(b.w[b.usable] >= b.w_bound[b.usable], what=_W_WHAT)
            certify(b.sigma_min[b.usable] <= b.sigma_bound[b.usable], what=_S_WHAT)
        w = torch.where(at_levels.usable, at_levels.w.value, math.nan)
        for k, level in enumerate(ROBUST_LEVELS):
            evidence.series(f"|w| vs |ε| at ℓ = {level:g} (unobserved entry)", x=eps.abs(), y=w[:, k], group="flow",
                            xlabel="|ε|", ylabel="|w|", log_x=True, log_y=True, kind="scatter")
    delta = math.sqrt(2 * ROBUST_LEVELS[0])
    bound_curve(f"|w| vs |ε| at ℓ = {ROBUST_LEVELS[0]:g} (unobserved entry)",
                lambda e: lv.perturbed_w_lower_bound(-2.0, 0.5, e, delta), 0.01, 0.5, "bound for z = −2, z′ = ½", n=30)


PERTURBED_HYPOTHESES = ("N ∈ {2, 3, 4}", "balanced init, det W(0) < 0", f"init scale {list(INIT_SCALE)}",
                        "ε ∈ [0.05, 0.5]")
_TRAP_WHAT = "W₁₁ < 0 at ℓ = 0.1 (else trapped: W₁₁ > 0 and W₂₂ < 0 forever, ℓ ≥ ε²/2)"


def _perturbed_instance(N: int):
    return st.tuples(ms.balanced_inits(depth=N, det_sign=-1, scale=INIT_SCALE), ms.perturbation_eps(0.05, 0.5))


@claim("razin-cohen-2020/perturbed-rank-one",
       kind="proposition", expect="refuted", refuted_by=_TRAP_WHAT, max_examples=3,
       source=RAZIN_COHEN_2020.at("an earlier wording of catalogue claim 8 (not the paper's)", confirmed=False),
       finding="An earlier wording of CLAIMS.md claim 8 — 'the flow approaches the completion w = −1/ε' — is false.  "
               "Certificate: at ℓ < ⅛, |W₁₂ + 2|, |W₂₁ − ½| < ½, so W₁₂W₂₁ < 0; with det W < 0 (kept by balanced "
               "flow) and W₁₁ > 0, W₁₁ can never reach 0 (det would be −W₁₂W₂₁ > 0), so W₂₂ < 0 for ever and "
               "ℓ ≥ ε²/2.  The harness certifies det W < 0, ℓ < ⅛ and W₁₁ > 0 at ℓ = 0.1 (shrunk: depth 2, "
               "σ = (0.1, 0.1), ε = 0.1).  Trapping depends on init scale and ε (independent float64 simulation, "
               "depth 2): ε ∈ [0.05, 0.5] with σ₁ = 0.1: 11/60 trapped; σ₁ = 3e-3: 7/400; σ₁ ≤ 1e-3: 0/400; ε = 0.01 "
               "with σ₁ = 1e-4: 25/150; σ₁ = 1e-5: 4/150.  At most a limit statement (init → 0 at fixed ε) might "
               "survive.  The trap is a property of exactly balanced flow: a plain float64 continuation of a trapped "
               "state flips det W and reaches ℓ = 1e-4.  What the paper states holds: "
               "razin-cohen-2020/perturbed-robustness.",
       statement="Negative control (an earlier catalogue wording): perturbed problem b₁₂ = −2, b₂₁ = ½, b₂₂ = ε > 0, "
                 "balanced init with det W(0) < 0 ⇒ gradient flow approaches the rank-1 completion w = −1/ε.  "
                 "Checked as its necessary condition W₁₁ < 0 once ℓ < ⅛ (at ℓ = 0.1), after certifying det W < 0 "
                 "and ℓ < ⅛ there (which make W₁₁ > 0 a permanent trap).",
       latex=r"\det W(0) < 0 \;\Rightarrow\; W(t) \to \begin{pmatrix} -1/\varepsilon & -2\\ 1/2 & \varepsilon"
             r"\end{pmatrix}",
       hypotheses=PERTURBED_HYPOTHESES,
       budget_s=60)  # caps generation, and shrinking at 60 s after the first failure
@given(by_depth=ms.depth_batches((2, 3, 4), _perturbed_instance, min_size=1, max_size=8))
def perturbed_rank_one(by_depth):
    for N, batch in by_depth.items():
        inits, eps = [b for b, _ in batch], torch.tensor([x for _, x in batch], dtype=torch.float64)
        sol = lv.flow_to_levels(razin_cohen_perturbed(eps), inits, (0.1,))
        require(torch.isfinite(sol.level_t[:, 0]), f"every instance reached ℓ = 0.1 (depth {N})")
        v = sol.certified
        certify(v.level_loss[:, 0] < 0.125, what="ℓ < ⅛ at ℓ = 0.1")
        certify(lv.certified_det(sol)[0][:, 0] < 0, what="det W < 0 at ℓ = 0.1")
        certify(v.level_end_to_end[:, 0, 0, 0] < 0, what=_TRAP_WHAT)


# ---------------------------------------------------------------------------------------------- claim 9
#: The bound (2 − (1+δ)^d)/(δ(1+δ)^{d−2}) is positive only for δ < 2^{1/d} − 1, i.e. ℓ < 0.034 (d = 3) and
#: ℓ < 0.018 (d = 4): these levels give it at 4 levels for d = 3 (0.23 … 9.0) and 3 for d = 4 (1.6, 4.4, 7.3).
EMBED_LEVELS = (0.1, 3e-2, 1e-2, 5e-3, 3e-3)
EMBED_DIMS = (3, 4)


@claim("razin-cohen-2020/embedding-norms-diverge", kind="proposition", expect="holds", budget_s=300, instances=1000,
       source=RAZIN_COHEN_2020.at("authors' code (d×d embedding)", confirmed=False),
       statement="d×d embedding: every entry but (1,1) observed, M₁₂ = M₂₁ = 1, M_ii = 1 (i ≥ 3), zeros elsewhere.  "
                 "Every completion has det −1 (sympy), and under balanced init with det W(0) > 0 the same divergence "
                 "holds: whenever δ = √(2ℓ) is small enough, |W₁₁| ≥ (2 − (1+δ)^d)/(δ(1+δ)^{d−2}) (det W is affine "
                 "in W₁₁ with slope the (1,1) minor, |minor| ≤ δ(1+δ)^{d−2}, and the rest ≤ −1 + (1+δ)^d − 1 by "
                 "Ipsen–Rehman).  Checked at the loss levels "
                 f"{list(EMBED_LEVELS)} for both d = 3 and d = 4 in every example, depths 2–4.",
       latex=r"\det W > 0,\ \ell(W) < \ell_0 \;\Rightarrow\; |W_{11}| \ge "
             r"\frac{2-(1+\delta)^d}{\delta(1+\delta)^{d-2}},\ \delta = \sqrt{2\ell}",
       hypotheses=("d ∈ {3, 4}", "N ∈ {2, 3, 4}", "balanced init, det W(0) > 0", f"init scale {list(INIT_SCALE)}"))
@given(cases=st.fixed_dictionaries({d: ms.depth_batches(
    (2, 3, 4), lambda N, d=d: ms.balanced_inits(depth=N, shape=(d, d), det_sign=+1, scale=INIT_SCALE), min_size=2,
    max_size=6) for d in EMBED_DIMS}))
def embedding_norms_diverge(cases):
    for d, by_depth in cases.items():
        proof = sym.embedding_det(d)
        evidence.note(proof.note())
        certify.that(proof.holds, what=proof.statement)
        for N, batch in by_depth.items():
            sol = lv.flow_to_levels(razin_cohen_embedding(d, len(batch)), batch, EMBED_LEVELS)
            W, loss = sol.certified.level_end_to_end, sol.certified.level_loss
            bound = lv.embedding_w11_lower_bound(lv.level_values(sol), d)  # at each level ℓ_k itself
            # reached levels, even with an unbounded error estimate (that comparison escalates to the reference)
            usable = torch.isfinite(sol.level_t) & lv.embedding_bound_positive(EMBED_LEVELS, d)
            # a precondition (never a refutation): the bound is positive at ≥ 3 reached levels
            require(usable.sum(-1) >= 3, what=f"the bound is positive at ≥ 3 reached levels (depth {N}, d = {d})")
            evidence.note(f"d = {d}, depth {N}: the bound is positive at {int(usable[0].sum())} of "
                          f"{len(EMBED_LEVELS)} levels")
            certify(W[..., 0, 0].abs()[usable] >= bound[usable],
                    what=f"|W₁₁| ≥ (2 − (1+δ)^d)/(δ(1+δ)^(d−2)) (depth {N}, d = {d})")
            vs_loss("d×d embedding: |W₁₁| vs loss", loss, W.value[..., 0, 0].abs(), f"d = {d}, depth {N}", "|W₁₁|")
