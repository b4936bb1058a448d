"""The grouped client path (nodes/grouped.py) computes what the per-client loop computes.

Every comparison runs in float64, where the grouped convolutions and the loop's
per-client convolutions agree to rounding (about 1e-15), so the tolerance can
be tight and still hold on any CPU and thread count.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from sglr_ray import data as data_module
from sglr_ray.data import prepare_data
from sglr_ray.execution import local
from sglr_ray.execution.driver import run_experiment
from sglr_ray.nodes import grouped as grouped_module
from sglr_ray.nodes.client import ClientShard
from sglr_ray.nodes.grouped import groupable
from sglr_ray.nodes.models import SPLIT_MODELS, smashed_shape
from sglr_ray.nodes.protocol import GradientDelivery
from sglr_ray.nodes.split_shard import SplitShard

TOLERANCE = 1e-10


_synthetic = functools.cache(data_module.make_synthetic)


@pytest.fixture(autouse=True)
def synthetic_once_and_one_thread(monkeypatch):
    """Draw the synthetic dataset once for the module (seconds each time; runs only read it),
    and step shards on one thread, as the tiny runs' executor does (--torch-threads 1)."""
    monkeypatch.setattr(data_module, "make_synthetic", _synthetic)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_shards(config) -> tuple[ClientShard, ClientShard]:
    """(grouped, loop) shards of every client of `config`, from the same seed."""
    data = prepare_data(config)
    ids = list(range(config.clients))
    grouped, loop = (
        SplitShard(config, ids, data.partitions, data.val, data.test, group=group) for group in (True, False)
    )
    assert grouped._grouped is not None and loop._grouped is None
    return grouped, loop


def fixed_delivery(config, epoch: int, step: int) -> tuple[GradientDelivery, torch.Tensor]:
    """Seeded split-layer gradients: clients 1 and 3 receive the average, the others their own."""
    gen = torch.Generator().manual_seed(1000 * epoch + step)
    shape = (config.batch_size, *smashed_shape(config.model))
    own = {c: torch.randn(shape, generator=gen) for c in range(config.clients) if c not in (1, 3)}
    return GradientDelivery(own, averaged=[1, 3]), torch.randn(shape, generator=gen)


def assert_close(a, b, what: str) -> None:
    """a and b (tensors, or dicts and lists of them) equal within TOLERANCE."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for key in a:
            assert_close(a[key], b[key], f"{what}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, f"{what}[{i}]")
    elif torch.is_tensor(a):
        assert a.shape == b.shape and a.dtype == b.dtype, what
        assert torch.allclose(a.double(), b.double(), rtol=0, atol=TOLERANCE), what
    else:
        assert a == b, what


def step_both(shards, config, epoch: int, step: int) -> None:
    uploads = [shard.forward_batch(epoch, step) for shard in shards]
    assert uploads[0].client_ids == uploads[1].client_ids and uploads[0].sizes == uploads[1].sizes
    assert torch.equal(uploads[0].labels, uploads[1].labels)
    assert_close(uploads[0].smashed, uploads[1].smashed, f"smashed data, epoch {epoch} step {step}")
    delivery, averaged = fixed_delivery(config, epoch, step)
    for shard in shards:
        shard.apply_gradient(delivery, averaged)


def assert_same_clients(grouped: ClientShard, loop: ClientShard) -> None:
    """Per-client weights, buffers and optimizer states (what a checkpoint holds) agree."""
    for client_id in loop.client_ids:
        assert_close(grouped.model_state(client_id), loop.model_state(client_id), f"client {client_id}")
    assert_close(grouped.state(), loop.state(), "checkpoint state")


@pytest.mark.parametrize(
    "model, optimizer, clients_per_group",
    [("alexnet", "adam", 2), ("alexnet", "sgd", 8), ("resnet16", "adam", 8), ("resnet16", "sgd", 2)],
)
def test_grouped_steps_equal_the_per_client_loop(
    tiny_config, float64, monkeypatch, model, optimizer, clients_per_group
):
    """5 clients as one group, or as groups of 2, 2 and 1; steps across an epoch boundary."""
    monkeypatch.setattr(grouped_module, "CPU_CLIENTS_PER_GROUP", clients_per_group)
    config = tiny_config(method="psl", model=model, optimizer=optimizer, clients=5, epochs=2)
    grouped, loop = make_shards(config)
    assert len(grouped._grouped.modules) == -(-5 // clients_per_group)
    for epoch, step in [(0, 0), (0, 3), (1, 0)]:
        step_both((grouped, loop), config, epoch, step)
    assert_same_clients(grouped, loop)
    top = SPLIT_MODELS[model].build_top().state_dict()
    assert grouped.evaluate(top, "val") == loop.evaluate(top, "val")


def test_grouped_checkpoints_load_into_either_path(tiny_config, float64, monkeypatch):
    monkeypatch.setattr(grouped_module, "CPU_CLIENTS_PER_GROUP", 2)
    config = tiny_config(method="psl", model="resnet16", clients=3, epochs=2)
    grouped, loop = make_shards(config)
    step_both((grouped, loop), config, 0, 0)
    snapshot = grouped.state()
    for step in range(1, 3):  # moves on, then goes back
        step_both((grouped, loop), config, 0, step)
    fresh_grouped, fresh_loop = make_shards(config)
    for shard in (grouped, loop, fresh_grouped, fresh_loop):
        # A copy each, as each shard reads its own from a checkpoint file: a loaded optimizer
        # keeps the tensors it is given, so shards loading one object would step them all.
        shard.load_state(copy.deepcopy(snapshot))
    for step in range(1, 3):
        step_both((grouped, loop), config, 0, step)
        step_both((fresh_grouped, fresh_loop), config, 0, step)
    assert_same_clients(grouped, loop)
    assert_same_clients(fresh_grouped, loop)


def test_grouped_follows_optimizer_resets_and_loaded_models(tiny_config, float64):
    """--client-optimizer-state reset clears every client's optimizer each round, and
    FedAvg (load_model_state) writes the clients' models: the group takes both."""
    config = tiny_config(method="psl", clients=3, epochs=2, client_optimizer_state="reset")
    grouped, loop = make_shards(config)
    for step in range(4):
        step_both((grouped, loop), config, 0, step)
    mean = loop.upload_models().weighted_state_sum
    mean = {k: v / (3 * config.samples_per_client) for k, v in mean.items()}
    for shard in (grouped, loop):
        shard.load_model_state(mean)
    for step in range(2):
        step_both((grouped, loop), config, 1, step)
    assert_same_clients(grouped, loop)


def test_some_clients_only_hands_the_group_back_to_the_loop(tiny_config, float64):
    config = tiny_config(method="psl", model="resnet16", clients=3)
    grouped, loop = make_shards(config)
    step_both((grouped, loop), config, 0, 0)
    for step in (1, 2):
        uploads = [shard.forward_batch(0, step, client_ids=[0, 2]) for shard in (grouped, loop)]
        assert_close(uploads[0].smashed, uploads[1].smashed, "smashed data")
        delivery, _ = fixed_delivery(config, 0, step)
        delivery = GradientDelivery({c: delivery.own[c] for c in (0, 2)}, averaged=[])
        for shard in (grouped, loop):
            shard.apply_gradient(delivery, None)
    assert grouped._grouped is None
    assert_same_clients(grouped, loop)


@pytest.mark.parametrize("method", ["psl", "sglr", "sfl"])
def test_grouped_runs_equal_loop_runs(tiny_config, tmp_out, float64, monkeypatch, method):
    config = tiny_config(method=method, epochs=2, out=tmp_out, test_each_epoch=True)
    steps = []
    step = grouped_module.GroupedBottoms.step
    monkeypatch.setattr(grouped_module.GroupedBottoms, "step", lambda *a: steps.append(step(*a)))
    grouped = run_experiment(config.replace(run_id="grouped"))
    assert len(steps) == config.epochs * config.steps_per_epoch  # it took the grouped path
    monkeypatch.setattr(local, "make_shard", functools.partial(SplitShard, group=False))
    loop = run_experiment(config.replace(run_id="loop"))
    for a, b in zip(grouped.epochs, loop.epochs, strict=True):
        assert a.train_loss == pytest.approx(b.train_loss, rel=TOLERANCE)
        assert a.val == b.val and a.test == b.test
        assert a.comm == b.comm


def test_bf16_autocast_runs_on_the_grouped_path(tiny_config):
    config = tiny_config(method="psl", clients=3, precision="bf16")
    grouped, loop = make_shards(config)
    uploads = [shard.forward_batch(0, 0) for shard in (grouped, loop)]
    assert uploads[0].smashed.dtype == uploads[1].smashed.dtype == torch.bfloat16
    assert torch.allclose(uploads[0].smashed.float(), uploads[1].smashed.float(), atol=0.05, rtol=0.02)
    delivery, averaged = fixed_delivery(config, 0, 0)
    delivery.own = {c: g.bfloat16() for c, g in delivery.own.items()}
    for shard in (grouped, loop):
        shard.apply_gradient(delivery, averaged.bfloat16())
    weights = [shard.model_state(0)["0.weight"] for shard in (grouped, loop)]
    assert weights[0].dtype == torch.float32 and torch.allclose(*weights, atol=1e-5)


@pytest.mark.parametrize("method", ["ssl", "gpsl", "fl", "cl"])
def test_methods_without_equal_parallel_batches_keep_the_loop(tiny_config, method):
    config = tiny_config(method=method, clients=3)
    data = prepare_data(config)
    parts = data.partitions[:3] if method != "cl" else [data.partitions[0]] * 3
    shard = SplitShard(config, [0, 1, 2], parts,
                        data.val, data.test)  # fmt: skip
    assert shard._grouped is None


def test_only_channelwise_models_are_groupable():
    assert all(groupable(split.build_bottom()) for split in SPLIT_MODELS.values())
    assert not groupable(SPLIT_MODELS["alexnet"].build_top())  # Linear, Flatten
