"""Compact client state (nodes/client_state.py): a shard of many clients keeps flat tensors, no
module per client, and steps them as an independent per-client loop would; bounded compute
groups (recomputed forwards) and the server's chunked top give the same numbers.

Float64 throughout, so the comparisons hold on any CPU and thread count.
"""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

from sglr_ray.data import epoch_order, prepare_data
from sglr_ray.methods.base import ServerBatch, joint_step
from sglr_ray.nodes import server as server_module
from sglr_ray.nodes.client_state import ClientStates
from sglr_ray.nodes.grouped import GroupedBottoms
from sglr_ray.nodes.models import SPLIT_MODELS, seeded
from sglr_ray.nodes.optim import make_optimizer
from sglr_ray.nodes.protocol import GradientDelivery
from sglr_ray.nodes.server import Server
from sglr_ray.nodes.split_shard import SplitShard

TOLERANCE = 1e-10


def live_modules() -> int:
    gc.collect()
    return sum(isinstance(obj, nn.Module) for obj in gc.get_objects())


def seeded_gradients(config, step: int) -> dict[int, torch.Tensor]:
    gen = torch.Generator().manual_seed(step)
    shape = (config.batch_size, *config.model_parts.smashed_shape)
    return {c: torch.randn(shape, generator=gen) for c in range(config.clients)}


def test_a_shard_of_200_clients_keeps_flat_state_and_steps_like_a_per_client_loop(tiny_config, float64):
    config = tiny_config(method="psl", clients=200, samples_per_client=4, batch_size=2, val_samples=200)
    data = prepare_data(config)
    before = live_modules()
    shard = SplitShard(config, list(range(200)), data.partitions, data.val, data.test)
    per_client = sum(p.numel() for p in SPLIT_MODELS["alexnet"].build_bottom().parameters())
    assert shard.states.weights.numel() == 200 * per_client  # one flat buffer of every client
    steps = [seeded_gradients(config, step) for step in range(2)]
    for step, grads in enumerate(steps):
        shard.forward_batch(0, step)
        shard.apply_gradient(GradientDelivery(grads, averaged=[]), None)
    # The shard's modules: a template, a scratch, the evaluation top, 25 compute groups of 8:
    # a few per compute group, none per client.
    assert live_modules() - before < 200

    # An independent reference: each client its own bottom and Adam, stepped on its batches.
    for client_id in (0, 77, 199):
        bottom = seeded(SPLIT_MODELS["alexnet"].build_bottom, config.seed)
        optimizer = make_optimizer(bottom.parameters(), "adam", config.lr)
        part = data.partitions[client_id]
        order = epoch_order(config.seed, client_id, 0, len(part)).numpy()
        for step, grads in enumerate(steps):
            index = order[step * 2 : (step + 1) * 2]
            optimizer.zero_grad()
            bottom(part.inputs(index)).backward(grads[client_id])
            optimizer.step()
        got = shard.model_state(client_id)
        for name, want in bottom.state_dict().items():
            assert torch.allclose(got[name], want, rtol=0, atol=TOLERANCE), (client_id, name)
        state = shard.state()["clients"][client_id]["model"]
        assert all(torch.equal(state[name], got[name]) for name in got)  # checkpoints read the store
    scores = shard.evaluate(SPLIT_MODELS["alexnet"].build_top().state_dict(), "val")
    assert sum(n for _, n in scores.values()) == 200  # one sample of the subset each


@pytest.mark.parametrize("model", ["alexnet", "resnet16"])  # resnet16: BatchNorm's running statistics
def test_bounded_compute_groups_give_the_numbers_of_one_group(float64, model):
    """Groups of 3 whose forward is recomputed at the step (no graph kept across it) against one
    group of all 7 that keeps its graph, over three steps."""
    torch.manual_seed(0)
    template = SPLIT_MODELS[model].build_bottom()
    x = torch.randn(3, 7, 2, 1, 8, 8)  # step, client, batch, image (conv layers take any size)
    stores = [ClientStates(template, 7, "adam", 1e-3) for _ in range(2)]
    one = GroupedBottoms(stores[0], template, clients_per_group=7)
    bounded = GroupedBottoms(stores[1], template, clients_per_group=3, graph_samples=0)
    for step in range(3):
        outs = [group.forward(x[step]) for group in (one, bounded)]
        assert torch.allclose(*outs, rtol=0, atol=TOLERANCE)
        grad = torch.randn_like(outs[0])
        for group, out in zip((one, bounded), outs, strict=True):
            group.step(out, grad)
    for name in stores[0].blocks:
        assert torch.allclose(
            stores[0].blocks[name].double(), stores[1].blocks[name].double(), atol=TOLERANCE
        )
    for key in stores[0].moments:
        for name in stores[0].moments[key]:
            assert torch.allclose(stores[0].moments[key][name], stores[1].moments[key][name], atol=TOLERANCE)
    assert all(
        torch.equal(a, b) for a, b in zip(stores[0].scalars.values(), stores[1].scalars.values(), strict=True)
    )


def test_the_server_takes_a_large_batch_in_chunks_with_the_same_numbers(tiny_config, float64, monkeypatch):
    config = tiny_config(method="psl", clients=5)
    gen = torch.Generator().manual_seed(0)
    batch = ServerBatch(
        torch.randn(40, *config.model_parts.smashed_shape, generator=gen),
        torch.randint(0, 10, (40,), generator=gen), list(range(5)), [8] * 5,
    )  # fmt: skip
    results = []
    for chunk in (40, 16):  # one pass; chunks of 16, 16 and 8
        monkeypatch.setattr(server_module, "SERVER_CHUNK_SAMPLES", chunk)
        server = Server(config)
        fresh = ServerBatch(batch.smashed.clone(), batch.labels, batch.client_ids, batch.sizes)
        loss, grads = joint_step(server, fresh, 0, 0)
        results.append((loss, grads, server.top.state_dict()))
    (loss_a, grads_a, top_a), (loss_b, grads_b, top_b) = results
    assert loss_a == pytest.approx(loss_b, rel=TOLERANCE)
    assert all(torch.allclose(grads_a[c], grads_b[c], rtol=0, atol=TOLERANCE) for c in grads_a)
    assert all(torch.allclose(top_a[k], top_b[k], rtol=0, atol=TOLERANCE) for k in top_a)
