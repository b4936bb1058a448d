"""LSL, split learning with local losses (Han et al. 2021, "Accelerating Federated Learning with
Split Learning on Locally Generated Losses"). SPEC section 2.

Each client trains its bottom model with a small auxiliary head on its own
loss, one step per batch, and uploads the smashed data (computed before that
step) with its labels; the server trains the top model on the concatenated
uploads with its own loss, as PSL's server does, and sends nothing back. The
client never waits for the server, and the downlink carries no split-layer
gradients: the byte ledger's bytes_down is zero.

The auxiliary head pools the smashed data to 2x2 per channel and maps it to
the classes with one linear layer (the paper's heads are a pooling and a
fully connected layer), drawn from the run's seed + 2. SplitLr (--alpha)
applies to the server; with no gradients going down there is nothing to
average, so phi is fixed at 0. Evaluation scores bottom + server top, as PSL.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sglr_ray.methods.base import Method, RunConfig, ServerBatch, TopModels
from sglr_ray.methods.roles import ClientRole, Parts, StepContext
from sglr_ray.methods.schedules import FlopCounts, Parallel

AUX_SALT = 2  # the auxiliary head's seed is the run's + 2 (bottom: + 0, top: + 1)


def auxiliary_head(smashed_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Pool each channel to 2x2 (image-like smashed data), flatten, one linear layer."""
    if len(smashed_shape) == 3:
        channels = smashed_shape[0]
        return nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(channels * 4, num_classes))
    return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(smashed_shape).prod()), num_classes))


class LocalLossClient(ClientRole):
    """A bottom model and its auxiliary head; one local step per batch, before the upload."""

    grouped = False
    receives_gradient = False  # the server sends nothing down (top_only_step)
    forward_share = 1.0  # the whole local step comes before the upload; nothing after it

    def build_client(self, parts: Parts) -> nn.Module:
        def head() -> nn.Module:
            # Drawn after a bottom's worth of draws from seed + 2: the smashed shape used to be
            # measured on a bottom built there, and recorded runs keep their numbers.
            parts.draw_bottom()
            return auxiliary_head(parts.smashed_shape, parts.num_classes)

        return nn.ModuleDict({"bottom": parts.bottom(), "aux": parts.seeded(head, AUX_SALT)})

    def forward(self, model: nn.Module, optimizer: torch.optim.Optimizer, x, y, ctx: StepContext):
        smashed = model["bottom"](x)
        loss = F.cross_entropy(model["aux"](smashed), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return smashed.detach(), None

    def backward(self, model, optimizer, kept, received) -> None:
        """Nothing comes down: the client has already stepped."""

    def eval_pair(self, model: nn.Module, server_model: nn.Module | None) -> tuple[nn.Module, nn.Module]:
        return model["bottom"], server_model

    def smashing_model(self, model: nn.Module) -> nn.Module:
        return model["bottom"]


def top_only_step(server: TopModels, batch: ServerBatch, epoch: int, step: int) -> tuple[float, dict]:
    """The server's step on the uploads (one loss over the concatenated batch), and no gradients."""
    loss = server.train_top(0, batch.smashed, batch.labels)
    return loss.item(), {}


class LocalLossSchedule(Parallel):
    """PSL's loop (the engine's split steps); only the FLOPs differ: the auxiliary head's on the
    clients, and no input gradient on the server."""

    def epoch_flops(self, config: RunConfig, flops: FlopCounts) -> tuple[int, int]:
        steps, b, smashed = config.steps_per_epoch, config.batch_size, flops.parts.smashed_shape
        aux = auxiliary_head(smashed, flops.parts.num_classes)
        client = flops.bottom(b) + flops.step(aux, smashed, b, input_grad=True)
        server = flops.step(flops.parts.top(), smashed, b * config.clients, input_grad=False)
        return steps * client, steps * server


lsl = Method(
    "lsl", "split learning with local losses: clients step on an auxiliary head, the server sends "
    "nothing back", fixed={"phi": 0.0}, defaults={"alpha": 0.0},
    schedule=LocalLossSchedule(), client=LocalLossClient(), server_step=top_only_step,
)  # fmt: skip
