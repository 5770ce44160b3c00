"""Training on split molecules (``train_split``): each step encodes part of every cell's
molecules and is scored on the rest."""

import pytest
import torch
from scvi import REGISTRY_KEYS

from zipo_scvi import ZIPO
from zipo_scvi._training import _split_molecules

from .conftest import FAST, TINY


def test_split_keeps_every_molecule_and_scales_the_rate():
    x = torch.poisson(torch.full((50, 20), 4.0))
    batch, split = _split_molecules(
        {REGISTRY_KEYS.X_KEY: x}, 0.7, torch.Generator().manual_seed(0)
    )
    seen = batch[REGISTRY_KEYS.X_KEY]
    assert torch.equal(seen + split["target"], x)
    assert split["rate_scale"] == pytest.approx(0.3 / 0.7)
    assert abs(float(seen.sum() / x.sum()) - 0.7) < 0.02


def test_training_steps_score_molecules_the_encoder_did_not_see(adata, monkeypatch):
    ZIPO.setup_anndata(adata)
    model = ZIPO(adata, **TINY)
    seen_targets = []
    original = type(model.module).loss

    def spy(self, tensors, inference_outputs, generative_outputs, target=None, **kwargs):
        if self.training:
            seen_targets.append(
                None if target is None else (tensors[REGISTRY_KEYS.X_KEY], target, kwargs)
            )
        return original(self, tensors, inference_outputs, generative_outputs, target, **kwargs)

    monkeypatch.setattr(type(model.module), "loss", spy)
    model.train(**{**FAST, "max_epochs": 1}, train_split=0.6)
    assert seen_targets and all(t is not None for t in seen_targets)
    x_in, target, kwargs = seen_targets[0]
    assert kwargs["rate_scale"] == pytest.approx(0.4 / 0.6)
    # the encoded part and the scored part are disjoint draws of the same cells' molecules
    assert float(target.sum()) > 0 and not torch.equal(x_in, target)
    seen_targets.clear()
    model.train(**{**FAST, "max_epochs": 1}, train_split=1.0)
    assert seen_targets and all(t is None for t in seen_targets)


@pytest.mark.parametrize("bad", [0, 1.5, -0.2])
def test_train_split_out_of_range_is_refused(adata, bad):
    ZIPO.setup_anndata(adata)
    model = ZIPO(adata, **TINY)
    with pytest.raises(ValueError, match="train_split"):
        model.train(**FAST, train_split=bad)
