"""Pure log-likelihoods of ZiPo's count distributions, written with log-sigmoid only.

All functions take the log of the mean, ``log_rate = log(l * mu)``, rather than the mean, so that
tiny and huge rates stay finite without epsilon offsets (paper II-D). A likelihood is chosen by
name from :data:`LIKELIHOODS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def log_poisson(x: torch.Tensor, log_rate: torch.Tensor) -> torch.Tensor:
    """Log pmf of the Poisson distribution.

    Parameters
    ----------
    x
        Observed counts (non-negative, integer valued, any float dtype).
    log_rate
        Log of the Poisson mean ``m``.

    Returns
    -------
    ``x log m - m - log x!``, elementwise.

    Examples
    --------
    >>> import torch
    >>> log_poisson(torch.tensor([0.0, 2.0]), torch.tensor([0.0, 0.0]))
    tensor([-1.0000, -1.6931])
    """
    return x * log_rate - torch.exp(log_rate) - torch.lgamma(x + 1.0)


def log_factorial_sum(x: torch.Tensor) -> torch.Tensor:
    """``sum_g log x_g!`` per cell (row) of counts ``x``.

    On the CPU only the entries above 1 are passed to ``lgamma`` (``0! = 1! = 1``): in count
    data they are a few per cent of the entries, and ``lgamma`` over every entry of a
    minibatch cost about a tenth of a training step there. On accelerators every entry is
    evaluated (the selection would wait for the device).

    Examples
    --------
    >>> import torch
    >>> log_factorial_sum(torch.tensor([[0.0, 1.0, 3.0], [2.0, 0.0, 0.0]]))
    tensor([1.7918, 0.6931])
    """
    if x.device.type != "cpu":
        return torch.lgamma(x + 1.0).sum(dim=-1)
    rows, cols = (x > 1.0).nonzero(as_tuple=True)
    terms = torch.lgamma(x[rows, cols] + 1.0)
    return torch.zeros(x.shape[0], dtype=x.dtype).index_add_(0, rows, terms)


def log_poisson_cells(
    x: torch.Tensor, log_mu: torch.Tensor, log_library: torch.Tensor
) -> torch.Tensor:
    """Per-cell Poisson log-likelihood ``sum_g log Poisson(x_g; l mu_g)`` when ``sum_g mu_g = 1``.

    Because the shares ``mu`` sum to one, ``sum_g l mu_g = l`` and the sum collapses to
    ``sum_g x_g log mu_g + T log l - l - sum_g log x_g!`` (``T = sum_g x_g``): the same value
    and gradient as summing :func:`log_poisson` over genes, without an ``exp`` over every gene.

    Parameters
    ----------
    x
        Counts, cells x genes.
    log_mu
        Log shares (a log-softmax over genes), cells x genes.
    log_library
        Log library size ``log l``, one per cell (shape ``(cells,)`` or ``(cells, 1)``).

    Returns
    -------
    Log-likelihood per cell, shape ``(cells,)``.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[0.0, 2.0, 1.0]])
    >>> log_mu = torch.log_softmax(torch.tensor([[0.1, 0.5, -0.2]]), dim=1)
    >>> log_l = torch.tensor([1.3])
    >>> full = log_poisson(x, log_l[:, None] + log_mu).sum(1)
    >>> torch.allclose(log_poisson_cells(x, log_mu, log_l), full)
    True
    """
    log_library = log_library.reshape(-1)
    total = x.sum(dim=-1)
    return (
        (x * log_mu).sum(dim=-1)
        + total * log_library
        - torch.exp(log_library)
        - log_factorial_sum(x)
    )


def log_nb(x: torch.Tensor, log_rate: torch.Tensor, log_theta: torch.Tensor) -> torch.Tensor:
    """Log pmf of the negative binomial with mean ``m`` and inverse dispersion ``theta``.

    Parameters
    ----------
    x
        Observed counts.
    log_rate
        Log of the mean ``m``.
    log_theta
        Log of the inverse dispersion ``theta`` (variance ``m + m^2 / theta``).

    Returns
    -------
    The log pmf, elementwise.

    Examples
    --------
    >>> import torch
    >>> log_nb(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]))
    tensor([-0.6931])
    """
    theta = torch.exp(log_theta)
    log_theta_plus_m = torch.logaddexp(log_theta, log_rate)
    return (
        torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1.0)
        + theta * (log_theta - log_theta_plus_m)
        + x * (log_rate - log_theta_plus_m)
    )


def log_zero_inflated(
    x: torch.Tensor, logit_z: torch.Tensor, log_f: torch.Tensor, log_f0: torch.Tensor
) -> torch.Tensor:
    """Log-likelihood of a zero-inflated count distribution, paper II-D.

    ``log L = log sig(-r) + [x = 0] (r - log sig(r - f(0))) + [x > 0] f(x)`` with ``r = logit z``,
    which needs no epsilon: every term is a log-sigmoid or a log pmf.

    Parameters
    ----------
    x
        Observed counts.
    logit_z
        Logit of the zero-inflation probability ``z``.
    log_f
        Log pmf of the count distribution at ``x``.
    log_f0
        Log pmf of the count distribution at zero.

    Returns
    -------
    The zero-inflated log-likelihood, elementwise.
    """
    zero_case = logit_z - F.logsigmoid(logit_z - log_f0)
    return F.logsigmoid(-logit_z) + torch.where(x == 0, zero_case, log_f)


def log_zip(x: torch.Tensor, log_rate: torch.Tensor, logit_z: torch.Tensor) -> torch.Tensor:
    """Log pmf of the zero-inflated Poisson distribution (ZiPo's default likelihood).

    Parameters
    ----------
    x
        Observed counts.
    log_rate
        Log of the Poisson rate ``l * mu``.
    logit_z
        Logit of the zero-inflation probability.

    Returns
    -------
    The log pmf, elementwise.

    Examples
    --------
    >>> import torch
    >>> log_zip(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]))  # log(.5 + .5/e)
    tensor([-0.3799])
    """
    return log_zero_inflated(x, logit_z, log_poisson(x, log_rate), -torch.exp(log_rate))


def log_zinb(
    x: torch.Tensor, log_rate: torch.Tensor, logit_z: torch.Tensor, log_theta: torch.Tensor
) -> torch.Tensor:
    """Log pmf of the zero-inflated negative binomial distribution.

    Parameters
    ----------
    x
        Observed counts.
    log_rate
        Log of the NB mean ``l * mu``.
    logit_z
        Logit of the zero-inflation probability.
    log_theta
        Log of the NB inverse dispersion.

    Returns
    -------
    The log pmf, elementwise.
    """
    log_f0 = torch.exp(log_theta) * (log_theta - torch.logaddexp(log_theta, log_rate))
    return log_zero_inflated(x, logit_z, log_nb(x, log_rate, log_theta), log_f0)


#: :meth:`Likelihood.expected_log1p` sums exactly over counts below ``MAX_COUNT`` for means up
#: to ``EXACT_MEAN`` (a Poisson of mean 16 passes 64 with probability below 1e-12).
EXACT_MEAN = 16.0
MAX_COUNT = 64


@dataclass(frozen=True)
class Likelihood:
    """A count likelihood, as data: its log pmf, its heads, its mean, sampling, shortcuts.

    The methods take the decoded outputs of :meth:`ZiPoModule.generative
    <zipo_scvi.ZiPoModule.generative>` (``heads``): ``log_rate`` (``log(l mu)``), ``log_mu``
    (log shares, summing to one per cell), ``log_rate_library`` (the likelihood's ``log l``),
    ``logit_z`` and ``log_theta`` (``None`` where the likelihood has no such head).

    Attributes
    ----------
    name
        Short name (``"zip"``, ``"zinb"``, ``"poisson"``, ``"nb"``).
    zero_inflated
        Whether the model predicts a zero-inflation probability (head ``logit_z``).
    dispersion
        Whether the model predicts an NB dispersion (head ``log_theta``).
    log_prob
        ``log_prob(x, log_rate, logit_z, log_theta)``, elementwise; unused arguments are ignored.
    cell_shortcut
        ``cell_shortcut(x, log_mu, log_library)``: the per-cell sum of ``log_prob`` over genes in
        closed form (used when given; the Poisson's, :func:`log_poisson_cells`).
    """

    name: str
    zero_inflated: bool
    dispersion: bool
    log_prob: Callable[..., torch.Tensor]
    cell_shortcut: Callable[..., torch.Tensor] | None = None

    def log_prob_cells(self, x: torch.Tensor, heads: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Per-cell log-likelihood of counts ``x`` (summed over genes), shape ``(cells,)``."""
        if self.cell_shortcut is not None:
            return self.cell_shortcut(x, heads["log_mu"], heads["log_rate_library"])
        log_prob = self.log_prob(x, heads["log_rate"], heads["logit_z"], heads["log_theta"])
        return log_prob.sum(dim=1)

    def mean(self, heads: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The distribution's mean ``(1 - z) l mu`` (``l mu`` without zero inflation)."""
        rate = heads["log_rate"].exp()
        return rate * torch.sigmoid(-heads["logit_z"]) if self.zero_inflated else rate

    def expected_log1p(
        self, heads: Mapping[str, torch.Tensor], scale: torch.Tensor | float
    ) -> torch.Tensor:
        """``E[log1p(scale * Y)]`` for counts ``Y`` drawn from the distribution, elementwise.

        With ``scale = target_sum / N`` for a sample of ``N`` molecules this is the expected
        log-normalised expression (``log1p`` of counts per ``target_sum``) of such a sample:
        what log-normalised counts of that depth predict, sampling noise averaged out. It lies
        below ``log1p(scale * m)`` of the mean ``m`` (Jensen), most where ``m`` is small: a gene
        expected at 0.1 molecules is mostly a zero.

        Means up to :data:`EXACT_MEAN` are summed exactly over counts below
        :data:`MAX_COUNT` (the rest of the mass, under 1e-12 for the Poisson, counted at
        ``MAX_COUNT``); larger means take the second-order expansion
        ``log1p(s m) - s^2 Var(Y) / (2 (1 + s m)^2)``. For the Poisson (and ZIP) the relative
        error is under 1e-3 everywhere. For the NB (and ZINB) it is under 0.01 in log units
        where ``theta >= 5``, but up to about 0.1 where ``theta = 1`` and 0.2 where ``theta =
        0.3`` (the heavy tail beyond ``MAX_COUNT`` and the expansion's neglect of it). Zero
        inflation multiplies by ``1 - z``, since ``log1p(0) = 0``.

        Parameters
        ----------
        heads
            ``log_rate`` (log of the mean at the sample's depth), ``logit_z`` and ``log_theta``
            where the likelihood has them.
        scale
            ``s``: a number or a tensor broadcasting against ``log_rate`` (per cell: ``(cells,
            1)``).

        Returns
        -------
        Tensor of ``log_rate``'s shape.

        Examples
        --------
        >>> import torch
        >>> lik = get_likelihood("poisson")
        >>> rate = torch.tensor([[0.1, 50.0]])
        >>> lik.expected_log1p({"log_rate": rate.log()}, 1.0)  # vs log1p(rate): 0.0953, 3.93
        tensor([[0.0679, 3.9222]])
        """
        log_rate = heads["log_rate"]
        rate = log_rate.exp()
        scale = torch.as_tensor(scale, dtype=rate.dtype, device=rate.device)
        exact = rate <= EXACT_MEAN
        # a rate of 0 (log -inf) has expectation 0: floored where exp still underflows to ~0
        log_small = torch.where(exact, log_rate.clamp_min(-80.0), torch.zeros_like(log_rate))
        log_theta = heads.get("log_theta") if self.dispersion else None
        # the pmf by its recurrence in y (no lgamma or exp per count): Poisson
        # p(y) = p(y - 1) m / y; NB p(y) = p(y - 1) (y - 1 + theta) / y * m / (m + theta)
        small = log_small.exp()
        if log_theta is None:
            pmf = torch.exp(-small)
        else:
            theta = log_theta.exp()
            pmf = torch.exp(-theta * torch.log1p(small / theta))
            odds = small / (small + theta)
        mass = pmf
        total = torch.zeros_like(rate)
        for y in range(1, MAX_COUNT):
            if log_theta is None:
                pmf = pmf * (small / y)
            else:
                pmf = pmf * ((y - 1 + theta) / y) * odds
            mass = mass + pmf
            total = total + pmf * torch.log1p(scale * y)
        total = total + (1.0 - mass).clamp_min(0.0) * torch.log1p(scale * MAX_COUNT)
        var = rate if log_theta is None else rate + rate.square() / theta
        spread = scale * rate
        expansion = torch.log1p(spread) - scale.square() * var / (2.0 * (1.0 + spread).square())
        out = torch.where(exact, total, expansion.clamp_min(0.0))
        if self.zero_inflated:
            out = out * torch.sigmoid(-heads["logit_z"])
        return out

    def sample(self, heads: Mapping[str, torch.Tensor], n_samples: int = 1) -> torch.Tensor:
        """Draw counts, shape ``(n_samples, cells, genes)``: Poisson of a rate that is gamma
        distributed for NB likelihoods, zeroed with probability ``z`` for zero-inflated ones.
        """
        rate = heads["log_rate"].exp().expand(n_samples, *heads["log_rate"].shape)
        if self.dispersion:
            theta = heads["log_theta"].exp().expand_as(rate)
            rate = torch.distributions.Gamma(theta, theta / rate.clamp_min(1e-30)).sample()
        counts = torch.poisson(rate)
        if self.zero_inflated:
            zero = torch.bernoulli(torch.sigmoid(heads["logit_z"]).expand_as(counts))
            counts = counts * (1 - zero)
        return counts


LIKELIHOODS: dict[str, Likelihood] = {
    "zip": Likelihood("zip", True, False, lambda x, m, r, t: log_zip(x, m, r)),
    "zinb": Likelihood("zinb", True, True, log_zinb),
    "poisson": Likelihood(
        "poisson", False, False, lambda x, m, r, t: log_poisson(x, m), log_poisson_cells
    ),
    "nb": Likelihood("nb", False, True, lambda x, m, r, t: log_nb(x, m, t)),
}


def expected_log_normalized(
    likelihood: Likelihood,
    decoded: Mapping[str, torch.Tensor],
    depth: torch.Tensor,
    target_sum: float,
) -> torch.Tensor:
    """Expected log-normalised expression ``E[log1p(target_sum * Y / N)]`` of a sample ``Y`` of
    ``N = depth`` molecules from each cell, ``Y`` drawn from the model's likelihood with the
    rates ``N mu`` (and the cell's zero inflation and dispersion).

    This is the denoised counterpart of log-normalised counts (``log1p`` of counts per
    ``target_sum``, scanpy's ``normalize_total`` + ``log1p``): the best prediction, in squared
    error, of the log-normalised counts of a sample of that depth. ``log1p`` of the denoised
    rates is not: it overstates genes expected at under one molecule, which such a sample
    mostly shows as zeros.

    Parameters
    ----------
    likelihood
        The model's likelihood.
    decoded
        Decoded outputs (``log_mu``, and ``logit_z`` / ``log_theta`` where it has them).
    depth
        ``N`` per cell, shape ``(cells, 1)``; cells with ``N = 0`` get zeros.
    target_sum
        Counts per cell after normalisation.

    Examples
    --------
    >>> d = {"log_mu": torch.log(torch.tensor([[0.001, 0.999]]))}
    >>> expected_log_normalized(get_likelihood("poisson"), d, torch.tensor([[100.0]]), 1e4)
    tensor([[0.4425, 9.2044]])

    ``log1p`` of the rates would give ``log1p(10) = 2.40`` to the first gene, which a sample of
    100 molecules shows once in about ten cells (``log1p(100) = 4.62``) and otherwise as zero.
    """
    depth = depth.to(decoded["log_mu"])
    heads = {**decoded, "log_rate": decoded["log_mu"] + depth.clamp_min(1e-30).log()}
    scale = target_sum / depth.clamp_min(1e-30)
    return likelihood.expected_log1p(heads, scale) * (depth > 0)


def get_likelihood(name: str) -> Likelihood:
    """Look up a likelihood by name, with a clear error for an unknown one."""
    try:
        return LIKELIHOODS[name]
    except KeyError:
        raise ValueError(
            f"Unknown likelihood {name!r}; choose one of {sorted(LIKELIHOODS)}."
        ) from None
