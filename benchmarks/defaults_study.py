"""Quick single-seed MCV screen of ZIPO settings against scVI (the issue-9 defaults study).

Usage: ``[DS=pbmc3k|immune559] python benchmarks/defaults_study.py NAME='{kwargs}' ...`` where
kwargs are ZIPO arguments plus ``"train": {...}`` for ``model.train``; a NAME starting with
``scvi`` runs scvi-tools' SCVI with those arguments. Prints the held-out Poisson loss, the MSE
against held-out molecules and against the truth (simulator; the counts on real data) and the
k-means ARI of the latents. The runs behind the default preset are in
``benchmarks/results/defaults_study/runs.log``.
"""

import ast
import logging
import os
import sys
import time
import warnings

import anndata
import numpy as np
import scanpy as sc
import scipy.sparse as sp
import scvi
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from zipo_scvi import ZIPO
from zipo_scvi.data import _real, simulate_counts

warnings.filterwarnings("ignore")
for name in ("lightning", "lightning.pytorch", "scvi"):
    logging.getLogger(name).setLevel(logging.ERROR)
torch.set_num_threads(1)


def split(x, seed):
    kept = np.random.default_rng(seed).binomial(x.astype(np.int64), 0.9).astype(np.float32)
    return kept, x - kept


def score(denoised, x, y, truth):
    scaled = denoised * y.sum() / x.sum()
    poisson = np.mean(scaled - y * np.log(scaled + 1e-6))

    def lognorm(a):
        return np.log1p(a / a.sum(1, keepdims=True).clip(1e-12) * 1e4)

    mse = np.mean((lognorm(denoised) - lognorm(y)) ** 2)
    return poisson, mse, np.mean((lognorm(denoised) - lognorm(truth)) ** 2)


def load(dataset):
    if dataset == "sim":
        adata = simulate_counts(1500, 800, n_groups=6, seed=1, dropout_midpoint=0.0)
        return adata, adata.layers["true_rate"]
    adata = _real.REAL_DATASETS[dataset]()
    sc.pp.filter_genes(adata, min_cells=10)
    if adata.n_vars > 3000:
        sc.pp.highly_variable_genes(adata, n_top_genes=3000, flavor="seurat_v3")
        adata = adata[:, adata.var.highly_variable].copy()
    adata.obs["group"] = adata.obs.get("cluster", "x")
    adata.obs["group"] = adata.obs["group"].astype("category")
    return adata, adata.X.toarray() + 0.01


def fit(name, kwargs, adata, x_train):
    kwargs = dict(kwargs)
    train_kwargs = kwargs.pop("train", {})
    scvi.settings.seed = 0
    if name.startswith("scvi"):
        scvi.model.SCVI.setup_anndata(adata)
        model = scvi.model.SCVI(adata, **kwargs)
        model.train(enable_progress_bar=False, early_stopping=True, **train_kwargs)
        mu = model.get_normalized_expression(library_size=1, return_numpy=True)
        return model, {"": mu * x_train.sum(1, keepdims=True)}
    ZIPO.setup_anndata(adata)
    model = ZIPO(adata, **kwargs)
    model.train(enable_progress_bar=False, **train_kwargs)
    outputs = {"": model.get_normalized_expression(library_size="observed", return_numpy=True)}
    params = model.get_likelihood_parameters()
    outputs["@latent"] = params["rate"]
    if "zero_prob" in params:
        mean = params["mean"]
        outputs["@mean"] = mean / mean.sum(1, keepdims=True) * x_train.sum(1, keepdims=True)
    return model, outputs


def main():
    data, truth = load(os.environ.get("DS", "sim"))
    x = data.X.toarray()
    x_train, y = split(x, 0)
    keep = x_train.sum(0) > 0
    x_train, y, truth = x_train[:, keep], y[:, keep], truth[:, keep]
    groups = data.obs["group"].cat.codes.to_numpy()
    adata = anndata.AnnData(sp.csr_matrix(x_train))
    print(
        "none",
        "pois={:.5f} mse={:.4f} mse_truth={:.4f}".format(*score(x_train, x_train, y, truth)),
    )
    for arg in sys.argv[1:]:
        name, text = arg.split("=", 1)
        start = time.time()
        model, outputs = fit(name, ast.literal_eval(text), adata, x_train)
        latent = model.get_latent_representation()
        k = max(2, len(set(groups)))
        ari = adjusted_rand_score(groups, KMeans(k, n_init=5, random_state=0).fit_predict(latent))
        key = "train_loss_epoch" if "train_loss_epoch" in model.history else "train_loss"
        epochs = len(model.history[key])
        for suffix, denoised in outputs.items():
            pois, mse, mse_truth = score(denoised, x_train, y, truth)
            print(
                f"{name}{suffix} pois={pois:.5f} mse={mse:.4f} mse_truth={mse_truth:.4f} "
                f"ari={ari:.2f} epochs={epochs} t={time.time() - start:.0f}s",
                flush=True,
            )


if __name__ == "__main__":
    main()
