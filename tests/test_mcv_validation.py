"""Validation on held-out molecules of every cell (``validation="mcv"``): a fixed share of each
cell's molecules never reaches training and is what validation scores."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scvi import REGISTRY_KEYS

from zipo_scvi import ZIPO
from zipo_scvi._metrics import FixedThinning, _mix64, fixed_thinning
from zipo_scvi._training import loss_in_words

from .conftest import FAST, TINY

_MASK = (1 << 64) - 1


def _splitmix_reference(h: int) -> int:
    """splitmix64's finaliser on Python integers (exact unsigned 64-bit arithmetic)."""
    h = (h + 0x9E3779B97F4A7C15) & _MASK
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK
    return h ^ (h >> 31)


def test_the_hash_is_splitmix64_with_wrapping_arithmetic():
    values = [0, 1, 7, -5, 2**62 + 3, -(2**63)]
    got = _mix64(torch.tensor(values, dtype=torch.int64))
    assert [int(g) & _MASK for g in got] == [_splitmix_reference(v & _MASK) for v in values]


def _fixed_thinning_reference(counts: np.ndarray, fraction: float) -> np.ndarray:
    """The held-out counts of :func:`fixed_thinning`, one molecule at a time in Python."""
    genes = [_splitmix_reference(j) for j in range(counts.shape[1])]
    held = np.zeros_like(counts)
    for i, row in enumerate(counts.astype(int)):
        cell = _splitmix_reference(sum(int(n) * g for n, g in zip(row, genes)) & _MASK)
        for j, n in enumerate(row):
            entry = _splitmix_reference(cell ^ genes[j])
            for k in range(n):  # molecule k of the entry: splitmix64's k-th draw from it
                draw = _splitmix_reference((entry + k * 0x9E3779B97F4A7C15) & _MASK) >> 11
                held[i, j] += draw / 2**53 >= fraction
    return held


def test_fixed_thinning_draws_are_the_documented_hashes():
    counts = np.array([[0, 3, 1, 12], [5, 0, 2, 0], [1, 1, 1, 40]], dtype=np.float32)
    _, held_out = fixed_thinning(torch.from_numpy(counts), 0.7)
    np.testing.assert_array_equal(held_out.numpy(), _fixed_thinning_reference(counts, 0.7))


def test_fixed_thinning_is_a_binomial_partition_fixed_by_each_cell():
    torch.manual_seed(0)
    x = torch.poisson(torch.rand(300, 40) * 6)
    kept, held_out = fixed_thinning(x, 0.9)
    assert torch.equal(kept + held_out, x) and (held_out >= 0).all()
    assert abs(float(held_out.sum() / x.sum()) - 0.1) < 0.01
    for count in (1, 3):  # every molecule is held out with probability 0.1, whatever the count
        entries = x == count
        assert abs(float(held_out[entries].mean()) / count - 0.1) < 0.02
    # the same cell gets the same split in any minibatch, in any order, dense or sparse
    order = torch.randperm(300)
    kept_part, _ = fixed_thinning(x[order[:64]], 0.9)
    assert torch.equal(kept_part, kept[order[:64]])
    sparse = torch.from_numpy(sp.csr_matrix(x.numpy()).toarray()).to_sparse_csr()
    assert torch.equal(fixed_thinning(sparse, 0.9)[0], kept)
    # two cells that differ in one molecule are split independently
    y = x[:1].clone()
    y[0, 0] += 1
    assert not torch.equal(fixed_thinning(y, 0.5)[1][0, 1:], fixed_thinning(x[:1], 0.5)[1][0, 1:])


def test_the_remembered_split_is_fixed_thinnings_bit_for_bit():
    torch.manual_seed(1)
    x = torch.poisson(torch.rand(200, 30) * 4)
    x[7] = x[3]  # two cells with the same counts share one remembered split
    x[11] = 0  # and so do cells without counts
    split = FixedThinning(0.7)
    for _ in range(3):  # shuffled minibatches, as training draws them: new and known cells
        rows = torch.randperm(200)[:64]
        for got, want in zip(split(x[rows]), fixed_thinning(x[rows], 0.7), strict=True):
            assert torch.equal(got, want)
    for got, want in zip(split(x), fixed_thinning(x, 0.7), strict=True):
        assert torch.equal(got, want)
    assert len(split) == len({tuple(row) for row in x.tolist()})
    with pytest.raises(ValueError, match="non-negative"):
        split(-x)
    with pytest.raises(ValueError, match="fraction"):
        FixedThinning(1.0)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5])
def test_fixed_thinning_refuses_a_share_outside_zero_one(fraction):
    with pytest.raises(ValueError, match="fraction"):
        fixed_thinning(torch.ones(2, 2), fraction)


def test_fixed_thinning_refuses_negative_counts():
    with pytest.raises(ValueError, match="non-negative"):
        fixed_thinning(torch.tensor([[1.0, -2.0]]), 0.9)


def _rows(matrix) -> set[bytes]:
    return {row.tobytes() for row in np.asarray(matrix, dtype=np.float32)}


def test_training_never_sees_the_molecules_validation_scores(adata, monkeypatch):
    ZIPO.setup_anndata(adata)
    model = ZIPO(adata, **TINY)
    x = torch.from_numpy(np.asarray(adata.X.toarray() if sp.issparse(adata.X) else adata.X))
    kept, held_out = fixed_thinning(x.float(), 0.9)
    calls = {"train": [], "validation": []}
    original = type(model.module).loss

    def spy(self, tensors, inference_outputs, generative_outputs, target=None, **kwargs):
        seen = tensors[REGISTRY_KEYS.X_KEY]
        if self.training:  # all of what the step was given: the encoded and the scored part
            calls["train"].append((seen if target is None else seen + target, None))
        else:
            calls["validation"].append((seen, target))
        return original(self, tensors, inference_outputs, generative_outputs, target, **kwargs)

    monkeypatch.setattr(type(model.module), "loss", spy)
    settings = {"validation": "mcv", "train_size": 1.0, "train_split": 0.7, "ema_epochs": 0}
    model.train(**{**FAST, "max_epochs": 2}, **settings)  # (no average: one validation a batch)
    # every training step: the kept molecules of its cells, never a held-out one
    assert calls["train"] and all(_rows(w) <= _rows(kept) for w, _ in calls["train"])
    # validation: every cell, each epoch, encoding its kept molecules, scored on the held-out
    validated = calls["validation"][-3:]  # the last epoch: 160 cells in minibatches of 64
    assert sum(len(w) for w, _ in validated) == adata.n_obs
    assert all(_rows(w) <= _rows(kept) for w, _ in validated)
    assert all(_rows(t) <= _rows(held_out) for _, t in validated)
    assert model.validation_mode == "mcv"
    assert "validation_loss" in model.history


def test_mcv_validation_stops_early_and_keeps_the_best_epoch(adata):
    ZIPO.setup_anndata(adata)
    model = ZIPO(adata, **TINY)
    model.train(
        **{**FAST, "max_epochs": 60},
        validation="mcv",
        train_size=1.0,
        lr=0.05,
        early_stopping_patience=3,
        ema_epochs=0,  # the raw weights: the ones validated are the ones kept
    )
    watched = model.stopping_monitor  # the default preset: the held-out counts' NLL
    assert watched == "nll_validation"
    losses = model.history[watched][watched].to_numpy()
    assert len(losses) < 60  # stopped on the held-out molecules
    best = int(losses.argmin())
    model.module.eval()
    # the weights kept are the best epoch's: validating again gives its loss
    from zipo_scvi._training import ZiPoTrainingPlan

    plan = ZiPoTrainingPlan(model.module, validation="mcv")
    loader = model._make_data_loader(adata=adata, batch_size=64)
    total = n = 0.0
    with torch.no_grad():
        for i, batch in enumerate(loader):
            out = plan._validation_loss(batch, i)
            total += float(out.extra_metrics["nll"]) * out.n_obs_minibatch
            n += out.n_obs_minibatch
    assert total / n == pytest.approx(losses[best], rel=1e-4)


def test_mcv_is_said_in_words():
    name, sentence = loss_in_words("validation_loss", "mcv", 0.9)
    assert name == "held-out loss" and "10% of its molecules held out from training" in sentence
