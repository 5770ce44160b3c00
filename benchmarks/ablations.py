"""The paper's ablations (section III, Figs. 3-8, 11) at small scale, with its error bars.

Usage (from the repository root)::

    python benchmarks/ablations.py [--seeds 0 1 2] [--claims first_layer alpha_z ...]

Every variant is the paper preset (ZIP, sigmoid -> BatchNorm, full residuals, log1p input,
alpha_z = alpha_w = 0.1, the paper's schedule, validation on held-out cells) with one setting
changed, trained on a simulation of 1000 cells x 400 genes. Widths are the paper's divided by 4
(2048-1024-512-256-128 becomes 512-256-128-64-32) because the data have ~20x fewer genes than
the paper's. The data, the 90/10 molecule split (MCV) and the 10% validation cells are the same
for every run; the seed changes the initial weights and the minibatch order (as the paper's
seeds do), so the error bars measure training variability, not the choice of held-out cells.
Measured: the paper's metric (NLL per cell on the
validation cells), NLL on held-out molecules (MCV Poisson), MSE of log-normalised rates to the
simulation's truth, mean zero-inflation probability, epochs. Results are cached in
``rows.jsonl`` (a rerun only trains what is missing); writes one figure per claim,
``table.md`` and ``summary.csv`` under ``benchmarks/results/ablations/``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import (
    REPO,
    SIM_DEFAULTS,
    _epochs,
    machine_info,
    mcv_split,
    quiet,
    repo_link,
    saved_figure,
    score_mcv,
    score_truth,
    update_docs_section,
)
from zipo_scvi._defaults import ERROR_BAR_LAMBDA
from zipo_scvi._metrics import summarize

OUT = REPO / "benchmarks/results/ablations"
DATA = {**SIM_DEFAULTS, "n_cells": 1000, "n_genes": 400}
#: The paper's optimal structure at 1/4 width.
BASE_ENCODER = (512, 256, 128, 64, 32)
TRAIN = {"max_epochs": 80, "batch_size": 128}


def _three_layers(s1: int, latents: int) -> tuple[int, int, int]:
    """Paper III-A.1: the middle layer is the geometric mean of the first and the latents."""
    return (s1, round((s1 * latents) ** 0.5), latents)


@dataclass
class Claim:
    """One claim of the paper and the variants that test it."""

    key: str
    figure: str
    claim: str
    x_label: str
    variants: list[tuple[str, dict]]
    metrics: tuple[str, ...] = ("val_nll", "mse_truth")
    notes: str = ""
    extra: dict = field(default_factory=dict)


CLAIMS: list[Claim] = [
    Claim(
        "first_layer",
        "Fig. 3",
        "NLL decreases as the first layer grows (3 layers, middle = geometric mean)",
        "first layer size (3-layer encoder, 16 latents)",
        [(str(s), {"encoder_sizes": _three_layers(s, 16)}) for s in (32, 128, 512, 1024)],
    ),
    Claim(
        "n_latent",
        "Fig. 4",
        "NLL improves with more latents up to 128 (here 32 at 1/4 width), then flattens",
        "number of latents (512-·-L encoder)",
        [(str(n), {"encoder_sizes": _three_layers(512, n)}) for n in (4, 8, 16, 32, 64, 128)],
    ),
    Claim(
        "depth_residuals",
        "Fig. 5",
        "Deeper encoders are better with residuals; without residuals the advantage is lost",
        "encoder (full residuals / none)",
        [
            (f"{'-'.join(map(str, enc))} {res}", {"encoder_sizes": enc, "residuals": res})
            for enc in ((512, 32), (512, 128, 32), (512, 256, 128, 32), BASE_ENCODER)
            for res in ("full", "none")
        ],
    ),
    Claim(
        "decoder",
        "Fig. 6",
        "A linear decoder is better than a deep one",
        "decoder hidden layers",
        [
            ("linear", {"decoder_sizes": ()}),
            ("64", {"decoder_sizes": (64,)}),
            ("64-128", {"decoder_sizes": (64, 128)}),
        ],
    ),
    Claim(
        "batch_norm",
        "Fig. 7",
        "Batch norm is essential: without it sigmoid gets stuck, GELU does not converge",
        "activation / batch norm",
        [
            (f"{act} {'BN' if bn else 'no BN'}", {"activation": act, "batch_norm": bn})
            for act in ("sigmoid", "gelu")
            for bn in (True, False)
        ],
    ),
    Claim(
        "alpha_z",
        "Fig. 8",
        "Mean zero probability falls monotonically as alpha_z grows; MSE is stable for "
        "0.01 <= alpha_z <= 1e4 and unstable without regularisation; NLL rises at 1e8",
        "alpha_z",
        [(f"{a:g}", {"alpha_z": a}) for a in (0.0, 0.01, 0.1, 1.0, 100.0, 1e4, 1e8)],
        metrics=("zero_prob", "mse_truth", "val_nll"),
    ),
    Claim(
        "likelihood",
        "Figs. 11, 15",
        "ZIP has a better (lower) NLL than ZINB with no worse MSE; ZINB stops earlier",
        "likelihood",
        [("ZIP", {"likelihood": "zip"}), ("ZINB", {"likelihood": "zinb"})],
        metrics=("val_nll", "mse_truth", "epochs"),
    ),
]

METRIC_TITLES = {
    "val_nll": "NLL per validation cell (paper)",
    "mcv_poisson": "held-out molecules (MCV Poisson)",
    "mse_truth": "MSE to true rates (log-norm.)",
    "mse_rate": "MSE of rates vs counts (paper)",
    "zero_prob": "mean zero probability",
    "epochs": "epochs to stop",
    "seconds": "training time (s)",
}


def _config(kw: dict) -> dict:
    return {"encoder_sizes": BASE_ENCODER, **kw}


def _code_version() -> str:
    """Hash of the files that decide a model's results (a change there retrains everything)."""
    import hashlib

    files = ("_components.py", "_defaults.py", "_distributions.py", "_module.py", "_training.py")
    digest = hashlib.sha1()
    for name in files:
        digest.update((REPO / "zipo_scvi" / name).read_bytes())
    return digest.hexdigest()[:10]


def _key(kw: dict, seed: int) -> str:
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(_config(kw).items())}
    spec = {"cfg": cfg, "seed": seed, "train": TRAIN, "data": DATA, "code": _code_version()}
    return json.dumps(spec, sort_keys=True)


def train_one(kw: dict, seed: int, split_cache: dict) -> dict:
    """Train one variant on one seed's split; return its metrics."""
    import torch

    from zipo_scvi import ZIPO
    from zipo_scvi.data import simulate_counts

    if "split" not in split_cache:
        adata = simulate_counts(**DATA, seed=0)
        split_cache["split"] = mcv_split(adata, fraction=0.9, seed=0)
        order = np.random.default_rng(0).permutation(adata.n_obs)
        n_val = adata.n_obs // 10
        split_cache["cells"] = [np.sort(order[n_val:]), np.sort(order[:n_val]), np.array([])]
    train, test = split_cache["split"]
    adata = train.copy()
    truth = adata.layers.pop("true_rate")
    ZIPO.setup_anndata(adata)
    torch.set_num_threads(1)
    start = time.perf_counter()
    model = ZIPO(adata, preset="paper", seed=seed, **_config(kw))
    try:
        model.train(
            seed=seed,
            enable_progress_bar=False,
            datasplitter_kwargs={"external_indexing": split_cache["cells"]},
            **TRAIN,
        )
    except (ValueError, RuntimeError) as err:  # a diverging variant is a result, not a crash
        return {"error": str(err)[:200], "seconds": time.perf_counter() - start}
    seconds = time.perf_counter() - start
    val = model.validation_indices
    err = model.get_reconstruction_error(indices=val)
    params = model.get_likelihood_parameters()
    observed = np.asarray(adata.X.sum(1)).ravel()[:, None]
    denoised = params["rate"] / params["library"][:, None] * observed
    if not np.isfinite(denoised).all():
        losses = np.asarray(model.history["train_loss"], dtype=float).ravel()
        bad = np.flatnonzero(~np.isfinite(losses))
        when = f"training loss NaN from epoch {bad[0] + 1}" if bad.size else "non-finite output"
        return {"error": when, "seconds": seconds}
    out = {
        "val_nll": err["nll"],
        "mse_rate": err["mse"],
        "mcv_poisson": score_mcv(denoised, test, adata)["poisson"],
        "mse_truth": score_truth(params["rate"], truth)["mse_truth"],
        "zero_prob": float(params["zero_prob"].mean()) if "zero_prob" in params else 0.0,
        "epochs": _epochs(model),
        "seconds": seconds,
    }
    return out


def _without_code(key: str) -> str:
    spec = json.loads(key)
    spec.pop("code", None)
    return json.dumps(spec, sort_keys=True)


def run(claims: list[Claim], seeds: list[int], log, trust_cache: bool = False) -> pd.DataFrame:
    """Train what the cache lacks; ``trust_cache`` also reuses rows of other code versions."""
    cache_path = OUT / "rows.jsonl"
    cache = {}
    if cache_path.exists():
        for line in cache_path.read_text().splitlines():
            rec = json.loads(line)
            cache[rec["key"]] = rec["result"]
            if trust_cache and "error" not in rec["result"]:  # failures are retried
                cache.setdefault(_without_code(rec["key"]), rec["result"])
    split_cache: dict = {}
    rows = []
    for claim in claims:
        for label, kw in claim.variants:
            for seed in seeds:
                key = _key(kw, seed)
                if trust_cache and key not in cache and _without_code(key) in cache:
                    key = _without_code(key)
                if key not in cache:
                    result = train_one(kw, seed, split_cache)
                    cache[key] = result
                    with cache_path.open("a") as fh:
                        fh.write(json.dumps({"key": key, "result": result}) + "\n")
                    shown = {k: round(v, 4) for k, v in result.items() if isinstance(v, float)}
                    log(f"{claim.key} {label} seed {seed}: {shown} {result.get('error', '')}")
                rows.append({"claim": claim.key, "variant": label, "seed": seed, **cache[key]})
    return pd.DataFrame(rows)


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    ok = rows[rows["error"].isna()] if "error" in rows else rows
    metrics = [m for m in METRIC_TITLES if m in ok]
    return summarize(ok, ["claim", "variant"], metrics)


def _m(summary, claim, variant, metric, kind="mean") -> float:
    try:
        return float(summary.loc[(claim, variant), (kind, metric)])
    except KeyError:
        return float("nan")


def _better(summary, claim, a, b, metric="val_nll") -> bool:
    """``a`` significantly lower than ``b`` (the paper's non-overlapping error bars)."""
    hi_a = _m(summary, claim, a, metric) + _m(summary, claim, a, metric, "err")
    lo_b = _m(summary, claim, b, metric) - _m(summary, claim, b, metric, "err")
    return hi_a < lo_b


def verdicts(summary: pd.DataFrame, rows: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """Per claim: (what we measured, holds / partly / does not hold)."""
    out = {}

    def fmt(claim, variant, metric="val_nll"):
        mean, err = _m(summary, claim, variant, metric), _m(summary, claim, variant, metric, "err")
        if not np.isfinite(mean):
            return f"{variant}: failed"
        if abs(mean) > 1e5:
            return f"{variant}: {mean:.2g} (diverged)"
        return f"{variant}: {mean:.2f} ± {err:.2f}"

    c = "first_layer"
    if c in summary.index.get_level_values(0):
        sizes = ["32", "128", "512", "1024"]
        nll = [_m(summary, c, s, "val_nll") for s in sizes]
        mono = all(b <= a for a, b in itertools.pairwise(nll))
        sig = _better(summary, c, "1024", "32")
        measured = "val NLL " + "; ".join(fmt(c, s) for s in sizes)
        out[c] = (measured, "holds" if mono and sig else "partly" if sig else "does not hold")
    c = "n_latent"
    if c in summary.index.get_level_values(0):
        lat = ["4", "8", "16", "32", "64", "128"]
        nll = {s: _m(summary, c, s, "val_nll") for s in lat}
        improves = _better(summary, c, "32", "4")
        flat = not _better(summary, c, "128", "32")
        measured = "val NLL " + "; ".join(fmt(c, s) for s in lat)
        best = min(nll, key=lambda s: nll[s])
        measured += f"; lowest at {best}"
        out[c] = (
            measured,
            "holds" if improves and flat else "partly" if improves else "does not hold",
        )
    c = "depth_residuals"
    if c in summary.index.get_level_values(0):
        deep = "-".join(map(str, BASE_ENCODER))
        variants = [v for v in summary.loc[c].index]
        nll = {v: _m(summary, c, v, "val_nll") for v in variants}
        best = min(nll, key=lambda v: nll[v])
        res_help = [
            _m(summary, c, f"{e} full", "val_nll") < _m(summary, c, f"{e} none", "val_nll")
            for e in ("512-128-32", "512-256-128-32", deep)
        ]
        measured = "val NLL " + "; ".join(fmt(c, v) for v in variants) + f"; best {best}"
        holds = best == f"{deep} full" and all(res_help)
        out[c] = (measured, "holds" if holds else "partly" if any(res_help) else "does not hold")
    c = "decoder"
    if c in summary.index.get_level_values(0):
        measured = "val NLL " + "; ".join(fmt(c, v) for v in ("linear", "64", "64-128"))
        lin = _m(summary, c, "linear", "val_nll")
        deep = min(_m(summary, c, "64", "val_nll"), _m(summary, c, "64-128", "val_nll"))
        sig = _better(summary, c, "linear", "64") and _better(summary, c, "linear", "64-128")
        out[c] = (measured, "holds" if sig else "partly" if lin < deep else "does not hold")
    c = "batch_norm"
    if c in summary.index.get_level_values(0):
        variants = ["sigmoid BN", "sigmoid no BN", "gelu BN", "gelu no BN"]
        errors = rows[(rows["claim"] == c) & rows.get("error", pd.Series()).notna()]
        measured = "val NLL " + "; ".join(fmt(c, v) for v in variants)
        if len(errors):
            measured += f"; failed runs: {', '.join(sorted(set(errors['variant'])))}"
        sig = _better(summary, c, "sigmoid BN", "sigmoid no BN")
        gelu = _better(summary, c, "gelu BN", "gelu no BN") or "gelu no BN" in set(
            errors.get("variant", [])
        )
        out[c] = (
            measured,
            "holds" if sig and gelu else "partly" if sig or gelu else "does not hold",
        )
    c = "alpha_z"
    if c in summary.index.get_level_values(0):
        alphas = [v for v in summary.loc[c].index]
        zp = [_m(summary, c, a, "zero_prob") for a in alphas]
        # monotone up to noise: a rank correlation of -0.9 or stronger, and a fall overall
        rho = pd.Series(zp).corr(pd.Series([float(a) for a in alphas]), method="spearman")
        mono = rho <= -0.9 and _better(summary, c, alphas[-1], alphas[0], "zero_prob")
        mse = {a: _m(summary, c, a, "mse_truth") for a in alphas}
        mid = [mse[a] for a in alphas if 0.01 <= float(a) <= 1e4]
        spread = (max(mid) - min(mid)) / min(mid) if mid else float("nan")
        measured = (
            "mean zero prob "
            + ", ".join(f"{a}: {z:.3f}" for a, z in zip(alphas, zp))
            + f" (Spearman {rho:.2f}); MSE to truth varies {100 * spread:.0f}% over 0.01..1e4 "
            + f"(alpha_z = 0: {mse.get('0', float('nan')):.3f}, 0.1: {mse.get('0.1', 0):.3f}, "
            + f"1e8: {mse.get('1e+08', float('nan')):.3f}); val NLL "
            + "; ".join(fmt(c, a) for a in ("0.1", "1e+08"))
        )
        stable = spread < 0.1 and mse.get("0", 0) > max(mid)
        verdict = "holds" if mono and stable else "partly" if mono else "does not hold"
        out[c] = (measured, verdict)
    c = "likelihood"
    if c in summary.index.get_level_values(0):
        measured = (
            "val NLL "
            + "; ".join(fmt(c, v) for v in ("ZIP", "ZINB"))
            + "; MSE to truth "
            + "; ".join(fmt(c, v, "mse_truth") for v in ("ZIP", "ZINB"))
            + "; epochs "
            + "; ".join(fmt(c, v, "epochs") for v in ("ZIP", "ZINB"))
        )
        zinb_errors = rows[(rows["claim"] == c) & (rows["variant"] == "ZINB")]
        if zinb_errors["error"].notna().all():
            reason = zinb_errors["error"].dropna().iloc[0]
            out[c] = (f"{measured}; ZINB: {reason} in every seed", "not testable (ZINB diverges)")
        else:
            nll_ok = _better(summary, c, "ZIP", "ZINB")
            mse_ok = not _better(summary, c, "ZINB", "ZIP", "mse_truth")
            verdict = "holds" if nll_ok and mse_ok else "partly" if mse_ok else "does not hold"
            out[c] = (measured, verdict)
    return out


def figure(claim: Claim, summary: pd.DataFrame, path: Path) -> None:
    sub = summary.loc[claim.key]
    metrics = [m for m in claim.metrics if ("mean", m) in sub]
    size = (3.8 * len(metrics), 3.4)
    with saved_figure(path, 1, len(metrics), figsize=size, dpi=100) as (fig, axes):
        for ax, metric in zip(np.atleast_1d(axes), metrics):
            x = np.arange(len(sub))
            ax.errorbar(x, sub[("mean", metric)], yerr=sub[("err", metric)], fmt="o", capsize=4)
            rotation = 45 if len(sub) > 4 else 0
            ax.set_xticks(x, sub.index, rotation=rotation, ha="right", fontsize=8)
            ax.set_title(METRIC_TITLES.get(metric, metric), fontsize=9)
            ax.set_xlabel(claim.x_label, fontsize=8)
        fig.suptitle(f"{claim.figure}: {claim.claim}", fontsize=8)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--claims", nargs="+", default=[c.key for c in CLAIMS])
    parser.add_argument(
        "--trust-cache",
        action="store_true",
        help="reuse successful cached runs made with other versions of the model files",
    )
    args = parser.parse_args(argv)
    quiet()
    OUT.mkdir(parents=True, exist_ok=True)
    claims = [c for c in CLAIMS if c.key in args.claims]
    started = time.perf_counter()
    rows = run(claims, args.seeds, lambda msg: print(msg, flush=True), args.trust_cache)
    if "error" not in rows:
        rows["error"] = np.nan
    summary = summarise(rows)
    summary.to_csv(OUT / "summary.csv")
    found = verdicts(summary, rows)
    machine = machine_info()
    lines = [
        "# The paper's ablations at small scale",
        "",
        f"Generated by `python benchmarks/ablations.py --seeds {' '.join(map(str, args.seeds))}"
        f"` ({(time.perf_counter() - started) / 60:.0f} min incl. cached runs; {machine['cpu']},"
        f" {machine['cores']} shared cores, torch {machine['torch']}, 1 thread).",
        f"Data: simulation, {DATA['n_cells']} cells x {DATA['n_genes']} genes "
        f"(benchmark simulator settings). Model: the paper preset at 1/4 width (base encoder "
        f"{'-'.join(map(str, BASE_ENCODER))}, full residuals), one setting changed per variant; "
        f"cap {TRAIN['max_epochs']} epochs with the paper's early stopping, batch "
        f"{TRAIN['batch_size']}. {len(args.seeds)} seeds (the paper: 12); error bars λ·SEM, "
        f"λ = {ERROR_BAR_LAMBDA:.3f}; 'significant' = non-overlapping bars (paper II-H). "
        "NLL: per validation cell, summed over genes (the paper's metric)."
        + (
            " Runs cached under earlier versions of the model files were reused (`--trust-cache`)."
            if args.trust_cache
            else ""
        ),
        "",
        "| claim | paper figure | what we measured | holds? |",
        "|---|---|---|---|",
    ]
    for claim in claims:
        if claim.key not in found:
            continue
        measured, verdict = found[claim.key]
        lines.append(f"| {claim.claim} | {claim.figure} | {measured} | {verdict} |")
        figure(claim, summary, OUT / f"{claim.key}.png")
    shown = [c for c in claims if c.key in found]
    (OUT / "table.md").write_text(
        "\n".join([*lines, "", "Figures: " + ", ".join(f"[{c.key}]({c.key}.png)" for c in shown)])
        + "\n"
    )
    # the docs page: the same text under its own title, with the figures shown
    figures = [f"![{c.key}]({repo_link(OUT / f'{c.key}.png')})" for c in shown]
    update_docs_section("benchmarks/ablations.md", "ablations", "\n".join(lines[2:] + figures))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
