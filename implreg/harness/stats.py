"""Named statistical tests for empirical claims ("over drawn problems, A < B"), on scipy.stats, in three outcomes.

A spec says which test, in which direction, at which level α, and (optionally) the effect size the claim is
about.  A sample decides the claim as

- **holds**: the test is significant (p < α) in the stated direction;
- **refuted**: significant in the *opposite* direction (one-sided claims), or an equivalence test (TOST: two
  one-sided tests at level α each) shows the effect lies within ± ``equivalence_margin``: no effect of the
  claimed size (this also refutes a claim whose effect is significant but shown smaller than the margin);
- **inconclusive**: otherwise.  "Not significant" is never "refuted".

Specs:

- ``paired("wilcoxon" | "sign" | "ttest", alternative="less", equivalence_margin=None)``: observations are pairs
  (a, b) from one problem; tests the differences a − b (``less``: a tends to be smaller than b).  The margin is
  in units of a − b (a location shift: pseudo-median for Wilcoxon, median for the sign test, mean for t).
  Wilcoxon p-values are exact where it matters: scipy's exact distribution without ties (n ≤ 50), the exact
  conditional distribution given the midranks with tied |a − b| (n ≤ 200), else the normal approximation.
- ``two_sample("mannwhitney", alternative="less", equivalence_margin=None)``: the a's and b's as two independent
  samples; the margin is a location shift of a against b, in their units.
- ``proportion(p, alternative="greater", equivalence_margin=None)``: observations are booleans; exact binomial
  test of P[True] against p (margin in probability).
- ``proportion(p, within=m)``: the claim "P[True] = p" stated as p ± m.  Holds when an exact binomial TOST shows
  P[True] ∈ (p − m, p + m); refuted when an exact one-sided test at α/2 per side shows it outside [p − m, p + m].
- Deprecated: ``proportion(p)`` / ``holds_when="consistent"`` (two-sided, "holds" when H₀ is *not* rejected).
  Kept for claims that have not migrated; its record and sentence say it is deprecated.  A rejection refutes it
  (the data are significantly inconsistent with p); non-rejection still reads "holds" but is flagged.

Every result records the test, n, statistic, p-values (stated and opposite direction, TOST), level, an effect
size with its name, a sample summary, the outcome with its reason (``refuted_by``: "opposite", "equivalence",
"outside", "inconsistent"), and the test's sensitivity (``power``): the smallest effect detectable with power
0.8 at this n and α (exact from the binomial distribution for the sign and binomial tests; from the noncentral
t distribution, i.e. exact under normality, for the t-test; from Noether's normal approximation for the Wilcoxon
and Mann–Whitney tests), and for an equivalence test its power at zero effect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["TARGET_POWER", "TestSpec", "evaluate", "paired", "proportion", "two_sample"]

_ALTERNATIVES = ("less", "greater", "two-sided")
_FLIP = {"less": "greater", "greater": "less"}
#: The power at which the smallest detectable effect is reported (the conventional 80 %).
TARGET_POWER = 0.8
_DEPRECATED_CONSISTENT = ("holds_when='consistent' is deprecated: not rejecting H₀ is not evidence for it; state "
                          "the claim as proportion(p, within=margin) (an exact equivalence test)")


@dataclass(frozen=True)
class TestSpec:
    """A named test, its direction and level, the claimed effect size, and when the claim holds."""

    __test__ = False  # not a pytest test class

    family: str          # "paired" | "two_sample" | "proportion"
    test: str            # "wilcoxon" | "sign" | "ttest" | "mannwhitney" | "binomial"
    alternative: str
    alpha: float
    holds_when: str      # "significant" | "equivalent" (proportion within ±margin) | "consistent" (deprecated)
    p0: float | None = None
    margin: float | None = None   # equivalence margin (TOST), or the half-width of proportion(p, within=…)

    @property
    def title(self) -> str:
        return {
            "wilcoxon": "Wilcoxon signed-rank test (paired)",
            "sign": "sign test (paired, exact binomial on signs)",
            "ttest": "paired t-test",
            "mannwhitney": "Mann–Whitney U test (two independent samples)",
            "binomial": "exact binomial test",
        }[self.test]

    @property
    def deprecated(self) -> str | None:
        return _DEPRECATED_CONSISTENT if self.holds_when == "consistent" else None

    def describe(self) -> dict[str, Any]:
        return {"family": self.family, "test": self.test, "title": self.title, "alternative": self.alternative,
                "alpha": self.alpha, "holds_when": self.holds_when, "p0": self.p0, "margin": self.margin,
                "deprecated": self.deprecated}


def _check(alternative: str, alpha: float) -> None:
    if alternative not in _ALTERNATIVES:
        raise ValueError(f"alternative must be one of {_ALTERNATIVES}, got {alternative!r}")
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha!r}")


def _check_margin(margin: float | None, what: str = "equivalence_margin") -> float | None:
    if margin is None:
        return None
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin > 0):
        raise ValueError(f"{what} must be a positive finite number (the smallest effect the claim is about), "
                         f"got {margin!r}")
    return float(margin)


def paired(test: str = "wilcoxon", *, alternative: str = "less", alpha: float = 0.01,
           equivalence_margin: float | None = None) -> TestSpec:
    """Paired test on observations (a, b): does a − b tend to be < 0 (``less``), > 0, or ≠ 0?

    ``equivalence_margin`` (units of a − b): the claimed effect size; a TOST showing |shift| < margin refutes.
    """
    if test not in ("wilcoxon", "sign", "ttest"):
        raise ValueError(f"paired test must be 'wilcoxon', 'sign' or 'ttest', got {test!r}")
    _check(alternative, alpha)
    return TestSpec("paired", test, alternative, float(alpha), "significant", margin=_check_margin(equivalence_margin))


def two_sample(test: str = "mannwhitney", *, alternative: str = "less", alpha: float = 0.01,
               equivalence_margin: float | None = None) -> TestSpec:
    """Two independent samples (the a's and the b's of the observations): is A stochastically < B?"""
    if test != "mannwhitney":
        raise ValueError(f"two-sample test must be 'mannwhitney', got {test!r}")
    _check(alternative, alpha)
    return TestSpec("two_sample", test, alternative, float(alpha), "significant",
                    margin=_check_margin(equivalence_margin))


def proportion(p: float, *, alternative: str = "two-sided", alpha: float = 0.01, holds_when: str | None = None,
               equivalence_margin: float | None = None, within: float | None = None) -> TestSpec:
    """Exact binomial test of P[observation is True] against p (observations are booleans).

    ``within=m``: the claim is P[True] = p ± m (exact TOST).  Otherwise the claim is P[True] {<, >, ≠} p
    (``holds_when="significant"``, the default for a one-sided alternative), optionally with an
    ``equivalence_margin``.  A two-sided spec without ``within`` or ``holds_when`` is the deprecated
    "consistent with p" form.
    """
    _check(alternative, alpha)
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p!r}")
    if within is not None:
        m = _check_margin(within, "within")
        if alternative != "two-sided" or holds_when not in (None, "equivalent") or equivalence_margin is not None:
            raise ValueError("proportion(p, within=m) states P[True] = p ± m; give no alternative, holds_when or "
                             "equivalence_margin with it")
        if not (p - m > 0 and p + m < 1):
            raise ValueError(f"proportion(p, within=m): need 0 < p − m and p + m < 1, got p = {p!r}, m = {m!r}")
        return TestSpec("proportion", "binomial", "two-sided", float(alpha), "equivalent", p0=float(p), margin=m)
    if holds_when is None:
        holds_when = "consistent" if alternative == "two-sided" else "significant"
    if holds_when not in ("significant", "consistent"):
        raise ValueError(f"holds_when must be 'significant' or 'consistent' (deprecated), got {holds_when!r}; "
                         "for 'P[True] = p' use proportion(p, within=margin)")
    if holds_when == "consistent" and (alternative != "two-sided" or equivalence_margin is not None):
        raise ValueError("holds_when='consistent' (deprecated) takes a two-sided alternative and no margin; "
                         "use proportion(p, within=margin)")
    margin = _check_margin(equivalence_margin)
    if margin is not None and not (p - margin > 0 and p + margin < 1):
        raise ValueError(f"equivalence_margin: need 0 < p − margin and p + margin < 1, got p = {p!r}, "
                         f"margin = {margin!r}")
    return TestSpec("proportion", "binomial", alternative, float(alpha), holds_when, p0=float(p), margin=margin)


# ------------------------------------------------------------------------------------------------
# p-values
# ------------------------------------------------------------------------------------------------
def _summary(x: np.ndarray) -> dict[str, float]:
    return {"n": int(x.size), "mean": float(np.mean(x)), "median": float(np.median(x)),
            "min": float(np.min(x)), "max": float(np.max(x))}


def _direction_ok(alternative: str, d: float) -> bool:
    return {"less": d < 0, "greater": d > 0, "two-sided": d != 0}[alternative]


def _shift_p(test: str, a: np.ndarray, b: np.ndarray, alternative: str, shift: float = 0.0) -> tuple[float, float]:
    """(statistic, p-value) for H₁: location of (a − b) − shift {<, >, ≠} 0 (paired tests on the differences;
    Mann–Whitney on a − shift against b)."""
    from scipy import stats as ss

    if test == "mannwhitney":
        r = ss.mannwhitneyu(a - shift, b, alternative=alternative)
        return float(r.statistic), float(r.pvalue)
    d = a - b - shift
    if test == "wilcoxon":
        nz = d[d != 0]
        if nz.size == 0:
            return 0.0, 1.0
        if _EXACT_TIES_MAX_N >= nz.size > np.unique(np.abs(nz)).size:  # tied |d|: scipy's permutation path
            return _signed_rank_tied(nz, alternative)
        r = ss.wilcoxon(nz, alternative=alternative)
        return float(r.statistic), float(r.pvalue)
    if test == "sign":
        n_lt, n_gt = int((d < 0).sum()), int((d > 0).sum())
        n = n_lt + n_gt
        if n == 0:
            return float(n_lt), 1.0
        # H₁ "less": P[d < 0] > ½, successes = negative differences
        k = n_gt if alternative == "greater" else n_lt
        alt = "two-sided" if alternative == "two-sided" else "greater"
        return float(n_lt), float(ss.binomtest(k, n, 0.5, alternative=alt).pvalue)
    # ttest
    if np.all(d == d[0]):
        p = 0.0 if _direction_ok(alternative, float(d[0])) else 1.0
        return (math.copysign(math.inf, d[0]) if d[0] != 0 else 0.0), p
    r = ss.ttest_1samp(d, 0.0, alternative=alternative)
    return float(r.statistic), float(r.pvalue)


#: Up to this many non-zero differences with tied |d|, the signed-rank p-value comes from the exact conditional
#: null distribution (:func:`_signed_rank_tied`, O(n³) float operations: ~0.1 s at n = 200).
_EXACT_TIES_MAX_N = 200


def _signed_rank_tied(nz: np.ndarray, alternative: str) -> tuple[float, float]:
    """Wilcoxon signed-rank test of non-zero differences with tied |d|, by the exact null distribution of
    R⁺ = Σ_{d_i > 0} rank(|d_i|) (midranks) given the ranks: under H₀ every sign pattern is equally likely, so R⁺ is
    a sum of independent r_i·Bernoulli(½).  The p-value of scipy's permutation test over all 2ⁿ sign flips
    (what ``scipy.stats.wilcoxon`` runs for n ≤ 13 with ties, 0.6 s per call at n = 12, most of the Neyshabur
    claims' time), computed by convolution in milliseconds, and exact also where scipy falls back to the normal
    approximation (n > 13 with ties).  Midranks are multiples of ½, so 2R⁺ is an integer and ties of the
    statistic are exact.  Returns scipy's statistic (R⁺, or min(R⁺, R⁻) two-sided) and the p-value."""
    from scipy.stats import rankdata

    twice = np.rint(2 * rankdata(np.abs(nz))).astype(np.int64)
    total = int(twice.sum())
    obs = int(twice[nz > 0].sum())
    dist = np.zeros(total + 1)
    dist[0] = 1.0
    for r in twice.tolist():  # P[2R⁺ = k] after each rank's sign: (P[k] + P[k − r]) / 2, exact dyadic numbers
        shifted = np.zeros_like(dist)
        shifted[r:] = dist[: total + 1 - r]
        dist = 0.5 * (dist + shifted)
    p_le, p_ge = float(dist[: obs + 1].sum()), float(dist[obs:].sum())
    if alternative == "less":
        return obs / 2, min(1.0, p_le)
    if alternative == "greater":
        return obs / 2, min(1.0, p_ge)
    return min(obs, total - obs) / 2, min(1.0, 2 * min(p_le, p_ge))


def _binom_p(k: int, n: int, p: float, alternative: str) -> float:
    from scipy import stats as ss

    return float(ss.binomtest(k, n, p, alternative=alternative).pvalue)


# ------------------------------------------------------------------------------------------------
# sensitivity: smallest detectable effect, power
# ------------------------------------------------------------------------------------------------
def _binom_mde(n: int, p0: float, alpha: float, target: float = TARGET_POWER) -> float | None:
    """Exact: the smallest q ≥ p0 at which the one-sided exact binomial test of H₀: P = p0 vs P > p0 at level α
    rejects with probability ≥ target, from n trials; None when no count of n can be significant."""
    from scipy import stats as ss

    if n < 1:
        return None
    sf = ss.binom.sf(np.arange(n + 1) - 1, n, p0)          # sf[k] = P[Bin(n, p0) ≥ k]
    ok = np.flatnonzero(sf <= alpha)
    if ok.size == 0:
        return None
    kc = int(ok[0])
    lo, hi = p0, 1.0
    for _ in range(60):  # power P[Bin(n, q) ≥ kc] increases with q: bisection to ~1e-18
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if ss.binom.sf(kc - 1, n, mid) >= target else (mid, hi)
    return hi


def _binom_tost_region(n: int, lo: float, hi: float, alpha: float) -> np.ndarray:
    """Counts k for which the exact TOST rejects both P ≤ lo and P ≥ hi at level α."""
    from scipy import stats as ss

    k = np.arange(n + 1)
    return k[(ss.binom.sf(k - 1, n, lo) < alpha) & (ss.binom.cdf(k, n, hi) < alpha)]


def _binom_tost_power(n: int, p0: float, m: float, alpha: float) -> float:
    """Exact power of the binomial TOST for P ∈ (p0 − m, p0 + m) when P = p0."""
    from scipy import stats as ss

    region = _binom_tost_region(n, p0 - m, p0 + m, alpha)
    return float(ss.binom.pmf(region, n, p0).sum()) if region.size else 0.0


def _binom_tost_margin(n: int, p0: float, alpha: float, target: float = TARGET_POWER) -> float | None:
    """The smallest margin m at which the exact binomial TOST has power ≥ target at P = p0 (None: none below
    min(p0, 1 − p0)).  Power is not exactly monotone in m (discreteness); bisection finds one crossing."""
    top = min(p0, 1 - p0) * (1 - 1e-9)
    if _binom_tost_power(n, p0, top, alpha) < target:
        return None
    lo, hi = 0.0, top
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if _binom_tost_power(n, p0, mid, alpha) >= target else (mid, hi)
    return hi


def _z(q: float) -> float:
    from scipy import stats as ss

    return float(ss.norm.ppf(q))


def _t_mde(n: int, alpha: float, target: float = TARGET_POWER) -> float | None:
    """Smallest standardized mean difference d_z detectable by the one-sided one-sample t-test at level α with
    power ≥ target, exactly from the noncentral t distribution (assumes normal differences)."""
    from scipy import stats as ss

    if n < 2:
        return None
    crit = ss.t.ppf(1 - alpha, n - 1)
    lo, hi = 0.0, 1.0
    while ss.nct.sf(crit, n - 1, hi * math.sqrt(n)) < target:
        hi *= 2
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if ss.nct.sf(crit, n - 1, mid * math.sqrt(n)) >= target else (mid, hi)
    return hi


# asymptotic relative efficiency against the t-test under normal data: sign 2/π, rank tests 3/π
_ARE = {"sign": 2 / math.pi, "wilcoxon": 3 / math.pi, "mannwhitney": 3 / math.pi, "ttest": 1.0}


def _power(spec: TestSpec, out: dict[str, Any], a: np.ndarray | None, b: np.ndarray | None) -> dict[str, Any]:
    """The test's sensitivity at this n and α (see the module docstring for how each figure is computed)."""
    level = spec.alpha / 2 if spec.alternative == "two-sided" else spec.alpha
    side = "two-sided, α/2 per side" if spec.alternative == "two-sided" else "one-sided"
    res: dict[str, Any] = {"target_power": TARGET_POWER, "mde": None, "mde_scale": None, "method": None,
                           "tost_power_at_zero": None, "tost_method": None}
    n = out["n"]
    if spec.family == "proportion":
        if spec.holds_when == "equivalent":
            res["tost_power_at_zero"] = _binom_tost_power(n, spec.p0, spec.margin, spec.alpha)
            res["tost_method"] = f"exact binomial distribution at P = {spec.p0:g}"
            res["mde"] = _binom_tost_margin(n, spec.p0, spec.alpha)
            res["mde_scale"] = f"margin m for which P ∈ ({spec.p0:g} ± m) is shown with power {TARGET_POWER:g}"
            res["method"] = "exact binomial distribution (TOST at level α per side)"
            return res
        up = _binom_mde(n, spec.p0, level)
        down = _binom_mde(n, 1 - spec.p0, level)
        dist = [x - p for x, p in ((up, spec.p0), (down, 1 - spec.p0)) if x is not None]
        if spec.alternative == "greater":
            dist = [up - spec.p0] if up is not None else []
        elif spec.alternative == "less":
            dist = [down - (1 - spec.p0)] if down is not None else []
        res["mde"] = max(dist) if dist else None
        res["mde_scale"] = f"|P[True] − {spec.p0:g}|"
        res["method"] = f"exact binomial distribution ({side})"
        if spec.margin is not None:
            res["tost_power_at_zero"] = _binom_tost_power(n, spec.p0, spec.margin, spec.alpha)
            res["tost_method"] = f"exact binomial distribution at P = {spec.p0:g}"
        return res
    assert a is not None and b is not None
    d = a - b
    if spec.test == "sign":
        n_eff = int((d != 0).sum())
        q = _binom_mde(n_eff, 0.5, level)
        res["mde"] = q
        res["mde_scale"] = f"share of the {n_eff} non-tied pairs going the claimed way (½ under H₀)"
        res["method"] = f"exact binomial distribution ({side})"
    elif spec.test == "wilcoxon":
        n_eff = int((d != 0).sum())
        raw = 2 * (_z(1 - level) + _z(TARGET_POWER)) / math.sqrt(3 * n_eff) if n_eff else None
        res["mde"] = min(1.0, raw) if raw is not None else None
        res["mde_scale"] = "|matched-pairs rank-biserial r|"
        res["method"] = (f"normal approximation (Noether 1987: r ≈ 2·P[dᵢ + dⱼ > 0] − 1, n = {n_eff} non-zero "
                         f"differences; {side})")
        if raw is not None and raw >= 1:
            res["method"] += "; it reaches |r| = 1 at this n: only near-unanimous samples are significant"
    elif spec.test == "ttest":
        dz = _t_mde(n, level)
        res["mde"] = dz
        res["mde_scale"] = "|Cohen's d_z| (mean difference / sd)"
        res["method"] = f"noncentral t distribution (exact for normal differences; {side})"
    else:  # mannwhitney
        res["mde"] = min(0.5, (_z(1 - level) + _z(TARGET_POWER)) / math.sqrt(6 * n))
        res["mde_scale"] = "|P(a > b) + ½P(a = b) − ½|"
        res["method"] = f"normal approximation (Noether 1987, equal group sizes n = {n}; {side})"
    if spec.margin is not None:
        sd = float(np.std(d, ddof=1)) if spec.family == "paired" else \
            float(math.sqrt((np.var(a, ddof=1) + np.var(b, ddof=1)) / 2))
        n_eff = n if spec.family == "paired" else n / 2
        se = sd / math.sqrt(n_eff * _ARE[spec.test]) if sd > 0 else 0.0
        if se == 0:
            res["tost_power_at_zero"] = 1.0
        else:
            res["tost_power_at_zero"] = max(0.0, 2 * _phi(spec.margin / se - _z(1 - spec.alpha)) - 1)
        res["tost_method"] = ("normal approximation with the sample sd of the data and the test's asymptotic "
                              f"relative efficiency {_ARE[spec.test]:.3g} against the t-test (an estimate)")
    return res


def _phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


# ------------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------------
def evaluate(spec: TestSpec, observations: list[Any]) -> dict[str, Any]:
    """Run the test on the observations and decide the claim (``outcome``).  Raises ValueError on bad data."""
    from scipy import stats as ss

    out: dict[str, Any] = {"spec": spec.describe(), "n": len(observations), "p_opposite": None,
                           "equivalence": None, "deprecated": spec.deprecated}
    a = b = None
    if spec.family == "proportion":
        obs = np.asarray([bool(o) for o in observations])
        k, n = int(obs.sum()), int(obs.size)
        ci = ss.binomtest(k, n, spec.p0).proportion_ci(confidence_level=1 - spec.alpha)
        out.update(statistic=float(k), statistic_name="successes k",
                   effect={"name": "observed proportion k/n", "value": k / n},
                   summary={"k": k, "n": n, "ci_low": float(ci.low), "ci_high": float(ci.high),
                            "ci_level": 1 - spec.alpha})
        if spec.holds_when == "equivalent":
            lo, hi = spec.p0 - spec.margin, spec.p0 + spec.margin
            p_lo, p_hi = _binom_p(k, n, lo, "greater"), _binom_p(k, n, hi, "less")
            out["equivalence"] = {"margin": spec.margin, "p_lower": p_lo, "p_upper": p_hi, "p_value": max(p_lo, p_hi)}
            out["p_value"] = max(p_lo, p_hi)
            # outside: P > p0 + m or P < p0 − m, each exact one-sided at α/2 (size ≤ α over the null interval)
            out["outside"] = {"p_above": _binom_p(k, n, hi, "greater"), "p_below": _binom_p(k, n, lo, "less")}
        else:
            out["p_value"] = _binom_p(k, n, spec.p0, spec.alternative)
            if spec.alternative in _FLIP:
                out["p_opposite"] = _binom_p(k, n, spec.p0, _FLIP[spec.alternative])
            if spec.margin is not None:
                p_lo = _binom_p(k, n, spec.p0 - spec.margin, "greater")
                p_hi = _binom_p(k, n, spec.p0 + spec.margin, "less")
                out["equivalence"] = {"margin": spec.margin, "p_lower": p_lo, "p_upper": p_hi,
                                      "p_value": max(p_lo, p_hi)}
    else:
        try:
            pairs = np.asarray([(float(x), float(y)) for x, y in observations], dtype=float)
        except (TypeError, ValueError):
            raise ValueError("observations must be pairs (a, b) of numbers for a paired/two-sample test") from None
        if pairs.ndim != 2 or pairs.shape[0] < 2:
            raise ValueError("a paired/two-sample test needs at least 2 observations (a, b)")
        bad = np.flatnonzero(~np.isfinite(pairs).all(axis=1))
        if bad.size:
            a, b = pairs[bad[0]]
            raise ValueError(f"{bad.size} of {len(pairs)} observations contain NaN or ±inf; the first is number "
                             f"{bad[0]}, (a, b) = ({float(a)!r}, {float(b)!r}) (a simulator that did not reach what "
                             "it measures, e.g. a level beyond t_max, gives NaN: check its status, or leave such "
                             "problems out)")
        a, b = pairs[:, 0], pairs[:, 1]
        d = a - b
        summary = {"a": _summary(a), "b": _summary(b), "diff": _summary(d),
                   "a_lt_b": int((d < 0).sum()), "a_eq_b": int((d == 0).sum()), "a_gt_b": int((d > 0).sum())}
        out["summary"] = summary
        out["pairs"] = [[float(x), float(y)] for x, y in pairs]
        stat, p = _shift_p(spec.test, a, b, spec.alternative)
        out["p_value"] = p
        if spec.alternative in _FLIP:
            out["p_opposite"] = _shift_p(spec.test, a, b, _FLIP[spec.alternative])[1]
        if spec.margin is not None:
            p_lo = _shift_p(spec.test, a, b, "greater", -spec.margin)[1]   # H₁: shift > −m
            p_hi = _shift_p(spec.test, a, b, "less", spec.margin)[1]       # H₁: shift < +m
            out["equivalence"] = {"margin": spec.margin, "p_lower": p_lo, "p_upper": p_hi, "p_value": max(p_lo, p_hi)}
        if spec.test == "wilcoxon":
            nz = d[d != 0]
            ranks = ss.rankdata(np.abs(nz)) if nz.size else np.array([])
            w_plus, w_minus = float(ranks[nz > 0].sum()), float(ranks[nz < 0].sum())
            rbc = (w_plus - w_minus) / (w_plus + w_minus) if nz.size else 0.0
            out.update(statistic=stat, statistic_name="W",
                       effect={"name": "matched-pairs rank-biserial r (positive: a > b)", "value": rbc})
        elif spec.test == "sign":
            n_lt, n_gt = summary["a_lt_b"], summary["a_gt_b"]
            out.update(statistic=float(n_lt), statistic_name="#(a < b)",
                       effect={"name": "share of non-tied pairs with a < b",
                               "value": n_lt / (n_lt + n_gt) if n_lt + n_gt else math.nan})
        elif spec.test == "ttest":
            sd = float(np.std(d, ddof=1))
            out.update(statistic=stat, statistic_name="t",
                       effect={"name": "Cohen's d_z (mean difference / sd)",
                               "value": float(np.mean(d)) / sd if sd and math.isfinite(sd) else math.nan})
        else:  # mannwhitney
            out.update(statistic=stat, statistic_name="U",
                       effect={"name": "common-language effect P(a > b) + ½P(a = b)",
                               "value": stat / (a.size * b.size)})
    out["significant"] = bool(out["p_value"] < spec.alpha)
    out["outcome"], out["refuted_by"] = _decide(spec, out)
    out["holds"] = out["outcome"] == "holds"
    out["power"] = _power(spec, out, a, b)
    out["sentence"] = _sentence(spec, out)
    return out


def _decide(spec: TestSpec, out: dict[str, Any]) -> tuple[str, str | None]:
    """(outcome, reason for a refutation) by the three-outcome rule of the module docstring."""
    alpha = spec.alpha
    eq = out["equivalence"]
    equivalent = eq is not None and eq["p_value"] < alpha
    if spec.holds_when == "equivalent":
        if equivalent:
            return "holds", None
        o = out["outside"]
        if min(o["p_above"], o["p_below"]) < alpha / 2:
            return "refuted", "outside"
        return "inconclusive", None
    if spec.holds_when == "consistent":  # deprecated
        return ("refuted", "inconsistent") if out["p_value"] < alpha else ("holds", None)
    if out["p_value"] < alpha:
        # significant, but shown smaller than the claimed size: the claim (about an effect ≥ margin) is refuted
        return ("refuted", "equivalence") if equivalent else ("holds", None)
    if out["p_opposite"] is not None and out["p_opposite"] < alpha:
        return "refuted", "opposite"
    if equivalent:
        return "refuted", "equivalence"
    return "inconclusive", None


def _p(x: float) -> str:
    return f"{x:.3g}"


def _sentence(spec: TestSpec, out: dict[str, Any]) -> str:
    a = spec.alpha
    p = out["p_value"]
    if spec.family == "proportion":
        s = out["summary"]
        head = f"{spec.title}: {s['k']} of {s['n']} observations true (proportion {s['k'] / s['n']:.3f})"
        if spec.holds_when == "equivalent":
            claim = f"claim P ∈ ({spec.p0:g} ± {spec.margin:g})"
        else:
            alt = {"two-sided": "≠", "less": "<", "greater": ">"}[spec.alternative]
            claim = f"H₀: P = {spec.p0:g} vs H₁: P {alt} {spec.p0:g}, p-value {_p(p)}"
    else:
        alt = {"less": "a < b", "greater": "a > b", "two-sided": "a ≠ b"}[spec.alternative]
        med = out["summary"]["diff"]["median"]
        head = (f"{spec.title}, n = {out['n']}, H₁: {alt}: {out['statistic_name']} = {out['statistic']:.4g}, "
                f"p-value {_p(p)}; median(a − b) = {med:.3g}, {out['effect']['name']} = {out['effect']['value']:.3g}")
        claim = ""
    eq = out["equivalence"]
    pw = out["power"]
    outcome, why = out["outcome"], out["refuted_by"]
    if spec.holds_when == "equivalent":
        tost = f"exact TOST p-value {_p(eq['p_value'])}"
        o = out["outside"]
        tail = {
            "holds": f"{tost} < α = {a:g}: P shown within the margin (claim holds)",
            "refuted": (f"P shown outside [{spec.p0 - spec.margin:g}, {spec.p0 + spec.margin:g}] (exact one-sided "
                        f"p-value {_p(min(o['p_above'], o['p_below']))} < α/2 = {a / 2:g}; claim refuted)"),
            "inconclusive": (f"{tost} ≥ α = {a:g} and P not shown outside the margin: inconclusive (not shown "
                             "equal is not refuted)"),
        }[outcome]
        power = (f" Power of this equivalence test at P = {spec.p0:g}: {pw['tost_power_at_zero']:.2f} "
                 f"({pw['tost_method']});")
        power += (f" margin needed for power {TARGET_POWER:g}: {pw['mde']:.3g}." if pw["mde"] is not None else
                  f" no margin below {min(spec.p0, 1 - spec.p0):g} reaches power {TARGET_POWER:g} at this n.")
        return f"{head}; {claim}: {tail}.{power}"
    if spec.holds_when == "consistent":
        tail = (f"p-value {_p(p)} ≥ α = {a:g}: data consistent with H₀ (claim holds; DEPRECATED: {spec.deprecated})"
                if outcome == "holds" else
                f"p-value {_p(p)} < α = {a:g}: data significantly inconsistent with H₀ (claim refuted)")
        return f"{head}; {claim}: {tail}."
    opp = f"opposite direction p-value {_p(out['p_opposite'])}" if out["p_opposite"] is not None else ""
    tost = (f"equivalence within ±{eq['margin']:g} (TOST) p-value {_p(eq['p_value'])}" if eq is not None else "")
    if outcome == "holds":
        tail = f"significant in the stated direction (p-value {_p(p)} < α = {a:g}): claim holds"
    elif why == "opposite":
        tail = f"significant in the opposite direction ({opp} < α = {a:g}): claim refuted"
    elif why == "equivalence":
        extra = " although the effect is significant," if out["p_value"] < a else ""
        tail = f"{extra} {tost} < α = {a:g}: no effect of the claimed size, claim refuted".lstrip()
    else:
        parts = [f"p-value {_p(p)} ≥ α = {a:g}"] + ([f"{opp} ≥ α"] if opp else []) + ([f"{tost} ≥ α"] if tost else [])
        tail = ("significant in neither direction (" + "; ".join(parts) + "): inconclusive — not significant is "
                "not refuted" + ("" if eq is not None else "; state an equivalence_margin to be able to refute it"))
    mde = (f"smallest effect detectable with power {TARGET_POWER:g} at this n and α: {pw['mde_scale']} ≥ "
           f"{pw['mde']:.3g} ({pw['method']})" if pw["mde"] is not None else
           f"no outcome at this n can be significant at α = {a:g} ({pw['method']})")
    if pw["tost_power_at_zero"] is not None:
        mde += (f"; power of the equivalence test at zero effect ≈ {pw['tost_power_at_zero']:.2f} "
                f"({pw['tost_method']})")
    sep = "; " if claim else ""
    return f"{head}{sep}{claim} — {tail}. Sensitivity: {mde}."
