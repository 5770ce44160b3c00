"""Hyperparameter search with optuna, the held-out-molecule objective, and seed comparisons."""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import optuna
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scvi import REGISTRY_KEYS

from ._defaults import (
    MOLECULE_SPLIT,
    PAPER_SEARCH_SPACE,
    PAPER_TRAIN,
    TUNE_OBJECTIVE,
    TUNE_OBJECTIVES,
)
from ._metrics import log_normalised_mse, mcv_poisson, thin_counts
from ._model import ZIPO
from ._settings import MODEL_KEYS, TRAIN_KEYS, split_settings

SEED_METRICS = ("nll", "mse", "true_mse")
#: How a search-space entry is turned into an optuna distribution, by its first element.
DISTRIBUTIONS: Mapping[str, Callable[..., optuna.distributions.BaseDistribution]] = {
    "categorical": lambda choices: optuna.distributions.CategoricalDistribution(choices),
    "uniform": lambda lo, hi: optuna.distributions.FloatDistribution(lo, hi),
    "loguniform": lambda lo, hi: optuna.distributions.FloatDistribution(lo, hi, log=True),
    "int": lambda lo, hi: optuna.distributions.IntDistribution(lo, hi),
    "logint": lambda lo, hi: optuna.distributions.IntDistribution(lo, hi, log=True),
}
#: What a search may vary: a preset's model and training settings, and the preset.
SEARCHABLE = MODEL_KEYS | TRAIN_KEYS | {"preset"}
#: Metric logged by the training plan each epoch and reported to the pruner (regulariser-free).
PRUNING_MONITOR = "nll_validation"


# ---------------------------------------------------------------------------- search space
def _label(choice: Any) -> Any:
    """An optuna-storable label for a categorical choice (tuples become ``"512-128-32"``)."""
    if choice is None or isinstance(choice, (bool, int, float, str)):
        return choice
    if isinstance(choice, (tuple, list)):
        return "-".join(map(str, choice))
    return repr(choice)


class _Param:
    """One searched parameter: its optuna distribution and the map from labels to values."""

    def __init__(self, name: str, spec: Any):
        if name not in SEARCHABLE:
            raise ValueError(
                f"Unknown search-space parameter {name!r}; searchable are model arguments "
                f"{sorted(MODEL_KEYS)}, training arguments {sorted(TRAIN_KEYS)} "
                "and 'preset'."
            )
        self.name, self.values = name, None
        if isinstance(spec, optuna.distributions.BaseDistribution):
            self.distribution = spec
            return
        if not isinstance(spec, (tuple, list)) or not spec or spec[0] not in DISTRIBUTIONS:
            raise ValueError(
                f"Search-space entry {name!r} must be an optuna distribution or a tuple "
                f"(kind, ...) with kind one of {list(DISTRIBUTIONS)}; got {spec!r}."
            )
        kind, *args = spec
        if kind == "categorical":
            choices = list(args[0]) if len(args) == 1 else []
            if not choices:
                raise ValueError(f"Search-space entry {name!r} needs a non-empty list of choices.")
            labels = [_label(c) for c in choices]
            if len(set(labels)) != len(labels):
                raise ValueError(f"Search-space entry {name!r} has duplicate choices.")
            self.values = dict(zip(labels, choices))
            args = [labels]
        elif len(args) != 2 or not args[0] < args[1]:
            raise ValueError(f"Search-space entry {name!r} needs (kind, low, high), low < high.")
        self.distribution = DISTRIBUTIONS[kind](*args)

    def suggest(self, trial: optuna.Trial) -> Any:
        d = self.distribution
        if isinstance(d, optuna.distributions.CategoricalDistribution):
            label = trial.suggest_categorical(self.name, d.choices)
            return label if self.values is None else self.values[label]
        if isinstance(d, optuna.distributions.IntDistribution):
            return trial.suggest_int(self.name, d.low, d.high, step=d.step, log=d.log)
        if isinstance(d, optuna.distributions.FloatDistribution):
            return trial.suggest_float(self.name, d.low, d.high, step=d.step, log=d.log)
        raise ValueError(f"Unsupported distribution {d!r} for {self.name!r}.")


def _parse_space(search_space: Mapping[str, Any] | None) -> list[_Param]:
    space = PAPER_SEARCH_SPACE if search_space is None else search_space
    if not space:
        raise ValueError("The search space is empty.")
    return [_Param(name, spec) for name, spec in space.items()]


def _jsonable(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that survive a JSON round trip (callbacks and objects are left out)."""
    out = {}
    for key, value in settings.items():
        with contextlib.suppress(TypeError, ValueError):
            out[key] = json.loads(json.dumps(value))
    return out


# ---------------------------------------------------------------------------- data
def _setup_args(adata: AnnData) -> tuple[dict[str, Any], Any]:
    """The ``setup_anndata`` arguments and manager of registered data."""
    manager = ZIPO._get_most_recent_anndata_manager(adata, required=False)
    if manager is None:
        raise ValueError("Register the data first with ZIPO.setup_anndata(adata, ...).")
    accepted = inspect.signature(ZIPO.setup_anndata).parameters
    args = {k: v for k, v in manager.registry["setup_args"].items() if k in accepted}
    return args, manager


def _thin(adata: AnnData, fraction: float, seed: int) -> tuple[AnnData, sp.csr_matrix]:
    """Split the registered counts by binomial thinning (:func:`~zipo_scvi._metrics.thin_counts`).

    Returns the AnnData of the kept molecules (registered like ``adata``, genes without kept
    counts dropped) and the held-out molecules of the same genes.
    """
    setup_args, manager = _setup_args(adata)
    kept, held_out = thin_counts(manager.get_from_registry(REGISTRY_KEYS.X_KEY), fraction, seed)
    genes = np.asarray(kept.sum(axis=0)).ravel() > 0
    train = AnnData(
        X=kept[:, genes].astype(np.float32), obs=adata.obs.copy(), var=adata.var[genes].copy()
    )
    ZIPO.setup_anndata(train, **{**setup_args, "layer": None})
    return train, held_out[:, genes]


# ---------------------------------------------------------------------------- quiet training
@contextlib.contextmanager
def _quiet_logs(verbose: bool) -> Iterator[None]:
    """Silence Lightning's per-fit notices and optuna's log (we print our own line).

    Every warning is silenced too when not ``verbose``.
    """
    names = ["lightning.pytorch", "lightning.fabric", "optuna", "scvi"]
    saved = {name: logging.getLogger(name).level for name in names}
    for name in names:
        if name != "scvi" or not verbose:
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"lightning\.")  # per-fit notices
            if not verbose:
                warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _train_quietly(model: ZIPO, **train_kwargs) -> None:
    """Train without a progress bar; drop scvi's printed notice when a trial is pruned."""
    train_kwargs.setdefault("enable_progress_bar", False)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            model.train(**train_kwargs)
    except optuna.TrialPruned:
        lines = printed.getvalue().splitlines(keepends=True)
        printed = io.StringIO("".join(ln for ln in lines if "Exception raised" not in ln))
        raise
    finally:
        sys.stdout.write(printed.getvalue())


# ---------------------------------------------------------------------------- search
def _objective_fn(
    adata: AnnData,
    objective: str,
    params: list[_Param],
    fixed: dict[str, Any],
    seed: int,
) -> Callable[[optuna.Trial], float]:
    from optuna_integration import PyTorchLightningPruningCallback

    if objective == "mcv":
        data, held_out = _thin(adata, MOLECULE_SPLIT, seed)
    else:
        data, held_out = adata, None
        _setup_args(adata)

    def run(trial: optuna.Trial) -> float:
        settings = {**fixed, **{p.name: p.suggest(trial) for p in params}}
        if objective == "validation_nll":
            # the paper's validation NLL of its validation cells, of the weights that were
            # validated (no averaging), so the objective is the last value reported each epoch
            # (validation every epoch: the pruner sees the whole learning curve)
            for key in ("validation", "train_size", "ema_epochs", "validation_steps"):
                settings.setdefault(key, PAPER_TRAIN[key])
        preset, model_kwargs, train_kwargs = split_settings(settings)
        trial.set_user_attr("preset", preset)
        trial.set_user_attr("model_kwargs", _jsonable(model_kwargs))
        trial.set_user_attr("train_kwargs", _jsonable(train_kwargs))
        model = ZIPO(data, preset=preset, seed=seed, **model_kwargs)
        callbacks = list(train_kwargs.pop("callbacks", []))
        # Reports every epoch's validation NLL (a learning curve) and lets the pruner stop it.
        callbacks.append(PyTorchLightningPruningCallback(trial, monitor=PRUNING_MONITOR))
        _train_quietly(model, seed=seed, callbacks=callbacks, **train_kwargs)
        if objective == "mcv":
            denoised = model.get_normalized_expression(library_size="latent", return_numpy=True)
            # MCV's second score (zipo_scvi._metrics), kept beside the objective for comparison.
            trial.set_user_attr("mcv_mse", log_normalised_mse(denoised, held_out))
            return mcv_poisson(denoised, data.X, held_out)
        if model.validation_indices is None or len(model.validation_indices) == 0:
            raise ValueError("objective='validation_nll' needs validation cells (train_size < 1).")
        return model.get_reconstruction_error(indices=model.validation_indices)["nll"]

    return run


def _progress(n_trials: int | None) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    finished: list[int] = []

    def show(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        state = trial.state.name.lower()
        if trial.state == optuna.trial.TrialState.COMPLETE:
            state += f", value {trial.value:.6g}"
        elif trial.state == optuna.trial.TrialState.PRUNED:
            state += f" at epoch {trial.last_step}"
        try:
            best = f"best {study.best_value:.6g} (trial {study.best_trial.number})"
        except ValueError:
            best = "no completed trial yet"
        finished.append(trial.number)
        total = f"/{n_trials}" if n_trials else ""
        in_study = len(study.get_trials(deepcopy=False))
        print(
            f"[zipo tune] trial {trial.number} {state} | {best} | "
            f"{len(finished)}{total} this run, {in_study} in study"
        )

    return show


def _storage_url(storage: Any) -> Any:
    if storage is None or not isinstance(storage, (str, os.PathLike)):
        return storage
    storage = os.fspath(storage)
    if "://" in storage:
        return storage
    return f"sqlite:///{os.path.abspath(storage)}"


def tune(
    adata: AnnData,
    n_trials: int | None = 20,
    search_space: Mapping[str, Any] | None = None,
    objective: str = TUNE_OBJECTIVE,
    storage: str | os.PathLike | optuna.storages.BaseStorage | None = None,
    study_name: str | None = None,
    seed: int = 0,
    timeout: float | None = None,
    *,
    pruner: optuna.pruners.BasePruner | bool | None = None,
    sampler: optuna.samplers.BaseSampler | None = None,
    verbose: bool = True,
    **train_kwargs,
) -> optuna.Study:
    """Search ZIPO's hyperparameters with optuna (paper II-G, III-H).

    Each trial builds a :class:`~zipo_scvi.ZIPO` on the data registered by
    :meth:`ZIPO.setup_anndata`, trains it with the sampled settings and returns the objective.
    A Lightning pruning callback reports the validation NLL of every epoch to the pruner, which
    stops unpromising trials early (they end in state ``PRUNED``).

    Parameters
    ----------
    adata
        AnnData registered with :meth:`ZIPO.setup_anndata`.
    n_trials
        Trials run by this call (several processes sharing a study each run their own).
    search_space
        ``{name: spec}``; ``spec`` is ``("categorical", choices)``, ``("uniform", lo, hi)``,
        ``("loguniform", lo, hi)``, ``("int", lo, hi)``, ``("logint", lo, hi)`` or an optuna
        distribution. ``name`` is any ZIPO model argument (``encoder_sizes``, ``alpha_z``,
        ``likelihood``, ...), training argument (``lr``, ``batch_size``, ``max_epochs``,
        ``lr_decay``, ``validation``, ...) or ``"preset"``. Default: the paper's
        (:data:`zipo_scvi._defaults.PAPER_SEARCH_SPACE`: the five encoder structures with full
        residuals, ``alpha_z`` and ``alpha_w`` log-uniform in [0.01, 1]).
    objective
        ``"mcv"`` (default, as for ``zipo tune``; :data:`zipo_scvi._defaults.TUNE_OBJECTIVE`):
        molecular cross-validation; every cell's molecules are split once by binomial thinning
        (90/10, seeded by ``seed``), trials train on the 90% and score the Poisson loss of their
        denoised rates against the held-out 10% (:mod:`zipo_scvi._metrics`; the log-normalised
        MSE against the held-out molecules is kept as the trial's user attribute
        ``"mcv_mse"``). ``"validation_nll"``: mean per-cell NLL of the validation cells on
        their own counts (the paper's; trials validate on cells unless ``validation`` is
        given). Both are minimised; docs/benchmarks/tune_objectives.md compares them.
    storage
        ``None``: in memory. A path: an SQLite file (``sqlite:///<path>``). An RDB URL
        (``postgresql://...``, ``mysql+pymysql://...``) or optuna storage: processes and
        machines running the same call share one study.
    study_name
        Name of the study in the storage (default ``"zipo_<objective>"``); an existing study of
        that name is continued.
    seed
        Seeds every trial's model (weights, cell split, minibatches), the molecule split of
        ``"mcv"`` and the default sampler. With a storage the sampler's seed is offset by the
        process id so that parallel workers do not propose the same settings.
    timeout
        Stop starting trials after this many seconds.
    pruner
        Optuna pruner; ``None``: ``MedianPruner(n_startup_trials=4, n_warmup_steps=15)``;
        ``False``: no pruning (the learning curves are still recorded).
    sampler
        Optuna sampler; default ``TPESampler`` (with ``constant_liar`` for shared storage).
    verbose
        Print one line per finished trial (number, state, value, best so far).
    **train_kwargs
        Fixed settings for every trial: model arguments (e.g. ``likelihood="zinb"``),
        ``preset``, and :meth:`ZIPO.train` arguments (``max_epochs``, ``batch_size``,
        ``callbacks``, ...). Searched parameters override them.

    Returns
    -------
    The optuna study; ``study.best_params`` holds the sampled labels (encoder structures as
    ``"512-256-128"``), ``study.best_trial.user_attrs`` the full settings, and
    :func:`~zipo_scvi.best_settings` / :meth:`ZIPO.from_study` turn them into a model.

    Raises
    ------
    ValueError
        For an unknown objective or search-space parameter, unregistered data, or a stored study
        made for another objective.

    Examples
    --------
    >>> import zipo_scvi
    >>> from zipo_scvi.data import simulate_counts
    >>> adata = simulate_counts(n_cells=150, n_genes=40, seed=0)
    >>> zipo_scvi.ZIPO.setup_anndata(adata)
    >>> study = zipo_scvi.tune(
    ...     adata,
    ...     n_trials=2,
    ...     search_space={"encoder_sizes": ("categorical", [(16, 4), (16, 8)])},
    ...     max_epochs=2,
    ...     verbose=False,
    ... )
    >>> len(study.trials)
    2
    """
    if objective not in TUNE_OBJECTIVES:
        raise ValueError(
            f"Unknown objective {objective!r}; choose one of {list(TUNE_OBJECTIVES)}."
        )
    params = _parse_space(search_space)
    split_settings(train_kwargs)  # checks the preset early
    if objective == "validation_nll" and train_kwargs.get("train_size", 0.0) >= 1.0:
        raise ValueError("objective='validation_nll' needs validation cells (train_size < 1).")
    storage = _storage_url(storage)
    if sampler is None:
        sampler_seed = seed if storage is None else (seed + os.getpid()) % 2**31
        sampler = optuna.samplers.TPESampler(seed=sampler_seed, constant_liar=storage is not None)
    if pruner is None or pruner is True:
        pruner = optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=15)
    with _quiet_logs(verbose):
        study = optuna.create_study(
            storage=storage,
            study_name=study_name or f"zipo_{objective}",
            direction="minimize",
            sampler=sampler,
            pruner=pruner or optuna.pruners.NopPruner(),
            load_if_exists=True,
        )
    made_for = study.user_attrs.get("objective")
    if made_for is None:
        study.set_user_attr("objective", objective)
    elif made_for != objective:
        raise ValueError(
            f"Study {study.study_name!r} was made for objective {made_for!r}, not {objective!r}; "
            "pass another study_name."
        )
    run = _objective_fn(adata, objective, params, dict(train_kwargs), seed)
    callbacks = [_progress(n_trials)] if verbose else []
    if verbose:
        where = "in memory" if storage is None else "in storage"
        n_done = len(study.get_trials(deepcopy=False))
        print(f"[zipo tune] study {study.study_name!r} {where}, {n_done} trial(s) so far")
    with _quiet_logs(verbose):
        study.optimize(run, n_trials=n_trials, timeout=timeout, callbacks=callbacks)
    return study


# ---------------------------------------------------------------------------- seeds
def _seed_metrics(model: ZIPO, adata: AnnData, metrics: Sequence[str]) -> dict[str, float]:
    out = {}
    if {"nll", "mse"} & set(metrics):
        indices = model.validation_indices
        if indices is None or len(indices) == 0:
            indices = None  # no validation cells: score all cells
        out.update(model.get_reconstruction_error(indices=indices))
    if "true_mse" in metrics:
        denoised = model.get_normalized_expression(library_size=1e4, return_numpy=True)
        out["true_mse"] = log_normalised_mse(denoised, adata.layers["true_rate"])
    return {m: out[m] for m in metrics}


def compare_seeds(
    adata: AnnData,
    configs: Mapping[str, Mapping[str, Any]],
    n_seeds: int = 12,
    metrics: Sequence[str] = ("nll", "mse"),
    *,
    verbose: bool = True,
    **train_kwargs,
) -> pd.DataFrame:
    """Train every configuration with every seed and compare them (paper II-H).

    Parameters
    ----------
    adata
        AnnData registered with :meth:`ZIPO.setup_anndata`.
    configs
        ``{name: settings}``; settings mix model arguments, ``preset`` and training arguments
        (as in :func:`tune`).
    n_seeds
        Seeds ``0 .. n_seeds - 1`` (the paper: 12).
    metrics
        ``"nll"`` (mean per-cell NLL) and ``"mse"`` (MSE of the rates against the counts), both
        on the validation cells as in the paper, and ``"true_mse"`` (log-normalised denoised
        expression against ``adata.layers["true_rate"]``, for simulated data; all cells).
    verbose
        Print one line per trained model.
    **train_kwargs
        Settings shared by every configuration (e.g. ``max_epochs``); a configuration's own
        settings override them.

    Returns
    -------
    The tidy table (columns ``config``, ``seed``, ``metric``, ``value``);
    :func:`zipo_scvi._metrics.summarize_seeds` gives means and error bars ``lambda * SEM``, and
    :func:`zipo_scvi.pl.seed_comparison` draws them.

    Raises
    ------
    ValueError
        For no configurations, ``n_seeds < 1``, an unknown metric, or ``"true_mse"`` without
        ``layers["true_rate"]``.

    Examples
    --------
    >>> import zipo_scvi
    >>> configs = {"paper": {"preset": "paper"}, "default": {}}
    >>> table = compare_seeds(  # the paper: n_seeds=12 and full training
    ...     adata, configs, n_seeds=2, max_epochs=2, encoder_sizes=(16, 4), verbose=False
    ... )
    >>> fig = zipo_scvi.pl.seed_comparison(table)
    """
    unknown = [m for m in metrics if m not in SEED_METRICS]
    if unknown or not metrics:
        raise ValueError(f"Unknown metric(s) {unknown}; choose from {list(SEED_METRICS)}.")
    if not configs:
        raise ValueError("Give at least one configuration.")
    if n_seeds < 1:
        raise ValueError(f"n_seeds must be at least 1, not {n_seeds}.")
    if "true_mse" in metrics and "true_rate" not in adata.layers:
        raise ValueError("metric 'true_mse' needs the true rates in adata.layers['true_rate'].")
    _setup_args(adata)
    settings = {}
    for name, config in configs.items():
        settings[name] = split_settings({**train_kwargs, **config})
    rows = []
    with _quiet_logs(verbose):
        for name, (preset, model_kwargs, fit_kwargs) in settings.items():
            for seed in range(n_seeds):
                model = ZIPO(adata, preset=preset, seed=seed, **model_kwargs)
                _train_quietly(model, seed=seed, **dict(fit_kwargs))
                scores = _seed_metrics(model, adata, metrics)
                rows += [{"config": name, "seed": seed, "metric": m, "value": v}
                         for m, v in scores.items()]  # fmt: skip
                if verbose:
                    shown = ", ".join(f"{m} {v:.5g}" for m, v in scores.items())
                    print(f"[zipo compare_seeds] {name} seed {seed}: {shown}")
    return pd.DataFrame(rows, columns=["config", "seed", "metric", "value"])
