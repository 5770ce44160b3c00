"""Writing ``.h5ad`` files a block of cells at a time (the file is never whole in memory).

Plain HDF5 plumbing in anndata's on-disk format, with no knowledge of the model: the writer of
:meth:`ZIPO.write_normalized_expression <zipo_scvi.ZIPO.write_normalized_expression>` and the
chunked simulator :func:`~zipo_scvi.data.simulate_to_h5ad` are built on it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata.io import sparse_dataset, write_elem

#: Cells per block when streaming counts to disk.
CHUNK_CELLS = 10_000

_EMPTY_ELEMENTS = ("layers", "obsm", "obsp", "uns", "varm", "varp")


@contextlib.contextmanager
def atomic_h5ad(path: str | os.PathLike, source: str | os.PathLike | None = None):
    """Open a new temporary file beside ``path`` and move it onto ``path`` when the block succeeds.

    See :func:`~zipo_scvi.data._io.atomic_output` (unique name, user's umask, removed on any
    exception, signals included).

    Parameters
    ----------
    path
        The final file.
    source
        An ``.h5ad`` file copied first (every element, at the HDF5 level) so that the new file
        starts as a copy of it.

    Yields
    ------
    The open :class:`h5py.File`.
    """
    from ._io import atomic_output

    with atomic_output(path) as tmp, h5py.File(tmp, "w") as dst:
        if source is not None:
            with h5py.File(source, "r") as src:
                for key, value in src.attrs.items():
                    dst.attrs[key] = value
                for key in src:
                    src.copy(src[key], dst, name=key)
        else:
            dst.attrs["encoding-type"] = "anndata"
            dst.attrs["encoding-version"] = "0.1.0"
        yield dst


def append_rows(f: h5py.File, key: str, block: sp.spmatrix, first: bool) -> None:
    """Write a CSR block as ``f[key]`` (``first``) or append its rows to it."""
    block = sp.csr_matrix(block, dtype=np.float32)
    if first:
        write_elem(f, key, block)
    else:
        sparse_dataset(f[key]).append(block)


def write_counts(f: h5py.File, matrix, n_obs: int, rows: int = CHUNK_CELLS) -> None:
    """Write a (possibly backed) count matrix as ``X``, ``rows`` cells at a time."""
    for start in range(0, n_obs, rows):
        append_rows(f, "X", matrix[start : start + rows], first=start == 0)


def group(f: h5py.File, name: str) -> h5py.Group:
    """The group ``name`` (created if missing), marked as an anndata dict."""
    if name not in f:
        f.create_group(name)
    f[name].attrs["encoding-type"] = "dict"
    f[name].attrs["encoding-version"] = "0.1.0"
    return f[name]


def dense_dataset(
    parent: h5py.Group, name: str, shape: tuple[int, int], rows: int, compression: str | None
) -> h5py.Dataset:
    """A new float32 array ``parent[name]`` chunked by ``rows`` cells (replacing an old one)."""
    if name in parent:
        del parent[name]
    chunks = (max(1, min(rows, shape[0])), shape[1])
    dataset = parent.create_dataset(
        name, shape=shape, dtype="float32", chunks=chunks, compression=compression
    )
    dataset.attrs["encoding-type"] = "array"
    dataset.attrs["encoding-version"] = "0.2.0"
    return dataset


def write_annotations(
    f: h5py.File,
    obs: pd.DataFrame,
    var: pd.DataFrame | None = None,
    uns: Mapping[str, Any] | None = None,
) -> None:
    """Write (or replace) ``obs``, ``var`` and entries of ``uns``; add missing empty elements."""
    for name, frame in (("obs", obs), ("var", var)):
        if frame is not None:
            if name in f:
                del f[name]
            write_elem(f, name, frame)
    for name in _EMPTY_ELEMENTS:
        if name not in f:
            write_elem(f, name, {})
    if uns:
        uns_group = group(f, "uns")
        for key, value in uns.items():
            if key in uns_group:
                del uns_group[key]
            write_elem(uns_group, key, value)


def clean_obs(obs: pd.DataFrame) -> pd.DataFrame:
    """``obs`` without scvi-tools' registration columns."""
    return obs.loc[:, [c for c in obs.columns if not str(c).startswith("_scvi")]].copy()


def rows_of(n_obs: int, block_sizes: Iterator[int]) -> Iterator[slice]:
    """Consecutive row slices for blocks of the given sizes."""
    start = 0
    for size in block_sizes:
        yield slice(start, start + size)
        start += size
