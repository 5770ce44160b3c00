"""Scale: time per epoch and peak RSS in memory and backed, N/2N/4N cells, and an atlas-sized file.

Usage (from the repository root)::

    nice -n 10 python benchmarks/scale.py [--n-cells 20000] [--n-genes 2000] [--epochs 4]
        [--target-cells 200000] [--target-genes 5000] [--target-steps 150] [--readme]

What it measures, each configuration in its own process (so that its peak RSS is its own):

1. Growth with cells: N, 2N and 4N simulated cells written to ``.h5ad`` first (in blocks,
   :func:`zipo_scvi.data.simulate_to_h5ad`), then ZIPO (default preset) trained for
   ``--epochs`` epochs on the counts loaded in memory (``anndata.read_h5ad``) and backed
   (:func:`zipo_scvi.read_backed`: rows read from the file per minibatch). Time per epoch is the
   median over the epochs after the first, from the start of an epoch to its end (validation
   included), in wall-clock and in this process's CPU seconds (one torch thread, so CPU time is
   what the epoch cost, whatever else runs on the machine). Peak RSS of the process against the
   file size and against the dense matrix.
2. The atlas-sized target of the issue: ``--target-cells x --target-genes`` (200,000 x 5,000)
   simulated to disk in blocks and trained backed. A full epoch is long on two shared cores, so
   the epoch is cut to ``--target-steps`` training steps (Lightning's ``limit_train_batches``)
   and a proportional share of validation steps, and the full epoch is extrapolated from the
   measured time per step: ``train_s / steps * steps_per_epoch + val_s / val_steps *
   val_steps_per_epoch``. The denoised matrix is then written to an ``.h5ad`` layer in blocks
   (:func:`zipo_scvi.write_denoised`), and the peak RSS covers reading, the data-dependent
   initialisation (a pass over all counts), training and writing.

Writes ``benchmarks/results/scale/scale.json``, ``table.md`` and ``scale.png``; with
``--readme`` also the section of ``docs/benchmarks/scale.md`` between
``<!-- BEGIN:scale-benchmark -->`` and ``<!-- END:scale-benchmark -->``. Large files go to
``--data-dir`` (default ``/tmp/zipo_scale_bench``), never into the repository; the denoised
output of the target is deleted after it is measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "scale"
GIB = 1024**3


# ----------------------------------------------------------------------------- child process
def _rss_bytes(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, in bytes."""
    from benchmarks._harness import proc_status_mb

    return int((proc_status_mb(field) or 0.0) * 2**20)


def _child(spec: dict) -> dict:
    """Train (and optionally write) one configuration; return its timings and memory."""
    import warnings

    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    import anndata
    import torch
    from lightning.pytorch.callbacks import Callback

    from zipo_scvi import ZIPO, read_backed, write_denoised

    torch.set_num_threads(spec["threads"])
    from benchmarks._harness import reset_peak_rss

    baseline = _rss_bytes("VmRSS")
    phases: dict[str, int] = {}
    resets = reset_peak_rss()

    def phase(name: str) -> None:
        phases[name] = _rss_bytes("VmHWM")
        reset_peak_rss()

    class EpochTimer(Callback):
        """Wall and CPU seconds of each epoch and of its validation part."""

        def __init__(self):
            self.epochs: list[dict] = []

        def on_train_epoch_start(self, trainer, pl_module):
            self._start = (time.perf_counter(), time.process_time())
            self._val = None

        def on_validation_epoch_start(self, trainer, pl_module):
            if trainer.sanity_checking:
                return
            self._val = (time.perf_counter(), time.process_time())

        def on_validation_epoch_end(self, trainer, pl_module):
            if trainer.sanity_checking or self._val is None:
                return
            self._val = (time.perf_counter() - self._val[0], time.process_time() - self._val[1])

        def on_train_epoch_end(self, trainer, pl_module):
            wall = time.perf_counter() - self._start[0]
            cpu = time.process_time() - self._start[1]
            val = self._val if isinstance(self._val, tuple) and self._val[0] < wall else (0, 0)
            self.epochs.append(
                {
                    "wall_s": wall,
                    "cpu_s": cpu,
                    "val_wall_s": val[0],
                    "val_cpu_s": val[1],
                    "train_steps": int(trainer.num_training_batches),
                    "val_steps": int(sum(trainer.num_val_batches or [0])),
                }
            )

    start = time.perf_counter()
    path = spec["path"]
    adata = read_backed(path) if spec["mode"] == "backed" else anndata.read_h5ad(path)
    load_s = time.perf_counter() - start
    phase("load")
    start = time.perf_counter()
    ZIPO.setup_anndata(adata, batch_key="batch")
    model = ZIPO(adata, seed=0)
    setup_s = time.perf_counter() - start
    phase("setup")
    timer = EpochTimer()
    trainer_kwargs = {}
    if spec.get("limit_train_batches"):
        trainer_kwargs["limit_train_batches"] = spec["limit_train_batches"]
        trainer_kwargs["limit_val_batches"] = spec["limit_val_batches"]
    model.train(
        max_epochs=spec["epochs"],
        callbacks=[timer],
        enable_progress_bar=False,
        early_stopping=False,
        seed=0,
        **trainer_kwargs,
    )
    phase("train")
    out = {
        "mode": spec["mode"],
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "load_s": load_s,
        "setup_s": setup_s,
        "epochs": timer.epochs,
        "n_train": len(model.train_indices),
        "n_val": len(model.validation_indices),
        "batch_size": 256,
        "rss_baseline": baseline,
        "rss_peak_resets": resets,
    }
    if spec.get("write"):
        start = time.perf_counter()
        write_denoised(model, spec["write"], layers=["zipo_denoised"], batch_size=1024)
        out["write_s"] = time.perf_counter() - start
        out["write_bytes"] = os.path.getsize(spec["write"])
        phase("write")
        Path(spec["write"]).unlink()
    out["rss_peak_phases"] = phases
    out["rss_peak"] = max(phases.values())
    return out


def _run_child(spec: dict) -> dict:
    from benchmarks._harness import run_json_child

    return run_json_child(
        [sys.executable, str(Path(__file__).resolve()), "_child", json.dumps(spec)],
        env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": str(spec["threads"])},
    )


# ----------------------------------------------------------------------------- summaries
def _median_epoch(run: dict, key: str) -> float:
    epochs = run["epochs"][1:] or run["epochs"]
    return statistics.median(e[key] for e in epochs)


def _extrapolate(run: dict) -> dict:
    """Full-epoch time from an epoch cut to ``limit_train_batches`` steps."""
    epochs = run["epochs"][1:] or run["epochs"]
    full_train = math.ceil(run["n_train"] / run["batch_size"])
    full_val = math.ceil(run["n_val"] / run["batch_size"])
    out = {"train_steps_per_epoch": full_train, "val_steps_per_epoch": full_val}
    for unit in ("wall", "cpu"):
        train = statistics.median(
            (e[f"{unit}_s"] - e[f"val_{unit}_s"]) / e["train_steps"] for e in epochs
        )
        val = statistics.median(e[f"val_{unit}_s"] / max(e["val_steps"], 1) for e in epochs)
        out[f"{unit}_s_per_step"] = train
        out[f"{unit}_s_per_val_step"] = val
        out[f"{unit}_s_per_epoch"] = train * full_train + val * full_val
    out["measured_train_steps"] = epochs[0]["train_steps"]
    out["measured_val_steps"] = epochs[0]["val_steps"]
    return out


def _fmt_gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def _table(results: dict) -> str:
    rows = [
        "| cells | genes | data | s / epoch (wall) | CPU s / epoch | peak RSS GiB | "
        "RSS after imports GiB | file GiB | dense GiB | peak RSS / file |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in results["growth"]:
        rows.append(
            f"| {run['n_cells']:,} | {run['n_genes']:,} | {run['mode']} | "
            f"{_median_epoch(run, 'wall_s'):.1f} | {_median_epoch(run, 'cpu_s'):.1f} | "
            f"{_fmt_gib(run['rss_peak'])} | {_fmt_gib(run['rss_baseline'])} | "
            f"{_fmt_gib(run['file_bytes'])} | {_fmt_gib(run['dense_bytes'])} | "
            f"{run['rss_peak'] / run['file_bytes']:.2f} |"
        )
    target = results.get("target")
    if target:
        ext = target["extrapolated"]
        rows.append(
            f"| {target['n_cells']:,} | {target['n_genes']:,} | backed, "
            f"{ext['measured_train_steps']} of {ext['train_steps_per_epoch']} steps | "
            f"{ext['wall_s_per_epoch']:.0f} (extrapolated) | "
            f"{ext['cpu_s_per_epoch']:.0f} (extrapolated) | {_fmt_gib(target['rss_peak'])} | "
            f"{_fmt_gib(target['rss_baseline'])} | {_fmt_gib(target['file_bytes'])} | "
            f"{_fmt_gib(target['dense_bytes'])} | "
            f"{target['rss_peak'] / target['file_bytes']:.2f} |"
        )
    return "\n".join(rows)


def _ratios(results: dict) -> list[str]:
    lines = []
    for mode in ("memory", "backed"):
        runs = [r for r in results["growth"] if r["mode"] == mode]
        runs.sort(key=lambda r: r["n_cells"])
        for unit, label in (("cpu_s", "CPU"), ("wall_s", "wall")):
            times = [_median_epoch(r, unit) for r in runs]
            ratios = [b / a for a, b in itertools.pairwise(times)]
            steps = " / ".join(f"{ratio:.2f}x" for ratio in ratios)
            line = f"- {mode}, {label} time per epoch, each doubling of cells: {steps}"
            if unit == "cpu_s":
                missed = [r for r in ratios if not 1.9 <= round(r, 2) <= 2.1]
                line += (
                    " (all within 1.9x-2.1x)"
                    if not missed
                    else " (outside 1.9x-2.1x: " + ", ".join(f"{r:.2f}x" for r in missed) + ")"
                )
            lines.append(line)
    return lines


def _figure(results: dict, path: Path) -> None:
    import matplotlib.ticker

    from benchmarks._harness import saved_figure

    with saved_figure(path, 1, 2, figsize=(10, 4), dpi=120) as (_, (left, right)):
        colors = {"memory": "tab:blue", "backed": "tab:orange"}
        for mode in ("memory", "backed"):
            runs = sorted(
                (r for r in results["growth"] if r["mode"] == mode), key=lambda r: r["n_cells"]
            )
            cells = [r["n_cells"] for r in runs]
            cpu = [_median_epoch(r, "cpu_s") for r in runs]
            left.plot(cells, cpu, "o-", color=colors[mode], label=f"{mode} (CPU s)")
            left.plot(cells, [cpu[0] * c / cells[0] for c in cells], ":", color=colors[mode], lw=1)
            right.plot(
                cells, [r["rss_peak"] / GIB for r in runs], "o-", color=colors[mode], label=mode
            )
        runs = sorted(
            (r for r in results["growth"] if r["mode"] == "backed"), key=lambda r: r["n_cells"]
        )
        cells = [r["n_cells"] for r in runs]
        right.plot(cells, [r["file_bytes"] / GIB for r in runs], "k--", lw=1, label="file size")
        right.plot(cells, [r["dense_bytes"] / GIB for r in runs], "k:", lw=1, label="dense matrix")
        baseline = statistics.median(r["rss_baseline"] for r in results["growth"]) / GIB
        right.axhline(baseline, color="grey", lw=0.8, label="after imports")
        target = results.get("target")
        if target:
            x = [target["n_cells"]]
            label = f"{target['n_cells']:,} x {target['n_genes']:,}"
            right.plot(
                x, [target["rss_peak"] / GIB], "s", color="tab:red", label=f"backed {label}"
            )
            right.plot(x, [target["file_bytes"] / GIB], "kx", label=f"file {label}")
            right.plot(x, [target["dense_bytes"] / GIB], "k+", ms=9, label=f"dense {label}")
            right.axhline(3, color="tab:red", lw=0.8, alpha=0.5, ls="--", label="3 GiB target")
        left.set_xlabel("cells")
        left.set_ylabel("CPU seconds per epoch (1 thread)")
        left.set_title(f"Time per epoch, {runs[0]['n_genes']:,} genes (dotted: proportional)")
        left.legend(fontsize=8)
        right.set_xscale("log")
        right.set_yscale("log")
        right.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        right.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        right.set_yticks([0.1, 0.25, 0.5, 1, 2, 3, 4])
        ticks = sorted(
            {r["n_cells"] for r in results["growth"]} | ({target["n_cells"]} if target else set())
        )
        right.set_xticks(ticks, [f"{t // 1000:,}k" for t in ticks])
        right.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        right.set_ylim(0.1, 8)
        right.set_xlabel("cells")
        right.set_ylabel("GiB")
        right.set_title("Peak RSS of the training process")
        right.legend(fontsize=7, loc="upper left", ncol=2)


def _markdown(results: dict) -> str:
    info = results["machine"]
    growth = results["growth"][0]
    lines = [
        f"Measured by `{results['command']}` on {info['cpu']} ({info['cores']} cores, shared; "
        f"1-minute load {info['load_avg_1min']} at the start), torch {info['torch']} with "
        f"{results['threads']} thread, scvi-tools {info.get('scvi-tools', '?')}, "
        f"{results['date']}. ZIPO default preset, batch size 256, each configuration in its own "
        f"process; {growth['n_genes']:,} genes for the N/2N/4N rows. s / epoch: median over "
        f"epochs 2-{results['epochs']}, validation included.",
        "",
        _table(results),
        "",
        "Growth with cells (N to 2N to 4N). Wall-clock seconds depend on the other jobs "
        "sharing the two cores; the CPU seconds of the one-thread training process do not, so "
        "the proportionality (2N within 1.9x-2.1x of N) is read on them:",
        "",
        *_ratios(results),
    ]
    target = results.get("target")
    if target:
        ext = target["extrapolated"]
        peak = target["rss_peak"] / GIB
        verdict = "under" if peak < 3 else "over"
        simulate = (
            f"Simulating it to disk in blocks of 5,000 cells took {target['simulate_s']:.0f} s. "
            if target["simulate_s"] is not None
            else ""
        )
        lines += [
            "",
            f"Atlas-sized file, {target['n_cells']:,} cells x {target['n_genes']:,} genes "
            f"({_fmt_gib(target['file_bytes'])} GiB on disk, "
            f"{_fmt_gib(target['dense_bytes'])} GiB as a dense float32 matrix), trained backed: "
            f"peak RSS **{peak:.2f} GiB** ({verdict} the 3 GiB target), of which "
            f"{_fmt_gib(target['rss_baseline'])} GiB is Python, torch and scvi-tools after "
            f"import. {simulate}Reading it backed took {target['load_s']:.1f} s, the count "
            f"check and data-dependent initialisation (two passes over all counts, in blocks) "
            f"{target['setup_s']:.0f} s. An epoch was cut to {ext['measured_train_steps']} of "
            f"{ext['train_steps_per_epoch']} training steps and {ext['measured_val_steps']} of "
            f"{ext['val_steps_per_epoch']} validation steps: {ext['wall_s_per_step']:.3f} s per "
            f"training step (wall; {ext['cpu_s_per_step']:.3f} CPU s), so a full epoch is "
            f"**extrapolated** to {ext['wall_s_per_epoch']:.0f} s wall "
            f"({ext['cpu_s_per_epoch']:.0f} CPU s), not measured whole.",
        ]
        phases = target.get("rss_peak_phases", {})
        if phases:
            names = {
                "load": "opening",
                "setup": "count check and initialisation",
                "train": "training",
                "write": "writing",
            }
            lines.append(
                "Peak RSS by phase: "
                + ", ".join(f"{names[k]} {_fmt_gib(v)} GiB" for k, v in phases.items())
                + "."
            )
        if "write_s" in target:
            lines.append(
                f"Writing the denoised {target['n_cells']:,} x {target['n_genes']:,} layer "
                f"({target['write_bytes'] / GIB:.2f} GiB file, counts copied along) in blocks "
                f"of 1,024 cells took {target['write_s']:.0f} s; the peak RSS above includes it."
            )
    lines += ["", "![scale](benchmarks/results/scale/scale.png)"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-cells", type=int, default=20_000, help="N of the N/2N/4N series")
    parser.add_argument("--n-genes", type=int, default=2_000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--target-cells", type=int, default=200_000)
    parser.add_argument("--target-genes", type=int, default=5_000)
    parser.add_argument("--target-steps", type=int, default=150)
    parser.add_argument("--target-epochs", type=int, default=2)
    parser.add_argument("--no-target", action="store_true", help="skip the atlas-sized file")
    parser.add_argument("--no-write", action="store_true", help="skip writing the target output")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", default="/tmp/zipo_scale_bench")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--readme", action="store_true", help="update docs/benchmarks/scale.md")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild table, figure (and the docs page with --readme) from the saved scale.json",
    )
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from benchmarks._harness import machine_info
    from zipo_scvi.data import simulate_to_h5ad

    data_dir, out_dir = Path(args.data_dir), Path(args.out)
    if args.report_only:
        results = json.loads((out_dir / "scale.json").read_text())
        return _report(results, out_dir, args.readme)
    data_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "command": "python benchmarks/scale.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "date": dt.date.today().isoformat(),
        "machine": machine_info(),
        "threads": args.threads,
        "epochs": args.epochs,
        "growth": [],
    }

    def simulated(n_cells: int, n_genes: int) -> tuple[Path, float | None]:
        path = data_dir / f"sim_{n_cells}x{n_genes}.h5ad"
        seconds = None  # None: the file was there from an earlier run
        if not path.exists():
            start = time.perf_counter()
            simulate_to_h5ad(path, n_cells, n_genes, n_batches=2, seed=0, chunk_size=5_000)
            seconds = time.perf_counter() - start
        return path, seconds

    for factor in (1, 2, 4):
        n_cells = args.n_cells * factor
        path, _ = simulated(n_cells, args.n_genes)
        for mode in ("memory", "backed"):
            spec = {
                "path": str(path),
                "mode": mode,
                "epochs": args.epochs,
                "threads": args.threads,
            }
            run = _run_child(spec)
            run["file_bytes"] = path.stat().st_size
            run["dense_bytes"] = n_cells * args.n_genes * 4
            results["growth"].append(run)
            print(
                f"{n_cells} cells {mode}: {_median_epoch(run, 'wall_s'):.1f} s/epoch wall, "
                f"{_median_epoch(run, 'cpu_s'):.1f} CPU s, "
                f"peak RSS {run['rss_peak'] / GIB:.2f} GiB",
                flush=True,
            )

    if not args.no_target:
        path, sim_s = simulated(args.target_cells, args.target_genes)
        n_val_full = args.target_cells - round(args.target_cells * 0.9)
        val_steps = max(
            1, round(args.target_steps * n_val_full / (args.target_cells - n_val_full))
        )
        spec = {
            "path": str(path),
            "mode": "backed",
            "epochs": args.target_epochs,
            "threads": args.threads,
            "limit_train_batches": args.target_steps,
            "limit_val_batches": val_steps,
            "write": None if args.no_write else str(data_dir / "target_denoised.h5ad"),
        }
        run = _run_child(spec)
        run["simulate_s"] = sim_s
        run["file_bytes"] = path.stat().st_size
        run["dense_bytes"] = args.target_cells * args.target_genes * 4
        run["extrapolated"] = _extrapolate(run)
        results["target"] = run
        print(
            f"target {args.target_cells} x {args.target_genes} backed: peak RSS "
            f"{run['rss_peak'] / GIB:.2f} GiB, extrapolated epoch "
            f"{run['extrapolated']['wall_s_per_epoch']:.0f} s wall",
            flush=True,
        )

    (out_dir / "scale.json").write_text(json.dumps(results, indent=1))
    return _report(results, out_dir, args.readme)


def _report(results: dict, out_dir: Path, readme: bool) -> dict:
    from benchmarks._harness import update_docs_section

    _figure(results, out_dir / "scale.png")
    markdown = _markdown(results)
    (out_dir / "table.md").write_text(markdown + "\n")
    if readme:
        update_docs_section("benchmarks/scale.md", "scale-benchmark", markdown)
    print(markdown)
    return results


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_child":
        sys.path.insert(0, str(ROOT))
        from benchmarks._harness import print_result

        print_result(_child(json.loads(sys.argv[2])))
    else:
        main()
