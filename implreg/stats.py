"""``implreg.stats``: the README's name for ``implreg.harness.stats`` (the same module object)."""

import sys

from implreg.harness import stats as _module

sys.modules[__name__] = _module
