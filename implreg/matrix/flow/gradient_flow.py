"""Gradient flow ``dW_j/dt = −∂ℓ(W_N⋯W_1)/∂W_j`` on deep matrix factorizations, batched."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from implreg.errors import InvalidInputError
from implreg.matrix.factorization import FactorLayout, Factors, check_factors, end_to_end, factor_grads
from implreg.matrix.flow.integrate import IntegrationResult, Status, _integrate
from implreg.matrix.flow.kernels import (
    CompiledKernel,
    RKCoefficients,
    dmf_field,
    dmf_guard,
    dmf_step_kernel,
    rk_attempt,
)
from implreg.matrix.flow.native import NativeSteps
from implreg.matrix.flow.result import unfinished_read_message
from implreg.matrix.flow.tableau import DOPRI5
from implreg.matrix.problems import Problem
from implreg.numerics import recording

__all__ = ["TWO_TOL_FACTOR", "FlowSolution", "det_guard", "solve", "two_tolerance_combine",
           "two_tolerance_combine_entries", "two_tolerance_error", "vector_field"]


def vector_field(problem: Problem, layout: FactorLayout):
    """The flattened gradient-flow field ``(t, y) ↦ −pack(∂ℓ/∂W_1, …, ∂ℓ/∂W_N)`` for one fixed problem."""

    def f(t: Tensor, y: Tensor) -> Tensor:
        _, grads = factor_grads(problem, layout.unpack(y))
        return -layout.pack(grads)

    return f


_FUSED_MAX_DIM = 4  # factorizations whose widths are all ≤ this use the fused small-matrix kernels


@dataclass(frozen=True)
class _Fused:
    f: object
    guard: object
    step: CompiledKernel  # a whole integration step (returns the last stage only)
    full_attempt: object  # the same arithmetic returning every stage (for the dense output)
    native: NativeSteps  # the step in C, many per call (small CPU batches)


_FUSED: dict[tuple, _Fused] = {}


def _fused(layout: FactorLayout, kind: str, use_guard: bool) -> _Fused:
    """The fused field, loss, guard and RK-attempt kernel of one factorization shape (cached per process, so a
    compiled kernel is compiled once)."""
    key = (layout.dims, kind, use_guard)
    if key not in _FUSED:
        f, f_aux = dmf_field(layout.shapes, kind)
        g = dmf_guard(layout.shapes) if use_guard else None
        name = "dmf_" + "x".join(map(str, layout.dims)) + "_" + kind + ("_guard" if use_guard else "")
        co = RKCoefficients.of(DOPRI5)
        _FUSED[key] = _Fused(f, g, dmf_step_kernel(co, layout.shapes, kind, use_guard, name),
                             functools.partial(rk_attempt, co, f, f_aux, g),
                             NativeSteps(co, layout.shapes, kind, use_guard))
    return _FUSED[key]


def det_guard(layout: FactorLayout, safety: float = 10.0):
    """Guard tripping where ``|det W_j|`` is within float64 resolution for some square factor W_j.

    Threshold ``τ_j = safety · k · (√k·e/r_min + u) · Π_i ‖row_i(W_j)‖`` with k the size, e the absolute error
    estimate of the entries, r_min the smallest row norm and u the unit roundoff: by Hadamard's inequality
    perturbing row i by at most e·√k changes det by at most ≈ e√k·Π_{l≠i}‖row_l‖, summed over rows, and LU
    evaluation of det adds a relative k·u of the Hadamard bound.  Below τ_j the computed sign is noise.

    Evaluated without square roots (a kernel must not take √, see ``kernels.rk_attempt``) as
    ``det² ≤ 2·(safety·k)²·(k·e²/r²_min + u²)·Π_i ‖row_i‖²``: since (a + b)² ≤ 2(a² + b²) this trips wherever
    ``|det| ≤ τ_j`` does, and never above √2·τ_j.  Square factors of size ≤ 4 use the closed-form det in
    fixed-order arithmetic (``kernels.dmf_guard``), the same function the fused solver runs.
    """

    if all(a == b and a <= _FUSED_MAX_DIM for a, b in layout.shapes):
        return dmf_guard(layout.shapes, safety)

    def guard(y: Tensor, err: Tensor) -> Tensor:
        u = torch.finfo(y.dtype).eps
        bad = torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)
        for W in layout.unpack(y):
            k = W.shape[-1]
            R = (W * W).sum(-1)  # (n, k) squared row norms
            rmin = R.amin(-1).clamp(min=torch.finfo(y.dtype).tiny)
            tau2 = (2.0 * (safety * k) ** 2) * ((k * (err * err)) / rmin + u * u) * R.prod(-1)
            det = torch.linalg.det(W)
            bad = bad | (det * det <= tau2)
        return bad

    return guard


#: Tolerance ratio of the loose run in ``error="two-tolerance"``.  Why 100: the global error of an adaptive
#: 5(4) pair grows at least like tol^(1/6) even in the worst case (err ∝ tol^(p/(p+1)), p = 5), so the loose
#: run's error is ≥ 100^(1/6) ≈ 2.2× the tight run's, and then |y_tight − y_loose| ≥ err_loose − err_tight ≥
#: err_tight.  (arora-2018/end-to-end-simulation uses the same ratio.)
TWO_TOL_FACTOR = 100.0


def two_tolerance_combine(e: Tensor, y: Tensor, y_loose: Tensor) -> Tensor:
    """``e + max_i |y_i − y_loose,i|`` over the last dimension, and +∞ where ``y`` is a state (finite) but
    ``y_loose`` is not (the loose run never got there, so the estimate cannot be validated)."""
    d = (y - y_loose).abs().amax(-1) if y.shape[-1] else torch.zeros_like(e)
    out = e + d
    missing = torch.isfinite(y).all(-1) & ~torch.isfinite(y_loose).all(-1)
    return torch.where(missing, torch.full_like(out, math.inf), out)


def two_tolerance_combine_entries(e: Tensor, y: Tensor, y_loose: Tensor) -> Tensor:
    """Per component: ``e_i + |y_i − y_loose,i|`` (…, P), +∞ on every component of a state the loose run did not
    reach.  A component that never moved in either run (error 0, same initial value) keeps error exactly 0."""
    out = e + (y - y_loose).abs()
    missing = (torch.isfinite(y).all(-1) & ~torch.isfinite(y_loose).all(-1)).unsqueeze(-1)
    return torch.where(missing, torch.full_like(out, math.inf), out)


def _nan0(e: Tensor) -> Tensor:
    """A loose run's error where it has a state (NaN → 0: the missing state itself makes the combined error ∞)."""
    return torch.nan_to_num(e, nan=0.0)


def two_tolerance_error(tight: FlowSolution, loose: FlowSolution) -> FlowSolution:
    """``tight`` with its error estimates replaced by ``e_tight + e_loose + |y_tight − y_loose|``, per component and
    as the max over components (final state, levels, saves).  Where the tight run has a state (a level crossed, a save
    reached) but the loose run has none, the error is +∞: the estimate could not be validated, and the caller must
    not use that state (it escalates or stays undecided)."""
    r, lo = tight.result, loose.result
    # final states are comparable where both runs stopped at t_max (same time) or both at the located loss
    # target (same level, as for the level states); otherwise (e.g. one run UNRESOLVED) not validated
    t_max_both = (r.status == int(Status.REACHED_T_MAX)) & (lo.status == int(Status.REACHED_T_MAX)) & (r.t == lo.t)
    event_both = (r.status == int(Status.REACHED_EVENT)) & (lo.status == int(Status.REACHED_EVENT))
    final_ok = t_max_both | event_both
    # e_tight + e_loose + |y_tight − y_loose|: the triangle inequality through the loose run (|y_t − y*| ≤
    # |y_t − y_l| + |y_l − y*|) plus the tight estimate.  Why e_loose too: where the steps are not limited by the
    # tolerances (few steps, capped by the step-growth limit or t_max), both runs take the same steps, the
    # difference says nothing and the tight run's summed estimate alone fell short (measured: depth-3 sensing,
    # init scale 1e-2, t = 1, 3 steps each: actual 3.2e-16, e_tight + |Δ| = 2.8e-16, e_loose 1.3e-16).
    entry = torch.where(final_ok.unsqueeze(-1),
                        two_tolerance_combine_entries(r.entry_error + lo.entry_error, r.y, lo.y),
                        torch.full_like(r.entry_error, math.inf))
    level_entry = two_tolerance_combine_entries(r.level_entry_error + _nan0(lo.level_entry_error), r.level_y,
                                                lo.level_y)
    save_entry = two_tolerance_combine_entries(r.save_entry_error + _nan0(lo.save_entry_error), r.save_y, lo.save_y)

    def amax(x: Tensor, like: Tensor) -> Tensor:
        return x.amax(-1) if x.shape[-1] else like

    res = dataclasses.replace(
        r, error=amax(entry, r.error), level_error=amax(level_entry, r.level_error),
        save_error=amax(save_entry, r.save_error), entry_error=entry, level_entry_error=level_entry,
        save_entry_error=save_entry,
        meta={**r.meta, "error_model": f"two-tolerance (loose run at {TWO_TOL_FACTOR:g}× the tolerances)"})
    return dataclasses.replace(tight, result=res, error_model="two-tolerance")


@dataclass
class FlowSolution:
    """Gradient-flow solution for a batch: final state, loss, events, saves, errors and statuses."""

    problem: Problem
    layout: FactorLayout
    result: IntegrationResult
    loss_levels: Tensor  # (L,)
    init: Tensor | None = None  # (B, P) packed initial factors (what the certified view's reference starts from)
    loss_target: float | None = None
    t_max: Tensor | None = None  # (B,)
    # how it was solved (what the certified view needs to re-run the loose solve of the two-tolerance error)
    error_model: str = "estimate"  # "estimate" (summed local errors) or "two-tolerance"
    rtol: float = 1e-9
    atol: float = 1e-12
    max_steps: int = 200_000
    guard: str = "none"
    _view: object = dataclasses.field(default=None, init=False, repr=False, compare=False)
    _checked: bool = dataclasses.field(default=False, init=False, repr=False, compare=False)

    # ---- certified values ---------------------------------------------------------------------------
    @property
    def certified(self):
        """States, end-to-end matrices, losses and times as certified values whose leaves escalate to the mpmath
        reference by themselves (``implreg.matrix.flow.certified.CertifiedFlow``; made once per solution).

        The leaves' errors are always the TWO-TOLERANCE errors ``e + |y − y_loose|``, never the summed local
        estimate alone: across a saddle escape the flow amplifies earlier errors and the summed estimate falls
        short of the actual error (measured: actual/estimate up to 14× at t = 100, Razin–Cohen 2×2, depth 2, init
        scale 1e-3), while the two-tolerance error held with a 170–730× margin.  A solve made with
        ``error="estimate"`` (the default) therefore costs one more, loose, solve (``TWO_TOL_FACTOR``× the
        tolerances, same init, t_max, loss target, levels and saves: about half a tight solve) when its view is
        first made; ``error="two-tolerance"`` solutions are used as they are.
        """
        if self._view is None:
            self._view = self.certified_view()
        return self._view

    def certified_view(self, **kw):
        """A fresh certified view (see ``certified``); ``kw`` as :func:`implreg.matrix.flow.certified.certified_flow`
        (``init_of``, budgets)."""
        from implreg.matrix.flow.certified import certified_flow

        return certified_flow(self.with_two_tolerance_error(), **kw)

    def with_two_tolerance_error(self) -> FlowSolution:
        """This solution with two-tolerance errors (itself if it already has them): the loose solve is re-run
        from the recorded init, t_max, loss target, levels, saves and tolerances."""
        if self.error_model == "two-tolerance":
            return self
        if self.init is None:
            from implreg.errors import InvalidInputError

            raise InvalidInputError("this FlowSolution does not carry its initial factors: its two-tolerance "
                                    "error (and certified view) cannot be formed; solve with error='two-tolerance'")
        # The loose run only measures how far the tolerances move the tight run's states, so it runs without the
        # guard, and no further than the tight run got where the guard stopped that one.  With the guard, its larger
        # error estimates trip the det guard long before the tight run's (measured: 4×4 embedding at depth 4, tight
        # run past every loss level at t ≈ 174, loose run UNRESOLVED at t ≈ 41), so every level's error was ∞ and
        # went to the mpmath reference (20 s each, over budget) although the tight state was never in doubt.  A
        # loose trajectory that does go elsewhere shows up as a large |y_tight − y_loose|.
        r = self.result
        planned = torch.as_tensor(math.inf if self.t_max is None else self.t_max, dtype=r.t.dtype, device=r.t.device)
        t_max = torch.where(r.status == int(Status.UNRESOLVED), r.t, planned.expand_as(r.t))
        loose = solve(self.problem, self.layout.unpack(self.init), t_max=t_max, loss_target=self.loss_target,
                      loss_levels=self.loss_levels.tolist(), save_at=self.result.save_t,
                      rtol=TWO_TOL_FACTOR * self.rtol, atol=TWO_TOL_FACTOR * self.atol, max_steps=self.max_steps,
                      guard="none", dtype=self.init.dtype, device=self.init.device)
        return two_tolerance_error(self, loose)

    # ---- final state ------------------------------------------------------------------------------
    # The raw final state of an instance that did not finish (too many steps, divergence, the guard) is where the
    # integrator stopped, not the flow at t_max or the loss target.  Reading it inside a claim without ever asking
    # which instances finished (ok, status, raise_on_failure, messages) makes the claim an error when its body
    # returns (``implreg.harness.verdict.UncheckedSolve``): a statistic or comparison drawn from it would pass
    # silently.  The certified view needs no check: it refuses failed instances by itself.
    def _mark_checked(self) -> None:
        self._checked = True
        recording.checked(self)

    def _final(self, what: str) -> None:
        if self._checked or recording.current() is None:  # outside a claim run nothing is recorded
            return
        s = self.result.status
        bad = (s != int(Status.REACHED_T_MAX)) & (s != int(Status.REACHED_EVENT))
        if bool(bad.any()):
            first = self.result.message(int(bad.nonzero()[0, 0]))
            recording.unchecked_read(self, unfinished_read_message(
                "flow.solve", int(bad.sum()), bad.numel(), first, what))

    @property
    def t(self) -> Tensor:
        self._final("t")
        return self.result.t

    @property
    def status(self) -> Tensor:
        self._mark_checked()
        return self.result.status

    @property
    def error(self) -> Tensor:
        """(B,) estimated absolute error of every factor entry at the final time."""
        return self.result.error

    @property
    def n_steps(self) -> Tensor:
        return self.result.n_steps

    @property
    def factors(self) -> Factors:
        self._final("factors")
        return self.layout.unpack(self.result.y)

    @property
    def end_to_end(self) -> Tensor:
        self._final("end_to_end")
        return end_to_end(self.factors)

    @property
    def loss(self) -> Tensor:
        self._final("loss")
        return self.problem.loss(self.end_to_end)

    @property
    def ok(self) -> Tensor:
        """(B,) bool: instances that reached their final time or loss target (results to trust)."""
        s = self.status  # marks the solve checked
        return (s == int(Status.REACHED_T_MAX)) | (s == int(Status.REACHED_EVENT))

    def messages(self) -> list[str]:
        self._mark_checked()
        return self.result.messages()

    def raise_on_failure(self) -> None:
        """Raise NumericalError naming every instance that diverged or was stopped (not unresolved)."""
        from implreg.errors import NumericalError

        self._mark_checked()

        bad = [m for m, s in zip(self.messages(), self.result.statuses(), strict=True) if s.failed]
        if bad:
            raise NumericalError("gradient flow failed: " + "; ".join(bad[:5]))

    # ---- saved times --------------------------------------------------------------------------------
    @property
    def save_t(self) -> Tensor:
        return self.result.save_t

    def _e2e(self, y: Tensor) -> Tensor:
        return end_to_end(self.layout.unpack(y))

    @property
    def save_end_to_end(self) -> Tensor:
        """(B, T, d, d') end-to-end matrices at the save times (NaN after an instance stopped)."""
        return self._e2e(self.result.save_y)

    @property
    def saved(self) -> Tensor:
        """(B, T) whether each save was made (False for save times after an instance stopped, whose states are NaN)."""
        return torch.isfinite(self.save_end_to_end).flatten(-2).all(-1)

    @property
    def save_loss(self) -> Tensor:
        W = self.save_end_to_end
        B, T = W.shape[:2]
        return self.problem_rows(T).loss(W.reshape(B * T, *W.shape[2:])).reshape(B, T)

    # ---- loss levels ----------------------------------------------------------------------------------
    @property
    def level_t(self) -> Tensor:
        """(B, L) first time ℓ ≤ level (NaN if never reached)."""
        return self.result.level_t

    @property
    def level_end_to_end(self) -> Tensor:
        return self._e2e(self.result.level_y)

    @property
    def level_factors(self) -> Factors:
        return self.layout.unpack(self.result.level_y)

    @property
    def level_error(self) -> Tensor:
        return self.result.level_error

    def problem_rows(self, repeat: int) -> Problem:
        """The problem with every instance repeated ``repeat`` times (row b·repeat + r is instance b)."""
        index = torch.arange(self.problem.batch, device=self.problem.device).repeat_interleave(repeat)
        return self.problem.select(index)

    def select(self, index: Tensor | list[int] | slice) -> FlowSolution:
        """The sub-batch ``index`` (e.g. to re-examine one instance)."""
        r = self.result
        picked = IntegrationResult(
            **{k: (v[index] if isinstance(v, Tensor) and k != "save_t" else v) for k, v in vars(r).items()}
        )
        return FlowSolution(self.problem.select(index), self.layout, picked, self.loss_levels,
                            init=None if self.init is None else self.init[index], loss_target=self.loss_target,
                            t_max=None if self.t_max is None else self.t_max[index], error_model=self.error_model,
                            rtol=self.rtol, atol=self.atol, max_steps=self.max_steps, guard=self.guard)


def solve(
    problem: Problem,
    factors: Sequence[Tensor],
    *,
    t_max: float | Tensor = math.inf,
    loss_target: float | None = None,
    loss_levels: Sequence[float] = (),
    save_at: Sequence[float] | Tensor | None = None,
    rtol: float = 1e-9,
    atol: float = 1e-12,
    max_steps: int = 200_000,
    guard: Literal["none", "det", "auto"] = "none",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    error: Literal["estimate", "two-tolerance"] = "estimate",
) -> FlowSolution:
    """Gradient flow on ``ℓ(W_N⋯W_1)`` from ``factors`` until ``t_max`` or ``ℓ ≤ loss_target``.

    ``loss_levels``: record the first time ℓ crosses each level, with the state there (located by bisection
    of the dense output).  ``guard="det"`` (square factors only) turns on :func:`det_guard`: an instance whose
    det W_j falls below float64 resolution stops with status UNRESOLVED instead of returning a sign that
    rounding decided.  Ask for it where a claim reads a det sign; it is off by default (``"none"``; ``"auto"``
    is kept as a synonym of ``"none"``) because it also stops every singular or stationary init (the all-zero
    init, an exact fixed point, would come back UNRESOLVED with an infinite error instead of exact zeros).
    ``device`` defaults to the factors' device; everything runs there.

    ``error="estimate"``: the integrator's summed local error estimates (they miss the flow's amplification of
    earlier errors).  ``error="two-tolerance"``: also solve at ``TWO_TOL_FACTOR``× looser tolerances and report
    ``e_tight + e_loose + |y_tight − y_loose|`` per component at the final state, every level and every save,
    which does see the amplification (see :func:`two_tolerance_error`); costs about 1.5× one solve.
    """
    if error not in ("estimate", "two-tolerance"):
        raise InvalidInputError(f"error must be 'estimate' or 'two-tolerance', got {error!r}")
    if error == "two-tolerance":
        kw = dict(t_max=t_max, loss_target=loss_target, loss_levels=loss_levels, save_at=save_at,
                  max_steps=max_steps, guard=guard, dtype=dtype, device=device)
        tight = solve(problem, factors, rtol=rtol, atol=atol, **kw)
        loose = solve(problem, factors, rtol=TWO_TOL_FACTOR * rtol, atol=TWO_TOL_FACTOR * atol, **kw)
        return two_tolerance_error(tight, loose)
    check_factors(factors)
    dev = torch.device(device) if device is not None else factors[0].device
    factors = tuple(W.to(dtype=dtype, device=dev) for W in factors)
    problem = problem.to(dtype=dtype, device=dev)
    layout = FactorLayout.of(factors)
    B = factors[0].shape[0]
    if problem.batch == 1 and B > 1:
        problem = problem.expand(B)
    if problem.batch != B:
        raise InvalidInputError(f"problem has batch {problem.batch} but the factors have batch {B}")
    if (layout.dims[-1], layout.dims[0]) != problem.shape:
        raise InvalidInputError(
            f"factors multiply to {layout.dims[-1]}×{layout.dims[0]} matrices, problem '{problem.name}' "
            f"is {problem.shape[0]}×{problem.shape[1]}"
        )
    if loss_target is not None and not (loss_target > 0 and math.isfinite(loss_target)):
        raise InvalidInputError(f"loss_target must be a positive finite number, got {loss_target}")
    if math.isinf(float(torch.as_tensor(t_max).max())) and loss_target is None:
        raise InvalidInputError("give a finite t_max or a loss_target: gradient flow runs forever otherwise")
    lv = torch.as_tensor(list(loss_levels), dtype=dtype, device=dev).reshape(-1)
    if lv.numel() and (not torch.isfinite(lv).all() or (lv <= 0).any()):
        raise InvalidInputError(f"loss levels must be positive and finite, got {list(loss_levels)}")
    if guard not in ("auto", "det", "none"):
        raise InvalidInputError(f"guard must be 'auto', 'det' or 'none', got {guard!r}")
    square = all(a == b for a, b in layout.shapes)
    if guard == "det" and not square:
        raise InvalidInputError("guard='det' needs square factors")
    use_guard = guard == "det"

    # The problem's tensors are per-instance parameters compacted with the state by the integrator.
    names = list(problem.tensors())
    params = [problem.tensors()[n] for n in names]
    y0 = layout.pack(factors)
    common = dict(t_max=t_max, rtol=rtol, atol=atol, n_levels=lv.numel(), save_at=save_at, max_steps=max_steps,
                  params=params, h0=None, divergence_limit=1e100, tableau=DOPRI5, bisection_iters=60)

    def prob(*pr: Tensor) -> Problem:
        return Problem(problem.name, **dict(zip(names, pr, strict=True)))

    def loss_of(y: Tensor, *pr: Tensor) -> Tensor:
        return prob(*pr).loss(end_to_end(layout.unpack(y)))

    # Events and levels are located (bisection of the dense output) with the same loss as FlowSolution.loss,
    # so the returned state is on the target side of ℓ as the user computes it.
    event = (lambda y, *pr: loss_of(y, *pr) - loss_target) if loss_target is not None else None
    levels = (lambda y, *pr: loss_of(y, *pr).unsqueeze(-1) - lv) if lv.numel() else None
    if max(layout.dims) <= _FUSED_MAX_DIM:
        # Small matrices: fixed-order unrolled arithmetic in one (optionally compiled) kernel per RK attempt;
        # the loss comes out of the last stage, so detecting the crossing costs nothing extra.
        fz = _fused(layout, "completion" if problem.is_completion else "sensing", use_guard)
        res = _integrate(
            fz.f, y0, event=event, levels=levels, guard=fz.guard, step_kernel=fz.step, full_attempt=fz.full_attempt,
            native_steps=fz.native,
            aux_target=loss_target, aux_levels=lv if lv.numel() else None, **common,
        )
        res.meta["kernel"] = fz.step.name
    else:

        def f(t: Tensor, y: Tensor, *pr: Tensor) -> Tensor:
            _, grads = factor_grads(prob(*pr), layout.unpack(y))
            return -layout.pack(grads)

        dguard = det_guard(layout) if use_guard else None
        guard_fn = (lambda y, err, *pr: dguard(y, err)) if dguard is not None else None
        res = _integrate(f, y0, event=event, levels=levels, guard=guard_fn, **common)
    res.meta.update(guard="det" if use_guard else "none", problem=problem.name, dims=layout.dims)
    tmax = torch.as_tensor(t_max, dtype=dtype, device=dev).expand(B).clone()
    return FlowSolution(problem, layout, res, lv, init=y0.clone(), loss_target=loss_target, t_max=tmax,
                        rtol=rtol, atol=atol, max_steps=max_steps, guard="det" if use_guard else "none")
