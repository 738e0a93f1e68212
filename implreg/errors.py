"""Exceptions that name the problem: every user-facing failure in implreg is one of these."""

from __future__ import annotations


class ImplregError(Exception):
    """Base class: an error whose message is meant to be read by the user, not a traceback."""


class InvalidInputError(ImplregError, ValueError):
    """An argument has the wrong shape, dtype, sign or value (the message says which and why)."""


class NumericalError(ImplregError, ArithmeticError):
    """A computation produced NaN/Inf or diverged (the message says where: instance, time, quantity)."""


class BudgetExceededError(ImplregError, TimeoutError):
    """A computation ran past its wall-clock or step budget (the message states the budget)."""
