"""`implreg verify | list | report | new` end to end: exit status, xdist merging, determinism, crashes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from implreg.harness.claims import REGISTRY
from implreg.harness.cli import main
from implreg.harness.report.render import strip_timing_html
from implreg.harness.results import strip_timing

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from implreg_test_helpers import FIXTURES, SUITE, load_module

ROOT = Path(__file__).resolve().parents[1]
SUITE_REL = "tests/fixtures/suite"


def run(*args, cwd=ROOT, timeout=400):
    # a clean environment: when these tests themselves run under xdist, the nested pytest must not
    # believe it is a worker
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "IMPLREG_"))}
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def cli(*args, **kw):
    return run(sys.executable, "-m", "implreg.harness.cli", *args, **kw)


def _planted():
    with REGISTRY.isolated():
        return {cid: v for name in ("planted.py", "reasons.py", "statistical.py")
                for cid, v in load_module(SUITE / name).PLANTED.items()}


def test_suite_end_to_end(tmp_path):
    """The fixture suite verified twice with -n 2 (same seed, same report path) and once by plain pytest.

    One test (not a module fixture) so that under `pytest -n 2` the three runs happen once, on one worker.
    """
    report = tmp_path / "r" / "index.html"
    first = cli("verify", SUITE_REL, "-n", "2", "--report", str(report))
    first_results = json.loads(report.with_name("results.json").read_text())
    first_html = report.read_text()

    # exit status, progress (claim n of m, verdicts so far) and the summary table
    assert first.returncode == 1, first.stderr
    out = first.stdout
    assert "implreg verify: tests/fixtures/suite · profile ci · seed 0 · 2 workers" in out
    assert "[ 1/41]" in out and "[41/41]" in out
    assert "✓ refuted" in out and "(expected holds)" in out
    assert "◀ MISMATCH" in out and "FAIL:" in out
    assert "verdicts: 10 holds, 9 refuted, 4 inconclusive, 19 error · 42 claims" in out

    # xdist merging loses nothing: every collected claim (and the broken file) has its record
    listed = json.loads(cli("list", SUITE_REL, "--json").stdout)
    claims = first_results["claims"]
    nodeids = {r["nodeid"] for r in claims if r["kind"] != "collection-error"}
    assert nodeids == {c["nodeid"] for c in listed} and len(nodeids) == 41
    assert [r["id"] for r in claims if r["kind"] == "collection-error"] == [
        f"collection-error:{SUITE_REL}/broken_import.py"]
    assert {r["timing"]["worker"] for r in claims if r["kind"] != "collection-error"} == {"gw0", "gw1"}
    verdicts = {r["id"]: r["verdict"] for r in claims}
    for cid, verdict in _planted().items():
        assert verdicts[cid] == verdict, cid
    assert first_results["run"]["counts"] == {"holds": 10, "refuted": 9, "inconclusive": 4, "error": 19}
    assert first_results["run"]["passed"] is False and len(first_results["run"]["mismatches"]) == 24

    # re-rendering results.json gives the same bytes
    again = tmp_path / "again.html"
    assert main(["report", str(report.with_name("results.json")), "--out", str(again)]) == 0
    assert again.read_text() == first_html
    assert main(["report", str(tmp_path / "missing.json")]) == 2

    # the same seed gives the same report (timing spans and fields aside), whatever the scheduling
    second = cli("verify", SUITE_REL, "-n", "2", "--report", str(report))
    assert second.returncode == 1
    assert strip_timing(json.loads(report.with_name("results.json").read_text())) == strip_timing(first_results)
    assert strip_timing_html(report.read_text()) == strip_timing_html(first_html)

    # plain pytest with the plugin: one process, identical records, its own summary
    plain_report = tmp_path / "plain" / "index.html"
    plain = run(sys.executable, "-m", "pytest", SUITE_REL, "--implreg-only", "-p", "no:xdist", "-p", "no:cacheprovider",
                "-p", "no:benchmark", f"--implreg-report={plain_report}", "-q")
    assert plain.returncode == 1 and "implreg verdicts" in plain.stdout
    plain_claims = json.loads(plain_report.with_name("results.json").read_text())["claims"]
    assert [strip_timing(r) for r in plain_claims] == [strip_timing(r) for r in claims]


def test_selection_by_k_and_user_file_names(tmp_path):
    p = cli("verify", f"{SUITE_REL}/planted.py", f"{SUITE_REL}/my_conjectures.py", "-k", "false or mine", "-n", "1",
            "--report", str(tmp_path / "index.html"))
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads((tmp_path / "results.json").read_text())
    assert sorted(r["id"] for r in res["claims"]) == [
        "mine/exp-beats-linear", "mine/sum-of-squares", "planted/false-batched", "planted/false-ge10"]
    assert "PASS" in p.stdout


def test_new_conjecture_in_a_user_file_verifies(tmp_path):
    target = tmp_path / "my_conjectures.py"
    assert main(["new", "mine/rank-drops", "--file", str(target), "--statement", 'a "quoted" claim']) == 0
    assert main(["new", "mine/rank-drops", "--file", str(target)]) == 2          # already there
    assert main(["new", "Not An Id", "--file", str(target)]) == 2
    p = cli("verify", str(target), "-n", "1", "--id", "mine/rank-drops", "--seed", "7", "--profile", "quick",
            "--report", str(tmp_path / "r" / "index.html"), cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert [(r["id"], r["verdict"]) for r in res["claims"]] == [("mine/rank-drops", "holds")]
    assert res["run"]["seed"] == 7 and res["run"]["profile"] == "quick"
    assert res["claims"][0]["statement"] == 'a "quoted" claim'


def test_a_file_named_like_a_standard_module_says_which_module_took_its_name(tmp_path):
    """A user's stat.py is shadowed by the standard library's stat: the error names that module and the fix,
    not pytest's "remove __pycache__" hint."""
    (tmp_path / "stat.py").write_text(
        "from hypothesis import given, strategies as st\nfrom implreg import certify\n"
        "from implreg.claims import claim\n\n"
        "@claim('mine/stat', kind='conjecture', statement='x ≥ x')\n"
        "@given(st.integers(0, 3))\ndef c(x):\n    certify.that(x >= x)\n")
    p = cli("verify", "stat.py", "-n", "1", "--report", str(tmp_path / "r" / "index.html"), cwd=tmp_path)
    assert p.returncode != 0, p.stdout + p.stderr
    [r] = json.loads((tmp_path / "r" / "results.json").read_text())["claims"]
    assert r["verdict"] == "error" and r["kind"] == "collection-error"
    assert "module name 'stat' is already taken by" in r["explanation"] and "my_stat.py" in r["explanation"]
    assert "__pycache__" not in r["explanation"]


def test_default_paths_and_a_theorems_package_with_helpers(tmp_path):
    pkg = tmp_path / "theorems"
    pkg.mkdir()
    shutil.copy(ROOT / "theorems" / "__init__.py", pkg / "__init__.py")
    (pkg / "_common.py").write_text("def square(x):\n    return x * x\n")
    (pkg / "paper_2021.py").write_text(
        "from hypothesis import given, strategies as st\n"
        "from implreg import certify\nfrom implreg.harness.claims import claim\nfrom theorems._common import square\n\n"
        "@claim('paper-2021/square', statement='x² ≥ 0')\n@given(x=st.floats(-10, 10))\n"
        "def square_nonneg(x):\n    certify.at_least(square(x), 0.0, what='x²')\n")
    p = cli("verify", "-n", "1", cwd=tmp_path)                      # default: theorems/ → reports/index.html
    assert p.returncode == 0, p.stdout + p.stderr
    assert "1 holds · 1 claim ·" in p.stdout
    res = json.loads((tmp_path / "reports" / "results.json").read_text())
    assert [r["id"] for r in res["claims"]] == ["paper-2021/square"] and (tmp_path / "reports" / "index.html").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    p = cli("verify", str(empty), "-n", "1", "--report", str(tmp_path / "e" / "index.html"), cwd=tmp_path)
    assert p.returncode == 1 and "no claims were collected" in p.stderr


def test_a_crashing_worker_loses_no_claim(tmp_path):
    p = cli("verify", str(FIXTURES / "worker_crash.py"), "-n", "2", "--report", str(tmp_path / "index.html"))
    assert p.returncode == 1
    res = json.loads((tmp_path / "results.json").read_text())
    got = {r["id"]: (r["verdict"], (r["error"] or {}).get("type")) for r in res["claims"]}
    assert got == {"crash/kills-its-process": ("error", "ProcessDied"), "crash/fine": ("holds", None)}


def test_usage_errors():
    p = cli("verify", SUITE_REL, "--profile", "fast")
    assert p.returncode == 2
    assert "unknown profile 'fast'; known profiles: quick" in p.stderr and "thorough" in p.stderr
    p = cli("verify", "no/such/dir")
    assert p.returncode == 2 and "no such file or folder" in p.stderr


def test_bad_settings_are_usage_errors(monkeypatch, capsys, tmp_path):
    """A bad IMPLREG_* setting is one usage error naming the variable, before any claim runs."""
    for var, value in [("IMPLREG_COMPILE", "sometimes"), ("IMPLREG_COMPILE_MIN_BATCH", "lots"),
                       ("IMPLREG_POOL_SIZE", "-3"), ("IMPLREG_NATIVE", "maybe")]:
        with monkeypatch.context() as m:
            m.setenv(var, value)
            assert main(["verify", str(SUITE), "--report", str(tmp_path / "index.html")]) == 2
        err = capsys.readouterr().err
        assert var in err and repr(value) in err, (var, err)
    assert not (tmp_path / "index.html").exists()


def test_list(tmp_path):
    p = cli("list", SUITE_REL)
    assert p.returncode == 1                         # the broken file is reported
    assert "broken_import.py" in p.stderr
    assert "planted/false-ge10" in p.stdout and "(as reconstructed)" in p.stdout
    assert "[malformed: duplicate id" in p.stdout and "41 claim(s)" in p.stdout
    # controls say what refutes them, and one that names nothing is warned about
    assert "[refuted by: x ≥ 5]" in p.stdout
    assert "reasons/control-unnamed" in p.stdout and "[warning: negative control" in p.stdout


def test_the_summary_table_marks_agreement_with_the_expectation_not_the_verdict():
    """A refuted control that was expected refuted gets ✓ (as its progress line does), a mismatch ✗, a documented
    deviation ~: the glyph says whether the run is fine with the verdict, the word says the verdict."""
    from implreg.harness.cli import format_table

    rows = [dict(id="a/control", verdict="refuted", expect="refuted", matches_expect=True),
            dict(id="a/broken", verdict="holds", expect="refuted", matches_expect=False),
            dict(id="a/toy", verdict="refuted", expect="holds", matches_expect=False, deviation_documented=True)]
    control, broken, toy = format_table(rows)[2:]
    assert control.lstrip().startswith("✓ refuted") and "◀" not in control
    assert broken.lstrip().startswith("✗ holds") and broken.endswith("◀ MISMATCH")
    assert toy.lstrip().startswith("~ refuted") and toy.endswith("◀ deviates from the paper (documented)")
