"""Data: the simulator (the embedded default dataset), readers of count files (in memory or
backed on disk), output writers.
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
from ._simulate import simulate_counts, simulate_to_h5ad

__all__ = [
    "BackedCollection",
    "InputError",
    "detect_format",
    "read_backed",
    "read_counts",
    "should_read_backed",
    "simulate_counts",
    "simulate_to_h5ad",
    "write_h5ad_atomic",
    "write_text_atomic",
    "write_tsv_dir",
]
