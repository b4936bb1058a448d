"""Scale on one machine: 1000 clients on the Ray executor against 5 clients in process.

ONE run measures the ratio of one epoch's wall time (training plus the default
evaluation) of

  ray      --clients 1000 --samples-per-client 50 on the Ray executor (clients packed
           into shard actors to fit the machine; PSL-style methods step each shard's
           clients as grouped models, nodes/grouped.py), and
  local    --clients 5 --samples-per-client 10000 in process (the local executor),

the same 50,000 training samples: AlexNet, b = 8, --method (default psl: SGLR's default
alpha 0.5 gives the server 1000**0.5 times the clients' rate at 1000 clients and diverges,
as the paper warns, which makes the accuracy column useless as a check), default
evaluation (--val-samples 2000 scored in slices over the clients, and the whole test
split, as after any last epoch), --torch-threads (default 1, in every process).
The target: ratio <= 2 and the Ray run's peak memory < 16 GiB.

Also recorded: start-up (building the executor: for Ray, starting and placing the
actors and building every shard; in process, building the shards), and peak memory:
the resident memory of all Ray processes (raylet, GCS, workers; psutil, sampled every
0.5 s) and of the driver, summed; in process, the process's own.

  .venv/bin/python -m benchmarks.scale
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import psutil
import ray

from benchmarks.common import PeakBytes, ray_processes_rss_bytes, write_results
from sglr_ray.config import RunConfig
from sglr_ray.data import prepare_data
from sglr_ray.execution.driver import make_executor, run_epoch
from sglr_ray.execution.ray_actors import start_local_ray
from sglr_ray.measure.energy import NoMeter

GIB = 2**30
SETUPS = {  # name: (executor, clients, samples per client)
    "local": ("local", 5, 10_000),
    "ray": ("ray", 1000, 50),
}


def driver_rss_bytes() -> int:
    return psutil.Process().memory_info().rss


def measure(name: str, method: str, dataset: str, torch_threads: int) -> dict:
    """Start-up, one epoch (training + evaluation) and peak memory of setup `name` (SETUPS)."""
    executor, clients, samples = SETUPS[name]
    return measure_setup(name, executor, clients, samples, method, dataset, torch_threads)


def measure_setup(
    name: str,
    executor: str,
    clients: int,
    samples: int,
    method: str,
    dataset: str,
    torch_threads: int,
    memory: Callable[[], int] | None = None,
    object_store_bytes: int | None = None,
) -> dict:
    """Start-up, one epoch (training + evaluation) and peak memory of `clients` x `samples` of
    `method` on `executor` (AlexNet, the run's defaults otherwise). `data_s`: drawing and
    partitioning the data; `startup_s`: building the executor (for Ray: starting and placing
    the actors, the partitions' trip to them, building every shard). `memory`: what peak_GiB
    samples (default: the Ray processes' and the driver's resident memory). `object_store_bytes`:
    the embedded Ray's object store size (default Ray's: 30% of the memory available at start)."""
    config = RunConfig(
        method=method, model="alexnet", dataset=dataset, clients=clients, samples_per_client=samples,
        epochs=1, executor=executor, torch_threads=torch_threads,
    )  # fmt: skip
    started = time.perf_counter()
    data = prepare_data(config)
    data_s = time.perf_counter() - started
    if executor == "ray":
        sized = {} if object_store_bytes is None else {"object_store_memory": object_store_bytes}
        start_local_ray(log_to_driver=False, **sized)
    if memory is None:
        memory = (
            (lambda: ray_processes_rss_bytes() + driver_rss_bytes())
            if executor == "ray"
            else driver_rss_bytes
        )
    try:
        with PeakBytes(memory) as peak:
            started = time.perf_counter()
            ex = make_executor(config, data, run_id=f"scale-{name}")
            startup_s = time.perf_counter() - started
            try:
                result = run_epoch(ex, config, 0, None, NoMeter())
            finally:
                ex.close()
    finally:
        if executor == "ray":
            ray.shutdown()
    epoch_s = result.train_wall_s + result.eval_wall_s
    return {
        "setup": name, "method": method, "executor": executor, "clients": clients,
        "samples_per_client": samples, "shards": len(ex.shard_client_ids),
        "clients_per_shard": ex.clients_per_shard, "data_s": data_s, "startup_s": startup_s,
        "epoch_s": epoch_s, "train_s": result.train_wall_s, "eval_s": result.eval_wall_s,
        "samples_per_s": clients * samples / result.train_wall_s, "peak_GiB": peak.peak_bytes / GIB,
        "val_acc": result.val.accuracy,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="psl")
    parser.add_argument("--dataset", default="synthetic", choices=["synthetic", "fashion-mnist"])
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads in every process")
    args = parser.parse_args(argv)
    rows = [measure(name, args.method, args.dataset, args.torch_threads) for name in SETUPS]
    local, remote = rows
    remote["epoch_over_local"] = remote["epoch_s"] / local["epoch_s"]
    remote["train_over_local"] = remote["train_s"] / local["train_s"]
    load = psutil.getloadavg()
    for row in rows:
        row["load_avg_1m_after"] = load[0]
    print(
        f"one epoch, {remote['clients']} clients on Ray / {local['clients']} clients in process: "
        f"{remote['epoch_over_local']:.2f} (target <= 2); Ray peak {remote['peak_GiB']:.1f} GiB (target < 16)"
    )
    title = (
        f"Scale: one epoch of {remote['clients']} clients on Ray against {local['clients']} clients "
        f"in process ({psutil.cpu_count()} cores, shared with other work: load average "
        f"{load[0]:.1f} at the end)"
    )
    write_results(
        rows, "scale", title, "  .venv/bin/python -m benchmarks.scale " + " ".join(argv or sys.argv[1:])
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
