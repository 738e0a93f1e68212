"""Render results (the results.json document) into one self-contained HTML file.

No network, no CDN, no web fonts, no JavaScript needed for content (a ten-line inline script only adds
column sorting).  jinja2 with autoescaping escapes every piece of user text; math is MathML
(``report.mathml``) and plots are inline SVG (``report.plots``), both built from escaped parts.

Wall-clock values are wrapped in ``<span class="timing">…</span>`` and appear nowhere else, so removing
those spans leaves identical bytes for two runs with the same seed (``strip_timing_html``).
"""

from __future__ import annotations

import json
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from implreg.harness.report.mathml import math_html, text_with_math
from implreg.harness.report.plots import svg_plot
from implreg.harness.results import atomic_write_text, dumps

__all__ = ["render_html", "strip_timing_html", "write_report"]

_TIMING = re.compile(r'<span class="timing"[^>]*>.*?</span>', re.S)

_MISMATCH = {
    ("holds", "refuted"): "This claim was expected to hold, but a counterexample was found. Either the claim as "
                          "encoded (its hypotheses, strategies or tolerances) or the claim itself is wrong: "
                          "inspect the shrunk example below.",
    ("holds", "inconclusive"): "This claim was expected to hold, but the run could not decide it. Inconclusive "
                               "is never counted as a pass: 'Why inconclusive' below names the comparison that "
                               "stayed undecided and what to change (a tolerance, a margin, a more accurate "
                               "quantity), or the strategy, if too few valid instances were drawn.",
    ("holds", "error"): "This claim was expected to hold, but its check crashed, so nothing was verified. "
                        "Fix the check (see the error below).",
    ("refuted", "holds"): "This is a negative control: it states something known to be false, and the harness "
                          "was expected to find a counterexample. None was found, which means the search or "
                          "the certification is too weak to detect this falsehood.",
    ("refuted", "inconclusive"): "This negative control was expected to be refuted, but the run could not "
                                 "decide it: no counterexample was certified.",
    ("refuted", "error"): "This negative control was expected to be refuted, but its check crashed, so no "
                          "counterexample was produced. Fix the check (see the error below).",
}

_TABLE_PREVIEW = 12  # evidence tables longer than this show their first rows, the rest under <details>

_VERDICT_WORDS = {
    "holds": "holds",
    "refuted": "refuted",
    "inconclusive": "inconclusive",
    "error": "error",
}


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}".replace(",", "\u2009")
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            mant, exp = f"{v:.{digits - 1}e}".split("e")
            return f"{mant}×10^{int(exp)}"
        return f"{v:.{digits}g}"
    return str(v)


def _fmt_html(v: Any, digits: int = 3) -> Markup:
    """Like _fmt but with a real superscript for powers of ten."""
    s = _fmt(v, digits)
    if "×10^" in s:
        mant, exp = s.split("×10^")
        return Markup("{}×10<sup>{}</sup>").format(mant, exp.replace("-", "−"))
    return Markup("{}").format(s)


def _anchor(claim_id: str, used: set[str]) -> str:
    base = "c-" + re.sub(r"[^a-z0-9]+", "-", claim_id.lower()).strip("-")
    a, i = base, 2
    while a in used:
        a, i = f"{base}-{i}", i + 1
    used.add(a)
    return a


def _cite(src: dict[str, Any] | None) -> str:
    if not src:
        return "no source given"
    s = src.get("short") or src.get("key")
    if src.get("locator"):
        s += f", {src['locator']}"
    return s


def _claim_view(c: dict[str, Any], used: set[str]) -> dict[str, Any]:
    v = dict(c)
    v["anchor"] = _anchor(c["id"], used)
    src = c.get("source")
    v["cite"] = _cite(src)
    v["reconstructed"] = bool(src) and not src.get("confirmed", True)
    v["statement_html"] = text_with_math(c.get("statement"))
    v["latex_html"] = math_html(c.get("latex"), display=True)
    v["hypotheses_html"] = [text_with_math(h) for h in c.get("hypotheses") or []]
    v["deviation_note"] = None
    if c.get("deviation") and c.get("matches_expect"):
        v["deviation_note"] = ("This claim documents a deviation from the paper, but in this run the verdict "
                               "agrees with the paper: the documented deviation did not reproduce.")
    v["finding_note"] = None
    if c.get("finding"):
        v["finding_note"] = (
            ("The claim catalogue states this claim as holding; the harness refutes it as stated (statement and "
             "hypotheses unchanged). " if c.get("matches_expect") else
             "The claim carries a catalogue finding (refuted as stated), but in this run it was not refuted: "
             "the finding did not reproduce. ")
            + f"Evidence recorded with the claim: {c['finding']}")
    if c.get("matches_expect"):
        v["mismatch"] = None
    elif c.get("deviation_documented"):
        v["mismatch"] = None
        v["deviation_note"] = ("This toy replication disagrees with the paper (the paper reports "
                               f"'{c.get('expect')}'). Explanation recorded with the claim: {c.get('deviation')}")
    elif c.get("problems"):
        v["mismatch"] = ("The claim is malformed, so it was not run and nothing was verified; fix the "
                         "problems listed below.")
    else:
        v["mismatch"] = _MISMATCH.get((c.get("expect"), c.get("verdict")),
                                      f"Expected {c.get('expect')}, got {c.get('verdict')}.")
    ev = c.get("evidence") or {}
    v["plots"] = [Markup(svg_plot(p)) for p in ev.get("series") or []]
    v["table_preview"] = _TABLE_PREVIEW
    v["scalars"] = ev.get("scalars") or []
    v["tables"] = ev.get("tables") or []
    v["notes"] = ev.get("notes") or []
    stats = c.get("statistics")
    v["stats_plot"] = None
    if stats and stats.get("pairs"):
        pairs = stats["pairs"]
        v["stats_plot"] = Markup(svg_plot({
            "name": "sample: b against a (one point per drawn problem; dashed: a = b)",
            "xlabel": "a", "ylabel": "b", "kind": "scatter",
            "lines": [{"group": None, "x": [p[0] for p in pairs], "y": [p[1] for p in pairs]}],
        }, diagonal=True))
    v["warnings"] = c.get("warnings") or []
    v["refutation_view"] = _refutation_view(c)
    v["stats_view"] = _stats_view(stats) if stats else None
    cert = c.get("certification") or {}
    v["basis_text"] = _basis_text(cert.get("basis"))
    estimates = sorted(w for w, b in (cert.get("basis_by_comparison") or {}).items() if b == "estimate")
    if v["basis_text"] and estimates:
        v["basis_text"] += " — on estimates: " + "; ".join(estimates[:8]) + (" …" if len(estimates) > 8 else "")
    v["escalation_count"] = cert.get("escalation_count", 0)
    v["escalation_summary"] = _escalation_summary(cert.get("escalations") or [])
    return v


def _refutation_view(c: dict[str, Any]) -> dict[str, Any] | None:
    """What refuted the claim (or what a control names as its refutation), for the report."""
    named = c.get("refuted_by") or []
    ref = c.get("refutation") or {}
    if not named and not ref:
        return None
    failed = ref.get("failed_check")
    return {
        "named": named,
        "failed": failed,
        "precondition": ref.get("precondition"),
        "matches": ref.get("matches"),
        "verdict": c.get("verdict"),
    }


_REASON_WORDS = {"opposite": "significant in the opposite direction",
                 "equivalence": "an equivalence test (TOST) showed no effect of the claimed size",
                 "outside": "the proportion was shown outside its stated interval",
                 "inconsistent": "the data were significantly inconsistent with H₀ (deprecated form)"}


def _stats_view(s: dict[str, Any]) -> dict[str, Any]:
    spec = s.get("spec") or {}
    holds_when = {
        "significant": "the test is significant in the stated direction (refuted: significant in the opposite "
                       "direction, or shown within the equivalence margin; otherwise inconclusive)",
        "equivalent": "an exact equivalence test (TOST) shows the proportion within the stated margin (refuted: "
                      "shown outside it; otherwise inconclusive)",
        "consistent": "the data are consistent with H₀ (not rejected) — deprecated: not rejecting H₀ is not "
                      "evidence for it",
    }.get(spec.get("holds_when"), spec.get("holds_when"))
    pw = s.get("power") or {}
    return {"holds_when": holds_when, "outcome": s.get("outcome"),
            "reason": _REASON_WORDS.get(s.get("refuted_by")) if s.get("refuted_by") else None,
            "power": pw, "equivalence": s.get("equivalence"), "p_opposite": s.get("p_opposite"),
            "deprecated": s.get("deprecated")}


def _basis_text(basis: Any) -> str | None:
    if not basis:
        return None
    if isinstance(basis, dict):
        rig, est = int(basis.get("rigorous", 0)), int(basis.get("estimate", 0))
        other = {k: v for k, v in basis.items() if k not in ("rigorous", "estimate")}
        if est == 0 and not other:
            text = f"rigorous bounds only ({rig} certified comparison{'s' if rig != 1 else ''})"
        else:
            text = (f"{rig} comparison{'s' if rig != 1 else ''} on rigorous bounds, {est} on estimates "
                    "(integrator error estimates, not proven bounds)")
        if other:
            text += "; " + ", ".join(f"{v} {k}" for k, v in sorted(other.items()))
        return text
    return str(basis)


def _escalation_summary(escalations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Escalation calls aggregated by (quantity, round, precision, outcome)."""
    rows: dict[tuple, dict[str, Any]] = {}
    for e in escalations:
        key = (e.get("what"), e.get("round"), e.get("dps"), e.get("outcome"))
        row = rows.setdefault(key, {"what": key[0], "round": key[1], "dps": key[2], "outcome": key[3], "calls": 0,
                                    "instances": 0, "certified": 0, "refuted": 0, "still_undecided": 0})
        row["calls"] += 1
        for k in ("instances", "certified", "refuted", "still_undecided"):
            row[k] += int(e.get(k) or 0)
    return list(rows.values())


def _groups(claims: list[dict[str, Any]]) -> list[dict[str, Any]]:
    used: set[str] = set()
    groups: dict[str, dict[str, Any]] = {}
    for c in claims:
        key = c.get("group") or "(no source)"
        g = groups.get(key)
        if g is None:
            src = c.get("source")
            g = groups[key] = {
                "key": key,
                "title": src.get("title") if src else None,
                "authors": src.get("authors") if src else None,
                "short": src.get("short") if src else key,
                "year": src.get("year") if src else None,
                "arxiv": src.get("arxiv") if src else None,
                "link": src.get("link") if src else None,
                "claims": [],
                "counts": {},
            }
        view = _claim_view(c, used)
        g["claims"].append(view)
        g["counts"][c["verdict"]] = g["counts"].get(c["verdict"], 0) + 1
    return list(groups.values())


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).parent)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["num"] = _fmt_html
    env.filters["math"] = math_html
    env.filters["textmath"] = text_with_math
    return env


_VERSION_ORDER = ("implreg", "python", "torch", "hypothesis", "mpmath", "numpy", "scipy", "sympy", "pytest",
                  "pytest-xdist")
_PHASE_ORDER = ("explicit", "reuse", "generate", "target", "shrink")


def render_html(results: dict[str, Any]) -> str:
    """The report as one HTML string (the same bytes whether results come from memory or results.json)."""
    results = json.loads(dumps(results))  # normalize: the page must not depend on dict insertion order
    css = resources.files("implreg.harness.report").joinpath("style.css").read_text(encoding="utf-8")
    run = results["run"]
    versions = run.get("versions") or {}
    run["version_list"] = [(k, versions[k]) for k in _VERSION_ORDER if k in versions] + \
        [(k, v) for k, v in sorted(versions.items()) if k not in _VERSION_ORDER]
    claims = results["claims"]
    groups = _groups(claims)
    tmpl = _env().get_template("template.html.j2")
    return tmpl.render(run=run, groups=groups, claims=claims, css=Markup(css), verdicts=_VERDICT_WORDS,
                       phase_order=_PHASE_ORDER)


def write_report(results: dict[str, Any], path: str | Path) -> Path:
    """Render and write the report atomically (temp file + os.replace)."""
    return atomic_write_text(path, render_html(results))


def strip_timing_html(html: str) -> str:
    """The report without its wall-clock spans (identical across runs with the same seed)."""
    return _TIMING.sub("", html)
