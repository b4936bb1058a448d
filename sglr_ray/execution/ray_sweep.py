"""Sweeps on a Ray cluster: each run is one Ray task, placed by Ray wherever it fits.

Why tasks and not Ray Tune: a run here is a whole experiment that records its
own results and checkpoints, so a sweep needs only placement, retries and a
view of progress, which tasks and placement groups give directly; Tune's
trial schedulers, searchers and its own result store would sit beside ours
unused, and it is one more dependency.

- A run on the Ray executor reserves its task and its actors together: one
  placement group of `cpus_per_run` CPUs in all (a small bundle for the task,
  which only passes references on, one for the server, one per shard; PACKed
  on one node where it fits). Its task starts only once all of it is placed,
  so runs never hold CPUs their own actors then wait for, and a grid of any
  size goes through a cluster of any size, as many runs at a time as fit.
  A run on the local executor computes in its task, which asks for `cpus_per_run`.
- A task that is lost (its process or node died) is submitted again up to
  `retries` times and resumes from the run's checkpoint (sweep._run_one); a
  run that raises is not: it would raise again. Failed runs come back named.
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
from dataclasses import dataclass, field

import pandas as pd
import ray
from ray.util.placement_group import PlacementGroup

from sglr_ray.config import RunConfig
from sglr_ray.execution.placement import Placement, plan_sweep_run
from sglr_ray.execution.ray_cluster import create_group, in_bundle, read_cluster, release
from sglr_ray.execution.sweep import _run_one, pending
from sglr_ray.results.storage import Storage

log = logging.getLogger(__name__)

# A run's own task on the Ray executor: it passes references between actors, and holds the
# whole-model methods' server (a FedAvg sum). The rest of --cpus-per-run goes to its actors.
DRIVER_CPUS = 0.1


@dataclass
class SweepOutcome:
    completed: list[str] = field(default_factory=list)  # run ids completed by this call
    failed: dict[str, str] = field(default_factory=dict)  # run id -> why it failed


@dataclass
class _Run:
    config: RunConfig
    placement: Placement | None  # None: the local executor, in the task itself
    group: PlacementGroup | None = None
    retries: int = 0


def _run_reserved(config: RunConfig, placement: Placement, group: PlacementGroup) -> str:
    """A run whose actors go into the placement group its task runs in (bundle 0 is the task's)."""
    from sglr_ray.execution.ray_actors import reserved_placement

    with reserved_placement(group, placement):
        return _run_one(config)


def run_sweep_on_ray(
    configs: list[RunConfig],
    cpus_per_run: float = 1.0,
    retries: int = 2,
    poll_s: float = 5.0,
    on_status: Callable[[pd.DataFrame], None] | None = None,
) -> SweepOutcome:
    """Run every pending config as a Ray task. PlacementError (before any run starts) when a
    run cannot fit the cluster, naming the setting to change."""
    from sglr_ray.execution.ray_actors import connect

    todo = pending(configs)
    if not todo:
        return SweepOutcome()
    owns_ray = connect()
    runs: list[_Run] = []
    try:
        runs = plan_runs(todo, cpus_per_run)
        waiting = {_submit(run, cpus_per_run): run for run in runs}
        outcome = SweepOutcome()
        while waiting:
            ready, _ = ray.wait(list(waiting), num_returns=1, timeout=poll_s)
            for ref in ready:
                run = waiting.pop(ref)
                if _settle(ref, run, retries, outcome):
                    waiting[_submit(run, cpus_per_run)] = run
            if on_status:
                on_status(sweep_status(todo))
        return outcome
    finally:
        for run in runs:
            release(run.group)
        if owns_ray:
            ray.shutdown()


def plan_runs(configs: list[RunConfig], cpus_per_run: float) -> list[_Run]:
    """Each run's placement (None for the local executor), all checked before any starts."""
    cluster = read_cluster()

    def plan(config: RunConfig) -> Placement | None:
        if config.executor == "local":
            return None
        clients = config.spec.schedule.training_clients(config)  # CL: one data centre "client"
        return plan_sweep_run(config, clients, cpus_per_run, DRIVER_CPUS, cluster)

    return [_Run(config, plan(config)) for config in configs]


def _submit(run: _Run, cpus_per_run: float) -> ray.ObjectRef:
    config = run.config
    if run.placement is None:  # the local executor computes in the task: it gets the run's CPUs
        threads = config.torch_threads or max(1, int(cpus_per_run))
        task = ray.remote(_run_one).options(num_cpus=cpus_per_run, max_retries=0)
        return task.remote(config.replace(torch_threads=threads))
    if run.group is None:  # placed as Ray finds room; the task waits for it, holding nothing
        run.group = create_group(run.placement, name=f"sweep/{config.run_id}")
    task = ray.remote(_run_reserved).options(
        num_cpus=DRIVER_CPUS, max_retries=0, scheduling_strategy=in_bundle(run.group, 0)
    )
    return task.remote(config, run.placement, run.group)


def _settle(ref: ray.ObjectRef, run: _Run, retries: int, outcome: SweepOutcome) -> bool:
    """Record a finished task in `outcome`; True when it was lost and is to be submitted again."""
    run_id = run.config.run_id
    try:
        outcome.completed.append(ray.get(ref))
    except ray.exceptions.RayTaskError as ex:  # the run raised: running it again would raise again
        log.error("run %s failed (an error in the run; not retried): %s", run_id, ex)
        outcome.failed[run_id] = str(ex).strip().splitlines()[-1]
    except ray.exceptions.RayError as ex:  # its process or node was lost
        if run.retries < retries:
            run.retries += 1
            log.warning("run %s: its task was lost (%s); retry %d of %d, from its checkpoint",
                        run_id, type(ex).__name__, run.retries, retries)  # fmt: skip
            return True
        log.error("run %s failed after %d retries: %s", run_id, run.retries, ex)
        outcome.failed[run_id] = f"lost after {run.retries} retries: {type(ex).__name__}"
    release(run.group)
    run.group = None
    return False


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
