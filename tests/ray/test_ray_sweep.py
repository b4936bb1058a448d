"""`sglr-ray sweep --backend ray`: each run a Ray task; completed runs are skipped on resubmission."""

from __future__ import annotations

import pandas as pd
from ray.exceptions import WorkerCrashedError

from sglr_ray import cli
from sglr_ray.execution import ray_sweep, sweep
from sglr_ray.execution.ray_sweep import SweepOutcome, run_sweep_on_ray, sweep_status


def test_runs_become_ray_tasks_and_a_second_submission_skips_them(ray_session, tmp_path, capsys):
    base = {"dataset": "synthetic", "samples_per_client": 16, "epochs": 1, "val_samples": 50,
            "test_samples": 50, "torch_threads": 1, "out": str(tmp_path / "out")}  # fmt: skip
    configs = sweep.expand_grid(base, {"method": ["psl", "sgl"], "clients": [2], "phi": [1.0]})
    statuses = []
    outcome = run_sweep_on_ray(configs, cpus_per_run=1, poll_s=0.5, on_status=statuses.append)
    assert sorted(outcome.completed) == sorted(c.run_id for c in configs) and not outcome.failed
    runs = pd.read_parquet(tmp_path / "out" / "runs")
    assert set(runs.status) == {"completed"} and len(runs) == 2
    assert set(sweep_status(configs).status) == {"completed"} and statuses
    assert run_sweep_on_ray(configs) == SweepOutcome()  # resubmitted: nothing left to do


def test_cli_backend_ray_prints_a_status_table(ray_session, tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        f"base: {{dataset: synthetic, samples_per_client: 16, epochs: 1, val_samples: 50, test_samples: 50,"
        f" torch_threads: 1, out: {tmp_path / 'out'}}}\ngrid: {{method: [psl], clients: [2]}}\n"
    )
    assert cli.main(["sweep", "--grid", str(grid), "--backend", "ray"]) == 0
    out = capsys.readouterr().out
    assert "1 completed" in out and "completed 1 runs on Ray" in out


FAILING_METHOD = """\
from sglr_ray.methods import Method


class Broken:
    def deliver(self, grads, epoch, step):
        raise RuntimeError("this method's rule is broken")


broken = Method(name="broken", summary="raises", fixed={"phi": 0.0}, defaults={"alpha": 0.0},
                rule=lambda config: Broken())
"""


def test_a_sweep_with_a_failing_run_exits_non_zero_naming_it(ray_session, tmp_path, capsys):
    # Both runs on the Ray executor, each a placement group of its task and actors within
    # --cpus-per-run; the broken one fails in its server step and is not retried.
    method = tmp_path / "broken_method.py"
    method.write_text(FAILING_METHOD)
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        f"base: {{dataset: synthetic, samples_per_client: 16, epochs: 1, val_samples: 50, test_samples: 50,"
        f" clients: 2, executor: ray, out: {tmp_path / 'out'}}}\n"
        f"grid: {{method: [psl, '{method}:broken']}}\n"
    )
    assert cli.main(["sweep", "--grid", str(grid), "--backend", "ray", "--cpus-per-run", "1"]) == 1
    captured = capsys.readouterr()
    failed = [line for line in captured.err.splitlines() if line.startswith("sglr-ray: error: 1 runs failed")]
    assert len(failed) == 1 and "broken" in failed[0] and "psl" not in failed[0], captured.err
    assert "this method's rule is broken" in failed[0]
    assert "completed 1 runs on Ray" in captured.out
    runs = pd.read_parquet(tmp_path / "out" / "runs").set_index("method")
    assert runs.status.to_dict() == {"psl": "completed", f"{method}:broken": "failed"}


def test_a_lost_task_is_retried_and_the_log_counts_the_retries(tiny_config, monkeypatch, caplog):
    # No Ray needed: what a finished task's ray.get gives decides; a lost task (its worker died)
    # is submitted again `retries` times, then reported with the number of retries it had.
    run = ray_sweep._Run(tiny_config(run_id="r1"), placement=None)
    monkeypatch.setattr(ray_sweep.ray, "get", lambda ref: (_ for _ in ()).throw(WorkerCrashedError()))
    outcome = SweepOutcome()
    assert [ray_sweep._settle(None, run, 2, outcome) for _ in range(3)] == [True, True, False]
    assert outcome.failed == {"r1": "lost after 2 retries: WorkerCrashedError"}
    messages = [r.getMessage() for r in caplog.records]
    assert "retry 1 of 2" in messages[0] and "retry 2 of 2" in messages[1]
    assert messages[2].startswith("run r1 failed after 2 retries")
