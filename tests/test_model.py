"""ZIPO end to end on small simulated data: every public method, sparse/dense, save/load."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from zipo_scvi import ZIPO, ZiPoModule, preset
from zipo_scvi.data import simulate_counts

from .conftest import FAST, TINY

COVS = {
    "batch_key": "batch",
    "categorical_covariate_keys": ["group"],
    "continuous_covariate_keys": ["pct_mito"],
}


@pytest.fixture
def model(adata):
    ZIPO.setup_anndata(adata, **COVS)
    m = ZIPO(adata, **TINY)
    m.train(**FAST)
    return m


@pytest.mark.parametrize("likelihood", ["zip", "zinb", "poisson", "nb"])
def test_every_public_method(adata, likelihood):
    ZIPO.setup_anndata(adata, **COVS)
    model = ZIPO(adata, likelihood=likelihood, **TINY)
    assert "ZIPO" in repr(model)
    model.train(**FAST)
    n, g = adata.shape
    latent = model.get_latent_representation()
    assert latent.shape == (n, 8) and np.isfinite(latent).all()
    mu = model.get_normalized_expression()
    assert isinstance(mu, pd.DataFrame) and mu.shape == (n, g)
    np.testing.assert_allclose(mu.sum(1), 1.0, rtol=1e-4)
    assert list(mu.columns) == list(adata.var_names)
    scaled = model.get_normalized_expression(library_size=1e4, return_numpy=True)
    np.testing.assert_allclose(scaled, mu.to_numpy() * 1e4, rtol=1e-4)
    observed = model.get_normalized_expression(library_size="observed", return_numpy=True)
    np.testing.assert_allclose(observed.sum(1), np.asarray(adata.X.sum(1)).ravel(), rtol=1e-3)
    params = model.get_likelihood_parameters()
    latent_expr = model.get_normalized_expression(library_size="latent", return_numpy=True)
    mu_np = mu.to_numpy()
    np.testing.assert_allclose(latent_expr, mu_np * params["library"][:, None], rtol=1e-4)
    # the likelihood's rate uses the observed library by default (the paper: the predicted one)
    assert model.module.library_source == "observed"
    np.testing.assert_allclose(params["rate"], observed, rtol=1e-4)
    assert params["library"].shape == (n,)
    assert ("zero_prob" in params) == likelihood.startswith("zi")
    assert ("dispersion" in params) == likelihood.endswith("nb")
    if "zero_prob" in params:
        np.testing.assert_allclose(
            params["mean"], params["rate"] * (1 - params["zero_prob"]), rtol=1e-5
        )
    sub = model.get_normalized_expression(indices=[0, 3], gene_list=["gene1", "gene5"])
    assert sub.shape == (2, 2) and list(sub.index) == ["cell0", "cell3"]
    other_batch = model.get_normalized_expression(transform_batch="batch1", return_numpy=True)
    assert other_batch.shape == (n, g)
    err = model.get_reconstruction_error()
    assert np.isfinite(err["nll"]) and err["nll"] > 0 and err["mse"] >= 0
    samples = model.posterior_predictive_sample(n_samples=3)
    assert samples.shape == (n, g, 3) and (samples >= 0).all()
    assert model.posterior_predictive_sample().shape == (n, g)


@pytest.mark.parametrize("likelihood", ["zip", "poisson"])
def test_log_normalized_expression(adata, likelihood):
    from zipo_scvi._distributions import get_likelihood
    from zipo_scvi._metrics import mcv_log_mse

    ZIPO.setup_anndata(adata, batch_key="batch")
    model = ZIPO(adata, likelihood=likelihood, **TINY)
    model.train(**FAST)
    n, g = adata.shape
    logged = model.get_log_normalized_expression()
    assert isinstance(logged, pd.DataFrame) and logged.shape == (n, g)
    assert np.isfinite(logged.to_numpy()).all() and (logged.to_numpy() >= 0).all()
    # below log1p of the rates (Jensen), most for the rarest genes
    shares = model.get_normalized_expression(return_numpy=True)
    totals = np.asarray(adata.X.sum(1)).ravel()
    assert (logged.to_numpy() <= np.log1p(1e4 * shares) + 1e-5).all()
    # one depth per cell, here each cell's total: the same as "observed"
    per_cell = model.get_log_normalized_expression(library_size=totals, return_numpy=True)
    np.testing.assert_allclose(per_cell, logged.to_numpy(), rtol=1e-5, atol=1e-6)
    # the expectation under the likelihood, from the model's own shares (and zero inflation)
    heads = {"log_rate": torch.log(torch.tensor(shares * 50.0, dtype=torch.float64))}
    if likelihood == "zip":
        zero = model.get_likelihood_parameters()["zero_prob"]
        heads["logit_z"] = torch.logit(torch.tensor(zero, dtype=torch.float64))
    ref = get_likelihood(likelihood).expected_log1p(heads, 1e4 / 50.0).numpy()
    at_50 = model.get_log_normalized_expression(library_size=50, return_numpy=True)
    np.testing.assert_allclose(at_50, ref, rtol=1e-4, atol=1e-6)
    if likelihood == "poisson":  # the benchmark's score scores exactly this output
        kept = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
        held = np.random.default_rng(0).poisson(0.1 * kept)
        depth = totals * held.sum() / kept.sum()
        direct = model.get_log_normalized_expression(library_size=depth, return_numpy=True)
        norm = held / np.maximum(held.sum(1, keepdims=True), 1) * 1e4
        mse = np.mean((direct - np.log1p(norm)) ** 2)
        assert mcv_log_mse(shares, kept, held) == pytest.approx(mse, rel=1e-4)
    sub = model.get_log_normalized_expression(
        indices=[0, 3], gene_list="gene5", library_size=[100.0, 0.0], transform_batch="batch1"
    )
    assert sub.shape == (2, 1) and sub.iloc[1, 0] == 0.0  # depth 0: nothing to see
    with pytest.raises(ValueError, match="one per cell"):
        model.get_log_normalized_expression(library_size=[1.0, 2.0])
    with pytest.raises(ValueError, match="finite and non-negative"):
        model.get_log_normalized_expression(library_size=np.full(n, -1.0))
    with pytest.raises(ValueError, match="target_sum"):
        model.get_log_normalized_expression(target_sum=0)
    with pytest.raises(ValueError, match="library_size"):
        model.get_log_normalized_expression(library_size="total")


def test_history_has_nll_and_mse_per_epoch(model):
    # training series every epoch; validation every few epochs on few cells (here: the last)
    for key in ("nll_train", "mse_train"):
        assert len(model.history[key]) == FAST["max_epochs"]
    for key in ("nll_validation", "mse_validation", "validation_loss"):
        assert model.history[key].index.to_list() == [FAST["max_epochs"] - 1]


def test_training_lowers_the_loss(adata):
    ZIPO.setup_anndata(adata)
    model = ZIPO(adata, **TINY)
    model.train(max_epochs=15, enable_progress_bar=False, batch_size=64, early_stopping=False)
    nll = model.history["nll_train"]["nll_train"].to_numpy()
    assert nll[-1] < nll[0]


def test_paper_preset_is_the_papers_configuration(adata):
    ZIPO.setup_anndata(adata)
    model = ZIPO(adata, preset="paper")
    h = model.hyperparameters
    assert h["encoder_sizes"] == (2048, 1024, 512, 256, 128)
    assert (h["likelihood"], h["residuals"], h["activation"]) == ("zip", "full", "sigmoid")
    assert h["alpha_z"] == h["alpha_w"] == 0.1
    assert model._train_defaults["lr"] == 0.0212
    assert len(model.module.encoder.residuals) == 4


def test_paper_lr_schedule(adata):
    ZIPO.setup_anndata(adata)
    model = ZIPO(adata, preset="paper", encoder_sizes=(16, 4))
    lrs = []

    from lightning.pytorch.callbacks import Callback

    class Record(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 0:
                lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    model.train(
        max_epochs=33, enable_progress_bar=False, callbacks=[Record()], early_stopping=False
    )
    assert lrs[0] == pytest.approx(0.0212)
    assert lrs[1] == pytest.approx(0.0212 * 0.9)
    assert lrs[29] == pytest.approx(0.001, rel=1e-6) or lrs[29] == pytest.approx(0.0212 * 0.9**29)
    assert lrs[31] <= 0.001 + 1e-12


def test_fine_tuning_continues_from_current_weights(model, adata):
    before = model.get_latent_representation()
    weight = model.module.encoder.first.weight.detach().clone()
    model.train(max_epochs=1, enable_progress_bar=False, batch_size=64)
    assert model.module.encoder.first.weight.shape == weight.shape
    assert not torch.equal(model.module.encoder.first.weight, weight)  # trained further
    assert len(model.history["train_loss"]) == FAST["max_epochs"] + 1
    assert not np.allclose(before, model.get_latent_representation())


def test_sparse_and_dense_give_the_same_result(adata):
    results = []
    for matrix in (adata.X.tocsr(), adata.X.toarray(), sp.csc_matrix(adata.X)):
        a = adata.copy()
        a.X = matrix
        ZIPO.setup_anndata(a, batch_key="batch")
        m = ZIPO(a, seed=1, **TINY)
        m.train(seed=1, **FAST)
        results.append(m.get_latent_representation())
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-5)
    assert np.isfinite(results[2]).all()  # CSC trains (scvi reads its rows in another order)


def test_same_seed_same_result(adata):
    out = []
    for _ in range(2):
        a = adata.copy()
        ZIPO.setup_anndata(a)
        m = ZIPO(a, seed=3, **TINY)
        m.train(seed=3, **FAST)
        out.append(m.get_normalized_expression(return_numpy=True))
    np.testing.assert_array_equal(out[0], out[1])


def test_sparse_minibatches_through_the_module(adata):
    ZIPO.setup_anndata(adata)
    m = ZIPO(adata, **TINY)
    m.train(load_sparse_tensor=True, **FAST)
    assert np.isfinite(m.get_latent_representation()).all()


def test_save_load_round_trip(model, adata, tmp_path):
    model.save(tmp_path / "m", overwrite=True)
    loaded = ZIPO.load(tmp_path / "m", adata=adata)
    np.testing.assert_array_equal(
        model.get_latent_representation(), loaded.get_latent_representation()
    )
    np.testing.assert_array_equal(
        model.get_normalized_expression(return_numpy=True),
        loaded.get_normalized_expression(return_numpy=True),
    )
    assert loaded.hyperparameters == model.hyperparameters


def test_load_onto_new_data_and_fine_tune(model, adata, tmp_path):
    model.save(tmp_path / "m", overwrite=True)
    new = adata[:80].copy()
    loaded = ZIPO.load(tmp_path / "m", adata=new)
    loaded.train(max_epochs=1, enable_progress_bar=False, batch_size=32)
    assert loaded.get_latent_representation().shape == (80, 8)


def test_load_with_different_genes_is_a_clear_error(model, adata, tmp_path):
    model.save(tmp_path / "m", overwrite=True)
    other = adata[:, :50].copy()
    with pytest.raises(ValueError, match="genes of this AnnData do not match"):
        ZIPO.load(tmp_path / "m", adata=other)


def test_zero_count_cells_are_fine(adata):
    x = adata.X.toarray()
    x[:5] = 0
    adata.X = sp.csr_matrix(x)
    ZIPO.setup_anndata(adata)
    m = ZIPO(adata, **TINY)
    m.train(**FAST)
    assert np.isfinite(m.get_latent_representation()).all()
    assert np.isfinite(
        m.get_normalized_expression(library_size="observed", return_numpy=True)
    ).all()


@pytest.mark.parametrize("transform", ["none", "log1p", "log1p_norm"])
@pytest.mark.parametrize("residuals", ["full", "none"])
def test_module_options(transform, residuals):
    module = ZiPoModule(
        30,
        encoder_sizes=(16, 8, 4),
        input_transform=transform,
        residuals=residuals,
        activation="gelu",
        decoder_sizes=(8,),
        norm_order="bn_act",
    )
    x = torch.poisson(torch.full((10, 30), 3.0))
    inf = module.inference(x)
    gen = module.generative(**inf)
    out = module.loss({"X": x}, inf, gen)
    assert out.reconstruction_loss["reconstruction_loss"].shape == (10,)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert len(module.encoder.residuals) == (2 if residuals == "full" else 0)


@pytest.mark.parametrize("source", ["observed", "latent"])
def test_library_source_keeps_depth_out_of_the_latents(source):
    module = ZiPoModule(30, encoder_sizes=(16, 4), library_source=source)
    x = torch.poisson(torch.rand(12, 30) * 6)
    tensors = {"X": x}
    inf = module.inference(x)
    gen = module.generative(**module._get_generative_input(tensors, inf))
    rate_totals = gen["log_rate"].exp().sum(1)
    if source == "observed":  # the likelihood's rate: mu times the cell's total count
        torch.testing.assert_close(rate_totals, x.sum(1))
    else:  # the paper: mu times the predicted library
        torch.testing.assert_close(rate_totals, gen["log_library"].exp().squeeze(1))
    # the library subnetwork's loss reaches the encoder only when the likelihood uses it
    gen["log_library"].sum().backward()
    grad = module.encoder.first.weight.grad
    assert (grad is None or not grad.any()) == (source == "observed")
    assert any(p.grad is not None and p.grad.any() for p in module.library.parameters())
    loss = module.loss(
        tensors, inf, module.generative(**module._get_generative_input(tensors, inf))
    )
    assert torch.isfinite(loss.loss)
    assert ("library_nll" in loss.extra_metrics) == (source == "observed")


def test_unknown_library_source_is_named():
    with pytest.raises(ValueError, match="library_source"):
        ZiPoModule(30, encoder_sizes=(16, 4), library_source="predicted")


def test_sparse_csr_input_equals_dense_in_the_module():
    module = ZiPoModule(30, encoder_sizes=(16, 4), input_transform="log1p_norm").eval()
    x = torch.poisson(torch.full((10, 30), 0.5))
    dense = module.inference(x)["z"]
    sparse = module.inference(x.to_sparse_csr())["z"]
    torch.testing.assert_close(dense, sparse)


def test_eval_latents_stay_on_the_scale_of_training(adata):
    """Hazard from SPEC: sigmoid + BatchNorm can blow latents up in eval mode."""
    ZIPO.setup_anndata(adata)
    m = ZIPO(adata, **TINY)
    m.train(max_epochs=10, enable_progress_bar=False, batch_size=64, train_size=0.9)
    held_out = adata[m.validation_indices].copy()
    z = m.get_latent_representation(held_out)
    assert np.abs(z).max() < 100 * z.std(0).mean() + 1


def test_unknown_arguments_are_clear_errors(adata):
    ZIPO.setup_anndata(adata)
    with pytest.raises(TypeError, match="n_layers"):
        ZIPO(adata, n_layers=3)
    with pytest.raises(ValueError, match="likelihood"):
        ZIPO(adata, likelihood="gaussian")
    with pytest.raises(ValueError, match="activation"):
        ZIPO(adata, activation="tanh")
    with pytest.raises(ValueError, match="preset"):
        preset("fast")
    m = ZIPO(adata, **TINY)
    with pytest.raises(ValueError, match="validation"):
        m.train(validation="genes", **FAST)
    with pytest.raises(ValueError, match="library_size"):
        m.get_normalized_expression(library_size="median")
    with pytest.raises(ValueError, match="transform_batch"):
        m.get_normalized_expression(transform_batch="nope")


@pytest.mark.parametrize("content", [None, b"not a torch file"])
def test_load_from_a_folder_without_a_model_is_a_clear_error(adata, tmp_path, content):
    folder = tmp_path / "m"
    folder.mkdir()
    if content is not None:
        (folder / "model.pt").write_bytes(content)
    ZIPO.setup_anndata(adata)
    with pytest.raises(ValueError, match="does not hold a saved ZIPO model"):
        ZIPO.load(folder, adata=adata)


def test_latent_noise_only_while_training():
    module = ZiPoModule(30, encoder_sizes=(16, 4), latent_noise=0.3)
    x = torch.poisson(torch.full((20, 30), 3.0))
    module.train()
    torch.manual_seed(0)
    first, second = module.inference(x)["z"], module.inference(x)["z"]
    assert not torch.allclose(first, second)
    module.eval()
    torch.testing.assert_close(module.inference(x)["z"], module.inference(x)["z"])


def test_paper_preset_zinb_stays_finite():
    """At lr 0.0212 the dispersion head once drove log(theta) to 100 (theta = inf in float32)."""
    adata = simulate_counts(n_cells=400, n_genes=200, seed=0, dropout_midpoint=0.0)
    ZIPO.setup_anndata(adata)
    model = ZIPO(adata, preset="paper", likelihood="zinb", encoder_sizes=(64, 16), seed=0)
    model.train(max_epochs=4, enable_progress_bar=False, early_stopping=False)
    assert np.isfinite(model.history["nll_train"].to_numpy(float)).all()
    theta = model.get_likelihood_parameters()["dispersion"]
    assert np.isfinite(theta).all() and theta.max() <= 1e4 * 1.001


def test_training_without_validation_cells(adata):
    ZIPO.setup_anndata(adata)
    model = ZIPO(adata, **TINY)
    quiet = {"max_epochs": 3, "enable_progress_bar": False, "batch_size": 64}
    model.train(train_size=1.0, validation="molecules", **quiet)
    assert "validation_loss" not in model.history and len(model.history["train_loss"]) == 3
    # the default validates on every cell's held-out molecules, so all cells may train
    model = ZIPO(adata, **TINY)  # (scvi's history of a continued training keeps the first keys)
    model.train(train_size=1.0, validation_steps=0, **quiet)  # validated every epoch
    assert len(model.history["validation_loss"]) == 3 and model.validation_mode == "mcv"


def test_scale_invariant_penalty_matches_autograd_and_is_scale_invariant():
    from zipo_scvi._module import scale_invariant_penalty

    torch.manual_seed(0)
    w = torch.randn(6, 40, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(scale_invariant_penalty, (w,))
    ref = (w.abs().mean(1) / w.pow(2).mean(1).sqrt()).mean()
    torch.testing.assert_close(scale_invariant_penalty(w), ref)
    scaled = w.detach() * torch.rand(6, 1, dtype=torch.float64).add(0.1).mul(100)
    torch.testing.assert_close(scale_invariant_penalty(scaled), ref.detach())
    # a neuron with all weights zero does not make it NaN
    dead = torch.zeros(2, 5, requires_grad=True)
    scale_invariant_penalty(dead).backward()
    assert torch.isfinite(dead.grad).all()


def test_schedule_names_are_accepted_by_train(adata):
    ZIPO.setup_anndata(adata)
    model = ZIPO(adata, **TINY)
    model.train(**FAST, weight_decay=1e-3, lr_decay=0.5)
    optimizer = model.trainer.optimizers[0]
    assert optimizer.param_groups[0]["weight_decay"] == pytest.approx(1e-3)
    assert optimizer.defaults["fused"]  # one pass per parameter per step on CPU


def test_input_dropout_keeps_zeros_and_sparse_layout():
    from zipo_scvi._components import drop_input

    torch.manual_seed(0)
    x = torch.poisson(torch.full((200, 100), 0.5))
    out = drop_input(x, 0.25)
    assert torch.equal(out[x == 0], torch.zeros_like(out[x == 0]))
    kept = out[x > 0] / x[x > 0]
    assert (
        torch.isclose(kept, torch.tensor(0.0))
        .logical_or(torch.isclose(kept, torch.tensor(1 / 0.75)))
        .all()
    )
    assert abs(float((kept == 0).float().mean()) - 0.25) < 0.03
    csr = drop_input(x.to_sparse_csr(), 0.25)
    assert csr.layout == torch.sparse_csr and csr.values().numel() == int((x > 0).sum())
    assert drop_input(x, 0.0) is x


def test_input_target_sum_scales_the_encoder_input():
    from zipo_scvi._components import INPUT_TRANSFORMS

    x = torch.poisson(torch.full((6, 30), 2.0))
    x[0] = 0  # an empty cell stays zero
    got = INPUT_TRANSFORMS["log1p_norm"](x, torch.tensor(50.0))
    total = x.sum(1, keepdim=True).clamp_min(1)
    torch.testing.assert_close(got, torch.log1p(x * 50.0 / total))
    module = ZiPoModule(30, encoder_sizes=(16, 4), input_target_sum=50.0)
    assert float(module.state_dict()["input_target_sum"]) == 50.0


def test_median_input_target_sum_is_fixed_at_training(adata, tmp_path):
    ZIPO.setup_anndata(adata)
    m = ZIPO(adata, input_target_sum="median", **TINY)
    median = float(np.median(np.asarray(adata.X.sum(1)).ravel()))
    assert float(m.module.input_target_sum) == median
    assert m.hyperparameters["input_target_sum"] == "median"
    m.train(**FAST)
    m.save(tmp_path / "m", overwrite=True)
    # a new data set with another median is read on the training data's scale
    new = adata[:60].copy()
    new.X = new.X * 3
    loaded = ZIPO.load(tmp_path / "m", adata=new)
    assert float(loaded.module.input_target_sum) == median
    np.testing.assert_allclose(
        loaded.get_latent_representation(), m.get_latent_representation(new), rtol=1e-6
    )


def test_models_saved_without_an_input_target_sum_read_1e4(adata):
    ZIPO.setup_anndata(adata)
    state = ZIPO(adata, **TINY).module.state_dict()
    del state["input_target_sum"]
    module = ZIPO(adata, input_target_sum=77.0, **TINY).module
    module.load_state_dict(state)
    assert float(module.input_target_sum) == 1e4


@pytest.mark.parametrize("value", [0, -5.0, "mean"])
def test_bad_input_target_sum_is_named(adata, value):
    ZIPO.setup_anndata(adata)
    with pytest.raises(ValueError, match="input_target_sum"):
        ZIPO(adata, input_target_sum=value, **TINY)
