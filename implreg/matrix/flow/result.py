"""What an integration returns: per-instance :class:`Status` codes that read as sentences, and the batch-first
:class:`IntegrationResult` (final states, located levels and saves, per-component error estimates)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import torch
from torch import Tensor

__all__ = ["IntegrationResult", "Status", "amax", "unfinished_read_message"]


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

    @property
    def failed(self) -> bool:
        """True for integrator failures (too many steps, diverged, step underflow); the det guard's UNRESOLVED
        stop is not one (the high-precision reference is its continuation)."""
        return self in (Status.MAX_STEPS, Status.DIVERGED, Status.STEP_TOO_SMALL)


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
        return [self.message(i) for i in range(self.status.shape[0])]

    def message(self, i: int) -> str:
        """What happened to instance ``i`` and when, as a sentence."""
        s = Status(int(self.status[i]))
        extra = f" at t = {float(self.t[i]):.6g}"
        if s == Status.UNRESOLVED:
            extra = f" at t = {float(self.unresolved_t[i]):.6g}"
        start_bad = self.meta.get("nonfinite_start")
        if s == Status.DIVERGED and start_bad is not None and bool(start_bad[i]):
            return (f"instance {i}: diverged before the first step: the vector field is not finite at the "
                    f"initial state (largest |y0| entry {float(self.y[i].abs().max()):.3g}; too large for "
                    f"{self.meta.get('dtype', 'the dtype')}?)")
        return f"instance {i}: {s.message}{extra} after {int(self.n_steps[i])} steps"


def amax(e: Tensor) -> Tensor:
    """max over the last (component) dimension; 0 for a state with no components."""
    return e.amax(-1) if e.shape[-1] else torch.zeros(e.shape[:-1], dtype=e.dtype, device=e.device)


def unfinished_read_message(solver: str, n_bad: int, n: int, first: str, what: str) -> str:
    """Why reading a solve's final ``what`` without checking ``ok`` is an error (``UncheckedSolve``'s text)."""
    return (f"{solver} did not finish {n_bad} of {n} instance(s) ({first}), and the claim used its final `{what}` "
            "without reading `ok`: for those instances it is where the integrator stopped, not the flow at t_max "
            "or the loss target.  Use only the instances where `run.ok` is true (index with it, or "
            "`require(run.ok.all(), ...)`), call `run.raise_on_failure()`, or give the solve room (max_steps, "
            "t_max)")
