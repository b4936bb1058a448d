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

from collections.abc import Callable, Mapping, Sequence
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


class ServerBatch:
    """One iteration's uploads on the server: rows grouped by client, in upload order.

    `parts` are the uploads' smashed data as they arrived (under Ray, read-only views of the
    object store); `smashed` is their concatenation, made on first use: the default server
    step (`joint_step`) reads the parts and never needs it, which saves a copy of every
    smashed row (gigabytes at thousands of clients)."""

    def __init__(
        self,
        smashed: torch.Tensor | Sequence[torch.Tensor],
        labels: torch.Tensor,
        client_ids: list[int],
        sizes: list[int],
    ) -> None:
        self.parts = [smashed] if torch.is_tensor(smashed) else list(smashed)
        self.labels, self.client_ids, self.sizes = labels, client_ids, sizes
        self._smashed = smashed if torch.is_tensor(smashed) else None

    @property
    def smashed(self) -> torch.Tensor:
        """(sum(sizes), *smashed_shape), detached: the server's own copy (a step may write it)."""
        if self._smashed is None:
            self._smashed = torch.cat(self.parts)
        return self._smashed

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
    def train_top_rows(
        self, index: int, parts: Sequence[torch.Tensor], labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...
    def top_loss(self, index: int, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...


ServerStep = Callable[[TopModels, ServerBatch, int, int], tuple[float, dict[int, torch.Tensor]]]


def scaled_gradients(batch: ServerBatch, grad: torch.Tensor) -> dict[int, torch.Tensor]:
    """G_i = dL_i/ds_i = (N/n_i) dL/ds_i for L the mean loss over the whole batch: a client's
    gradient does not depend on how many clients share the batch (SPEC section 2, step 4).
    Scaled in place (the same products as `grad[rows] * (N/n_i)`) and returned as views of
    `grad`: no second copy of the batch's gradient; the server packs them per shard."""
    total = len(batch.labels)
    with torch.no_grad():
        if len(set(batch.sizes)) == 1:  # equal batches: one scale for every row
            grad.mul_(total / batch.sizes[0])
        else:
            for (_, rows), n in zip(batch.rows(), batch.sizes, strict=True):
                grad[rows].mul_(total / n)
    return {c: grad[rows] for c, rows in batch.rows()}


def joint_slices(batch: ServerBatch, grad: torch.Tensor) -> dict[int, torch.Tensor]:
    """Each client's rows of dL/ds for the joint mean loss, unscaled: what the authors' released code
    returns (--split-gradient joint-slice, a control; 1/C of G_i with equal batches)."""
    return {c: grad[rows] for c, rows in batch.rows()}


def joint_step(server: TopModels, batch: ServerBatch, epoch: int, step: int) -> tuple[float, dict]:
    """PSL's server step: ONE forward and ONE loss over the concatenated batch (the mean
    cross-entropy, which is sum_i (n_i/N) L_i), one optimizer step, then G_i."""
    loss, grad = server.train_top_rows(0, batch.parts, batch.labels)
    split = joint_slices if server.config.split_gradient == "joint-slice" else scaled_gradients
    return loss.item(), split(batch, grad)


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
