"""Input checks: raw counts (finite non-negative integers), obs keys, saved genes, settings."""

from __future__ import annotations

import math
import numbers
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

if TYPE_CHECKING:
    from .data import BackedCollection

_CHUNK = 10_000


class ZipoWarning(UserWarning):
    """Valid input that is probably not what was meant (the command line prints these)."""


def _integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _sizes(value: Any, allow_empty: bool) -> bool:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        return False
    return (allow_empty or len(value) > 0) and all(_integer(v) and v > 0 for v in value)


#: What each numeric setting must be: name -> (description, test). Every way in (``ZIPO``,
#: ``ZIPO.train``, config files, flags) goes through :func:`check_settings`.
SETTING_RANGES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "max_epochs": ("a positive integer", lambda v: _integer(v) and v > 0),
    "batch_size": ("an integer of at least 2", lambda v: _integer(v) and v >= 2),
    "train_size": ("a number in (0, 1]", lambda v: _number(v) and 0 < v <= 1),
    "lr": ("a positive number", lambda v: _number(v) and v > 0),
    "lr_decay": ("a number in (0, 1]", lambda v: _number(v) and 0 < v <= 1),
    "lr_floor": ("a number >= 0", lambda v: _number(v) and v >= 0),
    "lr_patience": ("an integer >= 0", lambda v: _integer(v) and v >= 0),
    "lr_threshold": ("a number >= 0", lambda v: _number(v) and v >= 0),
    "lr_factor": ("a number in (0, 1] (1: no plateau cuts)", lambda v: _number(v) and 0 < v <= 1),
    "weight_decay": ("a number >= 0", lambda v: _number(v) and v >= 0),
    "train_split": ("a number in (0, 1]", lambda v: _number(v) and 0 < v <= 1),
    "ema_decay": ("a number in [0, 1)", lambda v: _number(v) and 0 <= v < 1),
    "ema_epochs": ("a number >= 0", lambda v: _number(v) and v >= 0),
    "early_stopping_patience": ("an integer >= 1", lambda v: _integer(v) and v >= 1),
    "early_stopping_steps": ("an integer >= 0", lambda v: _integer(v) and v >= 0),
    "validation_steps": ("an integer >= 0 (0: every epoch)", lambda v: _integer(v) and v >= 0),
    "encoder_sizes": (
        "a non-empty list of positive integers (the last is the number of latents)",
        lambda v: _sizes(v, allow_empty=False),
    ),
    "decoder_sizes": ("a list of positive integers", lambda v: _sizes(v, allow_empty=True)),
    "library_sizes": ("a list of positive integers", lambda v: _sizes(v, allow_empty=True)),
    "input_target_sum": (
        'a number > 0 or "median"',
        lambda v: v == "median" or (_number(v) and v > 0),
    ),
    "input_dropout": ("a number in [0, 1)", lambda v: _number(v) and 0 <= v < 1),
    "latent_noise": ("a number >= 0", lambda v: _number(v) and v >= 0),
    **{
        name: ("a number >= 0", lambda v: _number(v) and v >= 0)
        for name in (
            "alpha_z",
            "alpha_w",
            "alpha_theta",
            "alpha_library",
            "batch_mmd",
            "batch_adversary",
        )
    },
}


def check_settings(values: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the first setting outside its range (see ``SETTING_RANGES``).

    ``None`` means "the default" and passes; names without a range are not checked here.

    Examples
    --------
    >>> check_settings({"max_epochs": 0})
    Traceback (most recent call last):
    ...
    ValueError: max_epochs must be a positive integer, not 0.
    """
    for name, value in values.items():
        if name in SETTING_RANGES and value is not None:
            what, ok = SETTING_RANGES[name]
            if not ok(value):
                shown = list(value) if isinstance(value, tuple) else value
                raise ValueError(f"{name} must be {what}, not {shown!r}.")


def _values(matrix) -> np.ndarray:
    """The stored values of a dense or sparse block (no densifying of sparse data)."""
    if sp.issparse(matrix):
        return np.asarray(matrix.data)
    if hasattr(matrix, "data") and hasattr(matrix, "indptr"):  # backed sparse dataset
        return np.asarray(matrix.data)
    return np.asarray(matrix)


def check_counts(adata: AnnData, layer: str | None = None) -> None:
    """Raise ``ValueError`` naming the problem if ``adata`` does not hold raw counts.

    Parameters
    ----------
    adata
        The data.
    layer
        Layer holding the counts (``None``: ``adata.X``).

    Examples
    --------
    >>> import numpy as np, anndata
    >>> check_counts(anndata.AnnData(np.array([[1.5, 0.0]])))
    Traceback (most recent call last):
    ...
    ValueError: adata.X holds non-integer values (e.g. 1.5); ZIPO needs raw counts.
    """
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(f"The AnnData is empty ({adata.n_obs} cells x {adata.n_vars} genes).")
    if layer is not None and layer not in adata.layers:
        raise ValueError(
            f"Layer {layer!r} not found in adata.layers (available: {list(adata.layers)})."
        )
    matrix = adata.X if layer is None else adata.layers[layer]
    if matrix is None:
        raise ValueError(f"{where} is empty (None); ZIPO needs a count matrix.")
    for start in range(0, adata.n_obs, _CHUNK):
        block = matrix[start : start + _CHUNK]
        values = _values(block).astype(np.float64, copy=False).ravel()
        if values.size == 0:
            continue
        if not np.isfinite(values).all():
            kind = "NaN" if np.isnan(values).any() else "infinite"
            raise ValueError(f"{where} holds {kind} values; ZIPO needs finite raw counts.")
        if values.min() < 0:
            raise ValueError(
                f"{where} holds negative values (min {values.min():g}); ZIPO needs raw counts."
            )
        frac = values[values != np.round(values)]
        if frac.size:
            raise ValueError(
                f"{where} holds non-integer values (e.g. {frac[0]:g}); ZIPO needs raw counts."
                + _raw_hint(adata, layer)
            )


def _raw_hint(adata: AnnData, layer: str | None) -> str:
    """A hint when the counts seem to be in ``adata.raw`` (X normalised, raw.X integers)."""
    raw = getattr(adata, "raw", None)
    if layer is not None or raw is None or raw.X is None:
        return ""
    values = _values(raw.X[: min(_CHUNK, raw.X.shape[0])]).ravel()
    if values.size == 0 or (values != np.round(values)).any() or (values < 0).any():
        return ""
    return (
        " adata.raw seems to hold them: use adata = adata.raw.to_adata() (keeps obs) or put "
        "them in a layer (adata.layers['counts'] = adata.raw[:, adata.var_names].X) and pass "
        "layer='counts' (--layer counts)."
    )


def check_not_all_zero(adata: AnnData, layer: str | None = None) -> None:
    """Raise ``ValueError`` if the count matrix holds no molecule at all (nothing to learn)."""
    matrix = adata.X if layer is None else adata.layers[layer]
    total = 0.0
    for start in range(0, adata.n_obs, _CHUNK):
        total += float(_values(matrix[start : start + _CHUNK]).sum())
        if total > 0:
            return
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    raise ValueError(f"{where} holds no counts (every value is 0): there is nothing to denoise.")


def check_obs_keys(
    adata: AnnData,
    batch_key: str | None = None,
    categorical_covariate_keys: list[str] | None = None,
    continuous_covariate_keys: list[str] | None = None,
) -> None:
    """Raise ``ValueError`` if a covariate column is missing or a continuous one is not finite.

    Parameters
    ----------
    adata
        The data.
    batch_key, categorical_covariate_keys, continuous_covariate_keys
        ``adata.obs`` columns, as given to ``ZIPO.setup_anndata``.
    """
    keys = [batch_key, *(categorical_covariate_keys or []), *(continuous_covariate_keys or [])]
    missing = [k for k in keys if k is not None and k not in adata.obs]
    if missing:
        raise ValueError(
            f"Key(s) {missing} not found in adata.obs (available: {list(adata.obs.columns)})."
        )
    for key in [batch_key, *(categorical_covariate_keys or [])]:
        if key is not None:
            empty = int(pd.isna(adata.obs[key]).sum())
            if empty:
                raise ValueError(
                    f"adata.obs[{key!r}] has no value (NaN) for {empty} of {adata.n_obs} cells; "
                    "fill them (e.g. with 'unknown') or drop those cells."
                )
    for key in [batch_key, *(categorical_covariate_keys or [])]:
        column = adata.obs[key] if key is not None else None
        if column is not None and pd.api.types.is_float_dtype(column):
            n_levels = column.nunique()
            if n_levels > 50 or n_levels > adata.n_obs / 2:
                warnings.warn(
                    f"adata.obs[{key!r}] holds {n_levels} distinct numbers: it is used as a "
                    f"categorical column, one batch per value ({n_levels} batches). Pass a "
                    "continuous quantity as continuous_covariate_keys instead.",
                    UserWarning,
                    stacklevel=3,
                )
    for key in continuous_covariate_keys or []:
        try:
            values = np.asarray(adata.obs[key], dtype=float)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"Continuous covariate {key!r} holds non-numeric values ({err})."
            ) from err
        if not np.isfinite(values).all():
            raise ValueError(f"Continuous covariate {key!r} holds NaN or infinite values.")


def check_saved_genes(
    dir_path: str | os.PathLike, adata: AnnData | BackedCollection, prefix: str | None = None
) -> None:
    """Raise ``ValueError`` if ``adata``'s genes are not the saved model's, in the same order.

    scvi-tools refuses a different number of genes but only warns about different names; a
    model fine-tuned on other genes would silently read every column as the wrong gene.

    Parameters
    ----------
    dir_path
        Folder written by ``ZIPO.save`` (nothing is checked if it holds no ``model.pt``).
    adata
        The data the model is about to be loaded onto.
    prefix
        File-name prefix given to ``save``.

    Examples
    --------
    >>> model.save("zipo_model/", overwrite=True)
    >>> check_saved_genes("zipo_model/", adata)  # the same genes: nothing to say
    >>> check_saved_genes("zipo_model/", adata[:, ::-1])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: The genes of this AnnData do not match the saved model's genes ...
    """
    model_file = Path(dir_path) / f"{prefix or ''}model.pt"
    if not model_file.is_file():
        return
    try:
        saved = torch.load(model_file, map_location="cpu", weights_only=False).get("var_names")
    except Exception:  # not a model file: ZIPO.load reports that with its own message
        return
    if saved is None:
        return
    check_genes(saved, adata.var_names, "the saved model's")


def check_genes(expected: Sequence[str], given: Sequence[str], whose: str = "the model's") -> None:
    """Raise ``ValueError`` if ``given`` gene names are not ``expected``, in the same order.

    Parameters
    ----------
    expected
        The model's genes.
    given
        The genes of the data handed to it.
    whose
        How the message names the expected genes.

    Examples
    --------
    >>> check_genes(["a", "b"], ["a", "b"])
    >>> check_genes(["a", "b"], ["b", "a"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: The genes of this AnnData do not match the model's genes ... another order...
    """
    saved = pd.Index(np.asarray(expected).astype(str))
    names = pd.Index(np.asarray(given).astype(str))
    if saved.equals(names):
        return
    if len(saved) == len(names) and set(saved) == set(names):
        hint = "the same genes in another order; reorder them: adata[:, saved_genes]"
    else:
        missing, extra = saved.difference(names), names.difference(saved)
        hint = (
            f"{len(missing)} of the model's genes missing (e.g. {list(missing[:3])}), "
            f"{len(extra)} genes the model does not know (e.g. {list(extra[:3])})"
        )
    raise ValueError(
        f"The genes of this AnnData do not match {whose} genes ({len(names)} genes, "
        f"the model has {len(saved)}): {hint}."
    )
