"""ClientShard: one or more clients, each with its own bottom model, optimizer and data.

Plain torch, no Ray: the Ray executor wraps a shard in a thin actor, the local
executor calls it directly. A step is two calls: `forward_batch` (returns the
smashed data to upload) and `apply_gradient` (back-propagates what the server
sent and steps each client's optimizer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sglr_ray import rules
from sglr_ray.config import RunConfig
from sglr_ray.data import ImageSet, epoch_order, to_model_input
from sglr_ray.models import SPLIT_MODELS, seeded, state_nbytes
from sglr_ray.optim import make_optimizer
from sglr_ray.protocol import GradientDelivery, ModelUpload, SmashedBatch

EVAL_BATCH = 1000


@dataclass
class Client:
    client_id: int
    bottom: nn.Module
    optimizer: torch.optim.Optimizer
    data: ImageSet


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
        split = SPLIT_MODELS[config.model]
        self.clients: list[Client] = []
        for client_id, data in zip(client_ids, partitions, strict=True):
            data = data.writable_copy()  # arrays from Ray's object store are read-only
            # Every client starts from the same bottom weights, as if the server
            # had handed out one initial model.
            bottom = seeded(split.build_bottom, config.seed).to(self.device)
            optimizer = make_optimizer(bottom.parameters(), config.optimizer, config.lr)
            self.clients.append(Client(client_id, bottom, optimizer, data))
        self.eval_sets = {"val": val.writable_copy(), "test": test.writable_copy()}
        self._eval_top = split.build_top().to(self.device)
        self._orders: tuple[int, list[torch.Tensor]] | None = None
        self._pending: list[torch.Tensor] = []

    @property
    def client_ids(self) -> list[int]:
        return [c.client_id for c in self.clients]

    def _batch_indices(self, epoch: int, step: int) -> list[torch.Tensor]:
        if self._orders is None or self._orders[0] != epoch:
            orders = [epoch_order(self.config.seed, c.client_id, epoch, len(c.data)) for c in self.clients]
            self._orders = (epoch, orders)
        b = self.config.batch_size
        return [order[step * b : (step + 1) * b] for order in self._orders[1]]

    def forward_batch(self, epoch: int, step: int) -> SmashedBatch:
        """Every client draws its batch for (epoch, step) and computes smashed data s_i."""
        smashed, labels, sizes = [], [], []
        self._pending = []
        for client, index in zip(self.clients, self._batch_indices(epoch, step), strict=True):
            x = to_model_input(client.data.images[index.numpy()]).to(self.device)
            s = client.bottom(x)
            self._pending.append(s)  # keeps the graph for apply_gradient
            smashed.append(s.detach().cpu())
            labels.append(torch.from_numpy(client.data.labels[index.numpy()]))
            sizes.append(len(index))
        return SmashedBatch(self.client_ids, sizes, torch.cat(smashed), torch.cat(labels))

    def apply_gradient(self, delivery: GradientDelivery, averaged_gradient: torch.Tensor | None) -> None:
        """Back-propagate each client's split-layer gradient (own or averaged) and step its optimizer."""
        if len(self._pending) != len(self.clients):
            raise RuntimeError("apply_gradient called without a forward_batch before it")
        averaged = set(delivery.averaged)
        for client, s in zip(self.clients, self._pending, strict=True):
            grad = averaged_gradient if client.client_id in averaged else delivery.own[client.client_id]
            client.optimizer.zero_grad(set_to_none=True)
            s.backward(grad.to(self.device))
            client.optimizer.step()
        self._pending = []

    # --- SFL: FedAvg of bottom models -----------------------------------------------

    def upload_models(self) -> ModelUpload:
        """This shard's part of FedAvg: bottom states weighted by partition size, summed."""
        states = [{k: v.detach().cpu() for k, v in c.bottom.state_dict().items()} for c in self.clients]
        weights = [float(len(c.data)) for c in self.clients]
        return ModelUpload(
            client_ids=self.client_ids,
            weighted_state_sum=rules.weighted_state_sum(states, weights),
            total_weight=sum(weights),
            state_nbytes=state_nbytes(self.clients[0].bottom),
        )

    def bottom_state(self, client_id: int) -> dict[str, torch.Tensor]:
        """One client's bottom weights (for the leakage attack, which freezes them)."""
        client = next(c for c in self.clients if c.client_id == client_id)
        return {k: v.detach().cpu().clone() for k, v in client.bottom.state_dict().items()}

    def load_bottom_state(self, state: dict[str, torch.Tensor]) -> None:
        for client in self.clients:
            client.bottom.load_state_dict(state)

    # --- evaluation ---------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, top_state: dict[str, torch.Tensor], split: str) -> dict[int, float]:
        """Top-1 accuracy of each client's bottom model paired with the server's top model.

        The server's weights come to the shard (a measurement shortcut of the
        simulator, not part of the protocol): evaluation images never leave it.
        """
        images, labels = self.eval_sets[split].images, torch.from_numpy(self.eval_sets[split].labels)
        self._eval_top.load_state_dict(top_state)
        self._eval_top.eval()
        accuracy = {}
        for client in self.clients:
            client.bottom.eval()
            correct = 0
            for start in range(0, len(labels), EVAL_BATCH):
                x = to_model_input(images[start : start + EVAL_BATCH]).to(self.device)
                logits = self._eval_top(client.bottom(x))
                correct += int((logits.argmax(1).cpu() == labels[start : start + EVAL_BATCH]).sum())
            client.bottom.train()
            accuracy[client.client_id] = correct / len(labels)
        return accuracy
