"""Plots: training history, latent embeddings, denoised vs raw counts, zero inflation, tuning."""

from ._plots import denoised_vs_raw, embedding, history, informative_genes, report, zero_inflation
from ._sparsity import pruning_curve, sparsity_curve, weight_histogram
from ._tune import seed_comparison

__all__ = [
    "denoised_vs_raw",
    "embedding",
    "history",
    "informative_genes",
    "pruning_curve",
    "report",
    "seed_comparison",
    "sparsity_curve",
    "weight_histogram",
    "zero_inflation",
]
