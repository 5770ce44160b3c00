"""ZiPo's training plan (the paper's LR schedule, held-out-molecule validation) and the
callbacks that say what training is doing (a progress bar and an end-of-training summary).
"""

from __future__ import annotations

import functools
import inspect
import math
import time
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.callbacks import ProgressBar as LightningProgressBar
from scvi import REGISTRY_KEYS
from scvi.dataloaders import DataSplitter
from scvi.train import TrainingPlan
from scvi.train._progress import ProgressBar
from scvi.utils import track
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.optim.swa_utils import get_ema_multi_avg_fn

from ._defaults import MOLECULE_SPLIT, PAPER_TRAIN
from ._metrics import FixedThinning, thin_counts

VALIDATION_MODES = ("cells", "molecules", "mcv")
EMA_MONITORS = ("average", "raw")
STOPPING_METRICS = ("loss", "nll")


def monitored_metric(stopping_metric: str, has_validation: bool) -> str:
    """The logged metric that early stopping, the plateau schedule and restoring watch.

    Examples
    --------
    >>> [monitored_metric("loss", True), monitored_metric("nll", True)]
    ['validation_loss', 'nll_validation']
    >>> monitored_metric("nll", has_validation=False)
    'nll_train'
    """
    if stopping_metric not in STOPPING_METRICS:
        raise ValueError(
            f"Unknown stopping_metric {stopping_metric!r}; choose one of {list(STOPPING_METRICS)}."
        )
    mode = "validation" if has_validation else "train"
    return f"{mode}_loss" if stopping_metric == "loss" else f"nll_{mode}"


def stopping_patience(epochs: int, steps: int, n_train: int, batch_size: int) -> int:
    """Early stopping's patience in epochs: ``epochs``, or fewer where ``steps`` optimiser
    steps (``0``: no such bound) fit in fewer epochs of ``n_train`` cells in minibatches of
    ``batch_size``, so that on many cells training does not run a fixed number of long
    epochs past its best.

    Examples
    --------
    >>> stopping_patience(100, 4000, 2700, 256)  # 11 steps per epoch
    100
    >>> stopping_patience(100, 4000, 100_000, 256)  # 391 steps per epoch
    11
    >>> stopping_patience(100, 0, 100_000, 256)
    100
    """
    if steps <= 0:
        return epochs
    return max(min(epochs, math.ceil(steps / _steps_per_epoch(n_train, batch_size))), 1)


def _steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimiser steps in an epoch of ``n_train`` cells (at least one)."""
    return max(math.ceil(n_train / batch_size), 1)


#: Early stopping's patience spans at least this many validations.
PATIENCE_CHECKS = 20


def validation_interval(steps: int, patience: int, n_train: int, batch_size: int) -> int:
    """Epochs from one validation to the next: enough epochs of ``n_train`` cells in minibatches
    of ``batch_size`` for about ``steps`` optimiser steps (``0``: every epoch), but at most a
    twentieth of the ``patience`` (in epochs), so that stopping still weighs 20 validations.

    Examples
    --------
    >>> validation_interval(50, 100, 1037, 256)  # 5 steps per epoch
    5
    >>> validation_interval(50, 100, 9909, 256)  # 39 steps per epoch
    2
    >>> validation_interval(50, 100, 20_000, 256), validation_interval(0, 100, 1037, 256)
    (1, 1)
    >>> validation_interval(50, 30, 1037, 256)  # a patience of 30 epochs: every epoch
    1
    """
    if steps <= 0:
        return 1
    per_epoch = _steps_per_epoch(n_train, batch_size)
    return max(1, min(math.ceil(steps / per_epoch), patience // PATIENCE_CHECKS))


def by_epoch(history: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Each logged metric's values over all epochs, ``nan`` where it was not logged (validation
    metrics, when validation runs every few epochs).

    ``history`` is ``model.history`` (data frames indexed by the epoch, from 0; ``ZIPO.train``
    keeps the index counting on over later trainings) or plain sequences, taken as one value per
    epoch.

    Examples
    --------
    >>> import pandas as pd
    >>> frames = {"train_loss": pd.DataFrame({"train_loss": [3.0, 2.0, 1.5]}),
    ...           "nll_validation": pd.DataFrame({"nll_validation": [2.5]}, index=[1])}
    >>> by_epoch(frames)["nll_validation"]
    array([nan, 2.5, nan])
    """
    series = {}
    for key, values in history.items():
        if isinstance(values, pd.DataFrame):
            values = values.iloc[:, 0]
        if not isinstance(values, pd.Series):
            values = pd.Series(np.asarray(values, dtype=float).ravel())
        series[key] = values.astype(float)
    n = max((int(v.index.max()) + 1 for v in series.values() if len(v)), default=0)
    return {key: values.reindex(range(n)).to_numpy() for key, values in series.items()}


def training_split(n_obs: int, train_size: float, batch_size: int) -> tuple[int, int]:
    """Numbers of training and validation cells, with no last training minibatch of 1 or 2.

    scvi-tools' own rule (:func:`scvi.dataloaders._data_splitting.validate_data_split` when no
    ``train_size`` is given): the 1 or 2 cells of a short last minibatch move to the validation
    cells (or, without validation, sit out training); BatchNorm cannot train on one cell. ZIPO
    always passes a ``train_size``, which turns that rule off in scvi, so it is applied here.
    A training set of 2 cells is kept as one minibatch.

    Examples
    --------
    >>> training_split(285, 0.9, 256)  # 257 training cells would leave a minibatch of one
    (256, 29)
    """
    from scvi.dataloaders._data_splitting import validate_data_split

    with warnings.catch_warnings():  # scvi's notice that cells moved to validation
        warnings.simplefilter("ignore")
        n_train, n_val = validate_data_split(n_obs, train_size, None, batch_size, False, True)
    if n_train == 0:  # 1 or 2 training cells in all: one minibatch of them
        n_train = math.ceil(train_size * n_obs)
        n_val = n_obs - n_train
    if n_train < 2:
        raise ValueError(
            f"{n_obs} cells with train_size={train_size} leave {n_train} training cell; ZIPO "
            "needs at least 2 (BatchNorm cannot train on one cell)."
        )
    return n_train, n_val


def check_plan_kwargs(plan_kwargs) -> None:
    """Raise ``ValueError`` naming ``plan_kwargs`` keys the training plans do not take."""
    unknown = sorted(set(plan_kwargs or {}) - plan_parameters())
    if unknown:
        raise ValueError(
            f"Unknown plan_kwargs {unknown}; valid ones are {sorted(plan_parameters())}."
        )


@functools.cache
def plan_parameters() -> frozenset[str]:
    """The names ``plan_kwargs`` may hold: arguments of the training plan and scvi's base plan."""
    names = set()
    for cls in (ZiPoTrainingPlan, TrainingPlan):
        for name, p in inspect.signature(cls.__init__).parameters.items():
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                names.add(name)
    return frozenset(names - {"self", "module", "loss_kwargs"})


class ZiPoTrainingPlan(TrainingPlan):
    """scvi's :class:`~scvi.train.TrainingPlan` with the paper's schedule (II-G).

    The learning rate starts at ``lr`` and is multiplied by ``lr_decay`` every epoch until it
    reaches ``lr_floor``; ReduceLROnPlateau then cuts it by ``lr_factor`` when the monitored loss
    has not improved by a relative ``lr_threshold`` for ``lr_patience`` epochs (``lr_factor=1``:
    never).

    Parameters
    ----------
    module
        A :class:`~zipo_scvi.ZiPoModule`.
    lr, lr_decay, lr_floor, lr_patience, lr_threshold, lr_factor, weight_decay
        Schedule and optimiser settings (defaults: the paper's).
    validation
        ``"cells"``: score validation cells on their own counts (the paper). ``"molecules"``:
        thin each validation cell's counts, encode one part and score the held-out part.
        ``"mcv"`` (molecular cross-validation of the cells trained on): a share ``1 -
        molecule_split`` of every cell's molecules is held out for good
        (:func:`~zipo_scvi._metrics.fixed_thinning`, the same molecules at every step, epoch and
        call of ``train``); training never sees them, and validation encodes each cell's other
        molecules and scores these. Validation then runs over every cell (see
        :class:`ZiPoDataSplitter`), so it shows when the model starts to fit the noise of the
        cells it is trained on, which validation cells cannot show.
    monitor
        Metric watched by the plateau scheduler.
    molecule_split
        Share of molecules the model sees in ``"molecules"`` and ``"mcv"`` validation.
    train_split
        Below 1: each training step thins every cell's counts, encodes that share of the
        molecules and scores the model on the rest (molecular cross-validation as the training
        loss, drawn anew at every step: the model cannot copy the molecules it scores).
    ema_decay
        Above 0: keep an exponential moving average of the module's weights (parameters and
        BatchNorm statistics) over the optimiser steps, ``m = ema_decay * m + (1 - ema_decay) *
        weights`` after every step (:func:`torch.optim.swa_utils.get_ema_multi_avg_fn`), started
        at the weights training begins with, as :class:`torch.optim.swa_utils.AveragedModel`
        does (their share of the average after ``n`` steps is ``ema_decay**n``: 0.995 keeps 8%
        after 500 steps, so a training of a few hundred steps ends near where it began; pass
        ``0`` for short trainings). Validation scores the averaged weights, so early stopping,
        the plateau schedule and :class:`RestoreBest` watch them, and the module ends training
        with them; the optimiser trains the raw weights. ``0``: no averaging.
    ema_epochs
        Above 0, with ``ema_decay=0``: the same average with its horizon given in epochs instead
        of steps, ``ema_decay = 1 - 1 / (ema_epochs * steps_per_epoch)`` (``steps_per_epoch``:
        the training minibatches of an epoch, known when training starts), so that the average
        spans about the last ``ema_epochs`` epochs on any number of cells: ``20`` is ``0.995``
        with 10 steps per epoch (2,700 cells in minibatches of 256) and ``0.975`` with 2 (559
        cells). A horizon of one step or less is no averaging. ``ema_decay > 0`` takes precedence.
    ema_monitor
        With averaging: whose validation loss early stopping and the plateau schedule watch.
        ``"average"``: the averaged weights' (``validation_loss``). ``"raw"``: the raw weights'
        (``validation_loss``), so that training runs as it would without averaging (same
        steps, schedule and length), and the averaged weights' loss is logged as
        ``validation_loss_average`` (and its NLL as ``nll_validation_average``), which
        :class:`RestoreBest` then watches: averaging picks the weights returned, not how long
        training runs.
    stopping_metric
        Recorded for the model (which sets ``monitor`` from it, see :func:`monitored_metric`):
        ``"loss"``, the training objective, or ``"nll"``, the counts' negative log-likelihood
        alone (no penalties, no library subnetwork).
    **kwargs
        Passed to :class:`~scvi.train.TrainingPlan`.
    """

    def __init__(
        self,
        module,
        *,
        lr: float = PAPER_TRAIN["lr"],
        lr_decay: float = PAPER_TRAIN["lr_decay"],
        lr_floor: float = PAPER_TRAIN["lr_floor"],
        lr_patience: int = PAPER_TRAIN["lr_patience"],
        lr_threshold: float = PAPER_TRAIN["lr_threshold"],
        lr_factor: float = PAPER_TRAIN["lr_factor"],
        weight_decay: float = PAPER_TRAIN["weight_decay"],
        validation: str = PAPER_TRAIN["validation"],
        monitor: str = "validation_loss",
        molecule_split: float = MOLECULE_SPLIT,
        train_split: float = PAPER_TRAIN["train_split"],
        ema_decay: float = PAPER_TRAIN["ema_decay"],
        ema_epochs: float = PAPER_TRAIN["ema_epochs"],
        ema_monitor: str = PAPER_TRAIN["ema_monitor"],
        stopping_metric: str = PAPER_TRAIN["stopping_metric"],
        **kwargs,
    ):
        if validation not in VALIDATION_MODES:
            raise ValueError(
                f"Unknown validation {validation!r}; choose one of {list(VALIDATION_MODES)}."
            )
        super().__init__(
            module,
            lr=lr,
            weight_decay=weight_decay,
            lr_patience=lr_patience,
            lr_threshold=lr_threshold,
            lr_factor=lr_factor,
            eps=1e-8,
            **kwargs,
        )
        self.lr_decay, self.lr_floor = lr_decay, lr_floor
        self.validation, self.monitor = validation, monitor
        self.molecule_split = molecule_split
        # validation="mcv": every cell's held-out molecules, looked up after the first time
        self._fixed_split = FixedThinning(molecule_split) if validation == "mcv" else None
        self.train_split = float(train_split)
        self._epoch_sums: dict[str, torch.Tensor] = {}  # training metrics, summed per epoch
        self._epoch_cells = 0
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be a number in [0, 1), not {ema_decay!r}.")
        finite = isinstance(ema_epochs, int | float) and math.isfinite(ema_epochs)
        if not (finite and ema_epochs >= 0):
            raise ValueError(f"ema_epochs must be a finite number >= 0, not {ema_epochs!r}.")
        if ema_monitor not in EMA_MONITORS:
            raise ValueError(
                f"Unknown ema_monitor {ema_monitor!r}; choose one of {list(EMA_MONITORS)}."
            )
        self.ema_decay = float(ema_decay)
        self.ema_epochs = float(ema_epochs)
        self.ema_monitor = ema_monitor
        monitored_metric(stopping_metric, True)  # refuses an unknown name
        self.stopping_metric = stopping_metric
        self._ema_update = None  # the update of the decay in use, made at on_train_start
        self._ema: list[torch.Tensor] | None = None  # the averaged floating-point state
        self._raw: list[torch.Tensor] | None = None  # the raw weights while the average is in

    # ------------------------------------------------------------ weight averaging (EMA)
    def _float_state(self) -> list[torch.Tensor]:
        """The module's floating-point state: parameters and buffers (BatchNorm statistics)."""
        state = self.module.state_dict(keep_vars=True)
        return [v.data for v in state.values() if v.is_floating_point()]

    def averaging_decay(self, steps_per_epoch: int | float) -> float:
        """The average's decay per optimiser step: ``ema_decay``, or where that is 0 the one of
        a horizon of ``ema_epochs`` epochs of ``steps_per_epoch`` steps (0: no averaging).

        Examples
        --------
        >>> plan = ZiPoTrainingPlan.__new__(ZiPoTrainingPlan)
        >>> plan.ema_decay, plan.ema_epochs = 0.0, 20.0
        >>> plan.averaging_decay(10), plan.averaging_decay(2), plan.averaging_decay(0.04)
        (0.995, 0.975, 0.0)
        """
        if self.ema_decay > 0 or self.ema_epochs <= 0:
            return self.ema_decay
        return max(0.0, 1.0 - 1.0 / (self.ema_epochs * steps_per_epoch))

    def on_train_start(self):
        """Start the average at the weights training begins with (``ema_decay > 0`` or
        ``ema_epochs > 0``).
        """
        decay = self.averaging_decay(self.trainer.num_training_batches)
        self._ema_update = get_ema_multi_avg_fn(decay)
        self._ema = self._raw = None
        if decay > 0:
            self._ema = [t.detach().clone() for t in self._float_state()]

    def on_train_batch_end(self, outputs, batch, batch_idx):
        """Fold the weights after this optimiser step into the average."""
        if self._ema is not None:
            self._ema_update(self._ema, self._float_state(), None)

    def _swap_in_average(self) -> None:
        """Load the averaged weights into the module, keeping the raw ones aside."""
        if self._ema is None or self._raw is not None:
            return
        current = self._float_state()
        self._raw = [t.detach().clone() for t in current]
        with torch.no_grad():
            torch._foreach_copy_(current, self._ema)

    def _swap_out_average(self) -> None:
        """Put the raw weights back: the optimiser keeps training them, not the average."""
        if self._raw is None:
            return
        with torch.no_grad():
            torch._foreach_copy_(self._float_state(), self._raw)
        self._raw = None

    def on_validation_model_eval(self):
        """Evaluation mode, with the averaged weights in until the next training epoch starts
        (so that :class:`RestoreBest`, which copies the module after validation, keeps them).
        """
        super().on_validation_model_eval()
        if not self.trainer.sanity_checking:
            self._swap_in_average()

    def on_train_end(self):
        """End with the averaged weights; where :class:`RestoreBest` restored an epoch's
        (averaged) weights before this hook, those stay.
        """
        if self._raw is None:  # no validation since the last step: the average is not in yet
            self._swap_in_average()
        self._raw = self._ema = None

    def configure_optimizers(self):
        """Adam with a relative-threshold ReduceLROnPlateau (pytorch-ignite's, as in II-G);
        Adam alone with ``lr_factor=1`` (no plateau cuts).
        """
        params = [p for p in self.module.parameters() if p.requires_grad]
        # fused: one pass over each parameter per step (CPU and CUDA since torch 2.4)
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
        optimizer = torch.optim.Adam(
            params, lr=self.lr, eps=self.eps, weight_decay=self.weight_decay, fused=fused or None
        )
        if self.lr_factor >= 1.0:
            return optimizer
        scheduler = ReduceLROnPlateau(
            optimizer,
            mode="min",
            factor=self.lr_factor,
            patience=self.lr_patience,
            threshold=self.lr_threshold,
            threshold_mode="rel",
            min_lr=self.lr_min,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": self.monitor},
        }

    def training_step(self, batch, batch_idx):
        """One optimisation step; its metrics are summed here and logged once per epoch.

        scvi logs every metric on every step; each ``self.log`` call costs Lightning about
        0.4 ms (it moves its result store to the value's device), ~5 ms of a 25 ms step.
        The epoch values are the same cell-weighted means (``train_loss``,
        ``reconstruction_loss_train`` and the extra metrics such as ``nll_train``). scvi's
        ``elbo_*``, ``kl_local_*`` and ``kl_global_*`` are not logged: ZIPO is not a VAE, its
        KL terms are zero and its "ELBO" would repeat the reconstruction loss.
        """
        loss_kwargs = self.loss_kwargs
        if self.validation == "mcv":  # the molecules validation scores stay unseen
            batch, _ = _split_fixed(batch, self._fixed_split)
        if self.train_split < 1.0:
            batch, split = _split_molecules(batch, self.train_split, None)
            loss_kwargs = {**loss_kwargs, **split}
        _, _, out = self.forward(batch, loss_kwargs=loss_kwargs)
        n = out.n_obs_minibatch
        sums = {
            "train_loss": out.loss.detach() * n,
            "reconstruction_loss_train": out.reconstruction_loss_sum.detach(),
        }
        for key in out.extra_metrics_keys:
            value = out.extra_metrics[key]
            if isinstance(value, torch.Tensor) and value.dim() == 0:
                sums[f"{key}_train"] = value.detach() * n
        acc = self._epoch_sums
        for key, value in sums.items():
            acc[key] = acc[key] + value if key in acc else value
        self._epoch_cells += n
        return out.loss

    def on_train_epoch_end(self):
        """Log the epoch's cell-weighted means of the training metrics (see training_step)."""
        acc, n = self._epoch_sums, self._epoch_cells
        self._epoch_sums, self._epoch_cells = {}, 0
        if not n:
            return
        values = {key: value / n for key, value in acc.items()}
        for key, value in values.items():
            self.log(
                key,
                value,
                on_step=False,
                on_epoch=True,
                prog_bar=key == "train_loss",
                sync_dist=self.use_sync_dist,
            )

    def on_train_epoch_start(self):
        """Exponential warm phase: ``lr * decay^epoch`` until it reaches the floor.

        With weight averaging, the raw weights come back in (the last validation left the
        averaged ones in the module).
        """
        self._swap_out_average()
        epoch = self.current_epoch
        if epoch == 0 or self.lr * self.lr_decay ** (epoch - 1) > self.lr_floor:
            lr = max(self.lr * self.lr_decay**epoch, min(self.lr, self.lr_floor))
            for group in self.optimizers().param_groups:
                group["lr"] = lr

    def validation_step(self, batch, batch_idx):
        """Score validation cells; on held-out molecules when ``validation="molecules"``.

        With ``ema_monitor="raw"`` the cells are scored twice, with the averaged weights
        (``validation_loss_average``) and with the raw ones (``validation_loss`` and the other
        metrics), on the same split of their molecules.
        """
        batch, loss_kwargs = self._validation_inputs(batch, batch_idx)  # split once
        out = self.forward(batch, loss_kwargs=loss_kwargs)[2]  # the average's weights when in
        if self.ema_monitor == "raw":
            n = out.n_obs_minibatch
            self._log_validation("validation_loss_average", out.loss)
            self._log_validation("nll_validation_average", out.extra_metrics["nll"], n)
            if self._raw is not None:  # score the raw weights too
                self._swap_out_average()
                out = self.forward(batch, loss_kwargs=loss_kwargs)[2]
                self._swap_in_average()
        self._log_validation("validation_loss", out.loss)
        self.compute_and_log_metrics(out, self.val_metrics, "validation")

    def _validation_inputs(self, batch, batch_idx) -> tuple[dict, dict]:
        """The minibatch as validation encodes it, and the loss arguments that score it."""
        loss_kwargs = dict(self.loss_kwargs)
        if self.validation == "mcv":
            batch, split = _split_fixed(batch, self._fixed_split)
            loss_kwargs.update(split)
        elif self.validation == "molecules":
            generator = torch.Generator(device="cpu").manual_seed(1_000_003 + batch_idx)
            batch, split = _split_molecules(batch, self.molecule_split, generator)
            loss_kwargs.update(split)
        return batch, loss_kwargs

    def _validation_loss(self, batch, batch_idx):
        """The validation loss output of one minibatch with the weights now in the module."""
        batch, loss_kwargs = self._validation_inputs(batch, batch_idx)
        return self.forward(batch, loss_kwargs=loss_kwargs)[2]

    def _log_validation(self, name: str, value: torch.Tensor, n: int | None = None) -> None:
        self.log(
            name,
            value,
            on_step=self.on_step,
            on_epoch=self.on_epoch,
            sync_dist=self.use_sync_dist,
            batch_size=n,
        )

    def compute_and_log_metrics(self, loss_output, metrics, mode):
        """Log ``reconstruction_loss_{mode}`` and the extra metrics (``nll_{mode}``, ...).

        Unlike scvi, no ``elbo_*``/``kl_*`` series (ZIPO's KL terms are zero; see
        :meth:`training_step`), and under ``no_grad`` instead of ``inference_mode``: with
        ``inference_mode`` Lightning's running batch-size counter becomes an inference tensor,
        which DDP on the gloo backend (CPU) then divides in place when syncing, which torch
        refuses.
        """
        n = loss_output.n_obs_minibatch
        log = {"on_step": self.on_step, "on_epoch": self.on_epoch, "batch_size": n}
        log["sync_dist"] = self.use_sync_dist
        with torch.no_grad():
            key = f"reconstruction_loss_{mode}"
            self.log(key, loss_output.reconstruction_loss_sum.detach() / n, **log)
            for name in loss_output.extra_metrics_keys:
                value = loss_output.extra_metrics[name]
                if isinstance(value, torch.Tensor):
                    if value.dim() != 0:
                        continue
                    value = value.detach()
                self.log(f"{name}_{mode}", value, **log)


# ---------------------------------------------------------------------- what training says
def _split_molecules(batch: dict, share: float, generator) -> tuple[dict, dict]:
    """The minibatch with ``share`` of each cell's molecules, and the loss arguments that score
    the rest (``target``, and ``rate_scale``: its expected size relative to the input).
    """
    x = batch[REGISTRY_KEYS.X_KEY]
    return _scored_split(batch, share, *thin_counts(x.cpu(), share, generator))


def _split_fixed(batch: dict, split: FixedThinning) -> tuple[dict, dict]:
    """As :func:`_split_molecules`, with the split ``validation="mcv"`` holds out for good
    (:func:`~zipo_scvi._metrics.fixed_thinning`, each cell's worked out once).
    """
    return _scored_split(batch, split.fraction, *split(batch[REGISTRY_KEYS.X_KEY]))


def _scored_split(batch: dict, share: float, seen, held_out) -> tuple[dict, dict]:
    """The minibatch with ``seen`` as its counts, and the loss arguments scoring ``held_out``."""
    device = batch[REGISTRY_KEYS.X_KEY].device
    batch = {**batch, REGISTRY_KEYS.X_KEY: seen.to(device)}
    return batch, {"target": held_out.to(device), "rate_scale": (1.0 - share) / share}


class ZiPoDataSplitter(DataSplitter):
    """scvi's :class:`~scvi.dataloaders.DataSplitter`; with ``validate_all_cells=True`` the
    validation loader runs over every cell (training and validation cells, in order).

    ``validation="mcv"`` scores held-out molecules of the cells the model trains on, so its
    validation needs the training cells, which scvi's splitter keeps apart from the validation
    cells.

    Parameters
    ----------
    adata_manager
        The model's :class:`~scvi.data.AnnDataManager`.
    validate_all_cells
        Validate on every cell instead of the validation cells only.
    **kwargs
        Passed to :class:`~scvi.dataloaders.DataSplitter`.
    """

    def __init__(self, adata_manager, validate_all_cells: bool = False, **kwargs):
        super().__init__(adata_manager, **kwargs)
        self.validate_all_cells = validate_all_cells

    def val_dataloader(self):
        """Every cell with ``validate_all_cells``; otherwise scvi's validation cells (none:
        ``None``, as scvi).

        The loader has a generator of its own: each pass over a torch ``DataLoader`` draws a
        seed from its generator, by default torch's global one, so every validation would
        otherwise move the random numbers training draws next (minibatch order, dropout,
        noise), and the weights would depend on how often validation runs.
        """
        if self.validate_all_cells:
            cells = np.sort(np.concatenate([self.train_idx, self.val_idx]))
        else:
            cells = self.val_idx
        if not len(cells):
            return None
        return self.data_loader_cls(
            self.adata_manager,
            indices=cells,
            shuffle=False,
            drop_last=False,
            load_sparse_tensor=self.load_sparse_tensor,
            pin_memory=self.pin_memory,
            **{"generator": torch.Generator(), **self.data_loader_kwargs},
        )


def loss_in_words(monitor: str, validation: str, molecule_split: float) -> tuple[str, str]:
    """(short name, sentence) of the loss that early stopping and the LR schedule watch.

    Examples
    --------
    >>> loss_in_words("nll_validation", "mcv", 0.9)[1].split(" (")[1]
    "the counts' likelihood alone); lower is better"
    """
    if monitor.startswith("nll_"):
        tail = " (the counts' likelihood alone); lower is better"
    else:
        tail = ", plus the model's penalties; lower is better"
    if monitor in ("train_loss", "nll_train"):
        return "training loss", f"mean negative log-likelihood per training cell{tail}"
    held_out = f"{1 - molecule_split:.0%} of its molecules"
    if validation == "mcv":
        return "held-out loss", (
            f"mean negative log-likelihood per cell of the {held_out} held out from training{tail}"
        )
    if validation == "molecules":
        return "held-out loss", (
            f"mean negative log-likelihood per validation cell of the {held_out} hidden from the "
            f"model{tail}"
        )
    return "validation loss", (
        f"mean negative log-likelihood of the validation cells' counts per cell{tail}"
    )


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return (f"{hours} h " if hours else "") + f"{minutes} min {seconds} s"


class EpochProgressBar(ProgressBar):
    """scvi's one-step-per-epoch bar, with the epoch cap shown as a cap.

    With early stopping the run ends when the watched loss stops improving, usually long before
    the cap, so the bar counts epochs without a total or an ETA and says what ends the run, e.g.
    ``Training (early stopping on held-out molecules; at most 1000 epochs): 57 epoch [...]``.
    """

    def __init__(self, description: str, known_length: bool):
        super().__init__(refresh_rate=1)
        self.description, self.known_length = description, known_length

    def init_train_tqdm(self, trainer):
        total = trainer.max_epochs if self.known_length else None
        return track(
            None,
            total=total,
            description=self.description,
            style="tqdm",
            disable=self.is_disabled,
            unit=" epoch",
        )

    def on_train_epoch_start(self, trainer, pl_module):
        # scvi's bar would rename itself "Epoch n/cap" here
        LightningProgressBar.on_train_epoch_start(self, trainer, pl_module)


class RestoreBest(Callback):
    """Restore the module's weights of the epoch with the best monitored loss when training ends.

    Early stopping ends training ``patience`` epochs after the best epoch; without this callback
    the model keeps the last epoch's weights. The best weights are kept in memory (a copy of
    the module's state on its device).

    Parameters
    ----------
    monitor
        The logged loss to minimise (``"validation_loss"``).
    """

    def __init__(self, monitor: str):
        super().__init__()
        self.monitor = monitor
        self.best = float("inf")
        self.best_epoch: int | None = None
        self._state: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and float(value) < self.best:
            self.best, self.best_epoch = float(value), trainer.current_epoch + 1
            state = pl_module.module.state_dict()
            self._state = {k: v.detach().clone() for k, v in state.items()}

    def on_train_end(self, trainer, pl_module):
        if self._state is not None:
            pl_module.module.load_state_dict(self._state)


class TrainingReport(Callback):
    """Say at the end of training, in words, how it ended (instead of "Best score: 330.788").

    One line: epochs trained and why training ended (early stopping on the watched loss, with
    its patience, or the epoch cap), the best value of the watched loss and its epoch, what that
    loss is, and the elapsed time. scvi-tools' early-stopping callback would print Lightning's
    reason after training; this callback says it instead. ``verbose=False`` prints nothing.

    Parameters
    ----------
    monitor
        The logged loss that early stopping watches.
    words
        ``(short name, sentence)`` describing it (see :func:`loss_in_words`).
    verbose
        Print the summary (rank 0 only).
    """

    def __init__(self, monitor: str, words: tuple[str, str], verbose: bool = True):
        super().__init__()
        self.monitor, self.words, self.verbose = monitor, words, verbose
        self.summary = ""
        self._start = time.perf_counter()

    def on_train_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        elapsed = _duration(time.perf_counter() - self._start)
        stoppers = [c for c in trainer.callbacks if isinstance(c, EarlyStopping)]
        stopped = [
            c for c in stoppers if getattr(c, "early_stopping_reason", None) or c.stopped_epoch
        ]
        for callback in stoppers:  # said below, in words
            if hasattr(callback, "early_stopping_reason"):
                callback.early_stopping_reason = None
        # scvi's logger keeps the history on rank 0 only (other ranks get a placeholder)
        history = getattr(trainer.logger, "history", None)
        frame = history.get(self.monitor) if isinstance(history, Mapping) else None
        epochs = trainer.current_epoch
        name, meaning = self.words
        every = trainer.check_val_every_n_epoch or 1
        if stopped:
            how = (
                f"and stopped early (cap {trainer.max_epochs}): the {name} had not improved "
                f"for {stopped[0].patience * every} epochs"
            )
        else:
            how = "(the epoch cap)"
        best = ""
        values = by_epoch({"watched": frame})["watched"] if frame is not None else []
        if len(values) and np.isfinite(values).any():
            i = int(np.nanargmin(values))
            # RestoreBest may watch another loss (ema_monitor="raw": the average's)
            restorer = next((c for c in trainer.callbacks if isinstance(c, RestoreBest)), None)
            keep = epochs if restorer is None else (restorer.best_epoch or i + 1)
            kept = ""
            averaged = restorer is not None and restorer.monitor != self.monitor
            if averaged and restorer.best_epoch is not None:
                kept = (
                    " (the weights as trained); the model keeps the averaged weights of epoch"
                    f" {keep}, whose {name} was {restorer.best:.6g}"
                )
            elif i + 1 != epochs or keep != epochs:
                kept = f"; the model keeps epoch {keep}'s weights"
            best = f" Best {name}: {values[i]:.6g} at epoch {i + 1}{kept}. The {name} is the "
            best += f"{meaning}."
        if every > 1:
            how += f", validating every {every} epochs"
        self.summary = f"ZIPO trained {epochs} epochs in {elapsed} {how}.{best}"
        if self.verbose and trainer.is_global_zero:
            print(self.summary, flush=True)
