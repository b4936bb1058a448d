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

from sglr_ray.data import ImageSet
from sglr_ray.methods.aggregate import weighted_state_sum
from sglr_ray.nodes.client import Client, ClientShard
from sglr_ray.nodes.models import state_nbytes
from sglr_ray.nodes.optim import classification_loss, make_optimizer
from sglr_ray.nodes.protocol import ModelUpload


class LocalShard(ClientShard):
    @property
    def _one_model(self) -> bool:
        """FL: the clients share one working model, trained in turn from the global weights."""
        return self.config.spec.averages_clients

    def _clients_built(self) -> None:
        # FL: the weights every client starts the round from, and the round's running
        # FedAvg sum (sum_i n_i * state_i in float64, sum_i n_i) for upload_models.
        first = self.clients[0].model.state_dict()
        self._global = {k: v.detach().clone() for k, v in first.items()} if self._one_model else None
        self._round: tuple[dict[str, torch.Tensor], float] | None = None

    def _new_client(self, client_id: int, data: ImageSet) -> Client:
        if not (self._one_model and self.clients):
            return super()._new_client(client_id, data)
        model = self.clients[0].model  # FL: the shard's one working model
        if self._resets:
            return Client(client_id, model, self.clients[0].optimizer, data)
        optimizer = make_optimizer(model.parameters(), self.config.optimizer, self.config.lr)
        return Client(client_id, model, optimizer, data)

    def train_local(
        self, epoch: int, passes: int = 1, client_ids: list[int] | None = None
    ) -> tuple[float, int]:
        """Every client (or those named: the round's) trains its whole model on its own data:
        `passes` passes of batch b.

        Returns (sum of per-sample losses, samples) for the epoch's mean training loss.
        """
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

    def upload_models(self, client_ids: list[int] | None = None) -> ModelUpload:
        """FL: the round's FedAvg sum, added up as `train_local` went; CL: as every shard."""
        if not self._one_model:
            return super().upload_models(client_ids)
        if self._round is None:
            raise RuntimeError("upload_models called before train_local in this round")
        total, weight = self._round
        nbytes = state_nbytes(self.clients[0].model)
        ids = self.client_ids if client_ids is None else client_ids
        return ModelUpload(ids, {k: v.cpu() for k, v in total.items()}, weight, nbytes)

    def load_model_state(self, state: dict[str, torch.Tensor], client_ids: list[int] | None = None) -> None:
        """FL: `state` becomes the global model the next round starts from (all clients), loaded
        into the working model, which evaluation scores."""
        if not self._one_model:
            super().load_model_state(state, client_ids)
            return
        self._global, self._round = {k: v.to(self.device) for k, v in state.items()}, None
        self.clients[0].model.load_state_dict(state)
        if self._resets:
            self.clients[0].optimizer.state.clear()
