"""The server step: per-client gradients, SplitAvg delivery, SplitLr and byte counts."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from sglr_ray.nodes.protocol import SmashedBatch
from sglr_ray.nodes.server import Server

SMASHED = (32, 16, 16)  # alexnet's split layer


def uploads(shard_sizes: list[int], batch: int = 8, seed: int = 0) -> list[SmashedBatch]:
    """Random smashed data for clients 0..C-1 grouped into shards of the given sizes."""
    gen = torch.Generator().manual_seed(seed)
    out, next_id = [], 0
    for size in shard_sizes:
        ids = list(range(next_id, next_id + size))
        next_id += size
        rows = size * batch
        out.append(SmashedBatch(ids, [batch] * size, torch.randn(rows, *SMASHED, generator=gen),
                                torch.randint(0, 10, (rows,), generator=gen)))  # fmt: skip
    return out


def own_gradients(server: Server, ups: list[SmashedBatch]) -> dict[int, torch.Tensor]:
    """dL_i/ds_i computed client by client on a copy of the server's (pre-step) top model."""
    top = copy.deepcopy(server.top)
    grads = {}
    for up in ups:
        for k, client_id in enumerate(up.client_ids):
            rows = slice(sum(up.sizes[:k]), sum(up.sizes[: k + 1]))
            s = up.smashed[rows].clone().requires_grad_(True)
            F.cross_entropy(top(s), up.labels[rows]).backward()
            grads[client_id] = s.grad
    return grads


def test_psl_clients_get_their_own_gradient_of_their_own_loss(tiny_config):
    server = Server(tiny_config(method="psl", clients=4))
    ups = uploads([2, 2])
    expected = own_gradients(server, ups)
    metrics, averaged, *deliveries = server.train_step(0, 0, *ups)
    assert averaged is None and metrics.active_clients == []
    received = {c: g for d in deliveries for c, g in d.own.items()}
    assert sorted(received) == [0, 1, 2, 3]
    for client_id, grad in received.items():
        torch.testing.assert_close(grad, expected[client_id], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("phi, clients, active_size", [(1.0, 4, 4), (0.5, 4, 2), (0.75, 4, 3), (0.5, 6, 3)])
def test_splitavg_active_clients_share_one_mean_tensor(tiny_config, phi, clients, active_size):
    server = Server(tiny_config(method="sgl", clients=clients, phi=phi))
    ups = uploads([clients // 2, clients - clients // 2])
    own = own_gradients(server, ups)
    metrics, averaged, *deliveries = server.train_step(0, 0, *ups)
    active = metrics.active_clients
    assert len(active) == active_size
    torch.testing.assert_close(averaged, torch.stack([own[c] for c in active]).mean(0), rtol=1e-5, atol=1e-7)
    assert sorted(c for d in deliveries for c in d.averaged) == active
    for delivery in deliveries:  # inactive clients: their own gradient, unicast
        assert not set(delivery.own) & set(active)
        for client_id, grad in delivery.own.items():
            torch.testing.assert_close(grad, own[client_id], rtol=1e-5, atol=1e-7)


def test_no_averaging_outside_the_phase(tiny_config):
    server = Server(tiny_config(method="sgl", phi=1.0, phase="final:0.5", epochs=4))
    metrics, averaged, *_ = server.train_step(0, 0, *uploads([4]))
    assert averaged is None and metrics.active_clients == []
    metrics, averaged, *_ = server.train_step(2, 0, *uploads([4]))
    assert averaged is not None and metrics.active_clients == [0, 1, 2, 3]


@pytest.mark.parametrize("clients, alpha", [(4, 0.5), (10, 1.0), (1, 2.0)])
def test_server_optimizer_uses_split_lr(tiny_config, clients, alpha):
    server = Server(tiny_config(method="slr", clients=clients, alpha=alpha, lr=1e-3))
    assert server.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3 * clients**alpha)


def test_byte_ledger_counts_uploads_unicasts_and_one_broadcast(tiny_config):
    server = Server(tiny_config(method="sgl", clients=4, phi=0.5))
    smashed_bytes = 8 * 32 * 16 * 16 * 4  # one client's batch of float32 smashed data
    label_bytes = 8 * 8  # int64 labels
    steps = 3
    for step in range(steps):
        server.train_step(0, step, *uploads([4], seed=step))
    ledger = server.pop_epoch_comm()
    assert ledger.bytes_up == [steps * (smashed_bytes + label_bytes)] * 4
    assert ledger.bytes_down == [steps * smashed_bytes] * 4  # own or averaged: same size
    assert sum(ledger.active_steps) == steps * 2
    # Per step: 2 unicasts + 1 broadcast leave the server.
    assert ledger.server_sent == steps * 3 * smashed_bytes
    assert server.pop_epoch_comm().server_sent == 0  # the ledger starts afresh


@pytest.mark.parametrize("method", ["fl", "cl"])
def test_whole_model_methods_server_holds_no_top_model(tiny_config, method):
    server = Server(tiny_config(method=method))
    assert server.tops == [] and server.optimizers == []
    state = server.state()
    server.load_state(state)  # a checkpoint of it round-trips
    assert state == {"tops": [], "optimizers": []}


def test_fl_server_leaves_its_process_without_torch_dynamo():
    """FL's Ray driver holds this server; no optimizer there means no torch._dynamo and Triton."""
    probe = (
        "import sys; from sglr_ray.config import RunConfig; from sglr_ray.nodes.server import Server; "
        "Server(RunConfig(method='{m}', model='alexnet', dataset='synthetic', clients=2)); "
        "print('torch._dynamo' in sys.modules)"
    )

    def dynamo_imported(method: str) -> str:
        run = subprocess.run([sys.executable, "-c", probe.format(m=method)], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        return run.stdout.strip()

    imported = {method: dynamo_imported(method) for method in ("fl", "psl")}
    assert imported == {"fl": "False", "psl": "True"}  # PSL's server has an optimizer: the probe sees it
