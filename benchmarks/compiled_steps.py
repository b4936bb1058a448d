"""A split step three ways: in process, as Ray actor tasks, and as a Ray compiled graph.

Ray's compiled graphs (ray.dag, beta) replace a task submission per call with
shared-memory channels between actors, each looping over its part of the graph.
On a chain of three calls with nothing to compute (`chain_ms`) they cut the floor
a split step pays on Ray to about a third. Whether that speeds up sglr-ray's step
depends on the spare cores: an actor or driver waiting on a channel polls it
(Ray's ReadAcquire yields and sleeps in short turns), and where every core
computes, the polling takes CPU from the computation. The CPU seconds per
process in the table show where it goes.

The step is the engine's: real ClientShard and Server objects and their
forward_batch -> train_step -> apply_gradient, four steps in flight as in the
driver's loop, on single-thread shards (one per CPU) and a server with a thread
per CPU, as the Ray executor places them. `ssl` is one client's turn: one shard
takes part. Every way runs the same steps from the same seed, each object with
the same thread count (in process too), and `loss_diff`, the largest difference
from the in-process losses over the steps, is 0 when they agree to the last bit.

  .venv/bin/python -m benchmarks.compiled_steps
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import psutil
import ray
import torch

from benchmarks.common import write_results
from benchmarks.overhead import actor_chain_ms
from sglr_ray.config import RunConfig
from sglr_ray.data import prepare_data
from sglr_ray.execution.engine import MAX_STEPS_IN_FLIGHT
from sglr_ray.execution.placement import shard_clients
from sglr_ray.execution.process import configure_process
from sglr_ray.execution.ray_actors import start_local_ray
from sglr_ray.nodes.client import ClientShard, client_partitions
from sglr_ray.nodes.server import Server
from sglr_ray.nodes.split_shard import SplitShard


class Holder:
    """A ClientShard or Server in an actor, its methods by name (a compiled graph binds methods).

    The torch thread count and the flush-to-zero mode belong to a thread, and a compiled
    graph runs its calls on a thread of Ray's: every call configures its thread once.
    """

    def __init__(self, build: Callable[[], Any], threads: int) -> None:
        self.threads, self.configured = threads, set()
        self._configure()
        self.held = build()

    def _configure(self) -> None:
        if threading.get_ident() not in self.configured:
            configure_process(self.threads)
            self.configured.add(threading.get_ident())

    def pid(self) -> int:
        return os.getpid()

    def forward_batch(self, *args: Any) -> Any:
        self._configure()
        return self.held.forward_batch(*args)

    def train_step(self, *args: Any) -> Any:
        self._configure()
        return self.held.train_step(*args)

    def apply_gradient(self, *args: Any) -> Any:
        self._configure()
        return self.held.apply_gradient(*args)


def step_calls(
    call: Callable[..., Any], server: Any, shards: list, client_ids: list, epoch: Any, step: Any
) -> list:
    """One step against `call(target, method name, *args, num_returns=1)`: [metrics, applies...]."""
    uploads = [call(s, "forward_batch", epoch, step, ids) for s, ids in zip(shards, client_ids, strict=True)]
    metrics, averaged, *deliveries = call(
        server, "train_step", epoch, step, *uploads, num_returns=len(uploads) + 2
    )
    return [
        metrics,
        *(call(s, "apply_gradient", d, averaged) for s, d in zip(shards, deliveries, strict=True)),
    ]


def direct(target: Any, name: str, *args: Any, num_returns: int = 1) -> Any:
    """In process, with the thread count the target has as an actor: its numbers to the last bit."""
    torch.set_num_threads(target.threads)
    return getattr(target.held, name)(*args)


def remote(actor: Any, name: str, *args: Any, num_returns: int = 1) -> Any:
    return getattr(actor, name).options(num_returns=num_returns).remote(*args)


def bind(actor: Any, name: str, *args: Any, num_returns: int = 1) -> Any:
    return getattr(actor, name).options(num_returns=num_returns).bind(*args)


def build(config: RunConfig, data: Any, method: str) -> tuple[Callable, Callable, list, list]:
    """(make the server, make each shard, client ids per shard, the ids taking part per shard)."""
    partitions = client_partitions(config, data)
    shard_ids = shard_clients(
        len(partitions), -(-len(partitions) // min(os.cpu_count() or 1, len(partitions)))
    )
    if method == "ssl":  # one turn: client 0, on the first shard
        shard_ids, taking_part = shard_ids[:1], [[0]]
    else:
        taking_part = [None] * len(shard_ids)

    def make_shard(ids: list[int]) -> Callable[[], ClientShard]:
        return lambda: SplitShard(config, ids, [partitions[i] for i in ids], data.val, data.test)

    return (lambda: Server(config)), make_shard, shard_ids, taking_part


def cpu_seconds(pids: list[int]) -> list[float]:
    return [sum(psutil.Process(p).cpu_times()[:2]) for p in pids]


def run_steps(
    submit: Callable[[int], Any], get: Callable[[Any], list], steps: int, warmup: int, pids: list[int]
) -> tuple[list[float], float, list[float]]:
    """Run `steps` steps, MAX_STEPS_IN_FLIGHT at a time. Returns every step's loss, and the wall seconds
    and each process's CPU seconds (`pids`) of the steps after the first `warmup`."""
    losses, in_flight, started, cpu_before = [], deque(), 0.0, []
    for step in range(steps):
        if step == warmup:
            while in_flight:
                losses.append(get(in_flight.popleft())[0].loss)
            started, cpu_before = time.perf_counter(), cpu_seconds(pids)
        in_flight.append(submit(step))
        if len(in_flight) > MAX_STEPS_IN_FLIGHT:
            losses.append(get(in_flight.popleft())[0].loss)
    while in_flight:
        losses.append(get(in_flight.popleft())[0].loss)
    wall_s = time.perf_counter() - started
    return losses, wall_s, [after - b for b, after in zip(cpu_before, cpu_seconds(pids), strict=True)]


def measure(mode: str, config: RunConfig, data: Any, method: str, warmup: int) -> dict[str, Any]:
    """One way (MODES) of running an epoch's steps; the row, with every step's loss under "losses"."""
    make_server, make_shard, shard_ids, taking_part = build(config, data, method)
    steps, cpus = config.steps_per_epoch, os.cpu_count() or 1
    if mode == "in process":
        server, shards = Holder(make_server, cpus), [Holder(make_shard(ids), 1) for ids in shard_ids]
        pids, get = [], lambda value: value

        def submit(step: int) -> list:
            return step_calls(direct, server, shards, taking_part, 0, step)
    else:
        actor = ray.remote(num_cpus=0)(Holder)
        server = actor.remote(make_server, cpus)
        shards = [actor.remote(make_shard(ids), 1) for ids in shard_ids]
        pids = ray.get([a.pid.remote() for a in [server, *shards]])
        get = ray.get
        if mode == "ray tasks":

            def submit(step: int) -> list:
                return step_calls(remote, server, shards, taking_part, 0, step)
        else:
            from ray.dag import InputNode, MultiOutputNode

            with InputNode() as step_input:
                graph = MultiOutputNode(step_calls(bind, server, shards, taking_part, 0, step_input))
            graph = graph.experimental_compile()
            submit = graph.execute
    losses, wall_s, used = run_steps(submit, get, steps, warmup, [os.getpid(), *pids])
    if mode == "ray compiled graph":
        graph.teardown()
    for a in [] if mode == "in process" else [server, *shards]:
        ray.kill(a)
    timed = steps - warmup
    samples = sum(
        len(ids) if ids else len(all_ids) for ids, all_ids in zip(taking_part, shard_ids, strict=True)
    )
    return {
        "timed_steps": timed,
        "samples_per_s": timed * samples * config.batch_size / wall_s, "step_ms": wall_s / timed * 1000,
        # In process the driver computes everything, and its CPU seconds are all of them.
        "driver_cpu_s": used[0], "server_cpu_s": sum(used[1:2]), "shards_cpu_s": sum(used[2:]),
        "wall_s": wall_s, "losses": losses,
    }  # fmt: skip


MODES = ("in process", "ray tasks", "ray compiled graph")
# Columns given as the median over the repeats.
MEDIANS = ("samples_per_s", "step_ms", "wall_s", "driver_cpu_s", "server_cpu_s", "shards_cpu_s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=["psl", "ssl"], choices=["psl", "ssl"])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--model", default="alexnet")
    parser.add_argument("--steps", type=int, default=60, help="timed steps, after --warmup steps")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument(
        "--repeats", type=int, default=3,
        help="rounds of the three ways, one after the other; the table gives medians and the ratio's range",
    )  # fmt: skip
    parser.add_argument("--name", default="compiled_steps", help="results/benchmarks/<name>.md and .parquet")
    args = parser.parse_args(argv)
    start_local_ray(log_to_driver=False)
    logging.getLogger("ray.dag.compiled_dag_node").setLevel(logging.WARNING)  # a line per teardown
    floors = {"ray tasks": actor_chain_ms(), "ray compiled graph": actor_chain_ms(compiled=True)}
    rows = []
    for method in args.methods:
        config = RunConfig(
            method=method, model=args.model, dataset="synthetic", clients=args.clients,
            samples_per_client=(args.steps + args.warmup) * 8, batch_size=8, epochs=1,
            val_samples=10, test_samples=10,
        )  # fmt: skip
        data = prepare_data(config)
        repeats = [
            [measure(mode, config, data, method, args.warmup) for mode in MODES] for _ in range(args.repeats)
        ]
        for i, mode in enumerate(MODES):
            runs = [results[i] for results in repeats]
            ratios = [results[i]["samples_per_s"] / results[0]["samples_per_s"] for results in repeats]
            row = {key: statistics.median(r[key] for r in runs) for key in MEDIANS}
            rows.append({
                "method": method, "mode": mode, "clients": args.clients, "timed_steps": args.steps, **row,
                "over_in_process": statistics.median(ratios), "ratio_min": min(ratios),
                "ratio_max": max(ratios), "repeats": args.repeats, "chain_ms": floors.get(mode),
                "loss_diff": max(
                    abs(a - b) for results in repeats
                    for a, b in zip(results[i]["losses"], results[0]["losses"], strict=True)
                ),
            })  # fmt: skip
            print(rows[-1], flush=True)
    ray.shutdown()
    command = "  .venv/bin/python -m benchmarks.compiled_steps " + " ".join(argv or sys.argv[1:])
    write_results(
        rows, args.name, "A split step in process, as Ray tasks and as a Ray compiled graph", command
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
