"""The engine's primitives, over either executor: what a method's schedule strings together.

An executor owns the client shards and the server and knows how to call them:
the local one calls methods directly and returns values, the Ray one calls
actor methods and returns object references. Nothing here looks at a tensor,
so under Ray the driver handles references and small metrics only, and
activations travel from client actors to the server actor and back directly.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from sglr_ray.config import RunConfig
from sglr_ray.epochs import Executor, ProgressFn
from sglr_ray.measure.timing import timing_for
from sglr_ray.nodes.client import ClientShard
from sglr_ray.nodes.local_shard import LocalShard
from sglr_ray.nodes.models import bottom_state_nbytes
from sglr_ray.nodes.server import Server
from sglr_ray.nodes.split_shard import SplitShard
from sglr_ray.systems.clock import EpochClock, Timing
from sglr_ray.systems.presence import is_present, miss_probability, round_clients

# Steps the driver lets run ahead before it waits for a step's metrics. Actor
# calls run in submission order, so this is safe; it only bounds memory.
MAX_STEPS_IN_FLIGHT = 4


class Engine:
    """methods.schedules.Engine over an executor; `progress` is told of settled iterations."""

    def __init__(self, ex: Executor, config: RunConfig, progress: ProgressFn | None = None) -> None:
        self.ex, self.config, self._progress = ex, config, progress
        self.clock: EpochClock | None = None  # set by a schedule that keeps its own time (report_clock)
        self.round: list[int] | None = None  # the epoch's clients where some are absent (None: all)

    @property
    def timing(self) -> Timing:
        """The virtual clock's inputs: profiles, FLOPs and bytes per sample (measure/timing.py)."""
        return timing_for(self.config)

    def report_clock(self, clock: EpochClock) -> None:
        """The epoch on the virtual clock, from a schedule whose clients do not move in lockstep
        (asl); other epochs are timed from the ledger's phases."""
        self.clock = clock

    def progress(self, epoch: int, iterations: int, loss: float) -> None:
        if self._progress:
            self._progress(epoch, iterations, loss)

    def get(self, value: Any) -> Any:
        return self.ex.get(value)

    def shard_of(self, client_id: int) -> Any:
        ex = self.ex
        return next(s for s, ids in zip(ex.shards, ex.shard_client_ids, strict=True) if client_id in ids)

    def participants(self, clients: list[int] | None) -> list[tuple[Any, list[int] | None]]:
        """(shard, its clients taking part; None = all) for `clients` (None: every client)."""
        ex = self.ex
        if clients is None:
            return [(shard, None) for shard in ex.shards]
        wanted = set(clients)
        chosen = [
            (shard, [c for c in ids if c in wanted])
            for shard, ids in zip(ex.shards, ex.shard_client_ids, strict=True)
        ]
        return [(shard, ids) for shard, ids in chosen if ids]

    def on_clients(self, fn: Callable[..., Any], *args: Any, clients: list[int] | None = None) -> list[Any]:
        """fn(shard, *args, client_ids) on every shard holding one of `clients` (None: all), where
        client_ids names the shard's clients taking part (None: all of them)."""
        return [self.ex.call(shard, fn, *args, ids) for shard, ids in self.participants(clients)]

    def on_shards(
        self, fn: Callable[..., Any], args: list[tuple], clients: list[int] | None = None
    ) -> list[Any]:
        """fn(shard, *args[k]) on the k-th shard holding one of `clients` (None: all)."""
        shards = self.participants(clients)
        return [self.ex.call(shard, fn, *a) for (shard, _), a in zip(shards, args, strict=True)]

    def on_server(self, fn: Callable[..., Any], *args: Any, num_returns: int = 1) -> Any:
        return self.ex.call(self.ex.server, fn, *args, num_returns=num_returns)

    @property
    def filters_clients(self) -> bool:
        """Whether some client may be absent from a step (--clients-per-round, --dropout, availability)."""
        config = self.config
        return bool(config.clients_per_round or config.dropout or not self.timing.profiles.always_available)

    def taking_part(self, epoch: int, step: int, clients: list[int] | None) -> list[int] | None:
        """Of `clients` (None: all), those taking part at (epoch, step): the epoch's round sample,
        less those who miss the step (systems/presence.py). None: no client is ever absent."""
        if not self.filters_clients:
            return clients
        config, available = self.config, self.timing.profiles.availability
        chosen = set(round_clients(config.seed, epoch, config.clients_per_round, config.clients))
        return [
            c
            for c in (range(config.clients) if clients is None else clients)
            if c in chosen
            and is_present(config.seed, c, epoch, step, miss_probability(config.dropout, available[c]))
        ]

    def split_steps(self, epoch: int, clients: list[int] | None, done_before: int = 0) -> tuple[float, int]:
        """Steps 1-6 of SPEC section 2, `steps_per_epoch` times, for `clients` (None: all) less
        those absent from a step (`taking_part`).

        Returns (sum of per-sample losses, samples). `done_before` counts iterations
        of earlier turns in this epoch (SSL), for the progress callback. A shard applies
        a step's gradients and forwards its next batch in one call, and up to
        MAX_STEPS_IN_FLIGHT steps run ahead of the metrics the driver reads.
        """
        ex, steps = self.ex, self.config.steps_per_epoch
        if self.filters_clients:
            self.round = round_clients(
                self.config.seed, epoch, self.config.clients_per_round, self.config.clients
            )
        fixed = None if self.filters_clients else self.participants(clients)

        def plan(step: int) -> list[tuple[Any, list[int] | None]]:
            if step >= steps:
                return []
            return fixed if fixed is not None else self.participants(self.taking_part(epoch, step, clients))

        in_flight: deque = deque()
        totals = [0.0, 0, 0]  # loss sum, samples, settled steps

        def settle_oldest() -> None:
            metrics_ref, apply_refs = in_flight.popleft()
            metrics = ex.get(metrics_ref)
            ex.get(apply_refs)  # the last step's applies: surfaces a client-side failure there
            totals[0] += metrics.loss * metrics.samples
            totals[1] += metrics.samples
            totals[2] += 1
            self.progress(epoch, done_before + totals[2], totals[0] / max(1, totals[1]))

        current = plan(0)
        uploads = [ex.call(shard, SplitShard.forward_batch, epoch, 0, ids) for shard, ids in current]
        for step in range(steps):
            upcoming = plan(step + 1)
            if current:
                metrics, averaged, *deliveries = ex.call(
                    ex.server, Server.train_step, epoch, step, *uploads, num_returns=len(uploads) + 2
                )
                uploads, applies = self._apply_and_forward(
                    current, deliveries, averaged, upcoming, epoch, step + 1
                )
                in_flight.append((metrics, applies))
            else:  # every client absent: no server step
                uploads = [
                    ex.call(shard, SplitShard.forward_batch, epoch, step + 1, ids) for shard, ids in upcoming
                ]
            current = upcoming
            if len(in_flight) > MAX_STEPS_IN_FLIGHT:
                settle_oldest()
        while in_flight:
            settle_oldest()
        return totals[0], totals[1]

    def _apply_and_forward(
        self, current: list, deliveries: list, averaged: Any, upcoming: list, epoch: int, next_step: int
    ) -> tuple[list[Any], list[Any]]:
        """Each shard of this step applies what it received and, where it has clients in the next
        step, forwards their batches in the same call; shards new to the next step only forward.
        Returns (the next step's uploads in shard order, the apply calls nothing else waits on)."""
        ex = self.ex
        following = {id(shard): ids for shard, ids in upcoming}
        forwarded, applies = {}, []
        for (shard, _), delivery in zip(current, deliveries, strict=True):
            if id(shard) in following:
                forwarded[id(shard)] = ex.call(
                    shard,
                    SplitShard.apply_then_forward,
                    delivery,
                    averaged,
                    epoch,
                    next_step,
                    following[id(shard)],
                )
            else:
                applies.append(ex.call(shard, SplitShard.apply_gradient, delivery, averaged))
        uploads = [
            forwarded[id(shard)]
            if id(shard) in forwarded
            else ex.call(shard, SplitShard.forward_batch, epoch, next_step, ids)
            for shard, ids in upcoming
        ]
        return uploads, applies

    def split_step(self, epoch: int, step: int, clients: list[int]) -> Any:
        """One split step of `clients` on their batch `step`, waited for: its StepMetrics. For a
        schedule that decides each step from the last (asl); `split_steps` pipelines instead."""
        ex, parts = self.ex, self.participants(clients)
        uploads = [ex.call(shard, SplitShard.forward_batch, epoch, step, ids) for shard, ids in parts]
        metrics, averaged, *deliveries = ex.call(
            ex.server, Server.train_step, epoch, step, *uploads, num_returns=len(uploads) + 2
        )
        pairs = zip(parts, deliveries, strict=True)
        ex.get([ex.call(shard, SplitShard.apply_gradient, d, averaged) for (shard, _), d in pairs])
        return ex.get(metrics)

    def hand_over(self, from_client: int, to_client: int) -> None:
        """SSL: a reference to the bottom weights goes shard to shard; the server counts the bytes."""
        ex = self.ex
        weights = ex.call(self.shard_of(from_client), ClientShard.model_state, from_client)
        ex.call(self.shard_of(to_client), ClientShard.load_model_state, weights, [to_client])
        nbytes = bottom_state_nbytes(self.config.model_parts)
        ex.call(ex.server, Server.relay_model, from_client, to_client, nbytes)

    def train_local(self, epoch: int, passes: int, central: bool = False) -> tuple[float, int]:
        """Every shard trains its clients' whole models (those taking part in the round: FL's
        clients miss or join whole rounds); the server's ledger is told the samples trained,
        for the virtual clock (at the server's speed where `central`: CL's data centre)."""
        ex, chosen = self.ex, self.taking_part(epoch, 0, None)
        self.round = chosen
        parts = self.participants(chosen)
        per_shard = ex.get(
            [ex.call(shard, LocalShard.train_local, epoch, passes, ids) for shard, ids in parts]
        )
        loss_sum, samples = (sum(v) for v in zip(*per_shard, strict=True)) if per_shard else (0.0, 0)
        trained = self.config.iterations_per_epoch * self.config.batch_size  # per client (CL: in all)
        clients = [c for ids in ex.shard_client_ids for c in ids] if chosen is None else chosen
        work = ({}, trained) if central else (dict.fromkeys(clients, trained), 0)
        ex.call(ex.server, Server.record_local_work, *work)
        return loss_sum, samples

    def upload_raw_data(self) -> None:
        for client, nbytes in enumerate(self.ex.partition_nbytes):
            self.ex.call(self.ex.server, Server.receive_raw_data, client, nbytes)

    def average_client_models(self) -> None:
        """FedAvg: each shard uploads sum_i n_i * w_i over its clients in the round (all, or
        `round`); the mean goes back to every shard and is where every client starts the next."""
        ex = self.ex
        parts = self.participants(self.round)
        if not parts:  # nobody took part in this round: nothing to average
            return
        uploads = [
            ex.call(shard, ClientShard.upload_models, *([] if ids is None else [ids])) for shard, ids in parts
        ]
        mean_state = ex.call(ex.server, Server.average_client_models, *uploads)
        ex.get([ex.call(shard, ClientShard.load_model_state, mean_state) for shard in ex.shards])

    def average_server_copies(self) -> None:
        self.ex.get(self.ex.call(self.ex.server, Server.average_server_copies))
