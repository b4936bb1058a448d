"""An actor killed by Ray's memory monitor: told as such, naming the actor, the memory and what to change.

No real out-of-memory: the Ray exceptions are constructed as Ray builds them.
"""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest
import ray
from ray.core.generated.common_pb2 import ActorDiedErrorContext

from sglr_ray.cli import main
from sglr_ray.errors import ActorLostError, ActorOutOfMemoryError
from sglr_ray.execution import driver, ray_actors
from sglr_ray.execution.memory_kill import describe_memory_kill
from sglr_ray.execution.ray_actors import RayExecutor

SHARD_ID, SERVER_ID = ray.ActorID.from_random(), ray.ActorID.from_random()
# The memory monitor's report as Ray 2.60 words it, and as older versions did.
REPORT_2_60 = (
    "1 worker(s) were killed due to the node running low on memory. Memory on the node "
    "(IP: 10.0.0.5, ID: 3a4b6075) was 30.10GB used / 32.00GB limit (0.940625), which exceeds "
    "the memory usage threshold of 0.950000. Ray killed 1 worker(s) based on the killing policy: "
    "[(Task: job ID=01000000, lease ID=06000000, task name=ClientActor.train_local, required "
    f"resources={{CPU: 1}}, Actor({SHARD_ID.hex()}) pid=4242, actual memory used=5.20GB, worker ID=5c9a)]"
)
REPORT_OLD = (
    "Task was killed due to the node running low on memory.\nMemory on the node (IP: 172.17.0.2, "
    "ID: 3a4b) where the task (actor ID: 5c9a, name=ServerActor.__init__, pid=69161, memory "
    "used=0.50GB) was running was 32.53GB / 33.28GB (0.977449), which exceeds the memory usage "
    "threshold of 0.969955."
)


def actor_died(detail: str, actor_id: ray.ActorID = SHARD_ID, name: str = "run/clients-0-4"):
    context = ActorDiedErrorContext(
        error_message=f"The actor is dead because its worker process has died. {detail}",
        actor_id=actor_id.binary(), name=name, class_name="ClientActor", pid=4242,
    )  # fmt: skip
    return ray.exceptions.ActorDiedError(cause=context)


NAMES = {SHARD_ID.hex(): "clients-0-4", SERVER_ID.hex(): "server"}


@pytest.mark.parametrize(
    ("ex", "actor", "memory"),
    [
        (ray.exceptions.OutOfMemoryError(REPORT_2_60), "the client shard actor holding clients 0-4",
         "the node 10.0.0.5 had 30.10 GB of 32.00 GB in use (kill threshold 0.950000); "
         "the actor's process used 5.20 GB"),
        (ray.exceptions.OutOfMemoryError(REPORT_OLD), "the server actor",
         "the node 172.17.0.2 had 32.53 GB of 33.28 GB in use (kill threshold 0.969955); "
         "the actor's process used 0.50 GB"),
        (actor_died(f"Worker exit type: NODE_OUT_OF_MEMORY Worker exit detail: {REPORT_2_60}"),
         "the client shard actor holding clients 0-4", "the actor's process used 5.20 GB"),
        (actor_died("Worker exit type: NODE_OUT_OF_MEMORY", SERVER_ID, name=""), "the server actor",
         "Ray reported: The actor died unexpectedly before finishing this task."),
        (actor_died("killed by the memory monitor", ray.ActorID.from_random(), "run/clients-7-7"),
         "the client shard actor holding client 7", "Ray reported"),
    ],
)  # fmt: skip
def test_a_memory_kill_names_the_actor_the_memory_and_the_settings(ex, actor, memory):
    message = describe_memory_kill(ex, NAMES)
    assert message.startswith(f"{actor} was killed by Ray's memory monitor: ")
    assert memory in message
    for setting in ("--clients-per-actor", "ray start --object-store-memory", "--checkpoint-every 0"):
        assert setting in message


@pytest.mark.parametrize(
    "ex",
    [
        # Every unexpected death names the kernel's OOM killer among its possible causes.
        actor_died("Worker exit type: SYSTEM_ERROR Some common causes include: (1) the process was "
                   "killed by the OOM killer due to high memory usage"),
        ray.exceptions.RayTaskError("train_local", "Traceback ...", ValueError("running low on memory")),
        ValueError("running low on memory"),
    ],
)  # fmt: skip
def test_other_failures_are_no_memory_kill(ex):
    assert describe_memory_kill(ex, NAMES) is None


def executor_raising(monkeypatch, error: Exception) -> RayExecutor:
    """A RayExecutor with fake actor handles whose every ray.get fails with `error`."""
    ex = RayExecutor.__new__(RayExecutor)  # no Ray: get() is what is tested
    ex.server, ex.server_in_driver = SimpleNamespace(_actor_id=SERVER_ID), False
    ex.shards = [SimpleNamespace(_actor_id=SHARD_ID), SimpleNamespace(_actor_id=ray.ActorID.from_random())]
    ex.shard_client_ids = [[0, 1, 2, 3, 4], [5, 6]]

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(ray_actors.ray, "get", fail)
    return ex


def test_the_ray_executor_turns_a_memory_kill_into_actor_out_of_memory(monkeypatch):
    ex = executor_raising(monkeypatch, actor_died("Worker exit type: NODE_OUT_OF_MEMORY", name=""))
    with pytest.raises(
        ActorOutOfMemoryError, match="clients 0-4 was killed by Ray's memory monitor"
    ) as caught:
        ex.get("ref")
    assert isinstance(caught.value.__cause__, ray.exceptions.ActorDiedError)
    assert not isinstance(caught.value, ActorLostError)  # not replayed: it would need the same memory


def test_the_ray_executor_still_replays_other_deaths(monkeypatch):
    ex = executor_raising(monkeypatch, actor_died("Worker exit type: SYSTEM_ERROR"))
    with pytest.raises(ActorLostError):
        ex.get("ref")


def test_the_cli_reports_a_memory_kill_in_one_line_and_records_the_run_failed(
    tiny_config, tmp_out, monkeypatch, capsys
):
    message = "the client shard actor holding clients 0-1 was killed by Ray's memory monitor: ..."

    def killed(*args, **kwargs):
        raise ActorOutOfMemoryError(message)

    monkeypatch.setattr(driver, "run_epoch", killed)
    args = ["--dataset", "synthetic", "--clients", "2", "--samples-per-client", "32", "--epochs", "1",
            "--val-samples", "100", "--test-samples", "100", "--torch-threads", "1"]  # fmt: skip
    assert main(["run", *args, "--out", tmp_out, "--run-id", "oom"]) == 2
    err = capsys.readouterr().err
    assert err == f"sglr-ray: error: {message}\n"  # no traceback
    assert pd.read_parquet(f"{tmp_out}/runs/oom.parquet").status[0] == "failed"
