"""How an epoch trains: a schedule is a short loop over the engine's primitives.

The engine (execution/engine.py, over either executor) owns the client shards
and the server and offers a few primitives: the split step loop, SSL's
hand-over of bottom weights, local training of whole models, and two generic
calls, `on_clients` and `on_server`, that run a function of the method's own
on every shard or on the server. A schedule strings them together; the engine
never asks which schedule it runs. Parallel, sequential and local are the three
built-in schedules, made through the same API a user's method has
(methods/usl.py builds its own).

A schedule also says what its epoch costs: iterations (for progress),
FLOPs per client and server, and which model evaluation scores.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

RunSettings = Any  # the run's RunConfig: methods/ reads its fields and never imports it


class Engine(Protocol):
    """What a schedule may call (implemented by execution.engine.Engine)."""

    config: RunSettings

    def split_steps(self, epoch: int, clients: list[int] | None, done_before: int = 0) -> tuple[float, int]:
        """steps_per_epoch split steps (SPEC section 2) for `clients` (None: all);
        returns (sum of per-sample losses, samples)."""

    def split_step(self, epoch: int, step: int, clients: list[int]) -> Any:
        """One split step (forward, server step, apply) of `clients` on their batch `step`,
        waited for; returns its StepMetrics (loss, samples)."""

    def taking_part(self, epoch: int, step: int, clients: list[int] | None) -> list[int] | None:
        """Of `clients` (None: all), those present at (epoch, step); None where nobody is ever absent."""

    @property
    def timing(self) -> Any:
        """The virtual clock's inputs (systems.clock.Timing)."""

    def report_clock(self, clock: Any) -> None:
        """The epoch on the virtual clock, from a schedule whose clients are not in lockstep (asl)."""

    def hand_over(self, from_client: int, to_client: int) -> None:
        """SSL: `from_client`'s bottom weights go through the server to `to_client`."""

    def train_local(self, epoch: int, passes: int, central: bool = False) -> tuple[float, int]:
        """Every shard trains its clients' whole models on their own data, `passes` times over it
        (`central`: the one "client" is the data centre, whose work the virtual clock times at
        the server's speed)."""

    def upload_raw_data(self) -> None:
        """CL: every client's raw partition goes to the data centre (counted once)."""

    def on_clients(self, fn: Callable[..., Any], *args: Any, clients: list[int] | None = None) -> list[Any]:
        """fn(shard, *args) on every shard holding one of `clients` (None: all); the results
        (references under Ray), in shard order."""

    def on_shards(
        self, fn: Callable[..., Any], args: list[tuple], clients: list[int] | None = None
    ) -> list[Any]:
        """fn(shard, *args[k]) on the k-th shard holding one of `clients` (None: all)."""

    def on_server(self, fn: Callable[..., Any], *args: Any, num_returns: int = 1) -> Any:
        """fn(server, *args) on the server; a reference under Ray."""

    def average_client_models(self) -> None:
        """FedAvg of the clients' models, weighted by partition size; every client takes the mean."""

    def average_server_copies(self) -> None:
        """FedAvg of the server's top-model copies (SFLv1)."""

    def get(self, value: Any) -> Any: ...

    def progress(self, epoch: int, iterations: int, loss: float) -> None: ...


class FlopCounts(Protocol):
    """FLOPs of one training step at batch size b (measure/flops.py): forward, loss gradient,
    backward; `step` for any module a method builds, with or without a gradient for its input."""

    parts: Any  # nodes.models.ModelParts of the run

    def bottom(self, batch: int) -> int: ...
    def top(self, batch: int) -> int: ...
    def whole(self, batch: int) -> int: ...
    def step(self, module: Any, input_shape: tuple[int, ...], batch: int, input_grad: bool) -> int: ...


def mean_loss(loss_sum: float, samples: int) -> float:
    """The epoch's mean training loss per sample; nan when nobody trained (every client absent)."""
    return loss_sum / samples if samples else float("nan")


class Schedule:
    """A schedule's interface, with PSL's answers where one fits most schedules."""

    groupable = False  # every client of a shard steps together with a batch of b (nodes/grouped.py)
    # Which absences it handles (systems/presence.py has the table): settings it accepts.
    absences: frozenset[str] = frozenset()

    def train_epoch(self, engine: Engine, epoch: int) -> float:
        """Train one epoch; return its mean training loss per sample."""
        raise NotImplementedError

    def iterations_per_epoch(self, config: RunSettings) -> int:
        """Optimizer steps of the whole system in one epoch, as a progress bar counts them."""
        return config.steps_per_epoch

    def epoch_flops(self, config: RunSettings, flops: FlopCounts) -> tuple[int, int]:
        """(FLOPs of one client, FLOPs of the server) in one epoch."""
        raise NotImplementedError

    def epoch_samples(self, config: RunSettings) -> tuple[float, float]:
        """(samples one client trains on, client samples the server computes on) in one epoch:
        with `epoch_flops`, the FLOPs per sample the virtual clock charges (measure/timing.py)."""
        if config.spec.batch_plan is not None:  # a client's mean share of the global batches
            per_client = config.steps_per_epoch * config.global_batch_size / config.clients
        else:
            per_client = config.steps_per_epoch * config.batch_size
        return per_client, per_client * config.clients

    def scorer(self, config: RunSettings) -> int | None:
        """None: every client scores its own model with the server's; else the one client whose
        model is the run's model (CL's, FL's average, SSL's last turn)."""
        return None

    def partitions(self, partitions: list[Any]) -> list[Any]:
        """The partitions the shards hold, one per training client."""
        return partitions

    def training_clients(self, config: RunSettings) -> int:
        """How many clients the shards hold (len of `partitions`)."""
        return config.clients


class Parallel(Schedule):
    """PSL: every client forwards a batch, the server steps once on all of them, every client
    applies what it receives; steps_per_epoch times."""

    groupable = True
    absences = frozenset({"clients_per_round", "dropout", "deadline_s"})

    def train_epoch(self, engine: Engine, epoch: int) -> float:
        loss_sum, samples = engine.split_steps(epoch, None)
        return mean_loss(loss_sum, samples)

    def epoch_flops(self, config: RunSettings, flops: FlopCounts) -> tuple[int, int]:
        spec, steps = config.spec, config.steps_per_epoch
        server = steps * spec.server_flops(flops.top, config)
        if spec.batch_plan is not None:  # clients' batches vary; the models' FLOPs are linear in the batch
            samples = steps * config.global_batch_size / config.clients  # a client's mean share
            return round(samples * flops.bottom(1)), server
        return steps * flops.bottom(config.batch_size), server


class Sequential(Schedule):
    """SSL: clients take turns, one local epoch each with the server; each starts from the
    bottom weights of the client before it (the last client of the previous epoch, for client 0).
    With --dropout a client skips the steps of its turn it misses."""

    absences = frozenset({"dropout"})

    def train_epoch(self, engine: Engine, epoch: int) -> float:
        clients, loss_sum, samples = engine.config.clients, 0.0, 0
        for client in range(clients):
            previous = (client - 1) % clients
            if previous != client and (epoch > 0 or client > 0):
                engine.hand_over(previous, client)
            done = client * engine.config.steps_per_epoch
            turn_loss, turn_samples = engine.split_steps(epoch, [client], done_before=done)
            loss_sum, samples = loss_sum + turn_loss, samples + turn_samples
        return mean_loss(loss_sum, samples)

    def iterations_per_epoch(self, config: RunSettings) -> int:
        return config.clients * config.steps_per_epoch

    def epoch_flops(self, config: RunSettings, flops: FlopCounts) -> tuple[int, int]:
        steps, b = config.steps_per_epoch, config.batch_size
        return steps * flops.bottom(b), config.clients * steps * flops.top(b)

    def scorer(self, config: RunSettings) -> int | None:
        return config.clients - 1  # the bottom of the last turn is the current model


class Local(Schedule):
    """CL and FL: whole models trained on local data, shards in parallel (`local_epochs` passes
    each). `pooled`: one "client", the data centre, holds every partition (CL)."""

    def __init__(self, pooled: bool = False) -> None:
        self.pooled = pooled
        # FL: K clients a round, or a client missing a round; CL's data centre is always there.
        self.absences = frozenset() if pooled else frozenset({"clients_per_round", "dropout"})

    def train_epoch(self, engine: Engine, epoch: int) -> float:
        if self.pooled and epoch == 0:  # the clients' raw data goes to the data centre, once
            engine.upload_raw_data()
        passes = 1 if self.pooled else engine.config.local_epochs  # FL's option (methods/baselines.py)
        loss_sum, samples = engine.train_local(epoch, passes, central=self.pooled)
        engine.progress(epoch, self.iterations_per_epoch(engine.config), mean_loss(loss_sum, samples))
        return mean_loss(loss_sum, samples)

    def iterations_per_epoch(self, config: RunSettings) -> int:
        if self.pooled:  # one model, batches of b over the union of the partitions
            return config.clients * config.samples_per_client // config.batch_size
        return config.local_epochs * config.steps_per_epoch

    def epoch_flops(self, config: RunSettings, flops: FlopCounts) -> tuple[int, int]:
        whole = flops.whole(config.batch_size)
        if self.pooled:  # CL: the clients compute nothing; one model trains on all the data
            return 0, self.iterations_per_epoch(config) * whole
        return config.local_epochs * config.steps_per_epoch * whole, 0  # averaging weights: negligible

    def epoch_samples(self, config: RunSettings) -> tuple[float, float]:
        trained = self.iterations_per_epoch(config) * config.batch_size
        return (0.0, trained) if self.pooled else (trained, 0.0)

    def scorer(self, config: RunSettings) -> int | None:
        return 0  # CL's one model; FL's average, which every client holds

    def training_clients(self, config: RunSettings) -> int:
        return 1 if self.pooled else config.clients

    def partitions(self, partitions: list[Any]) -> list[Any]:
        if not self.pooled:
            return partitions
        from sglr_ray.data import ImageSet  # below methods/ in the layers: data imports nothing of ours

        return [ImageSet.union(partitions)]


PARALLEL, SEQUENTIAL, LOCAL, POOLED = Parallel(), Sequential(), Local(), Local(pooled=True)
