"""Data: the package's simulator (the embedded default dataset) and input checks."""

from ._simulate import simulate_counts

__all__ = ["simulate_counts"]
