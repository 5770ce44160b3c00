"""One router for flat settings: which are the preset, which go to ``ZIPO(...)``, which to
``ZIPO.train``; derived from the presets of :mod:`zipo_scvi._defaults`.

Flat settings (``{"preset": "paper", "alpha_z": 0.5, "max_epochs": 50, ...}``) are what a search
space, a seed comparison's configuration, a stored optuna trial and the command line's settings
file hold. Model arguments are the keys of a preset's module settings; everything else is a
training argument (``ZIPO.train`` takes the preset's schedule names such as ``lr_decay``
directly and hands them to the training plan).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._defaults import PAPER_MODULE, PAPER_TRAIN, PRESETS

#: Arguments of ``ZIPO(...)`` that a preset sets (the module hyperparameters).
MODEL_KEYS: frozenset[str] = frozenset(PAPER_MODULE)
#: Arguments of ``ZIPO.train`` that a preset sets (optimiser, schedule, stopping, split).
TRAIN_KEYS: frozenset[str] = frozenset(PAPER_TRAIN)


def check_preset(name: str) -> str:
    """Return ``name`` if it names a preset, else raise ``ValueError`` listing the presets."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
    return name


def split_settings(settings: Mapping[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Split flat settings into the preset, ``ZIPO(...)`` arguments and ``train`` arguments.

    Parameters
    ----------
    settings
        Flat settings; ``"preset"`` (default ``"default"``), model hyperparameters (lists are
        turned into tuples, as TOML and JSON give them) and anything else for ``ZIPO.train``.

    Returns
    -------
    ``(preset, model_kwargs, train_kwargs)``.

    Raises
    ------
    ValueError
        For an unknown preset.

    Examples
    --------
    >>> split_settings({"preset": "paper", "encoder_sizes": [16, 4], "lr_decay": 0.8})
    ('paper', {'encoder_sizes': (16, 4)}, {'lr_decay': 0.8})
    """
    preset = check_preset(settings.get("preset", "default"))
    model_kwargs, train_kwargs = {}, {}
    for key, value in settings.items():
        if key in MODEL_KEYS:
            model_kwargs[key] = tuple(value) if isinstance(value, list) else value
        elif key != "preset":
            train_kwargs[key] = value
    return preset, model_kwargs, train_kwargs


def best_settings(study) -> dict[str, Any]:
    """The settings of a :func:`zipo_scvi.tune` study's best trial, ready for ZIPO.

    Parameters
    ----------
    study
        An optuna study made by :func:`zipo_scvi.tune` with at least one completed trial.

    Returns
    -------
    ``{"preset": ..., "model_kwargs": {...}, "train_kwargs": {...}}``; ``model_kwargs`` go to
    ``ZIPO(adata, preset=..., **model_kwargs)`` (or use
    :meth:`~zipo_scvi.ZIPO.from_study`), ``train_kwargs`` to ``model.train``.

    Raises
    ------
    ValueError
        If the study has no completed trial or was not made by :func:`zipo_scvi.tune`.

    Examples
    --------
    >>> settings = best_settings(study)  # doctest: +SKIP
    >>> kwargs = settings["model_kwargs"]  # doctest: +SKIP
    >>> model = ZIPO(adata, preset=settings["preset"], **kwargs)  # doctest: +SKIP
    >>> model.train(**settings["train_kwargs"])  # doctest: +SKIP
    """
    try:
        trial = study.best_trial
    except ValueError as err:
        raise ValueError(f"Study {study.study_name!r} has no completed trial yet.") from err
    attrs = trial.user_attrs
    if "model_kwargs" not in attrs:
        raise ValueError(f"Study {study.study_name!r} was not made by zipo_scvi.tune.")
    preset, model_kwargs, _ = split_settings(
        {"preset": attrs.get("preset", "default"), **attrs["model_kwargs"]}
    )
    return {
        "preset": preset,
        "model_kwargs": model_kwargs,
        "train_kwargs": dict(attrs.get("train_kwargs", {})),
    }
