"""Sweeps: a grid of run settings expanded into validated configs and run, skipping finished runs.

A grid file (YAML or TOML) has fixed settings under `base` and lists under `grid`:

    base: {model: alexnet, epochs: 5, out: results/sweep}
    grid: {method: [psl, sglr], clients: [4, 10], alpha: [0, 0.5], phi: [0, 0.5], seed: [0, 1]}

Every combination becomes one run, named from its values and a hash of its
complete settings, so a second invocation finds completed runs in the output
directory and skips them, and runs again only the points whose settings changed.
A knob that a method fixes (alpha for psl, say) is dropped from that
method's combinations instead of making them invalid.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from sglr_ray.config import METHOD_SETTINGS, ConfigError, RunConfig, check_setting_names
from sglr_ray.execution import interrupt
from sglr_ray.methods import MethodNotFoundError, get_method
from sglr_ray.results.storage import Storage
from sglr_ray.results.writer import readable_name

log = logging.getLogger(__name__)


def expand_grid(base: dict[str, Any], grid: dict[str, list[Any]]) -> list[RunConfig]:
    """All combinations of `grid` over `base`, validated; one config per distinct run.

    Two combinations are the same run exactly when their identities (every setting that
    can change a number) agree, e.g. psl with alpha 0 and with alpha 0.5, which psl fixes.
    """
    base = check_setting_names(base, "grid base")
    grid = check_setting_names(grid, "grid")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid setting {key!r} must be a non-empty list, got {values!r}")
    if "run_id" in base or "run_id" in grid:
        raise ConfigError("a grid names its runs itself (readable settings + a hash); drop run_id")
    configs: dict[str, RunConfig] = {}
    keys = list(grid)
    for values in itertools.product(*(grid[k] for k in keys)):
        combination = dict(zip(keys, values, strict=True))
        settings = base | combination
        try:
            method = get_method(settings.get("method", "sglr"))
            # A knob the method fixes, or a setting only other methods read, is not varied for it.
            for name in [*method.fixed, *(s for s in METHOD_SETTINGS if s not in method.settings)]:
                settings.pop(name, None)
            config = RunConfig(**settings)
        except (ConfigError, MethodNotFoundError) as ex:
            raise ConfigError(f"grid combination {combination}: {ex}") from ex
        config = config.replace(run_id=run_name(config))
        configs.setdefault(config.run_id, config)
    return list(configs.values())


def run_name(config: RunConfig) -> str:
    """Readable settings, then a hash of every setting that can change a number, so two
    different grid points never share a name and a changed base gives new names."""
    knobs = f"a{config.alpha:g}-p{config.phi:g}-{config.phase.replace(':', '')}"
    return f"{readable_name(config)}-{knobs}-{config.run_key}"


def completed_runs(out: str) -> set[str]:
    """Run ids recorded as completed under `out` (a directory or a URI), file by file: a
    directory read would take one file's schema, and runs written by other code versions
    differ in columns."""
    store, done = Storage(out), set()
    for name in store.list("runs", ".parquet"):
        rows = store.read_table(f"runs/{name}", columns=["run_id", "status"]).to_pylist()
        done |= {row["run_id"] for row in rows if row["status"] == "completed"}
    return done


def pending(configs: list[RunConfig]) -> list[RunConfig]:
    """The configs whose run is not completed yet; each output directory is read once."""
    finished = {out: completed_runs(out) for out in {c.out for c in configs}}
    return [c for c in configs if c.run_id not in finished[c.out]]


def _run_one(config: RunConfig) -> str:
    """Run one grid point; a run stopped part way (its checkpoint is under --out) carries on from it."""
    from sglr_ray.execution.checkpoint import checkpoint_path
    from sglr_ray.execution.driver import run_experiment

    resume = checkpoint_path(config.out, config.run_id).exists()
    return run_experiment(config, resume=resume).run_id


def _start_worker() -> None:
    """Set up a worker process of a parallel sweep.

    It leaves the terminal's process group, so Ctrl-C reaches only the sweep, which
    passes each worker exactly one SIGINT: a second would make it exit before it has
    recorded its run. A signal between runs is remembered, and stops the next one.
    """
    os.setpgrp()
    interrupt.note_signals()


def _run_in_worker(config: RunConfig) -> str:
    with interrupt.stop_on_signals():
        return _run_one(config)


def run_sweep(
    configs: list[RunConfig], parallel: int = 1, on_done: Callable[[str], None] | None = None
) -> list[str]:
    """Run every config not yet completed in its output directory; returns the run_ids it ran.

    With parallel > 1, runs go to separate processes (each a whole experiment,
    with its own executor); give each run fewer --torch-threads accordingly.
    A KeyboardInterrupt here (Ctrl-C, or a stop signal under interrupt.stop_on_signals)
    stops every run in progress, recorded as interrupted, before it is raised again.
    """
    todo = pending(configs)
    log.info("%d of %d runs to do", len(todo), len(configs))
    done = []
    if parallel <= 1:
        for config in todo:
            done.append(_run_one(config))
            if on_done:
                on_done(done[-1])
        return done
    # spawn: a forked child would inherit the parent's torch threads and any Ray state.
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(parallel, mp_context=spawn, initializer=_start_worker) as pool:
        try:
            for run_id in pool.map(_run_in_worker, todo):
                done.append(run_id)
                if on_done:
                    on_done(run_id)
        except KeyboardInterrupt:
            for worker in multiprocessing.active_children():  # the pool's workers: this process has no others
                os.kill(worker.pid, signal.SIGINT)
            pool.shutdown(wait=True, cancel_futures=True)  # while each records its run as interrupted
            raise
    return done
