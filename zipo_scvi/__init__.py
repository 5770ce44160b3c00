"""zipo_scvi: ZiPo, a deep zero-inflated Poisson autoencoder for scRNA-seq, in scvi-tools."""

from . import data
from ._defaults import preset
from ._model import ZIPO
from ._module import ZiPoModule

__version__ = "0.1.0"

__all__ = ["ZIPO", "ZiPoModule", "__version__", "data", "preset"]
