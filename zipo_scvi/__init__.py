"""zipo_scvi: ZiPo, a deep zero-inflated Poisson autoencoder for scRNA-seq, in scvi-tools."""

from . import data, pl
from ._defaults import preset
from ._model import ZIPO
from ._module import ZiPoModule
from ._scale import read_backed, write_denoised
from ._tune import best_settings, compare_seeds, tune

__version__ = "0.1.0"

__all__ = [
    "ZIPO",
    "ZiPoModule",
    "__version__",
    "best_settings",
    "compare_seeds",
    "data",
    "pl",
    "preset",
    "read_backed",
    "tune",
    "write_denoised",
]
