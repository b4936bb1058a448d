"""`ray job submit` for real: a tiny SGLR run submitted to a token-authenticated Ray head of the test's own.

The driver runs on this machine, in the head's copy of the repository (the uploaded working_dir), with
the head's `python` (the venv's, first on its PATH); the CLI attaches to the cluster through the
RAY_ADDRESS that Ray's job supervisor sets.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SUBMIT_TIMEOUT_S = 300
SWEEP_TIMEOUT_S = 900  # the 4-run sweep takes about 100 s on 2 busy cores: this only catches a hang
EXCLUDES = [".venv", ".git", "results", "out", "**/__pycache__"]
TAIL_CHARS = 4000
TINY_RUN = [
    "--method", "sglr", "--dataset", "synthetic", "--clients", "3", "--samples-per-client", "32",
    "--batch-size", "8", "--epochs", "1", "--val-samples", "100", "--test-samples", "100",
    "--executor", "ray", "--torch-threads", "1",
]  # fmt: skip


def tail(text: str | bytes | None) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text or "")[-TAIL_CHARS:]


def submit_command(ray_head, submission_id: str, *cli: str) -> list[str]:
    """`ray job submit` of `python -m sglr_ray.cli CLI...`, this repository as the working_dir."""
    return [
        ray_head.ray_bin, "job", "submit",
        "--address", ray_head.dashboard_url,
        "--submission-id", submission_id,
        "--working-dir", str(REPO_ROOT),
        "--runtime-env-json", json.dumps({"excludes": EXCLUDES}),
        "--",
        "python", "-m", "sglr_ray.cli", *cli,
    ]  # fmt: skip


# The same tiny run with a user's model and dataset files (issue 24 item 3): they travel to the
# actors with the working_dir and the runtime environment, as method files do.
FILE_MODEL_AND_DATA = [
    "--model",
    "examples/custom_model.py:mlp",
    "--dataset",
    "examples/custom_dataset.py:tabular",
]


@pytest.mark.cluster
@pytest.mark.parametrize("extra", [[], FILE_MODEL_AND_DATA], ids=["built-in", "file-model-and-dataset"])
def test_job_submit_runs_sglr_on_the_cluster(ray_head, tmp_path, extra):
    # Token authentication is really on: the dashboard refuses a request without the token.
    status, body = ray_head.request("/api/jobs/", authenticated=False)
    assert status == 401, f"unauthenticated GET /api/jobs/ gave HTTP {status}, expected 401: {body[:500]}"

    out = tmp_path / "out"
    run_id = f"job-{uuid.uuid4().hex[:8]}"
    submission_id = f"sglr-{run_id}"
    command = submit_command(
        ray_head, submission_id, "run", *TINY_RUN, *extra, "--out", str(out), "--run-id", run_id
    )
    started = time.monotonic()
    try:
        submit = subprocess.run(
            command, cwd=REPO_ROOT, env=ray_head.env, capture_output=True, text=True, timeout=SUBMIT_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(
            f"`ray job submit` still running after {SUBMIT_TIMEOUT_S} s\n"
            f"--- stdout ---\n{tail(error.stdout)}\n--- stderr ---\n{tail(error.stderr)}\n"
            f"--- head log ---\n{ray_head.log_tail()}"
        )
    elapsed = time.monotonic() - started
    report = (
        f"`ray job submit` rc {submit.returncode} after {elapsed:.1f} s\n"
        f"--- stdout ---\n{tail(submit.stdout)}\n--- stderr ---\n{tail(submit.stderr)}"
    )

    assert submit.returncode == 0, report
    # The CLI prints "Job '<id>' succeeded"; the job API has the status itself.
    assert f"Job '{submission_id}' succeeded" in submit.stdout + submit.stderr, report
    info = ray_head.job_info(submission_id)
    assert info["status"] == "SUCCEEDED", f"job status {info['status']}: {info.get('message')}\n{report}"
    assert info["runtime_env"]["working_dir"].startswith("gcs://_ray_pkg_"), info["runtime_env"]

    # The working_dir was unpacked on the head (the driver's cwd, so `-m sglr_ray.cli` imports this copy),
    # without the excluded virtual environment.
    packages = list(ray_head.temp_dir.glob("session_*/runtime_resources/working_dir_files/_ray_pkg_*"))
    assert any((p / "sglr_ray" / "cli.py").is_file() for p in packages), (
        f"no unpacked working_dir: {packages}"
    )
    assert not any((p / ".venv").exists() for p in packages), "the .venv was uploaded despite the excludes"

    for table in ("runs", "epochs", "clients"):
        assert (out / table / f"{run_id}.parquet").is_file(), f"no {table}/{run_id}.parquet\n{report}"
    runs = pd.read_parquet(out / "runs" / f"{run_id}.parquet")
    epochs = pd.read_parquet(out / "epochs" / f"{run_id}.parquet")
    assert len(runs) == 1, runs
    assert runs.loc[0, "status"] == "completed", runs.T
    assert runs.loc[0, "executor"] == "ray", runs.T
    assert runs.loc[0, "method"] == "sglr" and runs.loc[0, "clients"] == 3, runs.T
    if extra:  # the files' hashes are in the identity: the driver and the actors read the same files
        assert (
            "custom_model.py:mlp@" in runs.loc[0, "model"]
            and "custom_dataset.py:tabular@" in runs.loc[0, "dataset"]
        )
    assert len(epochs) == 1, epochs
    assert (epochs["run_id"] == run_id).all(), epochs


# Issue 23 item 4: on a 2-CPU head each run used to hold a CPU for its task while its own actors asked for
# 2/3 CPU each, so a run whose task started could find its actors' CPUs taken by another run and fail
# with PlacementError after --placement-timeout-s. A short timeout makes that failure quick to see; with
# one placement group per run (task and actors together) a run starts only once all of it fits.
SWEEP_GRID = """\
base: {dataset: synthetic, clients: 2, samples_per_client: 16, batch_size: 8, epochs: 1,
       val_samples: 500, test_samples: 500, executor: ray, placement_timeout_s: 3, out: OUT}
grid: {method: [psl, sglr], seed: [0, 1]}
"""
ERROR_LINE = re.compile(r"\bE \d+ \d+\] \w+\.cc:\d+:")  # an error-level line of Ray's C++ log


@pytest.mark.cluster
def test_a_four_run_sweep_completes_on_a_two_cpu_head_in_one_submission(ray_head, tmp_path):
    out = tmp_path / "out"
    grid = tmp_path / "grid.yaml"
    grid.write_text(SWEEP_GRID.replace("OUT", str(out)))
    submission_id = f"sweep-{uuid.uuid4().hex[:8]}"
    command = submit_command(ray_head, submission_id, "sweep", "--grid", str(grid), "--backend", "ray")
    started = time.monotonic()
    try:
        submit = subprocess.run(
            command, cwd=REPO_ROOT, env=ray_head.env, capture_output=True, text=True,
            timeout=SWEEP_TIMEOUT_S,
        )  # fmt: skip
    except subprocess.TimeoutExpired as error:
        pytest.fail(
            f"the sweep job still ran after {SWEEP_TIMEOUT_S} s\n{tail(error.stdout)}\n{tail(error.stderr)}"
        )
    output = submit.stdout + submit.stderr
    report = (
        f"`ray job submit` rc {submit.returncode} after {time.monotonic() - started:.0f} s\n{tail(output)}"
    )

    runs = pd.read_parquet(out / "runs") if (out / "runs").is_dir() else pd.DataFrame({"status": []})
    assert len(runs) == 4 and set(runs.status) == {"completed"}, f"{runs}\n{report}"
    assert submit.returncode == 0 and ray_head.job_info(submission_id)["status"] == "SUCCEEDED", report
    assert "completed 4 runs on Ray" in output, report
    # A normal run prints no error-level line (issue 23 item 6: actors' constructor arguments in the
    # object store made every Ray run print one from core_worker.cc).
    assert "has constructor arguments in the object store" not in output, report
    assert not ERROR_LINE.findall(output), report
