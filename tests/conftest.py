"""Shared fixtures: small simulated data and quiet, fast training settings."""

import pytest
import scvi
import torch

from zipo_scvi.data import simulate_counts

FAST = {"max_epochs": 2, "enable_progress_bar": False, "batch_size": 64}
TINY = {"encoder_sizes": (32, 16, 8), "library_sizes": (8, 4)}


@pytest.fixture
def adata():
    return simulate_counts(n_cells=160, n_genes=60, n_groups=3, n_batches=2, seed=0)


torch.set_num_threads(1)  # tiny models: threads only add overhead on a shared machine


@pytest.fixture(autouse=True)
def _seed():
    scvi.settings.seed = 0
    scvi.settings.progress_bar_style = "tqdm"
