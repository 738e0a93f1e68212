"""The claim suite: one module per source (e.g. ``razin_cohen_2020.py``), each claim one decorated function.

Every ``*.py`` file here is collected by ``implreg verify theorems`` (``nox -s verify``) whatever its name;
a claim is a function decorated with ``@claim(...)`` over ``@given(...)`` (or ``@sample(...)`` for a
statistical claim) — see ``implreg.claims``.  Helper modules without claims may live here too (start
their names with ``_`` by convention).  Add a conjecture of your own with ``implreg new ID --file F`` or
by writing one decorated function in any file and running ``implreg verify F``.
"""
