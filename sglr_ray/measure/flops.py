"""Training FLOPs of clients and server, counted from the layers' shapes.

FLOPs depend only on the model, its cut and the batch shape, so each distinct
(parts, batch) is counted once and multiplied by the number of steps; no step
of a real run is instrumented. Evaluation is not counted: these are the costs
of training, the unit of the paper's "PFLOPs per client".

The count follows torch.utils.flop_counter's rules (tests/unit/test_measurement.py
and test_custom_models.py check it against FlopCounterMode for every built-in and
example model at every cut): multiplications and additions of convolutions and
matrix products, forward and backward, nothing for normalization, activations,
pooling or biases. For models made of torch.nn's layers (and the built-in
blocks) it reads shapes from one forward pass, because a dispatch mode makes
torch import torch._dynamo and Triton, about 160 MB resident in the driver,
which otherwise never needs them; any other model (a custom layer with its own
weights, attention, recurrent layers) is counted by FlopCounterMode itself.

Both passes run on the meta device (shapes, no data) where the model allows it: the server's
step of 10,000 clients x b = 8 is a batch of 80,000, whose real activations would take about
17 GB in the driver just to be counted.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass

import torch
from torch import nn

from sglr_ray.config import RunConfig
from sglr_ray.nodes.models import ModelParts, as_parts

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Layers with weights whose FLOPs flop_counter does not count (or counts nothing for).
_NO_FLOPS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.Embedding)


def conv_step_flops(layer: nn.Module, x: torch.Tensor, out: torch.Tensor) -> int:
    """Forward, gradient of the weights, and of the input where it has one (1-, 2- or 3-d)."""
    batch, c_in = x.shape[:2]
    c_out, c_in_per_group, *kernel = layer.weight.shape
    per_channel_pair = 2 * batch * math.prod(out.shape[2:]) * math.prod(kernel)
    forward = per_channel_pair * c_out * c_in_per_group
    # The weight gradient is a convolution of the input with the output gradient over the
    # batch; flop_counter counts it with every input channel, grouped or not.
    weight_grad = per_channel_pair * c_out * c_in
    return forward + weight_grad + (forward if x.requires_grad else 0)


conv2d_step_flops = conv_step_flops  # its name before 1-d and 3-d convolutions were counted


def linear_step_flops(layer: nn.Linear, x: torch.Tensor) -> int:
    """Forward, gradient of the weights, and of the input where it has one: 2 * rows * in * out each."""
    product = 2 * math.prod(x.shape[:-1]) * layer.in_features * layer.out_features
    return product * (3 if x.requires_grad else 2)


def countable_by_shapes(model: nn.Module) -> bool:
    """Whether every layer is one whose FLOPs the shape rules cover: torch.nn's convolutions and
    linear layers, weightless torch.nn layers, norms, containers and the built-in blocks."""
    for m in model.modules():
        own = any(True for _ in m.parameters(recurse=False))
        if type(m) in (*CONVS, nn.Linear) or isinstance(m, _NO_FLOPS):
            continue
        builtin = type(m).__module__.startswith(("torch.nn.modules", "sglr_ray.zoo"))
        if own or not builtin:
            return False
    return True


def step_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one training step of `model` on input `x` (forward, loss gradient, backward),
    counted on copies on the meta device (no memory for activations); on the real ones where a
    model cannot run there (a custom layer reading values)."""
    try:
        meta_model = copy.deepcopy(model).to("meta")
        meta_x = torch.empty_like(x, device="meta").requires_grad_(x.requires_grad)
        return _step_flops(meta_model, meta_x)
    except (NotImplementedError, RuntimeError):
        real_x = torch.zeros(x.shape, dtype=x.dtype, requires_grad=x.requires_grad)
        return _step_flops(model, real_x)


def _step_flops(model: nn.Module, x: torch.Tensor) -> int:
    if not countable_by_shapes(model):
        return counted_step_flops(model, x)
    total = 0

    def count(layer: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        total += conv_step_flops(layer, inputs[0], out) if isinstance(layer, CONVS) else 0
        total += linear_step_flops(layer, inputs[0]) if isinstance(layer, nn.Linear) else 0

    handles = [m.register_forward_hook(count) for m in model.modules() if type(m) in (*CONVS, nn.Linear)]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return total


def counted_step_flops(model: nn.Module, x: torch.Tensor) -> int:
    """step_flops by torch's FlopCounterMode: forward, and backward from the output."""
    from torch.utils.flop_counter import FlopCounterMode  # see the module docstring: only here

    with FlopCounterMode(display=False) as counter:
        out = model(x)
        if out.requires_grad:  # nothing to train and no input gradient: a forward is all there is
            out.sum().backward()
    return counter.get_total_flops()


@functools.cache
def bottom_step_flops(model: str | ModelParts, batch: int) -> int:
    """Client: forward of the bottom model, then back-propagating the split-layer gradient into it."""
    parts = as_parts(model)
    x = torch.zeros(batch, *parts.input_shape, device="meta")  # no input gradient: the client never needs one
    return step_flops(parts.bottom(), x)


@functools.cache
def top_step_flops(model: str | ModelParts, batch: int) -> int:
    """Server: forward and loss of the top model, backward including dL/ds for the clients."""
    parts = as_parts(model)
    s = torch.zeros(batch, *parts.smashed_shape, device="meta", requires_grad=True)
    return step_flops(parts.top(), s)


@functools.cache
def full_step_flops(model: str | ModelParts, batch: int) -> int:
    """CL and FL: forward, loss and backward of the whole model (bottom + top) on one batch."""
    parts = as_parts(model)
    x = torch.zeros(batch, *parts.input_shape, device="meta")
    return step_flops(nn.Sequential(parts.bottom(), parts.top()), x)


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

    def __init__(self, parts: ModelParts) -> None:
        # The seed does not change a FLOP: counts are cached across the runs of a sweep.
        self.parts, self.model = (
            parts,
            ModelParts(parts.model, 0, parts.input_shape, parts.num_classes, parts.cut),
        )

    def step(self, module: nn.Module, input_shape: tuple[int, ...], batch: int, input_grad: bool) -> int:
        x = torch.zeros(batch, *input_shape, device="meta", requires_grad=input_grad)
        return step_flops(module, x)

    def bottom(self, batch: int) -> int:
        return bottom_step_flops(self.model, batch)

    def top(self, batch: int) -> int:
        return top_step_flops(self.model, batch)

    def whole(self, batch: int) -> int:
        return full_step_flops(self.model, batch)


def epoch_flops(config: RunConfig) -> EpochFlops:
    """FLOPs of one training epoch, split between each client and the server (or data centre),
    as the method's schedule counts them from the models' per-step FLOPs."""
    per_client, server = config.spec.schedule.epoch_flops(config, _Counts(config.model_parts))
    return EpochFlops(per_client, server, config.clients)
