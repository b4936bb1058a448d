"""`sglr-ray sweep --backend ray`: each run a Ray task; completed runs are skipped on resubmission."""

from __future__ import annotations

import pandas as pd

from sglr_ray import cli
from sglr_ray.execution import sweep
from sglr_ray.execution.ray_sweep import run_sweep_on_ray, sweep_status


def test_runs_become_ray_tasks_and_a_second_submission_skips_them(ray_session, tmp_path, capsys):
    base = {"dataset": "synthetic", "samples_per_client": 16, "epochs": 1, "val_samples": 50,
            "test_samples": 50, "torch_threads": 1, "out": str(tmp_path / "out")}  # fmt: skip
    configs = sweep.expand_grid(base, {"method": ["psl", "sgl"], "clients": [2], "phi": [1.0]})
    statuses = []
    done = run_sweep_on_ray(configs, cpus_per_run=1, poll_s=0.5, on_status=statuses.append)
    assert sorted(done) == sorted(c.run_id for c in configs)
    runs = pd.read_parquet(tmp_path / "out" / "runs")
    assert set(runs.status) == {"completed"} and len(runs) == 2
    assert set(sweep_status(configs).status) == {"completed"} and statuses
    assert run_sweep_on_ray(configs) == []  # resubmitted: nothing left to do


def test_cli_backend_ray_prints_a_status_table(ray_session, tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        f"base: {{dataset: synthetic, samples_per_client: 16, epochs: 1, val_samples: 50, test_samples: 50,"
        f" torch_threads: 1, out: {tmp_path / 'out'}}}\ngrid: {{method: [psl], clients: [2]}}\n"
    )
    assert cli.main(["sweep", "--grid", str(grid), "--backend", "ray"]) == 0
    out = capsys.readouterr().out
    assert "1 completed" in out and "completed 1 runs on Ray" in out
