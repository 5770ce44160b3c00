"""The README's figure: ZIPO on real counts (celltypist's 559 immune cells), drawn by this script.

Usage (from the repository root; needs ``pip install celltypist``)::

    nice -n 10 python benchmarks/readme_figure.py [--max-epochs N] [--gene CD3E]

Does what the README's quickstart does (``read_counts`` on celltypist's
``sample_cell_by_gene.csv``, genes in at least 3 cells, ``ZIPO.setup_anndata``, ``ZIPO(adata)``
with the default preset, ``model.train()`` to early stopping, the latents and the denoised
layer), then draws one figure, ``docs/_static/readme.png``:

- top: UMAPs of the usual scanpy route (PCA of log-normalised counts) and of the ZIPO latents
  (``obsm["X_zipo"]``), the cells coloured by a coarse cell type. The data have no labels: each
  cell gets the type whose marker genes (``CELL_TYPES``) score highest on its log-normalised raw
  counts (``sc.tl.score_genes``), so the colours depend on neither embedding;
- bottom: one marker gene on the ZIPO UMAP, log-normalised raw counts and ZIPO's denoised
  counts normalised the same way (one colour scale).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import REPO, _epochs, quiet, saved_figure

OUT = REPO / "docs/_static/readme.png"
# Coarse immune types and their textbook markers (all in celltypist's sample data).
CELL_TYPES = {
    "T cell": ["CD3E", "CD3D", "IL7R", "CD2"],
    "NK cell": ["GNLY", "NKG7", "PRF1", "GZMB"],
    "B cell": ["MS4A1", "CD79A", "CD79B", "BANK1"],
    "monocyte": ["CD14", "VCAN", "S100A8", "FCN1"],
    "macrophage": ["APOC1", "APOE", "C1QA", "C1QB"],
}
COLORS = dict(zip(CELL_TYPES, ("#1f77b4", "#9467bd", "#2ca02c", "#ff7f0e", "#d62728")))


def _log_normalised(x, totals: np.ndarray) -> np.ndarray:
    """``log1p(x / total * 1e4)`` per cell, as ``sc.pp.normalize_total`` + ``sc.pp.log1p``."""
    x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
    return np.log1p(x / totals[:, None] * 1e4)


def cell_types(adata) -> np.ndarray:
    """Each cell's type in ``CELL_TYPES`` by the highest marker score on log-normalised counts."""
    import scanpy as sc

    tmp = adata.copy()
    sc.pp.normalize_total(tmp, target_sum=1e4)
    sc.pp.log1p(tmp)
    for name, genes in CELL_TYPES.items():
        sc.tl.score_genes(tmp, [g for g in genes if g in tmp.var_names], score_name=name)
    scores = tmp.obs[list(CELL_TYPES)].to_numpy()
    return np.asarray(list(CELL_TYPES))[scores.argmax(axis=1)]


def compute(max_epochs: int | None = None, seed: int = 0):
    """Train as the README's quickstart does; return the AnnData with what the figure draws.

    ``obs["cell_type"]``; ``obsm["X_umap_pca"]``, ``obsm["X_umap_zipo"]``; ``layers["counts"]``,
    ``layers["zipo_denoised"]``; ``uns["readme_figure"]`` (epochs, seconds).
    """
    import celltypist
    import scanpy as sc

    from zipo_scvi import ZIPO
    from zipo_scvi.data import read_counts

    path = os.path.join(
        os.path.dirname(celltypist.__file__), "data", "samples", "sample_cell_by_gene.csv"
    )
    adata = read_counts(path)
    sc.pp.filter_genes(adata, min_cells=3)
    adata.layers["counts"] = adata.X.copy()
    ZIPO.setup_anndata(adata)
    model = ZIPO(adata, seed=seed)
    start = time.perf_counter()
    model.train(max_epochs=max_epochs, enable_progress_bar=False)
    seconds = time.perf_counter() - start
    adata.obsm["X_zipo"] = model.get_latent_representation()
    adata.layers["zipo_denoised"] = model.get_normalized_expression(library_size="observed")
    adata.obs["cell_type"] = cell_types(adata)

    sc.pp.neighbors(adata, use_rep="X_zipo")
    sc.tl.umap(adata, random_state=seed)
    adata.obsm["X_umap_zipo"] = adata.obsm.pop("X_umap")
    raw = adata.copy()
    sc.pp.normalize_total(raw, target_sum=1e4)
    sc.pp.log1p(raw)
    sc.pp.pca(raw, n_comps=30, random_state=seed)
    sc.pp.neighbors(raw)
    sc.tl.umap(raw, random_state=seed)
    adata.obsm["X_umap_pca"] = raw.obsm["X_umap"]
    adata.uns["readme_figure"] = {"epochs": _epochs(model), "seconds": seconds}
    return adata


def draw(adata, path: str | Path = OUT, gene: str = "CD3E", dpi: int = 100) -> Path:
    """Draw the 2 x 2 figure from :func:`compute`'s AnnData (or any with the same fields)."""
    types = np.asarray(adata.obs["cell_type"])
    totals = np.asarray(adata.layers["counts"].sum(axis=1)).ravel()
    j = adata.var_names.get_loc(gene)
    raw = _log_normalised(adata.layers["counts"][:, [j]], totals).ravel()
    den = _log_normalised(np.asarray(adata.layers["zipo_denoised"])[:, [j]], totals).ravel()
    vmax = max(np.quantile(raw, 0.99), np.quantile(den, 0.99), 1e-6)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with saved_figure(path, 2, 2, figsize=(9, 8), dpi=dpi) as (fig, axes):
        for ax, key, title in (
            (axes[0, 0], "X_umap_pca", "PCA of log-normalised counts"),
            (axes[0, 1], "X_umap_zipo", 'ZIPO latents, obsm["X_zipo"]'),
        ):
            xy = adata.obsm[key]
            for name, color in COLORS.items():
                at = types == name
                ax.scatter(*xy[at].T, s=8, c=color, label=f"{name} ({at.sum()})", lw=0)
            ax.set_title(f"UMAP: {title}")
        axes[0, 1].legend(loc="best", fontsize=8, markerscale=1.5, frameon=False)
        xy = adata.obsm["X_umap_zipo"]
        for ax, values, label in (
            (axes[1, 0], raw, "raw counts"),
            (axes[1, 1], den, 'ZIPO denoised, layers["zipo_denoised"]'),
        ):
            order = np.argsort(values, kind="stable")  # highest on top
            dots = ax.scatter(
                *xy[order].T, s=8, c=values[order], cmap="viridis", vmin=0, vmax=vmax
            )
            ax.set_title(f"{gene}, {label}", fontsize=10)
            fig.colorbar(dots, ax=ax, label="log1p(count per 10k)", shrink=0.8)
        for ax in axes.ravel():
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(
            f"ZIPO on {adata.n_obs} immune cells (10x); cell types by marker scores, "
            f"{gene} on the ZIPO UMAP",
            fontsize=11,
        )
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-epochs", type=int, default=None, help="default: early stopping")
    parser.add_argument("--gene", default="CD3E", help="marker drawn raw vs denoised")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    quiet()
    adata = compute(args.max_epochs, args.seed)
    path = draw(adata, args.out, args.gene)
    info = adata.uns["readme_figure"]
    print(
        f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB); {info['epochs']} epochs, "
        f"{info['seconds']:.0f} s of training; cell types: "
        + ", ".join(f"{k} {v}" for k, v in adata.obs["cell_type"].value_counts().items())
    )


if __name__ == "__main__":
    main()
