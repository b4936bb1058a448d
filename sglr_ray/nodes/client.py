"""ClientShard: one or more clients, each with its own weights, optimizer state and data
(kept compactly: nodes/client_state.py): what every shard does (models, optimizers and
learning rates, batches, weights for FedAvg and hand-overs, checkpoints, evaluation).

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

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sglr_ray.data import ImageSet, PreparedData, eval_slice
from sglr_ray.methods.aggregate import weighted_state_sum
from sglr_ray.nodes.batches import BatchDrawer
from sglr_ray.nodes.client_state import ClientStates
from sglr_ray.nodes.models import has_randomness, state_nbytes, step_randomness, weights_copy
from sglr_ray.nodes.optim import (
    LrSchedule,
    autocast,
    load_optimizer_state,
    optimizer_state_copy,
    set_lr,
)
from sglr_ray.nodes.protocol import ModelUpload
from sglr_ray.nodes.scoring import count_correct
from sglr_ray.nodes.specs import NodeSettings


@dataclass
class Client:
    """A client being stepped: a model and an optimizer built for the step (for split shards,
    views of its rows of the shard's ClientStates, dropped after the step), and its data."""

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
    """The clients `client_ids`, with their partitions; `val`/`test` are shared evaluation sets.

    Clients are rows 0..C-1 of the shard, in `client_ids` order. Their weights and optimizer
    state live in `states` (nodes/client_state.py); a model and optimizer exist only for a
    client being stepped (`_checkout`, `_checkin`) and one scratch model is rebound to the
    client being read (`_read_model`)."""

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
        self.client_ids = list(client_ids)
        self._row = {client_id: row for row, client_id in enumerate(self.client_ids)}
        # Arrays from Ray's object store are read-only, hence the copy.
        self.data = [data.writable_copy() for data in partitions]
        # Every client starts from the same weights, as if the server had handed out one model.
        self._template = self.role.build_client(self._parts).to(self.device)
        self._lr = config.lr  # the epoch's client rate (_set_epoch_lr)
        self.states = self._make_states()
        self._scratch = copy.deepcopy(self._template)  # rebound to the client being read
        self.eval_sets = {"val": val.writable_copy(), "test": test.writable_copy()}
        eval_top = self.role.build_server(self._parts)  # the server's weights are loaded into it
        self._eval_top = None if eval_top is None else eval_top.to(self.device)
        self._batches = BatchDrawer(config, self.device)
        self._schedule = LrSchedule.parse(config.lr_schedule)
        self._draws = has_randomness(self._template)  # dropout: masks seeded per step
        self._clients_built()

    def _make_states(self) -> ClientStates | None:
        return ClientStates(self._template, len(self.client_ids), self.config.optimizer, self.config.lr)

    def _clients_built(self) -> None:
        """What a kind of shard sets up once its clients exist (local_shard.py: FL's round)."""

    # --- a client's model: for a step, or to read ---------------------------------------

    def _checkout(self, row: int) -> Client:
        """Client `row` ready to step: a model and optimizer holding its state (views of its
        rows, at the epoch's rate). Hand it to `_checkin` after its step."""
        model = self.states.module(row)
        optimizer = self.states.optimizer(row, model)
        set_lr(optimizer, self._lr)
        return Client(self.client_ids[row], model, optimizer, self.data[row])

    def _checkin(self, client: Client) -> None:
        """Keep what a step did to a checked-out client's optimizer (its weights are the rows)."""
        self.states.store_optimizer(self._row[client.client_id], client.model, client.optimizer)

    def _read_model(self, row: int) -> nn.Module:
        """Client `row`'s model to read (score, upload): valid until the next call."""
        return self.states.bind(self._scratch, row)

    def _clear_optimizers(self, rows: list[int]) -> None:
        """Fresh optimizers for clients `rows` from their next step."""
        self.states.reset_optimizers(rows)

    def _optimizer_state(self, row: int) -> dict:
        """Client `row`'s optimizer state_dict, copied (what a checkpoint holds)."""
        return optimizer_state_copy(self._checkout(row).optimizer)

    def _load_optimizer_state(self, row: int, saved: dict) -> None:
        client = self._checkout(row)
        load_optimizer_state(client.optimizer, saved)
        self._checkin(client)

    # --- a step ---------------------------------------------------------------------------

    def _autocast(self):
        return autocast(self.config.precision, self.device)

    def _set_epoch_lr(self, rows: list[int], epoch: int) -> None:
        """The epoch's rate for the clients stepped next; under --client-optimizer-state reset a
        client's first step of a round (an epoch) starts from a fresh optimizer, as FedAvg and
        Flower do; keep leaves the state alone."""
        self._lr = self.config.lr * self._schedule.multiplier(epoch, self.config.epochs)
        if not self._resets:
            return
        stale = [row for row in rows if self._fresh_in.get(self.client_ids[row]) != epoch]
        if stale:
            self._clear_optimizers(stale)
            for row in stale:
                self._fresh_in[self.client_ids[row]] = epoch

    def _rows(self, client_ids: list[int] | None) -> list[int]:
        """The rows of `client_ids` (None: every client), in the order given."""
        if client_ids is None:
            return list(range(len(self.client_ids)))
        missing = [c for c in client_ids if c not in self._row]
        if missing:
            raise ValueError(f"clients {missing} are not in this shard ({self.client_ids})")
        return [self._row[c] for c in client_ids]

    def autocast(self) -> Any:
        """The run's autocast context (--precision)."""
        return self._autocast()

    def randomness(self, client: Client, epoch: int, step: int) -> Any:
        """A client's random draws (dropout masks) in a step of a method's own (methods/usl.py's
        tail step), seeded as its forward's are: the same on both executors."""
        return self._randomness(client.client_id, epoch, step)

    def _randomness(self, client_id: int, epoch: int, step: int) -> Any:
        """A client's random draws in a step (dropout) seeded by (seed, client, epoch, step)."""
        return step_randomness(self._draws, self.device, self.config.seed, client_id, epoch, step)

    def _batch(self, row: int, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Client `row`'s inputs and labels for (epoch, step) (nodes/batches.py)."""
        return self._batches.batch(self.client_ids[row], self.data[row], epoch, step)

    # --- weights: FedAvg (SFL, FL), SSL's hand-over, the leakage attack ----------------

    def upload_models(self, client_ids: list[int] | None = None) -> ModelUpload:
        """This shard's part of FedAvg: model states weighted by partition size, summed, over its
        clients (or those named: the round's)."""
        rows = self._rows(client_ids)
        states = [{k: v.detach().cpu() for k, v in self.states.state_dict(row).items()} for row in rows]
        weights = [float(len(self.data[row])) for row in rows]
        return ModelUpload(
            client_ids=[self.client_ids[row] for row in rows],
            weighted_state_sum=weighted_state_sum(states, weights),
            total_weight=sum(weights),
            state_nbytes=state_nbytes(self._template),
        )

    def model_state(self, client_id: int) -> dict[str, torch.Tensor]:
        """One client's model weights (SSL hands them on; the leakage attack freezes them)."""
        (row,) = self._rows([client_id])
        return weights_copy(self._read_model(row))

    def client_model(self, client_id: int) -> nn.Module:
        """A model of the client whose weights are views of its state (reads see later steps,
        writes change the client): for tests and tools; the shard itself keeps none."""
        (row,) = self._rows([client_id])
        return self._read_model(row) if self.states is None else self.states.module(row)

    def holds_optimizer_state(self, client_id: int) -> bool:
        """Whether the client's optimizer has state (False: its next step starts a fresh one)."""
        (row,) = self._rows([client_id])
        return bool(self._optimizer_state(row)["state"])

    def load_model_state(self, state: dict[str, torch.Tensor], client_ids: list[int] | None = None) -> None:
        """Load `state` into every client of the shard, or only those named.

        Under reset a loaded client's optimizer state goes now (FedAvg's mean, SSL's
        hand-over: a new round for it), not at its next step: it is not kept between epochs.
        """
        rows = self._rows(client_ids)
        self.states.load(state, rows)
        if self._resets:
            self._clear_optimizers(rows)

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
        for row, client_id in enumerate(self.client_ids):
            saved = {} if shared else {"model": weights_copy(self._read_model(row))}
            if not self._resets:
                saved["optimizer"] = self._optimizer_state(row)
            clients[client_id] = saved
        return {"model": weights_copy(self._read_model(0)) if shared else None, "clients": clients}

    def load_state(self, state: dict) -> None:
        """Return every client to a checkpointed state (see `state`); a half-done step is forgotten."""
        if self._one_model:
            self.load_model_state(state["model"])
        for row, client_id in enumerate(self.client_ids):
            saved = state["clients"][client_id]
            if not self._one_model:
                self.states.load(saved.get("model", state["model"]), [row])
            if "optimizer" in saved and not self._resets:
                self._load_optimizer_state(row, saved["optimizer"])
            else:  # a fresh optimizer, as at the start of a round
                self._clear_optimizers([row])
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
        for row in self._rows(client_ids):
            client_id = self.client_ids[row]
            part = slice(None) if whole else eval_slice(len(labels), self.config.clients, client_id)
            x, y = images.subset(part), labels[part]
            first, second = self.role.eval_pair(self._read_model(row), server_model)
            correct = count_correct(first, second, x, y, self.device, self._autocast)
            scores[client_id] = (correct, len(y))
        return scores
