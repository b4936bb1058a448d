"""Top-1 scoring of one model pair on an evaluation set, in batches, without gradients.

Plain torch, used by ClientShard.evaluate on the client side: evaluation images
never leave the shard that scores them.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import nn

from sglr_ray.data import ImageSet

EVAL_BATCH = 1000  # images per forward pass: bounds the activation memory of a large subset


@torch.no_grad()
def count_correct(
    bottom: nn.Module,
    top: nn.Module,
    images: ImageSet,
    labels: torch.Tensor,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager],
) -> int:
    """How many of `images` (samples, turned into model inputs by their codec) top(bottom(x))
    classifies as `labels`. Both models are put in eval
    mode for the pass (batch norm uses its running statistics) and go back to the mode each
    was in after (`top` may hold a client's own trained layers: methods/usl.py's tail)."""
    modes = [(m, m.training) for m in (*bottom.modules(), *top.modules())]
    bottom.eval()
    top.eval()
    correct = 0
    try:
        for start in range(0, len(labels), EVAL_BATCH):
            x = images.inputs(slice(start, start + EVAL_BATCH)).to(device)
            with autocast():
                logits = top(bottom(x))
            correct += int((logits.argmax(1).cpu() == labels[start : start + EVAL_BATCH]).sum())
    finally:
        for module, training in modes:
            module.training = training
    return correct
