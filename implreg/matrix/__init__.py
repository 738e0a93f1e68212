"""Deep matrix factorization: problems, flows to loss levels and the closed-form bounds the claims compare with.

This package sits above the certified numbers (``implreg.numerics``) and the simulators (``implreg.matrix.flow``) and
below the harness; modules from the flat ``implreg`` namespace move here over time.
"""
