"""Real data shipped with scikit-learn (nothing is downloaded): the UCI optical digits set, ``load_digits``.

``sklearn.datasets.load_digits`` reads ``digits.csv.gz`` from scikit-learn's own package directory: 1,797
8×8 grey-level images (pixel values 0 … 16) of the digits 0–9, about 180 per class.  ``digits`` returns a fixed
train/test split of it (a seeded permutation, stratified by class), standardized with the *training* split's
per-pixel mean and standard deviation (no test statistics leak into training).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from implreg.errors import InvalidInputError
from implreg.relu.synthetic import Dataset

__all__ = ["DIGITS_SIZE", "digits", "digits_raw", "subsample"]

DIGITS_SIZE = 1797  # images in scikit-learn's digits set (UCI test part of "optical recognition of digits")
_CLASSES = 10


@functools.lru_cache(maxsize=1)
def digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 images as float64 (1797, 64) pixel values in 0 … 16 and their int64 labels (1797,); read once
    per process from the CSV that ships inside scikit-learn (``load_digits`` never touches the network)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - scikit-learn is a dependency
        raise InvalidInputError("the digits data set needs scikit-learn (pip install scikit-learn)") from e
    d = load_digits()
    x, y = np.asarray(d.data, dtype=np.float64), np.asarray(d.target, dtype=np.int64)
    if x.shape != (DIGITS_SIZE, 64) or y.shape != (DIGITS_SIZE,):
        raise InvalidInputError(f"scikit-learn's digits set has an unexpected shape {x.shape}, {y.shape}")
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _split(y: np.ndarray, m_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split: each class gives round(m_test · n_c / N) test images (remainders go to the classes with
    the largest fractional parts, ties by class), chosen by a seeded permutation; returns sorted index arrays."""
    rng = np.random.default_rng(seed)
    counts = np.bincount(y, minlength=_CLASSES)
    share = m_test * counts / y.size
    take = np.floor(share).astype(np.int64)
    order = np.lexsort((np.arange(_CLASSES), -(share - take)))
    take[order[: m_test - int(take.sum())]] += 1
    test = np.concatenate([rng.permutation(np.flatnonzero(y == c))[: take[c]] for c in range(_CLASSES)])
    train = np.setdiff1d(np.arange(y.size), test)
    return train, np.sort(test)


def digits(
    m_test: int = 597,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> Dataset:
    """scikit-learn's digits, split into 1797 − m_test training and m_test test images (stratified by class,
    fixed by ``seed``), inputs standardized per pixel: x ← (x − mean_train) / sd_train, where a pixel that is
    constant on the training split (sd = 0; a few border pixels are always blank) is only centred.  x is
    (m, 64) of the given dtype on ``device``, y int64 labels 0 … 9; the same seed gives the same split."""
    if not isinstance(m_test, int) or not 10 <= m_test <= DIGITS_SIZE - 10:
        raise InvalidInputError(f"m_test must be an integer in [10, {DIGITS_SIZE - 10}] (each split needs every "
                                f"class), got {m_test!r}")
    if not dtype.is_floating_point:
        raise InvalidInputError(f"dtype must be a floating-point dtype, got {dtype}")
    x, y = digits_raw()
    tr, te = _split(y, m_test, seed)
    mean = x[tr].mean(axis=0)
    sd = x[tr].std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)  # a blank pixel stays 0 after centring: nothing to scale
    z = (x - mean) / sd

    def t(a: np.ndarray, dt: torch.dtype) -> Tensor:
        return torch.as_tensor(np.ascontiguousarray(a)).to(device=device, dtype=dt)

    return Dataset(t(z[tr], dtype), t(y[tr], torch.int64), t(z[te], dtype), t(y[te], torch.int64), _CLASSES,
                   f"scikit-learn digits (8×8, 10 classes): {tr.size} training / {te.size} test images, stratified "
                   f"split by seed {seed}, pixels standardized with training-split statistics")


def subsample(data: Dataset, m: int, *, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """m training points drawn without replacement from ``data``'s training split by ``generator`` (drawn on the
    generator's device, then moved): returns (x (m, D), y (m,))."""
    if not isinstance(m, int) or not 1 <= m <= data.m:
        raise InvalidInputError(f"m must be an integer in [1, {data.m}] (the training split's size), got {m!r}")
    idx = torch.randperm(data.m, generator=generator, device=generator.device)[:m].to(data.x_train.device)
    return data.x_train[idx], data.y_train[idx]
