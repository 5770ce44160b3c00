"""How denoising is scored, written once for the package and the benchmarks.

Molecular cross-validation (Batson et al. 2019): every cell's molecules are split by binomial
thinning (:func:`thin_counts`), a model is trained on one part, and its denoised expression is
scored against the held-out part (:func:`mcv_poisson`, :func:`log_normalised_mse`); on simulated
data, against the true rates (:func:`truth_scores`). Repeated runs are summarised as the mean with
the paper's error bar ``lambda * SEM`` (II-H; :func:`mean_error`, :func:`summarize_seeds`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ._components import dense_input
from ._defaults import ERROR_BAR_LAMBDA


def _dense(x: Any) -> np.ndarray:
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)


def thin_counts(counts: Any, fraction: Any, seed: Any = None) -> tuple[Any, Any]:
    """Split counts by binomial thinning: ``X ~ Binomial(n, fraction)``, ``Y = n - X``.

    The one thinning of the package and the benchmarks: the training's held-out-molecule
    validation (``validation="molecules"``, :meth:`~zipo_scvi.ZIPO.heldout_loss`) thins torch
    minibatches; molecular cross-validation (:func:`~zipo_scvi.tune`, the benchmarks'
    ``mcv_split``) and the benchmarks' lower depths and thinned samples (``grid.py``,
    ``integration.py``) thin numpy or scipy matrices. Counts are rounded first and must not be
    negative. The draws come from the generator of the input's library (torch's for a tensor,
    numpy's otherwise), so each path keeps the split it has always drawn for a seed.

    Parameters
    ----------
    counts
        Cells x genes counts: a torch tensor (dense or sparse, on the CPU), or a numpy array or
        scipy sparse matrix.
    fraction
        Share of the molecules kept in ``X``, in ``(0, 1)``; for numpy or scipy counts also
        one share per gene (an array of length genes).
    seed
        For a tensor: a :class:`torch.Generator`, an integer seed of one, or ``None`` (torch's
        global generator). Otherwise: an integer seed or a :class:`numpy.random.Generator`
        (which the draws advance).

    Returns
    -------
    ``(X, Y)``: for a tensor, two dense tensors of its dtype; otherwise two float64 CSR
    matrices (``X`` without explicit zeros), each stored count thinned in row-major order, so a
    dense and a sparse copy of the same counts give the same split.

    Examples
    --------
    >>> import numpy as np, torch
    >>> x, y = thin_counts(np.array([[3.0, 0.0], [1.0, 5.0]]), 0.5, seed=0)
    >>> (x + y).toarray()
    array([[3., 0.],
           [1., 5.]])
    >>> x, y = thin_counts(torch.tensor([[3.0, 0.0], [1.0, 5.0]]), 0.5, seed=0)
    >>> x + y
    tensor([[3., 0.],
            [1., 5.]])
    """
    shares = np.asarray(fraction, dtype=np.float64)
    if not ((shares > 0) & (shares < 1)).all():
        raise ValueError(f"fraction must lie in (0, 1), not {fraction}.")
    if isinstance(counts, torch.Tensor):
        if shares.ndim:
            raise ValueError("A tensor is thinned by one fraction, not one per gene.")
        n = torch.round(dense_input(counts))
        if (n < 0).any():
            raise ValueError("Binomial thinning needs non-negative counts.")
        if seed is not None and not isinstance(seed, torch.Generator):
            seed = torch.Generator(device=n.device).manual_seed(int(seed))
        kept = torch.binomial(n, torch.full_like(n, fraction), generator=seed)
        return kept, n - kept
    n = sp.csr_matrix(counts, dtype=np.float64)
    n.sort_indices()
    n.data = np.rint(n.data)
    if (n.data < 0).any():
        raise ValueError("Binomial thinning needs non-negative counts.")
    if shares.ndim:
        if shares.shape != (n.shape[1],):
            raise ValueError(f"Got {shares.size} fractions for {n.shape[1]} genes.")
        fraction = shares[n.indices]
    kept = n.copy()
    draws = np.random.default_rng(seed).binomial(n.data.astype(np.int64), fraction)
    kept.data = draws.astype(np.float64)
    held_out = n - kept
    kept.eliminate_zeros()
    return kept, sp.csr_matrix(held_out)


#: splitmix64's constants as signed 64-bit integers (torch has no unsigned 64-bit arithmetic).
_GOLDEN, _MIX1, _MIX2 = (
    c - (1 << 64) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
)


def _shift_right(h: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 values (torch's ``>>`` keeps the sign)."""
    return (h >> k) & ((1 << (64 - k)) - 1)


def _mix64(h: torch.Tensor) -> torch.Tensor:
    """splitmix64 (Steele et al. 2014) of int64 values, with wrapping arithmetic."""
    h = h + _GOLDEN
    h = (h ^ _shift_right(h, 30)) * _MIX1
    h = (h ^ _shift_right(h, 27)) * _MIX2
    return h ^ _shift_right(h, 31)


def fixed_thinning(counts: torch.Tensor, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Split each cell's molecules by a rule fixed by the cell's own counts.

    Every molecule is kept with probability ``fraction`` (binomial thinning, as
    :func:`thin_counts`), but the draws are hashes of the cell's counts, the gene and the
    molecule's number, not a generator's: the same cell gets the same split in any minibatch,
    on any device and in any run, without knowing its row in the data. The training's
    ``validation="mcv"`` holds out one such share of every cell's molecules for good.

    Parameters
    ----------
    counts
        Cells x genes counts, a torch tensor (dense or sparse); rounded first.
    fraction
        Share of the molecules kept, in ``(0, 1)``.

    Returns
    -------
    ``(X, Y)``: the kept and the held-out counts, two dense tensors of the input's dtype.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[30.0, 0.0, 5.0], [1.0, 8.0, 0.0]])
    >>> kept, held_out = fixed_thinning(x, 0.9)
    >>> bool((kept + held_out == x).all())
    True
    >>> k2, _ = fixed_thinning(x.flip(0), 0.9)  # the same cells in another order
    >>> bool((k2.flip(0) == kept).all())
    True
    """
    _check_share(fraction)
    x = _rounded_counts(counts)
    n = x.long()
    genes, cells = _count_keys(n)
    rows, cols = n.nonzero(as_tuple=True)
    per_entry = n[rows, cols]
    entry = _mix64(cells[rows] ^ genes[cols])
    owner = torch.repeat_interleave(torch.arange(len(per_entry), device=n.device), per_entry)
    first = torch.cumsum(per_entry, 0) - per_entry
    number = torch.arange(len(owner), device=n.device) - first[owner]
    # the entry's splitmix64 stream: its molecule k draws mix(entry + (k + 1) * golden)
    draw = _shift_right(_mix64(entry[owner] + number * _GOLDEN), 11).double() / float(1 << 53)
    held = torch.zeros_like(per_entry).scatter_add_(0, owner, (draw >= fraction).long())
    held_out = torch.zeros_like(x)
    held_out[rows, cols] = held.to(x.dtype)
    return x - held_out, held_out


def _check_share(fraction: float) -> None:
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie in (0, 1), not {fraction}.")


def _rounded_counts(counts: torch.Tensor) -> torch.Tensor:
    x = torch.round(dense_input(counts))
    if (x < 0).any():
        raise ValueError("Binomial thinning needs non-negative counts.")
    return x


def _count_keys(n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each gene's hash, and each cell's key: the hash of a wrapping sum of its counts times
    the genes' hashes (int64 counts, cells x genes).
    """
    genes = _mix64(torch.arange(n.shape[1], device=n.device))
    return genes, _mix64((n * genes).sum(dim=1))


class FixedThinning:
    """:func:`fixed_thinning` that works out each cell's split once and looks it up after.

    The split is a function of a cell's counts, so it can be remembered under a key of those
    counts (two 64-bit hashes of them, whose coincidence for two different cells is a chance
    of about 1 in 2**128 per pair). Training with ``validation="mcv"`` splits every minibatch
    at every step and validation; on deep data the per-molecule hashing took about 40% of the
    training time (hgmm1k, 3,700 molecules per cell), and looking the splits up removes it.
    The results are those of :func:`fixed_thinning`, bit for bit. The memory: each cell's
    held-out entries (a ``1 - fraction`` share of its molecules; 8 bytes each), on the CPU.

    Parameters
    ----------
    fraction
        Share of the molecules kept, in ``(0, 1)``.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[30.0, 0.0, 5.0], [1.0, 8.0, 0.0]])
    >>> split = FixedThinning(0.9)
    >>> kept, held_out = split(x)
    >>> all(torch.equal(a, b) for a, b in zip(split(x.flip(0)), fixed_thinning(x.flip(0), 0.9)))
    True
    >>> len(split)  # cells remembered
    2
    """

    def __init__(self, fraction: float):
        _check_share(fraction)
        self.fraction = fraction
        self._held: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self._held)

    def __call__(self, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(X, Y)`` as :func:`fixed_thinning` returns them for ``counts``."""
        x = _rounded_counts(counts)
        n = x.long()
        genes, cells = _count_keys(n)  # fixed_thinning's key, and a second, independent one
        keys = list(zip(cells.tolist(), _mix64((n * _mix64(genes)).sum(dim=1)).tolist()))
        new = [i for i, key in enumerate(keys) if key not in self._held]
        if new:
            held = fixed_thinning(x[new], self.fraction)[1].cpu().numpy()
            for row, i in zip(held, new, strict=True):
                cols = np.flatnonzero(row)
                self._held[keys[i]] = (cols.astype(np.int32), row[cols])
        parts = [self._held[key] for key in keys]
        rows = np.repeat(np.arange(len(parts)), [len(cols) for cols, _ in parts])
        held_out = torch.zeros_like(x)
        if len(rows):
            cols = np.concatenate([cols for cols, _ in parts]).astype(np.int64)
            values = torch.from_numpy(np.concatenate([values for _, values in parts]))
            index = (torch.from_numpy(rows).to(x.device), torch.from_numpy(cols).to(x.device))
            held_out[index] = values.to(x.device, x.dtype)
        return x - held_out, held_out


#: Counts per cell of log-normalised expression (scanpy's ``normalize_total`` + ``log1p``).
TARGET_SUM = 1e4


def log_normalise(x: Any, target_sum: float = TARGET_SUM) -> np.ndarray:
    """``log1p`` of the counts scaled to ``target_sum`` per cell (cells without counts: 0)."""
    x = _dense(x)
    total = x.sum(axis=1, keepdims=True)
    scale = np.divide(target_sum, total, out=np.zeros_like(total), where=total > 0)
    return np.log1p(x * scale)


def mcv_poisson(denoised: Any, kept: Any, held_out: Any) -> float:
    """Poisson loss of denoised expression against held-out molecules (lower is better).

    ``D' = D * sum(Y) / sum(X)``; the loss is the mean over cells and genes of
    ``D' - Y log(D' + 1e-6)`` (Batson et al. 2019).

    Parameters
    ----------
    denoised
        ``D``: cells x genes, on the count scale of the kept molecules ``X``.
    kept, held_out
        ``X`` and ``Y`` (dense or sparse, same shape as ``denoised``).

    Returns
    -------
    The loss.

    Examples
    --------
    >>> import numpy as np
    >>> x, y = np.array([[2.0, 0.0], [1.0, 3.0]]), np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> mcv_poisson(x, x, y) < mcv_poisson(np.ones((2, 2)), x, y)
    True
    """
    d, y = _dense(denoised), _dense(held_out)
    if d.shape != y.shape:
        raise ValueError(f"denoised {d.shape} and held-out {y.shape} differ in shape.")
    total = float(kept.sum())
    if total <= 0:
        raise ValueError("The kept counts are all zero.")
    scaled = d * (float(y.sum()) / total)
    return float(np.mean(scaled - y * np.log(scaled + 1e-6)))


def log_normalised_mse(denoised: Any, other: Any, target_sum: float = TARGET_SUM) -> float:
    """MSE between two matrices after :func:`log_normalise` (held-out molecules or truth).

    Examples
    --------
    >>> import numpy as np
    >>> log_normalised_mse(np.ones((2, 3)), 5 * np.ones((2, 3)))
    0.0
    """
    a, b = log_normalise(denoised, target_sum), log_normalise(other, target_sum)
    if a.shape != b.shape:
        raise ValueError(f"denoised {a.shape} and {b.shape} differ in shape.")
    return float(np.mean((a - b) ** 2))


def mcv_log_mse(
    denoised: Any, kept: Any, held_out: Any, target_sum: float = TARGET_SUM, chunk: int = 1024
) -> float:
    """MSE of denoised expression, as the log-normalised expression it predicts at the held-out
    depth, against the held-out molecules' log-normalised counts (lower is better).

    :func:`log_normalised_mse` compares ``log1p`` of the denoised rates with log-normalised
    held-out counts, whose best prediction is not ``log1p`` of the rate but the expected
    ``log1p`` of a sample: a gene at 0.1 expected molecules is mostly a zero in the held-out
    share, and ``log1p`` of its rate overstates it (most at low depth, so that even the true
    rates score below the raw counts). Here each cell's shares ``D / sum(D)`` are taken to the
    depth of its held-out share, ``N = sum(X_cell) * sum(Y) / sum(X)`` (the scaling of
    :func:`mcv_poisson`), and turned into ``E[log1p(target_sum * Y' / N)]`` for Poisson counts
    ``Y'`` of those rates (:meth:`~zipo_scvi._distributions.Likelihood.expected_log1p`), which is
    compared with :func:`log_normalise` of ``Y`` without renormalising.

    Parameters
    ----------
    denoised
        ``D``: cells x genes, on the count scale of the kept molecules ``X``.
    kept, held_out
        ``X`` and ``Y``.
    target_sum
        Counts per cell after normalisation.
    chunk
        Cells per step (memory).

    Returns
    -------
    The mean squared error over cells and genes.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> rate = rng.gamma(0.3, 2.0, size=(200, 50))
    >>> x, y = rng.poisson(9 * rate), rng.poisson(rate)
    >>> mcv_log_mse(rate, x, y) < log_normalised_mse(rate, y)
    True
    """
    from ._distributions import expected_log_normalized, get_likelihood

    d, x, y = _dense(denoised), _dense(kept), _dense(held_out)
    if not d.shape == x.shape == y.shape:
        raise ValueError(f"denoised {d.shape}, kept {x.shape} and held-out {y.shape} differ.")
    total = float(x.sum())
    if total <= 0:
        raise ValueError("The kept counts are all zero.")
    depth = x.sum(axis=1, keepdims=True) * (float(y.sum()) / total)
    poisson = get_likelihood("poisson")
    squared = 0.0
    for start in range(0, d.shape[0], chunk):
        rows = slice(start, start + chunk)
        dd = torch.as_tensor(d[rows], dtype=torch.float64).clamp_min(0.0)
        sums = dd.sum(dim=1, keepdim=True)
        # log shares; -inf where a share (or a whole row) is 0: expectation 0
        log_mu = torch.log(dd / torch.where(sums > 0, sums, torch.ones_like(sums)))
        n = torch.as_tensor(depth[rows], dtype=torch.float64)
        expected = expected_log_normalized(poisson, {"log_mu": log_mu}, n, target_sum)
        truth = log_normalise(y[rows], target_sum)
        squared += float(((expected.numpy() - truth) ** 2).sum())
    return squared / d.size


def truth_scores(denoised: Any, true_rate: Any) -> dict[str, float]:
    """Denoised expression against a simulation's true rates, both log-normalised.

    Returns
    -------
    ``{"mse_truth": ..., "corr_truth": ...}``: the mean squared difference and the Pearson
    correlation over all entries (lower and higher are better).

    Examples
    --------
    >>> import numpy as np
    >>> truth = np.array([[1.0, 3.0], [2.0, 2.0]])
    >>> truth_scores(truth * 5, truth)["mse_truth"] < 1e-12
    True
    """
    a, b = log_normalise(denoised), log_normalise(true_rate)
    if a.shape != b.shape:
        raise ValueError(f"denoised {a.shape} and truth {b.shape} differ in shape.")
    corr = float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    return {"mse_truth": float(np.mean((a - b) ** 2)), "corr_truth": corr}


def mean_error(values: Any) -> tuple[float, float]:
    """Mean and the paper's error bar ``lambda * SEM`` (II-H; ``nan`` for one value).

    Examples
    --------
    >>> mean, error = mean_error([1.0, 3.0])
    >>> mean, round(error, 3)
    (2.0, 1.645)
    """
    v = np.asarray(values, dtype=np.float64)
    sem = v.std(ddof=1) / np.sqrt(v.size) if v.size > 1 else np.nan
    return float(v.mean()), float(ERROR_BAR_LAMBDA * sem)


def summarize(frame: pd.DataFrame, by: list[str], columns: list[str]) -> pd.DataFrame:
    """Mean and the paper's error bar ``lambda * SEM`` of each column, per group of rows.

    Parameters
    ----------
    frame
        One row per run.
    by
        Columns that name a group (kept in the frame's order).
    columns
        Columns to summarise.

    Returns
    -------
    Two-level columns: ``("mean", column)``, ``("err", column)`` (``nan`` for one run) and
    ``("n", "")``; one row per group.

    Examples
    --------
    >>> import pandas as pd
    >>> runs = pd.DataFrame({"method": ["a", "a", "b"], "nll": [1.0, 3.0, 2.0]})
    >>> summarize(runs, ["method"], ["nll"])["mean"]["nll"].tolist()
    [2.0, 2.0]
    """
    grouped = frame.groupby(by, sort=False)[columns]
    out = pd.concat({"mean": grouped.mean(), "err": grouped.sem() * ERROR_BAR_LAMBDA}, axis=1)
    out[("n", "")] = grouped.size()
    return out


def summarize_seeds(table: pd.DataFrame) -> pd.DataFrame:
    """Mean, SEM and the paper's error bar per configuration and metric of a seed comparison.

    Parameters
    ----------
    table
        Tidy table of :func:`zipo_scvi.compare_seeds` (columns ``config``, ``seed``,
        ``metric``, ``value``).

    Returns
    -------
    Columns ``config``, ``metric``, ``mean``, ``sem`` (0 for one seed), ``error``
    (``ERROR_BAR_LAMBDA * sem``, paper II-H) and ``n``; configurations in the table's order.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"config": ["a", "a"], "seed": [0, 1], "metric": "nll",
    ...                   "value": [1.0, 3.0]})
    >>> float(summarize_seeds(t)["mean"].iloc[0])
    2.0
    """
    wide = summarize(table, ["config", "metric"], ["value"])
    summary = pd.DataFrame(
        {
            "mean": wide[("mean", "value")],
            "error": wide[("err", "value")].fillna(0.0),
            "n": wide[("n", "")],
        }
    ).reset_index()
    summary["sem"] = summary["error"] / ERROR_BAR_LAMBDA
    return summary[["config", "metric", "mean", "sem", "error", "n"]]
