"""A sparse first layer on real data with all detected genes: pruning, held-out loss, modules.

Usage (from the repository root)::

    nice -n 10 python benchmarks/sparsity.py pbmc3k immune559 sim hgmm1k --seeds 0
    python benchmarks/sparsity.py --render-only      # rebuild tables, figures and the docs page

For each dataset (every gene detected in at least one cell; the simulator of the denoising
benchmark) and seed: the molecules are split 90/10 by binomial thinning (MCV, ``_harness``);
ZIPO with the default preset is trained on the 90% (the "dense" model, cached on disk so that
every pruning variant starts from the same weights); then, scored by the held-out-molecule
Poisson loss of ``_harness.score_mcv`` on the same split:

- one-shot magnitude pruning of the dense model at several shares of zeros, without
  fine-tuning, scoring weights by ``|w| * std(input)`` and by ``|w|``;
- the paper's procedure, ``prune(delta=1e-4)`` (one shot, normalised weights);
- ``model.prune()`` (gradual pruning to 90% with fine-tuning, ``|w| * std(input)``), and the
  same with ``|w|`` alone;
- the gene modules' coherence (``ZIPO.gene_module_coherence``: top-10 genes per first-layer
  neuron, mean pairwise correlation of log-normalised expression against detection-matched
  random gene sets) and LDVAE's (scvi-tools ``LinearSCVI``, top-10 genes of each latent's
  loadings) on the same data;
- which modules carry which cell group's marker genes (pbmc3k: Leiden clusters of the
  log-normalised counts; hgmm1k: species), and the time of inference and of a training epoch
  with the pruned first layer.

Writes ``benchmarks/results/sparsity/{rows_<data>_<seed>.json,table.md,sparsity.png,
modules.png,speed_model.md}`` and the page ``docs/sparsity.md`` (with the paper-preset
study of ``benchmarks/sparsity_paper.py`` and its CSR timings).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import (
    SIM_DEFAULTS,
    _counts_only,
    _epochs,
    machine_info,
    mcv_split,
    quiet,
    score_mcv,
    update_docs_section,
    update_readme_section,
)

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "results" / "sparsity"
CACHE = Path(os.environ.get("ZIPO_SCVI_DATA", "~/.cache/zipo_scvi")).expanduser() / "sparsity"
ONE_SHOT = (0.5, 0.8, 0.9, 0.95, 0.98)
#: (kind, label, prune() arguments): the default, then what it was chosen against
GRADUAL = (
    ("default", "prune()", {}),
    ("one_cluster", "prune(clusters_per_neuron=1)", {"clusters_per_neuron": 1}),
    ("magnitude", "prune(modules=0)", {"modules": 0}),
    (
        "signed90",
        "prune(sparsity=0.9, nonnegative=False, modules=0)",
        {"sparsity": 0.9, "nonnegative": False, "modules": 0},
    ),
)
N_TOP = 10
COHERENCE = {"n_random": 200, "max_cells": 2000, "seed": 0}
LDVAE_EPOCHS = 300
MARKER_GROUPS = {"pbmc3k": "leiden", "hgmm1k": "species"}
N_MARKERS = 25


def load(name: str):
    """Counts with every detected gene (the simulator: the denoising benchmark's)."""
    from zipo_scvi.data import simulate_counts
    from zipo_scvi.data._real import load_hgmm1k, load_immune559, load_pbmc3k

    if name == "sim":
        return simulate_counts(**SIM_DEFAULTS, seed=0)
    adata = {"pbmc3k": load_pbmc3k, "immune559": load_immune559, "hgmm1k": load_hgmm1k}[name]()
    adata.var_names_make_unique()
    return adata


def _change(value: float, base: float) -> float:
    """Relative change of a held-out loss against the dense model's."""
    return (value - base) / abs(base)


def _mcv(model, train, test) -> float:
    denoised = model.get_normalized_expression(library_size="observed", return_numpy=True)
    return score_mcv(denoised, test, train)["poisson"]


def _default_key() -> str:
    """A short hash of the default preset's settings: a cached dense model is reused only while
    the default it was trained with is still the default."""
    import hashlib

    from zipo_scvi._defaults import preset

    text = json.dumps(preset("default"), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _dense(name: str, seed: int, train):
    """The dense default-preset model of this split, trained once and cached on disk."""
    from zipo_scvi import ZIPO

    path = CACHE / f"{name}_{seed}_{_default_key()}"
    adata = _counts_only(train)
    if not (path / "model.pt").exists():
        ZIPO.setup_anndata(adata)
        model = ZIPO(adata, seed=seed)
        start = time.perf_counter()
        model.train(seed=seed, enable_progress_bar=False)
        seconds = time.perf_counter() - start
        model.save(str(path), overwrite=True)
        np.savez(
            path / "split.npz",
            train=model.train_indices,
            validation=model.validation_indices,
            test=model.test_indices,
            seconds=seconds,
            epochs=len(model.history["train_loss"]),
            train_split=model._train_defaults["train_split"],
        )
    model = ZIPO.load(str(path), adata=adata)
    split = np.load(path / "split.npz")
    model.train_indices, model.validation_indices = split["train"], split["validation"]
    model.test_indices = split["test"]
    fit = {"seconds": float(split["seconds"]), "epochs": int(split["epochs"])}
    # models cached before training on split molecules became the default saw whole cells
    fit["train_split"] = float(split["train_split"]) if "train_split" in split else 1.0
    return model, fit


def _one_shot(model, train, test, sparsity: float, scale) -> float:
    """Held-out Poisson after one-shot magnitude pruning; the model is restored."""
    import torch

    from zipo_scvi._sparsity import magnitude_mask

    layer = model.module.encoder.first
    saved = layer.weight.detach().clone()
    try:
        keep = magnitude_mask(layer, sparsity, scale)
        with torch.no_grad():
            layer.weight.mul_(keep)
        return _mcv(model, train, test)
    finally:
        with torch.no_grad():
            layer.weight.copy_(saved)


def _coherence(model, seed: int) -> tuple[float, float, pd.DataFrame]:
    """Share of coherent modules, and the same for random weights on the same support.

    The control draws ``|N(0, 1)|`` weights with the layer's signs and zeros and ranks them the
    same way (``|w| x std(input)``): what the coherence test gives for modules that learned
    nothing, but read the same number of genes of the same kind.
    """
    import torch

    from zipo_scvi._metrics import log_normalise
    from zipo_scvi._sparsity import module_coherence

    table = model.gene_module_coherence(N_TOP, **COHERENCE)
    weight = model.module.encoder.first.effective_weight().detach()
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(weight.shape, generator=generator).abs().to(weight) * weight.sign()
    scores = noise.abs() * model.input_scale().to(weight).unsqueeze(0)
    top = torch.argsort(-scores, dim=1)[:, :N_TOP].cpu().numpy()
    counts = model.adata.X
    control = module_coherence(log_normalise(counts), top, **COHERENCE)
    return float(table["coherent"].mean()), float(control["coherent"].mean()), table


def _ldvae(train, test, seed: int) -> dict:
    """LDVAE (scvi-tools LinearSCVI, its defaults): held-out Poisson and loadings' coherence."""
    import scvi
    from scvi.model import LinearSCVI

    from zipo_scvi._metrics import log_normalise
    from zipo_scvi._sparsity import module_coherence

    adata = _counts_only(train)
    scvi.settings.seed = seed
    LinearSCVI.setup_anndata(adata)
    model = LinearSCVI(adata)
    start = time.perf_counter()
    model.train(
        max_epochs=LDVAE_EPOCHS,
        early_stopping=True,
        check_val_every_n_epoch=1,
        enable_progress_bar=False,
    )
    seconds = time.perf_counter() - start
    denoised = model.get_normalized_expression(library_size="latent", return_numpy=True)
    loadings = model.get_loadings()
    sets = [np.argsort(-np.abs(loadings[c].to_numpy()))[:N_TOP] for c in loadings.columns]
    table = module_coherence(log_normalise(adata.X), sets, **COHERENCE)
    return {
        "method": "LDVAE (LinearSCVI)",
        "poisson": score_mcv(denoised, test, train)["poisson"],
        "coherent": float(table["coherent"].mean()),
        "n_modules": len(sets),
        "seconds": seconds,
        "epochs": _epochs(model),
        "modules": [",".join(adata.var_names[s]) for s in sets],
    }


def _markers(adata, name: str) -> dict[str, list[str]] | None:
    """Top marker genes of each cell group (scanpy ``rank_genes_groups``, t-test)."""
    import scanpy as sc

    if name not in MARKER_GROUPS:
        return None
    data = adata.copy()
    sc.pp.normalize_total(data, target_sum=1e4)
    sc.pp.log1p(data)
    key = MARKER_GROUPS[name]
    if key == "leiden":
        hvg = sc.pp.highly_variable_genes(data, n_top_genes=2000, inplace=False)
        sub = data[:, hvg["highly_variable"].to_numpy()].copy()
        sc.pp.pca(sub, n_comps=30, random_state=0)
        sc.pp.neighbors(sub, random_state=0)
        sc.tl.leiden(sub, resolution=0.5, random_state=0, flavor="igraph", n_iterations=2)
        data.obs["leiden"] = sub.obs["leiden"].to_numpy()
    else:
        data = data[data.obs[key].isin(["hg19", "mm10"])].copy()
        data.obs[key] = data.obs[key].astype(str).astype("category")
    sc.tl.rank_genes_groups(data, key, method="t-test")
    names = pd.DataFrame(data.uns["rank_genes_groups"]["names"])
    return {f"{g}: {names[g].iloc[0]}": names[g].iloc[:N_MARKERS].tolist() for g in names}


def _speed(model, dense_state, train) -> dict:
    """Inference (latents of all cells) and one training epoch, dense vs pruned first layer."""
    import torch

    from zipo_scvi._sparsity import use_sparse_inference

    def time_latent(repeats: int = 3) -> float:
        best = np.inf
        for _ in range(repeats):
            start = time.perf_counter()
            model.get_latent_representation()
            best = min(best, time.perf_counter() - start)
        return best

    pruned_state = {k: v.clone() for k, v in model.module.state_dict().items()}
    layer = use_sparse_inference(model.module, max_density=1.0)
    out = {"pruned_csr_s": time_latent()}
    layer.max_density = 0.0
    out["pruned_dense_s"] = time_latent()
    mask = layer.mask
    layer.mask = None
    model.module.load_state_dict(
        {k: v for k, v in dense_state.items() if k != "encoder.first.mask"}
    )
    out["dense_s"] = time_latent()
    for label in ("dense", "pruned"):
        if label == "pruned":
            layer.mask = mask
            model.module.load_state_dict(pruned_state)
        start = time.perf_counter()
        model.train(max_epochs=1, early_stopping=False, enable_progress_bar=False)
        out[f"{label}_epoch_s"] = time.perf_counter() - start
    with torch.no_grad():
        model.module.load_state_dict(pruned_state)
    return out


def run(name: str, seed: int, ldvae: dict | None = None) -> None:
    """Every measurement of one dataset and seed; writes ``rows_<name>_<seed>.json``.

    ``ldvae``: LDVAE's row (with ``modules``) from an earlier run of the same split, reused
    (nothing of ZIPO changes it); None trains it.
    """
    quiet(threads=1)
    import torch

    from zipo_scvi._sparsity import prune_mask

    path = OUT / f"rows_{name}_{seed}.json"
    adata = load(name)
    train, test = mcv_split(adata, 0.9, seed)
    model, fit = _dense(name, seed, train)
    dense_state = {k: v.clone() for k, v in model.module.state_dict().items()}
    n_weights = model.module.encoder.first.weight.numel()
    base = _mcv(model, train, test)
    rows = [{"method": "dense", "sparsity": 0.0, "poisson": base, **fit}]
    share, control, _ = _coherence(model, seed)
    rows[0].update(coherent=share, coherent_random=control)
    scale = model.input_scale()
    curves = []
    for kind, s in [(k, s) for k in ("input", "plain") for s in ONE_SHOT]:
        value = _one_shot(model, train, test, s, scale if kind == "input" else None)
        curves.append({"kind": kind, "sparsity": s, "poisson": value})
        print(f"{name} {seed} one-shot {kind} {s}: {_change(value, base):+.4%}", flush=True)
    # the paper's procedure: one shot at delta = 1e-4 of each neuron's largest weight
    keep = prune_mask(model.module.encoder.first.effective_weight().detach(), 1e-4)
    layer = model.module.encoder.first
    with torch.no_grad():
        saved = layer.weight.detach().clone()
        layer.weight.mul_(torch.as_tensor(keep, dtype=layer.weight.dtype))
        paper = _mcv(model, train, test)
        layer.weight.copy_(saved)
    rows.append(
        {"method": "paper: prune(delta=1e-4)", "sparsity": 1 - keep.mean(), "poisson": paper}
    )
    modules, speed = {}, None
    for kind, label, kwargs in GRADUAL:
        model, _ = _dense(name, seed, train)
        start = time.perf_counter()
        report = model.prune(**kwargs)
        seconds = time.perf_counter() - start
        share, control, table = _coherence(model, seed)
        weight = model.module.encoder.first.effective_weight().detach()
        row = {
            "method": label,
            "kind": kind,
            "sparsity": report["fraction_pruned"],
            "poisson": _mcv(model, train, test),
            "heldout_change": report["heldout_change"],
            "epochs": report["epochs"],
            "seconds": seconds,
            "coherent": share,
            "coherent_random": control,
            "genes_per_neuron": float((weight != 0).sum(1).float().median()),
        }
        rows.append(row)
        modules[kind] = table["genes"].tolist()
        print(
            f"{name} {seed} {row['method']}: {_change(row['poisson'], base):+.4%}, "
            f"coherent {share:.2f}",
            flush=True,
        )
        if kind == "default":
            speed = _speed(model, dense_state, train)
    ldvae = ldvae or _ldvae(train, test, seed)
    rows.append({k: v for k, v in ldvae.items() if k != "modules"})
    result = {
        "dataset": name,
        "seed": seed,
        "shape": list(train.shape),
        "n_weights": n_weights,
        "rows": rows,
        "curves": curves,
        "modules": modules,
        "ldvae_modules": ldvae["modules"],
        "markers": _markers(train, name),
        "speed": speed,
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d"),
    }
    path.write_text(json.dumps(result, default=float))


# ---------------------------------------------------------------------- rendering
def _markdown(frame: pd.DataFrame) -> str:
    cells = [[str(c) for c in frame.columns]] + [[str(v) for v in row] for row in frame.values]
    lines = ["| " + " | ".join(row) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("---" for _ in frame.columns) + "|")
    return "\n".join(lines)


def _results() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(OUT.glob("rows_*.json"))]


def summary_table(results: list[dict]) -> pd.DataFrame:
    rows = []
    for res in results:
        base = res["rows"][0]["poisson"]
        for row in res["rows"]:
            coherent = row.get("coherent")
            rows.append(
                {
                    "data": f"{res['dataset']} ({res['shape'][0]} x {res['shape'][1]})",
                    "seed": res["seed"],
                    "method": row["method"],
                    "zeros": f"{row['sparsity']:.1%}" if "sparsity" in row else "",
                    "held-out Poisson": f"{row['poisson']:.5f}",
                    "change vs dense": ""
                    if row is res["rows"][0]
                    else f"{_change(row['poisson'], base):+.3%}",
                    "coherent modules": "" if coherent is None else f"{coherent:.0%}",
                    "random weights, same support": f"{row['coherent_random']:.0%}"
                    if "coherent_random" in row
                    else "",
                    "genes per neuron": f"{row['genes_per_neuron']:.0f}"
                    if "genes_per_neuron" in row
                    else "",
                    "epochs": row.get("epochs", ""),
                    "s": f"{row['seconds']:.0f}" if "seconds" in row else "",
                }
            )
    return pd.DataFrame(rows)


def figure(results: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    n = len(results)
    fig = Figure(figsize=(5.0 * n, 7), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    for ax, res in zip(axes[0], results):
        base = res["rows"][0]["poisson"]
        curves = pd.DataFrame(res["curves"])
        for kind, label in (("input", "one shot, |w| x std(input)"), ("plain", "one shot, |w|")):
            c = curves[curves["kind"] == kind]
            ax.plot(
                100 * c["sparsity"], 100 * _change(c["poisson"], base), "o-", ms=3, label=label
            )
        for row in res["rows"][1:]:
            if "LDVAE" in row["method"]:
                ax.axhline(
                    100 * _change(row["poisson"], base), color="grey", ls=":", label="LDVAE"
                )
                continue
            marker = {"default": "*", "one_cluster": "^", "magnitude": "s", "signed90": "D"}.get(
                row.get("kind"), "x"
            )
            ax.plot(
                100 * row["sparsity"],
                100 * _change(row["poisson"], base),
                marker,
                ms=10,
                label=row["method"],
            )
        ax.axhspan(-0.5, 0.5, color="green", alpha=0.1)
        ax.axvline(90, color="k", lw=0.5, ls="--")
        ax.set_yscale("symlog", linthresh=1)
        ax.set_xlabel("first-layer weights exactly zero (%)")
        ax.set_ylabel("held-out Poisson vs dense (%)")
        ax.set_title(f"{res['dataset']} ({res['shape'][1]} genes)")
    axes[0][0].legend(fontsize="x-small", frameon=False)
    for ax, res in zip(axes[1], results):
        bars, controls = {}, {}
        for row in res["rows"]:
            if "coherent" not in row:
                continue
            label = "LDVAE loadings" if "LDVAE" in row["method"] else row["method"]
            bars[label] = row["coherent"]
            controls[label] = row.get("coherent_random", np.nan)
        y = np.arange(len(bars))
        ax.barh(y - 0.2, [100 * v for v in bars.values()], 0.4, label="learned")
        ax.barh(
            y + 0.2,
            [100 * v for v in controls.values()],
            0.4,
            color="lightgrey",
            label="random weights, same support",
        )
        ax.set_yticks(y, list(bars), fontsize="small")
        ax.axvline(50, color="k", lw=0.5, ls="--")
        ax.set_xlim(0, 100)
        ax.set_xlabel("coherent modules (top-10 genes) %")
        ax.invert_yaxis()
    axes[1][0].legend(fontsize="x-small", frameon=False)
    fig.suptitle("ZIPO default preset, all detected genes: pruning the first layer (MCV 90/10)")
    fig.savefig(path, dpi=100)


def marker_figure(results: list[dict], path: Path) -> bool:
    """Which pruned modules hold which group's top markers (count of the top-10 genes).

    Returns whether there was anything to draw.
    """
    from matplotlib.figure import Figure

    shown = [r for r in results if r.get("markers") and "default" in r.get("modules", {})]
    if not shown:
        return False
    fig = Figure(figsize=(6 * len(shown), 7), layout="constrained")
    for ax, res in zip(fig.subplots(1, len(shown), squeeze=False)[0], shown):
        groups = res["markers"]
        modules = [set(m.split(",")) if m else set() for m in res["modules"]["default"]]
        hits = np.array([[len(m & set(g)) for g in groups.values()] for m in modules])
        best = hits.argmax(axis=1)
        chosen = [i for i in np.lexsort((-hits.max(axis=1), best)) if hits[i].max() >= 3][:40]
        ax.imshow(hits[chosen], aspect="auto", cmap="Blues", vmin=0, vmax=N_TOP)
        ax.set_xticks(range(len(groups)), list(groups), rotation=60, ha="right", fontsize="small")
        ax.set_yticks(
            range(len(chosen)),
            [f"{i}: {','.join(res['modules']['default'][i].split(',')[:3])}" for i in chosen],
            fontsize="x-small",
        )
        n_any = int((hits.max(axis=1) >= 3).sum())
        ax.set_title(
            f"{res['dataset']}: {n_any} of {len(modules)} modules with >= 3 of a group's "
            f"top-{N_MARKERS} markers (first 40 shown)",
            fontsize="small",
        )
        ax.set_xlabel("cell group: its top marker")
    fig.savefig(path, dpi=100)
    return True


MARKER_TEXT = """\
Marker genes (pbmc3k: Leiden clusters of the log-normalised counts; hgmm1k: species) in the
pruned model's modules: each row a first-layer neuron (labelled by its top 3 genes), each column
a cell group (labelled by its top marker), colour = how many of the module's top-10 genes are
among that group's top-{n_markers} markers (t-test):

![modules and marker genes](benchmarks/results/sparsity/modules.png)
"""

PAGE_TEXT = """\
`model.prune()` zeroes at least {target:.0%} of the first encoder layer's weights, confines each
neuron to genes that are co-expressed, and fine-tunes the model around them:

1. The genes are split into up to {modules} co-expression clusters: spherical k-means on vectors
   whose cosines approximate the correlations of the genes' log-normalised expression over the
   training cells (a truncated SVD of the standardised cells x genes matrix, 50 components),
   with fewer clusters where they would hold under {min_genes} genes on average (a panel of a
   few hundred genes makes one cluster, which leaves plain magnitude pruning). Genes seen in
   fewer than 3 cells belong to no cluster and drop out of the first layer (the decoder still
   models them).
2. Each neuron is given the {per_neuron} clusters that carry most of its weight, scored by `|w|`
   times the standard deviation of each gene's encoder input over cells (so rare genes, whose
   input is rarely non-zero, do not count for a large weight alone).
3. Gradual magnitude pruning (Zhu & Gupta 2017) on a cubic schedule over at least 10 epochs and
   100 optimiser steps, on the same scores (torch's `L1Unstructured`): weights outside the
   neuron's clusters go first, and none is left there at the end. The layer's weights are
   projected onto `w >= 0` after every optimiser step.
4. Fine-tuning with the mask fixed until the held-out-molecule loss has not improved for 10
   epochs; the best epoch is kept.

Each neuron then adds up, with positive weights, the genes of two co-expression clusters: its
gene module. `prune()` returns the share of zeros, the held-out loss before and after
(`heldout_change`) and the NLL and MSE changes. The zeros are pinned by the layer's mask, kept
by `save`/`load` and by any later `train()` or `prune()` (a later `train()` keeps the zeros, not
the signs). `model.prune(clusters_per_neuron=1)` gives stricter modules,
`model.prune(modules=0)` plain magnitude pruning to 98% without clusters,
`model.prune(sparsity=0.9, nonnegative=False, modules=0)` signed weights, and
`model.prune(delta=1e-4)` the paper's one-shot procedure (III-E). `zipo prune MODEL_DIR` does
the same from the command line (`--sparsity`, `--modules`, `--signed`, or `--delta` for the
paper's).

Confining neurons to co-expressed genes is a structured sparsity with groups taken from the
data, as pathway-masked autoencoders take them from gene-set databases. The support of each
module is co-expressed by construction; what training decides is which clusters each neuron
reads and how it weighs their genes. The clusters do not cost held-out likelihood because the
encoder loses little by summing genes that carry the same signal, which also averages out
their sampling noise.

`model.get_gene_modules(n_top=10)` lists each first-layer neuron's genes ranked by
`|w| x std(input)`; `model.gene_module_coherence()` tests whether each neuron's top-10 genes are
co-expressed: the mean pairwise correlation of their log-normalised expression against
{n_random} random gene sets of the same size drawn from the same detection-rate bins (20
quantile bins); a module is coherent above the null's 95th percentile. Beside each share, the
same test on a control: random weights (`|N(0, 1)|` with the layer's signs) on the same support,
ranked the same way. For plain magnitude pruning the control tells whether the learned weights
add anything to what the support gives; with clusters the support is co-expressed by design, so
the control is coherent as well and shows how much of the modules' coherence the support alone
explains.

## Results

`benchmarks/sparsity.py` ({when}; {machine}): default preset on every detected gene, trained on
90% of the molecules and scored on the held-out 10% (MCV Poisson of `_harness.score_mcv`, mean
over cells and genes); one seed per dataset (CPU time). "change vs dense": relative to the
dense model of the same split. LDVAE: scvi-tools `LinearSCVI` with its defaults (10 latents),
modules = top-10 genes of each latent's loadings. Run with {commands}. The dense models are
cached on disk; {dense_split} The pruning's fine-tuning runs with the current default
(`train_split={train_split}`), so where the dense model saw whole cells "change vs dense" also
holds what a change of training regime does.

{table}

{verdict}

What these measurements say. Confining each neuron to co-expressed genes with non-negative
weights is what makes the modules readable, and it is not free: plain magnitude pruning to
98% (`modules=0`) and signed pruning to 90% cost less held-out likelihood than `prune()` on
every set, while without clusters fewer modules are coherent on every real set. The coherence
comes from the support, chosen from the data's correlations (random weights on the same
support are about as coherent, and on immune559, with 559 cells, more so); what training adds
is which clusters each neuron reads and how it weighs their genes. One cluster per neuron gives
stricter modules at a cost that varies between sets. The simulator's genes form weak
co-expression clusters, so fewer of its modules are coherent. Since the rerun with the default
of 2026-12-05, pbmc3k's `prune()` misses the target of at most 0.5% (+0.69%); its earlier
figure (-0.02%) compared the fine-tuned model with a dense model trained on whole cells, so it
held the gain of the change of training regime as well. One seed per dataset, so the held-out
changes carry no error bars; the timings ran on a shared machine. LDVAE's loadings are
coherent too, at a large cost in held-out loss on the real sets.

![held-out loss vs zeros; coherence](benchmarks/results/sparsity/sparsity.png)

{markers}
Speed of the pruned model ({speed_data}, one thread; latents of all cells, fastest of 3; one
training epoch): training multiplies by the masked dense weights (no speed-up); inference uses a
CSR product of the first layer when the mask keeps at most {max_density:.0%} of the weights.

{speed}

CSR against dense first layer alone (one thread, 256 cells, fastest of 30 interleaved repeats):

{csr}

{paper}
"""


def _verdict(results: list[dict]) -> str:
    lines = []
    for res in results:
        base = res["rows"][0]["poisson"]
        row = next(r for r in res["rows"] if r.get("kind") == "default")
        change = _change(row["poisson"], base)
        coherent = row["coherent"]
        control = row["coherent_random"]
        # the target: >= 90% zeros within 0.5% held-out, >= half the modules coherent
        ok = row["sparsity"] >= 0.9 and abs(change) <= 0.005 and coherent >= 0.5
        paper = next(r for r in res["rows"] if r["method"].startswith("paper"))
        ldvae = next((r for r in res["rows"] if "LDVAE" in r["method"]), None)
        plain = next((r for r in res["rows"] if r.get("kind") == "magnitude"), None)
        lines.append(
            f"- {res['dataset']}: `prune()` left {row['sparsity']:.1%} of the first layer zero, "
            f"held-out Poisson {change:+.3%} vs dense, {coherent:.0%} of modules coherent "
            f"(random weights on the same co-expression support: {control:.0%}; "
            + (f"without clusters: {plain['coherent']:.0%}; " if plain else "")
            + f"dense model: {res['rows'][0]['coherent']:.0%}): target "
            f"{'met' if ok else 'missed'}. The paper's `prune(delta=1e-4)` zeroed "
            f"{paper['sparsity']:.2%}"
            + (
                f"; LDVAE: {ldvae['coherent']:.0%} of its {ldvae['n_modules']} loadings' "
                f"modules coherent, held-out Poisson {_change(ldvae['poisson'], base):+.2%}."
                if ldvae
                else "."
            )
        )
    return "\n".join(lines)


def _dates(results: list[dict]) -> str:
    """When the results were run: one date, or each data set's where they differ.

    Examples
    --------
    >>> _dates([{"dataset": "a", "date": "2026-12-05"}, {"dataset": "b", "date": "2026-12-05"}])
    '2026-12-05'
    >>> _dates([{"dataset": "a", "date": "2026-12-05"}, {"dataset": "b", "date": "2026-12-04"}])
    'a 2026-12-05, b 2026-12-04'
    """
    if not results:
        return "not run"
    if len({r["date"] for r in results}) == 1:
        return results[0]["date"]
    return ", ".join(f"{r['dataset']} {r['date']}" for r in results)


def readme_block(results: list[dict], markers: bool) -> str:
    """The README's table: the default's zeros, held-out change and coherence, LDVAE beside."""
    lines = [
        "| data (all detected genes) | zeros | held-out Poisson vs dense | coherent modules "
        "| without clusters | LDVAE: coherent, held-out |",
        "|---|---|---|---|---|---|",
    ]
    for res in results:
        base = res["rows"][0]["poisson"]
        row = next(r for r in res["rows"] if r.get("kind") == "default")
        plain = next((r for r in res["rows"] if r.get("kind") == "magnitude"), None)
        ldvae = next((r for r in res["rows"] if "LDVAE" in r["method"]), None)
        lines.append(
            f"| {res['dataset']} ({res['shape'][0]:,} x {res['shape'][1]:,}) "
            f"| {row['sparsity']:.1%} | {_change(row['poisson'], base):+.2%} "
            f"| {row['coherent']:.0%} | "
            + (f"{plain['coherent']:.0%}" if plain else "")
            + " | "
            + (f"{ldvae['coherent']:.0%}, {_change(ldvae['poisson'], base):+.0%}" if ldvae else "")
            + " |"
        )
    when = _dates(results)
    info = results[0]["machine"] if results else {}
    text = "\n".join(lines) + (
        f"\n\nOne seed, {when}, {info.get('cpu', '?')} ({info.get('cores', '?')} cores). "
        "Coherent: the share of first-layer neurons whose top-10 genes are co-expressed beyond "
        'detection-matched random gene sets; "without clusters": `prune(modules=0)`, plain '
        "magnitude pruning to 98%; LDVAE: scvi-tools' linearly decoded VAE, its 10 loadings' "
        "top-10 genes. Written by [`benchmarks/sparsity.py`](benchmarks/sparsity.py); all rows, "
        "controls and timings on the [sparsity page](docs/sparsity.md)."
    )
    if markers:
        text += (
            "\n\n![pruned modules against the marker genes of pbmc3k's clusters]"
            "(benchmarks/results/sparsity/modules.png)"
        )
    return text


def _speed_table(results: list[dict]) -> tuple[str, str]:
    rows = []
    for res in results:
        sp = res.get("speed")
        if not sp:
            continue
        rows.append(
            {
                "data": res["dataset"],
                "latents, dense (s)": f"{sp['dense_s']:.2f}",
                "pruned, dense product (s)": f"{sp['pruned_dense_s']:.2f}",
                "pruned, CSR (s)": f"{sp['pruned_csr_s']:.2f}",
                "CSR speed-up": f"{sp['dense_s'] / sp['pruned_csr_s']:.2f}x",
                "epoch, dense (s)": f"{sp['dense_epoch_s']:.1f}",
                "epoch, pruned (s)": f"{sp['pruned_epoch_s']:.1f}",
            }
        )
    names = ", ".join(r["data"] for r in rows)
    return (_markdown(pd.DataFrame(rows)) if rows else "(not measured)"), names


def render() -> None:
    from zipo_scvi._sparsity import SPARSE_MAX_DENSITY

    results = _results()
    order = {"pbmc3k": 0, "immune559": 1, "hgmm1k": 2, "sim": 3}
    results.sort(key=lambda r: (order.get(r["dataset"], 9), r["seed"]))
    table = _markdown(summary_table(results))
    (OUT / "table.md").write_text(table + "\n\n" + _verdict(results) + "\n")
    figure(results, OUT / "sparsity.png")
    markers = marker_figure(results, OUT / "modules.png")
    speed, speed_data = _speed_table(results)
    (OUT / "speed_model.md").write_text(speed + "\n")
    meta_path = OUT / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    info = results[0]["machine"] if results else {}
    csr = (OUT / "speed.md").read_text() if (OUT / "speed.md").exists() else "(not measured)"
    paper = (OUT / "paper.md").read_text() if (OUT / "paper.md").exists() else ""
    from zipo_scvi._defaults import PRESETS, PRUNE_SCHEDULE

    splits = {r["dataset"]: r["rows"][0].get("train_split", 1.0) for r in results}
    dense_split = (
        "their training split each cell's molecules for training as `train_split` says: "
        + ", ".join(f"{name} {value:g}" for name, value in splits.items())
        + " (1 = whole cells, the default before it became 0.7)."
    )
    body = PAGE_TEXT.format(
        dense_split=dense_split,
        train_split=PRESETS["default"][1]["train_split"],
        target=PRUNE_SCHEDULE["sparsity"],
        modules=PRUNE_SCHEDULE["modules"],
        min_genes=PRUNE_SCHEDULE["min_module_genes"],
        per_neuron=PRUNE_SCHEDULE["clusters_per_neuron"],
        n_random=COHERENCE["n_random"],
        when=_dates(results),
        machine=f"{info.get('cpu', '?')}, {info.get('cores', '?')} cores, 1 torch thread",
        commands=" then ".join(f"`{c}`" for c in meta.get("commands", [])) or "(none yet)",
        table=table,
        verdict=_verdict(results),
        markers=MARKER_TEXT.format(n_markers=N_MARKERS) if markers else "",
        speed_data=speed_data,
        max_density=SPARSE_MAX_DENSITY,
        speed=speed,
        csr=csr.strip(),
        paper=paper.replace("### ", "## "),
    )
    update_docs_section("sparsity.md", "sparsity", body)
    update_readme_section(REPO / "README.md", "sparsity-glance", readme_block(results, markers))
    print(table)
    print(_verdict(results))


def _earlier_ldvae(path: Path) -> dict | None:
    """LDVAE's row and modules from an earlier result file of the same dataset and seed."""
    if not path.exists():
        return None
    earlier = json.loads(path.read_text())
    row = next((r for r in earlier["rows"] if "LDVAE" in r["method"]), None)
    if row is None or "ldvae_modules" not in earlier:
        return None
    return {**row, "modules": earlier["ldvae_modules"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="*", default=["pbmc3k", "immune559", "sim", "hgmm1k"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument(
        "--force", action="store_true", help="rerun datasets that already have results"
    )
    parser.add_argument(
        "--refresh-ldvae",
        action="store_true",
        help="retrain LDVAE too (default: with --force, its row is taken from the earlier run)",
    )
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.render_only:
        for name in args.datasets:
            for seed in args.seeds:
                path = OUT / f"rows_{name}_{seed}.json"
                if path.exists() and not args.force:
                    continue
                ldvae = None if args.refresh_ldvae else _earlier_ldvae(path)
                start = time.time()
                run(name, seed, ldvae)
                print(f"{name} seed {seed}: {time.time() - start:.0f} s", flush=True)
        meta_path = OUT / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        command = " ".join(["nice -n 10 python benchmarks/sparsity.py", *(argv or sys.argv[1:])])
        meta.setdefault("commands", []).append(command)
        meta_path.write_text(json.dumps(meta, indent=1))
    render()


if __name__ == "__main__":
    main()
