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
from sglr_ray.nodes.client import ClientShard
from sglr_ray.nodes.models import bottom_state_nbytes
from sglr_ray.nodes.server import Server

# Steps the driver lets run ahead before it waits for a step's metrics. Actor
# calls run in submission order, so this is safe; it only bounds memory.
MAX_STEPS_IN_FLIGHT = 4


class Engine:
    """methods.schedules.Engine over an executor; `progress` is told of settled iterations."""

    def __init__(self, ex: Executor, config: RunConfig, progress: ProgressFn | None = None) -> None:
        self.ex, self.config, self._progress = ex, config, progress

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

    def split_steps(self, epoch: int, clients: list[int] | None, done_before: int = 0) -> tuple[float, int]:
        """Steps 1-6 of SPEC section 2, `steps_per_epoch` times, for `clients` (None: all).

        Returns (sum of per-sample losses, samples). `done_before` counts iterations
        of earlier turns in this epoch (SSL), for the progress callback. A shard applies
        a step's gradients and forwards the next batch in one call, and up to
        MAX_STEPS_IN_FLIGHT steps run ahead of the metrics the driver reads.
        """
        ex, participants = self.ex, self.participants(clients)
        in_flight: deque = deque()
        totals = [0.0, 0, 0]  # loss sum, samples, settled steps

        def settle_oldest() -> None:
            metrics_ref, apply_refs = in_flight.popleft()
            metrics = ex.get(metrics_ref)
            ex.get(apply_refs)  # the last step's applies: surfaces a client-side failure there
            totals[0] += metrics.loss * metrics.samples
            totals[1] += metrics.samples
            totals[2] += 1
            self.progress(epoch, done_before + totals[2], totals[0] / totals[1])

        steps = self.config.steps_per_epoch
        uploads = [ex.call(shard, ClientShard.forward_batch, epoch, 0, ids) for shard, ids in participants]
        for step in range(steps):
            metrics, averaged, *deliveries = ex.call(
                ex.server, Server.train_step, epoch, step, *uploads, num_returns=len(uploads) + 2
            )
            pairs = list(zip(participants, deliveries, strict=True))
            if step + 1 < steps:  # a shard applies this step's gradients and forwards the next batch
                uploads = [
                    ex.call(shard, ClientShard.apply_then_forward, d, averaged, epoch, step + 1, ids)
                    for (shard, ids), d in pairs
                ]
                applies = []  # a failure there fails the next server step, whose metrics are fetched
            else:
                applies = [ex.call(shard, ClientShard.apply_gradient, d, averaged) for (shard, _), d in pairs]
            in_flight.append((metrics, applies))
            if len(in_flight) > MAX_STEPS_IN_FLIGHT:
                settle_oldest()
        while in_flight:
            settle_oldest()
        return totals[0], totals[1]

    def hand_over(self, from_client: int, to_client: int) -> None:
        """SSL: a reference to the bottom weights goes shard to shard; the server counts the bytes."""
        ex = self.ex
        weights = ex.call(self.shard_of(from_client), ClientShard.model_state, from_client)
        ex.call(self.shard_of(to_client), ClientShard.load_model_state, weights, [to_client])
        nbytes = bottom_state_nbytes(self.config.model_parts)
        ex.call(ex.server, Server.relay_model, from_client, to_client, nbytes)

    def train_local(self, epoch: int) -> tuple[float, int]:
        per_shard = self.ex.get(
            [self.ex.call(shard, ClientShard.train_local, epoch) for shard in self.ex.shards]
        )
        loss_sum, samples = map(sum, zip(*per_shard, strict=True))
        return loss_sum, samples

    def upload_raw_data(self) -> None:
        for client, nbytes in enumerate(self.ex.partition_nbytes):
            self.ex.call(self.ex.server, Server.receive_raw_data, client, nbytes)

    def average_client_models(self) -> None:
        """FedAvg: each shard uploads sum_i n_i * w_i over its clients; the mean goes back to every
        shard and is where every client starts the next round."""
        ex = self.ex
        uploads = [ex.call(shard, ClientShard.upload_models) for shard in ex.shards]
        mean_state = ex.call(ex.server, Server.average_client_models, *uploads)
        ex.get([ex.call(shard, ClientShard.load_model_state, mean_state) for shard in ex.shards])

    def average_server_copies(self) -> None:
        self.ex.get(self.ex.call(self.ex.server, Server.average_server_copies))
