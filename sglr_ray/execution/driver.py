"""The driver: one loop for every method and both executors.

Each epoch, the method's schedule trains through the engine's primitives
(execution/engine.py), the method's epoch-end steps run (FedAvg), and the
models are scored; results are recorded after every epoch, and an epoch whose
actor died is replayed from the last snapshot. The driver never looks at a
tensor: under Ray it handles references and small metrics only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from sglr_ray.config import RunConfig
from sglr_ray.data import PreparedData, prepare_data
from sglr_ray.epochs import EpochResult, Evaluation, Executor, ProgressFn, RunOutcome
from sglr_ray.errors import ActorLostError
from sglr_ray.execution import checkpoint, interrupt
from sglr_ray.execution.engine import Engine
from sglr_ray.measure.energy import EnergyMeter, open_meter
from sglr_ray.measure.flops import epoch_flops
from sglr_ray.measure.timing import timing_for
from sglr_ray.nodes.client import ClientShard
from sglr_ray.nodes.server import Server
from sglr_ray.results.storage import check_writable
from sglr_ray.results.writer import ResultsWriter, check_run_identity, make_run_id
from sglr_ray.systems.clock import epoch_clock

log = logging.getLogger(__name__)

__all__ = ["EpochResult", "Evaluation", "RunOutcome", "run_epoch", "run_experiment"]


def evaluate_models(ex: Executor, config: RunConfig, top_state: Any, split: str) -> Evaluation:
    """Score the evaluation subset `split` (SPEC section 2, Evaluation).

    Where the method's schedule names no single model, every client's model is scored
    with the server's: on its own slice of the subset (default, cost independent of C)
    or on all of it (--eval-mode every). Otherwise the run has one current model (CL's;
    FL's average, which every client holds; the bottom of SSL's last turn), scored once
    on the whole subset and recorded for every client.
    """
    holder = config.spec.schedule.scorer(config)
    if holder is None:
        whole = config.eval_mode == "every"
        per_shard = ex.get(
            [ex.call(shard, ClientShard.evaluate, top_state, split, None, whole) for shard in ex.shards]
        )
        scores = {client_id: score for shard_scores in per_shard for client_id, score in shard_scores.items()}
        correct, scored = map(sum, zip(*scores.values(), strict=True))
        return Evaluation(correct / scored, scores)
    shard = Engine(ex, config).shard_of(holder)
    score = ex.get(ex.call(shard, ClientShard.evaluate, top_state, split, [holder], True))[holder]
    return Evaluation(score[0] / score[1], dict.fromkeys(range(config.clients), score))


def run_epoch(
    ex: Executor, config: RunConfig, epoch: int, progress: ProgressFn | None, meter: EnergyMeter
) -> EpochResult:
    spec, engine = config.spec, Engine(ex, config, progress)
    timing = timing_for(config)
    ex.call(ex.server, Server.use_timing, timing)  # actor calls run in order: before the first step
    started, energy_before = time.perf_counter(), meter.read_j()
    train_loss = spec.schedule.train_epoch(engine, epoch)
    for after_training in spec.epoch_end:  # FedAvg of the clients' models, of the server's copies
        after_training(engine)
    comm = ex.get(ex.call(ex.server, Server.pop_epoch_comm))
    trained, energy_after = time.perf_counter(), meter.read_j()
    # Fetched once, sent to every shard (None where the server holds no model: CL, FL).
    top_state = ex.call(ex.server, Server.top_state)
    val = evaluate_models(ex, config, top_state, "val")
    last = epoch == config.epochs - 1
    test = evaluate_models(ex, config, top_state, "test") if (last or config.test_each_epoch) else None
    return EpochResult(
        epoch, train_loss, val, test, comm,
        averaging_on=sum(comm.active_steps) > 0,  # some client received an averaged gradient
        train_wall_s=trained - started, eval_wall_s=time.perf_counter() - trained,
        flops=epoch_flops(config),
        energy_j=None if energy_before is None else energy_after - energy_before,
        clock=engine.clock or epoch_clock(comm.phases, timing, config.clients),
    )  # fmt: skip


def attack_client(ex: Executor, config: RunConfig, data: PreparedData) -> tuple:
    """The honest-but-curious server's decoder attack on one client (SPEC section 4).

    The decoder trains on training images no client holds, against the
    client's frozen bottom model, then reconstructs the test images.
    Returns leakage.measure_leakage's (result, originals, reconstructions).
    """
    from sglr_ray.measure import leakage

    client, role = config.leakage_client, config.spec.client
    shard = Engine(ex, config).shard_of(client)
    model = role.build_client(config.model_parts)
    model.load_state_dict(ex.get(ex.call(shard, ClientShard.model_state, client)))
    bottom = role.smashing_model(model)
    aux = data.spare.inputs(slice(config.leakage_aux_samples))
    targets = data.test.inputs()
    return leakage.measure_leakage(
        bottom, aux, targets, client, epochs=config.leakage_epochs, seed=config.seed, codec=data.test.codec
    )


def make_executor(config: RunConfig, data: Any, run_id: str) -> Executor:
    if config.executor == "local":
        from sglr_ray.execution.local import LocalExecutor

        return LocalExecutor(config, data, run_id)
    from sglr_ray.execution.ray_actors import RayExecutor

    return RayExecutor(config, data, run_id)


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
    config.check_model()  # the cut and one dry forward pass on the data's shape, before any training
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
        if config.attack or config.defense:
            from sglr_ray.execution.attacks import run_attacks

            writer.record_privacy(run_attacks(ex, config, data))
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
