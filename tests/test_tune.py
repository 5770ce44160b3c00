"""Hyperparameter search (optuna, SQLite, two processes, pruning, MCV) and seed comparisons."""

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import scipy.sparse as sp

import zipo_scvi
from zipo_scvi import ZIPO, best_settings, compare_seeds, tune
from zipo_scvi._defaults import ERROR_BAR_LAMBDA
from zipo_scvi._metrics import log_normalised_mse, mcv_poisson, summarize_seeds
from zipo_scvi._tune import _thin
from zipo_scvi.data import simulate_counts

SPACE = {
    "encoder_sizes": ("categorical", [(16, 4), (16, 8, 4)]),
    "alpha_z": ("loguniform", 0.01, 1.0),
}
QUICK = {"max_epochs": 2, "batch_size": 64, "library_sizes": (8, 4), "verbose": False}


@pytest.fixture
def small():
    adata = simulate_counts(n_cells=150, n_genes=40, n_groups=3, seed=0)
    ZIPO.setup_anndata(adata)
    return adata


def test_sqlite_search_prunes_reopens_and_continues(small, tmp_path, capsys):
    path = tmp_path / "study.db"
    # NLL is positive, so this pruner stops every trial at its first report.
    study = tune(small, 2, SPACE, "validation_nll", storage=path,
                 pruner=optuna.pruners.ThresholdPruner(upper=0.0),
                 **{**QUICK, "verbose": True})  # fmt: skip
    shown = capsys.readouterr().out
    assert "[zipo tune] trial 0 pruned at epoch 0" in shown and "no completed trial" in shown
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED] * 2
    assert all(list(t.intermediate_values) == [0] for t in study.trials)
    with pytest.raises(ValueError, match="no completed trial"):
        best_settings(study)

    # Reopen the same file with pruning off and continue the study.
    study = tune(small, 2, SPACE, "validation_nll", storage=str(path), pruner=False, **QUICK)
    assert capsys.readouterr().out == ""  # quiet
    url = f"sqlite:///{path}"
    reopened = optuna.load_study(study_name="zipo_validation_nll", storage=url)
    assert [t.number for t in reopened.trials] == [0, 1, 2, 3]
    done = reopened.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(done) == 2
    for trial in done:
        assert sorted(trial.intermediate_values) == [0, 1]  # one report per epoch
        # The objective is the validation cells' NLL, the quantity reported each epoch.
        np.testing.assert_allclose(trial.value, trial.intermediate_values[1], rtol=1e-3)
        assert trial.params["encoder_sizes"] in ("16-4", "16-8-4")
        assert 0.01 <= trial.params["alpha_z"] <= 1.0
    assert reopened.user_attrs["objective"] == "validation_nll"

    settings = best_settings(reopened)
    chosen = tuple(int(s) for s in reopened.best_params["encoder_sizes"].split("-"))
    assert settings["model_kwargs"]["encoder_sizes"] == chosen
    assert settings["model_kwargs"]["alpha_z"] == reopened.best_params["alpha_z"]
    assert settings["train_kwargs"]["validation"] == "cells"
    model = ZIPO.from_study(small, reopened)
    assert model.hyperparameters["encoder_sizes"] == chosen
    assert model.hyperparameters["library_sizes"] == (8, 4)
    assert not model.is_trained
    model.train(**settings["train_kwargs"], enable_progress_bar=False)
    assert model.get_latent_representation().shape == (150, chosen[-1])

    with pytest.raises(ValueError, match="made for objective 'validation_nll'"):
        tune(small, 1, SPACE, objective="mcv", storage=path, study_name="zipo_validation_nll",
             **QUICK)  # fmt: skip


def test_two_processes_share_one_sqlite_study(small, tmp_path):
    path = tmp_path / "shared.db"
    worker = textwrap.dedent(
        f"""
        from zipo_scvi import ZIPO, tune
        from zipo_scvi.data import simulate_counts
        adata = simulate_counts(n_cells=150, n_genes=40, n_groups=3, seed=0)
        ZIPO.setup_anndata(adata)
        tune(adata, 1, {SPACE!r}, storage={str(path)!r}, pruner=False, **{QUICK!r})
        """
    )
    other = subprocess.Popen([sys.executable, "-c", worker], stderr=subprocess.PIPE, text=True)
    try:
        tune(small, 1, SPACE, storage=path, pruner=False, **QUICK)
    finally:
        _, err = other.communicate(timeout=300)
    assert other.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="zipo_mcv", storage=f"sqlite:///{path}")
    trials = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert sorted(t.number for t in trials) == [0, 1]
    assert all("model_kwargs" in t.user_attrs for t in trials)


def test_molecule_split_and_scores(small):
    train, held_out = _thin(small, 0.9, seed=3)
    counts = small.X.toarray()
    kept_genes = counts.sum(0) > 0
    assert train.n_vars <= kept_genes.sum() and held_out.shape == train.shape
    genes = small.var_names.get_indexer(train.var_names)
    np.testing.assert_array_equal(train.X.toarray() + held_out.toarray(), counts[:, genes])
    assert np.asarray(train.X.sum(0)).min() > 0  # genes without kept molecules are dropped
    share = float(held_out.sum()) / counts[:, genes].sum()
    assert 0.07 < share < 0.13
    again, _ = _thin(small, 0.9, seed=3)
    assert (again.X != train.X).nnz == 0  # the split is seeded

    # The MCV formula (zipo_scvi._metrics), and the truth beats the noisy counts on held-out molecules.
    x, y = train.X.toarray(), held_out.toarray()
    d = x + 0.5
    scaled = d * y.sum() / x.sum()
    assert mcv_poisson(d, x, sp.csr_matrix(y)) == pytest.approx(
        np.mean(scaled - y * np.log(scaled + 1e-6))
    )
    truth = small.layers["true_rate"][:, genes]
    assert mcv_poisson(truth, x, y) < mcv_poisson(x, x, y)
    assert log_normalised_mse(truth * 3, truth) == pytest.approx(0.0)
    assert log_normalised_mse(x, truth) > log_normalised_mse(truth + 1e-3, truth)


def test_mcv_is_the_default_objective_of_python_and_cli():
    import inspect

    from zipo_scvi._defaults import TUNE_OBJECTIVE
    from zipo_scvi.cli import build_parser

    assert TUNE_OBJECTIVE == "mcv"
    assert inspect.signature(tune).parameters["objective"].default == TUNE_OBJECTIVE
    args = build_parser().parse_args(["tune", "x.h5ad", "--n-trials", "1"])
    assert args.objective == TUNE_OBJECTIVE


def test_mcv_objective_runs(small):
    study = tune(small, 2, SPACE, **QUICK)  # the default objective
    assert study.study_name == "zipo_mcv" and study.user_attrs["objective"] == "mcv"
    values = [t.value for t in study.trials]
    assert len(values) == 2 and all(np.isfinite(values))
    assert study.best_value == min(values)
    # Recompute the best trial's score by hand: same molecule split, same seed, same model.
    settings = best_settings(study)
    train, held_out = _thin(small, 0.9, seed=0)
    model = ZIPO(train, seed=0, **settings["model_kwargs"])
    model.train(seed=0, **settings["train_kwargs"], enable_progress_bar=False)
    denoised = model.get_normalized_expression(library_size="latent", return_numpy=True)
    assert mcv_poisson(denoised, train.X, held_out) == pytest.approx(study.best_value, rel=1e-4)
    assert study.best_trial.user_attrs["mcv_mse"] == pytest.approx(
        log_normalised_mse(denoised, held_out), rel=1e-4
    )


def test_compare_seeds_table_summary_and_plot(small):
    configs = {"shallow": {"encoder_sizes": (16, 4)}, "deep": {"encoder_sizes": (16, 8, 4)}}
    table = compare_seeds(small, configs, n_seeds=2, metrics=("nll", "mse", "true_mse"),
                               max_epochs=2, library_sizes=(8, 4), verbose=False)  # fmt: skip
    assert list(table.columns) == ["config", "seed", "metric", "value"]
    assert len(table) == 2 * 2 * 3 and np.isfinite(table["value"]).all()
    assert set(table["config"]) == set(configs) and set(table["seed"]) == {0, 1}
    assert (table["value"] > 0).all()
    summary = summarize_seeds(table)
    row = summary[(summary["config"] == "deep") & (summary["metric"] == "nll")].iloc[0]
    values = table[(table["config"] == "deep") & (table["metric"] == "nll")]["value"]
    assert row["mean"] == pytest.approx(values.mean())
    assert row["error"] == pytest.approx(ERROR_BAR_LAMBDA * values.std(ddof=1) / np.sqrt(2))
    assert ERROR_BAR_LAMBDA == pytest.approx(1.645, abs=1e-3)
    fig = zipo_scvi.pl.seed_comparison(table)
    assert [ax.get_title() for ax in fig.axes] == ["nll", "mse", "true_mse"]
    same = compare_seeds(small, {"a": {"encoder_sizes": (16, 4)}}, n_seeds=1,
                         max_epochs=2, library_sizes=(8, 4), verbose=False)  # fmt: skip
    first = table[(table["config"] == "shallow") & (table["seed"] == 0)]
    np.testing.assert_allclose(same["value"], first["value"].iloc[:2], rtol=1e-4)  # seeded


def test_seed_comparison_plot_rejects_unknown_metric():
    table = pd.DataFrame({"config": ["a"], "seed": [0], "metric": ["nll"], "value": [1.0]})
    with pytest.raises(ValueError, match="not in the table"):
        zipo_scvi.pl.seed_comparison(table, metrics=["mse"])


def test_bad_inputs(small):
    with pytest.raises(ValueError, match="Unknown objective 'elbo'"):
        tune(small, 1, SPACE, objective="elbo")
    with pytest.raises(ValueError, match="Unknown search-space parameter 'n_layers'"):
        tune(small, 1, {"n_layers": ("int", 1, 3)})
    with pytest.raises(ValueError, match="must be an optuna distribution or a tuple"):
        tune(small, 1, {"alpha_z": ("normal", 0.0, 1.0)})
    with pytest.raises(ValueError, match="low < high"):
        tune(small, 1, {"alpha_z": ("loguniform", 1.0, 0.1)})
    with pytest.raises(ValueError, match="non-empty list of choices"):
        tune(small, 1, {"encoder_sizes": ("categorical", [])})
    with pytest.raises(ValueError, match="needs validation cells"):
        tune(small, 1, SPACE, "validation_nll", train_size=1.0)
    with pytest.raises(ValueError, match="Unknown preset"):
        tune(small, 1, SPACE, preset="huge")
    unregistered = simulate_counts(n_cells=20, n_genes=10, seed=1)
    with pytest.raises(ValueError, match="ZIPO.setup_anndata"):
        tune(unregistered, 1, SPACE)
    with pytest.raises(ValueError, match="Unknown metric"):
        compare_seeds(small, {"a": {}}, metrics=("auc",))
    with pytest.raises(ValueError, match="n_seeds"):
        compare_seeds(small, {"a": {}}, n_seeds=0)
    del small.layers["true_rate"]
    with pytest.raises(ValueError, match="true_rate"):
        compare_seeds(small, {"a": {}}, metrics=("true_mse",))


def test_docs_tune_example_runs(small, tmp_path, monkeypatch):
    page = (Path(__file__).resolve().parents[1] / "docs" / "tuning.md").read_text()
    section = page.split("<!-- BEGIN:tune -->", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    code = block.replace("n_trials=40", "n_trials=1").replace("max_epochs=200", "max_epochs=2")
    assert code != block and 'storage="zipo_search.db"' in code
    monkeypatch.chdir(tmp_path)
    namespace = {"adata": small}
    exec(compile(code, "docs/tuning.md example", "exec"), namespace)
    assert len(namespace["study"].trials) == 1 and (tmp_path / "zipo_search.db").exists()
    assert namespace["model"].is_trained
