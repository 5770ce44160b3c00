"""The ``zipo`` command line: denoise a count matrix (or the embedded simulated data)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UserError(Exception):
    """A problem with the user's input or arguments (exit code 2, no traceback)."""


def _read_input(path: str | None):
    import anndata

    from .data import simulate_counts

    if path is None:
        return simulate_counts(n_cells=2000, n_genes=1000, n_groups=5, seed=0)
    p = Path(path)
    if not p.exists():
        raise UserError(f"input file {path!r} does not exist")
    if p.suffix != ".h5ad":
        raise UserError(f"cannot read {path!r}: expected an .h5ad file")
    try:
        return anndata.read_h5ad(p)
    except Exception as err:  # h5py/anndata raise many kinds
        raise UserError(
            f"{path!r} is not a readable .h5ad file ({err.__class__.__name__})"
        ) from err


def _denoise(args: argparse.Namespace) -> int:
    import scvi

    from ._model import ZIPO

    out = Path(args.output)
    if out.exists() and not args.force:
        raise UserError(f"output {str(out)!r} exists; pass --force to overwrite it")
    if args.input is not None and out.resolve() == Path(args.input).resolve():
        raise UserError("output must not be the input file")
    adata = _read_input(args.input)
    scvi.settings.seed = args.seed
    try:
        ZIPO.setup_anndata(adata, layer=args.layer, batch_key=args.batch_key)
    except ValueError as err:
        raise UserError(str(err)) from err
    model = ZIPO(adata, preset=args.preset)
    model.train(max_epochs=args.epochs, enable_progress_bar=not args.quiet)
    adata.layers["zipo_denoised"] = model.get_normalized_expression(
        library_size="latent", return_numpy=True
    )
    params = model.get_likelihood_parameters()
    if "zero_prob" in params:
        adata.layers["zipo_zero_prob"] = params["zero_prob"]
    adata.obs["zipo_library"] = params["library"]
    adata.obsm["X_zipo"] = model.get_latent_representation()
    adata.uns["zipo"] = {
        "preset": args.preset,
        "seed": args.seed,
        "hyperparameters": {
            k: list(v) if isinstance(v, tuple) else v for k, v in model.hyperparameters.items()
        },
        "epochs_trained": len(model.history["train_loss"]),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".h5ad", dir=out.parent)
    os.close(fd)
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if not args.quiet:
        print(f"wrote {out} ({adata.n_obs} cells x {adata.n_vars} genes)")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``zipo`` command."""
    parser = argparse.ArgumentParser(prog="zipo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("denoise", help="denoise counts; with no INPUT, the embedded simulation")
    d.add_argument("input", nargs="?", help="cells x genes raw counts (.h5ad)")
    d.add_argument("-o", "--output", default="zipo_denoised.h5ad", help="output .h5ad")
    d.add_argument("--layer", help="layer with the counts (default: X)")
    d.add_argument("--batch-key", help="obs column of batches")
    d.add_argument("--preset", default="default", choices=["default", "paper"])
    d.add_argument("--epochs", type=int, default=None, help="epoch cap (default: preset's)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--force", action="store_true", help="overwrite an existing output")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=_denoise)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``zipo`` command; returns the exit code (0 ok, 1 failure, 2 bad usage/input)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as err:
        print(f"zipo: error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
