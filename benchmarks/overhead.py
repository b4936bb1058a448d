"""Ray executor overhead: training samples/s of Ray against the in-process executor.

Same config, same machine, one run of this script; the ratio is the figure.
Target (issue 4): Ray at least 0.9 of in-process at C = 100.

  .venv/bin/python benchmarks/overhead.py --clients 10 100 500
"""

from __future__ import annotations

import argparse
import sys
import time

import ray

from benchmarks.common import write_results
from sglr_ray.config import RunConfig
from sglr_ray.data import prepare_data
from sglr_ray.execution.driver import make_executor, train_epoch

SAMPLES_PER_EPOCH = 4000  # at least; each client has at least 50 samples


def train_samples_per_s(config: RunConfig, data, epochs: int) -> tuple[float, float]:
    """(samples/s over `epochs` training epochs after one warm-up epoch, start-up seconds)."""
    started = time.perf_counter()
    ex = make_executor(config, data, run_id=f"overhead-{config.executor}-{config.clients}")
    startup_s = time.perf_counter() - started
    try:
        train_epoch(ex, config, 0)  # warm-up: first calls, allocator, lazy imports
        started = time.perf_counter()
        for epoch in range(1, epochs + 1):
            train_epoch(ex, config, epoch)
        elapsed = time.perf_counter() - started
    finally:
        ex.close()
    samples = epochs * config.steps_per_epoch * config.batch_size * config.clients
    return samples / elapsed, startup_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100, 500])
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs after one warm-up epoch")
    args = parser.parse_args(argv)
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    rows = []
    for clients in args.clients:
        config = RunConfig(
            method="sglr", model="alexnet", dataset="synthetic", clients=clients,
            samples_per_client=max(50, SAMPLES_PER_EPOCH // clients), epochs=args.epochs + 1,
            val_samples=10, test_samples=10,
        )  # fmt: skip
        data = prepare_data(config)
        local, _ = train_samples_per_s(config.replace(executor="local"), data, args.epochs)
        remote, startup_s = train_samples_per_s(config.replace(executor="ray"), data, args.epochs)
        rows.append({
            "clients": clients, "samples_per_client": config.samples_per_client,
            "local_samples_per_s": local, "ray_samples_per_s": remote, "ray_over_local": remote / local,
            "ray_startup_s": startup_s,
        })  # fmt: skip
    ray.shutdown()
    write_results(rows, "overhead", "Ray executor vs in-process executor, training samples/s",
                  "  .venv/bin/python benchmarks/overhead.py " + " ".join(argv or sys.argv[1:]))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
