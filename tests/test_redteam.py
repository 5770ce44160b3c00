"""Red-team cases (issue 15): bad, odd-but-valid and interrupted inputs, each kept as a test.

Every case a careful user tried against ``zipo`` and the ``ZIPO`` API: data loss through
overlapping or forced outputs, training that crashes on a last minibatch of one cell, signals,
getters given other data, tables without a row-name column, checks made only after training,
invalid numbers replaced silently, misleading messages, file modes and integer exactness.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import FAST, TINY
from tests.test_cli import TINY_TOML
from zipo_scvi import ZIPO
from zipo_scvi.cli import main
from zipo_scvi.data import simulate_counts

SMALL = {"encoder_sizes": (16, 4), "library_sizes": (8, 4)}
EPOCH = {"max_epochs": 1, "enable_progress_bar": False}


def _one_error_line(capsys) -> str:
    """The command's stderr holds exactly one ``zipo: error:`` line, its last, no traceback."""
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("zipo: error:")]
    assert len(errors) == 1 and err[-1] == errors[0], err
    assert not any("Traceback" in line for line in err)
    return errors[0]


# ------------------------------------------------------------------ 2. any cell count trains
@pytest.mark.parametrize(
    ("n_cells", "kwargs"),
    [
        (285, {}),  # ceil(0.9 * 285) = 257 = 256 + 1
        (2, {}),  # two cells: one minibatch of both
        (257, {"train_size": 1.0}),  # no validation: the lone cell sits out
        (300, {"batch_size": 269}),  # the API's batch_size
        (271, {"batch_size": 269, "train_size": 1.0}),  # remainder of 2
    ],
)
def test_last_minibatch_of_one_cell_trains(n_cells, kwargs):
    adata = simulate_counts(n_cells=n_cells, n_genes=20, seed=0)
    ZIPO.setup_anndata(adata)
    model = ZIPO(adata, **SMALL)
    model.train(**{**EPOCH, **kwargs})
    assert model.get_latent_representation().shape == (n_cells, 4)
    assert len(model.history["train_loss"]) == 1


def test_split_follows_scvi_rule():
    from zipo_scvi._training import training_split

    assert training_split(285, 0.9, 256) == (256, 29)  # the lone cell validates
    assert training_split(2561, 0.9, 256) == (2304, 257)  # ceil(2304.9) = 2305 = 9 * 256 + 1
    assert training_split(258, 1.0, 256) == (256, 0)  # no validation: 2 cells sit out
    assert training_split(1000, 0.9, 256) == (900, 100)  # untouched when nothing is short
    with pytest.raises(ValueError, match="at least 2"):
        training_split(1, 0.9, 256)


def test_one_cell_is_refused_with_a_reason(tmp_path, capsys):
    adata = simulate_counts(n_cells=1, n_genes=20, seed=0)
    ZIPO.setup_anndata(adata)
    with pytest.raises(ValueError, match="BatchNorm cannot train on one cell"):
        ZIPO(adata, **SMALL).train(**EPOCH)
    src = tmp_path / "one.h5ad"
    adata.write_h5ad(src)
    assert main(["denoise", str(src), "-o", str(tmp_path / "o.h5ad"), "--quiet"]) == 2
    assert "at least 2" in _one_error_line(capsys)


# ------------------------------------------------------------------ 7. invalid numbers refused
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_epochs": 0}, "max_epochs must be a positive integer, not 0"),
        ({"max_epochs": -1}, "max_epochs must be a positive integer, not -1"),
        ({"batch_size": 0}, "batch_size must be an integer of at least 2, not 0"),
        ({"batch_size": -3}, "batch_size must be an integer of at least 2, not -3"),
        ({"train_size": 0}, "train_size must be a number in (0, 1], not 0"),
        ({"train_size": 1.5}, "train_size must be a number in (0, 1], not 1.5"),
        ({"lr": -0.1}, "lr must be a positive number"),
        ({"plan_kwargs": {"foo": 1}}, "Unknown plan_kwargs ['foo']"),
        ({"plan_kwargs": {"lr_decay": 0}}, "lr_decay must be a number in (0, 1]"),
    ],
)
def test_train_refuses_invalid_numbers(adata, kwargs, message):
    ZIPO.setup_anndata(adata)
    model = ZIPO(adata, **TINY)
    with pytest.raises(ValueError) as info:
        model.train(**{**FAST, **kwargs})
    assert message in str(info.value)
    assert model.history_ is None  # refused before any training


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"encoder_sizes": []}, "encoder_sizes must be a non-empty list of positive integers"),
        ({"encoder_sizes": [0]}, "encoder_sizes must be a non-empty list of positive integers"),
        ({"encoder_sizes": [16, -4]}, "encoder_sizes must be a non-empty list"),
        ({"decoder_sizes": [0]}, "decoder_sizes must be a list of positive integers"),
        ({"alpha_z": -1}, "alpha_z must be a number >= 0, not -1"),
        ({"alpha_w": float("nan")}, "alpha_w must be a number >= 0"),
        ({"input_dropout": 1.0}, "input_dropout must be a number in [0, 1)"),
    ],
)
def test_model_refuses_invalid_hyperparameters(adata, kwargs, message):
    ZIPO.setup_anndata(adata)
    with pytest.raises(ValueError) as info:
        ZIPO(adata, **{**TINY, **kwargs})
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("flags", "toml", "message"),
    [
        (["--epochs", "0"], "", "max_epochs must be a positive integer, not 0"),
        (["--epochs", "-1"], "", "max_epochs must be a positive integer, not -1"),
        ([], "[train]\nbatch_size = 0\n", "batch_size must be an integer of at least 2, not 0"),
        ([], "[train]\nbatch_size = -3\n", "batch_size must be an integer of at least 2"),
        ([], "[train]\ntrain_size = 0\n", "train_size must be a number in (0, 1], not 0"),
        ([], "[train]\ntrain_size = 1.5\n", "train_size must be a number in (0, 1], not 1.5"),
        ([], "encoder_sizes = []\n", "encoder_sizes must be a non-empty list"),
        ([], "encoder_sizes = [0]\n", "encoder_sizes must be a non-empty list"),
        ([], "alpha_z = -1\n", "alpha_z must be a number >= 0, not -1"),
        ([], "[train]\nplan_kwargs = {foo = 1}\n", "Unknown plan_kwargs ['foo']"),
    ],
)
def test_cli_refuses_invalid_numbers_before_reading(tmp_path, capsys, flags, toml, message):
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    out = tmp_path / "o.h5ad"
    # the input does not need to be read: the settings are refused first
    args = ["denoise", "-o", str(out), "--config", str(config), *flags, "--quiet"]
    assert main(args) == 2
    assert message in _one_error_line(capsys)
    assert not out.exists()


# ------------------------------------------------------------------ 1 and 6. outputs, checked first
CONFIG = TINY_TOML.replace("max_epochs = 2", "max_epochs = 1")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder with the input, a config, and files zipo never wrote; the working directory."""
    simulate_counts(n_cells=90, n_genes=30, n_batches=2, seed=2).write_h5ad(tmp_path / "base.h5ad")
    (tmp_path / "zipo.toml").write_text(CONFIG)
    (tmp_path / "notes.txt").write_text("my notes")
    (tmp_path / "old_analysis").mkdir()
    (tmp_path / "old_analysis" / "a.csv").write_text("1,2\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if training starts: these cases must be refused before it."""

    def refuse(self, *args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(ZIPO, "train", refuse)


def _denoise(*extra: str) -> list[str]:
    return ["denoise", "base.h5ad", "--config", "zipo.toml", "--quiet", *extra]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-o", "o.h5ad", "--tsv-dir", ".", "--force"], "holds the input"),
        (["-o", "o.h5ad", "--save-model", ".", "--force"], "holds the input"),
        (["-o", "out/o.h5ad", "--tsv-dir", "old_analysis", "--report", "old_analysis"], "lies in"),
        (["-o", "o.h5ad", "--save-model", "results", "--tsv-dir", "results"], "lies in"),
        (["-o", "o.h5ad", "--save-model", "results", "--tsv-dir", "results/tsv"], "lies in"),
        (["-o", "old_analysis", "--force"], "must end in .h5ad"),
        (["-o", "dir.h5ad", "--force"], "is a folder"),
        (["-o", "notes.txt/o.h5ad"], "is a file, not a folder"),
        (["-o", "o.h5ad", "--tsv-dir", "notes.txt"], "is a file, not a folder"),
        (["-o", "o.h5ad", "--save-model", "notes.txt/m"], "is a file, not a folder"),
        (["-o", "base.h5ad", "--force"], "would overwrite the input"),
    ],
)
def test_overlapping_or_impossible_outputs_refused_before_training(
    workdir, capsys, no_training, extra, message
):
    (workdir / "dir.h5ad").mkdir()
    before = _tree(workdir)
    assert main(_denoise(*extra)) == 2
    assert message in _one_error_line(capsys)
    assert _tree(workdir) == before  # nothing deleted, nothing written
    assert sorted(p.name for p in workdir.iterdir()) == sorted(
        ["base.h5ad", "zipo.toml", "notes.txt", "old_analysis", "dir.h5ad"]
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_output_folder_refused_before_training(workdir, capsys, no_training):
    locked = workdir / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert main(_denoise("-o", "locked/o.h5ad")) == 2
        assert "cannot write in" in _one_error_line(capsys)
    finally:
        locked.chmod(0o755)


def test_unwritable_place_refused_before_training(workdir, capsys, no_training, monkeypatch):
    import tempfile as tempfile_module

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile_module, "TemporaryFile", denied)
    assert main(_denoise("-o", "sub/o.h5ad")) == 2
    line = _one_error_line(capsys)
    assert "cannot write in" in line and "Permission denied" in line


def test_force_replaces_only_zipo_files_in_folder_outputs(workdir, capsys):
    for folder in ("res", "model"):
        (workdir / folder).mkdir()
        (workdir / folder / "notes.txt").write_text("keep me")
    (workdir / "res" / "mean.tsv").write_text("old")
    (workdir / "res" / "dispersion.tsv").write_text("stale: written by an NB run")
    (workdir / "model" / "model.pt").write_text("old")
    args = _denoise("-o", "out/o.h5ad", "--tsv-dir", "res", "--save-model", "model")
    assert main(args) == 2  # res/mean.tsv exists
    assert "' exists; pass --force" in _one_error_line(capsys)
    assert main([*args, "--force"]) == 0
    for folder in ("res", "model"):
        assert (workdir / folder / "notes.txt").read_text() == "keep me"
    names = {p.name for p in (workdir / "res").iterdir()}
    assert {"mean.tsv", "latent.tsv", "notes.txt"} <= names
    assert "dispersion.tsv" not in names  # a Poisson run: the stale file of an NB run is gone
    assert (workdir / "res" / "mean.tsv").read_text() != "old"
    assert sorted(p.name for p in (workdir / "model").iterdir()) == [
        "adata.h5ad",
        "model.pt",
        "notes.txt",
    ]
    ZIPO.load("model")  # the model saved is whole
    assert (workdir / "notes.txt").read_text() == "my notes"
    assert (workdir / "old_analysis" / "a.csv").exists()
    leftovers = [p for p in workdir.rglob(".*") if p.name.endswith(".tmp")]
    assert leftovers == []


# ------------------------------------------------------------------ 9. the user's umask
def test_outputs_get_the_users_umask(workdir):
    old = os.umask(0o027)
    try:
        args = _denoise("-o", "out/o.h5ad", "--tsv-dir", "res", "--save-model", "model")
        assert main(args) == 0
    finally:
        os.umask(old)
    files = ["out/o.h5ad", "out/o.settings.toml", "res/mean.tsv", "model/model.pt"]
    for name in files:
        assert stat.S_IMODE((workdir / name).stat().st_mode) == 0o640, name
    for name in ("out", "res", "model"):
        assert stat.S_IMODE((workdir / name).stat().st_mode) == 0o750, name


# ------------------------------------------------------------------ 3. signals
ROOT = Path(__file__).resolve().parents[1]
LONG_CONFIG = CONFIG.replace("max_epochs = 1", "max_epochs = 100000\nearly_stopping = false")


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name)


@pytest.mark.parametrize(
    ("signum", "message"), [(2, "zipo: interrupted"), (15, "zipo: terminated")]
)
def test_signal_during_training_exits_128_plus_signal(tmp_path, signum, message):
    simulate_counts(n_cells=300, n_genes=30, seed=0).write_h5ad(tmp_path / "in.h5ad")
    (tmp_path / "long.toml").write_text(LONG_CONFIG)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "zipo_scvi", "denoise", "in.h5ad", "-o", "out/o.h5ad"]
    args += ["--config", "long.toml", "--tsv-dir", "tsv", "--save-model", "model"]
    proc = subprocess.Popen(
        args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    chunks: list[bytes] = []
    fd = proc.stderr.fileno()
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(fd, 4096), b"")))
    reader.start()
    deadline = time.monotonic() + 300  # start-up imports are slow on a busy machine
    while b"zipo: ZIPO (" not in b"".join(chunks):  # the model is built; training starts
        assert proc.poll() is None, b"".join(chunks).decode()
        assert time.monotonic() < deadline, b"".join(chunks).decode()
        time.sleep(0.2)
    time.sleep(2.0)  # into training (a signal before it ends the run the same way)
    proc.send_signal(signum)
    code = proc.wait(timeout=120)
    reader.join(timeout=10)
    err = b"".join(chunks).decode(errors="replace")
    assert code == 128 + signum, err
    assert err.rstrip().splitlines()[-1].startswith(message)
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5ad", "long.toml"]


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize("backed", [False, True])
def test_signal_while_writing_leaves_no_temp_file(
    workdir, capsys, monkeypatch, signum, code, backed
):
    import anndata

    import zipo_scvi._model as model_module

    def killed(*args, **kwargs):
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler raises long before this ends
        raise AssertionError("the signal was not handled")

    if backed:
        monkeypatch.setattr(model_module, "compute_outputs", killed)
    else:
        write = anndata.AnnData.write_h5ad

        def half_then_killed(self, path, *args, **kwargs):
            write(self, path, *args, **kwargs)  # a complete temporary file exists now
            killed()

        monkeypatch.setattr(anndata.AnnData, "write_h5ad", half_then_killed)
    extra = ["--backed"] if backed else []
    # what the process had before (default_int_handler; SIG_IGN when started in the background)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert main(_denoise("-o", "out/o.h5ad", *extra)) == code
    assert capsys.readouterr().err.rstrip().splitlines()[-1].startswith("zipo: ")
    assert _leftovers(workdir) == []
    assert not (workdir / "out" / "o.h5ad").exists()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_swallowed_signal_still_ends_with_its_exit_code(workdir, capsys, monkeypatch):
    """A signal whose exception some library swallows (it printed a traceback, then exit 0)."""
    import anndata

    write = anndata.AnnData.write_h5ad

    def swallowing(self, path, *args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        except BaseException:  # what the library did
            pass
        write(self, path, *args, **kwargs)

    monkeypatch.setattr(anndata.AnnData, "write_h5ad", swallowing)
    assert main(_denoise("-o", "o.h5ad")) == 130
    assert capsys.readouterr().err.rstrip().splitlines()[-1] == "zipo: interrupted"
    assert _leftovers(workdir) == []


# ------------------------------------------------------------------ 8. messages that say it
def test_getter_messages_gene_list_string_and_empty_indices(adata):
    ZIPO.setup_anndata(adata)
    model = ZIPO(adata, **TINY)
    gene = adata.var_names[3]
    one = model.get_normalized_expression(gene_list=gene)  # one gene, not its letters
    assert list(one.columns) == [gene]
    with pytest.raises(ValueError, match="indices is empty"):
        model.get_latent_representation(indices=[])


def test_misspelt_table_suggests_the_table(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text("[trian]\nmax_epochs = 2\n")
    assert main(["denoise", "-o", str(tmp_path / "o.h5ad"), "--config", str(config)]) == 2
    assert "unknown table [trian] (did you mean [train]?)" in _one_error_line(capsys)


def test_first_line_keeps_quotes_inside_the_message():
    from zipo_scvi.cli import _first_line

    assert _first_line(ValueError("'a' is not 'b'")) == "'a' is not 'b'"
    assert _first_line(KeyError("no key 'x'")) == "no key 'x'"


def test_covariate_messages_name_the_column(adata):
    adata.obs["batch"] = adata.obs["batch"].astype(object)
    adata.obs.iloc[:3, adata.obs.columns.get_loc("batch")] = np.nan
    with pytest.raises(ValueError, match=r"adata.obs\['batch'\] has no value \(NaN\) for 3 of"):
        ZIPO.setup_anndata(adata, batch_key="batch")
    adata.obs["note"] = "x"
    with pytest.raises(ValueError, match="Continuous covariate 'note' holds non-numeric"):
        ZIPO.setup_anndata(adata, continuous_covariate_keys=["note"])


# ------------------------------------------------------------------ 4. getters check like load
def test_getters_refuse_other_gene_order_and_bad_counts(adata):
    ZIPO.setup_anndata(adata)
    model = ZIPO(adata, **TINY)
    with pytest.raises(ValueError, match="another order"):
        model.get_normalized_expression(adata=adata[:, ::-1].copy())
    with pytest.raises(ValueError, match="do not match the model's genes"):
        model.get_latent_representation(adata=adata[:, 1:].copy())
    for value, message in ((np.nan, "NaN"), (-1.0, "negative"), (0.5, "non-integer")):
        bad = adata.copy()
        bad.X = np.asarray(bad.X.todense() if hasattr(bad.X, "todense") else bad.X, float)
        bad.X[0, 0] = value
        with pytest.raises(ValueError, match=message):
            model.get_normalized_expression(adata=bad)
    same = model.get_latent_representation(adata=adata.copy())  # the right data still works
    np.testing.assert_allclose(same, model.get_latent_representation(), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ 5, 8, 9. CSV tables
def _table(n_cells: int = 30, n_genes: int = 20, seed: int = 0):
    import pandas as pd

    rng = np.random.default_rng(seed)
    counts = rng.poisson(3.0, size=(n_cells, n_genes))
    return pd.DataFrame(
        counts,
        index=[f"cell{i}" for i in range(n_cells)],
        columns=[f"gene{j}" for j in range(n_genes)],
    )


def test_csv_without_row_names_keeps_every_gene(tmp_path):
    from zipo_scvi.data import read_counts

    table = _table()
    path = tmp_path / "no_index.csv"
    table.to_csv(path, index=False)
    with pytest.warns(UserWarning, match="no column of row names"):
        adata = read_counts(path, transpose=False)
    assert adata.shape == (30, 20) and list(adata.var_names) == list(table.columns)
    np.testing.assert_array_equal(adata.X.toarray(), table.to_numpy())
    numbered = tmp_path / "numbered.csv"  # row names that are numbers 1..n stay row names
    table.set_axis(range(1, 31)).rename_axis("id").to_csv(numbered)
    assert read_counts(numbered, transpose=False).shape == (30, 20)


def test_short_csv_row_is_named(tmp_path):
    from zipo_scvi.data import InputError, read_counts

    path = tmp_path / "short.csv"
    text = _table(5, 4).to_csv().splitlines()
    text[3] = ",".join(text[3].split(",")[:-1])  # the third cell lost its last field
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(InputError, match="row 3 \\(named 'cell2'\\) has empty, missing"):
        read_counts(path, transpose=False)


def test_csv_counts_above_2_to_the_24_stay_exact(tmp_path):
    from zipo_scvi.data import read_counts

    table = _table(4, 3)
    table.iloc[0, 0] = 2**24 + 1
    path = tmp_path / "big.csv"
    table.to_csv(path)
    adata = read_counts(path, transpose=False)
    assert int(adata.X[0, 0]) == 2**24 + 1  # float32 would round it to 2**24


def test_counts_only_in_raw_get_a_hint(adata):
    import anndata

    normalised = adata.copy()
    normalised.raw = adata.copy()
    normalised.X = np.log1p(
        np.asarray(adata.X.todense() if hasattr(adata.X, "todense") else adata.X, float)
    )
    with pytest.raises(ValueError, match=r"non-integer .* adata\.raw seems to hold them"):
        ZIPO.setup_anndata(normalised)
    plain = anndata.AnnData(np.asarray(normalised.X))  # no raw: no hint
    with pytest.raises(ValueError, match="non-integer") as err:
        ZIPO.setup_anndata(plain)
    assert "adata.raw" not in str(err.value)


def test_float_batch_column_with_many_values_warns(adata):
    adata.obs["depth"] = np.linspace(0.0, 1.0, adata.n_obs)
    with pytest.warns(UserWarning, match=r"holds \d+ distinct numbers.*continuous_covariate"):
        ZIPO.setup_anndata(adata, batch_key="depth")


def test_all_zero_matrix_is_refused(adata):
    empty = adata.copy()
    empty.X = empty.X * 0
    with pytest.raises(ValueError, match="holds no counts"):
        ZIPO.setup_anndata(empty)


# ------------------------------------------------------------------ 9. what the outputs hold
def test_in_memory_output_has_no_scvi_registration(workdir):
    import anndata

    assert main(_denoise("-o", "o.h5ad", "--batch-key", "batch")) == 0
    out = anndata.read_h5ad(workdir / "o.h5ad")
    assert not [k for k in out.obs.columns if k.startswith("_scvi")]
    assert not [k for k in out.uns if k.startswith("_scvi")]
    assert "zipo_denoised" in out.layers and "zipo" in out.uns


def test_csc_and_csr_counts_train_to_the_same_model():
    import scipy.sparse as sp

    latents = []
    for convert in (sp.csr_matrix, sp.csc_matrix):
        adata = simulate_counts(n_cells=80, n_genes=20, seed=0)
        adata.X = convert(adata.X)
        ZIPO.setup_anndata(adata)
        assert sp.isspmatrix_csr(adata.X)
        model = ZIPO(adata, **TINY, seed=0)
        model.train(max_epochs=2, enable_progress_bar=False, seed=0)
        latents.append(model.get_latent_representation())
    np.testing.assert_array_equal(latents[0], latents[1])
