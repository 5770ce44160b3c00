"""Fast tests of the benchmark harness: MCV split, scores, latent ARI, runners, README updater."""

import math

import numpy as np
import pytest
import scipy.sparse as sp

from benchmarks._harness import (
    RUNNERS,
    latent_ari,
    mcv_split,
    run_method,
    score_mcv,
    score_truth,
    update_readme_section,
)
from zipo_scvi.data import simulate_counts


def test_mcv_split_is_a_partition_of_the_molecules():
    adata = simulate_counts(n_cells=80, n_genes=40, seed=3)
    adata.X = adata.X + sp.csr_matrix(np.full(adata.shape, 0.2, dtype=np.float32))  # not integer
    counts = np.round(adata.X.toarray())
    train, test = mcv_split(adata, fraction=0.9, seed=1)
    kept = adata.var_names.get_indexer(train.var_names)
    x = train.X.toarray()
    assert sp.issparse(train.X)
    assert np.array_equal(x + test, counts[:, kept])
    assert (x >= 0).all() and (test >= 0).all()
    assert (x.sum(0) > 0).all()
    dropped = np.setdiff1d(np.arange(adata.n_vars), kept)
    assert train.uns["mcv"]["n_genes_dropped"] == dropped.size
    assert 0.85 < x.sum() / counts.sum() < 0.95
    assert train.layers["true_rate"].shape == train.shape
    again, _ = mcv_split(adata, fraction=0.9, seed=1)
    assert np.array_equal(again.X.toarray(), x)


def test_mcv_split_drops_genes_without_training_counts():
    counts = np.array([[3.0, 0.0, 1.0], [2.0, 0.0, 0.0]])
    from anndata import AnnData

    train, test = mcv_split(AnnData(counts), fraction=0.5, seed=0)
    assert "1" not in train.var_names
    assert test.shape == train.shape


def test_mcv_split_rejects_bad_input():
    from anndata import AnnData

    with pytest.raises(ValueError, match="fraction"):
        mcv_split(AnnData(np.ones((2, 2))), fraction=1.0)
    with pytest.raises(ValueError, match="non-negative"):
        mcv_split(AnnData(-np.ones((2, 2))))


def test_score_mcv_on_a_hand_checked_example():
    denoised = np.array([[1.0, 1.0]])
    test = np.array([[1.0, 0.0]])
    train = np.array([[2.0, 2.0]])
    scores = score_mcv(denoised, test, train)
    # D' = D * 1/4 = 0.25 each; poisson = mean(0.25 - log(0.25 + 1e-6), 0.25)
    assert scores["poisson"] == pytest.approx((0.25 - math.log(0.25 + 1e-6) + 0.25) / 2)
    # D -> 5000 each, Y -> (10000, 0) after normalising to 1e4; then log1p
    expected = ((math.log1p(5000) - math.log1p(10000)) ** 2 + math.log1p(5000) ** 2) / 2
    assert scores["mse"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="shape"):
        score_mcv(np.ones((1, 3)), test, train)


def test_score_truth_ignores_per_cell_scale_and_sees_errors():
    truth = np.array([[1.0, 3.0, 0.0], [2.0, 2.0, 4.0]])
    exact = score_truth(truth * np.array([[3.0], [0.5]]), truth)
    assert exact["mse_truth"] == pytest.approx(0.0, abs=1e-12)
    assert exact["corr_truth"] == pytest.approx(1.0)
    worse = score_truth(truth[:, ::-1], truth)
    assert worse["mse_truth"] > 0.1 and worse["corr_truth"] < 0.9


def test_latent_ari_separates_good_and_random_latents():
    rng = np.random.default_rng(0)
    groups = np.repeat([0, 1, 2], 30)
    good = np.eye(3)[groups] * 5 + rng.normal(size=(90, 3)) * 0.1
    assert latent_ari(good, groups)["ari"] == pytest.approx(1.0)
    assert latent_ari(rng.normal(size=(90, 3)), groups)["ari"] < 0.2
    assert math.isnan(latent_ari(np.full((90, 2), np.nan), groups)["ari"])


def test_update_readme_section(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("intro\n<!-- BEGIN:bench -->\nold table\n<!-- END:bench -->\noutro\n")
    assert update_readme_section(path, "bench", "new table")
    text = path.read_text()
    assert "new table" in text and "old table" not in text
    assert text.startswith("intro\n") and text.endswith("outro\n")
    assert not update_readme_section(path, "bench", "new table")  # unchanged
    assert update_readme_section(path, "speed", "timings")  # appended with markers
    assert path.read_text().rstrip().endswith("<!-- END:speed -->")


def test_runners_return_denoised_on_the_count_scale():
    adata = simulate_counts(n_cells=120, n_genes=50, seed=1)
    train, test = mcv_split(adata, seed=0)
    res = run_method("none", train, isolate=False)
    assert np.array_equal(res["denoised"], train.X.toarray())
    zipo = run_method(
        "zipo",
        train,
        seed=0,
        isolate=False,
        encoder_sizes=(16, 4),
        train={"max_epochs": 2, "batch_size": 64},
    )
    assert zipo["denoised"].shape == train.shape and zipo["latent"].shape == (120, 4)
    assert np.isfinite(score_mcv(zipo["denoised"], test, train)["poisson"])
    totals = zipo["denoised"].sum(1)
    assert 0.1 < np.median(totals) / np.median(np.asarray(train.X.sum(1))) < 10
    assert {"zipo", "scvi_zinb", "scvi_poisson", "ldvae", "magic", "dca", "none"} <= set(RUNNERS)
    with pytest.raises(ValueError, match="Unknown method"):
        run_method("nope", train)


def test_run_method_isolated_reports_time_memory_and_errors():
    adata = simulate_counts(n_cells=60, n_genes=30, seed=2)
    train, _ = mcv_split(adata, seed=0)
    res = run_method("none", train, seed=0)
    assert res["denoised"].shape == train.shape
    assert res["peak_rss_mb"] > 10 and res["seconds"] >= 0
    assert res["info"]["label"].startswith("none")
    failed = run_method("none", train, seed=0, not_an_argument=1)
    assert "denoised" not in failed
    assert "not_an_argument" in failed["error"] or "not_an_argument" in failed["stderr"]


def test_benchmark_table_ranks_zipo_and_marks_the_best(tmp_path):
    import pandas as pd

    from benchmarks.run_benchmark import ranks, summarise, table_markdown, top_genes

    rows = pd.DataFrame(
        [
            {"dataset": "d", "method": m, "seed": s, "poisson": p + 0.01 * s, "ari": a}
            for m, p, a in [("ZIPO", 0.2, 0.5), ("scVI", 0.3, 0.9), ("none (D = X)", 0.1, 0.1)]
            for s in (0, 1)
        ]
    )
    rows["error"] = np.nan
    summary = summarise(rows)
    assert summary.loc[("d", "ZIPO"), ("mean", "poisson")] == pytest.approx(0.205)
    assert ranks(summary, "d") == {"poisson": "2/3", "ari": "2/3"}
    table = table_markdown(summary, rows, "d")
    assert "| ZIPO | **0.20500" in table  # best among methods, `none` excluded
    assert "| scVI |" in table and "**0.900" in table
    adata = simulate_counts(n_cells=30, n_genes=20, seed=0)
    kept = top_genes(adata, 5)
    totals = np.asarray(adata.X.sum(0)).ravel()
    assert kept.n_vars == 5 and set(kept.var_names) == set(
        adata.var_names[np.argsort(-totals)[:5]]
    )


def test_readme_figure_draws_a_small_png_from_a_fake_result(tmp_path):
    from anndata import AnnData

    from benchmarks.readme_figure import CELL_TYPES, draw

    rng = np.random.default_rng(0)
    n = 60
    counts = rng.poisson(2.0, size=(n, 5)).astype(np.float32)
    adata = AnnData(sp.csr_matrix(counts))
    adata.var_names = ["CD3E", "MS4A1", "CD14", "APOC1", "GNLY"]
    adata.layers["counts"] = adata.X.copy()
    adata.layers["zipo_denoised"] = counts.mean(axis=0, keepdims=True).repeat(n, axis=0)
    adata.obs["cell_type"] = np.asarray(list(CELL_TYPES))[np.arange(n) % len(CELL_TYPES)]
    adata.obsm["X_umap_pca"] = rng.normal(size=(n, 2))
    adata.obsm["X_umap_zipo"] = rng.normal(size=(n, 2))
    path = draw(adata, tmp_path / "sub" / "readme.png", gene="MS4A1")
    assert path.exists() and 0 < path.stat().st_size < 300_000
    with pytest.raises(KeyError):
        draw(adata, tmp_path / "other.png", gene="not_a_gene")


def test_grid_margin_is_negative_when_zipo_has_the_lower_loss_also_below_zero(tmp_path):
    import json

    import pandas as pd

    from benchmarks.grid import _relative, glance

    assert _relative(-0.125, -0.123) < 0 < _relative(0.07, 0.068)
    rows = pd.DataFrame(
        {
            "point": ["p"] * 3,
            "shape": ["10 x 5"] * 3,
            "method": ["ZIPO", "scVI Poisson", "none (D = X)"],
            "poisson": [-0.125, -0.123, -0.06],
        }
    )
    rows.to_csv(tmp_path / "rows.csv", index=False)
    (tmp_path / "meta.json").write_text(json.dumps({"date": "d", "machine": {}}))
    text = glance(tmp_path)
    assert "| p | 10 x 5 | -0.12500 | scVI Poisson -0.12300 | -1.63% |  | 1 |" in text
    assert "Peers run: scVI Poisson." in text
    # ZIPO's expected-log MSE score, with the seeds it has when fewer than the Poisson's
    two = pd.concat([rows, rows.assign(seed=1)], ignore_index=True)
    two["mse_log_scaled"] = [0.7, 0.1, 0.0, float("nan"), 0.2, 0.0]
    two.to_csv(tmp_path / "rows.csv", index=False)
    assert "| -1.63% | 0.700 (1 seed) | 2 |" in glance(tmp_path)


def test_grid_rebuild_scores_the_part_files_without_running(tmp_path, monkeypatch):
    import pandas as pd

    from benchmarks import grid

    point = grid.Point("tiny", 20)
    adata = simulate_counts(n_cells=40, n_genes=20, seed=0)
    monkeypatch.setattr(grid, "GRID", (point,))
    monkeypatch.setattr(grid, "load_point", lambda p, seed=0: (adata.copy(), "tiny"))
    monkeypatch.setattr(grid, "evaluate", lambda *a, **k: pytest.fail("a rebuild ran methods"))
    part = pd.DataFrame(
        {
            "method": ["none (D = X)", "ZIPO", "none (D = X)", "ZIPO"],
            "seed": [0, 0, 1, 1],
            "poisson": [0.5, 0.3, 0.52, 0.31],
            "mse": [0.2, 0.1, 0.21, 0.1],
        }
    )
    part.to_csv(tmp_path / f"rows_{point.name}.csv", index=False)
    other = pd.DataFrame(
        {
            "point": ["elsewhere"],
            "shape": ["1 x 1"],
            "method": ["ZIPO"],
            "seed": [0],
            "poisson": [1],
        }
    )
    other.to_csv(tmp_path / "rows.csv", index=False)
    grid.main(["--rebuild", "--out", str(tmp_path)])
    rows = pd.read_csv(tmp_path / "rows.csv")
    assert set(rows["point"]) == {"elsewhere", point.name}  # other points' rows are kept
    tiny = rows[rows["point"] == point.name].set_index(["method", "seed"])
    assert tiny.loc[("none (D = X)", 1), "poisson_scaled"] == 0
    assert 0 < tiny.loc[("ZIPO", 1), "poisson_scaled"] < 1
    # the simulation's true rates are scored like a method, the best possible, and no peer
    assert tiny.loc[(grid.TRUTH, 1), "oracle_share"] == pytest.approx(1.0)
    assert tiny.loc[(grid.TRUTH, 1), "mse_log"] < tiny.loc[(grid.TRUTH, 1), "mse"]
    assert not grid._is_peer(grid.TRUTH) and grid._is_peer("scVI Poisson")
    assert not (tmp_path / "meta.json").exists()  # the command that made the rows is kept


def test_resume_with_rerun_runs_again_only_the_seeds_asked_for(tmp_path, monkeypatch):
    from benchmarks import run_benchmark

    calls = []

    def fake_run(method, train, seed=0, **kw):
        calls.append((method, seed))
        return {
            "denoised": np.asarray(train.X.toarray()) + 1.0,
            "latent": None,
            "seconds": 0.0,
            "peak_rss_mb": 0.0,
            "info": {},
        }

    monkeypatch.setattr(run_benchmark, "run_method", fake_run)
    adata = simulate_counts(n_cells=40, n_genes=20, seed=0)
    methods = {"A": ("none", {}), "B": ("none", {})}
    path = tmp_path / "rows.csv"
    args = (adata, "sim", methods)
    run_benchmark.evaluate(*args, [0, 1], None, print, 60, 1, path)
    assert len(calls) == 4
    calls.clear()
    rows = run_benchmark.evaluate(*args, [1], None, print, 60, 1, path, resume=True, rerun=["A"])
    assert calls == [("none", 1)]  # only A on seed 1 ran again
    assert sorted((r["method"], r["seed"]) for r in rows) == [
        ("A", 0),
        ("A", 1),
        ("B", 0),
        ("B", 1),
    ]
    assert all(np.isfinite(r["mse_log"]) for r in rows)


def test_integration_goals_show_the_restarted_kmeans_scores_beside_scib_metrics():
    import pandas as pd

    from benchmarks.integration import goals, kmeans_restarts

    rng = np.random.default_rng(0)
    centres = np.repeat(np.eye(4) * 10, 30, axis=0)
    labels = np.repeat(list("abcd"), 30)
    assert kmeans_restarts(centres + rng.normal(size=centres.shape), labels)["ari"] == 1.0
    base = {"dataset": "sim", "seed": 0, "same_sample": 0.5, "ilisi": 1.0, "nmi": 0.9}
    rows = pd.DataFrame(
        [
            {**base, "method": "ZIPO (batch)", "ari": 0.725, "ari_k10": 1.0, "nmi_k10": 1.0},
            {
                **base,
                "method": "scVI (Poisson, batch)",
                "ari": 1.0,
                "ari_k10": 1.0,
                "nmi_k10": 1.0,
            },
        ]
    )
    (line,) = goals(rows)
    assert (
        "ARI >= scVI's - 0.02: MISSED (k-means, one start: 0.725 vs 1.000; k-means, best" in line
    )
    assert "NMI >= scVI's - 0.02: met (k-means, one start: 0.900 vs 0.900; k-means, best" in line
    assert "best of 10" not in goals(rows.drop(columns=["ari_k10", "nmi_k10"]))[0]
    # with scib-metrics' Leiden scores on both rows the goal is judged on them
    leiden = rows.assign(ari_leiden=[0.99, 1.0], nmi_leiden=[0.95, 1.0])
    (line,) = goals(leiden)
    assert (
        "ARI >= scVI's - 0.02: met (Leiden, resolution search, mean of 10 clusterings: 0.990 vs 1.000; "
        "k-means, one start: 0.725 vs 1.000; k-means, best of 10 starts: 1.000 vs 1.000)"
    ) in line
    assert (
        "NMI >= scVI's - 0.02: MISSED (Leiden, resolution search, mean of 10 clusterings: 0.950 vs 1.000"
        in line
    )


def test_integration_rescore_scores_saved_latents_again(tmp_path, monkeypatch):
    import anndata as ad

    from benchmarks import integration

    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b"], 60)
    counts = rng.poisson(np.where(labels[:, None] == "a", 2.0, 6.0), size=(120, 20))
    adata = ad.AnnData(counts.astype(np.float32))
    adata.obs["label"] = labels
    adata.obs[integration.SAMPLE] = np.tile(["A", "B"], 60)
    monkeypatch.setattr(integration, "load", lambda data, seed: adata.copy())
    latent = np.where(labels[:, None] == "a", 0.0, 5.0) + rng.normal(size=(120, 2))
    np.save(integration._cache_path(tmp_path, "d", 0, "m"), latent)
    done = {
        ("d", 0, "m"): {"dataset": "d", "seed": 0, "method": "m", "ari": 0.1, "mcv_poisson": 3},
        ("d", 0, "no latents"): {"dataset": "d", "seed": 0, "method": "no latents", "ari": 0.2},
    }
    out = integration.rescore(done, tmp_path)
    row = out[("d", 0, "m")]
    assert row["ari"] == row["ari_leiden"] == row["nmi_leiden"] == 1.0
    assert row["ari_leiden_sd"] == 0.0  # the mean of 10 Leiden clusterings
    assert row["mcv_poisson"] == 3  # scores of the denoised counts are kept
    assert 0.3 < row["same_sample"] < 0.7
    assert out[("d", 0, "no latents")] == done[("d", 0, "no latents")]


def test_integration_diagnose_tables_each_saved_latent_space(tmp_path, monkeypatch, capsys):
    """``--diagnose`` prints, per saved latent space, which labels of which sample each
    cluster holds: one that keeps types apart and one that merges them."""
    import anndata as ad

    from benchmarks import integration

    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b"], 60)
    adata = ad.AnnData(rng.poisson(2.0, size=(120, 10)).astype(np.float32))
    adata.obs["label"] = labels
    adata.obs[integration.SAMPLE] = np.tile(["A", "B"], 60)
    monkeypatch.setattr(integration, "load", lambda data, seed: adata.copy())
    cache = tmp_path / "cache"
    cache.mkdir()
    apart = np.where(labels[:, None] == "a", 0.0, 20.0) + rng.normal(size=(120, 2))
    np.save(integration._cache_path(cache, "d", 0, "kept apart"), apart)
    merged_latent = rng.normal(size=(120, 2))  # labels and samples alike
    np.save(integration._cache_path(cache, "d", 0, "merged"), merged_latent)
    integration.main(["--diagnose", "d", "0", "--out", str(tmp_path)])
    text = capsys.readouterr().out
    kept, merged = text.split("## merged")
    assert "## kept apart" in kept and not (tmp_path / "runs.jsonl").exists()
    table = integration.cluster_table(apart, adata.obs)
    assert ((table > 0).sum(axis=0) == 1).all()  # every label x sample in one cluster
    assert sorted(table.to_numpy().ravel()) == [0] * 4 + [30] * 4
    assert integration.cluster_table(merged_latent, adata.obs).to_string() in merged
    assert (integration.cluster_table(merged_latent, adata.obs)["a"].sum(axis=1) > 0).all()


def test_integration_rescore_trains_nothing(tmp_path, monkeypatch):
    """``--rescore`` scores saved latents; a method without them is not trained again."""
    import json

    from benchmarks import integration

    def no_training(*args, **kwargs):
        raise AssertionError("--rescore trained a method")

    monkeypatch.setattr(integration, "run_method", no_training)
    monkeypatch.setattr(integration, "rescore", lambda done, cache: done)
    row = {"dataset": "sim", "seed": 0, "method": "ZIPO (batch)", "ari": 0.5, "seconds": 1.0}
    (tmp_path / "runs.jsonl").write_text(json.dumps(row) + "\n")
    integration.main(["--rescore", "--no-docs", "--out", str(tmp_path)])
    assert (tmp_path / "table.md").exists()
    assert json.loads((tmp_path / "runs.jsonl").read_text()) == row


def test_speed_times_each_model_to_a_trained_model(tmp_path, monkeypatch):
    """``--to-model-only`` trains each model to the end, scores it and writes the table."""
    import json

    from benchmarks import _harness, speed

    fast = {"max_epochs": 3}
    monkeypatch.setattr(speed, "OUT", tmp_path)
    monkeypatch.setattr(
        speed,
        "TO_MODEL",
        {
            "ZIPO default": lambda train, seed: _harness.run_zipo(train, seed, train=fast),
            "scVI defaults": lambda train, seed: _harness.run_scvi(train, seed, train=fast),
        },
    )
    speed.main(["--to-model-only", "--n-cells", "80", "--n-genes", "30", "--no-readme"])
    timed = json.loads((tmp_path / "to_model.json").read_text())
    assert timed["device"] == "cpu" and timed["n_cells"] == 80
    for label in ("ZIPO default", "scVI defaults"):
        assert timed[label]["epochs"] == 3 and timed[label]["seconds"] > 0
        assert np.isfinite(timed[label]["poisson"])
    table = (tmp_path / "table.md").read_text()
    assert "| scVI defaults |" in table and "time vs ZIPO" in table


def test_integration_score_puts_torch_threads_back(monkeypatch):
    """A library that raises torch's thread count while scoring must not change how the next
    training sums (one seed gave other numbers after another run than run first)."""
    import torch

    from benchmarks import integration

    def raises_threads(*args):
        torch.set_num_threads(torch.get_num_threads() + 1)
        return {}

    monkeypatch.setattr(integration, "_score", raises_threads)
    before = torch.get_num_threads()
    try:
        integration.score({}, None, None)
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)
