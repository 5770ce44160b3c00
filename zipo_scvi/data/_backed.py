"""Counts that stay on disk: backed ``.h5ad`` files and collections, and memory sizing.

:func:`read_backed` opens one ``.h5ad`` with ``anndata.read_h5ad(path, backed="r")`` (or several
through anndata's ``AnnCollection`` and scvi-tools'
:class:`~scvi.dataloaders.CollectionAdapter`), and scvi-tools' own
:class:`~scvi.data.AnnTorchDataset` reads each minibatch's rows from disk; nothing here loads
minibatches itself. :func:`should_read_backed` decides from a file's size whether ``zipo
denoise`` reads it backed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
from anndata import AnnData, read_h5ad
from scvi.dataloaders import CollectionAdapter
from scvi.dataloaders._anncollection import ArrayFakerSparse

#: Share of the machine's memory above which ``zipo denoise`` reads its input backed.
BACKED_MEMORY_FRACTION = 0.25


# ---------------------------------------------------------------------- reading
class _CollectionMatrix(ArrayFakerSparse):
    """``X`` or one layer of an ``AnnCollection``, read a block of rows at a time."""

    def __init__(self, collection, key: str | None):
        super().__init__(collection, key)

    def __getitem__(self, idx):
        view = self.collection[idx]
        return view.X if self.key is None else view.layers[self.key]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.collection.n_obs, self.collection.n_vars)

    @property
    def ndim(self) -> int:
        return 2

    @property
    def data(self) -> np.ndarray:
        """Stored values of the first rows (what scvi's integer check samples)."""
        return self[: min(64, self.collection.n_obs)].data

    def getformat(self) -> str:
        return self[: min(4, self.collection.n_obs)].getformat()


class _CollectionLayers:
    """``.layers`` of an ``AnnCollection`` with membership tests and ``keys()``."""

    def __init__(self, collection):
        self.collection = collection

    def keys(self):
        return self.collection[: min(4, self.collection.n_obs)].layers.keys()

    def __contains__(self, key) -> bool:
        return key in self.keys()

    def __iter__(self):
        return iter(self.keys())

    def __getitem__(self, key: str) -> _CollectionMatrix:
        if key not in self:
            raise KeyError(key)
        return _CollectionMatrix(self.collection, key)


class BackedCollection(CollectionAdapter):
    """Several backed ``.h5ad`` files seen by scvi-tools as one AnnData (rows stay on disk).

    scvi-tools' :class:`~scvi.dataloaders.CollectionAdapter` around an
    :class:`anndata.experimental.AnnCollection`, with what ZIPO needs on top: ``X`` as well as
    layers, ``n_obs x n_vars`` shapes for chunked reads, ``in`` tests on ``layers``, and its
    own ``uns`` (scvi's adapter shares one ``uns`` dictionary between all adapters, so two
    collections would be mistaken for the same data). Build it with :func:`read_backed`.
    """

    def __init__(self, collection, files: Sequence[AnnData] = ()):
        super().__init__(collection)
        self.uns = {}
        self.files = list(files)

    @property
    def X(self) -> _CollectionMatrix:
        return _CollectionMatrix(self.collection, None)

    @property
    def layers(self) -> _CollectionLayers:
        return _CollectionLayers(self.collection)

    def close(self) -> None:
        """Close the files of the collection."""
        for part in self.files:
            if part.isbacked:
                part.file.close()


def read_backed(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    label: str = "dataset",
    join_vars: Literal["inner"] | None = "inner",
) -> AnnData | BackedCollection:
    """Open counts that stay on disk: one ``.h5ad`` backed, or several as one collection.

    Parameters
    ----------
    paths
        One ``.h5ad`` file, or a list of them (cells are stacked in the order given).
    label
        For several files: ``obs`` column naming each cell's file (use it as ``batch_key``).
    join_vars
        For several files: ``"inner"`` keeps the genes common to all files; ``None`` requires
        the same genes in the same order everywhere.

    Returns
    -------
    A backed :class:`~anndata.AnnData` (``.X`` stays in the file; ``obs`` and ``var`` are read)
    or, for several files, a :class:`BackedCollection` that ``ZIPO.setup_anndata``, ``ZIPO`` and
    its getters accept like an AnnData.

    Examples
    --------
    >>> from zipo_scvi import ZIPO
    >>> adata = read_backed("atlas.h5ad")
    >>> ZIPO.setup_anndata(adata, batch_key="batch")
    >>> model = ZIPO(adata, encoder_sizes=(16, 4))
    >>> model.train(max_epochs=2, enable_progress_bar=False)
    >>> path = model.write_normalized_expression("atlas_denoised.h5ad")
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("read_backed needs at least one .h5ad path.")
    for path in paths:
        if path.suffix != ".h5ad":
            raise ValueError(f"{str(path)!r} is not an .h5ad file; backed reading needs .h5ad.")
        if not path.is_file():
            raise FileNotFoundError(f"{str(path)!r} does not exist.")
    if len(paths) == 1:
        return read_h5ad(paths[0], backed="r")
    from anndata.experimental import AnnCollection

    parts = [read_h5ad(path, backed="r") for path in paths]
    if join_vars is None:
        first = parts[0].var_names
        for path, part in zip(paths[1:], parts[1:]):
            if not part.var_names.equals(first):
                raise ValueError(
                    f"The genes of {str(path)!r} differ from those of {str(paths[0])!r}; "
                    "pass join_vars='inner' to keep the common genes."
                )
    names = [path.stem for path in paths]
    if len(set(names)) < len(names):
        names = [str(path) for path in paths]
    collection = AnnCollection(
        dict(zip(names, parts)),
        join_obs="inner",
        join_vars="inner",
        label=label,
        indices_strict=False,
    )
    return BackedCollection(collection, parts)


# ---------------------------------------------------------------------- sizes
def counts_nbytes(path: str | os.PathLike, layer: str | None = None) -> int:
    """Bytes the counts of an ``.h5ad`` file take once loaded in memory (uncompressed).

    Parameters
    ----------
    path
        The ``.h5ad`` file.
    layer
        Layer holding the counts; ``None``: ``X``.

    Returns
    -------
    For CSR/CSC counts, the bytes of ``data``, ``indices`` and ``indptr``; for dense counts, of
    the array.

    Examples
    --------
    >>> counts_nbytes("atlas.h5ad") < 2**20  # a small file: 150 cells x 40 genes
    True
    """
    key = "X" if layer is None else f"layers/{layer}"
    with h5py.File(path, "r") as f:
        if key not in f:
            raise ValueError(f"{str(path)!r} has no {key!r}.")
        node = f[key]
        if isinstance(node, h5py.Dataset):
            return int(node.size * node.dtype.itemsize)
        parts = (node[name] for name in ("data", "indices", "indptr"))
        return int(sum(part.size * part.dtype.itemsize for part in parts))


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        try:
            import psutil
        except ImportError:
            return None
        return int(psutil.virtual_memory().total)


def should_read_backed(
    path: str | os.PathLike,
    memory_fraction: float = BACKED_MEMORY_FRACTION,
    layer: str | None = None,
) -> bool:
    """Whether an ``.h5ad`` file's counts take more than ``memory_fraction`` of the memory.

    Parameters
    ----------
    path
        The input file (anything but ``.h5ad`` returns ``False``: only ``.h5ad`` reads backed).
    memory_fraction
        Share of the machine's physical memory the counts may take in memory.
    layer
        Layer holding the counts; ``None``: ``X``.

    Examples
    --------
    >>> should_read_backed("atlas.h5ad")  # a small file
    False
    """
    if Path(path).suffix != ".h5ad" or not Path(path).is_file():
        return False
    total = _physical_memory()
    if total is None:
        return False
    return counts_nbytes(path, layer) > memory_fraction * total
