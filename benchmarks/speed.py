"""Training speed: ZIPO vs SCVI per epoch, FLOPs against the matmul bound, N vs 2N, sparse RSS.

Usage (from the repository root)::

    python benchmarks/speed.py [--n-cells 4000] [--n-genes 2000] [--epochs 5]

Measured in one run on one machine:

1. Time per training epoch and cells per second of ZIPO (default and paper presets) and of
   scvi-tools SCVI on the same simulated data, with the same batch size (timed from the start
   of an epoch to the end of its last training step, so validation is not counted; the first
   epoch is dropped; median of the rest).
2. The FLOPs of one training step (forward and backward of every linear layer; the first layer
   needs no input gradient) divided by the step time, against torch's own dense matmul
   throughput for exactly those shapes measured here, now: ``epoch / bound`` says how close
   training gets to the machine's limit. A plain-torch step of the same module (no Lightning,
   no data loader) separates the framework's overhead from the model's.
3. Time per epoch at N and 2N cells.
4. Peak RSS while training on sparse input (``load_sparse_tensor=True``) and on the default
   dense minibatches, each in its own process, against the size of the CSR matrix.
5. Time to a trained model (``--to-model``; alone with ``--to-model-only``): ZIPO's default,
   scVI with a Poisson likelihood and early stopping (the denoising benchmark's peer) and scVI
   exactly as ``SCVI(adata).train()`` runs it (no early stopping), each trained to the end on
   90% of every cell's molecules, wall seconds from setup to trained model (validation
   included), epochs, and the held-out-molecule Poisson loss of each, so that time is set
   against what it buys. Written to ``to_model.json``, on whatever accelerator torch finds
   (a GPU where there is one).

Uses torch's default threads (the machine is shared: the load average is recorded). Writes
``benchmarks/results/speed/table.md``, ``speed.json`` and a figure, and the section
between ``<!-- BEGIN:speed -->`` and ``<!-- END:speed -->``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import (
    REPO,
    SIM_DEFAULTS,
    _peak_rss_mb,
    machine_info,
    mcv_split,
    print_result,
    proc_status_mb,
    quiet,
    run_json_child,
    run_scvi,
    run_zipo,
    saved_figure,
    score_mcv,
    update_docs_section,
)

OUT = REPO / "benchmarks/results/speed"
BATCH = 256


def _simulate(n_cells: int, n_genes: int, seed: int = 0):
    from zipo_scvi.data import simulate_counts

    sim = {**SIM_DEFAULTS, "n_cells": n_cells, "n_genes": n_genes}
    adata = simulate_counts(**sim, seed=seed)
    del adata.layers["true_rate"]
    return adata


def _epoch_timer():
    from lightning.pytorch.callbacks import Callback

    class EpochTimer(Callback):
        """Seconds from each training epoch's start to the end of its last training step."""

        def __init__(self):
            self.start = self.last = (0.0, 0.0)
            self.times, self.walls, self.steps = [], [], 0

        def on_train_epoch_start(self, trainer, pl_module):
            self.start = self.last = (time.process_time(), time.perf_counter())
            self.steps = 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.last = (time.process_time(), time.perf_counter())
            self.steps += 1

        def on_train_epoch_end(self, trainer, pl_module):
            self.times.append(self.last[0] - self.start[0])
            self.walls.append(self.last[1] - self.start[1])

    return EpochTimer()


def build_model(kind: str, adata, **kw):
    """A ZIPO (``"zipo"``/``"zipo_paper"``) or SCVI (``"scvi"``) model on ``adata``."""
    if kind.startswith("zipo"):
        from zipo_scvi import ZIPO

        ZIPO.setup_anndata(adata)
        return ZIPO(adata, preset="paper" if kind == "zipo_paper" else "default", seed=0, **kw)
    from scvi.model import SCVI

    SCVI.setup_anndata(adata)
    return SCVI(adata, **kw)


def time_epochs(
    kind: str, adata, epochs: int, sparse: bool = False, batch_size: int = BATCH, **kw
) -> dict:
    """Median training-epoch CPU time (epochs after the first), wall time, cells per second."""
    model = build_model(kind, adata, **kw)
    timer = _epoch_timer()
    model.train(
        max_epochs=epochs,
        batch_size=batch_size,
        early_stopping=False,
        enable_progress_bar=False,
        load_sparse_tensor=sparse,
        callbacks=[timer],
    )
    n_train = len(model.train_indices)
    epoch = statistics.median(timer.times[1:] or timer.times)
    return {
        "epoch_s": epoch,
        "epoch_wall_s": statistics.median(timer.walls[1:] or timer.walls),
        "cells_per_s": n_train / epoch,
        "steps": timer.steps,
        "n_train": n_train,
        "epoch_times": timer.times,
        "model": model,
    }


#: The models of "time to a trained model": label -> runner of ``benchmarks._harness``.
TO_MODEL = {
    "ZIPO default": lambda train, seed: run_zipo(train, seed),
    "scVI Poisson, early stopping": lambda train, seed: run_scvi(
        train, seed, gene_likelihood="poisson"
    ),
    # what SCVI(adata).train() does: its own epoch rule, no early stopping
    "scVI defaults": lambda train, seed: run_scvi(
        train,
        seed,
        train={"max_epochs": None, "early_stopping": False, "check_val_every_n_epoch": None},
    ),
}


def time_to_model(adata, seed: int = 0) -> dict:
    """Each :data:`TO_MODEL` model trained to the end on an MCV split of ``adata``: wall
    seconds (setup, training with its validation, outputs), epochs, seconds per epoch and the
    held-out Poisson loss; the device torch trains on."""
    import torch

    train, test = mcv_split(adata, 0.9, seed)
    out = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    for label, runner in TO_MODEL.items():
        res = runner(train, seed)
        epochs = res["info"]["epochs"]
        out[label] = {
            "seconds": res["seconds"],
            "epochs": epochs,
            "s_per_epoch": res["seconds"] / max(epochs, 1),
            "poisson": score_mcv(res["denoised"], test, train)["poisson"],
        }
        print(f"{label}: {json.dumps(out[label])}", flush=True)
    return out


def linear_shapes(module) -> list[tuple[int, int, bool]]:
    """``(in, out, needs_input_grad)`` of every linear layer, in registration order."""
    from torch import nn

    shapes, first = [], True
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            shapes.append((layer.in_features, layer.out_features, not first))
            first = False
    return shapes


def step_flops(shapes, batch: int) -> float:
    """Matmul FLOPs of one training step: forward 2BIO, weight grad 2BIO, input grad 2BIO."""
    return float(sum(2 * batch * i * o * (3 if grad else 2) for i, o, grad in shapes))


def matmul_step_seconds(shapes, batch: int, reps: int = 30) -> float:
    """Torch's time for exactly the matmuls of one step (dense, float32), median of reps."""
    import torch

    tensors = [
        (torch.randn(batch, i), torch.randn(o, i), torch.randn(batch, o), grad)
        for i, o, grad in shapes
    ]

    def once():
        for x, w, dy, grad in tensors:
            x @ w.t()
            dy.t() @ x
            if grad:
                dy @ w

    return _median_cpu_s(once, reps, warmup=1)


def pure_step_seconds(module, x, reps: int = 20) -> float:
    """A plain-torch Adam step of the module on one dense minibatch (no Lightning, no loader)."""
    import torch

    module.train()
    opt = torch.optim.Adam(module.parameters(), lr=1e-4)
    tensors = {"X": x}

    def once():
        inference = module.inference(**module._get_inference_input(tensors))
        generative = module.generative(**module._get_generative_input(tensors, inference))
        loss = module.loss(tensors, inference, generative).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _median_cpu_s(once, reps, warmup=3)


def _median_cpu_s(fn, reps: int, warmup: int) -> float:
    """Median CPU seconds of one call of ``fn`` over ``reps`` timed calls after ``warmup``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def _cpu_ms(fn, reps: int = 20) -> float:
    for _ in range(3):
        fn()
    start = time.process_time()
    for _ in range(reps):
        fn()
    return (time.process_time() - start) / reps * 1000


def breakdown(adata, compile_loss: bool = False) -> dict:
    """Where the CPU time of one ZIPO default training step goes (milliseconds, median-free).

    The pieces are timed separately on the module and a minibatch of the data; the first
    layer's sparse alternative (torch CSR matmul) is timed at the data's density.
    """
    import torch

    from zipo_scvi import ZiPoModule
    from zipo_scvi._defaults import preset
    from zipo_scvi._module import scale_invariant_penalty

    module_kwargs, _ = preset("default")
    module_kwargs.pop("data_init")
    torch.manual_seed(0)
    module = ZiPoModule(adata.n_vars, **module_kwargs)
    opt = torch.optim.Adam(module.parameters(), lr=1e-4)
    x = torch.tensor(adata.X[:BATCH].toarray())
    tensors = {"X": x}

    def forward():
        inference = module.inference(x)
        generative = module.generative(**inference)
        return module.loss(tensors, inference, generative).loss

    def forward_backward():
        opt.zero_grad(set_to_none=True)
        forward().backward()

    def step():
        forward_backward()
        opt.step()

    def no_grad_forward():
        with torch.no_grad():
            forward()

    log_rate = torch.randn(x.shape, requires_grad=True)
    logit_z = torch.randn(x.shape, requires_grad=True)
    log_theta = torch.randn(x.shape, requires_grad=True)

    def loss_only(fn=module.likelihood.log_prob):
        (-fn(x, log_rate, logit_z, log_theta).sum()).backward()

    weight = module.encoder.first.weight

    def penalty():
        scale_invariant_penalty(weight).backward()

    shapes = linear_shapes(module)
    hidden = module.encoder.first.out_features
    w = torch.randn(hidden, adata.n_vars)
    dy = torch.randn(BATCH, hidden)
    csr = x.to_sparse_csr()
    out = {
        "step_ms": _cpu_ms(step),
        "forward_backward_ms": _cpu_ms(forward_backward),
        "forward_ms": _cpu_ms(no_grad_forward),
        "loss_fwd_bwd_ms": _cpu_ms(loss_only),
        "penalty_fwd_bwd_ms": _cpu_ms(penalty),
        "matmul_ms": matmul_step_seconds(shapes, BATCH) * 1000,
        "first_dense_ms": _cpu_ms(lambda: (x @ w.t(), dy.t() @ x)),
        "first_csr_ms": _cpu_ms(
            lambda: (torch.sparse.mm(csr, w.t()), torch.sparse.mm(csr.t().to_sparse_csr(), dy))
        ),
        "density": float(csr.values().numel() / x.numel()),
        "likelihood": module.likelihood.name,
    }
    out["adam_ms"] = out["step_ms"] - out["forward_backward_ms"]
    if compile_loss:
        start = time.perf_counter()
        compiled = torch.compile(module.likelihood.log_prob, dynamic=False)
        loss_only(compiled)
        out["compile_s"] = time.perf_counter() - start
        out["loss_compiled_ms"] = _cpu_ms(lambda: loss_only(compiled))
    return out


def _rss_child(args) -> None:
    """Subprocess: train ZIPO on a sparse AnnData and report peak RSS around training."""
    import anndata
    import scipy.sparse as sp

    quiet()
    adata = anndata.read_h5ad(args.rss_input)
    assert sp.issparse(adata.X)
    csr_mb = (adata.X.data.nbytes + adata.X.indices.nbytes + adata.X.indptr.nbytes) / 2**20
    model = build_model("zipo", adata)
    base = proc_status_mb("VmRSS")
    start = time.perf_counter()
    model.train(
        max_epochs=2,
        batch_size=BATCH,
        early_stopping=False,
        enable_progress_bar=False,
        load_sparse_tensor=args.sparse,
    )
    out = {
        "sparse_loader": bool(args.sparse),
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "csr_mb": csr_mb,
        "dense_mb": adata.n_obs * adata.n_vars * 4 / 2**20,
        "rss_before_train_mb": base,
        "peak_rss_mb": _peak_rss_mb(),
        "seconds_2_epochs": time.perf_counter() - start,
    }
    print_result(out)


def measure_rss(path: Path, sparse: bool) -> dict:
    cmd = [sys.executable, str(Path(__file__)), "--rss-child", "--rss-input", str(path)]
    cmd += ["--sparse"] if sparse else []
    try:
        return run_json_child(cmd, cwd=REPO)
    except RuntimeError as err:
        return {"error": str(err).strip().splitlines()[-1], "sparse_loader": sparse}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-cells", type=int, default=4000)
    parser.add_argument("--n-genes", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rss-cells", type=int, default=20000)
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sparse", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rss-input", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--compile-loss", action="store_true", help="also time torch.compile of the ZIP loss"
    )
    parser.add_argument(
        "--to-model", action="store_true", help="also time each model to a trained model"
    )
    parser.add_argument(
        "--to-model-only", action="store_true", help="only the time to a trained model"
    )
    parser.add_argument("--no-readme", action="store_true")
    parser.add_argument(
        "--report-only", action="store_true", help="rebuild table.md and docs page"
    )
    args = parser.parse_args(argv)
    if args.report_only:
        _write_report(None, args.no_readme)
        return
    import torch

    torch.set_num_threads(args.threads)
    if args.rss_child:
        _rss_child(args)
        return
    quiet()

    OUT.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    n, g = args.n_cells, args.n_genes
    argv_used = list(argv if argv is not None else sys.argv[1:])
    adata = _simulate(n, g)
    if args.to_model or args.to_model_only:
        timed = time_to_model(adata.copy())
        timed.update(
            {
                "n_cells": n,
                "n_genes": g,
                "machine": _machine(load_start),
                "argv": argv_used,
                "date": dt.date.today().isoformat(),
            }
        )
        (OUT / "to_model.json").write_text(json.dumps(timed, indent=1, default=float))
        if args.to_model_only:
            _write_report(None, args.no_readme)
            return
    results: dict = {"n_cells": n, "n_genes": g, "batch_size": BATCH, "models": {}}

    def log(msg):
        print(msg, flush=True)

    for kind in ("zipo", "zipo_paper", "scvi"):
        for sparse in (False, True) if kind == "zipo" else (False,):
            label = kind + (" sparse" if sparse else "")
            res = time_epochs(kind, adata.copy(), args.epochs, sparse=sparse)
            module = res.pop("model").module
            shapes = linear_shapes(module)
            flops = step_flops(shapes, BATCH)
            matmul = matmul_step_seconds(shapes, BATCH)
            x = torch.tensor(adata.X[:BATCH].toarray())
            pure = pure_step_seconds(module, x) if kind.startswith("zipo") else float("nan")
            full_steps = res["n_train"] / BATCH
            res.update(
                {
                    "step_gflop": flops / 1e9,
                    "matmul_step_s": matmul,
                    "matmul_gflops": flops / matmul / 1e9,
                    "bound_epoch_s": matmul * full_steps,
                    "pure_step_s": pure,
                    "pure_epoch_s": pure * full_steps,
                    "achieved_gflops": flops * full_steps / res["epoch_s"] / 1e9,
                }
            )
            res["epoch_over_bound"] = res["epoch_s"] / res["bound_epoch_s"]
            results["models"][label] = res
            log(f"{label}: {json.dumps({k: v for k, v in res.items() if k != 'epoch_times'})}")

    results["breakdown"] = breakdown(adata, compile_loss=args.compile_loss)
    log(f"breakdown: {results['breakdown']}")

    results["batch_sizes"] = {}
    for size in (128, 256, 512, 1024):
        res = time_epochs("zipo", adata.copy(), args.epochs, batch_size=size)
        shapes = linear_shapes(res.pop("model").module)
        bound = matmul_step_seconds(shapes, size) * res["n_train"] / size
        results["batch_sizes"][size] = {"epoch_s": res["epoch_s"], "bound_epoch_s": bound}
        log(f"batch {size}: {results['batch_sizes'][size]}")

    scaling = {}
    for cells in (n, 2 * n):
        data = adata if cells == n else _simulate(cells, g, seed=1)
        scaling[cells] = time_epochs("zipo", data.copy(), args.epochs)["epoch_s"]
        log(f"scaling {cells} cells: {scaling[cells]:.3f} s/epoch")
    results["scaling"] = {"N": n, "epoch_N": scaling[n], "epoch_2N": scaling[2 * n]}
    results["scaling"]["ratio"] = scaling[2 * n] / scaling[n]

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rss.h5ad"
        _simulate(args.rss_cells, g, seed=2).write_h5ad(path)
        results["rss"] = [measure_rss(path, sparse) for sparse in (True, False)]
    log(f"rss: {results['rss']}")
    results["machine"] = _machine(load_start)
    results["minutes"] = (time.perf_counter() - started) / 60
    results["date"] = dt.date.today().isoformat()
    results["argv"] = argv_used
    (OUT / "speed.json").write_text(json.dumps(results, indent=1, default=float))
    figure(results, OUT / "speed.png")
    _write_report(results, args.no_readme)


def _machine(load_start: float) -> dict[str, str]:
    """:func:`machine_info` with the load average at the start and torch's threads."""
    import torch

    machine = machine_info()
    machine["load_avg_start"] = f"{load_start:.2f}"
    machine["torch_threads"] = str(torch.get_num_threads())
    return machine


def _write_report(results: dict | None, no_docs: bool) -> None:
    """``table.md`` and the docs page from the time to a trained model (``to_model.json``) and
    the epoch timings (``results``, else ``speed.json``), each where measured."""
    if results is None and (OUT / "speed.json").exists():
        results = json.loads((OUT / "speed.json").read_text())
    parts = []
    if (OUT / "to_model.json").exists():
        parts.append(to_model_report(json.loads((OUT / "to_model.json").read_text())))
    if results is not None:
        parts.append(report(results, results.get("argv", [])))
    body = "\n".join(parts)
    (OUT / "table.md").write_text("# Training speed\n\n" + body)
    if not no_docs:
        update_docs_section("benchmarks/speed.md", "speed", body)
    print(body)


def to_model_report(timed: dict) -> str:
    """The table of :func:`time_to_model`'s results, with how and where they were measured.

    Examples
    --------
    >>> row = {"seconds": 10.0, "epochs": 20, "s_per_epoch": 0.5, "poisson": 0.1}
    >>> machine = {"cpu": "x", "cores": "2", "torch": "2", "torch_threads": "1"}
    >>> text = to_model_report({"device": "cpu", "ZIPO default": row, "machine": machine,
    ...     "n_cells": 4, "n_genes": 3, "argv": [], "date": "2026-12-05"})
    >>> "| ZIPO default | 10 | 20 | 0.500 | 0.10000 | 1.00x |" in text
    True
    """
    m = timed["machine"]
    labels = [k for k in TO_MODEL if k in timed]
    base = timed[labels[0]]["seconds"]
    lines = [
        "Time to a trained model: generated by "
        f"`{' '.join(['python benchmarks/speed.py', *timed['argv']])}` on {timed['date']}, "
        f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} with {m['torch_threads']} "
        f"thread(s), device {timed['device']}. Simulated data {timed['n_cells']} cells x "
        f"{timed['n_genes']} genes, each model trained to the end on 90% of every cell's "
        "molecules; wall seconds from setup to the trained model's outputs (validation "
        "included); held-out Poisson on the other 10% (lower is better).",
        "",
        "| model | wall s | epochs | s / epoch | held-out Poisson | time vs ZIPO |",
        "|---|---|---|---|---|---|",
    ]
    for label in labels:
        r = timed[label]
        lines.append(
            f"| {label} | {r['seconds']:.0f} | {r['epochs']} | {r['s_per_epoch']:.3f} | "
            f"{r['poisson']:.5f} | {r['seconds'] / base:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def report(results: dict, argv) -> str:
    m = results["machine"]
    lines = [
        f"Generated by `{' '.join(['python benchmarks/speed.py', *argv])}` on "
        f"{results['date']} ({results['minutes']:.0f} min): {m['cpu']}, {m['cores']} cores "
        f"shared with other jobs (load average {m['load_avg_start']} at the start, "
        f"{m['load_avg_1min']} at the end: timings are noisy and only ratios measured in this "
        f"run mean much), torch {m['torch']} with {m['torch_threads']} thread(s). Times are "
        "process CPU seconds (with one thread: the work done, unaffected by waiting for a "
        "shared core; wall seconds beside them). Simulated data "
        f"{results['n_cells']} cells x {results['n_genes']} genes, batch {results['batch_size']}"
        "; epoch = training steps only (validation excluded), median after the first epoch. "
        "Matmul bound = torch's own time, measured in this run, for the dense matmuls of one "
        "step (forward, weight and input gradients of every linear layer) x steps per epoch.",
        "",
        "| model | CPU s / epoch | wall s / epoch | cells / CPU s | GFLOP / step "
        "| matmul bound s / epoch | epoch / bound | plain-torch steps s / epoch "
        "| achieved GFLOP/s | matmul GFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    names = {
        "zipo": "ZIPO default",
        "zipo sparse": "ZIPO default, sparse loader",
        "zipo_paper": "ZIPO paper preset",
        "scvi": "scVI (defaults)",
    }
    for key, r in results["models"].items():
        pure = f"{r['pure_epoch_s']:.2f}" if np.isfinite(r["pure_epoch_s"]) else ""
        lines.append(
            f"| {names.get(key, key)} | {r['epoch_s']:.2f} | {r['epoch_wall_s']:.2f} | "
            f"{r['cells_per_s']:.0f} | {r['step_gflop']:.3f} | {r['bound_epoch_s']:.2f} | "
            f"**{r['epoch_over_bound']:.2f}** | {pure} | {r['achieved_gflops']:.1f} | "
            f"{r['matmul_gflops']:.1f} |"
        )
    b = results["breakdown"]
    models = results["models"]
    sparse_ratio = models["zipo sparse"]["epoch_s"] / models["zipo"]["epoch_s"]
    lines += [
        "",
        f"Where a ZIPO default step goes (CPU ms, one minibatch of {results['batch_size']} "
        f"cells): full step {b['step_ms']:.1f} = forward + backward "
        f"{b['forward_backward_ms']:.1f} + Adam {b['adam_ms']:.1f}; of which the "
        f"{b['likelihood'].upper()} likelihood (forward + backward, elementwise over cells x "
        f"genes) {b['loss_fwd_bwd_ms']:.1f}, the alpha_w penalty "
        f"{b['penalty_fwd_bwd_ms']:.1f}; all matmuls of the step {b['matmul_ms']:.1f}. First "
        f"layer forward + weight gradient: dense {b['first_dense_ms']:.1f} ms, torch CSR "
        f"{b['first_csr_ms']:.1f} ms at the data's density {100 * b['density']:.0f}%; a whole "
        f"epoch with sparse minibatches takes {sparse_ratio:.2f}x the dense one."
        + (
            f" `torch.compile` of the likelihood: {b['loss_compiled_ms']:.1f} ms instead of "
            f"{b['loss_fwd_bwd_ms']:.1f} after {b['compile_s']:.0f} s of compiling (results "
            "differ in the last float32 digits)."
            if "loss_compiled_ms" in b
            else ""
        ),
    ]
    zipo = results["models"]["zipo"]["epoch_over_bound"]
    ratio = results["scaling"]["ratio"]
    lines += [
        "",
        f"Goals of issue 7: an epoch within 1.5x of the matmul bound: ZIPO default "
        f"{zipo:.2f}x ({'met' if zipo <= 1.5 else f'not met, {zipo / 1.5:.2f}x over the goal'}"
        f"; paper preset {results['models']['zipo_paper']['epoch_over_bound']:.2f}x, scVI "
        f"{results['models']['scvi']['epoch_over_bound']:.2f}x); time per epoch at 2N within "
        f"1.9-2.1x of N: {ratio:.2f} ({'met' if 1.9 <= ratio <= 2.1 else 'not met'}). What "
        "stands between the epoch and the bound is work that is not a matmul: elementwise "
        "passes over cells x genes (likelihood, input transform and dropout, log-softmax), the "
        "alpha_w penalty over the first layer, Adam, and per-step Python/Lightning costs (the "
        "difference between an epoch and the plain-torch steps).",
    ]
    sizes = results.get("batch_sizes", {})
    if sizes:
        lines += [
            "",
            "Batch size (ZIPO default, CPU s per epoch, epoch / bound): "
            + "; ".join(
                f"{k}: {v['epoch_s']:.2f} s, {v['epoch_s'] / v['bound_epoch_s']:.2f}x"
                for k, v in sizes.items()
            )
            + ". Per-step costs (Python, Lightning, small layers) weigh less in larger batches.",
        ]
    s = results["scaling"]
    lines += [
        "",
        f"Growth with cells (ZIPO default): {s['epoch_N']:.2f} CPU s per epoch at {s['N']} cells, "
        f"{s['epoch_2N']:.2f} s at {2 * s['N']}: ratio **{s['ratio']:.2f}** (goal 1.9-2.1).",
        "",
        "| peak RSS, ZIPO training | cells | CSR size (MB) | dense size (MB) "
        "| RSS before training (MB) | peak RSS (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["rss"]:
        loader = "sparse minibatches" if r.get("sparse_loader") else "dense minibatches"
        if "error" in r:
            lines.append(f"| {loader} | failed: {r['error']} | | | | |")
            continue
        lines.append(
            f"| {loader} | {r['n_cells']} | {r['csr_mb']:.0f} | {r['dense_mb']:.0f} | "
            f"{r['rss_before_train_mb']:.0f} | {r['peak_rss_mb']:.0f} |"
        )
    lines += ["", "![speed](benchmarks/results/speed/speed.png)"]
    return "\n".join(lines) + "\n"


def figure(results: dict, path: Path) -> None:
    models = results["models"]
    labels = list(models)
    with saved_figure(path, 1, 2, figsize=(9, 3.2), dpi=100) as (_, axes):
        x = np.arange(len(labels))
        axes[0].bar(x - 0.2, [models[k]["epoch_s"] for k in labels], 0.4, label="measured epoch")
        bound = [models[k]["bound_epoch_s"] for k in labels]
        axes[0].bar(x + 0.2, bound, 0.4, label="matmul bound")
        axes[0].set_xticks(x, labels, fontsize=8)
        axes[0].set_ylabel("seconds per epoch")
        axes[0].legend(fontsize=8)
        s = results["scaling"]
        axes[1].plot([s["N"], 2 * s["N"]], [s["epoch_N"], s["epoch_2N"]], "o-", label="ZIPO")
        axes[1].plot([s["N"], 2 * s["N"]], [s["epoch_N"], 2 * s["epoch_N"]], "k--", label="x2")
        axes[1].set_xlabel("cells")
        axes[1].set_ylabel("seconds per epoch")
        axes[1].legend(fontsize=8)


if __name__ == "__main__":
    main()
