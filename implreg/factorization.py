"""``implreg.factorization``: the README's name for ``implreg.matrix.factorization`` (the same module object)."""

import sys

from implreg.matrix import factorization as _module

sys.modules[__name__] = _module
