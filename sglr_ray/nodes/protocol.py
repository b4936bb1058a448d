"""The messages that cross the client/server split, and how many bytes each moves.

These are the only things a client shard sends the server during training:
smashed data and labels. Raw inputs never appear in them.

On the wire (pickled, as Ray does between actors) their tensors travel as flat byte arrays
(`to_wire`): pickle protocol 5 sends a numpy array out of band, so Ray writes it into its
object store with no intermediate copy and the receiver reads it there with no copy, where
torch's own pickling copies every tensor into the pickle and again out of it. A step of
10,000 clients x b = 8 moves 2.6 GB of AlexNet smashed data and as much gradient, so each
copy saved is gigabytes. What the receiver gets is read-only: it reads it, never writes it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch


def tensor_nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


WireTensor = tuple[np.ndarray, str, tuple[int, ...]]


def to_wire(tensor: torch.Tensor) -> WireTensor:
    """A CPU tensor as (its bytes as a flat uint8 array, dtype name, shape): a view where the
    tensor is contiguous, which pickle protocol 5 sends out of band (bf16 too: numpy has no
    bf16, bytes are bytes)."""
    flat = tensor.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy(), str(flat.dtype).removeprefix("torch."), tuple(tensor.shape)


def from_wire(data: np.ndarray, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    """`to_wire`'s tensor, sharing `data`'s memory (read-only where Ray's object store holds it)."""
    with warnings.catch_warnings():  # read-only on purpose: the receiver never writes it
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        return torch.from_numpy(data).view(getattr(torch, dtype)).reshape(shape)


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

    def __reduce__(self) -> tuple:
        wire = (self.client_ids, self.sizes, to_wire(self.smashed), to_wire(self.labels))
        return _smashed_batch, wire


def _smashed_batch(
    client_ids: list[int], sizes: list[int], smashed: WireTensor, labels: WireTensor
) -> SmashedBatch:
    return SmashedBatch(client_ids, sizes, from_wire(*smashed), from_wire(*labels))


class RowGradients(Mapping[int, torch.Tensor]):
    """Split-layer gradients of several clients as ONE tensor: client `client_ids[k]`'s are the
    next `sizes[k]` rows of `rows`; `grads[c]` is a view. What a GradientDelivery holds from the
    server: one array on the wire in place of thousands of small tensors."""

    def __init__(self, client_ids: list[int], sizes: list[int], rows: torch.Tensor) -> None:
        if sum(sizes) != len(rows) or len(sizes) != len(client_ids):
            raise ValueError(f"{len(rows)} rows for clients {client_ids} of sizes {sizes}")
        self.client_ids, self.sizes, self.rows = client_ids, sizes, rows
        starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        self._slices = {c: slice(starts[k], starts[k + 1]) for k, c in enumerate(client_ids)}

    @classmethod
    def pack(cls, grads: Mapping[int, torch.Tensor], client_ids: list[int]) -> RowGradients:
        """The gradients of `client_ids` (each in `grads`), in that order: a view where they are
        consecutive rows of one tensor already (the server's usual case), else concatenated."""
        parts = [grads[c] for c in client_ids]
        sizes = [len(g) for g in parts]
        view = _adjacent_view(parts)
        return cls(client_ids, sizes, view if view is not None else _concatenated(parts))

    def __getitem__(self, client_id: int) -> torch.Tensor:
        return self.rows[self._slices[client_id]]

    def __iter__(self) -> Iterator[int]:
        return iter(self.client_ids)

    def __len__(self) -> int:
        return len(self.client_ids)

    def __reduce__(self) -> tuple:
        return _row_gradients, (self.client_ids, self.sizes, to_wire(self.rows))


def _row_gradients(client_ids: list[int], sizes: list[int], rows: WireTensor) -> RowGradients:
    return RowGradients(client_ids, sizes, from_wire(*rows))


def _adjacent_view(parts: list[torch.Tensor]) -> torch.Tensor | None:
    """One view spanning `parts` where they are consecutive, contiguous rows of one storage."""
    if not parts or not all(p.is_contiguous() for p in parts):
        return None
    first = parts[0]
    storage = first.untyped_storage().data_ptr()
    offset = first.storage_offset()
    for part in parts:
        same = part.untyped_storage().data_ptr() == storage and part.dtype == first.dtype
        if not same or part.storage_offset() != offset or part.shape[1:] != first.shape[1:]:
            return None
        offset += part.numel()
    rows = sum(len(p) for p in parts)
    return first.new_empty(0).set_(first.untyped_storage(), first.storage_offset(), (rows, *first.shape[1:]))


def _concatenated(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.empty(0)


@dataclass
class GradientDelivery:
    """What the server sends one shard for one step.

    Clients in `averaged` receive the broadcast G_avg (sent as a separate object,
    once for everyone); every other client receives its own G_i in `own`.
    """

    own: Mapping[int, torch.Tensor]  # from the server: a RowGradients, one tensor for all of them
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
