"""``implreg.claims``: the README's name for ``implreg.harness.claims`` (the same module object)."""

import sys

from implreg.harness import claims as _module

sys.modules[__name__] = _module
