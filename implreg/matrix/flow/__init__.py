"""Batched gradient-flow and gradient-descent simulators (torch, any device).

- :func:`solve`: adaptive Dormand–Prince gradient flow on deep matrix factorizations.
- :func:`integrate`: the generic batched embedded Runge–Kutta integrator under it.
- :func:`descend`: fixed-step gradient descent, as in the papers' experiments.
"""

from implreg.matrix.flow.descent import DescentSolution, descend
from implreg.matrix.flow.gradient_flow import (
    TWO_TOL_FACTOR,
    FlowSolution,
    det_guard,
    solve,
    two_tolerance_error,
    vector_field,
)
from implreg.matrix.flow.integrate import IntegrationResult, Status, integrate
from implreg.matrix.flow.spectral import BalancedFlowSolution, rosenbrock, solve_balanced
from implreg.matrix.flow.tableau import DOPRI5, ButcherTableau

__all__ = [
    "DOPRI5",
    "TWO_TOL_FACTOR",
    "BalancedFlowSolution",
    "ButcherTableau",
    "DescentSolution",
    "FlowSolution",
    "IntegrationResult",
    "Status",
    "descend",
    "det_guard",
    "integrate",
    "rosenbrock",
    "solve",
    "solve_balanced",
    "two_tolerance_error",
    "vector_field",
]
