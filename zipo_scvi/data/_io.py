"""Readers of count matrices (h5ad, 10x h5, 10x mtx, CSV/TSV) and writers of ZIPO's outputs."""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._outputs import FILE_OUTPUTS, OUTPUT_BY_KEY

#: The first bytes of every HDF5 file (h5ad and 10x h5 files are HDF5).
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_GZIP_SIGNATURE = b"\x1f\x8b"

#: Path endings -> format name, checked in order (longest first).
_SUFFIXES: tuple[tuple[str, str], ...] = (
    (".mtx.gz", "10x_mtx"),
    (".csv.gz", "csv"),
    (".tsv.gz", "tsv"),
    (".txt.gz", "tsv"),
    (".h5ad", "h5ad"),
    (".h5", "10x_h5"),
    (".mtx", "10x_mtx"),
    (".csv", "csv"),
    (".tsv", "tsv"),
    (".txt", "tsv"),
)

SUPPORTED_INPUTS = (
    ".h5ad, 10x .h5, a 10x mtx folder (or its matrix.mtx[.gz]), .csv, .tsv or .txt "
    "(optionally .gz)"
)


#: The files of a ``--tsv-dir`` folder (``write_tsv_dir``); nothing else there is touched.
TSV_FILES = tuple(output.tsv for output in FILE_OUTPUTS if output.tsv is not None)


class InputError(ValueError):
    """A file that is missing, of an unknown kind, or not what its name says it is."""


def detect_format(path: str | os.PathLike) -> str:
    """Name the format of a count-matrix path from its ending (or a folder's contents).

    Parameters
    ----------
    path
        A file or a 10x mtx folder.

    Returns
    -------
    One of ``"h5ad"``, ``"10x_h5"``, ``"10x_mtx"``, ``"csv"``, ``"tsv"``.

    Raises
    ------
    InputError
        If the path does not exist or its kind is not supported.

    Examples
    --------
    >>> detect_format("atlas.h5ad")
    'h5ad'
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"input {str(p)!r} does not exist")
    if p.is_dir():
        if _mtx_file(p) is None:
            raise InputError(
                f"{str(p)!r} is a folder without a matrix.mtx or matrix.mtx.gz; "
                f"supported inputs: {SUPPORTED_INPUTS}"
            )
        return "10x_mtx"
    name = p.name.lower()
    for suffix, fmt in _SUFFIXES:
        if name.endswith(suffix):
            return fmt
    raise InputError(f"cannot tell the format of {str(p)!r}; supported inputs: {SUPPORTED_INPUTS}")


def read_counts(
    path: str | os.PathLike, transpose: bool | None = None, fmt: str | None = None
) -> AnnData:
    """Read a raw count matrix as a cells x genes AnnData, choosing the reader from the path.

    Parameters
    ----------
    path
        ``.h5ad`` (anndata), ``.h5`` (10x Genomics, :func:`scanpy.read_10x_h5`), a 10x mtx
        folder or the ``matrix.mtx[.gz]`` inside one (:func:`scanpy.read_10x_mtx`), or a
        ``.csv``/``.tsv``/``.txt`` table (optionally gzipped) with a header row of names and a
        first column of names.
    transpose
        Tables only: ``True``: the table is genes x cells (DCA's layout); ``False``: cells x
        genes; ``None`` (default): cells x genes, but a table whose row names look like genes
        (Ensembl ids, ``gene...``) while its column names look like cells (barcodes,
        ``cell...``) is refused with the fix (see :func:`looks_genes_by_cells`).
    fmt
        Force a format (see :func:`detect_format`) instead of reading it from the path.

    Returns
    -------
    AnnData with cells as observations and genes as variables; tables become CSR float32.

    Raises
    ------
    InputError
        If the file is missing, of an unknown kind, or not what its name says (for example a
        text file named ``.h5ad``, or a table with non-numeric values), or a table looks
        genes x cells and ``transpose`` is ``None``.

    Examples
    --------
    >>> from zipo_scvi.data import read_counts
    >>> adata = read_counts("atlas.h5ad")
    """
    p = Path(path)
    fmt = fmt or detect_format(p)
    if not p.exists():
        raise InputError(f"input {str(p)!r} does not exist")
    if transpose and fmt not in ("csv", "tsv"):
        raise InputError(f"--transpose applies to CSV/TSV tables only, not to {fmt} input")
    readers = {
        "h5ad": _read_h5ad,
        "10x_h5": _read_10x_h5,
        "10x_mtx": _read_10x_mtx,
        "csv": lambda q: _read_table(q, ",", transpose),
        "tsv": lambda q: _read_table(q, "\t", transpose),
    }
    if fmt not in readers:
        raise InputError(f"unknown input format {fmt!r}; choose one of {sorted(readers)}")
    return readers[fmt](p)


def _head(path: Path, n: int = 8192) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _require_hdf5(path: Path, what: str) -> None:
    if not _head(path, 8).startswith(_HDF5_SIGNATURE):
        raise InputError(f"{str(path)!r} is not an HDF5 file, so it cannot be {what}")


def _read_h5ad(path: Path) -> AnnData:
    import anndata

    _require_hdf5(path, "an .h5ad file")
    try:
        return anndata.read_h5ad(path)
    except Exception as err:  # h5py and anndata raise many kinds
        raise InputError(
            f"{str(path)!r} is an HDF5 file but not a readable .h5ad file "
            f"({err.__class__.__name__}: {_first_line(err)})"
        ) from err


def _read_10x_h5(path: Path) -> AnnData:
    import scanpy as sc

    _require_hdf5(path, "a 10x Genomics .h5 file")
    try:
        adata = sc.read_10x_h5(path)
    except Exception as err:
        raise InputError(
            f"{str(path)!r} is an HDF5 file but not a 10x Genomics count matrix "
            f"({err.__class__.__name__}: {_first_line(err)})"
        ) from err
    adata.var_names_make_unique()
    return adata


def _mtx_file(folder: Path) -> Path | None:
    for name in ("matrix.mtx.gz", "matrix.mtx"):
        if (folder / name).is_file():
            return folder / name
    return None


def _read_10x_mtx(path: Path) -> AnnData:
    import scanpy as sc

    folder = path if path.is_dir() else path.parent
    mtx = _mtx_file(folder)
    if mtx is None:
        raise InputError(f"{str(folder)!r} holds no matrix.mtx or matrix.mtx.gz")
    head = _head(mtx, 64)
    if mtx.name.endswith(".gz"):
        if not head.startswith(_GZIP_SIGNATURE):
            raise InputError(f"{str(mtx)!r} is not gzip-compressed although its name ends in .gz")
        with gzip.open(mtx, "rb") as f:
            head = f.read(64)
    if not head.startswith(b"%%MatrixMarket"):
        raise InputError(f"{str(mtx)!r} is not a Matrix Market file (no %%MatrixMarket header)")
    try:
        return sc.read_10x_mtx(folder)
    except Exception as err:
        raise InputError(
            f"{str(folder)!r} is not a readable 10x mtx folder (it needs matrix.mtx, "
            f"barcodes.tsv and genes.tsv, or their .gz versions with features.tsv.gz; "
            f"{err.__class__.__name__}: {_first_line(err)})"
        ) from err


def _read_table(path: Path, sep: str, transpose: bool) -> AnnData:
    head = _head(path)
    gz = path.name.lower().endswith(".gz")
    if gz != head.startswith(_GZIP_SIGNATURE):
        state = "is not" if gz else "is"
        raise InputError(f"{str(path)!r} {state} gzip-compressed, unlike what its name says")
    if gz:
        with gzip.open(path, "rb") as f:
            head = f.read(8192)
    if b"\x00" in head or head.startswith(_HDF5_SIGNATURE):
        raise InputError(f"{str(path)!r} is a binary file, not a text table")
    try:
        table = pd.read_csv(path, sep=sep, index_col=0)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"{str(path)!r} is not a readable table ({_first_line(err)})") from err
    if table.shape[0] == 0 or table.shape[1] == 0:
        raise InputError(
            f"{str(path)!r} holds no count table (shape {table.shape}); expected a header row of "
            f"names and a first column of names, separated by {sep!r}"
        )
    if _no_row_names(table):
        warnings.warn(
            f"{str(path)!r} has no column of row names (its first column holds numbers and its "
            f"header names it {str(table.index.name)!r}): every column is read as a gene and "
            "the rows are numbered. Write the table with row names (pandas: index=True) to name "
            "them.",
            UserWarning,
            stacklevel=3,
        )
        table = pd.read_csv(path, sep=sep, index_col=None)
        table.index = table.index.astype(str)
    missing = table.isna().any(axis=1).to_numpy()
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        raise InputError(
            f"{str(path)!r}: row {row + 1} (named {str(table.index[row])!r}) has empty, "
            f"missing or NaN fields; every row needs as many values, separated by {sep!r}, as the "
            "header has names"
        )
    bad = [c for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
    if bad:
        raise InputError(
            f"{str(path)!r} has non-numeric values in column {str(bad[0])!r}; expected counts "
            f"separated by {sep!r} with names in the first row and column"
        )
    if transpose is None:
        hint = looks_genes_by_cells(table.index, table.columns)
        if hint:
            raise InputError(
                f"{str(path)!r} looks like genes x cells ({hint}); pass --transpose "
                "(transpose=True in Python) to read it as DCA's layout, or --no-transpose "
                "(transpose=False) if its rows really are cells"
            )
    if transpose:
        table = table.T
    values = table.to_numpy(dtype=np.float64)
    # float32 holds integers exactly only up to 2**24; keep larger counts exact
    exact = values.size == 0 or np.nanmax(np.abs(values)) <= 2**24
    x = sp.csr_matrix(values.astype(np.float32) if exact else values)
    adata = AnnData(
        x,
        obs=pd.DataFrame(index=table.index.astype(str)),
        var=pd.DataFrame(index=table.columns.astype(str)),
    )
    adata.obs_names_make_unique()
    adata.var_names_make_unique()
    return adata


def _no_row_names(table: pd.DataFrame) -> bool:
    """Whether a table read with its first column as row names had no such column.

    Its first column then holds a gene's counts: numbers, under a header name of its own
    (pandas writes an empty first header cell above row names), and not the run 0..n-1 or
    1..n of numbered rows.
    """
    index = table.index
    if index.name is None or not pd.api.types.is_numeric_dtype(index) or len(index) < 2:
        return False
    values = index.to_numpy(dtype=np.float64)
    numbered = any(np.array_equal(values, np.arange(len(values)) + k) for k in (0, 1))
    return not numbered


_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")  # ENSG00000141510, ENSMUSG...
_BARCODE = re.compile(r"[ACGT]{10,}")  # 10x, Drop-seq, inDrop barcodes (with -1 etc. around)


def _share(names, test) -> float:
    names = [str(n) for n in names[:2000]]
    return sum(map(test, names)) / len(names) if names else 0.0


def _gene_like(name: str) -> bool:
    return bool(_ENSEMBL.match(name)) or name.lower().startswith("gene")


def _cell_like(name: str) -> bool:
    return bool(_BARCODE.search(name)) or name.lower().startswith(("cell", "barcode"))


def looks_genes_by_cells(rows, columns) -> str | None:
    """Why a table with these row and column names is likely genes x cells, or ``None``.

    A table is taken for genes x cells when most row names look like genes (Ensembl ids or
    ``gene...``) and few column names do, or most column names look like cells (barcodes of
    10 or more A/C/G/T, or ``cell...``/``barcode...``) and few row names do.

    Examples
    --------
    >>> print(looks_genes_by_cells(["ENSG00000141510", "ENSG00000012048"], ["AAACCTGAGA-1"]))
    row names such as 'ENSG00000141510' look like genes, column names such as 'AAACCTGAGA-1' \
look like cells; 2 rows x 1 columns
    >>> looks_genes_by_cells(["AAACCTGAGAAGGCCT-1"], ["CD3E", "GAPDH"]) is None
    True
    """
    rows, columns = list(rows), list(columns)
    genes_in_rows = _share(rows, _gene_like) >= 0.5 and _share(columns, _gene_like) < 0.1
    cells_in_columns = _share(columns, _cell_like) >= 0.5 and _share(rows, _cell_like) < 0.1
    reasons = []
    if genes_in_rows:
        reasons.append(f"row names such as {str(rows[0])!r} look like genes")
    if cells_in_columns:
        reasons.append(f"column names such as {str(columns[0])!r} look like cells")
    if not reasons:
        return None
    return ", ".join(reasons) + f"; {len(rows)} rows x {len(columns)} columns"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else err.__class__.__name__


# ---------------------------------------------------------------------- writers
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _user_mode(path: Path) -> None:
    """Give a finished output the mode a plain ``open``/``mkdir`` would: 0666/0777 minus umask.

    ``tempfile`` creates its files 0600 and folders 0700, which would hide outputs from the
    user's group.
    """
    full = 0o777 if path.is_dir() else 0o666
    os.chmod(path, full & ~_umask())


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike, directory: bool = False, owned: Iterable[str] = ()
) -> Iterator[Path]:
    """Write an output under a new temporary name beside it, then move it into place.

    Yields a fresh path ``.NAME.XXXX.tmp`` in the destination's folder (a file, or a folder
    with ``directory=True``). When the block ends normally the file replaces ``path``, or the
    folder's files are moved into the folder ``path`` (see :func:`replace_files`); on any
    exception, ``KeyboardInterrupt`` and the command line's signals included, the temporary
    name is removed and ``path`` is left as it was. ``owned``: for a folder, the names of the
    files this kind of output writes (stale ones are removed; nothing else in the folder is).

    Examples
    --------
    >>> with atomic_output("out.h5ad") as tmp:  # doctest: +SKIP
    ...     adata.write_h5ad(tmp)
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if directory:
            replace_files(tmp, out, owned)
        else:
            _user_mode(tmp)
            os.replace(tmp, out)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp)
        elif tmp.exists():
            tmp.unlink()


def write_h5ad_atomic(adata: AnnData, path: str | os.PathLike) -> None:
    """Write an AnnData to ``path`` through a temporary file, so a failure leaves no partial file.

    Parameters
    ----------
    adata
        The data to write.
    path
        Destination ``.h5ad``; replaced only once the new file is complete.

    Examples
    --------
    >>> write_h5ad_atomic(adata, "out.h5ad")
    """
    with atomic_output(path) as tmp:
        adata.write_h5ad(tmp)


def write_text_atomic(text: str, path: str | os.PathLike) -> None:
    """Write a text file through a temporary file in the same folder.

    Parameters
    ----------
    text
        Content.
    path
        Destination.

    Examples
    --------
    >>> write_text_atomic("seed = 0", "run.toml")
    """
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def replace_files(tmp: Path, dest: Path, owned: Iterable[str] = ()) -> list[Path]:
    """Move the files of a finished folder ``tmp`` into the folder ``dest``, one by one.

    Only the files named in ``tmp`` are replaced in ``dest``, plus the names in ``owned`` that
    this output did not write this time (stale outputs of an earlier run, such as a
    ``dispersion.tsv`` beside a Poisson run's files); anything else in ``dest`` is kept.
    ``dest`` is created (with the user's umask) if it does not exist.

    Returns
    -------
    The paths written in ``dest``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for item in sorted(tmp.iterdir()):
        _user_mode(item)
        target = dest / item.name
        if target.is_dir() and not target.is_symlink():
            raise IsADirectoryError(f"{str(target)!r} is a folder; zipo writes a file there")
        os.replace(item, target)
        written.append(target)
    for name in owned:
        stale = dest / name
        if stale not in written and stale.is_file():
            stale.unlink()
    return written


def _dense(matrix) -> np.ndarray:
    return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)


def write_tsv_dir(
    adata: AnnData, directory: str | os.PathLike, overwrite: bool = False
) -> list[Path]:
    """Write ZIPO's outputs as DCA-style TSV files.

    ``mean.tsv`` (the denoised rates ``l * mu``, ``layers["zipo_denoised"]``), ``dropout.tsv``
    (zero-inflation probabilities, ``layers["zipo_zero_prob"]``; DCA calls it ``pi.tsv``) and,
    for NB likelihoods, ``dispersion.tsv`` (``layers["zipo_dispersion"]``) are genes x cells
    like DCA's; ``latent.tsv`` (``obsm["X_zipo"]``; DCA's ``reduced.tsv``) is cells x latents.
    Every file has names in its first row and column. The folder is written beside its
    destination and moved into place when complete.

    Parameters
    ----------
    adata
        AnnData holding the command line's output keys (see
        :data:`zipo_scvi._outputs.OUTPUTS`).
    directory
        Destination folder.
    overwrite
        Replace an existing folder.

    Returns
    -------
    Paths of the files written.

    Raises
    ------
    FileExistsError
        If ``directory`` exists and ``overwrite`` is false.
    KeyError
        If ``adata`` lacks ``layers["zipo_denoised"]`` or ``obsm["X_zipo"]``.

    Examples
    --------
    >>> files = write_tsv_dir(adata, "results/")
    """
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{str(out)!r} is a file, not a folder")
    existing = [name for name in TSV_FILES if (out / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{str(out / existing[0])!r} exists; pass overwrite=True to replace it"
        )
    for what in ("denoised", "latent"):
        attr, key = OUTPUT_BY_KEY[what].slot, OUTPUT_BY_KEY[what].name
        if key not in getattr(adata, attr):
            raise KeyError(f"adata.{attr} has no {key!r}; run ZIPO (or `zipo denoise`) first")
    with atomic_output(out, directory=True, owned=TSV_FILES) as tmp:
        for output in FILE_OUTPUTS:
            if output.tsv is None or output.name not in getattr(adata, output.slot):
                continue
            values = _dense(getattr(adata, output.slot)[output.name])
            if output.slot == "layers":  # genes x cells, like DCA's
                frame = pd.DataFrame(values.T, index=adata.var_names, columns=adata.obs_names)
            else:
                columns = [f"latent_{i}" for i in range(values.shape[1])]
                frame = pd.DataFrame(values, index=adata.obs_names, columns=columns)
            frame.to_csv(tmp / output.tsv, sep="\t", float_format="%.6g")
        names = sorted(p.name for p in tmp.iterdir())
    return [out / name for name in names]
