"""One small embedded Ray for the whole session; modules that need a logical GPU swap in their own."""

from __future__ import annotations

import pytest
import ray

from sglr_ray.execution import ray_actors


def start_local_ray(**resources) -> None:
    ray_actors.start_local_ray(num_cpus=2, log_to_driver=False, **resources)


@pytest.fixture(scope="session")
def ray_session():
    start_local_ray()
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_one_gpu():
    """A Ray of the module's own with one logical GPU in place of the session's, restored after.

    Ray schedules by the count it is told, so no GPU need exist; the actors get
    CUDA_VISIBLE_DEVICES and ray.get_gpu_ids() as on a real one.
    """
    was_running = ray.is_initialized()
    ray.shutdown()
    start_local_ray(num_gpus=1)
    yield
    ray.shutdown()
    if was_running:
        start_local_ray()


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/ray/" in str(item.fspath):
            item.add_marker(pytest.mark.ray)
