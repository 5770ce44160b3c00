"""Test helpers: write one count matrix in every input format the command line reads."""

from __future__ import annotations

import gzip
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp
from anndata import AnnData


def dense(adata: AnnData) -> np.ndarray:
    return adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)


def write_mtx(adata: AnnData, folder: Path) -> Path:
    """A Cell Ranger v3 folder: matrix.mtx.gz (genes x cells), features.tsv.gz, barcodes.tsv.gz."""
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / "matrix.mtx.gz", "wb") as f:
        scipy.io.mmwrite(f, sp.csr_matrix(dense(adata).T.astype(np.int64)))
    features = pd.DataFrame(
        {"id": [f"ENSG{i:05d}" for i in range(adata.n_vars)], "name": adata.var_names}
    )
    features["type"] = "Gene Expression"
    features.to_csv(folder / "features.tsv.gz", sep="\t", header=False, index=False)
    pd.Series(adata.obs_names).to_csv(
        folder / "barcodes.tsv.gz", sep="\t", header=False, index=False
    )
    return folder


def write_10x_h5(adata: AnnData, path: Path) -> Path:
    """A Cell Ranger v3 HDF5 file (the ``matrix`` group, genes x cells CSC)."""
    m = sp.csc_matrix(dense(adata).T.astype(np.int32))  # columns are cells
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["data"], g["indices"], g["indptr"] = m.data, m.indices, m.indptr
        g["shape"] = np.array(m.shape, dtype=np.int32)
        g["barcodes"] = np.array(adata.obs_names, dtype="S")
        feat = g.create_group("features")
        feat["id"] = np.array([f"ENSG{i:05d}" for i in range(adata.n_vars)], dtype="S")
        feat["name"] = np.array(adata.var_names, dtype="S")
        feat["feature_type"] = np.array(["Gene Expression"] * adata.n_vars, dtype="S")
        feat["genome"] = np.array(["GRCh38"] * adata.n_vars, dtype="S")
    return path


def write_table(adata: AnnData, path: Path, sep: str = ",", transpose: bool = False) -> Path:
    """A cells x genes (or, transposed, genes x cells) table with names in row and column 1."""
    frame = pd.DataFrame(
        dense(adata).astype(np.int64), index=adata.obs_names, columns=adata.var_names
    )
    (frame.T if transpose else frame).to_csv(path, sep=sep)
    return path


def write_input(adata: AnnData, kind: str, root: Path) -> tuple[Path, list[str]]:
    """Write ``adata`` as ``kind``; return the path and the extra flags the reader needs."""
    if kind == "h5ad":
        path = root / "in.h5ad"
        adata.write_h5ad(path)
        return path, []
    if kind == "mtx":
        return write_mtx(adata, root / "filtered_feature_bc_matrix"), []
    if kind == "h5":
        return write_10x_h5(adata, root / "in.h5"), []
    if kind == "csv":
        return write_table(adata, root / "in.csv"), []
    if kind == "tsv_transposed":
        return write_table(adata, root / "in.tsv", sep="\t", transpose=True), ["--transpose"]
    raise ValueError(kind)
