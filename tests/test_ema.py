"""Weight averaging (``ema_decay``): validation and the trained model use an exponential moving
average of the weights over the optimiser steps; the optimiser keeps training the raw weights."""

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping

from zipo_scvi import ZIPO
from zipo_scvi._defaults import preset
from zipo_scvi._training import RestoreBest, TrainingReport, ZiPoTrainingPlan
from zipo_scvi.pp import training_history

from .conftest import TINY


def _floats(module) -> list[torch.Tensor]:
    return [v.detach().clone() for v in module.state_dict().values() if v.is_floating_point()]


class _Record(Callback):
    """The weights training starts with, the raw weights after every optimiser step (callbacks
    run before the plan's hook, which folds them into the average) and the weights that each
    validation scores."""

    def __init__(self):
        self.start, self.steps, self.validated = None, [], []

    def on_train_start(self, trainer, pl_module):
        self.start = _floats(pl_module.module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append(_floats(pl_module.module))

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.validated.append((len(self.steps), _floats(pl_module.module)))


def _train(adata, ema_decay, ema_epochs=0.0, *, max_epochs=3, restore_best=False, **kwargs):
    """A short training validated every epoch (``validation_steps=0``) unless told otherwise."""
    kwargs.setdefault("validation_steps", 0)
    ZIPO.setup_anndata(adata)
    model = ZIPO(adata, seed=0, **TINY)
    record = _Record()
    model.train(
        max_epochs=max_epochs,
        seed=0,
        batch_size=64,
        restore_best=restore_best,
        ema_decay=ema_decay,
        ema_epochs=ema_epochs,
        enable_progress_bar=False,
        callbacks=[record],
        **kwargs,
    )
    return model, record


def _assert_averaged(model, record, decay: float) -> None:
    """Each validation scored, and the model ends with, the average of the steps so far."""
    for n_steps, state in record.validated:
        expected = _average(record.start, record.steps[:n_steps], decay)
        for got, want in zip(state, expected, strict=True):
            torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
    final = _floats(model.module)
    for got, want in zip(final, _average(record.start, record.steps, decay), strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


def _average(start, steps, decay: float) -> list[torch.Tensor]:
    """The EMA of the recorded weights, started at the initial ones, in float64."""
    average = [t.double() for t in start]
    for step in steps:
        average = [decay * m + (1 - decay) * w.double() for m, w in zip(average, step)]
    return average


def test_validation_and_the_result_use_the_average_of_unchanged_raw_steps(adata):
    decay = 0.8
    _, plain = _train(adata.copy(), 0.0)
    model, averaged = _train(adata, decay)
    # averaging changes what is evaluated, not what the optimiser does
    assert len(averaged.steps) == len(plain.steps) > 3
    for a, b in zip(averaged.steps, plain.steps, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    # each validation scores the average of the steps so far
    assert len(averaged.validated) == 3
    for n_steps, state in averaged.validated:
        expected = _average(averaged.start, averaged.steps[:n_steps], decay)
        for got, want in zip(state, expected, strict=True):
            torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
        # ... which is not the raw weights of that step
        assert any(not torch.equal(x, y) for x, y in zip(state, averaged.steps[n_steps - 1]))
    # and the model ends training with the average of all steps
    final = _floats(model.module)
    for got, want in zip(final, _average(averaged.start, averaged.steps, decay), strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bad", [1.0, -0.1])
def test_ema_decay_out_of_range_is_refused(adata, bad):
    ZIPO.setup_anndata(adata)
    model = ZIPO(adata, **TINY)
    with pytest.raises(ValueError, match="ema_decay"):
        model.train(max_epochs=1, enable_progress_bar=False, ema_decay=bad)


def test_ema_epochs_gives_a_horizon_in_epochs(adata):
    # 160 cells, 144 of them training cells in minibatches of 64: 3 steps per epoch, so a
    # horizon of 2 epochs is a decay of 1 - 1/6 per step
    model, record = _train(adata, 0.0, ema_epochs=2.0)
    steps_per_epoch = len(record.steps) // 3
    assert steps_per_epoch == 3 and len(record.validated) == 3
    _assert_averaged(model, record, 1 - 1 / 6)
    # ... which is not the decay of another horizon
    with pytest.raises(AssertionError):
        _assert_averaged(model, record, 1 - 1 / 9)


def test_ema_decay_takes_precedence_over_ema_epochs(adata):
    model, record = _train(adata, 0.5, ema_epochs=2.0)
    _assert_averaged(model, record, 0.5)


def test_a_horizon_under_one_step_does_not_average(adata):
    _, plain = _train(adata.copy(), 0.0)
    model, record = _train(adata, 0.0, ema_epochs=0.1)  # 0.3 steps
    for (_, a), (_, b) in zip(record.validated, plain.validated, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert all(torch.equal(x, y) for x, y in zip(_floats(model.module), record.steps[-1]))


@pytest.mark.parametrize("bad", [-1.0, float("inf"), float("nan")])
def test_ema_epochs_out_of_range_is_refused(adata, bad):
    ZIPO.setup_anndata(adata)
    model = ZIPO(adata, **TINY)
    with pytest.raises(ValueError, match="ema_epochs"):
        model.train(max_epochs=1, enable_progress_bar=False, ema_epochs=bad)


def test_the_plan_refuses_a_bad_ema_epochs(adata):
    ZIPO.setup_anndata(adata)
    module = ZIPO(adata, **TINY).module
    with pytest.raises(ValueError, match="ema_epochs"):
        ZiPoTrainingPlan(module, ema_epochs=-2)


def test_presets_do_not_average():
    assert preset("paper")[1]["ema_decay"] == 0.0
    assert preset("default")[1]["ema_decay"] == 0.0
    assert preset("paper")[1]["ema_epochs"] == 0.0
    assert preset("paper")[1]["ema_monitor"] == "average"


def _train_restoring(adata, ema_decay, **kwargs):
    return _train(adata, ema_decay, max_epochs=4, restore_best=True, **kwargs)


def _series(model, name):
    return model.history[name].iloc[:, 0].astype(float).to_numpy()


@pytest.mark.parametrize(
    ("metric", "watched"), [("loss", "validation_loss"), ("nll", "nll_validation")]
)
def test_ema_monitor_raw_trains_as_without_averaging_and_keeps_the_best_average(
    adata, metric, watched
):
    kw = {"stopping_metric": metric}
    plain, plain_record = _train_restoring(adata.copy(), ema_decay=0.0, **kw)
    model, record = _train_restoring(adata, ema_decay=0.8, ema_monitor="raw", **kw)
    assert model.stopping_monitor == watched
    # the raw weights are scored as without averaging: same run, same watched loss ...
    for a, b in zip(record.steps, plain_record.steps, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    raw = _series(model, watched)
    np.testing.assert_allclose(raw, _series(plain, watched), rtol=1e-6)
    # ... the average's own loss is logged beside it ...
    averaged = _series(model, f"{watched}_average")
    assert len(averaged) == len(raw) == 4
    assert not np.allclose(averaged, raw)
    # ... and picks the epoch whose averaged weights the model keeps
    (restorer,) = [c for c in model.trainer.callbacks if isinstance(c, RestoreBest)]
    assert restorer.monitor == f"{watched}_average"
    best = int(averaged.argmin())
    assert restorer.best_epoch == best + 1
    # the end-of-training summary says which weights are kept, and their loss
    (report,) = [c for c in model.trainer.callbacks if isinstance(c, TrainingReport)]
    assert f"the model keeps the averaged weights of epoch {best + 1}, whose" in report.summary
    assert f"was {averaged[best]:.6g}" in report.summary
    n_steps, state = record.validated[best]
    expected = _average(record.start, record.steps[:n_steps], 0.8)
    for got, kept, want in zip(_floats(model.module), state, expected, strict=True):
        assert torch.equal(got, kept)
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


def test_ema_monitor_average_watches_the_average(adata):
    model, record = _train_restoring(adata, ema_decay=0.8, ema_monitor="average")
    assert "validation_loss_average" not in model.history
    best = int(_series(model, "validation_loss").argmin())
    for got, kept in zip(_floats(model.module), record.validated[best][1], strict=True):
        assert torch.equal(got, kept)


def test_unknown_ema_monitor_is_refused(adata):
    ZIPO.setup_anndata(adata)
    model = ZIPO(adata, **TINY)
    with pytest.raises(ValueError, match="ema_monitor"):
        model.train(max_epochs=1, enable_progress_bar=False, ema_monitor="both")


def _stopper(model):
    (stopper,) = [c for c in model.trainer.callbacks if isinstance(c, EarlyStopping)]
    return stopper


def test_stopping_watches_the_loss_or_the_counts_nll(adata):
    assert preset("paper")[1]["stopping_metric"] == "loss"
    assert preset("default")[1]["stopping_metric"] == "nll"
    ZIPO.setup_anndata(adata)
    model = ZIPO(adata, **TINY)
    model.train(max_epochs=2, enable_progress_bar=False)
    assert model.stopping_monitor == "nll_validation"
    assert _stopper(model).monitor == "nll_validation"
    model.train(max_epochs=2, enable_progress_bar=False, stopping_metric="loss")
    assert model.stopping_monitor == "validation_loss"
    assert _stopper(model).monitor == "validation_loss"
    # without validation data the training NLL is watched, by the same rule
    model.train(
        max_epochs=1,
        enable_progress_bar=False,
        validation="cells",
        train_size=1.0,
        stopping_metric="nll",
    )
    assert model.stopping_monitor == "nll_train"


def test_unknown_stopping_metric_is_refused(adata):
    ZIPO.setup_anndata(adata)
    model = ZIPO(adata, **TINY)
    with pytest.raises(ValueError, match="stopping_metric 'elbo'"):
        model.train(max_epochs=1, enable_progress_bar=False, stopping_metric="elbo")


def test_patience_is_epochs_or_steps_whichever_is_fewer(adata):
    assert preset("default")[1]["early_stopping_patience"] == 100
    assert preset("paper")[1]["early_stopping_steps"] == 0
    ZIPO.setup_anndata(adata)
    model = ZIPO(adata, **TINY)
    quiet = {"max_epochs": 1, "enable_progress_bar": False}
    model.train(**quiet)  # 160 cells: one step per epoch, the 100 epochs are fewer
    assert _stopper(model).patience == 100
    model.train(batch_size=16, early_stopping_steps=25, **quiet)  # 10 steps per epoch
    assert _stopper(model).patience == 3
    model.train(batch_size=16, early_stopping_steps=0, early_stopping_patience=7, **quiet)
    assert _stopper(model).patience == 7
    with pytest.raises(ValueError, match="early_stopping_steps"):
        model.train(early_stopping_steps=-1, **quiet)


def test_validation_runs_every_few_epochs_of_few_steps_and_trains_the_same_weights(adata):
    assert preset("default")[1]["validation_steps"] == 50
    assert preset("paper")[1]["validation_steps"] == 0
    quiet = {"max_epochs": 12, "seed": 0, "enable_progress_bar": False}
    latents = {}
    for steps in (0, 50):  # every epoch; every 5 epochs (one step each: 5 = 100 epochs / 20)
        ZIPO.setup_anndata(adata)
        model = ZIPO(adata, seed=0, **TINY)
        model.train(validation_steps=steps, early_stopping=False, restore_best=False, **quiet)
        latents[steps] = model.get_latent_representation()
        validated = model.history["nll_validation"].index.to_list()
        assert validated == (list(range(12)) if steps == 0 else [4, 9])
        assert len(model.history["train_loss"]) == 12
    # validation draws no random numbers: the weights train the same however often it runs
    np.testing.assert_array_equal(latents[0], latents[50])
    model = ZIPO(adata, seed=0, **TINY)
    model.train(**quiet)  # the default: the patience still counts 100 epochs, in 20 checks
    assert model.trainer.check_val_every_n_epoch == 5
    assert _stopper(model).patience == 20
    (report,) = [c for c in model.trainer.callbacks if isinstance(c, TrainingReport)]
    assert "validating every 5 epochs" in report.summary
    best = model.history["nll_validation_average"].iloc[:, 0].astype(float).idxmin() + 1
    assert f"the model keeps the averaged weights of epoch {best}," in report.summary
    model.train(max_epochs=3, enable_progress_bar=False)  # fewer epochs: validated at the end
    assert model.trainer.check_val_every_n_epoch == 3
    # the history goes on after the first training's 12 epochs (validated at 5 and 10)
    history = training_history(model)
    assert len(history["train_loss"]) == 15
    assert np.flatnonzero(np.isfinite(history["nll_validation"])).tolist() == [4, 9, 14]
    # the plateau schedule watches every epoch: the preset's cadence gives way to it ...
    model.train(lr_factor=0.5, **quiet)
    assert model.trainer.check_val_every_n_epoch == 1
    # ... but asking for both is refused
    with pytest.raises(ValueError, match="plateau schedule"):
        model.train(lr_factor=0.5, validation_steps=50, **quiet)
    with pytest.raises(ValueError, match="validation_steps"):
        model.train(validation_steps=-1, **quiet)


def test_lr_factor_one_means_no_plateau_cuts(adata):
    ZIPO.setup_anndata(adata)
    model = ZIPO(adata, **TINY)
    quiet = {"max_epochs": 6, "enable_progress_bar": False, "batch_size": 64}
    # a plateau schedule that would cut at every epoch, switched off by lr_factor=1
    model.train(lr_factor=1.0, lr_patience=0, lr_threshold=1.0, **quiet)
    assert model.trainer.lr_scheduler_configs == []
    assert model.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3)
    model.train(lr_factor=0.5, lr_patience=0, lr_threshold=1.0, **quiet)
    assert model.trainer.optimizers[0].param_groups[0]["lr"] < 1e-3
    with pytest.raises(ValueError, match="lr_factor"):
        model.train(lr_factor=1.5, **quiet)
