"""Fractional GPUs on a Ray with one logical GPU, and requests refused before any actor starts.

The module runs its own Ray (fixture `ray_one_gpu`): Ray places by the GPU
count it is told, so the actors get GPU ids here as on a GPU node; torch finds
no CUDA on a machine without one, and --device auto then runs them on cpu,
which is what makes the numbers comparable with the local executor's.
"""

from __future__ import annotations

import time

import pytest
import ray
import torch

from sglr_ray import cli
from sglr_ray.data import prepare_data
from sglr_ray.errors import PlacementError
from sglr_ray.execution import ray_actors, ray_internals
from sglr_ray.execution.driver import run_experiment

REFUSED_WITHIN_S = 2.0  # a refusal starts no actor: it is a look at the cluster and arithmetic


@pytest.fixture
def started(monkeypatch):
    """What each actor of the next Ray run reported at start, and the GPUs left free then."""
    seen: dict = {}
    real_init = ray_actors.RayExecutor.__init__

    def init_and_record(self, *args):
        real_init(self, *args)
        seen.update(self.actor_starts, free_gpus=ray.available_resources().get("GPU", 0.0))

    monkeypatch.setattr(ray_actors.RayExecutor, "__init__", init_and_record)
    return seen


def test_four_quarter_gpu_clients_share_one_gpu_with_the_local_numbers(
    ray_one_gpu, tiny_config, tmp_out, started
):
    config = tiny_config(method="sglr", clients=4, clients_per_actor=1, gpus_per_client=0.25, epochs=2,
                         test_each_epoch=True)  # fmt: skip
    remote = run_experiment(config.replace(executor="ray", out=tmp_out, run_id="gpu"))
    shards = [f"clients-{i}-{i}" for i in range(4)]
    assert [started[s].gpu_ids for s in shards] == [["0"]] * 4  # one GPU, four shares
    assert started["server"].gpu_ids == [] and started["free_gpus"] == 0.0
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert {started[s].device for s in shards} == {device} and started["server"].device == "cpu"
    if device == "cuda":
        return  # the local oracle below runs on cpu; on a GPU the kernels differ in the last bits
    local = run_experiment(config.replace(executor="local", out=tmp_out, run_id="cpu"))
    for a, b in zip(local.epochs, remote.epochs, strict=True):
        assert b.train_loss == pytest.approx(a.train_loss, abs=1e-6)
        assert b.val == a.val and b.test == a.test
    assert remote.final_test_acc == local.final_test_acc


@pytest.mark.parametrize("changes, message", [
    ({"clients_per_actor": 1, "gpus_per_client": 0.5},
     "4 clients x 0.5 GPU = 2 GPUs for the client shards, plus 0 for the server; the cluster has 1 GPU "
     "(set --gpus-per-client 0.25 or less)"),
    ({"clients_per_actor": 2, "gpus_per_client": 0.25, "server_gpus": 1.0},
     "4 clients x 0.25 GPU = 1 GPU for the client shards, plus 1 for the server; the cluster has 1 GPU"),
    ({"clients_per_actor": 3, "gpus_per_client": 0.5},
     "a shard of 3 clients x --gpus-per-client 0.5 asks for 1.5 GPUs"),
])  # fmt: skip
def test_an_impossible_request_is_refused_in_seconds(ray_one_gpu, tiny_config, tmp_out, changes, message):
    config = tiny_config(clients=4, executor="ray", out=tmp_out, **changes)
    data = prepare_data(config)  # the driver's step before the executor; timed apart
    began = time.monotonic()
    with pytest.raises(PlacementError) as refused:
        ray_actors.RayExecutor(config, data, "refused")
    assert time.monotonic() - began < REFUSED_WITHIN_S
    assert message in str(refused.value)
    assert not ray.util.list_named_actors()  # nothing was left running


def test_with_an_autoscaler_the_run_waits_for_placement_then_fails_clearly(
    ray_one_gpu, tiny_config, tmp_out, monkeypatch
):
    # An autoscaler that does not say what it can add: the request may yet fit, so the
    # placement group is created and given --placement-timeout-s; no node is added here.
    monkeypatch.setattr(ray_internals, "autoscaler_running", lambda: True)
    config = tiny_config(clients=4, clients_per_actor=1, gpus_per_client=0.5, placement_timeout_s=3,
                         executor="ray", out=tmp_out)  # fmt: skip
    data = prepare_data(config)
    began = time.monotonic()
    expected = (
        r"placement group was not placed within 3 s \(--placement-timeout-s\).*"
        r"clients-0-0: 0\.4 CPU, 0\.5 GPU.*the autoscaler did not add nodes for it"
    )
    with pytest.raises(PlacementError, match=expected):
        ray_actors.RayExecutor(config, data, "waited")
    assert 3 <= time.monotonic() - began < 30
    assert not ray.util.list_named_actors()
    assert all(g["state"] == "REMOVED" for g in ray.util.placement_group_table().values())  # nothing held


def test_the_cli_reports_a_refusal_without_a_traceback(ray_one_gpu, tmp_out, capsys):
    argv = ["run", "--dataset", "synthetic", "--clients", "4", "--samples-per-client", "32",
            "--val-samples", "100", "--test-samples", "100", "--executor", "ray",
            "--gpus-per-client", "0.5", "--clients-per-actor", "1", "--out", tmp_out]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sglr-ray: error: 4 clients x 0.5 GPU = 2 GPUs") and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where torch sees no CUDA")
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_device_cuda_without_cuda_is_refused(ray_one_gpu, tiny_config, tmp_out, executor):
    config = tiny_config(clients=2, clients_per_actor=1, gpus_per_client=0.25, device="cuda",
                         executor=executor, out=tmp_out)  # fmt: skip
    with pytest.raises(PlacementError, match="--device cuda, but torch sees no CUDA device"):
        run_experiment(config)
    assert not ray.util.list_named_actors()
