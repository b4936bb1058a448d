"""The messages that cross the client/server split, and how many bytes each moves.

These are the only things a client shard sends the server during training:
smashed data and labels. Raw inputs never appear in them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def tensor_nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


@dataclass
class SmashedBatch:
    """One shard's upload for one step: its clients' smashed data and labels, stacked.

    Rows are grouped by client: the first sizes[0] rows belong to client_ids[0], and so on.
    """

    client_ids: list[int]
    sizes: list[int]
    smashed: torch.Tensor  # (sum(sizes), *smashed_shape), detached, on the CPU
    labels: torch.Tensor  # (sum(sizes),) int64


@dataclass
class GradientDelivery:
    """What the server sends one shard for one step.

    Clients in `averaged` receive the broadcast G_avg (sent as a separate object,
    once for everyone); every other client receives its own G_i in `own`.
    """

    own: dict[int, torch.Tensor]
    averaged: list[int]


@dataclass
class StepMetrics:
    loss: float
    samples: int
    active_clients: list[int]


@dataclass
class ModelUpload:
    """A shard's part of a FedAvg round: sum_i n_i * state_i over its clients, and sum_i n_i."""

    client_ids: list[int]
    weighted_state_sum: dict[str, torch.Tensor]
    total_weight: float
    state_nbytes: int  # bytes of one client's bottom model, as a real client would send it
