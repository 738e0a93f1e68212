"""Gunasekar, Woodworth, Bhojanapalli, Neyshabur & Srebro, "Implicit Regularization in Matrix Factorization"
(NIPS 2017, arXiv 1705.09280): their conjecture, transposed to Razin & Cohen's problem (CLAIMS.md claim 7).

Gunasekar et al. conjecture that gradient flow on a (depth-2) factorization from near-zero init converges to a
minimum nuclear norm solution.  Razin & Cohen's problem P (every solution [[w, 1], [1, 0]], minimum nuclear
norm 2 at w = 0, see ``razin_cohen_2020.solutions-det-minus-one``) is their counterexample: under balanced init
with det W(0) > 0 the nuclear norm diverges.  Conjecture numbering is as reconstructed.
"""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from implreg import certify, evidence, measures
from implreg.claims import Source, claim, require
from implreg.matrix.levels import flow_to_levels, w11_lower_bound
from implreg.numerics import Certified
from implreg.problems import razin_cohen_2x2
from implreg.strategies.matrix import balanced_inits, same_depth_batches

GUNASEKAR_2017 = Source(key="gunasekar-2017", title="Implicit Regularization in Matrix Factorization",
                        authors="S. Gunasekar, B. Woodworth, S. Bhojanapalli, B. Neyshabur, N. Srebro", year=2017,
                        arxiv="1705.09280", venue="NIPS 2017")

LEVEL, SLACK = 3e-2, 0.25
CONVERGENCE = f"‖W‖_* ≤ 2 + {SLACK} once ℓ ≤ {LEVEL} — required by convergence to the minimum nuclear norm 2"


@claim("gunasekar-2017/min-nuclear-norm-on-razin-cohen", kind="conjecture", expect="refuted",
       source=GUNASEKAR_2017.at("Conjecture 1 (transposed to Razin & Cohen's problem)", confirmed=False),
       statement="Negative control: 'gradient flow from near-zero init converges to a minimum nuclear norm "
                 "completion' on Razin & Cohen's 2×2 problem (balanced init, det W(0) > 0; minimum nuclear norm 2).  "
                 f"Convergence to norm 2 implies that eventually ‖W(t)‖_* ≤ 2 + {SLACK}; but once ℓ ≤ ℓ₀ = {LEVEL}, "
                 "‖W(t)‖_* ≥ |W₁₁(t)| ≥ (1 − √2ℓ)²/√2ℓ ≥ 2.33 for all later t (Razin & Cohen's bound, claim "
                 "norms-diverge, with det W(t) > 0 and ℓ non-increasing).  Checked: ‖W‖_* ≤ 2 + "
                 f"{SLACK} where ℓ first reaches {LEVEL}; a violation there persists forever, refuting the limit.",
       latex=r"\lim_{t\to\infty} \|W(t)\|_* = \min_{W:\,\ell(W)=0} \|W\|_* = 2 \quad\text{(false on this problem)}",
       hypotheses=("N ∈ {2, 3, 4}", "balanced init, det W(0) > 0", "near-zero init: σ₁(W(0)) ∈ [1e-4, 1e-2]"),
       budget_s=120, max_examples=4, refuted_by=CONVERGENCE)
@given(batch=same_depth_batches(st.integers(2, 4), lambda N: balanced_inits(depth=N, det_sign=+1,
                                                                           scale=(1e-4, 1e-2)), max_size=8))
def min_nuclear_norm_on_razin_cohen(batch):
    sol = flow_to_levels(razin_cohen_2x2(len(batch)), batch, (LEVEL,))
    # a solver that never got to ℓ₀ says nothing about the conjecture: a precondition, never a refutation
    require(torch.isfinite(sol.level_t[:, 0]), f"every instance reached ℓ = {LEVEL} (depth {batch[0].depth})")
    # the bound that makes a violation at ℓ₀ permanent, rigorously at the float64 level the solver stops at
    certify(w11_lower_bound(Certified.exact(LEVEL)) > 2 + SLACK, what=f"(1 − √2ℓ₀)²/√2ℓ₀ > 2 + {SLACK} at ℓ₀ = {LEVEL}")
    nuc = measures.nuclear(sol.certified.level_end_to_end[:, 0])
    evidence.scalar(f"‖W‖_* where ℓ = {LEVEL}", nuc.value)
    certify(nuc <= 2 + SLACK, what=CONVERGENCE)
