"""Server: the top model, the method's server step and SplitRule, and the byte ledger.

Plain torch, no Ray. One `train_step` is steps 2-5 of a PSL iteration (SPEC
section 2): concatenate the uploads, let the method's server step compute the
loss and each client's split-layer gradient G_i (PSL: one forward, one loss,
one step with server_lr), then let its SplitRule decide what each client
receives (SplitAvg: the average, for the active clients).

The server also keeps the communication ledger: it sees every byte that
crosses the split, in both directions.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from sglr_ray.methods.aggregate import fedavg, weighted_state_sum
from sglr_ray.methods.base import ServerBatch
from sglr_ray.nodes.codec import parse_codec
from sglr_ray.nodes.models import SERVER_STREAM, has_randomness, step_randomness, weights_copy
from sglr_ray.nodes.optim import (
    LrSchedule,
    autocast,
    classification_loss,
    load_optimizer_state,
    make_optimizer,
    set_lr,
)
from sglr_ray.nodes.protocol import (
    GradientDelivery,
    ModelUpload,
    RowGradients,
    SmashedBatch,
    StepMetrics,
    tensor_nbytes,
)
from sglr_ray.nodes.specs import NodeSettings
from sglr_ray.systems.clock import Phase, Timing, missed_deadline, upload_s

# Samples the top model takes in one pass in `train_top`: 10,000 clients x b = 8 would be
# 80,000 samples, about 17 GB of AlexNet top activations (220 KB a sample) at once; 4096
# keep them under 1 GB and still make each layer's call large.
SERVER_CHUNK_SAMPLES = 4096


def _whole_batch_only(top: torch.nn.Module) -> bool:
    """Whether `top` sees its batch as a whole (BatchNorm, dropout): it cannot run in chunks."""
    batch_norm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in top.modules())
    return batch_norm or has_randomness(top)


def _rows_of(parts: Sequence[torch.Tensor], rows: slice) -> torch.Tensor:
    """Rows `rows` of the concatenation of `parts`: a view where they lie in one part."""
    pieces, start = [], 0
    for part in parts:
        low, high = max(rows.start, start), min(rows.stop, start + len(part))
        if low < high:
            pieces.append(part[low - start : high - start])
        start += len(part)
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


@dataclass
class CommLedger:
    """Bytes moved per client (up = client to server, down = server to client) in one epoch.

    A broadcast is counted once in `server_sent` and once per receiving client
    in `bytes_down`: that difference is SplitAvg's saving. `phases` keeps the same
    bytes step by step, with the samples each client and the server computed on,
    for the virtual clock (systems/clock.py): a phase closes at each server step,
    model exchange or hand-over, and holds the bytes counted since the last one.
    """

    num_clients: int
    bytes_up: list[int] = field(default_factory=list)
    bytes_down: list[int] = field(default_factory=list)
    active_steps: list[int] = field(default_factory=list)
    server_sent: int = 0
    phases: list[Phase] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.bytes_up = [0] * self.num_clients
        self.bytes_down = [0] * self.num_clients
        self.active_steps = [0] * self.num_clients
        self.server_sent = 0
        self.phases = []
        self._open = Phase()
        self._marks = ([0] * self.num_clients, [0] * self.num_clients, 0)

    def add_work(self, samples: dict[int, int], server_samples: int = 0) -> None:
        """Samples computed on in the phase in progress, by client and by the server."""
        for client_id, n in samples.items():
            self._open.samples[client_id] = self._open.samples.get(client_id, 0) + n
        self._open.server_samples += server_samples

    def close_phase(self, late: tuple[int, ...] = ()) -> None:
        """End the phase in progress: it holds the work added and the bytes counted since the last."""
        up_before, down_before, sent_before = self._marks
        phase = self._open
        phase.up = {c: b - a for c, (a, b) in enumerate(zip(up_before, self.bytes_up, strict=True)) if b != a}
        phase.down = {
            c: b - a for c, (a, b) in enumerate(zip(down_before, self.bytes_down, strict=True)) if b != a
        }
        phase.server_sent, phase.late = self.server_sent - sent_before, tuple(late)
        if phase.clients or phase.server_samples or phase.server_sent:
            self.phases.append(phase)
        self._open = Phase()
        self._marks = (list(self.bytes_up), list(self.bytes_down), self.server_sent)


class Server:
    """The top model (one per client for methods with several `top_copies`), its optimizer,
    the method's server step and SplitRule, and the byte ledger."""

    def __init__(self, config: NodeSettings, device: str = "cpu") -> None:
        self.config = config
        self.spec = config.spec
        self.device = torch.device(device)
        # The whole-model methods (CL, FL) hold no top model here: their server only sums the
        # clients' models and counts bytes. That keeps their Ray driver, which holds this
        # server, free of an optimizer, whose first construction imports torch._dynamo and
        # Triton (about 160 MB resident in every process that does it).
        self.tops: list[torch.nn.Module] = []
        first = self.spec.client.build_server(config.model_parts)
        if first is not None:
            # Copies (SFLv1's) start equal: one initial top model, as if handed out by one server.
            first = first.to(self.device)
            self.tops = [first] + [copy.deepcopy(first) for _ in range(self.spec.top_copies(config) - 1)]
        self.optimizers = [
            make_optimizer(t.parameters(), config.optimizer, config.server_lr) for t in self.tops
        ]
        self.rule = self.spec.rule(config)  # what each client receives (methods/)
        self.schedule = LrSchedule.parse(config.lr_schedule)
        self.ledger = CommLedger(config.clients)
        self._lr = config.server_lr
        self.scratch: dict = {}  # a method's own state between its calls in one step (methods/usl.py)
        self._draws = any(has_randomness(t) for t in self.tops)  # dropout: masks seeded per step
        # Tops whose batch must go through in one pass: BatchNorm's statistics are over the whole
        # batch, and dropout masks are drawn for the whole batch at once.
        self._one_pass = [_whole_batch_only(t) for t in self.tops]
        self.codec = parse_codec(config.compress)  # how gradients go down, and smashed data came up
        self.timing: Timing | None = None  # the virtual clock's inputs (use_timing); deadlines read it

    def use_timing(self, timing: Timing) -> None:
        """The virtual clock's profiles and FLOPs per sample, given by the driver each epoch."""
        self.timing = timing

    @property
    def top(self) -> torch.nn.Module:
        return self.tops[0]

    def top_loss(self, index: int, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of top model `index` on `inputs` (autocast as --precision says)."""
        with autocast(self.config.precision, self.device):
            return classification_loss(self.tops[index](inputs), labels, self.config.loss)

    def autocast(self):
        """The run's autocast context (--precision) on the server's device."""
        return autocast(self.config.precision, self.device)

    def backprop_top(self, index: int, outputs: torch.Tensor, grad: torch.Tensor) -> None:
        """One optimizer step of top model `index` from a gradient of its `outputs` that came from
        elsewhere (U-shaped: the clients' tails); gradients reach its inputs where they need them."""
        optimizer = self.optimizers[index]
        set_lr(optimizer, self._lr)
        optimizer.zero_grad(set_to_none=True)
        outputs.backward(grad)
        optimizer.step()

    def train_top(self, index: int, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One optimizer step of top model `index` on (inputs, labels); returns the loss.
        Gradients reach `inputs.grad` where `inputs` requires them.

        A batch of more than SERVER_CHUNK_SAMPLES samples (thousands of clients x b) goes
        through the top model in chunks, each chunk's share of the mean loss back-propagated
        before the next is run, so activation memory stays bounded; the same gradient up to
        the order of float sums. Tops with BatchNorm or dropout always take it in one pass."""
        optimizer = self.optimizers[index]
        set_lr(optimizer, self._lr)
        optimizer.zero_grad(set_to_none=True)
        if not self._chunked(index, len(labels)):
            loss = self.top_loss(index, inputs, labels)
            loss.backward()
        else:
            grad = torch.empty_like(inputs) if inputs.requires_grad else None
            loss = self._chunked_backward(index, [inputs], labels, grad)
            if grad is not None:
                inputs.grad = grad
        optimizer.step()
        return loss

    def train_top_rows(
        self, index: int, parts: Sequence[torch.Tensor], labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`train_top` on the rows of `parts` in order (the uploads: never concatenated in the
        chunked case, and never written, so they may be read-only): the loss, and its gradient
        with respect to those rows (a new tensor)."""
        if not self._chunked(index, len(labels)):
            inputs = (parts[0] if len(parts) == 1 else torch.cat(parts)).detach().requires_grad_(True)
            return self.train_top(index, inputs, labels), inputs.grad
        optimizer = self.optimizers[index]
        set_lr(optimizer, self._lr)
        optimizer.zero_grad(set_to_none=True)
        grad = torch.empty(len(labels), *parts[0].shape[1:], dtype=parts[0].dtype)
        loss = self._chunked_backward(index, parts, labels, grad)
        optimizer.step()
        return loss, grad

    def _chunked(self, index: int, samples: int) -> bool:
        return samples > SERVER_CHUNK_SAMPLES and not self._one_pass[index]

    def _chunked_backward(
        self, index: int, parts: Sequence[torch.Tensor], labels: torch.Tensor, grad: torch.Tensor | None
    ) -> torch.Tensor:
        """Backward of the mean loss over the rows of `parts` (in order) and `labels`,
        SERVER_CHUNK_SAMPLES rows at a time: each chunk's mean loss weighted by its share of the
        rows; their gradient goes into `grad` (where given). Returns the detached loss."""
        total, loss = len(labels), torch.zeros((), dtype=parts[0].dtype)
        for start in range(0, total, SERVER_CHUNK_SAMPLES):
            rows = slice(start, min(start + SERVER_CHUNK_SAMPLES, total))
            # a leaf of its own: backward through a slice of the whole batch would build a
            # zero-filled gradient of the whole batch for every chunk
            part = _rows_of(parts, rows).detach().requires_grad_(grad is not None)
            share = self.top_loss(index, part, labels[rows]) * (len(part) / total)
            share.backward()
            loss = loss + share.detach()
            if grad is not None:
                grad[rows] = part.grad
        return loss

    def train_step(self, epoch: int, step: int, *uploads: SmashedBatch) -> tuple:
        """One server step: (StepMetrics, the broadcast tensor or None, a GradientDelivery per upload).
        With a deadline, uploads that arrive after it on the virtual clock are counted and dropped."""
        self.set_epoch_lr(epoch)
        self.account_uploads(uploads)  # late or not, every upload was sent
        late = self.late_clients(uploads)
        in_time = tuple(u.without(set(late)) for u in uploads) if late else uploads
        if not any(u.client_ids for u in in_time):  # nobody in time: the server has nothing to step on
            return self.deliver({}, uploads, 0.0, epoch, step, late)
        batch = self.gather(tuple(u for u in in_time if u.client_ids))
        with self.randomness(epoch, step):
            loss, grads = self.spec.server_step(self, batch, epoch, step)
        return self.deliver(grads, uploads, loss, epoch, step, late)

    def late_clients(self, uploads: tuple[SmashedBatch, ...]) -> list[int]:
        """The clients whose upload reaches the server after --deadline-s (systems/clock.py)."""
        if self.timing is None or self.timing.deadline_s <= 0:
            return []
        arrivals = {
            c: upload_s(self.timing, c, n, nbytes)
            for u in uploads
            for (c, n), nbytes in zip(
                zip(u.client_ids, u.sizes, strict=True), self._upload_bytes(u), strict=True
            )
        }
        return missed_deadline(self.timing, arrivals)

    def randomness(self, epoch: int, step: int) -> Any:
        """The server's random draws in a step (dropout) seeded by (seed, SERVER_STREAM, epoch, step)."""
        return step_randomness(self._draws, self.device, self.config.seed, SERVER_STREAM, epoch, step)

    def gather(self, uploads: tuple[SmashedBatch, ...]) -> ServerBatch:
        """One iteration's uploads on the server's device, as they arrived (ServerBatch concatenates
        them only for a server step that asks)."""
        self.ledger.add_work({}, sum(n for u in uploads for n in u.sizes))
        return ServerBatch(
            smashed=[u.smashed.to(self.device) for u in uploads],
            labels=torch.cat([u.labels for u in uploads]).to(self.device),
            client_ids=[c for u in uploads for c in u.client_ids],
            sizes=[n for u in uploads for n in u.sizes],
        )

    def deliver(
        self,
        grads: dict[int, torch.Tensor],
        uploads: tuple[SmashedBatch, ...],
        loss: float,
        epoch: int,
        step: int,
        late: list[int] = (),
    ) -> tuple:
        """The method's SplitRule turns split-layer gradients into what each shard receives, counted
        in the ledger: (StepMetrics, the broadcast tensor or None, a GradientDelivery per upload)."""
        delivery = self.rule.deliver(grads, epoch, step)
        codec = self.codec
        shared = codec.roundtrip(delivery.shared.detach().cpu()) if delivery.shared is not None else None
        deliveries = [
            GradientDelivery(
                own=self._packed([c for c in u.client_ids if c in delivery.own], delivery.own),
                averaged=[c for c in u.client_ids if c in delivery.shared_to],
                late=[c for c in u.client_ids if c in late],
            )
            for u in uploads
        ]
        self._account_deliveries(deliveries, shared)
        self.ledger.close_phase(tuple(late))
        samples = sum(n for u in uploads for c, n in zip(u.client_ids, u.sizes, strict=True) if c not in late)
        return (StepMetrics(loss, samples, sorted(delivery.shared_to)), shared, *deliveries)

    def _packed(self, client_ids: list[int], grads: dict[int, torch.Tensor]) -> RowGradients:
        """The gradients of `client_ids` as one tensor, as the codec delivers them: a view of the
        server's gradient where they are its consecutive rows (no copy), as they usually are.
        Codecs act row by row (a row is a sample), so packing first changes nothing."""
        packed = RowGradients.pack(grads, client_ids)
        return RowGradients(client_ids, packed.sizes, self.codec.roundtrip(packed.rows.detach().cpu()))

    def average_server_copies(self) -> None:
        """SFLv1: FedAvg of the per-client top models (equal partitions: equal weights);
        every copy continues from the mean. Server-internal: no bytes cross the split."""
        states = [{k: v.detach().cpu() for k, v in t.state_dict().items()} for t in self.tops]
        mean = fedavg([(weighted_state_sum(states, [1.0] * len(states)), float(len(states)))])
        for top in self.tops:
            top.load_state_dict(mean)

    def account_uploads(self, uploads: tuple[SmashedBatch, ...]) -> None:
        """Bytes up: each client's rows of smashed data and labels, as sent."""
        for upload in uploads:
            for client_id, nbytes in zip(upload.client_ids, self._upload_bytes(upload), strict=True):
                self.ledger.bytes_up[client_id] += nbytes
            self.ledger.add_work(dict(zip(upload.client_ids, upload.sizes, strict=True)))

    def _upload_bytes(self, upload: SmashedBatch) -> list[int]:
        """Bytes each client of an upload sent: its rows of (compressed) smashed data and labels."""
        rows = max(1, sum(upload.sizes))
        row_bytes = (self.codec.nbytes(upload.smashed) + tensor_nbytes(upload.labels)) // rows
        return [n * row_bytes for n in upload.sizes]

    def _account_deliveries(self, deliveries: list[GradientDelivery], averaged: torch.Tensor | None) -> None:
        ledger = self.ledger
        for delivery in deliveries:
            for client_id, grad in delivery.own.items():
                ledger.bytes_down[client_id] += self.codec.nbytes(grad)
                ledger.server_sent += self.codec.nbytes(grad)
            for client_id in delivery.averaged:
                ledger.bytes_down[client_id] += self.codec.nbytes(averaged)
                ledger.active_steps[client_id] += 1
        if averaged is not None:
            ledger.server_sent += self.codec.nbytes(averaged)  # one broadcast

    def average_client_models(self, *uploads: ModelUpload) -> dict[str, torch.Tensor]:
        """SFL: FedAvg of the bottom models; every client sends its model up and gets the mean back."""
        for upload in uploads:
            for client_id in upload.client_ids:
                self.ledger.bytes_up[client_id] += upload.state_nbytes
                self.ledger.bytes_down[client_id] += upload.state_nbytes
                self.ledger.server_sent += upload.state_nbytes
        self.ledger.close_phase()  # with the round's local work, if any (FL)
        return fedavg([(u.weighted_state_sum, u.total_weight) for u in uploads])

    def relay_model(self, from_client: int, to_client: int, nbytes: int) -> None:
        """SSL: a client's bottom weights go up to the server and on to the next client."""
        self.ledger.bytes_up[from_client] += nbytes
        self.ledger.bytes_down[to_client] += nbytes
        self.ledger.server_sent += nbytes
        self.ledger.close_phase()

    def record_local_work(self, samples: dict[int, int], server_samples: int) -> None:
        """Training the server does not see (CL's data centre, FL's clients), for the virtual clock:
        it joins the phase in progress, which the round's model exchange closes."""
        self.ledger.add_work(samples, server_samples)

    def receive_raw_data(self, client_id: int, nbytes: int) -> None:
        """CL: a client uploads its raw partition once, before training (the cost CL pays for privacy)."""
        self.ledger.bytes_up[client_id] += nbytes

    def state(self) -> dict:
        """The top model(s) and optimizer state(s), copied: the server's part of a checkpoint."""
        return {
            "tops": [weights_copy(t) for t in self.tops],
            "optimizers": [copy.deepcopy(o.state_dict()) for o in self.optimizers],
        }

    def load_state(self, state: dict) -> None:
        """Return to a checkpoint taken at the end of an epoch; the epoch's byte counts restart."""
        for top, optimizer, top_state, optimizer_state in zip(
            self.tops, self.optimizers, state["tops"], state["optimizers"], strict=True
        ):
            top.load_state_dict(top_state)
            load_optimizer_state(optimizer, optimizer_state)
        self.ledger = CommLedger(self.ledger.num_clients)

    def top_state(self) -> dict[str, torch.Tensor] | None:
        """The (first) top model's weights; None where the server holds none (CL, FL)."""
        return weights_copy(self.top) if self.tops else None

    def set_epoch_lr(self, epoch: int) -> None:
        """The server's learning rate for `epoch`: SplitLr's, times --lr-schedule's multiplier."""
        self._lr = self.config.server_lr * self.schedule.multiplier(epoch, self.config.epochs)

    def pop_epoch_comm(self) -> CommLedger:
        """The epoch's byte counts; the ledger starts afresh."""
        self.ledger.close_phase()  # work no exchange closed (CL's epoch)
        done, self.ledger = self.ledger, CommLedger(self.ledger.num_clients)
        return done
