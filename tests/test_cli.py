"""The minimal `zipo denoise` command: embedded default data, outputs, user errors."""

import subprocess
import sys

import anndata
import pytest

from zipo_scvi.cli import main
from zipo_scvi.data import simulate_counts


def test_denoise_writes_every_output(tmp_path):
    src = tmp_path / "in.h5ad"
    simulate_counts(n_cells=120, n_genes=40, seed=1).write_h5ad(src)
    out = tmp_path / "out.h5ad"
    assert main(["denoise", str(src), "-o", str(out), "--epochs", "2", "--quiet"]) == 0
    result = anndata.read_h5ad(out)
    assert result.layers["zipo_denoised"].shape == (120, 40)
    assert "zipo_zero_prob" in result.layers and "X_zipo" in result.obsm
    assert "zipo_library" in result.obs and "hyperparameters" in result.uns["zipo"]


def test_embedded_default_via_python_m(tmp_path):
    out = tmp_path / "default.h5ad"
    proc = subprocess.run(
        [sys.executable, "-m", "zipo_scvi", "denoise", "-o", str(out), "--epochs", "1", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert anndata.read_h5ad(out).obsm["X_zipo"].shape[0] == 2000


@pytest.mark.parametrize("case", ["missing", "exists", "not_h5ad", "garbage"])
def test_user_errors_exit_2_with_one_line(tmp_path, capsys, case):
    out = tmp_path / "out.h5ad"
    src = tmp_path / "in.h5ad"
    if case == "missing":
        args = ["denoise", str(tmp_path / "nope.h5ad"), "-o", str(out)]
    elif case == "exists":
        out.write_text("x")
        simulate_counts(n_cells=20, n_genes=10).write_h5ad(src)
        args = ["denoise", str(src), "-o", str(out)]
    elif case == "not_h5ad":
        (tmp_path / "in.txt").write_text("x")
        args = ["denoise", str(tmp_path / "in.txt"), "-o", str(out)]
    else:
        src.write_text("this is not hdf5")
        args = ["denoise", str(src), "-o", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("zipo: error:")
    if case == "exists":
        assert out.read_text() == "x"
