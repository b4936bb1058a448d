"""Training FLOPs of clients and server, counted from the layers' shapes.

FLOPs depend only on the model and the batch shape, so each distinct
(model, part, batch) is counted once and multiplied by the number of steps;
no step of a real run is instrumented. Evaluation is not counted: these are
the costs of training, the unit of the paper's "PFLOPs per client".

The count follows torch.utils.flop_counter's rules (tests/unit/test_measurement.py
checks it against FlopCounterMode for every model): multiplications and additions
of convolutions and matrix products, forward and backward, nothing for
normalization, activations, pooling or biases. It reads shapes from one forward
pass instead of running under FlopCounterMode because a dispatch mode makes torch
import torch._dynamo and Triton, about 160 MB resident in the driver, which
counts FLOPs and otherwise never needs them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import nn

from sglr_ray.config import RunConfig
from sglr_ray.nodes.models import INPUT_SHAPE, SPLIT_MODELS, ModelParts, smashed_shape


def conv2d_step_flops(layer: nn.Conv2d, x: torch.Tensor, out: torch.Tensor) -> int:
    """Forward, gradient of the weights, and of the input where it has one."""
    batch, c_in = x.shape[:2]
    c_out, c_in_per_group, *kernel = layer.weight.shape
    per_channel_pair = 2 * batch * math.prod(out.shape[2:]) * math.prod(kernel)
    forward = per_channel_pair * c_out * c_in_per_group
    # The weight gradient is a convolution of the input with the output gradient over the
    # batch; flop_counter counts it with every input channel, grouped or not.
    weight_grad = per_channel_pair * c_out * c_in
    return forward + weight_grad + (forward if x.requires_grad else 0)


def linear_step_flops(layer: nn.Linear, x: torch.Tensor) -> int:
    """Forward, gradient of the weights, and of the input where it has one: 2 * rows * in * out each."""
    product = 2 * math.prod(x.shape[:-1]) * layer.in_features * layer.out_features
    return product * (3 if x.requires_grad else 2)


def step_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one training step of `model` on input `x` (forward, loss gradient, backward)."""
    total = 0

    def count(layer: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(layer, nn.Conv2d):
            total += conv2d_step_flops(layer, inputs[0], out)
        elif isinstance(layer, nn.Linear):
            total += linear_step_flops(layer, inputs[0])

    handles = [
        m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return total


@functools.cache
def bottom_step_flops(model: str, batch: int) -> int:
    """Client: forward of the bottom model, then back-propagating the split-layer gradient into it."""
    x = torch.zeros(batch, *INPUT_SHAPE)  # no input gradient: the client never needs one
    return step_flops(SPLIT_MODELS[model].build_bottom(), x)


@functools.cache
def top_step_flops(model: str, batch: int) -> int:
    """Server: forward and loss of the top model, backward including dL/ds for the clients."""
    s = torch.zeros(batch, *smashed_shape(model), requires_grad=True)
    return step_flops(SPLIT_MODELS[model].build_top(), s)


@functools.cache
def full_step_flops(model: str, batch: int) -> int:
    """CL and FL: forward, loss and backward of the whole model (bottom + top) on one batch."""
    split = SPLIT_MODELS[model]
    return step_flops(
        nn.Sequential(split.build_bottom(), split.build_top()), torch.zeros(batch, *INPUT_SHAPE)
    )


@dataclass(frozen=True)
class EpochFlops:
    per_client: int  # every client runs the same steps on the same batch shape
    server: int
    clients: int

    @property
    def client_total(self) -> int:
        return self.per_client * self.clients


class _Counts:
    """methods.schedules.FlopCounts for one model."""

    def __init__(self, model: str, seed: int) -> None:
        self.model, self.parts = model, ModelParts(model, seed)

    def step(self, module: nn.Module, input_shape: tuple[int, ...], batch: int, input_grad: bool) -> int:
        return step_flops(module, torch.zeros(batch, *input_shape, requires_grad=input_grad))

    def bottom(self, batch: int) -> int:
        return bottom_step_flops(self.model, batch)

    def top(self, batch: int) -> int:
        return top_step_flops(self.model, batch)

    def whole(self, batch: int) -> int:
        return full_step_flops(self.model, batch)


def epoch_flops(config: RunConfig) -> EpochFlops:
    """FLOPs of one training epoch, split between each client and the server (or data centre),
    as the method's schedule counts them from the models' per-step FLOPs."""
    per_client, server = config.spec.schedule.epoch_flops(config, _Counts(config.model, config.seed))
    return EpochFlops(per_client, server, config.clients)
