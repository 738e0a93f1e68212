"""Gradient flow of a batch of matrix-factorization inits to loss levels, and the closed-form bounds of Razin &
Cohen's 2×2 problems that the claims compare with (moved here from ``theorems/_factorization.py``).

New code: :func:`flow_to_levels` returns the solver's solution, whose ``.certified`` view gives the end-to-end
matrices and losses at the levels and save times as certified values (errors carried, escalation to the mpmath
reference automatic); the bounds (:func:`w11_lower_bound`, :func:`sigma_min_upper_bound`,
:func:`erank_upper_bound`, :func:`perturbed_w_lower_bound`, :func:`perturbed_sigma_min_upper_bound`) accept
floats, tensors and certified values alike.  The older :func:`solve_levels` (``LevelStates`` with a hand-made
error per state) and its escalation helpers remain for the claims not yet moved onto the certified API.

Which solver: depth ≥ 3 (and any unbalanced init) runs the plain factor-coordinate gradient flow
(``implreg.flow.solve``, Dormand–Prince, det guard on) — it assumes nothing about balancedness, so its states are
independent evidence.  Depth 2 with a balanced init runs ``implreg.flow.spectral.solve_balanced``: the same
factor-coordinate flow until σ_min/σ_max < 1e-3 (where float64 stops resolving det W), then the balanced
end-to-end flow in coordinates that carry log σ_min.  Its det sign past the switch is carried by construction
(σ_min = e^λ > 0), which is the mechanism of Razin & Cohen's proof; the claims say so in their notes.

Every state a claim compares comes with an entrywise error bound of the end-to-end matrix: the solver's own
estimate for the hybrid solver, and ``matrix_bounds.product_error`` of the factors' estimate otherwise, each
made two-tolerance (``flow.two_tolerance_error``: estimate + |tight − loose| with the loose run at 100× the
tolerances), because the integrators' estimates alone miss the flow's amplification of earlier errors.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from mpmath import mp
from torch import Tensor

from implreg import certify, flow, reference
from implreg.errors import ImplregError, InvalidInputError
from implreg.flow.gradient_flow import TWO_TOL_FACTOR, two_tolerance_combine
from implreg.flow.spectral import solve_balanced
from implreg.matrix_bounds import U64, product_error
from implreg.problems import Problem
from implreg.strategies.matrix import BalancedInit, stack_factors

#: Loss levels (all below ½) at which the 2×2 claims check their finite-time corollaries.
LEVELS = (0.4, 0.2, 0.1, 5e-2, 3e-2, 2e-2, 1e-2, 5e-3, 3e-3, 2e-3, 1e-3)
#: Default tolerances of the torch solvers (the claims' error bounds are built from their estimates).
RTOL, ATOL = 1e-9, 1e-12
#: The reference integrator's schedule of decimal digits and wall budget per solve (escalations only).
REF_DPS = (30, 60)
REF_BUDGET_S = 20.0
#: Wall budget of all escalations of one ReferenceLevels (one batch of one example): past it, undecided
#: entries stay undecided (the claim becomes inconclusive rather than slow).
REF_TOTAL_BUDGET_S = 60.0


@dataclass
class LevelStates:
    """End-to-end states of a batch at each loss level (B, L, d, d'), with entrywise error bounds (B, L)."""

    depth: int
    levels: Tensor
    W: Tensor
    err: Tensor
    t: Tensor
    reached: Tensor
    solver: str
    status: list[str]
    det_sign: Tensor | None = None        # hybrid solver only: sign det W at each level (certified by it)
    log_abs_det: Tensor | None = None     # hybrid solver only
    final_W: Tensor | None = None
    final_err: Tensor | None = None
    save_t: Tensor | None = None
    save_W: Tensor | None = None
    save_err: Tensor | None = None
    save_det_sign: Tensor | None = None
    save_log_abs_det: Tensor | None = None
    sv_lo: Tensor | None = None           # (B, L, d): extra lower bounds on the singular values (hybrid solver)
    sv_hi: Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def B(self) -> int:
        return int(self.W.shape[0])



def solve_levels(problem: Problem, inits: Sequence[Any], levels: Sequence[float] = LEVELS, *,
                 save_at: Sequence[float] | None = None, guard: str = "det", hybrid: bool | None = None,
                 t_max: float = math.inf, max_steps: int = 200_000, sigma_intervals: bool = False) -> LevelStates:
    """Solve gradient flow for a batch of inits (one depth) until the smallest level, recording every level.

    ``hybrid`` (default: depth 2 and balanced inits) selects ``solve_balanced``; otherwise ``flow.solve``.
    ``sigma_intervals`` (hybrid only): also bound σ_min at every level from log σ_min, whose error is estimated
    by a second solve at 100× looser tolerances (|λ_tight − λ_loose| over-estimates the tight run's error);
    the hybrid solver keeps σ_min to relative precision even where it is far below the entries' error.
    """
    depth = inits[0].depth
    B = len(inits)
    lv = sorted((float(x) for x in levels), reverse=True)
    if problem.batch == 1 and B > 1:
        problem = problem.expand(B)
    factors = stack_factors(inits)
    if hybrid is None:
        hybrid = depth == 2 and all(isinstance(i, BalancedInit) for i in inits) and problem.shape[0] == problem.shape[1]
    target = lv[-1]
    if hybrid:
        sol = solve_balanced(problem, factors, depth, loss_target=target, t_max=t_max, loss_levels=lv,
                             save_at=save_at, rtol=RTOL, atol=ATOL, max_steps=max_steps)
        # the two-tolerance error (see flow.two_tolerance_error: the estimate alone misses amplification)
        loose = solve_balanced(problem, factors, depth, loss_target=target, t_max=t_max, loss_levels=lv,
                               save_at=save_at, rtol=TWO_TOL_FACTOR * RTOL, atol=TWO_TOL_FACTOR * ATOL,
                               max_steps=max_steps)
        level_err = _two_tol(sol.level_error, sol.level_end_to_end, loose.level_end_to_end)
        reached = torch.isfinite(sol.level_t) & torch.isfinite(level_err)
        out = LevelStates(depth, torch.tensor(lv, dtype=torch.float64), sol.level_end_to_end, level_err,
                          sol.level_t, reached, "hybrid balanced solver (factor → log σ)",
                          sol.messages(), det_sign=sol.level_det_sign, log_abs_det=sol.level_log_abs_det,
                          final_W=sol.end_to_end, final_err=_two_tol(sol.error, sol.end_to_end, loose.end_to_end))
        if save_at is not None:
            out.save_t, out.save_W = sol.save_t, sol.save_end_to_end
            out.save_err = _two_tol(sol.save_error, sol.save_end_to_end, loose.save_end_to_end)
            out.save_det_sign = sol.save_det_sign
            out.save_log_abs_det = sol.save_log_sigma.sum(-1)
        if sigma_intervals:
            lam = sol.level_log_sigma[..., -1]
            dlam = (lam - loose.level_log_sigma[..., -1]).abs() + 1e-12
            drift = 2e-6  # the solver keeps ‖UᵀU − I‖, ‖VᵀV − I‖ ≤ 1e-6 (its drift guard)
            d = sol.level_log_sigma.shape[-1]
            lo = torch.zeros_like(sol.level_log_sigma)
            hi = torch.full_like(sol.level_log_sigma, math.inf)
            lo[..., d - 1] = torch.exp(lam - dlam) * (1 - drift)
            hi[..., d - 1] = torch.exp(lam + dlam) * (1 + drift)
            ok = torch.isfinite(dlam)
            out.sv_lo = torch.where(ok[..., None], lo, torch.zeros_like(lo))
            out.sv_hi = torch.where(ok[..., None], hi, torch.full_like(hi, math.inf))
        out.extra["solution"] = sol
        return out
    sol = flow.solve(problem, factors, loss_target=target, t_max=t_max, loss_levels=lv, save_at=save_at,
                     rtol=RTOL, atol=ATOL, guard=guard, max_steps=max_steps, error="two-tolerance")
    L = len(lv)
    lf = sol.level_factors  # each (B, L, a, b); NaN at levels not reached
    # a level whose two-tolerance error is infinite (the loose run did not get there) counts as not reached
    reached = torch.isfinite(sol.level_t) & torch.isfinite(sol.level_error)
    err = product_error(tuple(torch.nan_to_num(W) for W in lf),
                        torch.where(reached, sol.level_error, torch.zeros_like(sol.level_error)))
    err = torch.where(reached, err, torch.full_like(err, math.nan))
    out = LevelStates(depth, torch.tensor(lv, dtype=torch.float64), sol.level_end_to_end, err, sol.level_t,
                      reached, "Dormand–Prince 5(4) in factor coordinates", sol.messages(),
                      final_W=sol.end_to_end, final_err=product_error(sol.factors, sol.error))
    if save_at is not None:
        sy = sol.layout.unpack(sol.result.save_y)
        out.save_t, out.save_W = sol.save_t, sol.save_end_to_end
        se = sol.result.save_error
        ok_se = torch.isfinite(se)
        out.save_err = product_error(tuple(torch.nan_to_num(W) for W in sy),
                                     torch.where(ok_se, se, torch.zeros_like(se)))
        out.save_err = torch.where(ok_se, out.save_err, torch.full_like(out.save_err, math.nan))
    out.extra["solution"] = sol
    assert out.W.shape[:2] == (B, L)
    return out


def _two_tol(e: Tensor, W: Tensor, W_loose: Tensor) -> Tensor:
    """``flow.two_tolerance_combine`` on end-to-end matrices (the hybrid solver's error is on W itself)."""
    return two_tolerance_combine(e, W.flatten(-2), W_loose.flatten(-2))


# ---------------------------------------------------------------------------------------------- placeholders


def fill_missing(value: Tensor, bound: Tensor, error: Tensor, ok: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Replace entries that were not computed (``~ok``) by an undecidable placeholder (0 vs 0 ± 1), so that
    certify hands exactly those entries to the escalation (never to a verdict)."""
    z = torch.zeros_like(value)
    return (torch.where(ok, value, z), torch.where(ok, bound, z),
            torch.where(ok, error, torch.ones_like(error)))


# ---------------------------------------------------------------------------------------------- reference


class ReferenceLevels:
    """mpmath reference states of a batch at loss levels, solved on demand and cached per (i, level, dps).

    Factors are formed at the reference's precision (``init.factors_mp``), so a balanced init is balanced to
    that precision.  A state is ``(W, err)`` with ``W`` an mp.matrix and ``err`` its ‖δW‖_F estimate, or None
    when the reference could not get there within its budget (the comparison then stays undecided).
    """

    def __init__(self, problem_of: Callable[[int], Problem], inits: Sequence[Any], levels: Sequence[float],
                 budget_s: float = REF_BUDGET_S, total_budget_s: float = REF_TOTAL_BUDGET_S):
        self.problem_of, self.inits, self.budget_s = problem_of, list(inits), budget_s
        self.levels = [float(x) for x in levels]
        self.cache: dict[tuple[int, int, int], tuple[Any, Any] | None] = {}
        self.notes: list[str] = []
        self.total_budget_s, self.spent_s = total_budget_s, 0.0

    def state(self, i: int, k: int, dps: int) -> tuple[Any, Any] | None:
        key = (i, k, dps)
        if key not in self.cache and self.spent_s >= self.total_budget_s:
            self.notes.append(f"reference budget of {self.total_budget_s:g} s spent; instance {i}, level {k} stays "
                              "undecided")
            return None
        if key not in self.cache:
            t0 = time.perf_counter()
            try:
                sol = reference.solve(self.problem_of(i), self.inits[i].factors_mp(dps), t_end=1e6, dps=dps,
                                      loss_target=self.levels[k], budget_s=self.budget_s)
                self.cache[key] = (sol.end_to_end, sol.error_estimate)
            except ImplregError as exc:  # budget exceeded or numerical failure: leave undecided
                self.notes.append(f"reference at {dps} digits for instance {i}, ℓ = {self.levels[k]:g}: {exc}")
                self.cache[key] = None
            self.spent_s += time.perf_counter() - t0
        return self.cache[key]

    def escalation(self, quantity: Callable[[Callable[[int, int], tuple[Any, Any] | None], tuple[int, ...]],
                                            tuple[Any, Any, Any] | None],
                   dps: Sequence[int] = REF_DPS) -> certify.Escalate:
        """An ``escalate`` for certify.  For every undecided entry (index tuple ``idx`` of the comparison)
        ``quantity(fetch, idx)`` is called under ``mp.workdps(dps)``; ``fetch(i, k)`` returns the reference state
        ``(W, err)`` of instance i at level k (or None); it returns refined (value, bound, error) or None."""

        def fn(mask: np.ndarray, dps: int) -> tuple[list, list, list]:
            vals, bnds, errs = [], [], []
            for flat in np.flatnonzero(mask):
                idx = tuple(int(x) for x in np.unravel_index(flat, mask.shape))
                with mp.workdps(dps):
                    out = quantity(lambda i, k, dps=dps: self.state(i, k, dps), idx)
                    if out is None:
                        out = (mp.mpf(0), mp.mpf(0), mp.mpf(1))
                vals.append(out[0])
                bnds.append(out[1])
                errs.append(out[2])
            return vals, bnds, errs

        return certify.rising_precision(fn, dps=tuple(dps))


    def escalation_f64(self, states: Callable[[tuple[int, ...]], list[tuple[int, int]]],
                       q: Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor]],
                       dps: Sequence[int] = REF_DPS) -> certify.Escalate:
        """An ``escalate`` that re-evaluates a float64 quantity on reference states: entry ``idx`` needs the
        states ``states(idx)`` = [(i, k), …]; they are rounded to float64 (their error bound grows by the
        rounding, ≤ u·max|W|) and ``q(W (m, d, d'), e (m,))`` returns (value, bound, error) for that entry.
        Right where float64 itself resolves the comparison (norms, entries); det-type quantities use
        :meth:`escalation` (mpmath) instead."""

        def quantity(fetch, idx):
            Ws, es = [], []
            for i, k in states(idx):
                st = fetch(i, k)
                if st is None:
                    return None
                W, e = st
                Wf = torch.tensor([[float(W[r, c]) for c in range(W.cols)] for r in range(W.rows)],
                                  dtype=torch.float64)
                Ws.append(Wf)
                es.append(float(e) * (1 + 1e-12) + 2 * U64 * float(Wf.abs().max()))
            v, b, err = (float(x) for x in q(torch.stack(Ws), torch.tensor(es, dtype=torch.float64)))
            if not all(math.isfinite(x) for x in (v, b, err)):
                return None  # the reference's own error is too large here: stays undecided
            return mp.mpf(v), mp.mpf(b), mp.mpf(err)

        return self.escalation(quantity, dps)


def save_time_escalation(problem_of: Callable[[int], Problem], inits: Sequence[Any], save_t: Sequence[float],
                         pairs: Sequence[tuple[int, int]],
                         mp_quantity: Callable[[Any, Any], tuple[Any, Any, Any]],
                         budget_s: float = REF_BUDGET_S, total_budget_s: float = REF_TOTAL_BUDGET_S,
                         dps: Sequence[int] = REF_DPS) -> certify.Escalate:
    """An ``escalate`` for a comparison whose j-th entry is instance ``pairs[j][0]`` at save time index
    ``pairs[j][1]``: the mpmath reference solves each needed instance once per precision up to its latest
    undecided save time (factors formed at that precision), and ``mp_quantity(W, err)`` gives (value, bound,
    error) from the reference state.  Past the budgets, entries stay undecided."""
    cache: dict[tuple[int, int], Any] = {}
    spent = [0.0]
    times = [float(x) for x in save_t]

    def states(i: int, need: list[int], p: int):
        if (i, p) not in cache:
            if spent[0] >= total_budget_s:
                return None
            t0 = time.perf_counter()
            upto = times[: max(need) + 1]
            try:
                cache[(i, p)] = reference.solve(problem_of(i), inits[i].factors_mp(p), t_end=upto[-1], dps=p,
                                                save_at=upto, budget_s=budget_s)
            except ImplregError:
                cache[(i, p)] = None
            spent[0] += time.perf_counter() - t0
        return cache[(i, p)]

    def fn(mask: np.ndarray, dps: int) -> tuple[list, list, list]:
        p = dps
        flat = [int(j) for j in np.flatnonzero(mask)]
        need: dict[int, list[int]] = {}
        for j in flat:
            need.setdefault(pairs[j][0], []).append(pairs[j][1])
        vals, bnds, errs = [], [], []
        for j in flat:
            i, k = pairs[j]
            sol = states(i, need[i], p)
            with mp.workdps(p):
                W = sol.save_end_to_end[k] if sol is not None and k < len(sol.save_end_to_end) else None
                if W is None:
                    vals.append(mp.mpf(0))
                    bnds.append(mp.mpf(0))
                    errs.append(mp.mpf(1))
                    continue
                v, b, e = mp_quantity(W, sol.save_errors[k])
                vals.append(v)
                bnds.append(b)
                errs.append(e)
        return vals, bnds, errs

    return certify.rising_precision(fn, dps=tuple(dps))


def mp_det2(W: Any) -> Any:
    return W[0, 0] * W[1, 1] - W[0, 1] * W[1, 0]


def mp_det2_error(W: Any, e: Any) -> Any:
    """The mp analogue of ``matrix_bounds.det2_error`` (e bounds every entry's error)."""
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


def w11_bound_error(loss: Tensor, loss_err: Tensor) -> Tensor:
    """Bound on |f(ℓ') − f(ℓ)| for |ℓ' − ℓ| ≤ loss_err: with δ = √(2ℓ), |f'(δ)| = |1 − 1/δ²| ≤ 1/δ_lo² and
    |δ' − δ| ≤ √(2·loss_err) ∧ loss_err/δ_lo (δ_lo = √(2(ℓ − loss_err)))."""
    lo = (loss - loss_err).clamp(min=1e-300)
    d_lo = torch.sqrt(2 * lo)
    dd = torch.minimum(torch.sqrt(2 * loss_err), 2 * loss_err / (d_lo + torch.sqrt(2 * loss)))
    return dd / (d_lo * d_lo) * (1 + 1e-12) + 1e-15 * (1 / d_lo)


def loss_2x2(W: Any) -> Any:
    """ℓ on the Razin–Cohen problem: ½((W₁₂ − 1)² + (W₂₁ − 1)² + W₂₂²), for a tensor batch (..., 2, 2) or an
    mp.matrix (which has no ``...`` indexing)."""
    if isinstance(W, torch.Tensor):
        return ((W[..., 0, 1] - 1) ** 2 + (W[..., 1, 0] - 1) ** 2 + W[..., 1, 1] ** 2) / 2
    return ((W[0, 1] - 1) ** 2 + (W[1, 0] - 1) ** 2 + W[1, 1] ** 2) / 2


# ---------------------------------------------------------------------------------------------- certify at levels


def certify_levels(op: str, value: Tensor, bound: Tensor, error: Tensor, reached: Tensor, *, what: str,
                   ref: ReferenceLevels | None = None,
                   q: Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor]] | None = None,
                   mp_quantity: Callable[[Callable, tuple[int, int]], tuple[Any, Any, Any] | None] | None = None,
                   consider: Tensor | None = None,
                   states: Callable[[int, int], list[tuple[int, int]]] | None = None) -> None:
    """Certify ``value op bound`` (op "≥" or "≤") over the (B, L) entries where ``consider`` (default: all).

    Reached entries compare as given; unreached ones (the solver stopped before that level) are placeholders
    that certify hands to the reference: ``q`` re-evaluates the float64 quantity on reference states
    (``states(i, k)``, default [(i, k)]), or ``mp_quantity(fetch, (i, k))`` computes it in mpmath.
    """
    if consider is None:
        consider = torch.ones_like(reached)
    pairs = [tuple(int(x) for x in r) for r in consider.nonzero().tolist()]
    ok = reached[consider]
    v, b, e = fill_missing(value[consider], bound[consider], error[consider], ok)
    esc = None
    if ref is not None and q is not None:
        st_of = states or (lambda i, k: [(i, k)])
        esc = ref.escalation_f64(lambda j: st_of(*pairs[j[0]]), q)
    elif ref is not None and mp_quantity is not None:
        esc = ref.escalation(lambda fetch, j: mp_quantity(fetch, pairs[j[0]]))
    fn = certify.at_least if op == "≥" else certify.at_most
    fn(v, b, error=e, what=what, escalate=esc)


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
        hybrid = depth == 2 and all(isinstance(i, BalancedInit) for i in inits) and problem.shape[0] == problem.shape[1]
    kw = {"loss_target": lv[-1], "t_max": t_max, "loss_levels": lv, "save_at": save_at, "rtol": RTOL, "atol": ATOL,
          "max_steps": max_steps}
    if hybrid:
        return solve_balanced(problem, factors, depth, **kw)
    return flow.solve(problem, factors, guard=guard, **kw)


def sigma_min_upper_bound(loss: Any) -> Any:
    """g(ℓ) = δ(1 + (1 + δ)²/(1 − δ)²), δ = √(2ℓ) < 1: σ_min(W) ≤ |W₂₂| + |W₁₂W₂₁|/|W₁₁| ≤ g at any W with
    det W > 0 and ℓ(W) < ½ on the Razin–Cohen problem (σ_min = |det W|/σ_max ≤ |det W|/|W₁₁|, and the bound of
    :func:`w11_lower_bound`).  Floats, tensors or certified values."""
    d = _sqrt_any(2 * loss)
    return d * (1 + (1 + d) ** 2 / (1 - d) ** 2)


def erank_upper_bound(loss: Tensor) -> Tensor:
    """exp(H(q)), q = g/(f + g) ∧ ½ (f = :func:`w11_lower_bound`, g = :func:`sigma_min_upper_bound`): the effective
    rank of a 2×2 W with σ_min ≤ g and σ_max ≥ f (H the binary entropy; increasing in q on [0, ½])."""
    f, g = w11_lower_bound(loss, torch.sqrt), sigma_min_upper_bound(loss)
    q = (g / (f + g)).clamp(max=0.5)
    return torch.exp(-(torch.special.xlogy(q, q) + torch.special.xlogy(1 - q, 1 - q)))


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


def reference_factor_dets(problem: Problem, factors_mp: Sequence[Any], levels: Sequence[float], *, dps: int,
                          budget_s: float = REF_TOTAL_BUDGET_S) -> list[tuple[Any, Any] | None]:
    """det W at each loss level of ONE instance from the mpmath reference, in product form: (Π_j det W_j, error).

    Why the product form: at depth 2 det W ≈ e^{−100} at ℓ = 3e-3 while each det W_j ≈ e^{−50} (balanced), so
    the factors' determinants need half the digits det W of the end-to-end matrix would.  The error is first
    order in the reference's error estimate per factor entry (2× ``level_factor_errors``, for the located
    crossing's time shift, as in ``implreg.flow.certified``): an estimate, not a rigorous bound.  2×2 factors.
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
                dj, ej = mp_det2(Wj), mp_det2_error(Wj, e)
                det, err = det * dj, abs(det) * ej + abs(dj) * err + err * ej
            out.append((det, err))
    return out
