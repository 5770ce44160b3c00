"""Plots of seed comparisons: means with the paper's error bars (lambda * SEM, II-H)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def seed_comparison(
    table: pd.DataFrame,
    metrics: list[str] | None = None,
    axes: list[Axes] | None = None,
    show_seeds: bool = True,
) -> Figure:
    """Plot each configuration's mean over seeds with error bars ``lambda * SEM``.

    ``lambda = Phi^-1(0.99) / sqrt(2) ~ 1.64`` (paper II-H): two configurations whose bars do
    not overlap differ at about the 1% level.

    Parameters
    ----------
    table
        Tidy table of :func:`zipo_scvi.compare_seeds` (``config``, ``seed``, ``metric``,
        ``value``).
    metrics
        Metrics to draw, one panel each; default: all in the table.
    axes
        Axes to draw on (one per metric); default: a new figure.
    show_seeds
        Also draw every seed's value as a small grey point.

    Returns
    -------
    The figure.

    Examples
    --------
    >>> import pandas as pd
    >>> from zipo_scvi.pl import seed_comparison
    >>> t = pd.DataFrame({"config": ["a", "a", "b", "b"], "seed": [0, 1, 0, 1],
    ...                   "metric": "nll", "value": [1.0, 1.2, 0.9, 1.0]})
    >>> fig = seed_comparison(t)
    """
    import matplotlib.pyplot as plt

    from .._metrics import summarize_seeds

    summary = summarize_seeds(table)
    metrics = list(dict.fromkeys(summary["metric"])) if metrics is None else list(metrics)
    missing = [m for m in metrics if m not in set(summary["metric"])]
    if missing or not metrics:
        raise ValueError(f"Metric(s) {missing} not in the table ({sorted(set(table['metric']))}).")
    if axes is None:
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.2), squeeze=False)
        axes = list(axes[0])
    fig = axes[0].figure
    configs = list(dict.fromkeys(table["config"]))
    positions = np.arange(len(configs))
    for ax, metric in zip(axes, metrics):
        rows = summary[summary["metric"] == metric].set_index("config").reindex(configs)
        if show_seeds:
            for i, config in enumerate(configs):
                values = table[(table["config"] == config) & (table["metric"] == metric)]["value"]
                ax.scatter(np.full(len(values), i + 0.15), values, s=8, color="0.6", zorder=1)
        ax.errorbar(
            positions, rows["mean"], yerr=rows["error"], fmt="o", capsize=4, color="C0", zorder=2
        )
        ax.set_xticks(positions, configs, rotation=30, ha="right")
        ax.set_xlim(-0.5, len(configs) - 0.5)
        ax.set_title(metric)
    n = int(summary["n"].max())
    fig.suptitle(f"mean ± λ·SEM over {n} seed{'s' if n > 1 else ''} (λ ≈ 1.64)", fontsize=9)
    fig.tight_layout()
    return fig
