"""The HTML report: structure, escaping, math, plots, determinism and atomic writes (in-process)."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from implreg.harness.claims import REGISTRY
from implreg.harness.report.mathml import math_html, text_with_math
from implreg.harness.report.plots import svg_plot
from implreg.harness.report.render import render_html, strip_timing_html, write_report
from implreg.harness.results import build_results, dumps, save_results, strip_timing
from implreg.harness.verdict import run_claim

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from implreg_test_helpers import SUITE, claims_of, load_module

FILES = ("planted.py", "report_demo.py", "statistical.py", "reasons.py")
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)


def _results(seed=0):
    records = []
    with REGISTRY.isolated():
        for name in FILES:
            module = load_module(SUITE / name)
            for _cid, (fn, spec) in claims_of(module).items():
                r = run_claim(spec, seed=seed)
                r["nodeid"] = f"{name}::{fn}"
                r["file"] = f"tests/fixtures/suite/{name}"  # fixed (module names differ per load)
                r["module"] = name
                records.append(r)
    run = {"profile": "ci", "seed": seed, "paths": ["tests/fixtures/suite"], "workers": 1,
           "command": "implreg verify tests/fixtures/suite", "versions": {"implreg": "0.1.0", "torch": "x"},
           "platform": "Linux", "cpu_count": 2, "timing": {"wall_s": 1.5, "started": "2024-01-01 00:00:00 UTC"}}
    from implreg.harness.results import _sorted

    return build_results(_sorted(records), run, [{"device": "cpu", "torch_threads": 2}])


@pytest.fixture(scope="module")
def results():
    return _results()


@pytest.fixture(scope="module")
def html(results):
    return render_html(results)


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.scripts, self.ids = [], [], set()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        d = dict(attrs)
        if "id" in d:
            self.ids.add(d["id"])


def test_structure(results, html):
    p = _Tags()
    p.feed(html)
    claims = results["claims"]
    assert html.startswith("<!DOCTYPE html>")
    assert "verdict-table" in p.ids and "overall" in p.ids
    rows = re.findall(r'<tr class="row[^"]*">', html)
    assert len(rows) == len(claims)
    assert html.count('<article class="claim') == len(claims)
    groups = {c["group"] for c in claims}
    assert html.count('<tbody class="group">') == len(groups)
    assert ">FAIL<" in html  # planted mismatches make the run fail
    for v in ("holds", "refuted", "inconclusive", "error"):
        assert f'class="badge v-{v}"' in html
    assert "as reconstructed" in html                 # unconfirmed source locations are marked
    assert p.tags.count("math") >= 5 and p.tags.count("svg") >= 3
    assert "Verdict differs from expectation" in html
    assert "Falsifying example: false_ge10(" in html and "@reproduce_failure(" in html
    assert "Wilcoxon signed-rank test" in html and "effect size" in html
    assert "Numerical certification" in html and "precision (digits)" in html


def test_refutation_reasons_warnings_and_three_outcome_statistics_are_shown(results, html):
    """Issue 13 §2–3: the refuting comparison (and for controls the one they name), wrong-reason errors,
    warnings for unnamed controls, and the three-outcome statistics with their sensitivity."""
    assert "Refutation reason" in html and "the claim names as its refutation" in html
    assert "refuting comparison" in html and "<code>x ≥ 5</code>" in html
    assert "refuted for the wrong reason" in html and "failed precondition" in html
    assert "names no refuted_by" in html and "warning-box" in html
    assert "not significant is not refuted" in html
    assert "smallest effect detectable" in html and "Noether" in html and "exact binomial distribution" in html
    assert "power of the equivalence test at zero effect" in html and "TOST p-value" in html
    assert "deprecated" in html


def test_basis_of_a_verdict_is_shown_when_recorded(results):
    """When the recorder says whether comparisons rested on rigorous bounds or estimates, the report says so."""
    import copy

    res = copy.deepcopy(results)
    claim = next(c for c in res["claims"] if c["id"] == "planted/true-square")
    claim["certification"]["basis"] = {"rigorous": 3, "estimate": 2}
    html = render_html(res)
    assert "verdict rests on" in html and "3 comparisons on rigorous bounds, 2 on estimates" in html
    claim["certification"]["basis"] = {"rigorous": 4}
    assert "rigorous bounds only (4 certified comparisons)" in render_html(res)


def test_user_text_is_escaped(html):
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert('x')&lt;/script&gt;" in html     # the statement, as text
    assert "Decay &lt;b&gt;Rates&lt;/b&gt; &amp; Norms" in html
    assert html.count("<script>") == 1                                     # only the sorting script


def test_self_contained(html):
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', html)
    assert "@import" not in html and "url(" not in html and "<link" not in html


def test_math_rendering_and_fallback():
    m = str(math_html(r"\frac{a}{b} \le \sqrt{x}", display=True))
    assert m.startswith("<math") and 'display="block"' in m and "<mfrac>" in m and "<msqrt>" in m
    assert 'alttext="\\frac{a}{b} \\le \\sqrt{x}"' in m
    for bad in (r"\frac{a", r"x^{", r"\nosuchcommand{x}"):
        assert str(math_html(bad)).startswith('<code class="tex">')
    injected = str(math_html(r"\text{<img src=x onerror=alert(1)>}"))
    assert "<img" not in injected and "&lt;img" in injected
    mixed = str(text_with_math("if $a < b$ then <b>c</b>"))
    assert "<math" in mixed and "&lt;b&gt;c&lt;/b&gt;" in mixed


def test_plots_are_deterministic_svg_with_log_and_symlog_axes():
    plot = {"name": "norm <vs> loss", "xlabel": "ℓ", "ylabel": "‖W‖", "log_x": True, "log_y": True,
            "symlog_y": False, "kind": "line", "dropped_lines": 0,
            "lines": [{"group": "depth 3", "x": [1e-6, 1e-4, 1e-2, 1.0], "y": [1e3, 1e2, 10.0, 1.0]},
                      {"group": "depth 2", "x": [1e-6, 1.0], "y": [1e2, 1.0]}]}
    svg = svg_plot(plot)
    assert svg == svg_plot(plot)
    assert svg.startswith("<svg") and svg.count("<polyline") == 2
    assert "norm &lt;vs&gt; loss" in svg and "1e-6" in svg and "1e3" in svg
    assert svg.index("depth 2</text>") < svg.index("depth 3</text>")   # natural legend order
    sym = svg_plot({"name": "s", "symlog_y": True, "kind": "scatter",
                    "lines": [{"group": None, "x": [0, 1, 2], "y": [-1e-3, 0.0, 1e4]}]})
    assert sym.count("<circle") == 3 and ">0<" in sym
    assert svg_plot({"name": "empty", "lines": []}).startswith("<svg")


def test_same_seed_gives_identical_report_and_results(results, html):
    again = _results()
    assert strip_timing_html(render_html(again)) == strip_timing_html(html)
    assert dumps(strip_timing(again)) == dumps(strip_timing(results))
    assert '<span class="timing"' in html and "2024-01-01" not in strip_timing_html(html)


def test_atomic_write(tmp_path, results, monkeypatch):
    out = tmp_path / "reports" / "index.html"
    write_report(results, out)
    first = out.read_text()
    assert first.startswith("<!DOCTYPE html>")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    results2 = json.loads(json.dumps(results))
    results2["run"]["seed"] = 12345
    with pytest.raises(OSError, match="disk full"):
        write_report(results2, out)
    assert out.read_text() == first                            # old report intact
    assert sorted(p.name for p in out.parent.iterdir()) == ["index.html"]  # no temp file left behind
    monkeypatch.undo()
    save_results(out.with_name("results.json"), results2)
    write_report(results2, out)
    assert "12345" in out.read_text() and json.loads(out.with_name("results.json").read_text())["run"]["seed"] == 12345


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (the Debian package `chromium`)")
def test_report_renders_in_a_real_browser(results, tmp_path):
    page = tmp_path / "index.html"
    write_report(results, page)
    profile = tempfile.mkdtemp(prefix="implreg-chromium-")
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}"]
    shot = tmp_path / "report.png"
    try:
        dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
        subprocess.run([*base, f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri()],
                       capture_output=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    html = dom.stdout
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'id="verdict-table"' in html
    assert html.count('<tr class="row') == len(results["claims"])
    assert html.count("<math") >= 5 and "<mfrac>" in html     # parsed as MathML, not as text
    assert html.count("<svg") >= 3
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html
    assert shot.exists() and shot.stat().st_size > 20_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_atomic_write_leaves_a_normally_readable_file(tmp_path):
    """mkstemp makes 0600 files; the report must get the usual umask-derived mode (e.g. 0644)."""
    import os

    from implreg.harness.results import atomic_write_text

    out = atomic_write_text(tmp_path / "r.html", "<html></html>")
    umask = os.umask(0)
    os.umask(umask)
    assert (out.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_instance_counts_are_shown_per_claim_and_in_total(results, html):
    """Issue 14: the report shows the instances each claim checked and their total (results.json too)."""
    per_claim = [int(c.get("instances") or 0) for c in results["claims"]]
    assert results["run"]["instances_total"] == sum(per_claim) > 0
    assert re.search(r"<dt>instances checked</dt><dd>" + str(sum(per_claim)) + "</dd>", html)
