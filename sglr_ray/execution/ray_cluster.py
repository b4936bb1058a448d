"""What the Ray cluster has and can get, and starting actors within a deadline.

The nodes come from `ray.nodes()`. Ray has no public call for what an
autoscaler could add, so two internal sources are read, each guarded (a Ray
that lacks one degrades to "unknown", which means waiting up to
--placement-timeout-s instead of refusing at once):

- the node types an autoscaler reports to the GCS (`ClusterConfig`, read by
  `ray._private.state.state.get_cluster_config()`; written by autoscaler v2
  releases that report their config, absent on Ray 2.60's open-source
  autoscalers);
- the v1 monitor's status in the GCS key-value store, which says whether the
  autoscaler runs with a real node provider (node types from a cluster
  config) or the read-only one every plain `ray start` cluster gets (each node
  its own type, named "node_<id>"); and whether autoscaler v2 is on.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from typing import Any

import ray

from sglr_ray.errors import ExecutorError, PlacementError
from sglr_ray.execution.packing import ActorRequest, NodeShape
from sglr_ray.execution.placement import UNLIMITED_NODES, ClusterView

log = logging.getLogger(__name__)

POLL_S = 0.5  # how often the start-up wait looks at the actors
# Before judging placement at all: leasing a worker process takes a moment even on an idle node.
MIN_PLACEMENT_WAIT_S = 10.0
# Placed actors still building their models and data get this long beyond the placement timeout.
START_LIMIT_S = 300.0
# Ray's internal reads fail in version-specific ways; any of these means "not known".
_PROBE_ERRORS = (ImportError, AttributeError, KeyError, TypeError, ValueError, RuntimeError, ConnectionError)


def read_cluster() -> ClusterView:
    """The alive nodes' CPUs, GPUs and memory, and whether (and what) an autoscaler can add."""
    alive = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    shapes = Counter((r.get("CPU", 0.0), r.get("GPU", 0.0)) for r in alive)
    nodes = [NodeShape(cpus, gpus, count) for (cpus, gpus), count in shapes.items()]
    memory = sum(r.get("memory", 0.0) for r in alive) or 8 * 2**30
    types = reported_node_types()
    if types is not None:
        return ClusterView(nodes, memory, autoscaler=bool(types), node_types=types)
    return ClusterView(nodes, memory, autoscaler=autoscaler_running(), node_types=None)


def reported_node_types() -> list[NodeShape] | None:
    """The node types an autoscaler reported that it can scale up, or None when none reported."""
    try:
        config = ray._private.state.state.get_cluster_config()
    except _PROBE_ERRORS as ex:
        log.warning("could not read the autoscaler's node types from the GCS: %s", ex)
        return None
    if config is None or not config.node_group_configs:
        return None
    return [
        NodeShape(
            cpus=float(group.resources.get("CPU", 0)),
            gpus=float(group.resources.get("GPU", 0)),
            count=UNLIMITED_NODES if group.max_count == -1 else group.max_count,
        )
        for group in config.node_group_configs
        if group.max_count == -1 or group.max_count > group.min_count
    ]


def autoscaler_running() -> bool:
    """Whether an autoscaler with a real node provider (or autoscaler v2) serves this cluster."""
    try:
        from ray._private import ray_constants
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        report = (json.loads(raw).get("autoscaler_report") or {}) if raw else {}
        # The read-only provider of a plain `ray start` cluster names each node "node_<id>".
        types = (report.get("node_type_mapping") or {}).values()
        if any(not str(t).startswith("node_") for t in types) or report.get("pending_launches"):
            return True
        from ray.autoscaler.v2.utils import is_autoscaler_v2

        return is_autoscaler_v2(fetch_from_server=True)
    except _PROBE_ERRORS as ex:
        log.warning("could not tell whether an autoscaler runs (assuming one may): %s", ex)
        return True


def wait_for_actors(
    handles: dict[str, Any], requests: dict[str, ActorRequest], timeout_s: float, cluster: ClusterView
) -> dict[str, Any]:
    """Each actor's `started()` report (an ActorStart), by name, once every actor has started.

    PlacementError when an actor reports it cannot run where it was placed, or
    is still waiting for a node after timeout_s (judged no earlier than
    MIN_PLACEMENT_WAIT_S); ExecutorError when one dies while starting, or is
    placed but still not started START_LIMIT_S later.
    """
    names = {handles[name].started.remote(): name for name in handles}
    pending, reports = list(names), {}
    began = time.monotonic()
    while pending:
        done, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
        for ref in done:
            try:
                reports[names[ref]] = report = ray.get(ref)
            except ray.exceptions.RayError as ex:
                raise ExecutorError(f"actor {names[ref]} failed while starting: {ex}") from ex
            if report.error:  # the first actor that cannot run here decides: no need to wait for the rest
                raise PlacementError(f"actor {names[ref]}: {report.error}")
        waited_s = time.monotonic() - began
        if not pending or waited_s < max(timeout_s, MIN_PLACEMENT_WAIT_S):
            continue
        unplaced = [names[r] for r in pending if not is_placed(handles[names[r]])]
        if unplaced:
            raise PlacementError(unplaced_message(unplaced, requests, waited_s, timeout_s, cluster))
        if waited_s > timeout_s + START_LIMIT_S:
            raise ExecutorError(
                f"actors {', '.join(names[r] for r in pending)} were placed but did not finish starting "
                f"within {waited_s:.0f} s"
            )
    return reports


def is_placed(handle: Any) -> bool:
    """Whether Ray has given the actor a worker process (it may still be running its constructor)."""
    try:
        info = ray._private.state.actors(handle._actor_id.hex())
        return info["State"] == "ALIVE" or bool(info["Address"]["Port"])
    except _PROBE_ERRORS as ex:
        log.warning("could not read an actor's state from the GCS (counting it as not placed): %s", ex)
        return False


def unplaced_message(
    unplaced: list[str], requests: dict[str, ActorRequest], waited_s: float, timeout_s: float,
    cluster: ClusterView,
) -> str:  # fmt: skip
    asks = "; ".join(f"{n}: {requests[n].cpus:g} CPU, {requests[n].gpus:g} GPU" for n in unplaced)
    free = ray.available_resources()
    because = (
        "the autoscaler did not add nodes for them"
        if cluster.autoscaler
        else "the cluster's resources are taken by other work, or Ray's scheduler packed the actors "
        "differently from the check made before starting them"
    )
    return (
        f"{len(unplaced)} actor(s) found no node within {waited_s:.0f} s (--placement-timeout-s "
        f"{timeout_s:g}): {asks}; free now: {free.get('CPU', 0):g} CPU, {free.get('GPU', 0):g} GPU "
        f"({cluster.describe()}); {because} (raise --placement-timeout-s, or ask for less with "
        "--gpus-per-client, --server-gpus or --clients-per-actor)"
    )
