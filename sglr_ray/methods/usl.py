"""USL, U-shaped split learning (Vepakomma et al. 2018). SPEC section 2, "Methods that change
control flow".

Client i holds a head h_i (the split model's bottom) and a tail t_i (the top
model's last layer); the server holds the middle m (the rest of the top). One
step, in the engine's primitives:

1. every client uploads a_i = h_i(x_i), and no labels (`sends_labels`);
2. the server returns z_i = m(a_i) (`middle_forward`);
3. every client computes its logits t_i(z_i) and its loss with its own labels,
   steps its tail, and uploads dL_i/dz_i (`tail_step`);
4. the server back-propagates the joint loss sum_i (n_i/N) L_i through m,
   steps it, and returns G_i = dL_i/da_i, through the method's SplitRule as
   PSL's server does (`middle_backward`; with --phi, SplitAvg averages them);
5. every client back-propagates what it received into its head and steps.

Labels and logits never leave a client. The byte ledger counts both cut points
in both directions: a_i and dL_i/dz_i up, z_i and G_i down. SplitLr (--alpha)
sets the middle's learning rate. Every client's tail and the server's middle
are cut from one top model drawn from the run's seed + 1, so the clients start
equal, as in every split method here. `--cut K1,K2` says where the head ends
and where the tail starts (default: the model's cut, and its last child).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sglr_ray.methods.base import Method, RunConfig
from sglr_ray.methods.roles import ClientRole, Parts, StepContext
from sglr_ray.methods.schedules import Engine, FlopCounts, Parallel
from sglr_ray.methods.sglr import split_avg

TAIL_LAYERS = 1  # by default the model's last child (the classifier) is the tail (--cut K1,K2)


def nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class UShapedClient(ClientRole):
    """A head and a tail per client; labels stay with them."""

    sends_labels = False
    grouped = False
    cut_points = 2  # head | middle | tail

    def build_client(self, parts: Parts) -> nn.Module:
        return nn.ModuleDict({"head": parts.bottom(), "tail": parts.tail()})

    def build_server(self, parts: Parts) -> nn.Module | None:
        return parts.middle()

    def forward(self, model: nn.Module, optimizer: torch.optim.Optimizer, x, y, ctx: StepContext):
        activations = model["head"](x)
        return activations, (activations, y)  # the labels wait here for the tail step

    def backward(self, model, optimizer, kept, received) -> None:
        optimizer.zero_grad(set_to_none=True)  # the tail's gradients went with its own step
        kept[0].backward(received)
        optimizer.step()

    def eval_pair(self, model: nn.Module, server_model: nn.Module | None) -> tuple[nn.Module, nn.Module]:
        return model["head"], nn.Sequential(server_model, model["tail"])

    def smashing_model(self, model: nn.Module) -> nn.Module:
        return model["head"]


@dataclass
class TailGradients:
    """One shard's answer in step 3: dL_i/dz_i for its clients' rows, and their loss sum."""

    grad: torch.Tensor
    loss_sum: float


def head_forward(shard, epoch: int, step: int, client_ids: list[int] | None) -> object:
    return shard.forward_batch(epoch, step, client_ids)


def middle_forward(server, epoch: int, step: int, *uploads) -> tuple:
    """Step 2: z = m(a) over the concatenated uploads; (rows, then z's rows for each upload)."""
    batch = server.gather(uploads)
    server.set_epoch_lr(epoch)
    server.account_uploads(uploads)
    activations = batch.smashed.requires_grad_(True)
    with server.autocast(), server.randomness(epoch, step):
        outputs = server.tops[0](activations)
    server.scratch["usl"] = (uploads, batch, activations, outputs)
    sent = outputs.detach().cpu()
    for client_id, rows in batch.rows():
        server.ledger.bytes_down[client_id] += nbytes(sent[rows])
        server.ledger.server_sent += nbytes(sent[rows])
    per_upload, start = [], 0
    for upload in uploads:
        rows = sum(upload.sizes)
        per_upload.append(sent[start : start + rows])
        start += rows
    return (len(sent), *per_upload)


def tail_step(shard, outputs: torch.Tensor, epoch: int, step: int) -> TailGradients:
    """Step 3 on one shard: each client's tail, loss and step; dL_i/dz_i goes up. Dropout in a
    tail draws its masks seeded by (seed, client, epoch, step), as the head's forward does."""
    grads, loss_sum, start = [], 0.0, 0
    for client, (_, labels) in shard.pending:
        rows = len(labels)
        z = outputs[start : start + rows].to(shard.device).detach().requires_grad_(True)
        start += rows
        with shard.autocast(), shard.randomness(client, epoch, step):
            loss = F.cross_entropy(client.model["tail"](z), labels)
        client.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        client.optimizer.step()  # only the tail has gradients: the head waits for step 5
        grads.append(z.grad.detach().cpu())
        loss_sum += loss.item() * rows
    return TailGradients(torch.cat(grads), loss_sum)


def middle_backward(server, epoch: int, step: int, *tails: TailGradients) -> tuple:
    """Step 4: back-propagate sum_i (n_i/N) dL_i/dz_i through m, step it, deliver G_i."""
    uploads, batch, activations, outputs = server.scratch.pop("usl")
    grad = torch.cat([t.grad for t in tails]).to(server.device)
    total = len(grad)
    weights = torch.cat([torch.full((n,), n / total) for n in batch.sizes]).to(grad)
    for client_id, rows in batch.rows():
        server.ledger.bytes_up[client_id] += nbytes(grad[rows].cpu())
    server.backprop_top(0, outputs, grad * weights.view(-1, *[1] * (grad.dim() - 1)))
    grads = {
        c: activations.grad[rows] * (total / n)
        for (c, rows), n in zip(batch.rows(), batch.sizes, strict=True)
    }
    loss = sum(t.loss_sum for t in tails) / total
    return server.deliver(grads, uploads, loss, epoch, step)


def head_backward(shard, delivery, averaged) -> None:
    shard.apply_gradient(delivery, averaged)


class UShapedSchedule(Parallel):
    """Two round trips a step, every client in parallel (steps 1-5 above); every client takes part."""

    groupable = False
    absences = frozenset()

    def train_epoch(self, engine: Engine, epoch: int) -> float:
        loss_sum, samples = 0.0, 0
        for step in range(engine.config.steps_per_epoch):
            uploads = engine.on_clients(head_forward, epoch, step)
            _, *outputs = engine.on_server(
                middle_forward, epoch, step, *uploads, num_returns=len(uploads) + 1
            )
            tails = engine.on_shards(tail_step, [(z, epoch, step) for z in outputs])
            metrics, averaged, *deliveries = engine.on_server(
                middle_backward, epoch, step, *tails, num_returns=len(tails) + 2
            )
            engine.get(engine.on_shards(head_backward, [(d, averaged) for d in deliveries]))
            metrics = engine.get(metrics)
            loss_sum, samples = loss_sum + metrics.loss * metrics.samples, samples + metrics.samples
            engine.progress(epoch, step + 1, loss_sum / samples)
        return loss_sum / samples

    def epoch_flops(self, config: RunConfig, flops: FlopCounts) -> tuple[int, int]:
        """Client: the head's step and the tail's (with dL/dz); server: the middle's (with dL/da)."""
        parts, b = flops.parts, config.batch_size
        middle, tail = parts.middle(), parts.tail()
        with torch.no_grad():
            middle_out = tuple(middle.eval()(torch.zeros(2, *parts.smashed_shape)).shape[1:])
        client = flops.bottom(b) + flops.step(tail, middle_out, b, input_grad=True)
        server = flops.step(middle.train(), parts.smashed_shape, b * config.clients, input_grad=True)
        return config.steps_per_epoch * client, config.steps_per_epoch * server


usl = Method(
    "usl", "U-shaped split learning: clients hold the head and the tail (labels never leave them), "
    "the server the middle", defaults={"alpha": 0.0, "phi": 0.0}, rule=split_avg,
    schedule=UShapedSchedule(), client=UShapedClient(),
)  # fmt: skip
