"""Run DCA (ZINB autoencoder) on raw counts; run by the DCA venv's python (setup_dca_env.sh).

Usage: python run_dca.py INPUT.h5ad OUTPUT.npz [--epochs N] [--seed S] [--threads T]
                          [--ae-type zinb-conddisp|nb-conddisp|...]

Reads raw integer counts from INPUT's .X, runs ``dca.api.dca`` with its defaults except
``ae_type="zinb-conddisp"`` (the ZINB model of the DCA paper; the API and CLI of 0.3.4 default
to ``nb-conddisp``) and writes OUTPUT.npz with ``denoised`` (cells x genes, float32: DCA's
returned mean), ``latent`` (the 32-unit bottleneck, as DCA's ``X_dca``), ``dropout`` (ZINB pi,
ZINB only) and ``seconds`` (wall time of fit + predict).

Count scale: DCA's output layer multiplies the normalised mean by the size factor
s_i = n_i / median(n) and its loss compares that to the raw counts, so the returned mean is
already on the input's count scale; nothing is rescaled here. It is the NB mean mu of the ZINB;
the ZINB expectation is (1 - dropout) * denoised. Genes with no counts (DCA refuses them) are
dropped and get 0 (dropout 1).
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import anndata as ad
import numpy as np
import scipy.sparse as sp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--ae-type", default="zinb-conddisp")
    args = parser.parse_args()

    from dca.api import dca
    from dca.io import normalize, read_dataset

    x = ad.read_h5ad(args.input).X
    x = np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float32)
    if not np.array_equal(x, np.round(x)) or x.min() < 0:
        raise SystemExit("run_dca.py: INPUT .X must hold raw non-negative integer counts")
    keep = x.sum(0) > 0
    data = ad.AnnData(x[:, keep])

    start = time.perf_counter()
    out, net = dca(
        data,
        ae_type=args.ae_type,
        epochs=args.epochs,
        random_state=args.seed,
        threads=args.threads,
        return_model=True,
        copy=True,
    )
    # Latent: the encoder on the same normalised input DCA trains on.
    norm = normalize(read_dataset(data, copy=True), filter_min_counts=False)
    latent = net.encoder.predict({"count": norm.X, "size_factors": norm.obs.size_factors})
    result = {"latent": np.asarray(latent, dtype=np.float32)}
    if "pi" in net.extra_models:
        result["dropout"] = np.ones_like(x)
        result["dropout"][:, keep] = net.extra_models["pi"].predict(norm.X)
    seconds = time.perf_counter() - start

    result["denoised"] = np.zeros_like(x)
    result["denoised"][:, keep] = np.asarray(out.X, dtype=np.float32)
    np.savez(args.output, seconds=np.float64(seconds), **result)
    print(f"run_dca: {x.shape} in {seconds:.1f}s -> {args.output}")


if __name__ == "__main__":
    main()
