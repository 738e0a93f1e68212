"""Escalation of undecided entries: Arb balls at rising precision for the undecided rows, then the exact tier.

Each ball round re-evaluates every gap of the comparison for the rows (batch dim-0 indices) that still hold
an undecided entry; measured leaves are asked ``refine(rows, prec_bits)`` once per precision.  When every leaf
is exact and a ball still contains 0, the gap is evaluated exactly (``exact.py``).  Each round is recorded.
"""

from __future__ import annotations

import math

import numpy as np
from flint import arb, ctx

from implreg.numerics import recording
from implreg.numerics.balls import ArbBackend
from implreg.numerics.exact import ExactBackend, NotExact, exact_sign
from implreg.numerics.graph import Evaluator

#: Ball precisions in bits: 64 already beats float64's 53; 1024 covers references of ~300 digits.
PRECISIONS = (64, 128, 256, 1024)
#: Extra precisions for a nonzero algebraic gap whose sign the balls above left open.
EXACT_PRECISIONS = (4096, 16384)
_ADD = np.frompyfunc(lambda a, b: a + b, 2, 1)


def _finite_gaps(cmp, mask: np.ndarray, fill_absent: bool = False) -> tuple[np.ndarray, list]:
    """Of the entries in mask, those whose every gap is a finite Arb ball at the first precision, evaluated on the
    leaves' own enclosures (no refinement; ``fill_absent``: absent entries as an exact 0), and the (leaf, row)
    pairs whose absent entries were filled."""
    rows = _rows_of(mask)
    with ctx.workprec(PRECISIONS[0]):
        backend = ArbBackend(PRECISIONS[0], {}, set(), [], refine=False, fill_absent=fill_absent)
        ev = Evaluator(backend)
        vals = [_gap_values(ev, g, cmp.shape, rows, _ADD, None) for g in cmp.gaps()]
    out = np.zeros(cmp.shape, dtype=bool)
    for flat, loc in _local(mask, rows):
        out.flat[flat] = all((v[loc] if loc else v.reshape(())[()]).is_finite() for v in vals)
    return out, backend.filled


def finite_in_balls(cmp, mask: np.ndarray) -> np.ndarray:
    """Of the entries in mask (float64 overflowed there), those that are finite balls: an overflow rather than a
    true infinity (1/0, √−1)."""
    return _finite_gaps(cmp, mask)[0]


def raise_if_absent(cmp, what: str, undecided: np.ndarray, leaves) -> None:
    """Raise NumericalError if an undecided entry depends on an entry that does not exist (a loss level its flow
    never reached; ``Certified.measured(absent=…)``): its gap is a finite ball with those entries as an exact 0
    and not one with them as 0 ± ∞ — two 64-bit evaluations on the leaves' own enclosures, no reference run.
    (The graph maps the comparison's entries to the leaves' rows, which need not be the comparison's rows.)"""
    from implreg.errors import NumericalError
    from implreg.numerics.compare import where

    if not any(leaf._p.get("absent") is not None for leaf in leaves):
        return
    filled_ok, filled = _finite_gaps(cmp, undecided, fill_absent=True)
    if not filled:
        return
    needs = undecided & filled_ok & ~_finite_gaps(cmp, undecided)[0]
    if not needs.any():
        return
    idx = tuple(int(i) for i in np.unravel_index(int(np.flatnonzero(needs)[0]), cmp.shape))
    # the entry's own row where the leaf is batched like the comparison, else the first row that was filled
    same = [(leaf, idx[0]) for leaf, _ in filled if idx and leaf.shape and leaf.shape[0] == cmp.shape[0]
            and leaf._p["absent"][0].reshape(leaf.shape)[idx[0]].any()]
    leaf, row = (same or filled)[0]
    raise NumericalError(f"{what}: at {where(idx)} it uses a value that does not exist: "
                         f"{leaf._p['absent'][1](row)} ({int(needs.sum())} of the comparison's entries)")


def _ball_text(cmp, balls: list, strict: bool) -> str:
    """The enclosure that decided a refutation, as value − bound (tol − |a − b| for close)."""
    k = next(j for j, g in enumerate(balls) if _decide_ball(g, strict)[1])
    g = balls[k]
    if cmp.op == "close":
        return f"tol − |a − b| ∈ {g.str(5, radius=True)}"
    if cmp.op == "!=":
        return f"|value − bound| ∈ {g.str(5, radius=True)}"
    flip = cmp.op in ("<=", "<") or (cmp.op == "==" and k == 1)
    return f"value − bound ∈ {(-g if flip else g).str(5, radius=True)}"


def _rows_of(mask: np.ndarray) -> np.ndarray | None:
    if mask.ndim == 0:
        return None
    return np.unique(np.nonzero(mask)[0])


def _gap_values(ev: Evaluator, gap, shape: tuple[int, ...], rows, add, extra) -> np.ndarray:
    """The gap Σ sign·X as an object array of shape (len(rows), *shape[1:]) (or shape when rows is None)."""
    out_shape = shape if rows is None else (len(rows), *shape[1:])
    total = None
    for s, x in gap:
        v = ev.ev(x, _rows_for(x, shape, rows))
        v = np.broadcast_to(np.asarray(v, dtype=object), out_shape)
        v = v if s > 0 else np.asarray(-v, dtype=object)
        total = v if total is None else np.asarray(add(total, v), dtype=object)
    if extra is not None:
        e = extra if rows is None else extra[rows]
        total = np.asarray(total + np.frompyfunc(lambda r: arb(0, float(r)), 1, 1)(e), dtype=object)
    return np.asarray(total, dtype=object)


def _rows_for(x, shape, rows):
    if rows is None or x.ndim != len(shape) or x.ndim == 0:
        return None
    return rows if x.shape[0] == shape[0] and shape[0] != 1 else None


def _decide_ball(g: arb, strict: bool) -> tuple[bool, bool]:
    if not g.is_finite():
        return False, False
    if strict:
        return bool(g > 0), bool(g <= 0)
    return bool(g >= 0), bool(g < 0)


def _local(mask: np.ndarray, rows) -> list[tuple[int, tuple]]:
    """(flat index in the comparison, index into the row-selected array) for the entries in mask."""
    out = []
    pos = {int(r): j for j, r in enumerate(rows)} if rows is not None else None
    for flat in np.flatnonzero(mask):
        idx = np.unravel_index(int(flat), mask.shape) if mask.ndim else ()
        loc = idx if pos is None else (pos[int(idx[0])], *idx[1:])
        out.append((int(flat), tuple(int(i) for i in loc)))
    return out


def run(cmp, what, gaps, undecided: np.ndarray, state: dict, raise_if_false) -> np.ndarray:
    """Try to decide the undecided entries; return the mask of those still undecided."""
    shape = cmp.shape
    strict = cmp.strict
    extra = None
    if gaps and len(gaps[0].errors) > len(cmp.gaps()[0]):
        extra = gaps[0].errors[-1]
    leaves = {id(leaf): leaf for g in cmp.gaps() for _, x in g for leaf in x.leaves()}
    all_exact = all(leaf._op == "exact" for leaf in leaves.values()) and (extra is None or not extra.any())
    refinable = any(leaf._p.get("refine") is not None for leaf in leaves.values())
    refined: dict = {}
    exhausted: set = set()
    rec = recording.current()
    rounds = state["rounds"]
    true_all = np.zeros(shape, dtype=bool)
    basis = state["basis"]

    def ball_round(prec: int, tier: str, refine: bool = True) -> None:
        nonlocal undecided, rounds, basis
        rows = _rows_of(undecided)
        notes: list[str] = [] if refine else ["the measured values' own enclosures, before any refinement"]
        with ctx.workprec(prec):
            backend = ArbBackend(prec, refined, exhausted, notes, refine=refine)
            ev = Evaluator(backend)
            vals = [_gap_values(ev, g, shape, rows, _ADD, extra) for g in cmp.gaps()]
        ent = _local(undecided, rows)
        t_mask = np.zeros(shape, dtype=bool)
        f_mask = np.zeros(shape, dtype=bool)
        eq_mask = np.zeros(shape, dtype=bool)
        for flat, loc in ent:
            balls = [v[loc] if loc else v.reshape(())[()] for v in vals]
            ts, fs = zip(*(_decide_ball(g, strict) for g in balls), strict=True)
            if any(fs):
                f_mask.flat[flat] = True
                eq_mask.flat[flat] = any(g.is_exact() and g.is_zero() for g in balls)
            elif all(ts):
                t_mask.flat[flat] = True
        if not refine and not (t_mask.any() or f_mask.any()):
            return  # the free round decided nothing: no round to report
        ball = None
        if f_mask.any():
            first = int(np.flatnonzero(f_mask)[0])
            loc = dict(ent)[first]
            ball = _ball_text(cmp, [v[loc] if loc else v.reshape(())[()] for v in vals], strict)
        asked = undecided.copy()
        undecided = undecided & ~t_mask & ~f_mask
        rounds += 1
        if t_mask.any() and not backend.rigorous:
            basis = "estimate"
        _note(rec, what, rounds, asked, prec, t_mask, f_mask, undecided, tier, "; ".join(dict.fromkeys(notes)))
        raise_if_false(cmp, what, gaps, f_mask, f"{tier} arithmetic at {prec} bits", exact_equal=eq_mask, ball=ball)
        true_all[t_mask] = True
        if refine:
            state["refinable_left"] = backend.refinable_left

    raise_if_absent(cmp, what, undecided, leaves.values())
    if refinable and undecided.any():
        # Arb on the leaves as they are first: float64's midpoint–radius arithmetic can lose what an enclosure
        # keeps (x^p of a ball reaching 0 is [0, hi^p] in Arb, ẑ ± hi^p in float64), and refining a leaf means
        # running its reference (the mpmath flow: ~0.1 s per instance and level); measured on norms-diverge at
        # 1,017 instances, this round decides most of its Schatten-¼ monotonicity entries
        ball_round(PRECISIONS[0], "ball", refine=False)

    # An equality whose leaves carry an error can be refuted but never certified: its enclosure of a − b keeps
    # a nonzero radius at every precision (the mpmath reference's estimate included), so it never lies in {0}.
    # One refined round looks for a refutation (a difference above the reference's ~1e-25 error); the rising
    # precisions after it cost minutes per example (a 2×2 flow equality: 328 s for 51 examples) and decide nothing.
    refute_only = cmp.op == "==" and not all_exact
    for prec in PRECISIONS:
        if not undecided.any():
            break
        ball_round(prec, "ball")
        if not undecided.any() or refute_only:
            break
        if not all_exact and not state.get("refinable_left") and prec >= 128:
            break   # nothing left to refine: more precision cannot shrink the leaves' errors

    hint = None
    if undecided.any() and all_exact:
        undecided, hint = _exact_tier(cmp, what, gaps, undecided, shape, strict, rec, rounds, raise_if_false)
        rounds += 1
        if undecided.any() and hint is None:
            for prec in EXACT_PRECISIONS:   # a nonzero algebraic gap: its sign needs more digits
                ball_round(prec, "ball")
                if not undecided.any():
                    break
    if undecided.any() and refute_only:
        state["never"] = undecided.copy()
        hint = _equality_hint(leaves)
    elif undecided.any() and not all_exact:
        state["never"] = undecided.copy() if not refinable or not state.get("refinable_left") else state["never"]
        hint = _never_hint(cmp, leaves, refinable, state)
    state.update(rounds=rounds, basis=basis, hint=hint)
    return undecided


def _exact_tier(cmp, what, gaps, undecided, shape, strict, rec, rounds, raise_if_false):
    rows = _rows_of(undecided)
    ev = Evaluator(ExactBackend())
    add = np.frompyfunc(_exact_add, 2, 1)
    try:
        vals = [_gap_values_exact(ev, g, shape, rows, add) for g in cmp.gaps()]
    except NotExact as exc:
        return undecided, f"the exact tier could not decide it ({exc})"
    t_mask = np.zeros(shape, dtype=bool)
    f_mask = np.zeros(shape, dtype=bool)
    equal = np.zeros(shape, dtype=bool)
    for flat, loc in _local(undecided, rows):
        signs = [exact_sign(v[loc] if loc else v.reshape(())[()]) for v in vals]
        if any(s is not None and (s < 0 or (strict and s == 0)) for s in signs):
            f_mask.flat[flat] = True
            equal.flat[flat] = any(s == 0 for s in signs)
        elif all(s is not None and (s > 0 or (not strict and s == 0)) for s in signs):
            t_mask.flat[flat] = True
    asked = undecided.copy()
    undecided = undecided & ~t_mask & ~f_mask
    _note(rec, what, rounds + 1, asked, None, t_mask, f_mask, undecided, "exact", "exact rational/algebraic")
    raise_if_false(cmp, what, gaps, f_mask, "decided exactly", exact_equal=equal)
    return undecided, None


def _exact_add(a, b):
    from implreg.numerics.exact import _add
    return _add(a, b)


def _gap_values_exact(ev, gap, shape, rows, add):
    out_shape = shape if rows is None else (len(rows), *shape[1:])
    total = None
    neg = np.frompyfunc(lambda a: -a, 1, 1)
    for s, x in gap:
        v = np.broadcast_to(np.asarray(ev.ev(x, _rows_for(x, shape, rows)), dtype=object), out_shape)
        v = v if s > 0 else np.asarray(neg(v), dtype=object)
        total = v if total is None else np.asarray(add(total, v), dtype=object)
    return total


def _measured_names(leaves) -> str:
    labels = sorted({leaf.label or "a measured value" for leaf in leaves.values() if leaf._op == "measured"})
    return ", ".join(labels[:4])


def _never_hint(cmp, leaves, refinable, state) -> str:
    names = _measured_names(leaves)
    if not refinable or not state.get("refinable_left"):
        if cmp.op == "close":
            return (f"it can never be decided at this error: nothing feeding it can be refined ({names}), and "
                    "the operands' error is not below the tolerance's slack; loosen tol (above |a − b| plus the "
                    "error), or compute the operands more accurately (e.g. a tighter solver tolerance)")
        return (f"it can never be decided at this error: nothing feeding it can be refined ({names}); compute "
                "them more accurately (e.g. a tighter solver tolerance) or compare with a margin")
    return "escalation to the highest precision did not separate the gap from 0"


def _equality_hint(leaves) -> str:
    return (f"an equality of values that carry an error ({_measured_names(leaves)}) can be refuted but never "
            "certified: no precision shrinks their enclosure to exactly 0; compare them with close(a, b, tol) "
            "(implreg.numerics.close) at the tolerance your statement allows, or, where both sides are exact, "
            "build them with Certified.exact so that the exact tier decides the tie")


def _note(rec, what, rnd, asked, prec, t_mask, f_mask, undecided, tier, note):
    if rec is None:
        return
    idx = [list(np.unravel_index(int(i), asked.shape)) if asked.ndim else [] for i in np.flatnonzero(asked)[:8]]
    rec.note_escalation({
        "what": what,
        "round": rnd,
        "instances": int(asked.sum()),
        "indices": [[int(j) for j in i] for i in idx],
        "dps": int(prec * math.log10(2)) if prec else None,
        "resolved": int(t_mask.sum() + f_mask.sum()),
        "certified": int(t_mask.sum()),
        "refuted": int(f_mask.sum()),
        "still_undecided": int(undecided.sum()),
        "outcome": "refuted" if f_mask.any() else "certified" if not undecided.any() else "undecided",
        "note": note or None,
        "tier": tier,
        "prec_bits": prec,
    })
