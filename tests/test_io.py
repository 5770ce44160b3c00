"""Readers (h5ad, 10x h5, 10x mtx, CSV/TSV) and writers (atomic h5ad, DCA-style TSV folder)."""

import gzip

import anndata
import numpy as np
import pandas as pd
import pytest

from tests._formats import dense, write_input, write_mtx, write_table
from zipo_scvi.data import (
    InputError,
    detect_format,
    read_counts,
    simulate_counts,
    write_h5ad_atomic,
    write_text_atomic,
    write_tsv_dir,
)


@pytest.fixture
def small():
    return simulate_counts(n_cells=30, n_genes=12, seed=3)


@pytest.mark.parametrize("kind", ["h5ad", "mtx", "h5", "csv", "tsv_transposed"])
def test_every_reader_returns_the_same_cells_genes_and_counts(tmp_path, small, kind):
    path, flags = write_input(small, kind, tmp_path)
    adata = read_counts(path, transpose="--transpose" in flags)
    assert adata.shape == small.shape
    assert list(adata.obs_names) == list(small.obs_names)
    assert list(adata.var_names) == list(small.var_names)
    np.testing.assert_array_equal(dense(adata), dense(small))


def test_mtx_file_inside_the_folder_reads_the_folder(tmp_path, small):
    folder = write_mtx(small, tmp_path / "tenx")
    adata = read_counts(folder / "matrix.mtx.gz")
    np.testing.assert_array_equal(dense(adata), dense(small))


def test_gzipped_table_and_txt_suffix(tmp_path, small):
    plain = write_table(small, tmp_path / "t.csv")
    gz = tmp_path / "t.csv.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    np.testing.assert_array_equal(dense(read_counts(gz)), dense(small))
    txt = write_table(small, tmp_path / "t.txt", sep="\t")
    assert detect_format(txt) == "tsv"
    np.testing.assert_array_equal(dense(read_counts(txt)), dense(small))


def test_detect_format(tmp_path, small):
    names = {"a.h5ad": "h5ad", "a.h5": "10x_h5", "a.CSV": "csv", "a.tsv.gz": "tsv"}
    for name, fmt in names.items():
        (tmp_path / name).write_bytes(b"")
        assert detect_format(tmp_path / name) == fmt
    assert detect_format(write_mtx(small, tmp_path / "m")) == "10x_mtx"


def _bad(tmp_path, case):
    if case == "missing":
        return tmp_path / "nope.h5ad", "does not exist"
    if case == "unknown_suffix":
        (tmp_path / "a.loom").write_text("x")
        return tmp_path / "a.loom", "cannot tell the format"
    if case == "empty_folder":
        (tmp_path / "d").mkdir()
        return tmp_path / "d", "without a matrix.mtx"
    if case == "text_as_h5ad":
        (tmp_path / "a.h5ad").write_text("cell,gene\n")
        return tmp_path / "a.h5ad", "not an HDF5 file"
    if case == "text_as_h5":
        (tmp_path / "a.h5").write_text("hello")
        return tmp_path / "a.h5", "not an HDF5 file"
    if case == "h5ad_as_h5":
        simulate_counts(n_cells=5, n_genes=4).write_h5ad(tmp_path / "a.h5")
        return tmp_path / "a.h5", "not a 10x Genomics count matrix"
    if case == "binary_as_csv":
        (tmp_path / "a.csv").write_bytes(b"\x00\x01\x02binary")
        return tmp_path / "a.csv", "binary file"
    if case == "h5ad_as_csv":
        simulate_counts(n_cells=5, n_genes=4).write_h5ad(tmp_path / "a.csv")
        return tmp_path / "a.csv", "binary file"
    if case == "words_in_csv":
        (tmp_path / "a.csv").write_text(",g1,g2\nc1,1,two\nc2,3,4\n")
        return tmp_path / "a.csv", "non-numeric values in column 'g2'"
    if case == "header_only_csv":
        (tmp_path / "a.csv").write_text("g1,g2\n")
        return tmp_path / "a.csv", "holds no count table"
    if case == "plain_named_gz":
        (tmp_path / "a.csv.gz").write_text(",g\nc,1\n")
        return tmp_path / "a.csv.gz", "is not gzip-compressed"
    if case == "garbage_mtx":
        folder = tmp_path / "m"
        folder.mkdir()
        (folder / "matrix.mtx").write_text("not a matrix\n")
        return folder, "not a Matrix Market file"
    if case == "mtx_without_barcodes":
        folder = write_mtx(simulate_counts(n_cells=5, n_genes=4), tmp_path / "m")
        (folder / "barcodes.tsv.gz").unlink()
        return folder, "not a readable 10x mtx folder"
    raise ValueError(case)


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "unknown_suffix",
        "empty_folder",
        "text_as_h5ad",
        "text_as_h5",
        "h5ad_as_h5",
        "binary_as_csv",
        "h5ad_as_csv",
        "words_in_csv",
        "header_only_csv",
        "plain_named_gz",
        "garbage_mtx",
        "mtx_without_barcodes",
    ],
)
def test_bad_inputs_raise_input_error_naming_the_problem(tmp_path, case):
    path, message = _bad(tmp_path, case)
    with pytest.raises(InputError, match=message) as info:
        read_counts(path)
    assert len(str(info.value).splitlines()) == 1


def test_transpose_only_for_tables(tmp_path, small):
    small.write_h5ad(tmp_path / "a.h5ad")
    with pytest.raises(InputError, match="--transpose applies to CSV/TSV"):
        read_counts(tmp_path / "a.h5ad", transpose=True)


def _with_outputs(adata, dispersion=False):
    rng = np.random.default_rng(0)
    adata.layers["zipo_denoised"] = rng.gamma(2.0, size=adata.shape).astype(np.float32)
    adata.layers["zipo_zero_prob"] = rng.uniform(size=adata.shape).astype(np.float32)
    if dispersion:
        adata.layers["zipo_dispersion"] = rng.gamma(5.0, size=adata.shape).astype(np.float32)
    adata.obsm["X_zipo"] = rng.normal(size=(adata.n_obs, 3)).astype(np.float32)
    return adata


@pytest.mark.parametrize("dispersion", [False, True])
def test_tsv_dir_has_dca_layout_and_values(tmp_path, small, dispersion):
    adata = _with_outputs(small, dispersion)
    files = write_tsv_dir(adata, tmp_path / "res")
    expected = {"mean.tsv", "dropout.tsv", "latent.tsv"} | (
        {"dispersion.tsv"} if dispersion else set()
    )
    assert {f.name for f in files} == expected
    mean = pd.read_csv(tmp_path / "res" / "mean.tsv", sep="\t", index_col=0)
    assert list(mean.index) == list(adata.var_names)  # genes x cells, like DCA
    assert list(mean.columns) == list(adata.obs_names)
    np.testing.assert_allclose(mean.to_numpy().T, adata.layers["zipo_denoised"], rtol=1e-5)
    dropout = pd.read_csv(tmp_path / "res" / "dropout.tsv", sep="\t", index_col=0)
    np.testing.assert_allclose(dropout.to_numpy().T, adata.layers["zipo_zero_prob"], rtol=1e-5)
    latent = pd.read_csv(tmp_path / "res" / "latent.tsv", sep="\t", index_col=0)
    assert latent.shape == (adata.n_obs, 3)
    np.testing.assert_allclose(latent.to_numpy(), adata.obsm["X_zipo"], rtol=1e-5, atol=1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_tsv_dir_replaces_only_its_own_files_and_refuses_missing_outputs(tmp_path, small):
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "keep.txt").write_text("x")
    adata = _with_outputs(small, dispersion=True)
    write_tsv_dir(adata, tmp_path / "res")  # a folder holding other files is fine
    assert (tmp_path / "res" / "keep.txt").read_text() == "x"
    with pytest.raises(FileExistsError, match="mean.tsv"):
        write_tsv_dir(adata, tmp_path / "res")
    del adata.layers["zipo_dispersion"]
    write_tsv_dir(adata, tmp_path / "res", overwrite=True)
    names = sorted(p.name for p in (tmp_path / "res").iterdir())
    assert names == ["dropout.tsv", "keep.txt", "latent.tsv", "mean.tsv"]  # stale one gone
    with pytest.raises(KeyError, match="zipo_denoised"):
        write_tsv_dir(simulate_counts(n_cells=5, n_genes=4), tmp_path / "other")


def test_atomic_writers_leave_nothing_on_failure(tmp_path, small, monkeypatch):
    out = tmp_path / "out.h5ad"
    write_h5ad_atomic(small, out)
    assert anndata.read_h5ad(out).shape == small.shape
    before = out.read_bytes()

    def broken(self, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(anndata.AnnData, "write_h5ad", broken)
    with pytest.raises(OSError, match="disk full"):
        write_h5ad_atomic(small, out)
    assert out.read_bytes() == before  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5ad"]
    write_text_atomic("a = 1\n", tmp_path / "s.toml")
    assert (tmp_path / "s.toml").read_text() == "a = 1\n"
