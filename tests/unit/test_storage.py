"""Results and checkpoints on a local directory or an S3 object store (moto's server on loopback)."""

from __future__ import annotations

import signal

import pandas as pd
import pyarrow.fs as pafs
import pytest

from sglr_ray.cli import interrupted_message, main, resume_target
from sglr_ray.config import ConfigError
from sglr_ray.execution import checkpoint, sweep
from sglr_ray.execution.driver import run_experiment
from sglr_ray.execution.interrupt import RunInterrupted
from sglr_ray.results.storage import Storage, join_run

COMPARED = ["epoch", "train_loss", "val_acc", "test_acc", "bytes_up", "bytes_down", "bytes_server_sent"]


@pytest.fixture(scope="module")
def s3_server():
    """An S3-compatible server on 127.0.0.1 for this module, with one bucket; yields its address."""
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as env:
        for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                           "AWS_DEFAULT_REGION": "us-east-1"}.items():  # fmt: skip
            env.setenv(key, value)
        import pyarrow.fs as pafs

        s3 = pafs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http", allow_bucket_creation=True)
        s3.create_dir("results")
        yield f"{host}:{port}"
    server.stop()


@pytest.fixture(params=["local", "s3"])
def out(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out")
    address = request.getfixturevalue("s3_server")
    return f"s3://results/{tmp_path.name}?endpoint_override={address}&scheme=http&region=us-east-1"


def test_tables_and_bytes_round_trip(out):
    store = Storage(out)
    store.check_writable()
    store.write_table([{"run_id": "a", "x": 1.5}], None, "runs/a.parquet")
    store.write_bytes("checkpoints/a.pt", b"\x00\x01")
    assert store.exists("runs/a.parquet") and not store.exists("runs/b.parquet")
    assert store.read_table("runs/a.parquet").to_pylist() == [{"run_id": "a", "x": 1.5}]
    assert store.read_bytes("checkpoints/a.pt") == b"\x00\x01"
    assert store.list("runs", ".parquet") == ["a.parquet"] and store.list("missing") == []
    store.delete("checkpoints/a.pt")
    assert not store.exists("checkpoints/a.pt")


@pytest.fixture
def s3_out(s3_server, tmp_path):
    """An empty prefix in the bucket, as --out spells it: the S3 options ride on the URI's query."""
    return f"s3://results/{tmp_path.name}?endpoint_override={s3_server}&scheme=http&region=us-east-1"


def read_s3_table(s3_server: str, out: str, table: str) -> pd.DataFrame:
    """`<out>/<table>` as pandas reads a directory of Parquet files, through pyarrow's S3 filesystem."""
    s3 = pafs.S3FileSystem(endpoint_override=s3_server, scheme="http", region="us-east-1")
    prefix = out.split("?")[0].removeprefix("s3://")
    return pd.read_parquet(f"{prefix}/{table}", filesystem=s3)


def test_a_run_on_s3_writes_its_tables_there_and_nothing_locally(
    tiny_config, s3_server, s3_out, tmp_path, monkeypatch
):
    workdir = tmp_path / "cwd"  # where Path("s3://...") would have made an "s3:" directory
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    outcome = run_experiment(tiny_config(clients=2, epochs=2, out=s3_out, run_id="remote"))
    assert list(workdir.iterdir()) == []
    runs = read_s3_table(s3_server, s3_out, "runs")
    assert runs.run_id.tolist() == ["remote"] and runs.status.tolist() == ["completed"]
    assert sorted(read_s3_table(s3_server, s3_out, "epochs").epoch) == [0, 1]
    assert len(read_s3_table(s3_server, s3_out, "clients")) == 2 * 2
    assert outcome.paths["epochs"] == f"{s3_out.split('?')[0]}/epochs/remote.parquet"
    assert not checkpoint.checkpoint_path(s3_out, "remote").exists()  # a completed run keeps none


@pytest.mark.parametrize("checkpoint_every", [1, 2])
def test_resume_from_a_checkpoint_on_s3_matches_an_uninterrupted_local_run(
    tiny_config, s3_out, tmp_path, capsys, checkpoint_every
):
    config = tiny_config(method="sglr", clients=2, epochs=4, checkpoint_every=checkpoint_every)
    run_experiment(config.replace(out=str(tmp_path / "local"), run_id="whole"))

    def crash_after_epoch_2(result):
        if result.epoch == 2:
            raise RuntimeError("the driver dies after epoch 2 was recorded")

    with pytest.raises(RuntimeError):
        run_experiment(config.replace(out=s3_out, run_id="crashed"), on_epoch=crash_after_epoch_2)
    assert checkpoint.checkpoint_path(s3_out, "crashed").exists()
    assert sweep.completed_runs(s3_out) == set()
    stop = RunInterrupted(signal.SIGTERM, "crashed", s3_out, 3)
    assert f"--resume '{join_run(s3_out, 'crashed')}'" in interrupted_message("run", stop)

    assert main(["run", "--resume", join_run(s3_out, "crashed")]) == 0  # as the CLI is used
    capsys.readouterr()
    store = Storage(s3_out)
    epochs = store.read_table("epochs/crashed.parquet").to_pandas()
    assert epochs.epoch.tolist() == [0, 1, 2, 3]  # no epoch recorded twice
    whole = pd.read_parquet(tmp_path / "local" / "epochs" / "whole.parquet")
    pd.testing.assert_frame_equal(epochs[COMPARED], whole[COMPARED])
    runs = store.read_table("runs/crashed.parquet").to_pandas()
    assert runs.status[0] == "completed" and runs.resumes[0] == 1
    assert not checkpoint.checkpoint_path(s3_out, "crashed").exists()
    assert sweep.completed_runs(s3_out) == {"crashed"}


def test_completed_runs_reads_an_object_store(tiny_config, s3_out):
    store = Storage(s3_out)
    for run_id, status in [("a", "completed"), ("b", "running"), ("c", "completed")]:
        store.write_table([{"run_id": run_id, "status": status}], None, f"runs/{run_id}.parquet")
    store.write_bytes("runs/notes.txt", b"not a table")
    assert sweep.completed_runs(s3_out) == {"a", "c"}
    configs = [tiny_config(out=s3_out, run_id=r) for r in "abd"]
    assert [c.run_id for c in sweep.pending(configs)] == ["b", "d"]


@pytest.mark.parametrize(
    ("address", "out", "run_id"),
    [
        ("results/x/RUN", "results/x", "RUN"),
        ("RUN", ".", "RUN"),
        ("s3://b/x/RUN", "s3://b/x", "RUN"),
        ("s3://b/x/RUN/?endpoint_override=h:9000&scheme=http", "s3://b/x?endpoint_override=h:9000&scheme=http",
         "RUN"),
        ("gs://b/RUN?q=1", "gs://b?q=1", "RUN"),
    ],
)  # fmt: skip
def test_resume_splits_the_run_id_off_a_path_or_uri(address, out, run_id):
    assert resume_target(address) == (out, run_id)
    assert resume_target(join_run(out, run_id)) == (out, run_id)


def test_resume_refuses_a_uri_without_a_run_id():
    with pytest.raises(ConfigError, match="names no run"):
        resume_target("s3://bucket?endpoint_override=h:9000")
