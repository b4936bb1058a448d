"""Scale on one machine: start-up time, peak memory of all Ray processes, and epoch time.

Runs one epoch of SGLR (AlexNet, 50 samples per client) on the Ray executor for
each client count; clients are packed into shard actors to fit the machine.

  .venv/bin/python benchmarks/scale.py --clients 10 100 1000
"""

from __future__ import annotations

import argparse
import sys
import time

import ray

from benchmarks.common import PeakMemory, ray_processes_rss_bytes, write_results
from sglr_ray.config import RunConfig
from sglr_ray.data import prepare_data
from sglr_ray.execution.driver import evaluate, make_executor, train_epoch
from sglr_ray.nodes.server import Server

GIB = 2**30


def measure(clients: int, dataset: str) -> dict:
    config = RunConfig(
        method="sglr", model="alexnet", dataset=dataset, clients=clients, samples_per_client=50,
        epochs=1, val_samples=50, test_samples=50, executor="ray",
    )  # fmt: skip
    data = prepare_data(config)
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        idle_bytes = ray_processes_rss_bytes()
        with PeakMemory() as peak:
            started = time.perf_counter()
            ex = make_executor(config, data, run_id=f"scale-{clients}")
            startup_s = time.perf_counter() - started
            try:
                started = time.perf_counter()
                train_epoch(ex, config, 0)
                train_s = time.perf_counter() - started
                started = time.perf_counter()
                evaluate(ex, ex.call(ex.server, Server.top_state), "val")
                eval_s = time.perf_counter() - started
            finally:
                ex.close()
    finally:
        ray.shutdown()
    return {
        "clients": clients, "shards": len(ex.shard_client_ids), "clients_per_shard": ex.clients_per_shard,
        "startup_s": startup_s, "epoch_train_s": train_s, "eval_s_50_images_per_client": eval_s,
        "samples_per_s": clients * config.steps_per_epoch * config.batch_size / train_s,
        "ray_idle_GiB": idle_bytes / GIB, "ray_peak_GiB": peak.peak_bytes / GIB,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--dataset", default="fashion-mnist")
    args = parser.parse_args(argv)
    rows = [measure(clients, args.dataset) for clients in args.clients]
    write_results(rows, "scale", "Scale on one 2-core / 24 GiB machine, Ray executor, one epoch",
                  "  .venv/bin/python benchmarks/scale.py " + " ".join(argv or sys.argv[1:]))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
