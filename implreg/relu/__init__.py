"""The ReLU-network wing: the network and its losses (``network``), capacity measures (``capacity``),
path-SGD (``pathsgd``), synthetic and real data (``synthetic``, ``datasets``).  Built on
``implreg.numerics``; imports nothing from ``matrix``, the harness, or above."""

from __future__ import annotations

from implreg.relu.network import *  # noqa: F403  (``from implreg import relu; relu.forward(...)``)
