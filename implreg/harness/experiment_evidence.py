"""What the toy replications of Exploring §3 and In Search §2 (``implreg.relu.synthetic``) show in the report, the
test-error-fall test that the width controls take as their precondition; and plots for the ReLU-net claims: a
bracket against a parameter (the α-sharpness sweep), and how far training from w and from ρ(w) drifts apart.

The claims compare one measure (or the test error) between two sizes or widths; these helpers record the rest
of the experiment beside that comparison — every problem's value per size/width, the share of nets that met the
stopping rule, medians — so that a reader sees what the statistic was computed from.  ``converged_labels`` and
``converged_widths`` also ``require`` the stopping rule (a claim's hypothesis: otherwise the verdict is error, never
a refutation).  Outside a claim run the ``evidence`` calls record nothing.
"""

from __future__ import annotations

import torch

from implreg.harness import evidence, stats
from implreg.numerics import Certified
from implreg.preconditions import require
from implreg.relu.capacity import Bracket, SharpnessSweep
from implreg.relu.network import NodeScaling, ReluNet
from implreg.relu.pathsgd import rescaled_training_gaps
from implreg.relu.synthetic import LabelExperiment, WidthExperiment

__all__ = ["bracket_evidence", "converged_labels", "converged_widths", "error_falls_with_width", "label_evidence",
           "note_error_fall", "rademacher_evidence", "rescaling_scatter", "sharpness_evidence",
           "training_gap_evidence", "width_evidence"]

CONVERGED = "nets that reached zero training error and CE < 0.01"
STOPPING_RULE = "reached zero training error and cross-entropy < 0.01"


def _scatter(plot: str, at: float, y: torch.Tensor, group: str, xlabel: str, ylabel: str, **kw) -> None:
    evidence.series(plot, x=torch.full((y.numel(),), float(at)), y=y.reshape(1, -1), group=group, kind="scatter",
                    xlabel=xlabel, ylabel=ylabel, **kw)


def label_evidence(exp: LabelExperiment, name: str) -> None:
    """Measure ``name`` vs training-set size for true and random labels (every problem), the converged share, and
    the median growth name(m_max)/name(m_min) per labelling."""
    for m in exp.sizes:
        for group, d in (("true labels", exp.true), ("random labels", exp.random)):
            _scatter(f"{name} measure vs training-set size", m, d[m][name], group, "m", name, log_y=True)
    evidence.scalar(CONVERGED, float(torch.cat([exp.converged[m] for m in exp.sizes]).double().mean()))
    lo, hi = min(exp.sizes), max(exp.sizes)
    for which, d in (("true", exp.true), ("random", exp.random)):
        evidence.scalar(f"median growth {name}(m = {hi}) / {name}(m = {lo}), {which} labels",
                        float((d[hi][name] / d[lo][name]).median()))
    evidence.note(exp.description)


def width_evidence(exp: WidthExperiment, name: str | None = None, alpha: float = 0.01) -> None:
    """Test error (and measure ``name``, if given) vs hidden units for every problem, the median test error per
    width (plotted and noted), the converged share, whether the test error falls between consecutive widths
    (``error_falls_with_width`` at level ``alpha``, for the reader), and the median ratio of the measure."""
    for H in exp.widths:
        _scatter("test error vs hidden units", H, exp.test_error[H], "test error", "hidden units H", "test error",
                 log_x=True)
        if name is not None:
            _scatter(f"{name} measure vs hidden units", H, exp.measures[H][name], name, "hidden units H", name,
                     log_x=True, log_y=True)
    med = torch.stack([exp.test_error[H].median() for H in exp.widths])
    evidence.series("median test error vs hidden units", x=torch.tensor([float(H) for H in exp.widths]), y=med,
                    group="median", xlabel="hidden units H", ylabel="test error", log_x=True)
    evidence.scalar(CONVERGED, float(torch.cat([exp.converged[H] for H in exp.widths]).double().mean()))
    evidence.note("Median test error by width: " + ", ".join(
        f"H = {H}: {v:.4f}" for H, v in zip(exp.widths, med.tolist(), strict=True)) + ".")
    for a, b in zip(exp.widths, exp.widths[1:], strict=False):
        sentence = error_falls_with_width(exp, a, b, alpha)[1]
        evidence.note(f"Test error {a} → {b} hidden units (for the reader): {sentence}")
    if name is not None:
        ratios = ", ".join(f"{a} → {b}: {(exp.measures[b][name] / exp.measures[a][name]).median().item():.3g}"
                           for a, b in zip(exp.widths, exp.widths[1:], strict=False))
        evidence.note(f"Median ratio of the {name} measure between consecutive widths: {ratios}.")
    evidence.note(exp.description)


def converged_labels(exp: LabelExperiment, name: str, *sizes: int) -> LabelExperiment:
    """``exp`` after recording ``label_evidence(exp, name)`` and requiring that every net at these training-set
    sizes (default: all) met the stopping rule."""
    label_evidence(exp, name)
    at = f" at m = {', '.join(map(str, sizes))}" if sizes else ""
    require(exp.all_converged(*sizes), f"every net{at} {STOPPING_RULE}")
    return exp


def converged_widths(exp: WidthExperiment, name: str | None = None, alpha: float = 0.01) -> WidthExperiment:
    """``exp`` after recording ``width_evidence(exp, name, alpha)`` and requiring that every net met the stopping
    rule."""
    width_evidence(exp, name, alpha)
    require(exp.all_converged(), f"every net {STOPPING_RULE}")
    return exp


def note_error_fall(exp: WidthExperiment, lo: int, hi: int, alpha: float = 0.01, *, required: bool = False) -> None:
    """Note whether the test error falls from H = lo to H = hi (``error_falls_with_width`` at level ``alpha``);
    ``required``: also ``require`` the fall (a width control means something only if there is a fall to explain)."""
    falls, sentence = error_falls_with_width(exp, lo, hi, alpha)
    evidence.note(f"Does the test error fall from H = {lo} to H = {hi} on these problems? {sentence}")
    if required:
        require(falls, f"the test error falls significantly from H = {lo} to H = {hi} (one-sided paired Wilcoxon, "
                       f"level {alpha:g}): there is a width benefit to explain")


def error_falls_with_width(exp: WidthExperiment, lo: int, hi: int, alpha: float = 0.01) -> tuple[bool, str]:
    """Whether the test error falls from H = lo to H = hi on these problems — the one-sided paired Wilcoxon
    signed-rank test (err(hi) < err(lo)) at level ``alpha`` holds — and the test's sentence."""
    r = stats.evaluate(stats.paired("wilcoxon", alternative="less", alpha=alpha),
                       list(zip(exp.test_error[hi].tolist(), exp.test_error[lo].tolist(), strict=True)))
    return r["outcome"] == "holds", r["sentence"]


def bracket_evidence(plot: str, x: torch.Tensor, br: Bracket, *, xlabel: str, ylabel: str) -> None:
    """Both sides of a bracketed quantity (``capacity.Bracket``, (K,)) against a positive parameter x (K,), on
    log axes (the lower side floored at 1e-12 for them), sorted by x."""
    order = torch.argsort(x)
    for side, y in (("upper side", br.upper), ("lower side", br.lower.clamp_min(1e-12))):
        evidence.series(plot, x=x[order], y=y[order], group=side, xlabel=xlabel, ylabel=ylabel, log_x=True,
                        log_y=True)


def sharpness_evidence(sweep: SharpnessSweep) -> None:
    """The α-sharpness brackets of ρ_{c,v}(w) against c (``bracket_evidence``), the smallest |log₄ c| of the sweep's
    witness, and the bracket width of ζ_α(w)."""
    bracket_evidence("α-sharpness bracket of ρ_{c,v}(w) vs c (the function is the same for every c)",
                     sweep.factors, sweep.rescaled, xlabel="c", ylabel="ζ_α")
    evidence.scalar("smallest |log₄ c| with a certified change", abs(sweep.exponents[sweep.witness]))
    evidence.scalar("bracket width of ζ_α(w) (upper − lower side)", sweep.base.width.item())


def rescaling_scatter(name: str, before: Certified, after: Certified) -> None:
    """A measure ``name`` before (x) and after (y) the drawn rescaling, one point per net, log axes."""
    evidence.series(f"{name} (not invariant) under the drawn rescaling", x=before.value, y=after.value,
                    group=f"{name}(ρ(w)) vs {name}(w)", kind="scatter", xlabel="before rescaling", ylabel="after",
                    log_x=True, log_y=True)


def rademacher_evidence(depth: int, bound: Certified, value: Certified) -> None:
    """One point per draw against the COLT'15 bound it is compared with: R̂ at depth 1 (grouped by exact or Monte
    Carlo), a certified lower bound L ≤ R̂ at depth ≥ 2 (grouped by depth)."""
    if depth == 1:
        plot, group, ylabel = "depth 1: R̂ vs bound", "exact" if value.rigorous else "Monte Carlo", "R̂ (exact or MC)"
    else:
        plot, group, ylabel = "depth ≥ 2: certified lower bound on R̂ vs bound", f"depth {depth}", "L ≤ R̂"
    evidence.series(plot, x=bound.value, y=value.value, group=group, kind="scatter", xlabel="COLT'15 bound",
                    ylabel=ylabel)


def training_gap_evidence(net: ReluNet, scaling: NodeScaling, x: torch.Tensor, y: torch.Tensor, *,
                          lr: float = 0.01, steps: int = 25) -> None:
    """max_x |f_t(w) − f_t(ρ(w))| along ``steps`` float64 Path-SGD and SGD steps from w and ρ(w)
    (``pathsgd.rescaled_training_gaps``, cut at 1e3), floored at 1e-17 for the log axis."""
    for method in ("path-sgd", "sgd"):
        gaps = rescaled_training_gaps(net, scaling, x, y, lr, steps, method)
        if gaps.shape[1]:
            evidence.series(f"max_x |f_t(w) − f_t(ρ(w))| along training, η = {lr:g} (floored at 1e-17, cut at 1e3)",
                            x=torch.arange(1, gaps.shape[1] + 1), y=gaps.clamp_min(1e-17), group=method,
                            xlabel="step t", ylabel="function gap", log_y=True)
