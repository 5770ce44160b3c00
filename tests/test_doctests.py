"""Every ``>>>`` example in the package's docstrings runs.

The examples that speak of ``model`` and ``adata`` get a small trained ZIP model and its data
(with ZIPO's outputs, also written as ``atlas.h5ad``), in a temporary working folder. ``+SKIP``
marks only what cannot run here (a finished optuna study, a whole command-line run).
"""

import doctest
import importlib
import pkgutil

import anndata
import matplotlib
import numpy as np
import pytest
import scanpy as sc

import zipo_scvi
from zipo_scvi import ZIPO
from zipo_scvi._outputs import store
from zipo_scvi.data import simulate_counts

matplotlib.use("Agg")

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(zipo_scvi.__path__, "zipo_scvi.")
    if info.name != "zipo_scvi.__main__"
)


@pytest.fixture(scope="module")
def namespace(tmp_path_factory):
    folder = tmp_path_factory.mktemp("doctests")
    adata = simulate_counts(n_cells=150, n_genes=40, n_batches=2, seed=0)
    del adata.layers["true_rate"]
    adata.write_h5ad(folder / "atlas.h5ad")
    ZIPO.setup_anndata(adata)
    model = ZIPO(adata, likelihood="zip", encoder_sizes=(16, 4), library_sizes=(8, 4), seed=0)
    model.train(max_epochs=2, batch_size=64, enable_progress_bar=False)
    store(adata, model.get_outputs())
    return folder, {"model": model, "adata": adata, "anndata": anndata, "np": np, "sc": sc}


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, namespace, capsys, monkeypatch):
    folder, names = namespace
    monkeypatch.chdir(folder)
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    runner = doctest.DocTestRunner(optionflags=flags)
    for test in doctest.DocTestFinder().find(module, name, globs={**vars(module), **names}):
        runner.run(test)
    failed, _attempted = runner.summarize(verbose=False)
    assert failed == 0, capsys.readouterr().out


def test_skip_stays_the_exception():
    run = skipped = 0
    for name in MODULES:
        for test in doctest.DocTestFinder().find(importlib.import_module(name), name):
            for example in test.examples:
                skipped += bool(example.options.get(doctest.SKIP))
                run += not example.options.get(doctest.SKIP)
    assert skipped <= 10 and run > 10 * skipped, (run, skipped)
