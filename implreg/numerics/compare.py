"""Comparisons of certified values and the tiered decision ``certify(cmp)``.

Per entry, the first tier that decides wins:

1. float64: the gap's exact float terms and their rigorous error bounds; the sign of gap − error is decided
   exactly (``math.fsum`` is correctly rounded), so rounding in the comparison cannot certify a wrong answer;
2. balls: the expression graph is re-evaluated in Arb ball arithmetic for the undecided batch rows at rising
   precision, measured leaves asking their ``refine`` (``balls.py``);
3. exact: where every leaf feeding the gap is exact and the ball still contains 0, the gap is evaluated in
   exact rational/algebraic arithmetic (``exact.py``): a non-strict comparison at exact equality holds, a
   strict one is refuted;
4. otherwise ``Undecided`` (the example is discarded; verdict at best inconclusive).

A certified-false entry raises ``AssertionError`` naming ``what``, the instance, the two sides and the error.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from implreg.errors import ImplregError, InvalidInputError, NumericalError
from implreg.numerics import recording
from implreg.numerics.certified import Certified, lift_all

__all__ = ["Comparison", "Undecided", "certify", "close"]

_EPS = float(np.finfo(np.float64).eps)
_SYMBOL = {">=": "≥", ">": ">", "<=": "≤", "<": "<", "==": "=", "!=": "≠", "close": "≈"}


class Undecided(ImplregError):
    """A comparison whose gap stayed within its error bound after every tier.

    Inside a claim run the harness turns this into a discarded example (and the claim's verdict into
    ``inconclusive`` unless a counterexample refutes it); outside one it propagates.  ``entries`` holds one
    dict per undecided instance (what, instance, value, bound, error, gap, escalation_rounds, …).
    """

    def __init__(self, what: str, entries: list[dict[str, Any]], hint: str | None = None):
        self.what = what
        self.entries = entries
        self.hint = hint
        first = entries[0]
        cmp = f" ({first['comparison']})" if first.get("comparison") not in (None, what) else ""
        msg = (f"{what}{cmp}: undecided at {where(first['instance'])} ({len(entries)} instance(s)): "
               f"|value − bound| = {first['gap']} ≤ error {first['error']}")
        if hint:
            msg += f"; {hint}"
        super().__init__(msg)


def where(idx) -> str:
    idx = tuple(idx)
    if len(idx) == 0:
        return "the (single) instance"
    if len(idx) == 1:
        return f"instance {idx[0]}"
    return f"instance {idx}"


def unravel(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(flat, shape)) if shape else ()


def fmt(x: float) -> str:
    return repr(float(x))


def describe(c: Certified, depth: int = 2) -> str:
    """A short readable name of a certified value for messages (its label, or its top operations)."""
    if c.label:
        return c.label
    if c._op == "exact":
        return fmt(c.value.item()) if c.value.numel() == 1 else f"exact{tuple(c.shape)}"
    if c._op == "measured":
        return f"measured{tuple(c.shape)}"
    if depth == 0:
        return "…"
    sym = {"add": "+", "sub": "−", "mul": "·", "div": "/", "matmul": "@", "min2": "min", "max2": "max"}
    args = [a for a in c._args if isinstance(a, Certified)]
    if c._op in sym and len(args) == 2 and c._op not in ("min2", "max2"):
        return f"({describe(args[0], depth - 1)} {sym[c._op]} {describe(args[1], depth - 1)})"
    name = {"gather": c._p.get("name", "index")}.get(c._op, c._op)
    return f"{name}({', '.join(describe(a, depth - 1) for a in args)})"


class Comparison:
    """``a op b`` of certified values (op ≥ > ≤ < = ≠ or close with ``tol``), decided by ``certify``.

    ``extra_error`` (legacy ``error=``) is an absolute bound added to the error of every gap.
    """

    def __init__(self, op: str, a: Any, b: Any, tol: Any = None, extra_error: Any = None):
        if op not in _SYMBOL:
            raise InvalidInputError(f"unknown comparison {op!r}")
        if op == "close" and tol is None:
            raise InvalidInputError("close(a, b, tol) needs a tolerance")
        xs = lift_all([a, b] + ([tol] if tol is not None else []))
        self.op = op
        self.a, self.b = xs[0], xs[1]
        self.tol = xs[2] if tol is not None else None
        self.extra = extra_error
        self._ne_gap: Certified | None = None
        recording.built(self)   # a comparison never handed to certify checks nothing: the harness says so
        operands = [x.value for x in xs]
        try:
            self.shape = tuple(torch.broadcast_shapes(*(v.shape for v in operands)))
        except RuntimeError:
            shapes = ", ".join(str(tuple(v.shape)) for v in operands)
            raise InvalidInputError(f"comparison {self.text()}: shapes do not broadcast: {shapes}") from None

    def __bool__(self) -> bool:
        raise InvalidInputError(
            f"the comparison {self.text()} has no truth value of its own: wrap it in certify(...).  `and`, `or`, "
            "`not`, `if` and chained comparisons (0 <= x <= 1) ask for one, so certify each comparison in its own "
            "call: certify(x >= 0); certify(x <= 1)")

    def text(self) -> str:
        if self.op == "close":
            return f"|{describe(self.a)} − {describe(self.b)}| ≤ {describe(self.tol)}"
        return f"{describe(self.a)} {_SYMBOL[self.op]} {describe(self.b)}"

    @property
    def strict(self) -> bool:
        return self.op in (">", "<", "!=")

    def gaps(self) -> list[list[tuple[int, Certified]]]:
        """Each gap is Σ sign·X; the comparison holds iff every gap is ≥ 0 (> 0 when strict)."""
        a, b = self.a, self.b
        if self.op in (">=", ">"):
            return [[(1, a), (-1, b)]]
        if self.op in ("<=", "<"):
            return [[(1, b), (-1, a)]]
        if self.op == "==":
            return [[(1, a), (-1, b)], [(1, b), (-1, a)]]
        if self.op == "!=":   # a ≠ b ⟺ |a − b| > 0: one strict gap, refuted only where the two are equal
            if self._ne_gap is None:
                self._ne_gap = (a - b).abs()
            return [[(1, self._ne_gap)]]
        t = self.tol
        return [[(1, t), (-1, a), (1, b)], [(1, t), (1, a), (-1, b)]]

    @property
    def rigorous(self) -> bool:
        return all(x.rigorous for x in (self.a, self.b, self.tol) if x is not None)


def close(a: Any, b: Any, tol: Any) -> Comparison:
    """|a − b| ≤ tol, as a Comparison for ``certify``."""
    return Comparison("close", a, b, tol=tol)


# ------------------------------------------------------------------------------------------------ float tier
def _np(t: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    return np.array(torch.broadcast_to(t.detach(), shape).to("cpu").numpy(), dtype=np.float64, copy=True)


def exact_sign(terms: list[np.ndarray], mask: np.ndarray) -> np.ndarray:
    """sign(Σ terms) exactly (float64 entries, ±∞ allowed in one direction) for entries in mask, 0 elsewhere."""
    out = np.zeros(mask.shape, dtype=np.int8)
    with np.errstate(invalid="ignore", over="ignore"):
        approx = np.zeros(mask.shape)
        scale = np.zeros(mask.shape)
        for t in terms:
            approx = approx + t
            scale = scale + np.abs(t)
        near = mask & ~(np.abs(approx) > 8 * len(terms) * _EPS * scale)
        out[mask] = np.sign(np.nan_to_num(approx[mask], nan=0.0)).astype(np.int8)
    for i in np.flatnonzero(near):
        s = math.fsum(float(t.flat[i]) for t in terms)
        out.flat[i] = (s > 0) - (s < 0)
    return out


class _FloatGap:
    """One gap at float precision: exact float terms and error terms broadcast to the comparison shape."""

    def __init__(self, gap: list[tuple[int, Certified]], shape: tuple[int, ...], extra: np.ndarray | None):
        self.values = [s * _np(x.value, shape) for s, x in gap]
        self.errors = [_np(x.error, shape) for _, x in gap]
        if extra is not None:
            self.errors.append(extra)
        for e in self.errors:
            np.copyto(e, np.inf, where=np.isnan(e))
        self.shape = shape

    def value(self) -> np.ndarray:
        return sum(self.values[1:], self.values[0].copy())

    def error(self) -> np.ndarray:
        with np.errstate(over="ignore"):
            return sum(self.errors[1:], self.errors[0].copy())

    def decide(self, strict: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(certified true, certified false, exactly equal) masks."""
        everything = np.ones(self.shape, dtype=bool)
        zero_err = np.all([e == 0 for e in self.errors], axis=0)
        s_gap = exact_sign(self.values, everything)
        s_true = exact_sign(self.values + [-e for e in self.errors], everything)
        s_false = exact_sign([-v for v in self.values] + [-e for e in self.errors], everything)
        if strict:
            true = s_true > 0
            false = (s_false > 0) | (zero_err & (s_gap <= 0))
        else:
            true = (s_true > 0) | (zero_err & (s_gap >= 0))
            false = s_false > 0
        return true, false, zero_err & (s_gap == 0)


def _check_finite(cmp: Comparison, what: str) -> np.ndarray:
    """The entries where float64 overflowed although every leaf is finite (a loss of 1e320 from factors of 1e80):
    undecided, for the ball tiers, whose exponent range holds them.  Any other non-finite side raises."""
    named = [("left side", cmp.a), ("right side", cmp.b)] + ([("tol", cmp.tol)] if cmp.tol is not None else [])
    overflow = np.zeros(cmp.shape, dtype=bool)
    for name, x in named:
        xv = torch.broadcast_to(x.value, cmp.shape)
        bad = ~torch.isfinite(xv)
        if not bool(bad.any()):
            continue
        # ±∞ only: a NaN (√−1, ∞ − ∞) is never rescued, and Arb's max(x, 0) in √ would hide a √−1
        if bool(torch.isinf(xv).any()) and all(bool(torch.isfinite(leaf.value).all()) for leaf in x.leaves()):
            bad_np = bad.to("cpu").numpy()
            from implreg.numerics import escalate

            rescued = escalate.finite_in_balls(cmp, bad_np & torch.isinf(xv).to("cpu").numpy())
            overflow |= rescued
            bad = torch.from_numpy(bad_np & ~rescued)
        if bool(bad.any()):
            i = int(torch.nonzero(bad.flatten())[0].item())
            idx = unravel(i, cmp.shape)
            raise NumericalError(
                f"{what}: the {name} of {cmp.text()} is not finite at {where(idx)} "
                f"(value = {torch.broadcast_to(x.value, cmp.shape).flatten()[i].item()}); "
                "a non-finite quantity is never certified")
    return overflow


# ------------------------------------------------------------------------------------------------ certify
def certify(cmp: Comparison, what: str | None = None) -> None:
    """Decide a Comparison entrywise (see the module docstring): return if every entry holds, raise
    ``AssertionError`` if one is certified false, ``Undecided`` if some stay undecided."""
    if not isinstance(cmp, Comparison):
        raise InvalidInputError(
            f"certify(...) takes a comparison of certified values (a >= b, a > b, close(a, b, tol), …), got "
            f"{type(cmp).__name__}; for an exact boolean condition use certify.that(cond)")
    recording.decided(cmp)
    what = what or cmp.text()
    overflow = _check_finite(cmp, what)
    shape = cmp.shape
    extra = None
    if cmp.extra is not None:
        extra = np.array(np.broadcast_to(_as_np(cmp.extra, what), shape), dtype=np.float64, copy=True)
        if np.isnan(extra).any() or (extra < 0).any():
            raise InvalidInputError(f"{what}: negative or NaN error bound")
    gaps = [_FloatGap(g, shape, extra) for g in cmp.gaps()]
    if overflow.any():
        for g in gaps:   # overflowed entries: undecided at float64 (value 0 ± ∞), for the ball tiers
            for v in g.values:
                v[overflow] = 0.0
            g.errors[0][overflow] = np.inf
    true = np.ones(shape, dtype=bool)
    false = np.zeros(shape, dtype=bool)
    equal = np.zeros(shape, dtype=bool)
    for g in gaps:
        t, f, eq = g.decide(cmp.strict)
        true &= t
        false |= f
        equal |= eq
    true &= ~false
    _raise_if_false(cmp, what, gaps, false, None, exact_equal=equal)
    undecided = ~true & ~false
    # what the decisions rest on: the float tier's bounds where it decided, else the escalation's
    float_basis = "rigorous" if cmp.rigorous or not true.any() else "estimate"
    state = {"rounds": 0, "basis": float_basis, "hint": None, "never": np.zeros(shape, dtype=bool)}
    if undecided.any():
        from implreg.numerics import escalate

        undecided = escalate.run(cmp, what, gaps, undecided, state, _raise_if_false)
    rec = recording.current()
    margins = np.min([g.value() for g in gaps], axis=0)
    errs = np.max([g.error() for g in gaps], axis=0)
    if undecided.any():
        entries = []
        for i in np.flatnonzero(undecided):
            idx = unravel(int(i), shape)
            entries.append({
                "what": what,
                "comparison": cmp.text(),
                "instance": list(idx),
                "value": fmt(_np(cmp.a.value, shape).flat[i]),
                "bound": fmt(_np((cmp.tol if cmp.op == "close" else cmp.b).value, shape).flat[i]),
                "error": f"{errs.flat[i]:.3g}",
                "gap": f"{abs(float(margins.flat[i])):.3g}",
                "escalation_rounds": state["rounds"],
                "basis": state["basis"],
                "never": bool(state["never"].flat[i]),
                "hint": state["hint"],
                "comparison_op": cmp.op,
            })
        if rec is not None:
            rec.note_undecided(entries)
        raise Undecided(what, entries, hint=state["hint"])
    if rec is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(margins > 0, errs / np.where(margins > 0, margins, 1.0), 0.0)
        max_ratio = float(np.nan_to_num(ratio, nan=0.0, posinf=1e300).max()) if ratio.size else 0.0
        a = np.abs(_np(cmp.a.value, shape))
        b = np.abs(_np(cmp.b.value, shape))
        score = -float((margins / (a + b + 1e-300)).min()) if margins.size else None
        note = rec.note_certified
        try:
            note(what, int(margins.size), max_ratio, score, basis=state["basis"])
        except TypeError:   # a recorder from before the basis field
            note(what, int(margins.size), max_ratio, score)


def _as_np(x: Any, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu").double().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{what}: error= must be numeric") from None


def _raise_if_false(cmp: Comparison, what: str, gaps: list[_FloatGap], false: np.ndarray,
                    how: str | None, exact_equal: np.ndarray | None = None, ball: str | None = None) -> None:
    if not false.any():
        return
    shape = cmp.shape
    i = int(np.flatnonzero(false)[0])
    idx = unravel(i, shape)
    av, bv = _np(cmp.a.value, shape).flat[i], _np(cmp.b.value, shape).flat[i]
    err = float(np.max([g.error().flat[i] for g in gaps]))
    if ball is not None and not math.isfinite(err):
        # the float64 values are placeholders (0 ± ∞ where a solver kept no error): the ball is the evidence
        rel = (f"{'|a − b| ≤ tol' if cmp.op == 'close' else f'value {_SYMBOL[cmp.op]} bound'} is false: {ball} "
               "(float64 alone could not tell: error bound = inf)")
    elif cmp.op == "close":
        rel = (f"|a − b| ≤ tol is false: a = {fmt(av)}, b = {fmt(bv)}, "
               f"tol = {fmt(_np(cmp.tol.value, shape).flat[i])}")
    else:
        rel = f"value {_SYMBOL[cmp.op]} bound is false: value = {fmt(av)}, bound = {fmt(bv)}"
    tie = exact_equal is not None and bool(exact_equal.flat[i])
    if ball is not None and math.isfinite(err) and not tie:
        rel += f"; refined, {ball}"
    suffix = f" ({how})" if how else ""
    if not (math.isfinite(av) and math.isfinite(bv)):
        suffix += "; a side overflowed float64 (its exact value is finite), so the ball tier decided it"
    if tie:
        # the float tier's error bound is beside the point here: the gap itself evaluated to exactly 0
        rel += (" (the two sides are exactly equal)" if cmp.op == "!=" else
                " (the two sides are exactly equal, so the strict inequality fails)")
        detail = f"the gap is exactly 0 at {where(idx)}{suffix}"
    elif math.isfinite(err) or ball is None:
        detail = f"error bound = {fmt(err)} at {where(idx)}{suffix}"
    else:
        detail = f"at {where(idx)}{suffix}"
    raise AssertionError(f"{what}: {rel}, {detail}; {int(false.sum())} of {false.size} instance(s) violate it")
