"""The paper's hyperparameters and the project's presets, written once.

Every other place (the module and model signatures, the command line's config files, the
optuna search space) reads its defaults from here. Section numbers refer to Sharifitabar et al.,
bioRxiv 2024.11.20.624552.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

#: Architecture and loss of the paper's model (II-C, II-D, II-G, III-A..F).
PAPER_MODULE: MappingProxyType = MappingProxyType(
    {
        "encoder_sizes": (2048, 1024, 512, 256, 128),  # III-A: the last size is n_latent
        "residuals": "full",  # III-A.3: residuals from every encoder layer
        "activation": "sigmoid",  # II-E
        "batch_norm": True,  # III-C
        "norm_order": "act_bn",  # II-C: Linear -> activation -> BatchNorm
        "input_transform": "log1p",  # encoder input only; the likelihood sees raw counts
        # with input_transform="log1p_norm": the cell total that counts are scaled to (a
        # number, or "median": the training cells' median total, fixed when the model is built)
        "input_target_sum": 1e4,
        "input_dropout": 0.0,
        "latent_noise": 0.0,
        "decoder_sizes": (),  # III-B: a linear decoder
        "library_sizes": (16, 4),  # II-G
        "library_source": "latent",  # II-C: the likelihood's library is lib_log(V)
        "likelihood": "zip",  # II
        "alpha_z": 0.1,  # III-D
        "alpha_w": 0.1,  # III-E
        "alpha_theta": 0.0,  # II-E names it; the paper gives no value
        "alpha_library": 0.1,  # III-F: ZINB's library term 0.1 * E[(l - sum x)^2]
        "data_init": False,  # II-G: PyTorch's default initialisation
        # several samples: the paper gives the batch to the decoder only (II-C)
        "encode_covariates": False,  # the batch and categorical covariates also enter the encoder
        "batch_mmd": 0.0,  # weight of a kernel MMD penalty between batches' latents
        # how that MMD weighs the cells: "uniform", or "mnn" (by mutual nearest neighbours)
        "batch_mmd_weights": "uniform",
        "batch_adversary": 0.0,  # weight of an adversarial batch classifier on the latents
    }
)

#: Optimiser, schedule and stopping of the paper (II-G).
PAPER_TRAIN: MappingProxyType = MappingProxyType(
    {
        "max_epochs": 300,
        "batch_size": 256,  # not given by the paper
        "lr": 0.0212,  # starts here ...
        "lr_decay": 0.9,  # ... multiplied by 0.9 each epoch ...
        "lr_floor": 0.001,  # ... until it reaches 0.001 (epoch 30)
        "lr_patience": 15,  # ReduceLROnPlateau: 15 epochs without a 0.1% improvement
        "lr_threshold": 0.001,
        "lr_factor": 0.1,  # 1: no plateau cuts
        "early_stopping_patience": 30,
        # the patience in optimiser steps as well (the smaller one applies); 0: epochs only
        "early_stopping_steps": 0,
        # validate after about this many optimiser steps (several epochs of few cells), at most
        # every twentieth of the patience; 0: every epoch
        "validation_steps": 0,
        "restore_best": False,  # the paper keeps the last epoch's weights
        "weight_decay": 0.0,
        "train_size": 0.9,
        "validation": "cells",
        "train_split": 1.0,  # the model sees all of each training cell's molecules
        # no weight averaging: validation and the result use the raw weights
        "ema_decay": 0.0,
        "ema_epochs": 0.0,  # the same average with its horizon in epochs (ema_decay=0 only)
        "ema_monitor": "average",  # "raw": stopping watches the raw weights, the average is kept
        # what early stopping, the plateau schedule and restoring watch: "loss", the training
        # objective (the counts' NLL plus the penalties and, with the observed library, the
        # library subnetwork's NLL of each cell's total), or "nll", the counts' NLL alone
        "stopping_metric": "loss",
    }
)

#: What the project's own default changes relative to the paper, and why. Measured with
#: molecular cross-validation (held-out Poisson loss) on the simulator and on two real 10x
#: samples shipped in PyPI packages (pbmc3k, immune559), against scVI (notes of issue 9):
#: a Poisson likelihood (the ZIP mean without zero inflation overstates expression that the
#: held-out molecules do not show), a 512-128-64 encoder with BatchNorm before the activation
#: (bounded latents in eval mode), library-normalised log input, input dropout and latent noise
#: (a denoising, stochastic bottleneck), a data-dependent start for the library and mean heads,
#: a constant learning rate of 0.001, early stopping on held-out molecules, and the observed
#: library in the likelihood (the library subnetwork is fitted beside it on detached latents),
#: which keeps sequencing depth out of the latents: k-means ARI on the benchmark simulation
#: 0.31 -> 0.98 at the same held-out loss. The study: ``benchmarks/defaults_study.py``.
DEFAULT_MODULE_CHANGES: MappingProxyType = MappingProxyType(
    {
        "likelihood": "poisson",
        "encoder_sizes": (512, 128, 64),
        "norm_order": "bn_act",
        "input_transform": "log1p_norm",
        # counts scaled to the training cells' median total, not to 10,000 (scanpy's
        # normalize_total default): on shallow panels 10,000 multiplies each count by 20-150,
        # so one molecule more or less moves the input by several units. Held-out Poisson
        # against the 10,000 target, same seeds (benchmarks/grid.py 3 seeds; docs/benchmarks/
        # grid.md, "The encoder's input"; benchmarks/integration.py 5-10 seeds): pbmc3k-500
        # -1.1%, immune559-all -0.13%, brain10k-500 -0.18%, hgmm1k-2000 +0.3% (the one loss,
        # ZIPO still first there); the four 1,000-gene sets of several samples -1.3 to -1.9%
        "input_target_sum": "median",
        "input_dropout": 0.1,
        "latent_noise": 0.3,
        "data_init": True,
        "library_source": "observed",
        # several samples: the batch to the encoder too, and an MMD penalty between the
        # batches' latents, so that the latents keep no batch and transform_batch removes it
        # (benchmarks/integration.py, docs/samples.md: without the batch in the encoder
        # transform_batch left more of the distortion; the adversarial classifier mixed less).
        # The weight: MMD matches whole distributions, so where samples differ in cell-type
        # composition a strong penalty pulls unlike cells together. 3 seeds, weight 100 -> 10
        # (with the training defaults of the time: separate validation cells):
        # two real 10x studies k-means ARI 0.27 -> 0.68 (scVI 0.67), pbmc3k split 0.60 -> 0.71
        # and held-out Poisson vs no batch handling +3.8% -> -1.7%; the samples stay mixed
        # (same-sample share 0.49-0.50 on the random splits; scVI 0.52-0.60)
        # Where the samples hold cell types in different shares, an MMD with every cell alike
        # pulls one sample's surplus type onto the other's (two real 10x studies: B's
        # macrophages onto A's T cells, Leiden ARI 0.528 against scVI's 0.576, 5 seeds).
        # Weighing each cell by its mutual nearest neighbours in the other sample gives both
        # sides the same composition and a type one sample lacks no weight (ARI 0.685 at
        # weight 10); that weighted MMD pulls the paired cells harder, so the weight 10 -> 5:
        # held-out Poisson vs no batch handling on hgmm1k (10 seeds) +0.54% -> +0.09%, two10x
        # +0.29% -> +0.11%, at Leiden ARI 0.818 (hgmm1k), 0.862 (pbmc3k), 0.691 (two10x)
        # against scVI's 0.810, 0.822, 0.576 (benchmarks/integration.py, docs/samples.md)
        "encode_covariates": True,
        "batch_mmd": 5.0,
        "batch_mmd_weights": "mnn",
    }
)
DEFAULT_TRAIN_CHANGES: MappingProxyType = MappingProxyType(
    {
        # a cap, not a length: early stopping on held-out molecules ends training (pbmc3k ~60
        # epochs); small data sets (immune559: 2 steps per epoch) hit the paper's 300
        "max_epochs": 1000,
        # validation on 10% of every cell's molecules, held out from training for good
        # (molecular cross-validation of the cells the model is trained on, which is what a
        # denoiser is asked to do), and so every cell trains: validation cells cannot show when
        # the model starts to fit the noise of the training cells (immune559, 559 cells: the
        # training cells' held-out molecules were best near epoch 183 while the validation
        # cells' loss fell until 368). The weights returned are averaged over about the last 20
        # epochs' steps; stopping watches the raw weights, since stopping on the average ran
        # training longer and lost on few cells (immune559 seed 0 vs scVI Poisson: raw -0.17%,
        # average +0.31%; docs/benchmarks/grid.md, "Stopping on every cell's molecules")
        "validation": "mcv",
        "train_size": 1.0,
        "ema_epochs": 20.0,
        "ema_monitor": "raw",
        "lr": 0.001,
        "lr_floor": 0.001,
        # early stopping waits `early_stopping_patience` epochs past the best held-out loss; on
        # data that overfit within a few epochs (few genes, many cells) those epochs cost
        # held-out likelihood, so the weights of the best epoch are restored at the end
        "restore_best": True,
        # stopping watches the held-out counts' NLL alone, with no plateau cuts of the learning
        # rate and a patience of 100 epochs or 4,000 optimiser steps, whichever is fewer. The
        # whole loss also holds the library subnetwork's NLL of each cell's total, which plays
        # no part in the denoised output and falls slowly for hundreds of epochs (hgmm1k: 465
        # -> 170 per cell while the counts' NLL went 287 -> 276), so it decided when training
        # stopped; on the counts' NLL alone the plateau schedule cut the rate as soon as the
        # NLL levelled off (hgmm1k 1.0% worse), and 30 epochs stopped too soon. Held-out
        # Poisson against the loss-watching default of the time, 3 seeds (benchmarks/grid.py;
        # docs/benchmarks/grid.md, "What stopping watches"): pbmc3k 500 HVGs -0.67%, hgmm1k
        # -0.35%, 2,000 HVGs and quarter depth -0.25%, immune559 all genes -0.18%, simulator
        # -0.10%, brain10k 500 genes -0.06%, pbmc3k all genes (seed 0) -0.1%; it trains
        # 1.1-1.9x the epochs. The step bound keeps many cells from paying 100 long epochs (it
        # binds above ~10,000 cells, where 100 epochs exceed 4,000 steps of 256 cells: no grid
        # point reaches it)
        "stopping_metric": "nll",
        "lr_factor": 1.0,
        "early_stopping_patience": 100,
        "early_stopping_steps": 4000,
        # validation scores every cell twice (the raw and the averaged weights), about 40% of
        # an epoch's time whatever the number of cells; it runs after about 50 optimiser steps
        # instead of every epoch (every 5 epochs of 1,000-3,000 cells, 4-11 steps each; every
        # epoch from about 12,000 cells). Validation draws no random numbers, so the weights
        # train the same; only the epochs that stopping and restoring can pick are fewer.
        # Held-out Poisson against validating every epoch, 3 seeds: docs/benchmarks/grid.md,
        # "Validating every few epochs"
        "validation_steps": 50,
        # each step encodes 70% of every cell's molecules and is scored on the other 30%
        # (molecular cross-validation as the training loss; the model cannot learn to copy the
        # molecules it is scored on). Held-out Poisson, one seed (benchmarks/grid.py,
        # run_benchmark.py): pbmc3k 500 HVGs -2.2%, 2,000 HVGs -1.6%, top 2,000 -0.5%, hgmm1k
        # 2,000 HVGs -0.5%, quarter depth -0.1%, simulator -0.2% (MSE to the truth -23%);
        # immune559 with all 9,810 genes +0.15%
        "train_split": 0.7,
    }
)

#: Training settings that ``ZIPO.train`` hands to the training plan
#: (:class:`~zipo_scvi._training.ZiPoTrainingPlan`); the others go to scvi's ``Trainer`` or to
#: ``train`` itself.
TRAIN_PLAN_KEYS: tuple[str, ...] = (
    "lr",
    "lr_decay",
    "lr_floor",
    "lr_patience",
    "lr_threshold",
    "lr_factor",
    "weight_decay",
    "validation",
    "train_split",
    "ema_decay",
    "ema_epochs",
    "ema_monitor",
    "stopping_metric",
)

PRESETS: MappingProxyType = MappingProxyType(
    {
        "paper": (PAPER_MODULE, PAPER_TRAIN),
        "default": (
            MappingProxyType({**PAPER_MODULE, **DEFAULT_MODULE_CHANGES}),
            MappingProxyType({**PAPER_TRAIN, **DEFAULT_TRAIN_CHANGES}),
        ),
    }
)

#: Encoder structures searched by the paper's optuna study (III-H), all with full residuals.
PAPER_ENCODER_STRUCTURES: tuple[tuple[int, ...], ...] = (
    (2048, 1024, 512, 256, 128),
    (1024, 512, 256, 128),
    (1024, 512, 256, 128, 64),
    (512, 256, 128),
    (512, 256, 128, 64),
)

#: The paper's search space (III-H): name -> ("categorical", choices) or ("loguniform", lo, hi).
PAPER_SEARCH_SPACE: MappingProxyType = MappingProxyType(
    {
        "encoder_sizes": ("categorical", PAPER_ENCODER_STRUCTURES),
        "alpha_z": ("loguniform", 0.01, 1.0),
        "alpha_w": ("loguniform", 0.01, 1.0),
    }
)

#: Paper II-H: error bars are lambda * SEM with lambda = Phi^-1(0.99) / sqrt(2).
ERROR_BAR_LAMBDA: float = 2.3263478740408408 / 2**0.5

#: Default pruning threshold (III-E).
PRUNE_DELTA: float = 1e-4

#: ``model.prune()``'s gradual magnitude pruning (Zhu & Gupta 2017): the share of first-layer
#: weights set to zero (``nonnegative``: the kept weights are held ``>= 0``), reached along a
#: cubic schedule over at least ``min_epochs`` epochs and ``min_steps`` optimiser steps, then
#: fine-tuned with the mask fixed until the held-out loss has not improved for ``patience``
#: epochs (the best epoch's weights are kept). ``modules``: the genes are first split into
#: that many co-expression clusters (spherical k-means on their correlations; 0: no clusters;
#: fewer where they would average under ``min_module_genes`` genes, so that a 2,000-gene panel
#: gets 40 and a few hundred genes one, which leaves plain magnitude pruning), and each neuron
#: keeps only the genes of the ``clusters_per_neuron`` clusters that carry most of its weight,
#: so that its gene module is co-expressed. Chosen by ``benchmarks/sparsity.py`` (pbmc3k, all
#: 16,436 genes, one seed: one cluster per neuron cost +0.63% held-out Poisson, two -0.02%,
#: with 91% and 85% of the modules' top-10 genes co-expressed; without clusters 45%).
PRUNE_SCHEDULE: MappingProxyType = MappingProxyType(
    {
        "sparsity": 0.98,
        "nonnegative": True,
        "modules": 128,
        "min_module_genes": 50,
        "clusters_per_neuron": 2,
        "min_epochs": 10,
        "min_steps": 100,
        "n_updates": 20,
        "patience": 10,
    }
)

#: Fraction of molecules kept for the model's input in held-out-molecule validation.
MOLECULE_SPLIT: float = 0.9

#: Objectives of the hyperparameter search (``zipo_scvi.tune`` and ``zipo tune``), the default
#: first: ``"mcv"``, molecular cross-validation (held-out molecules of every cell), which
#: followed the true error better than the paper's ``"validation_nll"`` (validation cells on
#: their own counts) in ``benchmarks/tune_objectives.py`` (docs/benchmarks/tune_objectives.md).
TUNE_OBJECTIVES: tuple[str, ...] = ("mcv", "validation_nll")
TUNE_OBJECTIVE: str = TUNE_OBJECTIVES[0]


def preset(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the module and training settings of a preset.

    Parameters
    ----------
    name
        ``"default"`` (the project's, chosen by the benchmarks) or ``"paper"`` (the paper's
        exact configuration).

    Returns
    -------
    Two new dictionaries: module settings and training settings.

    Examples
    --------
    >>> module_kwargs, train_kwargs = preset("paper")
    >>> module_kwargs["encoder_sizes"]
    (2048, 1024, 512, 256, 128)
    """
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
    module, train = PRESETS[name]
    return dict(module), dict(train)
