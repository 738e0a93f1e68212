"""Gunasekar, Woodworth, Bhojanapalli, Neyshabur & Srebro, "Implicit Regularization in Matrix Factorization"
(NIPS 2017, arXiv 1705.09280): their conjecture, transposed to Razin & Cohen's problem (CLAIMS.md claim 7).

Gunasekar et al. conjecture that gradient flow on a (depth-2) factorization from near-zero init converges to a
minimum nuclear norm solution.  Razin & Cohen's problem P (every solution [[w, 1], [1, 0]], minimum nuclear
norm 2 at w = 0, see ``razin_cohen_2020.solutions-det-minus-one``) is their counterexample: under balanced init
with det W(0) > 0 the nuclear norm diverges.  Conjecture numbering is as reconstructed.
"""

from __future__ import annotations

import re

import torch
from hypothesis import given
from hypothesis import strategies as st

from implreg import certify, evidence, measures
from implreg.claims import Source, claim
from implreg.numerics import Certified
from implreg.preconditions import require
from implreg.problems import razin_cohen_2x2
from implreg.strategies.matrix import balanced_inits, same_depth_batches
from theorems._factorization import solve_levels, w11_lower_bound

GUNASEKAR_2017 = Source(
    key="gunasekar-2017",
    title="Implicit Regularization in Matrix Factorization",
    authors="S. Gunasekar, B. Woodworth, S. Bhojanapalli, B. Neyshabur, N. Srebro",
    year=2017,
    arxiv="1705.09280",
    venue="NIPS 2017",
)

LEVEL = 3e-2
SLACK = 0.25


@claim(
    "gunasekar-2017/min-nuclear-norm-on-razin-cohen",
    source=GUNASEKAR_2017.at("Conjecture 1 (transposed to Razin & Cohen's problem)", confirmed=False),
    kind="conjecture",
    expect="refuted",
    statement="Negative control: 'gradient flow from near-zero init converges to a minimum nuclear norm "
              "completion' on Razin & Cohen's 2×2 problem (balanced init, det W(0) > 0; minimum nuclear norm 2).  "
              f"Convergence to norm 2 implies that eventually ‖W(t)‖_* ≤ 2 + {SLACK}; but once ℓ ≤ ℓ₀ = {LEVEL}, "
              "‖W(t)‖_* ≥ |W₁₁(t)| ≥ (1 − √2ℓ)²/√2ℓ ≥ 2.33 for all later t (Razin & Cohen's bound, claim "
              "norms-diverge, with det W(t) > 0 and ℓ non-increasing).  Checked: ‖W‖_* ≤ 2 + "
              f"{SLACK} where ℓ first reaches {LEVEL}; a violation there persists forever, refuting the limit.",
    latex=r"\lim_{t\to\infty} \|W(t)\|_* = \min_{W:\,\ell(W)=0} \|W\|_* = 2 \quad\text{(false on this problem)}",
    hypotheses=("N ∈ {2, 3, 4}", "balanced init, det W(0) > 0", "near-zero init: σ₁(W(0)) ∈ [1e-4, 1e-2]"),
    budget_s=120,
    max_examples=4,
    refuted_by=re.compile(r"‖W‖_\* ≤ 2 \+ .* once ℓ ≤ .* required by convergence to the minimum nuclear norm 2"),
)
@given(batch=same_depth_batches(st.integers(2, 4), lambda N: balanced_inits(depth=N, det_sign=+1,
                                                                           scale=(1e-4, 1e-2)), max_size=8))
def min_nuclear_norm_on_razin_cohen(batch):
    N = batch[0].depth
    run = solve_levels(razin_cohen_2x2(len(batch)), batch, (LEVEL,))
    # a solver that never got to ℓ₀ says nothing about the conjecture: a precondition, never a refutation
    require(run.reached[:, 0], what=f"every instance reached ℓ = {LEVEL} (depth {N}): {run.status[:2]}")
    # the level states with their (two-tolerance) error on every entry: ‖W‖_* then carries its own error
    W = Certified.measured(run.W[:, 0], run.err[:, 0, None, None].expand_as(run.W[:, 0]), rigorous=False)
    nuc = measures.nuclear(W)
    tail = w11_lower_bound(torch.tensor(LEVEL, dtype=torch.float64), torch.sqrt)
    evidence.scalar(f"‖W‖_* where ℓ = {LEVEL}", nuc.value)
    evidence.note(f"For all t after ℓ reaches {LEVEL}: ‖W(t)‖_* ≥ (1 − √(2ℓ₀))²/√(2ℓ₀) = {float(tail):.4f} > "
                  f"2 + {SLACK} (Razin & Cohen's bound), so a violation at ℓ₀ refutes convergence to norm 2.")
    certify(nuc <= 2 + SLACK, what=f"‖W‖_* ≤ 2 + {SLACK} once ℓ ≤ {LEVEL} (depth {N}) — required by convergence "
                                    "to the minimum nuclear norm 2")
