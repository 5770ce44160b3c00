"""Every notebook in tutorials/ runs top to bottom (real and simulated data, a few epochs).

``ZIPO_STORE_TUTORIALS=1 python -m pytest tests/test_tutorials.py`` also writes each executed
notebook back to ``tutorials/``, so the outputs stored in the repository (and rendered in the
docs) are those of the run the tests make.
"""

import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

TUTORIALS = sorted((Path(__file__).resolve().parents[1] / "tutorials").glob("*.ipynb"))


def test_the_three_tutorials_exist():
    names = {p.stem for p in TUTORIALS}
    assert {"quickstart", "zero_inflation_and_sparsity", "command_line"} <= names


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_runs_without_error(path, tmp_path, monkeypatch):
    # One thread per kernel and per `zipo` process: several are fast, not fighting, on a busy CPU.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    # `!zipo ...` cells need the console script of this interpreter's environment.
    bin_dir = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", bin_dir + os.pathsep + os.environ.get("PATH", ""))
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
        record_timing=False,  # no timestamps in stored notebooks
    )
    client.execute()  # raises CellExecutionError naming the failing cell
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            assert output.get("output_type") != "error", cell.source
            text = output.get("text", "")
            # shell cells (`!zipo ...`) do not raise: check that the commands' failures are only
            # the deliberate ones, which the notebook shows with their exit code
            if "zipo: failed" in text or "Traceback" in text:
                pytest.fail(f"{path.name}: a command failed in cell:\n{cell.source}\n{text}")
    if os.environ.get("ZIPO_STORE_TUTORIALS") == "1":
        nbformat.write(notebook, path)
