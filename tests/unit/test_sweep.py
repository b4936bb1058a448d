"""`sglr-ray sweep`: grid expansion, validation before any run, and skipping finished runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from sglr_ray import cli
from sglr_ray.config import ConfigError
from sglr_ray.execution import sweep

TINY = {"dataset": "synthetic", "samples_per_client": 16, "batch_size": 8, "epochs": 1,
        "val_samples": 50, "test_samples": 50, "torch_threads": 1}  # fmt: skip


def test_grid_expands_and_drops_knobs_a_method_fixes():
    grid = {"method": ["psl", "sglr"], "clients": [2, 4], "alpha": [0, 0.5], "phi": [0.5, 1.0]}
    configs = sweep.expand_grid(TINY, grid)
    psl = [c for c in configs if c.method == "psl"]
    sglr = [c for c in configs if c.method == "sglr"]
    assert len(psl) == 2 and {(c.alpha, c.phi) for c in psl} == {(0.0, 0.0)}  # one per client count
    assert len(sglr) == 2 * 2 * 2
    assert len({c.run_id for c in configs}) == len(configs) == 10


def test_bad_combination_is_refused_naming_it():
    with pytest.raises(ConfigError, match=r"grid combination \{'phi': 1.5\}: --phi must be >= 0 and <= 1"):
        sweep.expand_grid(TINY, {"phi": [0.5, 1.5]})


def test_sweep_runs_each_config_once_and_skips_completed(tmp_path, monkeypatch, capsys):
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(
        f"base: {{dataset: synthetic, samples_per_client: 16, epochs: 1, val_samples: 50, test_samples: 50,"
        f" torch_threads: 1, out: {tmp_path / 'out'}}}\n"
        "grid: {method: [psl, sgl], clients: [2], phi: [1.0]}\n"
    )
    assert cli.main(["sweep", "--grid", str(grid_file)]) == 0
    first = capsys.readouterr().out
    assert first.count("completed ") == 2 and first.count("todo ") == 2
    configs = sweep.expand_grid(
        {"dataset": "synthetic", "samples_per_client": 16, "epochs": 1, "val_samples": 50, "test_samples": 50,
         "torch_threads": 1, "out": str(tmp_path / "out")},
        {"method": ["psl", "sgl"], "clients": [2], "phi": [1.0]},
    )  # fmt: skip
    names = {c.run_id for c in configs}
    assert sweep.completed_runs(str(tmp_path / "out")) == names
    assert {n.rsplit("-", 1)[0] for n in names} == {
        "psl-alexnet-c2-s0-a0-p0-all",
        "sgl-alexnet-c2-s0-a0-p1-all",
    }

    def must_not_run(config):
        raise AssertionError(f"re-ran {config.run_id}")

    monkeypatch.setattr(sweep, "_run_one", must_not_run)
    assert cli.main(["sweep", "--grid", str(grid_file)]) == 0
    second = capsys.readouterr().out
    assert second.count("done ") == 2 and "completed" not in second


def test_bad_grid_file_exits_2(tmp_path, capsys):
    grid_file = tmp_path / "grid.toml"
    grid_file.write_text("[grid]\nlearning_rate = [0.1]\n")
    assert cli.main(["sweep", "--grid", str(grid_file)]) == 2
    assert "grid has an unknown setting 'learning_rate'" in capsys.readouterr().err


def test_parallel_sweep_runs_in_separate_processes(tmp_path):
    configs = sweep.expand_grid(TINY | {"out": str(tmp_path / "out")}, {"seed": [0, 1], "clients": [2]})
    done = sweep.run_sweep(configs, parallel=2)
    assert sorted(done) == sorted(c.run_id for c in configs)
    assert sweep.completed_runs(str(tmp_path / "out")) == set(done)


ROOT = Path(__file__).resolve().parents[2]
GRIDS = sorted(ROOT.glob("results/*/grid*.yaml"))  # each study keeps its grid beside its tables


@pytest.mark.parametrize("grid", GRIDS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_committed_grids_expand_and_name_their_results(grid, capsys, monkeypatch):
    """Every study's grid still expands under today's settings (a renamed or newly checked
    setting would break the command that resumes it), and its dry run lists run files under
    the study's own folder."""
    assert len(GRIDS) >= 9
    monkeypatch.chdir(ROOT)  # grids name their output folders from the repository root
    assert cli.run_grid(grid, parallel=1, dry_run=True) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed and all(line.split()[0] in ("todo", "done") for line in listed)
    assert all(f"results/{grid.parent.name}/runs/" in line for line in listed)
    assert all("/runs/" in line and line.endswith(".parquet") for line in listed)
