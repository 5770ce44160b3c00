"""Plots for zipo_scvi results."""

from ._sparsity import pruning_curve, sparsity_curve, weight_histogram
from ._tune import seed_comparison

__all__ = [
    "pruning_curve",
    "seed_comparison",
    "sparsity_curve",
    "weight_histogram",
]
