"""Tests of implreg.relu.datasets (scikit-learn's shipped digits) against independent computations on the raw data
that scikit-learn returns: split sizes and class counts, disjointness, standardization, determinism, no network."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from implreg.errors import InvalidInputError
from implreg.relu import datasets as D

sklearn_datasets = pytest.importorskip("sklearn.datasets")


def _raw() -> tuple[np.ndarray, np.ndarray]:
    d = sklearn_datasets.load_digits()
    return d.data.astype(np.float64), d.target.astype(np.int64)


def _rows_as_set(x: np.ndarray) -> set[bytes]:
    return {r.tobytes() for r in np.ascontiguousarray(x + 0.0)}  # + 0.0: −0.0 → 0.0 (same image)


def test_shapes_dtypes_and_labels():
    d = D.digits()
    assert d.x_train.shape == (1200, 64) and d.x_test.shape == (597, 64)
    assert d.y_train.shape == (1200,) and d.y_test.shape == (597,)
    assert d.x_train.dtype == torch.float64 and d.y_train.dtype == torch.int64
    assert d.classes == 10 and d.m == 1200 and d.dim == 64
    assert set(d.y_train.tolist()) == set(range(10)) == set(d.y_test.tolist())
    assert D.digits(dtype=torch.float32).x_test.dtype == torch.float32


def test_split_is_stratified_by_class():
    _, y = _raw()
    d = D.digits(m_test=597, seed=3)
    counts = np.bincount(y, minlength=10)
    test_counts = np.bincount(d.y_test.numpy(), minlength=10)
    assert test_counts.sum() == 597
    # proportional allocation: each class within one image of 597·n_c/1797
    assert np.all(np.abs(test_counts - 597 * counts / 1797) < 1.0)
    assert np.array_equal(np.bincount(d.y_train.numpy(), minlength=10) + test_counts, counts)


def test_standardization_uses_training_statistics_and_train_plus_test_is_every_image():
    x, y = _raw()
    d = D.digits(seed=1)
    xtr, xte = d.x_train.numpy(), d.x_test.numpy()
    # training split: mean 0 per pixel; sd 1 for every pixel that varies, exactly 0 for the blank ones
    assert np.abs(xtr.mean(axis=0)).max() < 1e-12
    sd = xtr.std(axis=0)
    varies = sd > 0
    assert np.abs(sd[varies] - 1).max() < 1e-12
    assert np.all(xtr[:, ~varies] == 0)
    # invert with statistics recovered from the raw data: the raw training images are those raw rows whose
    # standardized versions (with μ, σ of the raw training rows) are the module's rows.  Find μ, σ per pixel from
    # two distinct raw values: a standardized pixel z = (v − μ)/σ is affine in v with slope 1/σ.
    lab = np.concatenate([d.y_train.numpy(), d.y_test.numpy()])
    assert np.array_equal(np.sort(lab), np.sort(y))
    z = np.concatenate([xtr, xte])
    mu = np.empty(64)
    sig = np.ones(64)
    for j in range(64):
        vals = np.unique(x[:, j])
        zs = np.unique(np.round(z[:, j], 9))
        assert vals.size == zs.size  # the standardization is a strictly increasing affine map per pixel
        if vals.size > 1:
            sig[j] = (vals[-1] - vals[0]) / (zs[-1] - zs[0])
        mu[j] = vals[0] - sig[j] * zs[0]
    back = np.round(z * sig + mu, 6)
    assert _rows_as_set(back) == _rows_as_set(np.round(x, 6))  # every image exactly once (all 1797 are distinct)
    # and the pixel means/sds used are those of the *training* images, not of the whole set
    raw_train = np.round(xtr * sig + mu, 6)
    assert np.abs(raw_train.mean(axis=0) - mu).max() < 1e-6
    assert np.abs(x.mean(axis=0) - mu).max() > 1e-3  # the full-set mean differs: no test statistics leaked


def test_the_split_is_fixed_by_the_seed():
    a, b, c = D.digits(seed=5), D.digits(seed=5), D.digits(seed=6)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_test, c.y_test)
    assert D.digits(m_test=300).x_test.shape == (300, 64)


def test_no_network_is_used(monkeypatch):
    D.digits_raw.cache_clear()

    def refuse(*args, **kwargs):
        raise AssertionError("digits tried to open a network socket")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    d = D.digits()
    assert d.x_train.shape == (1200, 64)


def test_subsample_draws_distinct_training_rows_deterministically():
    d = D.digits()
    x1, y1 = D.subsample(d, 50, generator=torch.Generator().manual_seed(0))
    x2, y2 = D.subsample(d, 50, generator=torch.Generator().manual_seed(0))
    x3, _ = D.subsample(d, 50, generator=torch.Generator().manual_seed(1))
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    train_rows = {tuple(r) for r in d.x_train.tolist()}
    drawn = [tuple(r) for r in x1.tolist()]
    assert len(set(drawn)) == 50 and set(drawn) <= train_rows
    # labels travel with their images
    where = {tuple(r): int(c) for r, c in zip(d.x_train.tolist(), d.y_train.tolist(), strict=True)}
    assert [where[r] for r in drawn] == y1.tolist()


@pytest.mark.parametrize("m_test", [0, 9, 1788, 2000, 10.5])
def test_bad_split_size_is_named(m_test):
    with pytest.raises(InvalidInputError, match="m_test"):
        D.digits(m_test=m_test)


def test_bad_subsample_size_is_named():
    d = D.digits()
    with pytest.raises(InvalidInputError, match="m must be"):
        D.subsample(d, 1201, generator=torch.Generator().manual_seed(0))
    with pytest.raises(InvalidInputError, match="dtype"):
        D.digits(dtype=torch.int64)
