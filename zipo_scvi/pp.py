"""Scanpy-style one-liners: counts in, ZIPO's outputs written back into the AnnData."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from anndata import AnnData

    from ._model import ZIPO


def training_history(model: ZIPO) -> dict[str, list[float]]:
    """``model.history`` as plain lists per metric, one value per epoch, ``nan`` where
    validation did not run (what ``uns["zipo"]["history"]`` holds).
    """
    from ._training import by_epoch

    return {key: values.tolist() for key, values in by_epoch(model.history).items()}


def denoise(
    adata: AnnData,
    *,
    layer: str | None = None,
    batch_key: str | None = None,
    categorical_covariate_keys: Sequence[str] | None = None,
    continuous_covariate_keys: Sequence[str] | None = None,
    preset: Literal["default", "paper"] = "default",
    seed: int = 0,
    library_size: float | Literal["latent", "observed"] = "observed",
    copy: bool = False,
    return_model: bool = False,
    **kwargs: Any,
) -> AnnData | ZIPO | tuple[AnnData, ZIPO] | None:
    """Denoise raw counts with ZIPO in one call, like ``sc.external.pp.dca``.

    Registers ``adata`` (:meth:`ZIPO.setup_anndata`), trains a model and writes back what
    ``zipo denoise`` writes: ``layers["zipo_denoised"]`` (denoised counts: ``mu`` times each
    cell's observed total, the default ``library_size``), ``layers["zipo_zero_prob"]`` (ZIP and
    ZINB only), ``layers["zipo_dispersion"]`` (NB and ZINB only), ``obsm["X_zipo"]`` (the
    latents, for ``sc.pp.neighbors(adata, use_rep="X_zipo")``), ``obs["zipo_observed_library"]``
    (each cell's total count, the scale of ``zipo_denoised``), ``obs["zipo_predicted_library"]``
    (the model's predicted library ``l``, a different number) and ``uns["zipo"]`` (settings,
    epochs trained, training history). The counts themselves are left as they are.

    Parameters
    ----------
    adata
        Cells x genes raw UMI counts (in ``X`` or ``layers[layer]``).
    layer, batch_key, categorical_covariate_keys, continuous_covariate_keys
        See :meth:`ZIPO.setup_anndata`.
    preset
        ``"default"`` (the project's settings) or ``"paper"``.
    seed
        Random seed of the weights, the split and the minibatches.
    library_size
        Scale of ``layers["zipo_denoised"]``; see :meth:`ZIPO.get_normalized_expression`.
    copy
        Work on a copy of ``adata`` and return it; otherwise change ``adata`` in place.
    return_model
        Also return the trained model.
    **kwargs
        Model settings (any :class:`~zipo_scvi.ZiPoModule` argument such as ``likelihood``,
        ``encoder_sizes``) and training settings (any :meth:`ZIPO.train` argument such as
        ``max_epochs``, ``batch_size``, ``enable_progress_bar``), routed by name.

    Returns
    -------
    Like ``sc.external.pp.dca``: ``None``, or the AnnData with ``copy=True``; with
    ``return_model=True`` the model, or ``(adata, model)`` with ``copy=True``.

    Examples
    --------
    >>> import scanpy as sc
    >>> import zipo_scvi
    >>> from zipo_scvi.data import simulate_counts
    >>> adata = simulate_counts(n_cells=200, n_genes=100, seed=0)
    >>> zipo_scvi.pp.denoise(adata, encoder_sizes=(32, 8), max_epochs=2,
    ...                      enable_progress_bar=False)
    >>> adata.layers["zipo_denoised"].shape, adata.obsm["X_zipo"].shape
    ((200, 100), (200, 8))
    >>> sc.pp.neighbors(adata, use_rep="X_zipo")
    """
    from ._model import ZIPO
    from ._outputs import store
    from ._settings import split_settings
    from ._version import __version__

    adata = adata.copy() if copy else adata
    _preset, model_kwargs, train_kwargs = split_settings({"preset": preset, **kwargs})
    ZIPO.setup_anndata(
        adata,
        layer=layer,
        batch_key=batch_key,
        categorical_covariate_keys=categorical_covariate_keys,
        continuous_covariate_keys=continuous_covariate_keys,
    )
    model = ZIPO(adata, preset=preset, seed=seed, **model_kwargs)
    model.train(seed=seed, **train_kwargs)
    store(adata, model.get_outputs(adata, library_size=library_size))
    history = training_history(model)
    settings = {"preset": preset, "seed": seed, **model.hyperparameters, **kwargs}
    adata.uns["zipo"] = {
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
        "epochs_trained": len(history.get("train_loss", ())),
        "history": history,
        "library_size": library_size,
        "version": __version__,
    }
    if return_model:
        return (adata, model) if copy else model
    return adata if copy else None
