"""Batched adaptive embedded Runge–Kutta integration of ``dy/dt = f(t, y)`` with per-instance control.

Every instance has its own time, step size, error control, events and status; instances that finish drop
out of the work (batch compaction).  All arithmetic is row-wise (see :mod:`implreg.flow.kernels`), so an
instance's result is bit-identical whether it is integrated alone or inside any batch (tested): Hypothesis
shrinking re-runs instances alone.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

import torch
from torch import Tensor

from implreg.errors import InvalidInputError
from implreg.flow.kernels import (
    RKCoefficients,
    dense_coefficients,
    dense_eval,
    ratio,
    rk_attempt,
    rk_post,
    rms,
    root_table,
)
from implreg.flow.tableau import DOPRI5, ButcherTableau

__all__ = ["IntegrationResult", "Status", "integrate"]

VectorField = Callable[..., Tensor]  # f(t (n,), y (n, P), *params) -> (n, P)
ScalarFn = Callable[..., Tensor]  # g(y (n, P), *params) -> (n,)


class Status(IntEnum):
    """Per-instance outcome of an integration; ``Status.X.message`` reads as a sentence."""

    RUNNING = 0
    REACHED_T_MAX = 1
    REACHED_EVENT = 2
    MAX_STEPS = 3
    DIVERGED = 4
    STEP_TOO_SMALL = 5
    UNRESOLVED = 6

    @property
    def message(self) -> str:
        return _MESSAGES[self]

    @property
    def ok(self) -> bool:
        """True for outcomes that are results (reached the final time or the event)."""
        return self in (Status.REACHED_T_MAX, Status.REACHED_EVENT)


_MESSAGES = {
    Status.RUNNING: "still running (the integration was interrupted)",
    Status.REACHED_T_MAX: "reached the final time",
    Status.REACHED_EVENT: "reached the stopping event (crossing located inside the step)",
    Status.MAX_STEPS: "stopped after the maximum number of steps without reaching the final time or event",
    Status.DIVERGED: "diverged: the state became non-finite or exceeded the divergence limit",
    Status.STEP_TOO_SMALL: "step size underflow: the solution is likely blowing up in finite time",
    Status.UNRESOLVED: "numerically unresolved in float64: the resolution guard tripped "
    "(the result must be escalated to the high-precision reference)",
}


@dataclass
class IntegrationResult:
    """Outcome of :func:`integrate` for a batch of B instances (all tensors batch-first)."""

    t: Tensor  # (B,) time reached (the located event time when the event fired)
    y: Tensor  # (B, P) state at t
    status: Tensor  # (B,) int64 Status codes
    error: Tensor  # (B,) estimated absolute error of y (max over components): entry_error.amax(-1)
    n_steps: Tensor  # (B,) accepted steps
    n_rejected: Tensor  # (B,) rejected steps
    save_t: Tensor  # (T,) requested save times
    save_y: Tensor  # (B, T, P) states at save times (NaN where the instance stopped before)
    save_error: Tensor  # (B, T) error estimate at each save time: save_entry_error.amax(-1)
    level_t: Tensor  # (B, L) first time each level function crossed ≤ 0 (NaN if never)
    level_y: Tensor  # (B, L, P) state at that time (NaN if never)
    level_error: Tensor  # (B, L): level_entry_error.amax(-1)
    unresolved_t: Tensor  # (B,) time the guard tripped (NaN if it never did)
    meta: dict = field(default_factory=dict)
    # per-component error estimates (see integrate()); exactly 0 for a component that never moved.  A producer
    # that has only the (B,), (B, T), (B, L) fields may leave these out: each entry then gets its row's maximum
    # (a valid, coarser estimate).
    entry_error: Tensor | None = None  # (B, P)
    save_entry_error: Tensor | None = None  # (B, T, P)
    level_entry_error: Tensor | None = None  # (B, L, P)

    def __post_init__(self) -> None:
        if self.entry_error is None:
            self.entry_error = self.error.unsqueeze(-1).expand(self.y.shape).clone()
        if self.save_entry_error is None:
            self.save_entry_error = self.save_error.unsqueeze(-1).expand(self.save_y.shape).clone()
        if self.level_entry_error is None:
            self.level_entry_error = self.level_error.unsqueeze(-1).expand(self.level_y.shape).clone()

    def statuses(self) -> list[Status]:
        return [Status(int(s)) for s in self.status.tolist()]

    def messages(self) -> list[str]:
        """One sentence per instance: what happened and when."""
        out = []
        for i, s in enumerate(self.statuses()):
            extra = f" at t = {float(self.t[i]):.6g}"
            if s == Status.UNRESOLVED:
                extra = f" at t = {float(self.unresolved_t[i]):.6g}"
            start_bad = self.meta.get("nonfinite_start")
            if s == Status.DIVERGED and start_bad is not None and bool(start_bad[i]):
                out.append(f"instance {i}: diverged before the first step: the vector field is not finite at the "
                           f"initial state (largest |y0| entry {float(self.y[i].abs().max()):.3g}; too large for "
                           f"{self.meta.get('dtype', 'the dtype')}?)")
                continue
            out.append(f"instance {i}: {s.message}{extra} after {int(self.n_steps[i])} steps")
        return out


def _amax(e: Tensor) -> Tensor:
    """max over the last (component) dimension; 0 for a state with no components."""
    return e.amax(-1) if e.shape[-1] else torch.zeros(e.shape[:-1], dtype=e.dtype, device=e.device)


def _pow(x: Tensor, p: float) -> Tensor:
    """x^p for x > 0 as exp(p·log x): torch.pow with a scalar exponent takes a vectorized path for the bulk
    of a tensor and scalar libm for the tail, which differ in the last bit, so results would depend on an
    instance's position in the batch; exp and log are evaluated identically at every position.  (Eager only:
    never inside a compiled kernel, whose vectorized and scalar exp need not agree.)"""
    return torch.exp(p * torch.log(x))


_FLUSH_ROWS = 4096  # pending dense-output work (events, levels, saves) is done in batches of about this many rows


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
) -> IntegrationResult:
    """:func:`integrate`, optionally with a fused ``step_kernel`` (``kernels.dmf_step_kernel``: attempt, step
    control, events and statuses in one kernel, for two-tensor ``params``).  Its field returns the loss as an
    auxiliary output: the event is then ``aux − aux_target`` and the levels ``aux − aux_levels`` (``event``
    and ``levels`` are still used to locate crossings), and its guard is built in (``guard`` is used at located
    event states).  It returns only the last stage, so ``full_attempt`` (``kernels.rk_attempt``, the same
    arithmetic with every stage) is re-run on the few rows whose dense output is needed: bit-identical, so the
    recomputed step is the step that was taken."""
    if y0.ndim != 2:
        raise InvalidInputError(f"y0 must be (B, P), got shape {tuple(y0.shape)}")
    if not y0.is_floating_point():
        raise InvalidInputError(f"y0 must be floating point, got {y0.dtype}")
    if not (rtol > 0 and atol >= 0 and math.isfinite(rtol) and math.isfinite(atol)):
        raise InvalidInputError(f"tolerances must satisfy rtol > 0, atol ≥ 0; got rtol={rtol}, atol={atol}")
    if rtol < 100 * torch.finfo(y0.dtype).eps:
        raise InvalidInputError(
            f"rtol={rtol} is below 100·eps of {y0.dtype}: the step control cannot reach it"
        )
    if max_steps < 1:
        raise InvalidInputError(f"max_steps must be ≥ 1, got {max_steps}")
    if not torch.isfinite(y0).all():
        bad = (~torch.isfinite(y0)).any(-1).nonzero().flatten().tolist()
        raise InvalidInputError(f"initial state has NaN/Inf entries in instances {bad[:10]}")
    B, P = y0.shape
    dtype, device = y0.dtype, y0.device
    z = {"dtype": dtype, "device": device}
    tmax = torch.as_tensor(t_max, **z).expand(B).clone()
    if torch.isnan(tmax).any() or (tmax < 0).any():
        raise InvalidInputError(f"t_max must be ≥ 0 (inf allowed with an event), got {t_max}")
    if torch.isinf(tmax).any() and event is None:
        raise InvalidInputError("t_max = inf needs a stopping event (e.g. a loss target)")
    saves = torch.as_tensor([] if save_at is None else save_at, **z).reshape(-1)
    if saves.numel() and (not torch.isfinite(saves).all() or (saves < 0).any() or (saves.diff() < 0).any()):
        raise InvalidInputError("save_at must be finite, non-negative and sorted")
    T, L = saves.numel(), int(n_levels)
    if levels is not None and L < 1:
        raise InvalidInputError("pass n_levels ≥ 1 together with levels")
    u = torch.finfo(dtype).eps
    co = RKCoefficients.of(tableau)
    attempt = functools.partial(rk_attempt, co, f, None, None)
    if step_kernel is not None:
        full = full_attempt
    else:
        full = attempt
    nan = float("nan")
    rt, at = torch.tensor(float(rtol), **z), torch.tensor(float(atol), **z)

    # ---- outputs (full batch; active instances write through their original indices) -------------
    out_t = torch.zeros(B, **z)
    out_y = y0.clone()
    out_status = torch.zeros(B, dtype=torch.int64, device=device)
    out_err = torch.zeros(B, P, **z)
    out_steps = torch.zeros(B, dtype=torch.int64, device=device)
    out_rej = torch.zeros(B, dtype=torch.int64, device=device)
    save_y = torch.full((B, T, P), nan, **z)
    save_err = torch.full((B, T, P), nan, **z)
    level_t = torch.full((B, L), nan, **z)
    level_y = torch.full((B, L, P), nan, **z)
    level_err = torch.full((B, L, P), nan, **z)
    unresolved_t = torch.full((B,), nan, **z)
    event_t = torch.full((B,), math.inf, **z)  # located event time (saves and levels after it are dropped)

    # ---- active state -----------------------------------------------------------------------------
    idx = torch.arange(B, device=device)
    y = y0.clone()
    t = torch.zeros(B, **z)
    tm = tmax
    err_acc = torch.zeros(B, P, **z)
    steps = torch.zeros(B, dtype=torch.int64, device=device)
    rej = torch.zeros(B, dtype=torch.int64, device=device)
    prm = tuple(torch.as_tensor(q, device=device) for q in params)
    if any(q.shape[0] != B for q in prm):
        raise InvalidInputError(f"every entry of params must have batch {B} first")
    k1 = f(t, y, *prm)
    if T:
        at0 = saves == 0
        save_y[:, at0] = y0.unsqueeze(1)
        save_err[:, at0] = 0.0
    lev_done = torch.zeros(B, L, dtype=torch.bool, device=device)
    if levels is not None:
        g0 = levels(y, *prm)
        hit = g0 <= 0
        level_t[hit] = 0.0
        level_y[hit] = y.unsqueeze(1).expand(B, L, P)[hit]
        level_err[hit] = 0.0
        lev_done = hit.clone()
    g_old = event(y, *prm) if event is not None else None

    # initial step (Hairer–Nørsett–Wanner II.4, "starting step size"), per instance
    if h0 is None:
        sc = atol + rtol * y.abs()
        d0, d1 = rms(ratio(y, sc)), rms(ratio(k1, sc))
        ha = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
        ha = torch.minimum(ha, tm.clamp(min=1e-300))
        f1 = f(t + ha, y + ha.unsqueeze(-1) * k1, *prm)
        d2 = rms(ratio(f1 - k1, sc)) / ha
        dm = torch.maximum(d1, d2)
        hb = torch.where(dm <= 1e-15, torch.maximum(torch.full_like(ha, 1e-6), ha * 1e-3),
                         _pow(0.01 / dm.clamp(min=1e-300), 1.0 / tableau.order))
        h = torch.minimum(100 * ha, hb)
        # a huge but finite field can make f1 (hence hb) non-finite: fall back to the first guess, or the
        # step-size control would shrink a NaN step for ever
        h = torch.where(torch.isfinite(h) & (h > 0), h, ha)
    else:
        h = torch.full((B,), float(h0), **z)

    # instances already done at t = 0 (event already ≤ 0, or t_max = 0)
    done0 = tm <= 0
    if event is not None:
        done0 = done0 | (g_old <= 0)
    fired0 = (g_old <= 0) if g_old is not None else torch.zeros_like(done0)
    status0 = torch.where(fired0, int(Status.REACHED_EVENT), int(Status.REACHED_T_MAX))
    out_status[done0] = status0[done0]
    # a vector field that is not finite at the initial state (e.g. an init too large for the dtype): no step
    # can be taken, so stop at once as DIVERGED instead of rejecting ever smaller steps until max_steps
    field_bad = ~done0 & ~(torch.isfinite(k1).all(-1) & torch.isfinite(h) & (h > 0))
    out_status[field_bad] = int(Status.DIVERGED)
    nonfinite_start = field_bad.clone()
    done0 = done0 | field_bad

    def locate(fn: Callable[..., Tensor], yb: Tensor, C: list[Tensor], pr: tuple) -> Tensor:
        """θ ∈ (0, 1] with fn(dense(θ)) ≤ 0 at the first crossing, by fixed-count bisection (row-wise)."""
        lo = torch.zeros(yb.shape[0], **z)
        hi = torch.ones(yb.shape[0], **z)
        for _ in range(bisection_iters):
            mid = 0.5 * (lo + hi)
            below = fn(dense_eval(yb, C, mid), *pr) <= 0
            hi = torch.where(below, mid, hi)
            lo = torch.where(below, lo, mid)
        return hi

    pending: list[dict] = []  # per step: rows whose events, level crossings or saves need the dense output

    def flush() -> None:
        """Dense-output work deferred from past steps, for all pending rows at once (row-wise, so batching it
        changes no bit): locate events (then their status, divergence and guard at the located state), then
        level crossings and saves (dropping those after a located event)."""
        if not pending:
            return
        cat = {k: (torch.cat([p[k] for p in pending]) if k != "prm" else
                   tuple(torch.cat([p["prm"][i] for p in pending]) for i in range(len(prm))))
               for k in pending[0] if pending[0][k] is not None}
        pending.clear()
        g, yb, hb, tb, eb = cat["g"], cat["y0"], cat["h"], cat["t0"], cat["err"]
        pr = cat["prm"]
        if "K" in cat:
            Kb = cat["K"]
        else:  # recompute the stages of the steps taken (same inputs, same bits)
            Kb = full(tb, yb, cat["k1"], cat["h_in"], cat["tm"], cat["ea"], rt, at, *pr)[3]
        if "fired" in cat and bool(cat["fired"].any()):
            m = cat["fired"].nonzero().flatten()
            C = dense_coefficients(co, hb[m], Kb[m])
            prm_m = tuple(q[m] for q in pr)
            theta = locate(event, yb[m], C, prm_m)
            ye = dense_eval(yb[m], C, theta)
            te = tb[m] + theta * hb[m]
            gm = g[m]
            st = torch.full_like(gm, int(Status.REACHED_EVENT))
            big = ~(ye.abs().amax(-1) < divergence_limit)
            st = torch.where(big, int(Status.DIVERGED), st)
            if guard is not None:
                bad = guard(ye, _amax(eb[m]), *prm_m) & ~big
                st = torch.where(bad, int(Status.UNRESOLVED), st)
                unresolved_t[gm[bad]] = te[bad]
            out_y[gm], out_t[gm], out_status[gm] = ye, te, st
            event_t[gm] = te
        if "lev" in cat and bool(cat["lev"].any()):
            r, col = cat["lev"].nonzero(as_tuple=True)

            def g_col(yy: Tensor, *p: Tensor) -> Tensor:
                return levels(yy, *p).gather(-1, col.unsqueeze(-1)).squeeze(-1)

            C = dense_coefficients(co, hb[r], Kb[r])
            theta = locate(g_col, yb[r], C, tuple(q[r] for q in pr))
            tl = tb[r] + theta * hb[r]
            keep = tl <= event_t[g[r]]
            yl = dense_eval(yb[r], C, theta)
            gr, cr = g[r][keep], col[keep]
            level_t[gr, cr] = tl[keep]
            level_y[gr, cr] = yl[keep]
            level_err[gr, cr] = eb[r][keep]
        if "save" in cat and bool(cat["save"].any()):
            r, col = cat["save"].nonzero(as_tuple=True)
            theta = (saves[col] - tb[r]) / hb[r]
            ys = dense_eval(yb[r], dense_coefficients(co, hb[r], Kb[r]), theta)
            ys = torch.where((theta >= 1.0).unsqueeze(-1), cat["y1"][r], ys)
            keep = saves[col] <= event_t[g[r]]
            gr, cr = g[r][keep], col[keep]
            save_y[gr, cr] = ys[keep]
            save_err[gr, cr] = eb[r][keep]

    keep0 = ~done0
    if not keep0.all():
        idx, y, t, tm, h, err_acc, steps, rej, k1, lev_done = (
            v[keep0] for v in (idx, y, t, tm, h, err_acc, steps, rej, k1, lev_done)
        )
        prm = tuple(q[keep0] for q in prm)
    attempts = torch.zeros_like(steps)
    prep = getattr(step_kernel, "prepare", None)  # the layout a fused kernel wants its batch-first inputs in
    if prep is not None:
        y, k1, err_acc, prm = prep(y), prep(k1), prep(err_acc), tuple(prep(q) for q in prm)
    n = int(idx.numel())
    active = torch.ones(n, dtype=torch.bool, device=device)
    n_frozen = 0
    n_pending = 0

    c_max = torch.tensor(max_steps, dtype=torch.int64, device=device)
    c_lim = torch.tensor(divergence_limit, **z)
    c_tiny = torch.tensor(16 * u, **z)
    saves_arg = saves if T else None
    if step_kernel is not None:
        c_target = torch.tensor(aux_target, **z) if (event is not None and aux_target is not None) else None
        c_levels = aux_levels.to(**z) if (levels is not None and aux_levels is not None) else None
        if (event is not None) != (c_target is not None) or (levels is not None) != (c_levels is not None):
            raise InvalidInputError("a fused step kernel needs aux_target with event and aux_levels with levels")
        table = root_table(2 * co.order, dtype, device)
    while n:
        y_old, t_old, k1_old, h_old, ea_old = y, t, k1, h, err_acc
        lev_in = lev_done if levels is not None else None
        if step_kernel is not None:
            # ---- the whole step in one fused kernel --------------------------------------------------------
            (y, t, err_acc, k1, steps, rej, h, attempts, status, fired, lev_new, lev_done_new, save_in, record,
             attention, hs, y_new, acc_err, any_attention) = step_kernel(
                t, y, k1, h, tm, err_acc, steps, rej, attempts, active, lev_in, rt, at, c_target, c_levels,
                saves_arg, c_max, c_lim, c_tiny, table, *prm)
        else:
            # ---- generic field: the RK attempt, then f's functions of y, then the step bookkeeping -----------
            hs, last, t_new, K, y_new, msq, finite, acc_err, ymax, _, bad = attempt(
                t, y, k1, h, tm, err_acc, rt, at, *prm
            )
            # step-size factor err^(−1/order), err = √msq clipped below at 1e-10 (eager: exp and log)
            p = _pow(msq.clamp(min=1e-20), -0.5 / co.order)
            y_eval = None  # the state each row would commit (finite for every row)
            if event is not None or levels is not None or guard is not None:
                y_eval = torch.where(finite.unsqueeze(-1), y_new, y)
            g_new = event(y_eval, *prm) if event is not None else None
            g_lv = levels(y_eval, *prm) if levels is not None else None
            bad = guard(y_eval, _amax(acc_err), *prm) if guard is not None else None
            (y, t, err_acc, k1, steps, rej, h, attempts, status, fired, lev_new, lev_done_new, save_in, record,
             attention) = rk_post(p, hs, last, t_new, K[:, -1], y_new, msq, finite, acc_err, ymax, bad, y, t,
                                  err_acc, k1, steps, rej, attempts, active, g_new, g_lv, lev_in, saves_arg, c_max,
                                  c_lim, c_tiny)
            if not co.fsal:
                k1 = f(t, y, *prm)
            any_attention = attention.any()
        if lev_done_new is not None:
            lev_done = lev_done_new
        if not bool(any_attention):  # the one host synchronization of a quiet step
            continue
        fin = status != 0

        if record is not None and bool(record.any()):
            ri = record.nonzero().flatten()
            rec = {
                "g": idx[ri], "y0": y_old[ri], "h": hs[ri], "t0": t_old[ri], "err": acc_err[ri],
                "y1": y_new[ri], "prm": tuple(q[ri] for q in prm),
                "fired": fired[ri] if fired is not None else None,
                "lev": lev_new[ri] if lev_new is not None else None,
                "save": save_in[ri] if save_in is not None else None,
            }
            if step_kernel is None:
                rec["K"] = K[ri]
            else:
                rec.update(k1=k1_old[ri], h_in=h_old[ri], tm=tm[ri], ea=ea_old[ri])
            pending.append(rec)
            n_pending += int(ri.numel())
        fi = fin.nonzero().flatten()
        if fi.numel():
            gi = idx[fi]
            out_t[gi], out_y[gi], out_status[gi] = t[fi], y[fi], status[fi]
            out_err[gi], out_steps[gi], out_rej[gi] = err_acc[fi], steps[fi], rej[fi]
            un = status[fi] == int(Status.UNRESOLVED)
            unresolved_t[gi[un]] = t[fi][un]
            active = active & ~fin
            n_frozen += int(fi.numel())
        if n_pending >= _FLUSH_ROWS:
            flush()
            n_pending = 0
        if n_frozen and (8 * n_frozen >= n):
            keep = active
            idx, y, t, tm, h, err_acc, steps, rej, k1, attempts, lev_done = (
                v[keep] for v in (idx, y, t, tm, h, err_acc, steps, rej, k1, attempts, lev_done)
            )
            prm = tuple(q[keep] for q in prm)
            if prep is not None:
                y, k1, err_acc, prm = prep(y), prep(k1), prep(err_acc), tuple(prep(q) for q in prm)
            n -= n_frozen
            n_frozen = 0
            active = torch.ones(n, dtype=torch.bool, device=device)
    flush()

    return IntegrationResult(
        t=out_t, y=out_y, status=out_status, error=_amax(out_err), n_steps=out_steps, n_rejected=out_rej,
        save_t=saves, save_y=save_y, save_error=_amax(save_err), level_t=level_t, level_y=level_y,
        level_error=_amax(level_err), unresolved_t=unresolved_t, entry_error=out_err, save_entry_error=save_err,
        level_entry_error=level_err,
        meta={"tableau": tableau.name, "rtol": rtol, "atol": atol, "dtype": str(dtype), "device": str(device),
              "nonfinite_start": nonfinite_start},
    )
