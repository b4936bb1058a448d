"""Optimizer construction shared by clients and server."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def make_optimizer(params: Iterable[torch.nn.Parameter], name: str, lr: float) -> torch.optim.Optimizer:
    """adam: betas (0.9, 0.999) as in the paper; sgd: momentum 0.9."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}; choose adam or sgd")
