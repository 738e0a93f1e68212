"""Re-export of :mod:`implreg.matrix.levels` (its old home), so that claim files importing from here keep working."""

from implreg.matrix.levels import *  # noqa: F403
from implreg.matrix.levels import (  # noqa: F401  (private names some claims used)
    ATOL,
    LEVELS,
    RTOL,
    LevelStates,
    ReferenceLevels,
    certify_levels,
    fill_missing,
    loss_2x2,
    mp_det2,
    mp_det2_error,
    save_time_escalation,
    solve_levels,
    w11_bound_error,
    w11_lower_bound,
)
