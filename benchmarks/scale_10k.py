"""Ten thousand clients on one machine: 10,000 clients x 50 samples on the Ray executor against
5 clients x 10,000 samples in process, per method, in ONE run.

For each --methods entry (default psl sglr fl sfl) two setups, AlexNet, b = 8, one epoch with
the default evaluation, --torch-threads (default 1) in every process:

  local    --clients 5 --samples-per-client 10000, in process (the local executor)
  ray      --clients C --samples-per-client 50 (default C = 10,000) on the Ray executor:
           one shard actor per core, each holding C / cores clients in its ClientStates
           (nodes/client_state.py), PSL-style methods stepping them as compute groups

Per row: `data_s` (drawing and partitioning the synthetic data), `startup_s` (building the
executor: for Ray, starting and placing the actors, the partitions' trip to them and
building every shard), the epoch's training and evaluation time, and peak memory: the
proportional set size (PSS) of this process and all its descendants, the embedded Ray's
GCS, raylet and workers included (psutil, every 0.5 s): shared pages such as the object
store are split among the processes that map them, so nothing counts twice and no other
Ray instance on the machine counts at all. For each Ray row, `per_sample_over_local`: its
training time per sample over the in-process run's of the same method.

The object store is sized by --object-store-gib (default 8): a step of 10,000 x 8 keeps the
uploads' smashed data (2.6 GB) and the gradients going back (2.6 GB) in it at once, more than
Ray's default (30% of the memory available at start, under 6 GiB on a loaded 24 GiB machine)
leaves beside the shards' partitions, and Ray would spill objects to disk. Pages of the store
count once touched, so the size is a cap, not a cost.

Targets (issue 27): peak <= 16 GiB, per_sample_over_local <= 2 (aim 1.5), start-up < 60 s.
SGLR at 10,000 clients: the default alpha 0.5 gives the server 100 times the clients' rate and
diverges, as the paper warns; accuracy is not the point here, time and memory are.

  .venv/bin/python -m benchmarks.scale_10k
  .venv/bin/python -m benchmarks.scale_10k --methods psl sglr --clients 2000
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

import psutil

from benchmarks.common import process_tree_pss_bytes, write_results
from benchmarks.scale import measure_setup

LOCAL_CLIENTS = 5  # the in-process reference: 5 clients of --local-samples each


def load_note() -> str:
    load = psutil.getloadavg()
    return f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min)"


class MemoryGuard(threading.Thread):
    """Ends this run (this process and its descendants, nothing else) when the machine's available
    memory falls below `floor_gib`: the machine is shared, and running it out of memory would
    have the kernel kill someone else's work."""

    def __init__(self, floor_gib: float) -> None:
        super().__init__(daemon=True)
        self.floor_bytes = floor_gib * 2**30

    def run(self) -> None:
        peak = 0
        while psutil.virtual_memory().available >= self.floor_bytes:
            peak = max(peak, process_tree_pss_bytes())
            time.sleep(0.5)
        print(
            f"scale_10k: available memory under {self.floor_bytes / 2**30:.1f} GiB with this run at "
            f"{process_tree_pss_bytes() / 2**30:.1f} GiB (peak {peak / 2**30:.1f}); stopping",
            flush=True,
        )
        for child in psutil.Process().children(recursive=True):
            child.kill()
        os._exit(3)


def write_table(rows: list[dict], args: argparse.Namespace, argv: list[str] | None) -> None:
    title = (
        f"Scale: one epoch of {args.clients} clients x {args.samples_per_client} on Ray against "
        f"{LOCAL_CLIENTS} x {args.local_samples} in process ({psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, shared with other work at nice 19; "
        f"this run at nice {os.nice(0)}; {load_note()} at the end)"
    )
    command = "  .venv/bin/python -m benchmarks.scale_10k " + " ".join(argv or sys.argv[1:])
    write_results(rows, args.name, title, command)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=["psl", "sglr", "fl", "sfl"])
    parser.add_argument("--clients", type=int, default=10_000, help="clients of the Ray run")
    parser.add_argument("--samples-per-client", type=int, default=50, help="of the Ray run's clients")
    parser.add_argument(
        "--local-samples", type=int, default=10_000, help="per client of the in-process run's 5 clients"
    )
    parser.add_argument("--dataset", default="synthetic-large", choices=["synthetic-large", "synthetic"])
    parser.add_argument(
        "--stop-below-gib", type=float, default=2.5,
        help="end the run (its own processes only) when the machine's available memory falls below this",
    )  # fmt: skip
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads in every process")
    parser.add_argument("--object-store-gib", type=float, default=8.0, help="the Ray run's object store")
    parser.add_argument("--name", default="scale-10k", help="results/benchmarks/<name>.md and .parquet")
    args = parser.parse_args(argv)
    guard = MemoryGuard(args.stop_below_gib)
    guard.start()
    rows = []
    for method in args.methods:
        local_samples = LOCAL_CLIENTS * args.local_samples
        local = measure_setup(
            "local", "local", LOCAL_CLIENTS, args.local_samples, method, args.dataset, args.torch_threads,
            process_tree_pss_bytes,
        )  # fmt: skip
        local["load_after"] = load_note()
        remote = measure_setup(
            "ray", "ray", args.clients, args.samples_per_client, method, args.dataset, args.torch_threads,
            process_tree_pss_bytes, int(args.object_store_gib * 2**30),
        )  # fmt: skip
        remote["load_after"] = load_note()
        per_sample = remote["train_s"] / (args.clients * args.samples_per_client)
        remote["per_sample_over_local"] = per_sample / (local["train_s"] / local_samples)
        remote["epoch_per_sample_over_local"] = (
            remote["epoch_s"] / (args.clients * args.samples_per_client)
        ) / (local["epoch_s"] / local_samples)
        rows += [local, remote]
        print(
            f"{method}: {args.clients} clients on Ray: per sample {remote['per_sample_over_local']:.2f}x "
            f"in process (target <= 2), peak {remote['peak_GiB']:.1f} GiB (target <= 16), "
            f"start-up {remote['startup_s']:.0f} s (target < 60)",
            flush=True,
        )
        write_table(rows, args, argv)  # after each method: a run stopped later still leaves these
    return 0


if __name__ == "__main__":
    sys.exit(main())
