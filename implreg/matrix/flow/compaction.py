"""Batch compaction: the per-instance state of the instances still integrating, indexed into the full batch.

Finished instances are frozen by a mask (their rows still ride along in the batched kernels) and dropped once
they are an eighth of the batch (:data:`COMPACT_FRACTION`): compacting every step would cost a gather per step,
never compacting would keep paying for finished rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import Tensor

__all__ = ["COMPACT_FRACTION", "ActiveBatch"]

COMPACT_FRACTION = 8  # compact once frozen rows are ≥ 1/COMPACT_FRACTION of the active batch


@dataclass
class ActiveBatch:
    """Rows of the instances still integrating; ``idx`` maps each row to its instance in the full batch."""

    idx: Tensor        # (n,) int64
    y: Tensor          # (n, P) state
    t: Tensor          # (n,) time
    tm: Tensor         # (n,) final time
    h: Tensor          # (n,) next step size
    err_acc: Tensor    # (n, P) accumulated error estimate
    steps: Tensor      # (n,) accepted steps
    rej: Tensor        # (n,) rejected steps
    k1: Tensor         # (n, P) f at (t, y) (FSAL)
    attempts: Tensor   # (n,) attempts (accepted + rejected)
    lev_done: Tensor   # (n, L) bool: level already crossed
    prm: tuple[Tensor, ...]  # per-instance parameters of f, event, levels and guard

    @property
    def n(self) -> int:
        return int(self.idx.numel())

    def select(self, keep: Tensor, prep: Callable[[Tensor], Tensor] | None = None) -> ActiveBatch:
        """The rows where ``keep`` is True, re-laid-out by ``prep`` (a fused kernel's preferred layout)."""
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        kw = {k: (tuple(q[keep] for q in v) if k == "prm" else v[keep]) for k, v in kw.items()}
        out = ActiveBatch(**kw)
        return out.laid_out(prep) if prep is not None else out

    def laid_out(self, prep: Callable[[Tensor], Tensor]) -> ActiveBatch:
        self.y, self.k1, self.err_acc = prep(self.y), prep(self.k1), prep(self.err_acc)
        self.prm = tuple(prep(q) for q in self.prm)
        return self

    def should_compact(self, n_frozen: int) -> bool:
        return n_frozen > 0 and COMPACT_FRACTION * n_frozen >= self.n


def all_rows(n: int, device: torch.device) -> Tensor:
    return torch.ones(n, dtype=torch.bool, device=device)
