"""SIGINT to a run on the Ray executor: it stops within seconds even while the driver
waits in ray.get, takes down the Ray it started, and --resume completes it."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from sglr_ray.cli import main
from sglr_ray.execution.checkpoint import checkpoint_path

# No RAY_ADDRESS: the run starts an embedded Ray of its own, as `sglr-ray run` on a laptop does.
ENV = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {
    "PYTHONPATH": str(Path(__file__).parents[2])
}
EPOCHS = 4
FLAGS = [
    "--dataset", "synthetic", "--clients", "2", "--samples-per-client", "400", "--epochs", str(EPOCHS),
    "--val-samples", "100", "--test-samples", "100", "--torch-threads", "1",
    "--clients-per-actor", "2",  # the local run's layout: shards decide which clients are grouped
]  # fmt: skip
COMPARED = ["epoch", "train_loss", "val_acc", "test_acc", "bytes_up", "bytes_down", "bytes_server_sent"]


def start_ray_run(out: str, log: Path) -> subprocess.Popen:
    """`sglr-ray run --executor ray` as run_id "stopped"; waits until it has checkpointed an epoch."""
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sglr_ray", "run", *FLAGS, "--executor", "ray", "--out", out,
             "--run-id", "stopped"],
            env=ENV, stdout=sink, stderr=sink,
        )  # fmt: skip
    epochs_file, deadline = Path(out) / "epochs" / "stopped.parquet", time.monotonic() + 300
    while not (epochs_file.exists() and len(pd.read_parquet(io.BytesIO(epochs_file.read_bytes()))) >= 1):
        assert proc.poll() is None, f"it ended before it was signalled:\n{log.read_text()}"
        assert time.monotonic() < deadline, "no epoch recorded within 300 s"
        time.sleep(0.05)
    while not checkpoint_path(out, "stopped").exists():  # written just after the epoch's row
        time.sleep(0.05)
    return proc


def wait_exit(proc: subprocess.Popen, since: float) -> tuple[int, float]:
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("still running 60 s after SIGINT")
    return code, time.monotonic() - since


def ray_processes_of(proc: subprocess.Popen) -> dict[psutil.Process, str]:
    """The processes of the Ray a run started (GCS, raylet, agents, workers), with their command."""
    return {p: " ".join(p.cmdline()[:1]) for p in psutil.Process(proc.pid).children(recursive=True)}


def assert_gone(processes: dict[psutil.Process, str], timeout_s: float = 30) -> None:
    _, alive = psutil.wait_procs(list(processes), timeout=timeout_s)
    assert not alive, f"left running: {[(p.pid, processes[p]) for p in alive]}"


def test_sigint_stops_a_ray_run_mid_epoch_and_resume_completes_it(ray_session, tmp_path):
    out, log = str(tmp_path / "out"), tmp_path / "run.log"
    proc = start_ray_run(out, log)
    time.sleep(1.0)  # into the next epoch: the driver is waiting on actors in ray.get
    ray_processes = ray_processes_of(proc)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    code, took_s = wait_exit(proc, sent)
    print(f"ray executor: exited {took_s:.2f} s after SIGINT")
    said = log.read_text()
    assert code == 130 and took_s < 10, said
    row = pd.read_parquet(f"{out}/runs/stopped.parquet").iloc[0]
    assert row.status == "interrupted" and 1 <= row.epochs_done < EPOCHS
    assert row.epochs_done == len(pd.read_parquet(f"{out}/epochs/stopped.parquet"))
    assert f"after {row.epochs_done} epochs; carry on with: sglr-ray run --resume {out}/stopped" in said
    assert "Traceback" not in said
    assert checkpoint_path(out, "stopped").exists()
    assert_gone(ray_processes)  # ray.shutdown: the embedded Ray is gone with the run

    assert main(["run", "--resume", f"{out}/stopped"]) == 0  # on this session's Ray
    assert main(["run", *FLAGS, "--out", out, "--run-id", "whole"]) == 0  # local: the same numbers
    resumed, whole = (pd.read_parquet(f"{out}/epochs/{r}.parquet")[COMPARED] for r in ("stopped", "whole"))
    pd.testing.assert_frame_equal(resumed, whole, check_exact=False, rtol=0, atol=1e-6)
    assert pd.read_parquet(f"{out}/runs/stopped.parquet").status[0] == "completed"


def test_a_second_sigint_exits_at_once(tmp_path):
    out, log = str(tmp_path / "out"), tmp_path / "run.log"
    proc = start_ray_run(out, log)
    ray_processes = ray_processes_of(proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)  # the first is being handled: recording, then shutting Ray down
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    code, took_s = wait_exit(proc, sent)
    print(f"ray executor: exited {took_s:.2f} s after the second SIGINT")
    said = log.read_text()
    assert code == 130 and took_s < 2, said
    assert "Traceback" not in said
    # No ray.shutdown: GCS, raylet and the actors' workers share the driver's fate (Ray kills them
    # when it dies); Ray's agent processes notice on their own, within a minute or two.
    core = {p: cmd for p, cmd in ray_processes.items() if "agent" not in cmd.lower()}
    assert_gone(core)
