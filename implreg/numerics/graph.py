"""Re-evaluation of a ``Certified`` expression graph in another number system, for selected batch rows.

``Evaluator(backend).ev(c, rows)`` returns a numpy object array with the entries of c for the batch rows
``rows`` (dim-0 indices; shape (len(rows), *c.shape[1:])), or all of c when ``rows`` is None.  Values that
broadcast along the batch (a lower-dimensional or size-1 leading operand) are evaluated whole.  Ops that mix
rows (a reduction over dim 0, stacking along dim 0, …) evaluate their input whole and select afterwards.
The backend (``balls.ArbBackend``, ``exact.ExactBackend``) supplies leaves and the non-arithmetic functions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from implreg.numerics.certified import Certified

Rows = np.ndarray | None


def _key(rows: Rows) -> Any:
    return None if rows is None else tuple(int(r) for r in rows)


def child_rows(child: Certified, out_shape: tuple[int, ...], rows: Rows) -> Rows:
    """Rows of a broadcasting operand: the same rows when it carries the batch dimension, else all of it."""
    if rows is None or child.ndim != len(out_shape) or child.ndim == 0:
        return None
    return rows if child.shape[0] == out_shape[0] and out_shape[0] != 1 else None


def _select(arr: np.ndarray, rows: Rows) -> np.ndarray:
    return arr if rows is None else arr[np.asarray(rows, dtype=np.int64)]


def positions(c: Certified) -> np.ndarray:
    """For a gather node: the flat index into its input of every output entry (same shape as the output)."""
    src = c._args[0]
    pos = torch.arange(max(src.value.numel(), 1), device=src.device).reshape(src.shape) if src.value.numel() \
        else torch.zeros(src.shape, dtype=torch.int64, device=src.device)
    return c._p["fn"](pos).to("cpu").numpy().astype(np.int64)


class Evaluator:
    """Evaluate a graph with a backend; results are memoised per (node, rows) for one evaluation."""

    def __init__(self, backend: Any):
        self.b = backend
        self.memo: dict[tuple[int, Any], np.ndarray] = {}

    def ev(self, c: Certified, rows: Rows = None) -> np.ndarray:
        if rows is not None and c.ndim == 0:
            rows = None
        key = (id(c), _key(rows))
        out = self.memo.get(key)
        if out is None:
            out = self._ev(c, rows)
            self.memo[key] = out
        return out

    def _full_then_select(self, c: Certified, rows: Rows) -> np.ndarray:
        return _select(self.ev(c, None), rows)

    def _ev(self, c: Certified, rows: Rows) -> np.ndarray:
        op, args, p, b = c._op, c._args, c._p, self.b
        shape = tuple(c.shape)
        if op == "exact":
            return b.exact_leaf(_select(c.value.detach().to("cpu").numpy(), rows))
        if op == "measured":
            return b.measured_leaf(c, rows)
        if op == "to":
            return self.ev(args[0], rows)
        if op in ("neg", "abs", "sqrt", "exp", "log", "powr", "xlogx"):
            x = self.ev(args[0], rows)
            return b.unary(op, x, p)
        if op in ("add", "sub", "mul", "div", "square", "min2", "max2"):
            x = self.ev(args[0], child_rows(args[0], shape, rows))
            y = self.ev(args[1], child_rows(args[1], shape, rows))
            return b.binary(op, x, y)
        if op == "where":
            cond = torch.broadcast_to(p["cond"], shape).to("cpu").numpy()
            x = self.ev(args[0], child_rows(args[0], shape, rows))
            y = self.ev(args[1], child_rows(args[1], shape, rows))
            out_shape = (len(rows), *shape[1:]) if rows is not None else shape
            x, y = np.broadcast_to(x, out_shape), np.broadcast_to(y, out_shape)
            return np.where(_select(cond, rows), x, y)
        if op in ("sum", "amax", "amin"):
            dims, keep = p["dims"], p["keepdim"]
            if rows is not None and 0 in dims:
                return self._full_then_select(c, rows)
            x = self.ev(args[0], rows)
            return b.reduce(op, x, dims, keep)
        if op == "matmul":
            A, B = args
            if rows is not None:
                if len(shape) >= 3:
                    ra = rows if A.ndim == len(shape) and A.shape[0] == shape[0] and shape[0] != 1 else None
                    rb = rows if B.ndim == len(shape) and B.shape[0] == shape[0] and shape[0] != 1 else None
                    if ra is None and rb is None:
                        return self._full_then_select(c, rows)
                    return b.matmul(self.ev(A, ra), self.ev(B, rb))
                if len(shape) == 2 and A.ndim == 2:
                    return b.matmul(self.ev(A, rows), self.ev(B, None))
                return self._full_then_select(c, rows)
            return b.matmul(self.ev(A, None), self.ev(B, None))
        if op == "gather":
            return self._gather(c, rows)
        if op in ("stack", "cat"):
            dim = p["dim"]
            if rows is not None and not (dim > 0 and all(a.ndim >= 1 and a.shape[0] == shape[0] for a in args)):
                return self._full_then_select(c, rows)
            parts = [self.ev(a, rows) for a in args]
            return np.stack(parts, axis=dim) if op == "stack" else np.concatenate(parts, axis=dim)
        if op == "svdvals":
            W = args[0]
            if rows is not None and W.ndim < 3:
                return self._full_then_select(c, rows)
            return b.svdvals(self.ev(W, rows))
        raise NotImplementedError(f"cannot re-evaluate op {op!r}")

    def _gather(self, c: Certified, rows: Rows) -> np.ndarray:
        src = c._args[0]
        pos = positions(c)
        pos = _select(pos, rows)
        if src.ndim == 0:
            x = self.ev(src, None).reshape(1)
            return x[np.zeros(pos.shape, dtype=np.int64)] if pos.size else np.empty(pos.shape, dtype=object)
        rowsize = max(int(np.prod(src.shape[1:])), 1)
        need = np.unique(pos // rowsize) if pos.size else np.zeros(0, dtype=np.int64)
        if rows is None and len(need) == src.shape[0]:
            x = self.ev(src, None).reshape(-1)
            return x[pos] if pos.size else np.empty(pos.shape, dtype=object)
        x = self.ev(src, need).reshape(-1)
        local = np.searchsorted(need, pos // rowsize) * rowsize + pos % rowsize
        return x[local] if pos.size else np.empty(pos.shape, dtype=object)
