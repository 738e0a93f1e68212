"""Certified values: a batched float64 value, a per-entry bound on its error, and the expression graph.

``Certified`` is the bottom type of implreg.  Its ``value`` is a float64 tensor (batch dimension first), its
``error`` a tensor of the same shape with |exact − value| ≤ error per entry (+∞ allowed), ``rigorous`` says
whether that bound is proven (rounding analysis, exact or ball arithmetic) or an estimate (an integrator's).

Every operation (``ops.py``, ``linalg.py``) computes its value in float64 and a *rigorous* bound that covers
both the propagated input errors and the rounding of computing the value and of computing the bound itself
(``rounding.py``).  The result remembers how it was computed (op, arguments), so that a comparison that the
float bounds cannot decide is re-evaluated exactly or in Arb ball arithmetic (``balls.py``, ``exact.py``).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from implreg.errors import InvalidInputError
from implreg.numerics import rounding as R

__all__ = ["Certified", "Refinement", "lift"]


@dataclass(frozen=True)
class Refinement:
    """What a measured leaf's ``refine(rows, prec_bits)`` returns: Arb balls enclosing the exact value.

    ``mid``: numpy object array of ``flint.arb`` with shape (len(rows), *value.shape[1:]) (shape (1,) for a
    0-dim leaf, asked with rows = [0]); each ball encloses the exact value (for an estimate: mid ± the
    reference's error estimate, and ``rigorous`` False).  ``note`` is recorded for the report.
    """

    mid: np.ndarray
    rigorous: bool
    note: str = ""


Refine = Callable[[list, int], "Refinement | None"]


def _as_f64(x: Any, what: str) -> Tensor:
    """x as a float64 tensor, converting only exactly (float32 → float64 and small ints are exact)."""
    if isinstance(x, Tensor):
        if x.is_complex():
            raise InvalidInputError(f"{what}: complex tensors are not supported")
        if x.dtype == torch.bool:
            raise InvalidInputError(f"{what}: boolean tensor; compare numbers, or use certify.that for conditions")
        if not x.is_floating_point():
            if x.numel() and bool((x.abs() > 2**53).any()):
                raise InvalidInputError(f"{what}: integers beyond 2^53 are not exact in float64")
            return x.to(torch.float64)
        if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise InvalidInputError(f"{what}: unsupported dtype {x.dtype}")
        return x.detach().to(torch.float64)
    if isinstance(x, bool) or isinstance(x, np.bool_):
        raise InvalidInputError(f"{what}: a bool is not a number; use certify.that for conditions")
    if isinstance(x, numbers.Integral):
        if abs(int(x)) > 2**53:
            raise InvalidInputError(f"{what}: the integer {x} is not exact in float64; pass it as a float")
        return torch.tensor(float(x), dtype=torch.float64)
    if isinstance(x, numbers.Real):
        return torch.tensor(float(x), dtype=torch.float64)
    if isinstance(x, np.ndarray):
        if x.dtype == np.bool_ or x.dtype == object or np.iscomplexobj(x):
            raise InvalidInputError(f"{what}: expected a real numeric array, got dtype {x.dtype}")
        return _as_f64(torch.from_numpy(np.ascontiguousarray(x)), what)
    if isinstance(x, (list, tuple)):
        return _as_f64(np.asarray(x), what)
    raise InvalidInputError(f"{what}: expected a number, tensor or Certified, got {type(x).__name__}")


class Certified:
    """A batched certified value (see the module docstring).  Build with ``Certified.exact``, ``.measured`` or
    ``lift``; combine with arithmetic, ``implreg.numerics`` functions and comparisons (→ ``Comparison``)."""

    __slots__ = ("__weakref__", "_args", "_op", "_p", "error", "rigorous", "value")
    __array_priority__ = 1000   # numpy scalars/arrays on the left defer to our reflected operators
    __torch_function__ = torch._C._disabled_torch_function_impl  # plain Python object for torch dispatch

    def __init__(self, value: Tensor, error: Tensor, rigorous: bool, op: str, args: tuple = (),
                 params: dict | None = None):
        self.value = value
        self.error = error
        self.rigorous = bool(rigorous)
        self._op = op
        self._args = args
        self._p = params or {}

    # ------------------------------------------------------------------ construction
    @staticmethod
    def exact(x: Any, *, device: torch.device | str | None = None) -> Certified:
        """An exact value: error 0, rigorous; its float64 value IS the exact (dyadic rational) input."""
        if isinstance(x, Certified):
            return x
        v = _as_f64(x, "Certified.exact")
        if device is not None:
            v = v.to(device)
        if not bool(torch.isfinite(v).all()):
            raise InvalidInputError("Certified.exact: the value has NaN/Inf entries; an exact value is finite")
        return Certified(v, torch.zeros_like(v), True, "exact")

    @staticmethod
    def measured(value: Any, error: Any, *, rigorous: bool, refine: Refine | None = None,
                 label: str = "", absent: tuple[Any, Callable[[int], str]] | None = None) -> Certified:
        """A leaf whose exact value is only known within ``error`` (per entry, broadcast to value's shape).

        ``refine(rows, prec_bits)`` (optional) returns a ``Refinement`` with tighter enclosures of the SAME
        quantity for the given batch rows (dim-0 indices), or None when it cannot refine further.
        ``absent`` (optional) = (mask, why): entries in the boolean mask (broadcast to value's shape) do not exist
        (a flow's state at a loss level it never reached; value 0 ± ∞ there), and ``why(row)`` says why; a
        comparison that depends on one is an error with that message, never a long escalation.
        """
        v = _as_f64(value, f"Certified.measured({label or 'value'})")
        e = _as_f64(error, f"Certified.measured({label or 'value'}) error").to(v.device)
        try:
            e = torch.broadcast_to(e, v.shape).clone()
        except RuntimeError:
            raise InvalidInputError(
                f"Certified.measured({label!r}): error of shape {tuple(e.shape)} does not broadcast to the "
                f"value's shape {tuple(v.shape)}") from None
        if bool(torch.isnan(e).any()) or bool((e < 0).any()):
            raise InvalidInputError(f"Certified.measured({label!r}): the error must be ≥ 0 and not NaN")
        p: dict[str, Any] = {"refine": refine, "label": label}
        if absent is not None:
            mask = torch.broadcast_to(torch.as_tensor(absent[0], dtype=torch.bool, device=v.device), v.shape)
            if bool(mask.any()):
                p["absent"] = (mask.to("cpu").numpy(), absent[1])
        return Certified(v, e, rigorous, "measured", (), p)

    # ------------------------------------------------------------------ reading
    @property
    def shape(self) -> torch.Size:
        return self.value.shape

    @property
    def ndim(self) -> int:
        return self.value.ndim

    @property
    def device(self) -> torch.device:
        return self.value.device

    @property
    def label(self) -> str:
        return self._p.get("label", "")

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-dim Certified")
        return self.value.shape[0]

    @property
    def lo(self) -> Tensor:
        """value − error rounded down: a lower bound on the exact value."""
        return R.dn(self.value - self.error)

    @property
    def hi(self) -> Tensor:
        """value + error rounded up: an upper bound on the exact value."""
        return R.up(self.value + self.error)

    def item(self) -> float:
        return float(self.value.item())

    def __float__(self) -> float:
        if self.value.numel() != 1:
            raise InvalidInputError(f"float() of a Certified of shape {tuple(self.shape)}; index one entry first")
        return float(self.value.item())

    def to(self, device: torch.device | str) -> Certified:
        """The same certified value on another device (values and errors are copied exactly)."""
        return Certified(self.value.to(device), self.error.to(device), self.rigorous, "to", (self,),
                         {"device": device})

    def __bool__(self) -> bool:
        raise InvalidInputError("a Certified value has no truth value; compare it and wrap the comparison in "
                                "certify(...)")

    def __repr__(self) -> str:
        kind = "rigorous" if self.rigorous else "estimate"
        name = f" {self.label!r}" if self.label else ""
        return f"Certified{name}(shape={tuple(self.shape)}, {kind}, value={self.value}, error={self.error})"

    def leaves(self) -> list[Certified]:
        """The leaves (exact and measured values) this value was computed from, each once."""
        seen: dict[int, Certified] = {}
        out: list[Certified] = []
        stack = [self]
        while stack:
            c = stack.pop()
            if id(c) in seen:
                continue
            seen[id(c)] = c
            if c._op in ("exact", "measured"):
                out.append(c)
            stack.extend(a for a in c._args if isinstance(a, Certified))
        return out

    # ------------------------------------------------------------------ operators (implemented in ops.py)
    def __add__(self, o): return _ops().add(self, o)
    def __radd__(self, o): return _ops().add(o, self)
    def __sub__(self, o): return _ops().sub(self, o)
    def __rsub__(self, o): return _ops().sub(o, self)
    def __mul__(self, o): return _ops().mul(self, o)
    def __rmul__(self, o): return _ops().mul(o, self)
    def __truediv__(self, o): return _ops().div(self, o)
    def __rtruediv__(self, o): return _ops().div(o, self)
    def __pow__(self, p): return _ops().power(self, p)
    def __neg__(self): return _ops().neg(self)
    def __pos__(self): return self
    def __abs__(self): return _ops().absolute(self)
    def abs(self) -> Certified: return _ops().absolute(self)
    def sqrt(self) -> Certified: return _ops().sqrt(self)
    def exp(self) -> Certified: return _ops().exp(self)
    def log(self) -> Certified: return _ops().log(self)
    def square(self) -> Certified: return _ops().mul(self, self)
    def sum(self, dim=None, keepdim: bool = False) -> Certified: return _ops().sum(self, dim, keepdim)
    def mean(self, dim=None, keepdim: bool = False) -> Certified: return _ops().mean(self, dim, keepdim)
    def amax(self, dim=None, keepdim: bool = False) -> Certified: return _ops().amax(self, dim, keepdim)
    def amin(self, dim=None, keepdim: bool = False) -> Certified: return _ops().amin(self, dim, keepdim)
    def __matmul__(self, o): return _linalg().matmul(self, o)
    def __rmatmul__(self, o): return _linalg().matmul(o, self)
    def det(self) -> Certified: return _linalg().det(self)
    def svdvals(self) -> Certified: return _linalg().svdvals(self)
    @property
    def mT(self) -> Certified: return _ops().gather(self, lambda t: t.mT, "mT")
    def __getitem__(self, idx) -> Certified: return _ops().getitem(self, idx)
    def reshape(self, *shape) -> Certified: return _ops().gather(self, lambda t: t.reshape(*shape), "reshape")
    def unsqueeze(self, dim: int) -> Certified: return _ops().gather(self, lambda t: t.unsqueeze(dim), "unsqueeze")
    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> Certified:
        return _ops().gather(self, lambda t: t.flatten(start_dim, end_dim), "flatten")
    def expand(self, *shape) -> Certified: return _ops().gather(self, lambda t: t.expand(*shape), "expand")

    # comparisons build a Comparison (never a bool)
    def __ge__(self, o): return _compare().Comparison(">=", self, o)
    def __gt__(self, o): return _compare().Comparison(">", self, o)
    def __le__(self, o): return _compare().Comparison("<=", self, o)
    def __lt__(self, o): return _compare().Comparison("<", self, o)
    def __eq__(self, o): return _compare().Comparison("==", self, o)  # type: ignore[override]
    def __ne__(self, o): return _compare().Comparison("!=", self, o)  # type: ignore[override]
    __hash__ = object.__hash__


def lift(x: Any, like: Certified | None = None) -> Certified:
    """A Certified passes through; a tensor, array or number becomes ``Certified.exact`` (on like's device)."""
    if isinstance(x, Certified):
        return x
    return Certified.exact(x, device=like.device if like is not None else None)


def lift_all(xs: Sequence[Any]) -> list[Certified]:
    """Lift every operand, placing plain numbers on the device of the first Certified among them."""
    like = next((x for x in xs if isinstance(x, Certified)), None)
    return [lift(x, like) for x in xs]


def _ops():
    from implreg.numerics import ops
    return ops


def _linalg():
    from implreg.numerics import linalg
    return linalg


def _compare():
    from implreg.numerics import compare
    return compare

