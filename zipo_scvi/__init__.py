"""zipo_scvi: ZiPo, a deep zero-inflated Poisson autoencoder for scRNA-seq, in scvi-tools.

The names below are imported on first use (PEP 562), so ``import zipo_scvi`` and the ``zipo``
command's ``--help`` and ``--version`` do not load torch and scvi-tools.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__

#: Public name -> the submodule that defines it (``None``: the name is a submodule).
_LAZY = {
    "ZIPO": "._model",
    "ZiPoModule": "._module",
    "best_settings": "._settings",
    "compare_seeds": "._tune",
    "data": None,
    "pl": None,
    "pp": None,
    "preset": "._defaults",
    "read_backed": ".data",
    "tune": "._tune",
    "write_denoised": "._model",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'zipo_scvi' has no attribute {name!r}")
    where = _LAZY[name]
    module = importlib.import_module(f".{name}" if where is None else where, __name__)
    value = module if where is None else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
