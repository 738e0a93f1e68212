"""Where the integrator writes its results, and the dense-output work that locates events, level crossings and
save times inside accepted steps.

:class:`Outputs` holds the full-batch result tensors; active rows write through their instance index.
:class:`DenseWork` queues, per accepted step, the rows whose event fired, whose level function crossed ≤ 0 or
that passed a save time, and does their dense-output work in batches of about :data:`FLUSH_ROWS` rows: every
operation is row-wise, so batching it changes no bit, and a quiet step costs nothing here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from implreg.matrix.flow.kernels import RKCoefficients, dense_coefficients, dense_eval
from implreg.matrix.flow.result import IntegrationResult, Status, amax

__all__ = ["FLUSH_ROWS", "DenseWork", "Outputs", "bisect_crossing"]

FLUSH_ROWS = 4096  # pending dense-output work is done in batches of about this many rows


@dataclass
class Outputs:
    """The full-batch results (B instances, P components, T save times, L levels), NaN where not reached."""

    t: Tensor
    y: Tensor
    status: Tensor
    err: Tensor
    steps: Tensor
    rej: Tensor
    save_y: Tensor
    save_err: Tensor
    level_t: Tensor
    level_y: Tensor
    level_err: Tensor
    unresolved_t: Tensor
    event_t: Tensor  # located event time (saves and levels after it are dropped)

    @staticmethod
    def empty(y0: Tensor, T: int, L: int) -> Outputs:
        B, P = y0.shape
        z = {"dtype": y0.dtype, "device": y0.device}
        i64 = {"dtype": torch.int64, "device": y0.device}
        nan = float("nan")
        return Outputs(
            t=torch.zeros(B, **z), y=y0.clone(), status=torch.zeros(B, **i64), err=torch.zeros(B, P, **z),
            steps=torch.zeros(B, **i64), rej=torch.zeros(B, **i64), save_y=torch.full((B, T, P), nan, **z),
            save_err=torch.full((B, T, P), nan, **z), level_t=torch.full((B, L), nan, **z),
            level_y=torch.full((B, L, P), nan, **z), level_err=torch.full((B, L, P), nan, **z),
            unresolved_t=torch.full((B,), nan, **z), event_t=torch.full((B,), math.inf, **z))

    def start(self, y0: Tensor, saves: Tensor, level_hit: Tensor | None) -> None:
        """Record what holds at t = 0: saves at time 0 and levels already crossed."""
        if saves.numel():
            at0 = saves == 0
            self.save_y[:, at0] = y0.unsqueeze(1)
            self.save_err[:, at0] = 0.0
        if level_hit is not None:
            B, L = level_hit.shape
            self.level_t[level_hit] = 0.0
            self.level_y[level_hit] = y0.unsqueeze(1).expand(B, L, y0.shape[1])[level_hit]
            self.level_err[level_hit] = 0.0

    def finish(self, gi: Tensor, t: Tensor, y: Tensor, status: Tensor, err: Tensor, steps: Tensor, rej: Tensor
               ) -> None:
        """Instances ``gi`` stopped (at a located event the state is overwritten when the work is flushed)."""
        self.t[gi], self.y[gi], self.status[gi] = t, y, status
        self.err[gi], self.steps[gi], self.rej[gi] = err, steps, rej
        un = status == int(Status.UNRESOLVED)
        self.unresolved_t[gi[un]] = t[un]

    def result(self, saves: Tensor, meta: dict) -> IntegrationResult:
        return IntegrationResult(
            t=self.t, y=self.y, status=self.status, error=amax(self.err), n_steps=self.steps, n_rejected=self.rej,
            save_t=saves, save_y=self.save_y, save_error=amax(self.save_err), level_t=self.level_t,
            level_y=self.level_y, level_error=amax(self.level_err), unresolved_t=self.unresolved_t,
            entry_error=self.err, save_entry_error=self.save_err, level_entry_error=self.level_err, meta=meta)


def bisect_crossing(fn: Callable[..., Tensor], yb: Tensor, C: list[Tensor], params: tuple, iters: int) -> Tensor:
    """θ ∈ (0, 1] with fn(dense(θ)) ≤ 0 at the first crossing, by ``iters`` fixed-count bisections (row-wise):
    the located time is exact to 2^-iters of the step; the state carries the dense output's O(h⁵) error."""
    lo = torch.zeros(yb.shape[0], dtype=yb.dtype, device=yb.device)
    hi = torch.ones(yb.shape[0], dtype=yb.dtype, device=yb.device)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        below = fn(dense_eval(yb, C, mid), *params) <= 0
        hi = torch.where(below, mid, hi)
        lo = torch.where(below, lo, mid)
    return hi


@dataclass
class DenseWork:
    """Deferred dense-output work: events (then their status, divergence and guard at the located state), level
    crossings and saves, written into ``out``.  ``stages`` recomputes a step's stages when the step kernel kept
    only the last one (same inputs, same bits)."""

    out: Outputs
    co: RKCoefficients
    saves: Tensor
    event: Callable[..., Tensor] | None
    levels: Callable[..., Tensor] | None
    guard: Callable[..., Tensor] | None
    stages: Callable[..., tuple]
    divergence_limit: float
    bisection_iters: int
    n_params: int

    def __post_init__(self) -> None:
        self.pending: list[dict] = []
        self.rows = 0

    def add(self, rec: dict) -> None:
        self.pending.append(rec)
        self.rows += int(rec["g"].numel())

    def flush_if_full(self) -> None:
        """Called after the step's finished instances are written: a located event state then overwrites the
        step-end state that :meth:`Outputs.finish` wrote for it."""
        if self.rows >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        first = self.pending[0]
        cat = {k: (torch.cat([p[k] for p in self.pending]) if k != "prm" else
                   tuple(torch.cat([p["prm"][i] for p in self.pending]) for i in range(self.n_params)))
               for k in first if first[k] is not None}
        self.pending.clear()
        self.rows = 0
        K = cat["K"] if "K" in cat else self.stages(cat)
        if "fired" in cat and bool(cat["fired"].any()):
            self._events(cat, K)
        if "lev" in cat and bool(cat["lev"].any()):
            self._levels(cat, K)
        if "save" in cat and bool(cat["save"].any()):
            self._saves(cat, K)

    def _events(self, cat: dict, K: Tensor) -> None:
        out, m = self.out, cat["fired"].nonzero().flatten()
        C = dense_coefficients(self.co, cat["h"][m], K[m])
        prm_m = tuple(q[m] for q in cat["prm"])
        theta = bisect_crossing(self.event, cat["y0"][m], C, prm_m, self.bisection_iters)
        ye = dense_eval(cat["y0"][m], C, theta)
        te = cat["t0"][m] + theta * cat["h"][m]
        gm = cat["g"][m]
        st = torch.full_like(gm, int(Status.REACHED_EVENT))
        big = ~(ye.abs().amax(-1) < self.divergence_limit)
        st = torch.where(big, int(Status.DIVERGED), st)
        if self.guard is not None:
            bad = self.guard(ye, amax(cat["err"][m]), *prm_m) & ~big
            st = torch.where(bad, int(Status.UNRESOLVED), st)
            out.unresolved_t[gm[bad]] = te[bad]
        out.y[gm], out.t[gm], out.status[gm] = ye, te, st
        out.event_t[gm] = te

    def _levels(self, cat: dict, K: Tensor) -> None:
        out = self.out
        r, col = cat["lev"].nonzero(as_tuple=True)
        levels = self.levels

        def g_col(yy: Tensor, *p: Tensor) -> Tensor:
            return levels(yy, *p).gather(-1, col.unsqueeze(-1)).squeeze(-1)

        hb, tb, g = cat["h"], cat["t0"], cat["g"]
        C = dense_coefficients(self.co, hb[r], K[r])
        theta = bisect_crossing(g_col, cat["y0"][r], C, tuple(q[r] for q in cat["prm"]), self.bisection_iters)
        tl = tb[r] + theta * hb[r]
        keep = tl <= out.event_t[g[r]]
        yl = dense_eval(cat["y0"][r], C, theta)
        gr, cr = g[r][keep], col[keep]
        out.level_t[gr, cr] = tl[keep]
        out.level_y[gr, cr] = yl[keep]
        out.level_err[gr, cr] = cat["err"][r][keep]

    def _saves(self, cat: dict, K: Tensor) -> None:
        out, saves = self.out, self.saves
        r, col = cat["save"].nonzero(as_tuple=True)
        hb, tb, g = cat["h"], cat["t0"], cat["g"]
        theta = (saves[col] - tb[r]) / hb[r]
        ys = dense_eval(cat["y0"][r], dense_coefficients(self.co, hb[r], K[r]), theta)
        ys = torch.where((theta >= 1.0).unsqueeze(-1), cat["y1"][r], ys)
        keep = saves[col] <= out.event_t[g[r]]
        gr, cr = g[r][keep], col[keep]
        out.save_y[gr, cr] = ys[keep]
        out.save_err[gr, cr] = cat["err"][r][keep]
