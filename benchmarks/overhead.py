"""Ray executor against the in-process executor: training samples/s of every method.

Same config, same machine, one run of this script; the ratio is the figure.
Each method trains its own epoch (run_epoch: the parallel split step, SSL's
turns, CL/FL's local epochs, the end-of-epoch averaging) with a tiny evaluation,
after one warm-up epoch. Target (issue 15): Ray at least as fast as in process.
Each ratio is the median of `--repeats` local/Ray pairs measured back to back
(`ratio_min`, `ratio_max`: their range), since one timed epoch moves by about
+-0.15 on a 2-core machine.

`chain_ms` is the floor a split step pays on Ray whatever it computes, measured
in the same run: three actor calls chained through object references (shard ->
server -> shard, the driver's loop), each passing an 8 x 32 x 16 x 16 tensor.

  .venv/bin/python -m benchmarks.overhead --clients 10 100
  .venv/bin/python -m benchmarks.overhead --methods ssl psl sglr fl --clients 10 --name overhead-repeats
  .venv/bin/python -m benchmarks.overhead --model resnet16 --clients 10 --name overhead-resnet16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import ray
import torch

from benchmarks.common import write_results
from sglr_ray.config import RunConfig
from sglr_ray.data import prepare_data
from sglr_ray.execution.driver import make_executor, run_epoch
from sglr_ray.execution.ray_actors import start_local_ray
from sglr_ray.measure.energy import NoMeter
from sglr_ray.methods import METHODS

SAMPLES_PER_EPOCH = 4000  # at least; each client has at least 50 samples


def samples_per_s(config: RunConfig, data, epochs: int) -> tuple[float, float]:
    """(training samples/s over `epochs` epochs after one warm-up epoch, start-up seconds)."""
    started = time.perf_counter()
    ex = make_executor(config, data, run_id=f"overhead-{config.executor}-{config.method}-{config.clients}")
    startup_s = time.perf_counter() - started
    try:
        run_epoch(ex, config, 0, None, NoMeter())  # warm-up: first calls, allocator, lazy imports
        started = time.perf_counter()
        for epoch in range(1, epochs + 1):
            run_epoch(ex, config, epoch, None, NoMeter())
        elapsed = time.perf_counter() - started
    finally:
        ex.close()
    return epochs * config.samples_per_client * config.clients / elapsed, startup_s


@ray.remote(num_cpus=0)
class _Relay:
    def make(self, _: object = None) -> torch.Tensor:
        return torch.zeros(8, 32, 16, 16)

    def pass_on(self, value: torch.Tensor) -> torch.Tensor:
        return value


def actor_chain_ms(chains: int = 200, compiled: bool = False) -> float:
    """Milliseconds per chain of three actor calls (a.make -> b.pass_on -> a.pass_on),
    four chains in flight as in the driver's loop; with `compiled`, as a Ray compiled
    graph (benchmarks/compiled_steps.py) instead of actor tasks."""
    a, b = _Relay.remote(), _Relay.remote()
    if compiled:
        from ray.dag import InputNode

        with InputNode() as start:
            graph = a.pass_on.bind(b.pass_on.bind(a.make.bind(start))).experimental_compile()
        submit = graph.execute
    else:

        def submit(chain: int) -> Any:
            return a.pass_on.remote(b.pass_on.remote(a.make.remote(chain)))

    ray.get(submit(0))  # warm-up: both actors started, a compiled graph's channels set up
    started, in_flight = time.perf_counter(), []
    for chain in range(chains):
        in_flight.append(submit(chain))
        if len(in_flight) > 4:
            ray.get(in_flight.pop(0))
    ray.get(in_flight)  # a list of compiled-graph references is read one by one, as the loop does
    elapsed = time.perf_counter() - started
    if compiled:
        graph.teardown()
    for actor in (a, b):
        ray.kill(actor)
    return elapsed / chains * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--model", default="alexnet")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs after one warm-up epoch")
    parser.add_argument(
        "--repeats", type=int, default=3,
        help="local/Ray pairs per method and size; the table gives medians and the ratio's range",
    )  # fmt: skip
    parser.add_argument("--name", default="overhead", help="results/benchmarks/<name>.md and .parquet")
    args = parser.parse_args(argv)
    start_local_ray(log_to_driver=False)
    chain_ms = actor_chain_ms()
    rows = []
    for clients in args.clients:
        for method in args.methods:
            config = RunConfig(
                method=method, model=args.model, dataset="synthetic", clients=clients,
                samples_per_client=max(50, SAMPLES_PER_EPOCH // clients), epochs=args.epochs + 1,
                val_samples=10, test_samples=10, checkpoint_every=0,
            )  # fmt: skip
            data = prepare_data(config)
            # Alternating local and Ray measurements: a slow spell of the machine lands on
            # both sides of some pair rather than on one side of the ratio.
            pairs = []
            for _ in range(args.repeats):
                local, _ = samples_per_s(config.replace(executor="local"), data, args.epochs)
                remote, startup_s = samples_per_s(config.replace(executor="ray"), data, args.epochs)
                pairs.append((local, remote, startup_s))
            local, remote, startup_s = (statistics.median(side) for side in zip(*pairs, strict=True))
            ratios = [r / loc for loc, r, _ in pairs]
            rows.append({
                "method": method, "model": args.model, "clients": clients,
                "samples_per_client": config.samples_per_client, "local_samples_per_s": local,
                "ray_samples_per_s": remote, "ray_over_local": statistics.median(ratios),
                "ratio_min": min(ratios), "ratio_max": max(ratios), "repeats": args.repeats,
                "ray_startup_s": startup_s, "chain_ms": chain_ms,
            })  # fmt: skip
            print(rows[-1], flush=True)
    ray.shutdown()
    write_results(rows, args.name, "Ray executor vs in-process executor, training samples/s, every method",
                  "  .venv/bin/python -m benchmarks.overhead " + " ".join(argv or sys.argv[1:]))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
