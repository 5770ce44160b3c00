"""The paper's sparsity claim (III-E, Fig. 10) on the paper preset: pruning at delta = 1e-4.

Usage (from the repository root)::

    nice -n 10 python benchmarks/sparsity_paper.py           # train what is missing, then render
    python benchmarks/sparsity_paper.py --render-only        # rebuild its table and figure

For alpha_w in {0, 0.01, 0.1, 1} and several seeds, trains ZIPO with the paper preset (ZIP,
sigmoid -> BatchNorm, log1p input, full residuals, alpha_z = 0.1, the paper's schedule with
plateau and early stopping on validation cells) on simulated counts, then measures the share of
first-layer weights below delta (after dividing each neuron's weights by its largest), the
NLL and MSE of rates on the validation cells after pruning at each delta, and prunes at
delta = 1e-4. The encoder is shrunk to 512-256-128 (one of the paper's searched structures,
III-H) to keep CPU time reasonable. Diagnostic variants at alpha_w = 0.1 test why the paper's
number does or does not reproduce (minibatch size; the reading of ``E[log L]``).

Also times the first layer's sparse (CSR) inference path against the dense one.

Writes ``benchmarks/results/sparsity/{paper_runs.json,paper_table.md,paper_sparsity.png,
speed.md}``; ``benchmarks/sparsity.py`` puts them in the documentation's sparsity page.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import machine_info, quiet
from zipo_scvi._defaults import ERROR_BAR_LAMBDA, PRUNE_DELTA

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "results" / "sparsity"
DATA = {"n_cells": 3000, "n_genes": 2000, "seed": 0}
ENCODER = (512, 256, 128)
MAX_EPOCHS = 150
ALPHAS = (0.0, 0.01, 0.1, 1.0)
DELTAS = tuple(float(d) for d in np.logspace(-8, -1, 15))
HIST_EDGES = np.logspace(-12, 0, 49)

#: variant -> (label, model kwargs, train kwargs, alphas, most seeds). The first is the paper
#: preset; the diagnostics (8x more Adam steps per epoch; the NLL read as a mean over genes;
#: all 150 epochs at the learning-rate floor) run on fewer seeds to keep the CPU time reasonable.
VARIANTS: dict[str, tuple[str, dict, dict, tuple[float, ...], int | None]] = {
    "paper": ("paper preset (batch 256)", {}, {}, ALPHAS, None),
    "batch32": ("paper preset, batch 32", {}, {"batch_size": 32}, (0.1,), 2),
    "gene_mean": (
        "NLL averaged over genes (alpha_z, alpha_w x n_genes), batch 32",
        {"alpha_z": 0.1 * DATA["n_genes"]},
        {"batch_size": 32},
        (0.1,),
        2,
    ),
    "long": (
        "paper preset, 150 epochs, no plateau cuts or early stopping",
        {},
        {"early_stopping": False, "plan_kwargs": {"lr_patience": 10**6}},
        (0.1,),
        2,
    ),
}


def _key(variant: str, alpha: float, seed: int) -> str:
    return f"{variant}|{alpha:g}|{seed}"


def train_one(variant: str, alpha: float, seed: int) -> dict:
    """Train one model, measure its sparsity and pruning curves, prune at 1e-4."""
    quiet(threads=1)
    from zipo_scvi import ZIPO
    from zipo_scvi._sparsity import normalized_weights
    from zipo_scvi.data import simulate_counts

    _, model_kwargs, train_kwargs, _, _ = VARIANTS[variant]
    adata = simulate_counts(**DATA)
    ZIPO.setup_anndata(adata)
    alpha_w = alpha * (DATA["n_genes"] if variant == "gene_mean" else 1.0)
    model = ZIPO(
        adata, preset="paper", encoder_sizes=ENCODER, alpha_w=alpha_w, seed=seed, **model_kwargs
    )
    cpu, wall = time.process_time(), time.time()
    model.train(max_epochs=MAX_EPOCHS, enable_progress_bar=False, seed=seed, **train_kwargs)
    cpu, wall = time.process_time() - cpu, time.time() - wall
    weight = model.module.encoder.first.weight.detach()
    magnitude = np.abs(normalized_weights(weight)).ravel()
    sparsity = model.first_layer_sparsity(DELTAS)
    curve = model.pruning_curve(DELTAS)
    report = model.prune(PRUNE_DELTA)
    return {
        "variant": variant,
        "alpha_w": alpha,
        "alpha_w_model": alpha_w,
        "seed": seed,
        "epochs": len(model.history["validation_loss"]),
        "cpu_s": cpu,
        "wall_s": wall,
        "sparsity": sparsity.tolist(),
        "curve": curve.reset_index().to_dict(orient="list"),
        "report": report,
        "hist": np.histogram(magnitude[magnitude > 0], HIST_EDGES)[0].tolist(),
        "hist_zero": int((magnitude == 0).sum()),
        "median_abs_w": float(weight.abs().median()),
        "median_max_abs_w": float(weight.abs().max(dim=1).values.median()),
    }


# ---------------------------------------------------------------------- speed
def time_inference(repeats: int = 30) -> pd.DataFrame:
    """Dense vs CSR first layer at inference, one thread, interleaved, fastest of repeats.

    The fastest repeat, not the median: the machine is shared, and other jobs only ever add
    time to a run.
    """
    import torch

    from zipo_scvi._sparsity import SparseMaskedLinear

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    rows = []
    n_genes, batch = DATA["n_genes"], 256
    x = torch.log1p(torch.poisson(torch.full((batch, n_genes), 0.9), generator=gen))
    for n_out in (2048, ENCODER[0]):
        for density in (0.01, 0.02, 0.05, 0.1, 0.2):
            layer = SparseMaskedLinear(n_genes, n_out).eval()
            mask = (torch.rand(n_out, n_genes, generator=gen) < density).float()
            with torch.no_grad():
                layer.weight.mul_(mask)
            layer.mask = mask
            times: dict[str, list[float]] = {"dense": [], "sparse": []}
            with torch.inference_mode():
                layer.max_density = 1.0
                out_sparse = layer(x)
                layer.max_density = 0.0
                out_dense = layer(x)
                for _ in range(repeats):
                    for name, max_density in (("dense", 0.0), ("sparse", 1.0)):
                        layer.max_density = max_density
                        layer.sparse_weight()  # conversion is cached, not timed
                        start = time.perf_counter()
                        layer(x)
                        times[name].append(time.perf_counter() - start)
            rows.append(
                {
                    "layer": f"{n_genes} -> {n_out}",
                    "density": density,
                    "dense_ms": 1e3 * min(times["dense"]),
                    "sparse_ms": 1e3 * min(times["sparse"]),
                    "max_abs_diff": float((out_sparse - out_dense).abs().max()),
                }
            )
    rows += _time_encoder(x, gen, repeats)
    table = pd.DataFrame(rows)
    table["speedup"] = table["dense_ms"] / table["sparse_ms"]
    return table


def _time_encoder(x, gen, repeats: int) -> list[dict]:
    """The whole paper encoder (2048-1024-512-256-128, full residuals) with a pruned layer."""
    import torch

    from zipo_scvi import ZiPoModule
    from zipo_scvi._sparsity import use_sparse_inference

    module = ZiPoModule(x.shape[1]).eval()
    layer = use_sparse_inference(module)
    rows = []
    for density in (0.02, 0.05):
        mask = (torch.rand(layer.weight.shape, generator=gen) < density).float()
        with torch.no_grad():
            layer.weight.mul_(mask)
        layer.mask = mask
        times: dict[str, list[float]] = {"dense": [], "sparse": []}
        outs = {}
        with torch.inference_mode():
            for _ in range(repeats):
                for name, max_density in (("dense", 0.0), ("sparse", 1.0)):
                    layer.max_density = max_density
                    layer.sparse_weight()
                    start = time.perf_counter()
                    outs[name] = module.inference(x)["z"]
                    times[name].append(time.perf_counter() - start)
        rows.append(
            {
                "layer": "paper encoder, whole",
                "density": density,
                "dense_ms": 1e3 * min(times["dense"]),
                "sparse_ms": 1e3 * min(times["sparse"]),
                "max_abs_diff": float((outs["sparse"] - outs["dense"]).abs().max()),
            }
        )
    return rows


# ---------------------------------------------------------------------- summaries
def _mean_err(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    sem = v.std(ddof=1) / np.sqrt(v.size) if v.size > 1 else np.nan
    return float(v.mean()), float(ERROR_BAR_LAMBDA * sem)


def _fmt(values, scale: float = 1.0, digits: int = 1, unit: str = "") -> str:
    mean, err = _mean_err(np.asarray(values, dtype=float) * scale)
    if np.isnan(err):
        return f"{mean:.{digits}f}{unit}"
    return f"{mean:.{digits}f} ± {err:.{digits}f}{unit}"


def _prunable_at_1pct(run: dict) -> float:
    """Largest share pruned at any delta whose NLL change stays below 1%."""
    curve = pd.DataFrame(run["curve"])
    ok = curve[curve["nll_change"] < 0.01]
    return float(ok["fraction_pruned"].max()) if len(ok) else 0.0


def summarise(runs: list[dict]) -> pd.DataFrame:
    rows = []
    for (variant, alpha), group in pd.DataFrame(runs).groupby(["variant", "alpha_w"], sort=False):
        reports = pd.DataFrame(list(group["report"]))
        sparsity = np.array(list(group["sparsity"]))
        prunable = [_prunable_at_1pct(r) for r in group.to_dict("records")]
        i2 = DELTAS.index(min(DELTAS, key=lambda d: abs(np.log10(d) + 2)))
        rows.append(
            {
                "variant": variant,
                "setting": VARIANTS[variant][0],
                "alpha_w": alpha,
                "seeds": len(group),
                "epochs": _fmt(group["epochs"], digits=0),
                "pruned at 1e-4": _fmt(reports["fraction_pruned"], 100, 1, "%"),
                "NLL change": _fmt(reports["nll_change"], 100, 3, "%"),
                "MSE change": _fmt(reports["mse_change"], 100, 3, "%"),
                "below 1e-2": _fmt(sparsity[:, i2], 100, 1, "%"),
                "prunable, NLL +<1%": _fmt(prunable, 100, 1, "%"),
                "val. NLL/cell": _fmt(reports["nll_before"], 1, 0),
                "CPU s/run": _fmt(group["cpu_s"], 1, 0),
                "_pruned_mean": float(reports["fraction_pruned"].mean()),
                "_nll_change_mean": float(reports["nll_change"].abs().mean()),
            }
        )
    return pd.DataFrame(rows)


def _markdown(frame: pd.DataFrame) -> str:
    """A pipe table (no tabulate dependency)."""
    cells = [[str(c) for c in frame.columns]] + [[str(v) for v in row] for row in frame.values]
    lines = ["| " + " | ".join(row) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("---" for _ in frame.columns) + "|")
    return "\n".join(lines)


def _mean_curves(runs: list[dict], variant: str, alpha: float) -> tuple[pd.Series, pd.DataFrame]:
    group = [r for r in runs if r["variant"] == variant and r["alpha_w"] == alpha]
    sparsity = pd.Series(np.mean([r["sparsity"] for r in group], axis=0), index=DELTAS)
    curves = [pd.DataFrame(r["curve"]).set_index("delta") for r in group]
    return sparsity, sum(curves[1:], curves[0]) / len(curves)


def _label(variant: str, alpha: float) -> str:
    return f"alpha_w={alpha:g}" if variant == "paper" else f"alpha_w={alpha:g}, {variant}"


def figure(runs: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    from zipo_scvi import pl

    groups = list(dict.fromkeys((r["variant"], r["alpha_w"]) for r in runs))
    means = {_label(v, a): _mean_curves(runs, v, a) for v, a in groups}
    fig = Figure(figsize=(11, 8), layout="constrained")
    (ax_a, ax_b), (ax_c, ax_d) = fig.subplots(2, 2)
    pl.sparsity_curve({k: s for k, (s, _) in means.items()}, ax=ax_a)
    ax_a.set_title("(a) share of weights below delta")
    for variant, alpha in groups:
        group = [r for r in runs if r["variant"] == variant and r["alpha_w"] == alpha]
        counts = np.sum([r["hist"] for r in group], axis=0)
        total = counts.sum() + sum(r["hist_zero"] for r in group)
        ax_b.stairs(counts / total, HIST_EDGES, label=_label(variant, alpha))
    ax_b.axvline(PRUNE_DELTA, color="k", linestyle="--", linewidth=1)
    ax_b.set_xscale("log")
    ax_b.set_xlabel("|w| / max |w| of the neuron (before pruning)")
    ax_b.set_ylabel("share of weights per bin")
    ax_b.set_title("(b) weight magnitudes (dashed: delta = 1e-4)")
    ax_b.legend(frameon=False, fontsize="small")
    pl.pruning_curve({k: c for k, (_, c) in means.items()}, axes=(ax_c, ax_d))
    for ax, name in ((ax_c, "(c) NLL"), (ax_d, "(d) MSE of rates")):
        ax.set_yscale("symlog", linthresh=0.1)
        lowest = min(float(np.min(line.get_ydata())) for line in ax.lines if len(line.get_ydata()))
        ax.set_ylim(bottom=min(-0.2, 2 * lowest))
        ax.set_title(f"{name}, validation cells, after pruning")
    fig.suptitle(
        f"ZIPO paper preset, encoder {'-'.join(map(str, ENCODER))}, "
        f"{DATA['n_cells']} x {DATA['n_genes']} simulated; mean over seeds"
    )
    fig.savefig(path, dpi=110)


def _table_markdown(summary: pd.DataFrame) -> str:
    cols = [
        "setting",
        "alpha_w",
        "seeds",
        "epochs",
        "pruned at 1e-4",
        "NLL change",
        "MSE change",
        "below 1e-2",
        "prunable, NLL +<1%",
        "val. NLL/cell",
        "CPU s/run",
    ]
    return _markdown(summary[cols])


def _verdict(summary: pd.DataFrame) -> str:
    paper = summary[summary["variant"] == "paper"].set_index("alpha_w")
    p01, p0 = paper.loc[0.1], paper.loc[0.0]
    target = p01["_pruned_mean"] >= 0.9 and p01["_nll_change_mean"] < 0.01
    lines = [
        f"- Paper's target (alpha_w = 0.1: at least 90% pruned at delta = 1e-4 with NLL change "
        f"< 1%): **{'reproduced' if target else 'not reproduced'}**. Measured "
        f"{p01['pruned at 1e-4']} pruned (NLL change {p01['NLL change']}); at alpha_w = 0: "
        f"{p0['pruned at 1e-4']}.",
    ]
    for variant in [v for v in VARIANTS if v != "paper"]:
        row = summary[summary["variant"] == variant]
        if len(row):
            row = row.iloc[0]
            lines.append(
                f"- {row['setting']}, alpha_w = {row['alpha_w']:g}: {row['pruned at 1e-4']} "
                f"pruned at 1e-4 (NLL change {row['NLL change']})."
            )
    return "\n".join(lines)


def _speed_markdown(speed: pd.DataFrame) -> str:
    shown = speed.copy()
    shown["density"] = (100 * shown["density"]).map(lambda v: f"{v:g}%")
    for col in ("dense_ms", "sparse_ms"):
        shown[col] = shown[col].map(lambda v: f"{v:.2f}")
    shown["speedup"] = shown["speedup"].map(lambda v: f"{v:.2f}x")
    shown["max_abs_diff"] = shown["max_abs_diff"].map(lambda v: f"{v:.1e}")
    return _markdown(shown)


README_TEXT = """\
### The paper's procedure on the paper preset

`benchmarks/sparsity_paper.py` ({when}; {machine}): paper preset (ZIP, sigmoid then BatchNorm,
log1p input, full residuals, alpha_z = 0.1, the paper's schedule, plateau and early stopping on
validation cells, at most {max_epochs} epochs) with the encoder shrunk to {encoder} (one of the
paper's searched structures) for CPU time, on `simulate_counts({n_cells}, {n_genes})`; mean ±
{lam:.2f} x SEM over seeds. "prunable, NLL +<1%" is the largest share pruned at any delta whose
NLL change stays below 1%; "val. NLL/cell" is the validation NLL before pruning. Run with
{commands}.

{table}

{verdict}

![paper preset: sparsity and pruning curves](benchmarks/results/sparsity/paper_sparsity.png)
{why}
"""

WHY_TEXT = """
Why the paper's number does not appear here. With Adam every weight moves by roughly the
learning rate per step whatever the size of its gradient, so a weight is driven to zero only
where the penalty's gradient outweighs the noise of the likelihood's gradient on it. The
likelihood is summed over {n_genes} genes per cell (thousands of nats per cell) while the
penalty is at most alpha_w. The penalty does reshape the neurons (median |w| / max |w| of
the neuron: {median_norm}), but stops orders of magnitude short of 1e-4. The first epochs
at lr = 0.0212 also inflate all weights (median |w| from about 0.01 at initialisation to
about {median_w:.2f}), and the schedule counts epochs, so {n_cells} cells give about {steps}
Adam steps per epoch at batch 256, against ~270 for the paper's ~70,000 cells. Early stopping
(patience 30) on the validation cells ended the paper-preset runs after {epochs_lo}-{epochs_hi}
epochs: the eval-mode validation loss of the sigmoid -> BatchNorm order is erratic (see
"val. NLL/cell"), so its best value comes early. Measured: {diagnosis} The paper
preset keeps the loss as the paper writes it; the gene-mean reading is available by passing
`alpha_z` and `alpha_w` multiplied by the number of genes (Adam ignores a constant scale of
the loss, up to its eps, so this equals averaging the NLL over genes).
"""


DIAGNOSES = {
    "batch32": "8x more Adam steps per epoch (batch 32)",
    "gene_mean": "the NLL read as a mean over genes, at batch 32",
    "long": "all 150 epochs at the learning-rate floor (no plateau cuts, no early stopping)",
}


def _median_normalised(runs: list[dict]) -> str:
    """Median of |w| / max |w| per paper-preset alpha_w, from the stored histograms."""
    centres = np.sqrt(HIST_EDGES[:-1] * HIST_EDGES[1:])
    parts = []
    for alpha in ALPHAS:
        group = [r for r in runs if r["variant"] == "paper" and r["alpha_w"] == alpha]
        if not group:
            continue
        counts = np.concatenate(
            [[sum(r["hist_zero"] for r in group)], np.sum([r["hist"] for r in group], axis=0)]
        )
        i = int(np.searchsorted(np.cumsum(counts), counts.sum() / 2))
        parts.append(f"~{0.0 if i == 0 else centres[i - 1]:.2g} at alpha_w = {alpha:g}")
    return ", ".join(parts)


def _diagnosis(summary: pd.DataFrame) -> str:
    by = summary.set_index(["variant", "alpha_w"])
    parts = [
        f"{what}: {by.loc[(variant, 0.1), 'pruned at 1e-4']}"
        for variant, what in DIAGNOSES.items()
        if (variant, 0.1) in by.index
    ]
    if not parts:
        return "no diagnostic variants were run."
    best = summary["_pruned_mean"].max()
    return (
        f"share pruned at 1e-4 at alpha_w = 0.1, paper preset "
        f"{by.loc[('paper', 0.1), 'pruned at 1e-4']}; "
        + "; ".join(parts)
        + ("; none reaches 90%." if best < 0.9 else ".")
    )


def _commands(meta: dict) -> list[str]:
    return ([meta["command"]] if "command" in meta else []) + meta.get("commands", [])


def render(runs: list[dict], speed: pd.DataFrame | None) -> None:

    summary = summarise(runs)
    table = _table_markdown(summary)
    (OUT / "paper_table.md").write_text(table + "\n\n" + _verdict(summary) + "\n")
    figure(runs, OUT / "paper_sparsity.png")
    if speed is None and (OUT / "speed.csv").exists():
        speed = pd.read_csv(OUT / "speed.csv")
    speed_md = _speed_markdown(speed) if speed is not None else "(not measured)"
    (OUT / "speed.md").write_text(speed_md + "\n")
    meta_path = OUT / "paper_meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    paper01 = summary[(summary["variant"] == "paper") & (summary["alpha_w"] == 0.1)].iloc[0]
    reproduced = paper01["_pruned_mean"] >= 0.9 and paper01["_nll_change_mean"] < 0.01
    median_w = np.mean([r["median_abs_w"] for r in runs if r["variant"] == "paper"])
    why = (
        ""
        if reproduced
        else WHY_TEXT.format(
            n_genes=DATA["n_genes"],
            n_cells=DATA["n_cells"],
            median_w=median_w,
            steps=int(np.ceil(0.9 * DATA["n_cells"] / 256)),
            diagnosis=_diagnosis(summary),
            median_norm=_median_normalised(runs),
            epochs_lo=min(r["epochs"] for r in runs if r["variant"] == "paper"),
            epochs_hi=max(r["epochs"] for r in runs if r["variant"] == "paper"),
        )
    )
    body = README_TEXT.format(
        when=meta.get("date", "date unknown"),
        machine=meta.get("machine", "machine unknown"),
        max_epochs=MAX_EPOCHS,
        encoder="-".join(map(str, ENCODER)),
        n_cells=DATA["n_cells"],
        n_genes=DATA["n_genes"],
        lam=ERROR_BAR_LAMBDA,
        table=table,
        verdict=_verdict(summary),
        why=why,
        commands=" then ".join(f"`{c.strip()}`" for c in _commands(meta)),
    )
    (OUT / "paper.md").write_text(body)
    print(table)
    print(_verdict(summary))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    runs_path = OUT / "paper_runs.json"
    runs = json.loads(runs_path.read_text()) if runs_path.exists() else []
    speed = None
    if not args.render_only:
        done = {_key(r["variant"], r["alpha_w"], r["seed"]) for r in runs}
        todo = [
            (variant, alpha, seed)
            for variant in args.variants
            for alpha in VARIANTS[variant][3]
            for seed in args.seeds[: VARIANTS[variant][4]]
            if _key(variant, alpha, seed) not in done
        ]
        start = time.time()
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            futures = [pool.submit(train_one, *job) for job in todo]
            for job, future in zip(todo, futures):
                run = future.result()
                runs.append(run)
                runs_path.write_text(json.dumps(runs))
                print(
                    f"{_key(*job)}: {run['epochs']} epochs, {run['cpu_s']:.0f} s CPU, pruned "
                    f"{run['report']['fraction_pruned']:.3f}, NLL change "
                    f"{run['report']['nll_change']:.2e}  [{time.time() - start:.0f} s]",
                    flush=True,
                )
        if not args.skip_speed:
            speed = time_inference()
            speed.to_csv(OUT / "speed.csv", index=False)
        info = machine_info()
        meta_path = OUT / "paper_meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        meta["date"] = time.strftime("%Y-%m-%d")
        meta["machine"] = (
            f"{info['cpu']}, {info['cores']} cores, 1 torch thread per run, "
            f"load {info['load_avg_1min']}"
        )
        command = " ".join(
            ["nice -n 10 python benchmarks/sparsity_paper.py", *(argv or sys.argv[1:])]
        )
        meta.setdefault("commands", []).append(command)
        (OUT / "meta.json").write_text(json.dumps(meta, indent=1))
    runs.sort(key=lambda r: (list(VARIANTS).index(r["variant"]), r["alpha_w"], r["seed"]))
    render(runs, speed)


if __name__ == "__main__":
    main()
