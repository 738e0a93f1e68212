"""Batched adaptive embedded Runge–Kutta integration of ``dy/dt = f(t, y)`` with per-instance control.

Every instance has its own time, step size, error control, events and status; instances that finish drop
out of the work (batch compaction).  All arithmetic is row-wise (see :mod:`implreg.matrix.flow.kernels`), so an
instance's result is bit-identical whether it is integrated alone or inside any batch (tested): Hypothesis
shrinking re-runs instances alone.

The parts, each in its own module (the shape of diffrax's solvers):

- the tableau and the stepper — :mod:`implreg.matrix.flow.tableau`, :func:`implreg.matrix.flow.kernels.rk_attempt` (one
  attempted step with its error estimate) and :func:`~implreg.matrix.flow.kernels.rk_post` (accept/reject, events,
  level and save bookkeeping, statuses);
- the step-size controller — :mod:`implreg.matrix.flow.controller`;
- the event/level/save locator and the result tensors — :mod:`implreg.matrix.flow.locator`;
- batch compaction — :mod:`implreg.matrix.flow.compaction`;
- this module: input checks and the loop that wires them together.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from implreg.errors import InvalidInputError
from implreg.matrix.flow.compaction import ActiveBatch, all_rows
from implreg.matrix.flow.controller import initial_step, step_factor
from implreg.matrix.flow.kernels import RKCoefficients, rk_attempt, rk_post, root_table
from implreg.matrix.flow.locator import DenseWork, Outputs
from implreg.matrix.flow.result import IntegrationResult, Status, amax
from implreg.matrix.flow.tableau import DOPRI5, ButcherTableau

if TYPE_CHECKING:
    from implreg.matrix.flow.native import NativeSteps

__all__ = ["IntegrationResult", "Status", "integrate"]

VectorField = Callable[..., Tensor]  # f(t (n,), y (n, P), *params) -> (n, P)
ScalarFn = Callable[..., Tensor]  # g(y (n, P), *params) -> (n,)


def integrate(
    f: VectorField,
    y0: Tensor,
    *,
    t_max: float | Tensor,
    rtol: float = 1e-9,
    atol: float = 1e-12,
    event: ScalarFn | None = None,
    levels: Callable[..., Tensor] | None = None,
    n_levels: int = 0,
    save_at: Sequence[float] | Tensor | None = None,
    guard: Callable[..., Tensor] | None = None,
    params: Sequence[Tensor] = (),
    max_steps: int = 100_000,
    h0: float | None = None,
    divergence_limit: float = 1e100,
    tableau: ButcherTableau = DOPRI5,
    bisection_iters: int = 60,
) -> IntegrationResult:
    """Integrate ``dy/dt = f(t, y)`` for a batch ``y0`` (B, P) from t = 0 to ``t_max`` (scalar or (B,)).

    Step control: Hairer–Nørsett–Wanner II.4, RMS norm of ``err_i / (atol + rtol·max(|y_i|, |y_new,i|))``
    (0/0 read as 0), ``h ← h·clip(0.9·err^{−1/5}, 0.2, 10)``.  ``event(y)`` (B,) stops an instance at its first
    crossing to ≤ 0, located by ``bisection_iters`` bisections of the dense output (so the located time is exact
    to 2^-60 of a step, and the state carries the dense output's O(h⁵) error).  ``levels(y)`` (B, L) records
    the first crossing of each column without stopping (crossings after the stopping event are not recorded).
    ``guard(y, err)`` (B,) bool stops an instance as UNRESOLVED where float64 cannot resolve a quantity the
    caller cares about; it is consulted on every accepted step, including the one that ends the integration
    (at t_max, or at the located event state).  ``params`` are batch-first per-instance constants (e.g. the
    problem's data) passed as extra arguments to f, event, levels and guard, and compacted together with the
    state, so those functions stay pure and row-wise.

    The error estimate of component i is ``Σ_steps (|h Σ_j e_j k_j,i| + u·|y_i|)`` (u = unit roundoff; y the
    step's new state), summed only over the steps in which some stage derivative k_j,i is non-zero (otherwise
    y_i + h·0 = y_i exactly): the sum of local error estimates and rounding, without amplification by the flow.
    A component that never moves (an exact fixed point included) has error exactly 0.  ``entry_error`` (B, P)
    holds it, and states from the dense output (levels, saves, located events) carry their step's value;
    ``error`` is its maximum over components.  It is an *estimate*, not a
    rigorous bound: where the flow amplifies earlier errors it can be too small (once seen 1.2× too small, in
    arora-2018/end-to-end-simulation).  It is validated against the mpmath reference in the tests (actual /
    estimated ≤ 0.1 across the 2×2 saddle escape); callers that need more compare two tolerances.

    Every operation is row-wise (stage sums, error norms and the dense output are accumulated term by term in a
    fixed order, never by BLAS or reduction kernels), so an instance's result is bit-identical alone or in any
    batch.  Per step there is one host synchronization (does any instance need attention?); dense-output work
    for events, levels and saves is deferred and done in batches; finished instances are frozen by a mask and
    compacted away once they are an eighth of the batch.
    """
    return _integrate(
        f, y0, t_max=t_max, rtol=rtol, atol=atol, event=event, levels=levels, n_levels=n_levels,
        save_at=save_at, guard=guard, params=params, max_steps=max_steps, h0=h0,
        divergence_limit=divergence_limit, tableau=tableau, bisection_iters=bisection_iters,
    )


def _integrate(
    f: VectorField,
    y0: Tensor,
    *,
    t_max: float | Tensor,
    rtol: float,
    atol: float,
    event: ScalarFn | None,
    levels: Callable[..., Tensor] | None,
    n_levels: int,
    save_at: Sequence[float] | Tensor | None,
    guard: Callable[..., Tensor] | None,
    params: Sequence[Tensor],
    max_steps: int,
    h0: float | None,
    divergence_limit: float,
    tableau: ButcherTableau,
    bisection_iters: int,
    step_kernel: Callable[..., tuple] | None = None,
    full_attempt: Callable[..., tuple] | None = None,
    aux_target: float | None = None,
    aux_levels: Tensor | None = None,
    native_steps: NativeSteps | None = None,
) -> IntegrationResult:
    """:func:`integrate`, optionally with a fused ``step_kernel`` (``kernels.dmf_step_kernel``: attempt, step
    control, events and statuses in one kernel, for two-tensor ``params``).  Its field returns the loss as an
    auxiliary output: the event is then ``aux − aux_target`` and the levels ``aux − aux_levels`` (``event``
    and ``levels`` are still used to locate crossings), and its guard is built in (``guard`` is used at located
    event states).  It returns only the last stage, so ``full_attempt`` (``kernels.rk_attempt``, the same
    arithmetic with every stage) is re-run on the few rows whose dense output is needed: bit-identical, so the
    recomputed step is the step that was taken.  ``native_steps`` (:class:`implreg.matrix.flow.native.NativeSteps`,
    the same step in C, used with ``step_kernel``) takes the quiet steps of batches it wants in one call,
    returning at the first step that needs the host: the loop below sees the same steps, with the same bits."""
    tmax, saves = _checked(y0, t_max, rtol, atol, max_steps, event, levels, n_levels, save_at)
    B, P = y0.shape
    dtype, device = y0.dtype, y0.device
    z = {"dtype": dtype, "device": device}
    T, L = saves.numel(), int(n_levels)
    u = torch.finfo(dtype).eps
    co = RKCoefficients.of(tableau)
    attempt = functools.partial(rk_attempt, co, f, None, None)
    full = full_attempt if step_kernel is not None else attempt
    rt, at = torch.tensor(float(rtol), **z), torch.tensor(float(atol), **z)
    prm = tuple(torch.as_tensor(q, device=device) for q in params)
    if any(q.shape[0] != B for q in prm):
        raise InvalidInputError(f"every entry of params must have batch {B} first")

    out = Outputs.empty(y0, T, L)
    t0 = torch.zeros(B, **z)
    k1 = f(t0, y0, *prm)
    level_hit = levels(y0, *prm) <= 0 if levels is not None else None
    out.start(y0, saves, level_hit)
    g_old = event(y0, *prm) if event is not None else None
    if h0 is None:
        h = initial_step(f, t0, y0, k1, tmax, rtol=rtol, atol=atol, order=tableau.order, params=prm)
    else:
        h = torch.full((B,), float(h0), **z)

    # instances already done at t = 0 (event already ≤ 0, or t_max = 0)
    done0 = tmax <= 0
    fired0 = (g_old <= 0) if g_old is not None else torch.zeros_like(done0)
    done0 = done0 | fired0
    status0 = torch.where(fired0, int(Status.REACHED_EVENT), int(Status.REACHED_T_MAX))
    out.status[done0] = status0[done0]
    # a vector field that is not finite at the initial state (e.g. an init too large for the dtype): no step
    # can be taken, so stop at once as DIVERGED instead of rejecting ever smaller steps until max_steps
    field_bad = ~done0 & ~(torch.isfinite(k1).all(-1) & torch.isfinite(h) & (h > 0))
    out.status[field_bad] = int(Status.DIVERGED)
    done0 = done0 | field_bad

    def stages(cat: dict) -> Tensor:  # the stages of the recorded steps, recomputed (same inputs, same bits)
        return full(cat["t0"], cat["y0"], cat["k1"], cat["h_in"], cat["tm"], cat["ea"], rt, at, *cat["prm"])[3]

    work = DenseWork(out, co, saves, event, levels, guard, stages, divergence_limit, bisection_iters, len(prm))
    i64 = {"dtype": torch.int64, "device": device}
    lev_done = level_hit.clone() if level_hit is not None else torch.zeros(B, L, dtype=torch.bool, device=device)
    batch = ActiveBatch(idx=torch.arange(B, device=device), y=y0.clone(), t=t0, tm=tmax, h=h,
                        err_acc=torch.zeros(B, P, **z), steps=torch.zeros(B, **i64), rej=torch.zeros(B, **i64),
                        k1=k1, attempts=torch.zeros(B, **i64), lev_done=lev_done, prm=prm)
    if not bool((~done0).all()):
        batch = batch.select(~done0)
    prep = getattr(step_kernel, "prepare", None)  # the layout a fused kernel wants its batch-first inputs in
    if prep is not None:
        batch.laid_out(prep)
    active = all_rows(batch.n, device)
    n_frozen = 0

    c_max = torch.tensor(max_steps, **i64)
    c_lim = torch.tensor(divergence_limit, **z)
    c_tiny = torch.tensor(16 * u, **z)
    saves_arg = saves if T else None
    if step_kernel is not None:
        c_target = torch.tensor(aux_target, **z) if (event is not None and aux_target is not None) else None
        c_levels = aux_levels.to(**z) if (levels is not None and aux_levels is not None) else None
        if (event is not None) != (c_target is not None) or (levels is not None) != (c_levels is not None):
            raise InvalidInputError("a fused step kernel needs aux_target with event and aux_levels with levels")
        table = root_table(2 * co.order, dtype, device)
    while batch.n:
        b = batch
        y_old, t_old, k1_old, h_old, ea_old = b.y, b.t, b.k1, b.h, b.err_acc
        lev_in = b.lev_done if levels is not None else None
        if step_kernel is not None:
            # ---- the whole step in one fused kernel, or (C) the quiet steps and the next one that needs the host
            args = (b.t, b.y, b.k1, b.h, b.tm, b.err_acc, b.steps, b.rej, b.attempts, active, lev_in, rt, at,
                    c_target, c_levels, saves_arg, c_max, c_lim, c_tiny, table, *b.prm)
            if native_steps is not None and native_steps.wanted(b.n, b.y):
                (y_old, t_old, k1_old, h_old, ea_old), stepped = native_steps(*args)
            else:
                stepped = step_kernel(*args)
            (b.y, b.t, b.err_acc, b.k1, b.steps, b.rej, b.h, b.attempts, status, fired, lev_new, lev_done_new,
             save_in, record, attention, hs, y_new, acc_err, any_attention) = stepped
        else:
            # ---- generic field: the RK attempt, then f's functions of y, then the step bookkeeping -----------
            hs, last, t_new, K, y_new, msq, finite, acc_err, ymax, _, bad = attempt(
                b.t, b.y, b.k1, b.h, b.tm, b.err_acc, rt, at, *b.prm)
            p = step_factor(msq, co.order)
            y_eval = None  # the state each row would commit (finite for every row)
            if event is not None or levels is not None or guard is not None:
                y_eval = torch.where(finite.unsqueeze(-1), y_new, b.y)
            g_new = event(y_eval, *b.prm) if event is not None else None
            g_lv = levels(y_eval, *b.prm) if levels is not None else None
            bad = guard(y_eval, amax(acc_err), *b.prm) if guard is not None else None
            (b.y, b.t, b.err_acc, b.k1, b.steps, b.rej, b.h, b.attempts, status, fired, lev_new, lev_done_new,
             save_in, record, attention) = rk_post(
                p, hs, last, t_new, K[:, -1], y_new, msq, finite, acc_err, ymax, bad, b.y, b.t, b.err_acc, b.k1,
                b.steps, b.rej, b.attempts, active, g_new, g_lv, lev_in, saves_arg, c_max, c_lim, c_tiny)
            if not co.fsal:
                b.k1 = f(b.t, b.y, *b.prm)
            any_attention = attention.any()
        if lev_done_new is not None:
            b.lev_done = lev_done_new
        if not bool(any_attention):  # the one host synchronization of a quiet step
            continue

        if record is not None and bool(record.any()):
            ri = record.nonzero().flatten()
            rec = {
                "g": b.idx[ri], "y0": y_old[ri], "h": hs[ri], "t0": t_old[ri], "err": acc_err[ri],
                "y1": y_new[ri], "prm": tuple(q[ri] for q in b.prm),
                "fired": fired[ri] if fired is not None else None,
                "lev": lev_new[ri] if lev_new is not None else None,
                "save": save_in[ri] if save_in is not None else None,
            }
            if step_kernel is None:
                rec["K"] = K[ri]
            else:
                rec.update(k1=k1_old[ri], h_in=h_old[ri], tm=b.tm[ri], ea=ea_old[ri])
            work.add(rec)
        fin = status != 0
        fi = fin.nonzero().flatten()
        if fi.numel():
            out.finish(b.idx[fi], b.t[fi], b.y[fi], status[fi], b.err_acc[fi], b.steps[fi], b.rej[fi])
            active = active & ~fin
            n_frozen += int(fi.numel())
        work.flush_if_full()
        if b.should_compact(n_frozen):
            batch = b.select(active, prep)
            n_frozen = 0
            active = all_rows(batch.n, device)
    work.flush()
    meta = {"tableau": tableau.name, "rtol": rtol, "atol": atol, "dtype": str(dtype), "device": str(device),
            "nonfinite_start": field_bad}
    return out.result(saves, meta)


def check_state_and_tolerances(y0: Tensor, rtol: float, atol: float, max_steps: int) -> None:
    """The checks every integrator here makes: a finite floating (B, P) state, rtol > 0 reachable in its dtype
    (≥ 100·eps), atol ≥ 0, max_steps ≥ 1; each failure names the problem."""
    if y0.ndim != 2:
        raise InvalidInputError(f"y0 must be (B, P), got shape {tuple(y0.shape)}")
    if not y0.is_floating_point():
        raise InvalidInputError(f"y0 must be floating point, got {y0.dtype}")
    if not (rtol > 0 and atol >= 0 and math.isfinite(rtol) and math.isfinite(atol)):
        raise InvalidInputError(f"tolerances must satisfy rtol > 0, atol ≥ 0; got rtol={rtol}, atol={atol}")
    if rtol < 100 * torch.finfo(y0.dtype).eps:
        raise InvalidInputError(f"rtol={rtol} is below 100·eps of {y0.dtype}: the step control cannot reach it")
    if max_steps < 1:
        raise InvalidInputError(f"max_steps must be ≥ 1, got {max_steps}")
    if not torch.isfinite(y0).all():
        bad = (~torch.isfinite(y0)).any(-1).nonzero().flatten().tolist()
        raise InvalidInputError(f"initial state has NaN/Inf entries in instances {bad[:10]}")


def _checked(y0: Tensor, t_max: float | Tensor, rtol: float, atol: float, max_steps: int, event: ScalarFn | None,
             levels: Callable[..., Tensor] | None, n_levels: int, save_at: Sequence[float] | Tensor | None
             ) -> tuple[Tensor, Tensor]:
    """Validate the inputs; return t_max per instance (B,) and the save times (T,)."""
    check_state_and_tolerances(y0, rtol, atol, max_steps)
    z = {"dtype": y0.dtype, "device": y0.device}
    tmax = torch.as_tensor(t_max, **z).expand(y0.shape[0]).clone()
    if torch.isnan(tmax).any() or (tmax < 0).any():
        raise InvalidInputError(f"t_max must be ≥ 0 (inf allowed with an event), got {t_max}")
    if torch.isinf(tmax).any() and event is None:
        raise InvalidInputError("t_max = inf needs a stopping event (e.g. a loss target)")
    saves = torch.as_tensor([] if save_at is None else save_at, **z).reshape(-1)
    if saves.numel() and (not torch.isfinite(saves).all() or (saves < 0).any() or (saves.diff() < 0).any()):
        raise InvalidInputError("save_at must be finite, non-negative and sorted")
    if levels is not None and int(n_levels) < 1:
        raise InvalidInputError("pass n_levels ≥ 1 together with levels")
    return tmax, saves
