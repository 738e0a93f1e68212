"""Claims from Arora, Cohen, Hu & Luo, "Implicit Regularization in Deep Matrix Factorization" (NeurIPS 2019,
arXiv 1905.13655): CLAIMS.md 13 (singular value dynamics under balanced init) and 14 (depth lowers the
effective rank of the recovered matrix, empirical, with a negative control).  Numbering as reconstructed.
"""

from __future__ import annotations

import functools

import torch
from hypothesis import given
from hypothesis import strategies as st

from implreg import certify, evidence, flow, measures, stats
from implreg.claims import Source, claim, sample
from implreg.harness import flow_evidence
from implreg.matrix import dynamics
from implreg.matrix import symbolic as sym
from implreg.numerics import Certified
from implreg.strategies import balanced_inits, low_rank_completions
from implreg.strategies.matrix import linear_flow_batches, stack_linear_batch

ARORA_2019 = Source(key="arora-2019", title="Implicit Regularization in Deep Matrix Factorization",
                    authors="S. Arora, N. Cohen, W. Hu, Y. Luo", year=2019, arxiv="1905.13655", venue="NeurIPS 2019")


@claim("arora-2019/singular-value-dynamics", kind="identity", expect="holds",
       source=ARORA_2019.theorem(3, confirmed=False),
       statement="Balanced init, distinct singular values ⇒ dσ_r/dt = −N σ_r^{2−2/N} ⟨∇ℓ(W), u_r v_rᵀ⟩.  Symbolic "
                 "proof (sympy): at a generic balanced 2×2 point (symbolic singular values, rotations and gradient), "
                 "u_rᵀẆv_r — which is dσ_r/dt for distinct σ — equals the right-hand side, N = 2, 3.",
       latex=r"\dot\sigma_r = -N\,\sigma_r^{2-2/N}\,\langle \nabla\ell(W),\, u_r v_r^\top\rangle",
       hypotheses=("balanced 2×2 factors", "N ∈ {2, 3}"), max_examples=3)
@given(depth=st.integers(2, 3))
def singular_value_dynamics(depth):
    proof = sym.singular_value_rule(depth)
    evidence.note("symbolic proof (sympy): " + proof.statement)
    certify.that(proof.holds, what=proof.statement)


SAVE_T = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
#: The identity is exact at a balanced point; at the computed states (taken as exact, rounding carried) it is off by
#: their residual imbalance (≈ the 1e-10 drift of arora-2018/balancedness-drift) and the float64 singular vectors'
#: error (≲ 1e-16/1e-3, the relative gap kept): relative 1e-8 leaves ≥ 100× for both (measured ≤ 1e-9).
REL_TOL, REL_GAP = 1e-8, 1e-3


def _balanced(N, shape, h):
    return balanced_inits(depth=N, shape=shape, scale=(0.3, 1.5), ratio=(0.05, 0.8))


@claim("arora-2019/singular-value-dynamics-simulation", kind="theorem", expect="holds",
       source=ARORA_2019.theorem(3, confirmed=False),
       statement="Numeric cross-check of the singular value dynamics along simulated gradient flow (balanced init, "
                 f"random completion/sensing problems, d ∈ {{2, 3}}, N = 2–4): at the computed states at times "
                 f"{list(SAVE_T)}, wherever σ_r is apart from the other singular values and from 0 by {REL_GAP:g}·σ₁, "
                 "σ̇_r = u_rᵀẆv_r with Ẇ formed from the factor velocities agrees with −N σ_r^{2−2/N}⟨∇ℓ, u_r v_rᵀ⟩ "
                 f"to relative {REL_TOL:g} (of N σ_r^{{2−2/N}}‖∇ℓ‖_F + |σ̇_r|): the identity is exact at balanced "
                 "points, the tolerance absorbs the states' residual imbalance; rounding is carried.",
       latex=r"\Big|u_r^\top \dot W v_r + N\sigma_r^{2-2/N} u_r^\top\nabla\ell\, v_r\Big| \le 10^{-8}\,"
             r"\big(N\sigma_r^{2-2/N}\|\nabla\ell\|_F + |u_r^\top \dot W v_r|\big)",
       hypotheses=("balanced init, σ₁ ∈ [0.3, 1.5], condition number ≤ 20", "depth 2–4", "d×d, d ∈ {2, 3}"),
       budget_s=120, instances=1000)
@given(batch=linear_flow_batches(_balanced, depths=(2, 4), shapes=((2, 2), (3, 3))))
def singular_value_dynamics_simulation(batch):
    P, factors = stack_linear_batch(batch)
    N = len(factors)
    sol = flow.solve(P, factors, t_max=max(SAVE_T), save_at=SAVE_T)
    sol.raise_on_failure()
    Fs = [Certified.exact(W) for W in sol.layout.unpack(sol.result.save_y)]  # the computed states, (B, T, d, d)
    W = dynamics.end_to_end(Fs)
    rate = dynamics.singular_value_rates(W, dynamics.end_to_end_rate(P, Fs))
    rule = dynamics.singular_value_rule(P, W, N)
    simple = dynamics.simple_singular_values(W, REL_GAP)
    S, G = measures.singular_values(W).value, dynamics.loss_gradient(P, W).value
    scale = N * S ** (2 - 2 / N) * torch.linalg.matrix_norm(G).unsqueeze(-1) + rate.value.abs()
    certify.close(rate[simple], rule[simple], tol=REL_TOL * scale[simple],
                  what=f"u_rᵀẆv_r = −N σ_r^(2−2/N) ⟨∇ℓ, u_r v_rᵀ⟩ (relative {REL_TOL:g})")
    evidence.scalar("relative discrepancy |σ̇_r − formula| / scale", ((rate - rule).value.abs() / scale)[simple])


DEPTHS, N_PROBLEMS, LOSS_TARGET = (1, 2, 3), 16, 1e-5
PROBLEMS = low_rank_completions(d=(5, 6), rank=(1, 2), fraction=(0.65, 0.85), init_scale=(1e-3, 1e-2))
_HYP = ("d×d truths, d ∈ {5, 6}, of rank r ∈ {1, 2} (Gaussian factors, ‖M‖_F = d)",
        "observed fraction 0.65–0.85 (every row and column observed), so the number of observations exceeds the "
        "r(2d − r) degrees of freedom of the rank-r matrices (the regime of the paper's experiments: below it no "
        "method can recover M)", "balanced init with the same W(0) for every depth, ‖W(0)‖_F ∈ [1e-3, 1e-2]",
        f"gradient flow (Dormand–Prince) until ℓ ≤ {LOSS_TARGET:g}", f"n = {N_PROBLEMS} problems")


_sweep = functools.cache(lambda problems: dynamics.depth_sweep(problems, DEPTHS, loss_target=LOSS_TARGET))


def _experiment(problems: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """(erank, error) of the solutions at each depth, all from one W(0) per problem (the three claims share the
    solves), recorded as evidence."""
    erank, error = _sweep(problems)
    flow_evidence.depth_sweep(problems, erank, error, DEPTHS)
    return erank, error


@claim("arora-2019/depth-lowers-effective-rank", kind="empirical", expect="holds",
       source=ARORA_2019.at("§4–5 (experiments: depth and rank)", confirmed=False),
       statement="Matrix completion of a low-rank truth from few entries, small balanced init, gradient flow to "
                 "small loss: the effective rank of the solution decreases with depth.  Observation per problem: "
                 "(max(erank₂ − erank₁, erank₃ − erank₂), 0), i.e. the larger of the two depth steps; one-sided "
                 f"paired sign test (it is < 0: both steps lower the rank) at level 0.01, n = {N_PROBLEMS}.",
       hypotheses=_HYP, max_examples=1)
@sample(n=N_PROBLEMS, test=stats.paired("sign", alternative="less", alpha=0.01), batched=True, problem=PROBLEMS)
def depth_lowers_effective_rank(problem):
    erank, _ = _experiment(tuple(problem))
    return (erank[:, 1:] - erank[:, :-1]).amax(-1), torch.zeros(len(problem), dtype=torch.float64)


@claim("arora-2019/depth-improves-reconstruction", kind="empirical", expect="holds",
       source=ARORA_2019.at("§4–5 (experiments: depth and reconstruction)", confirmed=False),
       statement="Same setting: the relative reconstruction error ‖W − M‖_F/‖M‖_F of the depth-3 solution is below "
                 f"that of depth 1.  One-sided paired Wilcoxon signed-rank test at level 0.01, n = {N_PROBLEMS}.",
       hypotheses=_HYP, max_examples=1)
@sample(n=N_PROBLEMS, test=stats.paired("wilcoxon", alternative="less", alpha=0.01), batched=True, problem=PROBLEMS)
def depth_improves_reconstruction(problem):
    _, error = _experiment(tuple(problem))
    return error[:, 2], error[:, 0]


@claim("arora-2019/depth-raises-effective-rank", kind="conjecture", expect="refuted",
       source=ARORA_2019.at("§4–5 (negative control)", confirmed=False),
       statement="Negative control: 'the effective rank increases with depth' — observation (erank₃, erank₁) per "
                 f"problem, one-sided paired sign test (erank₃ > erank₁) at level 0.01, n = {N_PROBLEMS}.  Three "
                 "outcomes: it holds if that is significant, is refuted only if the OPPOSITE direction (erank₃ < "
                 "erank₁) is significant at the same level, and is inconclusive otherwise (not significant is not "
                 "refuted).",
       hypotheses=_HYP, max_examples=1, refuted_by="opposite")
@sample(n=N_PROBLEMS, test=stats.paired("sign", alternative="greater", alpha=0.01), batched=True, problem=PROBLEMS)
def depth_raises_effective_rank(problem):
    erank, _ = _experiment(tuple(problem))
    return erank[:, 2], erank[:, 0]
