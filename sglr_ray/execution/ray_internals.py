"""Every use of Ray's private API in sglr-ray, in one place.

Ray has no public call for these. Each was checked against the Ray versions in
CHECKED_RAY_VERSIONS (tests/unit/test_ray_internals.py pins them: a Ray upgrade
fails that test until someone re-reads these functions against the new Ray).
The autoscaler probes are guarded: a Ray where one changed degrades to "not
known", which means waiting up to --placement-timeout-s instead of refusing at once.

- `reported_node_types`: the node types an autoscaler reported to the GCS
  (`ClusterConfig`; written by autoscaler v2 releases that report their config,
  absent on Ray 2.60's open-source autoscalers).
- `autoscaler_running`: the v1 monitor's status in the GCS key-value store says
  whether the autoscaler runs with a real node provider (node types from a
  cluster config) or the read-only one every plain `ray start` cluster gets
  (each node its own type, named "node_<id>"); and whether autoscaler v2 is on.
- `upload_modules`: an actor's runtime environment takes no local paths (only a
  job's does), so a user's method file is uploaded with Ray's own helper.
- `actor_id_hex`: an actor handle's id, to name the actor in Ray's memory-kill
  messages (memory_kill.py), which give only the id.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import ray

from sglr_ray.execution.placement import UNLIMITED_NODES, NodeShape

log = logging.getLogger(__name__)

CHECKED_RAY_VERSIONS = ("2.60.0",)
# Ray's internal reads fail in version-specific ways; any of these means "not known".
_PROBE_ERRORS = (ImportError, AttributeError, KeyError, TypeError, ValueError, RuntimeError, ConnectionError)


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


def upload_modules(paths: list[Path]) -> dict[str, Any]:
    """A runtime environment that puts the files `paths` on every actor's sys.path, on any node
    (uploaded to the cluster here, as `ray.init` does for a job; actors get their gcs:// URIs)."""
    from ray._private.runtime_env.py_modules import upload_py_modules_if_needed

    node = ray._private.worker.global_worker.node
    scratch = node.get_runtime_env_dir_path() if node is not None else None
    return upload_py_modules_if_needed(
        {"py_modules": [str(path) for path in paths]}, include_gitignore=False, scratch_dir=scratch
    )


def actor_id_hex(handle: Any) -> str:
    """The id of the actor behind `handle`, as Ray's error messages print it."""
    return handle._actor_id.hex()
