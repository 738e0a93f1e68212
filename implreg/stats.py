"""Named statistical tests for empirical claims ("over drawn problems, A < B"), on scipy.stats.

A spec says which test, in which direction, at which level, and when the claim *holds*:

- ``paired("wilcoxon" | "sign" | "ttest", alternative="less")`` — observations are pairs (a, b) from the
  same problem; tests the differences a − b (``less``: a tends to be smaller than b).  Holds when the test
  rejects "no difference" in favour of the alternative at level ``alpha``.
- ``two_sample("mannwhitney", alternative="less")`` — observations (a, b), the a's and b's taken as two
  independent samples.  Holds when significant.
- ``proportion(p, alternative="two-sided")`` — observations are booleans; exact binomial test of
  P[True] = p.  For a two-sided test the claim holds when the data are *consistent* with p (not
  rejected at ``alpha``); for a one-sided one (``greater``: P[True] > p) when significant.

Every result records the test name, n, statistic, p-value, level, an effect size with its name, and a
sample summary, for the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["TestSpec", "evaluate", "paired", "proportion", "two_sample"]

_ALTERNATIVES = ("less", "greater", "two-sided")


@dataclass(frozen=True)
class TestSpec:
    """A named test, its direction and level, and when the claim holds."""

    __test__ = False  # not a pytest test class

    family: str          # "paired" | "two_sample" | "proportion"
    test: str            # "wilcoxon" | "sign" | "ttest" | "mannwhitney" | "binomial"
    alternative: str
    alpha: float
    holds_when: str      # "significant" | "consistent"
    p0: float | None = None

    @property
    def title(self) -> str:
        return {
            "wilcoxon": "Wilcoxon signed-rank test (paired)",
            "sign": "sign test (paired, exact binomial on signs)",
            "ttest": "paired t-test",
            "mannwhitney": "Mann–Whitney U test (two independent samples)",
            "binomial": "exact binomial test",
        }[self.test]

    def describe(self) -> dict[str, Any]:
        return {"family": self.family, "test": self.test, "title": self.title, "alternative": self.alternative,
                "alpha": self.alpha, "holds_when": self.holds_when, "p0": self.p0}


def _check(alternative: str, alpha: float) -> None:
    if alternative not in _ALTERNATIVES:
        raise ValueError(f"alternative must be one of {_ALTERNATIVES}, got {alternative!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def paired(test: str = "wilcoxon", *, alternative: str = "less", alpha: float = 0.01) -> TestSpec:
    """Paired test on observations (a, b): does a − b tend to be < 0 (``less``), > 0, or ≠ 0?"""
    if test not in ("wilcoxon", "sign", "ttest"):
        raise ValueError(f"paired test must be 'wilcoxon', 'sign' or 'ttest', got {test!r}")
    _check(alternative, alpha)
    return TestSpec("paired", test, alternative, float(alpha), "significant")


def two_sample(test: str = "mannwhitney", *, alternative: str = "less", alpha: float = 0.01) -> TestSpec:
    """Two independent samples (the a's and the b's of the observations): is A stochastically < B?"""
    if test != "mannwhitney":
        raise ValueError(f"two-sample test must be 'mannwhitney', got {test!r}")
    _check(alternative, alpha)
    return TestSpec("two_sample", test, alternative, float(alpha), "significant")


def proportion(p: float, *, alternative: str = "two-sided", alpha: float = 0.01,
               holds_when: str | None = None) -> TestSpec:
    """Exact binomial test of P[observation is True] = p (observations are booleans)."""
    _check(alternative, alpha)
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p!r}")
    if holds_when is None:
        holds_when = "consistent" if alternative == "two-sided" else "significant"
    if holds_when not in ("significant", "consistent"):
        raise ValueError(f"holds_when must be 'significant' or 'consistent', got {holds_when!r}")
    return TestSpec("proportion", "binomial", alternative, float(alpha), holds_when, p0=float(p))


def _summary(x: np.ndarray) -> dict[str, float]:
    return {"n": int(x.size), "mean": float(np.mean(x)), "median": float(np.median(x)),
            "min": float(np.min(x)), "max": float(np.max(x))}


def evaluate(spec: TestSpec, observations: list[Any]) -> dict[str, Any]:
    """Run the test on the observations and say whether the claim holds.  Raises ValueError on bad data."""
    from scipy import stats as ss

    out: dict[str, Any] = {"spec": spec.describe(), "n": len(observations)}
    if spec.family == "proportion":
        obs = np.asarray([bool(o) for o in observations])
        k, n = int(obs.sum()), int(obs.size)
        res = ss.binomtest(k, n, spec.p0, alternative=spec.alternative)
        ci = res.proportion_ci(confidence_level=1 - spec.alpha)
        out.update(statistic=float(k), statistic_name="successes k", p_value=float(res.pvalue),
                   effect={"name": "observed proportion k/n", "value": k / n},
                   summary={"k": k, "n": n, "ci_low": float(ci.low), "ci_high": float(ci.high),
                            "ci_level": 1 - spec.alpha})
    else:
        try:
            pairs = np.asarray([(float(a), float(b)) for a, b in observations], dtype=float)
        except (TypeError, ValueError):
            raise ValueError("observations must be pairs (a, b) of numbers for a paired/two-sample test") from None
        if not np.isfinite(pairs).all():
            raise ValueError("observations contain NaN or ±inf")
        a, b = pairs[:, 0], pairs[:, 1]
        d = a - b
        summary = {"a": _summary(a), "b": _summary(b), "diff": _summary(d),
                   "a_lt_b": int((d < 0).sum()), "a_eq_b": int((d == 0).sum()), "a_gt_b": int((d > 0).sum())}
        out["summary"] = summary
        out["pairs"] = [[float(x), float(y)] for x, y in pairs]
        if spec.test == "wilcoxon":
            nz = d[d != 0]
            if nz.size == 0:
                stat, p = 0.0, 1.0
            else:
                r = ss.wilcoxon(nz, alternative=spec.alternative)
                stat, p = float(r.statistic), float(r.pvalue)
            ranks = ss.rankdata(np.abs(nz)) if nz.size else np.array([])
            w_plus, w_minus = float(ranks[nz > 0].sum()), float(ranks[nz < 0].sum())
            rbc = (w_plus - w_minus) / (w_plus + w_minus) if nz.size else 0.0
            out.update(statistic=stat, statistic_name="W", p_value=p,
                       effect={"name": "matched-pairs rank-biserial r (positive: a > b)", "value": rbc})
        elif spec.test == "sign":
            n_lt, n_gt = summary["a_lt_b"], summary["a_gt_b"]
            n = n_lt + n_gt
            # alternative "less" (a < b): successes = pairs with a < b, H1: P[a < b] > ½
            flip = {"less": "greater", "greater": "less", "two-sided": "two-sided"}[spec.alternative]
            p = 1.0 if n == 0 else float(ss.binomtest(n_lt, n, 0.5, alternative=flip).pvalue)
            out.update(statistic=float(n_lt), statistic_name="#(a < b)", p_value=p,
                       effect={"name": "share of non-tied pairs with a < b", "value": n_lt / n if n else math.nan})
        elif spec.test == "ttest":
            if np.all(d == d[0]):
                p = 0.0 if _direction_ok(spec.alternative, float(d[0])) and d[0] != 0 else 1.0
                stat = math.copysign(math.inf, d[0]) if d[0] != 0 else 0.0
            else:
                r = ss.ttest_1samp(d, 0.0, alternative=spec.alternative)
                stat, p = float(r.statistic), float(r.pvalue)
            sd = float(np.std(d, ddof=1)) if d.size > 1 else math.nan
            out.update(statistic=stat, statistic_name="t", p_value=p,
                       effect={"name": "Cohen's d_z (mean difference / sd)",
                               "value": float(np.mean(d)) / sd if sd and math.isfinite(sd) else math.nan})
        else:  # mannwhitney
            r = ss.mannwhitneyu(a, b, alternative=spec.alternative)
            u = float(r.statistic)
            out.update(statistic=u, statistic_name="U", p_value=float(r.pvalue),
                       effect={"name": "common-language effect P(a > b) + ½P(a = b)",
                               "value": u / (a.size * b.size)})
    p = out["p_value"]
    significant = p < spec.alpha
    out["significant"] = bool(significant)
    out["holds"] = bool(significant if spec.holds_when == "significant" else not significant)
    out["sentence"] = _sentence(spec, out)
    return out


def _direction_ok(alternative: str, d: float) -> bool:
    return {"less": d < 0, "greater": d > 0, "two-sided": d != 0}[alternative]


def _sentence(spec: TestSpec, out: dict[str, Any]) -> str:
    p, a = out["p_value"], spec.alpha
    rel = "<" if p < a else "≥"
    if spec.family == "proportion":
        s = out["summary"]
        alt = {"two-sided": "≠", "less": "<", "greater": ">"}[spec.alternative]
        base = (f"{spec.title}: {s['k']} of {s['n']} observations true (proportion {s['k'] / s['n']:.3f}); "
                f"H₀: p = {spec.p0:g} vs H₁: p {alt} {spec.p0:g}, p-value {p:.3g} {rel} α = {a:g}")
    else:
        alt = {"less": "a < b", "greater": "a > b", "two-sided": "a ≠ b"}[spec.alternative]
        med = out["summary"]["diff"]["median"]
        base = (f"{spec.title}, n = {out['n']}, H₁: {alt}: {out['statistic_name']} = {out['statistic']:.4g}, "
                f"p-value {p:.3g} {rel} α = {a:g}; median(a − b) = {med:.3g}, "
                f"{out['effect']['name']} = {out['effect']['value']:.3g}")
    if spec.holds_when == "consistent":
        tail = "data consistent with H₀ (claim holds)" if out["holds"] else "H₀ rejected (claim refuted)"
    else:
        tail = "significant (claim holds)" if out["holds"] else "not significant (claim refuted)"
    return f"{base} — {tail}."
