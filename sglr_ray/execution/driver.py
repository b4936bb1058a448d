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
from typing import Any, Protocol

from sglr_ray.config import RunConfig, check_writable
from sglr_ray.data import PreparedData, prepare_data, to_model_input
from sglr_ray.errors import ActorLostError
from sglr_ray.execution import checkpoint, interrupt
from sglr_ray.measure.energy import EnergyMeter, open_meter
from sglr_ray.measure.flops import EpochFlops, epoch_flops
from sglr_ray.nodes.client import ClientShard
from sglr_ray.nodes.models import SPLIT_MODELS, bottom_state_nbytes
from sglr_ray.nodes.server import CommLedger, Server
from sglr_ray.results.writer import ResultsWriter, check_run_identity, make_run_id

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
    partition_nbytes: list[int]  # raw bytes of each client's partition (CL uploads them once)

    # `method` is a function of the target's class (ClientShard.forward_batch): a reference, not a name.
    def call(self, target: Any, method: Callable[..., Any], *args: Any, num_returns: int = 1) -> Any: ...
    def get(self, value: Any) -> Any: ...
    def recover(self) -> None: ...  # wait until restarted actors answer again
    def close(self) -> None: ...


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    val: Evaluation
    test: Evaluation | None  # scored after the last epoch (every epoch with --test-each-epoch)
    comm: CommLedger
    averaging_on: bool  # split-layer gradients were averaged in at least one step
    train_wall_s: float
    eval_wall_s: float
    flops: EpochFlops
    energy_j: float | None  # measured over the training part of the epoch; None without a meter
    restarts: int = 0  # times the epoch was replayed after an actor died


ProgressFn = Callable[[int, int, float], None]  # (epoch, iterations done, running loss)
Participants = list[tuple[Any, list[int] | None]]  # (shard, its clients taking part, None = all)


def train_steps(
    ex: Executor,
    config: RunConfig,
    epoch: int,
    participants: Participants,
    progress: ProgressFn | None = None,
    done_before: int = 0,
) -> tuple[float, int]:
    """Steps 1-6 of SPEC section 2, `steps_per_epoch` times, for the participating clients.

    Returns (sum of per-sample losses, samples). `done_before` counts iterations
    of earlier turns in this epoch (SSL), for the progress callback.
    """
    in_flight: deque = deque()
    loss_sum, samples, settled = 0.0, 0, 0

    def settle_oldest() -> None:
        nonlocal loss_sum, samples, settled
        metrics_ref, apply_refs = in_flight.popleft()
        metrics = ex.get(metrics_ref)
        ex.get(apply_refs)  # the last step's applies: surfaces a client-side failure there
        loss_sum, samples = loss_sum + metrics.loss * metrics.samples, samples + metrics.samples
        settled += 1
        if progress:
            progress(epoch, done_before + settled, loss_sum / samples)

    steps = config.steps_per_epoch
    uploads = [ex.call(shard, ClientShard.forward_batch, epoch, 0, ids) for shard, ids in participants]
    for step in range(steps):
        metrics, averaged, *deliveries = ex.call(
            ex.server, Server.train_step, epoch, step, *uploads, num_returns=len(uploads) + 2
        )
        if step + 1 < steps:  # a shard applies this step's gradients and forwards the next batch
            uploads = [
                ex.call(shard, ClientShard.apply_then_forward, d, averaged, epoch, step + 1, ids)
                for (shard, ids), d in zip(participants, deliveries, strict=True)
            ]
            applies = []  # a failure there fails the next server step, whose metrics are fetched
        else:
            applies = [
                ex.call(shard, ClientShard.apply_gradient, d, averaged)
                for (shard, _), d in zip(participants, deliveries, strict=True)
            ]
        in_flight.append((metrics, applies))
        if len(in_flight) > MAX_STEPS_IN_FLIGHT:
            settle_oldest()
    while in_flight:
        settle_oldest()
    return loss_sum, samples


def train_epoch(ex: Executor, config: RunConfig, epoch: int, progress: ProgressFn | None = None) -> float:
    """One epoch of the split engine (PSL, SLR, SGL, SGLR, SFL): every client steps together."""
    loss_sum, samples = train_steps(ex, config, epoch, [(shard, None) for shard in ex.shards], progress)
    return loss_sum / samples


def shard_of(ex: Executor, client_id: int) -> Any:
    return next(s for s, ids in zip(ex.shards, ex.shard_client_ids, strict=True) if client_id in ids)


def train_sequential_epoch(
    ex: Executor, config: RunConfig, epoch: int, progress: ProgressFn | None = None
) -> float:
    """SSL: clients take turns, one local epoch each with the server; each starts from the
    bottom weights of the client before it (the last client of the previous epoch, for client 0)."""
    nbytes = bottom_state_nbytes(config.model)
    loss_sum, samples = 0.0, 0
    for client in range(config.clients):
        previous = (client - 1) % config.clients
        if previous != client and (epoch > 0 or client > 0):  # a reference, shard to shard
            weights = ex.call(shard_of(ex, previous), ClientShard.model_state, previous)
            ex.call(shard_of(ex, client), ClientShard.load_model_state, weights, [client])
            ex.call(ex.server, Server.relay_model, previous, client, nbytes)
        turn = [(shard_of(ex, client), [client])]
        turn_loss, turn_samples = train_steps(
            ex, config, epoch, turn, progress, done_before=client * config.steps_per_epoch
        )
        loss_sum, samples = loss_sum + turn_loss, samples + turn_samples
    return loss_sum / samples


def train_local_epoch(
    ex: Executor, config: RunConfig, epoch: int, progress: ProgressFn | None = None
) -> float:
    """CL and FL: each shard trains its clients' whole models on their own data, shards in parallel.

    FL: a shard trains its clients one after another, each from the round's global model,
    and sums the results for `average_client_models` as it goes (ClientShard.train_local).
    """
    if config.spec.pooled_data and epoch == 0:  # the clients' raw data goes to the data centre, once
        for client, nbytes in enumerate(ex.partition_nbytes):
            ex.call(ex.server, Server.receive_raw_data, client, nbytes)
    per_shard = ex.get([ex.call(shard, ClientShard.train_local, epoch) for shard in ex.shards])
    loss_sum, samples = map(sum, zip(*per_shard, strict=True))
    if progress:
        progress(epoch, config.iterations_per_epoch, loss_sum / samples)
    return loss_sum / samples


def average_client_models(ex: Executor) -> None:
    """FedAvg of the clients' models (SFL: bottoms; FL: whole models), weighted by partition size.

    Each shard uploads sum_i n_i * w_i over its clients; the mean goes back to every shard
    and is where every client starts the next round (its optimizer afresh, under
    --client-optimizer-state reset).
    """
    uploads = [ex.call(shard, ClientShard.upload_models) for shard in ex.shards]
    mean_state = ex.call(ex.server, Server.average_client_models, *uploads)
    ex.get([ex.call(shard, ClientShard.load_model_state, mean_state) for shard in ex.shards])


@dataclass
class Evaluation:
    """One evaluation: top-1 accuracy over the whole subset, and (correct, scored) per client."""

    accuracy: float
    per_client: dict[int, tuple[int, int]]


def evaluate_models(ex: Executor, config: RunConfig, top_state: Any, split: str) -> Evaluation:
    """Score the evaluation subset `split` (SPEC section 2, Evaluation).

    The parallel split methods score every client's bottom model: on its own slice of
    the subset (default, cost independent of C) or on all of it (--eval-mode every).
    The baselines have one current model (CL's; FL's average, which every client
    holds; the bottom of SSL's last turn), scored once on the whole subset and
    recorded for every client.
    """
    spec = config.spec
    if spec.schedule == "parallel" and not spec.full_model:
        whole = config.eval_mode == "every"
        per_shard = ex.get(
            [ex.call(shard, ClientShard.evaluate, top_state, split, None, whole) for shard in ex.shards]
        )
        scores = {client_id: score for shard_scores in per_shard for client_id, score in shard_scores.items()}
        correct, scored = map(sum, zip(*scores.values(), strict=True))
        return Evaluation(correct / scored, scores)
    holder = 0 if spec.full_model else config.clients - 1
    score = ex.get(ex.call(shard_of(ex, holder), ClientShard.evaluate, top_state, split, [holder], True))[
        holder
    ]
    return Evaluation(score[0] / score[1], dict.fromkeys(range(config.clients), score))


# How each schedule (Method.schedule) trains an epoch.
TRAINERS = {"parallel": train_epoch, "sequential": train_sequential_epoch, "local": train_local_epoch}


def run_epoch(
    ex: Executor, config: RunConfig, epoch: int, progress: ProgressFn | None, meter: EnergyMeter
) -> EpochResult:
    spec = config.spec
    started, energy_before = time.perf_counter(), meter.read_j()
    train_loss = TRAINERS[spec.schedule](ex, config, epoch, progress)
    if spec.average_clients:
        average_client_models(ex)
    if spec.server_copies:
        ex.get(ex.call(ex.server, Server.average_server_copies))
    comm = ex.get(ex.call(ex.server, Server.pop_epoch_comm))
    trained, energy_after = time.perf_counter(), meter.read_j()
    # Fetched once, sent to every shard; the whole-model baselines need no server weights.
    top_state = None if spec.full_model else ex.call(ex.server, Server.top_state)
    val = evaluate_models(ex, config, top_state, "val")
    last = epoch == config.epochs - 1
    test = evaluate_models(ex, config, top_state, "test") if (last or config.test_each_epoch) else None
    return EpochResult(
        epoch, train_loss, val, test, comm,
        averaging_on=sum(comm.active_steps) > 0,  # some client received an averaged gradient
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
    from sglr_ray.measure import leakage

    client = config.leakage_client
    shard = shard_of(ex, client)
    bottom = SPLIT_MODELS[config.model].build_bottom()
    bottom.load_state_dict(ex.get(ex.call(shard, ClientShard.model_state, client)))
    aux = to_model_input(data.spare.images[: config.leakage_aux_samples])
    targets = to_model_input(data.test.images)
    return leakage.measure_leakage(
        bottom, aux, targets, client, epochs=config.leakage_epochs, seed=config.seed
    )


def make_executor(config: RunConfig, data: Any, run_id: str) -> Executor:
    if config.executor == "local":
        from sglr_ray.execution.local import LocalExecutor

        return LocalExecutor(config, data, run_id)
    from sglr_ray.execution.ray_actors import RayExecutor

    return RayExecutor(config, data, run_id)


@dataclass
class RunOutcome:
    run_id: str
    paths: dict[str, str]
    epochs: list[EpochResult]  # the epochs this invocation ran (after the checkpoint, when resumed)
    final_test_acc: float
    wall_s: float
    run_row: dict[str, Any]  # the row recorded in runs/<run_id>.parquet, run totals included


def run_epoch_with_recovery(
    ex: Executor,
    config: RunConfig,
    epoch: int,
    progress: ProgressFn | None,
    meter: EnergyMeter,
    snapshot: checkpoint.Snapshot,
) -> EpochResult:
    """run_epoch, replayed from `snapshot` (the end of the previous epoch) when an actor dies."""
    restarts = 0
    while True:
        try:
            result = run_epoch(ex, config, epoch, progress, meter)
            result.restarts = restarts
            return result
        except ActorLostError as lost:
            if restarts == config.max_restarts:
                raise
            restarts += 1
            log.warning("epoch %d: %s; replaying it from the end of epoch %d", epoch, lost, snapshot.epoch)
            ex.recover()
            checkpoint.restore(ex, snapshot)


def run_experiment(
    config: RunConfig,
    progress: ProgressFn | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
    resume: bool = False,
) -> RunOutcome:
    """Run one experiment end to end and record it under `config.out`.

    Results are rewritten after every epoch, so a crash loses at most the epoch
    in progress, and the run's status says how it ended. A KeyboardInterrupt (a stop
    signal under interrupt.stop_on_signals, Ctrl-C, ray.cancel) records it as
    `interrupted` and comes out as RunInterrupted naming the run. With `resume`, the
    run `config.run_id` carries on from its last checkpoint under `config.out`.
    """
    started = time.perf_counter()
    check_writable(config.out)
    run_id = config.run_id or make_run_id(config)
    check_run_identity(config, run_id)
    data = prepare_data(config)  # fails on a missing dataset before any Ray work
    saved_path = checkpoint.checkpoint_path(config.out, run_id)
    meter = open_meter()
    writer = ResultsWriter(config.out, run_id, config, data, meter.source)
    ex = make_executor(config, data, run_id)
    results: list[EpochResult] = []
    elapsed_before = 0.0  # wall time of the epochs recorded before a resume
    try:
        if resume and saved_path.exists():
            snapshot = checkpoint.load(saved_path, ex.shard_client_ids)
            checkpoint.restore(ex, snapshot)
        else:
            snapshot = checkpoint.take_snapshot(ex, -1)
        if resume:
            writer.resume(first_epoch=snapshot.epoch + 1)
        elapsed_before = writer.epoch_rows[-1]["wall_s"] if writer.epoch_rows else 0.0
        writer.start(executor=ex.name, clients_per_actor=ex.clients_per_shard)
        for epoch in range(snapshot.epoch + 1, config.epochs):
            result = run_epoch_with_recovery(ex, config, epoch, progress, meter, snapshot)
            results.append(result)
            writer.record_epoch(result, wall_s=elapsed_before + time.perf_counter() - started)
            snapshot = checkpoint.take_snapshot(ex, epoch)
            if config.checkpoint_every and (epoch + 1) % config.checkpoint_every == 0:
                checkpoint.save(ex, snapshot, saved_path)
            if on_epoch:
                on_epoch(result)
        if config.leakage:
            writer.record_leakage(*attack_client(ex, config, data))
        final = writer.epoch_rows[-1]["test_acc"]
        writer.finish(
            "completed", final_test_acc=final, wall_s=elapsed_before + time.perf_counter() - started
        )
    except BaseException as error:
        stopped = isinstance(error, KeyboardInterrupt)  # a stop signal (interrupt.py), Ctrl-C, ray.cancel
        if writer.started:  # before start() the tables on disk are still the last invocation's
            wall_s = elapsed_before + time.perf_counter() - started
            writer.finish("interrupted" if stopped else "failed", final_test_acc=None, wall_s=wall_s)
        if not stopped:
            raise
        stop = interrupt.interruption(error)  # the checkpoint stays: --resume carries on from it
        stop.run_id, stop.out = run_id, config.out
        stop.epochs_done = len(writer.epoch_rows) if writer.started else None
        raise stop from (None if stop is error else error)
    else:
        saved_path.delete()  # a completed run has nothing to resume
    finally:
        ex.close()
    return RunOutcome(run_id, writer.paths, results, final, time.perf_counter() - started, writer.run_row)
