"""Butcher tableaux of embedded Runge–Kutta pairs, as values that check their own consistency."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction as F

__all__ = ["DOPRI5", "ButcherTableau"]


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit embedded RK pair: stages ``k_i = f(t + c_i h, y + h Σ_j a_ij k_j)``,
    solution ``y + h Σ b_i k_i`` (order ``order``), error ``h Σ e_i k_i`` with ``e = b − b̂``.

    ``dense[i]`` holds the coefficients of θ, θ², θ³, … in the continuous extension's weight b_i(θ).
    Coefficients are exact rationals; consistency (row sums, weights summing to 1) is checked on creation.
    """

    name: str
    order: int
    c: tuple[F, ...]
    a: tuple[tuple[F, ...], ...]
    b: tuple[F, ...]
    e: tuple[F, ...]
    dense: tuple[tuple[F, ...], ...]
    fsal: bool

    def __post_init__(self) -> None:
        s = len(self.c)
        if len(self.a) != s or any(len(row) != i for i, row in enumerate(self.a)):
            raise ValueError(f"{self.name}: a must be strictly lower triangular with {s} rows")
        for i, row in enumerate(self.a):
            if sum(row, F(0)) != self.c[i]:
                raise ValueError(f"{self.name}: row {i} of a sums to {sum(row, F(0))}, not c_{i} = {self.c[i]}")
        if sum(self.b, F(0)) != 1 or sum(self.e, F(0)) != 0:
            raise ValueError(f"{self.name}: weights b must sum to 1 and error weights e to 0")
        if len(self.dense) != s or any(sum(d, F(0)) != bi for d, bi in zip(self.dense, self.b, strict=True)):
            raise ValueError(f"{self.name}: dense output must reproduce b at θ = 1")
        # Order conditions up to 4 for b (the pair's propagated solution is order 5; conditions of
        # order 5 are checked in the tests against a known solution instead of enumerated here).
        c, b, a = self.c, self.b, self.a
        for k in range(1, 5):
            if sum((bi * ci ** (k - 1) for bi, ci in zip(b, c, strict=True)), F(0)) != F(1, k):
                raise ValueError(f"{self.name}: quadrature condition Σ b_i c_i^{k - 1} = 1/{k} fails")
        ac = [sum((a[i][j] * c[j] for j in range(i)), F(0)) for i in range(s)]
        if sum((bi * x for bi, x in zip(b, ac, strict=True)), F(0)) != F(1, 6):
            raise ValueError(f"{self.name}: order-3 condition Σ b_i a_ij c_j = 1/6 fails")

    @property
    def stages(self) -> int:
        return len(self.c)


# Dormand & Prince (1980), "A family of embedded Runge–Kutta formulae", with Shampine's (1986) dense
# output of order 4 as used by MATLAB ode45 and scipy's RK45 (coefficients of θ..θ⁴).
DOPRI5 = ButcherTableau(
    name="Dormand–Prince 5(4)",
    order=5,
    c=(F(0), F(1, 5), F(3, 10), F(4, 5), F(8, 9), F(1), F(1)),
    a=(
        (),
        (F(1, 5),),
        (F(3, 40), F(9, 40)),
        (F(44, 45), F(-56, 15), F(32, 9)),
        (F(19372, 6561), F(-25360, 2187), F(64448, 6561), F(-212, 729)),
        (F(9017, 3168), F(-355, 33), F(46732, 5247), F(49, 176), F(-5103, 18656)),
        (F(35, 384), F(0), F(500, 1113), F(125, 192), F(-2187, 6784), F(11, 84)),
    ),
    b=(F(35, 384), F(0), F(500, 1113), F(125, 192), F(-2187, 6784), F(11, 84), F(0)),
    e=(
        F(71, 57600), F(0), F(-71, 16695), F(71, 1920), F(-17253, 339200), F(22, 525), F(-1, 40),
    ),
    dense=(
        (F(1), F(-8048581381, 2820520608), F(8663915743, 2820520608), F(-12715105075, 11282082432)),
        (F(0), F(0), F(0), F(0)),
        (F(0), F(131558114200, 32700410799), F(-68118460800, 10900136933), F(87487479700, 32700410799)),
        (F(0), F(-1754552775, 470086768), F(14199869525, 1410260304), F(-10690763975, 1880347072)),
        (F(0), F(127303824393, 49829197408), F(-318862633887, 49829197408), F(701980252875, 199316789632)),
        (F(0), F(-282668133, 205662961), F(2019193451, 616988883), F(-1453857185, 822651844)),
        (F(0), F(40617522, 29380423), F(-110615467, 29380423), F(69997945, 29380423)),
    ),
    fsal=True,
)
