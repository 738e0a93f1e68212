"""``implreg.problems``: the README's name for ``implreg.matrix.problems`` (the same module object)."""

import sys

from implreg.matrix import problems as _module

sys.modules[__name__] = _module
