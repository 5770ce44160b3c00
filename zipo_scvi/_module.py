"""ZiPoModule: the maths of ZiPo (inference -> generative -> loss); nothing about AnnData."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.module import Classifier
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn

from ._checks import check_settings
from ._components import (
    INPUT_TRANSFORMS,
    Decoder,
    Encoder,
    LibraryNet,
    _lookup,
    _row_sums,
    dense_input,
    drop_input,
)
from ._defaults import PAPER_MODULE
from ._distributions import get_likelihood, log_poisson

_P = PAPER_MODULE
LIBRARY_SOURCES = ("latent", "observed")


class _ScaleInvariantPenalty(torch.autograd.Function):
    """``mean_i(l1_i / l2_i)`` with a hand-written gradient: a few passes over the weights
    instead of autograd's dozen (the penalty covers the whole first layer every step).
    """

    @staticmethod
    def forward(ctx, weight: torch.Tensor) -> torch.Tensor:
        n_in = weight.shape[1]
        l1 = torch.linalg.vector_norm(weight, ord=1, dim=1) / n_in
        l2 = (torch.linalg.vector_norm(weight, ord=2, dim=1) / n_in**0.5).clamp_min(
            torch.finfo(weight.dtype).tiny
        )
        ctx.save_for_backward(weight, l1, l2)
        return (l1 / l2).mean()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        weight, l1, l2 = ctx.saved_tensors
        n_out, n_in = weight.shape
        # d(l1/l2)/dw = (sign(w) - (l1 / l2^2) w) / (n_in l2), averaged over the n_out neurons
        grad = torch.addcmul(torch.sign(weight), weight, (-l1 / l2 / l2).unsqueeze(1))
        return grad.mul_((grad_output / (n_out * n_in * l2)).unsqueeze(1))


def scale_invariant_penalty(weight: torch.Tensor) -> torch.Tensor:
    """Paper II-E: ``mean_i( mean_g |W_ig| / sqrt(mean_g W_ig^2) )`` over first-layer neurons i.

    Invariant to rescaling any neuron's weights, so BatchNorm cannot undo it.

    Examples
    --------
    >>> w = torch.tensor([[1.0, 0.0], [2.0, 2.0]])
    >>> round(float(scale_invariant_penalty(w)), 4)  # (0.5 / sqrt(0.5) + 1) / 2
    0.8536
    """
    return _ScaleInvariantPenalty.apply(weight)


def _covariate_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | None]:
    """The minibatch's covariates, by the argument names of inference and generative."""
    return {
        "batch_index": tensors.get(REGISTRY_KEYS.BATCH_KEY),
        "cat_covs": tensors.get(REGISTRY_KEYS.CAT_COVS_KEY),
        "cont_covs": tensors.get(REGISTRY_KEYS.CONT_COVS_KEY),
    }


#: Neighbours per cell among which :meth:`ZiPoModule.mmd_weights` looks for mutual pairs,
#: fastMNN's default, among the cells of :data:`MNN_POOL_SIZE` (the minibatch and the latest
#: latents of earlier ones).
MNN_NEIGHBOURS = 20
#: Latents (detached) of the latest minibatches that :meth:`ZiPoModule.mmd_weights` finds
#: mutual neighbours among: pairs found within one minibatch of 128 are too loose (a cell's 5
#: nearest of 64 reach into other cell types).
MNN_POOL_SIZE = 1024
MMD_WEIGHTS = ("uniform", "mnn")


def mutual_neighbours(d2: torch.Tensor, k: int) -> torch.Tensor:
    """Mutual ``k``-nearest-neighbour pairs between the rows and the columns of ``d2``.

    ``d2`` holds distances (squared or not) from each cell of one side (rows) to each of the
    other (columns); the result is ``True`` where each of the two is among the other's ``k``
    nearest of the other side (Haghverdi et al. 2018). Not differentiable: pairs are chosen,
    not scored.

    Examples
    --------
    >>> d2 = torch.tensor([[0.0, 5.0], [3.0, 2.0], [9.0, 9.5]])
    >>> mutual_neighbours(d2, 1)
    tensor([[ True, False],
            [False,  True],
            [False, False]])
    """
    d2 = d2.detach()
    k = min(k, *d2.shape)
    to_col = torch.zeros_like(d2, dtype=torch.bool)
    to_col.scatter_(1, d2.topk(k, dim=1, largest=False).indices, True)
    to_row = torch.zeros_like(d2, dtype=torch.bool)
    to_row.scatter_(0, d2.topk(k, dim=0, largest=False).indices, True)
    return to_col & to_row


def weighted_mmd(
    kernel: torch.Tensor, a: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor
) -> torch.Tensor:
    """Unbiased kernel MMD^2 between cells ``a`` (weights ``wa``) and ``~a`` (weights ``wb``).

    ``kernel`` is the cells' kernel matrix, ``a`` a boolean mask, ``wa`` and ``wb`` weights
    summing to 1 on each side. Within each side the kernel of a cell with itself is left out
    and the rest renormalised (``1 - sum w^2``); with equal weights this is Gretton et al.'s
    unbiased estimate. Each side needs its weight on at least two cells.

    Examples
    --------
    >>> kernel = torch.eye(4)  # four cells, each alike only itself
    >>> a = torch.tensor([True, True, False, False])
    >>> half = torch.full((2,), 0.5)
    >>> float(weighted_mmd(kernel, a, half, half))
    0.0
    """

    def within(block: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return (w @ block @ w - (w.pow(2) * block.diagonal()).sum()) / (1 - w.pow(2).sum())

    return (
        within(kernel[a][:, a], wa)
        + within(kernel[~a][:, ~a], wb)
        - 2 * (wa @ kernel[a][:, ~a] @ wb)
    )


class ZiPoModule(BaseModuleClass):
    """The ZiPo autoencoder of Sharifitabar et al. (paper II-C, II-D) as an scvi-tools module.

    Parameters
    ----------
    n_input
        Number of genes.
    n_batch
        Number of batches (one-hot covariate when > 1).
    n_cats_per_cov
        Number of categories of each extra categorical covariate.
    n_continuous_cov
        Number of continuous covariates.
    encoder_sizes
        Encoder layer sizes; the last is the number of latents.
    residuals
        ``"full"`` (from every encoder layer to the latent layer) or ``"none"``.
    activation
        ``"sigmoid"``, ``"gelu"`` or ``"relu"``.
    batch_norm
        Whether encoder, decoder and library blocks use BatchNorm.
    norm_order
        ``"act_bn"`` (paper) or ``"bn_act"``.
    input_transform
        Encoder input transform: ``"none"``, ``"log1p"`` or ``"log1p_norm"`` (log1p of counts
        scaled to ``input_target_sum`` per cell). The likelihood always sees raw counts.
    input_target_sum
        The cell total that ``"log1p_norm"`` scales counts to (a number > 0). Kept in the
        module's state (``input_target_sum`` buffer), so a saved model reads new data on the
        same scale; :class:`~zipo_scvi.ZIPO` resolves ``"median"`` from its training data.
    input_dropout
        Dropout on the encoder input while training (a denoising autoencoder).
    latent_noise
        While training, add Gaussian noise with this standard deviation, relative to each
        latent's minibatch standard deviation, to the latents (a stochastic bottleneck that
        keeps the decoder from reproducing counting noise; 0 disables it).
    decoder_sizes
        Hidden decoder blocks before the heads (empty: linear decoder).
    library_sizes
        Hidden sizes of the library-size subnetwork.
    library_source
        Library size in the likelihood: ``"latent"`` (paper: ``l = lib_log(V)``, so the
        latents must carry sequencing depth) or ``"observed"`` (each cell's total count, as
        scVI's ``use_observed_lib_size``; the library subnetwork is then fitted beside it on
        detached latents by the Poisson likelihood of the total, so depth stays out of the
        latents and ``library_size="latent"`` still works).
    likelihood
        ``"zip"``, ``"zinb"``, ``"poisson"`` or ``"nb"``: an entry of
        :data:`zipo_scvi._distributions.LIKELIHOODS`, kept as ``self.likelihood``; :meth:`loss`
        scores the counts with its ``log_prob_cells``.
    alpha_z, alpha_w, alpha_theta, alpha_library
        Loss weights of paper II-E and III-F, added in :meth:`loss`: zero-inflation
        ``E[z^2]``, the scale-invariant first-layer penalty (:func:`scale_invariant_penalty`),
        ``E[log(theta)^2]`` and ZINB/NB's library term.
    encode_covariates
        Give the covariates to the encoder as well (scVI's ``encode_covariates``), so that it
        can remove what the batch does to the counts before the latents.
    batch_mmd
        Weight of a kernel MMD penalty between the latents of each batch (and each level of
        every categorical covariate) and those of the other cells of the minibatch
        (:meth:`batch_mmd`): it pulls the samples' latent distributions together, so that the
        latents keep no batch and the batch-specific decoder weights carry the technical
        differences. 0 disables it (paper).
    batch_mmd_weights
        How :meth:`batch_mmd` weighs the cells: ``"uniform"``, every cell alike (the whole
        distributions are matched, so where samples hold different shares of cell types the
        surplus of one is pulled onto other types), or ``"mnn"``, each cell by its number of
        mutual nearest neighbours in the other sample (:meth:`mmd_weights`): a type one sample
        lacks weighs nothing, and the pairs give both sides the same composition.
    batch_adversary
        Weight ``kappa`` of an adversarial classifier on the latents, one per nuisance
        category (the batch and every categorical covariate): the classifier learns to
        predict the category from the latents, the encoder to fool it (the losses of scvi's
        :class:`~scvi.train.AdversarialTrainingPlan`, see :meth:`adversarial_losses`). 0
        disables it (paper and default: with two samples the encoder learns to swap them
        rather than mix them, see ``docs/samples.md``).

    Examples
    --------
    >>> import torch
    >>> module = ZiPoModule(50, encoder_sizes=(16, 4))
    >>> x = torch.poisson(torch.full((8, 50), 2.0))
    >>> out = module.generative(**module.inference(x))
    >>> out["log_mu"].exp().sum(1).allclose(torch.ones(8))
    True
    """

    def __init__(
        self,
        n_input: int,
        n_batch: int = 0,
        n_cats_per_cov: Sequence[int] | None = None,
        n_continuous_cov: int = 0,
        encoder_sizes: Sequence[int] = _P["encoder_sizes"],
        residuals: str = _P["residuals"],
        activation: str = _P["activation"],
        batch_norm: bool = _P["batch_norm"],
        norm_order: str = _P["norm_order"],
        input_transform: str = _P["input_transform"],
        input_target_sum: float = _P["input_target_sum"],
        input_dropout: float = _P["input_dropout"],
        latent_noise: float = _P["latent_noise"],
        decoder_sizes: Sequence[int] = _P["decoder_sizes"],
        library_sizes: Sequence[int] = _P["library_sizes"],
        library_source: str = _P["library_source"],
        likelihood: str = _P["likelihood"],
        alpha_z: float = _P["alpha_z"],
        alpha_w: float = _P["alpha_w"],
        alpha_theta: float = _P["alpha_theta"],
        alpha_library: float = _P["alpha_library"],
        encode_covariates: bool = _P["encode_covariates"],
        batch_mmd: float = _P["batch_mmd"],
        batch_mmd_weights: str = _P["batch_mmd_weights"],
        batch_adversary: float = _P["batch_adversary"],
    ):
        super().__init__()
        check_settings(
            {
                "encoder_sizes": encoder_sizes,
                "decoder_sizes": decoder_sizes,
                "library_sizes": library_sizes,
                "input_target_sum": input_target_sum,
                "input_dropout": input_dropout,
                "latent_noise": latent_noise,
                "alpha_z": alpha_z,
                "alpha_w": alpha_w,
                "alpha_theta": alpha_theta,
                "alpha_library": alpha_library,
                "batch_mmd": batch_mmd,
                "batch_adversary": batch_adversary,
            }
        )
        self.likelihood = get_likelihood(likelihood)
        self.transform = _lookup(INPUT_TRANSFORMS, input_transform, "input_transform")
        if isinstance(input_target_sum, str):
            raise ValueError(
                f"ZiPoModule needs input_target_sum as a number, not {input_target_sum!r}: "
                "ZIPO resolves 'median' from its training data before building the module."
            )
        self.register_buffer("input_target_sum", torch.tensor(float(input_target_sum)))
        self.library_source = _lookup(LIBRARY_SOURCES, library_source, "library_source")
        self.n_input = n_input
        self.n_batch = n_batch
        self.n_cats_per_cov = list(n_cats_per_cov or [])
        self.n_continuous_cov = n_continuous_cov
        self.alpha_z, self.alpha_w = alpha_z, alpha_w
        self.alpha_theta, self.alpha_library = alpha_theta, alpha_library
        self.n_latent = int(encoder_sizes[-1])
        n_cov = (n_batch if n_batch > 1 else 0) + sum(self.n_cats_per_cov) + n_continuous_cov
        self.n_covariates = n_cov

        self.input_dropout = nn.Dropout(input_dropout)
        self.latent_noise = latent_noise
        self.encode_covariates = bool(encode_covariates)
        self.encoder = Encoder(
            n_input,
            encoder_sizes,
            residuals,
            activation,
            batch_norm,
            norm_order,
            n_covariates=n_cov if self.encode_covariates else 0,
        )
        self.batch_mmd_weight = float(batch_mmd)
        self.batch_mmd_weights = _lookup(MMD_WEIGHTS, batch_mmd_weights, "batch_mmd_weights")
        # (latents, nuisance labels) of the latest training cells, for mmd_weights; not saved
        self.latent_pool: tuple[torch.Tensor, torch.Tensor] | None = None
        self.batch_adversary = float(batch_adversary)
        nuisance = [n_batch if n_batch > 1 else 0, *self.n_cats_per_cov]
        self.n_nuisance = sum(n > 1 for n in nuisance)
        # scvi's AdversarialTrainingPlan builds the same classifier (2 x 32 hidden, logits)
        self.adversaries = nn.ModuleList(
            Classifier(self.n_latent, n_hidden=32, n_labels=n, n_layers=2, logits=True)
            for n in (nuisance if self.batch_adversary > 0 else [])
            if n > 1
        )
        self.library = LibraryNet(self.n_latent + n_cov, library_sizes, activation, batch_norm)
        self.decoder = Decoder(
            self.n_latent + n_cov,
            n_input,
            decoder_sizes,
            zero_inflated=self.likelihood.zero_inflated,
            dispersion=self.likelihood.dispersion,
            activation=activation,
            batch_norm=batch_norm,
            norm_order=norm_order,
        )

    # ------------------------------------------------------------------ scvi plumbing
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # models saved before the target was a setting scaled their input to 1e4 per cell
        state_dict.setdefault(prefix + "input_target_sum", torch.tensor(1e4))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def init_from_data(
        self,
        mean_log_library: float,
        gene_log_freq: torch.Tensor,
        batch_log_freq: torch.Tensor | None = None,
    ) -> None:
        """Start the library and mean heads at the data's average (a data-dependent init).

        Sets the library network's output bias to the mean log library size and the mean
        head's bias to the log of each gene's share of all counts, so training starts from the
        average profile instead of spending its first epochs climbing to it.

        With several batches and a linear decoder, ``batch_log_freq`` (batches x genes: the
        log of each gene's share of the counts of each batch) starts each batch's decoder
        weights at its profile's departure from the average. A gene-wise difference between
        samples is then in the decoder from the first step: with Adam's steps of about ``lr``
        (0.001) per weight, climbing there takes a few thousand steps, during which the
        encoder learns to carry the sample in the latents, against what ``batch_mmd`` asks.
        """
        self.library[-1].bias.fill_(float(mean_log_library))
        self.decoder.mean.bias.copy_(gene_log_freq.to(self.decoder.mean.bias))
        if batch_log_freq is not None and self.n_batch > 1 and not len(self.decoder.hidden):
            offsets = batch_log_freq.to(self.decoder.mean.weight) - self.decoder.mean.bias
            columns = slice(self.n_latent, self.n_latent + self.n_batch)
            self.decoder.mean.weight[:, columns] = offsets.T

    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **kwargs) -> dict:
        inputs = {"x": tensors[REGISTRY_KEYS.X_KEY]}
        if self.encode_covariates:
            inputs |= _covariate_tensors(tensors)
        return inputs

    def _get_generative_input(
        self, tensors: dict[str, torch.Tensor], inference_outputs: dict, **kwargs
    ) -> dict:
        observed = None
        if self.library_source == "observed":  # only then does the likelihood use it
            observed = torch.log(_row_sums(tensors[REGISTRY_KEYS.X_KEY]).clamp_min(1.0))
        return {
            "z": inference_outputs["z"],
            "log_observed_library": observed,
            **_covariate_tensors(tensors),
        }

    # ------------------------------------------------------------------ model
    @auto_move_data
    def inference(
        self,
        x: torch.Tensor,
        n_samples: int = 1,
        batch_index: torch.Tensor | None = None,
        cat_covs: torch.Tensor | None = None,
        cont_covs: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Encode counts (and, with ``encode_covariates``, the covariates) into the latents
        ``U`` (returned as ``"z"``, deterministic).
        """
        h = self.encoder_input(x)
        if self.training:
            h = drop_input(h, self.input_dropout.p)
        covariates = None
        if self.encode_covariates and self.n_covariates:
            covariates = self.covariates(x.shape[0], batch_index, cat_covs, cont_covs)
        u = self.encoder(h, covariates)
        if self.training and self.latent_noise > 0 and u.shape[0] > 1:
            u = u + self.latent_noise * u.detach().std(dim=0) * torch.randn_like(u)
        if n_samples > 1:
            u = u.unsqueeze(0).expand(n_samples, *u.shape)
        return {"z": u}

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """The counts as the encoder reads them (``input_transform``, before dropout)."""
        return self.transform(x, self.input_target_sum)

    def covariates(
        self,
        n: int,
        batch_index: torch.Tensor | None = None,
        cat_covs: torch.Tensor | None = None,
        cont_covs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Known covariates ``U'``: one-hot batch and categories, then continuous values."""
        parts = []
        if self.n_batch > 1 and batch_index is not None:
            parts.append(F.one_hot(batch_index.reshape(-1).long(), self.n_batch).float())
        if cat_covs is not None:
            for col, n_cat in zip(cat_covs.split(1, dim=1), self.n_cats_per_cov):
                parts.append(F.one_hot(col.reshape(-1).long(), n_cat).float())
        if cont_covs is not None and self.n_continuous_cov > 0:
            parts.append(cont_covs.float())
        if not parts:
            return torch.zeros(n, 0, device=self.device)
        return torch.cat(parts, dim=1)

    @auto_move_data
    def generative(
        self,
        z: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        cat_covs: torch.Tensor | None = None,
        cont_covs: torch.Tensor | None = None,
        transform_batch: int | None = None,
        log_observed_library: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor | None]:
        """Decode ``V = concat(U, U')`` into library size, mean, zero inflation, dispersion.

        ``log_library`` is the library subnetwork's prediction; ``log_rate`` is the rate the
        likelihood uses (with the observed library when ``library_source="observed"`` and
        ``log_observed_library`` is given).
        """
        if transform_batch is not None and batch_index is not None:
            batch_index = torch.full_like(batch_index, int(transform_batch))
        v = torch.cat([z, self.covariates(z.shape[0], batch_index, cat_covs, cont_covs)], dim=1)
        heads = self.decoder(v)
        observed = self.library_source == "observed"
        log_library = self.library(v.detach() if observed else v)
        heads["log_library"] = log_library
        if observed and log_observed_library is not None:
            log_library = log_observed_library.reshape(-1, 1).to(log_library)
        heads["log_rate_library"] = log_library  # the library the likelihood uses
        heads["log_rate"] = log_library + heads["log_mu"]
        heads["px"] = heads["log_mu"].exp()
        return heads

    def nuisance_labels(self, tensors: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The categories the adversaries predict: the batch, then each categorical covariate."""
        labels = []
        if self.n_batch > 1:
            labels.append(tensors[REGISTRY_KEYS.BATCH_KEY])
        if self.n_cats_per_cov:
            cats = tensors[REGISTRY_KEYS.CAT_COVS_KEY].split(1, dim=1)
            labels += [c for c, n in zip(cats, self.n_cats_per_cov) if n > 1]
        return [label.reshape(-1).long() for label in labels]

    def nuisance_levels(
        self, tensors: dict[str, torch.Tensor]
    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """``(category, level, mask)`` of the minibatch's cells at each nuisance level.

        Over the categories of :meth:`nuisance_labels` (``category`` indexes them), the levels
        where those cells and the others number at least 2 each (a within-side mean needs
        two): the two sides that :meth:`batch_mmd` compares.
        """
        for category, label in enumerate(self.nuisance_labels(tensors)):
            for level in label.unique():
                a = label == level
                if int(a.sum()) >= 2 and int((~a).sum()) >= 2:
                    yield category, level, a

    def adversarial_losses(
        self, z: torch.Tensor, tensors: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two losses of scvi's ``AdversarialTrainingPlan``, summed over the adversaries.

        ``fool``: cross-entropy of each classifier's prediction from ``z`` against a uniform
        target over the *other* categories; its gradient reaches the encoder only (the
        classifier's weights are detached). ``classify``: cross-entropy against the true
        category on detached latents; its gradient reaches the classifiers only. scvi steps two
        optimisers on them in turn; their sum here gives the same gradients in one step.
        """
        fool = classify = z.new_zeros(())
        for adversary, label in zip(self.adversaries, self.nuisance_labels(tensors)):
            n = adversary.classifier[-1].out_features
            one_hot = F.one_hot(label, n).float()
            frozen = {name: p.detach() for name, p in adversary.named_parameters()}
            logits = torch.func.functional_call(adversary, frozen, (z,))
            fool = fool + F.cross_entropy(logits, (1.0 - one_hot) / (n - 1))
            classify = classify + F.cross_entropy(adversary(z.detach()), label)
        return fool, classify

    def batch_mmd(self, z: torch.Tensor, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Kernel MMD^2 between the latents of each nuisance level and of the other cells.

        Summed over the nuisance categories (:meth:`nuisance_labels`) and their levels present
        in the minibatch with at least 2 cells on each side; Gaussian kernels at 5 bandwidths
        (0.25 to 4 times the minibatch's median squared distance, a detached scale), the
        unbiased estimate (:func:`weighted_mmd`; Gretton et al. 2012: within-sample means
        leave out each cell's kernel with itself). The biased estimate (trVAE's) keeps those
        constant terms, which weighs within-sample pairs less than cross pairs: its gradient,
        even between samples of one distribution, pulls all latents together, a pull that
        grows with the weight. The cells weigh alike, or by their mutual nearest neighbours
        (``batch_mmd_weights="mnn"``, :meth:`mmd_weights`); a level whose cells here have no
        such neighbour is skipped.
        """
        total = z.new_zeros(())
        d2 = torch.cdist(z, z).pow(2)
        scale = d2.detach().median().clamp_min(1e-6)
        kernel = sum(torch.exp(-d2 / (scale * f)) for f in (0.25, 0.5, 1.0, 2.0, 4.0))
        counts = self.mmd_weights(z, tensors) if self.batch_mmd_weights == "mnn" else None
        for category, level, a in self.nuisance_levels(tensors):
            if counts is None:
                wa, wb = (z.new_full((int(m.sum()),), 1.0) for m in (a, ~a))
            else:
                w = counts(category, level)
                wa, wb = w[a], w[~a]
            # each side needs its weight on two cells or more (a within-side mean)
            if (wa > 0).sum() < 2 or (wb > 0).sum() < 2:
                continue
            total = total + weighted_mmd(kernel, a, wa / wa.sum(), wb / wb.sum())
        return total

    @torch.no_grad()
    def mmd_weights(self, z: torch.Tensor, tensors: dict[str, torch.Tensor]):
        """Each minibatch cell's number of mutual nearest neighbours in the other sample.

        The neighbours are sought among the minibatch and the latest :data:`MNN_POOL_SIZE`
        training latents of earlier minibatches (kept in ``latent_pool``, detached, updated
        here), at :data:`MNN_NEIGHBOURS` per cell (fastMNN's mutual nearest neighbours,
        Haghverdi et al. 2018): a type that one sample holds and the other lacks finds no
        mutual neighbour and weighs nothing in :meth:`batch_mmd`, and since every pair adds
        one cell to each side, the two sides' weights hold the cell types in the same shares.

        Returns a function of ``(category, level)`` (as :meth:`nuisance_levels` yields them)
        giving the counts of the minibatch's cells, those of ``level`` counted against the
        other levels of ``category``.
        """
        labels = torch.stack(self.nuisance_labels(tensors), dim=1)
        pool_z, pool_labels = z.detach(), labels
        if self.latent_pool is not None and self.latent_pool[1].shape[1] == labels.shape[1]:
            old_z, old_labels = (t.to(z.device) for t in self.latent_pool)
            pool_z, pool_labels = torch.cat([pool_z, old_z]), torch.cat([labels, old_labels])
        self.latent_pool = (pool_z[:MNN_POOL_SIZE], pool_labels[:MNN_POOL_SIZE])
        n, done = z.shape[0], {}

        @torch.no_grad()  # called after this method returns: its own no-grad
        def counts(category: int, level: torch.Tensor) -> torch.Tensor:
            column = pool_labels[:, category]
            # with two levels, each against the other is one pairing: found once
            key = (category, None if column.unique().numel() == 2 else int(level))
            if key not in done:
                a = column == level
                d = torch.cdist(pool_z[a], pool_z[~a])
                pairs = mutual_neighbours(d, MNN_NEIGHBOURS)
                out = z.new_zeros(pool_z.shape[0])
                out[a], out[~a] = pairs.sum(1).to(out), pairs.sum(0).to(out)
                done[key] = out[:n]
            return done[key]

        return counts

    def log_likelihood(self, x: torch.Tensor, generative_outputs: dict) -> torch.Tensor:
        """Elementwise log-likelihood of counts ``x`` under the decoded distribution."""
        g = generative_outputs
        return self.likelihood.log_prob(x, g["log_rate"], g["logit_z"], g["log_theta"])

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict,
        generative_outputs: dict,
        target: torch.Tensor | None = None,
        rate_scale: float = 1.0,
        **kwargs,
    ) -> LossOutput:
        """Paper II-E loss; the reconstruction loss is the per-cell NLL.

        Parameters
        ----------
        tensors
            The minibatch.
        inference_outputs, generative_outputs
            Outputs of :meth:`inference` and :meth:`generative`.
        target
            Counts to score instead of the input (held-out molecules); default: the input.
        rate_scale
            Factor applied to the rates before scoring ``target`` (its expected share of the
            molecules relative to the input).
        """
        x = dense_input(tensors[REGISTRY_KEYS.X_KEY] if target is None else target)
        g = dict(generative_outputs)
        if rate_scale != 1.0:
            g["log_rate"] = g["log_rate"] + math.log(rate_scale)
            g["log_rate_library"] = g["log_rate_library"] + math.log(rate_scale)
        nll_cell = -self.likelihood.log_prob_cells(x, g)
        loss = nll_cell.mean()
        with torch.no_grad():  # a reported metric: no graph, nothing kept for backward
            mse = torch.sub(g["log_rate"].exp(), x).square_().mean()
        extra = {"nll": nll_cell.mean().detach(), "mse": mse}
        if self.likelihood.zero_inflated:
            zero_prob = torch.sigmoid(g["logit_z"])
            loss = loss + self.alpha_z * zero_prob.pow(2).mean()
            extra["zero_prob"] = zero_prob.mean().detach()
        if self.alpha_w > 0:
            loss = loss + self.alpha_w * scale_invariant_penalty(
                self.encoder.first.effective_weight()
            )
        if self.library_source == "observed":
            # the library subnetwork (on detached latents): Poisson likelihood of the total
            total = x.sum(dim=1)
            log_l = g["log_library"].squeeze(1) + math.log(rate_scale)
            library_nll = -log_poisson(total, log_l)
            loss = loss + library_nll.mean()
            extra["library_nll"] = library_nll.mean().detach()
        if self.likelihood.dispersion:
            loss = loss + self.alpha_theta * g["log_theta"].pow(2).mean()
        if self.training and self.batch_mmd_weight > 0 and self.n_nuisance:
            mmd = self.batch_mmd(inference_outputs["z"], tensors)
            loss = loss + self.batch_mmd_weight * mmd
            extra["batch_mmd"] = mmd.detach()
        if self.training and len(self.adversaries):
            fool, classify = self.adversarial_losses(inference_outputs["z"], tensors)
            loss = loss + self.batch_adversary * (fool + classify)
            extra["batch_classifier_loss"] = classify.detach()
        if self.likelihood.dispersion and self.library_source == "latent":
            library_gap = g["log_library"].exp().squeeze(1) * rate_scale - x.sum(dim=1)
            loss = loss + self.alpha_library * library_gap.pow(2).mean()
        return LossOutput(
            loss=loss,
            reconstruction_loss=nll_cell,
            kl_local=torch.zeros_like(nll_cell),
            extra_metrics=extra,
        )

    @torch.inference_mode()
    def sample(self, tensors: dict[str, torch.Tensor], n_samples: int = 1) -> torch.Tensor:
        """Draw counts from the fitted distribution, shape ``(n_samples, cells, genes)``."""
        _, g = self.forward(tensors, compute_loss=False)
        return self.likelihood.sample(g, n_samples)
