"""Early-stopped training ends with the best epoch's weights (default preset), or the last's."""

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from zipo_scvi import ZIPO
from zipo_scvi._defaults import preset

from .conftest import TINY


class _Record(Callback):
    """The module's weights after each validation (the state the monitored loss belongs to)."""

    def __init__(self):
        self.states = []

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            w = pl_module.module.state_dict()
            self.states.append({k: v.detach().clone() for k, v in w.items()})


def _train(adata, restore_best):
    ZIPO.setup_anndata(adata)
    model = ZIPO(adata, **TINY)
    record = _Record()
    # lr 0.05 on 160 cells overfits fast: the best held-out epoch is not the last one
    model.train(
        max_epochs=25,
        lr=0.05,
        early_stopping_patience=3,
        restore_best=restore_best,
        ema_epochs=0,  # the raw weights: the ones validated are the ones kept
        enable_progress_bar=False,
        batch_size=64,
        callbacks=[record],
    )
    losses = model.history[model.stopping_monitor].to_numpy().ravel()
    return model, record.states, losses


def _same(model, state):
    current = model.module.state_dict()
    return all(torch.equal(current[k], state[k]) for k in state)


def test_restore_best_keeps_the_best_epochs_weights(adata):
    model, states, losses = _train(adata, restore_best=True)
    best = int(np.argmin(losses))
    assert best != len(losses) - 1  # otherwise the test would not tell the two apart
    assert _same(model, states[best])
    assert not _same(model, states[-1])


def test_without_restore_the_last_epochs_weights_stay(adata):
    model, states, _ = _train(adata, restore_best=False)
    assert _same(model, states[-1])


def test_presets():
    assert preset("default")[1]["restore_best"] is True
    assert preset("paper")[1]["restore_best"] is False
