"""One small embedded Ray instance for the whole session."""

from __future__ import annotations

import pytest
import ray


@pytest.fixture(scope="session")
def ray_session():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/ray/" in str(item.fspath):
            item.add_marker(pytest.mark.ray)
