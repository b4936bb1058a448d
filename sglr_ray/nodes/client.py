"""ClientShard: one or more clients, each with its own model, optimizer and data: what every
shard does (models, optimizers and learning rates, batches, weights for FedAvg and hand-overs,
checkpoints, evaluation).

Plain torch, no Ray: the Ray executor wraps a shard in a thin actor, the local
executor calls it directly. Two kinds build on this base (`make_shard` picks by
the method's client role): a split-learning shard (nodes/split_shard.py), whose
clients step through the server, and a local-training shard
(nodes/local_shard.py), whose clients train whole models on their own data.
SFL's clients need their own bottoms during an epoch; what averaged clients
share is the checkpoint: after a round every client holds the global model,
stored once. With --client-optimizer-state reset (the default for methods that
average client models) each client's optimizer starts afresh every round and
no optimizer state is kept or checkpointed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sglr_ray.data import ImageSet, PreparedData, eval_slice
from sglr_ray.methods.aggregate import weighted_state_sum
from sglr_ray.nodes.batches import BatchDrawer
from sglr_ray.nodes.models import has_randomness, state_nbytes, step_randomness, weights_copy
from sglr_ray.nodes.optim import (
    LrSchedule,
    autocast,
    make_optimizer,
    optimizer_state_copy,
    set_lr,
)
from sglr_ray.nodes.protocol import ModelUpload
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

    _one_model = False  # FL's local shard: the clients share one working model (local_shard.py)

    def __init__(
        self,
        config: NodeSettings,
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
        self.role = config.spec.client  # what a client holds and does (methods/roles.py)
        self._parts = config.model_parts
        self._resets = config.resets_client_optimizers  # --client-optimizer-state
        self._fresh_in: dict[int, int] = {}  # client_id -> the epoch its optimizer was last reset in
        self.clients: list[Client] = []
        for client_id, data in zip(client_ids, partitions, strict=True):
            # Arrays from Ray's object store are read-only, hence the copy.
            self.clients.append(self._new_client(client_id, data.writable_copy()))
        self.eval_sets = {"val": val.writable_copy(), "test": test.writable_copy()}
        eval_top = self.role.build_server(self._parts)  # the server's weights are loaded into it
        self._eval_top = None if eval_top is None else eval_top.to(self.device)
        self._batches = BatchDrawer(config, self.device)
        self._schedule = LrSchedule.parse(config.lr_schedule)
        self._draws = has_randomness(self.clients[0].model)  # dropout: masks seeded per step
        self._clients_built()

    def _clients_built(self) -> None:
        """What a kind of shard sets up once its clients exist (local_shard.py: FL's round)."""

    def _new_client(self, client_id: int, data: ImageSet) -> Client:
        """A client with its starting model and optimizer. Every client starts from the same
        weights, as if the server had handed out one initial model."""
        model = self.role.build_client(self._parts).to(self.device)
        optimizer = make_optimizer(model.parameters(), self.config.optimizer, self.config.lr)
        return Client(client_id, model, optimizer, data)

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

    def autocast(self) -> Any:
        """The run's autocast context (--precision)."""
        return self._autocast()

    def randomness(self, client: Client, epoch: int, step: int) -> Any:
        """A client's random draws (dropout masks) in a step of a method's own (methods/usl.py's
        tail step), seeded as its forward's are: the same on both executors."""
        return self._randomness(client, epoch, step)

    def _randomness(self, client: Client, epoch: int, step: int) -> Any:
        """A client's random draws in a step (dropout) seeded by (seed, client, epoch, step)."""
        return step_randomness(self._draws, self.device, self.config.seed, client.client_id, epoch, step)

    def _batch(self, client: Client, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A client's inputs and labels for (epoch, step) (nodes/batches.py)."""
        return self._batches.batch(client.client_id, client.data, epoch, step)

    # --- weights: FedAvg (SFL, FL), SSL's hand-over, the leakage attack ----------------

    def upload_models(self, client_ids: list[int] | None = None) -> ModelUpload:
        """This shard's part of FedAvg: model states weighted by partition size, summed, over its
        clients (or those named: the round's)."""
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

        Under reset a loaded client's optimizer state goes now (FedAvg's mean, SSL's
        hand-over: a new round for it), not at its next step: it is not kept between epochs.
        """
        for client in self._select(client_ids):
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
        self._fresh_in.clear()

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
