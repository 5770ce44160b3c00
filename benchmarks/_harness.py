"""Benchmark harness: MCV split and scores, truth scores, latent ARI, and one runner per method.

The protocol is molecular cross-validation (Batson et al. 2019, as in the openproblems
denoising task), scored by :mod:`zipo_scvi._metrics`. Every runner has the signature
``run_<method>(train_adata, seed, **kw) -> dict(denoised, latent, seconds, peak_rss_mb, info)``
where ``denoised`` is cells x genes on the count scale of ``train_adata.X``. :func:`run_method`
runs one of them in its own subprocess (``python -m benchmarks._harness``) so that peak memory
is measured per method and one crashing peer does not end the benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from zipo_scvi._metrics import (
    log_normalise,
    log_normalised_mse,
    mcv_log_mse,
    mcv_poisson,
    thin_counts,
    truth_scores,
)

REPO = Path(__file__).resolve().parent.parent
DCA_VENV = Path(os.environ.get("ZIPO_DCA_VENV", "/work/dca_venv"))
DCA_SCRIPT = REPO / "benchmarks" / "peers" / "run_dca.py"

#: The benchmark's default simulation: Splatter-like, ~1100 UMIs per cell, expression-dependent
#: dropout (a count is zeroed with probability 1 / (1 + rate): half of the counts of rate 1),
#: ~81% zeros. Groups differ by moderate DE (10% of genes, log-scale s.d. 0.5), so that k-means
#: on PCA of the raw log-normalised counts recovers them only partly (ARI ~0.3) and a latent
#: space that removes noise can do better.
SIM_DEFAULTS: dict[str, Any] = {
    "n_cells": 3000,
    "n_genes": 1500,
    "n_groups": 6,
    "de_prob": 0.1,
    "de_scale": 0.5,
    "library_mean": 7.0,
    "dropout_midpoint": 0.0,
    "dropout_shape": -1.0,
}

#: Peers' epoch cap (scvi's own heuristic for <= 20k cells) with early stopping on validation.
PEER_MAX_EPOCHS = 400


# ----------------------------------------------------------------------------- data and scores
def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)


def mcv_split(adata: AnnData, fraction: float = 0.9, seed: int = 0) -> tuple[AnnData, np.ndarray]:
    """Split every molecule between a training and a test matrix (binomial thinning).

    :func:`zipo_scvi._metrics.thin_counts` splits the rounded counts, ``X ~ Binomial(n,
    fraction)`` and ``Y = n - X``; genes with no training counts are dropped from both.

    Parameters
    ----------
    adata
        Raw counts in ``.X`` (dense or sparse). ``obs`` is copied; a ``layers["true_rate"]``
        (simulation) is kept, subset to the same genes, for :func:`score_truth`.
    fraction
        Share of molecules in the training part.
    seed
        Seed of the thinning.

    Returns
    -------
    ``(train, test)``: an AnnData with the training counts (CSR float32) in ``.X``, and the
    test counts as a dense float32 array of the same shape.

    Examples
    --------
    >>> from zipo_scvi.data import simulate_counts
    >>> train, test = mcv_split(simulate_counts(n_cells=50, n_genes=30, seed=0), seed=1)
    >>> train.shape == test.shape
    True
    """
    kept, held_out = thin_counts(adata.X, fraction, seed)
    keep = np.asarray(kept.sum(axis=0)).ravel() > 0
    train = AnnData(
        sp.csr_matrix(kept[:, keep], dtype=np.float32),
        obs=adata.obs.copy(),
        var=adata.var.iloc[keep].copy(),
    )
    if "true_rate" in adata.layers:
        train.layers["true_rate"] = _dense(adata.layers["true_rate"])[:, keep].astype(np.float32)
    train.uns["mcv"] = {"fraction": fraction, "seed": seed, "n_genes_dropped": int((~keep).sum())}
    return train, held_out[:, keep].toarray().astype(np.float32)


def score_mcv(denoised, test, train) -> dict[str, float]:
    """Score denoised expression against held-out molecules (lower is better for both).

    ``poisson``: :func:`zipo_scvi._metrics.mcv_poisson`; ``mse``:
    :func:`zipo_scvi._metrics.log_normalised_mse` of ``D`` and ``Y`` (openproblems' MSE);
    ``mse_log``: :func:`zipo_scvi._metrics.mcv_log_mse`, the same error for the log-normalised
    expression ``D`` predicts at the held-out depth.

    Parameters
    ----------
    denoised
        ``D``, cells x genes on the training counts' scale.
    test
        ``Y``, the held-out counts.
    train
        ``X``, the training counts (array, sparse matrix or AnnData).

    Returns
    -------
    ``{"poisson": ..., "mse": ..., "mse_log": ...}``.

    Examples
    --------
    >>> import numpy as np
    >>> score_mcv(np.ones((1, 2)), np.array([[1.0, 0.0]]), np.array([[2.0, 2.0]]))["mse"] > 0
    True
    """
    x = train.X if isinstance(train, AnnData) else train
    return {
        "poisson": mcv_poisson(denoised, x, test),
        "mse": log_normalised_mse(denoised, test),
        "mse_log": mcv_log_mse(denoised, x, test),
    }


#: Denoised expression against the simulation's true rates (``mse_truth``, ``corr_truth``).
score_truth = truth_scores


def latent_ari(latent, groups, seed: int = 0, leiden: bool = False) -> dict[str, float]:
    """Adjusted Rand index and NMI of clusters of a latent space against known groups.

    k-means with as many clusters as groups (10 restarts); optionally Leiden on a 15-nearest-
    neighbour graph at resolution 0.5 (needs ``leidenalg``).

    Returns
    -------
    ``{"ari": ..., "nmi": ...}`` (plus ``"ari_leiden"``, ``"nmi_leiden"``).

    Examples
    --------
    >>> import numpy as np
    >>> latent = np.r_[np.zeros((5, 2)), np.ones((5, 2)) * 10]
    >>> latent_ari(latent, [0] * 5 + [1] * 5)
    {'ari': 1.0, 'nmi': 1.0}
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    z = np.asarray(latent, dtype=np.float64)
    labels = np.asarray(groups)
    if not np.isfinite(z).all():
        return {"ari": float("nan"), "nmi": float("nan")}
    k = len(np.unique(labels))
    pred = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(z)
    out = {
        "ari": float(adjusted_rand_score(labels, pred)),
        "nmi": float(normalized_mutual_info_score(labels, pred)),
    }
    if leiden:
        import scanpy as sc

        tmp = AnnData(np.zeros((z.shape[0], 1), dtype=np.float32))
        tmp.obsm["latent"] = z
        sc.pp.neighbors(tmp, use_rep="latent", n_neighbors=15, random_state=seed)
        sc.tl.leiden(tmp, resolution=0.5, random_state=seed, flavor="igraph", n_iterations=2)
        pred = tmp.obs["leiden"].to_numpy()
        out["ari_leiden"] = float(adjusted_rand_score(labels, pred))
        out["nmi_leiden"] = float(normalized_mutual_info_score(labels, pred))
    return out


def pca_latent(x: np.ndarray, n_comps: int = 10, seed: int = 0) -> np.ndarray:
    """PCA of log-normalised (or already transformed, ``x`` as given) expression."""
    from sklearn.decomposition import PCA

    return PCA(n_components=min(n_comps, *x.shape), random_state=seed).fit_transform(x)


# ----------------------------------------------------------------------------- runners
def proc_status_mb(field: str = "VmHWM", pid: int | str = "self") -> float | None:
    """A memory field of ``/proc/<pid>/status`` in MB (Linux), or ``None``.

    ``VmHWM`` (peak RSS) rather than ``getrusage().ru_maxrss``: Linux keeps ``ru_maxrss``
    across ``execve``, so a child would report its parent's peak if that was higher; ``VmHWM``
    starts afresh at ``exec`` and can be reset (:func:`reset_peak_rss`). ``VmRSS``: the RSS now.
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        return None
    return None


def reset_peak_rss() -> bool:
    """Restart this process's peak (``VmHWM``) at its current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss_mb() -> float:
    """Peak resident memory of this process, in MB (``VmHWM``; ``ru_maxrss`` without /proc)."""
    hwm = proc_status_mb()
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


#: Prefix of the line in which a benchmark's child process prints its JSON result.
RESULT_MARKER = "RESULT_JSON "


def print_result(result: dict) -> None:
    """Print a child process's result for :func:`run_json_child`."""
    print(RESULT_MARKER + json.dumps(result), flush=True)


def run_json_child(cmd: list[str], **kwargs) -> dict:
    """Run a benchmark's child process and return the result it printed with
    :func:`print_result`; a failure raises ``RuntimeError`` with the end of its stderr."""
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER) :])
    raise RuntimeError(f"{cmd[1:3]} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")


def run_watching_rss(cmd: list[str], **kwargs) -> tuple[subprocess.CompletedProcess, float]:
    """Run a command, polling its peak RSS (``VmHWM``) every 0.2 s; return it in MB too."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, **kwargs)
        peak = 0.0
        while proc.poll() is None:
            peak = max(peak, proc_status_mb("VmHWM", proc.pid) or 0.0)
            time.sleep(0.2)
        out.seek(0)
        err.seek(0)
        done = subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())
    return done, peak


def _counts_only(adata: AnnData, batch_key: str | None = None) -> AnnData:
    """What a method may see: the training counts (and the batch column if one is used)."""
    obs = adata.obs[[batch_key]].copy() if batch_key else adata.obs.iloc[:, :0].copy()
    x = adata.X if sp.issparse(adata.X) else sp.csr_matrix(adata.X)
    return AnnData(x.astype(np.float32), obs=obs, var=adata.var.iloc[:, :0].copy())


def _result(denoised, latent, start: float, **info) -> dict[str, Any]:
    return {
        "denoised": np.asarray(denoised, dtype=np.float32),
        "latent": None if latent is None else np.asarray(latent, dtype=np.float32),
        "seconds": time.perf_counter() - start,
        "peak_rss_mb": _peak_rss_mb(),
        "info": info,
    }


def _epochs(model) -> int:
    history = getattr(model, "history", None) or {}
    for key in ("train_loss", "train_loss_epoch", "elbo_train"):
        if key in history:
            return len(history[key])
    return -1


def run_zipo(
    train_adata: AnnData,
    seed: int,
    preset: str = "default",
    output: str = "observed",
    train: dict | None = None,
    batch_key: str | None = None,
    **model_kwargs,
) -> dict[str, Any]:
    """ZIPO with any preset and module arguments; ``train`` holds ``model.train`` arguments.

    ``output`` picks the denoised value: ``"observed"`` (``mu`` times the cell's observed
    library, the convention of scVI's default ``use_observed_lib_size=True``, so the peers are
    compared like with like), ``"latent"`` (``l * mu``, ZIPO's predicted library) or ``"mean"``
    (``(1 - z) l mu``).

    Examples
    --------
    >>> from zipo_scvi.data import simulate_counts
    >>> res = run_zipo(simulate_counts(60, 30), 0, encoder_sizes=(8, 4), train={"max_epochs": 1})
    >>> res["denoised"].shape
    (60, 30)
    """
    from zipo_scvi import ZIPO

    adata = _counts_only(train_adata, batch_key)
    start = time.perf_counter()
    ZIPO.setup_anndata(adata, batch_key=batch_key)
    model = ZIPO(adata, preset=preset, seed=seed, **model_kwargs)
    model.train(seed=seed, **{"enable_progress_bar": False, **(train or {})})
    if output == "mean":
        denoised = model.get_likelihood_parameters()["mean"]
    elif output in ("latent", "observed"):
        denoised = model.get_normalized_expression(library_size=output, return_numpy=True)
    else:
        raise ValueError(f"Unknown output {output!r}; choose latent, observed or mean.")
    latent = model.get_latent_representation()
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in model.hyperparameters.items()}
    config = {"preset": preset, "output": output, **config, "train": train or {}}
    return _result(
        denoised, latent, start, epochs=_epochs(model), label=f"ZIPO ({preset})", config=config
    )


def _run_scvi_model(cls, train_adata, seed, batch_key, model_kwargs, train, label):
    import scvi

    adata = _counts_only(train_adata, batch_key)
    start = time.perf_counter()
    scvi.settings.seed = seed
    cls.setup_anndata(adata, batch_key=batch_key)
    model = cls(adata, **model_kwargs)
    kwargs = {
        "max_epochs": PEER_MAX_EPOCHS,
        "early_stopping": True,
        "check_val_every_n_epoch": 1,
        "enable_progress_bar": False,
        **(train or {}),
    }
    model.train(**kwargs)
    # library_size="latent" returns the rate mu (scale * library); with the observed library
    # (SCVI's default) that is on the input's count scale, as MCV needs.
    denoised = model.get_normalized_expression(library_size="latent", return_numpy=True)
    latent = model.get_latent_representation()
    return _result(denoised, latent, start, epochs=_epochs(model), label=label)


def run_scvi(
    train_adata: AnnData,
    seed: int,
    batch_key: str | None = None,
    train: dict | None = None,
    gene_likelihood: str = "zinb",
    **model_kwargs,
) -> dict[str, Any]:
    """scvi-tools SCVI with its defaults (ZINB, or ``gene_likelihood``), early stopping on
    validation ELBO; :data:`RUNNERS` holds it as ``scvi_zinb`` and ``scvi_poisson``."""
    from scvi.model import SCVI

    kwargs = {"gene_likelihood": gene_likelihood, **model_kwargs}
    name = {"zinb": "ZINB", "poisson": "Poisson"}.get(gene_likelihood, gene_likelihood)
    return _run_scvi_model(SCVI, train_adata, seed, batch_key, kwargs, train, f"scVI ({name})")


def run_ldvae(
    train_adata: AnnData,
    seed: int,
    batch_key: str | None = None,
    train: dict | None = None,
    **model_kwargs,
) -> dict[str, Any]:
    """scvi-tools LinearSCVI (LDVAE) with its defaults (NB, 10 latents, linear decoder)."""
    from scvi.model import LinearSCVI

    return _run_scvi_model(
        LinearSCVI, train_adata, seed, batch_key, model_kwargs, train, "LDVAE (LinearSCVI)"
    )


def run_magic(train_adata: AnnData, seed: int, n_jobs: int = 1, **magic_kwargs) -> dict[str, Any]:
    """MAGIC on ``sqrt`` of library-normalised counts, squared and scaled back per cell.

    Counts are scaled to the median library, ``sqrt``-transformed, smoothed by MAGIC (its
    defaults), clipped at zero, squared and scaled back to each cell's own library. The latent
    is the PCA (10 components) of MAGIC's output.
    """
    import magic

    x = _dense(train_adata.X)
    start = time.perf_counter()
    library = x.sum(axis=1, keepdims=True)
    median = float(np.median(library))
    factor = np.divide(median, library, out=np.zeros_like(library), where=library > 0)
    smoothed = magic.MAGIC(random_state=seed, n_jobs=n_jobs, verbose=0, **magic_kwargs)
    imputed = np.asarray(smoothed.fit_transform(np.sqrt(x * factor)))
    denoised = np.clip(imputed, 0, None) ** 2 * library / median
    latent = pca_latent(imputed, seed=seed)
    return _result(denoised, latent, start, label="MAGIC", latent_kind="PCA of MAGIC output")


def _dca_like_zipo(train_adata: AnnData, seed: int, reason: str, **kw) -> dict[str, Any]:
    """The paper's DCA-like settings of ZIPO (II-G): ZINB, 128-64-128, log-normalised input."""
    settings = {
        "likelihood": "zinb",
        "encoder_sizes": (128, 64),
        "decoder_sizes": (128,),
        "residuals": "none",
        "input_transform": "log1p_norm",
        "preset": "paper",
    }
    res = run_zipo(train_adata, seed, **{**settings, **kw})
    res["info"].update(label="DCA-like ZIPO (paper II-G), not DCA", reason=reason)
    return res


def dca_unavailable() -> str | None:
    """Why DCA cannot run here (``None`` if its venv imports ``dca.api``)."""
    python = DCA_VENV / "bin" / "python"
    if not DCA_SCRIPT.exists():
        return f"{DCA_SCRIPT.relative_to(REPO)} is missing"
    if not python.exists():
        return f"no DCA venv at {DCA_VENV} (benchmarks/peers/setup_dca_env.sh builds it)"
    check = subprocess.run(
        [str(python), "-c", "import dca.api"],
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    if check.returncode != 0:
        lines = check.stderr.strip().splitlines() or ["import failed"]
        return f"DCA venv at {DCA_VENV} cannot import dca.api: {lines[-1]}"
    return None


def run_dca(
    train_adata: AnnData, seed: int, epochs: int = 300, threads: int = 1, **kw
) -> dict[str, Any]:
    """DCA 0.3.4 (ZINB autoencoder) in its own venv via ``benchmarks/peers/run_dca.py``.

    Without that venv the paper's DCA-like ZIPO settings run instead, labelled as such.
    """
    reason = dca_unavailable()
    if reason:
        return _dca_like_zipo(train_adata, seed, reason, **kw)
    python = DCA_VENV / "bin" / "python"
    with tempfile.TemporaryDirectory() as tmp:
        path_in, path_out = Path(tmp) / "in.h5ad", Path(tmp) / "out.npz"
        adata = _counts_only(train_adata)
        adata.X = adata.X.astype(np.float32)
        adata.write_h5ad(path_in)
        start = time.perf_counter()
        cmd = [str(python), str(DCA_SCRIPT), str(path_in), str(path_out)]
        cmd += ["--epochs", str(epochs), "--seed", str(seed), "--threads", str(threads)]
        proc, peak = run_watching_rss(cmd)
        if proc.returncode != 0:
            raise RuntimeError(f"DCA failed: {proc.stderr.strip()[-800:]}")
        out = np.load(path_out)
        res = _result(out["denoised"], out["latent"], start, label="DCA 0.3.4 (ZINB)")
        res["seconds"] = float(time.perf_counter() - start)  # includes TF start-up
        res["peak_rss_mb"] = peak  # the DCA process's own peak
        res["info"]["fit_seconds"] = float(out["seconds"])
        return res


def run_none(train_adata: AnnData, seed: int) -> dict[str, Any]:
    """No denoising: ``D = X``; latent is the PCA of log-normalised counts."""
    start = time.perf_counter()
    x = _dense(train_adata.X)
    latent = pca_latent(log_normalise(x), seed=seed)
    return _result(x, latent, start, label="none (D = X)", latent_kind="PCA of log-normalised X")


RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "zipo": run_zipo,
    "scvi_zinb": functools.partial(run_scvi, gene_likelihood="zinb"),
    "scvi_poisson": functools.partial(run_scvi, gene_likelihood="poisson"),
    "ldvae": run_ldvae,
    "magic": run_magic,
    "dca": run_dca,
    "none": run_none,
}


def _jsonable(value):
    if isinstance(value, tuple):
        return list(value)
    return value


def run_method(
    method: str,
    train_adata: AnnData,
    seed: int = 0,
    isolate: bool = True,
    threads: int = 1,
    timeout: float | None = 3600,
    nice: int = 10,
    **kw,
) -> dict[str, Any]:
    """Run one method, by default in its own subprocess (per-method peak RSS, crash isolation).

    Parameters
    ----------
    method
        A key of :data:`RUNNERS`.
    train_adata
        Training counts in ``.X`` (only ``.X`` and, if ``batch_key`` is given, that column are
        passed on).
    seed
        Seed of the method.
    isolate
        Run in a subprocess (``python -m benchmarks._harness``); else in this process.
    threads
        Torch / BLAS threads of the subprocess (``None``: leave as is).
    timeout
        Seconds before the subprocess is killed.
    nice
        Niceness of the subprocess (counting this process's own).
    **kw
        Passed to the runner (JSON-serialisable when isolated).

    Returns
    -------
    The runner's dictionary; on failure ``{"error": reason, ...}`` without ``denoised``.
    """
    if method not in RUNNERS:
        raise ValueError(f"Unknown method {method!r}; choose one of {sorted(RUNNERS)}.")
    if not isolate:
        return RUNNERS[method](train_adata, seed, **kw)
    batch_key = kw.get("batch_key")
    with tempfile.TemporaryDirectory() as tmp:
        path_in, path_out = Path(tmp) / "train.h5ad", Path(tmp) / "out.npz"
        _counts_only(train_adata, batch_key).write_h5ad(path_in)
        # niceness adds up: only raise it to ``nice`` if this process is not already there
        extra = max(0, nice - os.nice(0))
        cmd = ["nice", "-n", str(extra), sys.executable, "-m", "benchmarks._harness", method]
        cmd += [str(path_in), str(path_out), "--seed", str(seed)]
        cmd += ["--kwargs", json.dumps({k: _jsonable(v) for k, v in kw.items()})]
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        if threads is not None:
            cmd += ["--threads", str(threads)]
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                env[var] = str(threads)
        try:
            proc = subprocess.run(
                cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s", "info": {}}
        if proc.returncode != 0 or not path_out.exists():
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            reason = lines[-1] if lines else f"exit code {proc.returncode}"
            return {"error": reason[-300:], "info": {}, "stderr": proc.stderr[-3000:]}
        out = np.load(path_out, allow_pickle=False)
        latent = out["latent"] if out["latent"].size else None
        return {
            "denoised": out["denoised"],
            "latent": latent,
            "seconds": float(out["seconds"]),
            "peak_rss_mb": float(out["peak_rss_mb"]),
            "info": json.loads(str(out["info"])),
        }


# ----------------------------------------------------------------------------- environment
def code_state() -> str:
    """The repository's commit, and whether the package has uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "zipo_scvi"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{commit}{' + uncommitted changes in zipo_scvi/' if dirty else ''}"


def machine_info() -> dict[str, str]:
    """CPU model, cores, load, and the versions that matter for the timings.

    Examples
    --------
    >>> "cpu" in machine_info()
    True
    """
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "load_avg_1min": f"{os.getloadavg()[0]:.2f}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": str(torch.get_num_threads()),
    }
    try:
        import scvi

        info["scvi-tools"] = scvi.__version__
    except ImportError:
        pass
    return info


def update_readme_section(readme: str | Path, name: str, body: str) -> bool:
    """Replace the text between ``<!-- BEGIN:name -->`` and ``<!-- END:name -->`` in a file.

    If the markers are missing, the section is appended at the end of the file.

    Parameters
    ----------
    readme
        Path of the markdown file.
    name
        Section name used in the markers.
    body
        New markdown between the markers.

    Returns
    -------
    True if the file changed.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "R.md"
    >>> _ = path.write_text("a\\n<!-- BEGIN:x -->\\nold\\n<!-- END:x -->\\nb\\n")
    >>> update_readme_section(path, "x", "new")
    True
    >>> "new" in path.read_text() and "old" not in path.read_text()
    True
    """
    path = Path(readme)
    text = path.read_text()
    begin, end = f"<!-- BEGIN:{name} -->", f"<!-- END:{name} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), flags=re.DOTALL)
    if pattern.search(text):
        new = pattern.sub(lambda _m: block, text, count=1)
    else:
        new = text.rstrip("\n") + "\n\n" + block + "\n"
    if new != text:
        path.write_text(new)
    return new != text


DOCS = REPO / "docs"


def repo_link(path: Path) -> str:
    """``path`` relative to the repository root (as reports link figures), else as given."""
    try:
        return path.resolve().relative_to(REPO).as_posix()
    except ValueError:
        return path.as_posix()


# Links that a report writes relative to the repository root (figures and results files).
_REPO_LINK = re.compile(r"(\]\()((?:benchmarks|tutorials|zipo_scvi|tests)/)")


def update_docs_section(page: str | Path, name: str, body: str) -> bool:
    """Replace the marked section ``name`` of a documentation page under ``docs/``.

    ``body`` is written as for the README: its links to files of the repository (``benchmarks/``,
    ``tutorials/``, ...) are relative to the repository root; they are rewritten relative to the
    page, so the figures show in the built site.

    Parameters
    ----------
    page
        Path of the page relative to ``docs/`` (e.g. ``"benchmarks/speed.md"``).
    name
        Section name used in the markers.
    body
        New markdown between the markers.

    Returns
    -------
    True if the page changed.
    """
    path = DOCS / page
    prefix = Path(os.path.relpath(REPO, path.parent)).as_posix()
    return update_readme_section(path, name, _REPO_LINK.sub(rf"\g<1>{prefix}/\g<2>", body))


def quiet(threads: int | None = None) -> None:
    """Quiet a benchmark process: no warnings, and lightning and scvi log errors only; with
    ``threads``, torch's intra-op threads too."""
    import logging
    import warnings

    import lightning.pytorch  # noqa: F401  (sets its loggers' levels when imported: import first)

    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- figures
@contextlib.contextmanager
def saved_figure(path: str | Path, *grid: int, dpi: int = 110, **subplots_kwargs):
    """A matplotlib figure (Agg backend) of ``plt.subplots(*grid, **subplots_kwargs)``, saved to
    ``path`` with a tight layout when the block ends, and closed.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "f.png"
    >>> with saved_figure(path, 1, 2, figsize=(4, 2)) as (fig, axes):
    ...     _ = axes[0].plot([0, 1])
    >>> path.exists()
    True
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*grid, **subplots_kwargs)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)


def bars_around_zero(ax, labels, values, colors, xerr=None, fontsize=None) -> None:
    """Horizontal bars of signed values (a change in %), first label on top, a line at zero."""
    ax.barh(range(len(labels)), values, xerr=xerr, color=colors)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(labels)), labels, **({"fontsize": fontsize} if fontsize else {}))
    ax.invert_yaxis()


# ----------------------------------------------------------------------------- subprocess entry
def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run one benchmark method on an .h5ad.")
    parser.add_argument("method", choices=sorted(RUNNERS))
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--kwargs", default="{}")
    args = parser.parse_args(argv)
    quiet(None if args.method in ("none", "magic") else args.threads)  # those two need no torch
    import anndata

    adata = anndata.read_h5ad(args.input)
    kw = json.loads(args.kwargs)
    for key in ("encoder_sizes", "decoder_sizes", "library_sizes"):
        if key in kw:
            kw[key] = tuple(kw[key])
    res = RUNNERS[args.method](adata, args.seed, **kw)
    latent = res["latent"] if res["latent"] is not None else np.zeros(0, dtype=np.float32)
    np.savez(
        args.output,
        denoised=res["denoised"],
        latent=latent,
        seconds=np.float64(res["seconds"]),
        peak_rss_mb=np.float64(_peak_rss_mb()),
        info=np.array(json.dumps(res["info"])),
    )


if __name__ == "__main__":
    _main()
