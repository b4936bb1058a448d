"""LocalShard: a shard whose clients train whole models on their own data (CL, FL).

FedAvg rounds start from the global model, so an FL shard holds ONE working
model: `train_local` trains its clients one after another, each from the global
weights, and keeps only the data-weighted sum of the results for
`upload_models` (memory O(shards x model), not O(clients x model)). Under
--client-optimizer-state reset its clients share the working model's optimizer
too; under keep each has its own over those weights.
"""

from __future__ import annotations

import torch

from sglr_ray.methods.aggregate import weighted_state_sum
from sglr_ray.nodes.client import Client, ClientShard
from sglr_ray.nodes.client_state import ClientStates
from sglr_ray.nodes.models import state_nbytes
from sglr_ray.nodes.optim import (
    classification_loss,
    load_optimizer_state,
    make_optimizer,
    optimizer_state_copy,
    set_lr,
)
from sglr_ray.nodes.protocol import ModelUpload


class LocalShard(ClientShard):
    @property
    def _one_model(self) -> bool:
        """FL: the clients share one working model, trained in turn from the global weights."""
        return self.config.spec.averages_clients

    def _make_states(self) -> ClientStates | None:
        """FL keeps no per-client weights: its clients train the one working model in turn
        (`_template`), with one optimizer (reset) or one each (keep) over it."""
        if not self._one_model:
            return super()._make_states()
        count = 1 if self._resets else len(self.client_ids)
        self._optimizers = [
            make_optimizer(self._template.parameters(), self.config.optimizer, self.config.lr)
            for _ in range(count)
        ]
        return None

    def _clients_built(self) -> None:
        # FL: the weights every client starts the round from, and the round's running
        # FedAvg sum (sum_i n_i * state_i in float64, sum_i n_i) for upload_models.
        first = self._template.state_dict()
        self._global = {k: v.detach().clone() for k, v in first.items()} if self._one_model else None
        self._round: tuple[dict[str, torch.Tensor], float] | None = None

    def _optimizer_of(self, row: int) -> torch.optim.Optimizer:
        return self._optimizers[0 if self._resets else row]

    def _checkout(self, row: int) -> Client:
        if not self._one_model:
            return super()._checkout(row)
        optimizer = self._optimizer_of(row)
        set_lr(optimizer, self._lr)
        return Client(self.client_ids[row], self._template, optimizer, self.data[row])

    def _checkin(self, client: Client) -> None:
        if not self._one_model:  # FL: the working model and its optimizers are the state
            super()._checkin(client)

    def _read_model(self, row: int) -> torch.nn.Module:
        return self._template if self._one_model else super()._read_model(row)

    def _clear_optimizers(self, rows: list[int]) -> None:
        if not self._one_model:
            super()._clear_optimizers(rows)
            return
        for row in rows:
            self._optimizer_of(row).state.clear()

    def _optimizer_state(self, row: int) -> dict:
        if not self._one_model:
            return super()._optimizer_state(row)
        return optimizer_state_copy(self._optimizer_of(row))

    def _load_optimizer_state(self, row: int, saved: dict) -> None:
        if not self._one_model:
            super()._load_optimizer_state(row, saved)
            return
        load_optimizer_state(self._optimizer_of(row), saved)

    def train_local(
        self, epoch: int, passes: int = 1, client_ids: list[int] | None = None
    ) -> tuple[float, int]:
        """Every client (or those named: the round's) trains its whole model on its own data:
        `passes` passes of batch b.

        Returns (sum of per-sample losses, samples) for the epoch's mean training loss.
        """
        loss_sum, samples = 0.0, 0
        self._round = None
        for row in self._rows(client_ids):
            if self._one_model:  # FedAvg: every client starts the round from the global model
                self._template.load_state_dict(self._global)
            self._set_epoch_lr([row], epoch)
            client = self._checkout(row)
            steps = len(client.data) // self.config.batch_size
            for local_epoch in range(epoch * passes, (epoch + 1) * passes):
                for step in range(steps):
                    x, y = self._batch(row, local_epoch, step)
                    with self._autocast(), self._randomness(client.client_id, local_epoch, step):
                        loss = classification_loss(client.model(x), y.to(self.device), self.config.loss)
                    client.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    client.optimizer.step()
                    loss_sum, samples = loss_sum + loss.item() * len(y), samples + len(y)
            self._checkin(client)
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

    def upload_models(self, client_ids: list[int] | None = None) -> ModelUpload:
        """FL: the round's FedAvg sum, added up as `train_local` went; CL: as every shard."""
        if not self._one_model:
            return super().upload_models(client_ids)
        if self._round is None:
            raise RuntimeError("upload_models called before train_local in this round")
        total, weight = self._round
        nbytes = state_nbytes(self._template)
        ids = self.client_ids if client_ids is None else client_ids
        return ModelUpload(ids, {k: v.cpu() for k, v in total.items()}, weight, nbytes)

    def load_model_state(self, state: dict[str, torch.Tensor], client_ids: list[int] | None = None) -> None:
        """FL: `state` becomes the global model the next round starts from (all clients), loaded
        into the working model, which evaluation scores."""
        if not self._one_model:
            super().load_model_state(state, client_ids)
            return
        self._global, self._round = {k: v.to(self.device) for k, v in state.items()}, None
        self._template.load_state_dict(state)
        if self._resets:
            self._optimizers[0].state.clear()
