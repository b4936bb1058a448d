"""examples/analysis.ipynb runs top to bottom on a small sweep and shows the report's table."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from sglr_ray import cli

ROOT = Path(__file__).resolve().parents[2]
GRID = """\
base: {dataset: synthetic, clients: 3, samples_per_client: 16, epochs: 2, val_samples: 60,
       test_samples: 60, torch_threads: 1, out: small}
grid: {method: [psl, sglr], seed: [0, 1]}
"""


@pytest.fixture
def small_results(tmp_path, monkeypatch) -> Path:
    """Four completed runs: PSL and SGLR, two seeds each (a paired comparison)."""
    (tmp_path / "grid.yaml").write_text(GRID)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["sweep", "--grid", "grid.yaml"]) == 0
    return tmp_path / "small"


def test_analysis_notebook_runs(small_results, tmp_path, monkeypatch):
    monkeypatch.setenv("SGLR_RESULTS", str(small_results))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(ROOT / "examples" / "analysis.ipynb", as_version=4)
    NotebookClient(
        notebook, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    text = "\n".join(out.get("text", "") + out.get("data", {}).get("text/plain", "") for out in outputs)
    assert "4 completed runs of 4" in text
    assert "acc_ci95" in text and "sglr" in text and "psl" in text  # the report's main table
    assert any("image/png" in out.get("data", {}) for out in outputs)  # the report's plot
