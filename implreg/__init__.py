"""implreg: executable checks of claims about implicit regularization in deep learning."""

from __future__ import annotations

__version__ = "0.1.0"
