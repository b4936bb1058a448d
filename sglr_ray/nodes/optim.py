"""Optimizers, learning-rate schedules and precision, shared by clients and server."""

from __future__ import annotations

import contextlib
import copy
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

import torch

_STEP_RE = re.compile(r"^step:(\d*\.?\d+):(\d*\.?\d+)$")


def make_optimizer(params: Iterable[torch.nn.Parameter], name: str, lr: float) -> torch.optim.Optimizer:
    """adam: betas (0.9, 0.999) as in the paper; sgd: momentum 0.9.

    Adam runs fused (one kernel over every parameter): the same update, about 6x faster on a CPU core
    than torch's default per-parameter loop for alexnet-paper, whose step otherwise cost more
    than the forward and backward passes of a batch of 8; it rounds differently, 3e-14 apart in
    float64 after 5 steps (`python -m benchmarks.adam_step`, results/benchmarks/adam_step.md)."""
    if name == "adam":
        params = list(params)
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), fused=fused or None)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}; choose adam or sgd")


@dataclass(frozen=True)
class LrSchedule:
    """constant, or step:F:G: the rate is multiplied by G from epoch floor(F*E) on."""

    at_fraction: Fraction | None = None  # None: constant
    factor: float = 1.0

    @classmethod
    def parse(cls, text: str) -> LrSchedule:
        if text == "constant":
            return cls()
        match = _STEP_RE.match(text)
        if not match:
            raise ValueError(f"{text!r} is malformed: use 'constant' or 'step:F:G', e.g. step:0.8:0.1")
        at, factor = Fraction(match.group(1)), float(match.group(2))
        if not 0 < at <= 1 or not factor > 0:
            raise ValueError(f"{text!r}: F must be in (0, 1] and G positive")
        return cls(at, factor)

    def multiplier(self, epoch: int, epochs: int) -> float:
        """The factor on the base learning rate in `epoch` (0-based) of `epochs`."""
        if self.at_fraction is None or epoch < math.floor(self.at_fraction * epochs):
            return 1.0
        return self.factor


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's rate (cheap: called at each step with the epoch's rate)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for --precision bf16 (weights and optimizer state stay fp32), else nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def optimizer_state_copy(optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state_dict, deep-copied with its tensors cloned: a deep-copied view
    would carry its whole base storage along (a grouped client's optimizer state is a view
    of the group's), and a checkpoint would hold the whole group once per client."""
    return _cloned(optimizer.state_dict())


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Restore a checkpoint's optimizer state, keeping how this optimizer steps.

    torch's load_state_dict also restores each group's options, `fused` and `foreach`
    among them, so a checkpoint written before Adam was fused would resume on the slower
    per-parameter loop: the state is the checkpoint's, the implementation this run's.
    The state is cloned: torch's load_state_dict keeps tensors that already have the right
    dtype and device, and the next step would change `saved` in place."""
    kept = [{k: group[k] for k in ("fused", "foreach") if k in group} for group in optimizer.param_groups]
    optimizer.load_state_dict(_cloned(saved))
    for group, options in zip(optimizer.param_groups, kept, strict=True):
        group.update(options)


def _cloned(value: object) -> object:
    if torch.is_tensor(value):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _cloned(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cloned(v) for v in value]
    return copy.deepcopy(value)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """The mean training loss (--loss): cross-entropy, or the authors' code's binary cross-entropy
    of the softmax outputs against one-hot targets, averaged over samples and classes."""
    if kind == "cross-entropy":
        return torch.nn.functional.cross_entropy(logits, labels)
    if kind == "bce-softmax":
        probs = torch.softmax(logits.float(), dim=1)
        targets = torch.nn.functional.one_hot(labels, logits.shape[1]).to(probs.dtype)
        return torch.nn.functional.binary_cross_entropy(probs, targets)
    raise ValueError(f"unknown loss {kind!r}; choose cross-entropy or bce-softmax")
