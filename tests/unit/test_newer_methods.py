"""SFLv1, CycleSL and GPSL: each rule against a hand computation, bytes and FLOPs by protocol."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sglr_ray.execution.driver import run_experiment
from sglr_ray.measure.flops import bottom_step_flops, epoch_flops, top_step_flops
from sglr_ray.methods.cyclesl import server_batches
from sglr_ray.methods.gpsl import global_sampling_plan
from sglr_ray.nodes.server import Server
from tests.unit.test_server import uploads


def test_sflv1_trains_one_top_copy_per_client_on_its_own_rows(tiny_config):
    server = Server(tiny_config(method="sflv1", clients=3))
    before = [copy.deepcopy(t) for t in server.tops]
    ups = uploads([2, 1])
    metrics, shared, *deliveries = server.train_step(0, 0, *ups)
    assert shared is None and metrics.active_clients == []
    rows = [(0, ups[0], slice(0, 8)), (1, ups[0], slice(8, 16)), (2, ups[1], slice(0, 8))]
    for client_id, up, r in rows:  # by hand: client i's loss on copy i alone
        top = copy.deepcopy(before[client_id])
        s = up.smashed[r].clone().requires_grad_(True)
        F.cross_entropy(top(s), up.labels[r]).backward()
        got = next(d.own[client_id] for d in deliveries if client_id in d.own)
        torch.testing.assert_close(got, s.grad, rtol=1e-5, atol=1e-7)
        optimizer = torch.optim.Adam(top.parameters(), lr=server.config.server_lr)
        optimizer.step()
        for a, b in zip(top.parameters(), server.tops[client_id].parameters(), strict=True):
            torch.testing.assert_close(a, b)
    server.average_server_copies()
    for p0, p1, p2 in zip(*(t.parameters() for t in server.tops), strict=True):
        torch.testing.assert_close(p0, p1) and torch.testing.assert_close(p1, p2)


def test_cyclesl_steps_the_server_on_resampled_pool_then_answers_with_the_updated_model(tiny_config):
    config = tiny_config(method="cyclesl", clients=3, batch_size=8)
    server = Server(config)
    top = copy.deepcopy(server.top)
    optimizer = torch.optim.Adam(top.parameters(), lr=config.server_lr)
    ups = uploads([3])
    pool, labels = ups[0].smashed, ups[0].labels
    _, _, delivery = server.train_step(1, 5, *ups)
    for rows in server_batches(config.seed, 1, 5, len(pool), config.batch_size):  # by hand
        optimizer.zero_grad()
        F.cross_entropy(top(pool[rows]), labels[rows]).backward()
        optimizer.step()
    s = pool.clone().requires_grad_(True)
    F.cross_entropy(top(s), labels).backward()  # mean over the pool of 24; no step
    for client_id in range(3):
        want = s.grad[8 * client_id : 8 * (client_id + 1)] * 3  # (N / n_i) dL/ds_i
        torch.testing.assert_close(delivery.own[client_id], want, rtol=1e-5, atol=1e-7)
    assert len(server_batches(config.seed, 1, 5, 24, 8)) == 3
    np.testing.assert_array_equal(np.sort(np.concatenate(server_batches(0, 1, 5, 24, 8))), np.arange(24))


def test_cyclesl_with_phi_averages_like_splitavg(tiny_config):
    server = Server(tiny_config(method="cyclesl", clients=4, phi=1.0))
    metrics, shared, delivery = server.train_step(0, 0, *uploads([4]))
    assert metrics.active_clients == [0, 1, 2, 3] and shared is not None and delivery.own == {}


def test_gpsl_plan_is_global_sampling_without_replacement():
    sizes = [40, 40, 40]
    plan = np.array(global_sampling_plan(seed=3, epoch=0, sizes=sizes, global_batch=16))
    assert plan.shape == (120 // 16, 3) and (plan.sum(axis=1) == 16).all()
    assert (plan.sum(axis=0) <= 40).all() and plan.sum() == 112
    # The first draw is in proportion to the data left: over many seeds, B * 40/120 each.
    firsts = np.array([global_sampling_plan(s, 0, sizes, 16)[0] for s in range(400)])
    assert np.allclose(firsts.mean(axis=0), 16 / 3, atol=0.3)
    # After a client is drawn heavily, its later share shrinks (without replacement).
    plan = np.array(global_sampling_plan(0, 0, [10, 100], 10))
    assert plan[:, 0].sum() <= 10


def test_gpsl_clients_draw_their_samples_without_replacement(tiny_config, tmp_out):
    from sglr_ray.data import prepare_data
    from sglr_ray.execution.local import LocalExecutor

    config = tiny_config(method="gpsl", clients=3, samples_per_client=32, global_batch_size=12)
    shard = LocalExecutor(config, prepare_data(config)).shards[0]
    for client_id in range(3):
        spans = [shard._batches.rows(client_id, 0, step) for step in range(config.steps_per_epoch)]
        used = [i for start, count in spans for i in range(start, start + count)]
        assert used == list(range(len(used))) and len(used) <= 32


@pytest.mark.parametrize("method, extra, per_step", [
    ("sflv1", {}, lambda m, b, c, gb: c * top_step_flops(m, b)),
    ("cyclesl", {}, lambda m, b, c, gb: c * top_step_flops(m, b) + top_step_flops(m, b * c)),
    ("gpsl", {"global_batch_size": 12}, lambda m, b, c, gb: top_step_flops(m, gb)),
    ("psl", {}, lambda m, b, c, gb: top_step_flops(m, b * c)),
])  # fmt: skip
def test_server_flops_follow_each_method_protocol(tiny_config, method, extra, per_step):
    config = tiny_config(method=method, clients=3, **extra)
    flops = epoch_flops(config)
    b, c = config.batch_size, config.clients
    assert flops.server == config.steps_per_epoch * per_step(config.model, b, c, config.global_batch_size)
    if method == "gpsl":  # a client's mean share of the global batches
        shares = config.steps_per_epoch * 12 / 3
        assert flops.per_client == round(shares * bottom_step_flops(config.model, 1))


def test_bytes_moved_follow_each_method_protocol(tiny_config, tmp_out):
    runs = {
        m: run_experiment(tiny_config(method=m, clients=3, out=tmp_out, run_id=m, **extra)).epochs[0].comm
        for m, extra in [
            ("psl", {}),
            ("sfl", {}),
            ("sflv1", {}),
            ("cyclesl", {}),
            ("gpsl", {"global_batch_size": 12}),
        ]
    }
    # CycleSL moves what PSL moves: smashed data up, own gradients down.
    assert (
        runs["cyclesl"].bytes_up == runs["psl"].bytes_up
        and runs["cyclesl"].bytes_down == runs["psl"].bytes_down
    )
    # SFLv1's traffic is SFL's: averaging the server's copies is internal.
    assert (
        runs["sflv1"].bytes_up == runs["sfl"].bytes_up
        and runs["sflv1"].server_sent == runs["sfl"].server_sent
    )
    # GPSL: 32 samples a client, steps of 12 over 96 samples: 8 steps, 96 samples up in all.
    row_bytes = sum(runs["psl"].bytes_up) // (3 * 32)
    assert sum(runs["gpsl"].bytes_up) == 96 * row_bytes
