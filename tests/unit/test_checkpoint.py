"""Checkpoints: replaying an epoch from a snapshot, and resuming a run after the driver died."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from sglr_ray.cli import main
from sglr_ray.data import prepare_data
from sglr_ray.execution import checkpoint
from sglr_ray.execution.driver import run_epoch, run_experiment
from sglr_ray.execution.local import LocalExecutor
from sglr_ray.measure.energy import NoMeter
from sglr_ray.results.writer import appended
from sglr_ray.version import machine

COMPARED = ["epoch", "train_loss", "val_acc", "test_acc", "bytes_up", "bytes_down", "bytes_server_sent"]


def epochs_of(out: str, run_id: str) -> pd.DataFrame:
    return pd.read_parquet(f"{out}/epochs/{run_id}.parquet")[COMPARED]


@pytest.mark.parametrize("method", ["sglr", "fl"])
def test_restoring_a_snapshot_replays_the_epoch_exactly(tiny_config, method):
    config = tiny_config(method=method, clients=3, clients_per_actor=2, epochs=3)
    ex = LocalExecutor(config, prepare_data(config))
    run_epoch(ex, config, 0, None, NoMeter())
    snapshot = checkpoint.take_snapshot(ex, 0)
    first = run_epoch(ex, config, 1, None, NoMeter())
    checkpoint.restore(ex, snapshot)
    replay = run_epoch(ex, config, 1, None, NoMeter())
    assert replay.train_loss == first.train_loss and replay.val == first.val
    assert replay.comm.bytes_up == first.comm.bytes_up  # the ledger restarted with the epoch


def test_resume_after_a_crash_records_every_epoch_once_with_uninterrupted_numbers(tiny_config, tmp_out):
    config = tiny_config(method="sglr", clients=3, epochs=5, checkpoint_every=2, out=tmp_out)
    run_experiment(config.replace(run_id="whole"))

    def crash_after_epoch_2(result):
        if result.epoch == 2:
            raise RuntimeError("the driver dies after epoch 2 was recorded")

    with pytest.raises(RuntimeError):
        run_experiment(config.replace(run_id="crashed"), on_epoch=crash_after_epoch_2)
    runs = pd.read_parquet(f"{tmp_out}/runs/crashed.parquet")
    assert runs.status[0] == "failed" and runs.epochs_done[0] == 3
    saved = checkpoint.checkpoint_path(tmp_out, "crashed")
    assert saved.exists()  # written after epoch 1 (every 2 epochs); epoch 2 will be redone

    outcome = run_experiment(config.replace(run_id="crashed"), resume=True)
    assert [r.epoch for r in outcome.epochs] == [2, 3, 4]
    pd.testing.assert_frame_equal(epochs_of(tmp_out, "crashed"), epochs_of(tmp_out, "whole"))
    runs = pd.read_parquet(f"{tmp_out}/runs/crashed.parquet")
    assert runs.status[0] == "completed" and runs.resumes[0] == 1 and runs.epochs_done[0] == 5
    assert not saved.exists()  # a completed run keeps no checkpoint
    assert len(pd.read_parquet(f"{tmp_out}/clients/crashed.parquet")) == 5 * 3


def test_a_run_records_its_machine_and_a_resume_elsewhere_adds_the_other(tiny_config, tmp_out, monkeypatch):
    # The same for the code version: a resume under other code appends it (issue 29 item 5).
    config = tiny_config(method="psl", clients=2, epochs=3, checkpoint_every=1, out=tmp_out, run_id="moved")

    def crash_after_epoch_0(result):
        if result.epoch == 0:
            raise RuntimeError("the first machine goes away")

    with pytest.raises(RuntimeError):
        run_experiment(config, on_epoch=crash_after_epoch_0)
    recorded = pd.read_parquet(f"{tmp_out}/runs/moved.parquet")
    first, version = recorded.machine[0], recorded.code_version[0]
    assert "torch" in first and first == machine()
    monkeypatch.setattr("sglr_ray.results.writer.machine", lambda: "Other CPU x64, torch 9.9")
    monkeypatch.setattr("sglr_ray.results.writer.code_version", lambda: "9.9.9+gother")
    run_experiment(config, resume=True)
    runs = pd.read_parquet(f"{tmp_out}/runs/moved.parquet")
    assert runs.status[0] == "completed" and runs.machine[0] == f"{first} + Other CPU x64, torch 9.9"
    assert runs.code_version[0] == f"{version} + 9.9.9+gother"


@pytest.mark.parametrize(
    ("recorded", "current", "expected"),
    [
        (None, "b", "b"),  # a row from before the column existed
        ("a", "a", "a"),
        ("a", "b", "a + b"),
        ("a + b", "a", "a + b"),  # back on the first machine: named once
        ("a + b", "c", "a + b + c"),
    ],
)
def test_provenance_appends_each_new_start(recorded, current, expected):
    assert appended(recorded, current) == expected


def test_killed_driver_process_resumes_from_the_command_line(tmp_out):
    args = [
        "--dataset", "synthetic", "--clients", "2", "--samples-per-client", "200", "--epochs", "4",
        "--val-samples", "100", "--test-samples", "100", "--torch-threads", "1", "--out", tmp_out,
    ]  # fmt: skip
    assert main(["run", *args, "--run-id", "whole"]) == 0
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[2])}
    driver = subprocess.Popen(
        [sys.executable, "-m", "sglr_ray.cli", "run", *args, "--run-id", "killed"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    epochs_file = Path(tmp_out) / "epochs" / "killed.parquet"
    deadline = time.monotonic() + 120
    # Read the bytes once, then parse: a read of the path raced the writer's rename once
    # ("Page was smaller than expected"), as pyarrow may open a path more than once per read.
    while not (epochs_file.exists() and len(pd.read_parquet(io.BytesIO(epochs_file.read_bytes()))) >= 2):
        assert driver.poll() is None and time.monotonic() < deadline, "driver ended before it was killed"
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    recorded = pd.read_parquet(epochs_file)
    assert 2 <= len(recorded) < 4, "the kill came too late to test anything"
    assert pd.read_parquet(f"{tmp_out}/runs/killed.parquet").status[0] == "running"  # no chance to say

    assert main(["run", "--resume", f"{tmp_out}/killed"]) == 0
    pd.testing.assert_frame_equal(epochs_of(tmp_out, "killed"), epochs_of(tmp_out, "whole"))
    assert pd.read_parquet(f"{tmp_out}/runs/killed.parquet").status[0] == "completed"


def test_resume_refuses_what_it_cannot_resume(tiny_config, tmp_out, capsys):
    run_experiment(tiny_config(out=tmp_out, run_id="done"))
    assert main(["run", "--resume", f"{tmp_out}/done"]) == 2
    assert "the run has already completed" in capsys.readouterr().err
    assert main(["run", "--resume", f"{tmp_out}/nothing"]) == 2
    assert f"no run recorded at '{tmp_out}/runs/nothing.parquet'" in capsys.readouterr().err
    assert main(["run", "--resume", f"{tmp_out}/done", "--epochs", "3"]) == 2
    assert "drop --epochs" in capsys.readouterr().err
