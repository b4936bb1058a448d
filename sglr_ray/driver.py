"""The driver: one loop for every split method and both executors.

An executor owns the client shards and the server and knows how to call them:
the local one calls methods directly and returns values, the Ray one calls
actor methods and returns object references. The loop below never looks at a
tensor, so under Ray it handles references and small metrics only, and
activations travel from client actors to the server actor and back directly.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from statistics import fmean
from typing import Any, Protocol

from sglr_ray.config import RunConfig, check_writable
from sglr_ray.data import PreparedData, prepare_data, to_model_input
from sglr_ray.energy import EnergyMeter, open_meter
from sglr_ray.flops import EpochFlops, epoch_flops
from sglr_ray.models import SPLIT_MODELS
from sglr_ray.results import ResultsWriter, make_run_id
from sglr_ray.server import CommLedger

log = logging.getLogger(__name__)

# Steps the driver lets run ahead before it waits for a step's metrics. Actor
# calls run in submission order, so this is safe; it only bounds memory.
MAX_STEPS_IN_FLIGHT = 4


class Executor(Protocol):
    name: str
    shards: list[Any]  # ClientShard objects or their actor handles
    server: Any  # Server object or its actor handle
    clients_per_shard: int
    shard_client_ids: list[list[int]]

    def call(self, target: Any, method: str, *args: Any, num_returns: int = 1) -> Any: ...
    def get(self, value: Any) -> Any: ...
    def close(self) -> None: ...


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    val_acc: dict[int, float]
    test_acc: dict[int, float] | None
    comm: CommLedger
    averaging_on: bool
    train_wall_s: float
    eval_wall_s: float
    flops: EpochFlops
    energy_j: float | None  # measured over the training part of the epoch; None without a meter


ProgressFn = Callable[[int, int, float], None]  # (epoch, steps done, running loss)


def train_epoch(ex: Executor, config: RunConfig, epoch: int, progress: ProgressFn | None = None) -> float:
    """Steps 1-6 of SPEC section 2, `steps_per_epoch` times. Returns the mean training loss."""
    in_flight: deque = deque()
    loss_sum, samples = 0.0, 0

    def settle_oldest() -> None:
        nonlocal loss_sum, samples
        metrics_ref, apply_refs = in_flight.popleft()
        metrics = ex.get(metrics_ref)
        ex.get(apply_refs)  # surfaces a client-side failure at the step it happened
        loss_sum, samples = loss_sum + metrics.loss * metrics.samples, samples + metrics.samples
        if progress:
            progress(epoch, samples // (config.batch_size * config.clients), loss_sum / samples)

    for step in range(config.steps_per_epoch):
        uploads = [ex.call(shard, "forward_batch", epoch, step) for shard in ex.shards]
        metrics, averaged, *deliveries = ex.call(
            ex.server, "train_step", epoch, step, *uploads, num_returns=len(ex.shards) + 2
        )
        applies = [
            ex.call(s, "apply_gradient", d, averaged) for s, d in zip(ex.shards, deliveries, strict=True)
        ]
        in_flight.append((metrics, applies))
        if len(in_flight) > MAX_STEPS_IN_FLIGHT:
            settle_oldest()
    while in_flight:
        settle_oldest()
    return loss_sum / samples


def average_client_models(ex: Executor) -> None:
    """SFL's end-of-epoch FedAvg of the bottom models, weighted by partition size."""
    uploads = [ex.call(shard, "upload_models") for shard in ex.shards]
    mean_state = ex.call(ex.server, "average_client_models", *uploads)
    ex.get([ex.call(shard, "load_bottom_state", mean_state) for shard in ex.shards])


def evaluate(ex: Executor, top_state: Any, split: str) -> dict[int, float]:
    """Accuracy of every client's bottom model with the top model `top_state`, by client_id."""
    per_shard = ex.get([ex.call(shard, "evaluate", top_state, split) for shard in ex.shards])
    return {client_id: acc for shard_acc in per_shard for client_id, acc in shard_acc.items()}


def run_epoch(
    ex: Executor, config: RunConfig, epoch: int, progress: ProgressFn | None, meter: EnergyMeter
) -> EpochResult:
    started, energy_before = time.perf_counter(), meter.read_j()
    averaging_on = ex.get(ex.call(ex.server, "averaging_on", epoch))
    train_loss = train_epoch(ex, config, epoch, progress)
    if config.preset.average_client_models:
        average_client_models(ex)
    comm = ex.get(ex.call(ex.server, "pop_epoch_comm"))
    trained, energy_after = time.perf_counter(), meter.read_j()
    top_state = ex.call(ex.server, "top_state")  # fetched once, sent to every shard
    val_acc = evaluate(ex, top_state, "val")
    last = epoch == config.epochs - 1
    test_acc = evaluate(ex, top_state, "test") if (last or config.test_each_epoch) else None
    return EpochResult(
        epoch, train_loss, val_acc, test_acc, comm, averaging_on,
        train_wall_s=trained - started, eval_wall_s=time.perf_counter() - trained,
        flops=epoch_flops(config),
        energy_j=None if energy_before is None else energy_after - energy_before,
    )  # fmt: skip


def attack_client(ex: Executor, config: RunConfig, data: PreparedData) -> tuple:
    """The honest-but-curious server's decoder attack on one client (SPEC section 4).

    The decoder trains on training images no client holds, against the
    client's frozen bottom model, then reconstructs the test images.
    Returns leakage.measure_leakage's (result, originals, reconstructions).
    """
    from sglr_ray import leakage

    client = config.leakage_client
    shard = next(s for s, ids in zip(ex.shards, ex.shard_client_ids, strict=True) if client in ids)
    bottom = SPLIT_MODELS[config.model].build_bottom()
    bottom.load_state_dict(ex.get(ex.call(shard, "bottom_state", client)))
    aux = to_model_input(data.spare.images[: config.leakage_aux_samples])
    targets = to_model_input(data.test.images)
    return leakage.measure_leakage(
        bottom, aux, targets, client, epochs=config.leakage_epochs, seed=config.seed
    )


def make_executor(config: RunConfig, data: Any, run_id: str) -> Executor:
    if config.executor == "local":
        from sglr_ray.local_executor import LocalExecutor

        return LocalExecutor(config, data, run_id)
    from sglr_ray.ray_executor import RayExecutor

    return RayExecutor(config, data, run_id)


@dataclass
class RunOutcome:
    run_id: str
    paths: dict[str, str]
    epochs: list[EpochResult]
    final_test_acc: float
    wall_s: float
    run_row: dict[str, Any]  # the row recorded in runs/<run_id>.parquet, run totals included


def run_experiment(
    config: RunConfig,
    progress: ProgressFn | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> RunOutcome:
    """Run one experiment end to end and record it under `config.out`.

    Results are rewritten after every epoch, so a crash loses at most the epoch
    in progress, and the run's status says how it ended.
    """
    started = time.perf_counter()
    check_writable(config.out)
    data = prepare_data(config)  # fails on a missing dataset before any Ray work
    run_id = config.run_id or make_run_id(config)
    meter = open_meter()
    writer = ResultsWriter(config.out, run_id, config, data.dataset, meter.source)
    ex = make_executor(config, data, run_id)
    results: list[EpochResult] = []
    try:
        writer.start(executor=ex.name, clients_per_actor=ex.clients_per_shard)
        for epoch in range(config.epochs):
            result = run_epoch(ex, config, epoch, progress, meter)
            results.append(result)
            writer.record_epoch(result, wall_s=time.perf_counter() - started)
            if on_epoch:
                on_epoch(result)
        if config.leakage:
            writer.record_leakage(*attack_client(ex, config, data))
        final = fmean(results[-1].test_acc.values())
        writer.finish("completed", final_test_acc=final, wall_s=time.perf_counter() - started)
    except BaseException:
        writer.finish("failed", final_test_acc=None, wall_s=time.perf_counter() - started)
        raise
    finally:
        ex.close()
    return RunOutcome(run_id, writer.paths, results, final, time.perf_counter() - started, writer.run_row)
