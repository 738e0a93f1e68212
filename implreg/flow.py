"""``implreg.flow``: the README's name for ``implreg.matrix.flow`` (the same package, submodules included)."""

import importlib
import pkgutil
import sys

from implreg.matrix import flow as _package

for _info in pkgutil.iter_modules(_package.__path__):
    sys.modules[f"{__name__}.{_info.name}"] = importlib.import_module(f"implreg.matrix.flow.{_info.name}")
sys.modules[__name__] = _package
