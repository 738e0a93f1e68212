"""``implreg.evidence``: the README's name for ``implreg.harness.evidence`` (the same module object)."""

import sys

from implreg.harness import evidence as _module

sys.modules[__name__] = _module
