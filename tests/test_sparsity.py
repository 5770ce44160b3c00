"""Pruning, sparsity curves, gene modules, zero inflation, sparse inference and their plots."""

import numpy as np
import pandas as pd
import pytest
import scvi
import torch
from matplotlib.figure import Figure

from tests.conftest import FAST, TINY
from zipo_scvi import ZIPO, pl
from zipo_scvi._components import MaskedLinear
from zipo_scvi._defaults import PRUNE_DELTA, PRUNE_SCHEDULE
from zipo_scvi._sparsity import (
    GradualPruning,
    SparseMaskedLinear,
    cluster_mask,
    cubic_sparsity,
    gene_clusters,
    gene_modules,
    importance_scores,
    magnitude_mask,
    module_coherence,
    normalized_weights,
    prune_mask,
    sparsity_curve,
    use_sparse_inference,
)
from zipo_scvi.data import simulate_counts


def _data():
    return simulate_counts(n_cells=160, n_genes=60, n_groups=3, n_batches=2, seed=0)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny trained ZIPO, saved once; tests load their own copy."""
    scvi.settings.seed = 0
    adata = _data()
    ZIPO.setup_anndata(adata, batch_key="batch")
    model = ZIPO(adata, likelihood="zip", alpha_w=1.0, **TINY)
    model.train(**FAST, train_size=0.9)  # validation cells, on which pruning is judged
    path = tmp_path_factory.mktemp("sparsity") / "model"
    model.save(str(path), save_anndata=True)
    return path, model.validation_indices


@pytest.fixture
def model(saved):
    path, validation = saved
    model = ZIPO.load(str(path))
    model.validation_indices = validation
    return model


def _weight(model):
    return model.module.encoder.first.effective_weight().detach().clone()


# ---------------------------------------------------------------------- pure functions
def test_normalized_weights_per_neuron():
    w = np.array([[2.0, -4.0, 1.0], [0.0, 0.0, 0.0], [0.5, 0.25, -0.1]])
    norm = normalized_weights(torch.tensor(w))
    np.testing.assert_allclose(np.abs(norm).max(axis=1), [1.0, 0.0, 1.0])
    np.testing.assert_allclose(norm[0], [0.5, -1.0, 0.25])
    np.testing.assert_allclose(norm[2] * 0.5, w[2])


def test_prune_mask_and_sparsity_curve_agree():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(20, 50)) * 10.0 ** rng.uniform(-8, 0, size=(20, 50))
    deltas = [1e-6, 1e-4, 1e-2, 0.5]
    curve = sparsity_curve(w, deltas)
    brute = [(np.abs(w) / np.abs(w).max(1, keepdims=True) < d).mean() for d in deltas]
    np.testing.assert_allclose(curve.values, brute)
    assert list(curve.index) == deltas
    for delta in deltas:
        assert prune_mask(w, delta).mean() == pytest.approx(1 - curve[delta])
    assert prune_mask(w, 0.0).all()
    assert not prune_mask(np.zeros((2, 3)), 0.0).any()


@pytest.mark.parametrize("delta", [-0.1, 1.5, float("nan")])
def test_bad_delta(delta):
    with pytest.raises(ValueError, match="delta must be a number in"):
        prune_mask(np.ones((2, 2)), delta)


def test_gene_modules_table():
    w = np.array([[0.5, -1.0, 1e-6, 0.2], [0.0, 0.0, 3.0, -3.0]])
    genes = ["a", "b", "c", "d"]
    table = gene_modules(w, genes)
    assert list(table.columns) == ["neuron", "gene", "weight", "importance"]
    assert table[["neuron", "gene", "weight"]].values.tolist() == [
        [0, "b", -1.0],
        [0, "a", 0.5],
        [0, "d", 0.2],
        [1, "c", 1.0],
        [1, "d", -1.0],
    ]
    top = gene_modules(w, genes, n_top=1, min_weight=0.0)
    assert top.groupby("neuron").size().tolist() == [1, 1]
    assert gene_modules(w, genes, min_weight=0.3)["gene"].tolist() == ["b", "a", "c", "d"]
    with pytest.raises(ValueError, match="Got 3 gene names for a layer with 4 inputs"):
        gene_modules(w, genes[:3])
    with pytest.raises(ValueError, match="n_top must be a positive integer"):
        gene_modules(w, genes, n_top=0)


# ---------------------------------------------------------------------- pruning
def test_prune_report_mask_and_default_cells(model):
    before = _weight(model)
    expected = sparsity_curve(before, [0.05])[0.05]
    error = model.get_reconstruction_error(indices=np.sort(model.validation_indices))
    report = model.prune(delta=0.05)
    layer = model.module.encoder.first
    assert isinstance(layer, SparseMaskedLinear)
    assert report["fraction_pruned"] == pytest.approx(expected)
    assert 0 < report["fraction_pruned"] < 1
    assert report["n_pruned"] == int((layer.mask == 0).sum())
    assert report["nll_before"] == pytest.approx(error["nll"])
    assert report["mse_before"] == pytest.approx(error["mse"])
    after = model.get_reconstruction_error(indices=np.sort(model.validation_indices))
    assert report["nll_after"] == pytest.approx(after["nll"])
    change = (report["nll_after"] - report["nll_before"]) / report["nll_before"]
    assert report["nll_change"] == pytest.approx(change)
    # pruned weights are zero, kept weights untouched
    kept = layer.mask.bool()
    assert (layer.weight[~kept] == 0).all()
    assert torch.equal(layer.weight[kept], before[kept])
    np.testing.assert_array_equal(kept.numpy(), prune_mask(before, 0.05))


def test_prune_on_given_data_and_delta_zero(model):
    adata = _data()
    report = model.prune(delta=0.0, adata=adata)
    assert report["fraction_pruned"] == 0.0
    assert report["nll_after"] == pytest.approx(report["nll_before"], rel=1e-6)
    assert report["nll_before"] == pytest.approx(model.get_reconstruction_error(adata)["nll"])


def test_second_prune_keeps_earlier_mask(model):
    first = model.prune(delta=0.05)
    second = model.prune(delta=0.01)
    assert second["fraction_pruned"] >= first["fraction_pruned"]
    third = model.prune(delta=0.2)
    assert third["fraction_pruned"] > first["fraction_pruned"]


def test_pruned_weights_stay_zero_when_training(model):
    model.prune(delta=0.05)
    layer = model.module.encoder.first
    kept = layer.mask.bool().clone()
    before = layer.weight.detach().clone()
    model.train(max_epochs=1, enable_progress_bar=False, batch_size=64)
    layer = model.module.encoder.first
    assert (layer.effective_weight()[~kept] == 0).all()
    assert (layer.weight[~kept] == 0).all()
    assert not torch.equal(layer.weight[kept], before[kept])  # the rest still trains


def test_save_load_keeps_mask(model, tmp_path):
    model.prune(delta=0.05)
    latent = model.get_latent_representation()
    model.save(str(tmp_path / "pruned"), save_anndata=True)
    loaded = ZIPO.load(str(tmp_path / "pruned"))
    layer = loaded.module.encoder.first
    assert isinstance(layer, SparseMaskedLinear)
    assert torch.equal(layer.mask, model.module.encoder.first.mask)
    assert torch.equal(layer.weight, model.module.encoder.first.weight)
    np.testing.assert_allclose(loaded.get_latent_representation(), latent, rtol=1e-5, atol=1e-5)


def test_prune_needs_a_trained_model():
    adata = _data()
    ZIPO.setup_anndata(adata)
    with pytest.raises(RuntimeError, match="Train the model"):
        ZIPO(adata, **TINY).prune()


# ---------------------------------------------------------------------- sparse inference
def test_sparse_inference_matches_dense(model):
    model.prune(delta=0.05)
    layer = use_sparse_inference(model.module, max_density=0.0)
    dense = model.get_normalized_expression(return_numpy=True)
    dense_latent = model.get_latent_representation()
    assert layer.sparse_weight() is None
    use_sparse_inference(model.module, max_density=1.0)
    csr = layer.sparse_weight()
    assert csr is not None and csr.layout == torch.sparse_csr
    assert csr.values().numel() == int(layer.mask.sum())
    np.testing.assert_allclose(model.get_latent_representation(), dense_latent, atol=1e-5)
    np.testing.assert_allclose(
        model.get_normalized_expression(return_numpy=True), dense, rtol=1e-4, atol=1e-7
    )


def test_sparse_layer_uses_dense_path_for_gradients(model):
    model.prune(delta=0.05)
    layer = use_sparse_inference(model.module, max_density=1.0)
    x = torch.rand(5, layer.in_features)
    layer.eval()
    with torch.no_grad():
        sparse_out = layer(x)
    out = layer(x)  # gradients on: the dense path, so backward works
    out.sum().backward()
    assert layer.weight.grad is not None
    assert (layer.weight.grad[layer.mask == 0] == 0).all()
    torch.testing.assert_close(sparse_out, out.detach(), rtol=1e-5, atol=1e-5)


def test_sparse_inference_is_automatic_only_when_sparse(model):
    model.prune(delta=0.05)
    layer = model.module.encoder.first
    assert layer.density() > layer.max_density  # a tiny model stays dense here
    assert layer.sparse_weight() is None
    model.prune(delta=1.0)  # keeps one weight per neuron
    assert layer.density() == pytest.approx(1 / layer.in_features)
    assert layer.sparse_weight() is not None


# ---------------------------------------------------------------------- curves and tables
def test_first_layer_sparsity_and_pruning_curve_leave_model_unchanged(model):
    before = _weight(model)
    curve = model.first_layer_sparsity(deltas=[1e-3, 1e-2, 1e-1])
    assert curve.is_monotonic_increasing and curve.iloc[-1] > 0
    table = model.pruning_curve(deltas=[1e-3, 0.05, 0.3])
    assert torch.equal(_weight(model), before)
    assert model.module.encoder.first.mask is None
    assert list(table.index) == [0.0, 1e-3, 0.05, 0.3]
    assert table["fraction_pruned"].is_monotonic_increasing
    assert table.loc[0.0, ["nll_change", "mse_change"]].tolist() == [0.0, 0.0]
    assert table.loc[0.05, "fraction_pruned"] == pytest.approx(
        sparsity_curve(before, [0.05])[0.05]
    )
    assert table.loc[0.05, "nll"] == pytest.approx(model.prune(delta=0.05)["nll_after"], rel=1e-5)


def test_gene_modules_of_a_pruned_model(model):
    model.prune(delta=0.05)
    modules = model.get_gene_modules()
    mask = model.module.encoder.first.mask
    assert len(modules) == int(mask.sum())
    assert set(modules["gene"]) <= set(model.adata.var_names)
    assert modules["weight"].abs().max() == pytest.approx(1.0)
    top = model.get_gene_modules(n_top=2)
    assert top.groupby("neuron").size().max() == 2
    assert top["neuron"].nunique() == int((mask.sum(1) > 0).sum())


def test_get_zero_inflation(model):
    z = model.get_zero_inflation()
    assert isinstance(z, pd.Series) and z.name == "zero_prob"
    assert list(z.index) == list(model.adata.var_names)
    assert ((z > 0) & (z < 1)).all()
    expected = model.get_likelihood_parameters()["zero_prob"].mean(axis=0)
    np.testing.assert_allclose(z.values, expected, rtol=1e-5)
    first = model.get_zero_inflation(indices=[0, 1, 2])
    np.testing.assert_allclose(
        first.values, model.get_likelihood_parameters(indices=[0, 1, 2])["zero_prob"].mean(0)
    )


def test_get_zero_inflation_needs_zero_inflated_likelihood():
    adata = _data()
    ZIPO.setup_anndata(adata)
    with pytest.raises(ValueError, match="'poisson' likelihood has no zero inflation"):
        ZIPO(adata, likelihood="poisson", **TINY).get_zero_inflation()


# ---------------------------------------------------------------------- plots
def test_plots(model):
    before = _weight(model).numpy()
    curve = model.pruning_curve(deltas=[1e-3, 0.05])
    sparsity = model.first_layer_sparsity()
    model.prune(delta=0.05)
    fig = pl.weight_histogram(before, model, delta=0.05)
    assert isinstance(fig, Figure)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any("after pruning" in label for label in labels)
    assert isinstance(pl.sparsity_curve({"a": sparsity, "b": sparsity}), Figure)
    fig = pl.pruning_curve(curve)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) >= 1
    with pytest.raises(ValueError, match="2-d weight matrix"):
        pl.weight_histogram(np.ones(3))
    with pytest.raises(TypeError, match="expected a Series"):
        pl.sparsity_curve([1, 2])


def test_default_delta_is_the_papers():
    assert PRUNE_DELTA == 1e-4
    assert PRUNE_SCHEDULE["sparsity"] >= 0.9


# ---------------------------------------------------------------------- gradual pruning
def test_cubic_schedule_and_magnitude_mask():
    assert cubic_sparsity(0, 10, 0.9) == 0.0
    assert cubic_sparsity(10, 10, 0.9) == pytest.approx(0.9)
    assert cubic_sparsity(20, 10, 0.9) == pytest.approx(0.9)
    steps = [cubic_sparsity(t, 10, 0.9) for t in range(11)]
    assert steps == sorted(steps)
    layer = MaskedLinear(50, 8)
    mask = magnitude_mask(layer, 0.5, None)
    assert int((mask == 0).sum()) == 200
    kept = layer.weight.detach().abs()[mask.bool()]
    assert kept.min() >= layer.weight.detach().abs()[~mask.bool()].max()
    layer.mask = mask
    # a second, larger target keeps earlier zeros; an input scale of 0 prunes a gene first
    scale = torch.ones(50)
    scale[3] = 0.0
    mask2 = magnitude_mask(layer, 0.7, scale)
    assert int((mask2 == 0).sum()) == 280
    assert (mask2[mask == 0] == 0).all() and (mask2[:, 3] == 0).all()


def test_gradual_pruning_callback_schedule():
    layer = MaskedLinear(40, 5)
    callback = GradualPruning(layer, 0.8, n_steps=10, n_updates=5)
    assert callback.update_steps == [1, 3, 5, 7, 9]

    from types import SimpleNamespace

    trainer = SimpleNamespace(callbacks=[], global_step=0)
    seen = []
    for step in range(12):
        trainer.global_step = step
        callback.on_train_batch_start(trainer, None, None, step)
        seen.append(0.0 if layer.mask is None else float((layer.mask == 0).float().mean()))
    assert seen == sorted(seen) and seen[0] == 0.0
    assert seen[-1] == pytest.approx(0.8) and callback.done
    assert (layer.weight[layer.mask == 0] == 0).all()
    # the kept epoch is chosen on what early stopping watches, else on the validation loss
    stopper = SimpleNamespace(monitor="nll_validation")
    for early, watched in ((stopper, "nll_validation"), (None, "validation_loss")):
        pruner = GradualPruning(layer, 0.8, n_steps=10)
        pruner.on_train_start(SimpleNamespace(early_stopping_callback=early), None)
        assert pruner.monitor == watched


def test_gradual_prune_reaches_sparsity_with_exact_zeros(model):
    validation = np.array(model.validation_indices)
    report = model.prune(sparsity=0.8, max_epochs=40, batch_size=64)
    layer = model.module.encoder.first
    assert report["method"] == "magnitude"
    assert report["fraction_pruned"] == pytest.approx(0.8, abs=1 / layer.weight.numel())
    assert report["fraction_pruned"] >= 0.8
    assert int((layer.weight == 0).sum()) >= np.ceil(0.8 * layer.weight.numel())  # exact zeros
    assert (layer.weight[layer.mask == 0] == 0).all()
    assert report["nonnegative"] and (layer.weight >= 0).all()  # the default: neurons add up
    assert report["epochs"] >= 34  # the schedule's 100 steps at 3 steps per epoch, then more
    np.testing.assert_array_equal(np.sort(model.validation_indices), np.sort(validation))
    held = model.heldout_loss(indices=np.sort(validation))
    assert report["heldout_after"] == pytest.approx(held)
    assert np.isfinite(report["heldout_change"])
    with pytest.raises(ValueError, match="not both"):
        model.prune(sparsity=0.9, delta=1e-4)
    with pytest.raises(ValueError, match="sparsity must lie"):
        model.prune(sparsity=1.0)
    with pytest.raises(ValueError, match="nonnegative applies to gradual"):
        model.prune(delta=1e-4, nonnegative=True)


def test_gradual_prune_can_keep_signed_weights(model):
    assert (model.module.encoder.first.weight < 0).any()
    report = model.prune(sparsity=0.5, nonnegative=False, max_epochs=2, batch_size=64)
    layer = model.module.encoder.first
    assert not report["nonnegative"]
    assert (layer.effective_weight() < 0).any() and (layer.effective_weight() > 0).any()
    assert report["fraction_pruned"] == pytest.approx(0.5, abs=1 / layer.weight.numel())


def test_gradual_prune_survives_save_load_and_training(model, tmp_path):
    model.prune(sparsity=0.85, max_epochs=2, batch_size=64)  # stops early: mask at target
    layer = model.module.encoder.first
    assert int((layer.mask == 0).sum()) >= np.ceil(0.85 * layer.mask.numel())
    model.save(str(tmp_path / "pruned"), save_anndata=True)
    loaded = ZIPO.load(str(tmp_path / "pruned"))
    mask = loaded.module.encoder.first.mask.clone()
    assert torch.equal(mask, layer.mask)
    loaded.train(max_epochs=1, enable_progress_bar=False, batch_size=64)
    loaded.prune(sparsity=0.9, max_epochs=1, batch_size=64)  # no split kept: a fresh one
    new = loaded.module.encoder.first
    assert (new.weight[mask == 0] == 0).all()
    assert int((new.weight == 0).sum()) >= np.ceil(0.9 * new.weight.numel())


def test_gene_clusters_follow_coexpression_and_leave_rare_genes_out():
    rng = np.random.default_rng(0)
    factors = rng.gamma(1.0, size=(400, 3))
    counts = np.c_[rng.poisson(np.repeat(factors, 5, axis=1)), np.zeros((400, 2), int)]
    counts[0, -1] = 1  # a gene seen in one cell: too rare to place
    labels = gene_clusters(counts, 3, n_components=5)
    assert (labels[-2:] == -1).all()
    groups = labels[:15].reshape(3, 5)
    assert all(len(set(row)) == 1 for row in groups)  # each factor's genes together ...
    assert len({row[0] for row in groups}) == 3  # ... and apart from the others'
    assert (gene_clusters(counts, 3, n_components=5) == labels).all()  # deterministic


def test_cluster_mask_keeps_one_cluster_per_neuron():
    layer = MaskedLinear(6, 3)
    with torch.no_grad():
        layer.weight.copy_(
            torch.tensor(
                [[5.0, 4.0, 0.1, 0.1, 0.0, 9.0], [0.0, 0.1, 1.0, 1.0, 0.0, 0.0], [1.0] * 6]
            )
        )
    labels = np.array([0, 0, 1, 1, 2, -1])  # the last gene is in no cluster
    keep = cluster_mask(layer, labels, torch.tensor([1.0, 1.0, 1.0, 1.0, 5.0, 1.0]))
    expected = [[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 0]]
    assert keep.tolist() == expected  # neuron 2: the input scale makes gene 4 weigh most


@pytest.mark.parametrize("per_neuron", [1, 2])
def test_prune_by_modules_keeps_each_neuron_within_its_clusters(model, monkeypatch, per_neuron):
    import zipo_scvi._sparsity as sparsity_module

    schedule = {**PRUNE_SCHEDULE, "min_module_genes": 5}
    monkeypatch.setattr(sparsity_module, "PRUNE_SCHEDULE", schedule)
    counts = model.adata.X[np.sort(model.train_indices)]
    labels = gene_clusters(counts, 4, min_size=5)
    assert len(set(labels) - {-1}) == 4
    report = model.prune(
        sparsity=0.5, modules=4, clusters_per_neuron=per_neuron, max_epochs=2, batch_size=64
    )
    weight = model.module.encoder.first.effective_weight().detach().numpy()
    assert report["modules"] == 4 and report["clusters_per_neuron"] == per_neuron
    assert report["fraction_pruned"] >= 0.5
    for row in weight:
        used = set(labels[row != 0])
        assert len(used) <= per_neuron and -1 not in used
    assert gene_clusters(counts, 4, min_size=50).max() == 0  # 60 genes: one cluster
    with pytest.raises(ValueError, match="number of gene clusters"):
        model.prune(modules=-1)
    with pytest.raises(ValueError, match="number of gene clusters"):
        model.prune(modules=True)
    with pytest.raises(ValueError, match="clusters_per_neuron must be"):
        model.prune(clusters_per_neuron=0)


# ---------------------------------------------------------------------- modules
def test_importance_down_weights_a_rare_gene():
    w = np.array([[3.0, 1.0, 0.5]])
    assert gene_modules(w, ["rare", "a", "b"], n_top=1)["gene"].tolist() == ["rare"]
    scale = np.array([0.05, 1.0, 1.0])  # the rare gene's input is almost always zero
    assert importance_scores(w, scale).ravel().tolist() == pytest.approx([0.15, 1.0, 0.5])
    table = gene_modules(w, ["rare", "a", "b"], input_scale=scale)
    assert table["gene"].tolist() == ["a", "b", "rare"]
    assert table["importance"].iloc[0] == 1.0
    with pytest.raises(ValueError, match="input scales"):
        importance_scores(w, scale[:2])


def test_model_modules_rank_by_input_scale(model):
    layer = model.module.encoder.first
    scale = model.input_scale()
    rare, common = int(scale.argmin()), int(scale.argmax())
    with torch.no_grad():
        layer.weight[0].fill_(0.01)
        layer.weight[0, rare] = 1.0
        layer.weight[0, common] = 1.0 * float(scale[rare] / scale[common]) * 2 + 0.1
    plain = model.get_gene_modules(n_top=1, weigh_by_input=False)
    weighed = model.get_gene_modules(n_top=1)
    genes = model.adata.var_names
    assert plain.loc[plain.neuron == 0, "gene"].item() == genes[rare]
    assert weighed.loc[weighed.neuron == 0, "gene"].item() == genes[common]
    counts = np.asarray(model.adata.X.todense())
    x = np.log1p(counts / counts.sum(1, keepdims=True) * float(model.module.input_target_sum))
    np.testing.assert_allclose(scale.numpy(), x.std(0), rtol=1e-3, atol=1e-4)


def test_module_coherence_on_a_constructed_example():
    rng = np.random.default_rng(0)
    n = 400
    factor = rng.gamma(2.0, size=(n, 1))
    coexpressed = rng.poisson(factor * np.ones((1, 6)))
    independent = rng.poisson(np.ones((n, 60)) * rng.uniform(0.05, 3, size=60))
    x = np.c_[coexpressed, independent].astype(float)
    table = module_coherence(x, [range(6), range(6, 12), [3], []], n_random=100)
    assert table["coherent"].tolist() == [True, False, False, False]
    assert table.loc[0, "mean_corr"] > table.loc[0, "null_quantile"] > table.loc[0, "null_mean"]
    assert table.loc[2, "n_genes"] == 1 and np.isnan(table.loc[2, "mean_corr"])
    # the statistic is the mean pairwise correlation
    direct = np.corrcoef(x[:, :6].T)[np.triu_indices(6, 1)].mean()
    assert table.loc[0, "mean_corr"] == pytest.approx(direct, rel=1e-5)


def test_gene_module_coherence_of_a_model(model):
    table = model.gene_module_coherence(n_top=4, n_random=20)
    assert len(table) == model.module.encoder.first.out_features
    assert table["n_genes"].max() == 4
    assert table["coherent"].dtype == bool
    first = model.get_gene_modules(n_top=4)
    assert table.loc[0, "genes"].split(",") == first.loc[first.neuron == 0, "gene"].tolist()
