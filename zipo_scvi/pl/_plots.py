"""Plots of a trained ZIPO: training history, latent embedding, denoised vs raw, zero inflation."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

_LABELS = {"nll": "negative log-likelihood per cell", "mse": "MSE of rates"}


def _history_table(source: Any) -> dict[str, np.ndarray]:
    """Metric name -> values per epoch, from a model, an AnnData or a mapping."""
    if isinstance(source, AnnData):
        if "zipo" not in source.uns or "history" not in source.uns["zipo"]:
            raise KeyError("adata.uns['zipo']['history'] is missing; run `zipo denoise` first")
        source = source.uns["zipo"]["history"]
    elif hasattr(source, "history") and not isinstance(source, Mapping):
        source = source.history
        if not source:
            raise ValueError("the model has no training history; train it first")
    from .._training import by_epoch

    return by_epoch(source)


def _watched(source: Any) -> str | None:
    """The validation metric early stopping watched, from a model or an output file's settings."""
    if isinstance(source, AnnData):
        from .._defaults import preset
        from .._training import monitored_metric

        settings = source.uns.get("zipo", {}).get("settings", {})
        name = (settings.get("model") or {}).get("preset") or "default"
        metric = (settings.get("train") or {}).get("stopping_metric")
        try:
            return monitored_metric(metric or preset(name)[1]["stopping_metric"], True)
        except ValueError:
            return None
    return getattr(source, "stopping_monitor", None)  # set by ZIPO.train


def _best_epoch(
    table: Mapping[str, np.ndarray], metrics: Sequence[str], watched: str | None = None
) -> int | None:
    """The epoch (1-based) of the lowest watched validation metric (default: the validation
    loss, else the first validation metric).
    """
    keys = [*([watched] if watched else []), "validation_loss"]
    keys += [f"{m}_validation" for m in metrics]
    for key in keys:
        values = table.get(key)
        if values is not None and np.isfinite(values).any():
            return int(np.nanargmin(values)) + 1
    return None


def _validation_kind(source: Any) -> str:
    """How the validation curves were scored, from a model's or an output file's settings."""
    mode = None
    if isinstance(source, AnnData):
        settings = source.uns.get("zipo", {}).get("settings", {})
        mode = settings.get("train", {}).get("validation", settings.get("validation"))
    else:
        mode = getattr(source, "validation_mode", None)  # set by ZIPO.train
    if mode == "mcv":
        return "validation (held-out molecules of every cell)"
    if mode == "molecules":
        return "validation (held-out molecules)"
    if mode == "cells":
        return "validation (whole cells)"
    return "validation"


def history(
    source: Any,
    metrics: Sequence[str] = ("nll", "mse"),
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Plot training and validation curves of the paper's metrics, each on its own axes.

    Training (top row) and validation (bottom row) have separate y axes: with
    ``validation="molecules"`` (the default preset) the validation curves score the held-out
    10% of each validation cell's molecules, a scale about ten times smaller than the training
    curves', on which one shared axis would flatten them. A dotted line marks the best epoch
    (the lowest value of what early stopping watched: ``validation_loss``, or ``nll_validation``
    with ``stopping_metric="nll"``).

    Parameters
    ----------
    source
        A trained :class:`~zipo_scvi.ZIPO`, an AnnData written by ``zipo denoise`` (its
        ``uns["zipo"]["history"]``), or a mapping such as ``model.history``.
    metrics
        Metric names; each column shows ``{metric}_train`` (top) and ``{metric}_validation``
        (bottom).
    figsize
        Figure size (default: 4 inches wide per metric, 5.6 high).

    Returns
    -------
    The figure: one axes per logged curve, training first.

    Raises
    ------
    KeyError
        If none of the metrics was logged.

    Examples
    --------
    >>> from zipo_scvi import pl
    >>> fig = pl.history(model)
    """
    table = _history_table(source)
    best = _best_epoch(table, metrics, _watched(source))
    kinds = {"train": "training", "validation": _validation_kind(source)}
    curves = [
        (metric, split, table[f"{metric}_{split}"])
        for metric in metrics
        for split in ("train", "validation")
        if f"{metric}_{split}" in table and np.isfinite(table[f"{metric}_{split}"]).any()
    ]
    if not curves:
        raise KeyError(f"none of {list(metrics)} was logged; history holds {sorted(table)}")
    shown = [m for m in metrics if any(c[0] == m for c in curves)]
    fig = Figure(figsize=figsize or (4 * len(shown), 5.6), layout="constrained")
    grid = fig.subplots(2, len(shown), squeeze=False, sharex="col")
    rows = {"train": 0, "validation": 1}
    for metric, split, values in curves:
        ax = grid[rows[split], shown.index(metric)]
        epochs = np.arange(1, values.size + 1)
        shown_at = np.isfinite(values)  # validation may run every few epochs
        ax.plot(
            epochs[shown_at],
            values[shown_at],
            "-" if split == "train" else "--",
            marker=".",
            label=split,
        )
        if best is not None:
            ax.axvline(best, color="0.4", ls=":", lw=1, label=f"best epoch {best}")
        ax.set_title(f"{metric.upper()}, {kinds[split]}", fontsize="medium")
        ax.set_ylabel(_LABELS.get(metric, metric))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(frameon=False, fontsize="small")
    for ax in grid[-1]:
        ax.set_xlabel("epoch")
    for ax in grid.ravel():
        if not ax.lines:
            fig.delaxes(ax)
    return fig


def embedding(
    adata: AnnData,
    color: str | Sequence[str] | None = None,
    basis: Literal["umap", "tsne"] = "umap",
    use_rep: str = "X_zipo",
    n_neighbors: int = 15,
    seed: int = 0,
    figsize: tuple[float, float] = (5.0, 4.0),
) -> Figure:
    """UMAP or t-SNE of ZIPO's latents, coloured by ``obs`` columns (computed with scanpy).

    The embedding is computed on a light copy (``obs`` and the latents), so ``adata`` is not
    changed.

    Parameters
    ----------
    adata
        AnnData with the latents in ``obsm[use_rep]``.
    color
        ``obs`` column (or gene name) to colour by, or several (one panel each, e.g. the batch
        and a cell-type column); ``None`` for one colour.
    basis
        ``"umap"`` or ``"tsne"``.
    use_rep
        ``obsm`` key of the latents.
    n_neighbors
        Neighbours of the kNN graph (UMAP); capped at the number of cells minus one.
    seed
        Random state of UMAP / t-SNE.
    figsize
        Figure size in inches of one panel.

    Returns
    -------
    The figure.

    Raises
    ------
    KeyError
        If ``use_rep`` or a ``color`` is missing.
    ValueError
        If ``basis`` is not ``"umap"`` or ``"tsne"``.

    Examples
    --------
    >>> from zipo_scvi import pl
    >>> fig = pl.embedding(adata, color="group", basis="tsne")
    """
    import scanpy as sc

    if basis not in ("umap", "tsne"):
        raise ValueError(f"basis must be 'umap' or 'tsne', not {basis!r}")
    if use_rep not in adata.obsm:
        raise KeyError(f"adata.obsm has no {use_rep!r}; add model.get_latent_representation()")
    colors = [color] if color is None or isinstance(color, str) else list(color)
    for c in colors:
        if c is not None and c not in adata.obs and c not in adata.var_names:
            raise KeyError(f"{c!r} is neither an obs column nor a gene")
    light = AnnData(
        X=sp.csr_matrix((adata.n_obs, 0), dtype=np.float32),
        obs=adata.obs.copy(),
        obsm={use_rep: np.asarray(adata.obsm[use_rep], dtype=np.float32)},
    )
    for c in colors:
        if c is not None and c not in adata.obs:
            light.obs[c] = _dense_column(adata, c)
    if basis == "umap":
        k = max(2, min(n_neighbors, adata.n_obs - 1))
        sc.pp.neighbors(light, n_neighbors=k, use_rep=use_rep, random_state=seed)
        sc.tl.umap(light, random_state=seed)
    else:
        perplexity = max(2.0, min(30.0, (adata.n_obs - 1) / 3))
        # scikit-learn's "auto" rate; scanpy's fixed 1000 scatters small data sets
        rate = max(adata.n_obs / 12.0 / 4.0, 50.0)
        sc.tl.tsne(
            light, use_rep=use_rep, perplexity=perplexity, learning_rate=rate, random_state=seed
        )
    fig = Figure(figsize=(figsize[0] * len(colors), figsize[1]), layout="constrained")
    for ax, c in zip(np.atleast_1d(fig.subplots(1, len(colors))), colors):
        sc.pl.embedding(light, basis=basis, color=c, ax=ax, show=False, frameon=False)
        ax.set_title(f"ZIPO latents ({basis.upper()})" + (f": {c}" if c else ""))
    return fig


def _dense_column(adata: AnnData, gene: str, layer: str | None = None) -> np.ndarray:
    matrix = adata.X if layer is None else adata.layers[layer]
    column = matrix[:, adata.var_names.get_loc(gene)]
    return np.asarray(column.toarray() if sp.issparse(column) else column, dtype=float).ravel()


def informative_genes(adata: AnnData, layer: str | None = None, n: int = 4) -> list[str]:
    """The ``n`` most variable genes of the raw counts (scanpy's Seurat dispersion).

    Counts are normalised to the median total and log1p-transformed on a copy; genes are
    ranked by normalised dispersion (``sc.pp.highly_variable_genes(flavor="seurat")``). These
    are the genes that tell cells apart, where denoising matters, rather than the most
    expressed ones (housekeeping genes, which denoising changes least).

    Examples
    --------
    >>> genes = informative_genes(adata, n=4)  # e.g. ['CD74', 'NKG7', 'LYZ', 'GNLY'] in PBMCs
    >>> len(genes)
    4
    """
    import scanpy as sc

    matrix = adata.X if layer is None else adata.layers[layer]
    light = AnnData(X=sp.csr_matrix(matrix, dtype=np.float32))
    light.var_names = adata.var_names
    sc.pp.normalize_total(light)
    sc.pp.log1p(light)
    table = sc.pp.highly_variable_genes(light, flavor="seurat", inplace=False)
    table.index = adata.var_names
    return list(table["dispersions_norm"].fillna(-np.inf).nlargest(n).index)


def denoised_vs_raw(
    adata: AnnData,
    genes: Sequence[str] | None = None,
    layer: str | None = None,
    denoised_layer: str = "zipo_denoised",
    n_genes: int = 4,
) -> Figure:
    """Scatter the raw counts of chosen genes against their denoised values, one panel per gene.

    Parameters
    ----------
    adata
        AnnData with raw counts (``X`` or ``layers[layer]``) and ``layers[denoised_layer]``.
    genes
        Genes to show; default: the ``n_genes`` most variable ones (:func:`informative_genes`:
        genes that tell cells apart, where denoising matters; the most expressed genes are
        the ones it changes least).
    layer
        Layer of the raw counts (``None``: ``X``).
    denoised_layer
        Layer of the denoised values (``zipo denoise`` writes ``"zipo_denoised"``).
    n_genes
        Number of genes when ``genes`` is ``None``.

    Returns
    -------
    The figure (log1p axes; the dashed line is denoised = raw).

    Raises
    ------
    KeyError
        If a layer or gene is missing.

    Examples
    --------
    >>> from zipo_scvi import pl
    >>> fig = pl.denoised_vs_raw(adata, genes=["gene0", "gene1"])
    """
    if denoised_layer not in adata.layers:
        raise KeyError(f"adata.layers has no {denoised_layer!r}")
    if layer is not None and layer not in adata.layers:
        raise KeyError(f"adata.layers has no {layer!r}")
    genes = list(genes) if genes is not None else informative_genes(adata, layer, n_genes)
    missing = [g for g in genes if g not in adata.var_names]
    if missing or not genes:
        raise KeyError(f"genes {missing} not found in adata.var_names" if missing else "no genes")
    fig = Figure(figsize=(3.2 * len(genes), 3.2), layout="constrained")
    axes = fig.subplots(1, len(genes), squeeze=False)[0]
    for ax, gene in zip(axes, genes):
        raw = np.log1p(_dense_column(adata, gene, layer))
        den = np.log1p(_dense_column(adata, gene, denoised_layer))
        ax.scatter(raw, den, s=6, alpha=0.5, linewidths=0)
        hi = float(max(raw.max(), den.max(), 1e-3))
        ax.plot([0, hi], [0, hi], "k--", lw=0.8)
        ax.set_title(gene)
        ax.set_xlabel("log1p raw count")
    axes[0].set_ylabel("log1p denoised")
    return fig


def zero_inflation(
    adata: AnnData,
    layer: str | None = None,
    zero_prob_layer: str = "zipo_zero_prob",
) -> Figure:
    """Per-gene mean zero-inflation probability against mean expression and observed zeros.

    Parameters
    ----------
    adata
        AnnData with raw counts and ``layers[zero_prob_layer]`` (``zipo denoise`` writes
        ``"zipo_zero_prob"``; with a model: ``model.get_likelihood_parameters()["zero_prob"]``).
    layer
        Layer of the raw counts (``None``: ``X``).
    zero_prob_layer
        Layer of the zero-inflation probabilities ``z``.

    Returns
    -------
    A two-panel figure: mean ``z`` against mean count (log scale) and against the observed
    fraction of zeros, one point per gene.

    Raises
    ------
    KeyError
        If a layer is missing.

    Examples
    --------
    >>> from zipo_scvi import pl
    >>> fig = pl.zero_inflation(adata)
    """
    if zero_prob_layer not in adata.layers:
        raise KeyError(f"adata.layers has no {zero_prob_layer!r}")
    counts = adata.X if layer is None else adata.layers[layer]
    z = adata.layers[zero_prob_layer]
    mean_z = np.asarray(z.mean(axis=0)).ravel()
    mean_count = np.asarray(counts.mean(axis=0)).ravel()
    nonzero = counts.getnnz(axis=0) if sp.issparse(counts) else (np.asarray(counts) != 0).sum(0)
    zero_frac = 1.0 - np.asarray(nonzero).ravel() / adata.n_obs
    fig = Figure(figsize=(8.0, 3.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.scatter(np.maximum(mean_count, 1e-4), mean_z, s=6, alpha=0.6, linewidths=0)
    left.set_xscale("log")
    left.set_xlabel("mean count per cell")
    left.set_ylabel("mean zero-inflation z")
    right.scatter(zero_frac, mean_z, s=6, alpha=0.6, linewidths=0)
    right.set_xlabel("observed fraction of zeros")
    fig.suptitle(f"zero inflation per gene (mean z over genes: {mean_z.mean():.3g})")
    return fig


#: The files :func:`report` writes with the default ``basis`` (``zipo denoise --report``).
REPORT_FILES = ("history.png", "latent_umap.png", "denoised_vs_raw.png", "zero_inflation.png")


def report(
    adata: AnnData,
    directory: str | os.PathLike,
    color: str | None = None,
    genes: Sequence[str] | None = None,
    basis: Literal["umap", "tsne"] = "umap",
    layer: str | None = None,
    model: Any = None,
    dpi: int = 120,
    label: str | None = None,
) -> list[Path]:
    """Write the four plots as PNG files (the ``--report`` folder of ``zipo denoise``).

    Parameters
    ----------
    adata
        AnnData with ZIPO's outputs (``zipo denoise`` writes them).
    directory
        Folder to write into (created if missing).
    color
        ``obs`` column for the embedding (the batch, with several samples); default: the first
        categorical column with 2 to 50 categories, if any.
    genes
        Genes for :func:`denoised_vs_raw`.
    basis
        ``"umap"`` or ``"tsne"``.
    layer
        Layer of the raw counts (``None``: ``X``).
    model
        The trained model, for the history when ``adata.uns["zipo"]`` lacks it.
    dpi
        Resolution of the PNG files.
    label
        A second ``obs`` column (e.g. cell types) for a panel beside ``color``'s.

    Returns
    -------
    Paths of the files written: ``history.png``, ``latent_{basis}.png``,
    ``denoised_vs_raw.png`` and, when ``layers["zipo_zero_prob"]`` exists, ``zero_inflation.png``.

    Examples
    --------
    >>> from zipo_scvi import pl
    >>> paths = pl.report(adata, "report/", color="group", model=model)
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if color is None and label is None:
        color = _default_color(adata)
    colors = [c for c in dict.fromkeys((color, label)) if c is not None] or None
    figures = {
        "history": history(model if model is not None else adata),
        f"latent_{basis}": embedding(adata, color=colors, basis=basis),
        "denoised_vs_raw": denoised_vs_raw(adata, genes=genes, layer=layer),
    }
    if "zipo_zero_prob" in adata.layers:
        figures["zero_inflation"] = zero_inflation(adata, layer=layer)
    paths = []
    for name, fig in figures.items():
        path = out / f"{name}.png"
        fig.savefig(path, dpi=dpi)
        paths.append(path)
    return paths


def _default_color(adata: AnnData) -> str | None:
    for column in adata.obs.columns:
        values = adata.obs[column]
        if isinstance(values.dtype, pd.CategoricalDtype) or values.dtype == object:
            if 2 <= values.nunique() <= 50:
                return column
    return None
