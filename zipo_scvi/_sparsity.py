"""The sparse first layer (paper II-E, III-E): pruning masks, sparsity curves, gene modules.

The pure functions work on a first-layer weight matrix (neurons x genes); :class:`SparsityMixin`
gives the ZIPO model its ``prune``, ``first_layer_sparsity``, ``pruning_curve``,
``get_gene_modules`` and ``get_zero_inflation`` methods. After pruning, inference multiplies by
a sparse (CSR) copy of the first layer's weights when the mask keeps few enough of them
(:class:`SparseMaskedLinear`); training always uses the dense, masked weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS

from ._components import MaskedLinear
from ._defaults import PRUNE_DELTA

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


def gene_modules(
    weight: torch.Tensor | np.ndarray,
    genes: Sequence[str],
    n_top: int | None = None,
    min_weight: float = PRUNE_DELTA,
) -> pd.DataFrame:
    """The genes each first-layer neuron uses, with their normalised weights.

    Parameters
    ----------
    weight
        First-layer weights, neurons x genes.
    genes
        Gene names, one per column of ``weight``.
    n_top
        Keep at most this many genes per neuron (largest ``|weight|`` first); None keeps all.
    min_weight
        Keep genes whose normalised ``|weight|`` is at least this (default: the pruning delta,
        so a pruned model's modules are exactly its surviving weights).

    Returns
    -------
    Tidy DataFrame with columns ``neuron`` (int), ``gene`` (str) and ``weight`` (signed,
    normalised to the neuron's largest ``|weight|``), sorted by neuron, then by ``|weight|``
    descending. Neurons that use no gene do not appear.

    Examples
    --------
    >>> w = np.array([[0.5, -1.0, 0.0], [0.0, 0.0, 2.0]])
    >>> gene_modules(w, ["a", "b", "c"]).values.tolist()
    [[0, 'b', -1.0], [0, 'a', 0.5], [1, 'c', 1.0]]
    """
    norm = normalized_weights(weight)
    genes = np.asarray(genes, dtype=object)
    if genes.shape != (norm.shape[1],):
        raise ValueError(f"Got {genes.size} gene names for a layer with {norm.shape[1]} inputs.")
    if n_top is not None and int(n_top) < 1:
        raise ValueError(f"n_top must be a positive integer or None, not {n_top!r}.")
    magnitude = np.abs(norm)
    rows, cols = np.nonzero((magnitude >= _check_delta(min_weight)) & (magnitude > 0))
    order = np.lexsort((-magnitude[rows, cols], rows))
    rows, cols = rows[order], cols[order]
    if n_top is not None:
        starts = np.searchsorted(rows, rows, side="left")
        keep = np.arange(rows.size) - starts < int(n_top)
        rows, cols = rows[keep], cols[keep]
    return pd.DataFrame(
        {"neuron": rows.astype(int), "gene": genes[cols], "weight": norm[rows, cols]}
    )


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

    def prune(
        self,
        delta: float = PRUNE_DELTA,
        adata: AnnData | None = None,
        batch_size: int | None = None,
    ) -> dict[str, float]:
        """Prune the first layer: zero the weights below ``delta`` of each neuron's largest.

        Each first-layer neuron's weights are divided by its largest absolute weight; weights
        whose normalised magnitude is below ``delta`` are set to zero and pinned there by the
        layer's mask, which is applied in every later forward pass (so fine-tuning keeps them
        at zero) and saved with the model (paper III-E). Once the mask keeps few weights,
        inference multiplies by a sparse copy of the layer.

        Parameters
        ----------
        delta
            Threshold on the normalised absolute weight, in ``[0, 1]`` (paper: 1e-4).
        adata
            Cells to judge the pruning on; default: the model's validation cells (all cells if
            it was trained without validation, or loaded from disk, which keeps no split).
        batch_size
            Minibatch size for the NLL and MSE.

        Returns
        -------
        Dictionary with ``delta``, ``fraction_pruned`` (share of first-layer weights that are
        zero after pruning, earlier pruning included), ``n_pruned``, ``n_weights``,
        ``nll_before``/``nll_after`` (per-cell NLL, summed over genes), ``mse_before``/
        ``mse_after`` (MSE of rates), ``nll_change`` and ``mse_change`` (relative changes).

        Examples
        --------
        >>> report = model.prune(delta=1e-4)
        >>> 0 <= report["fraction_pruned"] <= 1
        True
        """
        delta = _check_delta(delta)
        self._check_trained()
        data, indices = self._score_cells(adata)
        before = self.get_reconstruction_error(data, indices, batch_size)
        layer = use_sparse_inference(self.module)
        keep = torch.as_tensor(prune_mask(self._first_weight(), delta), device=layer.weight.device)
        with torch.no_grad():
            mask = keep.to(layer.weight.dtype)
            if layer.mask is not None:
                mask = mask * layer.mask
            layer.weight.mul_(mask)
            layer.mask = mask
        after = self.get_reconstruction_error(data, indices, batch_size)
        n_weights = mask.numel()
        n_pruned = n_weights - int(mask.count_nonzero())
        return {
            "delta": delta,
            "fraction_pruned": n_pruned / n_weights,
            "n_pruned": n_pruned,
            "n_weights": n_weights,
            "nll_before": before["nll"],
            "nll_after": after["nll"],
            "nll_change": (after["nll"] - before["nll"]) / abs(before["nll"]),
            "mse_before": before["mse"],
            "mse_after": after["mse"],
            "mse_change": (after["mse"] - before["mse"]) / abs(before["mse"]),
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

    def get_gene_modules(
        self, n_top: int | None = None, min_weight: float = PRUNE_DELTA
    ) -> pd.DataFrame:
        """For every first-layer neuron, the genes it uses and their normalised weights.

        Parameters
        ----------
        n_top
            At most this many genes per neuron, largest ``|weight|`` first; None: all.
        min_weight
            Smallest normalised ``|weight|`` kept (default: the pruning delta, 1e-4).

        Returns
        -------
        Tidy DataFrame with columns ``neuron``, ``gene``, ``weight`` (see
        :func:`gene_modules`).

        Examples
        --------
        >>> modules = model.get_gene_modules(n_top=10)
        >>> first = modules[modules.neuron == 0]
        """
        genes = self.adata_manager.get_state_registry(REGISTRY_KEYS.X_KEY).get("column_names")
        if genes is None:
            genes = self.adata.var_names
        return gene_modules(self._first_weight(), list(genes), n_top, min_weight)

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
