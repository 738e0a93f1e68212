"""Gradient flow of a batch of matrix-factorization inits to loss levels, and the closed-form bounds of Razin &
Cohen's 2×2 problems that the claims compare with.

:func:`flow_to_levels` returns the solver's solution, whose ``.certified`` view gives the end-to-end matrices and
losses at the levels and save times as certified values (errors carried, escalation to the mpmath reference
automatic); :func:`certified_det` gives det W there in the form that keeps its sign resolvable (factor
determinants, or the hybrid solver's carried sign past its switch).  The bounds (:func:`w11_lower_bound`,
:func:`sigma_min_upper_bound`, :func:`erank_upper_bound`, :func:`perturbed_w_lower_bound`,
:func:`perturbed_sigma_min_upper_bound`) accept floats, tensors and certified values alike.
:func:`reference_factor_dets` is the independent mpmath check of det W past the hybrid solver's switch.
Claim 8's bounds at a batch of states: :func:`robustness_bounds`; the d×d embedding's:
:func:`embedding_w11_lower_bound`.

Which solver: depth ≥ 3 (and any unbalanced init) runs the plain factor-coordinate gradient flow
(``implreg.matrix.flow.solve``, Dormand–Prince, det guard on) — it assumes nothing about balancedness, so its states are
independent evidence.  Depth 2 with a balanced init runs ``implreg.matrix.flow.spectral.solve_balanced``: the same
factor-coordinate flow until σ_min/σ_max < 1e-3 (where float64 stops resolving det W), then the balanced
end-to-end flow in coordinates that carry log σ_min.  Its det sign past the switch is carried by construction
(σ_min = e^λ > 0), which is the mechanism of Razin & Cohen's proof; the claims say so in their notes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from mpmath import mp
from torch import Tensor

from implreg.errors import InvalidInputError
from implreg.matrix import flow, measures, reference
from implreg.matrix.flow.certified import REF_TOTAL_BUDGET_S
from implreg.matrix.flow.spectral import BalancedFlowSolution, solve_balanced
from implreg.matrix.inits import is_balanced, stack_factors
from implreg.matrix.problems import Problem
from implreg.numerics import Certified, exp, log, minimum, where

#: Loss levels (all below ½) at which the 2×2 claims check their finite-time corollaries.
LEVELS = (0.4, 0.2, 0.1, 5e-2, 3e-2, 2e-2, 1e-2, 5e-3, 3e-3, 2e-3, 1e-3)
#: Default tolerances of the torch solvers (the claims' error bounds are built from their estimates).
RTOL, ATOL = 1e-9, 1e-12


def _mp_det2(W: Any) -> Any:
    """det of a 2×2 mp.matrix."""
    return W[0, 0] * W[1, 1] - W[0, 1] * W[1, 0]


def _mp_det2_error(W: Any, e: Any) -> Any:
    """|det(W + E) − det W| ≤ e·Σ|W_ij| + 2e² for |E_ij| ≤ e (expand the two products; mp analogue of
    ``matrix_bounds.det2_error``)."""
    return e * sum(abs(W[i, j]) for i in range(2) for j in range(2)) + 2 * e * e


# ---------------------------------------------------------------------------------------------- 2×2 algebra


def _sqrt_any(x: Any) -> Any:
    return math.sqrt(x) if isinstance(x, (float, int)) else x.sqrt()


def w11_lower_bound(loss: Any, sqrt: Callable[[Any], Any] = _sqrt_any) -> Any:
    """f(ℓ) = (1 − √(2ℓ))²/√(2ℓ): a lower bound on |W₁₁| at any W with det W > 0 and ℓ(W) < ½ on the
    Razin–Cohen problem (|W₁₂ − 1|, |W₂₁ − 1|, |W₂₂| ≤ δ = √(2ℓ), so W₁₂W₂₁ ≥ (1 − δ)² and
    |W₁₁| ≥ W₁₂W₂₁/|W₂₂| ≥ (1 − δ)²/δ).  Works on floats, numpy arrays, torch tensors and mpf."""
    d = sqrt(2 * loss)
    return (1 - d) ** 2 / d


# ---------------------------------------------------------------------------------------------- certified API


def flow_to_levels(problem: Problem, inits: Sequence[Any], levels: Sequence[float] = LEVELS, *,
                   save_at: Sequence[float] | None = None, guard: str = "det", hybrid: bool | None = None,
                   t_max: float = math.inf, max_steps: int = 200_000) -> Any:
    """Gradient flow of a batch of inits (one depth) until the smallest of ``levels``, recording the state where
    ℓ first reaches each level and at ``save_at``.  Returns the solver's solution; its ``.certified`` view holds
    ``level_end_to_end`` (B, L, d, d'), ``level_loss`` (B, L), ``save_end_to_end``, ``end_to_end``, … as certified
    values (two-tolerance errors, escalation to the mpmath reference).  An unreached level is ``0 ± ∞``.

    Depth 2 with balanced inits (``hybrid`` None) uses ``solve_balanced`` (factor coordinates, then log σ_min
    coordinates past σ_min/σ_max < 1e-3; its ``level_det_sign`` is carried by construction there), otherwise
    ``flow.solve`` with the det guard (``guard="det"``: instances whose det W float64 cannot resolve stop).
    """
    if not inits:
        raise InvalidInputError("flow_to_levels needs at least one init")
    depth = inits[0].depth
    lv = sorted((float(x) for x in levels), reverse=True)
    if problem.batch == 1 and len(inits) > 1:
        problem = problem.expand(len(inits))
    factors = stack_factors(inits)
    if hybrid is None:
        hybrid = depth == 2 and all(is_balanced(i) for i in inits) and problem.shape[0] == problem.shape[1]
    kw = {"loss_target": lv[-1], "t_max": t_max, "loss_levels": lv, "save_at": save_at, "rtol": RTOL, "atol": ATOL,
          "max_steps": max_steps}
    if hybrid:
        return solve_balanced(problem, factors, depth, **kw)
    return flow.solve(problem, factors, guard=guard, **kw)


def level_values(sol: Any) -> Certified:
    """The loss levels ℓ_k of a solution with levels (:func:`flow_to_levels`, ``flow.solve``, ``solve_balanced``) as
    exact certified values, (B, L): where to take a
    bound f(ℓ) compared with a state at the levels.  That state is the flow's state where ℓ first equals ℓ_k (its
    error covers the located crossing's time shift), so f(ℓ_k) is the bound there; f of the certified loss at the
    state would add ℓ's error times f's slope (Razin–Cohen's (1 − δ)²/δ at ℓ = 1e-3, depth 2: 26 against a margin
    of 1.9; the d×d embedding bound at d = 4, ℓ = 3e-3: ± 6.4 on 7.3)."""
    return Certified.exact(sol.loss_levels.expand_as(sol.level_t))


def certified_det(sol: Any) -> tuple[Certified, Certified]:
    """det W at the loss levels (B, L) and the save times (B, T) of a :func:`flow_to_levels` solution, as certified
    values whose SIGN is that of det W (what the det-sign claims compare with 0).

    Factor solver (``flow.solve``), square factors: det W = Π_j det W_j of the certified factors, which keeps
    relative precision u·cond(W)^{1/N} where det W of the end-to-end matrix would keep u·cond(W) (Razin–Cohen at
    depth 3: det W ≈ 1e-30 with entry errors ≈ 1e-10); else det of the certified end-to-end matrix.
    Hybrid solver (``solve_balanced``): det of the certified end-to-end matrix at states before its switch
    (σ_min/σ_max ≥ 1e-3 there, so det W is resolvable), and at and after the switch its carried sign ±1 as a
    measured leaf with error 0 (σ_min = e^λ > 0 and sign det U·det V·det T, certified at the switch by the det
    guard): an integration fact, not an independent one — ``rigorous=False``, and claims that need an
    independent check at those states use :func:`reference_factor_dets`.
    Unreached levels and saves are 0 ± ∞ (undecided; certify refines them from the mpmath reference).
    """
    v = sol.certified
    if not isinstance(sol, BalancedFlowSolution):
        fs_l, fs_s = v.level_factors, v.save_factors
        if all(W.shape[-1] == W.shape[-2] for W in fs_l):
            return _prod(W.det() for W in fs_l), _prod(W.det() for W in fs_s)
        return v.level_end_to_end.det(), v.save_end_to_end.det()
    sw = sol.phase_switch_t.unsqueeze(-1)  # NaN (never switched): every comparison below is False

    def carried(det: Certified, t: Tensor, sign: Tensor, what: str) -> Certified:
        past = (t >= sw) & torch.isfinite(sign)
        leaf = Certified.measured(torch.where(past, sign, torch.ones_like(sign)), torch.zeros_like(sign),
                                  rigorous=False, label=f"hybrid solver's det sign at {what} (carried past its switch)")
        return where(past, leaf, det)

    save_t = sol.save_t.unsqueeze(0).expand_as(sol.save_det_sign)
    return (carried(v.level_end_to_end.det(), sol.level_t, sol.level_det_sign, "loss levels"),
            carried(v.save_end_to_end.det(), save_t, sol.save_det_sign, "save times"))


def _prod(xs: Any) -> Certified:
    it = iter(xs)
    out = next(it)
    for x in it:
        out = out * x
    return out


def sigma_min_upper_bound(loss: Any) -> Any:
    """g(ℓ) = δ(1 + (1 + δ)²/(1 − δ)²), δ = √(2ℓ) < 1: σ_min(W) ≤ |W₂₂| + |W₁₂W₂₁|/|W₁₁| ≤ g at any W with
    det W > 0 and ℓ(W) < ½ on the Razin–Cohen problem (σ_min = |det W|/σ_max ≤ |det W|/|W₁₁|, and the bound of
    :func:`w11_lower_bound`).  Floats, tensors or certified values."""
    d = _sqrt_any(2 * loss)
    return d * (1 + (1 + d) ** 2 / (1 - d) ** 2)


def erank_upper_bound(loss: Any) -> Any:
    """exp(H(q)), q = g/(f + g) ∧ ½ (f = :func:`w11_lower_bound`, g = :func:`sigma_min_upper_bound`): the effective
    rank of a 2×2 W with σ_min ≤ g and σ_max ≥ f (H the binary entropy, increasing in q on [0, ½]).  A certified
    loss gives a certified bound; a float or tensor its float64 value."""
    lc = loss if isinstance(loss, Certified) else Certified.exact(torch.as_tensor(loss, dtype=torch.float64))
    f, g = w11_lower_bound(lc), sigma_min_upper_bound(lc)
    q = minimum(g / (f + g), 0.5)
    out = exp(-(q * log(q) + (1 - q) * log(1 - q)))
    return out if isinstance(loss, Certified) else out.value


def perturbed_w_lower_bound(z: Any, zp: Any, eps: Any, delta: Any) -> Any:
    """(|z| − δ)(|z′| − δ)/(|ε| + δ): a lower bound on the unobserved entry |w| of any 2×2 W whose observed
    entries z, z′ (sharing neither row nor column) and ε are each within δ < min(|z|, |z′|) of W's, when det W has
    the sign det W(0) = sign(z z′) asks for (for ∗ at (1,1): det W = wW₂₂ − W₁₂W₂₁ with sign(W₁₂W₂₁) = sign(zz′),
    so |w||W₂₂| > |W₁₂W₂₁| ≥ (|z| − δ)(|z′| − δ) and |W₂₂| ≤ |ε| + δ).  Derived (CLAIMS.md claim 8)."""
    return (abs(z) - delta) * (abs(zp) - delta) / (abs(eps) + delta)


def perturbed_sigma_min_upper_bound(z: Any, zp: Any, eps: Any, delta: Any) -> Any:
    """(|ε| + δ)(1 + (|z| + δ)(|z′| + δ)/((|z| − δ)(|z′| − δ))): σ_min(W) ≤ |det W|/|w| ≤ |W₂₂| + |W₁₂W₂₁|/|w| with
    the bound of :func:`perturbed_w_lower_bound` (σ_max ≥ |w|).  Derived (CLAIMS.md claim 8)."""
    return (abs(eps) + delta) * (1 + (abs(z) + delta) * (abs(zp) + delta) / ((abs(z) - delta) * (abs(zp) - delta)))


def embedding_w11_lower_bound(loss: Any, d: int) -> Any:
    """(2 − (1+δ)^d)/(δ(1+δ)^{d−2}), δ = √(2ℓ): a lower bound on |W₁₁| at any W with det W > 0 on the d×d embedding of
    the Razin–Cohen problem (every completion has det −1; det W is affine in W₁₁ with slope the (1,1) minor,
    |minor| ≤ δ(1+δ)^{d−2}, and the rest is ≤ −1 + (1+δ)^d − 1 by Ipsen–Rehman).  Positive only for δ < 2^{1/d} − 1."""
    delta = _sqrt_any(2 * loss)
    return (2 - (1 + delta) ** d) / (delta * (1 + delta) ** (d - 2))


def embedding_bound_positive(levels: Any, d: int) -> Tensor:
    """Where :func:`embedding_w11_lower_bound` is positive at the loss values ``levels`` themselves (δ < 2^{1/d} − 1),
    decided on exact inputs by certified arithmetic: the levels at which a claim can compare |W₁₁| with it."""
    exact = Certified.exact(torch.as_tensor(levels, dtype=torch.float64))
    return embedding_w11_lower_bound(exact, d).lo > 0


@dataclass(frozen=True)
class RobustnessBounds:
    """Claim 8's two bounds at states (B, K): ``usable`` where δ = √(2ℓ) is certainly below min(|z|, |z′|) (the
    bounds' hypothesis), |w| at the unobserved entry and its lower bound, σ_min(W) and its upper bound."""

    usable: Tensor
    w: Certified
    w_bound: Certified
    sigma_min: Certified
    sigma_bound: Certified


def robustness_bounds(W: Certified, loss: Certified, z: Tensor, zp: Tensor, eps: Tensor,
                      unobserved: Tensor) -> RobustnessBounds:
    """:func:`perturbed_w_lower_bound` and :func:`perturbed_sigma_min_upper_bound` at every state of W (B, K, 2, 2)
    with losses (B, K), for the problems [[∗, z], [z′, ε]] (each (B,)) with ∗ at ``unobserved`` (B, 2)."""
    delta = (2 * loss).sqrt()
    def col(x: Tensor) -> Tensor:
        return x[:, None]

    w = W[torch.arange(W.shape[0])[:, None], torch.arange(W.shape[1])[None, :], col(unobserved[:, 0]),
          col(unobserved[:, 1])].abs()
    return RobustnessBounds(
        usable=delta.hi < col(torch.minimum(z.abs(), zp.abs())), w=w,
        w_bound=perturbed_w_lower_bound(col(z), col(zp), col(eps), delta), sigma_min=measures.sigma_min(W),
        sigma_bound=perturbed_sigma_min_upper_bound(col(z), col(zp), col(eps), delta))


def reference_factor_dets(problem: Problem, factors_mp: Sequence[Any], levels: Sequence[float], *, dps: int,
                          budget_s: float = REF_TOTAL_BUDGET_S) -> list[tuple[Any, Any] | None]:
    """det W at each loss level of ONE instance from the mpmath reference, in product form: (Π_j det W_j, error).

    Why the product form: at depth 2 det W ≈ e^{−100} at ℓ = 3e-3 while each det W_j ≈ e^{−50} (balanced), so
    the factors' determinants need half the digits det W of the end-to-end matrix would.  The error is first
    order in the reference's error estimate per factor entry (2× ``level_factor_errors``, for the located
    crossing's time shift, as in ``implreg.matrix.flow.certified``): an estimate, not a rigorous bound.  2×2 factors.
    None where the reference did not reach the level.
    """
    sol = reference.solve(problem, factors_mp, t_end=1e6, dps=dps, loss_target=min(levels),
                          loss_levels=list(levels), budget_s=budget_s)
    out: list[tuple[Any, Any] | None] = []
    with sol.workdps():
        for k in range(len(levels)):
            if k >= len(sol.level_factors) or sol.level_factors[k] is None:
                out.append(None)
                continue
            e = 2 * sol.level_factor_errors[k]
            det, err = mp.mpf(1), mp.mpf(0)
            for Wj in sol.level_factors[k]:
                dj, ej = _mp_det2(Wj), _mp_det2_error(Wj, e)
                det, err = det * dj, abs(det) * ej + abs(dj) * err + err * ej
            out.append((det, err))
    return out


def reference_dets_past_switch(sol: BalancedFlowSolution, inits: Sequence[Any], *,
                               dps: Sequence[int] = (60, 100)) -> tuple[Certified, list[dict[str, Any]]]:
    """det W from the mpmath reference (:func:`reference_factor_dets`, product form) at every loss level that the
    hybrid solver ``sol`` reached at or after its switch, for the first ``len(inits)`` rows of ``sol`` (``inits``
    those rows' inits, with ``factors_mp``): the independent check of the solver's carried det sign.

    Returns det W over the (row, level) pairs, flattened, as a measured value (mid ± the reference's error estimate
    widened by 1e-9 for its conversion to float64, plus the float64 rounding of the mid: ``rigorous=False``), and
    one evidence row per instance.  Each instance is solved at ``dps[0]`` digits, at the next precision where
    a sign stays unresolved; a level the reference did not reach is 0 ± ∞ (undecided, never a verdict).
    """
    dets, errs, rows = [], [], []
    for i, init in enumerate(inits):
        lv = [float(x) for k, x in enumerate(sol.loss_levels.tolist())
              if float(sol.level_t[i, k]) >= float(sol.phase_switch_t[i])]
        if not lv:
            continue
        for p in dps:
            got = reference_factor_dets(sol.problem.select([i]), init.factors_mp(p), lv, dps=p)
            det = torch.tensor([float(g[0]) if g else 0.0 for g in got], dtype=torch.float64)
            err = torch.tensor([float(g[1]) * (1 + 1e-9) if g else math.inf for g in got], dtype=torch.float64)
            err = err + det.abs() * 2.0**-52
            if bool((det.abs() > err).all()):
                break
        dets.append(det)
        errs.append(err)
        rows.append({"instance": i, "levels": lv, "det W": det.tolist(), "error estimate": err.tolist(),
                     "digits": p})
    if not dets:
        return Certified.exact(torch.zeros(0, dtype=torch.float64)), rows
    return (Certified.measured(torch.cat(dets), torch.cat(errs), rigorous=False,
                               label="det W past the switch (mpmath reference, product form)"), rows)


def reference_agreement(sol: Any, init: Any, *, dps: int = 30, budget_s: float = REF_TOTAL_BUDGET_S
                        ) -> list[dict[str, Any]]:
    """The simulator against the mpmath reference for the FIRST instance of ``sol`` (a :func:`flow_to_levels`
    solution; ``init`` that instance's init, with ``factors_mp``): at every level both reached, max |W_sim − W_ref|
    over the entries beside the two error estimates (the simulator's certified per-entry error, the reference's
    ‖δW‖_F) and their ratio.  Evidence for the report, not a verdict: a ratio > 1 means an estimate fell short."""
    levels = [float(x) for x in sol.loss_levels.tolist()]
    ref = reference.solve(sol.problem.select([0]), init.factors_mp(dps), t_end=1e6, dps=dps, loss_target=min(levels),
                          loss_levels=levels, budget_s=budget_s)
    W, rows = sol.certified.level_end_to_end, []
    with ref.workdps():
        for k, lvl in enumerate(levels):
            if k >= len(ref.level_end_to_end) or ref.level_end_to_end[k] is None:
                continue
            sim_err = float(W.error[0, k].max())
            if not math.isfinite(sim_err):
                continue
            M = ref.level_end_to_end[k]
            W_ref = torch.tensor([[float(M[i, j]) for j in range(M.cols)] for i in range(M.rows)],
                                 dtype=torch.float64)
            diff = float((W.value[0, k] - W_ref).abs().max())
            ref_err = float(ref.level_errors[k])
            # the float64 conversion of W_ref: ≤ u·max|W_ref| per entry
            allowed = sim_err + ref_err + 2.0**-53 * float(W_ref.abs().max())
            rows.append({"loss level": lvl, "max |W_sim − W_ref|": diff, "simulator error estimate": sim_err,
                         "reference error estimate": ref_err, "ratio |Δ| / (sum of estimates)": diff / allowed})
    return rows
