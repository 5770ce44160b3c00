"""Time per epoch of ZIPO's default validating every epoch against every few epochs.

Usage (from the repository root)::

    python benchmarks/validation_cadence.py hgmm1k-2000 immune559-all pbmc3k-2000 \\
        brain10k-500 --epochs 30 [--threads 1]

For each grid point (``benchmarks/grid.py``), the default preset is trained ``--epochs`` epochs
without early stopping from the same seed, with ``validation_steps=0`` (validation every epoch)
and with the preset's ``validation_steps`` (every few epochs where epochs are short), each
``--repeats`` times in turn. The weights train the same either way (the validation loader has
its own random generator), so the difference is the time validation takes. Prints one line per
point and writes ``benchmarks/results/validation_cadence.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import REPO, machine_info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("points", nargs="+", help="grid point names")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/validation_cadence.json"))
    args = parser.parse_args(argv)

    import torch

    from benchmarks.grid import GRID, load_point
    from zipo_scvi import ZIPO
    from zipo_scvi._defaults import preset

    if args.threads:
        torch.set_num_threads(args.threads)
    cadence = preset("default")[1]["validation_steps"]
    results = {}
    for name in args.points:
        (point,) = [p for p in GRID if p.name == name]
        adata = load_point(point)[0].copy()
        ZIPO.setup_anndata(adata)
        seconds: dict[int, list[float]] = {0: [], cadence: []}
        every = 1
        for _ in range(args.repeats):
            for steps in seconds:
                model = ZIPO(adata, seed=0)
                start = time.perf_counter()
                model.train(
                    max_epochs=args.epochs,
                    validation_steps=steps,
                    early_stopping=False,
                    enable_progress_bar=False,
                    seed=0,
                )
                seconds[steps].append((time.perf_counter() - start) / args.epochs)
                if steps:
                    every = model.trainer.check_val_every_n_epoch
        mean = {k: sum(v) / len(v) for k, v in seconds.items()}
        results[name] = {
            "shape": list(adata.shape),
            "validated every (epochs)": every,
            "s per epoch, validation every epoch": mean[0],
            f"s per epoch, validation_steps={cadence}": mean[cadence],
            "runs": {str(k): v for k, v in seconds.items()},
        }
        print(
            f"{name} {adata.n_obs} x {adata.n_vars}: {mean[0]:.3f} -> {mean[cadence]:.3f} s per "
            f"epoch (validating every {every} epochs)",
            flush=True,
        )
    info = {"machine": machine_info(), "torch_threads": torch.get_num_threads()}
    Path(args.out).write_text(json.dumps({**info, "epochs": args.epochs, **results}, indent=1))


if __name__ == "__main__":
    main()
