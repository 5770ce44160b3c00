"""Denoising benchmark: ZIPO against scVI, LDVAE, MAGIC, DCA and no denoising, side by side.

Usage (from the repository root)::

    python benchmarks/run_benchmark.py                     # the simulator (default)
    python benchmarks/run_benchmark.py sim pbmc3k data.h5ad --seeds 0 1 2

Each dataset is split by molecular cross-validation (``benchmarks/_harness.py``, scores of
``zipo_scvi/_metrics.py``); every method sees the same training molecules, in its own
subprocess, once per seed (the seed sets both the split and the method). Writes ``table.md``,
``rows.csv`` and one figure per dataset under ``--out``, replaces the section between
``<!-- BEGIN:benchmark -->`` and ``<!-- END:benchmark -->`` of ``docs/benchmarks/denoising.md``
and the at-a-glance table of the README (``<!-- BEGIN:benchmark-glance -->``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import inspect
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import (
    PEER_MAX_EPOCHS,
    REPO,
    SIM_DEFAULTS,
    code_state,
    dca_unavailable,
    latent_ari,
    machine_info,
    mcv_split,
    repo_link,
    run_method,
    saved_figure,
    score_mcv,
    score_truth,
    update_docs_section,
    update_readme_section,
)
from zipo_scvi._defaults import ERROR_BAR_LAMBDA
from zipo_scvi._metrics import summarize

#: Row label -> (runner, keyword arguments). ``--method LABEL=RUNNER[:JSON]`` adds or replaces,
#: e.g. ``--method 'ZIPO paper preset=zipo:{"preset": "paper"}'`` (2048-wide, slow on a CPU).
METHODS: dict[str, tuple[str, dict]] = {
    "ZIPO": ("zipo", {}),
    "scVI ZINB": ("scvi_zinb", {}),
    "scVI Poisson": ("scvi_poisson", {}),
    "LDVAE": ("ldvae", {}),
    "MAGIC": ("magic", {}),
    "DCA": ("dca", {}),
    "none (D = X)": ("none", {}),
}

#: metric -> (column title, lower is better, digits)
METRICS: dict[str, tuple[str, bool, int]] = {
    "poisson": ("MCV Poisson", True, 5),
    "mse": ("MCV MSE", True, 4),
    "mse_log": ("MCV MSE, expected log", True, 4),
    "mse_truth": ("MSE to truth", True, 4),
    "corr_truth": ("corr. to truth", False, 4),
    "ari": ("ARI k-means", False, 3),
    "nmi": ("NMI k-means", False, 3),
    "ari_leiden": ("ARI Leiden", False, 3),
    "nmi_leiden": ("NMI Leiden", False, 3),
    "seconds": ("time (s)", True, 1),
    "peak_rss_mb": ("peak RSS (MB)", True, 0),
}
RANKED = ("poisson", "mse", "mse_truth", "corr_truth", "ari", "ari_leiden")


#: Leiden clusters of the latents beside k-means (needs the ``bench`` extra's leidenalg).
LEIDEN = importlib.util.find_spec("leidenalg") is not None


def load_dataset(name: str, n_cells: int, n_genes: int, sim_seed: int = 0):
    """``"sim"``, a real dataset name of ``zipo_scvi.data`` or a path to a count ``.h5ad``."""
    if name == "sim":
        sim = {**SIM_DEFAULTS, "n_cells": n_cells, "n_genes": n_genes}
        from zipo_scvi.data import simulate_counts

        adata = simulate_counts(**sim, seed=sim_seed)
        desc = ", ".join(f"{k}={v}" for k, v in sim.items())
        return adata, f"simulation ({desc}, seed {sim_seed})", "group"
    if Path(name).suffix == ".h5ad":
        import anndata

        return anndata.read_h5ad(name), f"{name}", None
    try:
        from zipo_scvi.data._real import REAL_DATASETS
    except ImportError as err:
        raise SystemExit(f"{name!r}: no real-dataset loaders available ({err})") from err
    if name not in REAL_DATASETS:
        raise SystemExit(
            f"Unknown dataset {name!r}: 'sim', an .h5ad path or {list(REAL_DATASETS)}"
        )
    loader = REAL_DATASETS[name]
    # sdist datasets are fetched once with pip (an ordinary registry client) into a cache
    kwargs = {"download": True} if "download" in inspect.signature(loader).parameters else {}
    adata = loader(**kwargs)
    src = adata.uns.get("source", {})
    label_key = next(
        (k for k in ("cell_type", "label", "group", "species") if k in adata.obs), None
    )
    return adata, f"{name} ({src.get('origin', 'real UMI counts')})", label_key


def top_genes(adata, n_genes: int | None):
    """Keep the ``n_genes`` genes with the most counts (all if None or already fewer)."""
    if n_genes is None or adata.n_vars <= n_genes:
        return adata
    totals = np.asarray(adata.X.sum(axis=0)).ravel()
    keep = np.sort(np.argsort(-totals, kind="stable")[:n_genes])
    return adata[:, keep].copy()


def prepare_dataset(name: str, n_cells: int, n_genes: int, n_top_genes: int | None = 2000):
    """Load a dataset as the benchmark scores it: real data cut to the genes with most counts
    and to labelled cells; returns ``(adata, description, label_key)``."""
    adata, desc, label_key = load_dataset(name, n_cells, n_genes)
    if name != "sim":
        adata = top_genes(adata, n_top_genes or None)
        desc += f"; the {n_top_genes} genes with most counts" if n_top_genes else ""
        if label_key is not None:  # doublets and the like are not a group
            keep = ~adata.obs[label_key].astype(str).isin(["doublet", "nan", "unknown"])
            adata = adata[keep.to_numpy()].copy()
    return adata, f"{desc}; {adata.n_obs} cells x {adata.n_vars} genes", label_key


def _stem(name: str) -> str:
    return Path(name).stem if name.endswith(".h5ad") else name


def evaluate(
    adata,
    dataset: str,
    methods: dict,
    seeds,
    label_key,
    log,
    timeout: float,
    threads: int,
    rows_path: Path,
    resume: bool = False,
    rerun: list[str] | None = None,
) -> list[dict]:
    """Run every method on every seed's split; rows are saved after each method."""
    rows: list[dict] = []
    done: set = set()
    if resume and rows_path.exists():
        old = pd.read_csv(rows_path)
        old = old[old["error"].isna()] if "error" in old else old
        # --rerun LABEL runs LABEL again on the seeds asked for; its other seeds' rows stay
        old = old[~(old["method"].isin(rerun or []) & old["seed"].isin(list(seeds)))]
        rows = old.to_dict("records")
        done = {(r["method"], int(r["seed"])) for r in rows}
    for seed in seeds:
        if all((label, seed) in done for label in methods):
            continue
        train, test = mcv_split(adata, fraction=0.9, seed=seed)
        truth = train.layers["true_rate"] if "true_rate" in train.layers else None
        for label, (runner, kw) in methods.items():
            if (label, seed) in done:
                continue
            start = time.perf_counter()
            res = run_method(runner, train, seed=seed, timeout=timeout, threads=threads, **kw)
            row = {"dataset": dataset, "method": label, "seed": seed}
            if "error" in res:
                row["error"] = res["error"]
            else:
                row.update(score_mcv(res["denoised"], test, train))
                if truth is not None:
                    row.update(score_truth(res["denoised"], truth))
                if label_key is not None and res["latent"] is not None:
                    labels = train.obs[label_key]
                    row.update(latent_ari(res["latent"], labels, seed=seed, leiden=LEIDEN))
                row["seconds"] = res["seconds"]
                row["peak_rss_mb"] = res["peak_rss_mb"]
                row["epochs"] = res["info"].get("epochs")
                row["note"] = res["info"].get("label", "")
                if res["info"].get("reason"):
                    row["note"] += f": {res['info']['reason']}"
                if res["info"].get("config"):
                    row["config"] = json.dumps(res["info"]["config"], sort_keys=True)
            row["wall_s"] = time.perf_counter() - start
            rows.append(row)
            pd.DataFrame(rows).to_csv(rows_path, index=False)
            shown = {k: round(v, 5) for k, v in row.items() if isinstance(v, float)}
            log(f"  {dataset} seed {seed} {label}: {shown or row.get('error')}")
    return rows


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and lambda * SEM per dataset, method and metric."""
    ok = rows[rows.get("error").isna()] if "error" in rows else rows
    # the benchmark's own order (ZIPO first), whatever order --rerun left the rows in
    order = {label: i for i, label in enumerate(METHODS)}
    ok = ok.sort_values("method", key=lambda m: m.map(order).fillna(len(order)), kind="stable")
    metrics = [m for m in METRICS if m in ok]
    return summarize(ok, ["dataset", "method"], metrics)


def ranks(summary: pd.DataFrame, dataset: str, method: str = "ZIPO") -> dict[str, str]:
    """ZIPO's rank per metric among all rows of a dataset (1 = best)."""
    out = {}
    sub = summary.loc[dataset]
    for metric in RANKED:
        if ("mean", metric) not in sub or method not in sub.index:
            continue
        values = sub[("mean", metric)].dropna()
        if method not in values.index:
            continue
        lower = METRICS[metric][1]
        order = values.sort_values(ascending=lower)
        out[metric] = f"{list(order.index).index(method) + 1}/{len(order)}"
    return out


def table_markdown(summary: pd.DataFrame, rows: pd.DataFrame, dataset: str) -> str:
    sub = summary.loc[dataset]
    metrics = [m for m in METRICS if ("mean", m) in sub and sub[("mean", m)].notna().any()]
    header = ["method", *(METRICS[m][0] for m in metrics), "epochs", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    best = {}
    for m in metrics:
        values = sub[("mean", m)].drop(index="none (D = X)", errors="ignore").dropna()
        if len(values):
            best[m] = values.idxmin() if METRICS[m][1] else values.idxmax()
    ok_rows = rows[(rows["dataset"] == dataset) & rows.get("error", pd.Series(dtype=str)).isna()]
    for method in sub.index:
        cells = [method]
        for m in metrics:
            mean, err, digits = (
                sub.loc[method, ("mean", m)],
                sub.loc[method, ("err", m)],
                METRICS[m][2],
            )
            if np.isnan(mean):
                cells.append("")
                continue
            text = f"{mean:.{digits}f}"
            if not np.isnan(err) and m not in ("peak_rss_mb",):
                text += f" ± {err:.{digits}f}"
            cells.append(f"**{text}**" if best.get(m) == method else text)
        epochs = ok_rows.loc[ok_rows["method"] == method].get("epochs", pd.Series()).dropna()
        cells.append(f"{epochs.mean():.0f}" if len(epochs) and epochs.mean() > 0 else "")
        cells.append(str(int(sub.loc[method, ("n", "")])))
        lines.append("| " + " | ".join(cells) + " |")
    failed = rows[(rows["dataset"] == dataset) & rows.get("error", pd.Series(dtype=str)).notna()]
    for method, group in failed.groupby("method", sort=False):
        if method not in sub.index:
            lines.append(
                f"| {method} | failed: {group['error'].iloc[0]} |" + " |" * (len(header) - 2)
            )
    notes = ok_rows.drop_duplicates("method").set_index("method").get("note", pd.Series())
    notes = notes.dropna()
    extra = [f"- {m}: {n}" for m, n in notes.items() if n and ("not DCA" in n or "PCA" in n)]
    return "\n".join(lines + (["", *extra] if extra else []))


def figure(summary: pd.DataFrame, dataset: str, path: Path) -> None:
    sub = summary.loc[dataset]
    metrics = [
        m
        for m in ("poisson", "mse", "mse_truth", "ari", "seconds")
        if ("mean", m) in sub and sub[("mean", m)].notna().any()
    ]
    with saved_figure(path, 1, len(metrics), figsize=(3.2 * len(metrics), 3.6)) as (fig, axes):
        axes = np.atleast_1d(axes)
        for ax, m in zip(axes, metrics):
            values = sub[("mean", m)].dropna()
            errors = sub.loc[values.index, ("err", m)].fillna(0)
            colors = ["tab:red" if i.startswith("ZIPO") else "tab:gray" for i in values.index]
            ax.barh(range(len(values)), values, xerr=errors, color=colors)
            ax.set_yticks(
                range(len(values)), values.index if ax is axes[0] else [""] * len(values)
            )
            # zoom on the methods (the `none` baseline may run off the axis: its value is printed)
            peers = [i for i in values.index if not i.startswith("none")]
            lo = float((values[peers] - errors[peers]).min())
            hi = float((values[peers] + errors[peers]).max())
            if m in ("poisson", "mse", "mse_truth") and hi > lo:
                pad = 0.15 * (hi - lo)
                ax.set_xlim(max(lo - pad, 0), hi + pad)
                for k, value in enumerate(values):
                    if value > hi + pad:
                        ax.text(hi, k, f"{value:.3g} →", ha="right", va="center", fontsize=7)
                    elif value < max(lo - pad, 0):
                        ax.text(lo, k, f"← {value:.3g}", ha="left", va="center", fontsize=7)
            ax.set_title(
                METRICS[m][0] + (" (lower better)" if METRICS[m][1] else " (higher better)"),
                fontsize=9,
            )
            ax.invert_yaxis()
        fig.suptitle(f"{dataset}: mean ± λ·SEM over seeds", fontsize=10)


def parse_methods(specs: list[str], only: list[str] | None = None) -> dict:
    """:data:`METHODS` plus ``--method LABEL=RUNNER[:JSON]`` specs, cut to ``only`` if given."""
    methods = dict(METHODS)
    for spec in specs:
        label, _, rest = spec.partition("=")
        runner, _, kw = rest.partition(":")
        methods[label] = (runner, json.loads(kw) if kw else {})
    if only:
        methods = {k: v for k, v in methods.items() if k in only}
    return methods


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "datasets",
        nargs="*",
        default=["sim"],
        help="'sim', a real dataset name or a path to a count .h5ad",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-cells", type=int, default=SIM_DEFAULTS["n_cells"])
    parser.add_argument("--n-genes", type=int, default=SIM_DEFAULTS["n_genes"])
    parser.add_argument("--only", nargs="+", help="row labels to run (default: all)")
    parser.add_argument(
        "--top-genes",
        type=int,
        default=2000,
        help="real data: keep this many genes with the most counts (0: all)",
    )
    parser.add_argument(
        "--method",
        action="append",
        default=[],
        help="LABEL=RUNNER[:JSON kwargs], e.g. 'ZIPO 64 latents=zipo:{...}'",
    )
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/benchmark"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--no-readme", action="store_true")
    parser.add_argument(
        "--resume", action="store_true", help="keep finished rows of rows_<dataset>.csv"
    )
    parser.add_argument(
        "--rerun", nargs="+", help="with --resume: row labels to run again (e.g. ZIPO)"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild table.md, the docs page and the README table from saved rows",
    )
    args = parser.parse_args(argv)

    methods = parse_methods(args.method, args.only)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        print(write_report(out, docs=not args.no_readme))
        return
    log_file = (out / "log.txt").open("w")

    def log(msg: str) -> None:
        print(msg, flush=True)
        log_file.write(msg + "\n")
        log_file.flush()

    machine = machine_info()
    dca_reason = dca_unavailable()
    log(f"machine: {machine}; DCA: {dca_reason or 'DCA 0.3.4 venv'}")
    cmd = " ".join(["python benchmarks/run_benchmark.py", *(argv or sys.argv[1:])])
    for name in args.datasets:
        started = time.perf_counter()
        adata, desc, label_key = prepare_dataset(name, args.n_cells, args.n_genes, args.top_genes)
        log(f"dataset {name}: {desc}")
        rows_path = out / f"rows_{_stem(name)}.csv"
        evaluate(
            adata,
            name,
            methods,
            args.seeds,
            label_key,
            log,
            args.timeout,
            args.threads,
            rows_path,
            resume=args.resume,
            rerun=args.rerun,
        )
        meta = {
            "dataset": name,
            "description": desc,
            "command": cmd,
            "date": dt.date.today().isoformat(),
            "minutes": (time.perf_counter() - started) / 60,
            "seeds": args.seeds,
            "threads": args.threads,
            "dca": dca_reason,
            "code": code_state(),
            "machine": machine,
        }
        (out / f"meta_{_stem(name)}.json").write_text(json.dumps(meta, indent=1))
    log(write_report(out, docs=not args.no_readme))
    log_file.close()


SETTINGS = (
    "ZIPO: default preset with its own training defaults (cap 1000 epochs, early stopping on "
    "held-out molecules); denoised = mu x the observed library, the convention of scVI's "
    "default. scVI and LDVAE: scvi-tools defaults, cap {cap} epochs (scvi's heuristic below "
    "20k cells) with early stopping on the validation ELBO. MAGIC: defaults, on sqrt of "
    "median-normalised counts, squared and scaled back. DCA 0.3.4: defaults (ZINB "
    "conditional dispersion, 300-epoch cap, its own early stopping) in its own venv "
    "(`benchmarks/peers/setup_dca_env.sh`). Each method runs in its own process with 1 thread; "
    "time = fit + predict without imports (DCA: including TensorFlow start-up); peak RSS = "
    "VmHWM of the method's process. Latent for ARI: the model's latent space; PCA (10) of the "
    "output for MAGIC and of log-normalised counts for `none`. Mean ± λ·SEM (λ = {lam:.3f}, "
    "paper II-H) over seeds; each seed re-splits the molecules (90% train) and reseeds the "
    "method. Bold: best method on that metric (excluding `none`). On shared CPUs times are "
    "wall seconds and noisy."
)


def _best_peer(sub: pd.DataFrame, metric: str, method: str = "ZIPO"):
    """``(ZIPO's mean, best peer, its mean)`` on a metric of one dataset's summary (the
    ``none`` baseline is not a peer), or None when either is missing."""
    if ("mean", metric) not in sub:
        return None
    values = sub[("mean", metric)].dropna()
    peers = values.drop(index=[method, "none (D = X)"], errors="ignore")
    if peers.empty or method not in values:
        return None
    best = peers.idxmin() if METRICS[metric][1] else peers.idxmax()
    return values[method], best, peers[best]


def goals(summary: pd.DataFrame, dataset: str, method: str = "ZIPO") -> str:
    """The goals of issues 7 and 9: ZIPO at least as good as every peer on MCV Poisson and MSE
    to truth; its latents' ARI within 0.05 of the best peer's."""
    sub = summary.loc[dataset]
    if method not in sub.index:
        return ""
    out = []
    for metric in ("poisson", "mse_truth"):
        if (found := _best_peer(sub, metric, method)) is None:
            continue
        zipo, best, peer = found
        gap = 100 * (zipo - peer) / abs(peer)
        verdict = "met" if zipo <= peer else "not met"
        out.append(
            f"Goal, {METRICS[metric][0]} at least as good as every peer: {verdict} (ZIPO "
            f"{zipo:.5g}, best peer {best} {peer:.5g}, {gap:+.1f}%)."
        )
    for metric in ("ari", "ari_leiden"):
        if (found := _best_peer(sub, metric, method)) is None:
            continue
        zipo, best, peer = found
        verdict = "met" if zipo >= peer - 0.05 else "not met"
        out.append(
            f"Goal, {METRICS[metric][0]} of the latents within 0.05 of the best peer's: "
            f"{verdict} (ZIPO {zipo:.3f}, best peer {best} {peer:.3f})."
        )
    return " ".join(out)


def _zipo_config(rows: pd.DataFrame) -> str:
    """The ZIPO settings the rows were made with (they can change between runs)."""
    if "config" not in rows:
        return "ZIPO settings: not recorded."
    configs = rows.loc[rows["method"] == "ZIPO", "config"].dropna().unique()
    if len(configs) != 1:
        return f"ZIPO settings: {len(configs)} different configurations across seeds (rerun)."
    config = json.loads(configs[0])
    return "ZIPO settings: " + ", ".join(f"{k}={v}" for k, v in config.items()) + "."


def _minutes(rows: pd.DataFrame) -> float:
    """Total time of the rows' method runs (wall, with process start-up when recorded)."""
    column = "wall_s" if "wall_s" in rows and rows["wall_s"].notna().all() else "seconds"
    return float(rows[column].fillna(0).sum()) / 60


def _at_a_glance(datasets: list[tuple[dict, pd.DataFrame, pd.DataFrame]]) -> str:
    """One line per dataset: ZIPO against the best peer on held-out Poisson, ARI and MSE to
    truth (``datasets``: meta, rows and summary of each)."""
    lines = [
        "| dataset | cells x genes | ZIPO held-out Poisson | best peer | ZIPO rank "
        "| ZIPO ARI k-means | best peer ARI | ZIPO MSE to truth | best peer | date, machine |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for meta, _rows, summary in datasets:
        name = meta["dataset"]
        sub = summary.loc[name]
        poisson = _best_peer(sub, "poisson")
        if poisson is None:
            continue
        cells = [name, meta["description"].rsplit("; ", 1)[-1]]
        cells += [f"{poisson[0]:.5f}", f"{poisson[1]} {poisson[2]:.5f}"]
        cells.append(ranks(summary, name).get("poisson", ""))
        for metric, missing in (("ari", "(no labels)"), ("mse_truth", "(no truth)")):
            found = _best_peer(sub, metric)
            if found is None:
                cells += [missing, ""]
            else:
                cells += [f"{found[0]:.3f}", f"{found[1]} {found[2]:.3f}"]
        cells.append(f"{meta['date']}, {meta['machine']['cpu']}")
        lines.append("| " + " | ".join(cells) + " |")
    if len(lines) == 2:
        return ""
    head = "At a glance (mean over seeds; held-out Poisson and MSE lower is better, ARI higher):"
    return head + "\n\n" + "\n".join(lines)


def write_report(out: Path, docs: bool = True) -> str:
    """Write ``table.md`` in ``out`` and (``docs``) the docs page and the README's at-a-glance
    table from the saved rows and metadata; returns the report's markdown."""
    body = build_report(out)
    (out / "table.md").write_text("# Denoising benchmark\n\n" + body)
    if docs:
        update_docs_section("benchmarks/denoising.md", "benchmark", body)
        glance = _at_a_glance(_datasets(out))
        if glance:
            link = "All tables, settings and figures: the documentation's benchmark page "
            link += "(`docs/benchmarks/denoising.md`)."
            update_readme_section(REPO / "README.md", "benchmark-glance", f"{glance}\n\n{link}")
    return body


def _datasets(out: Path) -> list[tuple[dict, pd.DataFrame, pd.DataFrame]]:
    """Metadata, rows and summary of every dataset with ``rows_*.csv`` and ``meta_*.json``."""
    metas = [json.loads(p.read_text()) for p in sorted(out.glob("meta_*.json"))]
    metas.sort(key=lambda m: (m["dataset"] != "sim", m["dataset"]))
    datasets = []
    for meta in metas:
        rows = pd.read_csv(out / f"rows_{_stem(meta['dataset'])}.csv")
        if "error" not in rows:
            rows["error"] = np.nan
        summary = summarise(rows)
        if meta["dataset"] in summary.index.get_level_values(0):
            datasets.append((meta, rows, summary))
    return datasets


def build_report(out: Path) -> str:
    """Markdown for every dataset with ``rows_*.csv`` and ``meta_*.json`` in ``out``."""
    parts = [
        SETTINGS.format(cap=PEER_MAX_EPOCHS, lam=ERROR_BAR_LAMBDA),
        "",
        "The paper's own ablations, rerun at small scale (`benchmarks/ablations.py`), are on the "
        "[ablations page](ablations.md); training speed has [its own page](speed.md).",
    ]
    datasets = _datasets(out)
    glance = _at_a_glance(datasets)
    if glance:
        parts[1:1] = ["", glance]
    for meta, rows, summary in datasets:
        name = meta["dataset"]
        fig_path = out / f"benchmark_{_stem(name)}.png"
        figure(summary, name, fig_path)
        rank = ranks(summary, name)
        rank_text = ", ".join(f"{METRICS[m][0]} {r}" for m, r in rank.items())
        m = meta["machine"]
        parts += [
            "",
            f"## {name}: {meta['description']}",
            "",
            f"`{meta['command']}` on {meta['date']} (method runs {_minutes(rows):.0f} min in "
            f"all; {m['cpu']}, "
            f"{m['cores']} cores shared, load {m['load_avg_1min']} at the start; torch "
            f"{m['torch']}, scvi-tools {m.get('scvi-tools', '?')}); seeds {meta['seeds']}."
            + (f" DCA could not run: {meta['dca']}." if meta.get("dca") else "")
            + (f" Code: {meta['code']}." if meta.get("code") else ""),
            "",
            _zipo_config(rows),
            "",
            f"ZIPO's rank (1 = best, among all rows): {rank_text}. " + goals(summary, name),
            "",
            table_markdown(summary, rows, name),
            "",
            f"![{name}]({repo_link(fig_path)})",
        ]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    main()
