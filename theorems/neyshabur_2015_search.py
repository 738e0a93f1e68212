"""Claims from "In Search of the Real Inductive Bias: On the Role of Implicit Regularization in Deep Learning"
(Neyshabur, Tomioka & Srebro, ICLR 2015 workshop, arXiv 1412.6614), collected in Neyshabur's thesis (arXiv
1709.01953): CLAIMS.md 22 (trace norm by factorization, the matrix analogy the paper builds on; the classical
result is Srebro, Rennie & Jaakkola 2005) and the first half of 28 (past interpolation, more hidden units keep
lowering the test error).  Section numbers are as reconstructed, not confirmed against the paper.

Claim 22.  The inequality ½(‖U‖² + ‖V‖²) ≥ ‖UVᵀ‖_* is decided on certified values (implreg.numerics: rigorous
singular-value bounds, ball and exact re-evaluation, so balanced rank-one ties are decided exactly).  That the
SVD split attains it is checked in mpmath at 60 digits from the exact float inputs (products of two 53-bit
numbers summed over k ≤ 4 terms are exact at 200 bits), with singular values by mpmath.svd_r accurate to
≈ 10⁻⁵⁵·σ₁; we allow 10⁻⁵⁰·(1 + σ₁)·n.  (In float64 the split would test LAPACK's backward error, which no
stated bound covers.)
"""

from __future__ import annotations

import mpmath
import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from implreg import certify, evidence, stats
from implreg import synthetic as S
from implreg.claims import Source, claim, sample
from implreg.numerics import Certified, svdvals
from implreg.strategies.relu import weights

IN_SEARCH = Source(
    key="neyshabur-2015-search",
    title="In Search of the Real Inductive Bias: On the Role of Implicit Regularization in Deep Learning",
    authors="B. Neyshabur, R. Tomioka, N. Srebro",
    year=2015,
    arxiv="1412.6614",
    venue="ICLR 2015 workshop",
)

DPS = 60


# ---------------------------------------------------------------------------------------------- claim 22


@st.composite
def factor_pairs(draw):
    """U (n×k), V (m×k) with entries in [−2, 2] (0 or magnitude ≥ 2⁻²⁰), n, m, k ∈ 1 … 4."""
    n, m, k = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    Uf = draw(hnp.arrays(np.float64, (n, k), elements=weights()))
    Vf = draw(hnp.arrays(np.float64, (m, k), elements=weights()))
    return Uf, Vf


@claim(
    "neyshabur-2015-search/trace-norm-by-factorization",
    source=IN_SEARCH.at("§3 (matrix factorization: trace norm as the factorization norm)", confirmed=False),
    kind="theorem",
    expect="holds",
    statement=r"The trace (nuclear) norm is the minimal weight decay of a factorization: every factorization "
    r"$M = UV^\top$ has $\tfrac12(\|U\|_F^2 + \|V\|_F^2) \ge \|M\|_*$, with equality at the SVD split "
    r"$U = P\Sigma^{1/2}$, $V = Q\Sigma^{1/2}$.",
    latex=r"\min_{UV^\top = M}\tfrac12\big(\|U\|_F^2+\|V\|_F^2\big)=\|M\|_*",
    hypotheses=["U ∈ R^{n×k}, V ∈ R^{m×k}, n, m, k ∈ 1 … 4, entries in [−2, 2]", "M = UVᵀ",
                "the SVD split checked at 60 digits (mpmath), within 10⁻⁵⁰·(1 + σ₁)·n"],
    max_examples=50,
)
@given(pair=factor_pairs())
def trace_norm_by_factorization(pair):
    Uf, Vf = pair
    n, m = Uf.shape[0], Vf.shape[0]
    U, V = Certified.exact(torch.from_numpy(Uf)), Certified.exact(torch.from_numpy(Vf))
    lhs, nuc = 0.5 * ((U * U).sum() + (V * V).sum()), svdvals(U @ V.mT).sum()
    certify(lhs >= nuc, what="½(‖U‖² + ‖V‖²) ≥ ‖UVᵀ‖_*")
    # the SVD split attains it, at 60 digits: U* = PΣ^{1/2}, V* = QΣ^{1/2} reproduces M and has value Σσ
    with mpmath.workdps(DPS):
        Mx = mpmath.matrix(Uf.tolist()) * mpmath.matrix(Vf.tolist()).T
        P, sv, Qt = mpmath.svd_r(Mx, full_matrices=False, compute_uv=True)
        sig = [abs(sv[i]) for i in range(sv.rows)]
        err = mpmath.mpf(10) ** -50 * (1 + max(sig)) * max(n, m)  # svd_r's accuracy, see the module docstring
        root = [mpmath.sqrt(x) for x in sig]
        Us = mpmath.matrix([[P[i, j] * root[j] for j in range(len(sig))] for i in range(n)])
        Vs = mpmath.matrix([[Qt[j, i] * root[j] for j in range(len(sig))] for i in range(m)])
        diff = Us * Vs.T - Mx
        worst = max(abs(diff[i, j]) for i in range(n) for j in range(m))
        val = (mpmath.fsum(v**2 for v in Us) + mpmath.fsum(v**2 for v in Vs)) / 2
        certify.close([worst], [0], tol=[2 * err], error=[err], what="(PΣ^{1/2})(QΣ^{1/2})ᵀ = M at the SVD split")
        certify.close([val], [mpmath.fsum(sig)], tol=[2 * err], error=[err],
                      what="½(‖U*‖² + ‖V*‖²) = ‖M‖_* at the SVD split (60 digits)")
    if nuc.item() > 0:
        evidence.scalar("½(‖U‖² + ‖V‖²) / ‖UVᵀ‖_* for the drawn factorization (theorem: ≥ 1)", lhs.item() / nuc.item())
        evidence.scalar("½(‖U*‖² + ‖V*‖²) / ‖M‖_* at the SVD split (theorem: = 1)", float(val) / nuc.item())


# ---------------------------------------------------------------------------------------------- claim 28 (a)


N_PROBLEMS = 12  # the same sample as theorems/neyshabur_2017.py, so the cached experiment is shared


def width_lowers_test_error(problem):
    exp = S.width_experiment(n=N_PROBLEMS)
    for H in exp.widths:
        evidence.series("test error vs hidden units", x=torch.full((N_PROBLEMS,), float(H)),
                        y=exp.test_error[H].reshape(1, -1), group="test error", kind="scatter",
                        xlabel="hidden units H", ylabel="test error", log_x=True)
    evidence.series("median test error vs hidden units", x=torch.tensor([float(H) for H in exp.widths]),
                    y=torch.stack([exp.test_error[H].median() for H in exp.widths]), group="median",
                    xlabel="hidden units H", ylabel="test error", log_x=True)
    conv = torch.cat([exp.converged[H] for H in exp.widths])
    evidence.scalar("nets that reached zero training error and CE < 0.01", float(conv.double().mean()))
    evidence.note(exp.description)
    medians = ", ".join(f"H = {H}: {exp.test_error[H].median().item():.4f}" for H in exp.widths)
    evidence.note(f"Median test error by width: {medians}.")
    evidence.note("Reading a 'refuted' verdict here: the toy replication (a few dozen full-batch Adam steps from He "
                  "initialization until cross-entropy < 0.01, 128 teacher-labelled points) does not show a "
                  "significant test-error decrease from 32 to 512 hidden units; the paper's effect was observed on "
                  "MNIST/CIFAR-10 with SGD run to convergence.  `expect` stays as the paper reports; the problem "
                  "ranges were fixed before running and not tuned to agree.")
    return exp.test_error[max(exp.widths)], exp.test_error[min(exp.widths)]


width_lowers_test_error = claim(
    "neyshabur-2015-search/width-lowers-test-error",
    source=IN_SEARCH.at("§2, Figure 1 (test error vs hidden units)", confirmed=False),
    kind="empirical",
    expect="holds",
    statement="Past the width needed to fit the training set (zero training error), more hidden units keep "
    "lowering the test error: nets with 512 hidden units generalize better than nets with 32 on the same "
    "problems (toy replication).",
    latex=r"\mathrm{err}_{\text{test}}(H = 512) < \mathrm{err}_{\text{test}}(H = 32)\ \ "
    r"\text{(both at zero training error)}",
    hypotheses=["toy scale: teacher-net labels (16 → 16 → 2), m = 128 training, 2000 test points",
                "depth-2 students of widths 32/128/512, full-batch Adam (lr 0.01) to zero training error "
                "and cross-entropy < 0.01 (every width interpolates: 32 is already past interpolation)",
                f"n = {N_PROBLEMS} problems (fixed seeds), paired by problem",
                "paired Wilcoxon signed-rank test, one-sided (512 < 32), level 0.01; claimed effect size 1 "
                "percentage point of test error (the equivalence margin: a TOST showing |Δ err| < 0.01 refutes it)"],
    deviation="At this toy scale (m = 128 teacher-labelled points, widths 32/128/512) the width effect is small "
    "and seed-sensitive: in the ci run the median test errors were 0.153 / 0.139 / 0.148 (p = 0.66), while an "
    "exploratory run on other seeds saw 11 of 12 problems improve with width. The paper's effect needs larger "
    "data and training runs than the suite affords; the ranges were not tuned to make it agree. On real data "
    "(scikit-learn's digits, neyshabur-2017/digits-width-lowers-test-error) the fall from 32 to 512 units is "
    "significant.",
)(sample(n=N_PROBLEMS,
         # margin 0.01: one percentage point, the smallest fall in test error the paper's Figure 1 would call an
         # effect; without a margin a null result could only ever be inconclusive (issue 13 §3)
         test=stats.paired("wilcoxon", alternative="less", alpha=0.01, equivalence_margin=0.01), batched=True,
         problem=st.just(None))(width_lowers_test_error))
