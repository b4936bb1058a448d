"""Sweeps on a Ray cluster: each run is one Ray task, placed by Ray wherever it fits.

Why tasks and not Ray Tune: a run here is a whole experiment that records its
own results and checkpoints, so a sweep needs only placement (`num_cpus` per
run), retries and a view of progress, which tasks give directly; Tune's
trial schedulers, searchers and its own result store would sit beside ours
unused, and it is one more dependency.

- Pending runs (not completed in their --out) are submitted at once; Ray runs
  as many as the cluster has CPUs for (`cpus_per_run` each).
- A task that dies (node lost, process killed) is retried up to `retries`
  times; the retry resumes from the run's checkpoint (sweep._run_one).
- A second submission of the same grid skips completed runs, so
  `ray job submit -- python -m sglr_ray sweep --grid G --backend ray` can be
  repeated until everything is done.
- The status table is read from the runs tables themselves, so it shows the
  progress of runs on any node when --out is shared storage (an NFS directory,
  or a URI such as s3://bucket/path: results/storage.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pandas as pd
import ray

from sglr_ray.config import RunConfig
from sglr_ray.execution.sweep import _run_one, pending
from sglr_ray.results.storage import Storage

log = logging.getLogger(__name__)


def run_sweep_on_ray(
    configs: list[RunConfig],
    cpus_per_run: float = 1.0,
    retries: int = 2,
    poll_s: float = 5.0,
    on_status: Callable[[pd.DataFrame], None] | None = None,
) -> list[str]:
    """Run every pending config as a Ray task; returns the run_ids completed by this call."""
    from sglr_ray.execution.ray_actors import connect

    todo = pending(configs)
    if not todo:
        return []
    owns_ray = connect()
    try:
        task = ray.remote(_run_one).options(
            num_cpus=cpus_per_run, max_retries=retries, retry_exceptions=False
        )
        waiting = {task.remote(c.replace(torch_threads=c.torch_threads or max(1, int(cpus_per_run)))): c
                   for c in todo}  # fmt: skip
        done: list[str] = []
        while waiting:
            ready, _ = ray.wait(list(waiting), num_returns=1, timeout=poll_s)
            for ref in ready:
                config = waiting.pop(ref)
                try:
                    done.append(ray.get(ref))
                except ray.exceptions.RayError as ex:
                    log.error("run %s failed after %d retries: %s", config.run_id, retries, ex)
            if on_status:
                on_status(sweep_status(todo))
        return done
    finally:
        if owns_ray:
            ray.shutdown()


def sweep_status(configs: list[RunConfig]) -> pd.DataFrame:
    """Per run: status and epochs done, read from each run's runs table (missing: queued)."""
    rows, stores = [], {out: Storage(out) for out in {c.out for c in configs}}
    for config in configs:
        store, rel = stores[config.out], f"runs/{config.run_id}.parquet"
        status, done = "queued", 0
        if store.exists(rel):
            try:
                row = store.read_table(rel, columns=["status", "epochs_done"]).to_pylist()[0]
                status, done = row["status"], int(row["epochs_done"])
            except (OSError, ValueError):  # being replaced this instant: report it next time
                status = "?"
        rows.append({"run_id": config.run_id, "status": status, "epochs": f"{done}/{config.epochs}"})
    return pd.DataFrame(rows)


def print_status(table: pd.DataFrame, started: float) -> None:
    """One line of counts, then the runs not queued or completed (the ones to watch)."""
    counts = table.status.value_counts().to_dict()
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    print(f"[{time.monotonic() - started:7.0f} s] {summary}", flush=True)
    active = table[~table.status.isin(["queued", "completed"])]
    if len(active):
        print(active.to_string(index=False), flush=True)
