"""Server: the top model, one loss over every client's batch, SplitLr and SplitAvg.

Plain torch, no Ray. One `train_step` is steps 2-5 of a PSL iteration (SPEC
section 2): concatenate the uploads, one forward and one loss, step the top
model with server_lr, scale each client's slice of dL/ds to G_i, then decide
who gets the averaged gradient and who gets their own.

The server also keeps the communication ledger: it sees every byte that
crosses the split, in both directions.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from sglr_ray.config import RunConfig
from sglr_ray.methods.aggregate import fedavg
from sglr_ray.nodes.models import SPLIT_MODELS, seeded, weights_copy
from sglr_ray.nodes.optim import LrSchedule, autocast, make_optimizer, set_lr
from sglr_ray.nodes.protocol import GradientDelivery, ModelUpload, SmashedBatch, StepMetrics, tensor_nbytes


@dataclass
class CommLedger:
    """Bytes moved per client (up = client to server, down = server to client) in one epoch.

    A broadcast is counted once in `server_sent` and once per receiving client
    in `bytes_down`: that difference is SplitAvg's saving.
    """

    num_clients: int
    bytes_up: list[int] = field(default_factory=list)
    bytes_down: list[int] = field(default_factory=list)
    active_steps: list[int] = field(default_factory=list)
    server_sent: int = 0

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.bytes_up = [0] * self.num_clients
        self.bytes_down = [0] * self.num_clients
        self.active_steps = [0] * self.num_clients
        self.server_sent = 0


class Server:
    def __init__(self, config: RunConfig, device: str = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self.top = seeded(SPLIT_MODELS[config.model].build_top, config.seed + 1).to(self.device)
        self.optimizer = make_optimizer(self.top.parameters(), config.optimizer, config.server_lr)
        self.rule = config.spec.rule(config)  # what each client receives (methods/)
        self.schedule = LrSchedule.parse(config.lr_schedule)
        self.ledger = CommLedger(config.clients)

    def train_step(self, epoch: int, step: int, *uploads: SmashedBatch) -> tuple:
        """One server step. Returns (StepMetrics, G_avg or None, one GradientDelivery per upload)."""
        smashed = torch.cat([u.smashed for u in uploads]).to(self.device).requires_grad_(True)
        labels = torch.cat([u.labels for u in uploads]).to(self.device)
        client_ids = [c for u in uploads for c in u.client_ids]
        sizes = [n for u in uploads for n in u.sizes]

        # L = sum_i (n_i/N) L_i is exactly the mean cross-entropy over the concatenated batch.
        with autocast(self.config.precision, self.device):
            loss = F.cross_entropy(self.top(smashed), labels)
        set_lr(self.optimizer, self.config.server_lr * self.schedule.multiplier(epoch, self.config.epochs))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

        # G_i = dL_i/ds_i = (N/n_i) dL/ds_i: independent of how many clients share the batch.
        total = len(labels)
        grads = {
            c: g * (total / n) for c, g, n in zip(client_ids, smashed.grad.split(sizes), sizes, strict=True)
        }

        delivery = self.rule.deliver(grads, epoch, step)
        shared = delivery.shared.cpu() if delivery.shared is not None else None
        deliveries = [
            GradientDelivery(
                own={c: delivery.own[c].cpu() for c in u.client_ids if c in delivery.own},
                averaged=[c for c in u.client_ids if c in delivery.shared_to],
            )
            for u in uploads
        ]
        self._account_step(uploads, deliveries, shared)
        return (StepMetrics(loss.item(), total, sorted(delivery.shared_to)), shared, *deliveries)

    def _account_step(
        self,
        uploads: tuple[SmashedBatch, ...],
        deliveries: list[GradientDelivery],
        averaged: torch.Tensor | None,
    ) -> None:
        ledger = self.ledger
        for upload, delivery in zip(uploads, deliveries, strict=True):
            row_bytes = (tensor_nbytes(upload.smashed) + tensor_nbytes(upload.labels)) // len(upload.labels)
            for client_id, n in zip(upload.client_ids, upload.sizes, strict=True):
                ledger.bytes_up[client_id] += n * row_bytes
            for client_id, grad in delivery.own.items():
                ledger.bytes_down[client_id] += tensor_nbytes(grad)
                ledger.server_sent += tensor_nbytes(grad)
            for client_id in delivery.averaged:
                ledger.bytes_down[client_id] += tensor_nbytes(averaged)
                ledger.active_steps[client_id] += 1
        if averaged is not None:
            ledger.server_sent += tensor_nbytes(averaged)  # one broadcast

    def average_client_models(self, *uploads: ModelUpload) -> dict[str, torch.Tensor]:
        """SFL: FedAvg of the bottom models; every client sends its model up and gets the mean back."""
        for upload in uploads:
            for client_id in upload.client_ids:
                self.ledger.bytes_up[client_id] += upload.state_nbytes
                self.ledger.bytes_down[client_id] += upload.state_nbytes
                self.ledger.server_sent += upload.state_nbytes
        return fedavg([(u.weighted_state_sum, u.total_weight) for u in uploads])

    def relay_model(self, from_client: int, to_client: int, nbytes: int) -> None:
        """SSL: a client's bottom weights go up to the server and on to the next client."""
        self.ledger.bytes_up[from_client] += nbytes
        self.ledger.bytes_down[to_client] += nbytes
        self.ledger.server_sent += nbytes

    def receive_raw_data(self, client_id: int, nbytes: int) -> None:
        """CL: a client uploads its raw partition once, before training (the cost CL pays for privacy)."""
        self.ledger.bytes_up[client_id] += nbytes

    def state(self) -> dict:
        """The top model and optimizer state, copied: the server's part of a checkpoint."""
        return {"top": self.top_state(), "optimizer": copy.deepcopy(self.optimizer.state_dict())}

    def load_state(self, state: dict) -> None:
        """Return to a checkpoint taken at the end of an epoch; the epoch's byte counts restart."""
        self.top.load_state_dict(state["top"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.ledger = CommLedger(self.ledger.num_clients)

    def top_state(self) -> dict[str, torch.Tensor]:
        return weights_copy(self.top)

    def pop_epoch_comm(self) -> CommLedger:
        """The epoch's byte counts; the ledger starts afresh."""
        done, self.ledger = self.ledger, CommLedger(self.ledger.num_clients)
        return done
