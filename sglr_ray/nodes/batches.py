"""Which samples a client trains on at each step: a pure function of the seed and the ids.

A client walks through its epoch order (data.epoch_order) without replacement:
b samples a step, or, under a method's batch plan (GPSL), as many as the plan
gives it. The orders are cached per epoch, so a step costs an index, not a shuffle.
"""

from __future__ import annotations

import numpy as np
import torch

from sglr_ray.data import FASHION, ImageSet, InputCodec, epoch_order
from sglr_ray.nodes.specs import NodeSettings


class BatchDrawer:
    """Draws the clients' batches of one shard, on `device`."""

    def __init__(self, config: NodeSettings, device: torch.device) -> None:
        self.config = config
        self.device = device
        self._orders: dict[int, tuple[int, torch.Tensor]] = {}  # client_id -> (epoch, its order)
        self._plan: tuple[int, torch.Tensor, torch.Tensor] | None = None  # (epoch, counts, starts)
        self._stacked_orders: tuple[int, np.ndarray] | None = None  # (epoch, (K, n) orders)

    def batch(
        self, client_id: int, data: ImageSet, epoch: int, step: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A client's inputs and labels for (epoch, step)."""
        cached = self._orders.get(client_id)
        if cached is None or cached[0] != epoch:
            cached = (epoch, epoch_order(self.config.seed, client_id, epoch, len(data)))
            self._orders[client_id] = cached
        start, count = self.rows(client_id, epoch, step)
        index = cached[1][start : start + count].numpy()
        x = data.inputs(index).to(self.device)
        return x, torch.from_numpy(data.labels[index])

    def rows(self, client_id: int, epoch: int, step: int) -> tuple[int, int]:
        """(first position in the epoch order, count) of a client's batch at `step`."""
        if self.config.spec.batch_plan is None:
            return step * self.config.batch_size, self.config.batch_size
        if self._plan is None or self._plan[0] != epoch:
            plan = torch.tensor(self.config.spec.batch_plan(self.config, epoch), dtype=torch.int64)
            starts = torch.cumsum(plan, dim=0) - plan  # per step, per client: samples used before it
            self._plan = (epoch, plan, starts)
        _, plan, starts = self._plan
        return int(starts[step, client_id]), int(plan[step, client_id])

    def stacked_batch(
        self,
        client_ids: list[int],
        images: np.ndarray,
        labels: np.ndarray,
        epoch: int,
        step: int,
        codec: InputCodec = FASHION,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every client's `batch` at once from stacked partitions (K, n, ...), all of size n:
        inputs (K, b, *input_shape) and labels (K*b,)."""
        if self._stacked_orders is None or self._stacked_orders[0] != epoch:
            n = images.shape[1]
            orders = [epoch_order(self.config.seed, client_id, epoch, n) for client_id in client_ids]
            self._stacked_orders = (epoch, torch.stack(orders).numpy())
        b = self.config.batch_size
        index = self._stacked_orders[1][:, step * b : (step + 1) * b]
        rows = np.arange(len(client_ids))[:, None]
        x = codec(images[rows, index].reshape(-1, *images.shape[2:])).to(self.device)
        y = torch.from_numpy(labels[rows, index].reshape(-1))
        return x.reshape(len(client_ids), b, *x.shape[1:]), y
