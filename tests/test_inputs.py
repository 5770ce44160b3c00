"""Every bad input gets a ValueError that names the problem."""

import anndata
import numpy as np
import pytest
import scipy.sparse as sp

from zipo_scvi import ZIPO


def _with(adata, value, sparse=True):
    x = adata.X.toarray()
    x[2, 3] = value
    adata.X = sp.csr_matrix(x) if sparse else x
    return adata


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize(
    ("value", "message"),
    [(-1.0, "negative"), (1.5, "non-integer"), (np.nan, "NaN"), (np.inf, "infinite")],
)
def test_bad_counts(adata, value, message, sparse):
    with pytest.raises(ValueError, match=message):
        ZIPO.setup_anndata(_with(adata, value, sparse))


def test_bad_counts_in_a_layer(adata):
    adata.layers["counts"] = adata.X.copy()
    adata.layers["counts"][0, 0] = -3
    with pytest.raises(ValueError, match=r"layers\['counts'\].*negative"):
        ZIPO.setup_anndata(adata, layer="counts")


def test_missing_layer(adata):
    with pytest.raises(ValueError, match="Layer 'counts' not found"):
        ZIPO.setup_anndata(adata, layer="counts")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_key": "sample"},
        {"categorical_covariate_keys": ["donor_id"]},
        {"continuous_covariate_keys": ["pct_ribo"]},
    ],
)
def test_missing_obs_keys(adata, kwargs):
    with pytest.raises(ValueError, match="not found in adata.obs"):
        ZIPO.setup_anndata(adata, **kwargs)


def test_nan_continuous_covariate(adata):
    adata.obs["pct_mito"] = adata.obs["pct_mito"].astype(float)
    adata.obs.iloc[0, adata.obs.columns.get_loc("pct_mito")] = np.nan
    with pytest.raises(ValueError, match="pct_mito"):
        ZIPO.setup_anndata(adata, continuous_covariate_keys=["pct_mito"])


@pytest.mark.parametrize("shape", [(0, 10), (10, 0)])
def test_empty_anndata(shape):
    with pytest.raises(ValueError, match="empty"):
        ZIPO.setup_anndata(anndata.AnnData(np.zeros(shape, dtype=np.float32)))


def test_input_is_not_modified_by_failed_setup(adata):
    bad = _with(adata, -1.0)
    before = bad.X.copy()
    with pytest.raises(ValueError):
        ZIPO.setup_anndata(bad)
    assert (bad.X != before).nnz == 0
    assert "_scvi_uuid" not in bad.uns
