"""implreg.harness.experiment_evidence: the width test decides as the paired Wilcoxon test it names (on constructed test
errors whose answer is known), and the evidence helpers record what they say (plots, scalars, notes) into a
claim's recorder and nothing outside one."""

from __future__ import annotations

import pytest
import torch

from implreg.harness import experiment_evidence as X
from implreg.harness import recorder as _record
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
