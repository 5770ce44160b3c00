"""ZIPO: the user-facing scvi-tools model class (setup, train, getters, save/load)."""

from __future__ import annotations

import logging
import math
import os
import pickle
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import scvi
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import (
    CategoricalJointObsField,
    CategoricalObsField,
    LayerField,
    NumericalJointObsField,
)
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin

from ._checks import (
    check_counts,
    check_genes,
    check_not_all_zero,
    check_obs_keys,
    check_saved_genes,
    check_settings,
)
from ._defaults import MOLECULE_SPLIT, TRAIN_PLAN_KEYS
from ._defaults import preset as get_preset
from ._distributions import expected_log_normalized
from ._metrics import TARGET_SUM
from ._module import ZiPoModule
from ._outputs import (
    DEFAULT_LAYERS,
    OUTPUT_BY_KEY,
    PARAMETERS,
    LibrarySize,
    check_library_size,
    chosen_file_outputs,
    compute_outputs,
    layer_output,
    library_depth,
    outputs_for,
)
from ._settings import best_settings
from ._sparsity import SparsityMixin
from ._training import (
    EpochProgressBar,
    RestoreBest,
    TrainingReport,
    ZiPoDataSplitter,
    ZiPoTrainingPlan,
    check_plan_kwargs,
    loss_in_words,
    monitored_metric,
    stopping_patience,
    training_split,
    validation_interval,
)
from .data._backed import BackedCollection
from .data._h5ad import (
    atomic_h5ad,
    clean_obs,
    dense_dataset,
    group,
    write_annotations,
    write_counts,
)

logger = logging.getLogger(__name__)


def _store_csr(adata: AnnData, layer: str | None) -> None:
    """Store CSC counts as CSR (same values): minibatches take rows, and CSC gives other float
    results after training than CSR (and is slow); scvi-tools itself only warns.
    """
    matrix = adata.X if layer is None else adata.layers[layer]
    if isinstance(matrix, sp.csc_matrix | sp.csc_array):
        if layer is None:
            adata.X = matrix.tocsr()
        else:
            adata.layers[layer] = matrix.tocsr()


def _cell_totals(manager: AnnDataManager, chunk: int = 10_000) -> np.ndarray:
    """Each cell's total count of the registered counts, read in chunks."""
    counts = manager.get_from_registry(REGISTRY_KEYS.X_KEY)
    return np.concatenate(
        [
            np.asarray(counts[start : start + chunk].sum(axis=1)).ravel()
            for start in range(0, counts.shape[0], chunk)
        ]
    )


def _count_summary(
    manager: AnnDataManager, totals: np.ndarray, chunk: int = 10_000
) -> tuple[float, torch.Tensor, torch.Tensor | None]:
    """Mean log library size (of ``totals``, :func:`_cell_totals`), log gene shares of the
    registered counts and, with several batches, each batch's log gene shares (batches x
    genes); read in chunks.
    """
    counts = manager.get_from_registry(REGISTRY_KEYS.X_KEY)
    n_obs = counts.shape[0]
    n_batch = manager.summary_stats.n_batch
    batches = np.asarray(manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)).ravel().astype(int)
    gene_totals = np.zeros((n_batch, counts.shape[1]))
    for start in range(0, n_obs, chunk):
        block = counts[start : start + chunk]
        in_block = batches[start : start + chunk]
        for b in np.unique(in_block):
            gene_totals[b] += np.asarray(block[in_block == b].sum(axis=0)).ravel()

    def log_shares(totals: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(
            np.log((totals + 1.0) / (totals.sum(-1, keepdims=True) + totals.shape[-1]))
        )

    per_batch = log_shares(gene_totals) if n_batch > 1 else None
    mean_log_library = float(np.log(np.maximum(totals, 1.0)).mean())
    return mean_log_library, log_shares(gene_totals.sum(0)), per_batch


def _add_training_messages(
    trainer_kwargs: dict[str, Any],
    plan: dict[str, Any],
    monitor: str,
    early_stopping: bool,
    has_validation: bool,
    max_epochs: int,
) -> None:
    """Our progress bar (the epoch cap shown as a cap) and end-of-training summary callbacks."""
    verbose = trainer_kwargs.get("enable_progress_bar", True)
    split = plan.get("molecule_split", MOLECULE_SPLIT)
    words = loss_in_words(monitor, plan["validation"], split)
    callbacks = list(trainer_kwargs.pop("callbacks", None) or [])
    if verbose and trainer_kwargs.get("simple_progress_bar", True):
        trainer_kwargs["simple_progress_bar"] = False  # scvi's bar says "Epoch 103/1000"
        where = {
            "molecules": "held-out molecules",
            "mcv": "held-out molecules of every cell",
        }.get(plan["validation"], "validation cells")
        watched = where if has_validation else "the training loss"
        description = (
            f"Training (early stopping on {watched}; at most {max_epochs} epochs)"
            if early_stopping
            else "Training"
        )
        callbacks.append(EpochProgressBar(description, known_length=not early_stopping))
    callbacks.append(TrainingReport(monitor, words, verbose=verbose))
    trainer_kwargs["callbacks"] = callbacks


#: scvi-tools getter arguments that ZIPO accepts only with their default (off) value.
_SCVI_GETTER_DEFAULTS = {"dataloader": None, "weights": None}


def _check_scvi_kwargs(kwargs: dict[str, Any]) -> None:
    """Accept scvi-tools getter arguments at their defaults; refuse anything else by name."""
    unknown = [k for k in kwargs if k not in _SCVI_GETTER_DEFAULTS]
    if unknown:
        raise TypeError(f"Unexpected keyword argument(s) {unknown}.")
    changed = [k for k, v in kwargs.items() if v is not _SCVI_GETTER_DEFAULTS[k]]
    if changed:
        raise ValueError(f"ZIPO's getters do not support {changed} (scvi-tools arguments).")


class ZIPO(SparsityMixin, UnsupervisedTrainingMixin, BaseModelClass):
    """ZiPo: a deep zero-inflated Poisson autoencoder for denoising scRNA-seq counts.

    Sharifitabar et al., "A deep neural network to de-noise single-cell RNA sequencing data",
    bioRxiv 2024.11.20.624552.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    registry
        Registry of a saved model (used by :meth:`load`).
    preset
        ``"default"``: the project's settings, chosen on held-out-molecule benchmarks.
        ``"paper"``: the paper's exact configuration (ZIP, 2048-1024-512-256-128 with full
        residuals, log1p input, alpha_z = alpha_w = 0.1, the paper's schedule).
    seed
        Seeds torch, numpy and Lightning before the weights are drawn (``scvi.settings.seed``).
    encoder_sizes, residuals, activation, batch_norm, norm_order, input_transform, \
input_target_sum, input_dropout, latent_noise, decoder_sizes, library_sizes, library_source, \
likelihood, alpha_z, alpha_w, alpha_theta, alpha_library
        The hyperparameters of :class:`~zipo_scvi.ZiPoModule` (described there; its
        :meth:`~zipo_scvi.ZiPoModule.loss` applies the likelihood and the ``alpha_*`` weights);
        ``None`` (the default of each) takes the preset's value
        (:data:`zipo_scvi._defaults.PRESETS`).
        The ones most often changed: ``likelihood`` (``"zip"``, ``"zinb"``, ``"poisson"``,
        ``"nb"``), ``encoder_sizes`` (the last is the number of latents), ``alpha_z`` (weight
        of the zero-inflation penalty) and ``alpha_w`` (weight of the scale-invariant sparsity
        penalty on the first layer, paper II-E).
    data_init
        Start the library and mean heads at the data's averages
        (:meth:`ZiPoModule.init_from_data <zipo_scvi.ZiPoModule.init_from_data>`); ``None``:
        the preset's (default ``True``, paper ``False``).
    encode_covariates, batch_mmd, batch_mmd_weights, batch_adversary
        Several samples (:class:`~zipo_scvi.ZiPoModule`): the batch and categorical covariates
        also enter the encoder; the weight of a kernel MMD penalty and how it weighs the cells
        (``"uniform"`` or ``"mnn"``: by mutual nearest neighbours across batches), and the
        weight of an adversarial batch classifier on the latents. ``None``: the preset's
        (paper: off).

    Notes
    -----
    ZIPO is a deterministic autoencoder, not a VAE: a cell has one latent vector and one
    denoised profile. scvi-tools' getter arguments about posterior sampling (``give_mean``,
    ``mc_samples``, ``n_samples``) are accepted and documented per getter; ``model.history``
    holds no ``elbo_*``/``kl_*`` series (they would be zero or repeat the reconstruction loss).

    **Differential expression** is not offered (:meth:`differential_expression` says so):
    scvi-tools' Bayesian DE compares posterior samples of normalised expression, and ZIPO has
    no posterior, so its "probability of DE" would come from cell-to-cell spread alone. Use the
    denoised values to rank and show markers (``sc.tl.rank_genes_groups`` on
    ``log1p(layers["zipo_denoised"])``; their p-values are optimistic, since denoising shares
    information between cells), and for p-values test raw counts pseudobulked per sample
    (e.g. PyDESeq2 or edgeR).

    Examples
    --------
    >>> from zipo_scvi import ZIPO
    >>> from zipo_scvi.data import simulate_counts
    >>> adata = simulate_counts(n_cells=200, n_genes=100, seed=0)
    >>> ZIPO.setup_anndata(adata)
    >>> model = ZIPO(adata, encoder_sizes=(32, 8))
    >>> model.train(max_epochs=2, enable_progress_bar=False)
    >>> model.get_latent_representation().shape
    (200, 8)
    """

    _module_cls = ZiPoModule
    _training_plan_cls = ZiPoTrainingPlan
    _data_splitter_cls = ZiPoDataSplitter

    def __init__(
        self,
        adata: AnnData | None = None,
        registry: dict | None = None,
        preset: Literal["default", "paper"] = "default",
        seed: int | None = None,
        *,
        encoder_sizes: Sequence[int] | None = None,
        residuals: Literal["full", "none"] | None = None,
        activation: Literal["sigmoid", "gelu", "relu"] | None = None,
        batch_norm: bool | None = None,
        norm_order: Literal["act_bn", "bn_act"] | None = None,
        input_transform: Literal["none", "log1p", "log1p_norm"] | None = None,
        input_target_sum: float | Literal["median"] | None = None,
        input_dropout: float | None = None,
        latent_noise: float | None = None,
        decoder_sizes: Sequence[int] | None = None,
        library_sizes: Sequence[int] | None = None,
        library_source: Literal["latent", "observed"] | None = None,
        likelihood: Literal["zip", "zinb", "poisson", "nb"] | None = None,
        alpha_z: float | None = None,
        alpha_w: float | None = None,
        alpha_theta: float | None = None,
        alpha_library: float | None = None,
        data_init: bool | None = None,
        encode_covariates: bool | None = None,
        batch_mmd: float | None = None,
        batch_mmd_weights: Literal["uniform", "mnn"] | None = None,
        batch_adversary: float | None = None,
    ):
        super().__init__(adata, registry=registry)
        module_defaults, self._train_defaults = get_preset(preset)
        given = {k: v for k, v in locals().items() if k in module_defaults and v is not None}
        if seed is not None:
            scvi.settings.seed = seed
        self.preset = preset
        self.hyperparameters = {**module_defaults, **given}
        stats = self.summary_stats
        cat_registry = self.registry_["field_registries"].get(REGISTRY_KEYS.CAT_COVS_KEY, {})
        n_cats = cat_registry.get("state_registry", {}).get("n_cats_per_key")
        module_kwargs = {k: v for k, v in self.hyperparameters.items() if k != "data_init"}
        median = module_kwargs["input_target_sum"] == "median"
        init_heads = self.hyperparameters["data_init"] and adata is not None
        # each cell's total, read once for both uses below
        totals = (
            _cell_totals(self.adata_manager)
            if adata is not None and (median or init_heads)
            else None
        )
        if median:
            # resolved once; the module keeps the number, so a loaded model (whose state
            # replaces it) reads new data on its training data's scale
            module_kwargs["input_target_sum"] = (
                max(float(np.median(totals)), 1.0) if totals is not None else 1e4
            )
        # ZiPoModule (_module.py) keeps alpha_w, likelihood, ...; its loss() applies them.
        self.module = self._module_cls(
            n_input=stats.n_vars,
            n_batch=stats.n_batch,
            n_cats_per_cov=n_cats,
            n_continuous_cov=stats.get("n_extra_continuous_covs", 0),
            **module_kwargs,
        )
        if init_heads:
            self.module.init_from_data(*_count_summary(self.adata_manager, totals))
        h = self.hyperparameters
        self._model_summary_string = (
            f"ZIPO ({preset} preset): {h['likelihood'].upper()}, encoder "
            f"{'-'.join(map(str, h['encoder_sizes']))} (residuals {h['residuals']}, "
            f"{h['activation']}), decoder {'-'.join(map(str, h['decoder_sizes'])) or 'linear'}, "
            f"{self.module.n_covariates} covariate columns, alpha_z={h['alpha_z']}, "
            f"alpha_w={h['alpha_w']}"
        )
        self.init_params_ = self._get_init_params(locals())

    def __repr__(self) -> str:
        return self.summary_string

    # ------------------------------------------------------------------ data
    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        batch_key: str | None = None,
        categorical_covariate_keys: Sequence[str] | None = None,
        continuous_covariate_keys: Sequence[str] | None = None,
        **kwargs,
    ) -> None:
        """Register an AnnData of raw counts with ZIPO.

        Counts stored as a CSC matrix are converted to CSR in place (same values): minibatches
        take rows, and CSC would give other numbers after training than CSR.

        Parameters
        ----------
        adata
            Cells x genes raw UMI counts (dense or sparse; not normalised, not logged).
        layer
            Layer holding the counts; ``None`` uses ``adata.X``.
        batch_key
            ``adata.obs`` column of batches (a one-hot covariate beside the latents).
        categorical_covariate_keys
            ``adata.obs`` columns of other known categorical covariates.
        continuous_covariate_keys
            ``adata.obs`` columns of known continuous covariates.

        Raises
        ------
        ValueError
            If the counts are negative, non-integer, NaN or infinite, the AnnData is empty, or a
            layer or obs key is missing.

        Examples
        --------
        >>> from zipo_scvi.data import simulate_counts
        >>> adata = simulate_counts(n_cells=100, n_genes=50, n_batches=2, seed=0)
        >>> ZIPO.setup_anndata(adata, batch_key="batch")
        """
        check_counts(adata, layer)
        check_not_all_zero(adata, layer)
        _store_csr(adata, layer)  # not inline: setup_anndata's locals() are its saved args
        check_obs_keys(adata, batch_key, categorical_covariate_keys, continuous_covariate_keys)
        setup_method_args = cls._get_setup_method_args(**locals())
        fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            CategoricalJointObsField(REGISTRY_KEYS.CAT_COVS_KEY, categorical_covariate_keys),
            NumericalJointObsField(REGISTRY_KEYS.CONT_COVS_KEY, continuous_covariate_keys),
        ]
        manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        manager.register_fields(adata, **kwargs)
        cls.register_manager(manager)

    def _validate_anndata(
        self, adata: AnnData | None = None, copy_if_view: bool = True
    ) -> AnnData:
        """scvi-tools' check of data handed to a getter, plus what :meth:`load` checks.

        A new AnnData must have the model's genes in the model's order and hold finite,
        non-negative integer counts: scvi-tools only warns about other gene names, so genes
        in another order would be read as the wrong genes.
        """
        if isinstance(adata, AnnData) and adata is not self.adata:
            genes = self.adata_manager.get_state_registry(REGISTRY_KEYS.X_KEY).get("column_names")
            if genes is not None:
                check_genes(genes, adata.var_names)
            check_counts(adata, self.adata_manager.registry["setup_args"].get("layer"))
        return super()._validate_anndata(adata, copy_if_view=copy_if_view)

    @classmethod
    def load(cls, dir_path: str, adata: AnnData | None = None, **kwargs) -> ZIPO:
        """Load a saved model, optionally onto new data with the same genes.

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save`.
        adata
            Data to attach (same genes in the same order as the saved model's); default: the
            AnnData saved with the model, if any.
        **kwargs
            Passed to :meth:`scvi.model.base.BaseModelClass.load`.

        Raises
        ------
        ValueError
            If the genes of ``adata`` differ from the saved model's, or the folder holds no
            ZIPO model.
        """
        if adata is not None:
            check_counts(adata, kwargs.get("layer"))
        try:
            if adata is not None:
                check_saved_genes(dir_path, adata, kwargs.get("prefix"))
            return super().load(str(dir_path), adata=adata, **kwargs)
        except ValueError as err:
            if "Failed to load model file" in str(err):
                raise ValueError(
                    f"{str(dir_path)!r} does not hold a saved ZIPO model: {err}"
                ) from err
            if "var" in str(err).lower():
                raise ValueError(
                    f"The genes of this AnnData do not match the saved model's genes: {err}"
                ) from err
            raise
        except (OSError, RuntimeError, KeyError, pickle.UnpicklingError) as err:
            raise ValueError(f"{str(dir_path)!r} does not hold a saved ZIPO model: {err}") from err

    @classmethod
    def from_study(cls, adata: AnnData, study, **model_kwargs) -> ZIPO:
        """Untrained model with the best settings of a :func:`zipo_scvi.tune` study.

        Parameters
        ----------
        adata
            AnnData registered with :meth:`setup_anndata`.
        study
            A study made by :func:`zipo_scvi.tune`.
        **model_kwargs
            Overrides of the chosen settings (and ``preset``, ``seed``).

        Returns
        -------
        The model; train it with ``model.train(**zipo_scvi.best_settings(study)["train_kwargs"])``.

        Examples
        --------
        >>> model = ZIPO.from_study(adata, study)  # doctest: +SKIP
        """
        settings = best_settings(study)
        preset = model_kwargs.pop("preset", settings["preset"])
        return cls(adata, preset=preset, **{**settings["model_kwargs"], **model_kwargs})

    # ------------------------------------------------------------------ training
    def train(
        self,
        max_epochs: int | None = None,
        lr: float | None = None,
        batch_size: int | None = None,
        validation: Literal["cells", "molecules", "mcv"] | None = None,
        early_stopping: bool = True,
        train_size: float | None = None,
        seed: int | None = None,
        restore_best: bool | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        plan_kwargs: dict[str, Any] | None = None,
        datasplitter_kwargs: dict[str, Any] | None = None,
        **trainer_kwargs,
    ):
        """Train (or continue training) with the preset's optimiser, schedule and stopping.

        Parameters
        ----------
        max_epochs
            Epoch cap (default preset: 1000; paper: 300); early stopping usually ends sooner.
        lr
            Initial learning rate (paper: 0.0212, decaying by 0.9 per epoch to 0.001).
        batch_size
            Minibatch size.
        validation
            ``"cells"`` (the paper: validation cells scored on their counts), ``"molecules"``
            (validation cells' molecules split; scored on the held-out part) or ``"mcv"``
            (the default preset: 10% of every cell's molecules held out from training for
            good, and scored; validation runs over all cells, so ``train_size=1.0`` still
            validates).
        early_stopping
            Stop when the watched validation metric has not improved for the preset's
            patience: ``early_stopping_patience`` epochs (paper: 30; default preset: 100), or
            fewer where ``early_stopping_steps`` optimiser steps (default preset: 4,000; paper:
            0, no bound in steps) fit in fewer epochs; both may be given as keyword arguments.
            Validation runs every epoch, or, with ``validation_steps`` (default preset: 50;
            paper: 0), every few epochs where one epoch is fewer optimiser steps than that (at
            most every twentieth of the patience); stopping and ``restore_best`` then choose
            among the validated epochs. Validation draws no random numbers, so the weights train
            the same either way.
        train_size
            Fraction of cells used for training (default preset: 1.0; paper: 0.9); the rest
            validate. With ``validation="mcv"`` every cell validates whatever this is; otherwise
            ``1.0`` disables validation, and scheduling and early stopping then watch the
            training loss.
        seed
            Seeds the split, the minibatch order and dropout.
        restore_best
            With early stopping on validation data, end training with the weights of the epoch
            whose validation loss was best, not the last epoch's (default preset: ``True``;
            paper: ``False``).
        accelerator, devices
            Lightning device settings (``strategy="ddp"`` etc. go in ``trainer_kwargs``).
        plan_kwargs
            Overrides for :class:`~zipo_scvi._training.ZiPoTrainingPlan` (``lr_decay``,
            ``lr_floor``, ``lr_patience``, ``lr_threshold``, ``lr_factor``, ``weight_decay``,
            ``ema_epochs``, ``stopping_metric``, ...; these names are also accepted as keyword
            arguments of ``train`` itself). ``stopping_metric="nll"`` (the default preset)
            makes early stopping, the plateau schedule and ``restore_best`` watch the held-out
            counts' negative log-likelihood alone instead of the whole loss (``"loss"``, the
            paper). ``lr_factor=1`` (the default preset) turns the plateau schedule off.
        datasplitter_kwargs
            Passed to scvi's :class:`~scvi.dataloaders.DataSplitter`.
        **trainer_kwargs
            Passed to scvi's :class:`~scvi.train.Trainer` (e.g. ``early_stopping_patience``,
            ``callbacks``, ``enable_progress_bar``, ``load_sparse_tensor``).

        Examples
        --------
        >>> model.train(max_epochs=2, validation="molecules", enable_progress_bar=False)
        """
        defaults = self._train_defaults
        if seed is not None:
            scvi.settings.seed = seed
        max_epochs = defaults["max_epochs"] if max_epochs is None else max_epochs
        batch_size = defaults["batch_size"] if batch_size is None else batch_size
        train_size = defaults["train_size"] if train_size is None else train_size
        plan = {k: defaults[k] for k in TRAIN_PLAN_KEYS}
        if lr is not None:
            plan["lr"] = lr
        if validation is not None:
            plan["validation"] = validation
        # the preset's schedule names (lr_decay, weight_decay, ...) may be given directly
        plan.update({k: trainer_kwargs.pop(k) for k in TRAIN_PLAN_KEYS if k in trainer_kwargs})
        check_plan_kwargs(plan_kwargs)
        plan.update(plan_kwargs or {})
        trainer_kwargs.setdefault("early_stopping_patience", defaults["early_stopping_patience"])
        patience_steps = trainer_kwargs.pop("early_stopping_steps", None)
        if patience_steps is None:
            patience_steps = defaults["early_stopping_steps"]
        given_steps = trainer_kwargs.pop("validation_steps", None)
        validation_steps = defaults["validation_steps"] if given_steps is None else given_steps
        check_settings(
            {
                **plan,
                "max_epochs": max_epochs,
                "batch_size": batch_size,
                "train_size": train_size,
                "early_stopping_patience": trainer_kwargs["early_stopping_patience"],
                "early_stopping_steps": patience_steps,
                "validation_steps": validation_steps,
            }
        )
        split: dict[str, float | None] = {"train_size": train_size, "validation_size": None}
        has_validation = train_size < 1.0
        indexing = (datasplitter_kwargs or {}).get("external_indexing")
        if indexing:
            n_train = len(indexing[0])
        else:
            n_obs = self.adata.n_obs
            n_train, n_val = training_split(n_obs, train_size, batch_size)
            has_validation = n_val > 0
            # fractions that scvi's DataSplitter turns back into exactly n_train and n_val
            split["train_size"] = (n_train - 0.5) / n_obs
            if n_train + n_val < n_obs:  # cells left out, no validation (scvi's rule)
                split["validation_size"] = 0.0
        if plan["validation"] == "mcv":  # every cell's own held-out molecules validate
            has_validation = True
            datasplitter_kwargs = {**(datasplitter_kwargs or {}), "validate_all_cells": True}
        monitor = monitored_metric(plan["stopping_metric"], has_validation)
        plan["monitor"] = monitor
        #: How the validation loss of the last training was scored ("cells", "molecules";
        #: None without validation cells); read by zipo_scvi.pl.history.
        self.validation_mode = plan["validation"] if has_validation else None
        #: The logged metric early stopping watches (``nll_validation`` in the default preset,
        #: ``validation_loss`` in the paper's); read by zipo_scvi.pl.history.
        self.stopping_monitor = monitor
        restore_best = defaults["restore_best"] if restore_best is None else restore_best
        if restore_best and early_stopping and has_validation:
            callbacks = list(trainer_kwargs.pop("callbacks", None) or [])
            # with ema_monitor="raw" the averaged weights' own loss picks the epoch to keep
            watched = f"{monitor}_average" if plan["ema_monitor"] == "raw" else monitor
            trainer_kwargs["callbacks"] = [*callbacks, RestoreBest(watched)]
        _add_training_messages(
            trainer_kwargs, plan, monitor, early_stopping, has_validation, max_epochs
        )
        trainer_kwargs.setdefault("early_stopping_monitor", monitor)
        patience = stopping_patience(
            trainer_kwargs["early_stopping_patience"], patience_steps, n_train, batch_size
        )
        trainer_kwargs["early_stopping_patience"] = patience
        if has_validation:
            every = trainer_kwargs.get("check_val_every_n_epoch")
            if every is None:
                # the plateau schedule watches the validation loss every epoch
                steps = validation_steps if plan["lr_factor"] >= 1 or given_steps else 0
                every = validation_interval(steps, patience, n_train, batch_size)
                every = min(every, max_epochs)  # validate at least once
            if every > 1 and plan["lr_factor"] < 1:
                raise ValueError(
                    f"Validating every {every} epochs (validation_steps={validation_steps}, "
                    "or check_val_every_n_epoch) does not go with the plateau schedule "
                    f"(lr_factor={plan['lr_factor']}), which watches the validation loss "
                    "every epoch; give validation_steps=0 or lr_factor=1."
                )
            trainer_kwargs["check_val_every_n_epoch"] = every
            # the patience counts validations
            trainer_kwargs["early_stopping_patience"] = math.ceil(patience / every)
        else:  # scvi turns validation on for early stopping; there is nothing to validate
            trainer_kwargs.setdefault("limit_val_batches", 0)
        self.module.train()  # scvi leaves the module in eval mode after training
        trained = self.history_ or {}
        before = len(trained["train_loss"]) if self.is_trained_ and "train_loss" in trained else 0
        result = super().train(
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            batch_size=batch_size,
            early_stopping=early_stopping,
            plan_kwargs=plan,
            datasplitter_kwargs=datasplitter_kwargs,
            **split,
            **trainer_kwargs,
        )
        if before:
            self._count_epochs_on(before)
        return result

    def _count_epochs_on(self, before: int) -> None:
        """Index this training's history by epoch, after the ``before`` epochs of the earlier
        trainings: scvi numbers the rows it appends ``len(previous), len(previous) + 1, ...``,
        which puts validation run every few epochs at the wrong epochs.
        """
        logger = getattr(getattr(self, "trainer", None), "logger", None)
        new = getattr(logger, "history", None)
        if not isinstance(self.history_, dict) or not isinstance(new, Mapping):
            return
        for key, frame in new.items():
            old = self.history_.get(key)
            if old is None or len(old) < len(frame):
                continue
            frame = frame.copy()
            frame.index = before + frame.index.to_numpy(dtype=int)
            frame.index.name = old.index.name
            self.history_[key] = pd.concat([old.iloc[: len(old) - len(frame)], frame])

    # ------------------------------------------------------------------ inference helpers
    def _batches(
        self,
        adata: AnnData | None,
        indices: Sequence[int] | None,
        batch_size: int | None,
    ) -> Iterator[dict[str, torch.Tensor]]:
        if indices is not None and len(indices) == 0:
            raise ValueError("indices is empty; give at least one cell (or None for all).")
        adata = self._validate_anndata(adata)
        loader = self._make_data_loader(adata=adata, indices=indices, batch_size=batch_size)
        self.module.eval()
        with torch.inference_mode():
            yield from loader

    def _decode(self, tensors, transform_batch: int | None = None) -> dict[str, torch.Tensor]:
        """The latents ``z`` and the decoded outputs of one minibatch."""
        inference_inputs = self.module._get_inference_input(tensors)
        inference_outputs = self.module.inference(**inference_inputs)
        generative_inputs = self.module._get_generative_input(tensors, inference_outputs)
        generative_outputs = self.module.generative(
            **generative_inputs, transform_batch=transform_batch
        )
        return {**inference_outputs, **generative_outputs}

    def _frame(
        self,
        adata: AnnData | None,
        indices: Sequence[int] | None,
        values: np.ndarray,
        columns,
        return_numpy: bool | None,
    ) -> np.ndarray | pd.DataFrame:
        if return_numpy:
            return values
        adata = self._validate_anndata(adata)
        index = adata.obs_names if indices is None else adata.obs_names[np.asarray(indices)]
        return pd.DataFrame(values, index=index, columns=columns)

    def _batch_code(self, transform_batch) -> int | None:
        if transform_batch is None:
            return None
        batch_key = self.adata_manager.registry["setup_args"].get("batch_key")
        if batch_key is None:
            raise ValueError(
                f"transform_batch={transform_batch!r} needs a model set up with a batch_key "
                "(ZIPO.setup_anndata(adata, batch_key=...)); this one was set up without one."
            )
        mapping = [
            str(b)
            for b in self.adata_manager.get_state_registry(
                REGISTRY_KEYS.BATCH_KEY
            ).categorical_mapping
        ]
        if str(transform_batch) not in mapping:
            raise ValueError(
                f"transform_batch {transform_batch!r} is not a batch of {batch_key!r}; "
                f"choose one of {mapping}."
            )
        return mapping.index(str(transform_batch))

    def _iter_outputs(
        self,
        keys: Sequence[str] | None,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        library_size: LibrarySize = 1,
        transform_batch=None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Minibatches of the outputs ``keys`` of :data:`~zipo_scvi._outputs.OUTPUTS` that the
        likelihood has (default: those written to files), as float32 arrays by key.
        """
        check_library_size(library_size)
        likelihood = self.module.likelihood
        outputs = outputs_for(likelihood, keys)
        code = self._batch_code(transform_batch)
        for tensors in self._batches(adata, indices, batch_size):
            decoded = self._decode(tensors, code)
            x = tensors[REGISTRY_KEYS.X_KEY]
            yield compute_outputs(outputs, likelihood, decoded, x, library_size)

    def _collect_outputs(self, keys, *args, **kwargs) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {}
        for block in self._iter_outputs(keys, *args, **kwargs):
            for key, value in block.items():
                parts.setdefault(key, []).append(value)
        return {key: np.concatenate(value, axis=0) for key, value in parts.items()}

    # ------------------------------------------------------------------ getters
    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        *,
        give_mean: bool = True,
        mc_samples: int | None = None,
        return_dist: bool = False,
        **kwargs,
    ) -> np.ndarray:
        """Return the latents ``U`` of paper II-C (deterministic; eval-mode BatchNorm).

        ZIPO's encoder is deterministic, not a variational posterior: a cell has one latent
        vector, which is both the "mean" and every "sample". ``give_mean`` and ``mc_samples``,
        which scvi-tools' VAE models take, are accepted for compatibility and do not change the
        result; ``return_dist=True`` is refused (there is no distribution to return).

        ``U`` is the encoder's last block plus, with ``residuals="full"``, the linear
        projections of every hidden layer (the sum the decoder reads, without the covariates
        ``U'``, without input dropout or latent noise). With the default
        ``library_source="observed"`` the likelihood takes sequencing depth from each cell's
        total count, so ``U`` describes expression profiles and clusters by cell type (k-means
        ARI 0.98 on the benchmark simulation); with the paper's ``"latent"`` library ``U`` must
        also encode depth, which then dominates distances between cells (ARI 0.31 there).

        Parameters
        ----------
        adata
            AnnData registered like the training data; default: the training data.
        indices
            Cells to use; default: all.
        batch_size
            Minibatch size for inference.
        give_mean, mc_samples
            scvi-tools' arguments; no effect here (the latents are deterministic).
        return_dist
            ``True`` raises ``ValueError``: ZIPO has no latent distribution.
        **kwargs
            Other scvi-tools getter arguments (e.g. ``dataloader=None``); only ``None``/default
            values are accepted.

        Returns
        -------
        Array of shape ``(n_cells, n_latent)``.

        Examples
        --------
        >>> adata.obsm["X_zipo"] = model.get_latent_representation()
        >>> sc.pp.neighbors(adata, use_rep="X_zipo")
        """
        del give_mean, mc_samples  # deterministic latents: the mean is every sample
        if return_dist:
            raise ValueError(
                "ZIPO's latents are deterministic (an autoencoder, not a VAE): there is no "
                "distribution to return; use return_dist=False."
            )
        _check_scvi_kwargs(kwargs)
        parts = []
        for tensors in self._batches(adata, indices, batch_size):
            inference_outputs = self.module.inference(**self.module._get_inference_input(tensors))
            parts.append(inference_outputs["z"].cpu().numpy())
        return np.concatenate(parts, axis=0)

    def get_normalized_expression(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        transform_batch: str | None = None,
        gene_list: Sequence[str] | None = None,
        library_size: float | Literal["latent", "observed"] = 1,
        return_numpy: bool | None = None,
        batch_size: int | None = None,
        *,
        n_samples: int = 1,
        n_samples_overall: int | None = None,
        return_mean: bool = True,
        silent: bool = True,
        **kwargs,
    ) -> np.ndarray | pd.DataFrame:
        """Return denoised expression.

        ZIPO's decoder is deterministic: the expression of a cell is one value, not a
        posterior to sample from. ``n_samples`` (scvi-tools' Monte Carlo samples of the latent
        posterior) is accepted: with ``return_mean=True`` (the default) any ``n_samples`` gives
        that same value; ``return_mean=False`` with ``n_samples > 1`` is refused, since every
        sample would be identical (draw counts with :meth:`posterior_predictive_sample` for
        sampling noise).

        Parameters
        ----------
        adata, indices, batch_size
            See :meth:`get_latent_representation`.
        transform_batch
            Decode every cell as if it came from this batch category.
        gene_list
            Genes to return; default: all.
        library_size
            ``1``: ``mu`` (each cell sums to 1); a number: ``mu`` scaled to it; ``"latent"``:
            the rates ``l * mu`` with the predicted library size; ``"observed"``: ``mu`` times
            the cell's observed total count.
        return_numpy
            Return an array instead of a DataFrame.
        n_samples, return_mean
            scvi-tools' sampling arguments; see above (the result is the same for any
            ``n_samples``).
        n_samples_overall
            As in scvi-tools: the expression of this many cells drawn at random (with
            replacement) from ``indices`` (default: all cells).
        silent
            Accepted for scvi-tools compatibility (there is no progress bar here).
        **kwargs
            Other scvi-tools getter arguments (e.g. ``dataloader=None``, ``weights=None``);
            only ``None``/default values are accepted.

        Returns
        -------
        Cells x genes DataFrame (index: cells, columns: genes) or array.

        Examples
        --------
        >>> denoised = model.get_normalized_expression(library_size="latent")
        """
        check_library_size(library_size)
        if n_samples < 1:
            raise ValueError(f"n_samples must be at least 1, not {n_samples}.")
        if n_samples > 1 and not return_mean:
            raise ValueError(
                "ZIPO's decoder is deterministic: all n_samples samples would be the same "
                "values. Use return_mean=True (the same result for any n_samples), or "
                "posterior_predictive_sample() for counts with sampling noise."
            )
        del silent
        _check_scvi_kwargs(kwargs)
        adata_ = self._validate_anndata(adata)
        if n_samples_overall is not None:
            pool = np.arange(adata_.n_obs) if indices is None else np.asarray(indices)
            indices = np.random.default_rng(scvi.settings.seed).choice(pool, n_samples_overall)
        genes = _gene_indices(adata_, gene_list)
        blocks = self._iter_outputs(
            ["denoised"], adata, indices, batch_size, library_size, transform_batch
        )
        values = np.concatenate([block["denoised"][:, genes] for block in blocks], axis=0)
        return self._frame(adata, indices, values, adata_.var_names[genes], return_numpy)

    def get_log_normalized_expression(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        library_size: float | Literal["latent", "observed"] | np.ndarray = "observed",
        target_sum: float = TARGET_SUM,
        transform_batch: str | None = None,
        gene_list: Sequence[str] | None = None,
        return_numpy: bool | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray | pd.DataFrame:
        """Return denoised log-normalised expression: ``E[log1p(target_sum * Y / N)]``.

        The expected value of log-normalised counts (scanpy's ``normalize_total`` +
        ``log1p``) of a fresh sample ``Y`` of ``N`` molecules from each cell, drawn from the
        model's likelihood: the best prediction, in squared error, of what log-normalised counts
        of that depth show, with the sampling noise averaged out. Use it where log-normalised
        values are compared with log-normalised data; ``log1p`` of
        :meth:`get_normalized_expression` overstates genes expected at under one molecule,
        which a sample of ``N`` molecules mostly shows as zeros (see
        :meth:`~zipo_scvi._distributions.Likelihood.expected_log1p` for how it is computed).

        Parameters
        ----------
        adata, indices, batch_size
            See :meth:`get_latent_representation`.
        library_size
            ``N``: ``"observed"`` (each cell's total count: its own depth), ``"latent"`` (the
            library subnetwork's ``l``), a number (the same depth for every cell) or one
            number per cell (an array as long as the cells returned).
        target_sum
            Counts per cell after normalisation.
        transform_batch, gene_list, return_numpy
            As in :meth:`get_normalized_expression`.

        Returns
        -------
        Cells x genes DataFrame (index: cells, columns: genes) or array.

        Examples
        --------
        >>> logged = model.get_log_normalized_expression(library_size=1000)
        >>> bool((logged.to_numpy() >= 0).all())
        True
        """
        per_cell = np.ndim(library_size) == 1
        if per_cell:
            depths = np.asarray(library_size, dtype=np.float64)
            if not np.isfinite(depths).all() or (depths < 0).any():
                raise ValueError("library_size per cell must be finite and non-negative.")
        else:
            check_library_size(library_size)
        if not (isinstance(target_sum, int | float) and target_sum > 0):
            raise ValueError(f"target_sum must be a positive number, not {target_sum!r}.")
        adata_ = self._validate_anndata(adata)
        n_cells = adata_.n_obs if indices is None else len(indices)
        if per_cell and len(depths) != n_cells:
            raise ValueError(
                f"library_size has {len(depths)} values for {n_cells} cells; give one per cell."
            )
        genes = _gene_indices(adata_, gene_list)
        likelihood = self.module.likelihood
        code = self._batch_code(transform_batch)
        parts, start = [], 0
        for tensors in self._batches(adata, indices, batch_size):
            decoded = self._decode(tensors, code)
            x = tensors[REGISTRY_KEYS.X_KEY]
            if per_cell:
                stop = start + x.shape[0]
                depth = torch.as_tensor(depths[start:stop]).reshape(-1, 1)
                start = stop
            else:
                depth = library_depth(decoded, x, library_size)
            logged = expected_log_normalized(likelihood, decoded, depth, float(target_sum))
            parts.append(logged[:, genes].float().cpu().numpy())
        values = np.concatenate(parts, axis=0)
        return self._frame(adata, indices, values, adata_.var_names[genes], return_numpy)

    def get_outputs(
        self,
        adata: AnnData | None = None,
        library_size: LibrarySize = "observed",
        batch_size: int | None = None,
        transform_batch: str | None = None,
        log_normalized: bool = False,
    ) -> dict[str, np.ndarray]:
        """Every output written to files, in one pass over the data (what ``zipo denoise`` adds).

        Parameters
        ----------
        adata, batch_size
            See :meth:`get_latent_representation`.
        library_size
            Of the denoised expression, as in :meth:`get_normalized_expression`.
        transform_batch
            Decode every cell as if it came from this batch (as in
            :meth:`get_normalized_expression`).
        log_normalized
            Add ``zipo_log_normalized``: :meth:`get_log_normalized_expression` at the depth
            ``library_size`` gives (``"observed"``: each cell's own).

        Returns
        -------
        ``{AnnData key: array}`` (float32) for the outputs the likelihood has:
        ``zipo_denoised``, ``zipo_zero_prob`` (ZIP and ZINB only), ``zipo_dispersion`` (NB and
        ZINB only), ``X_zipo`` (latents), ``zipo_predicted_library`` (the library subnetwork's
        ``l``) and ``zipo_observed_library`` (each cell's total count);
        :func:`zipo_scvi._outputs.store` puts them in an AnnData.

        Examples
        --------
        >>> sorted(model.get_outputs())  # a ZIP model
        ['X_zipo', 'zipo_denoised', 'zipo_observed_library', 'zipo_predicted_library',
         'zipo_zero_prob']
        """
        keys = None
        if log_normalized:
            keys = [out.key for out in chosen_file_outputs(log_normalized=True)]
        values = self._collect_outputs(
            keys, adata, None, batch_size, library_size, transform_batch
        )
        return {OUTPUT_BY_KEY[key].name: value for key, value in values.items()}

    def write_normalized_expression(
        self,
        path: str | os.PathLike,
        adata: AnnData | BackedCollection | None = None,
        library_size: float | Literal["latent", "observed"] = "observed",
        layers: Sequence[str] = DEFAULT_LAYERS,
        latent_key: str | None = "X_zipo",
        library_key: str | None = "zipo_predicted_library",
        observed_key: str | None = "zipo_observed_library",
        batch_size: int = 1024,
        compression: str | None = None,
        uns: Mapping[str, Any] | None = None,
        transform_batch: str | None = None,
    ) -> Path:
        """Write denoised expression to an ``.h5ad`` file block by block, never whole in memory.

        The output holds the input's counts and annotations (for a backed input, every element
        of its file is copied at the HDF5 level), plus the model's outputs:
        ``layers["zipo_denoised"]`` (dense float32, ``library_size`` as in
        :meth:`get_normalized_expression`), ``layers["zipo_zero_prob"]`` (zero-inflated
        likelihoods only), ``layers["zipo_dispersion"]`` (NB likelihoods only),
        ``obsm["X_zipo"]``, ``obs["zipo_predicted_library"]`` (the library subnetwork's ``l``)
        and ``obs["zipo_observed_library"]`` (each cell's total count: what ``"observed"``
        denoised values are scaled to); the table :data:`zipo_scvi._outputs.OUTPUTS`. The file
        is written under a temporary name and renamed when done. Also available as
        :func:`zipo_scvi.write_denoised` ``(model, path, ...)``.

        Parameters
        ----------
        path
            Output ``.h5ad`` (must differ from the input file).
        adata
            Data registered like the model's (backed, a
            :class:`~zipo_scvi.data.BackedCollection` or in memory); default: the model's data.
        library_size
            ``"latent"`` (rates ``l * mu``), ``"observed"`` (``mu`` times the observed total)
            or a number (``mu`` scaled to it).
        layers
            Which of ``"zipo_denoised"``, ``"zipo_zero_prob"``, ``"zipo_dispersion"`` and
            ``"zipo_log_normalized"`` (:meth:`get_log_normalized_expression` at the depth
            ``library_size`` gives; not written by default) to write. Those the likelihood does
            not have are skipped: ``zero_prob`` exists only for ZIP and ZINB, ``dispersion``
            only for NB and ZINB.
        latent_key, library_key, observed_key
            ``obsm`` key of the latents, ``obs`` columns of the predicted library ``l`` and of
            the observed total count (``None``: skip).
        batch_size
            Cells per block: memory grows with ``batch_size x n_genes``, not with the cells.
        compression
            HDF5 compression of the new layers (``None``, ``"gzip"`` or ``"lzf"``).
        uns
            Entries written under ``uns`` (e.g. the settings of the run).
        transform_batch
            Decode every cell as if it came from this batch (as in
            :meth:`get_normalized_expression`).

        Returns
        -------
        The path written.

        Examples
        --------
        >>> path = model.write_normalized_expression("atlas_denoised.h5ad")
        >>> out = anndata.read_h5ad(path, backed="r")
        >>> out.layers["zipo_denoised"][:5].shape == (5, out.n_vars)
        True
        """
        check_library_size(library_size)
        chosen = [layer_output(name).key for name in layers]
        self._batch_code(transform_batch)  # an unknown batch fails before any writing
        if batch_size < 2:
            raise ValueError(f"batch_size must be at least 2, not {batch_size}.")
        adata = self._validate_anndata(adata)
        path = Path(path)
        if path.suffix != ".h5ad":
            raise ValueError(f"Output {str(path)!r} must end in .h5ad.")
        source = None
        if not isinstance(adata, BackedCollection) and adata.isbacked:
            source = Path(adata.filename)
            if path.resolve() == source.resolve():
                raise ValueError(
                    f"Output {str(path)!r} is the backed input file; choose another path."
                )
        where = {"latent": latent_key, "library": library_key, "observed_library": observed_key}
        keys = [*chosen, *(key for key, name in where.items() if name is not None)]
        outputs = outputs_for(self.module.likelihood, keys)
        n_obs, n_vars = adata.n_obs, adata.n_vars
        obs = clean_obs(adata.obs)
        columns = {
            out.key: np.empty(n_obs, dtype=np.float32) for out in outputs if out.slot == "obs"
        }
        with atomic_h5ad(path, source) as f:
            if source is None:
                counts_layer = self.registry_["setup_args"].get("layer")
                counts = adata.X if counts_layer is None else adata.layers[counts_layer]
                write_counts(f, counts, n_obs)
            datasets = {}
            for out in outputs:
                if out.slot == "obs":
                    continue
                n_cols = n_vars if out.slot == "layers" else self.module.n_latent
                packed = compression if out.slot == "layers" else None
                datasets[out.key] = dense_dataset(
                    group(f, out.slot),
                    where.get(out.key, out.name),
                    (n_obs, n_cols),
                    batch_size,
                    packed,
                )
            start = 0
            for block in self._iter_outputs(
                [out.key for out in outputs],
                adata,
                None,
                batch_size,
                library_size,
                transform_batch,
            ):
                rows = slice(start, start + len(next(iter(block.values()))))
                for key, value in block.items():
                    (columns if key in columns else datasets)[key][rows] = value
                start = rows.stop
            if start != n_obs:
                raise RuntimeError(f"Wrote {start} of {n_obs} cells; the loader ended early.")
            for key, value in columns.items():
                obs[where.get(key, OUTPUT_BY_KEY[key].name)] = value
            var = None if source is not None else pd.DataFrame(index=adata.var_names.copy())
            write_annotations(f, obs, var, uns)
        return path

    def get_likelihood_parameters(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Return the fitted distribution's parameters per cell and gene (float32 arrays).

        Parameters
        ----------
        adata, indices, batch_size
            See :meth:`get_latent_representation`.

        Returns
        -------
        Dictionary whose keys depend on the likelihood:

        - always ``rate`` (cells x genes: ``mu`` times the library the likelihood uses, i.e.
          the cell's observed total count with the default ``library_source="observed"``,
          the predicted ``l`` with ``"latent"``), ``mean`` (cells x genes: the expected count,
          ``(1 - z) * rate``; equal to ``rate`` without zero inflation) and ``library`` (one
          per cell: the library subnetwork's predicted ``l``, not the observed total);
        - ``zero_prob`` (``z``) only for ``"zip"`` and ``"zinb"``;
        - ``dispersion`` (``theta``) only for ``"nb"`` and ``"zinb"``.

        Examples
        --------
        >>> params = model.get_likelihood_parameters()
        >>> sorted(params)  # a ZIP model
        ['library', 'mean', 'rate', 'zero_prob']
        """
        return self._collect_outputs(PARAMETERS, adata, indices, batch_size)

    def get_reconstruction_error(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> dict[str, float]:
        """Return the mean per-cell negative log-likelihood and the MSE of rates.

        Returns
        -------
        ``{"nll": ..., "mse": ...}``; NLL summed over genes, averaged over cells.
        """
        nll, mse, n = 0.0, 0.0, 0
        for tensors in self._batches(adata, indices, batch_size):
            _inference_outputs, _generative_outputs, losses = self.module.forward(tensors)
            cells = losses.reconstruction_loss["reconstruction_loss"]
            nll += float(cells.sum())
            mse += float(losses.extra_metrics["mse"]) * cells.shape[0]
            n += cells.shape[0]
        return {"nll": nll / n, "mse": mse / n}

    def differential_expression(self, *args, **kwargs):
        """Not offered: ZIPO has no posterior for scvi-tools' Bayesian DE (see the class Notes).

        Raises
        ------
        NotImplementedError
            Always, naming what to use instead.
        """
        raise NotImplementedError(
            "ZIPO offers no differential_expression: scvi-tools' Bayesian DE compares posterior "
            "samples of normalised expression, and ZIPO is a deterministic autoencoder (one "
            "value per cell), so its DE probabilities would come from cell-to-cell spread "
            "alone. Rank markers on denoised values with sc.tl.rank_genes_groups on "
            "log1p(adata.layers['zipo_denoised']) (optimistic p-values: denoising shares "
            "information between cells), and for p-values test raw counts pseudobulked per "
            "sample (PyDESeq2, edgeR). See the docs page 'Differential expression'."
        )

    def posterior_predictive_sample(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_samples: int = 1,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Draw counts from the fitted distribution.

        Returns
        -------
        Array ``(n_cells, n_genes)`` for one sample, else ``(n_cells, n_genes, n_samples)``.
        """
        parts = [
            self.module.sample(tensors, n_samples=n_samples).cpu().numpy()
            for tensors in self._batches(adata, indices, batch_size)
        ]
        samples = np.concatenate(parts, axis=1)
        return samples[0] if n_samples == 1 else np.moveaxis(samples, 0, -1)


#: ``write_denoised(model, path, ...)``: :meth:`ZIPO.write_normalized_expression` as a function.
write_denoised = ZIPO.write_normalized_expression


def _gene_indices(adata: AnnData, gene_list: Sequence[str] | str | None) -> np.ndarray:
    """Column indices of ``gene_list`` (all genes if None), with a clear error for unknown
    genes.
    """
    if gene_list is None:
        return np.arange(adata.n_vars)
    if isinstance(gene_list, str):  # one gene, not its letters
        gene_list = [gene_list]
    missing = [g for g in gene_list if g not in adata.var_names]
    if missing:
        raise ValueError(f"Genes {missing[:5]} not found in adata.var_names.")
    return adata.var_names.get_indexer(gene_list)
