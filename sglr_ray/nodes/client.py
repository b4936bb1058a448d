"""ClientShard: one or more clients, each with its own model, optimizer and data.

Plain torch, no Ray: the Ray executor wraps a shard in a thin actor, the local
executor calls it directly. For the split methods (and SSL) a client holds a
bottom model and a step is two calls: `forward_batch` (returns the smashed
data to upload) and `apply_gradient` (back-propagates what the server sent and
steps each client's optimizer). For the baselines CL and FL a client holds the
whole model and `train_local` trains it on the client's own data.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sglr_ray.config import RunConfig
from sglr_ray.data import ImageSet, PreparedData, epoch_order, eval_slice, to_model_input
from sglr_ray.methods.aggregate import weighted_state_sum
from sglr_ray.nodes.models import SPLIT_MODELS, build_client_model, smashed_shape, state_nbytes, weights_copy
from sglr_ray.nodes.optim import LrSchedule, autocast, make_optimizer, set_lr
from sglr_ray.nodes.protocol import GradientDelivery, ModelUpload, SmashedBatch

EVAL_BATCH = 1000


@dataclass
class Client:
    client_id: int
    model: nn.Module  # the bottom model; the whole model for cl and fl
    optimizer: torch.optim.Optimizer
    data: ImageSet


def client_partitions(config: RunConfig, data: PreparedData) -> list[ImageSet]:
    """The partitions the executors give out, one per training client.

    CL trains one model on the union of every client's partition: one
    "client" (the data centre) holding all of it.
    """
    if config.spec.pooled_data:
        return [ImageSet.union(data.partitions)]
    return list(data.partitions)


class ClientShard:
    """The clients `client_ids`, with their partitions; `val`/`test` are shared evaluation sets."""

    def __init__(
        self,
        config: RunConfig,
        client_ids: list[int],
        partitions: list[ImageSet],
        val: ImageSet,
        test: ImageSet,
        device: str = "cpu",
    ) -> None:
        if len(client_ids) != len(partitions):
            raise ValueError(f"{len(client_ids)} client ids but {len(partitions)} partitions")
        self.config = config
        self.device = torch.device(device)
        self.full_model = config.spec.full_model
        self.clients: list[Client] = []
        for client_id, data in zip(client_ids, partitions, strict=True):
            data = data.writable_copy()  # arrays from Ray's object store are read-only
            # Every client starts from the same weights, as if the server had
            # handed out one initial model.
            model = build_client_model(config.model, config.seed, self.full_model).to(self.device)
            optimizer = make_optimizer(model.parameters(), config.optimizer, config.lr)
            self.clients.append(Client(client_id, model, optimizer, data))
        self.eval_sets = {"val": val.writable_copy(), "test": test.writable_copy()}
        self._eval_top = SPLIT_MODELS[config.model].build_top().to(self.device)
        self._pending: list[tuple[Client, torch.Tensor]] | None = None  # forwarded, awaiting gradients
        self._orders: dict[int, tuple[int, torch.Tensor]] = {}  # client_id -> (epoch, its order)
        self._schedule = LrSchedule.parse(config.lr_schedule)
        self._plan: tuple[int, torch.Tensor, torch.Tensor] | None = None  # (epoch, counts, starts)
        self._smashed_shape = smashed_shape(config.model)

    def _autocast(self):
        return autocast(self.config.precision, self.device)

    def _set_epoch_lr(self, clients: list[Client], epoch: int) -> None:
        lr = self.config.lr * self._schedule.multiplier(epoch, self.config.epochs)
        for client in clients:
            set_lr(client.optimizer, lr)

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

    def _batch(self, client: Client, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A client's inputs and labels for (epoch, step): a pure function of the seed and ids.

        A client walks through its epoch order without replacement: b samples a step,
        or, under a batch plan (GPSL), as many as the plan gives it.
        """
        cached = self._orders.get(client.client_id)
        if cached is None or cached[0] != epoch:
            cached = (epoch, epoch_order(self.config.seed, client.client_id, epoch, len(client.data)))
            self._orders[client.client_id] = cached
        start, count = self._rows(client.client_id, epoch, step)
        index = cached[1][start : start + count].numpy()
        x = to_model_input(client.data.images[index]).to(self.device)
        return x, torch.from_numpy(client.data.labels[index])

    def _rows(self, client_id: int, epoch: int, step: int) -> tuple[int, int]:
        """(first position in the epoch order, count) of a client's batch at `step`."""
        if self.config.spec.batch_plan is None:
            return step * self.config.batch_size, self.config.batch_size
        if self._plan is None or self._plan[0] != epoch:
            plan = torch.tensor(self.config.spec.batch_plan(self.config, epoch), dtype=torch.int64)
            starts = torch.cumsum(plan, dim=0) - plan  # per step, per client: samples used before it
            self._plan = (epoch, plan, starts)
        _, plan, starts = self._plan
        return int(starts[step, client_id]), int(plan[step, client_id])

    def forward_batch(self, epoch: int, step: int, client_ids: list[int] | None = None) -> SmashedBatch:
        """Each client (all, or those named: SSL's turn) draws its batch and computes smashed data s_i."""
        if self.full_model:
            raise RuntimeError(f"--method {self.config.method} has no split layer to forward to")
        smashed, labels, sizes = [], [], []
        self._pending = []
        chosen = self._select(client_ids)
        self._set_epoch_lr(chosen, epoch)  # the step in apply_gradient uses it
        for client in chosen:
            x, y = self._batch(client, epoch, step)
            if len(y) == 0:  # a batch plan gave this client nothing this step
                continue
            with self._autocast():
                s = client.model(x)
            self._pending.append((client, s))  # keeps the graph for apply_gradient
            smashed.append(s.detach().cpu())
            labels.append(y)
            sizes.append(len(y))
        ids = [client.client_id for client, _ in self._pending]
        if not ids:
            return SmashedBatch(
                [], [], torch.empty(0, *self._smashed_shape), torch.empty(0, dtype=torch.int64)
            )
        return SmashedBatch(ids, sizes, torch.cat(smashed), torch.cat(labels))

    def apply_gradient(self, delivery: GradientDelivery, averaged_gradient: torch.Tensor | None) -> None:
        """Back-propagate each client's split-layer gradient (own or averaged) and step its optimizer."""
        if self._pending is None:
            raise RuntimeError("apply_gradient called without a forward_batch before it")
        averaged = set(delivery.averaged)
        for client, s in self._pending:
            grad = averaged_gradient if client.client_id in averaged else delivery.own[client.client_id]
            client.optimizer.zero_grad(set_to_none=True)
            s.backward(grad.to(self.device))
            client.optimizer.step()
        self._pending = None

    # --- CL and FL: whole models trained on local data ------------------------------

    def train_local(self, epoch: int) -> tuple[float, int]:
        """Every client trains its whole model on its own data: `local_epochs` passes of batch b.

        Returns (sum of per-sample losses, samples) for the epoch's mean training loss.
        """
        if not self.full_model:
            raise RuntimeError(f"--method {self.config.method} trains through the server, not locally")
        passes, loss_sum, samples = self.config.local_epochs, 0.0, 0
        self._set_epoch_lr(self.clients, epoch)
        for client in self.clients:
            steps = len(client.data) // self.config.batch_size
            for local_epoch in range(epoch * passes, (epoch + 1) * passes):
                for step in range(steps):
                    x, y = self._batch(client, local_epoch, step)
                    with self._autocast():
                        loss = F.cross_entropy(client.model(x), y.to(self.device))
                    client.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    client.optimizer.step()
                    loss_sum, samples = loss_sum + loss.item() * len(y), samples + len(y)
        return loss_sum, samples

    # --- weights: FedAvg (SFL, FL), SSL's hand-over, the leakage attack ----------------

    def upload_models(self) -> ModelUpload:
        """This shard's part of FedAvg: model states weighted by partition size, summed."""
        states = [{k: v.detach().cpu() for k, v in c.model.state_dict().items()} for c in self.clients]
        weights = [float(len(c.data)) for c in self.clients]
        return ModelUpload(
            client_ids=self.client_ids,
            weighted_state_sum=weighted_state_sum(states, weights),
            total_weight=sum(weights),
            state_nbytes=state_nbytes(self.clients[0].model),
        )

    def model_state(self, client_id: int) -> dict[str, torch.Tensor]:
        """One client's model weights (SSL hands them on; the leakage attack freezes them)."""
        (client,) = self._select([client_id])
        return weights_copy(client.model)

    def load_model_state(self, state: dict[str, torch.Tensor], client_ids: list[int] | None = None) -> None:
        """Load `state` into every client of the shard, or only those named."""
        for client in self._select(client_ids):
            client.model.load_state_dict(state)

    # --- checkpoints -------------------------------------------------------------------

    def state(self) -> dict[int, dict]:
        """Every client's model and optimizer state, copied: what a checkpoint holds."""
        return {
            c.client_id: {
                "model": weights_copy(c.model),
                "optimizer": copy.deepcopy(c.optimizer.state_dict()),
            }
            for c in self.clients
        }

    def load_state(self, states: dict[int, dict]) -> None:
        """Return every client to a checkpointed state; a half-done step is forgotten."""
        for client in self.clients:
            client.model.load_state_dict(states[client.client_id]["model"])
            client.optimizer.load_state_dict(states[client.client_id]["optimizer"])
        self._pending = None

    # --- evaluation ---------------------------------------------------------------------

    @torch.no_grad()
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
        images, labels = self.eval_sets[split].images, torch.from_numpy(self.eval_sets[split].labels)
        top = nn.Identity()
        if not self.full_model:
            top = self._eval_top
            top.load_state_dict(top_state)
            top.eval()
        scores = {}
        for client in self._select(client_ids):
            part = slice(None) if whole else eval_slice(len(labels), self.config.clients, client.client_id)
            x_all, y_all = images[part], labels[part]
            client.model.eval()
            correct = 0
            for start in range(0, len(y_all), EVAL_BATCH):
                x = to_model_input(x_all[start : start + EVAL_BATCH]).to(self.device)
                with self._autocast():
                    logits = top(client.model(x))
                correct += int((logits.argmax(1).cpu() == y_all[start : start + EVAL_BATCH]).sum())
            client.model.train()
            scores[client.client_id] = (correct, len(y_all))
        return scores
