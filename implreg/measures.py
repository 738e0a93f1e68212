"""``implreg.measures``: the README's name for ``implreg.matrix.measures`` (the same module object)."""

import sys

from implreg.matrix import measures as _module

sys.modules[__name__] = _module
