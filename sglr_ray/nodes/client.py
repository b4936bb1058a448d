"""ClientShard: one or more clients, each with its own model, optimizer and data.

Plain torch, no Ray: the Ray executor wraps a shard in a thin actor, the local
executor calls it directly. For the split methods (and SSL) a client holds a
bottom model and a step is two calls: `forward_batch` (returns the smashed
data to upload) and `apply_gradient` (back-propagates what the server sent and
steps each client's optimizer); the driver joins a step's `apply_gradient` and
the next step's `forward_batch` into one `apply_then_forward` call. For the
baselines CL and FL a client holds the whole model and `train_local` trains it
on the client's own data.

FedAvg rounds start from the global model, so an FL shard holds ONE working
model: `train_local` trains its clients one after another, each from the global
weights, and keeps only the data-weighted sum of the results for
`upload_models` (memory O(shards x model), not O(clients x model)). SFL's
clients step in parallel through the server and need their own bottoms during
an epoch; what they share is the checkpoint: after a round every client holds
the global model, stored once. With --client-optimizer-state reset (the default
for methods that average client models) each client's optimizer starts afresh
every round and no optimizer state is kept or checkpointed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from sglr_ray.data import ImageSet, PreparedData, eval_slice
from sglr_ray.methods.aggregate import weighted_state_sum
from sglr_ray.methods.roles import StepContext
from sglr_ray.nodes.batches import BatchDrawer
from sglr_ray.nodes.codec import parse_codec
from sglr_ray.nodes.grouped import GroupedBottoms, groupable
from sglr_ray.nodes.models import has_randomness, state_nbytes, step_randomness, weights_copy
from sglr_ray.nodes.optim import (
    LrSchedule,
    autocast,
    classification_loss,
    make_optimizer,
    optimizer_state_copy,
    set_lr,
)
from sglr_ray.nodes.protocol import GradientDelivery, ModelUpload, SmashedBatch
from sglr_ray.nodes.scoring import count_correct
from sglr_ray.nodes.specs import NodeSettings


@dataclass
class Client:
    client_id: int
    model: nn.Module  # the bottom model; the whole model for cl; fl: the shard's one working model
    optimizer: torch.optim.Optimizer
    data: ImageSet


def client_partitions(config: NodeSettings, data: PreparedData) -> list[ImageSet]:
    """The partitions the executors give out, one per training client.

    CL trains one model on the union of every client's partition: one
    "client" (the data centre) holding all of it.
    """
    return config.spec.schedule.partitions(list(data.partitions))


class ClientShard:
    """The clients `client_ids`, with their partitions; `val`/`test` are shared evaluation sets."""

    def __init__(
        self,
        config: NodeSettings,
        client_ids: list[int],
        partitions: list[ImageSet],
        val: ImageSet,
        test: ImageSet,
        device: str = "cpu",
        group: bool = True,
    ) -> None:
        """`group`: run the clients as one grouped model where the method allows it (see
        `_make_group`); False keeps the per-client loop everywhere (tests compare the two)."""
        if len(client_ids) != len(partitions):
            raise ValueError(f"{len(client_ids)} client ids but {len(partitions)} partitions")
        self.config = config
        self.device = torch.device(device)
        self.role = config.spec.client  # what a client holds and does (methods/roles.py)
        self._parts = config.model_parts
        # FL: the clients share one working model, trained in turn from the global weights.
        self._one_model = self.role.whole_model and config.spec.averages_clients
        self._resets = config.resets_client_optimizers  # --client-optimizer-state
        self._fresh_in: dict[int, int] = {}  # client_id -> the epoch its optimizer was last reset in
        self.clients: list[Client] = []
        for client_id, data in zip(client_ids, partitions, strict=True):
            # Arrays from Ray's object store are read-only, hence the copy.
            self.clients.append(self._new_client(client_id, data.writable_copy()))
        # FL: the weights every client starts the round from, and the round's running
        # FedAvg sum (sum_i n_i * state_i in float64, sum_i n_i) for upload_models.
        first = self.clients[0].model.state_dict()
        self._global = {k: v.detach().clone() for k, v in first.items()} if self._one_model else None
        self._round: tuple[dict[str, torch.Tensor], float] | None = None
        self.eval_sets = {"val": val.writable_copy(), "test": test.writable_copy()}
        eval_top = self.role.build_server(self._parts)  # the server's weights are loaded into it
        self._eval_top = None if eval_top is None else eval_top.to(self.device)
        # forwarded, awaiting gradients: (client, smashed) pairs, or the grouped smashed data
        self._pending: list[tuple[Client, torch.Tensor]] | torch.Tensor | None = None
        self._batches = BatchDrawer(config, self.device)
        self._schedule = LrSchedule.parse(config.lr_schedule)
        self._smashed_shape = self._parts.smashed_shape
        self._codec = parse_codec(config.compress)  # what the server decodes of each upload
        self._grouped = self._make_group() if group else None
        self._draws = has_randomness(self.clients[0].model)  # dropout: masks seeded per step

    def _make_group(self) -> GroupedBottoms | None:
        """The clients as one grouped model (nodes/grouped.py), where every step has every client
        of the shard take part with a batch of b: PSL's parallel schedule without a batch plan.
        Their partitions are stacked, (K, n, ...), so a step draws every client's batch at once;
        each client's `data` becomes a view of its part."""
        spec = self.config.spec
        sizes = {len(c.data) for c in self.clients}
        if (
            not spec.schedule.groupable or not self.role.grouped or spec.batch_plan is not None
            or self.config.deadline_s > 0  # a late client must skip its step: the per-client loop
            or len(self.clients) < 2 or len(sizes) != 1 or not groupable(self.clients[0].model)
        ):  # fmt: skip
            return None
        images = np.stack([c.data.images for c in self.clients])
        labels = np.stack([c.data.labels for c in self.clients])
        for k, client in enumerate(self.clients):
            client.data = ImageSet(images[k], labels[k], client.data.codec)
        self._stacked = (images, labels)
        return GroupedBottoms(
            [c.model for c in self.clients], [c.optimizer for c in self.clients],
            self.config.optimizer, self.config.lr,
        )  # fmt: skip

    def _new_client(self, client_id: int, data: ImageSet) -> Client:
        """A client with its starting model and optimizer.

        Every client starts from the same weights, as if the server had handed out
        one initial model. FL's clients share the shard's working model; under
        reset they share its optimizer too, else each has its own over those weights.
        """
        config = self.config
        if self._one_model and self.clients:
            model = self.clients[0].model
            if self._resets:
                return Client(client_id, model, self.clients[0].optimizer, data)
        else:
            model = self.role.build_client(self._parts).to(self.device)
        return Client(client_id, model, make_optimizer(model.parameters(), config.optimizer, config.lr), data)

    def _autocast(self):
        return autocast(self.config.precision, self.device)

    def _set_epoch_lr(self, clients: list[Client], epoch: int) -> None:
        lr = self.config.lr * self._schedule.multiplier(epoch, self.config.epochs)
        for client in clients:
            self._reset_optimizer(client, epoch)
            set_lr(client.optimizer, lr)

    def _reset_optimizer(self, client: Client, epoch: int) -> None:
        """--client-optimizer-state reset: a client's first step of a round (an epoch) starts
        from a fresh optimizer, as FedAvg and Flower do; keep leaves the state alone."""
        if self._resets and self._fresh_in.get(client.client_id) != epoch:
            client.optimizer.state.clear()  # Adam and SGD build their state afresh from empty
            self._fresh_in[client.client_id] = epoch

    @property
    def client_ids(self) -> list[int]:
        return [c.client_id for c in self.clients]

    def _select(self, client_ids: list[int] | None) -> list[Client]:
        if client_ids is None:
            return self.clients
        wanted = set(client_ids)
        chosen = [c for c in self.clients if c.client_id in wanted]
        if len(chosen) != len(client_ids):
            raise ValueError(f"clients {client_ids} are not all in this shard ({self.client_ids})")
        return chosen

    @property
    def pending(self) -> list[tuple[Client, Any]]:
        """What each client kept of the last forward_batch (its role's `kept`), in upload order:
        a method's own step function reads it between forward and apply (methods/usl.py)."""
        if not isinstance(self._pending, list):
            raise RuntimeError("no per-client forward is pending")
        return self._pending

    def autocast(self) -> Any:
        """The run's autocast context (--precision)."""
        return self._autocast()

    def _randomness(self, client: Client, epoch: int, step: int) -> Any:
        """A client's random draws in a step (dropout) seeded by (seed, client, epoch, step)."""
        return step_randomness(self._draws, self.device, self.config.seed, client.client_id, epoch, step)

    def _batch(self, client: Client, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A client's inputs and labels for (epoch, step) (nodes/batches.py)."""
        return self._batches.batch(client.client_id, client.data, epoch, step)

    def forward_batch(self, epoch: int, step: int, client_ids: list[int] | None = None) -> SmashedBatch:
        """Each client (all, or those named: SSL's turn) draws its batch and computes smashed data s_i."""
        if self.role.whole_model:
            raise RuntimeError(f"--method {self.config.method} has no split layer to forward to")
        if self._grouped is not None:
            if client_ids is None:
                return self._forward_grouped(epoch, step)
            self._grouped.release()  # some clients only: the loop from here on
            self._grouped = None
        smashed, labels, sizes = [], [], []
        self._pending = []
        chosen = self._select(client_ids)
        self._set_epoch_lr(chosen, epoch)  # the step in apply_gradient uses it
        for client in chosen:
            x, y = self._batch(client, epoch, step)
            if len(y) == 0:  # a batch plan gave this client nothing this step
                continue
            with self._autocast(), self._randomness(client, epoch, step):
                ctx = StepContext(self.config.seed, client.client_id, epoch, step)
                upload, kept = self.role.forward(client.model, client.optimizer, x, y.to(self.device), ctx)
            self._pending.append((client, kept))  # keeps the graph for apply_gradient
            smashed.append(self._codec.roundtrip(upload.detach().cpu()))
            labels.append(y if self.role.sends_labels else y[:0])  # U-shaped: labels stay here
            sizes.append(len(y))
        ids = [client.client_id for client, _ in self._pending]
        if not ids:
            return SmashedBatch(
                [], [], torch.empty(0, *self._smashed_shape), torch.empty(0, dtype=torch.int64)
            )
        return SmashedBatch(ids, sizes, torch.cat(smashed), torch.cat(labels))

    def _forward_grouped(self, epoch: int, step: int) -> SmashedBatch:
        """forward_batch for every client at once through the grouped model: the same batches
        and the same smashed data as the per-client loop."""
        self._set_epoch_lr(self.clients, epoch)  # may reset the clients' optimizers: before the check
        models, optimizers = [c.model for c in self.clients], [c.optimizer for c in self.clients]
        if not self._grouped.in_sync(models, optimizers):  # a reset, or a client model replaced
            self._grouped.gather(models, optimizers)
        set_lr(self._grouped.optimizer, self.clients[0].optimizer.param_groups[0]["lr"])
        x, y = self._batches.stacked_batch(
            self.client_ids, *self._stacked, epoch, step, self.clients[0].data.codec
        )
        with self._autocast():
            s = self._grouped.forward(x)
        self._pending = s  # keeps the graph for apply_gradient
        batch = self.config.batch_size
        sent = self._codec.roundtrip(s.detach().cpu())
        return SmashedBatch(self.client_ids, [batch] * len(self.clients), sent, y)

    def apply_gradient(self, delivery: GradientDelivery, averaged_gradient: torch.Tensor | None) -> None:
        """Back-propagate each client's split-layer gradient (own or averaged) and step its optimizer."""
        if self._pending is None:
            raise RuntimeError("apply_gradient called without a forward_batch before it")
        averaged = set(delivery.averaged)
        if isinstance(self._pending, torch.Tensor):  # the grouped forward: one backward, one step
            grads = [
                averaged_gradient if c.client_id in averaged else delivery.own[c.client_id]
                for c in self.clients
            ]
            self._grouped.step(self._pending, torch.cat(grads).to(self.device))
            self._pending = None
            return
        for client, kept in self._pending:
            if client.client_id in delivery.late:  # past the deadline: the step went on without it
                continue
            grad = averaged_gradient if client.client_id in averaged else delivery.own.get(client.client_id)
            received = None if grad is None else grad.to(self.device)  # None: nothing comes down (lsl)
            self.role.backward(client.model, client.optimizer, kept, received)
        self._pending = None

    def apply_then_forward(
        self,
        delivery: GradientDelivery,
        averaged_gradient: torch.Tensor | None,
        epoch: int,
        next_step: int,
        client_ids: list[int] | None = None,
    ) -> SmashedBatch:
        """`apply_gradient`, then the next step's `forward_batch`: one call instead of two, so a
        step of the driver's loop chains two actor calls (shard -> server -> shard), not three."""
        self.apply_gradient(delivery, averaged_gradient)
        return self.forward_batch(epoch, next_step, client_ids)

    # --- CL and FL: whole models trained on local data ------------------------------

    def train_local(
        self, epoch: int, passes: int = 1, client_ids: list[int] | None = None
    ) -> tuple[float, int]:
        """Every client (or those named: the round's) trains its whole model on its own data:
        `passes` passes of batch b.

        Returns (sum of per-sample losses, samples) for the epoch's mean training loss.
        """
        if not self.role.whole_model:
            raise RuntimeError(f"--method {self.config.method} trains through the server, not locally")
        loss_sum, samples = 0.0, 0
        self._round = None
        for client in self._select(client_ids):
            if self._one_model:  # FedAvg: every client starts the round from the global model
                client.model.load_state_dict(self._global)
            self._set_epoch_lr([client], epoch)
            steps = len(client.data) // self.config.batch_size
            for local_epoch in range(epoch * passes, (epoch + 1) * passes):
                for step in range(steps):
                    x, y = self._batch(client, local_epoch, step)
                    with self._autocast(), self._randomness(client, local_epoch, step):
                        loss = classification_loss(client.model(x), y.to(self.device), self.config.loss)
                    client.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    client.optimizer.step()
                    loss_sum, samples = loss_sum + loss.item() * len(y), samples + len(y)
            if self._one_model:
                self._add_to_round(client)
        return loss_sum, samples

    def _add_to_round(self, client: Client) -> None:
        """Add n_i * state_i of the client just trained to the round's FedAvg sum, in float64
        and in client order, so the sum is `weighted_state_sum` over the shard's clients."""
        weight, state = float(len(client.data)), client.model.state_dict()
        if self._round is None:
            self._round = (weighted_state_sum([state], [weight]), weight)
            return
        total, total_weight = self._round
        for key, value in state.items():
            if value.is_floating_point():
                total[key] += weight * value.detach().double()
        self._round = (total, total_weight + weight)

    # --- weights: FedAvg (SFL, FL), SSL's hand-over, the leakage attack ----------------

    def upload_models(self, client_ids: list[int] | None = None) -> ModelUpload:
        """This shard's part of FedAvg: model states weighted by partition size, summed, over its
        clients (or those named: the round's; FL sums the clients it trained as it goes)."""
        if self._one_model:  # summed as train_local went
            if self._round is None:
                raise RuntimeError("upload_models called before train_local in this round")
            total, weight = self._round
            nbytes = state_nbytes(self.clients[0].model)
            ids = self.client_ids if client_ids is None else client_ids
            return ModelUpload(ids, {k: v.cpu() for k, v in total.items()}, weight, nbytes)
        chosen = self._select(client_ids)
        states = [{k: v.detach().cpu() for k, v in c.model.state_dict().items()} for c in chosen]
        weights = [float(len(c.data)) for c in chosen]
        return ModelUpload(
            client_ids=[c.client_id for c in chosen],
            weighted_state_sum=weighted_state_sum(states, weights),
            total_weight=sum(weights),
            state_nbytes=state_nbytes(self.clients[0].model),
        )

    def model_state(self, client_id: int) -> dict[str, torch.Tensor]:
        """One client's model weights (SSL hands them on; the leakage attack freezes them)."""
        (client,) = self._select([client_id])
        return weights_copy(client.model)

    def load_model_state(self, state: dict[str, torch.Tensor], client_ids: list[int] | None = None) -> None:
        """Load `state` into every client of the shard, or only those named.

        FL: `state` becomes the global model the next round starts from (all clients).
        Under reset a loaded client's optimizer state goes now (FedAvg's mean, SSL's
        hand-over: a new round for it), not at its next step: it is not kept between epochs.
        """
        chosen = self.clients[:1] if self._one_model else self._select(client_ids)
        if self._one_model:
            self._global, self._round = {k: v.to(self.device) for k, v in state.items()}, None
        for client in chosen:  # FL: the working model, which evaluation scores
            client.model.load_state_dict(state)
            if self._resets:
                client.optimizer.state.clear()

    # --- checkpoints -------------------------------------------------------------------

    def state(self) -> dict:
        """What a checkpoint holds of this shard, copied, taken between epochs:
        {"model": the global model or None, "clients": {client_id: {"model"?, "optimizer"?}}}.

        Where clients' models are averaged (FL, SFL, SFLv1) every client holds the
        global model after a round: stored once, under "model", and in no client's
        entry. A client's optimizer state is stored only where it outlives the
        round (--client-optimizer-state keep).
        """
        shared = self.config.spec.averages_clients
        clients: dict[int, dict] = {}
        for c in self.clients:
            saved = {} if shared else {"model": weights_copy(c.model)}
            if not self._resets:
                saved["optimizer"] = optimizer_state_copy(c.optimizer)
            clients[c.client_id] = saved
        return {"model": weights_copy(self.clients[0].model) if shared else None, "clients": clients}

    def load_state(self, state: dict) -> None:
        """Return every client to a checkpointed state (see `state`); a half-done step is forgotten."""
        if self._one_model:
            self.load_model_state(state["model"])
        for client in self.clients:
            saved = state["clients"][client.client_id]
            if not self._one_model:
                client.model.load_state_dict(saved.get("model", state["model"]))
            if "optimizer" in saved and not self._resets:
                client.optimizer.load_state_dict(saved["optimizer"])
            else:  # a fresh optimizer, as at the start of a round
                client.optimizer.state.clear()
        if self._grouped is not None:  # the group takes the loaded weights and optimizer state
            self._grouped.gather([c.model for c in self.clients], [c.optimizer for c in self.clients])
        self._fresh_in.clear()
        self._pending = None

    # --- evaluation ---------------------------------------------------------------------

    def evaluate(
        self,
        top_state: dict[str, torch.Tensor] | None,
        split: str,
        client_ids: list[int] | None = None,
        whole: bool = False,
    ) -> dict[int, tuple[int, int]]:
        """(correct, scored) per client: its bottom model paired with the server's top model
        (or its whole model, for cl and fl, where `top_state` is None).

        Each client scores its own slice of the evaluation subset (`data.eval_slice`),
        or the whole subset with `whole` (--eval-mode every, and the baselines' one model).
        The server's weights come to the shard (a measurement shortcut of the
        simulator, not part of the protocol): evaluation images never leave it.
        """
        images, labels = self.eval_sets[split], torch.from_numpy(self.eval_sets[split].labels)
        server_model = self._eval_top
        if server_model is not None:
            server_model.load_state_dict(top_state)
        scores = {}
        for client in self._select(client_ids):
            part = slice(None) if whole else eval_slice(len(labels), self.config.clients, client.client_id)
            x, y = images.subset(part), labels[part]
            first, second = self.role.eval_pair(client.model, server_model)
            correct = count_correct(first, second, x, y, self.device, self._autocast)
            scores[client.client_id] = (correct, len(y))
        return scores
