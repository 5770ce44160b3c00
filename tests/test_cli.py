"""The `zipo` command: denoise on every input format with a config file, tune, prune, info,
settings files, outputs, and the one-line exit-code-2 messages of bad input."""

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import torch

from tests._formats import dense, write_input
from zipo_scvi import _sparsity as sparsity_module
from zipo_scvi._config import (
    ConfigError,
    check_value,
    dump_toml,
    load_config,
    merge,
    parameter_types,
    resolve,
    zipo_arguments,
)
from zipo_scvi._defaults import PAPER_MODULE, PAPER_TRAIN, preset
from zipo_scvi.cli import build_parser, main, settings_path
from zipo_scvi.data import simulate_counts

TINY_TOML = """
threads = 1
encoder_sizes = [16, 4]
library_sizes = [8, 4]

[train]
max_epochs = 2
batch_size = 64
"""


@pytest.fixture(autouse=True)
def _restore_threads():
    """`threads = 1` (fast on a busy CPU) must not leak into other test files."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "zipo.toml"
    path.write_text(TINY_TOML)
    return path


@pytest.fixture
def counts():
    return simulate_counts(n_cells=90, n_genes=30, n_groups=3, n_batches=2, seed=2)


def _digest(path):
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return hashlib.sha256(b"".join(f.read_bytes() for f in files if f.is_file())).hexdigest()


def _check_outputs(result, source, encoder=(16, 4), epochs=2):
    n, g = source.shape
    denoised = result.layers["zipo_denoised"]
    assert denoised.shape == (n, g) and np.isfinite(denoised).all() and (denoised > 0).all()
    assert "zipo_zero_prob" not in result.layers  # the default Poisson has no zero inflation
    assert denoised.dtype == np.float32 and result.obsm["X_zipo"].dtype == np.float32
    assert result.obsm["X_zipo"].shape == (n, encoder[-1])
    assert np.isfinite(result.obsm["X_zipo"]).all()
    assert (result.obs["zipo_predicted_library"] > 0).all()
    totals = dense(source).sum(axis=1)  # the denoised layer's library is the observed total
    np.testing.assert_allclose(result.obs["zipo_observed_library"], totals, rtol=1e-5)
    np.testing.assert_allclose(denoised.sum(axis=1), totals, rtol=1e-3)
    np.testing.assert_array_equal(dense(result), dense(source))  # counts kept as they were
    info = result.uns["zipo"]
    assert list(info["settings"]["model"]["encoder_sizes"]) == list(encoder)
    assert info["settings"]["train"]["max_epochs"] == epochs
    assert info["epochs_trained"] == epochs
    for key in ("nll_train", "nll_validation", "mse_train", "mse_validation"):
        assert len(info["history"][key]) == epochs
    assert info["command"].startswith("zipo denoise") and info["version"]


@pytest.mark.parametrize("kind", ["h5ad", "mtx", "csv", "h5", "tsv_transposed"])
def test_denoise_every_input_format_with_config(tmp_path, counts, config, kind):
    src, flags = write_input(counts, kind, tmp_path)
    before = _digest(src)
    out = tmp_path / "res" / "out.h5ad"
    rc = main(["denoise", str(src), "-o", str(out), "--config", str(config), "--quiet", *flags])
    assert rc == 0
    _check_outputs(anndata.read_h5ad(out), counts)
    assert _digest(src) == before  # the input is never touched
    saved = load_config(settings_path(out))
    assert saved["model"]["encoder_sizes"] == [16, 4]
    assert saved["run"].get("transpose", False) == bool(flags)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp files


def test_covariates_flags_and_settings_file_repeat_the_run(tmp_path, counts, config):
    src, _ = write_input(counts, "h5ad", tmp_path)
    first = tmp_path / "first.h5ad"
    args = ["--batch-key", "batch", "--categorical-covariates", "donor"]
    args += ["--continuous-covariates", "pct_mito", "--seed", "3", "--quiet"]
    assert main(["denoise", str(src), "-o", str(first), "--config", str(config), *args]) == 0
    a = anndata.read_h5ad(first)
    setup = a.uns["zipo"]["settings"]["setup"]
    assert setup["batch_key"] == "batch" and list(setup["categorical_covariate_keys"]) == ["donor"]
    assert a.uns["zipo"]["settings"]["train"]["seed"] == 3
    # the written settings alone (no flags) repeat the run exactly
    second = tmp_path / "second.h5ad"
    again = ["denoise", str(src), "-o", str(second), "--config", str(settings_path(first))]
    assert main([*again, "--quiet"]) == 0
    b = anndata.read_h5ad(second)
    np.testing.assert_allclose(b.layers["zipo_denoised"], a.layers["zipo_denoised"], rtol=1e-5)
    np.testing.assert_allclose(b.obsm["X_zipo"], a.obsm["X_zipo"], rtol=1e-4, atol=1e-6)
    assert load_config(settings_path(second)) == load_config(settings_path(first))


def test_flags_override_file_zinb_tsv_dir_and_poisson(tmp_path, counts, config):
    src, _ = write_input(counts, "h5ad", tmp_path)
    config.write_text(TINY_TOML.replace("[train]", 'likelihood = "zinb"\n\n[train]'))
    out, tsv = tmp_path / "zinb.h5ad", tmp_path / "tsv"
    cmd = ["denoise", str(src), "-o", str(out), "--config", str(config), "--quiet"]
    assert main([*cmd, "--epochs", "1", "--tsv-dir", str(tsv)]) == 0
    result = anndata.read_h5ad(out)
    assert result.uns["zipo"]["epochs_trained"] == 1  # the flag beat the file's 2
    assert result.uns["zipo"]["settings"]["model"]["likelihood"] == "zinb"
    assert (result.layers["zipo_dispersion"] > 0).all()
    names = sorted(p.name for p in tsv.iterdir())
    assert names == ["dispersion.tsv", "dropout.tsv", "latent.tsv", "mean.tsv"]
    mean = pd.read_csv(tsv / "mean.tsv", sep="\t", index_col=0)
    assert mean.shape == (counts.n_vars, counts.n_obs)  # genes x cells, like DCA
    np.testing.assert_allclose(mean.to_numpy().T, result.layers["zipo_denoised"], rtol=1e-4)

    out2, tsv2 = tmp_path / "poisson.h5ad", tmp_path / "tsv2"
    assert main(["denoise", str(src), "-o", str(out2), "--config", str(config), "--quiet",
                 "--likelihood", "poisson", "--tsv-dir", str(tsv2)]) == 0  # fmt: skip
    plain = anndata.read_h5ad(out2)
    assert plain.uns["zipo"]["settings"]["model"]["likelihood"] == "poisson"
    # only what the likelihood has: no zero inflation, no dispersion
    assert "zipo_zero_prob" not in plain.layers and "zipo_dispersion" not in plain.layers
    assert sorted(p.name for p in tsv2.iterdir()) == ["latent.tsv", "mean.tsv"]


def test_progress_messages_quiet_and_force(tmp_path, counts, config, capsys):
    src, _ = write_input(counts, "h5ad", tmp_path)
    out = tmp_path / "out.h5ad"
    cmd = ["denoise", str(src), "-o", str(out), "--config", str(config)]
    assert main(cmd) == 0
    captured = capsys.readouterr()
    assert "zipo: read 90 cells x 30 genes" in captured.err and "wrote" in captured.err
    shown = captured.out + captured.err
    assert (
        "early stopping on held-out molecules of every cell; at most 2 epochs" in shown
    )  # the progress bar
    assert "ZIPO trained 2 epochs" in shown and "Best held-out loss" in shown  # the summary
    first = anndata.read_h5ad(out).layers["zipo_denoised"]
    assert main([*cmd, "--quiet", "--seed", "5"]) == 2  # the output exists
    assert main([*cmd, "--quiet", "--seed", "5", "--force"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("zipo: error:") == 1 and captured.out == ""  # --quiet: nothing
    assert captured.err.strip().count("\n") == 0
    second = anndata.read_h5ad(out)
    assert second.uns["zipo"]["settings"]["train"]["seed"] == 5
    assert not np.allclose(second.layers["zipo_denoised"], first)  # really rewritten


def test_save_model_report_info_and_prune(tmp_path, counts, config, capsys, monkeypatch):
    src, _ = write_input(counts, "h5ad", tmp_path)
    model_dir, report = tmp_path / "model", tmp_path / "report"
    cmd = ["denoise", str(src), "-o", str(tmp_path / "o.h5ad"), "--config", str(config)]
    cmd += ["--batch-key", "batch", "--save-model", str(model_dir), "--report", str(report)]
    assert main([*cmd, "--quiet"]) == 0
    pngs = sorted(p.name for p in report.iterdir())
    # the default Poisson likelihood has no zero inflation: no zero-inflation plot
    assert pngs == ["denoised_vs_raw.png", "history.png", "latent_umap.png"]
    assert all((report / p).stat().st_size > 1000 for p in pngs)
    capsys.readouterr()
    assert main(["info", str(model_dir)]) == 0
    text = capsys.readouterr().out
    assert "genes: 30, latents: 4" in text and "setup: batch_key=batch" in text
    assert "trained: 2 epochs" in text and "saved data: 90 cells x 30 genes" in text

    assert main(["prune", str(model_dir), "--delta", "0.05"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("pruned ") and "at delta 0.05" in line
    pruned = tmp_path / "model_pruned"
    assert main(["info", str(pruned)]) == 0
    share = float(capsys.readouterr().out.split("first layer: ")[1].split("%")[0])
    assert share > 0
    # refusing to overwrite: the pruned folder exists now, and the input model is protected
    assert main(["prune", str(model_dir), "--delta", "0.05"]) == 2
    assert main(["prune", str(model_dir), "-o", str(model_dir)]) == 2
    assert main(["prune", str(model_dir), "--delta", "2"]) == 2
    assert main(["prune", str(model_dir), "--sparsity", "1"]) == 2
    assert main(["prune", str(model_dir), "--sparsity", "0.5", "--delta", "0.1"]) == 2
    assert main(["prune", str(model_dir), "--signed", "--delta", "0.1"]) == 2
    assert main(["prune", str(model_dir), "--modules", "4", "--delta", "0.1"]) == 2
    assert main(["prune", str(model_dir), "--modules", "-1"]) == 2
    capsys.readouterr()
    gradual = tmp_path / "gradual"
    short = {**sparsity_module.PRUNE_SCHEDULE, "min_steps": 4, "min_epochs": 2, "patience": 2}
    monkeypatch.setattr(sparsity_module, "PRUNE_SCHEDULE", short)  # a short schedule
    assert main(["prune", str(model_dir), "--sparsity", "0.5", "-o", str(gradual)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("pruned ") and "of first-layer weights" in line and "gradual" in line
    assert float(line.split()[1].rstrip("%")) >= 50  # the kept weights held >= 0 may add zeros
    assert main(["info", str(gradual)]) == 0
    share = float(capsys.readouterr().out.split("first layer: ")[1].split("%")[0])
    assert share >= 50


def test_tune_writes_best_settings_that_denoise_reads(tmp_path, counts, config, capsys):
    src, _ = write_input(counts, "h5ad", tmp_path)
    config.write_text(
        TINY_TOML
        + '\n[search]\nencoder_sizes = ["categorical", [[16, 4], [8, 2]]]\n'
        + 'alpha_z = ["loguniform", 0.01, 1.0]\n'
    )
    best, db = tmp_path / "best.toml", tmp_path / "study.db"
    cmd = ["tune", str(src), "--n-trials", "2", "--config", str(config), "-o", str(best)]
    assert build_parser().parse_args(cmd).objective == "mcv"  # the recommended objective
    assert main([*cmd, "--storage", str(db), "--quiet", "--objective", "validation_nll"]) == 0
    assert db.exists()
    chosen = load_config(best)
    assert chosen["model"]["encoder_sizes"] in ([16, 4], [8, 2])
    assert 0.01 <= chosen["model"]["alpha_z"] <= 1.0
    # the search's 2 epochs and whole-cell validation are not the final run's training
    assert chosen["train"]["max_epochs"] == preset("default")[1]["max_epochs"]
    assert chosen["train"]["validation"] == preset("default")[1]["validation"]
    assert chosen["train"]["batch_size"] == 64  # a fixed setting that is not the search budget
    assert "not carried over" in best.read_text()
    out = tmp_path / "tuned.h5ad"
    cmd2 = ["denoise", str(src), "-o", str(out), "--config", str(best), "--epochs", "2"]
    assert main([*cmd2, "--quiet"]) == 0
    result = anndata.read_h5ad(out)
    assert result.obsm["X_zipo"].shape[1] == chosen["model"]["encoder_sizes"][-1]
    bad = TINY_TOML + '\n[search]\nalpha_z = ["loguniform", 1.0, 0.1]\n'
    config.write_text(bad)
    assert main([*cmd, "--force", "--quiet"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_backed_matches_in_memory_and_switches_on_for_big_inputs(
    tmp_path, counts, config, capsys, monkeypatch
):
    src, _ = write_input(counts, "h5ad", tmp_path)
    memory, backed = tmp_path / "memory.h5ad", tmp_path / "backed.h5ad"
    cmd = ["denoise", str(src), "--config", str(config), "--batch-key", "batch", "--quiet"]
    assert main([*cmd, "-o", str(memory)]) == 0
    assert main([*cmd, "-o", str(backed), "--backed", "--save-model", str(tmp_path / "m")]) == 0
    a, b = anndata.read_h5ad(memory), anndata.read_h5ad(backed)
    _check_outputs(b, counts)
    assert b.uns["zipo"]["settings"]["run"]["backed"] is True
    # same settings and seed; the disk-backed loader draws its minibatches differently, so the
    # two models agree closely but not to the last digit
    log_a, log_b = np.log1p(a.layers["zipo_denoised"]), np.log1p(b.layers["zipo_denoised"])
    log_a, log_b = log_a - log_a.mean(0), log_b - log_b.mean(0)  # cell-to-cell differences
    assert np.corrcoef(log_a.ravel(), log_b.ravel())[0, 1] > 0.99
    assert (tmp_path / "m" / "model.pt").exists()
    # an input too big for memory is read backed without being asked
    import zipo_scvi.data._backed

    monkeypatch.setattr(zipo_scvi.data._backed, "should_read_backed", lambda *a, **k: True)
    auto = tmp_path / "auto.h5ad"
    assert main([*cmd[:-1], "-o", str(auto)]) == 0
    assert "reading them backed" in capsys.readouterr().err
    assert anndata.read_h5ad(auto).uns["zipo"]["input"].endswith("(backed)")


def test_log_normalized_layer_in_memory_backed_and_from_a_saved_model(tmp_path, counts, config):
    src, _ = write_input(counts, "h5ad", tmp_path)
    first, model_dir = tmp_path / "first.h5ad", tmp_path / "m"
    cmd = ["denoise", str(src), "--config", str(config), "--quiet"]
    assert main([*cmd, "-o", str(first), "--log-normalized", "--save-model", str(model_dir)]) == 0
    a = anndata.read_h5ad(first)
    assert a.uns["zipo"]["settings"]["run"]["log_normalized"] is True
    logged = a.layers["zipo_log_normalized"]
    assert logged.shape == counts.shape and np.isfinite(logged).all() and (logged >= 0).all()
    # at each cell's own depth, below log1p of the denoised counts per 10,000
    per_10k = a.layers["zipo_denoised"] / a.obs["zipo_observed_library"].to_numpy()[:, None]
    assert (logged <= np.log1p(1e4 * per_10k) + 1e-4).all()
    # the saved model gives the same layer, in memory or streamed to disk
    for extra in ([], ["--backed"]):
        out = tmp_path / f"again{len(extra)}.h5ad"
        again = ["denoise", str(src), "--model", str(model_dir), "-o", str(out), "--quiet"]
        assert main([*again, "--log-normalized", *extra]) == 0
        b = anndata.read_h5ad(out)
        np.testing.assert_allclose(b.layers["zipo_log_normalized"], logged, rtol=1e-4, atol=1e-5)
    plain = tmp_path / "plain.h5ad"  # not written unless asked for
    assert main(["denoise", str(src), "--model", str(model_dir), "-o", str(plain), "--quiet"]) == 0
    assert "zipo_log_normalized" not in anndata.read_h5ad(plain).layers


def _bad_case(tmp_path, case, counts, config):
    src, _ = write_input(counts, "h5ad", tmp_path)
    out = tmp_path / "out.h5ad"
    base = ["denoise", str(src), "-o", str(out), "--config", str(config)]
    if case == "missing_input":
        return ["denoise", str(tmp_path / "nope.csv"), "-o", str(out)], "does not exist"
    if case == "missing_config":
        return [*base[:4], "--config", str(tmp_path / "no.toml")], "config file"
    if case == "unknown_key":
        config.write_text(TINY_TOML + "\nalpha_zz = 0.1\n")
        return base, "unknown key 'alpha_zz'"
    if case == "wrong_type":
        config.write_text(TINY_TOML.replace("[16, 4]", '"16-4"'))
        return base, "'encoder_sizes' must be a list of integers"
    if case == "wrong_type_in_table":
        config.write_text(TINY_TOML.replace("max_epochs = 2", "max_epochs = 2.5"))
        return base, "'max_epochs' must be an integer"
    if case == "misplaced_key":
        config.write_text("[model]\nmax_epochs = 2\n")
        return base, "'max_epochs' belongs in [train]"
    if case == "not_toml":
        config.write_text("encoder_sizes = [16, 4\n")
        return base, "is not valid TOML"
    if case == "bad_value":
        config.write_text(TINY_TOML.replace("[train]", 'likelihood = "zop"\n[train]'))
        return base, "zop"
    if case == "missing_obs_key":
        return [*base, "--batch-key", "sample"], "'sample'"
    if case == "output_exists":
        out.write_text("keep")
        return base, "exists; pass --force"
    if case == "settings_exist":
        settings_path(out).write_text("keep")
        return base, "exists; pass --force"
    if case == "output_is_input":
        return ["denoise", str(src), "-o", str(src), "--force"], "would overwrite the input"
    if case == "output_not_h5ad":
        return ["denoise", str(src), "-o", str(tmp_path / "out.csv")], "must end in .h5ad"
    if case == "text_as_h5ad":
        fake = tmp_path / "fake.h5ad"
        fake.write_text("gene,cell\n")
        return ["denoise", str(fake), "-o", str(out)], "not an HDF5 file"
    if case == "binary_as_csv":
        fake = tmp_path / "fake.csv"
        fake.write_bytes(src.read_bytes())
        return ["denoise", str(fake), "-o", str(out)], "binary file"
    if case == "words_in_csv":
        fake = tmp_path / "fake.csv"
        fake.write_text(",g1,g2\nc1,1,x\nc2,2,3\n")
        return ["denoise", str(fake), "-o", str(out)], "non-numeric"
    if case == "not_counts":
        counts.X = counts.X * 0.5
        counts.write_h5ad(src)
        return base, "non-integer"
    if case == "transpose_h5ad":
        return [*base, "--transpose"], "--transpose applies to CSV/TSV"
    if case == "backed_csv":
        table = write_input(counts, "csv", tmp_path)[0]
        return ["denoise", str(table), "-o", str(out), "--backed"], "--backed needs an .h5ad"
    if case == "backed_tsv_dir":
        return [*base, "--backed", "--tsv-dir", str(tmp_path / "t")], "drop --backed"
    if case == "no_model":
        return ["info", str(tmp_path)], "not a saved ZIPO model"
    raise ValueError(case)


BAD_CASES = [
    "missing_input",
    "missing_config",
    "unknown_key",
    "wrong_type",
    "wrong_type_in_table",
    "misplaced_key",
    "not_toml",
    "bad_value",
    "missing_obs_key",
    "output_exists",
    "settings_exist",
    "output_is_input",
    "output_not_h5ad",
    "text_as_h5ad",
    "binary_as_csv",
    "words_in_csv",
    "not_counts",
    "transpose_h5ad",
    "backed_csv",
    "backed_tsv_dir",
    "no_model",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_exits_2_with_one_line_naming_it(tmp_path, capsys, counts, config, case):
    args, message = _bad_case(tmp_path, case, counts, config)
    src = next(tmp_path.glob("in.h5ad"))
    before = _digest(src)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("zipo: error:")]
    assert len(errors) == 1 and err[-1] == errors[0], err  # one line, last, no traceback
    assert all(line.startswith("zipo: ") for line in err)
    assert message in errors[0]
    assert _digest(src) == before
    out = tmp_path / "out.h5ad"
    assert case in ("output_exists", "settings_exist") or not out.exists()
    if case == "output_exists":
        assert out.read_text() == "keep"


def test_failure_exits_1_and_leaves_no_output(tmp_path, counts, config, capsys, monkeypatch):
    from zipo_scvi import ZIPO

    def boom(self, *args, **kwargs):
        raise RuntimeError("loss became NaN\nsecond line")

    monkeypatch.setattr(ZIPO, "train", boom)
    src, _ = write_input(counts, "h5ad", tmp_path)
    out = tmp_path / "out.h5ad"
    assert main(["denoise", str(src), "-o", str(out), "--config", str(config)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "zipo: failed: RuntimeError: loss became NaN (set ZIPO_DEBUG=1 for the traceback)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5ad", "zipo.toml"]


def test_usage_errors_exit_2():
    for argv in (["denoise", "--epochs", "two"], ["denoise", "--likelihood", "gauss"], []):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2


# ------------------------------------------------------------------ the settings module
def test_config_keys_come_from_defaults_and_train_signature():
    types = parameter_types()
    assert set(PAPER_MODULE) | {"preset"} == set(types["model"])
    assert {"max_epochs", "lr", "batch_size", "validation", "seed"} <= set(types["train"])
    assert set(PAPER_TRAIN) <= set(types["train"])
    assert set(types["setup"]) == {
        "layer",
        "batch_key",
        "categorical_covariate_keys",
        "continuous_covariate_keys",
    }


def test_config_round_trip_and_precedence(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('alpha_z = 1\n[train]\nmax_epochs = 5\nlr_decay = 0.8\n[setup]\nlayer = "c"\n')
    given = load_config(path)
    assert given["model"]["alpha_z"] == 1.0 and isinstance(given["model"]["alpha_z"], float)
    settings = resolve(given, {"train": {"max_epochs": 7, "seed": None}})
    assert settings["train"]["max_epochs"] == 7  # flag beats file
    assert settings["train"]["lr_decay"] == 0.8  # file beats preset
    assert settings["model"]["encoder_sizes"] == list(preset("default")[0]["encoder_sizes"])
    assert settings["train"]["seed"] == 0
    path.write_text(dump_toml(settings, ["a comment"]))
    assert resolve(load_config(path)) == settings
    model_kwargs, train_kwargs = zipo_arguments(settings)
    assert train_kwargs["lr_decay"] == 0.8 and "lr_decay" not in model_kwargs
    assert model_kwargs["encoder_sizes"] == tuple(preset("default")[0]["encoder_sizes"])
    paper = resolve(None, {"model": {"preset": "paper"}})
    assert paper["model"]["encoder_sizes"] == [2048, 1024, 512, 256, 128]
    assert paper["train"]["lr"] == PAPER_TRAIN["lr"]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("alpha_z", "0.1", "'alpha_z' must be a number, not string"),
        ("batch_norm", 1, "'batch_norm' must be true or false"),
        ("validation", "genes", 'must be one of "cells", "molecules"'),
        ("encoder_sizes", [16, 4.5], "must be a list of integers"),
        ("categorical_covariate_keys", "donor", "must be a list of strings"),
        ("alpah_w", 0.1, "unknown key 'alpah_w' (did you mean 'alpha_w'?)"),
    ],
)
def test_check_value_names_key_and_expected_type(key, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_value(key, value, "x.toml")


def test_merge_keeps_only_given_values():
    assert merge({"model": {"alpha_w": 0.2}}, {"model": {"alpha_w": None}})["model"] == {
        "alpha_w": 0.2
    }


# ------------------------------------------------------------------ the original minimal tests
def test_denoise_writes_every_output(tmp_path):
    src = tmp_path / "in.h5ad"
    simulate_counts(n_cells=120, n_genes=40, seed=1).write_h5ad(src)
    out = tmp_path / "out.h5ad"
    assert main(["denoise", str(src), "-o", str(out), "--epochs", "2", "--quiet"]) == 0
    result = anndata.read_h5ad(out)
    assert result.layers["zipo_denoised"].shape == (120, 40)
    assert "zipo_zero_prob" not in result.layers and "X_zipo" in result.obsm
    assert "zipo_predicted_library" in result.obs and "zipo_observed_library" in result.obs
    assert "history" in result.uns["zipo"]
    assert result.uns["zipo"]["settings"]["model"]["preset"] == "default"


def test_embedded_default_via_python_m(tmp_path):
    out = tmp_path / "default.h5ad"
    proc = subprocess.run(
        [sys.executable, "-m", "zipo_scvi", "denoise", "-o", str(out), "--epochs", "1", "--quiet"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # one thread: fast on a shared CPU
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""  # --quiet: not even Lightning's messages
    assert anndata.read_h5ad(out).obsm["X_zipo"].shape[0] == 2000
    assert settings_path(out).exists()


@pytest.mark.parametrize("case", ["missing", "exists", "not_h5ad", "garbage"])
def test_user_errors_exit_2_with_one_line(tmp_path, capsys, case):
    out = tmp_path / "out.h5ad"
    src = tmp_path / "in.h5ad"
    if case == "missing":
        args = ["denoise", str(tmp_path / "nope.h5ad"), "-o", str(out)]
    elif case == "exists":
        out.write_text("x")
        simulate_counts(n_cells=20, n_genes=10).write_h5ad(src)
        args = ["denoise", str(src), "-o", str(out)]
    elif case == "not_h5ad":
        (tmp_path / "in.txt").write_text("x")
        args = ["denoise", str(tmp_path / "in.txt"), "-o", str(out)]
    else:
        src.write_text("this is not hdf5")
        args = ["denoise", str(src), "-o", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("zipo: error:")
    if case == "exists":
        assert out.read_text() == "x"


def test_docs_cli_page_examples_are_valid(tmp_path):
    text = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    section = text.split("<!-- BEGIN:cli -->")[1].split("<!-- END:cli -->")[0]
    tomls = re.findall(r"```toml\n(.*?)```", section, re.S)
    assert tomls
    for i, block in enumerate(tomls):
        (tmp_path / f"{i}.toml").write_text(block)
        assert load_config(tmp_path / f"{i}.toml")["model"]  # every key known, every type right
    commands = [
        line.split("#")[0].split()
        for block in re.findall(r"```bash\n(.*?)```", section, re.S)
        for line in block.splitlines()
        if line.startswith("zipo ")
    ]
    assert {c[1] for c in commands} == {"denoise", "info", "prune", "tune"}
    for command in commands:
        build_parser().parse_args(command[1:])  # argparse exits (code 2) on an unknown flag
