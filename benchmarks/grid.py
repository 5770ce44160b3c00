"""Denoising across data shapes: ZIPO's default against its peers on a grid of genes, cells and
sequencing depth.

Usage (from the repository root)::

    python benchmarks/grid.py                          # every grid point, seeds 0 1 2
    python benchmarks/grid.py --points pbmc3k-500 --seeds 0 --only ZIPO "scVI Poisson"
    python benchmarks/grid.py --report-only            # table + figure from saved rows
    python benchmarks/grid.py --rebuild --points brain10k-500   # rows.csv from the part file

Every run's rows are kept in the point's part file ``rows_<point>.csv`` (what ``--resume``
reads); ``rows.csv`` adds the scaled scores, which need the point's data, and ``--rebuild``
makes it again from the part files without running anything. Rows that exist only in
``rows.csv`` are lost by a rebuild: keep every row in its part file.

Each grid point is a real data set of the project (or the simulator) cut to a gene panel
(highly variable genes, ``seurat_v3`` on counts; ``all`` keeps every detected gene), optionally
subsampled in cells and thinned in depth (every count ``n -> Binomial(n, depth)``) before the
molecular cross-validation split of ``benchmarks/run_benchmark.py`` (same methods, same
subprocess runners, same scores).

Beside the held-out Poisson loss the report gives the scaled scores of the openproblems
denoising task, ``(none - method) / (none - perfect)``: no denoising (``D = X``) scores 0 and
perfect denoising (``D = Y``, the held-out counts) 1, for the MSE and for the Poisson loss,
the latter in molecular cross-validation's argument order (openproblems' own Poisson metric
passes its arguments the other way round, which rewards an all-zero output). On the simulation
without dropout the truth is the rate of the observed counts, so the truth itself is the best
possible denoiser: ``oracle share = (none - method) / (none - truth)`` is the share of the
achievable improvement each method takes.

Writes ``rows.csv``, ``table.md`` and ``margin.png`` under ``--out``; with the default ``--out``
also the page ``docs/benchmarks/grid.md`` and the README's "Across data shapes" block.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import (
    REPO,
    SIM_DEFAULTS,
    bars_around_zero,
    machine_info,
    mcv_split,
    saved_figure,
    score_mcv,
    update_docs_section,
    update_readme_section,
)
from benchmarks.run_benchmark import evaluate, load_dataset, parse_methods
from zipo_scvi._defaults import ERROR_BAR_LAMBDA
from zipo_scvi._metrics import thin_counts

CONTROL = "none (D = X)"
#: Report columns: row key -> title.
COLUMNS = {
    "poisson": "held-out Poisson",
    "poisson_scaled": "Poisson scaled",
    "mse_scaled": "MSE scaled",
    "mse_log_scaled": "MSE scaled, expected log",
    "oracle_share": "oracle share",
}
#: Cells with fewer counts on a point's genes are left out of it.
MIN_CELL_COUNTS = 10


@dataclass(frozen=True)
class Point:
    """One shape of data: a data set, a gene panel, a number of cells and a depth factor."""

    dataset: str
    genes: int | None  # None: all detected genes
    cells: int | None = None  # None: all cells
    depth: float = 1.0

    @property
    def name(self) -> str:
        parts = [self.dataset, "all" if self.genes is None else str(self.genes)]
        if self.cells:
            parts.append(f"{self.cells}c")
        if self.depth != 1.0:
            parts.append(f"d{self.depth:g}")
        return "-".join(parts)


#: The grid: panels of 500 and 2,000 HVGs and all detected genes; 559 to 10,000 cells; full
#: and quarter depth; the simulation without dropout (an oracle exists).
GRID: tuple[Point, ...] = (
    Point("pbmc3k", 500),
    Point("pbmc3k", 2000),
    Point("pbmc3k", None),
    Point("pbmc3k", 2000, depth=0.25),
    Point("immune559", None),
    Point("brain10k", 500),
    Point("hgmm1k", 2000),
    Point("oracle-sim", 1000, 2000),
)


def load_point(point: Point, seed: int = 0):
    """The counts of a grid point (before the MCV split) and a description."""
    if point.dataset == "oracle-sim":
        from zipo_scvi.data import simulate_counts

        sim = {**SIM_DEFAULTS, "n_cells": point.cells, "n_genes": point.genes}
        sim["dropout_midpoint"] = None  # the truth is the rate of the observed counts
        adata = simulate_counts(**sim, seed=seed)
        return adata, f"simulation without dropout, {adata.n_obs} cells x {adata.n_vars} genes"
    adata, desc, _ = load_dataset(point.dataset, 0, 0)
    adata.var_names_make_unique()
    rng = np.random.default_rng(seed)
    if point.cells and point.cells < adata.n_obs:
        adata = adata[np.sort(rng.choice(adata.n_obs, point.cells, replace=False))].copy()
    if point.depth != 1.0:  # keep each molecule with probability depth (binomial thinning)
        adata.X = thin_counts(adata.X, point.depth, rng)[0].astype(np.float32)
    detected = np.asarray((adata.X > 0).sum(axis=0)).ravel() >= 3
    adata = adata[:, detected].copy()
    if point.genes is not None and point.genes < adata.n_vars:
        import scanpy as sc

        hvg = sc.pp.highly_variable_genes(
            adata, n_top_genes=point.genes, flavor="seurat_v3", inplace=False
        )
        adata = adata[:, hvg["highly_variable"].to_numpy()].copy()
    # cells with (almost) nothing on the panel: the split can leave them without a training
    # count, on which scVI's log library is -inf (brain10k's 500 HVGs: 9 empty cells)
    enough = np.asarray(adata.X.sum(axis=1)).ravel() >= MIN_CELL_COUNTS
    if not enough.all():
        desc += f"; {int((~enough).sum())} cells with fewer than {MIN_CELL_COUNTS} counts dropped"
        adata = adata[enough].copy()
    mean_total = float(np.asarray(adata.X.sum(axis=1)).mean())
    desc += f"; {adata.n_obs} cells x {adata.n_vars} genes, {mean_total:.0f} UMIs per cell"
    return adata, desc


#: The row label of a simulation's true rates scored as a denoiser (not a peer: the best any
#: method can do on held-out Poisson, and the control that shows what the MSE of ``log1p``
#: of rates does to perfect rates).
TRUTH = "truth (the simulation's rates)"


def controls(adata, seeds) -> tuple[pd.DataFrame, list[dict]]:
    """Per seed, the scores of perfect denoising (``D = Y``) and, where the data have a truth,
    the truth scored like a method's output: the controls (with the truth's Poisson as
    ``poisson_oracle``) and the truth's rows (none without a truth)."""
    rows, truth = [], []
    for seed in seeds:
        train, test = mcv_split(adata, fraction=0.9, seed=seed)
        total_x, total_y = float(train.X.sum()), float(test.sum())
        perfect = score_mcv(test * (total_x / total_y), test, train)
        row = {"seed": seed, "poisson_perfect": perfect["poisson"], "mse_perfect": perfect["mse"]}
        if "true_rate" in train.layers:
            scores = score_mcv(train.layers["true_rate"], test, train)
            row["poisson_oracle"] = scores["poisson"]
            truth.append({"method": TRUTH, "seed": seed, **scores})
        rows.append(row)
    return pd.DataFrame(rows), truth


def add_scaled(rows: pd.DataFrame, ctrl: pd.DataFrame) -> pd.DataFrame:
    """Scaled scores per row: 0 = the ``none`` control of the same seed, 1 = perfect."""
    none = rows[rows["method"] == CONTROL].set_index("seed")[["poisson", "mse"]]
    out = rows.merge(ctrl, on="seed", how="left")
    base = none.reindex(out["seed"]).to_numpy()
    for k, metric in enumerate(("poisson", "mse")):
        gap = base[:, k] - out[f"{metric}_perfect"].to_numpy()
        out[f"{metric}_scaled"] = (base[:, k] - out[metric]) / gap
    if "mse_log" in out:  # another output of the method, scored by the same MSE
        gap = base[:, 1] - out["mse_perfect"].to_numpy()
        out["mse_log_scaled"] = (base[:, 1] - out["mse_log"]) / gap
    if "poisson_oracle" in out:
        out["oracle_share"] = (base[:, 0] - out["poisson"]) / (base[:, 0] - out["poisson_oracle"])
    return out


def _fmt(mean: float, err: float, digits: int) -> str:
    if np.isnan(mean):
        return ""
    return f"{mean:.{digits}f}" + ("" if np.isnan(err) else f" ± {err:.{digits}f}")


def report(out: Path) -> str:
    """The grid table (one line per point and method) and the margin figure."""
    rows = pd.read_csv(out / "rows.csv")
    meta = json.loads((out / "meta.json").read_text()) if (out / "meta.json").exists() else {}
    ok = _finished_in_grid_order(rows)
    metrics = [m for m in COLUMNS if m in ok]
    lines = [
        "Held-out Poisson (MCV, lower is better) and the openproblems scaled scores (`none` = 0,"
        " perfect = 1; higher is better; the Poisson one in MCV's argument order: openproblems'"
        " own code passes its Poisson arguments the other way round, which rewards an all-zero"
        " output). Oracle share: on the simulation without dropout, the share of the"
        " improvement over `none` that the truth itself achieves. Mean ± λ·SEM over seeds"
        f" (λ = {ERROR_BAR_LAMBDA:.3f}).",
        "",
        "MSE scaled, expected log: the same MSE score for the log-normalised expression each"
        " method's rates predict at the held-out depth (`zipo_scvi._metrics.mcv_log_mse`)"
        " instead of `log1p` of the rates, which overstates genes expected at under one"
        " molecule; the `none` row shows what that step alone gives to the raw counts (taken"
        " as rates); blank for rows run before it was added. On the simulation the truth's own"
        " rates are scored too (not a peer): they score below `none` on the MSE of `log1p` of"
        " rates and above every method on the expected log.",
        "",
        "| grid point | shape | method | "
        + " | ".join(COLUMNS[m] for m in metrics)
        + " | margin to best peer | seeds |",
        "|---|---|---|" + "---|" * len(metrics) + "---|---|",
    ]
    margins = []
    for point, sub in ok.groupby("point", sort=False):
        grouped = sub.groupby("method", sort=False)[metrics]
        mean, err, count = grouped.mean(), grouped.sem() * ERROR_BAR_LAMBDA, grouped.size()
        peers = _peers(mean)
        best_peer = peers["poisson"].idxmin() if len(peers) else None
        shape = sub["shape"].iloc[0]
        for method in mean.index:
            margin = ""
            if method == "ZIPO" and best_peer is not None:
                rel = 100 * _relative(mean.loc["ZIPO", "poisson"], peers.loc[best_peer, "poisson"])
                overlap = (
                    abs(mean.loc["ZIPO", "poisson"] - peers.loc[best_peer, "poisson"])
                    <= err.loc["ZIPO", "poisson"] + err.loc[best_peer, "poisson"]
                )
                margin = f"{rel:+.2f}% vs {best_peer}" + (
                    " (error bars overlap)" if overlap else ""
                )
                margins.append((point, rel, best_peer))
            cells = [point, shape, method]
            for m in metrics:
                cells.append(
                    _fmt(
                        mean.loc[method].get(m, np.nan),
                        err.loc[method].get(m, np.nan),
                        5 if m == "poisson" else 3,
                    )
                )
            cells += [margin, str(int(count.loc[method]))]
            lines.append("| " + " | ".join(cells) + " |")
    if margins:
        _figure(margins, out / "margin.png")
        lines += ["", "![ZIPO's margin to the best peer across the grid](margin.png)"]
    if meta:
        lines += [
            "",
            f"`{meta.get('command', '')}` on {meta.get('date', '')} "
            f"({meta.get('machine', {}).get('cpu', '')}, "
            f"{meta.get('machine', {}).get('cores', '')} cores).",
        ]
    return "\n".join(lines)


def paired(out: Path) -> str:
    """ZIPO's study rows against the default, each on the seeds both have at a point."""
    ok = _finished_in_grid_order(pd.read_csv(out / "rows.csv"))
    lines = [
        "| grid point | study row | seeds | study row's held-out Poisson | ZIPO (same seeds) "
        "| change | epochs (study row, ZIPO) |",
        "|---|---|---|---|---|---|---|",
    ]
    for point, sub in ok.groupby("point", sort=False):
        default = sub[sub["method"] == "ZIPO"].set_index("seed")
        for method in dict.fromkeys(sub["method"]):
            if not method.startswith("ZIPO ("):
                continue
            study = sub[sub["method"] == method].set_index("seed")
            seeds = sorted(set(study.index) & set(default.index))
            if not seeds:
                continue
            a, b = study.loc[seeds], default.loc[seeds]
            change = 100 * _relative(a["poisson"].mean(), b["poisson"].mean())
            lines.append(
                f"| {point} | {method} | {', '.join(str(int(s)) for s in seeds)} "
                f"| {a['poisson'].mean():.5f} | {b['poisson'].mean():.5f} | {change:+.2f}% "
                f"| {a['epochs'].mean():.0f}, {b['epochs'].mean():.0f} |"
            )
    return "\n".join(lines)


def _finished_in_grid_order(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows without an error, sorted by their point's place in :data:`GRID` (others last),
    otherwise as they are."""
    if "error" in rows:
        rows = rows[rows["error"].isna()]
    order = {point.name: i for i, point in enumerate(GRID)}
    return rows.sort_values("point", key=lambda p: p.map(order).fillna(len(order)), kind="stable")


def _is_peer(method: str) -> bool:
    """A peer is any method but ZIPO (its default and study rows), ``none`` and the truth."""
    return not method.startswith(("ZIPO", "none")) and method != TRUTH


def _peers(mean):
    """The rows (methods) of a per-method table that are peers."""
    return mean.drop(index=[i for i in mean.index if not _is_peer(i)])


def _relative(value: float, reference: float) -> float:
    """``(value - reference) / |reference|``: below 0 when ``value`` is the lower (better) loss,
    also for the negative losses of data sets whose MCV Poisson is below 0."""
    return (value - reference) / abs(reference)


def glance(out: Path) -> str:
    """The README block: ZIPO against the best peer at each grid point, and the figure."""
    rows = pd.read_csv(out / "rows.csv")
    meta = json.loads((out / "meta.json").read_text()) if (out / "meta.json").exists() else {}
    ok = _finished_in_grid_order(rows)
    lines = [
        "| data shape | cells x genes | ZIPO held-out Poisson | best peer | ZIPO vs best peer "
        "| ZIPO MSE scaled, expected log | seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    for point, sub in ok.groupby("point", sort=False):
        mean = sub.groupby("method", sort=False)["poisson"].mean()
        peers = _peers(mean)
        if "ZIPO" not in mean or not len(peers):
            continue
        best = peers.idxmin()
        seeds = int((sub["method"] == "ZIPO").sum())
        zipo = sub[sub["method"] == "ZIPO"]
        logged = zipo.get("mse_log_scaled", pd.Series(dtype=float)).dropna()
        short = f" ({len(logged)} seed{'s' * (len(logged) != 1)})" if len(logged) < seeds else ""
        mse = f"{logged.mean():.3f}{short}"
        lines.append(
            f"| {point} | {sub['shape'].iloc[0]} | {mean['ZIPO']:.5f} | {best} "
            f"{peers[best]:.5f} | {100 * _relative(mean['ZIPO'], peers[best]):+.2f}% "
            f"| {mse if len(logged) else ''} | {seeds} |"
        )
    machine = meta.get("machine", {})
    lines += [
        "",
        "Points: a real 10x set cut to its 500 or 2,000 most variable genes (`seurat_v3`) or all "
        "detected genes, at full depth or thinned to a quarter (`d0.25`), and a simulation "
        "without dropout. MSE scaled, expected log: openproblems' MSE score (raw counts = 0, "
        "the held-out counts themselves = 1) of the log-normalised expression ZIPO predicts at "
        "the held-out depth (`get_log_normalized_expression`). Peers run: "
        + ", ".join(sorted(filter(_is_peer, set(ok["method"]))))
        + ". "
        f"{meta.get('date', '')}, {machine.get('cpu', '')} ({machine.get('cores', '')} cores); "
        "all scores (openproblems' scaled scores, the oracle share) on the "
        "[grid page](docs/benchmarks/grid.md), written by "
        "[`benchmarks/grid.py`](benchmarks/grid.py).",
        "",
        "![ZIPO's held-out Poisson against the best peer at each data shape]"
        "(benchmarks/results/grid/margin.png)",
    ]
    return "\n".join(lines)


def _figure(margins: list[tuple[str, float, str]], path: Path) -> None:
    labels = [f"{point} (vs {peer})" for point, _, peer in margins]
    values = [m[1] for m in margins]
    with saved_figure(path, figsize=(6, 0.35 * len(labels) + 1.2)) as (_, ax):
        colors = ["tab:green" if v < 0 else "tab:red" for v in values]
        bars_around_zero(ax, labels, values, colors)
        ax.set_xlabel("ZIPO held-out Poisson vs best peer (%)\n< 0: ZIPO better")


def _replace_point(rows_path: Path, point: str, frame: pd.DataFrame) -> None:
    """Put ``frame`` in place of ``point``'s rows in ``rows_path``, read just before writing
    so that a run on another point that finished meanwhile keeps its rows."""
    old = pd.read_csv(rows_path) if rows_path.exists() else pd.DataFrame()
    if len(old):
        old = old[old["point"] != point]
    pd.concat([old, frame], ignore_index=True).to_csv(rows_path, index=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", nargs="+", help="grid point names (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", help="row labels to run (default: all)")
    parser.add_argument("--method", action="append", default=[], help="as run_benchmark.py")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/grid"))
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--resume", action="store_true", help="keep finished rows")
    parser.add_argument("--rerun", nargs="+", help="with --resume: row labels to run again")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--rebuild",
        action="store_true",
        help="score the points' part files (rows_<point>.csv) again into rows.csv; no runs",
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        methods = parse_methods(args.method, args.only and [*args.only, CONTROL])
        points = [p for p in GRID if not args.points or p.name in args.points]
        for point in points:
            part = out / f"rows_{point.name}.csv"
            if args.rebuild and not part.exists():
                continue
            adata, desc = load_point(point)
            print(f"{point.name}: {desc}", flush=True)
            if args.rebuild:
                rows = pd.read_csv(part).to_dict("records")
            else:
                rows = evaluate(
                    adata,
                    point.name,
                    methods,
                    args.seeds,
                    None,
                    print,
                    args.timeout,
                    1,
                    part,
                    resume=args.resume,
                    rerun=args.rerun,
                )
            seeds = sorted({int(row["seed"]) for row in rows})
            ctrl, truth = controls(adata, seeds)
            frame = add_scaled(pd.DataFrame(rows + truth), ctrl)
            frame.insert(0, "point", point.name)
            frame.insert(1, "shape", f"{adata.n_obs} x {adata.n_vars}")
            _replace_point(out / "rows.csv", point.name, frame)
    if not args.report_only and not args.rebuild:  # a rebuild keeps the runs' command
        meta = {
            "command": "python benchmarks/grid.py " + " ".join(argv or sys.argv[1:]),
            "date": dt.date.today().isoformat(),
            "machine": machine_info(),
        }
        (out / "meta.json").write_text(json.dumps(meta, indent=1))
    body = report(out)
    (out / "table.md").write_text("# Denoising across data shapes\n\n" + body + "\n")
    print(body)
    if out.resolve() == (REPO / "benchmarks/results/grid").resolve():
        page = body.replace("](margin.png)", "](benchmarks/results/grid/margin.png)")
        update_docs_section("benchmarks/grid.md", "grid", page)
        update_docs_section("benchmarks/grid.md", "grid-paired", paired(out))
        update_readme_section(REPO / "README.md", "grid-glance", glance(out))


if __name__ == "__main__":
    main()
