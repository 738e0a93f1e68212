"""Synthetic supervised problems generated in code (nothing is downloaded): Gaussian mixtures, teacher nets;
and the toy replications of Exploring §3 / In Search §2 run on them and on scikit-learn's shipped digits set
(``implreg.relu.datasets``).

Every generator takes an explicit ``torch.Generator`` (the same seed gives the same data on every device:
draws happen on the generator's device and are then moved), a dtype (float64 by default) and a device.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from implreg.errors import InvalidInputError
from implreg.relu.network import ReluNet, forward, random_net

__all__ = [
    "Dataset",
    "LabelExperiment",
    "WidthExperiment",
    "digits_label_experiment",
    "digits_width_experiment",
    "gaussian_mixture",
    "random_label_experiment",
    "random_labels",
    "teacher_classification",
    "teacher_regression",
    "width_experiment",
]


@dataclass(frozen=True)
class Dataset:
    """Train and test splits: inputs (m, D) and integer labels (m,) (or regression targets (m, k))."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: int
    description: str

    @property
    def m(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def dim(self) -> int:
        return int(self.x_train.shape[1])


def _randn(shape, generator, dtype, device) -> Tensor:
    gdev = generator.device if generator is not None else device
    return torch.randn(*shape, generator=generator, dtype=dtype, device=gdev).to(device)


def _check(m: int, dim: int, classes: int) -> None:
    if m < 1 or dim < 1 or classes < 2:
        raise InvalidInputError(f"need m ≥ 1, dim ≥ 1 and classes ≥ 2, got m={m}, dim={dim}, classes={classes}")


def gaussian_mixture(
    m_train: int,
    m_test: int,
    dim: int,
    classes: int = 2,
    *,
    separation: float = 2.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> Dataset:
    """Balanced mixture of ``classes`` isotropic unit Gaussians in R^dim whose means are i.i.d. N(0, I)
    directions scaled to norm ``separation``; labels are the component index.  Inputs are scaled by
    1/√dim so that ‖x‖ = O(1)."""
    _check(m_train, dim, classes)
    means = _randn((classes, dim), generator, dtype, device)
    means = separation * means / means.norm(dim=1, keepdim=True)
    m = m_train + m_test
    y = torch.arange(m, device=device) % classes
    perm = torch.randperm(m, generator=generator, device=generator.device if generator is not None else device)
    y = y[perm.to(device)]
    x = (means[y] + _randn((m, dim), generator, dtype, device)) / math.sqrt(dim)
    return Dataset(x[:m_train], y[:m_train], x[m_train:], y[m_train:], classes,
                   f"{classes}-component Gaussian mixture in R^{dim}, mean separation {separation}")


def teacher_classification(
    m_train: int,
    m_test: int,
    teacher_widths: tuple[int, ...],
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> Dataset:
    """x ~ N(0, I/D), label = argmax of a random (He-initialized) teacher ReLU net of the given widths."""
    D, classes = teacher_widths[0], teacher_widths[-1]
    _check(m_train, D, classes)
    teacher = random_net(teacher_widths, 1, generator=generator, dtype=dtype, device=device)
    x = _randn((m_train + m_test, D), generator, dtype, device) / math.sqrt(D)
    y = forward(teacher, x).value[0].argmax(dim=-1)
    return Dataset(x[:m_train], y[:m_train], x[m_train:], y[m_train:], classes,
                   f"teacher ReLU net of widths {teacher_widths}, labels = argmax")


def teacher_regression(
    m: int,
    teacher_widths: tuple[int, ...],
    *,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor, ReluNet]:
    """x ~ N(0, I) (m, D) and targets y = f_teacher(x) + noise·N(0, I), (m, k); returns (x, y, teacher)."""
    teacher = random_net(teacher_widths, 1, generator=generator, dtype=dtype, device=device)
    x = _randn((m, teacher_widths[0]), generator, dtype, device)
    y = forward(teacher, x).value[0] + noise * _randn((m, teacher_widths[-1]), generator, dtype, device)
    return x, y, teacher


def random_labels(y: Tensor, classes: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Labels drawn uniformly from 0 … classes−1, independent of the inputs (Zhang et al. 2017)."""
    gdev = generator.device if generator is not None else y.device
    return torch.randint(0, classes, tuple(y.shape), generator=generator, device=gdev).to(y.device)


# ---------------------------------------------------------------------------------------------- toy replications


@dataclass(frozen=True)
class LabelExperiment:
    """Exploring §3 at toy scale: per training-set size m, the margin-normalized measures of nets trained to
    zero training error on true and on random labels: ``true[m][name]`` and ``random[m][name]``, each (n,)
    over the n problems; ``converged[m]`` (2n,) says which nets met the stopping rule."""

    sizes: tuple[int, ...]
    true: dict[int, dict[str, Tensor]]
    random: dict[int, dict[str, Tensor]]
    converged: dict[int, Tensor]
    steps: dict[int, Tensor]
    description: str

    def all_converged(self, *sizes: int) -> bool:
        """Whether every net at these sizes (default: all) met the stopping rule."""
        return bool(torch.cat([self.converged[m] for m in sizes or self.sizes]).all())


@functools.lru_cache(maxsize=4)
def random_label_experiment(
    n: int = 12, sizes: tuple[int, ...] = (32, 64, 128), dim: int = 32, width: int = 256,
    separation: float = 3.0, seed: int = 0,
) -> LabelExperiment:
    """For problems i = 0 … n−1 (data seed = seed + i): a 2-class Gaussian mixture in R^dim (``gaussian_mixture``,
    mean separation ``separation``) of each size m, its true labels and uniformly random labels; a depth-2
    ReLU net of the given width (He init, its own seed per (m, problem, labels)) trained by full-batch Adam
    (lr 0.01) until zero training error and cross-entropy < 0.01 (``pathsgd.fit_to_zero_error``); then the
    measures of ``capacity.exploring_measures`` (5th-percentile training margin).  Cached per process."""
    true, rand, conv, steps = {}, {}, {}, {}
    for m in sizes:
        xs, ys, yr = [], [], []
        for i in range(n):
            g = torch.Generator().manual_seed(seed + 7919 * i + m)
            d = gaussian_mixture(m, 1, dim, 2, separation=separation, generator=g)
            xs.append(d.x_train)
            ys.append(d.y_train)
            yr.append(random_labels(d.y_train, 2, generator=g))
        true[m], rand[m], conv[m], steps[m] = _fit_true_and_random(xs, ys, yr, width, 2, seed + m)
    return LabelExperiment(tuple(sizes), true, rand, conv, steps,
                           f"{n} problems: 2-class Gaussian mixture in R^{dim} (separation {separation}), "
                           f"depth-2 ReLU nets of width {width}, full-batch Adam to zero training error and "
                           f"cross-entropy < 0.01, sizes m ∈ {list(sizes)}")


@functools.lru_cache(maxsize=2)
def digits_label_experiment(
    n: int = 12, sizes: tuple[int, ...] = (64, 256), width: int = 256, seed: int = 0,
) -> LabelExperiment:
    """The same protocol on real data: scikit-learn's digits (``implreg.relu.datasets.digits``, fixed split by seed 0,
    standardized); for problems i = 0 … n−1 and each size m, m training images drawn without replacement from
    the 1,200-image training split (generator seed + 7919 i + m), their true labels and uniformly random labels
    over the 10 classes; depth-2 ReLU nets 64 → width → 10 trained and measured as in
    ``random_label_experiment``.  Cached per process."""
    from implreg.relu.datasets import digits, subsample

    data = digits()
    true, rand, conv, steps = {}, {}, {}, {}
    for m in sizes:
        xs, ys, yr = [], [], []
        for i in range(n):
            g = torch.Generator().manual_seed(seed + 7919 * i + m)
            x, y = subsample(data, m, generator=g)
            xs.append(x)
            ys.append(y)
            yr.append(random_labels(y, data.classes, generator=g))
        true[m], rand[m], conv[m], steps[m] = _fit_true_and_random(xs, ys, yr, width, data.classes, seed + m)
    return LabelExperiment(tuple(sizes), true, rand, conv, steps,
                           f"{n} problems: m images drawn from {data.description}; true vs uniformly random "
                           f"labels (10 classes); depth-2 ReLU nets of width {width}, full-batch Adam to zero "
                           f"training error and cross-entropy < 0.01, sizes m ∈ {list(sizes)}")


def _fit_true_and_random(xs: list[Tensor], ys: list[Tensor], yr: list[Tensor], width: int, classes: int,
                         init_seed: int) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor, Tensor]:
    """Train one depth-2 net (He init, seeded by ``init_seed``) per problem and labelling, true labels first, to
    zero training error and CE < 0.01; returns the measures of the true-label nets, of the random-label nets,
    and (2n,) converged flags and step counts."""
    from implreg.relu.capacity import exploring_measures
    from implreg.relu.pathsgd import fit_to_zero_error

    n = len(xs)
    x, y = torch.stack(xs + xs), torch.stack(ys + yr)
    init = random_net((x.shape[-1], width, classes), 2 * n, generator=torch.Generator().manual_seed(init_seed))
    fit = fit_to_zero_error(init, x, y)
    meas = exploring_measures(fit.net, x, y)
    return {k: v[:n] for k, v in meas.items()}, {k: v[n:] for k, v in meas.items()}, fit.converged, fit.steps


@dataclass(frozen=True)
class WidthExperiment:
    """In Search / Exploring §3 at toy scale: per hidden width H, the test error (n,) and the margin-normalized
    measures ``measures[H][name]`` (n,) of nets trained to zero training error on the same n problems."""

    widths: tuple[int, ...]
    test_error: dict[int, Tensor]
    measures: dict[int, dict[str, Tensor]]
    converged: dict[int, Tensor]
    description: str

    def all_converged(self) -> bool:
        """Whether every net of every width met the stopping rule."""
        return bool(torch.cat([self.converged[H] for H in self.widths]).all())


@functools.lru_cache(maxsize=4)
def width_experiment(
    n: int = 12, widths: tuple[int, ...] = (32, 128, 512), dim: int = 16, teacher_width: int = 16,
    m: int = 128, m_test: int = 2000, seed: int = 0,
) -> WidthExperiment:
    """For problems i = 0 … n−1: x ~ N(0, I/dim), labels = argmax of a random depth-2 teacher of width
    ``teacher_width`` with 2 outputs (``teacher_classification``, seed + i), m training and m_test test
    points; depth-2 students of each width H (He init) trained by full-batch Adam (lr 0.01) to zero training
    error and cross-entropy < 0.01; test error and ``capacity.exploring_measures``.  Cached per process."""
    data = [teacher_classification(m, m_test, (dim, teacher_width, 2), generator=torch.Generator().manual_seed(
        seed + 104729 * i)) for i in range(n)]
    x, y = torch.stack([d.x_train for d in data]), torch.stack([d.y_train for d in data])
    xt, yt = torch.stack([d.x_test for d in data]), torch.stack([d.y_test for d in data])
    err, meas, conv = _fit_widths(x, y, xt, yt, widths, 2, seed)
    return WidthExperiment(tuple(widths), err, meas, conv,
                           f"{n} problems: teacher ReLU net ({dim}, {teacher_width}, 2) labels, m = {m} training and "
                           f"{m_test} test points; depth-2 students of widths {list(widths)} trained by full-batch "
                           f"Adam to zero training error and cross-entropy < 0.01")


@functools.lru_cache(maxsize=2)
def digits_width_experiment(
    n: int = 12, widths: tuple[int, ...] = (32, 128, 512), m: int = 256, seed: int = 0,
) -> WidthExperiment:
    """The same protocol on real data: for problems i = 0 … n−1, m training images drawn without replacement from
    the 1,200-image training split of scikit-learn's digits (``implreg.relu.datasets.digits``, split seed 0,
    standardized; generator seed + 104729 i + 1), with their true labels; depth-2 nets 64 → H → 10 of each
    width H trained as in ``width_experiment``; test error on the fixed 597-image test split.  Cached per
    process."""
    from implreg.relu.datasets import digits, subsample

    data = digits()
    xs, ys = zip(*[subsample(data, m, generator=torch.Generator().manual_seed(seed + 104729 * i + 1))
                   for i in range(n)], strict=True)
    x, y = torch.stack(xs), torch.stack(ys)
    xt = data.x_test.unsqueeze(0).expand(n, -1, -1)
    yt = data.y_test.unsqueeze(0).expand(n, -1)
    err, meas, conv = _fit_widths(x, y, xt, yt, widths, data.classes, seed)
    return WidthExperiment(tuple(widths), err, meas, conv,
                           f"{n} problems: m = {m} images drawn from {data.description}, tested on all "
                           f"{data.x_test.shape[0]} test images; depth-2 nets of widths {list(widths)} trained by "
                           f"full-batch Adam to zero training error and cross-entropy < 0.01")


def _fit_widths(x: Tensor, y: Tensor, xt: Tensor, yt: Tensor, widths: tuple[int, ...], classes: int,
                seed: int) -> tuple[dict[int, Tensor], dict[int, dict[str, Tensor]], dict[int, Tensor]]:
    """Per width H: train one depth-2 net per problem (He init seeded by seed + H) on (x, y) (B, m, D), (B, m) to
    zero training error and CE < 0.01; its test error on (xt, yt), its measures, and whether it converged."""
    from implreg.relu.capacity import exploring_measures
    from implreg.relu.pathsgd import fit_to_zero_error

    err, meas, conv = {}, {}, {}
    for H in widths:
        init = random_net((x.shape[-1], H, classes), x.shape[0], generator=torch.Generator().manual_seed(seed + H))
        fit = fit_to_zero_error(init, x, y)
        err[H] = (forward(fit.net, xt).value.argmax(dim=-1) != yt).to(x.dtype).mean(dim=1)
        meas[H] = exploring_measures(fit.net, x, y)
        conv[H] = fit.converged
    return err, meas, conv
