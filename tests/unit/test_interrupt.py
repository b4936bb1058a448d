"""Stopping on SIGINT/SIGTERM (interrupt.py), and runs writing into one --out at once.

A stopped run exits promptly with 128 + the signal, is recorded as interrupted
with its checkpoint kept, and --resume (or running the sweep again) completes it
with the numbers of an uninterrupted run, each epoch recorded once.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from sglr_ray import cli
from sglr_ray.execution import sweep
from sglr_ray.execution.checkpoint import checkpoint_path
from sglr_ray.results.writer import write_table_atomic

ENV = os.environ | {"PYTHONPATH": str(Path(__file__).parents[2])}
EPOCHS = 5
SETTINGS = {"dataset": "synthetic", "clients": 2, "samples_per_client": 200, "val_samples": 100,
            "test_samples": 100, "torch_threads": 1, "epochs": EPOCHS}  # fmt: skip
FLAGS = [x for k, v in SETTINGS.items() for x in (f"--{k.replace('_', '-')}", str(v))]
COMPARED = ["epoch", "train_loss", "val_acc", "test_acc", "bytes_up", "bytes_down", "bytes_server_sent"]
STOP_WITHIN_S = 10.0  # measured 1-3 s on an idle 2-core machine; generous for a loaded one


def start(args: list[str], log: Path) -> subprocess.Popen:
    """`python -m sglr_ray ARGS`, output to `log` (a pipe could fill up and stall it)."""
    with log.open("w") as sink:
        return subprocess.Popen([sys.executable, "-m", "sglr_ray", *args], env=ENV, stdout=sink, stderr=sink)


def epochs_recorded(out: str, run_id: str) -> int:
    path = Path(out) / "epochs" / f"{run_id}.parquet"
    # the bytes read once, then parsed: a read of the path can race the writer's rename
    return len(pd.read_parquet(io.BytesIO(path.read_bytes()))) if path.exists() else 0


def wait_until_checkpointed(proc: subprocess.Popen, out: str, run_ids: list[str]) -> None:
    """Until every run has recorded an epoch and written its checkpoint."""
    deadline = time.monotonic() + 180
    while not all(
        epochs_recorded(out, r) >= 1 and checkpoint_path(out, r).exists() for r in run_ids
    ):  # fmt: skip
        assert proc.poll() is None, "it ended before it was signalled"
        assert time.monotonic() < deadline, "no epoch recorded within 180 s"
        time.sleep(0.05)


def stop(proc: subprocess.Popen, signum: int = signal.SIGINT) -> tuple[int, float]:
    """Send `signum`; (exit code, seconds from the signal to the exit)."""
    sent = time.monotonic()
    proc.send_signal(signum)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"still running 60 s after {signal.Signals(signum).name}")
    return code, time.monotonic() - sent


def compared(out: str, run_id: str) -> pd.DataFrame:
    return pd.read_parquet(f"{out}/epochs/{run_id}.parquet")[COMPARED]


def run_row(out: str, run_id: str) -> pd.Series:
    return pd.read_parquet(f"{out}/runs/{run_id}.parquet").iloc[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> pd.DataFrame:
    """The epochs of an uninterrupted run with SETTINGS."""
    out = str(tmp_path_factory.mktemp("reference"))
    assert cli.main(["run", *FLAGS, "--out", out, "--run-id", "whole"]) == 0
    return compared(out, "whole")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_ends_a_run_and_resume_completes_it(reference, tmp_path, signum):
    out, log = str(tmp_path / "out"), tmp_path / "run.log"
    proc = start(["run", *FLAGS, "--out", out, "--run-id", "stopped"], log)
    wait_until_checkpointed(proc, out, ["stopped"])
    code, took_s = stop(proc, signum)
    name = signal.Signals(signum).name
    print(f"{name}: exited {took_s:.2f} s after the signal")
    said = log.read_text()
    assert code == 128 + signum and took_s < STOP_WITHIN_S, said
    assert f"interrupted ({name})" in said and f"--resume {out}/stopped" in said
    assert "Traceback" not in said
    row, done = run_row(out, "stopped"), epochs_recorded(out, "stopped")
    assert row.status == "interrupted" and row.epochs_done == done and 1 <= done < EPOCHS
    assert checkpoint_path(out, "stopped").exists()

    assert cli.main(["run", "--resume", f"{out}/stopped"]) == 0
    pd.testing.assert_frame_equal(compared(out, "stopped"), reference)  # each epoch once, same numbers
    assert run_row(out, "stopped").status == "completed"


@pytest.mark.parametrize("parallel", [1, 2])
def test_a_stopped_sweep_records_its_runs_as_interrupted_and_carries_on(reference, tmp_path, parallel):
    out, log = str(tmp_path / "out"), tmp_path / "sweep.log"
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"base: {SETTINGS | {'out': out}}\ngrid: {{seed: [0, 1]}}\n")
    names = [c.run_id for c in sweep.expand_grid(SETTINGS | {"out": out}, {"seed": [0, 1]})]
    proc = start(["sweep", "--grid", str(grid), "--parallel", str(parallel)], log)
    wait_until_checkpointed(proc, out, names[:parallel])  # the runs in progress
    code, took_s = stop(proc)
    print(f"sweep --parallel {parallel}: exited {took_s:.2f} s after SIGINT")
    said = log.read_text()
    # The workers record their runs within a second, then the sweep waits for them to exit:
    # each tears down an interpreter holding torch (measured 1-4 s each on a loaded 2-core machine).
    assert code == 130 and took_s < STOP_WITHIN_S * parallel, said
    assert "sweep interrupted (SIGINT)" in said and "Traceback" not in said
    for name in names[:parallel]:
        assert run_row(out, name).status == "interrupted" and checkpoint_path(out, name).exists()
    assert sweep.completed_runs(out) == set()

    assert cli.main(["sweep", "--grid", str(grid)]) == 0
    assert sweep.completed_runs(out) == set(names)
    pd.testing.assert_frame_equal(compared(out, names[0]), reference)  # seed 0: the reference's settings


# A process that cleans up slowly after the first signal, to see what the second does.
SLOW_CLEANUP = """
import time
from sglr_ray.execution.interrupt import RunInterrupted, stop_on_signals
with stop_on_signals():
    try:
        print("running", flush=True)
        time.sleep(60)
    except RunInterrupted as stop:
        print("cleaning up after", stop.signal_name, flush=True)
        time.sleep(60)
"""


def test_a_second_signal_exits_at_once_without_a_traceback():
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_CLEANUP],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline() == "running\n"
    proc.send_signal(signal.SIGINT)
    assert proc.stdout.readline() == "cleaning up after SIGINT\n"
    code, took_s = stop(proc, signal.SIGINT)
    assert code == 130 and took_s < 5
    assert "Traceback" not in proc.stderr.read()


LATCH = """
import os, signal, time
from sglr_ray.execution.interrupt import RunInterrupted, note_signals, stop_on_signals
try:
    with stop_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
except RunInterrupted as stop:
    print("stopped by", stop.signal_name, stop.exit_code)
with stop_on_signals():  # the outermost block ended: a new one starts
    print("started again")
note_signals()  # a sweep's worker between runs
os.kill(os.getpid(), signal.SIGINT)
time.sleep(0.1)
print("noted, still running")
try:
    with stop_on_signals():
        print("must not start")
except RunInterrupted as stop:
    print("refused after", stop.signal_name)
"""


def test_a_noted_signal_stops_the_next_run_before_it_starts():
    done = subprocess.run([sys.executable, "-c", LATCH], env=ENV, capture_output=True, text=True, timeout=60)
    assert done.stdout.splitlines() == [
        "stopped by SIGTERM 143", "started again", "noted, still running", "refused after SIGINT",
    ], done.stderr  # fmt: skip


def test_concurrent_runs_into_one_out_lose_no_rows(tmp_path):
    out, runs = str(tmp_path / "out"), 3
    flags = [*FLAGS, "--samples-per-client", "50", "--epochs", "3", "--out", out]  # later flags win
    procs = [
        start(["run", *flags, "--seed", str(i), "--run-id", f"r{i}"], tmp_path / f"r{i}.log")
        for i in range(runs)
    ]
    reads = 0
    while any(p.poll() is None for p in procs):  # every file is whole whenever it is read
        for table in ("runs", "epochs", "clients"):
            if list(Path(out, table).glob("*.parquet")):
                pd.read_parquet(f"{out}/{table}")
                reads += 1
        time.sleep(0.02)
    assert [p.returncode for p in procs] == [0] * runs and reads > 0
    epochs = pd.read_parquet(f"{out}/epochs")
    assert sorted(zip(epochs.run_id, epochs.epoch, strict=True)) == [
        (f"r{i}", e) for i in range(runs) for e in range(3)
    ]
    assert len(pd.read_parquet(f"{out}/clients")) == runs * 3 * 2
    assert set(pd.read_parquet(f"{out}/runs").status) == {"completed"}
    assert not list(Path(out).rglob("*.tmp"))  # no temporary file left behind


def test_threads_writing_one_file_at_once_each_write_it_whole(tmp_path):
    path = tmp_path / "t" / "table.parquet"
    schema = pa.schema([("writer", pa.int64()), ("value", pa.int64())])
    errors: list[BaseException] = []

    def write(writer: int) -> None:
        try:
            for value in range(20):
                write_table_atomic([{"writer": writer, "value": v} for v in range(value + 1)], schema, path)
        except BaseException as ex:  # reported below: a thread's exception would be lost
            errors.append(ex)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    table = pd.read_parquet(path)
    assert table.writer.nunique() == 1 and list(table.value) == list(range(len(table)))
    assert [p.name for p in path.parent.iterdir()] == ["table.parquet"]
