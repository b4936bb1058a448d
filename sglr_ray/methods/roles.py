"""What a client holds and computes around the split layer: the client-side hooks.

A ClientRole builds a client's model and the server's from the run's model
parts, and says what a client does in a split step: what it computes before
upload (`forward`) and what it does with what the server sends back
(`backward`). The shard (nodes/client.py) owns the loop, the batches, the
optimizers and the learning rates; the role only fills in those two steps, as
a LightningModule fills in a Trainer's. PSL's bottom model is the default;
methods/lsl.py (a local auxiliary loss) and methods/usl.py (a client-side
tail) are roles of their own.

`parts` is nodes.models.ModelParts: `bottom()` and `top()` build the split
model's halves with the run's seeds (`middle()` and `tail()` the top's two
parts where the model is cut twice), `seeded(build, salt)` builds anything
else reproducibly, `smashed_shape` and `num_classes` describe the cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

Parts = Any  # nodes.models.ModelParts (methods/ sits below nodes/ in the layers)


@dataclass(frozen=True)
class StepContext:
    """Where a hook runs: any randomness it draws is seeded by (seed, client_id, epoch, step), so
    both executors, a replayed epoch and a resumed run draw the same numbers (`generator`)."""

    seed: int
    client_id: int
    epoch: int
    step: int

    def generator(self, salt: int = 0) -> torch.Generator:
        """A CPU generator seeded by the context and `salt` (one stream per use)."""
        entropy = [self.seed, self.client_id, self.epoch, self.step, salt]
        return torch.Generator().manual_seed(int(np.random.SeedSequence(entropy).generate_state(1)[0]))


class ClientRole:
    """PSL's client: a bottom model; smashed data and labels up, a split-layer gradient down."""

    whole_model = False  # the client trains the whole model locally (CL, FL); no split step
    sends_smashed = True  # a server-side attacker sees smashed data (the leakage attack needs it)
    sends_labels = True  # labels go up with the smashed data (U-shaped: they stay on the client)
    receives_gradient = True  # a split-layer gradient comes back (lsl: the client steps on its own loss)
    grouped = True  # clients of a shard may run as one grouped model (nodes/grouped.py)
    # Of a client's FLOPs per sample, the share spent before its upload (the virtual clock's
    # forward): a bottom's step is its forward and its weight gradient, about equal in FLOPs.
    forward_share = 0.5
    cut_points = 1  # places the model is cut (--cut K); U-shaped methods cut twice (K1,K2)

    def build_client(self, parts: Parts) -> nn.Module:
        return parts.bottom()

    def build_server(self, parts: Parts) -> nn.Module | None:
        """The server's model (None: the server holds none)."""
        return parts.top()

    def forward(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        x: torch.Tensor,
        y: torch.Tensor,
        ctx: StepContext,
    ) -> tuple[torch.Tensor, Any]:
        """(what goes up, what the client keeps for `backward`). Runs under the run's autocast."""
        s = model(x)
        return s, s

    def backward(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, kept: Any, received: torch.Tensor | None
    ) -> None:
        """Back-propagate what the server sent into the client's model and step its optimizer."""
        optimizer.zero_grad(set_to_none=True)
        kept.backward(received)
        optimizer.step()

    def eval_pair(self, model: nn.Module, server_model: nn.Module | None) -> tuple[nn.Module, nn.Module]:
        """(first, second) with logits = second(first(x)): how a client's model is scored."""
        return model, server_model

    def smashing_model(self, model: nn.Module) -> nn.Module:
        """The part of a client's model whose output the server sees (what the leakage attack inverts)."""
        return model


class WholeModel(ClientRole):
    """CL and FL: the client holds bottom + top and trains it on its own data."""

    whole_model = True
    sends_smashed = False
    grouped = False
    forward_share = 1.0  # the local training comes before the model goes up

    def build_client(self, parts: Parts) -> nn.Module:
        return nn.Sequential(parts.bottom(), parts.top())  # the very weights split methods start from

    def build_server(self, parts: Parts) -> nn.Module | None:
        return None

    def eval_pair(self, model: nn.Module, server_model: nn.Module | None) -> tuple[nn.Module, nn.Module]:
        return model, nn.Identity()


SPLIT_BOTTOM, WHOLE_MODEL = ClientRole(), WholeModel()
