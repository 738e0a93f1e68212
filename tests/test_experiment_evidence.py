"""implreg.harness.experiment_evidence: the width test decides as the paired Wilcoxon test it names (on constructed test
errors whose answer is known), and the evidence helpers record what they say (plots, scalars, notes) into a
claim's recorder and nothing outside one."""

from __future__ import annotations

import pytest
import torch

from implreg.harness import experiment_evidence as X
from implreg.harness import recorder as _record
from implreg.numerics import Certified
from implreg.preconditions import PreconditionFailed
from implreg.relu import capacity as C
from implreg.relu import network as R
from implreg.relu.synthetic import LabelExperiment, WidthExperiment

N = 12


def _width(errors: dict[int, list[float]], converged: bool = True) -> WidthExperiment:
    t = {H: torch.tensor(e, dtype=torch.float64) for H, e in errors.items()}
    meas = {H: {"l2": torch.full((N,), float(H))} for H in errors}
    conv = {H: torch.full((N,), converged) for H in errors}
    return WidthExperiment(tuple(errors), t, meas, conv, "constructed")


@pytest.fixture
def rec():
    r = _record.Recorder("test/experiment-evidence")
    token = r.activate()
    r.begin_example(None)
    yield r
    r.deactivate(token)


def test_error_falls_with_width_decides_as_the_one_sided_test():
    base = [0.2 + 0.01 * i for i in range(N)]
    falls = _width({32: base, 512: [e - 0.05 for e in base]})
    assert X.error_falls_with_width(falls, 32, 512)[0]       # 12 of 12 lower: p = 2⁻¹² ≪ 0.01
    rises = _width({32: base, 512: [e + 0.05 for e in base]})
    assert not X.error_falls_with_width(rises, 32, 512)[0]
    mixed = _width({32: base, 512: [e + (0.05 if i % 2 else -0.05) for i, e in enumerate(base)]})
    ok, sentence = X.error_falls_with_width(mixed, 32, 512)
    assert not ok and isinstance(sentence, str) and sentence


def test_all_converged():
    assert _width({32: [0.1] * N, 512: [0.1] * N}).all_converged()
    assert not _width({32: [0.1] * N}, converged=False).all_converged()
    conv = {8: torch.ones(2 * N, dtype=torch.bool), 16: torch.zeros(2 * N, dtype=torch.bool)}
    exp = LabelExperiment((8, 16), {}, {}, conv, {}, "constructed")
    assert exp.all_converged(8) and not exp.all_converged(8, 16) and not exp.all_converged()


def test_width_and_label_evidence_record_plots_scalars_and_notes(rec):
    exp = _width({32: [0.3] * N, 128: [0.2] * N, 512: [0.1] * N})
    X.width_evidence(exp, "l2")
    assert {"test error vs hidden units", "l2 measure vs hidden units", "median test error vs hidden units"} <= set(
        rec.series)
    assert rec.scalars[X.CONVERGED]["values"] == [1.0]
    assert any("H = 512: 0.1000" in n for n in rec.notes)
    assert any("32 → 128: 4" in n for n in rec.notes)  # the measure is H itself: ratio 128/32
    t = {m: {"l2": torch.full((N,), 1.0 * m)} for m in (8, 16)}
    r = {m: {"l2": torch.full((N,), 3.0 * m * m)} for m in (8, 16)}
    lab = LabelExperiment((8, 16), t, r, {m: torch.ones(2 * N, dtype=torch.bool) for m in (8, 16)}, {}, "labels")
    X.label_evidence(lab, "l2")
    assert rec.scalars["median growth l2(m = 16) / l2(m = 8), true labels"]["values"] == [2.0]
    assert rec.scalars["median growth l2(m = 16) / l2(m = 8), random labels"]["values"] == [4.0]


def test_bracket_and_training_gap_evidence(rec):
    f64 = {"dtype": torch.float64}
    br = C.Bracket(torch.tensor([0.0, 2.0, 1.0], **f64), torch.tensor([3.0, 5.0, 4.0], **f64), torch.zeros(3, **f64),
                   "constructed")
    X.bracket_evidence("b", torch.tensor([4.0, 1.0, 2.0], **f64), br, xlabel="c", ylabel="ζ")
    lines = {ln["group"]: ln for ln in rec.series["b"]["lines"]}
    assert lines["upper side"]["x"] == [1.0, 2.0, 4.0] and lines["upper side"]["y"] == [5.0, 4.0, 3.0]
    assert lines["lower side"]["y"] == [2.0, 1.0, 1e-12]  # floored for the log axis
    net = R.random_net((2, 3, 1), 1, generator=torch.Generator().manual_seed(0))
    s = R.NodeScaling((torch.tensor([[2.0, 0.5, 4.0]], dtype=torch.float64),))
    x = torch.tensor([[1.0, -1.0], [0.5, 2.0]], dtype=torch.float64)
    X.training_gap_evidence(net, s, x, torch.zeros(2, 1, dtype=torch.float64), steps=5)
    (plot,) = (v for k, v in rec.series.items() if k.startswith("max_x |f_t(w) − f_t(ρ(w))|"))
    assert {ln["group"] for ln in plot["lines"]} <= {"path-sgd", "sgd"} and plot["lines"]


def test_nothing_is_recorded_outside_a_claim_run():
    X.width_evidence(_width({32: [0.3] * N}), "l2")  # no recorder: a no-op, not an error


def test_converged_experiments_record_their_evidence_and_require_the_stopping_rule(rec):
    exp = _width({32: [0.3] * N, 512: [0.1] * N})
    assert X.converged_widths(exp, "l2") is exp and "l2 measure vs hidden units" in rec.series
    with pytest.raises(PreconditionFailed, match=r"every net reached zero training error and cross-entropy < 0\.01"):
        X.converged_widths(_width({32: [0.3] * N}, converged=False))
    t = {m: {"l2": torch.full((N,), 1.0 * m)} for m in (8, 16)}
    conv = {8: torch.ones(2 * N, dtype=torch.bool), 16: torch.zeros(2 * N, dtype=torch.bool)}
    lab = LabelExperiment((8, 16), t, t, conv, {}, "labels")
    assert X.converged_labels(lab, "l2", 8) is lab and "l2 measure vs training-set size" in rec.series
    with pytest.raises(PreconditionFailed, match="every net at m = 8, 16 reached zero training error"):
        X.converged_labels(lab, "l2", 8, 16)
    with pytest.raises(PreconditionFailed, match="every net reached"):
        X.converged_labels(lab, "l2")


def test_note_error_fall_notes_the_test_and_requires_it_only_when_asked(rec):
    base = [0.2 + 0.01 * i for i in range(N)]
    rises = _width({32: base, 512: [e + 0.05 for e in base]})
    X.note_error_fall(rises, 32, 512)  # noted, not required
    assert any(n.startswith("Does the test error fall from H = 32 to H = 512") for n in rec.notes)
    with pytest.raises(PreconditionFailed, match=r"falls significantly from H = 32 to H = 512 .*level 0\.01"):
        X.note_error_fall(rises, 32, 512, required=True)
    X.note_error_fall(_width({32: base, 512: [e - 0.05 for e in base]}), 32, 512, required=True)


def test_sharpness_rescaling_and_rademacher_evidence(rec):
    f64 = {"dtype": torch.float64}
    br = C.Bracket(torch.tensor([0.0, 2.0, 1.0], **f64), torch.tensor([3.0, 5.0, 4.0], **f64), torch.zeros(3, **f64),
                   "constructed")
    sweep = C.SharpnessSweep([1, -1], br[0], br[1:], C.bracket_separation(br[1:], br[0]), 1)
    X.sharpness_evidence(sweep)
    (plot,) = (v for k, v in rec.series.items() if k.startswith("α-sharpness bracket"))
    assert {ln["group"]: ln["x"] for ln in plot["lines"]}["upper side"] == [0.25, 4.0]
    assert rec.scalars["smallest |log₄ c| with a certified change"]["values"] == [1.0]
    assert rec.scalars["bracket width of ζ_α(w) (upper − lower side)"]["values"] == [3.0]
    a, b = Certified.exact(torch.tensor([1.0, 2.0], **f64)), Certified.exact(torch.tensor([2.0, 8.0], **f64))
    X.rescaling_scatter("μ₂,₂", a, b)
    assert rec.series["μ₂,₂ (not invariant) under the drawn rescaling"]["lines"][0]["y"] == [2.0, 8.0]
    X.rademacher_evidence(1, b, a)
    X.rademacher_evidence(3, b, a)
    assert [ln["group"] for ln in rec.series["depth 1: R̂ vs bound"]["lines"]] == ["exact"]
    assert [ln["group"] for ln in rec.series["depth ≥ 2: certified lower bound on R̂ vs bound"]["lines"]] == ["depth 3"]
