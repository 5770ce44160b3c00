"""Plots for zipo_scvi results."""

from ._tune import seed_comparison

__all__ = ["seed_comparison"]
