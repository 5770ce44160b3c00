"""The ``zipo`` command line: denoise counts (or the embedded simulation), tune, prune, inspect.

Exit codes: 0 success, 1 failure while running, 2 bad usage or input (one-line message, no
traceback; set ``ZIPO_DEBUG=1`` to see the traceback of a failure), 130 after SIGINT (Ctrl-C)
and 143 after SIGTERM (temporary files are removed: each output is either complete or absent).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import logging
import os
import shlex
import signal
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

from .pp import training_history

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

#: Parameters of the embedded default dataset (the package's simulator).
EMBEDDED = {"n_cells": 2000, "n_genes": 1000, "n_groups": 5, "seed": 0}


class UserError(Exception):
    """A problem with the user's input or arguments (exit code 2, no traceback)."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: unwinds the run (temporary files are removed on the way).

    Not a ``KeyboardInterrupt``, which Lightning catches and turns into ``sys.exit(1)``; its
    own SIGTERM handling would end training quietly and let the run finish with exit 0.
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_SIGNALS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated (SIGTERM)"}


def _on_signal(signum: int, frame) -> None:
    for other in _SIGNALS:  # a second signal must not break the clean-up of the first
        signal.signal(other, _remember)
    _remember(signum, frame)
    raise Interrupted(signum)


def _remember(signum: int, frame) -> None:
    _received.append(signum)


#: Signals received during this run (checked at the end, should a raise have been swallowed).
_received: list[int] = []


def _quiet_unraisable(unraisable) -> None:
    """No traceback for an ``Interrupted`` raised where Python cannot propagate it."""
    if not isinstance(unraisable.exc_value, Interrupted):
        sys.__unraisablehook__(unraisable)


def _say(args: argparse.Namespace, message: str) -> None:
    if not getattr(args, "quiet", False):
        print(f"zipo: {message}", file=sys.stderr, flush=True)


def _first_line(err: BaseException) -> str:
    # a KeyError's str() quotes its message: take the message itself, other quotes are kept
    message = err.args[0] if isinstance(err, KeyError) and err.args else err
    text = str(message).strip().splitlines()
    return text[0] if text else err.__class__.__name__


def _quiet_libraries(quiet: bool) -> None:
    """Keep Lightning's and scvi's informational chatter off a command-line user's screen.

    Lightning and scvi-tools set their loggers' levels when they are imported, so they are
    imported first (here, once a command runs; ``--help`` and ``--version`` never get this far).
    Otherwise ``zipo info`` and ``zipo prune`` print scvi's "File ... already downloaded".
    """
    import lightning.pytorch  # noqa: F401
    import scvi  # noqa: F401

    warnings.filterwarnings("ignore")
    level = logging.ERROR if quiet else logging.WARNING
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(level)
    logging.getLogger("scvi").setLevel(level)


def settings_path(output: str | os.PathLike) -> Path:
    """Where ``zipo denoise`` writes the settings it used: ``OUTPUT.settings.toml``.

    Examples
    --------
    >>> settings_path("results/zipo_denoised.h5ad").name
    'zipo_denoised.settings.toml'
    """
    out = Path(output)
    return out.with_name(out.with_suffix("").name + ".settings.toml")


# ---------------------------------------------------------------------- shared steps
def _flag_settings(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The settings given as flags (``None`` where a flag was not given)."""
    return {
        "run": {
            "threads": args.threads,
            "transpose": args.transpose,
            "backed": getattr(args, "backed", None),
            "transform_batch": getattr(args, "transform_batch", None),
            "label_key": getattr(args, "label_key", None),
            "log_normalized": getattr(args, "log_normalized", None),
        },
        "setup": {
            "layer": args.layer,
            "batch_key": args.batch_key,
            "categorical_covariate_keys": args.categorical_covariates,
            "continuous_covariate_keys": args.continuous_covariates,
        },
        "model": {"preset": args.preset, "likelihood": args.likelihood},
        "train": {"max_epochs": args.epochs, "seed": args.seed},
    }


def _check_input(args: argparse.Namespace) -> str | None:
    """The input's format (``None`` for the embedded simulation); a bad path is a user error."""
    from .data import InputError, detect_format

    if args.input is None:
        return None
    try:
        return detect_format(args.input)
    except InputError as err:
        raise UserError(str(err)) from err


#: The files of a --save-model folder (scvi-tools' ``save``); nothing else there is touched.
MODEL_FILES = ("model.pt", "adata.h5ad")


def _folder_files(flag: str) -> tuple[str, ...]:
    """The only names zipo writes (and, with --force, replaces) in a folder output."""
    if flag == "--tsv-dir":
        from .data._io import TSV_FILES

        return TSV_FILES
    if flag == "--report":
        from .pl._plots import REPORT_FILES

        return REPORT_FILES
    return MODEL_FILES


def _check_writable(flag: str, path: Path) -> None:
    """The nearest existing folder above ``path`` is a folder this process can write in."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{flag} {str(path)!r}: {str(parent)!r} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        reason = err.strerror or err.__class__.__name__
        raise UserError(
            f"{flag} {str(path)!r}: cannot write in {str(parent)!r} ({reason})"
        ) from err


def _check_outputs(
    args: argparse.Namespace,
    files: dict[str, Path],
    folders: dict[str, Path] | None = None,
    source: Path | None = None,
) -> None:
    """Refuse, before any training, outputs that could lose data or fail at the end.

    Refused: an output that is the input or lies in an input folder; an output file that is a
    folder; a folder output that is a file, lies in another folder output or holds the input or
    another folder output; an existing output without --force; a place that cannot be written.
    zipo writes only its own file names in a folder output and never deletes anything else.
    """
    folders = folders or {}
    given = source is not None and source.exists()
    src = source.resolve() if given else None
    for flag, folder in folders.items():
        if folder.exists() and not folder.is_dir():
            raise UserError(f"{flag} {str(folder)!r} is a file, not a folder")
        place = folder.resolve()
        if src is not None and (src.is_relative_to(place) or place.is_relative_to(src)):
            raise UserError(
                f"{flag} {str(folder)!r} holds the input {str(source)!r}; "
                "choose a folder of its own"
            )
        # a file output may sit in a folder output (DCA's OUTDIR layout); zipo's names differ
        inside = {f: p for f, p in folders.items() if f != flag}
        for other, path in inside.items():
            if path.resolve().is_relative_to(place):
                raise UserError(
                    f"{other} {str(path)!r} lies in the {flag} folder {str(folder)!r}; "
                    "give each output a place of its own"
                )
    every = dict(files)
    for flag, folder in folders.items():
        every.update({f"{flag} ({name})": folder / name for name in _folder_files(flag)})
    for flag, path in every.items():
        place = path.resolve()
        if src is not None and (place == src or place.is_relative_to(src)):
            raise UserError(f"{flag} {str(path)!r} would overwrite the input")
        if path.is_dir():
            raise UserError(f"{flag} {str(path)!r} is a folder; zipo writes a file there")
        if path.exists() and not args.force:
            raise UserError(f"{str(path)!r} exists; pass --force to overwrite it")
        _check_writable(flag.split(" ")[0], path)


def _settings(args: argparse.Namespace) -> tuple[dict, dict]:
    """(file settings, flag settings), type-checked; bad files or values are user errors."""
    from ._config import ConfigError, load_config, merge

    try:
        file_settings = load_config(args.config) if args.config else {}
        flags = _flag_settings(args)
        merge(flags)  # type-checks the flags
    except ConfigError as err:
        raise UserError(str(err)) from err
    return file_settings, flags


def _check_values(settings: dict[str, dict[str, Any]]) -> None:
    """Every setting in its range (epochs, sizes, penalties, plan_kwargs), before any training."""
    from ._checks import check_settings
    from ._training import check_plan_kwargs

    train = settings.get("train", {})
    try:
        check_settings({**settings.get("model", {}), **train, **(train.get("plan_kwargs") or {})})
        check_plan_kwargs(train.get("plan_kwargs"))
    except ValueError as err:
        raise UserError(str(err)) from err


def _check_split(adata, settings: dict[str, dict[str, Any]]) -> None:
    """Enough cells to train on with these settings (see ``training_split``)."""
    from ._training import training_split

    train = settings["train"]
    try:
        training_split(adata.n_obs, train["train_size"], train["batch_size"])
    except ValueError as err:
        raise UserError(str(err)) from err


def _set_threads(run: dict[str, Any]) -> None:
    import torch

    if run.get("threads") is not None:
        if run["threads"] < 1:
            raise UserError(f"threads must be at least 1, not {run['threads']}")
        torch.set_num_threads(run["threads"])


def _read(args: argparse.Namespace, transpose: bool | None):
    from .data import InputError, read_counts, simulate_counts

    if args.input is None:
        if transpose:
            raise UserError("--transpose needs an INPUT table")
        where = ", ".join(f"{k}={v}" for k, v in EMBEDDED.items())
        return simulate_counts(**EMBEDDED), f"embedded simulation ({where})"
    try:
        return read_counts(args.input, transpose=transpose), str(Path(args.input).resolve())
    except InputError as err:
        raise UserError(str(err)) from err


def _setup(adata, setup_kwargs: dict[str, Any]) -> None:
    from ._model import ZIPO

    try:
        ZIPO.setup_anndata(adata, **setup_kwargs)
    except (ValueError, KeyError) as err:
        raise UserError(_first_line(err)) from err


def _save_model(model, path: Path, save_anndata: bool = True) -> None:
    """Save the model (and its data) through a temporary folder, then move its files into place.

    Only ``model.pt`` and ``adata.h5ad`` are replaced in ``path``; nothing else there is touched.
    """
    from .data._io import atomic_output

    with atomic_output(path, directory=True, owned=MODEL_FILES) as tmp:
        model.save(str(tmp), overwrite=True, save_anndata=save_anndata)


def _command(args: argparse.Namespace) -> str:
    return "zipo " + " ".join(shlex.quote(a) for a in args.argv)


# ---------------------------------------------------------------------- denoise
def _read_backed(args: argparse.Namespace, fmt: str | None):
    """Open an .h5ad input backed (counts stay on disk); see :func:`zipo_scvi.read_backed`."""
    from .data import InputError, read_backed
    from .data._io import _require_hdf5

    if fmt != "h5ad":
        raise UserError("--backed needs an .h5ad INPUT")
    if args.tsv_dir or args.report:
        raise UserError("--tsv-dir and --report need the outputs in memory; drop --backed")
    try:
        _require_hdf5(Path(args.input), "an .h5ad file")
        return read_backed(args.input), str(Path(args.input).resolve()) + " (backed)"
    except InputError as err:
        raise UserError(str(err)) from err
    except (OSError, ValueError, KeyError) as err:
        detail = _first_line(err)
        raise UserError(f"{args.input!r} is not a readable .h5ad file ({detail})") from err


def _wants_backed(args: argparse.Namespace, fmt: str | None, settings: dict) -> bool:
    """--backed, or an .h5ad whose counts would take over a quarter of the memory."""
    if settings["run"].get("backed"):
        return True
    if fmt != "h5ad" or args.tsv_dir or args.report:
        return False
    from .data._backed import BACKED_MEMORY_FRACTION, should_read_backed

    try:
        big = should_read_backed(args.input, layer=settings["setup"].get("layer"))
    except Exception:  # not a readable .h5ad: the reader says why
        return False
    if big:
        share = f"{BACKED_MEMORY_FRACTION:.0%}"
        _say(args, f"the counts take over {share} of the memory: reading them backed")
    return big


#: Output of ``zipo denoise`` without ``-o``, and its name inside a DCA-style output folder.
DEFAULT_OUTPUT = "zipo_denoised.h5ad"


def _output_folder(args: argparse.Namespace) -> None:
    """DCA's ``zipo denoise matrix.csv results/``: the folder gets the TSV files and the h5ad."""
    if args.outdir is None:
        args.output = args.output or DEFAULT_OUTPUT
        return
    if args.outdir.endswith(".h5ad") and args.output is None:  # zipo denoise in.csv out.h5ad
        args.output = args.outdir
        return
    if args.output is not None or args.tsv_dir is not None:
        raise UserError(
            f"OUTDIR {args.outdir!r} names the output folder; drop it or drop -o/--tsv-dir"
        )
    args.tsv_dir = args.outdir
    args.output = str(Path(args.outdir) / DEFAULT_OUTPUT)


#: Flags that set up, build or train a model: meaningless when --model applies a trained one.
_TRAINING_FLAGS = (
    "config",
    "layer",
    "batch_key",
    "categorical_covariates",
    "continuous_covariates",
    "likelihood",
    "preset",
    "epochs",
    "seed",
    "save_model",
)


def _layers(log_normalized: bool) -> tuple[str, ...]:
    """The layers a backed run writes: the default ones, plus the log-normalised one if asked."""
    from ._outputs import chosen_file_outputs

    return tuple(o.name for o in chosen_file_outputs(log_normalized) if o.slot == "layers")


def _check_batch_outputs(adata, settings: dict) -> tuple[str | None, str | None]:
    """``--transform-batch`` needs ``--batch-key``; ``--label-key`` must be an obs column."""
    run, batch_key = settings["run"], settings["setup"].get("batch_key")
    transform_batch, label_key = run.get("transform_batch"), run.get("label_key")
    if transform_batch is not None and not batch_key:
        raise UserError(
            f"--transform-batch {transform_batch} needs a batch key (--batch-key: the obs column "
            "of samples the model is trained with)"
        )
    if label_key is not None and label_key not in adata.obs:
        columns = ", ".join(map(str, adata.obs.columns[:10])) or "none"
        raise UserError(f"--label-key {label_key!r} is not an obs column (columns: {columns})")
    return transform_batch, label_key


def _denoise(args: argparse.Namespace) -> int:
    fmt = _check_input(args)
    _output_folder(args)
    out = Path(args.output)
    if out.suffix != ".h5ad":
        raise UserError(f"output {str(out)!r} must end in .h5ad")
    if args.model is not None:
        given = [f"--{f.replace('_', '-')}" for f in _TRAINING_FLAGS if getattr(args, f, None)]
        if given:
            raise UserError(
                f"--model applies a trained model with its saved setup and settings; drop "
                f"{', '.join(given)}"
            )
        if args.input is None:
            raise UserError("--model needs an INPUT: the counts to apply the model to")
    paths = {"--output": out}
    if args.model is None:
        paths["--output (settings)"] = settings_path(out)
    folders = {}
    for flag in ("save_model", "tsv_dir", "report"):
        if getattr(args, flag):
            folders["--" + flag.replace("_", "-")] = Path(getattr(args, flag))
    _check_outputs(args, paths, folders, Path(args.input) if args.input else None)
    paths.update(folders)
    file_settings, flags = _settings(args)

    from . import __version__
    from ._config import ConfigError, dump_toml, resolve, zipo_arguments
    from ._model import ZIPO
    from ._outputs import store
    from .data import write_text_atomic

    try:
        settings = resolve(file_settings, flags)
    except ConfigError as err:
        raise UserError(str(err)) from err
    _check_values(settings)
    _set_threads(settings["run"])
    backed = _wants_backed(args, fmt, settings)
    if backed:
        adata, source = _read_backed(args, fmt)
    else:
        adata, source = _read(args, settings["run"].get("transpose"))
    _say(args, f"read {adata.n_obs} cells x {adata.n_vars} genes from {source}")
    if args.model is not None:
        return _apply_model(args, adata, source, paths, backed)
    transform_batch, label_key = _check_batch_outputs(adata, settings)
    _setup(adata, settings["setup"])
    model_kwargs, train_kwargs = zipo_arguments(settings)
    _check_split(adata, settings)
    try:
        model = ZIPO(adata, **model_kwargs)
        model._batch_code(transform_batch)  # a batch the data has, before training
    except (ValueError, TypeError, KeyError) as err:
        raise UserError(_first_line(err)) from err
    _say(args, model.summary_string.splitlines()[0])
    model.train(**train_kwargs, enable_progress_bar=not args.quiet)
    epochs = len(model.history["train_loss"])

    if "--save-model" in paths:
        _save_model(model, paths["--save-model"], save_anndata=not backed)
    uns = {
        "settings": {group: values for group, values in settings.items() if values},
        "history": training_history(model),
        "epochs_trained": epochs,
        "input": source,
        "command": _command(args),
        "version": __version__,
    }
    header = [
        f"Settings of a zipo_scvi {__version__} run; repeat it with",
        f"  zipo denoise INPUT -o OUTPUT --config {paths['--output (settings)'].name}",
        f"command: {_command(args)}",
        f"input: {source}",
    ]
    log_normalized = bool(settings["run"].get("log_normalized"))
    if backed:  # outputs streamed to the file block by block, never whole in memory
        model.write_normalized_expression(
            str(out),
            uns={"zipo": uns},
            transform_batch=transform_batch,
            layers=_layers(log_normalized),
        )
        write_text_atomic(dump_toml(settings, header), paths["--output (settings)"])
        _say(args, f"trained {epochs} epochs; wrote {', '.join(map(str, paths.values()))}")
        return EXIT_OK
    # layers["zipo_denoised"] is mu times each cell's observed total (obs["zipo_observed_library"],
    # the denoised value the benchmarks score best); obs["zipo_predicted_library"] is the library
    # subnetwork's l. Only the layers the likelihood has are written (no zero_prob for Poisson/NB).
    store(
        adata,
        model.get_outputs(
            library_size="observed",
            transform_batch=transform_batch,
            log_normalized=log_normalized,
        ),
    )
    adata.uns["zipo"] = uns
    _write_outputs(adata, paths, settings["setup"], label_key)
    write_text_atomic(dump_toml(settings, header), paths["--output (settings)"])
    _say(args, f"trained {epochs} epochs; wrote {', '.join(str(p) for p in paths.values())}")
    return EXIT_OK


@contextlib.contextmanager
def _without_scvi_registration(adata):
    """Leave scvi-tools' registration entries (``obs['_scvi_*']``, ``uns['_scvi_*']``) out of a
    written file, as the backed writer does; they are put back for the model afterwards.
    """
    obs = {k: adata.obs.pop(k) for k in list(adata.obs.columns) if str(k).startswith("_scvi_")}
    uns = {k: adata.uns.pop(k) for k in list(adata.uns) if str(k).startswith("_scvi_")}
    try:
        yield
    finally:
        for key, column in obs.items():
            adata.obs[key] = column
        adata.uns.update(uns)


def _write_outputs(
    adata, paths: dict[str, Path], setup: dict[str, Any], label_key: str | None = None
) -> None:
    """Write the TSV folder first (replaced whole; it may hold the .h5ad), .h5ad, report."""
    from .data import write_h5ad_atomic, write_tsv_dir

    if "--tsv-dir" in paths:
        write_tsv_dir(adata, paths["--tsv-dir"], overwrite=True)
    with _without_scvi_registration(adata):
        write_h5ad_atomic(adata, paths["--output"])
    if "--report" in paths:
        from .pl import report

        report(
            adata,
            paths["--report"],
            color=setup.get("batch_key"),
            label=label_key,
            layer=setup.get("layer"),
        )


def _apply_model(args: argparse.Namespace, adata, source: str, paths, backed: bool) -> int:
    """``zipo denoise INPUT --model DIR``: the saved model's outputs on new cells, no training."""
    from . import __version__
    from ._outputs import store

    model = _load_model(args.model, adata)
    _say(args, f"applying {model.summary_string.splitlines()[0]} from {args.model}")
    setup = {k: v for k, v in model.registry_.get("setup_args", {}).items() if v is not None}
    transform_batch, label_key = _check_batch_outputs(
        adata,
        {
            "run": {"transform_batch": args.transform_batch, "label_key": args.label_key},
            "setup": setup,
        },
    )
    try:
        model._batch_code(transform_batch)
    except ValueError as err:
        raise UserError(_first_line(err)) from err
    uns = {
        "model": str(Path(args.model).resolve()),
        "setup": setup,
        "history": training_history(model),
        "input": source,
        "command": _command(args),
        "version": __version__,
    }
    log_normalized = bool(args.log_normalized)
    if backed:
        model.write_normalized_expression(
            str(paths["--output"]),
            uns={"zipo": uns},
            transform_batch=transform_batch,
            layers=_layers(log_normalized),
        )
    else:
        outputs = model.get_outputs(
            library_size="observed",
            transform_batch=transform_batch,
            log_normalized=log_normalized,
        )
        store(adata, outputs)
        adata.uns["zipo"] = uns
        _write_outputs(adata, paths, setup, label_key)
    _say(args, f"applied the model (no training); wrote {', '.join(map(str, paths.values()))}")
    return EXIT_OK


# ---------------------------------------------------------------------- tune
#: Training settings that size a search's trials; the written config keeps them only when they
#: were searched, so the final run trains with the preset's epoch cap and validation.
SEARCH_BUDGET = (
    "max_epochs",
    "validation",
    "train_size",
    "early_stopping",
    "early_stopping_patience",
)


def _tune(args: argparse.Namespace) -> int:
    _check_input(args)
    out = Path(args.output)
    if out.suffix != ".toml":
        raise UserError(f"output {str(out)!r} must end in .toml")
    if args.n_trials < 1:
        raise UserError(f"--n-trials must be at least 1, not {args.n_trials}")
    _check_outputs(args, {"--output": out}, source=Path(args.input) if args.input else None)
    file_settings, flags = _settings(args)

    from . import __version__
    from ._config import ConfigError, dump_toml, merge, resolve
    from ._settings import best_settings
    from ._tune import tune
    from .data import write_text_atomic

    try:
        given = merge(file_settings, flags)
        seed = resolve(file_settings, flags)["train"]["seed"]
    except ConfigError as err:
        raise UserError(str(err)) from err
    _check_values(given)
    _set_threads(given["run"])
    adata, source = _read(args, given["run"].get("transpose"))
    _say(args, f"read {adata.n_obs} cells x {adata.n_vars} genes from {source}")
    _setup(adata, given["setup"])
    fixed = {**given["model"], **{k: v for k, v in given["train"].items() if k != "seed"}}
    try:
        study = tune(
            adata,
            n_trials=args.n_trials,
            search_space=file_settings.get("search") or None,
            objective=args.objective,
            storage=args.storage,
            study_name=args.study_name,
            seed=seed,
            timeout=args.timeout,
            verbose=not args.quiet,
            **fixed,
        )
        best = best_settings(study)
    except ValueError as err:
        raise UserError(_first_line(err)) from err
    trial = study.best_trial
    # the search's own budget (short max_epochs, whole-cell validation, ...) is not carried
    # over unless it was searched: `zipo denoise --config` then trains with the preset's schedule
    train = dict(best["train_kwargs"])
    dropped = {k: train.pop(k) for k in SEARCH_BUDGET if k in train and k not in trial.params}
    chosen = {
        "model": {"preset": best["preset"], **best["model_kwargs"]},
        "train": {**train, "seed": seed},
    }
    settings = resolve({"run": given["run"], "setup": given["setup"]}, chosen)
    header = [
        f"Best settings of zipo tune (zipo_scvi {__version__}): trial {trial.number} of study "
        f"{study.study_name!r}, {args.objective} = {trial.value:.6g}",
        f"use with: zipo denoise INPUT -o OUTPUT --config {out.name}",
        f"command: {_command(args)}",
        f"input: {source}",
    ]
    if dropped:
        search_only = ", ".join(f"{k}={v!r}" for k, v in dropped.items())
        header.append(f"the search's own training ({search_only}) is not carried over")
    write_text_atomic(dump_toml(settings, header), out)
    chosen_params = ", ".join(f"{k}={v}" for k, v in trial.params.items())
    _say(args, f"best trial {trial.number}: {args.objective}={trial.value:.6g} ({chosen_params})")
    _say(args, f"wrote {out}")
    return EXIT_OK


# ---------------------------------------------------------------------- prune and info
def _load_model(directory: str, adata=None):
    """A saved model, on its saved data or on ``adata`` (which must have the model's genes)."""
    from ._model import ZIPO

    path = Path(directory)
    if not path.is_dir() or not (path / "model.pt").is_file():
        raise UserError(f"{str(path)!r} is not a saved ZIPO model folder (no model.pt)")
    try:
        return ZIPO.load(str(path), adata=adata)
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(_first_line(err)) from err


def _prune(args: argparse.Namespace) -> int:
    if args.delta is not None and not 0.0 <= args.delta <= 1.0:
        raise UserError(f"--delta must lie in [0, 1], not {args.delta:g}")
    if args.sparsity is not None and not 0.0 <= args.sparsity < 1.0:
        raise UserError(f"--sparsity must lie in [0, 1), not {args.sparsity:g}")
    if args.delta is not None and args.sparsity is not None:
        raise UserError("give --sparsity (gradual pruning) or --delta (the paper's), not both")
    if args.delta is not None and args.signed:
        raise UserError("--signed applies to gradual pruning; --delta keeps the weights' signs")
    if args.delta is not None and args.modules is not None:
        raise UserError("--modules applies to gradual pruning, not to --delta")
    if args.modules is not None and args.modules < 0:
        raise UserError(
            f"--modules must be a number of gene clusters (0: none), not {args.modules}"
        )
    source = Path(args.model_dir)
    out = Path(args.output) if args.output else source.with_name(source.name + "_pruned")
    adata = None
    if args.data is not None:
        from .data import InputError, read_counts

        try:
            adata = read_counts(args.data)
        except InputError as err:
            raise UserError(str(err)) from err
    model = _load_model(args.model_dir, adata)
    if model.adata is None:
        raise UserError(
            f"{str(source)!r} was saved without its data, on which pruning is judged: pass "
            "--data FILE (counts with the model's genes), or save the model with its data "
            "(model.save(DIR, save_anndata=True); zipo denoise --save-model does)"
        )
    if out.resolve() != source.resolve():
        _check_outputs(args, {}, {"--output": out})
    elif not args.force:
        raise UserError(f"{str(out)!r} is the input model; pass --force to replace it")
    options = {"nonnegative": False} if args.signed else {}
    if args.modules is not None:
        options["modules"] = args.modules
    result = model.prune(sparsity=args.sparsity, delta=args.delta, **options)
    _save_model(model, out)
    how = (
        f"at delta {result['delta']:g}"
        if result["method"] == "delta"
        else f"by gradual magnitude pruning ({result['epochs']} epochs of fine-tuning)"
    )
    print(
        f"pruned {result['fraction_pruned']:.2%} of first-layer weights "
        f"({result['n_pruned']} of {result['n_weights']}) {how}; held-out NLL "
        f"{result['heldout_before']:.6g} -> {result['heldout_after']:.6g} "
        f"({result['heldout_change']:+.3%}), NLL {result['nll_before']:.6g} -> "
        f"{result['nll_after']:.6g} ({result['nll_change']:+.3%}), MSE "
        f"{result['mse_before']:.6g} -> {result['mse_after']:.6g} "
        f"({result['mse_change']:+.3%}); wrote {out}"
    )
    return EXIT_OK


def _info(args: argparse.Namespace) -> int:
    model = _load_model(args.model_dir)
    print(model.summary_string.splitlines()[0])
    module = model.module
    print(f"genes: {module.n_input}, latents: {module.n_latent}")
    if model.adata is not None:
        print(f"saved data: {model.adata.n_obs} cells x {model.adata.n_vars} genes")
    setup = model.registry_.get("setup_args", {})
    names = inspect.signature(type(model).setup_anndata).parameters
    given = {k: v for k, v in setup.items() if k in names and v is not None}
    print("setup: " + (", ".join(f"{k}={v}" for k, v in given.items()) or "counts in X"))
    print("hyperparameters: " + ", ".join(f"{k}={v}" for k, v in model.hyperparameters.items()))
    history = model.history or {}
    if "train_loss" in history:
        last = {
            key: float(frame.iloc[-1, 0])
            for key, frame in history.items()
            if key.startswith(("nll_", "mse_"))
        }
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(last.items()))
        print(f"trained: {len(history['train_loss'])} epochs; last values {metrics}")
    if hasattr(model, "first_layer_sparsity"):
        from ._defaults import PRUNE_DELTA

        below = float(model.first_layer_sparsity([PRUNE_DELTA]).iloc[0])
        print(f"first layer: {below:.2%} of weights zero or below delta {PRUNE_DELTA:g}")
    return EXIT_OK


# ---------------------------------------------------------------------- parser
def _data_flags() -> argparse.ArgumentParser:
    """Flags shared by ``denoise`` and ``tune``: the input, its setup and the settings."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "input",
        nargs="?",
        help=".h5ad, 10x .h5, 10x mtx folder, or .csv/.tsv/.txt[.gz] table (cells x genes; "
        "see --transpose). Default: the embedded simulation (2000 cells x 1000 genes)",
    )
    p.add_argument("--config", metavar="FILE.toml", help="TOML settings (Python argument names)")
    p.add_argument("--layer", help="layer holding the counts (default: X)")
    p.add_argument(
        "--batch-key",
        metavar="KEY",
        help="obs column of batches (samples): the latents are kept free of them",
    )
    p.add_argument("--categorical-covariates", nargs="+", metavar="KEY", help="obs columns")
    p.add_argument("--continuous-covariates", nargs="+", metavar="KEY", help="obs columns")
    p.add_argument("--likelihood", choices=["zip", "zinb", "poisson", "nb"])
    p.add_argument("--preset", choices=["default", "paper"], help="default: 'default'")
    p.add_argument("--epochs", type=int, metavar="N", help="epoch cap (default: the preset's)")
    p.add_argument("--seed", type=int, metavar="S", help="random seed (default 0)")
    p.add_argument("--threads", type=int, metavar="T", help="CPU threads for torch")
    p.add_argument(
        "--transpose",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the table is genes x cells (DCA's layout); --no-transpose: cells x genes. Without "
        "either, a table whose row names look like genes and column names like cell barcodes "
        "is refused",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    return p


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``zipo`` command.

    Examples
    --------
    >>> args = build_parser().parse_args(["denoise", "counts.h5ad", "-o", "out.h5ad"])
    >>> args.output
    'out.h5ad'
    """
    parser = argparse.ArgumentParser(
        prog="zipo",
        description="ZiPo: denoise single-cell RNA-seq counts (Sharifitabar et al. 2024).",
        epilog="Exit codes: 0 ok, 1 failure, 2 bad usage or input. Settings: preset < --config "
        "file < flags.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    shared = _data_flags()

    d = sub.add_parser(
        "denoise",
        parents=[shared],
        help="train ZIPO on counts and write denoised expression; no INPUT: embedded simulation",
        description="Train ZIPO on raw counts and write the input AnnData with "
        'layers["zipo_denoised"] (denoised counts: mu x each cell\'s observed total), '
        'layers["zipo_zero_prob"] (zip/zinb only), layers["zipo_dispersion"] (nb/zinb only), '
        'obsm["X_zipo"] (latents), obs["zipo_observed_library"] (total count, the scale of '
        'zipo_denoised), obs["zipo_predicted_library"] (the model\'s predicted library l) and '
        'uns["zipo"] (settings, training history), all float32, plus OUTPUT.settings.toml with '
        "every setting used. Settings: preset < --config file < flags.",
    )
    d.add_argument(
        "outdir",
        nargs="?",
        metavar="OUTDIR",
        help="DCA's form `zipo denoise matrix.csv results/`: write mean.tsv, latent.tsv, ... "
        f"(as --tsv-dir) and {DEFAULT_OUTPUT} into this folder (a name ending in .h5ad is -o)",
    )
    d.add_argument("-o", "--output", help=f"output .h5ad (default: {DEFAULT_OUTPUT})")
    d.add_argument(
        "--model",
        metavar="DIR",
        help="apply a saved (or pruned) model to INPUT instead of training one; INPUT must have "
        "the model's genes",
    )
    d.add_argument("--save-model", metavar="DIR", help="save the trained model (with its data)")
    d.add_argument(
        "--tsv-dir",
        metavar="DIR",
        help="also write DCA-style mean.tsv, dropout.tsv (zip/zinb), dispersion.tsv (nb/zinb), "
        "latent.tsv",
    )
    d.add_argument("--report", metavar="DIR", help="write PNG plots (history, UMAP, ...)")
    d.add_argument(
        "--transform-batch",
        metavar="NAME",
        help="denoise every cell as if it came from batch NAME (needs --batch-key)",
    )
    d.add_argument(
        "--log-normalized",
        action="store_true",
        default=None,
        help='also write layers["zipo_log_normalized"]: the log-normalised expression (log1p of '
        "counts per 10,000) a sample of each cell's depth is expected to show, sampling noise "
        "averaged out; compare it with log-normalised data rather than log1p of zipo_denoised",
    )
    d.add_argument(
        "--label-key",
        metavar="KEY",
        help="obs column (e.g. cell type) the report's UMAP is coloured by, beside the batch",
    )
    d.add_argument(
        "--backed",
        action="store_true",
        default=None,
        help=".h5ad counts stay on disk and outputs are written in blocks (automatic when the "
        "counts would take over a quarter of the memory)",
    )
    d.set_defaults(func=_denoise)

    t = sub.add_parser(
        "tune",
        parents=[shared],
        help="search hyperparameters with optuna; writes the best settings as a config file",
        description="Search ZIPO's hyperparameters with optuna (default: the paper's space; a "
        "[search] table in --config replaces it) and write the best trial's settings as TOML "
        "for `zipo denoise --config`. The search's own max_epochs, validation, train_size and "
        "early stopping size the trials only: they are not written (unless searched), so the "
        "final run trains with the preset's schedule.",
    )
    t.add_argument("--n-trials", type=int, required=True, metavar="N", help="trials to run")
    t.add_argument("--storage", metavar="URL", help="optuna storage (RDB URL or SQLite path)")
    t.add_argument("--study-name", metavar="NAME", help="study name in the storage")
    from ._defaults import TUNE_OBJECTIVE, TUNE_OBJECTIVES

    t.add_argument(
        "--objective",
        choices=TUNE_OBJECTIVES,
        default=TUNE_OBJECTIVE,
        help="mcv: Poisson NLL of held-out molecules of every cell; validation_nll: the paper's "
        f"NLL of validation cells on their own counts (default: {TUNE_OBJECTIVE})",
    )
    t.add_argument("--timeout", type=float, metavar="SECONDS", help="stop starting trials after")
    t.add_argument("-o", "--output", default="zipo_tuned.toml", help="best settings (.toml)")
    t.set_defaults(func=_tune)

    from ._defaults import PRUNE_SCHEDULE

    p = sub.add_parser(
        "prune",
        help="prune a saved model's first layer and save the pruned model",
        description="Gradual magnitude pruning of the first layer with fine-tuning on the saved "
        "data, to a share of zeros (default "
        f"{PRUNE_SCHEDULE['sparsity']:.0%}); or, with --delta, the paper's one-shot threshold "
        "(zero the weights below delta of each neuron's largest). Reports the sparsity and the "
        "held-out, NLL and MSE changes, and saves the pruned model.",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="folder of zipo denoise --save-model")
    p.add_argument(
        "--sparsity",
        type=float,
        help=f"share of first-layer weights set to zero (default {PRUNE_SCHEDULE['sparsity']:g})",
    )
    p.add_argument("--delta", type=float, help="the paper's threshold instead (paper: 1e-4)")
    p.add_argument(
        "--signed",
        action="store_true",
        help="gradual pruning: keep signed weights (default: the kept weights are held >= 0, "
        "so each neuron adds up its genes)",
    )
    p.add_argument(
        "--modules",
        type=int,
        metavar="N",
        help="gradual pruning: number of co-expression clusters of genes, each neuron keeping "
        f"the genes of the {PRUNE_SCHEDULE['clusters_per_neuron']} that carry most of its weight "
        f"(default {PRUNE_SCHEDULE['modules']}; 0: no clusters, plain magnitude pruning)",
    )
    p.add_argument(
        "--data",
        metavar="FILE",
        help="counts (the model's genes) to fine-tune and judge the pruning on; needed when the "
        "model was saved without its data",
    )
    p.add_argument("-o", "--output", metavar="DIR", help="default: MODEL_DIR_pruned")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(func=_prune)

    i = sub.add_parser("info", help="describe a saved model (zipo denoise --save-model DIR)")
    i.add_argument("model_dir", metavar="MODEL_DIR")
    i.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``zipo`` command; returns the exit code (0 ok, 1 failure, 2 bad usage/input).

    Parameters
    ----------
    argv
        Arguments without the program name (default: ``sys.argv[1:]``).

    Examples
    --------
    >>> main(["denoise", "-o", "zipo_denoised.h5ad", "--epochs", "2", "--quiet"])  # doctest: +SKIP
    0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)  # usage errors: argparse exits with 2
    args.argv = argv
    debug = bool(os.environ.get("ZIPO_DEBUG"))
    if not debug:
        _quiet_libraries(getattr(args, "quiet", False))
    _received.clear()
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {signum: signal.signal(signum, _on_signal) for signum in _SIGNALS}
    hook, sys.unraisablehook = sys.unraisablehook, _quiet_unraisable
    try:
        code = args.func(args)
        if _received:  # a signal whose exception was swallowed on the way
            raise Interrupted(_received[0])
        return code
    except UserError as err:
        message = " ".join(str(err).split())  # one line, whatever the underlying error said
        print(f"zipo: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except (KeyboardInterrupt, Interrupted) as err:
        signum = getattr(err, "signum", signal.SIGINT)
        print(f"zipo: {_SIGNALS[signum]}", file=sys.stderr)
        return 128 + signum
    except Exception as err:
        if debug:
            raise
        detail = f"{err.__class__.__name__}: {_first_line(err)}"
        print(f"zipo: failed: {detail} (set ZIPO_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        sys.unraisablehook = hook
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
