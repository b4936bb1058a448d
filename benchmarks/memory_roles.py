"""Where a Ray run's memory is: peak proportional set size (PSS) by role, one run.

Runs one epoch of `--method` on the Ray executor (AlexNet, b = 8, the run's defaults otherwise,
as benchmarks/scale_10k.py does) while a thread reads /proc/<pid>/smaps of this process and
its descendants every `--interval-s`, and sorts each process's PSS into its role (driver,
server actor, shard actors, raylet, GCS, other Ray processes) and, within it, the pages of
Ray's object store (the `plasma` mappings, shared by every process that maps them) and the
rest (the process's own heap, libraries). Prints the breakdown at the sample where the total
peaked, and each role's own peak; `--trace FILE` writes every sample (CSV) for a timeline.

  .venv/bin/python -m benchmarks.memory_roles --method psl --clients 2000 --samples-per-client 16
"""

from __future__ import annotations

import argparse
import collections
import sys
import threading
import time

import psutil

from benchmarks.scale import measure_setup
from benchmarks.scale_10k import MemoryGuard

GIB = 2**30
ROLES = ("driver", "server", "shards", "raylet", "gcs", "other")


def role_of(proc: psutil.Process, me: int) -> str:
    if proc.pid == me:
        return "driver"
    cmdline = " ".join(proc.cmdline())
    if "ServerActor" in cmdline:
        return "server"
    if "ClientActor" in cmdline:
        return "shards"
    if "raylet" in cmdline:
        return "raylet"
    if "gcs_server" in cmdline:
        return "gcs"
    return "other"


def pss_split(pid: int) -> tuple[int, int]:
    """(PSS of the object store's mappings, PSS of everything else) of one process, in bytes."""
    plasma = other = 0
    in_plasma = False
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if fields and "-" in fields[0] and not fields[0].endswith(":"):  # a mapping's header
                in_plasma = len(fields) > 5 and "plasma" in fields[5]
            elif fields and fields[0] == "Pss:":
                if in_plasma:
                    plasma += int(fields[1]) * 1024
                else:
                    other += int(fields[1]) * 1024
    return plasma, other


def sample() -> dict[str, int]:
    """PSS by role of this process tree: `<role>` (not the object store) and `plasma` (all roles)."""
    me = psutil.Process()
    totals: collections.Counter = collections.Counter()
    for proc in [me, *me.children(recursive=True)]:
        try:
            role = role_of(proc, me.pid)
            plasma, other = pss_split(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, FileNotFoundError, ProcessLookupError):
            continue  # ended between the listing and the read
        totals[role] += other
        totals["plasma"] += plasma
    return dict(totals)


class RoleSampler(threading.Thread):
    def __init__(self, interval_s: float) -> None:
        super().__init__(daemon=True)
        self.interval_s, self.samples, self._done = interval_s, [], threading.Event()
        self._start_time = time.perf_counter()

    def run(self) -> None:
        while not self._done.is_set():
            self.samples.append((time.perf_counter() - self._start_time, sample()))
            time.sleep(self.interval_s)

    def stop(self) -> None:
        self._done.set()
        self.join()


def report(samples: list[tuple[float, dict[str, int]]]) -> str:
    keys = [*ROLES, "plasma"]
    at, peak = max(samples, key=lambda s: sum(s[1].values()))
    own_peaks = {k: max(s.get(k, 0) for _, s in samples) for k in keys}
    lines = [f"peak total {sum(peak.values()) / GIB:.2f} GiB at {at:.0f} s; PSS by role (GiB):"]
    lines.append("| role | at the total's peak | own peak |")
    lines.append("|---|---|---|")
    lines += [f"| {k} | {peak.get(k, 0) / GIB:.2f} | {own_peaks[k] / GIB:.2f} |" for k in keys]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="psl")
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--samples-per-client", type=int, default=16)
    parser.add_argument("--dataset", default="synthetic-large")
    parser.add_argument("--interval-s", type=float, default=1.0)
    parser.add_argument("--stop-below-gib", type=float, default=3.0)
    parser.add_argument("--object-store-gib", type=float, default=8.0)
    parser.add_argument("--trace", default="", help="write every sample to this CSV")
    args = parser.parse_args(argv)
    MemoryGuard(args.stop_below_gib).start()
    sampler = RoleSampler(args.interval_s)
    sampler.start()
    row = measure_setup(
        "ray", "ray", args.clients, args.samples_per_client, args.method, args.dataset, 1,
        lambda: 0, int(args.object_store_gib * 2**30),
    )  # fmt: skip
    sampler.stop()
    print(f"{args.method} {args.clients} x {args.samples_per_client}: startup {row['startup_s']:.1f} s, "
          f"train {row['train_s']:.1f} s, eval {row['eval_s']:.1f} s")  # fmt: skip
    print(report(sampler.samples))
    if args.trace:
        keys = [*ROLES, "plasma"]
        with open(args.trace, "w") as out:
            out.write("t_s," + ",".join(keys) + "\n")
            for t, s in sampler.samples:
                out.write(f"{t:.1f}," + ",".join(f"{s.get(k, 0) / GIB:.3f}" for k in keys) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
