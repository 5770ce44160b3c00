"""What a newcomer meets first: a fast `zipo --help`, `--version`, outputs that hold only what
the likelihood has, scvi-tools' getter arguments, the scanpy-style one-liner."""

import subprocess
import sys

import pytest

import zipo_scvi
from zipo_scvi.cli import main


def test_help_and_version_do_not_import_torch():
    code = (
        "import sys, contextlib, io\n"
        "from zipo_scvi.cli import build_parser\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    build_parser().parse_args(['--help'])\n"
        "print(sorted(m for m in ('torch', 'scvi', 'lightning', 'anndata') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"zipo {zipo_scvi.__version__}"


def test_genes_by_cells_table_is_refused_with_the_fix(tmp_path, capsys):
    from tests._formats import write_table
    from zipo_scvi.data import InputError, read_counts, simulate_counts
    from zipo_scvi.data._io import looks_genes_by_cells

    counts = simulate_counts(n_cells=40, n_genes=12, seed=0)
    path = write_table(counts, tmp_path / "genes_x_cells.csv", transpose=True)
    assert main(["denoise", str(path), "-o", str(tmp_path / "o.h5ad"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "looks like genes x cells" in err and "--transpose" in err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(InputError, match="transpose=True"):
        read_counts(path)
    assert read_counts(path, transpose=True).shape == (40, 12)
    assert read_counts(path, transpose=False).shape == (12, 40)  # the user said so
    cells_by_genes = write_table(counts, tmp_path / "cells_x_genes.csv")
    assert read_counts(cells_by_genes).shape == (40, 12)
    # real-data names: Ensembl ids or symbols in rows, 10x barcodes in columns
    barcodes = ["AAACCTGAGAAGGCCT-1", "AAACCTGAGACAGACC-1", "AAACCTGAGGCATGGT-1"]
    assert looks_genes_by_cells(["ENSG00000141510", "ENSG00000012048"], barcodes)
    assert looks_genes_by_cells(["CD3E", "GAPDH", "MS4A1"], barcodes)
    assert looks_genes_by_cells(barcodes, ["CD3E", "GAPDH", "MS4A1"]) is None
    assert looks_genes_by_cells(["c1", "c2"], ["CD3E", "GAPDH"]) is None


def test_pp_denoise_one_liner_writes_outputs_back():
    import numpy as np

    from zipo_scvi.data import simulate_counts

    adata = simulate_counts(n_cells=100, n_genes=40, seed=0)
    counts = adata.X.copy()
    fast = {"max_epochs": 2, "enable_progress_bar": False, "encoder_sizes": (16, 4)}
    assert zipo_scvi.pp.denoise(adata, **fast) is None  # in place, like sc.external.pp.dca
    assert adata.layers["zipo_denoised"].dtype == np.float32
    assert adata.obsm["X_zipo"].shape == (100, 4)
    assert "zipo_zero_prob" not in adata.layers  # the default Poisson likelihood
    totals = np.asarray(counts.sum(axis=1)).ravel()
    np.testing.assert_allclose(adata.obs["zipo_observed_library"], totals, rtol=1e-5)
    np.testing.assert_allclose(adata.layers["zipo_denoised"].sum(axis=1), totals, rtol=1e-3)
    assert (adata.X != counts).nnz == 0  # the counts are left as they were
    assert adata.uns["zipo"]["epochs_trained"] == 2

    fresh = simulate_counts(n_cells=100, n_genes=40, seed=0)
    out, model = zipo_scvi.pp.denoise(
        fresh, copy=True, return_model=True, likelihood="zinb", lr_decay=0.95, **fast
    )
    assert "zipo_denoised" not in fresh.layers and out is not fresh
    assert model.hyperparameters["likelihood"] == "zinb"
    assert {"zipo_zero_prob", "zipo_dispersion"} <= set(out.layers)
    np.testing.assert_allclose(out.obsm["X_zipo"], model.get_latent_representation(), rtol=1e-5)


TINY = "threads = 1\nencoder_sizes = [16, 4]\nlibrary_sizes = [8, 4]\n[train]\nmax_epochs = 2\n"


def test_dca_output_folder_model_reuse_and_prune_without_data(tmp_path, capsys):
    import anndata
    import numpy as np

    from tests._formats import write_table
    from zipo_scvi import ZIPO
    from zipo_scvi.data import simulate_counts

    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    counts = simulate_counts(n_cells=60, n_genes=20, seed=3)
    src = write_table(counts, tmp_path / "matrix.csv", transpose=True)
    results, model_dir = tmp_path / "results", tmp_path / "model"
    # DCA's positional form: the second positional is the output folder
    cmd = ["denoise", str(src), str(results), "--transpose", "--config", str(config), "--quiet"]
    assert main([*cmd, "--save-model", str(model_dir)]) == 0
    names = sorted(p.name for p in results.iterdir())
    assert names == ["latent.tsv", "mean.tsv", "zipo_denoised.h5ad", "zipo_denoised.settings.toml"]
    trained = anndata.read_h5ad(results / "zipo_denoised.h5ad")
    assert main(["denoise", str(src), str(results), "-o", "x.h5ad", "--transpose"]) == 2
    assert "OUTDIR" in capsys.readouterr().err

    # --model: the saved model's outputs on (here: the same) cells, no training
    applied = tmp_path / "applied.h5ad"
    apply = ["denoise", str(src), "--transpose", "--model", str(model_dir), "-o", str(applied)]
    assert main([*apply, "--quiet"]) == 0
    again = anndata.read_h5ad(applied)
    np.testing.assert_allclose(
        again.layers["zipo_denoised"], trained.layers["zipo_denoised"], 1e-5
    )
    np.testing.assert_allclose(again.obsm["X_zipo"], trained.obsm["X_zipo"], rtol=1e-4, atol=1e-6)
    assert again.uns["zipo"]["model"] == str(model_dir.resolve())
    assert main([*apply, "--force", "--epochs", "3"]) == 2  # nothing to train
    assert "drop --epochs" in capsys.readouterr().err
    other = write_table(simulate_counts(n_cells=30, n_genes=25, seed=1), tmp_path / "o.csv")
    assert (
        main(["denoise", str(other), "--model", str(model_dir), "-o", str(tmp_path / "b.h5ad")])
        == 2
    )
    assert "genes" in capsys.readouterr().err

    # prune on a model saved without its data says how to fix it, and --data fixes it
    bare = tmp_path / "bare"
    ZIPO.load(str(model_dir)).save(str(bare), save_anndata=False)
    assert main(["prune", str(bare), "--delta", "0.05"]) == 2
    err = capsys.readouterr().err
    assert "--data FILE" in err and "save_anndata=True" in err
    h5ad = tmp_path / "cells.h5ad"
    trained.write_h5ad(h5ad)
    assert main(["prune", str(bare), "--delta", "0.05", "--data", str(h5ad)]) == 0
    assert capsys.readouterr().out.startswith("pruned ")
    assert (tmp_path / "bare_pruned" / "model.pt").is_file()


@pytest.fixture(scope="module")
def trained():
    import scvi

    from zipo_scvi import ZIPO
    from zipo_scvi.data import simulate_counts

    scvi.settings.seed = 0
    adata = simulate_counts(n_cells=120, n_genes=30, seed=0)
    ZIPO.setup_anndata(adata)
    model = ZIPO(adata, encoder_sizes=(16, 4), library_sizes=(8, 4), likelihood="zip")
    model.train(max_epochs=2, batch_size=64, enable_progress_bar=False)
    return model


def test_scvi_getter_arguments_are_accepted_with_honest_meaning(trained):
    import numpy as np

    model = trained
    latent = model.get_latent_representation()
    for kwargs in ({"give_mean": True}, {"give_mean": False, "mc_samples": 100}):
        np.testing.assert_array_equal(model.get_latent_representation(**kwargs), latent)
    with pytest.raises(ValueError, match="deterministic"):
        model.get_latent_representation(return_dist=True)
    mean = model.get_normalized_expression(return_numpy=True)
    np.testing.assert_array_equal(
        model.get_normalized_expression(n_samples=5, return_numpy=True), mean
    )
    with pytest.raises(ValueError, match="posterior_predictive_sample"):
        model.get_normalized_expression(n_samples=5, return_mean=False)
    some = model.get_normalized_expression(n_samples_overall=7, silent=False, dataloader=None)
    assert some.shape == (7, 30) and set(some.index) <= set(model.adata.obs_names)
    with pytest.raises(TypeError, match="no_such"):
        model.get_normalized_expression(no_such=1)


def test_history_holds_no_vae_only_series(trained):
    history = trained.history
    assert not [k for k in history if k.startswith(("elbo_", "kl_"))]
    for key in ("train_loss", "reconstruction_loss_train", "nll_train"):
        assert len(history[key]) == 2, key  # every epoch
    for key in ("validation_loss", "reconstruction_loss_validation", "nll_validation"):
        assert history[key].index.to_list() == [1], key  # every few epochs: here the last


def test_differential_expression_explains_what_to_use(trained):
    with pytest.raises(NotImplementedError, match="rank_genes_groups"):
        trained.differential_expression(groupby="group")


def test_training_says_how_it_ended_in_words(capsys):
    from zipo_scvi import ZIPO
    from zipo_scvi.data import simulate_counts

    adata = simulate_counts(n_cells=120, n_genes=30, seed=0)
    ZIPO.setup_anndata(adata)
    model = ZIPO(adata, encoder_sizes=(16, 4), library_sizes=(8, 4))
    capsys.readouterr()
    model.train(max_epochs=200, batch_size=64, early_stopping_patience=2, lr=0.5)
    shown = capsys.readouterr()
    text = shown.out + shown.err
    epochs = len(model.history["train_loss"])
    assert epochs < 200  # patience 2 at a large learning rate: early stopping ends it
    assert f"ZIPO trained {epochs} epochs in" in text and "stopped early (cap 200)" in text
    assert "had not improved for 2 epochs" in text and "Best held-out loss" in text
    assert "molecules held out from training" in text  # what the loss is, in words
    assert (
        "early stopping on held-out molecules of every cell; at most 200 epochs" in text
    )  # the bar
    assert "Best score" not in text and "Monitored metric" not in text  # Lightning's wording
    assert f"/{200}" not in text  # the bar does not count towards the cap
    model.train(max_epochs=1, enable_progress_bar=False)
    assert capsys.readouterr().out == ""  # no bar: no summary either
