"""What a method is: a declaration the engine reads, plus a SplitRule where it needs one.

The engine (execution/driver.py, nodes/) runs every method; a method only says
how it differs from parallel split learning:

- `fixed`: the knobs it pins (alpha, phi); the others are the user's to set.
- `schedule`: how an epoch trains. "parallel" is PSL's step (every client,
  one server pass), "sequential" is SSL's turns, "local" trains whole models
  on the clients (CL, FL).
- `full_model`: clients hold the whole model instead of a bottom model.
- `average_clients`: FedAvg of the client models after each epoch (SFL, FL).
- `rule`: builds the SplitRule that decides what each client receives from
  the split-layer gradients of one iteration (SplitAvg is one).
- `server_step`: how the server turns one iteration's uploads into a loss and
  per-client split-layer gradients (`joint_step`, PSL's, by default).
- `server_copies`: the server keeps one top model per client, averaged after
  each epoch (SFLv1).
- `batch_plan`: per-iteration, per-client batch sizes when they are not the
  fixed b (GPSL).

A researcher's own method is a `Method` and, if it changes what clients
receive, a SplitRule: see examples/custom_method.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from sglr_ray.config import RunConfig

SCHEDULES = ("parallel", "sequential", "local")


@dataclass
class Delivery:
    """What the server sends for one iteration.

    `own[c]` goes to client c alone (a unicast); `shared` goes once to every
    client in `shared_to` (one broadcast, counted once in the server's bytes
    sent and once per receiving client).
    """

    own: dict[int, torch.Tensor]
    shared: torch.Tensor | None = None
    shared_to: list[int] = field(default_factory=list)

    def for_client(self, client_id: int) -> torch.Tensor:
        return self.shared if client_id in self.shared_to else self.own[client_id]


class SplitRule(Protocol):
    """Maps one iteration's split-layer gradients G_i (by client id) to a Delivery."""

    def deliver(self, grads: Mapping[int, torch.Tensor], epoch: int, step: int) -> Delivery: ...


class OwnGradients:
    """PSL: every client receives its own G_i."""

    def deliver(self, grads: Mapping[int, torch.Tensor], epoch: int, step: int) -> Delivery:
        return Delivery(own=dict(grads))


def own_gradients(config: RunConfig) -> SplitRule:
    return OwnGradients()


@dataclass
class ServerBatch:
    """One iteration's uploads, concatenated on the server: rows grouped by client."""

    smashed: torch.Tensor  # (sum(sizes), *smashed_shape), detached
    labels: torch.Tensor
    client_ids: list[int]
    sizes: list[int]

    def rows(self) -> list[tuple[int, slice]]:
        """(client_id, its rows) for every client in the batch."""
        out, start = [], 0
        for client_id, n in zip(self.client_ids, self.sizes, strict=True):
            out.append((client_id, slice(start, start + n)))
            start += n
        return out


class TopModels(Protocol):
    """What a server step may use of the server (nodes/server.py): its top model(s)."""

    config: RunConfig

    def train_top(self, index: int, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...
    def top_loss(self, index: int, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...


ServerStep = Callable[[TopModels, ServerBatch, int, int], tuple[float, dict[int, torch.Tensor]]]


def scaled_gradients(batch: ServerBatch, grad: torch.Tensor) -> dict[int, torch.Tensor]:
    """G_i = dL_i/ds_i = (N/n_i) dL/ds_i for L the mean loss over the whole batch: a client's
    gradient does not depend on how many clients share the batch (SPEC section 2, step 4)."""
    total = len(batch.labels)
    return {c: grad[rows] * (total / n) for (c, rows), n in zip(batch.rows(), batch.sizes, strict=True)}


def joint_step(server: TopModels, batch: ServerBatch, epoch: int, step: int) -> tuple[float, dict]:
    """PSL's server step: ONE forward and ONE loss over the concatenated batch (the mean
    cross-entropy, which is sum_i (n_i/N) L_i), one optimizer step, then G_i."""
    smashed = batch.smashed.requires_grad_(True)
    loss = server.train_top(0, smashed, batch.labels)
    return loss.item(), scaled_gradients(batch, smashed.grad)


def joint_server_flops(top_flops: Callable[[int], int], config: RunConfig) -> int:
    """Server FLOPs of one joint step: the top model on the concatenated batch of b * C."""
    return top_flops(config.batch_size * config.clients)


BatchPlan = list[list[int]]  # per iteration, per client id: how many samples it contributes


@dataclass(frozen=True)
class Method:
    name: str
    summary: str  # one line for --help and reports
    fixed: Mapping[str, float] = field(default_factory=dict)  # knobs the method pins: alpha, phi
    schedule: str = "parallel"  # parallel | sequential | local (see the module docstring)
    full_model: bool = False  # clients hold bottom + top (CL, FL)
    average_clients: bool = False  # FedAvg of the client models after each epoch
    pooled_data: bool = False  # one "client" (the data centre) holds every partition (CL)
    rule: Callable[[RunConfig], SplitRule] = own_gradients
    defaults: Mapping[str, float] = field(default_factory=dict)  # knob defaults where not the global ones
    server_step: ServerStep = joint_step
    server_copies: bool = False  # one top model per client, FedAvg'd after each epoch
    batch_plan: Callable[[RunConfig, int], BatchPlan] | None = None  # None: b from every client
    # Server FLOPs of one iteration, given top_flops(batch) -> FLOPs of a top-model step at that batch.
    server_flops: Callable[[Callable[[int], int], RunConfig], int] = joint_server_flops
    settings: tuple[str, ...] = ()  # method-specific settings it reads (others must stay at default)

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"method {self.name!r}: schedule {self.schedule!r} is not one of {SCHEDULES}")
        unknown = set(self.fixed) - {"alpha", "phi"}
        if unknown:
            raise ValueError(f"method {self.name!r} fixes unknown knobs {sorted(unknown)}")

    def takes(self, knob: str) -> bool:
        """Whether the user may set `knob` (alpha or phi) for this method."""
        return knob not in self.fixed
