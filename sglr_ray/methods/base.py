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

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"method {self.name!r}: schedule {self.schedule!r} is not one of {SCHEDULES}")
        unknown = set(self.fixed) - {"alpha", "phi"}
        if unknown:
            raise ValueError(f"method {self.name!r} fixes unknown knobs {sorted(unknown)}")

    def takes(self, knob: str) -> bool:
        """Whether the user may set `knob` (alpha or phi) for this method."""
        return knob not in self.fixed
