"""Training FLOPs of clients and server, counted by torch's FlopCounterMode.

FLOPs depend only on the model and the batch shape, so each distinct
(model, part, batch) is counted once and multiplied by the number of steps;
no step of a real run is instrumented. Evaluation is not counted: these are
the costs of training, the unit of the paper's "PFLOPs per client".
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from sglr_ray.config import RunConfig
from sglr_ray.nodes.models import INPUT_SHAPE, SPLIT_MODELS, smashed_shape


@functools.cache
def bottom_step_flops(model: str, batch: int) -> int:
    """Client: forward of the bottom model, then back-propagating the split-layer gradient into it."""
    bottom = SPLIT_MODELS[model].build_bottom()
    x = torch.zeros(batch, *INPUT_SHAPE)  # no input gradient: the client never needs one
    with FlopCounterMode(display=False) as counter:
        s = bottom(x)
        s.backward(torch.ones_like(s))
    return counter.get_total_flops()


@functools.cache
def top_step_flops(model: str, batch: int) -> int:
    """Server: forward and loss of the top model, backward including dL/ds for the clients."""
    top = SPLIT_MODELS[model].build_top()
    s = torch.zeros(batch, *smashed_shape(model), requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(top(s), torch.zeros(batch, dtype=torch.long)).backward()
    return counter.get_total_flops()


@functools.cache
def full_step_flops(model: str, batch: int) -> int:
    """CL and FL: forward, loss and backward of the whole model (bottom + top) on one batch."""
    split = SPLIT_MODELS[model]
    full = torch.nn.Sequential(split.build_bottom(), split.build_top())
    x = torch.zeros(batch, *INPUT_SHAPE)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(full(x), torch.zeros(batch, dtype=torch.long)).backward()
    return counter.get_total_flops()


@dataclass(frozen=True)
class EpochFlops:
    per_client: int  # every client runs the same steps on the same batch shape
    server: int
    clients: int

    @property
    def client_total(self) -> int:
        return self.per_client * self.clients


def epoch_flops(config: RunConfig) -> EpochFlops:
    """FLOPs of one training epoch, split between each client and the server (or data centre)."""
    model, b, c, steps = config.model, config.batch_size, config.clients, config.steps_per_epoch
    spec = config.spec
    if spec.pooled_data:  # CL: the clients compute nothing; one model trains on all the data
        return EpochFlops(0, config.iterations_per_epoch * full_step_flops(model, b), c)
    if spec.schedule == "local":  # FL: all compute on the clients; averaging weights is negligible
        return EpochFlops(config.local_epochs * steps * full_step_flops(model, b), 0, c)
    if spec.schedule == "sequential":  # SSL: the server runs each client's turn at batch b
        return EpochFlops(steps * bottom_step_flops(model, b), c * steps * top_step_flops(model, b), c)
    server = steps * spec.server_flops(lambda batch: top_step_flops(model, batch), config)
    if spec.batch_plan is not None:  # clients' batches vary; the models' FLOPs are linear in the batch
        samples = steps * config.global_batch_size / c  # a client's mean share
        return EpochFlops(round(samples * bottom_step_flops(model, 1)), server, c)
    return EpochFlops(steps * bottom_step_flops(model, b), server, c)
