"""Certified comparisons: decide ``value ≥ bound`` only where the gap exceeds the error.

The module itself is callable: ``certify(a >= b)`` decides a comparison of ``implreg.numerics.Certified``
values, which carry their own error (see ``implreg.numerics.compare``).  ``at_least``/``at_most``/``close``
take Certified operands too (their error is used, plus any ``error=`` given), or plain numbers as below.

Every numeric claim asserts its conclusion through these functions.  Inputs are floats, numpy arrays or
torch tensors of any shape (one Hypothesis example may carry a batch of instances); ``error`` is an
absolute bound on the error of ``value − bound`` and broadcasts against them.  Per instance:

- ``value − bound > error``  (or ``≥ 0`` when ``error == 0``)   → certified true;
- ``bound − value > error``                                   → certified false: ``AssertionError`` naming
  ``what``, the instance, value, bound and error (Hypothesis then shrinks it → verdict ``refuted``);
- otherwise                                                   → undecided: ``escalate(mask)`` is asked for
  refined values at higher precision, repeatedly, until it decides or returns None; still undecided →
  the instance is recorded and the example discarded (verdict at best ``inconclusive``).

The sign of ``value − bound − error`` is decided exactly (``math.fsum`` is correctly rounded, so its sign
is the sign of the exact sum), so float rounding in the comparison itself can never certify a wrong
answer.  NaN or ±∞ anywhere is never certified: it raises ``NumericalError`` naming ``what``.

    certify.at_least(det, 0.0, error=err, what="det W(t)",
                     escalate=certify.rising_precision(lambda mask, dps: reference_det(batch[mask], dps)))
"""

from __future__ import annotations

import math
import sys
import types
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from implreg.errors import InvalidInputError, NumericalError
from implreg.numerics import Certified, Comparison, Undecided
from implreg.numerics import certify as _certify_cmp
from implreg.numerics import recording as _record  # the bottom layer's hook, not the harness

__all__ = [
    "Comparison",
    "Refined",
    "Undecided",
    "at_least",
    "at_most",
    "close",
    "rising_precision",
    "that",
]

#: At most this many escalation rounds per comparison, whatever the escalate callable does.
MAX_ROUNDS = 8
_EPS = np.finfo(np.float64).eps


class Refined(NamedTuple):
    """What an ``escalate`` callable returns: refined value, bound and error for the asked instances.

    Arrays are either of the full comparison shape (only the asked entries are read) or 1-D with one
    entry per asked instance in C order (``np.flatnonzero(mask)``).  ``dps`` is the decimal precision the
    reference used; it is recorded for the report.  Entries may be mpmath numbers.
    """

    value: Any
    bound: Any
    error: Any
    dps: int | None = None
    note: str | None = None


Escalate = Callable[[np.ndarray], "Refined | tuple | None"]


# ------------------------------------------------------------------------------------------------
# public comparisons
# ------------------------------------------------------------------------------------------------
def _is_certified(*xs) -> bool:
    return any(isinstance(x, Certified) for x in xs)


def _via_certified(op: str, a, b, error, what: str, escalate, tol=None) -> None:
    """Certified operands: build the Comparison (legacy ``error=`` adds to the operands' own error)."""
    if escalate is not None:
        raise InvalidInputError(
            f"certify ({what}): escalate= is for plain operands; Certified values escalate through their "
            "leaves' refine")
    _certify_cmp(Comparison(op, a, b, tol=tol, extra_error=error), what)


def at_least(value, bound, *, error=None, what: str = "value", escalate: Escalate | None = None,
             target: bool = True) -> None:
    """Certify ``value ≥ bound`` elementwise, with ``error`` an absolute bound on the error of the gap
    (optional; Certified operands bring their own)."""
    if _is_certified(value, bound):
        return _via_certified(">=", value, bound, error, what, escalate)
    _certify("≥", value, bound, 0.0 if error is None else error, what, escalate, target)


def at_most(value, bound, *, error=None, what: str = "value", escalate: Escalate | None = None,
            target: bool = True) -> None:
    """Certify ``value ≤ bound`` elementwise (see ``at_least``)."""
    if _is_certified(value, bound):
        return _via_certified("<=", value, bound, error, what, escalate)
    _certify("≤", value, bound, 0.0 if error is None else error, what, escalate, target)


def close(a, b, *, tol, error=None, what: str = "value", escalate: Escalate | None = None,
          target: bool = True) -> None:
    """Certify ``|a − b| ≤ tol`` elementwise, ``error`` bounding the error of ``a − b``.

    ``escalate`` returns refined ``(a, b, error)``.
    """
    if _is_certified(a, b, tol):
        return _via_certified("close", a, b, error, what, escalate, tol=tol)
    _certify("≈", a, b, 0.0 if error is None else error, what, escalate, target, tol=tol)


def that(cond, *, what: str = "condition") -> None:
    """Certify an exact (non-numeric) condition: a bool, or a boolean array/tensor checked elementwise."""
    arr = _to_numpy(cond, "cond", what)
    if arr.dtype != np.bool_:
        raise InvalidInputError(
            f"certify.that({what!r}): expected a bool or boolean array, got dtype {arr.dtype}; "
            "use at_least/at_most/close for numeric comparisons"
        )
    rec = _record.current()
    bad = ~arr
    if bad.any():
        idx = _unravel(int(np.flatnonzero(bad)[0]), arr.shape)
        raise AssertionError(
            f"{what} is false at {_where(idx)} ({int(bad.sum())} of {arr.size} instance(s) violate it)"
        )
    if rec is not None:
        rec.note_certified(what, int(arr.size), None, None)


def rising_precision(fn: Callable[..., Any], dps: Sequence[int] = (30, 60, 120)) -> Escalate:
    """An ``escalate`` callable that calls ``fn(mask, dps=d)`` at each precision in ``dps`` in turn.

    ``fn`` returns ``(value, bound, error)`` for the masked instances at ``d`` decimal digits (e.g. by the
    mpmath reference).  After the last precision the escalation gives up (the instance stays undecided).
    """
    levels = iter(tuple(dps))

    def escalate(mask: np.ndarray) -> Refined | None:
        d = next(levels, None)
        if d is None:
            return None
        out = fn(mask, dps=d)
        if isinstance(out, Refined):
            return out._replace(dps=out.dps or d)
        value, bound, err = out[:3]
        return Refined(value, bound, err, dps=d)

    return escalate


# ------------------------------------------------------------------------------------------------
# machinery
# ------------------------------------------------------------------------------------------------
def _where(idx: tuple[int, ...]) -> str:  # same wording as implreg.numerics.compare.where
    if len(idx) == 0:
        return "the (single) instance"
    if len(idx) == 1:
        return f"instance {idx[0]}"
    return f"instance {idx}"


def _unravel(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(flat, shape)) if shape else ()


def _is_mp(x: Any) -> bool:
    return type(x).__module__.startswith("mpmath")


def _to_numpy(x: Any, name: str, what: str) -> np.ndarray:
    """float64 (or bool) numpy array; object array of mpmath numbers when any entry is one."""
    mod = type(x).__module__
    if mod.startswith("torch"):
        t = x.detach().to("cpu")
        if t.is_complex():
            raise InvalidInputError(f"certify ({what}): {name} is complex")
        if str(t.dtype) == "torch.bool":
            return t.numpy()
        return t.double().numpy()
    if _is_mp(x):
        return np.array(x, dtype=object)
    if isinstance(x, (list, tuple)):
        flat = list(_flatten(x))
        if any(_is_mp(v) for v in flat):
            return np.array(x, dtype=object)
        if any(type(v).__module__.startswith("torch") for v in flat):
            return np.array([_to_numpy(v, name, what) for v in x])
    arr = np.asarray(x)
    if arr.dtype == np.bool_:
        return arr
    if arr.dtype == object:
        if any(_is_mp(v) for v in arr.flat):
            return arr
        raise InvalidInputError(f"certify ({what}): {name} is not numeric ({type(x).__name__})")
    if np.iscomplexobj(arr):
        raise InvalidInputError(f"certify ({what}): {name} is complex")
    try:
        return arr.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"certify ({what}): {name} is not numeric: {exc}") from None


def _flatten(x: Iterable) -> Iterable:
    for v in x:
        if isinstance(v, (list, tuple)):
            yield from _flatten(v)
        else:
            yield v


def _fmt(x: Any) -> str:
    if _is_mp(x):
        import mpmath

        return mpmath.nstr(x, 17)
    return repr(float(x))  # shortest string that round-trips


class _Comparison:
    """Operands of one certify call, broadcast to a common shape (float64 or mpmath objects)."""

    def __init__(self, op: str, value, bound, error, what: str, tol=None):
        self.op, self.what = op, what
        arrays = [_to_numpy(value, "value", what), _to_numpy(bound, "bound", what),
                  _to_numpy(error, "error", what)]
        if tol is not None:
            arrays.append(_to_numpy(tol, "tol", what))
        for a in arrays:
            if a.dtype == np.bool_:
                raise InvalidInputError(f"certify ({what}): boolean operand; use certify.that")
        try:
            arrays = [np.array(a, copy=True) for a in np.broadcast_arrays(*arrays)]
        except ValueError:
            shapes = ", ".join(str(a.shape) for a in arrays)
            raise InvalidInputError(f"certify ({what}): shapes do not broadcast: {shapes}") from None
        self.exact = any(a.dtype == object for a in arrays)
        if self.exact:
            import mpmath

            arrays = [np.vectorize(mpmath.mpf, otypes=[object])(a) if a.size else a.astype(object)
                      for a in arrays]
        self.value, self.bound, self.error = arrays[:3]
        self.tol = arrays[3] if tol is not None else None
        self.shape = self.value.shape
        self._check_finite(np.ones(self.shape, dtype=bool))

    def _check_finite(self, mask: np.ndarray) -> None:
        names = ["value", "bound", "error"] + (["tol"] if self.tol is not None else [])
        for name, arr in zip(names, [self.value, self.bound, self.error, self.tol], strict=False):
            if self.exact:
                import mpmath

                finite = np.array([bool(mpmath.isfinite(v)) for v in arr.flat], dtype=bool).reshape(arr.shape)
            else:
                finite = np.isfinite(arr)
            bad = mask & ~finite
            if bad.any():
                idx = _unravel(int(np.flatnonzero(bad)[0]), self.shape)
                raise NumericalError(
                    f"{self.what}: {name} is not finite at {_where(idx)} "
                    f"(value = {_fmt(self.value[idx])}, bound = {_fmt(self.bound[idx])}, "
                    f"error = {_fmt(self.error[idx])}); a non-finite quantity is never certified"
                )
        neg = mask & (self.error < 0) if not self.exact else mask & np.vectorize(lambda e: e < 0, otypes=[bool])(
            self.error)
        if neg.any():
            idx = _unravel(int(np.flatnonzero(neg)[0]), self.shape)
            raise InvalidInputError(f"{self.what}: negative error bound {_fmt(self.error[idx])} at {_where(idx)}")

    # -- exact sign of sums --------------------------------------------------------------------------
    def _sign(self, terms: list[np.ndarray], mask: np.ndarray) -> np.ndarray:
        """sign(Σ terms) exactly, for the entries in mask (0 elsewhere)."""
        out = np.zeros(self.shape, dtype=np.int8)
        idx = np.flatnonzero(mask)
        if self.exact:
            import mpmath

            for i in idx:
                s = mpmath.mpf(0)
                for t in terms:
                    s = mpmath.fadd(s, t.flat[i], exact=True)
                out.flat[i] = (s > 0) - (s < 0)
            return out
        # fast path: float sum; exact fsum only where the float sum is within rounding of zero
        approx = np.zeros(self.shape)
        scale = np.zeros(self.shape)
        for t in terms:
            approx = approx + t
            scale = scale + np.abs(t)
        near = mask & (np.abs(approx) <= 8 * len(terms) * _EPS * scale)
        out[mask] = np.sign(approx[mask]).astype(np.int8)
        for i in np.flatnonzero(near):
            s = math.fsum(float(t.flat[i]) for t in terms)
            out.flat[i] = (s > 0) - (s < 0)
        return out

    def decide(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(true, false) boolean arrays for the entries in mask."""
        v, b, e = self.value, self.bound, self.error
        zero_err = (e == 0) if not self.exact else np.vectorize(lambda x: x == 0, otypes=[bool])(e)
        if self.op == "≥":
            gap = [v, -b]
        elif self.op == "≤":
            gap = [b, -v]
        else:  # ≈ : tol − |a − b| as two one-sided gaps
            t = self.tol
            up = self._one_sided([t, -v, b], e, zero_err, mask)
            lo = self._one_sided([t, v, -b], e, zero_err, mask)
            true = up[0] & lo[0]
            false = (up[1] | lo[1]) & mask
            return true, false
        return self._one_sided(gap, e, zero_err, mask)

    def _one_sided(self, gap, e, zero_err, mask):
        """gap − e > 0 (or gap ≥ 0 with e = 0) → true;  −gap − e > 0 → false."""
        s_true = self._sign([*gap, -e], mask)
        s_false = self._sign([*(-g for g in gap), -e], mask)
        true = mask & ((s_true > 0) | (zero_err & (s_true >= 0)))
        false = mask & (s_false > 0)
        return true, false

    def margins(self) -> np.ndarray:
        """Approximate signed margin (positive = satisfied) as float64, for ratios and targeting."""
        v = np.vectorize(float, otypes=[float])(self.value) if self.exact else self.value
        b = np.vectorize(float, otypes=[float])(self.bound) if self.exact else self.bound
        if self.op == "≥":
            return v - b
        if self.op == "≤":
            return b - v
        t = np.vectorize(float, otypes=[float])(self.tol) if self.exact else self.tol
        return t - np.abs(v - b)

    def error_f(self) -> np.ndarray:
        return np.vectorize(float, otypes=[float])(self.error) if self.exact else self.error

    def replace(self, mask: np.ndarray, refined: Refined) -> None:
        """Overwrite the masked entries with refined (value, bound, error)."""
        k = int(mask.sum())
        new = [_to_numpy(x, name, self.what) for x, name in
               zip(refined[:3], ("value", "bound", "error"), strict=True)]
        if any(a.dtype == object for a in new) and not self.exact:
            self.exact = True
            import mpmath

            conv = np.vectorize(mpmath.mpf, otypes=[object])
            self.value, self.bound, self.error = (conv(a) for a in (self.value, self.bound, self.error))
            if self.tol is not None:
                self.tol = conv(self.tol)
        targets = [self.value, self.bound, self.error]
        for dst, src, name in zip(targets, new, ("value", "bound", "error"), strict=True):
            if src.shape == self.shape:
                dst[mask] = src[mask]
            elif src.size == 1:
                dst[mask] = src.reshape(()).item() if src.dtype == object else float(src.reshape(()))
            elif src.ndim == 1 and src.shape[0] == k:
                dst[mask] = src
            else:
                raise InvalidInputError(
                    f"{self.what}: escalate returned {name} of shape {src.shape}; expected {self.shape} "
                    f"or ({k},) for the {k} undecided instance(s)"
                )
        self._check_finite(mask)


_SYMBOL = {"≥": "≥", "≤": "≤", "≈": "≈"}


def _certify(op, value, bound, error, what, escalate, target, tol=None) -> None:
    cmp = _Comparison(op, value, bound, error, what, tol=tol)
    everything = np.ones(cmp.shape, dtype=bool)
    true, false = cmp.decide(everything)
    _raise_if_false(cmp, false)
    undecided = everything & ~true & ~false
    rec = _record.current()
    rounds = 0
    while undecided.any() and escalate is not None and rounds < MAX_ROUNDS:
        asked = undecided.copy()
        out = escalate(asked)
        if out is None:
            break
        rounds += 1
        refined = out if isinstance(out, Refined) else Refined(*out)
        cmp.replace(asked, refined)
        t2, f2 = cmp.decide(asked)
        resolved_true, resolved_false = int(t2.sum()), int(f2.sum())
        undecided = asked & ~t2 & ~f2
        true |= t2
        if rec is not None:
            idx = [_unravel(int(i), cmp.shape) for i in np.flatnonzero(asked)[:8]]
            rec.note_escalation({
                "what": what,
                "round": rounds,
                "instances": int(asked.sum()),
                "indices": [list(i) for i in idx],
                "dps": refined.dps,
                "resolved": resolved_true + resolved_false,
                "certified": resolved_true,
                "refuted": resolved_false,
                "still_undecided": int(undecided.sum()),
                "outcome": ("refuted" if resolved_false else
                            "certified" if not undecided.any() else "undecided"),
                "note": refined.note,
            })
        _raise_if_false(cmp, f2, escalated=refined.dps)
    margins = cmp.margins()
    err = cmp.error_f()
    if undecided.any():
        entries = []
        for i in np.flatnonzero(undecided):
            idx = _unravel(int(i), cmp.shape)
            entries.append({
                "what": what,
                "instance": list(idx),
                "value": _fmt(cmp.value.flat[i]),
                "bound": _fmt(cmp.bound.flat[i]),
                "error": _fmt(cmp.error.flat[i]),
                "gap": f"{abs(float(margins.flat[i])):.3g}",
                "escalation_rounds": rounds,
            })
        if rec is not None:
            rec.note_undecided(entries)
        raise Undecided(what, entries)
    if rec is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(margins > 0, err / np.where(margins > 0, margins, 1.0), 0.0)
        max_ratio = float(ratio.max()) if ratio.size else 0.0
        score = None
        if target and margins.size:
            v = np.abs(np.vectorize(float, otypes=[float])(cmp.value) if cmp.exact else cmp.value)
            b = np.abs(np.vectorize(float, otypes=[float])(cmp.bound) if cmp.exact else cmp.bound)
            rel = margins / (v + b + 1e-300)
            score = -float(rel.min())
        rec.note_certified(what, int(margins.size), max_ratio, score)


def _raise_if_false(cmp: _Comparison, false: np.ndarray, escalated: int | None = None) -> None:
    if not false.any():
        return
    i = int(np.flatnonzero(false)[0])
    idx = _unravel(i, cmp.shape)
    v, b, e = cmp.value.flat[i], cmp.bound.flat[i], cmp.error.flat[i]
    n_bad, n = int(false.sum()), false.size
    if cmp.op == "≈":
        rel = f"|a − b| ≤ tol is false: a = {_fmt(v)}, b = {_fmt(b)}, tol = {_fmt(cmp.tol.flat[i])}"
    else:
        rel = f"value {_SYMBOL[cmp.op]} bound is false: value = {_fmt(v)}, bound = {_fmt(b)}"
    how = f" (after escalation at {escalated} digits)" if escalated else ""
    raise AssertionError(
        f"{cmp.what}: {rel}, error bound = {_fmt(e)} at {_where(idx)}{how}; "
        f"{n_bad} of {n} instance(s) violate it"
    )


# ------------------------------------------------------------------------------------------------
# the module is callable: certify(a >= b, what=...)
# ------------------------------------------------------------------------------------------------
_ARG_TEXT: dict[tuple[Any, int], str | None] = {}


def _first_argument_text(frame: types.FrameType) -> str | None:
    """The source text of the first argument of the call ``frame`` is making (``certify(loss[:, 1] <= loss[:, 0])``
    → ``"loss[:, 1] <= loss[:, 0]"``, whitespace collapsed), read from the call's own source positions
    (``co_positions``, Python ≥ 3.11); None where there is no source (an interactive session, exec of a string)
    or the call is not a plain call with an argument.  Cached per call site."""
    import ast
    import linecache

    key = (frame.f_code, frame.f_lasti)
    if key in _ARG_TEXT:
        return _ARG_TEXT[key]
    text = None
    try:
        pos = list(frame.f_code.co_positions())[frame.f_lasti // 2]
        lo, hi, c0, c1 = pos
        lines = linecache.getlines(frame.f_code.co_filename, frame.f_globals)
        if None not in pos and lines and hi <= len(lines):
            # column offsets are UTF-8 byte offsets
            raw = [ln.encode() for ln in lines[lo - 1 : hi]]
            raw[-1] = raw[-1][:c1]
            raw[0] = raw[0][c0:]
            segment = b"".join(raw).decode()
            call = ast.parse(segment.strip(), mode="eval").body
            if isinstance(call, ast.Call) and call.args:
                arg = ast.get_source_segment(segment.strip(), call.args[0])
                text = " ".join(arg.split()) if arg else None
    except (SyntaxError, ValueError, IndexError, UnicodeDecodeError):
        text = None
    _ARG_TEXT[key] = text
    return text


class _CallableModule(types.ModuleType):
    """``implreg.certify`` as a module that can be called: ``certify(cmp, what=None)``; without ``what`` the
    comparison is named by the source text of its argument (what the claim's author wrote), else by the
    expression the certified values were built from."""

    def __call__(self, cmp: Comparison, what: str | None = None) -> None:
        if what is None and isinstance(cmp, Comparison):
            what = _first_argument_text(sys._getframe(1))
        _certify_cmp(cmp, what)


sys.modules[__name__].__class__ = _CallableModule
