"""Plots of the sparse first layer: weight magnitudes, sparsity and NLL/MSE against delta."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._defaults import PRUNE_DELTA
from .._sparsity import normalized_weights


def _normalized(source: Any) -> np.ndarray:
    """Normalised first-layer weights of a ZIPO model, a ZiPoModule or a weight array."""
    module = getattr(source, "module", source)
    encoder = getattr(module, "encoder", None)
    if encoder is not None:
        return normalized_weights(encoder.first.effective_weight())
    weight = np.asarray(source, dtype=float)
    if weight.ndim != 2:
        raise ValueError(f"expected a model or a 2-d weight matrix, got shape {weight.shape}")
    return normalized_weights(weight)


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots()


def _labelled(curves: Any, kind: type) -> dict[str, Any]:
    if isinstance(curves, kind):
        return {"": curves}
    if isinstance(curves, Mapping):
        return {str(k): v for k, v in curves.items()}
    raise TypeError(f"expected a {kind.__name__} or a mapping of them, got {type(curves)}")


def weight_histogram(
    before: Any,
    after: Any = None,
    delta: float = PRUNE_DELTA,
    bins: int = 60,
    ax: Axes | None = None,
) -> Figure:
    """Histogram of normalised first-layer weight magnitudes, before and after pruning.

    Magnitudes are ``|w| / max |w|`` per neuron on a log scale; exact zeros (pruned weights)
    are counted in the legend.

    Parameters
    ----------
    before
        A trained :class:`~zipo_scvi.ZIPO` (its current first layer) or a neurons x genes weight
        array, e.g. ``model.module.encoder.first.weight.detach().numpy().copy()`` saved before
        :meth:`~zipo_scvi.ZIPO.prune`.
    after
        The same after pruning (optional).
    delta
        Pruning threshold, drawn as a vertical line.
    bins
        Number of log-spaced bins.
    ax
        Axes to draw on; default: a new figure.

    Returns
    -------
    The figure.

    Examples
    --------
    >>> from zipo_scvi import pl
    >>> w = model.module.encoder.first.weight.detach().numpy().copy()
    >>> report = model.prune(delta=1e-4)
    >>> fig = pl.weight_histogram(w, model)
    """
    fig, ax = _axes(ax, (5, 3.5))
    sets = {"before pruning": _normalized(before)}
    if after is not None:
        sets["after pruning"] = _normalized(after)
    magnitudes = {k: np.abs(v).ravel() for k, v in sets.items()}
    nonzero = np.concatenate([m[m > 0] for m in magnitudes.values()])
    low = min(np.log10(nonzero.min()) if nonzero.size else -8.0, np.log10(delta) - 1)
    edges = np.logspace(np.floor(low), 0, bins + 1)
    for (label, m), style in zip(magnitudes.items(), ("stepfilled", "step")):
        zeros = int((m == 0).sum())
        ax.hist(
            m[m > 0],
            bins=edges,
            histtype=style,
            alpha=0.5 if style == "stepfilled" else 1.0,
            linewidth=1.5,
            label=f"{label} ({zeros / m.size:.1%} exactly zero)",
        )
    ax.axvline(delta, color="k", linestyle="--", linewidth=1, label=f"delta = {delta:g}")
    ax.set_xscale("log")
    ax.set_xlabel("|w| / max |w| of the neuron")
    ax.set_ylabel("first-layer weights")
    ax.legend(frameon=False, fontsize="small")
    return fig


def sparsity_curve(
    curves: pd.Series | Mapping[str, pd.Series],
    delta: float = PRUNE_DELTA,
    ax: Axes | None = None,
) -> Figure:
    """Fraction of normalised first-layer weights below delta, against delta (paper Fig. 10a,b).

    Parameters
    ----------
    curves
        A Series from :meth:`~zipo_scvi.ZIPO.first_layer_sparsity`, or a mapping label ->
        Series (e.g. one per ``alpha_w``).
    delta
        Pruning threshold, drawn as a vertical line.
    ax
        Axes to draw on; default: a new figure.

    Returns
    -------
    The figure.

    Examples
    --------
    >>> from zipo_scvi import pl
    >>> fig = pl.sparsity_curve(model.first_layer_sparsity())
    """
    fig, ax = _axes(ax, (5, 3.5))
    for label, series in _labelled(curves, pd.Series).items():
        series = series[series.index > 0]
        ax.plot(series.index, series.values, marker=".", label=label or None)
    ax.axvline(delta, color="k", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("delta")
    ax.set_ylabel("fraction of weights below delta")
    if any(line.get_label() and not line.get_label().startswith("_") for line in ax.lines):
        ax.legend(frameon=False, fontsize="small")
    return fig


def pruning_curve(
    curves: pd.DataFrame | Mapping[str, pd.DataFrame],
    delta: float = PRUNE_DELTA,
    axes: tuple[Axes, Axes] | None = None,
) -> Figure:
    """Relative change of NLL and MSE of rates after pruning, against delta (Fig. 10c,d).

    Parameters
    ----------
    curves
        A DataFrame from :meth:`~zipo_scvi.ZIPO.pruning_curve` (index delta, columns
        ``nll_change`` and ``mse_change``), or a mapping label -> DataFrame.
    delta
        Pruning threshold, drawn as a vertical line.
    axes
        Two axes (NLL, MSE) to draw on; default: a new figure with two panels.

    Returns
    -------
    The figure.

    Examples
    --------
    >>> from zipo_scvi import pl
    >>> fig = pl.pruning_curve(model.pruning_curve())
    """
    if axes is None:
        fig = Figure(figsize=(9, 3.5), layout="constrained")
        axes = tuple(fig.subplots(1, 2))
    else:
        fig = axes[0].figure
    tables = _labelled(curves, pd.DataFrame)
    for ax, metric, title in zip(axes, ("nll_change", "mse_change"), ("NLL", "MSE of rates")):
        for label, table in tables.items():
            table = table[table.index > 0]
            ax.plot(table.index, 100 * table[metric], marker=".", label=label or None)
        ax.axvline(delta, color="k", linestyle="--", linewidth=1)
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.set_xscale("log")
        ax.set_xlabel("delta")
        ax.set_ylabel(f"change of {title} after pruning (%)")
        ax.set_title(title)
    if any(label for label in tables):
        axes[0].legend(frameon=False, fontsize="small")
    return fig
