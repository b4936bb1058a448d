"""Where a split step's time goes: each call timed in process against its actor task on Ray.

For one method and size, after a warm-up epoch, one epoch runs on each executor
(same config, same data, one run of this script):

- in process: every call the driver makes (`ex.call`) is timed, per function
  (Server.train_step, SplitShard.apply_then_forward, ...);
- on Ray: `ray.timeline()` gives each actor task of that epoch and its phases:
  deserializing the arguments, executing, storing the results. `gap_ms` is the
  time between one task ending and the next task of the chain starting on
  another actor (the result's way to the driver, the driver submitting the next
  call, the arguments' way to the actor). Tasks are told apart by actor
  (server or client shard), since every call enters through the actor's `call`.

`--subnormals` adds a second table: the in-process epoch run with subnormal
floats flushed to zero (what both executors do, execution/process.py) and
without, from the same seed, and how many subnormal values the server's top
model and its optimizer state hold at the end. On Intel CPUs arithmetic on
subnormals takes a slow microcode path.

`--load N` runs N busy processes at niceness 10 beside the measurement (other
work on the machine), and `--worker-niceness K` starts Ray's workers at K
instead of the driver's niceness (Ray's own default is 15 above the raylet's;
ray_actors.py).

  .venv/bin/python -m benchmarks.profile_steps --method ssl --clients 10
  .venv/bin/python -m benchmarks.profile_steps --method ssl --clients 10 --samples-per-client 40 --load 2
  .venv/bin/python -m benchmarks.profile_steps --method psl --clients 10 --subnormals
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import ray
import torch

from benchmarks.common import write_results
from sglr_ray.config import RunConfig
from sglr_ray.data import PreparedData, prepare_data
from sglr_ray.execution.driver import run_epoch
from sglr_ray.execution.local import LocalExecutor
from sglr_ray.execution.ray_actors import WORKER_NICENESS_ENV, RayExecutor, start_local_ray
from sglr_ray.measure.energy import NoMeter
from sglr_ray.methods import METHODS
from sglr_ray.nodes.server import Server

PHASES = {"task:deserialize_arguments": "deserialize_ms", "task:execute": "execute_ms",
          "task:store_outputs": "store_ms"}  # fmt: skip
TIMELINE_FLUSH_S = 3.0  # workers report task events to the GCS about once a second


class TimedLocalExecutor(LocalExecutor):
    """The in-process executor, timing every call by the function called."""

    def __init__(self, config: RunConfig, data: PreparedData) -> None:
        super().__init__(config, data, run_id="profile")
        self.durations: dict[str, list[float]] = defaultdict(list)

    def call(self, target: Any, method: Callable[..., Any], *args: Any, num_returns: int = 1) -> Any:
        started = time.perf_counter()
        result = super().call(target, method, *args, num_returns=num_returns)
        self.durations[method.__qualname__].append((time.perf_counter() - started) * 1000)
        return result


def timed_epoch(ex: Any, config: RunConfig, after_warm_up: Callable[[], Any]) -> float:
    """Seconds of one training epoch after a warm-up epoch; `after_warm_up` runs between the
    two (to forget the warm-up's timings, or to mark where the timed epoch starts)."""
    run_epoch(ex, config, 0, None, NoMeter())
    after_warm_up()
    started = time.perf_counter()
    run_epoch(ex, config, 1, None, NoMeter())
    return time.perf_counter() - started


def local_rows(config: RunConfig, data: PreparedData) -> tuple[list[dict], float, int]:
    """One row per function called; the epoch's seconds and server steps."""
    ex = TimedLocalExecutor(config, data)
    epoch_s = timed_epoch(ex, config, ex.durations.clear)
    steps = len(ex.durations[Server.train_step.__qualname__])
    rows = [
        {"executor": "local", "call": name, "calls": len(times), "ms": statistics.mean(times),
         "deserialize_ms": None, "execute_ms": statistics.mean(times), "store_ms": None, "gap_ms": None}
        for name, times in sorted(ex.durations.items())
    ]  # fmt: skip
    return rows, epoch_s, steps


def actor_tasks(events: list[dict], since_us: float, actor_kinds: dict[str, str]) -> list[dict]:
    """The actor tasks that started after `since_us`, in start order, each with its phases.

    `actor_kinds` maps a worker's timeline id to "server" or "client" (from the
    task names: ServerActor.call or ClientActor.call).
    """
    tasks, phases = [], defaultdict(list)
    for event in events:
        if event.get("ph") != "X" or event["ts"] < since_us:
            continue
        if event["cat"] in PHASES:
            phases[event["tid"]].append(event)
        elif event["tid"] in actor_kinds and event["cat"].endswith(".call"):
            tasks.append({"kind": actor_kinds[event["tid"]], "tid": event["tid"], "start": event["ts"],
                          "end": event["ts"] + event["dur"]})  # fmt: skip
    for task in tasks:
        for phase in phases[task["tid"]]:
            if task["start"] <= phase["ts"] and phase["ts"] + phase["dur"] <= task["end"] + 1:
                task[PHASES[phase["cat"]]] = task.get(PHASES[phase["cat"]], 0.0) + phase["dur"] / 1000
    return sorted(tasks, key=lambda t: t["start"])


def gaps_before(tasks: list[dict]) -> dict[str, list[float]]:
    """Milliseconds from one task's end to the start of the next on another actor, by the
    kind of the task that starts (tasks in start order; overlapping pairs have no gap)."""
    gaps = defaultdict(list)
    for before, after in itertools.pairwise(tasks):
        if after["tid"] != before["tid"] and after["start"] >= before["end"]:
            gaps[after["kind"]].append((after["start"] - before["end"]) / 1000)
    return gaps


def ray_rows(config: RunConfig, data: PreparedData) -> tuple[list[dict], float]:
    """One row per actor kind (server, client): task time, its phases and the gap before it."""
    start_local_ray(log_to_driver=False)
    try:
        ex = RayExecutor(config, data, run_id="profile")
        try:
            timed_from = {}  # wall clock in microseconds, as the timeline's events
            epoch_s = timed_epoch(ex, config, lambda: timed_from.update(us=time.time() * 1e6))
            time.sleep(TIMELINE_FLUSH_S)  # before the actors go: their last events are still buffered
            events = ray.timeline()
        finally:
            ex.close()
    finally:
        ray.shutdown()
    actor_kinds = {
        e["tid"]: "server" if e["cat"].startswith("task::ServerActor.") else "client"
        for e in events
        if e.get("ph") == "X" and e["cat"].startswith(("task::ServerActor.", "task::ClientActor."))
    }
    tasks = actor_tasks(events, timed_from["us"], actor_kinds)
    gaps = gaps_before(tasks)
    rows = []
    for kind in ("server", "client"):
        mine = [t for t in tasks if t["kind"] == kind]
        if not mine:
            continue
        rows.append({
            "executor": "ray", "call": f"{kind} actor task", "calls": len(mine),
            "ms": statistics.mean((t["end"] - t["start"]) / 1000 for t in mine),
            **{column: statistics.mean(t.get(column, 0.0) for t in mine) for column in PHASES.values()},
            "gap_ms": statistics.median(gaps[kind]) if gaps[kind] else None,
        })  # fmt: skip
    return rows, epoch_s


def subnormal_count(tensors: list[torch.Tensor]) -> int:
    tiny = torch.finfo(torch.float32).tiny
    return sum(int(((t != 0) & (t.abs() < tiny)).sum()) for t in tensors if t.is_floating_point())


def subnormal_rows(config: RunConfig, data: PreparedData) -> list[dict]:
    """The in-process epoch with subnormals flushed (as configured) and computed (flush off)."""
    rows = []
    for flush in (True, False):
        ex = TimedLocalExecutor(config, data)  # configure_process turns flushing on
        torch.set_flush_denormal(flush)
        epoch_s = timed_epoch(ex, config, ex.durations.clear)
        server_steps = ex.durations[Server.train_step.__qualname__]
        weights = [p.detach() for top in ex.server.tops for p in top.parameters()]
        state = [
            v
            for opt in ex.server.optimizers
            for s in opt.state.values()
            for v in s.values()
            if torch.is_tensor(v)
        ]
        rows.append({
            "method": config.method, "clients": config.clients, "flush_subnormals": flush,
            "samples_per_s": config.clients * config.samples_per_client / epoch_s,
            "server_step_ms": statistics.mean(server_steps),
            "subnormal_weights": subnormal_count(weights),
            "subnormal_optimizer_values": subnormal_count(state),
        })  # fmt: skip
    torch.set_flush_denormal(True)
    return rows


LOAD_NICENESS = 10


def start_load(processes: int) -> list[subprocess.Popen]:
    """`processes` busy loops at niceness LOAD_NICENESS: other work on the machine."""
    spin = [sys.executable, "-c", "while True: pass"]
    return [subprocess.Popen(spin, preexec_fn=lambda: os.nice(LOAD_NICENESS)) for _ in range(processes)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    split_methods = [name for name, spec in METHODS.items() if not spec.client.whole_model]
    parser.add_argument("--method", default="ssl", choices=split_methods)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--model", default="alexnet")
    parser.add_argument("--samples-per-client", type=int, default=400)
    parser.add_argument("--subnormals", action="store_true", help="also time the epoch without flushing")
    parser.add_argument("--load", type=int, default=0, help="busy processes at niceness 10 beside the run")
    parser.add_argument("--worker-niceness", type=int, help="Ray workers' niceness (default: the driver's)")
    parser.add_argument("--name", help="results/benchmarks/<name>.md (default: profile-<method>)")
    args = parser.parse_args(argv)
    config = RunConfig(
        method=args.method, model=args.model, dataset="synthetic", clients=args.clients,
        samples_per_client=args.samples_per_client, epochs=2, val_samples=10, test_samples=10,
        checkpoint_every=0,
    )  # fmt: skip
    data = prepare_data(config)
    shown_args = argv if argv is not None else sys.argv[1:]
    command = "  .venv/bin/python -m benchmarks.profile_steps " + " ".join(shown_args)
    name = args.name or f"profile-{args.method}"
    if args.worker_niceness is not None:
        os.environ[WORKER_NICENESS_ENV] = str(args.worker_niceness - os.nice(0))  # Ray adds it to ours
    load = start_load(args.load)
    try:
        local, local_s, steps = local_rows(config, data)
        remote, ray_s = ray_rows(config, data)
    finally:
        for process in load:
            process.kill()
    samples = config.clients * config.samples_per_client
    worker_niceness = os.nice(0) + int(os.environ[WORKER_NICENESS_ENV])
    title = (
        f"{args.method.upper()} at C = {args.clients} ({args.model}): a step {local_s / steps * 1000:.1f} ms "
        f"in process, {ray_s / steps * 1000:.1f} ms on Ray ({steps} server steps an epoch; "
        f"{samples / local_s:.0f} against {samples / ray_s:.0f} samples/s); {args.load} busy processes "
        f"at niceness {LOAD_NICENESS} beside it, Ray workers at niceness {worker_niceness}"
    )
    for row in local + remote:
        row.update(method=args.method, clients=args.clients, load_processes=args.load,
                   worker_niceness=worker_niceness)  # fmt: skip
    write_results(local + remote, name, title, command)
    if args.subnormals:
        title = f"{args.method.upper()} in process, subnormal floats flushed to zero or not"
        write_results(subnormal_rows(config, data), f"{name}-subnormals", title, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
