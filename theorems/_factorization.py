"""Re-export of :mod:`implreg.matrix.levels` (its old home), so that claim files importing from here keep working."""

from implreg.matrix.levels import *  # noqa: F403
from implreg.matrix.levels import (  # noqa: F401  (names claim files import from here)
    ATOL,
    LEVELS,
    RTOL,
    LevelStates,
    solve_levels,
    w11_lower_bound,
)
