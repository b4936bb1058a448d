"""What the Ray cluster has, reserving a run's resources as one placement group, and start-up.

The nodes come from `ray.nodes()`; whether (and what) an autoscaler can add
comes from ray_internals.py, the one module that uses Ray's private API.
Placement itself is Ray's: a run's bundles (placement.Placement.bundles) are one
placement group, reserved all at once or not at all, and its actors are
scheduled into their bundles. A run therefore never starts half its actors and
waits for the rest while another run holds their CPUs.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from sglr_ray.errors import ExecutorError, PlacementError
from sglr_ray.execution import ray_internals
from sglr_ray.execution.placement import ClusterView, NodeShape, Placement

log = logging.getLogger(__name__)

WAIT_SLICE_S = 0.5  # waits are sliced so a stop signal is acted on within about this
# Placed actors still building their models get this long to report that they have started.
START_LIMIT_S = 300.0


def read_cluster() -> ClusterView:
    """The alive nodes' CPUs, GPUs and memory, and whether (and what) an autoscaler can add."""
    alive = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    shapes = Counter((r.get("CPU", 0.0), r.get("GPU", 0.0)) for r in alive)
    nodes = [NodeShape(cpus, gpus, count) for (cpus, gpus), count in shapes.items()]
    memory = sum(r.get("memory", 0.0) for r in alive) or 8 * 2**30
    types = ray_internals.reported_node_types()
    if types is not None:
        return ClusterView(nodes, memory, autoscaler=bool(types), node_types=types)
    return ClusterView(nodes, memory, autoscaler=ray_internals.autoscaler_running(), node_types=None)


def create_group(placement: Placement, name: str = "") -> PlacementGroup:
    """The run's placement group (not yet placed: see wait_placed)."""
    return placement_group(placement.bundles(), strategy=placement.strategy, name=name)


def in_bundle(group: PlacementGroup, index: int) -> PlacementGroupSchedulingStrategy:
    """Scheduling into bundle `index` of `group`; the actor's own calls are not captured (it starts none)."""
    return PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=index)


def wait_placed(group: PlacementGroup, placement: Placement, timeout_s: float, cluster: ClusterView) -> None:
    """Wait until Ray has reserved every bundle of `group`; after `timeout_s` remove the group and
    raise PlacementError with what was asked for and what is free."""
    ready, deadline = group.ready(), time.monotonic() + timeout_s
    while True:
        done, _ = ray.wait([ready], timeout=min(WAIT_SLICE_S, max(0.0, deadline - time.monotonic())))
        if done:
            return
        if time.monotonic() >= deadline:
            break
    remove_placement_group(group)
    free = ray.available_resources()
    because = (
        "the autoscaler did not add nodes for it"
        if cluster.autoscaler
        else "the cluster's resources are taken by other work"
    )
    raise PlacementError(
        f"the run's placement group was not placed within {timeout_s:g} s (--placement-timeout-s): "
        f"{placement.describe()}; free now: {free.get('CPU', 0):g} CPU, {free.get('GPU', 0):g} GPU "
        f"({cluster.describe()}); {because} (raise --placement-timeout-s, or ask for less with "
        "--gpus-per-client, --server-gpus or --clients-per-actor)"
    )


def release(group: PlacementGroup | None) -> None:
    """Give the group's resources back (its actors, if still alive, are killed with it)."""
    if group is not None:
        remove_placement_group(group)


def wait_started(handles: dict[str, Any]) -> dict[str, Any]:
    """Each actor's `started()` report (an ActorStart), by name, once every actor has started.

    PlacementError when an actor reports it cannot run where it was placed (a device
    it lacks); ExecutorError when one dies while starting or takes over START_LIMIT_S.
    """
    names = {handle.started.remote(): name for name, handle in handles.items()}
    pending, reports = list(names), {}
    deadline = time.monotonic() + START_LIMIT_S
    while pending:
        done, pending = ray.wait(pending, num_returns=len(pending), timeout=WAIT_SLICE_S)
        for ref in done:
            try:
                reports[names[ref]] = report = ray.get(ref)
            except ray.exceptions.RayError as ex:
                raise ExecutorError(f"actor {names[ref]} failed while starting: {ex}") from ex
            if report.error:  # the first actor that cannot run here decides: no need to wait for the rest
                raise PlacementError(f"actor {names[ref]}: {report.error}")
        if pending and time.monotonic() > deadline:
            late = ", ".join(names[r] for r in pending)
            raise ExecutorError(f"actors {late} were placed but did not start within {START_LIMIT_S:g} s")
    return reports
