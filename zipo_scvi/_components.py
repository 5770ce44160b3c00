"""ZiPo's network blocks: encoder with residuals, library-size subnetwork, decoder heads.

Nothing here knows about AnnData or the loss; variants (activations, input transforms) are
looked up by name from tables.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "relu": nn.ReLU,
}

NORM_ORDERS = ("act_bn", "bn_act")

#: Bounds of the NB inverse dispersion's log, DCA's [1e-4, 1e4]: beyond them theta overflows
#: float32 in lgamma(x + theta) - lgamma(theta) (the paper preset's ZINB hit log theta = 100).
LOG_THETA_RANGE = (-9.21, 9.21)
RESIDUALS = ("full", "none")


def _lookup(table: dict | tuple, name: str, what: str):
    if name not in table:
        raise ValueError(f"Unknown {what} {name!r}; choose one of {sorted(table)}.")
    return table[name] if isinstance(table, dict) else name


def dense_input(x: torch.Tensor) -> torch.Tensor:
    """Return a strided tensor, densifying a sparse minibatch (and only a minibatch)."""
    return x.to_dense() if x.layout != torch.strided else x


def _map_values(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply an elementwise ``fn`` (with ``fn(0) = 0``) to a dense or sparse CSR tensor; a CSR
    tensor keeps its layout and only its stored values are touched.
    """
    if x.layout == torch.sparse_csr:
        return torch.sparse_csr_tensor(x.crow_indices(), x.col_indices(), fn(x.values()), x.shape)
    return fn(x)


def drop_input(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout of the encoder's input (which needs no gradient).

    A uniform draw compared with ``p`` instead of torch's Bernoulli sampler (less than half
    the time on CPU); a sparse CSR minibatch keeps its layout, only its stored values are
    dropped (dropping a zero changes nothing).
    """
    if p <= 0:
        return x
    if p >= 1:
        return torch.zeros_like(x)
    return _map_values(x, lambda v: v * (torch.rand_like(v) >= p) * (1.0 / (1.0 - p)))


def _log1p_sparse_aware(x: torch.Tensor) -> torch.Tensor:
    return _map_values(x, torch.log1p)


def _scale_rows(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    if x.layout == torch.sparse_csr:
        counts = x.crow_indices().diff()
        rows = torch.repeat_interleave(factor.reshape(-1), counts)
        return torch.sparse_csr_tensor(
            x.crow_indices(), x.col_indices(), x.values() * rows, x.shape
        )
    return x * factor


def _row_sums(x: torch.Tensor) -> torch.Tensor:
    if x.layout == torch.sparse_csr:
        counts = x.crow_indices().diff()
        rows = torch.repeat_interleave(torch.arange(x.shape[0], device=x.device), counts)
        out = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        return out.index_add_(0, rows, x.values()).unsqueeze(1)
    return x.sum(1, keepdim=True)


def _log1p_norm(x: torch.Tensor, target_sum: torch.Tensor | float = 1e4) -> torch.Tensor:
    """log1p of counts scaled to ``target_sum`` per cell (empty cells stay zero)."""
    total = _row_sums(x)
    factor = torch.where(total > 0, target_sum / total.clamp_min(1e-12), torch.zeros_like(total))
    return _log1p_sparse_aware(_scale_rows(x, factor))


#: Encoder input transforms: ``f(counts, target_sum)``; only ``log1p_norm`` reads the target.
INPUT_TRANSFORMS: dict[str, Callable[[torch.Tensor, torch.Tensor | float], torch.Tensor]] = {
    "none": lambda x, target_sum: x,
    "log1p": lambda x, target_sum: _log1p_sparse_aware(x),
    "log1p_norm": _log1p_norm,
}


class Block(nn.Sequential):
    """One encoder or decoder block: ``Linear -> activation -> BatchNorm`` (paper II-C).

    Parameters
    ----------
    n_in, n_out
        Layer sizes.
    activation
        Name from :data:`ACTIVATIONS`.
    batch_norm
        Whether to add a BatchNorm1d.
    norm_order
        ``"act_bn"`` (the paper's order) or ``"bn_act"`` (BatchNorm before the activation,
        which keeps sigmoid outputs bounded in eval mode).
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        activation: str = "sigmoid",
        batch_norm: bool = True,
        norm_order: str = "act_bn",
    ):
        super().__init__(
            nn.Linear(n_in, n_out), *_post_layers(n_out, activation, batch_norm, norm_order)
        )


def _post_layers(n: int, activation: str, batch_norm: bool, norm_order: str) -> list[nn.Module]:
    """The activation and BatchNorm that follow a linear layer, in the chosen order."""
    act = _lookup(ACTIVATIONS, activation, "activation")()
    _lookup(NORM_ORDERS, norm_order, "norm_order")
    if not batch_norm:
        return [act]
    bn = nn.BatchNorm1d(n)
    return [act, bn] if norm_order == "act_bn" else [bn, act]


class MaskedLinear(nn.Linear):
    """A linear layer whose weights can be pinned to zero by a mask; takes sparse CSR input.

    The mask (a buffer, saved with the model) is applied in every forward pass, so pruned
    weights stay zero in any later training.
    """

    def __init__(self, n_in: int, n_out: int):
        super().__init__(n_in, n_out)
        self.register_buffer("mask", None, persistent=True)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a saved model may carry a mask that this freshly built layer does not have yet
        key = prefix + "mask"
        if key in state_dict and self.mask is None:
            self.mask = torch.ones_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def effective_weight(self) -> torch.Tensor:
        """The weight with the pruning mask applied."""
        return self.weight if self.mask is None else self.weight * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.effective_weight()
        if x.layout != torch.strided:
            return torch.sparse.mm(x, weight.t()) + self.bias
        return nn.functional.linear(x, weight, self.bias)


class Encoder(nn.Module):
    """Deep encoder ``U = G_t(...G_1(x))`` with optional residuals to the latent layer.

    With ``residuals="full"`` each hidden layer's output is projected linearly to the latent
    size and added to the last block's output (paper III-A.3).

    Parameters
    ----------
    n_input
        Number of genes.
    sizes
        Layer sizes; the last is the number of latents.
    residuals
        ``"full"`` or ``"none"``.
    activation, batch_norm, norm_order
        See :class:`Block`.
    n_covariates
        Size of the known covariates (one-hot batch, ...) added to the first layer's
        pre-activation by their own linear map (scVI's ``encode_covariates``); 0: genes only.
    """

    def __init__(
        self,
        n_input: int,
        sizes: Sequence[int],
        residuals: str = "full",
        activation: str = "sigmoid",
        batch_norm: bool = True,
        norm_order: str = "act_bn",
        n_covariates: int = 0,
    ):
        super().__init__()
        if len(sizes) == 0:
            raise ValueError("encoder_sizes needs at least one layer (the latent layer).")
        _lookup(RESIDUALS, residuals, "residuals")
        sizes = [int(s) for s in sizes]
        self.first = MaskedLinear(n_input, sizes[0])
        # beside the gene weights, so that pruning and the first-layer penalty see genes only
        self.covariates = nn.Linear(n_covariates, sizes[0], bias=False) if n_covariates else None
        self.first_post = nn.Sequential(
            *_post_layers(sizes[0], activation, batch_norm, norm_order)
        )
        self.blocks = nn.ModuleList(
            Block(a, b, activation, batch_norm, norm_order) for a, b in itertools.pairwise(sizes)
        )
        n_latent = sizes[-1]
        hidden = sizes[:-1] if residuals == "full" else []
        self.residuals = nn.ModuleList(nn.Linear(s, n_latent) for s in hidden)

    def forward(self, x: torch.Tensor, covariates: torch.Tensor | None = None) -> torch.Tensor:
        """Encode a minibatch (dense or sparse CSR), with its covariates if any, into latents."""
        h = self.first(x)
        if self.covariates is not None and covariates is not None:
            h = h + self.covariates(covariates)
        h = self.first_post(h)
        outputs = [h]
        for block in self.blocks:
            h = block(h)
            outputs.append(h)
        u = outputs[-1]
        for proj, hidden in zip(self.residuals, outputs[:-1]):
            u = u + proj(hidden)
        return u


class LibraryNet(nn.Sequential):
    """Library-size subnetwork ``log l = lib_log(V)``: Linear-BN-act blocks, then Linear(1).

    Parameters
    ----------
    n_in
        Size of ``V`` (latents plus covariates).
    sizes
        Hidden sizes (paper II-G: 16 and 4).
    activation
        Name from :data:`ACTIVATIONS`.
    batch_norm
        Whether to use BatchNorm in the hidden layers.
    """

    def __init__(
        self, n_in: int, sizes: Sequence[int] = (16, 4), activation="sigmoid", batch_norm=True
    ):
        layers: list[nn.Module] = []
        for a, b in zip([n_in, *sizes], sizes):
            layers.append(nn.Linear(a, b))
            if batch_norm:
                layers.append(nn.BatchNorm1d(b))
            layers.append(_lookup(ACTIVATIONS, activation, "activation")())
        layers.append(nn.Linear(([n_in, *sizes])[-1], 1))
        super().__init__(*layers)


class Decoder(nn.Module):
    """Optional hidden blocks followed by the gene-sized heads of paper II-C.

    Heads: ``log mu = logSoftmax(Linear(V))``; ``logit z = Linear(V)`` (zero-inflated
    likelihoods); ``log theta = Linear(V)`` (NB likelihoods).

    Parameters
    ----------
    n_in
        Size of ``V``.
    n_output
        Number of genes.
    hidden_sizes
        Hidden decoder blocks (empty: the paper's linear decoder).
    zero_inflated, dispersion
        Which optional heads to build.
    activation, batch_norm, norm_order
        See :class:`Block`.
    """

    def __init__(
        self,
        n_in: int,
        n_output: int,
        hidden_sizes: Sequence[int] = (),
        zero_inflated: bool = True,
        dispersion: bool = False,
        activation: str = "sigmoid",
        batch_norm: bool = True,
        norm_order: str = "act_bn",
    ):
        super().__init__()
        sizes = [n_in, *[int(s) for s in hidden_sizes]]
        self.hidden = nn.Sequential(
            *(
                Block(a, b, activation, batch_norm, norm_order)
                for a, b in itertools.pairwise(sizes)
            )
        )
        self.mean = nn.Linear(sizes[-1], n_output)
        self.zero_inflation = nn.Linear(sizes[-1], n_output) if zero_inflated else None
        self.dispersion = nn.Linear(sizes[-1], n_output) if dispersion else None

    def forward(self, v: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """Return ``log_mu``, ``logit_z`` and ``log_theta`` (the latter two may be None)."""
        h = self.hidden(v)
        return {
            "log_mu": torch.log_softmax(self.mean(h), dim=-1),
            "logit_z": None if self.zero_inflation is None else self.zero_inflation(h),
            "log_theta": None
            if self.dispersion is None
            else self.dispersion(h).clamp(*LOG_THETA_RANGE),
        }
