"""Tests of the toy-replication experiments of implreg.relu.synthetic on digits, on small configurations, against facts
that hold independently of the training run: a net at zero training error has test error 0 on its own training
set, margin-normalized measures are finite and positive exactly when the 5th-percentile margin is positive, and
a wrong image/label pairing would give chance-level (~90 %) test error."""

from __future__ import annotations

import torch

from implreg.relu import datasets as D
from implreg.relu import synthetic as S


def test_fit_widths_has_zero_error_on_its_own_training_set():
    d = D.digits()
    xs, ys = zip(*[D.subsample(d, 40, generator=torch.Generator().manual_seed(i)) for i in range(3)], strict=True)
    x, y = torch.stack(xs), torch.stack(ys)
    err, meas, conv = S._fit_widths(x, y, x, y, (32, 64), 10, seed=0)
    for H in (32, 64):
        assert bool(conv[H].all())
        assert torch.equal(err[H], torch.zeros(3, dtype=torch.float64))  # converged ⇒ every training point right
        for v in meas[H].values():
            assert v.shape == (3,) and bool(torch.isfinite(v).all() and (v > 0).all())


def test_digits_width_experiment_learns_real_structure():
    exp = S.digits_width_experiment(n=2, widths=(64,), m=200)
    err = exp.test_error[64]
    assert err.shape == (2,) and bool(exp.converged[64].all())
    # 597 test images: errors are multiples of 1/597; chance is 0.9, so a broken pairing of images and labels
    # (or no standardization) would be far above 0.3; nets on 200 digits reach ~0.1
    k = err * 597
    assert torch.allclose(k, k.round(), atol=1e-9)
    assert bool((err < 0.3).all())


def test_digits_label_experiment_pairs_true_and_random_labels():
    exp = S.digits_label_experiment(n=2, sizes=(24, 48), width=32)
    assert exp.sizes == (24, 48)
    for m in exp.sizes:
        assert exp.converged[m].shape == (4,) and bool(exp.converged[m].all())
        for name in ("l2", "l1-path", "l2-path", "spectral"):
            t, r = exp.true[m][name], exp.random[m][name]
            assert t.shape == r.shape == (2,)
            assert bool(torch.isfinite(t).all() and torch.isfinite(r).all() and (t > 0).all() and (r > 0).all())
    # cached per process and deterministic: a second call (after clearing the cache) gives the same numbers
    S.digits_label_experiment.cache_clear()
    again = S.digits_label_experiment(n=2, sizes=(24, 48), width=32)
    assert torch.equal(again.random[48]["l2"], exp.random[48]["l2"])
