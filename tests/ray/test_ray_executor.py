"""The Ray executor gives the in-process executor's numbers, moving tensors by reference."""

from __future__ import annotations

import re

import pandas as pd
import pytest
import ray
import torch

from sglr_ray.execution import ray_actors as ray_executor
from sglr_ray.execution.driver import run_experiment
from sglr_ray.nodes.protocol import GradientDelivery, SmashedBatch


def run_both(config, tmp_out):
    local = run_experiment(config.replace(executor="local", out=tmp_out, run_id="local"))
    remote = run_experiment(config.replace(executor="ray", out=tmp_out, run_id="ray"))
    return local, remote


@pytest.mark.parametrize(
    "method, extra",
    [
        ("sglr", {"phi": 0.5, "alpha": 0.5}), ("sfl", {}), ("fl", {}), ("ssl", {}),
        ("sflv1", {}), ("cyclesl", {"phi": 0.5}), ("gpsl", {"global_batch_size": 12, "alpha": 0.5}),
        ("usl", {"phi": 0.5, "alpha": 0.5}), ("lsl", {}),
    ],
)  # fmt: skip
def test_ray_matches_local_for_the_same_seed(ray_session, tiny_config, tmp_out, method, extra):
    config = tiny_config(
        method=method, clients=4, clients_per_actor=2, epochs=2, test_each_epoch=True, **extra
    )
    local, remote = run_both(config, tmp_out)
    for a, b in zip(local.epochs, remote.epochs, strict=True):
        assert b.train_loss == pytest.approx(a.train_loss, abs=1e-6)
        assert b.val == a.val and b.test == a.test
        assert (b.comm.bytes_up, b.comm.bytes_down, b.comm.server_sent) == (
            a.comm.bytes_up, a.comm.bytes_down, a.comm.server_sent,
        )  # fmt: skip
    runs = pd.read_parquet(f"{tmp_out}/runs").set_index("run_id")
    assert runs.loc["ray", "executor"] == "ray" and runs.loc["ray", "clients_per_actor"] == 2
    assert runs.loc["ray", "final_test_acc"] == pytest.approx(runs.loc["local", "final_test_acc"], abs=1e-6)


def test_driver_never_fetches_activations_or_gradients(ray_session, tiny_config, tmp_out, monkeypatch):
    fetched = []
    real_get = ray_executor.RayExecutor.get

    def recording_get(self, value):
        result = real_get(self, value)
        fetched.extend(result if isinstance(result, list) else [result])
        return result

    monkeypatch.setattr(ray_executor.RayExecutor, "get", recording_get)
    run_experiment(tiny_config(method="sglr", phi=1.0, executor="ray", out=tmp_out, clients_per_actor=2))
    assert fetched
    bulky = (SmashedBatch, GradientDelivery, torch.Tensor)
    assert not [type(v).__name__ for v in fetched if isinstance(v, bulky)]


@pytest.fixture
def actor_names(monkeypatch) -> list[str]:
    """Filled with the named actors alive right after the Ray executor has started them."""
    names = []
    real_init = ray_executor.RayExecutor.__init__

    def init_and_list(self, *args):
        real_init(self, *args)
        names.extend(ray.util.list_named_actors())

    monkeypatch.setattr(ray_executor.RayExecutor, "__init__", init_and_list)
    return names


def test_actors_are_named_and_gone_after_the_run(ray_session, tiny_config, tmp_out, actor_names):
    names = actor_names
    run_experiment(tiny_config(executor="ray", clients=4, clients_per_actor=3, out=tmp_out, run_id="named"))
    assert sorted(names) == ["named/clients-0-2", "named/clients-3-3", "named/server"]
    assert not ray.util.list_named_actors()


@pytest.mark.parametrize("victim", ["clients-0-1", "server"])
def test_a_killed_actor_is_restarted_and_its_epoch_replayed(ray_session, tiny_config, tmp_out, victim):
    config = tiny_config(method="sglr", clients=4, clients_per_actor=2, epochs=3, test_each_epoch=True)
    local = run_experiment(config.replace(executor="local", out=tmp_out, run_id="local"))
    killed = []

    def kill_mid_epoch_1(epoch, steps, loss):
        if epoch == 1 and steps == 2 and not killed:
            ray.kill(ray.get_actor(f"killed/{victim}"), no_restart=False)  # Ray restarts it
            killed.append(victim)

    remote = run_experiment(
        config.replace(executor="ray", out=tmp_out, run_id="killed"), progress=kill_mid_epoch_1
    )
    assert killed
    epochs = pd.read_parquet(f"{tmp_out}/epochs/killed.parquet")
    assert list(epochs.epoch) == [0, 1, 2] and list(epochs.restarts) == [0, 1, 0]
    assert pd.read_parquet(f"{tmp_out}/runs/killed.parquet").restarts[0] == 1
    for a, b in zip(local.epochs, remote.epochs, strict=True):  # the replay changed no number
        assert b.train_loss == pytest.approx(a.train_loss, abs=1e-6)
        assert b.val == a.val and b.test == a.test
        assert (b.comm.bytes_up, b.comm.server_sent) == (a.comm.bytes_up, a.comm.server_sent)


@pytest.mark.parametrize("method, shards", [("fl", ["clients-0-1", "clients-2-3"]), ("cl", ["clients-0-0"])])
def test_whole_model_methods_run_without_a_server_actor(
    ray_session, tiny_config, tmp_out, actor_names, method, shards
):
    # Default placement on the session's 2 CPUs: FL gets one shard per CPU, no server actor;
    # the server (FedAvg, byte ledger) is held by the driver and gives the in-process numbers.
    names = actor_names
    local, remote = run_both(tiny_config(method=method, clients=4, epochs=2, test_each_epoch=True), tmp_out)
    assert sorted(names) == [f"ray/{shard}" for shard in shards]
    for a, b in zip(local.epochs, remote.epochs, strict=True):
        assert b.train_loss == pytest.approx(a.train_loss, abs=1e-6)
        assert b.val == a.val and b.test == a.test
        assert (b.comm.bytes_up, b.comm.bytes_down) == (a.comm.bytes_up, a.comm.bytes_down)


def test_fl_replays_an_epoch_through_the_server_in_the_driver(ray_session, tiny_config, tmp_out):
    config = tiny_config(method="fl", clients=4, epochs=3, test_each_epoch=True)
    local = run_experiment(config.replace(executor="local", out=tmp_out, run_id="local"))
    killed = []

    def kill_after_training_epoch_1(epoch, steps, loss):  # before FedAvg: the upload fails
        if epoch == 1 and not killed:
            ray.kill(ray.get_actor("killed/clients-0-1"), no_restart=False)
            killed.append(epoch)

    remote = run_experiment(
        config.replace(executor="ray", out=tmp_out, run_id="killed"), progress=kill_after_training_epoch_1
    )
    assert killed
    assert list(pd.read_parquet(f"{tmp_out}/epochs/killed.parquet").restarts) == [0, 1, 0]
    for a, b in zip(local.epochs, remote.epochs, strict=True):
        assert b.train_loss == pytest.approx(a.train_loss, abs=1e-6)
        assert b.val == a.val and b.test == a.test


# An error-level line of Ray's C++ log ("[... E <pid> <tid>] core_worker.cc:<line>: ...").
ERROR_LINE = re.compile(r"\bE \d+ \d+\] \w+\.cc:\d+:")


def test_a_normal_ray_run_prints_no_error_level_line(ray_session, tiny_config, tmp_out, capfd):
    # Actors used to get their data as constructor arguments in the object store, and Ray logged
    # at error level, once per driver process, that a restart would fail (ray-project/ray#53727).
    run_experiment(tiny_config(method="sglr", clients=4, clients_per_actor=2, executor="ray", out=tmp_out))
    err = capfd.readouterr().err
    assert "has constructor arguments in the object store" not in err
    assert not ERROR_LINE.findall(err), err[-4000:]
