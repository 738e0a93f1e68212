"""Certified numbers: the bottom layer of implreg (imports only torch, numpy, mpmath, sympy, flint).

A ``Certified`` is a batched float64 value with a per-entry error bound and the expression graph that made it;
comparisons of certified values are decided by ``certify`` in tiers (float bounds, Arb balls, exact).
"""

from implreg.numerics.certified import Certified, Refinement, lift
from implreg.numerics.compare import Comparison, Undecided, certify, close
from implreg.numerics.linalg import det, matmul, svdvals
from implreg.numerics.ops import amax, amin, cat, exp, log, maximum, mean, minimum, sqrt, stack, where
from implreg.numerics.recording import current

__all__ = [
    "Certified",
    "Comparison",
    "Refinement",
    "Undecided",
    "amax",
    "amin",
    "cat",
    "certify",
    "close",
    "current",
    "det",
    "exp",
    "lift",
    "log",
    "matmul",
    "maximum",
    "mean",
    "minimum",
    "sqrt",
    "stack",
    "svdvals",
    "where",
]
