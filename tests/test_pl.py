"""Plots of zipo_scvi.pl: history, embedding, denoised vs raw, zero inflation, report."""

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from zipo_scvi import ZIPO, pl
from zipo_scvi.data import simulate_counts
from zipo_scvi.pp import training_history


@pytest.fixture(scope="module")
def trained():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    adata = simulate_counts(n_cells=80, n_genes=25, n_groups=2, seed=4)
    ZIPO.setup_anndata(adata)
    model = ZIPO(adata, likelihood="zip", encoder_sizes=(16, 4), library_sizes=(8, 4), seed=0)
    model.train(max_epochs=10, batch_size=32, enable_progress_bar=False)  # validated at 5, 10
    adata.obsm["X_zipo"] = model.get_latent_representation()
    adata.layers["zipo_denoised"] = model.get_normalized_expression(
        library_size="latent", return_numpy=True
    )
    adata.layers["zipo_zero_prob"] = model.get_likelihood_parameters()["zero_prob"]
    adata.uns["zipo"] = {"history": training_history(model)}
    yield model, adata
    torch.set_num_threads(threads)


def test_history_from_model_anndata_and_mapping(trained):
    model, adata = trained
    # validation every few epochs (the default on few cells): the history's index is the epoch
    validation_loss = model.history["validation_loss"].iloc[:, 0].astype(float)
    assert len(validation_loss) < len(model.history["train_loss"])
    best = int(validation_loss.idxmin()) + 1
    for source in (model, adata, adata.uns["zipo"]["history"]):
        fig = pl.history(source)
        # training (top row) and validation (bottom row) on separate axes, NLL and MSE columns
        assert isinstance(fig, Figure) and len(fig.axes) == 4
        train, validation = fig.axes[0], fig.axes[2]
        assert train.get_title().startswith("NLL, training")
        assert validation.get_title().startswith("NLL, validation")
        assert [line.get_label() for line in train.lines] == ["train", f"best epoch {best}"]
        assert validation.lines[0].get_label() == "validation"
        expected = model.history["nll_train"].iloc[:, 0].to_numpy(dtype=float)
        np.testing.assert_allclose(np.asarray(train.lines[0].get_ydata(), dtype=float), expected)
        expected = model.history["nll_validation"].iloc[:, 0].astype(float)
        np.testing.assert_allclose(np.asarray(validation.lines[0].get_ydata(), float), expected)
        np.testing.assert_array_equal(validation.lines[0].get_xdata(), expected.index + 1)
        assert list(validation.lines[1].get_xdata()) == [best, best]  # the best-epoch marker
    assert "held-out molecules" in pl.history(model).axes[2].get_title()
    assert len(pl.history(model, metrics=("nll",)).axes) == 2
    with pytest.raises(KeyError, match="none of"):
        pl.history(model, metrics=("accuracy",))
    with pytest.raises(KeyError, match="uns"):
        pl.history(simulate_counts(n_cells=5, n_genes=4))


def test_history_marks_the_epoch_of_what_stopping_watched():
    from zipo_scvi.pl._plots import _best_epoch, _watched

    table = {"validation_loss": np.array([3.0, 2.0, 2.5]), "nll_validation": np.array([3, 1, 2.0])}
    table["nll_validation"][2] = 0.5
    assert _best_epoch(table, ("nll",)) == 2  # the loss's best
    assert _best_epoch(table, ("nll",), "nll_validation") == 3
    adata = simulate_counts(n_cells=5, n_genes=4)
    adata.uns["zipo"] = {"settings": {"train": {"stopping_metric": "nll"}}}
    assert _watched(adata) == "nll_validation"
    adata.uns["zipo"] = {"settings": {"model": {"preset": "paper"}}}
    assert _watched(adata) == "validation_loss"


def test_embedding_tsne_by_obs_and_gene_and_errors(trained):
    _, adata = trained
    keys = set(adata.obsm)
    fig = pl.embedding(adata, color="group", basis="tsne")
    assert "TSNE" in fig.axes[0].get_title() and set(adata.obsm) == keys  # adata unchanged
    points = fig.axes[0].collections[0].get_offsets()
    assert points.shape[0] == adata.n_obs and np.isfinite(points).all()
    assert pl.embedding(adata, color=adata.var_names[0], basis="tsne").axes
    with pytest.raises(ValueError, match="basis"):
        pl.embedding(adata, basis="pca")
    with pytest.raises(KeyError, match="X_other"):
        pl.embedding(adata, use_rep="X_other")
    with pytest.raises(KeyError, match="neither an obs column nor a gene"):
        pl.embedding(adata, color="nope")


def test_denoised_vs_raw_panels_and_errors(trained):
    _, adata = trained
    genes = list(adata.var_names[:2])
    fig = pl.denoised_vs_raw(adata, genes=genes)
    assert [ax.get_title() for ax in fig.axes] == genes
    raw = np.log1p(adata.X[:, 0].toarray().ravel())
    np.testing.assert_allclose(fig.axes[0].collections[0].get_offsets()[:, 0], raw)
    # default: the most variable genes, not the most expressed
    default = pl.denoised_vs_raw(adata, n_genes=3)
    chosen = [ax.get_title() for ax in default.axes]
    assert chosen == pl.informative_genes(adata, n=3) and len(set(chosen)) == 3
    totals = np.asarray(adata.X.sum(axis=0)).ravel()
    assert set(chosen) != set(adata.var_names[np.argsort(-totals)[:3]])
    with pytest.raises(KeyError, match="gene_x"):
        pl.denoised_vs_raw(adata, genes=["gene_x"])
    with pytest.raises(KeyError, match="missing_layer"):
        pl.denoised_vs_raw(adata, denoised_layer="missing_layer")


def test_zero_inflation_per_gene(trained):
    _, adata = trained
    fig = pl.zero_inflation(adata)
    left = fig.axes[0].collections[0].get_offsets()
    assert left.shape == (adata.n_vars, 2)
    np.testing.assert_allclose(left[:, 1], adata.layers["zipo_zero_prob"].mean(0), rtol=1e-5)
    with pytest.raises(KeyError, match="zipo_zero_prob"):
        pl.zero_inflation(simulate_counts(n_cells=5, n_genes=4))


def test_report_writes_pngs(trained, tmp_path):
    model, adata = trained
    paths = pl.report(adata, tmp_path / "r", basis="tsne", model=model)
    names = sorted(p.name for p in paths)
    assert names == ["denoised_vs_raw.png", "history.png", "latent_tsne.png", "zero_inflation.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
