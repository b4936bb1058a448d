"""CycleSL (arXiv 2511.18611): the server updates first, then answers with the updated model.

Each iteration the server pools the clients' smashed data and labels as a small
dataset of its own, and takes optimizer steps on server-side mini-batches
resampled from the pool (one pass, mini-batches of b, in an order seeded by
(seed, epoch, step)). Only then does it compute every client's split-layer
gradient, with the updated top model, on the whole pool: G_i = (N/n_i) dL/ds_i
as in PSL, with no optimizer step. What clients receive is decided by the
SplitRule as usual: their own gradients by default (no aggregation), or
SplitAvg's average with --phi (CycleSGLR); --alpha applies SplitLr to the
server's mini-batch steps.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from sglr_ray.methods.base import Method, RunConfig, ServerBatch, TopModels, scaled_gradients
from sglr_ray.methods.sglr import split_avg


def server_batches(seed: int, epoch: int, step: int, pool_size: int, batch_size: int) -> list[np.ndarray]:
    """Row indices of the server's mini-batches over a pool: a seeded permutation, cut in b's."""
    order = np.random.default_rng([seed, epoch, step, 0xC7C1]).permutation(pool_size)
    return [order[i : i + batch_size] for i in range(0, pool_size, batch_size)]


def cycle_step(server: TopModels, batch: ServerBatch, epoch: int, step: int) -> tuple[float, dict]:
    config = server.config
    pool = batch.smashed.detach()
    for rows in server_batches(config.seed, epoch, step, len(pool), config.batch_size):
        index = torch.from_numpy(rows).to(pool.device)
        server.train_top(0, pool[index], batch.labels[index])
    smashed = pool.clone().requires_grad_(True)
    loss = server.top_loss(0, smashed, batch.labels)  # the updated model; no step
    (grad,) = torch.autograd.grad(loss, smashed)
    return loss.item(), scaled_gradients(batch, grad)


def cycle_flops(top_flops: Callable[[int], int], config: RunConfig) -> int:
    """C mini-batch steps of b, then one forward and backward over the pool (counted as a step)."""
    return config.clients * top_flops(config.batch_size) + top_flops(config.batch_size * config.clients)


cyclesl = Method(
    "cyclesl", "CycleSL: server steps on resampled pooled smashed data first, then returns gradients "
    "of the updated model (with --phi: CycleSGLR)",
    defaults={"alpha": 0.0, "phi": 0.0}, rule=split_avg, server_step=cycle_step, server_flops=cycle_flops,
)  # fmt: skip
