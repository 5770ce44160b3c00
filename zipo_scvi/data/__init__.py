"""Data: the simulator (the embedded default dataset), readers of count files, output writers."""

from ._io import (
    InputError,
    detect_format,
    read_counts,
    write_h5ad_atomic,
    write_text_atomic,
    write_tsv_dir,
)
from ._simulate import simulate_counts

__all__ = [
    "InputError",
    "detect_format",
    "read_counts",
    "simulate_counts",
    "write_h5ad_atomic",
    "write_text_atomic",
    "write_tsv_dir",
]
