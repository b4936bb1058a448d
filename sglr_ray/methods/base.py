"""What a method is: a declaration the engine reads, plus a SplitRule where it needs one.

The engine (execution/driver.py, nodes/) runs every method; a method only says
how it differs from parallel split learning:

- `fixed`: the knobs it pins (alpha, phi); the others are the user's to set.
- `schedule`: how an epoch trains, an object (methods/schedules.py): PARALLEL
  is PSL's step (every client, one server pass), SEQUENTIAL is SSL's turns,
  LOCAL and POOLED train whole models on the clients (FL, CL).
- `client`: what a client holds and does around the split (methods/roles.py):
  a bottom model by default, the whole model for CL and FL.
- `epoch_end`: what happens after each epoch's training, in order
  (FEDAVG_CLIENTS: FedAvg of the client models, SFL and FL).
- `rule`: builds the SplitRule that decides what each client receives from
  the split-layer gradients of one iteration (SplitAvg is one).
- `server_step`: how the server turns one iteration's uploads into a loss and
  per-client split-layer gradients (`joint_step`, PSL's, by default).
- `top_copies`: how many top models the server keeps (SFLv1: one per client,
  averaged after each epoch by AVERAGE_SERVER_COPIES).
- `batch_plan`: per-iteration, per-client batch sizes when they are not the
  fixed b (GPSL).

A researcher's own method is a `Method` and, if it changes what clients
receive, a SplitRule: see examples/custom_method.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from sglr_ray.methods.roles import SPLIT_BOTTOM, ClientRole
from sglr_ray.methods.schedules import PARALLEL, Engine, Schedule
from sglr_ray.settings import MethodOption

RunConfig = Any  # the run's settings (config.RunConfig); methods/ reads fields and never imports it


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
    # A tensor of its own per client, not a view of `grad`: pickled for an actor, a view would
    # carry the whole batch's storage along (each of 1000 clients' gradients, 256 MB).
    return {c: grad[rows] * (total / n) for (c, rows), n in zip(batch.rows(), batch.sizes, strict=True)}


def joint_slices(batch: ServerBatch, grad: torch.Tensor) -> dict[int, torch.Tensor]:
    """Each client's rows of dL/ds for the joint mean loss, unscaled: what the authors' released code
    returns (--split-gradient joint-slice, a control; 1/C of G_i with equal batches)."""
    return {c: grad[rows] for c, rows in batch.rows()}


def joint_step(server: TopModels, batch: ServerBatch, epoch: int, step: int) -> tuple[float, dict]:
    """PSL's server step: ONE forward and ONE loss over the concatenated batch (the mean
    cross-entropy, which is sum_i (n_i/N) L_i), one optimizer step, then G_i."""
    smashed = batch.smashed.requires_grad_(True)
    loss = server.train_top(0, smashed, batch.labels)
    split = joint_slices if server.config.split_gradient == "joint-slice" else scaled_gradients
    return loss.item(), split(batch, smashed.grad)


def joint_server_flops(top_flops: Callable[[int], int], config: RunConfig) -> int:
    """Server FLOPs of one joint step: the top model on the concatenated batch of b * C."""
    return top_flops(config.batch_size * config.clients)


BatchPlan = list[list[int]]  # per iteration, per client id: how many samples it contributes
EpochEnd = Callable[[Engine], None]


def fedavg_clients(engine: Engine) -> None:
    """FedAvg of the clients' models (SFL: bottoms; FL: whole models), weighted by partition size."""
    engine.average_client_models()


def average_server_copies(engine: Engine) -> None:
    """SFLv1: FedAvg of the server's per-client top models."""
    engine.average_server_copies()


def one_top(config: RunConfig) -> int:
    return 1


FEDAVG_CLIENTS, AVERAGE_SERVER_COPIES = fedavg_clients, average_server_copies


@dataclass(frozen=True)
class Method:
    name: str
    summary: str  # one line for --help and reports
    fixed: Mapping[str, float] = field(default_factory=dict)  # knobs the method pins: alpha, phi
    schedule: Schedule = PARALLEL  # how an epoch trains (methods/schedules.py)
    client: ClientRole = SPLIT_BOTTOM  # what a client holds and does (methods/roles.py)
    epoch_end: tuple[EpochEnd, ...] = ()  # after each epoch's training, in order
    rule: Callable[[RunConfig], SplitRule] = own_gradients
    defaults: Mapping[str, float] = field(default_factory=dict)  # knob defaults where not the global ones
    server_step: ServerStep = joint_step
    top_copies: Callable[[RunConfig], int] = one_top  # top models the server keeps
    batch_plan: Callable[[RunConfig, int], BatchPlan] | None = None  # None: b from every client
    # Server FLOPs of one iteration, given top_flops(batch) -> FLOPs of a top-model step at that batch.
    server_flops: Callable[[Callable[[int], int], RunConfig], int] = joint_server_flops
    options: Mapping[str, MethodOption] = field(default_factory=dict)  # settings of its own (settings.option)

    def __post_init__(self) -> None:
        if not isinstance(self.schedule, Schedule):
            raise ValueError(f"method {self.name!r}: schedule must be a Schedule, got {self.schedule!r}")
        unknown = set(self.fixed) - {"alpha", "phi"}
        if unknown:
            raise ValueError(f"method {self.name!r} fixes unknown knobs {sorted(unknown)}")

    @property
    def settings(self) -> tuple[str, ...]:
        """The method-specific settings it reads (the others must stay at their defaults)."""
        return tuple(self.options)

    @property
    def averages_clients(self) -> bool:
        """Whether every client holds the same model after each epoch (FedAvg of client models)."""
        return FEDAVG_CLIENTS in self.epoch_end

    def takes(self, knob: str) -> bool:
        """Whether the user may set `knob` (alpha or phi) for this method."""
        return knob not in self.fixed
