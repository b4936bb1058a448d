"""Ray's private API is used in one module only, checked against the Ray versions it names."""

from __future__ import annotations

import ast
from pathlib import Path

import ray

from sglr_ray.execution import ray_internals

PACKAGE = Path(ray_internals.__file__).resolve().parents[1]
PRIVATE = ("_private", "_raylet", "_internal_kv", "_actor_id")


def test_the_installed_ray_is_one_the_private_calls_were_checked_against():
    # On a Ray upgrade: read each function of ray_internals.py against the new Ray, then add its version.
    assert ray.__version__ in ray_internals.CHECKED_RAY_VERSIONS, (
        f"Ray {ray.__version__} is not in ray_internals.CHECKED_RAY_VERSIONS "
        f"{ray_internals.CHECKED_RAY_VERSIONS}: check that module's private calls against it"
    )


def test_the_private_names_it_uses_exist_in_the_installed_ray():
    from ray._private import ray_constants
    from ray._private.runtime_env.py_modules import upload_py_modules_if_needed
    from ray.autoscaler.v2.utils import is_autoscaler_v2
    from ray.experimental.internal_kv import _internal_kv_get

    assert callable(ray._private.state.state.get_cluster_config)
    assert isinstance(ray_constants.DEBUG_AUTOSCALING_STATUS, str)
    assert callable(upload_py_modules_if_needed) and callable(is_autoscaler_v2) and callable(_internal_kv_get)
    assert hasattr(ray._private.worker.global_worker, "node")
    assert isinstance(ray.actor.ActorHandle._actor_id, property)  # actor_id_hex


def test_no_other_module_reaches_into_ray_private():
    users = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "ray_internals.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = {"attr": getattr(node, "attr", None), "module": getattr(node, "module", None)}
            if any(name and any(p in name for p in PRIVATE) for name in names.values()):
                users.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not users, f"Ray's private API used outside execution/ray_internals.py: {users}"
