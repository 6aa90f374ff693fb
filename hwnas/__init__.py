"""hwnas: hardware-aware neural architecture search and deployment.

The Python API in a few names (the CLI is a thin layer over these)::

    from hwnas import get_space, Supernet, ops, count
    space = get_space("small")
    arch = space.sample(1, seed=0)[0]
    net = Supernet(space).subnet(arch)        # static nn.Sequential
    count(arch, space)                        # Counts(macs=..., params=...)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from hwnas.errors import ArchError, HwnasError  # noqa: E402
from hwnas.space import Arch, SearchSpace, get_space  # noqa: E402

# Heavier names (they import torch) load on first use.
_LAZY = {
    "Supernet": "hwnas.supernet",
    "OpSpec": "hwnas.ops",
    "ops": "hwnas.ops",
    "count": "hwnas.ops",
    "count_batch": "hwnas.ops",
    "unique_ops": "hwnas.ops",
    "load_device": "hwnas.devices",
    "LatencyTable": "hwnas.lut",
    "profile": "hwnas.profile",
}

__all__ = ["Arch", "ArchError", "HwnasError", "SearchSpace", "get_space", "__version__",
           *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hwnas' has no attribute {name!r}")
