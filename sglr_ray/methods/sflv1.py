"""SFLv1, SplitFed version 1 (Thapa et al., 2022): one server-side model copy per client.

Each client's smashed data trains its own copy of the top model, all copies in
parallel, so no client's batch is mixed with another's in the server's loss.
After each epoch the server averages its copies (FedAvg, equal partitions:
equal weights), and the clients' bottom models are averaged as in SFL. The
split-layer gradient a client receives is dL_i/ds_i of its own copy's loss.

Communication is SFL's: smashed data up, own gradients down, and the bottom
models up and back once per epoch; averaging the server's copies is internal.
"""

from __future__ import annotations

from collections.abc import Callable

from sglr_ray.methods.base import (
    AVERAGE_SERVER_COPIES,
    FEDAVG_CLIENTS,
    Method,
    RunConfig,
    ServerBatch,
    TopModels,
)


def per_client_step(server: TopModels, batch: ServerBatch, epoch: int, step: int) -> tuple[float, dict]:
    """Each client's rows train that client's top model: one loss and one step per copy."""
    grads, loss_sum = {}, 0.0
    for client_id, rows in batch.rows():
        smashed = batch.smashed[rows].detach().requires_grad_(True)
        loss = server.train_top(client_id, smashed, batch.labels[rows])
        grads[client_id] = smashed.grad  # dL_i/ds_i: L_i is already client i's mean loss
        loss_sum += loss.item() * len(batch.labels[rows])
    return loss_sum / len(batch.labels), grads


def top_per_client(config: RunConfig) -> int:
    return config.clients


def per_client_flops(top_flops: Callable[[int], int], config: RunConfig) -> int:
    """Every client's rows go through its own copy: C top-model steps of b."""
    return config.clients * top_flops(config.batch_size)


sflv1 = Method(
    "sflv1", "SplitFed v1: a server model copy per client; copies and bottoms FedAvg'd each epoch",
    fixed={"alpha": 0.0, "phi": 0.0}, epoch_end=(FEDAVG_CLIENTS, AVERAGE_SERVER_COPIES),
    top_copies=top_per_client,
    server_step=per_client_step, server_flops=per_client_flops,
)  # fmt: skip
