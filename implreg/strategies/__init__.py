"""Hypothesis strategies that draw valid instances by construction.

``implreg.strategies.matrix``: balanced and Gaussian inits for deep matrix factorization, low-rank completion
problems, perturbations.  ``implreg.strategies.relu``: ReLU nets, their widths, inputs and node rescalings.
"""

from implreg.strategies import matrix, relu
from implreg.strategies.matrix import *  # noqa: F403
from implreg.strategies.relu import *  # noqa: F403

__all__ = [*matrix.__all__, *relu.__all__, "matrix", "relu"]
