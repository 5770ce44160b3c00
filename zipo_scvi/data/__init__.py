"""Data: the simulator (the embedded default dataset), readers of count files (in memory or
backed on disk), output writers, and loaders of real 10x datasets that ship inside PyPI packages.

The real-data loaders (``load_pbmc3k``, ``load_immune559``, ``load_hgmm1k``, ``load_brain10k``)
are public here rather than in ``benchmarks/``: the benchmarks and the real-data studies (sparsity,
several samples) and their tutorials read the same, documented copies of these datasets.
"""

from ._backed import BackedCollection, read_backed, should_read_backed
from ._io import (
    InputError,
    detect_format,
    read_counts,
    write_h5ad_atomic,
    write_text_atomic,
    write_tsv_dir,
)
from ._real import (
    REAL_DATASETS,
    load_brain10k,
    load_hgmm1k,
    load_immune559,
    load_pbmc3k,
)
from ._simulate import simulate_counts, simulate_to_h5ad

__all__ = [
    "REAL_DATASETS",
    "BackedCollection",
    "InputError",
    "detect_format",
    "load_brain10k",
    "load_hgmm1k",
    "load_immune559",
    "load_pbmc3k",
    "read_backed",
    "read_counts",
    "should_read_backed",
    "simulate_counts",
    "simulate_to_h5ad",
    "write_h5ad_atomic",
    "write_text_atomic",
    "write_tsv_dir",
]
