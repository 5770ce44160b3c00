"""The README's quickstart runs as written on the real counts it names (a shorter training)."""

import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_runs(tmp_path, monkeypatch):
    pytest.importorskip("celltypist", reason="the quickstart's real counts ship in celltypist")
    text = README.read_text()
    block = re.search(r"## Quickstart on real counts\n.*?```python\n(.*?)```", text, re.S).group(1)
    assert "model.train()" in block and "ZIPO.setup_anndata" in block and "read_counts" in block
    # the same calls, with a few epochs instead of training to early stopping
    code = block.replace("model.train()", "model.train(max_epochs=3, enable_progress_bar=False)")
    assert code != block
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README quickstart", "exec"), namespace)
    adata = namespace["adata"]
    assert adata.n_obs == 559
    assert adata.obsm["X_zipo"].shape[0] == 559
    # the denoised layer keeps each cell's observed total, as the README says
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    np.testing.assert_allclose(adata.layers["zipo_denoised"].sum(axis=1), totals, rtol=1e-3)
    assert adata.obs["leiden"].nunique() > 1 and "X_umap" in adata.obsm
    assert (tmp_path / "zipo_model" / "model.pt").exists()
    assert (tmp_path / "zipo_model" / "adata.h5ad").exists()
