"""What the nodes read of a run's settings: a narrow interface, not the run configuration.

A client shard and the server need the method's declaration and a dozen
numbers; `config.RunConfig` has them all and is what the executors pass, but
nodes/ sits below config.py in the layers and sees only this Protocol. A test
or a benchmark may hand a node any object with these attributes.
"""

from __future__ import annotations

from typing import Protocol

from sglr_ray.methods.base import Method
from sglr_ray.nodes.models import ModelParts


class NodeSettings(Protocol):
    """The settings a ClientShard or the Server reads (RunConfig's fields of the same names)."""

    method: str  # for messages only
    spec: Method  # the method's declaration: schedule, client role, rule, server step
    model: str
    seed: int
    clients: int
    epochs: int
    batch_size: int
    lr: float  # the clients' learning rate
    optimizer: str
    lr_schedule: str
    precision: str
    loss: str  # --loss: the training loss of the split and whole models
    deadline_s: float  # --deadline-s: late uploads are dropped (0: none)
    compress: str  # --compress: how smashed data and gradients are sent (nodes/codec.py)

    @property
    def model_parts(self) -> ModelParts: ...  # the model, its cut, the input shape and classes

    @property
    def server_lr(self) -> float: ...

    @property
    def resets_client_optimizers(self) -> bool: ...
