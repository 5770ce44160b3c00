"""ZIPO's outputs, written once: name, where they go in an AnnData, how they are computed.

One table, :data:`OUTPUTS`, serves :meth:`ZIPO.get_normalized_expression
<zipo_scvi.ZIPO.get_normalized_expression>`, :meth:`ZIPO.get_likelihood_parameters
<zipo_scvi.ZIPO.get_likelihood_parameters>`, :meth:`ZIPO.get_outputs
<zipo_scvi.ZIPO.get_outputs>`, the streaming writer :meth:`ZIPO.write_normalized_expression
<zipo_scvi.ZIPO.write_normalized_expression>`, the command line and the DCA-style TSV writer
:func:`zipo_scvi.data.write_tsv_dir`. Each entry is computed from one minibatch's decoded outputs
(the latents ``z`` and the heads of :meth:`ZiPoModule.generative
<zipo_scvi.ZiPoModule.generative>`); an output that needs a head the likelihood lacks (zero
inflation, dispersion) is not produced at all.

``library_size`` (what denoised expression is scaled to) means the same everywhere:
``"observed"``: ``mu`` times each cell's observed total count, the value the benchmarks score
best and what the files and the command line hold by default; ``"latent"``: the rates ``l * mu``
with the library subnetwork's ``l``; a number: ``mu`` scaled to it (``1``, scvi-tools'
convention and the default of ``get_normalized_expression``: each cell sums to one).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from ._components import dense_input
from ._distributions import Likelihood, expected_log_normalized
from ._metrics import TARGET_SUM

LibrarySize = float | Literal["latent", "observed"]


def check_library_size(library_size: Any) -> None:
    """Raise ``ValueError`` unless ``library_size`` is a number, ``"latent"`` or ``"observed"``.

    Examples
    --------
    >>> check_library_size("total")
    Traceback (most recent call last):
    ...
    ValueError: library_size must be a number, 'latent' or 'observed', not 'total'.
    """
    number = isinstance(library_size, (int, float)) and not isinstance(library_size, bool)
    if not (number or library_size in ("latent", "observed")):
        raise ValueError(
            f"library_size must be a number, 'latent' or 'observed', not {library_size!r}."
        )


def library_depth(
    decoded: Mapping[str, torch.Tensor], x: torch.Tensor, library_size: LibrarySize
) -> torch.Tensor:
    """The depth each cell's expression is scaled to, shape ``(cells, 1)`` (see the module
    docstring): the library subnetwork's ``l``, the observed total or the number given.

    Examples
    --------
    >>> d = {"log_mu": torch.zeros(2, 3), "log_library": torch.zeros(2, 1)}
    >>> library_depth(d, torch.tensor([[2.0, 6.0, 0.0], [1.0, 0.0, 0.0]]), "observed")
    tensor([[8.],
            [1.]])
    """
    reference = decoded["log_mu"]
    if library_size == "latent":
        return decoded["log_library"].exp()
    if library_size == "observed":
        return dense_input(x).sum(dim=1, keepdim=True).to(reference)
    return torch.full((reference.shape[0], 1), float(library_size)).to(reference)


def denoised_expression(
    decoded: Mapping[str, torch.Tensor], x: torch.Tensor, library_size: LibrarySize
) -> torch.Tensor:
    """Denoised expression of a minibatch from its decoded outputs (see the module docstring).

    Parameters
    ----------
    decoded
        Decoded outputs (``log_mu``, ``log_library``).
    x
        The minibatch's counts (dense or sparse), for ``"observed"``.
    library_size
        ``"latent"``, ``"observed"`` or a number.

    Examples
    --------
    >>> d = {"log_mu": torch.log(torch.tensor([[0.25, 0.75]])), "log_library": torch.zeros(1, 1)}
    >>> denoised_expression(d, torch.tensor([[2.0, 6.0]]), "observed")
    tensor([[2., 6.]])
    """
    if library_size == "latent":  # one exp of the sum (as the likelihood's rate)
        return (decoded["log_library"] + decoded["log_mu"]).exp()
    return decoded["log_mu"].exp() * library_depth(decoded, x, library_size)


#: ``compute(likelihood, decoded, x, library_size)`` -> one minibatch of an output.
Compute = Callable[[Likelihood, Mapping[str, torch.Tensor], torch.Tensor, Any], torch.Tensor]


@dataclass(frozen=True)
class Output:
    """One output of ZIPO.

    Attributes
    ----------
    key
        Its name in the getters (``get_likelihood_parameters``) and in this table.
    compute
        ``compute(likelihood, decoded, x, library_size)``: one minibatch of it.
    name
        Its key in a written AnnData (``None``: not written to files).
    slot
        ``"layers"``, ``"obsm"`` or ``"obs"`` (``None``: not written).
    tsv
        The DCA-style file it becomes (``None``: none); genes x cells except for ``obsm``.
    head
        The :class:`~zipo_scvi._distributions.Likelihood` flag it needs (``"zero_inflated"``,
        ``"dispersion"``), or ``None``: every likelihood has it.
    by_default
        Written to files unless asked otherwise (``False``: only when asked for).
    """

    key: str
    compute: Compute
    name: str | None = None
    slot: Literal["layers", "obsm", "obs"] | None = None
    tsv: str | None = None
    head: Literal["zero_inflated", "dispersion"] | None = None
    by_default: bool = True

    def available(self, likelihood: Likelihood) -> bool:
        """Whether a model with this likelihood has the output."""
        return self.head is None or bool(getattr(likelihood, self.head))


OUTPUTS: tuple[Output, ...] = (
    Output(
        "denoised",
        lambda lik, d, x, size: denoised_expression(d, x, size),
        "zipo_denoised",
        "layers",
        "mean.tsv",
    ),
    Output(
        "zero_prob",
        lambda lik, d, x, size: torch.sigmoid(d["logit_z"]),
        "zipo_zero_prob",
        "layers",
        "dropout.tsv",
        "zero_inflated",
    ),
    Output(
        "dispersion",
        lambda lik, d, x, size: d["log_theta"].exp(),
        "zipo_dispersion",
        "layers",
        "dispersion.tsv",
        "dispersion",
    ),
    Output(  # log-normalised expression a sample of the cell's depth shows, noise averaged
        "log_normalized",
        lambda lik, d, x, size: expected_log_normalized(
            lik, d, library_depth(d, x, size), TARGET_SUM
        ),
        "zipo_log_normalized",
        "layers",
        by_default=False,
    ),
    Output("latent", lambda lik, d, x, size: d["z"], "X_zipo", "obsm", "latent.tsv"),
    Output(  # the library subnetwork's l (not the total count the likelihood may use)
        "library",
        lambda lik, d, x, size: d["log_library"].exp().squeeze(1),
        "zipo_predicted_library",
        "obs",
    ),
    Output(  # each cell's total count: what "observed" denoised expression is scaled to
        "observed_library",
        lambda lik, d, x, size: dense_input(x).sum(dim=1),
        "zipo_observed_library",
        "obs",
    ),
    Output("rate", lambda lik, d, x, size: d["log_rate"].exp()),
    Output("mean", lambda lik, d, x, size: lik.mean(d)),
)
OUTPUT_BY_KEY: Mapping[str, Output] = {out.key: out for out in OUTPUTS}
#: What :meth:`ZIPO.get_likelihood_parameters` returns (those the likelihood has).
PARAMETERS = ("rate", "mean", "library", "zero_prob", "dispersion")
#: The outputs that can be written to files (AnnData keys), in the order they are written.
FILE_OUTPUTS: tuple[Output, ...] = tuple(out for out in OUTPUTS if out.name is not None)
#: Those written unless others are asked for.
DEFAULT_FILE_OUTPUTS: tuple[Output, ...] = tuple(out for out in FILE_OUTPUTS if out.by_default)
#: Layer names a caller may choose from when writing.
OUTPUT_LAYERS: tuple[str, ...] = tuple(o.name for o in FILE_OUTPUTS if o.slot == "layers")
#: The layers written by default.
DEFAULT_LAYERS: tuple[str, ...] = tuple(o.name for o in DEFAULT_FILE_OUTPUTS if o.slot == "layers")


def chosen_file_outputs(log_normalized: bool = False) -> tuple[Output, ...]:
    """The outputs written to files: the default ones, plus the expected log-normalised
    expression when ``log_normalized``.

    Examples
    --------
    >>> [out.name for out in chosen_file_outputs(True) if out.slot == "layers"]
    ['zipo_denoised', 'zipo_zero_prob', 'zipo_dispersion', 'zipo_log_normalized']
    """
    extra = (OUTPUT_BY_KEY["log_normalized"],) if log_normalized else ()
    return (*DEFAULT_FILE_OUTPUTS, *extra)


def outputs_for(
    likelihood: Likelihood, keys: tuple[str, ...] | list[str] | None = None
) -> list[Output]:
    """The outputs among ``keys`` (default: those written to files by default) the likelihood
    has.
    """
    chosen = DEFAULT_FILE_OUTPUTS if keys is None else [OUTPUT_BY_KEY[k] for k in keys]
    return [out for out in chosen if out.available(likelihood)]


def compute_outputs(
    outputs: list[Output],
    likelihood: Likelihood,
    decoded: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    library_size: LibrarySize,
) -> dict[str, np.ndarray]:
    """One minibatch of each output, as float32 arrays keyed by ``Output.key``."""
    return {
        out.key: out.compute(likelihood, decoded, x, library_size).float().cpu().numpy()
        for out in outputs
    }


def store(adata, values: Mapping[str, np.ndarray]) -> None:
    """Put outputs keyed by their AnnData name (:meth:`ZIPO.get_outputs
    <zipo_scvi.ZIPO.get_outputs>`) into ``adata``'s ``layers``, ``obsm`` and ``obs``.
    """
    for out in FILE_OUTPUTS:
        if out.name in values:
            getattr(adata, out.slot)[out.name] = values[out.name]


def layer_output(name: str) -> Output:
    """The table entry of a written layer name, with a clear error for an unknown one."""
    for out in FILE_OUTPUTS:
        if out.name == name and out.slot == "layers":
            return out
    raise ValueError(f"Unknown output layer(s) [{name!r}]; choose from {list(OUTPUT_LAYERS)}.")
