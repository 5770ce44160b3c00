"""The README's quickstart runs as written (smaller data and epoch cap, same calls)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_runs(tmp_path, monkeypatch):
    text = README.read_text()
    block = re.search(r"## Quickstart\n\n```python\n(.*?)```", text, re.S).group(1)
    assert "model.train()" in block and "ZIPO.setup_anndata" in block
    code = block.replace("n_cells=2000, n_genes=1000", "n_cells=150, n_genes=40")
    code = code.replace("model.train()", "model.train(max_epochs=2, enable_progress_bar=False)")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README quickstart", "exec"), namespace)
    adata = namespace["adata"]
    assert adata.obsm["X_zipo"].shape[0] == 150
    assert adata.layers["zipo_denoised"].shape == (150, 40)
    assert (tmp_path / "zipo_model" / "model.pt").exists()
