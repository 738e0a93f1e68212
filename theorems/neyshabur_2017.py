"""Claims from "Exploring Generalization in Deep Learning" (Neyshabur, Bhojanapalli, McAllester & Srebro,
NIPS 2017, arXiv 1706.08947), collected in Neyshabur's thesis (arXiv 1709.01953): CLAIMS.md 26 (α-sharpness
is not rescaling-invariant), 27 (true vs random labels) and 28 (on digits: width lowers test error; the norm
measures do not explain the benefit of width), on synthetic data and on real data (scikit-learn's digits).
Section numbers are as reconstructed.

Measures (``implreg.capacity.exploring_measures``, as reconstructed from Exploring §2.1): with γ the
5th-percentile training margin (as in the authors' code, github.com/bneyshabur/generalization-bounds),
ℓ2 = Π_i 4‖W_i‖_F²/γ², ℓ1-path = (2^d φ₁)²/γ², ℓ2-path = 4^d Π_{i<d} h_i φ₂²/γ², spectral = Π_i h_i‖W_i‖₂²/γ².

Empirical claims are toy replications, not the paper's CIFAR-10 experiments: small depth-2 ReLU nets on
synthetic data generated in code (``implreg.synthetic``) and on real data, trained by full-batch Adam until
zero training error and cross-entropy < 0.01 (the authors' stopping rule).  The sample is fixed (problem seeds
0 … n−1) and shared by all claims of one experiment, so every measure is computed on the same trained nets, as
in the paper; it does not change with the run seed.  Each claim states its test and level; ``expect`` is what
the paper reports, and the verdict is whatever the toy replication gives (no problem ranges were tuned to
agree).  Statistics in three outcomes (``implreg.stats``): a claim holds when its one-sided test is significant
in the stated direction; the width controls are refuted only when significant in the opposite direction
(``refuted_by="opposite"``); anything else is inconclusive.

Real-data protocol (ids ``neyshabur-2017/digits-…``; ``implreg.datasets``, ``synthetic.digits_*_experiment``):
scikit-learn's shipped digits (1,797 8×8 images, 10 classes; read from the package, never downloaded), split
once, stratified by class, by seed 0 into a 1,200-image training pool and a 597-image test set; every pixel
standardized with the pool's mean and standard deviation (blank pixels only centred).  Problem i draws its
training images from the pool without replacement (its own seed).  Labels experiment: m ∈ {64, 256} images,
true labels vs labels drawn uniformly from the 10 classes, nets 64 → 256 → 10.  Width experiment: m = 256
images with true labels, nets 64 → H → 10 for H ∈ {32, 128, 512}, test error on all 597 test images.  Same
optimizer, stopping rule, measures, n = 12 problems and tests as the synthetic claims; the experiments are
cached per process, so the claims of one experiment share its trained nets.
"""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from implreg import capacity as C
from implreg import certify, evidence, stats
from implreg import relu as R
from implreg import synthetic as S
from implreg.claims import Source, claim, require, sample
from implreg.strategies.relu import inputs, net_widths, relu_nets

EXPLORING = Source(
    key="neyshabur-2017",
    title="Exploring Generalization in Deep Learning",
    authors="B. Neyshabur, S. Bhojanapalli, D. McAllester, N. Srebro",
    year=2017,
    arxiv="1706.08947",
    venue="NIPS 2017",
)

U = R.unit_roundoff(torch.float64)
ALPHA_LEVEL = 0.01  # every statistical claim in this module: one-sided test at level 0.01
N_PROBLEMS = 12


# ---------------------------------------------------------------------------------------------- claim 26


@st.composite
def sharpness_instances(draw):
    """A depth-2 net with 2–3 outputs (classes), 2–6 labelled points, and hidden unit 0 *active* on x_0 by
    construction (its incoming row r is replaced by −r if r·x_0 < 0 and by r + x_0 if r·x_0 = 0)."""
    net = draw(relu_nets(net_widths(depth=st.just(2), width=st.integers(1, 4), inputs=st.integers(1, 3),
                                    outputs=st.integers(2, 3))))
    x = draw(inputs(net.widths[0], m=st.integers(2, 6)).filter(lambda t: bool((t[0] != 0).any())))
    y = torch.tensor(draw(st.lists(st.integers(0, net.widths[-1] - 1), min_size=x.shape[0], max_size=x.shape[0])))
    W1 = net.weights[0].clone()
    r, x0 = W1[0, 0], x[0]
    dot = float(r @ x0)
    W1[0, 0] = -r if dot < 0 else (r + x0 if dot == 0 else r)
    alpha = draw(st.sampled_from([1e-3, 1e-2, 5e-2]))
    seed = draw(st.integers(0, 2**16))
    return R.ReluNet((W1, net.weights[1])), x, y, alpha, seed


@claim(
    "neyshabur-2017/sharpness-not-rescaling-invariant",
    source=EXPLORING.at("§2.3 (sharpness), with Dinh et al. 2017", confirmed=False),
    kind="proposition",
    expect="holds",
    statement=r"$\alpha$-sharpness $\zeta_\alpha(w) = (\max_{|\nu_i| \le \alpha(|w_i|+1)} \hat L(w+\nu) - \hat L(w))"
    r" / (1 + \hat L(w))$ is not invariant under node rescaling: for a network with an active hidden unit $v$, "
    r"rescaling $v$ by some $c > 0$ changes $\zeta_\alpha$ although the function is unchanged.",
    latex=r"\exists c>0:\ \zeta_\alpha(\rho_{c,v}(w)) \ne \zeta_\alpha(w),\quad "
    r"\zeta_\alpha(w)=\frac{\max_{|\nu_i|\le\alpha(|w_i|+1)}\hat L(w+\nu)-\hat L(w)}{1+\hat L(w)}",
    hypotheses=["depth-2 bias-free ReLU net, 1–4 hidden units, 2–3 classes, cross-entropy on 2–6 points",
                "hidden unit v = 0 active on x_0 (by construction)", "α ∈ {1e-3, 1e-2, 5e-2}",
                "c searched over 4ᵏ, k = ±1 … ±16; ζ bracketed: lower side projected sign-gradient ascent "
                "(60 steps × 4 restarts, a value attained in the box), upper side interval bound propagation "
                "(rigorous); a change is certified when the brackets are disjoint"],
    max_examples=25,
)
@given(inst=sharpness_instances())
def sharpness_not_rescaling_invariant(inst):
    net, x, y, alpha, seed = inst
    ks = [k for j in range(1, 17) for k in (j, -j)]
    nets = R.cat([net] + [R.rescale_node(net, 1, 0, 4.0**k) for k in ks])
    br = C.alpha_sharpness(nets, x, y, alpha, seed=seed)
    lo0, up0, r0 = br.lower[0], br.upper[0], br.rounding[0]
    # disjoint brackets ⇒ a certain change: lower side of one above the upper side of the other, beyond the
    # rounding allowances of both; report the smallest |log₄ c| that achieves it (ks is ordered by |k|)
    gaps = torch.maximum(br.lower[1:] - up0, lo0 - br.upper[1:])
    err = br.rounding[1:] + r0
    first = next((i for i in range(len(ks)) if bool(gaps[i] > err[i])), int(torch.argmax(gaps - err)))
    certify.at_least(gaps[first], 0.0, error=err[first],
                     what=f"separation of the brackets of ζ_α(ρ_c(w)) and ζ_α(w) at c = 4^{ks[first]}")
    order = sorted(range(len(ks)), key=lambda i: ks[i])
    cs = torch.tensor([4.0 ** ks[i] for i in order])
    plot = "α-sharpness bracket of ρ_{c,v}(w) vs c (the function is the same for every c)"
    evidence.series(plot, x=cs, y=br.upper[1:][order], group="upper side (interval bounds)", xlabel="c",
                    ylabel="ζ_α", log_x=True, log_y=True)
    evidence.series(plot, x=cs, y=br.lower[1:][order].clamp_min(1e-12), group="lower side (sign ascent)",
                    xlabel="c", ylabel="ζ_α", log_x=True, log_y=True)
    evidence.scalar("smallest |log₄ c| with a certified change", abs(ks[first]))
    evidence.scalar("bracket width of ζ_α(w) (upper − lower side)", (up0 - lo0).item())


# ---------------------------------------------------------------------------------------------- claim 27


_LABEL_DATA = {
    # data-set key: (experiment, id prefix, hypotheses, (smallest, largest) training-set size)
    "synthetic": (lambda: S.random_label_experiment(n=N_PROBLEMS), "",
                  ["toy scale: 2-class Gaussian mixture in R^32 (separation 3), depth-2 ReLU nets of width 256"],
                  (32, 128)),
    "digits": (lambda: S.digits_label_experiment(n=N_PROBLEMS), "digits-",
               ["real data: m images drawn from scikit-learn's digits (1,200-image training pool, standardized), "
                "true labels vs uniformly random labels over 10 classes, depth-2 ReLU nets 64 → 256 → 10"],
               (64, 256)),
}


def _label_evidence(exp: S.LabelExperiment, name: str) -> None:
    for m in exp.sizes:
        evidence.series(f"{name} measure vs training-set size", x=torch.full((N_PROBLEMS,), float(m)),
                        y=exp.true[m][name].reshape(1, -1), group="true labels", kind="scatter",
                        xlabel="m", ylabel=name, log_y=True)
        evidence.series(f"{name} measure vs training-set size", x=torch.full((N_PROBLEMS,), float(m)),
                        y=exp.random[m][name].reshape(1, -1), group="random labels", kind="scatter",
                        xlabel="m", ylabel=name, log_y=True)
    conv = torch.cat([exp.converged[m] for m in exp.sizes])
    evidence.scalar("nets that reached zero training error and CE < 0.01", float(conv.double().mean()))
    lo, hi = min(exp.sizes), max(exp.sizes)
    for which, d in (("true", exp.true), ("random", exp.random)):
        evidence.scalar(f"median growth {name}(m = {hi}) / {name}(m = {lo}), {which} labels",
                        float((d[hi][name] / d[lo][name]).median()))
    evidence.note(exp.description)


def _named(fn, name: str):
    """Give a factory-made claim function its own name (the registry and reports key on it)."""
    fn.__name__ = fn.__qualname__ = name
    return fn


def _label_claims(name: str, tex: str, data: str = "synthetic"):
    experiment, prefix, data_hyps, sizes = _LABEL_DATA[data]
    slug = (prefix + name).replace("-", "_")

    def larger(problem):
        exp = experiment()
        _label_evidence(exp, name)
        m = max(exp.sizes)
        require(bool(torch.cat([exp.converged[m]]).all()),
                f"every net at m = {m} reached zero training error and cross-entropy < 0.01")
        return exp.true[m][name], exp.random[m][name]

    def grows(problem):
        exp = experiment()
        _label_evidence(exp, name)
        lo, hi = min(exp.sizes), max(exp.sizes)
        require(bool(torch.cat([exp.converged[lo], exp.converged[hi]]).all()),
                "every net reached zero training error and cross-entropy < 0.01")
        return exp.true[hi][name] / exp.true[lo][name], exp.random[hi][name] / exp.random[lo][name]

    hyps = [*data_hyps, "full-batch Adam (lr 0.01) until zero training error and cross-entropy < 0.01",
            f"n = {N_PROBLEMS} problems (fixed seeds), paired by problem"]
    test = stats.paired("wilcoxon", alternative="less", alpha=ALPHA_LEVEL)
    what = "real data (scikit-learn digits)" if data == "digits" else "toy replication"
    m0, m1 = sizes
    larger = claim(
        f"neyshabur-2017/{prefix}random-labels-larger-{name}",
        source=EXPLORING.at("§3 (true vs random labels)", confirmed=False),
        kind="empirical",
        expect="holds",
        statement=f"Networks trained to zero training error on random labels have a larger margin-normalized {name} "
        f"measure than networks trained on the true labels of the same inputs ({what}, m = {m1}).",
        latex=rf"{tex}(\text{{true labels}}) < {tex}(\text{{random labels}})",
        hypotheses=[*hyps, f"paired Wilcoxon signed-rank test, one-sided (true < random), level {ALPHA_LEVEL}"],
    )(sample(n=N_PROBLEMS, test=test, batched=True, problem=st.just(None))(
        _named(larger, f"random_labels_larger_{slug}")))
    grows = claim(
        f"neyshabur-2017/{prefix}random-labels-grow-faster-{name}",
        source=EXPLORING.at("§3 (true vs random labels, growth with m)", confirmed=False),
        kind="empirical",
        expect="holds",
        statement=f"The margin-normalized {name} measure grows faster with the training-set size for random labels "
        f"than for true labels: its ratio between m = {m1} and m = {m0} is larger ({what}).",
        latex=rf"\frac{{{tex}(m{{=}}{m1})}}{{{tex}(m{{=}}{m0})}}\Big|_{{\text{{true}}}} < "
        rf"\frac{{{tex}(m{{=}}{m1})}}{{{tex}(m{{=}}{m0})}}\Big|_{{\text{{random}}}}",
        hypotheses=[*hyps, f"paired Wilcoxon signed-rank test on the growth ratios, one-sided, level {ALPHA_LEVEL}"],
    )(sample(n=N_PROBLEMS, test=test, batched=True, problem=st.just(None))(
        _named(grows, f"random_labels_grow_faster_{slug}")))
    return larger, grows


random_labels_larger_l2, random_labels_grow_faster_l2 = _label_claims("l2", r"\mu_{\ell_2}")
random_labels_larger_l1_path, random_labels_grow_faster_l1_path = _label_claims("l1-path", r"\mu_{\ell_1\text{-path}}")
random_labels_larger_l2_path, random_labels_grow_faster_l2_path = _label_claims("l2-path", r"\mu_{\ell_2\text{-path}}")
digits_random_labels_larger_l2, digits_random_labels_grow_faster_l2 = _label_claims(
    "l2", r"\mu_{\ell_2}", "digits")
digits_random_labels_larger_l1_path, digits_random_labels_grow_faster_l1_path = _label_claims(
    "l1-path", r"\mu_{\ell_1\text{-path}}", "digits")
digits_random_labels_larger_l2_path, digits_random_labels_grow_faster_l2_path = _label_claims(
    "l2-path", r"\mu_{\ell_2\text{-path}}", "digits")


# ---------------------------------------------------------------------------------------------- claim 28


def width_evidence(exp: S.WidthExperiment, name: str | None) -> None:
    """Plots: test error (and a measure) vs width, with the median test error per width."""
    for H in exp.widths:
        evidence.series("test error vs hidden units", x=torch.full((N_PROBLEMS,), float(H)),
                        y=exp.test_error[H].reshape(1, -1), group="test error", kind="scatter",
                        xlabel="hidden units H", ylabel="test error", log_x=True)
        if name is not None:
            evidence.series(f"{name} measure vs hidden units", x=torch.full((N_PROBLEMS,), float(H)),
                            y=exp.measures[H][name].reshape(1, -1), group=name, kind="scatter",
                            xlabel="hidden units H", ylabel=name, log_x=True, log_y=True)
    conv = torch.cat([exp.converged[H] for H in exp.widths])
    evidence.scalar("nets that reached zero training error and CE < 0.01", float(conv.double().mean()))
    medians = ", ".join(f"H = {H}: {exp.test_error[H].median().item():.4f}" for H in exp.widths)
    evidence.note(f"Median test error by width: {medians}.")
    if name is not None:
        ratios = ", ".join(f"{a} → {b}: {(exp.measures[b][name] / exp.measures[a][name]).median().item():.3g}"
                           for a, b in zip(exp.widths, exp.widths[1:], strict=False))
        evidence.note(f"Median ratio of the {name} measure between consecutive widths: {ratios}.")
    evidence.note(exp.description)


def _falls_with_width(exp: S.WidthExperiment, lo: int, hi: int) -> tuple[bool, str]:
    """Whether the test error falls from H = lo to H = hi on these problems: the same one-sided paired Wilcoxon
    test at the same level as the claims (the precondition of the width controls); returns it and a sentence."""
    r = stats.evaluate(stats.paired("wilcoxon", alternative="less", alpha=ALPHA_LEVEL),
                       list(zip(exp.test_error[hi].tolist(), exp.test_error[lo].tolist(), strict=True)))
    return r["outcome"] == "holds", r["sentence"]


_WIDTH_DATA = {
    # data-set key: (experiment, id prefix, id suffix, (lo, hi) widths compared, hypotheses)
    "synthetic": (lambda: S.width_experiment(n=N_PROBLEMS), "", "-beyond-128", (128, 512),
                  ["toy scale: teacher-net labels (16 → 16 → 2), m = 128, depth-2 students of widths 32/128/512"]),
    "digits": (lambda: S.digits_width_experiment(n=N_PROBLEMS), "digits-", "", (32, 512),
               ["real data: m = 256 images drawn from scikit-learn's digits (1,200-image training pool, "
                "standardized), tested on the 597 held-out images; depth-2 nets 64 → H → 10, H ∈ {32, 128, 512}"]),
}


def digits_width_lowers_test_error(problem):
    exp = S.digits_width_experiment(n=N_PROBLEMS)
    width_evidence(exp, None)
    require(bool(torch.cat([exp.converged[H] for H in exp.widths]).all()),
            "every net reached zero training error and cross-entropy < 0.01")
    for lo, hi in ((32, 128), (128, 512)):
        evidence.note(f"Test error {lo} → {hi} hidden units (not the claim's test; for the reader): "
                      f"{_falls_with_width(exp, lo, hi)[1]}")
    return exp.test_error[max(exp.widths)], exp.test_error[min(exp.widths)]


digits_width_lowers_test_error = claim(
    "neyshabur-2017/digits-width-lowers-test-error",
    source=EXPLORING.at("§3 (over-parametrization), after In Search §2, Figure 1", confirmed=False),
    kind="empirical",
    expect="holds",
    statement="Past the width needed to fit the training set (zero training error), more hidden units keep "
    "lowering the test error: on real data (scikit-learn's digits), nets with 512 hidden units generalize "
    "better than nets with 32 trained on the same images.  This is the fall the digits width controls "
    "(`digits-…-explains-width`) ask a measure to explain.",
    latex=r"\mathrm{err}_{\text{test}}(H = 512) < \mathrm{err}_{\text{test}}(H = 32)\ \ "
    r"\text{(both at zero training error)}",
    hypotheses=[*_WIDTH_DATA["digits"][4],
                "full-batch Adam (lr 0.01) to zero training error and cross-entropy < 0.01 (every width "
                "interpolates: 32 is already past interpolation)",
                f"n = {N_PROBLEMS} problems (fixed seeds), paired by problem",
                f"paired Wilcoxon signed-rank test, one-sided (512 < 32), level {ALPHA_LEVEL}"],
)(sample(n=N_PROBLEMS, test=stats.paired("wilcoxon", alternative="less", alpha=ALPHA_LEVEL), batched=True,
         problem=st.just(None))(digits_width_lowers_test_error))


def _width_claim(name: str, tex: str, data: str = "synthetic"):
    experiment, prefix, suffix, (lo, hi), data_hyps = _WIDTH_DATA[data]

    def explains(problem):
        exp = experiment()
        width_evidence(exp, name)
        require(bool(torch.cat([exp.converged[H] for H in exp.widths]).all()),
                "every net reached zero training error and cross-entropy < 0.01")
        falls, sentence = _falls_with_width(exp, lo, hi)
        evidence.note(f"Does the test error fall from H = {lo} to H = {hi} on these problems? {sentence}")
        if data == "digits":
            # the control means something only if there is a fall to explain (see the statement)
            require(falls, f"the test error falls significantly from H = {lo} to H = {hi} (one-sided paired "
                           f"Wilcoxon, level {ALPHA_LEVEL}): there is a width benefit to explain")
        return exp.measures[hi][name], exp.measures[lo][name]

    if data == "digits":
        statement = (f"From {lo} to {hi} hidden units the margin-normalized {name} measure decreases with width, as "
                     f"the test error does, so it could explain the benefit of width on real data (scikit-learn's "
                     f"digits).  Exploring reports that the norm measures fail to explain this benefit beyond ~128 "
                     f"units (MNIST/CIFAR-10), so the paper's position is that this is false.  The control needs a "
                     f"fall to explain: it requires (checked in every run; otherwise the verdict is error, never "
                     f"refuted) that the test error falls significantly over the same range on the same nets.  On "
                     f"digits at this scale it does from 32 to 512 units (claim digits-width-lowers-test-error) but "
                     f"not significantly from 128 to 512 (8 of 12 problems lower, p ≈ 0.09), so the control "
                     f"compares H = {hi} with H = {lo}.  Refuted only by a significant increase of the measure.")
    else:
        statement = (f"Beyond ~128 hidden units the margin-normalized {name} measure keeps decreasing with width "
                     f"(Exploring reports that the norm measures fail to explain the benefit of width there, so the "
                     f"paper's position is that this is false).  Refuted only by a significant increase of the "
                     f"measure.  What this toy control shows is limited: the paper's point is that the measure fails "
                     f"to explain a fall of the test error, and on these teacher problems the test error does not "
                     f"fall with width (neyshabur-2015-search/width-lowers-test-error), so here it shows only that "
                     f"the measure grows with width; the real-data control (digits-{name}-explains-width) requires "
                     f"the fall.")
    return claim(
        f"neyshabur-2017/{prefix}{name}-explains-width{suffix}",
        source=EXPLORING.at("§3 (over-parametrization: measures vs hidden units)", confirmed=False),
        kind="empirical",
        expect="refuted",
        refuted_by="opposite",
        statement=statement,
        latex=rf"{tex}(H = {hi}) < {tex}(H = {lo})",
        hypotheses=[*data_hyps,
                    "full-batch Adam (lr 0.01) until zero training error and cross-entropy < 0.01",
                    f"n = {N_PROBLEMS} problems (fixed seeds), paired by problem",
                    f"paired Wilcoxon signed-rank test, one-sided ({hi} < {lo}), level {ALPHA_LEVEL}; refuted only "
                    f"when significant in the opposite direction ({hi} > {lo}) at the same level",
                    *([f"precondition: the test error falls from {lo} to {hi} units (same test and level)"]
                      if data == "digits" else [])],
    )(sample(n=N_PROBLEMS, test=stats.paired("wilcoxon", alternative="less", alpha=ALPHA_LEVEL), batched=True,
             problem=st.just(None))(_named(explains, f"{(prefix + name).replace('-', '_')}_explains_width")))


l2_explains_width = _width_claim("l2", r"\mu_{\ell_2}")
l1_path_explains_width = _width_claim("l1-path", r"\mu_{\ell_1\text{-path}}")
l2_path_explains_width = _width_claim("l2-path", r"\mu_{\ell_2\text{-path}}")
digits_l2_explains_width = _width_claim("l2", r"\mu_{\ell_2}", "digits")
digits_l1_path_explains_width = _width_claim("l1-path", r"\mu_{\ell_1\text{-path}}", "digits")
digits_l2_path_explains_width = _width_claim("l2-path", r"\mu_{\ell_2\text{-path}}", "digits")
