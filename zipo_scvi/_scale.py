"""Atlas-sized data: backed ``.h5ad`` files and collections, chunked output, chunked simulation.

Counts that do not fit in memory stay on disk: :func:`read_backed` opens one ``.h5ad`` with
``anndata.read_h5ad(path, backed="r")`` (or several through anndata's ``AnnCollection`` and
scvi-tools' :class:`~scvi.dataloaders.CollectionAdapter`), and scvi-tools' own
:class:`~scvi.data.AnnTorchDataset` reads each minibatch's rows from disk. Nothing here loads
minibatches itself. :func:`write_denoised` streams the model's outputs into an ``.h5ad`` file one
block of cells at a time, so no cells x genes matrix is ever held whole in memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData, read_h5ad
from anndata.io import sparse_dataset, write_elem
from scvi import REGISTRY_KEYS
from scvi.dataloaders import CollectionAdapter
from scvi.dataloaders._anncollection import ArrayFakerSparse

from ._components import dense_input
from ._module import denoised_expression
from .data._io import OUTPUT_KEYS
from .data._simulate import batch_effects, cell_obs, cell_rates, de_factors, gene_base_means

if TYPE_CHECKING:
    from ._model import ZIPO

#: Share of the machine's memory above which ``zipo denoise`` reads its input backed.
BACKED_MEMORY_FRACTION = 0.25

#: Cells per block when streaming outputs and simulated counts to disk.
CHUNK_CELLS = 10_000

#: Keys of the latents and of the predicted and observed library sizes in the outputs.
LATENT_KEY = OUTPUT_KEYS["latent"][1]
PREDICTED_LIBRARY_KEY = OUTPUT_KEYS["predicted_library"][1]
OBSERVED_LIBRARY_KEY = OUTPUT_KEYS["observed_library"][1]

#: The layers :func:`write_denoised` can write (name in the output file -> what it holds).
OUTPUT_LAYERS = ("zipo_denoised", "zipo_zero_prob", "zipo_dispersion")


def output_layers(module, layers: Sequence[str] = OUTPUT_LAYERS) -> list[str]:
    """The ``layers`` the module's likelihood has: ``zipo_zero_prob`` only with zero inflation
    (ZIP, ZINB), ``zipo_dispersion`` only with an NB dispersion (NB, ZINB).
    """
    has = {
        "zipo_zero_prob": module.likelihood.zero_inflated,
        "zipo_dispersion": module.likelihood.dispersion,
    }
    return [name for name in layers if has.get(name, True)]


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
    >>> adata = read_backed("atlas.h5ad")  # doctest: +SKIP
    >>> ZIPO.setup_anndata(adata, batch_key="sample")  # doctest: +SKIP
    >>> model = ZIPO(adata)  # doctest: +SKIP
    >>> model.train(max_epochs=20)  # doctest: +SKIP
    >>> model.write_normalized_expression("atlas_denoised.h5ad")  # doctest: +SKIP
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
    >>> counts_nbytes("atlas.h5ad")  # doctest: +SKIP
    1664052004
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
    >>> should_read_backed("atlas.h5ad")  # doctest: +SKIP
    True
    """
    if Path(path).suffix != ".h5ad" or not Path(path).is_file():
        return False
    total = _physical_memory()
    if total is None:
        return False
    return counts_nbytes(path, layer) > memory_fraction * total


# ---------------------------------------------------------------------- fine-tuning
def check_saved_genes(
    dir_path: str | os.PathLike, adata: AnnData | BackedCollection, prefix: str | None = None
) -> None:
    """Raise ``ValueError`` if ``adata``'s genes are not the saved model's, in the same order.

    scvi-tools refuses a different number of genes but only warns about different names; a
    model fine-tuned on other genes would silently read every column as the wrong gene.

    Parameters
    ----------
    dir_path
        Folder written by ``ZIPO.save`` (nothing is checked if it holds no ``model.pt``).
    adata
        The data the model is about to be loaded onto.
    prefix
        File-name prefix given to ``save``.

    Examples
    --------
    >>> check_saved_genes("zipo_model/", read_backed("new_cells.h5ad"))  # doctest: +SKIP
    """
    model_file = Path(dir_path) / f"{prefix or ''}model.pt"
    if not model_file.is_file():
        return
    try:
        saved = torch.load(model_file, map_location="cpu", weights_only=False).get("var_names")
    except Exception:  # not a model file: ZIPO.load reports that with its own message
        return
    if saved is None:
        return
    saved = pd.Index(np.asarray(saved).astype(str))
    given = pd.Index(np.asarray(adata.var_names).astype(str))
    if saved.equals(given):
        return
    if len(saved) == len(given) and set(saved) == set(given):
        hint = "the same genes in another order; reorder them: adata[:, saved_genes]"
    else:
        missing, extra = saved.difference(given), given.difference(saved)
        hint = (
            f"{len(missing)} saved genes missing (e.g. {list(missing[:3])}), "
            f"{len(extra)} genes the model does not know (e.g. {list(extra[:3])})"
        )
    raise ValueError(
        f"The genes of this AnnData do not match the saved model's genes ({len(given)} genes, "
        f"the model has {len(saved)}): {hint}."
    )


# ---------------------------------------------------------------------- writing
def _encode(node, kind: str, version: str) -> None:
    node.attrs["encoding-type"] = kind
    node.attrs["encoding-version"] = version


def _group(f: h5py.File, name: str) -> h5py.Group:
    if name not in f:
        f.create_group(name)
    _encode(f[name], "dict", "0.1.0")
    return f[name]


def _dense(group: h5py.Group, name: str, shape, rows: int, compression: str | None):
    if name in group:
        del group[name]
    chunks = (max(1, min(rows, shape[0])), shape[1])
    dataset = group.create_dataset(
        name, shape=shape, dtype="float32", chunks=chunks, compression=compression
    )
    _encode(dataset, "array", "0.2.0")
    return dataset


def _source_file(adata) -> Path | None:
    if not isinstance(adata, BackedCollection) and adata.isbacked:
        return Path(adata.filename)
    return None


def _write_counts(adata, f: h5py.File, layer: str | None, rows: int) -> None:
    """Write the counts as ``X`` of the output, one block of rows at a time."""
    matrix = adata.X if layer is None else adata.layers[layer]
    for start in range(0, adata.n_obs, rows):
        block = matrix[start : start + rows]
        block = sp.csr_matrix(block, dtype=np.float32)
        if start == 0:
            write_elem(f, "X", block)
        else:
            sparse_dataset(f["X"]).append(block)


def _clean_obs(obs: pd.DataFrame) -> pd.DataFrame:
    """``obs`` without scvi-tools' registration columns."""
    return obs.loc[:, [c for c in obs.columns if not str(c).startswith("_scvi")]].copy()


def write_denoised(
    model: ZIPO,
    path: str | os.PathLike,
    adata: AnnData | BackedCollection | None = None,
    library_size: float | Literal["latent", "observed"] = "observed",
    layers: Sequence[str] = OUTPUT_LAYERS,
    latent_key: str | None = LATENT_KEY,
    library_key: str | None = PREDICTED_LIBRARY_KEY,
    observed_key: str | None = OBSERVED_LIBRARY_KEY,
    batch_size: int = 1024,
    compression: str | None = None,
    uns: Mapping[str, Any] | None = None,
    transform_batch: str | None = None,
) -> Path:
    """Write denoised expression to an ``.h5ad`` file block by block, never whole in memory.

    The output holds the input's counts and annotations (for a backed input, every element of
    its file is copied at the HDF5 level, block by block), plus the model's outputs:
    ``layers["zipo_denoised"]`` (dense float32, ``library_size`` as in
    :meth:`ZIPO.get_normalized_expression`), ``layers["zipo_zero_prob"]`` (zero-inflated
    likelihoods only), ``layers["zipo_dispersion"]`` (NB likelihoods only), ``obsm["X_zipo"]``,
    ``obs["zipo_predicted_library"]`` (the library subnetwork's ``l``) and
    ``obs["zipo_observed_library"]`` (each cell's total count: what ``"observed"`` denoised
    values are scaled to). The file is written under a temporary name and renamed when done.

    Parameters
    ----------
    model
        A trained :class:`~zipo_scvi.ZIPO`.
    path
        Output ``.h5ad`` (must differ from the input file).
    adata
        Data registered like the model's (backed, a :class:`BackedCollection` or in memory);
        default: the model's data.
    library_size
        ``"latent"`` (rates ``l * mu``), ``"observed"`` (``mu`` times the observed total) or a
        number (``mu`` scaled to it).
    layers
        Which of ``"zipo_denoised"``, ``"zipo_zero_prob"``, ``"zipo_dispersion"`` to write
        (those the likelihood does not have are skipped: ``zero_prob`` exists only for ZIP and
        ZINB, ``dispersion`` only for NB and ZINB).
    latent_key, library_key, observed_key
        ``obsm`` key of the latents, ``obs`` columns of the predicted library ``l`` and of the
        observed total count (``None``: skip).
    batch_size
        Cells per block: memory grows with ``batch_size x n_genes``, not with the cells.
    compression
        HDF5 compression of the new layers (``None``, ``"gzip"`` or ``"lzf"``).
    uns
        Entries written under ``uns`` (e.g. the settings of the run).
    transform_batch
        Decode every cell as if it came from this batch (see
        :meth:`ZIPO.get_normalized_expression`).

    Returns
    -------
    The path written.

    Examples
    --------
    >>> write_denoised(model, "atlas_denoised.h5ad")  # doctest: +SKIP
    >>> out = anndata.read_h5ad("atlas_denoised.h5ad", backed="r")  # doctest: +SKIP
    >>> out.layers["zipo_denoised"][:5]  # doctest: +SKIP
    """
    if not (isinstance(library_size, (int, float)) or library_size in ("latent", "observed")):
        raise ValueError(
            f"library_size must be a number, 'latent' or 'observed', not {library_size!r}."
        )
    unknown = [name for name in layers if name not in OUTPUT_LAYERS]
    if unknown:
        raise ValueError(f"Unknown output layer(s) {unknown}; choose from {list(OUTPUT_LAYERS)}.")
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2, not {batch_size}.")
    model._batch_code(transform_batch)  # an unknown batch fails before any writing
    adata = model._validate_anndata(adata)
    path = Path(path)
    if path.suffix != ".h5ad":
        raise ValueError(f"Output {str(path)!r} must end in .h5ad.")
    source = _source_file(adata)
    if source is not None and path.resolve() == source.resolve():
        raise ValueError(f"Output {str(path)!r} is the backed input file; choose another path.")
    counts_layer = model.registry_["setup_args"].get("layer")
    tmp = path.with_name(path.name + ".tmp")
    n_obs, n_vars = adata.n_obs, adata.n_vars
    module = model.module
    wanted = output_layers(module, layers)
    obs = _clean_obs(adata.obs)
    try:
        if source is not None:
            with h5py.File(source, "r") as src, h5py.File(tmp, "w") as dst:
                for key, value in src.attrs.items():
                    dst.attrs[key] = value
                for key in src:
                    src.copy(src[key], dst, name=key)
        else:
            skeleton = AnnData(obs=obs, var=pd.DataFrame(index=adata.var_names.copy()))
            skeleton.write_h5ad(tmp)
            with h5py.File(tmp, "a") as dst:
                _write_counts(adata, dst, counts_layer, CHUNK_CELLS)
        with h5py.File(tmp, "a") as dst:
            layer_group, obsm_group = _group(dst, "layers"), _group(dst, "obsm")
            datasets = {
                name: _dense(layer_group, name, (n_obs, n_vars), batch_size, compression)
                for name in wanted
            }
            latent = None
            if latent_key is not None:
                latent = _dense(obsm_group, latent_key, (n_obs, module.n_latent), batch_size, None)
            library = np.empty(n_obs, dtype=np.float32)
            observed = np.empty(n_obs, dtype=np.float32)
            start = 0
            for rows, block in output_blocks(
                model, adata, wanted, library_size, batch_size, transform_batch
            ):
                if latent is not None:
                    latent[rows] = block[LATENT_KEY]
                library[rows] = block[PREDICTED_LIBRARY_KEY]
                observed[rows] = block[OBSERVED_LIBRARY_KEY]
                for name, dataset in datasets.items():
                    dataset[rows] = block[name]
                start = rows.stop
            if start != n_obs:
                raise RuntimeError(f"Wrote {start} of {n_obs} cells; the loader ended early.")
            if library_key is not None:
                obs[library_key] = library
            if observed_key is not None:
                obs[observed_key] = observed
            if "obs" in dst:
                del dst["obs"]
            write_elem(dst, "obs", obs)
            if uns:
                uns_group = _group(dst, "uns")
                for key, value in uns.items():
                    if key in uns_group:
                        del uns_group[key]
                    write_elem(uns_group, key, value)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _output(name: str, g: dict[str, torch.Tensor], tensors, library_size) -> np.ndarray:
    """One block of one output layer."""
    if name == "zipo_denoised":
        values = denoised_expression(g, tensors[REGISTRY_KEYS.X_KEY], library_size)
    elif name == "zipo_zero_prob":
        values = torch.sigmoid(g["logit_z"])
    else:
        values = g["log_theta"].exp()
    return values.float().cpu().numpy()


def output_blocks(
    model: ZIPO,
    adata: AnnData | BackedCollection | None,
    layers: Sequence[str],
    library_size: float | Literal["latent", "observed"],
    batch_size: int | None,
    transform_batch: str | None = None,
) -> Iterator[tuple[slice, dict[str, np.ndarray]]]:
    """ZIPO's outputs for one block of cells at a time (float32), in the order of the cells.

    Yields ``(rows, block)``: ``block`` maps each name in ``layers``, ``"X_zipo"``,
    ``"zipo_predicted_library"`` and ``"zipo_observed_library"`` to that block's values.
    ``transform_batch``: decode every cell as if it came from this batch.
    """
    batch_code = model._batch_code(transform_batch)
    module = model.module
    module.eval()
    loader = model._make_data_loader(adata=adata, indices=None, batch_size=batch_size)
    start = 0
    with torch.inference_mode():
        for tensors in loader:
            inference = module.inference(**module._get_inference_input(tensors))
            g = module.generative(
                **module._get_generative_input(tensors, inference), transform_batch=batch_code
            )
            x = tensors[REGISTRY_KEYS.X_KEY]
            block = {
                LATENT_KEY: inference["z"].float().cpu().numpy(),
                PREDICTED_LIBRARY_KEY: g["log_library"].exp().squeeze(1).float().cpu().numpy(),
                OBSERVED_LIBRARY_KEY: dense_input(x).sum(dim=1).float().cpu().numpy(),
            }
            for name in layers:
                block[name] = _output(name, g, tensors, library_size)
            stop = start + block[LATENT_KEY].shape[0]
            yield slice(start, stop), block
            start = stop


def add_outputs(
    model: ZIPO,
    adata: AnnData | None = None,
    library_size: float | Literal["latent", "observed"] = "observed",
    batch_size: int | None = None,
    transform_batch: str | None = None,
) -> AnnData:
    """Put ZIPO's outputs into an in-memory AnnData (what ``zipo denoise`` writes).

    ``layers["zipo_denoised"]`` (``library_size`` as in
    :meth:`ZIPO.get_normalized_expression`; default: ``mu`` times each cell's observed total),
    ``layers["zipo_zero_prob"]`` (ZIP and ZINB only), ``layers["zipo_dispersion"]`` (NB and
    ZINB only), ``obsm["X_zipo"]``, ``obs["zipo_predicted_library"]`` (the library
    subnetwork's ``l``) and ``obs["zipo_observed_library"]`` (each cell's total count), all
    float32. One pass over the cells.

    Parameters
    ----------
    model
        A trained :class:`~zipo_scvi.ZIPO`.
    adata
        AnnData registered like the model's; default: the model's data.
    library_size
        See :meth:`ZIPO.get_normalized_expression`.
    batch_size
        Cells per minibatch.
    transform_batch
        Decode every cell as if it came from this batch (see
        :meth:`ZIPO.get_normalized_expression`).

    Returns
    -------
    ``adata`` (changed in place).
    """
    adata = model._validate_anndata(adata)
    names = output_layers(model.module)
    parts: dict[str, list[np.ndarray]] = {}
    for _rows, block in output_blocks(
        model, adata, names, library_size, batch_size, transform_batch
    ):
        for key, value in block.items():
            parts.setdefault(key, []).append(value)
    values = {key: np.concatenate(value, axis=0) for key, value in parts.items()}
    for name in names:
        adata.layers[name] = values[name]
    adata.obsm[LATENT_KEY] = values[LATENT_KEY]
    for key in (PREDICTED_LIBRARY_KEY, OBSERVED_LIBRARY_KEY):
        adata.obs[key] = values[key]
    return adata


# ---------------------------------------------------------------------- the CLI's backed path
def denoise_backed(
    input_path: str | os.PathLike | Sequence[str | os.PathLike],
    output_path: str | os.PathLike,
    setup_kwargs: Mapping[str, Any] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    train_kwargs: Mapping[str, Any] | None = None,
    uns: Mapping[str, Any] | None = None,
    batch_size: int = 1024,
) -> ZIPO:
    """Train ZIPO on counts that stay on disk and write the outputs in blocks.

    What ``zipo denoise --backed`` runs: :func:`read_backed`, ``ZIPO.setup_anndata``,
    ``ZIPO(...)``, ``model.train(...)`` and :func:`write_denoised`.

    Parameters
    ----------
    input_path
        An ``.h5ad`` file, or several (stacked; their file names go to ``obs["dataset"]``).
    output_path
        Output ``.h5ad``.
    setup_kwargs, model_kwargs, train_kwargs
        Passed to ``ZIPO.setup_anndata``, ``ZIPO`` and ``ZIPO.train``.
    uns
        Entries written under the output's ``uns``.
    batch_size
        Cells per block when writing.

    Returns
    -------
    The trained model (its data stays backed).

    Examples
    --------
    >>> model = denoise_backed("atlas.h5ad", "atlas_denoised.h5ad",
    ...                        setup_kwargs={"batch_key": "sample"},
    ...                        train_kwargs={"max_epochs": 20})  # doctest: +SKIP
    """
    from ._model import ZIPO

    adata = read_backed(input_path)
    ZIPO.setup_anndata(adata, **dict(setup_kwargs or {}))
    model = ZIPO(adata, **dict(model_kwargs or {}))
    model.train(**dict(train_kwargs or {}))
    write_denoised(model, output_path, batch_size=batch_size, uns=uns)
    return model


# ---------------------------------------------------------------------- simulation to disk
def simulate_to_h5ad(
    path: str | os.PathLike,
    n_cells: int,
    n_genes: int,
    n_groups: int = 5,
    n_batches: int = 1,
    seed: int = 0,
    chunk_size: int = CHUNK_CELLS,
    de_prob: float = 0.1,
    de_scale: float = 0.8,
    library_mean: float = 7.5,
    library_sd: float = 0.4,
    bcv: float = 0.2,
    batch_scale: float = 0.1,
) -> Path:
    """Simulate counts straight to a CSR ``.h5ad``, one block of cells at a time.

    The model of :func:`zipo_scvi.data.simulate_counts` (gamma gene means, group DE factors,
    batch factors, log-normal libraries, gamma biological noise, Poisson counts; no dropout),
    with the gene programs drawn once and the cells drawn block by block, so memory grows with
    ``chunk_size x n_genes`` and not with the cells. The true rates are not stored.

    Parameters
    ----------
    path
        Output ``.h5ad``.
    n_cells, n_genes, n_groups, n_batches, seed
        Shape, cell groups, batches and random seed.
    chunk_size
        Cells simulated and written per block.
    de_prob, de_scale, library_mean, library_sd, bcv, batch_scale
        As in :func:`zipo_scvi.data.simulate_counts`.

    Returns
    -------
    The path written. ``X`` holds float32 CSR counts; ``obs`` has ``group``, ``batch``,
    ``donor``, ``pct_mito`` and ``true_library``.

    Examples
    --------
    >>> simulate_to_h5ad("sim.h5ad", n_cells=200_000, n_genes=5_000)  # doctest: +SKIP
    """
    if min(n_cells, n_genes, n_groups, n_batches, chunk_size) < 1:
        raise ValueError("n_cells, n_genes, n_groups, n_batches and chunk_size must be >= 1.")
    rng = np.random.default_rng(seed)
    base = gene_base_means(rng, n_genes)
    group_factors = de_factors(rng, n_groups, n_genes, de_prob, de_scale)
    batch_factors = batch_effects(rng, n_batches, n_genes, batch_scale)
    groups = rng.integers(0, n_groups, size=n_cells)
    batches = rng.integers(0, n_batches, size=n_cells)
    library = np.exp(rng.normal(library_mean, library_sd, size=n_cells))
    obs = cell_obs(rng, groups, batches, library)
    var = pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)])
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        AnnData(obs=obs, var=var).write_h5ad(tmp)
        with h5py.File(tmp, "a") as f:
            for start in range(0, n_cells, chunk_size):
                cells = slice(start, min(start + chunk_size, n_cells))
                rate = cell_rates(
                    rng,
                    base,
                    group_factors[groups[cells]],
                    batch_factors[batches[cells]],
                    library[cells],
                    bcv,
                )
                block = sp.csr_matrix(rng.poisson(rate).astype(np.float32))
                if start == 0:
                    write_elem(f, "X", block)
                else:
                    sparse_dataset(f["X"]).append(block)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
