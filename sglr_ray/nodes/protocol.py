"""The messages that cross the client/server split, and how many bytes each moves.

These are the only things a client shard sends the server during training:
smashed data and labels. Raw inputs never appear in them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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

    def without(self, client_ids: set[int]) -> SmashedBatch:
        """The upload less the rows of `client_ids` (their uploads missed the deadline)."""
        keep, rows, start = [], [], 0
        for client_id, n in zip(self.client_ids, self.sizes, strict=True):
            if client_id not in client_ids:
                keep.append((client_id, n))
                rows.extend(range(start, start + n))
            start += n
        index = torch.tensor(rows, dtype=torch.int64)
        return SmashedBatch(
            [c for c, _ in keep], [n for _, n in keep], self.smashed[index], self.labels[index]
        )


@dataclass
class GradientDelivery:
    """What the server sends one shard for one step.

    Clients in `averaged` receive the broadcast G_avg (sent as a separate object,
    once for everyone); every other client receives its own G_i in `own`.
    """

    own: dict[int, torch.Tensor]
    averaged: list[int]
    late: list[int] = field(default_factory=list)  # uploads past the deadline: nothing comes back


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
