"""Batched adaptive embedded Runge–Kutta integration of ``dy/dt = f(t, y)`` with per-instance control.

Every instance has its own time, step size, error control, events and status; instances that finish drop
out of the work (batch compaction).  All arithmetic is row-wise, so an instance's result is bit-identical
whether it is integrated alone or inside any batch (tested): Hypothesis shrinking re-runs instances alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

import torch
from torch import Tensor

from implreg.errors import InvalidInputError
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
    error: Tensor  # (B,) estimated absolute error of y (max over components), see integrate()
    n_steps: Tensor  # (B,) accepted steps
    n_rejected: Tensor  # (B,) rejected steps
    save_t: Tensor  # (T,) requested save times
    save_y: Tensor  # (B, T, P) states at save times (NaN where the instance stopped before)
    save_error: Tensor  # (B, T) error estimate at each save time
    level_t: Tensor  # (B, L) first time each level function crossed ≤ 0 (NaN if never)
    level_y: Tensor  # (B, L, P) state at that time (NaN if never)
    level_error: Tensor  # (B, L)
    unresolved_t: Tensor  # (B,) time the guard tripped (NaN if it never did)
    meta: dict = field(default_factory=dict)

    def statuses(self) -> list[Status]:
        return [Status(int(s)) for s in self.status.tolist()]

    def messages(self) -> list[str]:
        """One sentence per instance: what happened and when."""
        out = []
        for i, s in enumerate(self.statuses()):
            extra = f" at t = {float(self.t[i]):.6g}"
            if s == Status.UNRESOLVED:
                extra = f" at t = {float(self.unresolved_t[i]):.6g}"
            out.append(f"instance {i}: {s.message}{extra} after {int(self.n_steps[i])} steps")
        return out


def _coeffs(tab: ButcherTableau, dtype: torch.dtype, device: torch.device) -> dict[str, object]:
    def vec(xs: Sequence) -> Tensor:
        return torch.tensor([float(x) for x in xs], dtype=dtype, device=device)

    return {
        "a": [[float(x) for x in row] for row in tab.a],
        "c": [float(x) for x in tab.c],
        "b": vec(tab.b),
        "e": vec(tab.e),
        "dense": torch.tensor([[float(x) for x in row] for row in tab.dense], dtype=dtype, device=device),
    }


def _pow(x: Tensor, p: float) -> Tensor:
    """x^p for x > 0 as exp(p·log x): torch.pow with a scalar exponent takes a vectorized path for the bulk
    of a tensor and scalar libm for the tail, which differ in the last bit, so results would depend on an
    instance's position in the batch; exp and log are evaluated identically at every position."""
    return torch.exp(p * torch.log(x))


def _rms(x: Tensor) -> Tensor:
    return torch.sqrt((x * x).mean(-1))


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

    Step control: Hairer–Nørsett–Wanner II.4, RMS norm of ``err_i / (atol + rtol·max(|y_i|, |y_new,i|))``,
    ``h ← h·clip(0.9·err^{−1/5}, 0.2, 10)``.  ``event(y)`` (B,) stops an instance at its first crossing to
    ≤ 0, located by ``bisection_iters`` bisections of the dense output (so the located time is exact to
    2^-60 of a step, and the state carries the dense output's O(h⁵) error).  ``levels(y)`` (B, L) records
    the first crossing of each column without stopping.  ``guard(y, err)`` (B,) bool stops an instance
    as UNRESOLVED where float64 cannot resolve a quantity the caller cares about.  ``params`` are
    batch-first per-instance constants (e.g. the problem's data) passed as extra arguments to f, event,
    levels and guard, and compacted together with the state, so those functions stay pure and row-wise.

    The error estimate is ``Σ_steps (max_i |h Σ_j e_j k_j,i| + u·max_i |y_i|)`` (u = unit roundoff): the
    sum of local error estimates and rounding, without amplification by the flow.  It is validated against
    the mpmath reference in the tests; callers that need more should compare two tolerances.
    """
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
    co = _coeffs(tableau, dtype, device)
    A, C, bw, ew, D = co["a"], co["c"], co["b"], co["e"], co["dense"]
    S = tableau.stages
    nan = float("nan")

    # ---- outputs (full batch; active instances write through their original indices) -------------
    out_t = torch.zeros(B, **z)
    out_y = y0.clone()
    out_status = torch.zeros(B, dtype=torch.int64, device=device)
    out_err = torch.zeros(B, **z)
    out_steps = torch.zeros(B, dtype=torch.int64, device=device)
    out_rej = torch.zeros(B, dtype=torch.int64, device=device)
    save_y = torch.full((B, T, P), nan, **z)
    save_err = torch.full((B, T), nan, **z)
    level_t = torch.full((B, L), nan, **z)
    level_y = torch.full((B, L, P), nan, **z)
    level_err = torch.full((B, L), nan, **z)
    unresolved_t = torch.full((B,), nan, **z)

    # ---- active state -----------------------------------------------------------------------------
    idx = torch.arange(B, device=device)
    y = y0.clone()
    t = torch.zeros(B, **z)
    tm = tmax
    err_acc = torch.zeros(B, **z)
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
        d0, d1 = _rms(y / sc), _rms(k1 / sc)
        ha = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
        ha = torch.minimum(ha, tm.clamp(min=1e-300))
        f1 = f(t + ha, y + ha.unsqueeze(-1) * k1, *prm)
        d2 = _rms((f1 - k1) / sc) / ha
        dm = torch.maximum(d1, d2)
        hb = torch.where(dm <= 1e-15, torch.maximum(torch.full_like(ha, 1e-6), ha * 1e-3),
                         _pow(0.01 / dm.clamp(min=1e-300), 1.0 / tableau.order))
        h = torch.minimum(100 * ha, hb)
    else:
        h = torch.full((B,), float(h0), **z)

    # instances already done at t = 0 (event already ≤ 0, or t_max = 0)
    done0 = tm <= 0
    if event is not None:
        done0 = done0 | (g_old <= 0)
    fired0 = (g_old <= 0) if g_old is not None else torch.zeros_like(done0)
    status0 = torch.where(fired0, int(Status.REACHED_EVENT), int(Status.REACHED_T_MAX))
    out_status[done0] = status0[done0]

    def dense(yb: Tensor, hb_: Tensor, K: Tensor, theta: Tensor) -> Tensor:
        """Continuous extension y(t + θh) = y + h Σ_i k_i b_i(θ); K (S, n, P), θ (n,)."""
        powers = [theta]
        for _ in range(D.shape[1] - 1):
            powers.append(powers[-1] * theta)
        powers = torch.stack(powers, dim=-1)  # (n, M): θ, θ², … by products (row-wise exact)
        w = powers @ D.T  # (n, S)
        return yb + hb_.unsqueeze(-1) * torch.einsum("ns,snp->np", w, K)

    def locate(fn: Callable[..., Tensor], yb: Tensor, hb_: Tensor, K: Tensor, pr: tuple) -> Tensor:
        """θ ∈ (0, 1] with fn(dense(θ)) ≤ 0 at the first crossing, by fixed-count bisection (row-wise)."""
        lo = torch.zeros_like(hb_)
        hi = torch.ones_like(hb_)
        for _ in range(bisection_iters):
            mid = 0.5 * (lo + hi)
            below = fn(dense(yb, hb_, K, mid), *pr) <= 0
            hi = torch.where(below, mid, hi)
            lo = torch.where(below, lo, mid)
        return hi

    keep = ~done0
    if not keep.all():
        idx, y, t, tm, h, err_acc, steps, rej, k1 = (
            v[keep] for v in (idx, y, t, tm, h, err_acc, steps, rej, k1)
        )
        prm = tuple(q[keep] for q in prm)
        g_old = g_old[keep] if g_old is not None else None
    attempts = torch.zeros_like(steps)

    while idx.numel():
        # ---- one RK step for every active instance ----------------------------------------------
        last = h >= tm - t
        hs = torch.where(last, tm - t, h)
        K = [k1]
        for i in range(1, S):
            yi = y
            for j, aij in enumerate(A[i]):
                if aij != 0.0:
                    yi = yi + (hs * aij).unsqueeze(-1) * K[j]
            K.append(f(t + C[i] * hs, yi, *prm))
        Ks = torch.stack(K)  # (S, n, P)
        incr = torch.einsum("s,snp->np", bw, Ks)
        y_new = y + hs.unsqueeze(-1) * incr
        e_loc = hs.unsqueeze(-1) * torch.einsum("s,snp->np", ew, Ks)
        scale = atol + rtol * torch.maximum(y.abs(), y_new.abs())
        err = _rms(e_loc / scale)
        finite = torch.isfinite(err) & torch.isfinite(y_new).all(-1)
        accept = finite & (err <= 1.0)
        attempts = attempts + 1

        # ---- step-size update (per instance) ------------------------------------------------------
        fac = torch.where(
            finite,
            (0.9 * _pow(err.clamp(min=1e-10), -1.0 / tableau.order)).clamp(0.2, 10.0),
            torch.full_like(err, 0.25),
        )
        fac = torch.where(accept, fac, fac.clamp(max=1.0))
        h_next = hs * fac
        t_new = torch.where(last, tm, t + hs)

        status = torch.zeros_like(steps)
        too_small = (~accept) & (h_next <= 16 * u * t.abs().clamp(min=1.0))
        status = torch.where(too_small, int(Status.STEP_TOO_SMALL), status)

        # ---- accepted steps: bookkeeping, saves, levels, event, guard -------------------------------
        acc_err = err_acc + e_loc.abs().amax(-1) + u * y_new.abs().amax(-1)
        if accept.any():
            ai = accept.nonzero().flatten()
            if T:
                t0a, t1a = t[ai], t_new[ai]
                inside = (saves.unsqueeze(0) > t0a.unsqueeze(1)) & (saves.unsqueeze(0) <= t1a.unsqueeze(1))
                if inside.any():
                    r, c = inside.nonzero(as_tuple=True)
                    rows = ai[r]
                    theta = (saves[c] - t[rows]) / hs[rows]
                    ys = dense(y[rows], hs[rows], Ks[:, rows], theta)
                    ys = torch.where((theta >= 1.0).unsqueeze(-1), y_new[rows], ys)
                    save_y[idx[rows], c] = ys
                    save_err[idx[rows], c] = acc_err[rows]
            if levels is not None:
                g_lv = levels(y_new[ai], *(q[ai] for q in prm))  # (na, L)
                fresh = (g_lv <= 0) & ~lev_done[idx[ai]]
                if fresh.any():
                    r, c = fresh.nonzero(as_tuple=True)
                    rows = ai[r]
                    col = c

                    def g_col(yy: Tensor, *pr: Tensor, col: Tensor = col) -> Tensor:
                        return levels(yy, *pr).gather(-1, col.unsqueeze(-1)).squeeze(-1)

                    pr = tuple(q[rows] for q in prm)
                    theta = locate(g_col, y[rows], hs[rows], Ks[:, rows], pr)
                    yl = dense(y[rows], hs[rows], Ks[:, rows], theta)
                    level_t[idx[rows], col] = t[rows] + theta * hs[rows]
                    level_y[idx[rows], col] = yl
                    level_err[idx[rows], col] = acc_err[rows]
                    lev_done[idx[rows], col] = True
            if event is not None:
                g_new = event(y_new[ai], *(q[ai] for q in prm))
                fired = g_new <= 0
                if fired.any():
                    rows = ai[fired]
                    theta = locate(event, y[rows], hs[rows], Ks[:, rows], tuple(q[rows] for q in prm))
                    ye = dense(y[rows], hs[rows], Ks[:, rows], theta)
                    y_new[rows] = ye
                    t_new[rows] = t[rows] + theta * hs[rows]
                    status[rows] = int(Status.REACHED_EVENT)
            big = ~(y_new[ai].abs().amax(-1) < divergence_limit)
            status[ai[big]] = int(Status.DIVERGED)
            ended_t = accept & last & (status == 0)
            status = torch.where(ended_t, int(Status.REACHED_T_MAX), status)
            if guard is not None:
                bad = guard(y_new[ai], acc_err[ai], *(q[ai] for q in prm)) & (status[ai] == 0)
                if bad.any():
                    rows = ai[bad]
                    status[rows] = int(Status.UNRESOLVED)
                    unresolved_t[idx[rows]] = t_new[rows]

        # ---- commit -------------------------------------------------------------------------------
        y = torch.where(accept.unsqueeze(-1), y_new, y)
        t = torch.where(accept, t_new, t)
        err_acc = torch.where(accept, acc_err, err_acc)
        k1 = torch.where(accept.unsqueeze(-1), K[-1] if tableau.fsal else f(t, y, *prm), k1)
        steps = steps + accept.to(steps.dtype)
        rej = rej + (~accept).to(rej.dtype)
        h = h_next
        status = torch.where((status == 0) & (attempts >= max_steps), int(Status.MAX_STEPS), status)

        fin = status != 0
        if fin.any():
            fi = fin.nonzero().flatten()
            gi = idx[fi]
            out_t[gi], out_y[gi], out_status[gi] = t[fi], y[fi], status[fi]
            out_err[gi], out_steps[gi], out_rej[gi] = err_acc[fi], steps[fi], rej[fi]
            keep = ~fin
            idx, y, t, tm, h, err_acc, steps, rej, k1, attempts = (
                v[keep] for v in (idx, y, t, tm, h, err_acc, steps, rej, k1, attempts)
            )
            prm = tuple(q[keep] for q in prm)

    return IntegrationResult(
        t=out_t, y=out_y, status=out_status, error=out_err, n_steps=out_steps, n_rejected=out_rej,
        save_t=saves, save_y=save_y, save_error=save_err, level_t=level_t, level_y=level_y,
        level_error=level_err, unresolved_t=unresolved_t,
        meta={"tableau": tableau.name, "rtol": rtol, "atol": atol, "dtype": str(dtype), "device": str(device)},
    )
