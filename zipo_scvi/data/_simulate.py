"""A small Splatter-like simulator of UMI counts with known rates and cell groups."""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ._h5ad import CHUNK_CELLS, append_rows, atomic_h5ad, write_annotations


def gene_base_means(rng: np.random.Generator, n_genes: int) -> np.ndarray:
    """Gamma-distributed gene shares of a cell's transcripts (summing to 1)."""
    base = rng.gamma(shape=0.6, scale=1 / 0.3, size=n_genes)
    return base / base.sum()


def de_factors(
    rng: np.random.Generator, n_groups: int, n_genes: int, de_prob: float, de_scale: float
) -> np.ndarray:
    """Per-group gene factors: a ``de_prob`` share of genes up or down by log-normal factors."""
    factors = np.ones((n_groups, n_genes))
    for k in range(n_groups):
        de = rng.random(n_genes) < de_prob
        sign = np.where(rng.random(n_genes) < 0.5, -1.0, 1.0)
        factors[k, de] = np.exp(sign[de] * np.abs(rng.normal(0.5, de_scale, de.sum())))
    return factors


def batch_effects(
    rng: np.random.Generator, n_batches: int, n_genes: int, batch_scale: float
) -> np.ndarray:
    """Per-batch log-normal gene factors; the first batch is the reference (all ones)."""
    factors = np.exp(rng.normal(0, batch_scale, size=(n_batches, n_genes)))
    factors[0] = 1.0
    return factors


def cell_rates(
    rng: np.random.Generator,
    base: np.ndarray,
    group_factors: np.ndarray,
    batch_factors: np.ndarray,
    library: np.ndarray,
    bcv: float,
) -> np.ndarray:
    """True Poisson rates of cells (rows of the given per-cell factors), with gamma noise."""
    props = base * group_factors * batch_factors
    props /= props.sum(axis=1, keepdims=True)
    mean = props * library[:, None]
    return mean * rng.gamma(1 / bcv**2, bcv**2, size=mean.shape) if bcv > 0 else mean


def cell_obs(
    rng: np.random.Generator, groups: np.ndarray, batches: np.ndarray, library: np.ndarray
) -> pd.DataFrame:
    """The simulated cells' obs: group, batch, technical donor and pct_mito, true library."""
    n_cells = len(groups)
    return pd.DataFrame(
        {
            "group": pd.Categorical([f"group{g}" for g in groups]),
            "batch": pd.Categorical([f"batch{b}" for b in batches]),
            "donor": pd.Categorical([f"donor{d}" for d in rng.integers(0, 3, size=n_cells)]),
            "pct_mito": rng.uniform(0, 10, size=n_cells).astype(np.float32),
            "true_library": library.astype(np.float32),
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )


def simulate_counts(
    n_cells: int = 2000,
    n_genes: int = 1000,
    n_groups: int = 5,
    seed: int = 0,
    n_batches: int = 1,
    de_prob: float = 0.1,
    de_scale: float = 0.8,
    library_mean: float = 7.5,
    library_sd: float = 0.4,
    bcv: float = 0.2,
    dropout_midpoint: float | None = None,
    dropout_shape: float = -1.0,
    batch_scale: float = 0.1,
    sparse: bool = True,
) -> AnnData:
    """Simulate UMI counts the way Splatter does, with the truth kept alongside.

    Gene base means are gamma distributed; each group scales a random ``de_prob`` share of
    genes by log-normal factors; cells get log-normal library sizes; biological noise is gamma
    with coefficient of variation ``bcv``; counts are Poisson; optional dropout zeroes counts
    with a probability logistic in the log true rate.

    Parameters
    ----------
    n_cells, n_genes, n_groups
        Shape and number of cell groups.
    seed
        Seed of the random generator (same seed, same data).
    n_batches
        Number of batches; each scales genes by its own small log-normal factors.
    de_prob, de_scale
        Share of differentially expressed genes per group and the log-scale s.d. of their factors.
    library_mean, library_sd
        Log-normal library size parameters (``exp(7.5)`` ~ 1800 UMIs per cell).
    bcv
        Biological coefficient of variation (gamma noise on the rates).
    dropout_midpoint, dropout_shape
        If ``dropout_midpoint`` is given, each count is zeroed with probability
        ``1 / (1 + exp(-dropout_shape * (log(rate) - dropout_midpoint)))``.
    batch_scale
        Log-scale s.d. of the batch factors.
    sparse
        Store counts as CSR (else dense).

    Returns
    -------
    AnnData with raw counts in ``X`` (float32), the true rates in ``layers["true_rate"]``
    (cells x genes, the Poisson means before dropout), each batch's true gene factors in
    ``varm["batch_factors"]`` (genes x batches), ``obs["group"]``, ``obs["batch"]``, a
    technical categorical ``obs["donor"]`` and continuous ``obs["pct_mito"]`` (both without
    effect on the counts), and ``obs["true_library"]``.

    Examples
    --------
    >>> adata = simulate_counts(n_cells=100, n_genes=50, n_groups=3, seed=0)
    >>> adata.shape
    (100, 50)
    """
    params = dict(locals())
    params.pop("sparse")
    sim = _Simulation(**params)
    rate, counts = next(sim.blocks(n_cells))
    obs = sim.obs()
    var = pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)])
    adata = AnnData(sp.csr_matrix(counts) if sparse else counts, obs=obs, var=var)
    adata.layers["true_rate"] = rate.astype(np.float32)
    adata.varm["batch_factors"] = sim.batch_factors.T.astype(np.float32)
    adata.uns["simulation"] = {
        "seed": seed,
        "n_groups": n_groups,
        "n_batches": n_batches,
        "bcv": bcv,
        "dropout_midpoint": dropout_midpoint,
    }
    return adata


def simulate_to_h5ad(
    path: str | os.PathLike, *args, chunk_size: int = CHUNK_CELLS, **kwargs
) -> Path:
    """Simulate counts straight to a CSR ``.h5ad``, one block of cells at a time.

    The model and the parameters of :func:`simulate_counts` (same defaults), with the gene
    programs drawn once and the cells' rates and counts drawn block by block, so memory grows
    with ``chunk_size x n_genes`` and not with the cells. The true rates are not stored. With
    ``chunk_size >= n_cells`` the counts and ``obs`` are those of :func:`simulate_counts` with
    the same arguments.

    Parameters
    ----------
    path
        Output ``.h5ad``.
    *args, **kwargs
        The arguments of :func:`simulate_counts` (``n_cells``, ``n_genes``, ``n_groups``,
        ``seed``, ...), except ``sparse``.
    chunk_size
        Cells simulated and written per block.

    Returns
    -------
    The path written. ``X`` holds float32 CSR counts; ``obs`` has ``group``, ``batch``,
    ``donor``, ``pct_mito`` and ``true_library``.

    Examples
    --------
    >>> path = simulate_to_h5ad("sim.h5ad", n_cells=2_000, n_genes=500, chunk_size=500)
    """
    params = inspect.signature(simulate_counts).bind(*args, **kwargs)
    params.apply_defaults()
    if "sparse" in kwargs:
        raise TypeError("simulate_to_h5ad always writes CSR counts; drop 'sparse'.")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, not {chunk_size}.")
    arguments = {k: v for k, v in params.arguments.items() if k != "sparse"}
    sim = _Simulation(**arguments)
    var = pd.DataFrame(index=[f"gene{j}" for j in range(sim.n_genes)])
    with atomic_h5ad(path) as f:
        for start, (_, counts) in zip(range(0, sim.n_cells, chunk_size), sim.blocks(chunk_size)):
            append_rows(f, "X", sp.csr_matrix(counts), first=start == 0)
        write_annotations(f, obs=sim.obs(), var=var)
    return Path(path)


class _Simulation:
    """The random draws of :func:`simulate_counts`: gene programs first, then cells in blocks.

    The draws happen in one fixed order (programs, cell rates and counts block by block, then
    ``obs``), so one block of all cells reproduces what :func:`simulate_counts` always drew.
    """

    def __init__(
        self,
        n_cells: int,
        n_genes: int,
        n_groups: int,
        seed: int,
        n_batches: int,
        de_prob: float,
        de_scale: float,
        library_mean: float,
        library_sd: float,
        bcv: float,
        dropout_midpoint: float | None,
        dropout_shape: float,
        batch_scale: float,
    ):
        if n_cells < 1 or n_genes < 1 or n_groups < 1 or n_batches < 1:
            raise ValueError("n_cells, n_genes, n_groups and n_batches must all be at least 1.")
        self.n_cells, self.n_genes, self.bcv = n_cells, n_genes, bcv
        self.dropout_midpoint, self.dropout_shape = dropout_midpoint, dropout_shape
        rng = self.rng = np.random.default_rng(seed)
        self.base = gene_base_means(rng, n_genes)
        self.groups = rng.integers(0, n_groups, size=n_cells)
        self.group_factors = de_factors(rng, n_groups, n_genes, de_prob, de_scale)
        self.batches = rng.integers(0, n_batches, size=n_cells)
        self.batch_factors = batch_effects(rng, n_batches, n_genes, batch_scale)
        self.library = np.exp(rng.normal(library_mean, library_sd, size=n_cells))

    def blocks(self, chunk_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """True rates and float32 counts (after dropout) of ``chunk_size`` cells at a time."""
        rng = self.rng
        for start in range(0, self.n_cells, chunk_size):
            cells = slice(start, min(start + chunk_size, self.n_cells))
            rate = cell_rates(
                rng,
                self.base,
                self.group_factors[self.groups[cells]],
                self.batch_factors[self.batches[cells]],
                self.library[cells],
                self.bcv,
            )
            counts = rng.poisson(rate).astype(np.float32)
            if self.dropout_midpoint is not None:
                logit = -self.dropout_shape * (np.log(rate + 1e-12) - self.dropout_midpoint)
                counts *= rng.random(counts.shape) >= 1 / (1 + np.exp(logit))
            yield rate, counts

    def obs(self) -> pd.DataFrame:
        """The cells' annotations (drawn after the counts)."""
        return cell_obs(self.rng, self.groups, self.batches, self.library)
