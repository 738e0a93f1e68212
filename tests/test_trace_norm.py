"""implreg.matrix.trace_norm.svd_split: its defects stay below the stated accuracy (whose σ₁ is checked against numpy),
M = 0 splits exactly, and the comparison a claim makes on them certifies and refutes a planted defect."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from implreg import certify
from implreg.errors import InvalidInputError
from implreg.matrix.trace_norm import svd_split
from implreg.numerics import close


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 2, 4), (4, 4, 2), (2, 3, 3)])
def test_split_defects_are_below_the_accuracy_and_certify(shape):
    n, m, k = shape
    g = torch.Generator().manual_seed(n * 100 + m * 10 + k)
    U = torch.randn(n, k, generator=g, dtype=torch.float64)
    V = torch.randn(m, k, generator=g, dtype=torch.float64)
    split = svd_split(U, V)
    sigma1 = float(np.linalg.norm((U @ V.T).numpy(), 2))
    # the accuracy model 10^(10−dps)(1 + σ₁)·max(n, m) at 60 digits
    assert split.accuracy == pytest.approx(1e-50 * (1 + sigma1) * max(n, m), rel=1e-9)
    for d in (split.residual, split.excess):
        assert d.shape == (1,) and not d.rigorous
        assert abs(d.item()) <= split.accuracy
    certify(close(split.residual, 0, split.tolerance), what="residual")
    certify(close(split.excess, 0, split.tolerance), what="excess")


def test_zero_matrix_splits_exactly():
    U = torch.zeros(2, 3, dtype=torch.float64)
    V = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    split = svd_split(U, V)
    assert split.residual.item() == 0.0 and split.excess.item() == 0.0


def test_a_defect_beyond_the_tolerance_is_refuted():
    # the comparison the claim makes is not vacuous: a defect of 3× the accuracy is certified false
    split = svd_split(torch.eye(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    with pytest.raises(AssertionError):
        certify(close(split.excess + 3 * split.tolerance, 0, split.tolerance), what="planted defect")


def test_bad_inputs_are_rejected():
    with pytest.raises(InvalidInputError):
        svd_split(torch.ones(2, 3, dtype=torch.float64), torch.ones(2, 2, dtype=torch.float64))
    with pytest.raises(InvalidInputError):
        svd_split(torch.ones(2, 2, dtype=torch.float64), torch.ones(2, 2, dtype=torch.float64), dps=20)
