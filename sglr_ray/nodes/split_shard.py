"""SplitShard: a shard whose clients step through the server (PSL, SSL, SFL and every split method).

A step is two calls: `forward_batch` (each client's role computes what goes up)
and `apply_gradient` (each client's role back-propagates what the server sent
and steps its optimizer); the driver joins a step's `apply_gradient` and the
next step's `forward_batch` into one `apply_then_forward` call. Where every
client of the shard takes part with a batch of b, the clients run as one
few grouped models (nodes/grouped.py) behind the same two calls.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sglr_ray.data import ImageSet
from sglr_ray.methods.roles import StepContext
from sglr_ray.nodes.client import Client, ClientShard
from sglr_ray.nodes.codec import parse_codec
from sglr_ray.nodes.grouped import GroupedBottoms, groupable
from sglr_ray.nodes.optim import set_lr
from sglr_ray.nodes.protocol import GradientDelivery, RowGradients, SmashedBatch
from sglr_ray.nodes.specs import NodeSettings


class SplitShard(ClientShard):
    """`group`: run the clients as one grouped model where the method allows it (see
    `_make_group`); False keeps the per-client loop everywhere (tests compare the two)."""

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
        super().__init__(config, client_ids, partitions, val, test, device)
        # forwarded, awaiting gradients: (client, kept) pairs, or the grouped smashed data
        self._pending: list[tuple[Client, Any]] | torch.Tensor | None = None
        self._smashed_shape = self._parts.smashed_shape
        self._codec = parse_codec(config.compress)  # what the server decodes of each upload
        self._grouped = self._make_group() if group else None

    def _make_group(self) -> GroupedBottoms | None:
        """The clients as a few grouped models (nodes/grouped.py), where every step has every client
        of the shard take part with a batch of b: PSL's parallel schedule without a batch plan.
        Their partitions are stacked, (K, n, ...), so a step draws every client's batch at once;
        each client's data becomes a view of its part."""
        spec = self.config.spec
        sizes = {len(data) for data in self.data}
        if (
            not spec.schedule.groupable or not self.role.grouped or spec.batch_plan is not None
            or self.config.deadline_s > 0  # a late client must skip its step: the per-client loop
            or len(self.data) < 2 or len(sizes) != 1 or not groupable(self._template)
        ):  # fmt: skip
            return None
        images = np.stack([data.images for data in self.data])
        labels = np.stack([data.labels for data in self.data])
        self.data = [ImageSet(images[k], labels[k], data.codec) for k, data in enumerate(self.data)]
        self._stacked = (images, labels)
        return GroupedBottoms(self.states, self._template)

    @property
    def pending(self) -> list[tuple[Client, Any]]:
        """What each client kept of the last forward_batch (its role's `kept`), in upload order:
        a method's own step function reads it between forward and apply (methods/usl.py)."""
        if not isinstance(self._pending, list):
            raise RuntimeError("no per-client forward is pending")
        return self._pending

    def forward_batch(self, epoch: int, step: int, client_ids: list[int] | None = None) -> SmashedBatch:
        """Each client (all, or those named: SSL's turn) draws its batch and computes smashed data s_i."""
        if self._grouped is not None:
            if client_ids is None:
                return self._forward_grouped(epoch, step)
            self._grouped = None  # some clients only: the loop from here on (the store is shared)
        smashed, labels, sizes = [], [], []
        self._pending = []
        rows = self._rows(client_ids)
        self._set_epoch_lr(rows, epoch)  # the step in apply_gradient uses it
        for row in rows:
            x, y = self._batch(row, epoch, step)
            if len(y) == 0:  # a batch plan gave this client nothing this step
                continue
            client = self._checkout(row)  # a model of its own until apply_gradient
            with self._autocast(), self._randomness(client.client_id, epoch, step):
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
        """forward_batch for every client at once through the grouped models: the same batches
        and the same smashed data as the per-client loop."""
        self._set_epoch_lr(list(range(len(self.client_ids))), epoch)  # may reset optimizers
        set_lr(self._grouped.optimizer, self._lr)
        x, y = self._batches.stacked_batch(self.client_ids, *self._stacked, epoch, step, self.data[0].codec)
        with self._autocast():
            s = self._grouped.forward(x)
        # apply_gradient's step back-propagates it; where the group recomputes its forward (no
        # graph kept) the smashed data (gigabytes for thousands of clients) need not outlive the upload
        self._pending = s if s.requires_grad else s.new_empty(0)
        batch = self.config.batch_size
        sent = self._codec.roundtrip(s.detach().cpu())
        return SmashedBatch(self.client_ids, [batch] * len(self.client_ids), sent, y)

    def apply_gradient(self, delivery: GradientDelivery, averaged_gradient: torch.Tensor | None) -> None:
        """Back-propagate each client's split-layer gradient (own or averaged) and step its optimizer."""
        if self._pending is None:
            raise RuntimeError("apply_gradient called without a forward_batch before it")
        averaged = set(delivery.averaged)
        if isinstance(self._pending, torch.Tensor):  # the grouped forward: one backward, one step
            self._grouped.step(
                self._pending, self._grouped_gradients(delivery, averaged_gradient), self._autocast
            )
            self._pending = None
            return
        for client, kept in self._pending:
            if client.client_id in delivery.late:  # past the deadline: the step went on without it
                continue
            grad = averaged_gradient if client.client_id in averaged else delivery.own.get(client.client_id)
            received = None if grad is None else grad.to(self.device)  # None: nothing comes down (lsl)
            self.role.backward(client.model, client.optimizer, kept, received)
            self._checkin(client)
        self._pending = None

    def _grouped_gradients(
        self, delivery: GradientDelivery, averaged_gradient: torch.Tensor | None
    ) -> torch.Tensor | list[torch.Tensor]:
        """What the grouped step back-propagates: every client's own rows as the ONE tensor they
        came in (read in place), or one tensor per client where some received the average."""
        own = delivery.own
        if not delivery.averaged and isinstance(own, RowGradients) and own.client_ids == self.client_ids:
            return own.rows.to(self.device)
        averaged = set(delivery.averaged)
        return [(averaged_gradient if c in averaged else own[c]).to(self.device) for c in self.client_ids]

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

    def load_state(self, state: dict) -> None:
        super().load_state(state)  # the groups read the store: nothing of theirs to reload
        self._pending = None
