"""``implreg.capacity``: the README's name for ``implreg.relu.capacity`` (the same module object)."""

import sys

from implreg.relu import capacity as _module

sys.modules[__name__] = _module
