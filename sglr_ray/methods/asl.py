"""ASL, asynchronous split learning, on the virtual clock. SPEC section 2, "Methods that change
control flow", and section 4.

No barrier: each client forwards a batch, uploads it, and starts its next batch
when its gradient comes back. The server takes uploads one at a time in the
order they arrive on the virtual clock (systems/clock.py: a client's forward
share of its FLOPs, then its upload, at its own speed and link), steps the top
model on each with the model as it is then, and answers that client alone. A
fast client therefore makes many server steps while a slow one makes few.

Staleness of a step = the server steps taken between the moment the client
sent its upload and the step that served it (0 when the server was idle and
no one else arrived in the meantime). The clients table records its mean per
client; `sim_time_s` is when the last client's last gradient was applied.

The order is decided before each step runs, so the bytes are the ones the
ledger will count, predicted per sample (measure/timing.py; a test holds the
two equal). Each client makes its steps_per_epoch steps an epoch. With
--dropout a client skips the batches it misses; with --clients-per-round only
the epoch's K clients take part. There is no barrier to hold a deadline at, so
--deadline-s is refused. SplitLr (--alpha) applies; with one client a step
there is nothing to average, so phi is fixed at 0.
"""

from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass, field

from sglr_ray.methods.base import Method, RunConfig
from sglr_ray.methods.schedules import Engine, Parallel, mean_loss
from sglr_ray.systems.clock import EpochClock, Timing, download_s, server_s, upload_s


@dataclass(order=True)
class Upload:
    """A client's upload on its way: ordered by arrival, then client id."""

    arrives_s: float
    client: int
    step: int = field(compare=False)
    sent_s: float = field(compare=False)
    forward_up_s: float = field(compare=False)  # the client's busy time until it arrives


@dataclass
class AsyncClock:
    """The epoch's server and clients on the virtual clock, advanced one served upload at a time."""

    timing: Timing
    batch: int
    clients: int
    server_free_s: float = 0.0
    served_s: list[float] = field(default_factory=list)  # when each server step ended (ascending)
    busy_s: list[float] = field(default_factory=list)
    staleness: list[list[int]] = field(default_factory=list)
    finished_s: float = 0.0

    def __post_init__(self) -> None:
        self.busy_s = [0.0] * self.clients
        self.staleness = [[] for _ in range(self.clients)]

    def upload(self, client: int, step: int, ready_s: float) -> Upload:
        """Client `client` starts batch `step` at `ready_s`: when it sends, and when that arrives."""
        t, b = self.timing, self.batch
        forward = upload_s(t, client, b, 0)
        total = upload_s(t, client, b, b * t.up_bytes_per_sample)
        return Upload(ready_s + total, client, step, ready_s + forward, total)

    def serve(self, upload: Upload) -> float:
        """The server takes `upload` when it is free; returns when the client has applied its gradient."""
        t, b, c = self.timing, self.batch, upload.client
        start = max(upload.arrives_s, self.server_free_s)
        # steps that ended after the client sent and no later than this one began
        self.staleness[c].append(len(self.served_s) - bisect.bisect_right(self.served_s, upload.sent_s))
        self.server_free_s = start + server_s(t, b, b * t.down_bytes_per_sample)
        self.served_s.append(self.server_free_s)
        back = download_s(t, c, b, b * t.down_bytes_per_sample)
        self.busy_s[c] += upload.forward_up_s + back
        done = self.server_free_s + back
        self.finished_s = max(self.finished_s, done)
        return done

    def epoch_clock(self) -> EpochClock:
        steps = [len(s) for s in self.staleness]
        mean = [sum(s) / len(s) if s else None for s in self.staleness]
        return EpochClock(self.finished_s, self.busy_s, steps, [0] * self.clients, mean)


class AsyncSchedule(Parallel):
    """Uploads served one at a time in arrival order; no client waits for another."""

    groupable = False
    absences = frozenset({"clients_per_round", "dropout"})

    def train_epoch(self, engine: Engine, epoch: int) -> float:
        config, steps = engine.config, engine.config.steps_per_epoch
        clock = AsyncClock(engine.timing, config.batch_size, config.clients)
        arriving: list[Upload] = []

        def start(client: int, step: int, ready_s: float) -> None:
            while step < steps and not engine.taking_part(epoch, step, [client]):
                step += 1  # a batch it misses
            if step < steps:
                heapq.heappush(arriving, clock.upload(client, step, ready_s))

        for client in engine.taking_part(epoch, 0, None) or range(config.clients):
            start(client, 0, 0.0)
        loss_sum, samples, served = 0.0, 0, 0
        while arriving:
            upload = heapq.heappop(arriving)
            metrics = engine.split_step(epoch, upload.step, [upload.client])
            loss_sum, samples, served = (
                loss_sum + metrics.loss * metrics.samples,
                samples + metrics.samples,
                served + 1,
            )
            engine.progress(epoch, served, mean_loss(loss_sum, samples))
            start(upload.client, upload.step + 1, clock.serve(upload))
        engine.report_clock(clock.epoch_clock())
        return mean_loss(loss_sum, samples)

    def iterations_per_epoch(self, config: RunConfig) -> int:
        return config.clients * config.steps_per_epoch  # one server step per client batch

    def epoch_flops(self, config: RunConfig, flops) -> tuple[int, int]:
        steps, b = config.steps_per_epoch, config.batch_size
        return steps * flops.bottom(b), config.clients * steps * flops.top(b)


asl = Method(
    "asl", "asynchronous split learning: the server serves uploads in their arrival order on the "
    "virtual clock; clients never wait for one another", fixed={"phi": 0.0}, defaults={"alpha": 0.0},
    schedule=AsyncSchedule(),
)  # fmt: skip
