"""The sparse first layer: pruning, sparsity curves, gene modules and their coherence.

Two ways to prune the first encoder layer. ``model.prune()`` (the default) is gradual magnitude
pruning (Zhu & Gupta 2017) to a target share of zeros, with fine-tuning, within co-expression
modules: the genes are split into clusters by their correlations (:func:`gene_clusters`) and
each neuron keeps the genes of the clusters that carry most of its weight (:func:`cluster_mask`);
a weight ``w_ig`` is scored by ``|w_ig|`` times the standard deviation of gene ``g``'s encoder
input over cells (so a rare gene, whose input is rarely non-zero, needs a larger weight to
matter), the lowest scores, those outside the neuron's clusters first, are zeroed along a cubic
schedule while training continues, then the model is fine-tuned with the mask fixed until the
held-out-molecule loss stops improving. ``model.prune(delta=...)`` is
the paper's one-shot threshold (III-E): weights below ``delta`` of their neuron's largest are
zeroed. Either way the zeros are pinned by the layer's mask (:class:`MaskedLinear`), which every
later forward pass applies and ``save``/``load`` keeps.

The pure functions work on a first-layer weight matrix (neurons x genes);
:class:`SparsityMixin` gives the ZIPO model its ``prune``, ``first_layer_sparsity``,
``pruning_curve``, ``get_gene_modules``, ``gene_module_coherence`` and ``get_zero_inflation``
methods. After pruning, inference multiplies by a sparse (CSR) copy of the first layer's
weights when the mask keeps few enough of them (:class:`SparseMaskedLinear`); training uses the
dense, masked weights.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from lightning.pytorch.callbacks import Callback
from scvi import REGISTRY_KEYS
from torch.nn.utils import prune as torch_prune

from ._components import MaskedLinear
from ._defaults import MOLECULE_SPLIT, PRUNE_DELTA, PRUNE_SCHEDULE
from ._metrics import log_normalise, thin_counts

#: Deltas of the sparsity and pruning curves (the paper's Fig. 10 spans 1e-6 .. 1e-1).
DEFAULT_DELTAS: tuple[float, ...] = tuple(float(d) for d in np.logspace(-7, -1, 13))

#: Largest share of kept first-layer weights at which CPU inference switches to a CSR matmul.
#: ``benchmarks/sparsity.py`` measures it (one thread, 2000 genes, 256 cells): the CSR product
#: ran 3-14x faster than the dense one at 1-5% density, ~2x at 10% and ~1.1x at 20%; with two
#: threads an earlier check found no consistent gain at 10%, so the switch sits at 5%. GPUs keep
#: the dense product (not measured).
SPARSE_MAX_DENSITY: float = 0.05


# ---------------------------------------------------------------------- pure functions
def normalized_weights(weight: torch.Tensor | np.ndarray) -> np.ndarray:
    """Divide each neuron's (row's) weights by the neuron's largest absolute weight.

    The paper's penalty and BatchNorm make a neuron's weights meaningful only relative to each
    other (paper III-E), so pruning thresholds apply to these normalised weights.

    Parameters
    ----------
    weight
        First-layer weights, neurons x genes.

    Returns
    -------
    Array of the same shape with values in ``[-1, 1]``; a neuron whose weights are all zero
    stays all zero.

    Examples
    --------
    >>> normalized_weights(np.array([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0]]))
    array([[ 1.  , -0.5 ,  0.25],
           [ 0.  ,  0.  ,  0.  ]])
    """
    w = weight.detach().cpu().numpy() if isinstance(weight, torch.Tensor) else np.asarray(weight)
    w = w.astype(np.float64, copy=False)
    peak = np.abs(w).max(axis=1, keepdims=True)
    return np.divide(w, peak, out=np.zeros_like(w), where=peak > 0)


def _check_delta(delta: float) -> float:
    delta = float(delta)
    if not np.isfinite(delta) or not 0.0 <= delta <= 1.0:
        raise ValueError(f"delta must be a number in [0, 1], not {delta!r}.")
    return delta


def prune_mask(weight: torch.Tensor | np.ndarray, delta: float = PRUNE_DELTA) -> np.ndarray:
    """Which weights survive pruning: normalised ``|w| >= delta`` (paper III-E).

    Parameters
    ----------
    weight
        First-layer weights, neurons x genes.
    delta
        Threshold on the normalised absolute weight, in ``[0, 1]``.

    Returns
    -------
    Boolean array, True where the weight is kept. Zero weights are never kept.

    Examples
    --------
    >>> prune_mask(np.array([[1.0, 1e-5, -0.3]]), delta=1e-4)
    array([[ True, False,  True]])
    """
    norm = np.abs(normalized_weights(weight))
    return (norm >= _check_delta(delta)) & (norm > 0)


def sparsity_curve(
    weight: torch.Tensor | np.ndarray, deltas: Sequence[float] = DEFAULT_DELTAS
) -> pd.Series:
    """Fraction of normalised first-layer weights below each delta (the paper's Fig. 10a,b).

    Parameters
    ----------
    weight
        First-layer weights, neurons x genes.
    deltas
        Thresholds on the normalised absolute weight.

    Returns
    -------
    Series indexed by delta (name ``"delta"``), values in ``[0, 1]``.

    Examples
    --------
    >>> sparsity_curve(np.array([[1.0, 1e-5, 1e-3, 0.0]]), deltas=[1e-4, 1e-2]).tolist()
    [0.5, 0.75]
    """
    deltas = [_check_delta(d) for d in deltas]
    norm = np.sort(np.abs(normalized_weights(weight)), axis=None)
    below = np.searchsorted(norm, deltas, side="left") / max(norm.size, 1)
    return pd.Series(below, index=pd.Index(deltas, name="delta"), name="fraction_below")


def importance_scores(
    weight: torch.Tensor | np.ndarray, input_scale: torch.Tensor | np.ndarray | None
) -> np.ndarray:
    """How much each first-layer weight moves its neuron: ``|w_ig| * scale_g``.

    ``scale_g`` is the typical size of gene ``g``'s encoder input (its standard deviation over
    cells, :meth:`SparsityMixin.input_scale`): a gene that is rarely non-zero varies a neuron
    little even through a large weight. ``None`` scores by ``|w_ig|`` alone.

    Examples
    --------
    >>> importance_scores(np.array([[2.0, -1.0]]), np.array([0.1, 1.0])).tolist()
    [[0.2, 1.0]]
    """
    w = weight.detach().cpu().numpy() if isinstance(weight, torch.Tensor) else np.asarray(weight)
    score = np.abs(w.astype(np.float64, copy=False))
    if input_scale is None:
        return score
    if isinstance(input_scale, torch.Tensor):
        input_scale = input_scale.detach().cpu().numpy()
    scale = np.asarray(input_scale, dtype=np.float64)
    if scale.shape != (score.shape[1],):
        raise ValueError(
            f"Got {scale.size} input scales for a layer with {score.shape[1]} inputs."
        )
    return score * scale


def gene_modules(
    weight: torch.Tensor | np.ndarray,
    genes: Sequence[str],
    n_top: int | None = None,
    min_weight: float = PRUNE_DELTA,
    input_scale: torch.Tensor | np.ndarray | None = None,
) -> pd.DataFrame:
    """The genes each first-layer neuron uses, ranked by importance.

    Parameters
    ----------
    weight
        First-layer weights, neurons x genes.
    genes
        Gene names, one per column of ``weight``.
    n_top
        Keep at most this many genes per neuron (most important first); None keeps all.
    min_weight
        Keep genes whose normalised ``|weight|`` is at least this (default: the pruning delta;
        a pruned weight is zero, so a pruned model's modules are within its kept weights).
    input_scale
        Typical size of each gene's encoder input (see :func:`importance_scores`); genes are
        then ranked by ``|w| * scale`` instead of ``|w|``. None ranks by ``|w|``.

    Returns
    -------
    Tidy DataFrame with columns ``neuron`` (int), ``gene`` (str), ``weight`` (signed,
    normalised to the neuron's largest ``|weight|``) and ``importance`` (``|w| * scale``,
    normalised to the neuron's largest), sorted by neuron, then by importance descending.
    Neurons that use no gene do not appear.

    Examples
    --------
    >>> w = np.array([[0.5, -1.0, 0.0], [0.0, 0.0, 2.0]])
    >>> gene_modules(w, ["a", "b", "c"])[["neuron", "gene", "weight"]].values.tolist()
    [[0, 'b', -1.0], [0, 'a', 0.5], [1, 'c', 1.0]]
    >>> gene_modules(w, ["a", "b", "c"], input_scale=[4.0, 1.0, 1.0])["gene"].tolist()
    ['a', 'b', 'c']
    """
    norm = normalized_weights(weight)
    genes = np.asarray(genes, dtype=object)
    if genes.shape != (norm.shape[1],):
        raise ValueError(f"Got {genes.size} gene names for a layer with {norm.shape[1]} inputs.")
    if n_top is not None and int(n_top) < 1:
        raise ValueError(f"n_top must be a positive integer or None, not {n_top!r}.")
    importance = normalized_weights(importance_scores(norm, input_scale))
    magnitude = np.abs(norm)
    rows, cols = np.nonzero((magnitude >= _check_delta(min_weight)) & (magnitude > 0))
    order = np.lexsort((-importance[rows, cols], rows))
    rows, cols = rows[order], cols[order]
    if n_top is not None:
        starts = np.searchsorted(rows, rows, side="left")
        keep = np.arange(rows.size) - starts < int(n_top)
        rows, cols = rows[keep], cols[keep]
    return pd.DataFrame(
        {
            "neuron": rows.astype(int),
            "gene": genes[cols],
            "weight": norm[rows, cols],
            "importance": importance[rows, cols],
        }
    )


def module_coherence(
    expression: np.ndarray,
    modules: Sequence[Sequence[int]],
    detection: np.ndarray | None = None,
    n_random: int = 200,
    n_bins: int = 20,
    quantile: float = 0.95,
    max_cells: int | None = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Test whether gene modules are co-expressed beyond detection-matched random gene sets.

    A module's coherence is the mean pairwise Pearson correlation, over cells, of its genes'
    expression (pass log-normalised expression). Its null is the same statistic for
    ``n_random`` random gene sets of the same size in which each gene is drawn from the same
    detection-rate bin (``n_bins`` quantile bins of the share of cells where a gene is
    non-zero) as the module gene it stands for: frequent genes correlate more with each other
    than rare ones, so an unmatched null would reward modules of frequent genes. A module
    is coherent when its correlation exceeds the null's ``quantile``.

    Parameters
    ----------
    expression
        Cells x genes, e.g. log-normalised counts.
    modules
        Each module as a sequence of gene (column) indices; modules of fewer than two genes are
        reported as not coherent.
    detection
        Share of cells in which each gene is non-zero; default: computed from ``expression``.
    n_random, n_bins, quantile
        Size, matching and cut of the null.
    max_cells
        Use a random subset of at most this many cells (None: all).
    seed
        Seed of the cell subset and the random gene sets.

    Returns
    -------
    DataFrame, one row per module: ``n_genes``, ``mean_corr``, ``null_quantile`` (the null's
    ``quantile``), ``null_mean`` and ``coherent`` (bool).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> factor = rng.normal(size=(300, 1))
    >>> x = np.c_[factor + 0.5 * rng.normal(size=(300, 5)), rng.normal(size=(300, 40))]
    >>> module_coherence(x, [[0, 1, 2, 3, 4]])["coherent"].tolist()
    [True]
    """
    rng = np.random.default_rng(seed)
    x = np.asarray(expression, dtype=np.float64)
    if detection is None:
        detection = (x != 0).mean(axis=0)
    detection = np.asarray(detection, dtype=np.float64)
    if max_cells is not None and x.shape[0] > max_cells:
        x = x[np.sort(rng.choice(x.shape[0], max_cells, replace=False))]
    n_cells = x.shape[0]
    std = x.std(axis=0)
    z = np.divide(x - x.mean(axis=0), std, out=np.zeros_like(x), where=std > 0).T.copy()
    z = z.astype(np.float32)  # genes x cells; each non-constant row has squared norm n_cells
    ranks = np.empty(detection.size, dtype=int)  # ties broken at random
    ranks[np.lexsort((rng.random(detection.size), detection))] = np.arange(detection.size)
    bins = np.minimum(ranks * n_bins // max(detection.size, 1), n_bins - 1)
    members = [np.flatnonzero(bins == b) for b in range(n_bins)]

    def mean_corr(sets: np.ndarray) -> np.ndarray:  # (n_sets, k) -> (n_sets,)
        k = sets.shape[1]
        picked = z[sets.ravel()].reshape(*sets.shape, n_cells)
        total = picked.sum(axis=1, dtype=np.float64)
        own = np.einsum("skc,skc->s", picked, picked, dtype=np.float64)
        return ((total**2).sum(axis=1) - own) / (n_cells * k * (k - 1))

    rows = []
    for genes in modules:
        genes = np.asarray(list(genes), dtype=int)
        k = genes.size
        if k < 2:
            rows.append({"n_genes": k, "mean_corr": np.nan, "null_quantile": np.nan})
            rows[-1].update(null_mean=np.nan, coherent=False)
            continue
        observed = float(mean_corr(genes[None, :])[0])
        pools = [np.setdiff1d(members[bins[g]], genes) for g in genes]  # not the module's own
        pools = [
            pool if pool.size else np.setdiff1d(np.arange(z.shape[0]), genes) for pool in pools
        ]
        null_sets = np.stack([rng.choice(pool, n_random) for pool in pools], axis=1)
        null = mean_corr(null_sets)
        cut = float(np.quantile(null, quantile))
        rows.append(
            {
                "n_genes": k,
                "mean_corr": observed,
                "null_quantile": cut,
                "null_mean": float(null.mean()),
                "coherent": bool(observed > cut),
            }
        )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------- sparse inference
class SparseMaskedLinear(MaskedLinear):
    """A :class:`~zipo_scvi._components.MaskedLinear` that uses its sparsity at inference.

    In eval mode without gradients, on a dense CPU minibatch, when the mask keeps at most
    ``max_density`` of the weights, the layer multiplies by a cached CSR copy of the masked
    weights instead of the dense matrix. Training, gradients and sparse input take the dense
    path, so results agree up to float rounding. The state dict is the same as
    ``MaskedLinear``'s.

    Parameters
    ----------
    n_in, n_out
        Layer sizes.
    max_density
        Largest share of kept weights at which the sparse product is used (0 disables it).
    """

    def __init__(self, n_in: int, n_out: int, max_density: float = SPARSE_MAX_DENSITY):
        super().__init__(n_in, n_out)
        self.max_density = float(max_density)
        self._csr: tuple[tuple, torch.Tensor | None] | None = None

    @classmethod
    def from_layer(cls, layer: MaskedLinear, max_density: float = SPARSE_MAX_DENSITY):
        """Wrap an existing layer, sharing its parameters and mask (no copy)."""
        new = cls(layer.in_features, layer.out_features, max_density)
        new.weight, new.bias, new.mask = layer.weight, layer.bias, layer.mask
        return new.train(layer.training)

    def density(self) -> float:
        """Share of weights the mask keeps (1.0 when unpruned)."""
        return 1.0 if self.mask is None else float(self.mask.count_nonzero()) / self.mask.numel()

    def sparse_weight(self) -> torch.Tensor | None:
        """The masked weights as CSR, or None where the dense product is used."""
        if self.mask is None:
            return None
        w, m = self.weight, self.mask
        key = (w._version, m._version, w.data_ptr(), m.data_ptr(), w.device, w.dtype)
        key = (*key, self.max_density)
        if self._csr is None or self._csr[0] != key:
            csr = None
            if self.density() <= self.max_density:
                with warnings.catch_warnings():  # torch calls its CSR support "beta"
                    warnings.filterwarnings("ignore", message="Sparse CSR tensor support")
                    csr = (w * m).detach().to_sparse_csr()
            self._csr = (key, csr)
        return self._csr[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self.training
            or torch.is_grad_enabled()
            or x.layout != torch.strided
            or x.dim() != 2
            or x.device.type != "cpu"
        ):
            return super().forward(x)
        csr = self.sparse_weight()
        if csr is None:
            return super().forward(x)
        return torch.sparse.mm(csr, x.t()).t() + self.bias


def use_sparse_inference(module: torch.nn.Module, max_density: float = SPARSE_MAX_DENSITY):
    """Make a ZiPoModule's first layer use a sparse product at inference (see above).

    Parameters
    ----------
    module
        A :class:`~zipo_scvi.ZiPoModule`.
    max_density
        Largest share of kept weights at which the sparse product is used; 0 turns it off.

    Returns
    -------
    The first layer, now a :class:`SparseMaskedLinear`.

    Examples
    --------
    >>> from zipo_scvi import ZiPoModule
    >>> layer = use_sparse_inference(ZiPoModule(50, encoder_sizes=(16, 4)))
    >>> layer.density()
    1.0
    """
    layer = module.encoder.first
    if isinstance(layer, SparseMaskedLinear):
        layer.max_density = float(max_density)
    else:
        layer = SparseMaskedLinear.from_layer(layer, max_density)
        module.encoder.first = layer
    return layer


# ---------------------------------------------------------------------- co-expression clusters
def _gene_embedding(
    counts, n_components: int, min_cells: int, max_cells: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors whose cosines approximate the genes' expression correlations.

    A truncated SVD of the standardised cells x genes matrix of log-normalised expression
    (``corr(g, h) ~ cos(s * v_g, s * v_h)``), for the genes detected in at least ``min_cells``
    cells. Returns the detected genes' indices and their vectors (genes x components).
    """
    from sklearn.utils.extmath import randomized_svd

    rng = np.random.default_rng(seed)
    if max_cells is not None and counts.shape[0] > max_cells:
        counts = counts[np.sort(rng.choice(counts.shape[0], max_cells, replace=False))]
    x = log_normalise(counts).astype(np.float32)
    detected = np.flatnonzero((x > 0).sum(axis=0) >= min_cells)
    if detected.size < 2:
        return detected, np.zeros((detected.size, 1))
    z = x[:, detected]
    z -= z.mean(axis=0)
    z /= np.maximum(z.std(axis=0), 1e-12)
    rank = max(1, min(int(n_components), min(z.shape) - 1))
    _, s, vt = randomized_svd(z, rank, random_state=seed)
    genes = (vt.T * s).astype(np.float64)
    genes /= np.maximum(np.linalg.norm(genes, axis=1, keepdims=True), 1e-12)
    return detected, genes


def gene_clusters(
    counts,
    n_clusters: int,
    min_size: int = 1,
    n_components: int = 50,
    min_cells: int = 3,
    max_cells: int | None = 2000,
    seed: int = 0,
) -> np.ndarray:
    """Partition the genes into co-expression clusters (k-means on correlation vectors).

    The genes detected in at least ``min_cells`` cells are clustered by spherical k-means
    (k-means of the unit vectors of :func:`_gene_embedding`, whose cosines approximate the
    genes' correlations); the others get the label -1. Fewer clusters are made where needed
    for them to hold ``min_size`` genes on average (at least one cluster).

    Returns
    -------
    Integer label per gene, ``-1`` for genes left out.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.gamma(2.0, size=(2, 300, 1))
    >>> counts = rng.poisson(np.c_[np.repeat(a, 4, 1), np.repeat(b, 4, 1)])
    >>> labels = gene_clusters(counts, 2, n_components=4)
    >>> len(set(labels[:4])), len(set(labels[4:])), labels[0] != labels[4]
    (1, 1, np.True_)
    """
    from sklearn.cluster import KMeans

    labels = np.full(counts.shape[1], -1, dtype=int)
    detected, genes = _gene_embedding(counts, n_components, min_cells, max_cells, seed)
    n_clusters = min(int(n_clusters), detected.size // max(int(min_size), 1))
    if detected.size == 0:
        return labels
    n_clusters = max(n_clusters, 1)
    km = KMeans(n_clusters, n_init=3, random_state=seed).fit(genes)
    labels[detected] = km.labels_
    return labels


# ---------------------------------------------------------------------- gradual pruning
def cubic_sparsity(step: int, n_steps: int, target: float) -> float:
    """Zhu & Gupta's (2017) schedule: ``target * (1 - (1 - step / n_steps)^3)``, from 0 at step 0.

    Examples
    --------
    >>> [round(cubic_sparsity(t, 4, 0.9), 3) for t in range(5)]
    [0.0, 0.52, 0.787, 0.886, 0.9]
    """
    frac = min(max(step / max(n_steps, 1), 0.0), 1.0)
    return target * (1.0 - (1.0 - frac) ** 3)


def set_mask(layer: MaskedLinear, keep: torch.Tensor) -> None:
    """Pin the layer's weights outside ``keep`` at zero (mask combined with any earlier one)."""
    with torch.no_grad():
        mask = keep.to(layer.weight)
        if layer.mask is not None:
            mask = mask * layer.mask
        layer.weight.mul_(mask)
        layer.mask = mask


def _layer_scores(
    layer: MaskedLinear, input_scale: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's masked weights and their importance ``|w| * scale`` (``|w|`` without scale),
    as torch tensors on the layer's device (:func:`importance_scores` for arrays).
    """
    weight = layer.effective_weight().detach()
    scores = weight.abs()
    if input_scale is not None:
        scores = scores * input_scale.to(scores).unsqueeze(0)
    return weight, scores


def magnitude_mask(
    layer: MaskedLinear,
    sparsity: float,
    input_scale: torch.Tensor | None,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Keep the weights of largest ``|w| * scale`` so that ``sparsity`` of the layer is zero.

    The ranking is torch's :class:`~torch.nn.utils.prune.L1Unstructured` applied to the
    importance scores (``importance_scores=`` of ``torch.nn.utils.prune``); weights already
    masked score zero, so the masks only ever grow. Weights outside ``allowed`` (0/1, the
    layer's shape) rank below all others, so they go first.
    """
    weight, scores = _layer_scores(layer, input_scale)
    if allowed is not None:
        scores = scores * (allowed + (1 - allowed) * 1e-6)
    n_zero = min(math.ceil(sparsity * weight.numel() - 1e-9), weight.numel())
    current = torch.ones_like(weight) if layer.mask is None else layer.mask
    return torch_prune.L1Unstructured(amount=int(n_zero)).compute_mask(scores, current)


def cluster_mask(
    layer: MaskedLinear,
    clusters: np.ndarray,
    input_scale: torch.Tensor | None,
    per_neuron: int = 1,
) -> torch.Tensor:
    """Keep, for each neuron, the genes of the cluster that carries most of its importance.

    ``per_neuron``: keep the genes of that many clusters (those of most importance).

    A neuron's importance in a cluster is the sum of ``|w| * scale`` over the cluster's genes
    (:func:`importance_scores`); genes labelled -1 belong to no cluster and are dropped.

    Examples
    --------
    >>> layer = MaskedLinear(4, 2)
    >>> _ = layer.weight.data.copy_(torch.tensor([[1.0, 1.0, 0.1, 0.1], [0.0, 0.2, 3.0, 0.0]]))
    >>> cluster_mask(layer, np.array([0, 0, 1, -1]), None).tolist()
    [[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]
    """
    weight, scores = _layer_scores(layer, input_scale)
    labels = torch.as_tensor(np.asarray(clusters), device=weight.device, dtype=torch.long)
    n_clusters = int(labels.max()) + 1
    if n_clusters < 1:
        return torch.ones_like(weight)
    member = labels >= 0
    mass = torch.zeros(weight.shape[0], n_clusters, dtype=scores.dtype, device=weight.device)
    mass.index_add_(1, labels[member], scores[:, member])
    chosen = torch.topk(mass, min(int(per_neuron), n_clusters), dim=1).indices
    keep = (labels.unsqueeze(0).unsqueeze(-1) == chosen.unsqueeze(1)).any(-1)
    return (keep & member.unsqueeze(0)).to(weight.dtype)


class GradualPruning(Callback):
    """Lightning callback: prune the first layer to ``sparsity`` along a cubic schedule.

    The mask is recomputed ``n_updates`` times over the first ``n_steps`` optimiser steps
    (:func:`cubic_sparsity`, :func:`magnitude_mask`). Afterwards the mask stays fixed; the
    early-stopping callback's memory is reset (the dense model's validation loss is no target
    for the pruned one) and the weights of the best validation epoch after pruning are
    restored when training ends.

    Parameters
    ----------
    layer
        The first layer (a :class:`~zipo_scvi._components.MaskedLinear`).
    sparsity
        Share of weights zero at the end.
    n_steps
        Optimiser steps over which the sparsity rises.
    n_updates
        How many times the mask is recomputed.
    input_scale
        Per-gene scale of the importance scores (None: ``|w|``).
    nonnegative
        Project the layer's weights onto ``w >= 0`` after every optimiser step (from the
        first step on), so that each neuron adds up its genes.
    monitor
        Validation metric whose best value after pruning selects the weights kept (without
        validation the last weights are kept); None: the one early stopping watches
        (``validation_loss`` where training has no early stopping).
    clusters
        A co-expression cluster label per gene (:func:`gene_clusters`, -1: none): at the first
        mask update each neuron is given the ``clusters_per_neuron`` clusters that carry most
        of its importance (:func:`cluster_mask`); the schedule then prunes the weights outside
        them first and ends with none left there. None: no clusters.
    clusters_per_neuron
        How many clusters each neuron keeps.
    """

    def __init__(
        self,
        layer: MaskedLinear,
        sparsity: float,
        n_steps: int,
        n_updates: int = PRUNE_SCHEDULE["n_updates"],
        input_scale: torch.Tensor | None = None,
        nonnegative: bool = False,
        monitor: str | None = None,
        clusters: np.ndarray | None = None,
        clusters_per_neuron: int = PRUNE_SCHEDULE["clusters_per_neuron"],
    ):
        self.layer, self.sparsity, self.input_scale = layer, float(sparsity), input_scale
        self.clusters, self.allowed = clusters, None
        self.clusters_per_neuron = int(clusters_per_neuron)
        self.nonnegative = bool(nonnegative)
        self.n_steps, self.monitor = max(int(n_steps), 1), monitor
        updates = np.linspace(0, self.n_steps, max(int(n_updates), 1) + 1)[1:]
        self.update_steps = sorted({round(u) - 1 for u in updates})
        self.done, self.best, self.best_state = False, math.inf, None

    def _project(self) -> None:
        if self.nonnegative:
            with torch.no_grad():
                self.layer.weight.clamp_(min=0.0)

    def on_train_start(self, trainer, pl_module):
        if self.monitor is None:  # what early stopping watches (the preset's stopping_metric)
            stopper = trainer.early_stopping_callback
            self.monitor = stopper.monitor if stopper is not None else "validation_loss"
        self._project()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._project()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = trainer.global_step
        if self.done or step not in self.update_steps:
            return
        final, allowed = self.sparsity, None
        if self.clusters is not None:
            if self.allowed is None:  # each neuron's cluster, chosen once
                self.allowed = cluster_mask(
                    self.layer, self.clusters, self.input_scale, self.clusters_per_neuron
                )
            allowed = self.allowed
            final = max(final, 1.0 - float(allowed.mean()))
        target = cubic_sparsity(step + 1, self.n_steps, final)
        set_mask(self.layer, magnitude_mask(self.layer, target, self.input_scale, allowed))
        if step == self.update_steps[-1]:
            if allowed is not None:
                set_mask(self.layer, allowed)
            self.done = True
            for callback in trainer.callbacks:  # the dense model's best is no target now
                if hasattr(callback, "wait_count") and hasattr(callback, "best_score"):
                    callback.wait_count = 0
                    callback.best_score = torch.tensor(math.inf)

    def on_validation_end(self, trainer, pl_module):
        value = trainer.callback_metrics.get(self.monitor)
        if not self.done or value is None or trainer.sanity_checking:
            return
        if float(value) < self.best:
            self.best = float(value)
            state = pl_module.module.state_dict()
            self.best_state = {k: v.detach().clone() for k, v in state.items()}

    def on_train_end(self, trainer, pl_module):
        if self.best_state is not None:
            pl_module.module.load_state_dict(self.best_state)
        with torch.no_grad():
            if self.layer.mask is not None:
                self.layer.weight.mul_(self.layer.mask)  # Adam may have moved masked weights


# ---------------------------------------------------------------------- model methods
class SparsityMixin:
    """ZIPO methods for the sparse first layer: pruning, sparsity curves, gene modules."""

    @classmethod
    def load(cls, dir_path: str, adata: AnnData | None = None, **kwargs):
        """Load a saved model (see :meth:`ZIPO.load`); a saved pruning mask is kept."""
        model = super().load(dir_path, adata=adata, **kwargs)
        if model.module.encoder.first.mask is not None:
            use_sparse_inference(model.module)
        return model

    def _first_weight(self) -> torch.Tensor:
        return self.module.encoder.first.effective_weight().detach()

    def _score_cells(self, adata: AnnData | None) -> tuple[AnnData | None, np.ndarray | None]:
        """Cells that pruning is judged on: ``adata``'s, else the validation cells, else all."""
        if adata is not None:
            return adata, None
        indices = getattr(self, "validation_indices", None)
        if indices is None or len(indices) == 0:
            return None, None
        return None, np.sort(np.asarray(indices))

    def _check_trained(self) -> None:
        if not getattr(self, "is_trained_", False):
            raise RuntimeError("Train the model (model.train()) before pruning it.")

    def input_scale(
        self, adata: AnnData | None = None, batch_size: int | None = None
    ) -> torch.Tensor:
        """Standard deviation over cells of each gene's encoder input (after the transform).

        The typical size of what a first-layer weight multiplies: :meth:`prune` and
        :meth:`get_gene_modules` score a weight by ``|w| * scale``, so that a rare gene (rarely
        non-zero, small standard deviation) does not stand out by a large weight alone.

        Parameters
        ----------
        adata
            Cells to compute it on; default: the training data.
        batch_size
            Minibatch size.

        Returns
        -------
        Tensor with one value per gene (float32, on the model's device).
        """
        total = total_sq = None
        n = 0
        for tensors in self._batches(adata, None, batch_size):
            h = self.module.encoder_input(tensors[REGISTRY_KEYS.X_KEY].to(self.module.device))
            h = h.to_dense().double() if h.layout != torch.strided else h.double()
            total = h.sum(0) if total is None else total + h.sum(0)
            total_sq = h.square().sum(0) if total_sq is None else total_sq + h.square().sum(0)
            n += h.shape[0]
        mean = total / n
        return (total_sq / n - mean.square()).clamp_min(0).sqrt().float()

    def heldout_loss(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        molecule_split: float = MOLECULE_SPLIT,
        seed: int = 0,
    ) -> float:
        """Held-out-molecule NLL per cell: encode a binomial ``molecule_split`` of each cell's
        molecules, score the rest (molecular cross-validation; the training's
        ``validation="molecules"`` measure). The split is the same on every call.

        Parameters
        ----------
        adata, indices, batch_size
            Cells to score (default: all cells of the training data) and minibatch size.
        molecule_split
            Share of the molecules the model sees.
        seed
            Seed of the molecule split.
        """
        generator = torch.Generator().manual_seed(seed)
        rate_scale = (1.0 - molecule_split) / molecule_split
        total, n = 0.0, 0
        for tensors in self._batches(adata, indices, batch_size):
            x = tensors[REGISTRY_KEYS.X_KEY]
            seen, held_out = thin_counts(x.cpu(), molecule_split, generator)
            batch = {**tensors, REGISTRY_KEYS.X_KEY: seen.to(x.device)}
            kwargs = {"target": held_out.to(x.device), "rate_scale": rate_scale}
            _, _, losses = self.module.forward(batch, loss_kwargs=kwargs)
            cells = losses.reconstruction_loss["reconstruction_loss"]
            total += float(cells.sum())
            n += cells.shape[0]
        return total / n

    def _pruning_scores(self, data, indices, batch_size) -> dict[str, float]:
        scores = self.get_reconstruction_error(data, indices, batch_size)
        scores["heldout"] = self.heldout_loss(data, indices, batch_size)
        return scores

    def prune(
        self,
        sparsity: float | None = None,
        delta: float | None = None,
        adata: AnnData | None = None,
        batch_size: int | None = None,
        weigh_by_input: bool = True,
        nonnegative: bool | None = None,
        modules: int | None = None,
        clusters_per_neuron: int | None = None,
        **train_kwargs,
    ) -> dict[str, float]:
        """Prune the first layer; the zeros are pinned by a mask that training and saving keep.

        Default (``model.prune()``): gradual magnitude pruning with fine-tuning, to a share
        ``sparsity`` of zeros (at least 98%), with the kept weights held non-negative and each
        neuron confined to co-expressed genes. First the genes are split into ``modules``
        co-expression clusters (:func:`gene_clusters` on the training cells: spherical k-means
        on the genes' correlations of log-normalised expression; genes seen in fewer than 3
        cells belong to none) and each neuron is given the ``clusters_per_neuron`` clusters
        that carry most of its ``|w_ig| * scale_g`` (:func:`cluster_mask`; ``scale_g``: the
        standard deviation of gene ``g``'s encoder input, :meth:`input_scale`). Training then
        continues from the current weights; along Zhu and Gupta's cubic schedule the weights of
        lowest ``|w_ig| * scale_g`` are zeroed, those outside the neuron's clusters first and
        all of them by the end (torch's ``L1Unstructured`` on these scores), over at least 10
        epochs and 100 optimiser steps, while every optimiser step is followed by a projection
        of the layer onto ``w >= 0``; then the model is fine-tuned with the mask fixed until
        the held-out loss has not improved for 10 epochs, and the best epoch's weights are
        kept. Each first-layer neuron then adds up the genes of two co-expression clusters
        (its gene module) with positive weights; see the documentation's sparsity page for
        what this costs in held-out-molecule loss and how coherent the modules are. The
        training and validation cells are the model's own (when it still knows them).

        ``model.prune(delta=1e-4)``: the paper's one-shot procedure (III-E): each neuron's
        weights are divided by its largest absolute weight and those below ``delta`` are
        zeroed, without fine-tuning. With the project's training that removes almost nothing
        (see the README section on sparsity).

        Once the mask keeps few weights, inference multiplies by a sparse copy of the layer.

        Parameters
        ----------
        sparsity
            Share of first-layer weights set to zero at least (default 0.98; the clusters
            usually leave more); earlier zeros count.
        delta
            Use the paper's threshold instead: normalised ``|w| < delta`` is zeroed.
        adata
            Cells to judge the pruning on; default: the model's validation cells (all cells if
            it was trained without validation, or loaded from disk, which keeps no split).
        batch_size
            Minibatch size (training and scoring).
        weigh_by_input
            Score weights by ``|w| * scale`` (True) or by ``|w|`` alone.
        nonnegative
            Gradual pruning only: hold the first layer's weights ``>= 0`` (projected after
            every optimiser step), so that each neuron adds up the genes it keeps (default
            True; False keeps signed weights). A later :meth:`train` keeps the mask, not the
            sign.
        modules
            Gradual pruning only: number of co-expression clusters of the genes (default 128;
            fewer where they would hold under 50 genes on average, so a few hundred genes make
            one cluster and plain magnitude pruning); 0: no clusters.
        clusters_per_neuron
            How many clusters each neuron keeps (default 2; 1 gives stricter modules at more
            held-out loss).
        **train_kwargs
            Passed to :meth:`train` for the fine-tuning (e.g. ``max_epochs``,
            ``early_stopping_patience``, ``lr``).

        Returns
        -------
        Dictionary with ``method`` (``"magnitude"`` or ``"delta"``), ``fraction_pruned`` (share
        of first-layer weights that are zero, earlier pruning included), ``n_pruned``,
        ``n_weights``, ``heldout_before``/``heldout_after``/``heldout_change`` (held-out-
        molecule NLL per cell, :meth:`heldout_loss`, and its relative change),
        ``nll_before``/``nll_after``/``nll_change`` (NLL of the cells' own counts),
        ``mse_before``/``mse_after``/``mse_change`` (MSE of rates), and ``sparsity``,
        ``nonnegative``, ``modules`` (clusters made), ``clusters_per_neuron`` and ``epochs``
        (gradual) or ``delta`` (paper).

        Examples
        --------
        >>> report = model.prune(delta=1e-4)
        >>> 0 <= report["fraction_pruned"] <= 1
        True
        """
        self._check_trained()
        if sparsity is not None and delta is not None:
            raise ValueError("Give sparsity (gradual pruning) or delta (the paper's), not both.")
        if delta is not None and nonnegative is not None:
            raise ValueError("nonnegative applies to gradual pruning, not to delta.")
        if self.adata is None and (delta is None or adata is None):
            raise ValueError(
                "This model holds no data: gradual pruning fine-tunes on the training data "
                "(ZIPO.load(path, adata=adata)); prune(delta=..., adata=...) judges the "
                "paper's pruning on the given cells."
            )
        data, indices = self._score_cells(adata)
        before = self._pruning_scores(data, indices, batch_size)
        if delta is not None:
            delta = _check_delta(delta)
            layer = self.module.encoder.first
            keep = prune_mask(self._first_weight(), delta)
            set_mask(layer, torch.as_tensor(keep, device=layer.weight.device))
            info: dict[str, float | str] = {"method": "delta", "delta": delta}
        else:
            sparsity = PRUNE_SCHEDULE["sparsity"] if sparsity is None else float(sparsity)
            if not 0.0 <= sparsity < 1.0:
                raise ValueError(f"sparsity must lie in [0, 1), not {sparsity!r}.")
            if nonnegative is None:
                nonnegative = PRUNE_SCHEDULE["nonnegative"]
            modules = PRUNE_SCHEDULE["modules"] if modules is None else modules
            if isinstance(modules, bool) or int(modules) != modules or modules < 0:
                raise ValueError(
                    f"modules must be a number of gene clusters (0: none), not {modules!r}."
                )
            if clusters_per_neuron is None:
                clusters_per_neuron = PRUNE_SCHEDULE["clusters_per_neuron"]
            if int(clusters_per_neuron) != clusters_per_neuron or clusters_per_neuron < 1:
                raise ValueError(
                    f"clusters_per_neuron must be a positive integer, not {clusters_per_neuron!r}."
                )
            info = self._prune_gradually(
                sparsity,
                weigh_by_input,
                bool(nonnegative),
                int(modules),
                int(clusters_per_neuron),
                batch_size,
                train_kwargs,
            )
        layer = use_sparse_inference(self.module)
        after = self._pruning_scores(data, indices, batch_size)
        n_weights = layer.weight.numel()
        n_pruned = n_weights - (
            n_weights if layer.mask is None else int(layer.mask.count_nonzero())
        )
        report = {**info, "fraction_pruned": n_pruned / n_weights}
        report.update(n_pruned=n_pruned, n_weights=n_weights)
        for key in ("heldout", "nll", "mse"):
            report[f"{key}_before"], report[f"{key}_after"] = before[key], after[key]
            report[f"{key}_change"] = (after[key] - before[key]) / abs(before[key])
        return report

    def _prune_gradually(
        self,
        sparsity: float,
        weigh_by_input: bool,
        nonnegative: bool,
        modules: int,
        per_neuron: int,
        batch_size: int | None,
        train_kwargs: dict,
    ) -> dict[str, float | str]:
        layer = self.module.encoder.first
        clusters = None
        if modules > 0:
            counts = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
            train = getattr(self, "train_indices", None)
            if train is not None and len(train) > 0:
                counts = counts[np.sort(np.asarray(train))]
            clusters = gene_clusters(counts, modules, PRUNE_SCHEDULE["min_module_genes"])
        scale = self.input_scale(batch_size=batch_size) if weigh_by_input else None
        defaults = self._train_defaults
        batch = batch_size or defaults["batch_size"]
        split = [
            getattr(self, f"{part}_indices", None) for part in ("train", "validation", "test")
        ]
        kwargs: dict = {"enable_progress_bar": False}
        if split[0] is not None and len(split[1]) > 0:  # the model's own split
            kwargs["datasplitter_kwargs"] = {"external_indexing": [np.asarray(i) for i in split]}
            n_train = len(split[0])
        elif split[0] is not None:
            kwargs["train_size"], n_train = 1.0, len(split[0])
        else:
            n_train = int(self.adata.n_obs * defaults["train_size"])
        steps_per_epoch = max(math.ceil(n_train / batch), 1)
        n_steps = max(PRUNE_SCHEDULE["min_steps"], PRUNE_SCHEDULE["min_epochs"] * steps_per_epoch)
        prune_epochs = math.ceil(n_steps / steps_per_epoch)
        callback = GradualPruning(
            layer,
            sparsity,
            n_steps,
            input_scale=scale,
            nonnegative=nonnegative,
            clusters=clusters,
            clusters_per_neuron=per_neuron,
        )
        patience = PRUNE_SCHEDULE["patience"]
        kwargs.update(
            max_epochs=prune_epochs + 20 * patience,
            lr=defaults["lr_floor"],  # the end of the preset's schedule, not its warm start
            lr_decay=1.0,
            lr_patience=prune_epochs + defaults["lr_patience"],
            early_stopping_patience=patience,
            early_stopping_warmup_epochs=prune_epochs,
            batch_size=batch,
            restore_best=False,  # GradualPruning keeps the best epoch after the schedule
            # no weight averaging: an average of the weights before and after each pruning
            # step would put back the weights the mask removed
            ema_decay=0.0,
            ema_epochs=0.0,
        )
        kwargs.update(train_kwargs)
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), callback]
        epochs_before = len(self.history["train_loss"]) if self.history else 0
        self.train(**kwargs)
        # the target even if training ended before the schedule did; zeros under the mask
        if clusters is not None:  # each neuron within its cluster, even if training ended early
            allowed = callback.allowed
            if allowed is None:
                allowed = cluster_mask(layer, clusters, scale, per_neuron)
            set_mask(layer, allowed)
        set_mask(layer, magnitude_mask(layer, sparsity, scale))
        if nonnegative:
            with torch.no_grad():
                layer.weight.clamp_(min=0.0)
        return {
            "method": "magnitude",
            "sparsity": sparsity,
            "nonnegative": nonnegative,
            "modules": 0 if clusters is None else int(clusters.max()) + 1,
            "clusters_per_neuron": per_neuron,
            "epochs": len(self.history["train_loss"]) - epochs_before,
        }

    def first_layer_sparsity(self, deltas: Sequence[float] = DEFAULT_DELTAS) -> pd.Series:
        """Fraction of normalised first-layer weights below each delta; the model is unchanged.

        Parameters
        ----------
        deltas
            Thresholds on the normalised absolute weight (paper Fig. 10a,b).

        Returns
        -------
        Series indexed by delta. Pruned weights count as zero (below every positive delta).

        Examples
        --------
        >>> model.first_layer_sparsity(deltas=[1e-4])  # the paper's model: ~0.98
        delta
        0.0001    ...
        Name: fraction_below, dtype: float64
        """
        return sparsity_curve(self._first_weight(), deltas)

    def pruning_curve(
        self,
        deltas: Sequence[float] = DEFAULT_DELTAS,
        adata: AnnData | None = None,
        batch_size: int | None = None,
    ) -> pd.DataFrame:
        """NLL and MSE of rates after pruning at each delta; the model is left unchanged.

        Parameters
        ----------
        deltas
            Thresholds to try (paper Fig. 10c,d).
        adata, batch_size
            As in :meth:`prune`.

        Returns
        -------
        DataFrame indexed by delta with columns ``fraction_pruned``, ``nll``, ``mse``,
        ``nll_change`` and ``mse_change`` (relative to the unpruned model, first row
        ``delta = 0``).

        Examples
        --------
        >>> curve = model.pruning_curve(deltas=[1e-5, 1e-4, 1e-3])
        """
        deltas = [0.0, *sorted(_check_delta(d) for d in deltas)]
        self._check_trained()
        data, indices = self._score_cells(adata)
        layer = self.module.encoder.first
        saved_weight = layer.weight.detach().clone()
        weight = self._first_weight().clone()
        rows = []
        try:
            for delta in deltas:
                keep = torch.as_tensor(prune_mask(weight, delta), device=weight.device)
                with torch.no_grad():
                    layer.weight.copy_(weight * keep)
                error = self.get_reconstruction_error(data, indices, batch_size)
                rows.append({"delta": delta, "fraction_pruned": 1 - float(keep.float().mean())})
                rows[-1].update(error)
        finally:
            with torch.no_grad():
                layer.weight.copy_(saved_weight)
        table = pd.DataFrame(rows).set_index("delta")
        base = table.iloc[0]
        table["nll_change"] = (table["nll"] - base["nll"]) / abs(base["nll"])
        table["mse_change"] = (table["mse"] - base["mse"]) / abs(base["mse"])
        return table

    def _gene_names(self) -> list[str]:
        genes = self.adata_manager.get_state_registry(REGISTRY_KEYS.X_KEY).get("column_names")
        return list(self.adata.var_names if genes is None else genes)

    def get_gene_modules(
        self,
        n_top: int | None = None,
        min_weight: float = PRUNE_DELTA,
        weigh_by_input: bool = True,
        adata: AnnData | None = None,
    ) -> pd.DataFrame:
        """For every first-layer neuron, the genes it uses, most important first.

        A gene's importance to a neuron is ``|w| * scale``, with ``scale`` the standard
        deviation of the gene's encoder input over cells (:meth:`input_scale`): ranking by
        ``|w|`` alone lets rare genes, whose rarely non-zero input can carry a large weight,
        top the modules.

        Parameters
        ----------
        n_top
            At most this many genes per neuron; None: all.
        min_weight
            Smallest normalised ``|weight|`` kept (default: 1e-4; pruned weights are zero).
        weigh_by_input
            Rank by ``|w| * scale`` (True) or by ``|w|``.
        adata
            Cells for the input scale; default: the training data.

        Returns
        -------
        Tidy DataFrame with columns ``neuron``, ``gene``, ``weight``, ``importance`` (see
        :func:`gene_modules`).

        Examples
        --------
        >>> modules = model.get_gene_modules(n_top=10)
        >>> first = modules[modules.neuron == 0]
        """
        scale = self.input_scale(adata) if weigh_by_input else None
        return gene_modules(self._first_weight(), self._gene_names(), n_top, min_weight, scale)

    def gene_module_coherence(
        self,
        n_top: int = 10,
        adata: AnnData | None = None,
        weigh_by_input: bool = True,
        **kwargs,
    ) -> pd.DataFrame:
        """Whether each neuron's top genes are co-expressed (see :func:`module_coherence`).

        Parameters
        ----------
        n_top
            Genes per module (each neuron's most important, :meth:`get_gene_modules`).
        adata
            Cells whose log-normalised counts are correlated; default: the training data.
        weigh_by_input
            Rank genes by ``|w| * scale`` (True) or by ``|w|``.
        **kwargs
            Passed to :func:`module_coherence` (``n_random``, ``quantile``, ``seed``, ...).

        Returns
        -------
        DataFrame indexed by neuron (every neuron; one without two genes is not coherent)
        with ``genes`` (comma-separated) and the columns of :func:`module_coherence`. The
        share of coherent modules is ``table["coherent"].mean()``.

        Examples
        --------
        >>> table = model.gene_module_coherence()  # doctest: +SKIP
        >>> table["coherent"].mean()  # doctest: +SKIP
        """
        adata = self._validate_anndata(adata)
        counts = self.get_anndata_manager(adata, required=True).get_from_registry(
            REGISTRY_KEYS.X_KEY
        )
        modules = self.get_gene_modules(n_top, weigh_by_input=weigh_by_input, adata=adata)
        names = pd.Index(self._gene_names())
        n_neurons = self.module.encoder.first.out_features
        sets = [
            names.get_indexer(modules.loc[modules["neuron"] == i, "gene"])
            for i in range(n_neurons)
        ]
        table = module_coherence(log_normalise(counts), sets, **kwargs)
        table.index = pd.RangeIndex(n_neurons, name="neuron")
        table.insert(0, "genes", [",".join(names[g]) for g in sets])
        return table

    def get_zero_inflation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> pd.Series:
        """Per-gene mean zero-inflation probability ``z`` (which genes look zero-inflated).

        Parameters
        ----------
        adata
            AnnData registered like the training data; default: the training data.
        indices
            Cells to average over; default: all.
        batch_size
            Minibatch size for inference.

        Returns
        -------
        Series indexed by gene name, named ``"zero_prob"``.

        Raises
        ------
        ValueError
            If the model's likelihood has no zero inflation (``"poisson"``, ``"nb"``).

        Examples
        --------
        >>> most_inflated = model.get_zero_inflation().sort_values().tail()
        """
        if not self.module.likelihood.zero_inflated:
            raise ValueError(
                f"The {self.module.likelihood.name!r} likelihood has no zero inflation; "
                "use 'zip' or 'zinb'."
            )
        total, n = None, 0
        for tensors in self._batches(adata, indices, batch_size):
            z = torch.sigmoid(self._decode(tensors)["logit_z"]).sum(dim=0)
            total = z if total is None else total + z
            n += int(tensors[REGISTRY_KEYS.X_KEY].shape[0])
        genes = self._validate_anndata(adata).var_names
        return pd.Series(total.double().cpu().numpy() / n, index=genes, name="zero_prob")
